
# Copyright (c) 2026, livekpi authors
#
# test/t/110_push_rfc6455.pl
#	  RFC 6455 strictness of the listener, with hand-made handshakes and
#	  frames (test/ws_crowd.py --raw): an unsupported Sec-WebSocket-Version
#	  gets 426 with "Sec-WebSocket-Version: 13", a missing or malformed key
#	  400, an unmasked client frame a close 1002 (a TODO with Debian's
#	  libwebsockets 4.1.6, see below); and the default origin
#	  check compares Origin with the listener's own configured address and
#	  port, never with the request's Host header (a forged Host with a
#	  foreign Origin is refused).

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

my $node = push_node('push_rfc6455');
my $pid = push_worker_pid($node);
ok($pid, 'push worker running');

sub raw
{
	my ($case) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ '/usr/bin/python3', "$FindBin::RealBin/../ws_crowd.py", '127.0.0.1',
		$node->{livekpi_port}, '--raw', $case ], '>', \$out, '2>', \$err,
		IPC::Run::timeout(30));
	my $r = eval { json_decode((split /\n/, $out)[-1] // '') };
	diag("ws_crowd.py --raw $case: $out $err") unless $r;
	return $r // {};
}

my $r = raw('version99');
is($r->{status}, 426, 'Sec-WebSocket-Version: 99 is refused with 426');
is($r->{headers}{'sec-websocket-version'}, '13', '... naming version 13');

$r = raw('nokey');
is($r->{status}, 400, 'a handshake without Sec-WebSocket-Key gets 400');
$r = raw('badkey');
is($r->{status}, 400, 'a key that is not base64 gets 400');
$r = raw('shortkey');
is($r->{status}, 400, 'a key that is not 16 bytes gets 400');

$r = raw('masked');
is($r->{close}, 1007, 'a masked frame is read (an unknown type closes with 1007)');
# RFC 6455 5.1 asks the server to close on an unmasked client frame.
# libwebsockets does so only from 5.0 on ("client unmasked", 1002; no 4.x
# release has it); Debian 12's 4.1.6 accepts the frame and offers no way
# to see the mask bit from a callback, so this stays a known gap until the
# library is upgraded.
$r = raw('unmasked');
TODO:
{
	local $TODO = 'libwebsockets 4.1.6 does not reject unmasked client frames';
	is($r->{close}, 1002, 'an unmasked client frame closes with 1002');
}

$r = raw('foreign-origin-forged-host');
is($r->{status}, 403, 'a foreign Origin with a forged Host is refused');
$r = raw('own-origin');
is($r->{status}, 101, 'the listener\'s own origin is accepted');

# allowed_origins replaces the own origins
my $c = ws_open($node, name => 'before', args => [ '--origin', 'http://dash.example' ]);
ok($c->{connect_error}, 'a foreign origin is refused by default');
ws_close($c);
$node->append_conf('postgresql.conf', "livekpi.allowed_origins = 'http://dash.example'\n");
$node->reload;
# the worker has reloaded once the listed origin is accepted
my $accepted = 0;
for my $try (1 .. 50)
{
	$c = ws_open($node, name => 'listed', args => [ '--origin', 'http://dash.example' ]);
	$accepted = $c->{connect_error} ? 0 : 1;
	ws_close($c);
	last if $accepted;
	$node->poll_query_until('postgres', 'SELECT true');
}
ok($accepted, 'an origin of livekpi.allowed_origins is accepted');
$c = ws_open($node, name => 'own', args => [ '--origin', "http://127.0.0.1:$node->{livekpi_port}" ]);
ok($c->{connect_error}, 'with allowed_origins set, the own origin is no longer implied');
ws_close($c);

is(push_worker_pid($node), $pid, 'the worker survived every case');
reliability('RFC 6455 handshake violations and forged Origin/Host headers', Test::More->builder->current_test . ' checks',
	'refused with 400/403/426; the worker survived every case');
$node->stop;
done_testing();
