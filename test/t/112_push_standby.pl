
# Copyright (c) 2026, livekpi authors
#
# test/t/112_push_standby.pl
#	  The push worker on a hot standby (SPEC section 10, first part): it
#	  serves what the standby replayed; a token made on the primary works
#	  there; a batch committed on the primary reaches a standby client
#	  (the worker watches the replay position while clients are
#	  connected); nothing is written there (last_used_at stays as the
#	  primary has it); /healthz and /metrics know the role; a client moved
#	  from one standby to another with its seq and epoch misses nothing and
#	  receives nothing twice; after promotion the standby's clients keep
#	  receiving.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $primary = push_node('standby_primary');
fake_batch($primary, 1, "'2026-01-05'", 3, 300);
my $all = make_token($primary, 'all');
my $scoped = make_token($primary, 'scoped', '{1}');

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby_standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
my $sport = PostgreSQL::Test::Cluster::get_free_port();
$standby->append_conf('postgresql.conf', "livekpi.port = $sport\n");
$standby->start;
$standby->{livekpi_port} = $sport;
$standby->{livekpi_scheme} = 'http';
$primary->wait_for_catchup($standby, 'replay');

my ($st, $body);
ok(poll_until('standby /healthz', 30, sub { ($st, $body) = http_get($standby, '/healthz'); $st == 200 }),
	'the standby\'s /healthz is 200 without an apply worker')
  or diag($body);
like($body, qr/"role":"standby"/, '... and says it is a standby');
($st, $body) = http_get($primary, '/healthz');
like($body, qr/"role":"primary"/, 'the primary says it is the primary');
($st, $body) = http_get($standby, '/metrics');
like($body, qr/^livekpi_standby 1$/m, '/metrics on the standby: livekpi_standby 1');
like($body, qr/^livekpi_replay_lag_seconds [0-9.]+$/m, '... and the replay lag');

my $c = ws_open($standby, name => 'on standby', hello => { type => 'hello', token => $all });
ok(ws_expect($c, 'welcome'), 'a primary token is accepted on the standby');
my $snap = ws_expect($c, 'snapshot');
ok($snap, 'snapshot from the standby');
my $s2 = ws_open($standby, name => 'scoped on standby',
	hello => { type => 'hello', token => $scoped, properties => [1] });
ok(ws_expect($s2, 'snapshot'), 'a scoped token with properties works on the standby');
my $bad = ws_open($standby, name => 'bad key',
	hello => { type => 'hello', token => $scoped, properties => ['99999999999999999999999'] });
my $e = ws_expect($bad, 'error');
is($e && $e->{code}, 'bad_message', 'an invalid key is that client\'s error on the standby');
ok(ws_expect($s2, 'heartbeat'), 'the other standby client is unaffected');

my $seq = fake_batch($primary, 1, "'2026-01-06'", 2, 200);
my $d = ws_expect($c, sub { ($_[0]->{type} // '') eq 'delta' && $_[0]->{seq} == $seq },
	"delta $seq", 30);
ok($d, 'a batch committed on the primary reaches the standby client');

# nothing written on the standby: last_used_at there is the primary's
$primary->wait_for_catchup($standby, 'replay');
is( $standby->safe_psql('postgres', "SELECT last_used_at IS NULL FROM livekpi.tokens WHERE label = 'scoped'"),
	't', 'the standby did not write last_used_at');

# revocation on the primary closes the standby's connections
$primary->safe_psql('postgres', "SELECT livekpi.revoke_token('all')");
$e = ws_expect($c, 'error', 'revocation', 30);
is($e && $e->{code}, 'token_revoked', 'a revocation on the primary closes the standby client');

ws_close($_) for ($c, $bad);

# a second standby; a client moves from the first to the second
my $standby2 = PostgreSQL::Test::Cluster->new('standby_two');
$standby2->init_from_backup($primary, 'b', has_streaming => 1);
my $sport2 = PostgreSQL::Test::Cluster::get_free_port();
$standby2->append_conf('postgresql.conf', "livekpi.port = $sport2\n");
$standby2->start;
$standby2->{livekpi_port} = $sport2;
$standby2->{livekpi_scheme} = 'http';
my $all2 = make_token($primary, 'all2');
$primary->wait_for_catchup($standby, 'replay');
my $m1 = ws_open($standby, name => 'mover on 1', hello => { type => 'hello', token => $all2 });
my $w1 = ws_expect($m1, 'welcome');
ok(ws_expect($m1, 'snapshot'), 'mover connected to the first standby');
my $seqA = fake_batch($primary, 1, "'2026-01-07'", 1, 100);
ok(ws_expect($m1, sub { ($_[0]->{type} // '') eq 'delta' && $_[0]->{seq} == $seqA }, "delta $seqA"),
	'mover got a batch on the first standby');
ws_close($m1);
my $seqB = fake_batch($primary, 1, "'2026-01-08'", 1, 100);
my $seqC = fake_batch($primary, 2, "'2026-01-08'", 1, 100);
$primary->wait_for_catchup($standby2, 'replay');
my $m2 = ws_open($standby2, name => 'mover on 2',
	hello => { type => 'hello', token => $all2, resume_from => $seqA + 0, epoch => $w1->{epoch} });
my $w2 = ws_expect($m2, 'welcome');
ok($w2 && $w2->{resumed}, 'resumed on the second standby with the seq and epoch of the first');
ok(ws_expect($m2, sub { ($_[0]->{type} // '') eq 'delta' && $_[0]->{seq} == $seqC }, "delta $seqC"),
	'it receives the batches it missed');
my @seqs = map { $_->{seq} } grep { ($_->{type} // '') =~ /^(delta|snapshot)$/ } ws_all($m2);
is_deeply(\@seqs, [ $seqB, $seqC ], 'every batch after its seq exactly once, no snapshot');

# promotion of the first standby: its clients keep receiving
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'promote';
ok( poll_until(
		'/healthz says primary', 60,
		sub { my ($st2, $b2) = http_get($standby, '/healthz'); ($b2 // '') =~ /"role":"primary"/ }),
	'after promotion /healthz says primary');
my $seqP = fake_batch($standby, 1, "'2026-01-09'", 1, 100);
ok( ws_expect(
		$s2,
		sub {
			($_[0]->{type} // '') =~ /^(delta|snapshot|heartbeat)$/
			  && ($_[0]->{seq} // -1) >= $seqP;
		},
		"position $seqP after promotion",
		60),
	'a client of the promoted standby receives what the new primary commits');

ws_close($_) for ($s2, $m2);
$standby2->stop;
$standby->stop;
$primary->stop;
done_testing();
