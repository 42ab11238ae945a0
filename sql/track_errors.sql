-- SPEC section 2: every mapping problem of a track_* call in one error,
-- without livekpi's internal CONTEXT (issue 11 item 5).
\set SHOW_CONTEXT errors
CREATE TABLE bad_stays (id int, prop int, arrive date, leave date, note json, price_money money);
SELECT livekpi.track_bookings('bad_stays', property_column => 'note', check_in_column => 'arrive',
							  check_out_column => 'nope', amount_column => 'price_money',
							  status_column => 'note');
SELECT livekpi.track_expenses('bad_stays', property_column => 'prop', date_column => 'arrive',
							  amount_column => 'id', category_column => NULL, status_column => NULL,
							  timezone => 'Nowhere/Atlantis');
SELECT count(*) AS tracked FROM livekpi.tracked_tables WHERE relid = 'bad_stays'::regclass;
SELECT livekpi.track_bookings('no_such_table');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT livekpi.track_bookings('bad_stays');
ROLLBACK;

-- a table's own unique key is not a property key (and never switches the key type)
CREATE TABLE uuid_reservations (reservation_id uuid PRIMARY KEY, listing_id int, check_in date,
								check_out date, total_amount numeric, status text);
SELECT livekpi.track_bookings('uuid_reservations', property_column => 'reservation_id');
SELECT key_type FROM livekpi.state;
SELECT livekpi.track_bookings('uuid_reservations', property_column => 'listing_id');
SELECT livekpi.untrack('uuid_reservations');
DROP TABLE uuid_reservations, bad_stays;
