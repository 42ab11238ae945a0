-- The extension and a helper every later test uses: sync() waits until the
-- apply worker has applied everything committed so far.
\set SHOW_CONTEXT never
CREATE EXTENSION livekpi;
SELECT extname, extversion FROM pg_extension WHERE extname = 'livekpi';
-- the apply worker creates its slot; wait for it
SELECT livekpi.sync('60s');
SELECT slot_name, plugin, slot_type FROM pg_replication_slots WHERE slot_name = 'livekpi';
SELECT apply_state IN ('idle', 'streaming', 'applying') AS apply_running, slot_ready FROM livekpi.status;

-- the tables the tests track
CREATE TABLE bookings (
	id serial PRIMARY KEY,
	property_id int,
	check_in date,
	check_out date,
	total_amount numeric(12, 2),
	status text
);
CREATE TABLE expenses (
	id serial PRIMARY KEY,
	property_id int,
	incurred_on date,
	amount numeric(12, 2),
	category text,
	approval_status text
);
SELECT livekpi.track_bookings('bookings');
SELECT livekpi.track_expenses('expenses');
SELECT table_name, kind, property_column, day_column, check_out_column, amount_column,
	   status_column, category_column, cancelled_or_approved_statuses, rejected_statuses,
	   max_stay_nights, timezone
FROM livekpi.tracked ORDER BY kind;

-- shows the daily booking rows without the batch time
CREATE VIEW bd AS
SELECT property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals
FROM livekpi.booking_daily ORDER BY property_id, day;
CREATE VIEW ed AS
SELECT property_id, day, category, approved_amount, pending_amount, rejected_amount, expense_count
FROM livekpi.expense_daily ORDER BY property_id, day, category;
