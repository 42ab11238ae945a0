
# Copyright (c) 2026, livekpi authors
#
# test/t/010_apply_waits.pl
#	  The apply worker waits instead of failing in a loop:
#	  * while pg_extension says another version than the library's (a
#	    restart with a new library before ALTER EXTENSION livekpi UPDATE),
#	    with state "needs ALTER EXTENSION livekpi UPDATE", while capture
#	    keeps working and the changes wait in the slot;
#	  * while livekpi.database does not exist: one FATAL from the first
#	    connection attempt, then one worker connected to no database that
#	    waits (no restart every second), reports it in livekpi.status'
#	    last_error, and connects once the database is created.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

sub try_query_db
{
	my ($node, $db, $sql) = @_;
	my ($rc, $out, $err) = $node->psql($db, $sql, on_error_stop => 1);
	return $rc == 0 ? $out : undef;
}

######################################################################
# Version mismatch.

my $node = livekpi_node('waits');
setup_tables($node, prefill => 50);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

# What a 1.0 catalog with the 1.1 library looks like to the worker.
$node->safe_psql('postgres',
	"UPDATE pg_extension SET extversion = '1.0' WHERE extname = 'livekpi'");
ok( poll_until(
		'the worker to wait for the update',
		30,
		sub {
			my $s = try_query($node, 'SELECT apply_state FROM livekpi.status');
			return defined $s && $s eq 'needs ALTER EXTENSION livekpi UPDATE';
		}),
	'apply_state says "needs ALTER EXTENSION livekpi UPDATE"');
my $seq = try_query($node, 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log');
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 4, DATE '2026-02-01' + i, DATE '2026-02-03' + i, 100 + i, 'confirmed'
FROM generate_series(1, 20) i;
});
is(try_query($node, "SELECT livekpi.sync('1s')"), 'f',
	'nothing is applied while the versions differ');
is(try_query($node, 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log'), $seq,
	'no batch is written while the versions differ');
$node->safe_psql('postgres',
	"UPDATE pg_extension SET extversion = '1.1' WHERE extname = 'livekpi'");
sync_ok($node, 30, 'the changes captured meanwhile are applied after the update');
check_verify($node, 'after the version wait');
check_independent($node, 'after the version wait');
$node->stop;

######################################################################
# livekpi.database does not exist.

my $lone = livekpi_node('nodb', conf => "livekpi.database = 'kpis'\n");
my $waiting_pid;
ok( poll_until(
		'a worker connected to no database',
		60,
		sub {
			$waiting_pid = try_query($lone,
				"SELECT pid FROM pg_stat_activity WHERE backend_type = 'livekpi apply' AND datname IS NULL"
			);
			return defined $waiting_pid && $waiting_pid =~ /^\d+$/;
		}),
	'the apply worker waits connected to no database');
# The waiting worker polls pg_database every 5 s; two polls without a
# restart show that it does not loop.
$lone->safe_psql('postgres', 'SELECT pg_sleep(11)');
is( try_query($lone,
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'livekpi apply'"),
	$waiting_pid,
	'the same worker is still waiting (no restart loop)');
my $log = slurp_file($lone->logfile);
my $fatals = () = $log =~ /FATAL:  database "kpis" does not exist/g;
is($fatals, 1, 'the missing database is reported by one FATAL');
my $waits = () = $log =~ /apply worker waits: database "kpis" named by livekpi.database does not exist/g;
is($waits, 1, 'and one LOG line of the waiting worker');

$lone->safe_psql('postgres', 'CREATE DATABASE kpis');
ok( poll_until(
		'the worker to connect to the new database',
		60,
		sub {
			my $d = try_query($lone,
				"SELECT datname FROM pg_stat_activity WHERE backend_type = 'livekpi apply'"
			);
			return defined $d && $d eq 'kpis';
		}),
	'once the database exists the worker connects to it');
$lone->safe_psql('kpis', 'CREATE EXTENSION livekpi');
like(try_query_db($lone, 'kpis', 'SELECT last_error FROM livekpi.status'),
	qr/database "kpis" named by livekpi.database does not exist/,
	'livekpi.status kept the report of the missing database');
ok( poll_until(
		'the worker to stream in the new database',
		60,
		sub {
			my $s = try_query_db($lone, 'kpis', 'SELECT apply_state FROM livekpi.status');
			return defined $s && $s eq 'idle';
		}),
	'and it runs there once the extension exists');
$lone->stop;

done_testing();
