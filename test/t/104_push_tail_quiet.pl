
# Copyright (c) 2026, livekpi authors
#
# test/t/104_push_tail_quiet.pl
#	  livekpi-tail over a long quiet stream and with refusals (issue 11):
#	  the hello is sent once per connection, so the server's idle ping
#	  (sent after 30 s without client traffic, src/push_worker.c) does not
#	  make it send a second hello and die with bad_message; an error message
#	  does not count toward --count, so "--count 1" with a refused token
#	  exits with the refusal's code, not 0.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

# Heartbeats every second: they are the clock of the quiet period below.
my $node = push_node('push_tail_quiet', conf => "livekpi.heartbeat_interval = 1\n");
fake_batch($node, 1, "'2026-01-05'", 3, 300);
my $all = make_token($node, 'all');
my $p2 = make_token($node, 'p2', '{2}');
my $url = push_url($node);

sub tail
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'livekpi-tail', '--url', $url, @args ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(30));
	return ($? >> 8, [ map { json_decode($_) } grep { length } split /\n/, $out ], $err);
}

my ($rc, $msgs, $err) = tail('--token', 'lk_wrong', '--count', 1);
is($rc, 3, '--count 1 with an unknown token: exit 3, not 0');
is($msgs->[0]{code}, 'bad_token', 'the error is still printed');
like($err, qr/4401/, 'and the close code is on stderr');
($rc) = tail('--token', $p2, '--views', 'portfolio_kpis', '--count', 1);
is($rc, 4, '--count 1 with a forbidden view: exit 4');
($rc) = tail('--token', 'lk_wrong', '--count', 1, '--follow');
is($rc, 3, '--follow ends on a refused token');

############################################################
# A quiet stream: no batch for longer than the server's idle ping (30 s).
my ($out, $serr) = ('', '');
my $follow = IPC::Run::start(
	[ 'livekpi-tail', '--url', $url, '--token', $all, '--follow' ],
	'>', \$out, '2>', \$serr);
sub lines { return map { json_decode($_) } grep { length } split /\n/, $out; }
sub heartbeats { return scalar(grep { $_->{type} eq 'heartbeat' } lines()); }
poll_until(
	'40 heartbeats (40 s of quiet) or livekpi-tail ending', 120,
	sub {
		return 1 unless $follow->pumpable;
		$follow->pump_nb;
		return heartbeats() >= 40;
	});
cmp_ok(heartbeats(), '>=', 40, 'livekpi-tail --follow keeps receiving heartbeats past the idle ping');
ok($follow->pumpable, 'livekpi-tail is still running') or diag($serr);
unlike($serr, qr/bad_message|reconnecting/, 'no second hello, no reconnect') or diag($serr);
my $seq = fake_batch($node, 2, "'2026-01-06'", 1, 50);
ok( poll_until(
		'the delta after the quiet period', 30,
		sub { $follow->pump_nb if $follow->pumpable; $out =~ /"type":"delta","seq":$seq\b/ }),
	'a change after the quiet period still arrives');
is(scalar(grep { $_->{type} eq 'welcome' } lines()), 1, 'on the first connection');
$follow->kill_kill;

$node->stop;
done_testing();
