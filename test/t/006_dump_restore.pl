#-------------------------------------------------------------------------
#
# 006_dump_restore.pl
#	  A database with tracked tables survives pg_dump and pg_restore into a
#	  new cluster: the mapping and the units of livekpi.properties come
#	  along (extension configuration tables), the restored capture triggers
#	  work on the new table OIDs, and after rebuild() the KPIs equal the
#	  original's and keep streaming.  With uuid keys and track_properties,
#	  the key type, units and names come back too.
#
#-------------------------------------------------------------------------
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

sub new_node
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	$node->append_conf(
		'postgresql.conf', q{
shared_preload_libraries = 'livekpi'
wal_level = logical
livekpi.database = 'postgres'
livekpi.listen_addresses = ''
livekpi.flush_interval = 0
output_plugin_libraries = 'pgoutput, test_decoding, livekpi'
});
	$node->start;
	return $node;
}

# Everything a property manager sees, without the batch times.
my $kpis = q{
	SELECT string_agg(row(property_id, month, units, available_nights, nights_sold,
						  room_revenue, arrivals, cancelled_arrivals, approved_expenses,
						  pending_expenses)::text, ' ' ORDER BY property_id, month)
	FROM livekpi.property_kpis};

my $old = new_node('old');
$old->safe_psql(
	'postgres', q{
CREATE EXTENSION livekpi;
CREATE TABLE bookings (id serial, property_id int, check_in date,
					   check_out date, total_amount numeric(10,2), status text)
	PARTITION BY RANGE (check_in);
CREATE TABLE bookings_2026 PARTITION OF bookings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE bookings_2027 PARTITION OF bookings FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE TABLE expenses (property_id int, incurred_on date, amount numeric, category text,
					   approval_status text);
INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
SELECT i % 7, DATE '2026-11-01' + i % 90, DATE '2026-11-01' + i % 90 + 1 + i % 5, 50 + i,
	   CASE WHEN i % 9 = 0 THEN 'cancelled' END
FROM generate_series(1, 400) i;
INSERT INTO expenses SELECT i % 7, DATE '2026-12-01' + i % 40, i, 'cleaning', 'approved'
FROM generate_series(1, 100) i;
SELECT livekpi.track_bookings('bookings');
SELECT livekpi.track_expenses('expenses');
UPDATE livekpi.properties SET units = 3 WHERE property_id = 2;
});
is($old->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'old: synced');
is($old->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0', 'old: exact');
my $before = $old->safe_psql('postgres', $kpis);

my $dump = $old->basedir . '/db.dump';
$old->command_ok([ 'pg_dump', '-Fc', '-d', $old->connstr('postgres'), '-f', $dump ],
	'pg_dump');

my $new = new_node('new');
# pg_restore reports nothing it cannot do: the extension comes first, the
# mapping and units as configuration-table data, the triggers last.
$new->command_ok(
	[ 'pg_restore', '--exit-on-error', '-d', $new->connstr('postgres'), $dump ],
	'pg_restore');
is($new->safe_psql('postgres', q{SELECT count(*) FROM livekpi.tracked_tables}),
	'2', 'the mapping was restored');
is($new->safe_psql('postgres', q{SELECT units FROM livekpi.properties WHERE property_id = 2}),
	'3', 'units were restored');

# The rows came in without triggers: rebuild() counts them.
$new->safe_psql('postgres', q{SELECT livekpi.rebuild()});
is($new->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'new: synced');
is($new->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0', 'new: exact after rebuild');
is($new->safe_psql('postgres', $kpis), $before, 'new: the same KPIs as the old database');

# The restored capture triggers stream changes, partitions included.
$new->safe_psql(
	'postgres', q{
INSERT INTO bookings (property_id, check_in, check_out, total_amount) VALUES
	(2, '2026-12-31', '2027-01-03', 300);
UPDATE bookings SET status = 'cancelled' WHERE id = 10;
DELETE FROM bookings WHERE id = 11;
INSERT INTO expenses VALUES (2, '2027-01-02', 40, 'repairs', 'pending');
});
is($new->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'new: synced after writes');
is($new->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0', 'new: exact after writes');

# And the extension can still be dropped without CASCADE.
$new->safe_psql('postgres', q{DROP EXTENSION livekpi});
is($new->safe_psql('postgres',
		q{SELECT count(*) FROM pg_trigger WHERE tgname IN ('livekpi_capture', 'livekpi_truncate')}),
	'0', 'DROP EXTENSION took the capture triggers');

# uuid keys, units and names from the user's own table (track_properties):
# the restored extension takes the key type before the properties load.
my $uold = new_node('uuid_old');
$uold->safe_psql(
	'postgres', q{
CREATE EXTENSION livekpi;
CREATE TABLE listings (listing_id uuid PRIMARY KEY, rooms int, title text);
CREATE TABLE reservations (reservation_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
						   listing_id uuid, check_in date, check_out date, total_amount numeric);
INSERT INTO listings VALUES ('00000000-0000-0000-0000-0000000000a1', 6, 'Harbour House'),
							('00000000-0000-0000-0000-0000000000b2', 2, 'Cabin');
INSERT INTO reservations (listing_id, check_in, check_out, total_amount)
SELECT CASE WHEN i % 2 = 0 THEN '00000000-0000-0000-0000-0000000000a1'::uuid
			ELSE '00000000-0000-0000-0000-0000000000b2'::uuid END,
	   DATE '2026-05-01' + i % 20, DATE '2026-05-02' + i % 20, 100 + i
FROM generate_series(1, 50) i;
SELECT livekpi.track_bookings('reservations', property_column => 'listing_id', status_column => NULL);
SELECT livekpi.track_properties('listings', property_column => 'listing_id',
								units_column => 'rooms', name_column => 'title');
});
is($uold->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'uuid old: synced');
my $names = q{SELECT string_agg(property_id || ':' || units || ':' || coalesce(name, '-'), ' '
							 ORDER BY property_id) FROM livekpi.properties};
my $unames = $uold->safe_psql('postgres', $names);
my $ukpis = $uold->safe_psql('postgres', $kpis);
my $udump = $uold->basedir . '/uuid.dump';
$uold->command_ok([ 'pg_dump', '-Fc', '-d', $uold->connstr('postgres'), '-f', $udump ],
	'pg_dump with uuid keys');
my $unew = new_node('uuid_new');
$unew->command_ok(
	[ 'pg_restore', '--exit-on-error', '-d', $unew->connstr('postgres'), $udump ],
	'pg_restore with uuid keys');
is($unew->safe_psql('postgres', q{SELECT key_type FROM livekpi.state}), 'uuid',
	'the restored extension has the uuid key type');
is($unew->safe_psql('postgres', $names), $unames, 'units and names were restored');
$unew->safe_psql('postgres', q{SELECT livekpi.rebuild()});
is($unew->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'uuid new: synced');
is($unew->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0', 'uuid new: exact');
is($unew->safe_psql('postgres', $kpis), $ukpis, 'uuid new: the same KPIs and units');
$unew->safe_psql('postgres',
	q{UPDATE listings SET rooms = 7, title = 'Harbour House East' WHERE rooms = 6});
is( $unew->safe_psql(
		'postgres',
		q{SELECT units || ' ' || name FROM livekpi.properties
		  WHERE property_id = '00000000-0000-0000-0000-0000000000a1'}),
	'7 Harbour House East',
	'the restored properties trigger keeps units and names in step');
$uold->stop;
$unew->stop;

$old->stop;
$new->stop;
done_testing();
