
# Copyright (c) 2026, livekpi authors
#
# test/t/001_differential.pl
#	  Randomized differential test: four concurrent sessions run more than
#	  20,000 random statements (inserts, updates of every mapped column,
#	  deletes, multi-row statements, ON CONFLICT, MERGE, rare TRUNCATEs
#	  committed and rolled back, savepoints rolled back and released, whole
#	  transactions rolled back, NULLs, infinite dates, negative stays,
#	  cancelled statuses) against two booking tables and an
#	  expense table, while the test pauses and resumes the apply worker and
#	  runs rebuild() twice.  Then sync() must be true, verify() empty, and
#	  every KPI table equal to a recompute written here from SPEC section 3.
#
#	  The seed is printed; rerun with LIVEKPI_TEST_SEED=<seed>.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
diag("001_differential: seed $seed (rerun with LIVEKPI_TEST_SEED=$seed)");
srand($seed);

my $writers_n = 4;
my $ops_each = 5_100;

my $node = livekpi_node('differential');
setup_tables($node, prefill => 400);
track_tables($node);

# The backfill of the rows present before tracking is exact.
sync_ok($node, 30, 'sync after tracking');
check_verify($node, 'backfill');
check_independent($node, 'backfill');

my $count_sql = q{SELECT (SELECT count(*) FROM public.bookings)
	+ (SELECT count(*) FROM public.expenses) + (SELECT count(*) FROM public.stays)};
my $base = try_query($node, $count_sql);

my $dir = PostgreSQL::Test::Utils::tempdir();
my $writers =
  start_writers($node, $dir, $writers_n, $seed, $ops_each, chunk => 300);

# While the writers run: wait for some rows (an amount chosen by the seed;
# the writers add about 6,000 on balance), then act.
sub wait_rows
{
	my ($more, $what) = @_;
	my $target = $base + $more;
	poll_until(
		"$what (source rows >= $target)",
		120,
		sub {
			my $n = try_query($node, $count_sql);
			return (defined $n && $n >= $target) || writers_done($writers);
		});
	diag("001_differential: the writers ended before the $what")
	  if writers_done($writers);
	return;
}

wait_rows(300 + int(rand(700)), 'first rebuild');
call_ok($node, 'livekpi.rebuild()', 'rebuild() while four sessions write');

wait_rows(1500 + int(rand(700)), 'pause');
pause_ok($node, 'pause() while writing');
my $seq_paused = try_query($node,
	'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log');
wait_rows(2900 + int(rand(400)), 'resume');
is(try_query($node, 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log'),
	$seq_paused, 'no batch is applied while paused');
call_ok($node, 'livekpi.resume()', 'resume()');

wait_rows(4000 + int(rand(500)), 'second rebuild');
call_ok($node, 'livekpi.rebuild()', 'second rebuild() while four sessions write');

finish_writers($writers);

my ($ops, $commits, $unexpected, $errors, $failed_runs) = writer_report($writers,
	qr/deadlock detected|current transaction is aborted/);
is($failed_runs, 0, 'every psql run of the writers completed');
cmp_ok(try_query($node, $count_sql), '>', $base + 3000,
	'the writers added thousands of rows');
cmp_ok($ops, '>=', 20_000, "writers ran at least 20,000 statements ($ops)");
diag("001_differential: $ops statements, $commits commits, $errors errors (deadlocks and their aborted transactions)");
is(scalar(@$unexpected), 0,
	'the trigger never failed a writer (only deadlocks between writers)')
  or diag(join('', @$unexpected[ 0 .. ($#$unexpected < 20 ? $#$unexpected : 20) ]));

sync_ok($node, 60);
check_verify($node, 'after the random load');
check_independent($node, 'after the random load');
check_delta_log_contiguous($node, 'after the random load');
is( try_query(
		$node,
		'SELECT s.last_seq = (SELECT max(seq) FROM livekpi.delta_log) FROM livekpi.status s'
	),
	't',
	'status.last_seq is the newest delta_log seq');
cmp_ok(
	try_query(
		$node,
		"SELECT count(*) FROM livekpi.delta_log WHERE barrier AND seq > $seq_paused"
	),
	'>=', 1,
	'the second rebuild wrote a barrier batch');

diag('001_differential: '
	  . try_query($node,
		'SELECT count(*) FILTER (WHERE barrier) || \' barriers (rebuilds, TRUNCATEs) in \' || count(*) || \' batches\' FROM livekpi.delta_log'
	  ));

# Nothing is pending: a rebuild must not change a single figure.
call_ok($node, 'livekpi.rebuild()', 'rebuild() on a quiet database');
check_independent($node, 'after a final rebuild');

$node->stop;
done_testing();
