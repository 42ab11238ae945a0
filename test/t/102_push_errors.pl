
# Copyright (c) 2026, livekpi authors
#
# test/t/102_push_errors.pl
#	  Every error and close code of SPEC section 7, the hello deadline,
#	  revocation and expiry cutting open connections within a second, and
#	  livekpi.max_clients; malformed input closes only that connection:
#	  the worker's pid is the same after the whole suite, and a client
#	  connected throughout keeps receiving.

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

my $node = push_node('push_errors', conf => "livekpi.max_clients = 6\n");
fake_batch($node, 1, "'2026-01-05'", 3, 300);
my $all = make_token($node, 'all');
my $pid = push_worker_pid($node);
ok($pid, 'push worker running');

# a bystander connected through the whole suite
my $by = ws_open($node, name => 'bystander', hello => { type => 'hello', token => $all });
ok(ws_expect($by, 'snapshot'), 'bystander connected');

sub closes_with
{
	my ($send, $code, $close, $name) = @_;
	my $c = ws_open($node, name => $name);
	ws_send($c, $_) for @$send;
	my $e = ws_expect($c, 'error', "$name error", 10);
	is($e && $e->{code}, $code, "$name: error $code");
	my $cl = ws_expect_closed($c, 10);
	is($cl && $cl->{_closed}, $close, "$name: close $close");
	ws_close($c);
	return;
}

my $hello = json_encode({ type => 'hello', token => $all });
closes_with(['{"type":"hello",'], 'bad_message', 1007, 'bad JSON');
closes_with(['[1,2,3]'], 'bad_message', 1007, 'not an object');
closes_with(['{"type":"hello"}'], 'bad_message', 1007, 'hello without token');
closes_with(['!binary {"type":"hello"}'], 'bad_message', 1003, 'binary frame');
closes_with(['!big 70000'], 'too_large', 1009, 'frame over 64 kB');
closes_with(['{"type":"nope","token":"x"}'], 'bad_message', 1007, 'unknown type');
closes_with(['{"type":"subscribe","views":["property_kpis"]}'], 'bad_message', 1007, 'message before hello');
closes_with([ $hello, $hello ], 'bad_message', 1007, 'second hello');
closes_with([ json_encode({ type => 'hello', token => $all, views => ['nope'] }) ],
	'bad_message', 1007, 'unknown view');
closes_with([ json_encode({ type => 'hello', token => $all, properties => ['x'] }) ],
	'bad_message', 1007, 'property of the wrong type');
closes_with([ json_encode({ type => 'hello', token => $all, views => ['booking_daily'],
	daily_range => { from => '2026-02-30', to => '2026-03-01' } }) ],
	'bad_message', 1007, 'impossible date');
closes_with([ '{"type":"hello","token":"lk_nope"}' ], 'bad_token', 4401, 'unknown token');
closes_with([ '{"type":"hello","token":"' . ('[' x 5000) . '"}' ], 'bad_message', 1007, 'absurd token');
closes_with([ '{"type":"hello","token":"x","a":' . ('[' x 5000) . '}' ], 'bad_message', 1007,
	'deep nesting');

my $expired = make_token($node, 'expired', undef, '1 second');
sleep 1.2;
closes_with([ json_encode({ type => 'hello', token => $expired }) ], 'token_expired', 4401,
	'expired token');
my $revoked = make_token($node, 'revoked');
$node->safe_psql('postgres', "SELECT livekpi.revoke_token('revoked')");
closes_with([ json_encode({ type => 'hello', token => $revoked }) ], 'token_revoked', 4401,
	'revoked token');
is($node->safe_psql('postgres', "SELECT livekpi.revoke_token('revoked')"), 'f',
	'revoking twice returns false');

# revocation of a connected token: closed within 1 s
my $victim = make_token($node, 'victim');
my $v = ws_open($node, name => 'victim', hello => { type => 'hello', token => $victim });
ok(ws_expect($v, 'snapshot'), 'victim connected');
my $t0 = time();
$node->safe_psql('postgres', "SELECT livekpi.revoke_token('victim')");
my $e = ws_expect($v, 'error', 'revocation', 5);
my $cl = ws_expect_closed($v, 5);
my $dt = time() - $t0;
is($e && $e->{code}, 'token_revoked', 'connected client told token_revoked');
is($cl && $cl->{_closed}, 4401, 'and closed with 4401');
cmp_ok($dt, '<', 1.0, "within 1 s of revoke_token() ($dt s)");

# expiry of a connected token
my $short = make_token($node, 'short', undef, '2 seconds');
$v = ws_open($node, name => 'short', hello => { type => 'hello', token => $short });
ok(ws_expect($v, 'snapshot'), 'short-lived token connected');
$e = ws_expect($v, 'error', 'expiry', 5);
is($e && $e->{code}, 'token_expired', 'connected client told token_expired');
my $exp_at = $node->safe_psql('postgres',
	"SELECT extract(epoch FROM clock_timestamp() - expires_at) FROM livekpi.tokens WHERE label = 'short'");
cmp_ok($exp_at, '<', 1.5, 'closed within about a second of expiry');
is(ws_expect_closed($v, 5)->{_closed}, 4401, 'expiry closes with 4401');

# too many clients: max_clients = 6, the bystander holds one
my @held = map { ws_open($node, name => "held$_", hello => $hello) } 1 .. 5;
ok(ws_expect($_, 'snapshot'), 'held client connected') for @held;
my $extra = ws_open($node, name => 'extra');
my $te = ws_expect($extra, 'error', 'too_many_clients', 10);
is($te && $te->{code}, 'too_many_clients', 'one too many: too_many_clients');
is(ws_expect_closed($extra, 5)->{_closed}, 1013, 'closed with 1013');
ws_close($_) for @held;
ok( poll_until('slots freed', 10,
		sub { $node->safe_psql('postgres', 'SELECT count(*) FROM livekpi.clients') == 1 }),
	'closed connections leave livekpi.clients');
my $again = ws_open($node, name => 'again', hello => $hello);
ok(ws_expect($again, 'snapshot'), 'a slot is free again');
ws_close($again);

# hello deadline
my $slow = ws_open($node, name => 'silent');
my $t1 = time();
$cl = ws_expect_closed($slow, 15);
my $waited = time() - $t1;
ok($cl, 'silent client closed');
cmp_ok($waited, '>', 8, "not before the 10 s hello deadline ($waited s)");

# the worker survived all of it, and the bystander still receives
is(push_worker_pid($node), $pid, 'push worker pid unchanged');
my $seq = fake_batch($node, 1, "'2026-01-06'", 1, 10);
my $d = ws_expect($by, 'delta');
is($d && $d->{seq}, $seq, 'bystander still receives deltas');
ok(!grep({ exists $_->{_closed} } ws_all($by)), 'bystander never disconnected');

reliability('malformed, oversized, binary and out-of-order WebSocket messages, bad and revoked tokens', Test::More->builder->current_test . ' checks',
	'only that connection closed with its code; others and the worker unaffected');
$node->stop;
done_testing();
