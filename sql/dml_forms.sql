-- Every way rows change: COPY, INSERT ... ON CONFLICT, MERGE, savepoints,
-- rollbacks, TRUNCATE; and the delta_log row a change produces.
\set SHOW_CONTEXT never
TRUNCATE bookings, expenses;
SELECT livekpi.sync('30s');

COPY bookings (id, property_id, check_in, check_out, total_amount, status) FROM stdin;
1	60	2026-10-01	2026-10-03	100	confirmed
2	60	2026-10-02	2026-10-03	50	confirmed
\.
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount, status)
VALUES (2, 60, '2026-10-02', '2026-10-04', 80, 'confirmed')
ON CONFLICT (id) DO UPDATE SET check_out = excluded.check_out, total_amount = excluded.total_amount;
MERGE INTO bookings b
USING (VALUES (1, 'cancelled'), (3, 'confirmed')) AS s(id, status) ON b.id = s.id
WHEN MATCHED THEN UPDATE SET status = s.status
WHEN NOT MATCHED THEN INSERT (id, property_id, check_in, check_out, total_amount, status)
	VALUES (s.id, 61, '2026-10-05', '2026-10-06', 10, s.status);
BEGIN;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount) VALUES (4, 62, '2026-10-01', '2026-10-02', 1);
SAVEPOINT s1;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount) VALUES (5, 63, '2026-10-01', '2026-10-02', 1);
UPDATE bookings SET total_amount = 999 WHERE id = 4;
ROLLBACK TO s1;
SAVEPOINT s2;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount) VALUES (6, 64, '2026-10-01', '2026-10-02', 2);
RELEASE s2;
COMMIT;
BEGIN;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount) VALUES (7, 65, '2026-10-01', '2026-10-02', 1);
ROLLBACK;
SELECT livekpi.sync('30s');
SELECT * FROM bd;

-- one committed change, one delta_log row with the touched SPEC 7 rows
SELECT last_seq AS seq_before FROM livekpi.state \gset
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount) VALUES (8, 66, '2026-10-31', '2026-11-01', 12.5);
SELECT livekpi.sync('30s');
SELECT seq - :seq_before AS seq_step, barrier, committed_at <= applied_at AS ordered,
	   lsn IS NOT NULL AS has_lsn,
	   (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(upserts) k) AS views,
	   (upserts -> 'booking_daily' -> 0) - 'updated_at' AS booking_daily_row,
	   upserts -> 'property_kpis' -> 0 -> 'room_revenue' AS property_revenue,
	   deletes
FROM livekpi.delta_log WHERE seq > :seq_before;
-- the upserted row, as delta_rows() renders it, is exactly to_jsonb of the
-- view row (the workers run in UTC); delta_log stores it without the
-- computed columns
SET TimeZone = 'UTC';
SELECT (SELECT data FROM livekpi.delta_rows(:seq_before + 1) WHERE view = 'property_kpis')
	   = to_jsonb(k) AS same_as_view,
	   (SELECT array_agg(c ORDER BY c) FROM livekpi.delta_log l, jsonb_object_keys(to_jsonb(k)) c
		WHERE l.seq = :seq_before + 1 AND NOT (l.upserts -> 'property_kpis' -> 0) ? c) AS not_stored
FROM livekpi.property_kpis k WHERE property_id = 66;
RESET TimeZone;
-- _delta_render computes the five columns as the views do (hand-checked:
-- 3 of 30 nights, 300.00 of revenue, 2 arrivals and 1 cancellation, 50
-- approved), replaces any stored under those names, leaves other views'
-- rows as they are, and refuses a row that lacks a number it needs
SELECT livekpi._delta_render('property_kpis',
	'{"property_id": 1, "month": "2026-01-01", "units": 1, "available_nights": 30, "nights_sold": 3,
	  "room_revenue": 300.00, "arrivals": 2, "cancelled_arrivals": 1, "approved_expenses": 50,
	  "pending_expenses": 0, "updated_at": null, "name": null, "adr": 1}') AS rendered;
SELECT livekpi._delta_render('portfolio_kpis',
	'{"month": "2026-01-01", "properties": 0, "available_nights": 0, "nights_sold": 0,
	  "room_revenue": 0, "arrivals": 0, "cancelled_arrivals": 0, "approved_expenses": 0,
	  "pending_expenses": 0, "updated_at": null}') AS rendered_empty;
SELECT livekpi._delta_render('booking_daily', '{"day": "2026-01-01", "adr": 1}') AS unchanged;
SELECT livekpi._delta_render('property_kpis', '{"nights_sold": "3"}');
DELETE FROM bookings WHERE id = 8;
SELECT livekpi.sync('30s');
SELECT upserts ? 'property_kpis' AS upserted, deletes FROM livekpi.delta_log
WHERE seq = (SELECT last_seq FROM livekpi.state);

-- a bulk load that touches more than 20,000 daily rows is a delta like any
-- other batch, never a barrier: stored in parts of at most 20,000 rows
-- (the earlier ones in delta_log_parts), every row once
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
SELECT 1000 + i, 100 + i % 100, DATE '2026-01-01' + i / 100, DATE '2026-01-01' + i / 100 + 1, 1
FROM generate_series(0, 20999) AS i;
SELECT livekpi.sync('60s');
SELECT l.barrier,
	   (SELECT count(*) FROM livekpi.delta_log_parts p WHERE p.seq = l.seq) AS parts,
	   (SELECT sum(jsonb_array_length(x.u -> 'booking_daily'))
		FROM (SELECT l.upserts AS u
			  UNION ALL SELECT p.upserts FROM livekpi.delta_log_parts p WHERE p.seq = l.seq) x) AS booking_daily_rows,
	   (SELECT sum(jsonb_array_length(x.u -> 'property_kpis'))
		FROM (SELECT l.upserts AS u
			  UNION ALL SELECT p.upserts FROM livekpi.delta_log_parts p WHERE p.seq = l.seq) x) AS property_kpis_rows
FROM livekpi.delta_log l WHERE l.seq = (SELECT last_seq FROM livekpi.state);
SELECT count(*) AS daily_rows FROM livekpi.booking_daily WHERE property_id >= 100;
SELECT count(*) AS differences FROM livekpi.verify();
DELETE FROM bookings WHERE id >= 1000;

-- TRUNCATE: the worker rebuilds and writes a barrier
TRUNCATE bookings;
SELECT livekpi.sync('30s');
SELECT barrier FROM livekpi.delta_log WHERE seq = (SELECT last_seq FROM livekpi.state);
SELECT count(*) AS rows_left FROM livekpi.booking_daily;
SELECT count(*) AS differences FROM livekpi.verify();
