
# Copyright (c) 2026, livekpi authors
#
# test/t/002_crash_recovery.pl
#	  Exactly once across crashes: four sessions write random transactions
#	  (reconnecting whenever the server goes away) while the test SIGKILLs
#	  the apply worker five times, each after a number of batches chosen by
#	  the seed (three of them aimed inside an apply transaction), and once
#	  stops the postmaster in immediate mode.  Then
#	  sync() must be true, verify() empty, the KPI tables equal to the
#	  independent recompute, and delta_log's seq without gaps.
#
#	  A client cannot know whether a commit in flight at a crash happened,
#	  so nothing here compares against what the writers think they wrote:
#	  the recompute reads the tables.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
diag("002_crash_recovery: seed $seed (rerun with LIVEKPI_TEST_SEED=$seed)");
srand($seed);

# Batches of several transactions, so that kills land inside larger ones.
my $node = livekpi_node('crash', conf => "livekpi.flush_interval = 50\n");
setup_tables($node, prefill => 300);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

my $count_sql = q{SELECT (SELECT count(*) FROM public.bookings)
	+ (SELECT count(*) FROM public.expenses) + (SELECT count(*) FROM public.stays)};
my $base = try_query($node, $count_sql);

my $dir = PostgreSQL::Test::Utils::tempdir();
my $stop = "$dir/stop";
my $writers = start_writers($node, $dir, 4, $seed, 0, stop => $stop,
	chunk => 120);

my $max_seq = 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log';

# Wait for a live apply worker other than $old, then for $batches more
# batches to be applied by it; return its pid.
sub worker_after
{
	my ($old, $batches, $what) = @_;
	my $pid;
	poll_until(
		"a new apply worker ($what)",
		90,
		sub {
			$pid = apply_worker_pid($node);
			return defined $pid && (!defined $old || $pid != $old);
		}) or return undef;
	my $seq0;
	poll_until("the delta_log ($what)", 30,
		sub { $seq0 = try_query($node, $max_seq); defined $seq0 })
	  or return undef;
	poll_until(
		"$batches batches ($what)",
		90,
		sub {
			my $s = try_query($node, $max_seq);
			return defined $s && $s >= $seq0 + $batches;
		}) or return undef;
	# the worker that applied them must still be the same one
	my $now = apply_worker_pid($node);
	return (defined $now && $now == $pid) ? $pid : undef;
}

my $pid;
for my $k (1 .. 5)
{
	my $batches = 1 + int(rand(12));
	my $new = worker_after($pid, $batches, "kill $k");
	ok(defined $new, "kill $k: apply worker running and applying under load")
	  or last;
	if ($k % 2)
	{
		# aim inside an apply transaction: spin server-side until the worker
		# reports one (at most 5 s), then kill at once
		try_query(
			$node, q{
DO $$
DECLARE t timestamptz := clock_timestamp();
BEGIN
	LOOP
		EXIT WHEN (SELECT apply_state FROM livekpi.status) = 'applying'
			OR clock_timestamp() > t + interval '5 s';
	END LOOP;
END $$});
	}
	is(kill('KILL', $new), 1, "kill $k: SIGKILL apply worker $new");
	$pid = $new;
}

my $new = worker_after($pid, 1 + int(rand(12)), 'immediate stop');
ok(defined $new, 'apply worker back after the kills');
$node->stop('immediate');
$node->start;
ok(defined worker_after(undef, 3, 'after restart'),
	'apply worker applying again after an immediate shutdown');

open my $fh, '>', $stop or die;
close $fh;
finish_writers($writers);

my ($ops, $commits, $unexpected, $errors) = writer_report(
	$writers,
	qr/deadlock detected|current transaction is aborted|terminating connection|server closed the connection|connection to server|could not connect|the database system is|no connection to the server|Connection refused|No such file or directory|administrator command|while crashing|crash of another server process/
);
diag("002_crash_recovery: $ops statements, $commits commits attempted, $errors errors");
cmp_ok($ops, '>=', 2000, "writers ran ($ops statements)");
cmp_ok(try_query($node, $count_sql), '>', $base + 500,
	'the writers added rows across the crashes');
is(scalar(@$unexpected), 0, 'writers failed only from crashes and deadlocks')
  or diag(join('', @$unexpected[ 0 .. ($#$unexpected < 20 ? $#$unexpected : 20) ]));

sync_ok($node, 60);
check_verify($node, 'after crashes');
check_independent($node, 'after crashes');
check_delta_log_contiguous($node, 'after crashes');
is( try_query(
		$node,
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'livekpi'"),
	'1',
	'one livekpi slot');

$node->stop;
done_testing();
