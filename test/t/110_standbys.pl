
# Copyright (c) 2026, livekpi authors
#
# test/t/110_standbys.pl
#	  SPEC section 10: a primary and two streaming hot standbys (made with
#	  pg_basebackup), a push listener on each.  Clients on all three nodes
#	  under a randomized write load (test/TestLib/LiveKpi.pm writers):
#	  after sync() and replay catch-up, every client's snapshot + deltas
#	  equals SQL on the primary; a client moved from one standby to the
#	  other with its seq and epoch misses nothing and receives nothing
#	  twice; a token revoked on the primary closes its connection on a
#	  standby; livekpi.status and /healthz know the role; promoting a
#	  standby keeps its clients working (resync + snapshot under a new
#	  epoch, then deltas from the new primary's apply worker), and the
#	  orphaned standby turns unhealthy past livekpi.max_lag.
#
#	  The seed is printed; rerun with LIVEKPI_TEST_SEED=<seed>.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
$seed = int($seed);
diag("110_standbys: seed $seed (rerun with LIVEKPI_TEST_SEED=$seed)");
srand($seed);

my @VIEWS = qw(property_kpis portfolio_kpis expense_monthly booking_daily);
my $RANGE = { from => '2025-12-01', to => '2026-12-31' };

my $primary = push_node('primary', no_extension => 1,
	conf => "hot_standby_feedback = on\n");
setup_tables($primary, prefill => 100);
track_tables($primary);
sync_ok($primary, 30, 'sync after tracking');
my $all = make_token($primary, 'all');
my $rev = make_token($primary, 'to_revoke', '{1,2}');

# two standbys from one base backup; a different listener port each
$primary->backup('base');
my @standbys;
for my $name (qw(standby_a standby_b))
{
	my $s = PostgreSQL::Test::Cluster->new($name);
	$s->init_from_backup($primary, 'base', has_streaming => 1);
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	$s->append_conf('postgresql.conf',
		    "livekpi.port = $port\n"
		  . "hot_standby = on\n"
		  . "hot_standby_feedback = on\n"
		  . "max_standby_streaming_delay = 30s\n"
		  . ($name eq 'standby_b' ? "livekpi.max_lag = 3\n" : ''));
	$s->{livekpi_port} = $port;
	$s->{livekpi_scheme} = 'http';
	$s->start;
	push @standbys, $s;
}
my ($sa, $sb) = @standbys;

sub caught_up
{
	my $lsn = $primary->lsn('insert');
	$primary->wait_for_catchup($_, 'replay', $lsn) for @standbys;
	return;
}
caught_up();

# role in livekpi.status and /healthz
for my $s (@standbys)
{
	my $name = $s->name;
	ok( poll_until(
			"$name push worker listening", 30,
			sub {
				(try_query($s, "SELECT push_state FROM livekpi.status") // '') eq 'listening';
			}),
		"$name: push worker listening");
	is( $s->safe_psql('postgres',
			"SELECT role || ' ' || apply_state || ' ' || (apply_pid IS NULL) FROM livekpi.status"),
		'standby standby true',
		"$name: livekpi.status says standby, no apply worker");
	my ($code, $body) = http_get($s, '/healthz');
	is($code, 200, "$name: /healthz 200 without an apply worker");
	my $h = json_decode($body);
	is($h->{role}, 'standby', "$name: /healthz role standby");
}
is($primary->safe_psql('postgres', 'SELECT role, replay_lag_ms FROM livekpi.status'),
	'primary|0', 'primary: livekpi.status says primary');

my $hello = { type => 'hello', token => $all, views => \@VIEWS, daily_range => $RANGE };

# clients: one steady on each node, one on standby A that will move to B
my %cl;
for my $n ([ 'p', $primary ], [ 'a', $sa ], [ 'b', $sb ], [ 'mover', $sa ])
{
	my ($k, $node) = @$n;
	my $c = ws_open($node, name => "client_$k", hello => $hello);
	my $snap = ws_expect($c, 'snapshot', "client_$k snapshot", 30);
	ok($snap, "client_$k: snapshot from " . $node->name);
	$cl{$k} = { c => $c, node => $node, state => {}, seqs => [] };
	apply_stream($cl{$k}{state}, $snap) if $snap;
}

# the revocation client, scoped token, on standby B
my $rc = ws_open($sb, name => 'revoked',
	hello => { type => 'hello', token => $rev, views => ['property_kpis'] });
ok(ws_expect($rc, 'snapshot', 'scoped snapshot', 30), 'a token made on the primary works on a standby');

# consume a client's messages: apply, and record delta seqs and position
sub consume
{
	my ($k) = @_;
	my $x = $cl{$k};
	for my $m (ws_all($x->{c}))
	{
		next if $m->{_seen}++;
		my $t = $m->{type} // '';
		if ($t eq 'delta' || $t eq 'snapshot')
		{
			apply_stream($x->{state}, $m);
			push @{ $x->{seqs} }, $m->{seq} if $t eq 'delta';
		}
		$x->{resyncs}++ if $t eq 'resync';
		$x->{pos} = $m->{seq} if $t =~ /^(delta|heartbeat|snapshot)$/;
	}
	return $x->{pos};
}

my $dir = PostgreSQL::Test::Utils::tempdir();
my $writers = start_writers($primary, $dir, 3, $seed, 500, chunk => 40);

# move the mover after a random number of its deltas
my $move_after = 2 + int(rand(6));
ok( poll_until(
		"mover received $move_after deltas", 120,
		sub { consume($_) for keys %cl; @{ $cl{mover}{seqs} } >= $move_after }),
	"mover receives deltas from standby A during the load");
consume('mover');
my $pos = $cl{mover}{pos};
my $epoch_seen = $sa->safe_psql('postgres', 'SELECT epoch FROM livekpi.state');
ws_close($cl{mover}{c});
my $seen_before = scalar @{ $cl{mover}{seqs} };
$cl{mover}{c} = ws_open($sb, name => 'client_mover_b',
	hello => { %$hello, resume_from => $pos + 0, epoch => $epoch_seen });
$cl{mover}{node} = $sb;
my $w = ws_expect($cl{mover}{c}, 'welcome', 'mover welcome on B', 30);
ok($w, "mover reconnects to standby B with seq $pos");

# revoke on the primary: the standby connection closes
$primary->safe_psql('postgres', "SELECT livekpi.revoke_token('to_revoke')");
my $err = ws_expect($rc, 'error', 'token_revoked on the standby', 60);
is($err && $err->{code}, 'token_revoked', 'revocation on the primary reaches the standby client');
my $cl_rc = ws_expect_closed($rc, 30);
is($cl_rc && $cl_rc->{_closed}, 4401, 'standby closes the revoked token with 4401');

finish_writers($writers);
sync_ok($primary, 120, 'sync after the load')
  or diag($primary->safe_psql('postgres', 'SELECT * FROM livekpi.status'));
caught_up();
my $last = $primary->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
my $epoch = $primary->safe_psql('postgres', 'SELECT epoch FROM livekpi.state');
diag("load done: last seq $last");

# was a resume possible for the mover when it reconnected? (a TRUNCATE's
# rebuild writes a barrier; those after its welcome do not matter)
my $wseq = $w ? $w->{seq} : 0;
my $barriers = $primary->safe_psql('postgres',
	"SELECT count(*) FROM livekpi.delta_log WHERE barrier AND seq > $pos AND seq <= $wseq");
if ($barriers > 0 || !$w || $w->{epoch} ne $epoch_seen)
{
	ok($w && !$w->{resumed}, "mover gets a snapshot: $barriers barrier(s) after seq $pos");
}
else
{
	ok($w && $w->{resumed}, "mover resumes on standby B from seq $pos (epoch $epoch_seen)");
}

for my $k (sort keys %cl)
{
	my $x = $cl{$k};
	ok( poll_until(
			"client_$k at seq $last", 60,
			sub { my $p = consume($k); defined $p && $p >= $last }),
		"client_$k reaches seq $last on " . $x->{node}->name);
	my %seen;
	my @dups = grep { $seen{$_}++ } @{ $x->{seqs} };
	ok(!@dups, "client_$k: no seq twice") or diag("client_$k: twice: @dups");
	for my $view (@VIEWS)
	{
		my $where = $view eq 'booking_daily' ? " WHERE day BETWEEN '$RANGE->{from}' AND '$RANGE->{to}'" : '';
		ok(rows_equal_sql($primary, [ values %{ $x->{state}{$view} // {} } ], "SELECT * FROM livekpi.$view$where"),
			"client_$k (" . $x->{node}->name . "): snapshot + deltas equals SQL on the primary ($view)");
	}
}
my @after = @{ $cl{mover}{seqs} }[ $seen_before .. $#{ $cl{mover}{seqs} } ];
ok(!grep({ $_ <= $pos } @after), 'mover: nothing it had seen on A is sent again by B')
  if $w && $w->{resumed};

# status on a standby: replay lag 0 and the newest seq served, once caught up
for my $s (@standbys)
{
	my $name = $s->name;
	ok( poll_until(
			"$name serves seq $last", 30,
			sub {
				(try_query($s, "SELECT seq_served = $last AND replay_lag_ms = 0 AND replay_lsn IS NOT NULL FROM livekpi.status") // '') eq 't';
			}),
		"$name: livekpi.status shows seq_served $last and replay lag 0");
	my ($code) = http_get($s, '/healthz');
	is($code, 200, "$name: /healthz 200 while streaming and caught up");
}
is($sa->safe_psql('postgres', "SELECT count(*) FROM livekpi.tokens WHERE label = 'all' AND last_used_at IS NOT NULL"),
	$primary->safe_psql('postgres', "SELECT count(*) FROM livekpi.tokens WHERE label = 'all' AND last_used_at IS NOT NULL"),
	'standby A: tokens as replayed (the standby wrote nothing)');

# a resume from a seq standby B has not replayed yet waits for replay, then
# resumes (without the wait it would get a snapshot)
$sb->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
ok( poll_until(
		'replay paused on B', 30,
		sub { $sb->safe_psql('postgres', 'SELECT pg_get_wal_replay_pause_state()') eq 'paused' }),
	'replay paused on standby B');
$primary->safe_psql('postgres', q{INSERT INTO public.bookings (property_id, check_in, check_out,
	total_amount, status) VALUES (2, '2026-04-03', '2026-04-05', 220, 'confirmed')});
sync_ok($primary, 60, 'sync after one more booking');
my $ahead = $primary->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
$primary->wait_for_catchup($sa, 'replay', $primary->lsn('insert'));
ok($sb->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state') < $ahead,
	"standby B has not replayed seq $ahead");
my $cr = ws_open($sb, name => 'ahead',
	hello => { %$hello, resume_from => $ahead + 0, epoch => $epoch });
$sb->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
my $wr = ws_expect($cr, 'welcome', 'welcome after replay resumed', 30);
ok($wr && $wr->{resumed} && $wr->{seq} == $ahead,
	"a hello resuming from seq $ahead, ahead of replay, waits and resumes");
ok(!grep({ ($_->{type} // '') eq 'snapshot' } ws_quiet($cr, 0)), '... without a snapshot');
ws_close($cr);
$primary->wait_for_catchup($sb, 'replay', $primary->lsn('insert'));

# promotion: stop the primary, promote A
my $ca = $cl{a};
consume('a');
my $i0 = scalar @{ $ca->{c}{msgs} };
$primary->stop('fast');
my $t0 = time();
$sa->promote;
ok( poll_until(
		'standby A promoted, apply worker streaming under a new epoch', 120,
		sub {
			(try_query($sa,
					"SELECT role = 'primary' AND slot_ready AND epoch <> '$epoch' FROM livekpi.status") // '') eq 't';
		}),
	'after promotion the apply worker starts: new slot, rebuild, new epoch');
diag(sprintf('promotion to a streaming apply worker took %.1f s', time() - $t0));

# A's client gets resync + snapshot, then deltas from the new apply worker
my ($got_resync, $got_snap) = (0, 0);
ok( poll_until(
		'resync and snapshot on the promoted node', 60,
		sub {
			consume('a');
			for my $m (@{ $ca->{c}{msgs} }[ $i0 .. $#{ $ca->{c}{msgs} } ])
			{
				my $t = $m->{type} // '';
				$got_resync = 1 if $t eq 'resync';
				$got_snap = 1 if $got_resync && $t eq 'snapshot';
			}
			$got_snap;
		}),
	'client on the promoted node gets a resync, then a snapshot');
$sa->safe_psql('postgres', q{INSERT INTO public.bookings (property_id, check_in, check_out,
	total_amount, status) VALUES (4, '2026-03-03', '2026-03-06', 300, 'confirmed')});
ok($sa->safe_psql('postgres', "SELECT livekpi.sync('60s')") eq 't', 'sync on the new primary');
my $new_last = $sa->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
ok( poll_until(
		"client on the promoted node at seq $new_last", 60,
		sub { my $p = consume('a'); defined $p && $p >= $new_last }),
	'a commit on the promoted node reaches its client');
ok(grep({ $_ == $new_last } @{ $ca->{seqs} }), "... as delta $new_last");
for my $view (@VIEWS)
{
	my $where = $view eq 'booking_daily' ? " WHERE day BETWEEN '$RANGE->{from}' AND '$RANGE->{to}'" : '';
	ok(rows_equal_sql($sa, [ values %{ $ca->{state}{$view} // {} } ], "SELECT * FROM livekpi.$view$where"),
		"promoted node's client equals SQL ($view)");
}
my ($code, $body) = http_get($sa, '/healthz');
is($code, 200, 'promoted node: /healthz 200');
like($body, qr/"role":"primary"/, 'promoted node: /healthz role primary');

# B lost its primary: unhealthy once max_lag (3 s) passes
ok( poll_until(
		'standby B unhealthy', 60,
		sub { my ($c) = http_get($sb, '/healthz'); $c == 503 }),
	'orphaned standby: /healthz 503 past livekpi.max_lag of replay lag');

$_->stop for @standbys;
done_testing();
