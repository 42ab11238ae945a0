
# Copyright (c) 2026, livekpi authors
#
# test/t/100_push_http.pl
#	  The push worker's HTTP side (SPEC section 7): /healthz, /metrics,
#	  static files and the placeholder page, 404, security headers, the
#	  WebSocket endpoint refusing other paths and foreign origins, and
#	  livekpi.status showing the worker.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use HTTP::Tiny;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $node = push_node('push_http');

my ($st, $body, $hdr);
ok( poll_until(
		'/healthz answers', 30,
		sub { ($st, $body, $hdr) = http_get($node, '/healthz'); $st == 200 }
	),
	'/healthz becomes 200 once the apply worker runs');
is($st, 200, '/healthz is 200 with the apply worker running');
my $health = json_decode($body);
is($health->{status}, 'ok', '/healthz says ok');
like($hdr->{'content-type'}, qr{application/json}, '/healthz is JSON');
is($hdr->{'x-content-type-options'}, 'nosniff', 'nosniff header');
is($hdr->{'x-frame-options'}, 'DENY', 'no framing');
like($hdr->{'content-security-policy'}, qr/default-src 'self'/, 'CSP header');

# listen_addresses = '127.0.0.1' means loopback only
my ($ip) = grep { !/^127\./ } map { m{inet (\d+\.\d+\.\d+\.\d+)/} ? $1 : () }
  split /\n/, `ip -4 -o addr show 2>/dev/null`;
SKIP:
{
	skip 'no non-loopback IPv4 address', 1 unless $ip;
	my $r = HTTP::Tiny->new(timeout => 5)->get("http://$ip:$node->{livekpi_port}/healthz");
	is($r->{status}, 599, "not listening on $ip");
}

($st, $body) = http_get($node, '/no/such/thing');
is($st, 404, 'unknown path is 404');
($st, $body) = http_get($node, '/../../etc/passwd');
is($st, 404, 'path traversal is 404');

($st, $body, $hdr) = http_get($node, '/');
is($st, 200, 'GET / answers');
like($hdr->{'content-type'}, qr{text/html}, 'GET / is HTML');

($st, $body) = http_get($node, '/metrics');
is($st, 200, '/metrics for a loopback peer');
like($body, qr/^# TYPE livekpi_batches_total counter$/m, 'Prometheus text');
like($body, qr/^livekpi_clients \d+$/m, 'clients gauge');
like($body, qr/^# TYPE livekpi_batch_duration_seconds histogram$/m, 'batch duration histogram');
like($body, qr/^livekpi_batch_duration_seconds_bucket\{le="0.001"\} \d+$/m, 'first bucket');
like($body, qr/^livekpi_batch_duration_seconds_bucket\{le="\+Inf"\} (\d+)\nlivekpi_batch_duration_seconds_sum [0-9.]+\nlivekpi_batch_duration_seconds_count \1$/m,
	'+Inf bucket equals the count');
like($body, qr/^livekpi_lag_seconds [0-9.]+$/m, 'lag gauge');

($st, $body) = http_get($node, '/v1/stream');
is($st, 426, 'plain GET of the stream asks for an upgrade');

# the WebSocket only at /v1/stream
my $c = ws_open($node, url => push_url($node, '/elsewhere'));
ok($c->{connect_error}, 'WebSocket refused on another path');

# Origin: empty allowed_origins means the listener's own origin only
$c = ws_open($node, args => [ '--origin', 'http://evil.example' ]);
ok($c->{connect_error}, 'foreign Origin refused');
$c = ws_open($node, args => [ '--origin', "http://127.0.0.1:$node->{livekpi_port}" ]);
ok(!$c->{connect_error}, 'own Origin accepted');
ws_close($c);
$c = ws_open($node);
ok(!$c->{connect_error}, 'no Origin (non-browser client) accepted');
is(ws_all($c) && (ws_all($c))[0]->{subprotocol}, 'livekpi.v1', 'subprotocol livekpi.v1');
ws_close($c);

$node->append_conf('postgresql.conf', "livekpi.allowed_origins = 'https://dash.example, http://other.example'");
$node->reload;
ok( poll_until(
		'allowed_origins reload', 10,
		sub {
			my $x = ws_open($node, args => [ '--origin', 'https://dash.example' ]);
			my $ok = !$x->{connect_error};
			ws_close($x);
			$ok;
		}),
	'listed Origin accepted after reload');
$c = ws_open($node, args => [ '--origin', 'http://127.0.0.1:' . $node->{livekpi_port} ]);
ok($c->{connect_error}, 'unlisted Origin refused');

my $status = $node->safe_psql('postgres',
	"SELECT push_pid IS NOT NULL, push_state FROM livekpi.status");
like($status, qr/^t\|listening$/, 'livekpi.status shows the push worker listening');

$node->stop;
done_testing();
