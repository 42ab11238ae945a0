
# Copyright (c) 2026, livekpi authors
#
# test/t/014_apply_memory.pl
#	  A change set of any size stays bounded in the apply worker's memory:
#	  one source transaction of 300,000 changes is coalesced while it is
#	  decoded, so the worker's private anonymous memory (RssAnon) grows by
#	  less than LIVEKPI_APPLY_MEMORY_BOUND_MB (docs/internals.md, "The apply
#	  path") with livekpi.decoding_work_mem at 4 MB; copying every change
#	  first, as the worker used to, takes about 30 MB for them.  Then the
#	  two paths a batch decoded ahead of its apply must get right: a
#	  rebuild() in the middle of a transaction of the batch (its earlier
#	  changes are counted by the rebuild, its later ones are not), and a
#	  rebuild that ran after the batch was decoded.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

# The bound this test holds the worker to, in MB of RssAnon growth over
# the idle worker: livekpi.decoding_work_mem below, plus the batch's
# coalesced keys, plus a fixed working set.
my $BOUND_MB = 16;
my $CHANGES  = 300_000;

my $node = livekpi_node('apply_memory',
	conf => "livekpi.decoding_work_mem = 4096\n"
	  . "livekpi.max_batch_changes = 100000\n");
setup_tables($node, prefill => 100);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

my $pid = apply_worker_pid($node);
ok($pid, 'apply worker running');

sub rss_anon_kb
{
	open my $fh, '<', "/proc/$pid/status" or return undef;
	while (<$fh>)
	{
		return $1 if /^RssAnon:\s+(\d+) kB/;
	}
	return undef;
}

# Warm the worker up with a batch of the same shape, so that the baseline
# includes its caches and plans.
$node->safe_psql('postgres', q{
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
SELECT 1 + i % 5, DATE '2026-03-01' + i % 10, (i % 97) + 0.25,
	   (ARRAY['cleaning','repairs',NULL])[1 + i % 3],
	   (ARRAY['approved','rejected',NULL,'pending'])[1 + i % 4]
FROM generate_series(1, 5000) AS i});
sync_ok($node, 60, 'warm-up batch applied');
my $base = rss_anon_kb();
ok(defined $base, "baseline RssAnon $base kB");

# One transaction of $CHANGES changes touching 150 expense keys.
my $lsn_before = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
$node->safe_psql('postgres', qq{
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
SELECT 1 + i % 5, DATE '2026-03-01' + i % 10, (i % 97) + 0.25,
	   (ARRAY['cleaning','repairs',NULL])[1 + i % 3],
	   (ARRAY['approved','rejected',NULL,'pending'])[1 + i % 4]
FROM generate_series(1, $CHANGES) AS i});

# Sample the worker's RssAnon until the transaction is applied.
my $peak = $base;
my $applied = poll_until(
	'the large transaction to be applied',
	300,
	sub {
		my $kb = rss_anon_kb();
		$peak = $kb if defined $kb && $kb > $peak;
		my $done = try_query($node,
			"SELECT livekpi.sync('10ms')");
		return defined $done && $done eq 't';
	});
ok($applied, "a transaction of $CHANGES changes is applied");
my $kb = rss_anon_kb();
$peak = $kb if defined $kb && $kb > $peak;
my $growth_mb = ($peak - $base) / 1024;
note(sprintf('apply worker RssAnon: baseline %d kB, peak %d kB, growth %.1f MB',
		$base, $peak, $growth_mb));
cmp_ok($growth_mb, '<', $BOUND_MB,
	"the apply worker's memory grows by less than $BOUND_MB MB for $CHANGES changes");
is( try_query($node, q{SELECT count(*) FROM livekpi.delta_log d
	WHERE d.lsn >= '} . $lsn_before . q{'::pg_lsn}),
	'1', 'the transaction is one batch');
check_verify($node, 'after the large transaction');

# One transaction touching many distinct KPI rows: 40,000 three-night stays
# over 2,000 properties, 120,000 distinct daily rows.  Each costs the batch
# at most ROW_BYTES (700) bytes (its coalesced entry, its sorted array entry and
# its delta row's JSON, docs/internals.md); building a row's JSON must leave
# nothing else behind (a built jsonb sat in a buffer of at least 1 kB with
# the texts of its values: 1.3 kB more a row, 156 MB more here).
my $DAILY_ROWS = 120_000;
my $ROW_BYTES = 700;
my $ROW_BOUND_MB = 4 + $DAILY_ROWS * $ROW_BYTES / 1024 / 1024 + 16;
# make test-sanitize's build also builds each delta part the general way
# and compares (LIVEKPI_CHECK_VIEWS_OBJECT, src/apply_delta.c): one part of
# DELTA_PART_ROWS rows unpacked at a time, 40 MB more at most.
$ROW_BOUND_MB += 40 if slurp_file($node->logfile) =~ /views_object same/;
$base = rss_anon_kb();
$peak = $base;
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1000 + i % 2000, DATE '2027-01-01' + (i / 2000) * 3, DATE '2027-01-01' + (i / 2000) * 3 + 3,
	   300, 'confirmed'
FROM generate_series(0, 39999) AS i});
$applied = poll_until(
	'the transaction of many rows to be applied',
	300,
	sub {
		my $kb = rss_anon_kb();
		$peak = $kb if defined $kb && $kb > $peak;
		my $done = try_query($node, "SELECT livekpi.sync('10ms')");
		return defined $done && $done eq 't';
	});
ok($applied, 'a transaction of 40,000 stays is applied');
$kb = rss_anon_kb();
$peak = $kb if defined $kb && $kb > $peak;
$growth_mb = ($peak - $base) / 1024;
note(sprintf('apply worker RssAnon for %d daily rows: baseline %d kB, peak %d kB, growth %.1f MB',
		$DAILY_ROWS, $base, $peak, $growth_mb));
cmp_ok($growth_mb, '<', $ROW_BOUND_MB,
	sprintf('the apply worker holds %d daily rows in less than %.0f MB', $DAILY_ROWS, $ROW_BOUND_MB));
is(try_query($node, q{SELECT count(*) FROM livekpi.booking_daily WHERE property_id >= 1000}),
	$DAILY_ROWS, 'every daily row is written');
check_verify($node, 'after the transaction of many rows');

# A rebuild() inside a transaction of a batch, after changes of its own
# and between other transactions of the same batch.
pause_ok($node, 'pause so that one batch holds several transactions');
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 7, DATE '2026-04-01' + i % 20, DATE '2026-04-03' + i % 20, 100 + i, 'confirmed'
FROM generate_series(1, 50) AS i});
$node->safe_psql('postgres', q{
BEGIN;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 2 + i % 5, DATE '2026-05-01' + i % 9, DATE '2026-05-02' + i % 9, 70 + i, 'confirmed'
FROM generate_series(1, 40) AS i;
UPDATE public.expenses SET amount = amount + 1 WHERE id % 1000 = 3;
SELECT livekpi.rebuild();
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 3 + i % 4, DATE '2026-06-01' + i % 7, DATE '2026-06-04' + i % 7, 90 + i, NULL
FROM generate_series(1, 30) AS i;
DELETE FROM public.expenses WHERE id % 1000 = 7;
COMMIT});
$node->safe_psql('postgres', q{
UPDATE public.bookings SET status = 'cancelled' WHERE id % 13 = 0});
call_ok($node, 'livekpi.resume()', 'resume');
sync_ok($node, 60, 'the batch with a rebuild inside is applied');
like(slurp_file($node->logfile),
	qr/decodes the batch again from the slot: a rebuild marker follows changes of its own transaction/,
	'the changes before the marker were dropped by decoding the batch again');
check_verify($node, 'after a rebuild inside a transaction of a batch');
check_independent($node, 'after a rebuild inside a transaction of a batch');

# A rebuild that commits while the worker is paused, after changes it
# counts: the worker decodes them with the rebuild_lsn it read before
# and must drop them under the state row lock.
pause_ok($node, 'pause again');
$node->safe_psql('postgres', q{
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
SELECT 1 + i % 3, DATE '2026-07-01' + i % 4, 12.5, 'laundry', 'approved'
FROM generate_series(1, 200) AS i});
call_ok($node, 'livekpi.rebuild()', 'rebuild while paused');
$node->safe_psql('postgres', q{
DELETE FROM public.bookings WHERE id % 17 = 0});
call_ok($node, 'livekpi.resume()', 'resume');
sync_ok($node, 60, 'the changes around the rebuild are applied');
like(slurp_file($node->logfile),
	qr/decodes the batch again from the slot: a rebuild ran after the batch was decoded/,
	'the changes the rebuild counted were dropped by decoding the batch again');
check_verify($node, 'after a rebuild between decode and apply');
check_independent($node, 'after a rebuild between decode and apply');
check_delta_log_contiguous($node, 'at the end');

done_testing();
