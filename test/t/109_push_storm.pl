
# Copyright (c) 2026, livekpi authors
#
# test/t/109_push_storm.pl
#	  No SQL on the hot path (issue 10, item 3): 3,000 clients saying hello
#	  at once are checked in a few short transactions (one per round,
#	  LK_REQUESTS_PER_ROUND hellos each, last_used_at in one statement
#	  without waiting for a WAL flush), so a client connected before the
#	  storm keeps its heartbeats: the gap between two heartbeats, by their
#	  server_time, stays under 2 x heartbeat_interval (1 s here).  The
#	  landed code ran one transaction and one flushed commit per hello:
#	  gaps of 5.5 s on a slower disk; as gaps depend on the machine, the
#	  test also counts the transactions the storm took (the landed code:
#	  one or more per hello).  Also: last_used_at is set for the storm's
#	  token.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $node = push_node('push_storm');
fake_batch($node, 1, "'2026-01-05'", 3, 300);
my $all = make_token($node, 'all');
my $storm_token = make_token($node, 'storm');
my $pid = push_worker_pid($node);

my $by = ws_open($node, name => 'bystander', hello => { type => 'hello', token => $all });
ok(ws_expect($by, 'snapshot'), 'bystander connected');
ok(ws_expect($by, 'heartbeat'), 'bystander gets heartbeats');

my $xact_sql = q{SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'};
my $xacts_before = $node->safe_psql('postgres', $xact_sql);
my ($in, $out, $err) = ('', '', '');
my $crowd = IPC::Run::start(
	[ '/usr/bin/python3', "$FindBin::RealBin/../ws_crowd.py", '127.0.0.1',
		$node->{livekpi_port}, 3000, $storm_token, '--batch', 3000 ],
	'<', \$in, '>', \$out, '2>', \$err);
my $deadline = time() + 180;
while ($out !~ /\n/ && time() < $deadline)
{
	$crowd->pump_nb;
	ws_all($by);
	usleep(20_000);
}
my $ready = eval { json_decode((split /\n/, $out)[0]) } // {};
is($ready->{snapshots}, 3000, '3,000 hellos answered with welcome and snapshot');

# a heartbeat after the storm, then look at the gaps
ok(ws_expect($by, sub { ($_[0]->{type} // '') eq 'heartbeat' }, 'heartbeat after the storm'),
	'heartbeats go on after the storm');
my @beats;
for my $m (ws_all($by))
{
	next unless ($m->{type} // '') eq 'heartbeat';
	my ($h, $mi, $s) = $m->{server_time} =~ /T(\d\d):(\d\d):(\d\d(?:\.\d+)?)/ or next;
	push @beats, $h * 3600 + $mi * 60 + $s;
}
my $gap = 0;
for my $i (1 .. $#beats)
{
	my $d = $beats[$i] - $beats[ $i - 1 ];
	$d += 86400 if $d < 0;
	$gap = $d if $d > $gap;
}
note(sprintf('%d heartbeats, largest gap %.3f s', scalar @beats, $gap));
cmp_ok($gap, '<', 2.0, 'largest heartbeat gap during the storm is under 2 x heartbeat_interval');

# The worker's statistics reach pg_stat_database at most once a second:
# three more heartbeats (three seconds) later they include the storm.
ws_expect($by, 'heartbeat') for 1 .. 3;
my $xacts = $node->safe_psql('postgres', $xact_sql) - $xacts_before;
note("transactions during the storm: $xacts");
cmp_ok($xacts, '<', 1500,
	'3,000 hellos took far fewer transactions than hellos (one per round, not one per hello)');

ok( $node->poll_query_until('postgres',
		"SELECT last_used_at IS NOT NULL FROM livekpi.tokens WHERE label = 'storm'"),
	'last_used_at was written for the storm\'s token');

$crowd->finish;
ws_close($by);
is(push_worker_pid($node), $pid, 'the worker is the same process');
reliability('a storm of 3,000 hellos beside a live client', '1',
	'heartbeats kept going, one transaction per round');
$node->stop;
done_testing();
