-- SPEC section 3, bookings: every rule and its edge cases, checked against
-- hand-computed rows and against verify().
\set SHOW_CONTEXT never
TRUNCATE bookings;
SELECT livekpi.sync('30s');

-- a three-night stay: 100 / 3 = 33.33, 33.33 and the rest 33.34 on the last night
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
VALUES (1, '2026-01-30', '2026-02-02', 100, 'confirmed');
SELECT livekpi.sync('30s');
SELECT * FROM bd;

-- rounding that goes the other way: 200 / 3 = 66.67, 66.67, 66.66
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
VALUES (2, '2026-03-01', '2026-03-04', 200, NULL);
-- negative amounts split the same way: -10 / 4 = -2.50 x 4
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
VALUES (3, '2026-03-01', '2026-03-05', -10, 'whatever');
-- NULL amount counts as 0; the arrival and the nights still count
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
VALUES (4, '2026-03-01', '2026-03-03', NULL, 'confirmed');
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id IN (2, 3, 4);

-- n = 0 and n < 0: revenue and the arrival on the check-in day, no nights
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status) VALUES
	(5, '2026-04-10', '2026-04-10', 80, 'confirmed'),
	(5, '2026-04-10', '2026-04-07', 20, 'confirmed');
-- cancelled (both spellings): only cancelled_arrivals on the check-in day
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status) VALUES
	(6, '2026-04-10', '2026-04-12', 500, 'cancelled'),
	(6, '2026-04-10', '2026-04-20', 500, 'canceled'),
	(6, '2026-04-11', '2026-04-08', 500, 'cancelled');
-- statuses are compared exactly: 'Cancelled' is not cancelled
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
VALUES (6, '2026-04-11', '2026-04-12', 10, 'Cancelled');
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id IN (5, 6);

-- skipped: NULL property, NULL dates, infinite dates, longer than max_stay_nights
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status) VALUES
	(NULL, '2026-05-01', '2026-05-02', 1, 'confirmed'),
	(7, NULL, '2026-05-02', 1, 'confirmed'),
	(7, '2026-05-01', NULL, 1, 'confirmed'),
	(7, '-infinity', '2026-05-02', 1, 'confirmed'),
	(7, '2026-05-01', 'infinity', 1, 'confirmed'),
	(7, '2026-05-01', '2029-01-27', 1, 'confirmed');
-- exactly max_stay_nights (1000) still counts
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
VALUES (8, '2026-01-01', '2028-09-27', 1000, 'confirmed');
SELECT livekpi.sync('30s');
SELECT count(*) AS rows_of_7 FROM livekpi.booking_daily WHERE property_id = 7;
SELECT count(*) AS nights, sum(nights_sold) AS nights_sold, sum(room_revenue) AS revenue,
	   sum(arrivals) AS arrivals, min(day), max(day)
FROM livekpi.booking_daily WHERE property_id = 8;
SELECT rows_skipped >= 6 AS skips_counted FROM livekpi.status;

-- updates move contributions: dates, property, status, amount
UPDATE bookings SET check_out = '2026-02-01' WHERE property_id = 1;
UPDATE bookings SET property_id = 12 WHERE property_id = 2;
UPDATE bookings SET status = 'cancelled' WHERE property_id = 4;
UPDATE bookings SET total_amount = 7.77 WHERE property_id = 3;
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id IN (1, 2, 3, 4, 12);

-- an update that changes nothing livekpi reads writes no message
SELECT last_seq AS seq_before FROM livekpi.state \gset
UPDATE bookings SET total_amount = total_amount WHERE property_id = 3;
SELECT livekpi.sync('30s');
SELECT last_seq = :seq_before AS no_new_batch FROM livekpi.state;

-- a row exists only while something contributes to it
DELETE FROM bookings WHERE property_id IN (5, 6, 8);
SELECT livekpi.sync('30s');
SELECT count(*) AS rows_left FROM livekpi.booking_daily WHERE property_id IN (5, 6, 8);
SELECT count(*) AS months_left FROM livekpi.booking_monthly WHERE property_id IN (5, 6, 8);

-- a stay and its undoing within one transaction leave nothing behind
BEGIN;
INSERT INTO bookings (property_id, check_in, check_out, total_amount) VALUES (9, '2026-06-01', '2026-06-03', 10);
DELETE FROM bookings WHERE property_id = 9;
COMMIT;
SELECT livekpi.sync('30s');
SELECT count(*) AS rows_of_9 FROM livekpi.booking_daily WHERE property_id = 9;

SELECT * FROM livekpi.verify();
