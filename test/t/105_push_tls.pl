
# Copyright (c) 2026, livekpi authors
#
# test/t/105_push_tls.pl
#	  With livekpi.ssl_cert_file and livekpi.ssl_key_file set, the listener
#	  speaks TLS only: https and wss work with a self-signed certificate
#	  (python client verifying against it, livekpi-tail --insecure), and a
#	  plain-text request gets no answer.

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

my $dir = PostgreSQL::Test::Utils::tempdir();
my ($out, $err) = ('', '');
IPC::Run::run(
	[ 'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
	  '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
	  '-keyout', "$dir/key.pem", '-out', "$dir/cert.pem" ],
	'>', \$out, '2>', \$err) or BAIL_OUT("openssl failed: $err");
chmod 0600, "$dir/key.pem";

my $node = push_node('push_tls', tls => 1,
	conf => "livekpi.ssl_cert_file = '$dir/cert.pem'\nlivekpi.ssl_key_file = '$dir/key.pem'\n");
fake_batch($node, 1, "'2026-01-05'", 3, 300);
my $all = make_token($node, 'all');
my $port = $node->{livekpi_port};

sub py_get
{
	my ($url) = @_;
	my ($o, $e) = ('', '');
	IPC::Run::run(
		[ '/usr/bin/python3', '-c', q{
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
try:
    r = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:
    print("ERR", e)
}, $url, "$dir/cert.pem" ],
		'>', \$o, '2>', \$e, IPC::Run::timeout(30));
	return $o;
}

ok(poll_until('https /healthz', 30, sub { py_get("https://127.0.0.1:$port/healthz") =~ /^200/ }),
	'https /healthz answers 200 with the self-signed certificate');
like(py_get("https://127.0.0.1:$port/nope"), qr/^404/, 'https 404');

my $c = ws_open($node, name => 'wss', args => [ '--cafile', "$dir/cert.pem" ],
	hello => { type => 'hello', token => $all });
ok(!$c->{connect_error}, 'wss connection verified against the certificate');
my $s = ws_expect($c, 'snapshot');
ok(rows_equal_sql($node, $s->{rows}{property_kpis}, 'SELECT * FROM livekpi.property_kpis'),
	'snapshot over wss equals SQL');
my $seq = fake_batch($node, 1, "'2026-01-06'", 1, 10);
is(ws_expect($c, 'delta')->{seq}, $seq, 'deltas over wss');
ws_close($c);

my ($tout, $terr) = ('', '');
IPC::Run::run([ 'livekpi-tail', '--url', "wss://127.0.0.1:$port/v1/stream", '--token', $all,
		'--insecure', '--count', 2 ], '>', \$tout, '2>', \$terr, IPC::Run::timeout(30));
is($? >> 8, 0, 'livekpi-tail over wss');
like($tout, qr/"type":"snapshot"/, 'livekpi-tail got the snapshot over wss');

# plain text is not served
my $plain = ws_open($node, name => 'plain', url => "ws://127.0.0.1:$port/v1/stream");
ok($plain->{connect_error}, 'plain ws refused on a TLS listener');
like(py_get("http://127.0.0.1:$port/healthz"), qr/^ERR/, 'plain http gets no answer');

$node->stop;
done_testing();
