
# Copyright (c) 2026, livekpi authors
#
# test/t/015_apply_ranges.pl
#	  The apply worker finds the booking_daily and booking_monthly rows of a
#	  batch by one range scan per run of nearby dates of a property, walking
#	  the index entries between them (apply_kpi.c, walk_find).  This test
#	  gives that walk every case in a few batches: rows found between
#	  entries it skips, rows missing between rows found (inserted), rows
#	  deleted in the middle of a run, runs longer than a stay, dates of one
#	  property too far apart to share a scan, and index entries of dead row
#	  versions (a snapshot held open keeps every old version, so repeated
#	  updates stop being HOT).  After each batch the KPI tables must equal
#	  the independent recompute and verify() must be empty.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $node = livekpi_node('apply_ranges');
setup_tables($node, prefill => 0);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

sub check_all
{
	my ($label) = @_;
	sync_ok($node, 60, "$label: sync");
	check_verify($node, $label);
	check_independent($node, $label);
	return;
}

# Keeps every row version from being pruned until the end of the test.
my $holder = $node->background_psql('postgres');
$holder->query_safe(
	'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM livekpi.booking_daily;');

# Property 1: one-night stays every other day; property 2: one long stay;
# property 3: nights far apart.
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1, DATE '2026-01-01' + 2 * i, DATE '2026-01-01' + 2 * i + 1, 100 + i, 'confirmed'
FROM generate_series(0, 59) AS i;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (2, DATE '2026-01-01', DATE '2026-05-01', 12000, 'confirmed');
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 3, DATE '2026-01-01' + 40 * i, DATE '2026-01-01' + 40 * i + 2, 50, 'confirmed'
FROM generate_series(0, 5) AS i});
check_all('first rows');

# One batch: fill property 1's gaps (rows missing between rows found), a
# stay over part of them, deletions of property 1's later nights (rows
# deleted in the middle of the walk), every other night of property 3
# (runs of one date, far apart), and every night of property 2 updated.
pause_ok($node, 'pause for one batch');
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1, DATE '2026-01-01' + 2 * i + 1, DATE '2026-01-01' + 2 * i + 2, 70, 'confirmed'
FROM generate_series(0, 49) AS i;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (1, DATE '2026-01-31', DATE '2026-04-01', 3000, 'confirmed');
DELETE FROM public.bookings
WHERE property_id = 1 AND check_in >= DATE '2026-01-01' + 100 AND (check_in - DATE '2026-01-01') % 3 = 0;
UPDATE public.bookings SET status = 'cancelled'
WHERE property_id = 1 AND check_in >= DATE '2026-01-01' + 100 AND (check_in - DATE '2026-01-01') % 3 = 1;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 3, DATE '2026-01-01' + 40 * i + 20, DATE '2026-01-01' + 40 * i + 21, 20, 'confirmed'
FROM generate_series(0, 5) AS i;
UPDATE public.bookings SET total_amount = total_amount + 1 WHERE property_id = 2});
call_ok($node, 'livekpi.resume()', 'resume');
check_all('one batch of gaps, stays and deletions');

# Repeated updates of the same rows while old versions cannot be pruned:
# their index entries stay, and the walk must take the live version.
for my $round (1 .. 6)
{
	$node->safe_psql('postgres', q{
UPDATE public.bookings SET total_amount = total_amount + 3
WHERE property_id IN (1, 2, 3)});
	sync_ok($node, 60, "update round $round: sync");
}
ok( poll_until(
		'updates of booking_daily that were not HOT',
		60,
		sub {
			# a batch more: the worker reports its statistics after a
			# batch, at most once a second
			$node->safe_psql('postgres', q{
UPDATE public.bookings SET total_amount = total_amount + 1 WHERE property_id = 3;
SELECT livekpi.sync('30s')});
			my $n = try_query($node, q{
SELECT n_tup_upd - n_tup_hot_upd FROM pg_stat_all_tables
WHERE relid = 'livekpi.booking_daily'::regclass});
			return defined $n && $n =~ /^\d+$/ && $n > 0;
		}),
	'some booking_daily updates left index entries of dead versions');
check_all('repeated updates with old versions kept');

# Everything deleted: every row of the walk goes.
$node->safe_psql('postgres', 'DELETE FROM public.bookings');
check_all('all deleted');
is( $node->safe_psql('postgres',
		'SELECT (SELECT count(*) FROM livekpi.booking_daily) + (SELECT count(*) FROM livekpi.booking_monthly)'),
	'0',
	'no booking rows left');

$holder->quit;
check_delta_log_contiguous($node, 'end');
$node->stop;
done_testing();
