-- Partitioned tables: partitions with their own attribute numbers, rows
-- moving between partitions, TRUNCATE of one partition, ATTACH and DETACH.
\set SHOW_CONTEXT never
CREATE TABLE pbookings (property_id int, check_in date, check_out date, total_amount numeric,
						status text) PARTITION BY RANGE (check_in);
CREATE TABLE pbookings_2026h1 PARTITION OF pbookings FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
-- a partition whose columns sit at other attribute numbers
CREATE TABLE pbookings_2026h2 (junk int, status text, total_amount numeric, check_out date,
							   check_in date, property_id int);
ALTER TABLE pbookings_2026h2 DROP COLUMN junk;
ALTER TABLE pbookings ATTACH PARTITION pbookings_2026h2 FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
INSERT INTO pbookings VALUES (50, '2026-06-30', '2026-07-02', 20, 'ok'), (51, '2026-10-01', '2026-10-02', 5, 'ok');
SELECT livekpi.track_bookings('pbookings');
-- a partition of a tracked table cannot be tracked on its own
SELECT livekpi.track_bookings('pbookings_2026h1');
SELECT count(*) AS truncate_triggers FROM pg_trigger WHERE tgname = 'livekpi_truncate'
	AND tgrelid IN ('pbookings'::regclass, 'pbookings_2026h1'::regclass, 'pbookings_2026h2'::regclass);

INSERT INTO pbookings VALUES (51, '2026-11-01', '2026-11-03', 30, 'ok');
UPDATE pbookings SET check_in = '2026-05-01', check_out = '2026-05-02' WHERE property_id = 51 AND check_in = '2026-10-01';
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id IN (50, 51);

-- TRUNCATE of one partition reaches the apply worker, which rebuilds
SELECT rebuilds AS rebuilds_before FROM livekpi.status \gset
TRUNCATE pbookings_2026h2;
SELECT livekpi.sync('30s');
SELECT rebuilds > :rebuilds_before AS rebuilt FROM livekpi.status;
SELECT * FROM bd WHERE property_id IN (50, 51);

-- ATTACH and DETACH move rows without firing triggers: livekpi rebuilds
CREATE TABLE pbookings_2027 (LIKE pbookings);
INSERT INTO pbookings_2027 VALUES (52, '2027-02-01', '2027-02-03', 40, 'ok');
ALTER TABLE pbookings ATTACH PARTITION pbookings_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id = 52;
INSERT INTO pbookings VALUES (52, '2027-03-01', '2027-03-02', 10, 'ok');	-- cloned trigger fires
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id = 52;
ALTER TABLE pbookings DETACH PARTITION pbookings_2027;
SELECT livekpi.sync('30s');
SELECT count(*) AS rows_of_52 FROM livekpi.booking_daily WHERE property_id = 52;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'pbookings_2027'::regclass;
SELECT count(*) AS differences FROM livekpi.verify();
SELECT livekpi.untrack('pbookings');
DROP TABLE pbookings, pbookings_2027;
SELECT livekpi.sync('30s');
SELECT count(*) AS differences FROM livekpi.verify();
