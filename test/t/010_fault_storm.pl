
# Copyright (c) 2026, livekpi authors
#
# test/t/010_fault_storm.pl
#	  Every fault and hostile input at once, counted for docs/reliability.md:
#	  four writers run random transactions while the test SIGKILLs the
#	  apply worker and the push worker (LIVEKPI_STORM_KILLS times each,
#	  default 20), stops the postmaster in immediate mode twice, an
#	  unprivileged role with no grants forges, truncates and replays
#	  change records, and a careless owner commits rows with dates outside
#	  the timestamp range and overlong categories.  A WebSocket client
#	  reconnects after every push kill and resumes from the last seq it
#	  saw.  Then: sync() is true, verify() is empty, the KPI tables equal
#	  the independent recompute, delta_log's seq has no gap, the client's
#	  state equals SQL and it never received a seq twice, and the forged
#	  records of the last round are all counted as rejected.
#
#	  Each outcome is also printed as a "reliability:" line (reliability()
#	  in TestLib), which test/reliability-report.sh gathers into
#	  docs/reliability.md.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
my $kills = $ENV{LIVEKPI_STORM_KILLS} // 20;
diag("010_fault_storm: seed $seed, $kills kills per worker (rerun with LIVEKPI_TEST_SEED=$seed)");
srand($seed);

my $node = push_node('storm', no_extension => 1,
	conf => "livekpi.flush_interval = 50\nlivekpi.heartbeat_interval = 1\n");
setup_tables($node, prefill => 300);
track_tables($node);
$node->safe_psql('postgres', 'CREATE ROLE intruder LOGIN');
sync_ok($node, 30, 'sync after tracking');

my $all = make_token($node, 'storm');
my %views = (
	views => [ 'property_kpis', 'portfolio_kpis', 'expense_monthly' ]);
my %state;
my %seen_seq;
my $dup_seqs = 0;
my ($pos, $epoch) = (0, undef);

# Reads what the client has so far into %state; remembers its position.
sub drain
{
	my ($c) = @_;
	return unless $c;
	my @msgs = ws_all($c);
	for my $m (@msgs[ ($c->{drained} // 0) .. $#msgs ])
	{
		my $t = $m->{type} // '';
		if ($t eq 'welcome') { $epoch = $m->{epoch}; }
		elsif ($t eq 'snapshot') { apply_stream(\%state, $m); $pos = $m->{seq}; %seen_seq = (); }
		elsif ($t eq 'delta')
		{
			$dup_seqs++ if $seen_seq{ $m->{seq} }++;
			apply_stream(\%state, $m);
			$pos = $m->{seq};
		}
		elsif ($t eq 'heartbeat') { $pos = $m->{seq} if $m->{seq} > $pos; }
	}
	$c->{drained} = scalar @msgs;
	return;
}

sub connect_client
{
	my $hello = { type => 'hello', token => $all, %views };
	if ($pos > 0) { $hello->{resume_from} = $pos + 0; $hello->{epoch} = $epoch; }
	my $c;
	poll_until(
		'the listener to accept a client',
		60,
		sub {
			$c = ws_open($node, name => 'storm', hello => $hello);
			return !$c->{connect_error};
		});
	return $c;
}

my $client = connect_client();
ok(ws_expect($client, 'welcome', 'welcome', 30), 'client connected');

my $dir = PostgreSQL::Test::Utils::tempdir();
my $stop = "$dir/stop";
my $writers = start_writers($node, $dir, 4, $seed, 0, stop => $stop, chunk => 100);

my $max_seq = 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log';

# A live worker of that backend type other than $old that has seen at least
# one more batch; its pid.
sub fresh_worker
{
	my ($type, $old) = @_;
	my $pid;
	poll_until(
		"a new $type",
		90,
		sub {
			$pid = try_query($node,
				"SELECT pid FROM pg_stat_activity WHERE backend_type = '$type'");
			return defined $pid && $pid =~ /^\d+$/ && (!defined $old || $pid != $old);
		}) or return undef;
	my $seq0 = try_query($node, $max_seq) // 0;
	poll_until('one more batch', 60,
		sub { my $s = try_query($node, $max_seq); defined $s && $s > $seq0 })
	  or return undef;
	return $pid;
}

# Hostile input from a role with no privileges, and odd values from the
# owner: none of it may count, none of it may stop the pipeline.
my $forged = 0;
my @forgeries = (
	q{SELECT pg_logical_emit_message(true, 'livekpi', 'x')},
	q{SELECT pg_logical_emit_message(true, 'livekpi', '\x4269000040000001'::bytea)},
	q{SELECT pg_logical_emit_message(true, 'livekpi', decode(repeat('42', 3000), 'hex'))},
	q{SELECT pg_logical_emit_message(false, 'livekpi', 'x')});
sub hostile_round
{
	for my $f (@forgeries)
	{
		my ($rc) = $node->psql('postgres', $f, extra_params => [ '-U', 'intruder' ]);
		$forged++ if $rc == 0;
	}
	$node->psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount)
VALUES (1, '294277-01-01', '294277-01-03', 10), (2, '4714-11-24 BC', '4714-11-26 BC', 5);
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
VALUES (3, '2026-05-05', 7, repeat('c', 3200), 'approved'), (4, '5874897-12-30', 1, 'x', NULL);});
	return;
}

my ($apply_pid, $push_pid);
my ($apply_kills, $push_kills, $immediate) = (0, 0, 0);
for my $k (1 .. $kills)
{
	hostile_round() if $k % 5 == 1;

	$apply_pid = fresh_worker('livekpi apply', $apply_pid);
	ok(defined $apply_pid, "round $k: apply worker applying under load") or last;
	$apply_kills += kill('KILL', $apply_pid);

	$push_pid = fresh_worker('livekpi push worker', $push_pid);
	ok(defined $push_pid, "round $k: push worker back") or last;
	drain($client);
	$push_kills += kill('KILL', $push_pid);
	ws_close($client);
	$client = connect_client();
	ok(!$client->{connect_error}, "round $k: client reconnected with resume_from $pos");

	if ($k % 10 == 0)
	{
		drain($client);
		ws_close($client);
		$node->stop('immediate');
		$node->start;
		$immediate++;
		$client = connect_client();
	}
}

open my $fh, '>', $stop or die;
close $fh;
finish_writers($writers);
my ($ops, $commits, $unexpected, $errors) = writer_report(
	$writers,
	qr/deadlock detected|current transaction is aborted|terminating connection|server closed the connection|connection to server|could not connect|the database system is|no connection to the server|Connection refused|No such file or directory|administrator command|while crashing|crash of another server process/
);
cmp_ok($ops, '>=', 1000, "writers ran ($ops statements)");
is(scalar(@$unexpected), 0, 'writers failed only from crashes and deadlocks')
  or diag(join('', @$unexpected[ 0 .. ($#$unexpected < 20 ? $#$unexpected : 20) ]));

# The last hostile round after the last crash: counted exactly.
sync_ok($node, 120, 'sync after the storm');
my $rejected0 = try_query($node, 'SELECT records_rejected FROM livekpi.status');
my $forged0 = $forged;
hostile_round();
sync_ok($node, 60, 'sync after the last hostile round');
my $rejected = try_query($node, 'SELECT records_rejected FROM livekpi.status');
is($rejected - $rejected0, $forged - $forged0,
	'every forged record of the last round (non-transactional ones too) is counted as rejected');

# Odd committed values are skipped, so the KPIs stay exact without a rebuild.
check_verify($node, 'after the storm');
check_independent($node, 'after the storm');
check_delta_log_contiguous($node, 'after the storm');
is(try_query($node, 'SELECT stale FROM livekpi.status'), 'f',
	'nothing the storm did left the KPIs stale');

my $last = $node->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
ok( ws_expect(
		$client,
		sub { my $m = shift; ($m->{type} // '') =~ /^(delta|heartbeat)$/ && $m->{seq} >= $last },
		"client at seq $last", 60),
	'the client catches up');
drain($client);
is($dup_seqs, 0, 'the client never received a seq twice');
for my $view (@{ $views{views} })
{
	ok(rows_equal_sql($node, [ values %{ $state{$view} // {} } ], "SELECT * FROM livekpi.$view"),
		"client state equals SQL after $push_kills push-worker kills ($view)");
}
ws_close($client);

my $rounds = int(($kills - 1) / 5) + 2;	# hostile rounds, the last one included
reliability('SIGKILL of the apply worker under a random write load', $apply_kills,
	'nothing lost, nothing applied twice, nothing forged');
reliability('SIGKILL of the push worker with a resuming WebSocket client', $push_kills,
	'client state equals SQL, no seq twice');
reliability('immediate shutdown under load', $immediate,
	'nothing lost, nothing applied twice');
reliability('forged, truncated, oversized and non-transactional records from a role with no grants',
	scalar(@forgeries) * $rounds, 'ignored and counted; no KPI changed; the pipeline went on');
reliability('committed rows with dates outside the timestamp range and 3,200-character categories',
	4 * $rounds, 'skipped or clipped as SPEC section 2 says; verify() empty, not stale');

$node->stop;
done_testing();
