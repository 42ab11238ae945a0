-- Columns and triggers a user adds to a KPI table (docs/sql.md): a BEFORE
-- trigger that changes the stored row and an AFTER trigger that reads it
-- run for every row the apply worker writes (each in per-tuple memory), and
-- the delta carries the rows as stored; so with new rows inserted a heap
-- page at a time.
\set SHOW_CONTEXT never
ALTER TABLE livekpi.booking_daily ADD COLUMN note text;
CREATE TABLE public.kpi_audit (op text, property_id bigint, day date, nights bigint, note text);
CREATE FUNCTION public.kpi_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	NEW.note := 'nights ' || NEW.nights_sold;
	RETURN NEW;
END $$;
CREATE FUNCTION public.kpi_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO public.kpi_audit VALUES (TG_OP, NEW.property_id, NEW.day, NEW.nights_sold, NEW.note);
	RETURN NULL;
END $$;
CREATE TRIGGER kpi_note BEFORE INSERT OR UPDATE ON livekpi.booking_daily
	FOR EACH ROW EXECUTE FUNCTION public.kpi_note();
CREATE TRIGGER kpi_audit AFTER INSERT OR UPDATE ON livekpi.booking_daily
	FOR EACH ROW EXECUTE FUNCTION public.kpi_audit();
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
SELECT 95000 + i, 950 + i % 5, DATE '2027-03-01' + i % 10, DATE '2027-03-01' + i % 10 + 3, 90
FROM generate_series(0, 99) AS i;
SELECT livekpi.sync('30s');
UPDATE bookings SET check_out = check_out + 1 WHERE id BETWEEN 95000 AND 95049;
SELECT livekpi.sync('30s');
SELECT op, count(*) AS row_count, bool_and(note = 'nights ' || nights) AS notes_as_stored
FROM public.kpi_audit GROUP BY op ORDER BY op;
SELECT count(*) AS daily_rows, bool_and(note = 'nights ' || nights_sold) AS notes_set
FROM livekpi.booking_daily WHERE property_id BETWEEN 950 AND 959;
-- the newest batch's booking_daily rows are the rows as stored
CREATE TEMP VIEW newest_daily_delta AS
SELECT count(*) AS delta_rows,
	   count(*) FILTER (WHERE NOT EXISTS (
		   SELECT FROM livekpi.booking_daily v WHERE to_jsonb(v) = d.data)) AS not_as_stored
FROM livekpi.delta_rows((SELECT last_seq FROM livekpi.state)) d
WHERE d.view = 'booking_daily' AND d.op = 'upsert';
SET TimeZone = 'UTC';
SELECT * FROM newest_daily_delta;
RESET TimeZone;
SELECT count(*) AS differences FROM livekpi.verify();

-- without a BEFORE ROW trigger, new rows go in a heap page at a time
-- (table_multi_insert, more than one group of MULTI_INSERT_ROWS here): the
-- AFTER trigger still runs for each, a stored generated column is computed
-- for each, and the delta carries them as stored
DROP TRIGGER kpi_note ON livekpi.booking_daily;
ALTER TABLE livekpi.booking_daily ADD COLUMN revenue_per_night numeric
	GENERATED ALWAYS AS (room_revenue / nullif(nights_sold, 0)) STORED;
TRUNCATE public.kpi_audit;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
SELECT 96000 + i, 960 + i % 5, DATE '2027-03-01' + i % 600, DATE '2027-03-01' + i % 600 + 2, 50
FROM generate_series(0, 2499) AS i;
SELECT livekpi.sync('30s');
SELECT count(*) AS new_daily_rows,
	   count(*) = (SELECT count(*) FROM public.kpi_audit WHERE op = 'INSERT') AS audited_each,
	   bool_and(revenue_per_night = room_revenue / nights_sold) AS generated_each
FROM livekpi.booking_daily WHERE property_id BETWEEN 960 AND 964;
SET TimeZone = 'UTC';
SELECT * FROM newest_daily_delta;
RESET TimeZone;
SELECT count(*) AS differences FROM livekpi.verify();

-- leave the KPI tables as the other tests expect them
DELETE FROM bookings WHERE id BETWEEN 95000 AND 95099 OR id BETWEEN 96000 AND 98499;
SELECT livekpi.sync('30s');
ALTER TABLE livekpi.booking_daily DROP COLUMN revenue_per_night;
DROP TRIGGER kpi_audit ON livekpi.booking_daily;
ALTER TABLE livekpi.booking_daily DROP COLUMN note;
DROP FUNCTION public.kpi_note(), public.kpi_audit();
DROP TABLE public.kpi_audit;
DROP VIEW newest_daily_delta;
SELECT count(*) AS differences FROM livekpi.verify();
