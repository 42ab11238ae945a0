-- SPEC section 2 types: keys int2/int4/int8/uuid/text, dates date/timestamp/
-- timestamptz (converted in livekpi.timezone), amounts of any numeric type.
\set SHOW_CONTEXT never

-- smallint and bigint keys share the bigint key type with integer keys
CREATE TABLE small_keys (property_id smallint, check_in timestamp, check_out timestamp,
						 total_amount real, status varchar(20));
CREATE TABLE big_keys (property_id bigint, incurred_on timestamptz, amount double precision,
					   category char(10), approval_status varchar);
INSERT INTO small_keys VALUES
	(20, '2026-08-01 23:59', '2026-08-03 00:01', 10.5, 'ok'),
	(20, '2026-08-05 10:00', '2026-08-06 10:00', 'NaN', 'ok'),		-- counted, amount 0
	(20, '2026-08-07 10:00', '2026-08-08 10:00', 'Infinity', 'ok'),	-- counted, amount 0
	(20, 'infinity', '2026-08-08 10:00', 1, 'ok');						-- skipped
INSERT INTO big_keys VALUES
	-- 23:30 UTC is the next day in Europe/Berlin; the timezone is set below
	(9000000000, '2026-08-01 23:30+00', 12.25, 'cleaning', 'approved'),
	(9000000000, '2026-08-01 12:00+00', 'NaN', 'cleaning  ', 'approved');	-- char(10) pads
-- livekpi.timezone is a server setting (sighup); a new session sees it
ALTER SYSTEM SET livekpi.timezone = 'Europe/Berlin';
SELECT pg_reload_conf();
\c
SHOW livekpi.timezone;
SELECT livekpi.track_bookings('small_keys');
SELECT livekpi.track_expenses('big_keys');
ALTER SYSTEM RESET livekpi.timezone;
SELECT pg_reload_conf();
\c
SHOW livekpi.timezone;
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id = 20;
SELECT * FROM ed WHERE property_id = 9000000000;
INSERT INTO big_keys VALUES (9000000000, '2026-08-02 21:59+00', 1, 'cleaning', 'approved');
SELECT livekpi.sync('30s');
SELECT * FROM ed WHERE property_id = 9000000000;
SELECT count(*) AS differences FROM livekpi.verify();
SELECT livekpi.untrack('small_keys');
SELECT livekpi.untrack('big_keys');
DROP TABLE small_keys, big_keys;

-- uuid keys: when nothing is tracked the KPI tables take the new key type
SELECT livekpi.untrack('bookings');
SELECT livekpi.untrack('expenses');
-- views over the KPI tables pin the key type; so do properties left behind
DROP VIEW bd, ed;
-- the newest batch as clients get it (delta_rows), against the views (a
-- function: the views are made anew with each key type)
CREATE FUNCTION pg_temp.last_delta_vs_views(OUT has_upserts boolean, OUT not_in_views bigint)
LANGUAGE sql AS $$
SELECT count(*) > 0,
	   count(*) FILTER (WHERE NOT EXISTS (
		   SELECT FROM livekpi.property_kpis v WHERE to_jsonb(v) = d.data
		   UNION ALL SELECT FROM livekpi.portfolio_kpis v WHERE to_jsonb(v) = d.data
		   UNION ALL SELECT FROM livekpi.booking_daily v WHERE to_jsonb(v) = d.data
		   UNION ALL SELECT FROM livekpi.expense_monthly v WHERE to_jsonb(v) = d.data))
FROM livekpi.delta_rows((SELECT last_seq FROM livekpi.state)) d WHERE d.op = 'upsert'
$$;
CREATE TABLE uuid_bookings (property_id uuid, check_in date, check_out date, total_amount integer, status text);
INSERT INTO uuid_bookings VALUES ('00000000-0000-0000-0000-0000000000a1', '2026-09-01', '2026-09-03', 101, NULL);
SELECT livekpi.track_bookings('uuid_bookings');
SELECT count(*) AS tracked FROM livekpi.tracked_tables;
DELETE FROM livekpi.properties;
SELECT livekpi.track_bookings('uuid_bookings');
SELECT key_type FROM livekpi.state;
SELECT pg_typeof(property_id) FROM livekpi.booking_daily LIMIT 1;
INSERT INTO uuid_bookings VALUES ('00000000-0000-0000-0000-0000000000a2', '2026-09-02', '2026-09-03', 7, NULL);
SELECT livekpi.sync('30s');
SELECT property_id, day, nights_sold, room_revenue FROM livekpi.booking_daily ORDER BY 1, 2;
SELECT to_jsonb(k) -> 'property_id' AS json_key FROM livekpi.property_kpis k ORDER BY 1;
-- the batch as clients get it: each upsert is to_jsonb of its view row
SET TimeZone = 'UTC';
SELECT * FROM pg_temp.last_delta_vs_views();
RESET TimeZone;
SELECT properties, nights_sold FROM livekpi.kpis('2026-09-01', '2026-09-30',
	ARRAY['00000000-0000-0000-0000-0000000000a2']::uuid[]);
SELECT count(*) AS differences FROM livekpi.verify();
SELECT livekpi.untrack('uuid_bookings');
DROP TABLE uuid_bookings;

-- text keys
CREATE TABLE text_expenses (property_id varchar(10), incurred_on date, amount bigint, category text, approval_status text);
SELECT livekpi.track_expenses('text_expenses');
INSERT INTO text_expenses VALUES ('villa-7', '2026-09-01', 300, 'pool', 'approved');
SELECT livekpi.sync('30s');
SELECT property_id, day, category, approved_amount FROM livekpi.expense_daily;
SELECT to_jsonb(k) -> 'property_id' AS json_key FROM livekpi.property_kpis k;
-- the batch as clients get it: each upsert is to_jsonb of its view row
SET TimeZone = 'UTC';
SELECT * FROM pg_temp.last_delta_vs_views();
RESET TimeZone;
SELECT count(*) AS differences FROM livekpi.verify();
SELECT livekpi.untrack('text_expenses');
DROP TABLE text_expenses;

-- back to the bigint tables of the other tests
DELETE FROM livekpi.properties;
SELECT livekpi.track_bookings('bookings');
SELECT livekpi.track_expenses('expenses');
CREATE VIEW bd AS
SELECT property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals
FROM livekpi.booking_daily ORDER BY property_id, day;
CREATE VIEW ed AS
SELECT property_id, day, category, approved_amount, pending_amount, rejected_amount, expense_count
FROM livekpi.expense_daily ORDER BY property_id, day, category;
SELECT key_type FROM livekpi.state;
SELECT count(*) AS differences FROM livekpi.verify();
