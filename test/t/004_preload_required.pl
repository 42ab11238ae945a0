
# Copyright (c) 2026, livekpi authors
#
# test/t/004_preload_required.pl
#	  CREATE EXTENSION livekpi refuses to run without
#	  shared_preload_libraries = 'livekpi', without wal_level = logical or
#	  in another database than livekpi.database, listing every unmet
#	  requirement in one error with a HINT and leaving nothing behind;
#	  with both it works, and DROP EXTENSION removes the slot and the
#	  triggers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $node = PostgreSQL::Test::Cluster->new('preload');
$node->init(allows_streaming => 'logical');
$node->append_conf('postgresql.conf',
	"livekpi.listen_addresses = ''\nmax_wal_senders = 10\n");

my $started = 0;

sub configure
{
	my ($preload, $wal_level, $database) = @_;
	$database //= 'postgres';
	$node->append_conf('postgresql.conf',
		    "shared_preload_libraries = '"
		  . ($preload ? 'livekpi' : '') . "'\n"
		  . "wal_level = $wal_level\n"
		  . "livekpi.database = '$database'\n");
	$started++ ? $node->restart : $node->start;
	return;
}

sub nothing_left
{
	my ($what, $schema_too) = @_;
	my $schema = $schema_too
	  ? "+ (SELECT count(*) FROM pg_namespace WHERE nspname = 'livekpi')"
	  : '';
	is( $node->safe_psql(
			'postgres', qq{
SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'livekpi')
	 + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'livekpi')
	 $schema}),
		'0',
		"$what: nothing left behind");
	return;
}

sub create_fails
{
	my ($what, $hint_re) = @_;
	my ($rc, $out, $err) =
	  $node->psql('postgres', 'CREATE EXTENSION livekpi');
	isnt($rc, 0, "$what: CREATE EXTENSION fails");
	like($err, qr/ERROR:\s+\S/, "$what: with an error message");
	like($err, $hint_re, "$what: the HINT names the setting")
	  or diag("stderr was: $err");
	nothing_left($what, 1);
	return;
}

configure(0, 'logical');
create_fails('without shared_preload_libraries',
	qr/^HINT:.*shared_preload_libraries/m);

configure(1, 'replica');
create_fails('without wal_level = logical', qr/^HINT:.*wal_level/m);
is($node->safe_psql('postgres', 'SELECT 1'),
	'1', 'the server runs with the library preloaded and wal_level = replica');

# every unmet requirement in one error, so that one restart fixes them all
configure(0, 'replica', 'elsewhere');
create_fails('with none of the three',
	qr/^HINT:.*shared_preload_libraries = 'livekpi'.*wal_level = logical.*livekpi.database = 'postgres'/m);
{
	my ($rc, $out, $err) =
	  $node->psql('postgres', 'CREATE EXTENSION livekpi');
	like($err, qr/ERROR:\s+livekpi cannot be created: 3 server requirements are not met/,
		'one error counts the three unmet requirements');
	like($err, qr/^DETAIL:.*shared_preload_libraries.*\n.*wal_level is "replica".*\n.*livekpi.database is "elsewhere"/m,
		'its DETAIL lists each of them');
}
configure(0, 'replica');

configure(1, 'logical');
my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION livekpi');
is($rc, 0, 'with both settings CREATE EXTENSION works') or diag($err);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'livekpi apply'",
		'1'),
	'the apply worker runs');

$node->safe_psql(
	'postgres', q{
CREATE TABLE public.bookings (id int PRIMARY KEY, property_id int,
	check_in date, check_out date, total_amount numeric, status text);
INSERT INTO public.bookings VALUES (1, 7, '2026-05-01', '2026-05-03', 200, NULL);
SELECT livekpi.track_bookings('public.bookings');
INSERT INTO public.bookings VALUES (2, 7, '2026-05-02', '2026-05-03', 50, 'confirmed');
});
is($node->safe_psql('postgres', "SELECT livekpi.sync('30s')"),
	't', 'changes reach the KPI tables');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(day || ':' || nights_sold || ':' || room_revenue::float8, ' ' ORDER BY day) FROM livekpi.booking_daily"
	),
	'2026-05-01:1:100 2026-05-02:2:150',
	'booking_daily is exact');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'livekpi'"),
	'1',
	'the slot exists');

$node->safe_psql('postgres', 'DROP EXTENSION livekpi');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'livekpi'",
		'0'),
	'DROP EXTENSION drops the slot');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.bookings'::regclass AND NOT tgisinternal"
	),
	'0',
	'DROP EXTENSION drops the triggers');
$node->safe_psql('postgres',
	"INSERT INTO public.bookings VALUES (3, 7, '2026-05-02', '2026-05-04', 1, NULL)"
);
pass('the table is writable after DROP EXTENSION');
nothing_left('after DROP EXTENSION');

$node->stop;
done_testing();
