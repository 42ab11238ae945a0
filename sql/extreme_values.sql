-- SPEC section 2: values the math cannot use (dates outside 4714-12-01 BC ..
-- 294276-11-30, infinite dates, NaN and infinite amounts, text keys over
-- LIVEKPI_MAX_KEY_BYTES) are skipped like NULL and counted, never an error,
-- in the capture trigger, the apply worker, the backfill, rebuild() and
-- verify(); categories count under their first 200 characters.
-- (operations dropped the extension: this test makes its own.)
\set SHOW_CONTEXT never
CREATE EXTENSION livekpi;
SELECT livekpi.sync('60s');

CREATE TABLE ev_b_date (id serial, property_id int, check_in date, check_out date,
						total_amount numeric, status text);
CREATE TABLE ev_b_ts (id serial, property_id int, check_in timestamp, check_out timestamp,
					  total_amount float8, status text);
CREATE TABLE ev_b_tstz (id serial, property_id int, check_in timestamptz, check_out timestamptz,
						total_amount real, status text);
CREATE TABLE ev_e_date (id serial, property_id int, incurred_on date, amount numeric,
						category text, approval_status text);
CREATE TABLE ev_e_ts (id serial, property_id int, incurred_on timestamp, amount float8,
					  category varchar, approval_status text);
CREATE TABLE ev_e_tstz (id serial, property_id int, incurred_on timestamptz, amount numeric,
						category text, approval_status text);
CREATE VIEW ev_bd AS
SELECT property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals
FROM livekpi.booking_daily ORDER BY property_id, day;
CREATE VIEW ev_ed AS
SELECT property_id, day, length(category) AS category_chars, approved_amount, pending_amount,
	   expense_count
FROM livekpi.expense_daily ORDER BY property_id, day, category;

-- committed before tracking: the backfill skips them (today's code failed
-- here with "date out of range for timestamp")
INSERT INTO ev_b_date (property_id, check_in, check_out, total_amount) VALUES
	(1, '294277-01-01', '294277-01-02', 10),
	(1, '2026-01-10', '2026-01-11', 5);
INSERT INTO ev_e_date (property_id, incurred_on, amount, category) VALUES
	(1, '5874897-12-30', 10, 'x'),
	(1, '2026-01-10', 5, repeat('c', 3200));
SELECT livekpi.track_bookings('ev_b_date');
SELECT livekpi.track_expenses('ev_e_date');
SELECT livekpi.track_bookings('ev_b_ts');
SELECT livekpi.track_expenses('ev_e_ts');
-- the timestamptz tables date in Asia/Tokyo (UTC+9; before 1888, +9:18:59)
ALTER SYSTEM SET livekpi.timezone = 'Asia/Tokyo';
SELECT pg_reload_conf();
\c
SELECT livekpi.track_bookings('ev_b_tstz');
SELECT livekpi.track_expenses('ev_e_tstz');
ALTER SYSTEM RESET livekpi.timezone;
SELECT pg_reload_conf();
\c
\set SHOW_CONTEXT never
SELECT * FROM ev_bd;
SELECT * FROM ev_ed;
SELECT livekpi.sync('30s');
-- (earlier tests may have left an error: only a new one counts)
SELECT rows_skipped AS skipped_before, coalesce(last_error_at::text, 'none') AS error_at_before
FROM livekpi.status \gset

-- streamed: none of these raises an error in the inserting transaction
INSERT INTO ev_b_date (property_id, check_in, check_out, total_amount) VALUES
	(2, '294276-11-29', '294276-11-30', 7),		-- the last night that counts
	(2, '294276-11-30', '294276-11-30', 8),		-- a 0-night stay on the last day
	(2, '294276-11-30', '294276-12-01', 9),		-- check-out past the last day: skipped
	(2, '294277-01-01', '294277-01-02', 10),		-- skipped
	(2, '5874897-12-30', '5874897-12-31', 11),	-- skipped
	(2, '2026-01-01', '294277-01-01', 12),		-- nights beyond the range: skipped
	(2, '4714-12-01 BC', '4714-12-02 BC', 13),	-- the first night that counts
	(2, '4714-11-30 BC', '4714-12-02 BC', 14),	-- skipped (November 4714 BC)
	(2, '4714-11-24 BC', '4714-11-25 BC', 15),	-- skipped
	(2, '2026-02-01', '2026-02-02', 'NaN'),		-- counts, amount 0, counted
	(2, '2026-02-02', '2026-02-03', '-Infinity');	-- counts, amount 0, counted
INSERT INTO ev_b_ts (property_id, check_in, check_out, total_amount) VALUES
	(3, '294276-11-29 23:59', '294276-11-30 12:00', 7),	-- counts
	(3, '294276-11-30 10:00', '294276-12-01 01:00', 9),	-- skipped
	(3, '294276-12-31 23:59', '294276-12-31 23:59', 10),	-- skipped
	(3, '4714-11-24 00:00 BC', '4714-11-25 00:00 BC', 15),	-- skipped
	(3, '4714-12-01 00:00 BC', '4714-12-02 00:00 BC', 13),	-- counts
	(3, '2026-02-01', '2026-02-02', 'Infinity');			-- counts, amount 0
INSERT INTO ev_b_tstz (property_id, check_in, check_out, total_amount) VALUES
	-- 20:00 UTC is already the next day in Tokyo
	(4, '294276-11-29 10:00+00', '294276-11-29 20:00+00', 7),	-- 11-29 .. 11-30: counts
	(4, '294276-11-29 10:00+00', '294276-11-30 20:00+00', 9),	-- check-out 12-01: skipped
	(4, '294276-12-31 20:00+00', '294276-12-31 21:00+00', 10),	-- beyond timestamp in Tokyo: skipped
	(4, '4714-11-30 20:00+00 BC', '4714-12-01 20:00+00 BC', 13),	-- 12-01 .. 12-02 BC: counts
	(4, '4714-11-24 00:00+00 BC', '4714-11-25 00:00+00 BC', 15),	-- skipped
	(4, 'infinity', 'infinity', 1);								-- skipped
INSERT INTO ev_e_date (property_id, incurred_on, amount, category) VALUES
	(5, '294276-11-30', 1, 'last'),
	(5, '294276-12-01', 1, 'skipped'),
	(5, '294277-01-01', 1, 'skipped'),
	(5, '5874897-12-30', 1, 'skipped'),
	(5, '4714-12-01 BC', 1, 'first'),
	(5, '4714-11-30 BC', 1, 'skipped'),
	(5, '-infinity', 1, 'skipped'),
	-- two categories equal in their first 200 characters share one row
	(5, '2026-03-01', 1, repeat('x', 199) || 'y' || repeat('a', 3000)),
	(5, '2026-03-01', 'NaN', repeat('x', 199) || 'y' || 'b'),
	-- characters, not bytes: 250 two-byte characters count as their first 200
	(5, '2026-03-02', 2, repeat('é', 250));
INSERT INTO ev_e_ts (property_id, incurred_on, amount, category) VALUES
	(6, '294276-11-30 23:59', 1, 'last'),
	(6, '294276-12-01 00:00', 1, 'skipped'),
	(6, '4714-11-30 23:59 BC', 1, 'skipped'),
	(6, '4714-12-01 00:00 BC', 'Infinity', 'first'),
	(6, '2026-03-02', 2, repeat('é', 250));
INSERT INTO ev_e_tstz (property_id, incurred_on, amount, category) VALUES
	(7, '294276-11-30 14:59+00', 1, 'last'),		-- 23:59 in Tokyo
	(7, '294276-11-30 15:00+00', 1, 'skipped'),	-- 12-01 in Tokyo
	(7, '294276-12-31 23:00+00', 1, 'skipped'),	-- beyond timestamp in Tokyo
	(7, '4714-11-24 00:00+00 BC', 1, 'skipped'),
	(7, '4714-11-30 14:41:01+00 BC', 1, 'first');	-- 12-01 00:00 BC in Tokyo (LMT)
SELECT livekpi.sync('30s');
SELECT coalesce(last_error_at::text, 'none') = :'error_at_before' AS no_new_error,
	   rows_skipped - :skipped_before AS skipped
FROM livekpi.status;
SELECT * FROM ev_bd WHERE property_id > 1;
SELECT * FROM ev_ed WHERE property_id > 1;
SELECT * FROM livekpi.verify();

-- updates and deletes from and to unusable values: the skipped side adds
-- or takes nothing
UPDATE ev_b_date SET check_in = '2026-05-01', check_out = '2026-05-03' WHERE total_amount = 10;
UPDATE ev_b_date SET check_out = '294277-01-01' WHERE total_amount = 7;
UPDATE ev_e_date SET incurred_on = '2026-05-01' WHERE category = 'skipped' AND incurred_on = '294277-01-01';
DELETE FROM ev_e_date WHERE incurred_on = '5874897-12-30';
DELETE FROM ev_b_tstz WHERE total_amount IN (10, 13);
SELECT livekpi.sync('30s');
SELECT coalesce(last_error_at::text, 'none') = :'error_at_before' AS no_new_error FROM livekpi.status;
SELECT * FROM livekpi.verify();

-- rebuild() applies the same rules and finds the same rows
CREATE TEMP TABLE ev_before AS SELECT * FROM ev_bd UNION ALL SELECT property_id, day, category_chars, approved_amount, pending_amount, expense_count FROM ev_ed;
SELECT livekpi.rebuild();
SELECT count(*) AS changed_by_rebuild
FROM ((SELECT * FROM ev_bd UNION ALL SELECT property_id, day, category_chars, approved_amount, pending_amount, expense_count FROM ev_ed)
	  EXCEPT ALL SELECT * FROM ev_before) x;
SELECT count(*) AS rows_after_rebuild FROM livekpi.booking_daily;
SELECT * FROM livekpi.verify();

-- tracking one more table backfills only that table: a large one (at
-- least a tenth of its kind's daily KPI table) through fresh heaps, a small
-- one in place (INSERT ... ON CONFLICT); both as verify() recomputes
CREATE TABLE ev_many (property_id int, check_in date, check_out date, total_amount numeric,
					  status text);
INSERT INTO ev_many
SELECT p, '2026-01-01'::date + d, '2026-01-01'::date + d + 2, 10, NULL
FROM generate_series(1, 40) p, generate_series(0, 360, 3) d;
CREATE TABLE ev_e_many (property_id int, incurred_on date, amount numeric, category text,
						approval_status text);
INSERT INTO ev_e_many
SELECT p, '2026-01-01'::date + d, 1, 'c' || (d % 5), 'approved'
FROM generate_series(1, 40) p, generate_series(0, 360, 2) d;
SELECT pg_relation_filenode('livekpi.booking_daily') AS bd_node,
	   pg_relation_filenode('livekpi.expense_daily') AS ed_node \gset
SELECT livekpi.track_bookings('ev_many');
SELECT livekpi.track_expenses('ev_e_many');
SELECT pg_relation_filenode('livekpi.booking_daily') <> :bd_node AS bookings_swapped,
	   pg_relation_filenode('livekpi.expense_daily') <> :ed_node AS expenses_swapped;
SELECT * FROM livekpi.verify();
CREATE TABLE ev_small (LIKE ev_many);
INSERT INTO ev_small VALUES
	(1, '2026-01-01', '2026-01-03', 5, NULL),		-- rows that exist: added to
	(1, '2026-01-02', '2026-01-02', 3, 'cancelled'),
	(99, '2026-02-01', '2026-02-04', 9, NULL),	-- a new property
	(99, '294277-01-01', '294277-01-02', 9, NULL);	-- skipped
CREATE TABLE ev_e_small (LIKE ev_e_many);
INSERT INTO ev_e_small VALUES
	(1, '2026-01-01', 2, 'c0', NULL),
	(98, '2026-01-01', 2, repeat('z', 300), 'approved'),
	(98, '5874897-12-30', 2, 'c0', 'approved');	-- skipped
SELECT pg_relation_filenode('livekpi.booking_daily') AS bd_node,
	   pg_relation_filenode('livekpi.expense_daily') AS ed_node,
	   pg_relation_filenode('livekpi.portfolio_monthly') AS pm_node \gset
SELECT livekpi.track_bookings('ev_small');
SELECT livekpi.track_expenses('ev_e_small');
SELECT pg_relation_filenode('livekpi.booking_daily') = :bd_node AS bookings_in_place,
	   pg_relation_filenode('livekpi.expense_daily') = :ed_node AS expenses_in_place,
	   pg_relation_filenode('livekpi.portfolio_monthly') = :pm_node AS portfolio_in_place;
SELECT property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals
FROM livekpi.booking_daily WHERE property_id IN (1, 99) AND day < '2026-01-04' OR property_id = 99
ORDER BY property_id, day;
SELECT property_id, day, length(category), approved_amount, pending_amount, expense_count
FROM livekpi.expense_daily WHERE property_id IN (1, 98) AND day = '2026-01-01' ORDER BY 1, 2, 3;
SELECT property_id FROM livekpi.properties WHERE property_id IN (98, 99) ORDER BY 1;
SELECT * FROM livekpi.verify();
INSERT INTO ev_small VALUES (1, '2026-01-01', '2026-01-02', 1, NULL);
SELECT livekpi.sync('30s');
SELECT * FROM livekpi.verify();

-- text keys longer than LIVEKPI_MAX_KEY_BYTES (1024) are skipped like NULL
DROP VIEW ev_bd, ev_ed;
SELECT livekpi.untrack(relid) FROM livekpi.tracked_tables ORDER BY relid::oid;
DELETE FROM livekpi.properties;
CREATE TABLE ev_text (property_id text, check_in date, check_out date, total_amount numeric);
CREATE TABLE ev_text_e (property_id text, incurred_on date, amount numeric, category text);
INSERT INTO ev_text VALUES (repeat('k', 3000), '2026-01-01', '2026-01-02', 1);
SELECT livekpi.track_bookings('ev_text', status_column => NULL);
SELECT livekpi.track_expenses('ev_text_e', status_column => NULL);
SELECT key_type FROM livekpi.state;
SELECT livekpi.sync('30s');
-- (earlier tests may have left an error: only a new one counts)
SELECT rows_skipped AS skipped_before, coalesce(last_error_at::text, 'none') AS error_at_before
FROM livekpi.status \gset
INSERT INTO ev_text VALUES
	(repeat('k', 1024), '2026-01-01', '2026-01-02', 1),	-- counts
	(repeat('k', 1025), '2026-01-01', '2026-01-02', 1),	-- skipped
	(repeat('é', 600), '2026-01-01', '2026-01-02', 1);	-- 1200 bytes: skipped
INSERT INTO ev_text_e VALUES
	(repeat('k', 1024), '2026-01-01', 1, repeat('é', 300)),	-- counts
	(repeat('k', 5000), '2026-01-01', 1, 'x');				-- skipped
SELECT livekpi.sync('30s');
SELECT coalesce(last_error_at::text, 'none') = :'error_at_before' AS no_new_error,
	   rows_skipped - :skipped_before AS skipped
FROM livekpi.status;
SELECT octet_length(property_id) AS key_bytes, day, nights_sold FROM livekpi.booking_daily;
SELECT octet_length(property_id) AS key_bytes, day, length(category) AS category_chars,
	   octet_length(category) AS category_bytes, expense_count
FROM livekpi.expense_daily;
SELECT octet_length(property_id) AS key_bytes FROM livekpi.properties;
SELECT * FROM livekpi.verify();
SELECT livekpi.rebuild();
SELECT octet_length(property_id) AS key_bytes, day, nights_sold FROM livekpi.booking_daily;
SELECT * FROM livekpi.verify();
DROP EXTENSION livekpi;
DROP TABLE ev_b_date, ev_b_ts, ev_b_tstz, ev_e_date, ev_e_ts, ev_e_tstz, ev_text, ev_text_e,
	ev_many, ev_e_many, ev_small, ev_e_small;
