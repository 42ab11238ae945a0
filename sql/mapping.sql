-- SPEC section 2: mapping errors, renames, dropped columns, ownership.
\set SHOW_CONTEXT never
CREATE TABLE stays (id int, prop int, arrive date, leave date, price numeric, state text,
					note json, price_money money);

-- each wrong mapping names the table and the column, and changes nothing
SELECT livekpi.track_bookings('stays');
SELECT livekpi.track_bookings('stays', property_column => 'prop', check_in_column => 'nope');
SELECT livekpi.track_bookings('stays', property_column => 'note');
SELECT livekpi.track_bookings('stays', property_column => 'prop', check_in_column => 'arrive',
							  check_out_column => 'leave', amount_column => 'price_money');
SELECT livekpi.track_bookings('stays', property_column => 'prop', check_in_column => 'arrive',
							  check_out_column => 'leave', amount_column => 'price',
							  status_column => 'note');
SELECT livekpi.track_bookings('stays', property_column => 'id', check_in_column => 'price');
SELECT count(*) AS tracked FROM livekpi.tracked_tables WHERE relid = 'stays'::regclass;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'stays'::regclass;

-- not a table, unknown table, already tracked
CREATE VIEW stays_view AS SELECT * FROM stays;
SELECT livekpi.track_bookings('stays_view');
SELECT livekpi.track_bookings('no_such_table');
SELECT livekpi.track_bookings('bookings');
SELECT livekpi.untrack('stays');

-- a key type other than the tracked tables' (bigint here) is refused
CREATE TABLE uuid_bookings (property_id uuid, check_in date, check_out date, total_amount numeric, status text);
SELECT livekpi.track_bookings('uuid_bookings');
DROP TABLE uuid_bookings;

-- only READ COMMITTED: the recompute must see what the locks protect
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT livekpi.rebuild();
ROLLBACK;

-- only the owner may track; the owner needs nothing but EXECUTE
CREATE ROLE livekpi_regress_other;
GRANT CREATE ON SCHEMA public TO livekpi_regress_other;
GRANT USAGE ON SCHEMA livekpi TO livekpi_regress_other;
GRANT EXECUTE ON FUNCTION livekpi.track_bookings(regclass, name, name, name, name, name, text[], text),
	livekpi.untrack(regclass) TO livekpi_regress_other;
SET ROLE livekpi_regress_other;
SELECT livekpi.track_bookings('stays', property_column => 'prop', check_in_column => 'arrive',
							  check_out_column => 'leave', amount_column => 'price');
CREATE TABLE others_stays (property_id int, check_in date, check_out date, total_amount numeric, status text);
INSERT INTO others_stays VALUES (300, '2026-07-01', '2026-07-02', 9, 'ok');
SELECT livekpi.track_bookings('others_stays');
RESET ROLE;
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id = 300;
SET ROLE livekpi_regress_other;
SELECT livekpi.untrack('others_stays');
-- livekpi's DDL event triggers do not get in the way of other users' DDL
CREATE TABLE other_users_table (x int);
ALTER TABLE other_users_table ADD COLUMN y int;
DROP TABLE other_users_table, others_stays;
RESET ROLE;
SELECT count(*) AS rows_of_300 FROM livekpi.booking_daily WHERE property_id = 300;
REVOKE ALL ON SCHEMA livekpi FROM livekpi_regress_other;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA livekpi FROM livekpi_regress_other;
REVOKE CREATE ON SCHEMA public FROM livekpi_regress_other;
DROP ROLE livekpi_regress_other;

-- a correct mapping works; renaming a mapped column keeps working
INSERT INTO stays VALUES (1, 100, '2026-07-01', '2026-07-03', 60, 'ok');
SELECT livekpi.track_bookings('stays', property_column => 'prop', check_in_column => 'arrive',
							  check_out_column => 'leave', amount_column => 'price',
							  status_column => 'state');
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id = 100;
ALTER TABLE stays RENAME COLUMN price TO rate;
INSERT INTO stays VALUES (2, 100, '2026-07-02', '2026-07-03', 40, 'ok');
SELECT livekpi.sync('30s');
SELECT * FROM bd WHERE property_id = 100;
SELECT amount_column FROM livekpi.tracked WHERE table_name = 'stays'::regclass;
SELECT count(*) AS differences FROM livekpi.verify();

-- dropping a mapped column is refused; with CASCADE it untracks with a WARNING
DROP VIEW stays_view;
ALTER TABLE stays DROP COLUMN rate;
ALTER TABLE stays DROP COLUMN note;	-- not mapped: fine
ALTER TABLE stays DROP COLUMN rate CASCADE;
SELECT count(*) AS tracked FROM livekpi.tracked_tables WHERE relid = 'stays'::regclass;
SELECT livekpi.sync('30s');
SELECT count(*) AS rows_of_100 FROM livekpi.booking_daily WHERE property_id = 100;

-- dropping a tracked table forgets it and its contribution
SELECT livekpi.track_bookings('stays', property_column => 'prop', check_in_column => 'arrive',
							  check_out_column => 'leave', amount_column => 'id',
							  status_column => 'state');
SELECT livekpi.sync('30s');
SELECT count(*) > 0 AS counted FROM livekpi.booking_daily WHERE property_id = 100;
DROP TABLE stays CASCADE;
SELECT count(*) AS tracked FROM livekpi.tracked_tables;
SELECT livekpi.sync('30s');
SELECT count(*) AS rows_of_100 FROM livekpi.booking_daily WHERE property_id = 100;
SELECT count(*) AS differences FROM livekpi.verify();
