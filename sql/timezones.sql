-- SPEC section 2: a per-table time zone for timestamptz columns (issue 11 item 2).
\set SHOW_CONTEXT never
CREATE TABLE reservations (reservation_id int PRIMARY KEY, listing_id int, arrival timestamptz,
						   departure timestamptz, gross numeric, state text);
-- 21:00 on 30 Nov in New York is 02:00 on 1 Dec in UTC
INSERT INTO reservations VALUES (1, 501, '2026-11-30 21:00-05', '2026-12-02 10:00-05', 250, 'ok');
SELECT livekpi.track_bookings('reservations', property_column => 'listing_id',
							  check_in_column => 'arrival', check_out_column => 'departure',
							  amount_column => 'gross', status_column => 'state',
							  timezone => 'America/New_York');
SELECT table_name, timezone FROM livekpi.tracked WHERE table_name = 'reservations'::regclass;
SELECT day, nights_sold, room_revenue, arrivals FROM livekpi.booking_daily WHERE property_id = 501 ORDER BY day;
-- streamed changes use the table's zone too
INSERT INTO reservations VALUES (2, 502, '2026-11-30 22:30-05', '2026-12-01 09:00-05', 80, 'ok');
SELECT livekpi.sync('30s');
SELECT day, nights_sold, arrivals FROM livekpi.booking_daily WHERE property_id = 502 ORDER BY day;

-- set_timezone() changes it and recomputes
SELECT livekpi.set_timezone('reservations', 'UTC');
SELECT table_name, timezone FROM livekpi.tracked WHERE table_name = 'reservations'::regclass;
SELECT property_id, day, nights_sold, arrivals FROM livekpi.booking_daily
WHERE property_id IN (501, 502) ORDER BY 1, 2;
SELECT livekpi.set_timezone('reservations', 'America/New_York');
SELECT count(*) AS differences FROM livekpi.verify();
-- a zone PostgreSQL does not know, a table that is not tracked
SELECT livekpi.set_timezone('reservations', 'Mars/Olympus_Mons');
CREATE TABLE not_tracked (x int);
SELECT livekpi.set_timezone('not_tracked', 'UTC');
DROP TABLE not_tracked;
SELECT timezone FROM livekpi.tracked WHERE table_name = 'reservations'::regclass;

-- timezone => NULL: livekpi.timezone at track time; date columns get no NOTICE
CREATE TABLE day_costs (property_id int, incurred_on date, amount numeric);
SELECT livekpi.track_expenses('day_costs', category_column => NULL, status_column => NULL);
SELECT timezone FROM livekpi.tracked WHERE table_name = 'day_costs'::regclass;
SELECT livekpi.untrack('day_costs');
DROP TABLE day_costs;

-- SET of a server-wide setting says how to change it
SET livekpi.timezone = 'America/New_York';
SET livekpi.flush_interval = 10;
SET livekpi.port = 1;

SELECT livekpi.untrack('reservations');
DROP TABLE reservations;
