
# Copyright (c) 2026, livekpi authors
#
# test/t/111_push_listen.pl
#	  The push worker when it cannot do its job, and /healthz telling why:
#	  * two clusters with the same livekpi.port: the second logs the reason
#	    (errno text) and a hint once, publishes it in livekpi.status
#	    (push_last_error), retries with backoff in the same process, and
#	    takes the port once the first cluster stops;
#	  * /healthz is 503 with a reason when the extension does not exist in
#	    livekpi.database, and when that database does not exist (reported
#	    once: the worker then runs without a database and keeps serving
#	    /healthz instead of failing every 5 s);
#	  * /metrics carries the counters of issue 11 item 10, and
#	    livekpi_batches_total equals the duration histogram's count.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

# --- port taken by another cluster
my $first = push_node('listen_first');
my $port = $first->{livekpi_port};
# (push_node's own port is overridden by the later line)
my $second = push_node('listen_second', conf => "livekpi.port = $port\n");
ok( $second->poll_query_until('postgres',
		"SELECT push_last_error LIKE '%port $port%Address already in use%' FROM livekpi.status"),
	'the second cluster publishes why it cannot listen, with the errno text')
  or diag($second->safe_psql('postgres', 'SELECT push_state, push_last_error FROM livekpi.status'));
my $pid2 = push_worker_pid($second);
ok($pid2, 'its push worker keeps running (it backs off instead of exiting)');
is($second->safe_psql('postgres', 'SELECT push_state FROM livekpi.status'),
	'cannot listen', 'push_state says it cannot listen');
my $log = slurp_file($second->logfile);
like($log, qr/HINT:.*another cluster\?.*livekpi\.port/i, 'the log has a hint');

$first->stop;
ok( $second->poll_query_until('postgres',
		"SELECT push_state = 'listening' FROM livekpi.status"),
	'once the port is free the second cluster listens');
is(push_worker_pid($second), $pid2, '... in the same process');
$log = slurp_file($second->logfile);
my $n = () = $log =~ /livekpi push worker could not listen/g;
is($n, 1, 'the reason was logged once, not at every retry');
$second->stop;

# --- the extension missing, then present
my $node = push_node('listen_noext', no_extension => 1);
my ($st, $body);
poll_until('the listener', 30, sub { ($st, $body) = http_get($node, '/healthz'); $st != 599 });
is($st, 503, '/healthz is 503 without the extension');
like($body, qr/"reason":"the extension is not installed/, '... saying why');
TestLib::LiveKpiPush::push_node_prepare($node);
ok(poll_until('/healthz 200', 30, sub { ($st, $body) = http_get($node, '/healthz'); $st == 200 }),
	'/healthz is 200 once the extension exists and the apply worker streams');

# --- /metrics
fake_batch($node, 1, "'2026-01-05'", 3, 300);
($st, $body) = http_get($node, '/metrics');
is($st, 200, '/metrics');
for my $m (qw(livekpi_rows_skipped_total livekpi_records_rejected_total livekpi_rebuilds_total
	livekpi_paused livekpi_stale livekpi_delta_batches_total livekpi_slot_retained_wal_bytes))
{
	like($body, qr/^$m -?\d+$/m, "metric $m");
}
like($body, qr/^livekpi_errors\{worker="apply"\} [01]$/m, 'metric livekpi_errors');
like($body, qr/^livekpi_build_info\{version="[^"]+",pg_version="[^"]+"\} 1$/m, 'metric livekpi_build_info');
my ($total) = $body =~ /^livekpi_batches_total (\d+)$/m;
my ($count) = $body =~ /^livekpi_batch_duration_seconds_count (\d+)$/m;
is($total, $count, 'livekpi_batches_total equals the histogram\'s count');
like($body, qr/^livekpi_slot_retained_wal_bytes \d+$/m, 'the slot retains a known amount of WAL');
$node->stop;

# --- livekpi.database does not exist
my $nodb_port = PostgreSQL::Test::Cluster::get_free_port();
my $nodb = livekpi_node(
	'listen_nodb',
	conf => "livekpi.listen_addresses = '127.0.0.1'\n"
	  . "livekpi.port = $nodb_port\n"
	  . "livekpi.database = 'kpis'\n");
$nodb->{livekpi_scheme} = 'http';
$nodb->{livekpi_port} = $nodb_port;
ok(poll_until('/healthz 503', 60, sub { ($st, $body) = http_get($nodb, '/healthz'); ($st // 0) == 503 }),
	'/healthz answers 503 when livekpi.database does not exist');
like($body, qr/"reason":"livekpi.database does not exist"/, '... saying why');
$log = slurp_file($nodb->logfile);
$n = () = $log =~ /livekpi push worker: livekpi.database "kpis" does not exist/g;
is($n, 1, 'the push worker reported the missing database once');
$nodb->safe_psql('postgres', 'CREATE DATABASE kpis');
ok( $nodb->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'livekpi push worker' AND datname = 'kpis'"),
	'once the database exists the push worker connects to it');
$nodb->stop;
done_testing();
