-- SPEC sections 2 and 4: units and names from the user's own table
-- (issue 11 item 3).
\set SHOW_CONTEXT never
CREATE TABLE listings (listing_id int PRIMARY KEY, rooms int, title text, city text);
INSERT INTO listings VALUES (701, 6, 'Harbour House', 'Boston'), (702, NULL, 'Loft', 'NYC'),
	(703, 2, 'Cabin', 'Vermont'), (704, 0, 'Tiny', 'Maine');
INSERT INTO bookings (property_id, check_in, check_out, total_amount)
VALUES (701, '2026-04-01', '2026-04-04', 300), (702, '2026-04-02', '2026-04-03', 90);
SELECT livekpi.sync('30s');
SELECT livekpi.track_properties('listings', property_column => 'listing_id',
								units_column => 'rooms', name_column => 'title');
-- backfilled: every row is a property; NULL and non-positive units skipped and counted
SELECT property_id, units, name FROM livekpi.properties WHERE property_id BETWEEN 700 AND 799 ORDER BY 1;
SELECT units_skipped FROM livekpi.tracked_properties;
SELECT property_id, month, units, available_nights, nights_sold, occupancy, name
FROM livekpi.property_kpis WHERE property_id BETWEEN 700 AND 799 ORDER BY 1, 2;

-- kept in step, streamed to the KPIs
INSERT INTO listings VALUES (705, 3, 'Barn', 'Maine');
UPDATE listings SET rooms = 5, title = 'Harbour House East' WHERE listing_id = 701;
UPDATE listings SET rooms = -1 WHERE listing_id = 703;		-- skipped: 703 keeps 2
SELECT livekpi.sync('30s');
SELECT property_id, units, name FROM livekpi.properties WHERE property_id BETWEEN 700 AND 799 ORDER BY 1;
SELECT units_skipped FROM livekpi.tracked_properties;
SELECT units, available_nights, name FROM livekpi.property_kpis WHERE property_id = 701 AND month = '2026-04-01';
-- the name alone also reaches the clients (delta_log carries the view row)
UPDATE listings SET title = 'Loft 2' WHERE listing_id = 702;
SELECT livekpi.sync('30s');
SELECT upserts -> 'property_kpis' -> 0 ->> 'name' AS pushed_name FROM livekpi.delta_log
WHERE seq = (SELECT last_seq FROM livekpi.state);
-- a user's own edit is overwritten by the next change of the row
UPDATE livekpi.properties SET units = 9 WHERE property_id = 701;
SELECT units FROM livekpi.properties WHERE property_id = 701;
UPDATE listings SET city = 'Salem' WHERE listing_id = 701;
SELECT units FROM livekpi.properties WHERE property_id = 701;
-- while its units are unusable, a property keeps the last good units
UPDATE listings SET city = 'Burlington' WHERE listing_id = 703;
SELECT units FROM livekpi.properties WHERE property_id = 703;
UPDATE listings SET rooms = 4 WHERE listing_id = 703;
SELECT units FROM livekpi.properties WHERE property_id = 703;
-- a deleted row leaves the property with its last units and name
DELETE FROM listings WHERE listing_id = 705;
SELECT property_id, units, name FROM livekpi.properties WHERE property_id = 705;
SELECT count(*) AS differences FROM livekpi.verify();

-- at most one table
CREATE TABLE listings2 (id int, rooms float8, title json);
SELECT livekpi.track_properties('listings2', property_column => 'id', units_column => NULL, name_column => NULL);

-- disabled: stale; enabled again: in step again
ALTER TABLE listings DISABLE TRIGGER livekpi_property;
UPDATE listings SET rooms = 7 WHERE listing_id = 701;
SELECT stale, stale_reason FROM livekpi.status;
ALTER TABLE listings ENABLE TRIGGER livekpi_property;
SELECT stale FROM livekpi.status;
SELECT units FROM livekpi.properties WHERE property_id = 701;

-- untrack: the trigger goes, the properties stay
SELECT livekpi.untrack('listings');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'listings'::regclass;
UPDATE listings SET rooms = 8 WHERE listing_id = 701;
SELECT units, name FROM livekpi.properties WHERE property_id = 701;
SELECT count(*) AS tracked FROM livekpi.tracked_properties;
-- mapping problems in one error
SELECT livekpi.track_properties('listings2', property_column => 'id', units_column => 'rooms', name_column => 'title');

-- a dropped mapped column stops following the table, with a WARNING
SELECT livekpi.track_properties('listings', property_column => 'listing_id',
								units_column => 'rooms', name_column => 'title');
ALTER TABLE listings DROP COLUMN title;
SELECT count(*) AS tracked FROM livekpi.tracked_properties;

DELETE FROM bookings WHERE property_id BETWEEN 700 AND 799;
DROP TABLE listings, listings2;
DELETE FROM livekpi.properties WHERE property_id BETWEEN 700 AND 799;
SELECT livekpi.sync('30s');
SELECT count(*) AS differences FROM livekpi.verify();
