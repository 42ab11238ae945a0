-- SPEC section 2: disabled capture is never a silent loss (issue 8 item 4).
\set SHOW_CONTEXT never
SELECT livekpi.sync('30s');
SELECT stale, stale_reason FROM livekpi.status;

-- DISABLE TRIGGER ALL warns and marks the KPIs stale at once
ALTER TABLE bookings DISABLE TRIGGER ALL;
SELECT stale, stale_reason, stale_since IS NOT NULL AS since_set FROM livekpi.status;
INSERT INTO bookings (property_id, check_in, check_out, total_amount)
SELECT 900 + i % 5, date '2026-03-01' + i % 20, date '2026-03-03' + i % 20, 10 + i
FROM generate_series(1, 500) i;
SELECT livekpi.sync('30s');
-- the rows written meanwhile were not captured ...
SELECT count(*) > 0 AS differs FROM livekpi.verify();
-- enabling recomputes by itself, ALWAYS again, exact and no longer stale
ALTER TABLE bookings ENABLE TRIGGER ALL;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'bookings'::regclass
  AND tgname LIKE 'livekpi%' ORDER BY 1;
SELECT stale, stale_reason FROM livekpi.status;
SELECT count(*) AS differences FROM livekpi.verify();
SELECT sum(nights_sold) AS nights_900 FROM livekpi.booking_daily WHERE property_id BETWEEN 900 AND 904;

-- rebuild() while capture is off: stale exactly as long as a trigger is off
-- (rebuild() may put the triggers back itself)
ALTER TABLE bookings DISABLE TRIGGER livekpi_capture;
SELECT livekpi.rebuild();
SELECT stale = EXISTS (SELECT FROM livekpi._capture_gaps()) AS stale_iff_off FROM livekpi.status;
SET client_min_messages = warning;
ALTER TABLE bookings ENABLE ALWAYS TRIGGER livekpi_capture;
RESET client_min_messages;
SELECT stale FROM livekpi.status;

-- a single trigger, ENABLE REPLICA, two tables: whole again only when all fire
ALTER TABLE bookings DISABLE TRIGGER livekpi_capture;
ALTER TABLE expenses ENABLE REPLICA TRIGGER livekpi_truncate;
SELECT stale, stale_reason FROM livekpi.status;
ALTER TABLE bookings ENABLE ALWAYS TRIGGER livekpi_capture;
SELECT stale FROM livekpi.status;
ALTER TABLE expenses ENABLE ALWAYS TRIGGER livekpi_truncate;
SELECT stale FROM livekpi.status;

-- a single partition of a tracked partitioned table
CREATE TABLE pstays (property_id int, check_in date, check_out date, total_amount numeric, status text)
	PARTITION BY RANGE (check_in);
CREATE TABLE pstays_a PARTITION OF pstays FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE pstays_b PARTITION OF pstays FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
SELECT livekpi.track_bookings('pstays');
ALTER TABLE pstays_b DISABLE TRIGGER livekpi_capture;
INSERT INTO pstays VALUES (910, '2026-08-01', '2026-08-03', 100), (910, '2026-02-01', '2026-02-02', 50);
SELECT stale, stale_reason FROM livekpi.status;
ALTER TABLE pstays_b ENABLE TRIGGER livekpi_capture;
SELECT livekpi.sync('30s');
SELECT stale FROM livekpi.status;
SELECT count(*) AS differences FROM livekpi.verify();

-- in REPEATABLE READ the recompute cannot run: stale until rebuild()
ALTER TABLE bookings DISABLE TRIGGER livekpi_capture;
BEGIN ISOLATION LEVEL REPEATABLE READ;
ALTER TABLE bookings ENABLE ALWAYS TRIGGER livekpi_capture;
COMMIT;
SELECT stale FROM livekpi.status;
SELECT livekpi.rebuild();
SELECT stale FROM livekpi.status;

-- a rewrite (rows changed without triggers) is recomputed when the command ends
ALTER TABLE pstays ADD COLUMN note text DEFAULT 'x';
ALTER TABLE pstays ALTER COLUMN note TYPE varchar(10) USING upper(note);
SELECT stale FROM livekpi.status;
SELECT count(*) AS differences FROM livekpi.verify();

-- DROP TRIGGER says what happened
DROP TRIGGER livekpi_capture ON pstays;
SELECT count(*) AS pstays_tracked FROM livekpi.tracked_tables WHERE relid = 'pstays'::regclass;
DROP TABLE pstays;

DELETE FROM bookings WHERE property_id BETWEEN 900 AND 904;
SELECT livekpi.sync('30s');
SELECT stale FROM livekpi.status;
SELECT count(*) AS differences FROM livekpi.verify();
