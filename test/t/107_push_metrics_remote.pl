
# Copyright (c) 2026, livekpi authors
#
# test/t/107_push_metrics_remote.pl
#	  /metrics from a non-loopback address needs "Authorization: Bearer"
#	  with a valid token (SPEC section 7); the listener listens on every
#	  address of livekpi.listen_addresses.  Skipped on a machine without a
#	  non-loopback IPv4 address.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use HTTP::Tiny;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my ($ip) = grep { !/^127\./ } map { m{inet (\d+\.\d+\.\d+\.\d+)/} ? $1 : () }
  split /\n/, `ip -4 -o addr show 2>/dev/null`;
plan skip_all => 'no non-loopback IPv4 address' unless $ip;

my $node = push_node('push_metrics', conf => "livekpi.listen_addresses = '127.0.0.1, $ip'\n");
my $all = make_token($node, 'all');
my $port = $node->{livekpi_port};
my $http = HTTP::Tiny->new(timeout => 10);

# /healthz is 503 until the apply worker streams
my $r;
poll_until('/healthz', 30, sub { $r = $http->get("http://$ip:$port/healthz"); $r->{status} == 200 });
is($r->{status}, 200, "listening on $ip as well");
$r = $http->get("http://$ip:$port/metrics");
is($r->{status}, 401, 'remote /metrics without a token: 401');
$r = $http->get("http://$ip:$port/metrics", { headers => { Authorization => 'Bearer lk_nope' } });
is($r->{status}, 401, 'remote /metrics with a bad token: 401');
$r = $http->get("http://$ip:$port/metrics", { headers => { Authorization => "Bearer $all" } });
is($r->{status}, 200, 'remote /metrics with a valid token: 200');
like($r->{content}, qr/^livekpi_messages_sent_total \d+$/m, 'metrics body');
$node->safe_psql('postgres', "SELECT livekpi.revoke_token('all')");
$r = $http->get("http://$ip:$port/metrics", { headers => { Authorization => "Bearer $all" } });
is($r->{status}, 401, 'revoked token: 401');
$r = $http->get("http://127.0.0.1:$port/metrics");
is($r->{status}, 200, 'loopback needs no token');

$node->stop;
done_testing();
