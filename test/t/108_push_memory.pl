
# Copyright (c) 2026, livekpi authors
#
# test/t/108_push_memory.pl
#	  The push worker's memory is bounded (issue 10, item 2), measured as
#	  its private anonymous memory (RssAnon in /proc/<pid>/status, which
#	  leaves out shared buffers):
#	  * 1,000 idle clients held for 60 s: no growth (the landed code grew
#	    about 14 kB/s from per-round allocations in TopMemoryContext);
#	  * large batches while one client stops reading: the growth stays
#	    under clients x client_buffer_limit plus a fixed working set.

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

my $node = push_node('push_memory', conf => "livekpi.client_buffer_limit = 256\n");
fake_batch($node, 1, "'2026-01-05'", 3, 300);
my $all = make_token($node, 'all');
my $pid = push_worker_pid($node);
ok($pid, 'push worker running');

sub rss_anon_kb
{
	open my $fh, '<', "/proc/$pid/status" or die "status of $pid: $!";
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+) kB/;
	}
	die 'no RssAnon';
}

# --- 1,000 idle clients for 60 s
my ($in, $out, $err) = ('', '', '');
my $crowd = IPC::Run::start(
	[ '/usr/bin/python3', "$FindBin::RealBin/../ws_crowd.py", '127.0.0.1',
		$node->{livekpi_port}, 1000, $all ],
	'<', \$in, '>', \$out, '2>', \$err);
my $deadline = time() + 120;
$crowd->pump_nb while $out !~ /\n/ && time() < $deadline && usleep(50_000) >= 0;
my $ready = eval { json_decode((split /\n/, $out)[0]) } // {};
is($ready->{snapshots}, 1000, '1,000 clients connected and got their snapshot');
$node->poll_query_until('postgres',
	"SELECT clients >= 1000 FROM livekpi.status") or die 'clients';

# let the first rounds' one-time allocations (caches, plans) settle: the
# first minute of the landed code already grew by 0.8 MB, so a settling
# period of a few seconds cannot hide a leak
my $t_end = time() + 5;
$crowd->pump_nb, usleep(100_000) while time() < $t_end;
my $before = rss_anon_kb();
my $max = $before;
$t_end = time() + 60;
while (time() < $t_end)
{
	$crowd->pump_nb;
	my $now = rss_anon_kb();
	$max = $now if $now > $max;
	usleep(500_000);
}
my $after = rss_anon_kb();
note("RssAnon with 1,000 idle clients: $before kB, after 60 s $after kB, max $max kB");
cmp_ok($after - $before, '<=', 128,
	'1,000 idle clients for 60 s: the worker\'s memory does not grow (RssAnon within 128 kB)');

$crowd->finish;
$node->poll_query_until('postgres', "SELECT clients = 0 FROM livekpi.status") or die 'left';

# --- large batches while one client stops reading
my $hello = { type => 'hello', token => $all,
	views => [ 'property_kpis', 'expense_monthly', 'booking_daily' ],
	daily_range => { from => '2020-01-01', to => '2030-12-31' } };
my $reader = ws_open($node, name => 'reader', hello => $hello);
ok(ws_expect($reader, 'snapshot'), 'reader connected');
my $slow = ws_open($node, name => 'slow', hello => $hello, args => [ '--rcvbuf', 4096 ]);
ok(ws_expect($slow, 'snapshot'), 'slow client connected');
ws_send($slow, '!stop');
my $base = rss_anon_kb();

# 40 batches of 4,000 booking_daily rows each (about 0.6 MB of JSON per
# batch, 24 MB in all); RssAnon is sampled while the worker reads them
$node->safe_psql('postgres', q{
CREATE FUNCTION big_batch(n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE s bigint;
BEGIN
	SELECT last_seq + 1 INTO s FROM livekpi.state FOR UPDATE;
	INSERT INTO livekpi.delta_log VALUES (s, now(), now(), pg_current_wal_lsn(), false,
		jsonb_build_object('booking_daily', (SELECT jsonb_agg(jsonb_build_object(
			'property_id', 1 + g % 50, 'day', '2026-01-01'::date + g / 50,
			'nights_sold', g, 'room_revenue', g * 100.5, 'arrivals', 1,
			'departures', 0, 'updated_at', now()))
			FROM generate_series(1, n) g)), '{}');
	UPDATE livekpi.state SET last_seq = s;
	PERFORM livekpi._tokens_changed();
	RETURN s;
END $$});
# all 40 in one transaction, so that the worker finds them at once: the
# landed code read up to 256 batches in one piece
my $last = $node->safe_psql('postgres', 'SELECT max(big_batch(4000)) FROM generate_series(1, 40)');
my $peak = $base;
# a batch is larger than client_buffer_limit, so the reader is resynced
# and catches up with a snapshot; either way its position reaches $last.
# RssAnon is sampled every 20 ms meanwhile.
my $reached = 0;
$deadline = time() + 120;
while (!$reached && time() < $deadline)
{
	my $now = rss_anon_kb();
	$peak = $now if $now > $peak;
	$reached = grep {
		($_->{type} // '') =~ /^(delta|snapshot|heartbeat)$/ && ($_->{seq} // -1) >= $last
	} ws_all($reader);
	usleep(20_000);
}
ok($reached, 'the reading client reached the last batch');
# bound: 2 clients x 256 kB, plus the fixed working set: LK_FETCH_ROWS
# rows read at once, one message per scope of at most 256 kB while a batch
# is read, and malloc's slack: 32 MB.  The landed code read up to 256 batches at once
# and went to about 150 MB.
note("RssAnon: $base kB before the load, peak $peak kB");
cmp_ok($peak - $base, '<=', 32 * 1024,
	'a write load with large batches and a stalled reader keeps memory bounded');
ws_close($slow);
ws_close($reader);
is(push_worker_pid($node), $pid, 'the worker is the same process');
$node->stop;
done_testing();
