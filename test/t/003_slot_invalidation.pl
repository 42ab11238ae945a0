
# Copyright (c) 2026, livekpi authors
#
# test/t/003_slot_invalidation.pl
#	  A slot invalidated by max_slot_wal_keep_size leads to an automatic
#	  rebuild: with the apply worker paused, bookings change, then WAL and
#	  checkpoints are generated until the server invalidates the livekpi
#	  slot.  After resume() the worker must replace the slot, rebuild
#	  (barrier batch in delta_log) and stream again: sync() true, verify()
#	  empty, KPI tables equal to the independent recompute.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

# 1 MB WAL segments so that a few MB of WAL exceed the slot's allowance.
my $node = livekpi_node(
	'slot_lost',
	init => { extra => ['--wal-segsize=1'] },
	conf => "max_slot_wal_keep_size = '1MB'\nmin_wal_size = '4MB'\n"
	  . "max_wal_size = '64MB'\nlog_min_messages = log\n"
	  . "log_checkpoints = off\n");
setup_tables($node, prefill => 200);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');
check_verify($node, 'before invalidation');

my $seq_before = try_query($node,
	'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log');

pause_ok($node, 'pause()');

# Changes that wait in the slot and are lost with it.
$node->safe_psql(
	'postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 20 + i % 3, DATE '2026-03-01' + i % 20, DATE '2026-03-01' + i % 20 + 1 + i % 4,
	   100 + i, CASE WHEN i % 5 = 0 THEN 'cancelled' END
FROM generate_series(1, 300) AS i;
UPDATE public.bookings SET total_amount = total_amount * 2 WHERE id % 7 = 0;
DELETE FROM public.bookings WHERE id % 11 = 0;
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
SELECT 20, DATE '2026-03-01' + i % 10, i, 'repairs', 'approved' FROM generate_series(1, 50) AS i;
UPDATE public.stays SET state = 'canceled' WHERE stay_id % 3 = 0;
});
is(try_query($node, 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log'),
	$seq_before, 'nothing applied while paused');

my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE TABLE public.filler (x int, pad text)');
my $invalidated = poll_until(
	'the server to invalidate slot livekpi',
	120,
	sub {
		$node->safe_psql(
			'postgres', q{
INSERT INTO public.filler SELECT i, repeat('x', 200) FROM generate_series(1, 3000) AS i;
SELECT pg_switch_wal();
INSERT INTO public.filler SELECT i, repeat('x', 200) FROM generate_series(1, 3000) AS i;
SELECT pg_switch_wal();
CHECKPOINT;});
		my $st = try_query($node,
			"SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'livekpi'"
		);
		return (defined $st && $st eq 'lost')
		  || $node->log_contains(qr/invalidating slot "livekpi"/,
			$log_offset);
	});
ok($invalidated, 'slot livekpi invalidated by max_slot_wal_keep_size');

call_ok($node, 'livekpi.resume()', 'resume()');

ok( poll_until(
		'a usable livekpi slot again',
		120,
		sub {
			my $st = try_query($node,
				"SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'livekpi'"
			);
			return defined $st && $st ne '' && $st ne 'lost';
		}),
	'the apply worker replaced the invalidated slot');
ok( poll_until(
		'sync() to succeed after the invalidation',
		120,
		sub {
			my $r = try_query($node, "SELECT livekpi.sync('2s')");
			return defined $r && $r eq 't';
		}),
	'sync() true after the slot was replaced');

check_verify($node, 'after invalidation');
check_independent($node, 'after invalidation');
cmp_ok(
	try_query(
		$node,
		"SELECT count(*) FROM livekpi.delta_log WHERE barrier AND seq > $seq_before"
	),
	'>=', 1,
	'a barrier batch announces the rebuild');

# The stream works on the new slot.
$node->safe_psql(
	'postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 30, DATE '2026-04-01' + i, DATE '2026-04-03' + i, 99.99, NULL FROM generate_series(1, 20) AS i;
DELETE FROM public.bookings WHERE id % 13 = 0 AND property_id <> 30;
});
sync_ok($node, 30, 'sync after writing on the new slot');
check_verify($node, 'streaming on the new slot');
check_independent($node, 'streaming on the new slot');
check_delta_log_contiguous($node, 'after invalidation');
is( try_query(
		$node,
		"SELECT count(*) FROM livekpi.booking_daily WHERE property_id = 30"),
	'21',
	'bookings written after the replacement are applied');

reliability('a replication slot invalidated by max_slot_wal_keep_size (WAL lost under it)', '1',
	'a new slot, a rebuild under a new epoch, the KPIs exact again');
$node->stop;
done_testing();
