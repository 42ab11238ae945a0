
# Copyright (c) 2026, livekpi authors
#
# test/t/106_push_pipeline.pl
#	  The push worker on the real pipeline: a commit to a tracked table
#	  shows up as a delta; after a randomized concurrent write load
#	  (test/TestLib/LiveKpi.pm writers), snapshot + deltas equals SQL for
#	  all four views, for a client connected throughout and for one that
#	  disconnected in the middle and resumed; no seq is received twice.
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
use TestLib::LiveKpiPush;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
diag("106_push_pipeline: seed $seed (rerun with LIVEKPI_TEST_SEED=$seed)");

my $node = push_node('push_pipeline', no_extension => 1,
	conf => "livekpi.heartbeat_interval = 1\n");
setup_tables($node, prefill => 100);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

my $all = make_token($node, 'all');
my $hello = {
	type => 'hello',
	token => $all,
	views => [ 'property_kpis', 'portfolio_kpis', 'expense_monthly', 'booking_daily' ],
	daily_range => { from => '2025-12-01', to => '2026-12-31' } };

my $ca = ws_open($node, name => 'steady', hello => $hello);
my %sa;
my $snap = ws_expect($ca, 'snapshot');
ok($snap, 'snapshot');
apply_stream(\%sa, $snap);
ok(rows_equal_sql($node, $snap->{rows}{expense_monthly}, 'SELECT * FROM livekpi.expense_monthly'),
	'snapshot expense_monthly equals SQL');

# one commit, one delta
$node->safe_psql('postgres', q{INSERT INTO public.bookings (property_id, check_in, check_out,
	total_amount, status) VALUES (3, '2026-02-03', '2026-02-05', 200, 'confirmed')});
my $d = ws_expect($ca, 'delta', 'the delta of a commit', 30);
ok($d, 'a commit to a tracked table arrives as a delta');
apply_stream(\%sa, $d);
ok(rows_equal_sql($node, $d->{upserts}{booking_daily},
		q{SELECT * FROM livekpi.booking_daily WHERE property_id = 3 AND day IN ('2026-02-03', '2026-02-04')}),
	'its booking_daily rows are the SQL rows');

# a second client that will drop out and resume
my $cb = ws_open($node, name => 'resumer', hello => $hello);
my %sb;
apply_stream(\%sb, ws_expect($cb, 'snapshot'));

my $dir = PostgreSQL::Test::Utils::tempdir();
my $writers = start_writers($node, $dir, 3, $seed, 600, chunk => 50);

# let some batches through, then drop the second client
my $pos_b;
ok( poll_until(
		'resumer received deltas', 60,
		sub {
			my $n = 0;
			for my $m (ws_all($cb))
			{
				next unless ($m->{type} // '') =~ /^(delta|heartbeat)$/;
				$pos_b = $m->{seq};
				$n++ if $m->{type} eq 'delta';
			}
			$n >= 3;
		}),
	'resumer receives deltas during the load');
my @b_msgs = ws_all($cb);	# one list: later pumps may add messages
apply_stream(\%sb, $_) for grep { ($_->{type} // '') eq 'delta' } @b_msgs;
$pos_b = 0;
for my $m (@b_msgs)
{
	$pos_b = $m->{seq} if ($m->{type} // '') =~ /^(delta|heartbeat)$/ && $m->{seq} > $pos_b;
}
ws_close($cb);

finish_writers($writers);
sync_ok($node, 120, "sync after the load")
  or diag($node->safe_psql("postgres", "SELECT * FROM livekpi.status"));
my $last = $node->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
my $epoch = $node->safe_psql('postgres', 'SELECT epoch FROM livekpi.state');

# the steady client
my @seqs;
ok( ws_expect(
		$ca,
		sub {
			my $m = shift;
			my $t = $m->{type} // '';
			if ($t eq 'delta' || $t eq 'snapshot') { apply_stream(\%sa, $m); push @seqs, $m->{seq} if $t eq 'delta'; }
			($t eq 'delta' || $t eq 'heartbeat') && $m->{seq} >= $last;
		},
		"steady client at seq $last", 60),
	'steady client reaches the last batch');
my %seen;
ok(!grep({ $seen{$_}++ } @seqs), 'steady client: no seq twice');
is_deeply([ sort { $a <=> $b } @seqs ], \@seqs, 'steady client: seqs in order');
for my $view (qw(property_kpis portfolio_kpis expense_monthly booking_daily))
{
	my $where = $view eq 'booking_daily' ? " WHERE day BETWEEN '2025-12-01' AND '2026-12-31'" : '';
	ok(rows_equal_sql($node, [ values %{ $sa{$view} // {} } ], "SELECT * FROM livekpi.$view$where"),
		"steady client: snapshot + deltas equals SQL ($view)");
}

# the resumer
$cb = ws_open($node, name => 'resumer2',
	hello => { %$hello, resume_from => $pos_b + 0, epoch => $epoch });
my $w = ws_expect($cb, 'welcome');
# The random writers may TRUNCATE a tracked table: the rebuild that follows
# writes a barrier, after which SPEC 7 says resume gives way to a snapshot.
my $barriers = $node->safe_psql('postgres',
	"SELECT count(*) FROM livekpi.delta_log WHERE barrier AND seq > $pos_b");
if ($barriers > 0)
{
	ok($w && !$w->{resumed}, "resumer gets a snapshot: $barriers barrier(s) after seq $pos_b");
}
else
{
	ok($w && $w->{resumed}, "resumer resumes from seq $pos_b");
}
my @rseqs;
ok( ws_expect(
		$cb,
		sub {
			my $m = shift;
			my $t = $m->{type} // '';
			if ($t eq 'delta' || $t eq 'snapshot') { apply_stream(\%sb, $m); push @rseqs, $m->{seq} if $t eq 'delta'; }
			($t eq 'delta' || $t eq 'heartbeat') && $m->{seq} >= $last;
		},
		"resumer at seq $last", 60),
	'resumer catches up');
ok(!grep({ $_ <= $pos_b } @rseqs), 'resumer: nothing it had seen is sent again');
for my $view (qw(property_kpis portfolio_kpis expense_monthly booking_daily))
{
	my $where = $view eq 'booking_daily' ? " WHERE day BETWEEN '2025-12-01' AND '2026-12-31'" : '';
	ok(rows_equal_sql($node, [ values %{ $sb{$view} // {} } ], "SELECT * FROM livekpi.$view$where"),
		"resumer: snapshot + deltas + replay equals SQL ($view)");
}

$node->stop;
done_testing();
