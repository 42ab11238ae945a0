
# Copyright (c) 2026, livekpi authors
#
# test/t/005_partitions_ddl.pl
#	  A tracked partitioned table whose partitions have other attribute
#	  numbers than the parent (column order, a dropped column), rows moving
#	  between partitions, writes addressed to a partition directly, a
#	  partition created after tracking, TRUNCATE of a partition and of the
#	  parent, DETACH and ATTACH PARTITION (each either refused or exact),
#	  renaming a mapped column, and dropping one (refused).  After each step:
#	  sync() true, verify() empty, KPI tables equal to the recompute.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $node = livekpi_node('partitions');

$node->safe_psql(
	'postgres', q{
CREATE TABLE public.pb (id bigserial, property_id int, check_in date,
	check_out date, total_amount numeric(12,2), status text)
	PARTITION BY RANGE (check_in);
CREATE TABLE public.pb_q1 PARTITION OF public.pb
	FOR VALUES FROM ('2026-01-01') TO ('2026-04-01');
-- other attribute numbers than the parent: a dropped column, reversed order
CREATE TABLE public.pb_q2 (junk int, status text, total_amount numeric(12,2),
	check_out date, check_in date, property_id int, id bigint NOT NULL);
ALTER TABLE public.pb_q2 DROP COLUMN junk;
ALTER TABLE public.pb ATTACH PARTITION public.pb_q2
	FOR VALUES FROM ('2026-04-01') TO ('2026-07-01');
CREATE TABLE public.pb_rest PARTITION OF public.pb DEFAULT;
INSERT INTO public.pb (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 4, DATE '2026-01-01' + i % 180, DATE '2026-01-01' + i % 180 + i % 5 - 1,
	   i * 1.01, (ARRAY['confirmed','cancelled',NULL])[1 + i % 3]
FROM generate_series(1, 400) AS i;
INSERT INTO public.pb (property_id, check_in, check_out, total_amount, status)
VALUES (1, NULL, '2026-02-01', 10, NULL), (2, '2027-03-01', '2027-03-04', 33.33, NULL);
CREATE TABLE public.expenses (id bigserial, property_id int, incurred_on date,
	amount numeric, category text, approval_status text);
CREATE EXTENSION livekpi;
});

my $amount_col = 'total_amount';
sub set_sources
{
	@TestLib::LiveKpi::BOOKING_SOURCES = (
		qq{SELECT property_id::bigint AS p, check_in AS ci, check_out AS co,
			   $amount_col\::numeric AS amt, status::text AS st FROM public.pb});
	@TestLib::LiveKpi::EXPENSE_SOURCES = (
		q{SELECT property_id::bigint AS p, incurred_on AS d,
			   amount::numeric AS amt, category::text AS cat,
			   approval_status::text AS st FROM public.expenses});
	return;
}
set_sources();

sub exact
{
	my ($label) = @_;
	sync_ok($node, 30, "$label: sync");
	check_verify($node, $label);
	check_independent($node, $label);
	return;
}

$node->safe_psql('postgres', q{SELECT livekpi.track_bookings('public.pb')});
$node->safe_psql('postgres', q{SELECT livekpi.track_expenses('public.expenses')});
exact('backfill of a partitioned table');

my ($rc, $out, $err) =
  $node->psql('postgres', q{SELECT livekpi.track_bookings('public.pb_q1')});
isnt($rc, 0, 'tracking a partition of a tracked table is refused');
like($err, qr/ERROR/, '... with an error') or diag($err);

$node->safe_psql(
	'postgres', q{
-- rows moving between partitions (and into the default one)
UPDATE public.pb SET check_in = check_in + 75, check_out = check_out + 75 WHERE id % 5 = 0;
UPDATE public.pb SET check_in = NULL WHERE id % 17 = 0;
-- writes addressed to partitions directly
UPDATE public.pb_q2 SET total_amount = total_amount + 1.11, status = 'canceled' WHERE id % 3 = 1;
DELETE FROM public.pb_q1 WHERE id % 7 = 0;
INSERT INTO public.pb_q2 (id, property_id, check_in, check_out, total_amount, status)
VALUES (100000, 9, '2026-05-05', '2026-05-08', 100, NULL);
BEGIN;
INSERT INTO public.pb (property_id, check_in, check_out, total_amount) VALUES (3, '2026-06-30', '2026-07-02', 20);
SAVEPOINT a;
UPDATE public.pb SET check_in = '2026-01-15' WHERE property_id = 3;
ROLLBACK TO SAVEPOINT a;
UPDATE public.pb SET check_in = '2026-03-31' WHERE id % 11 = 0 AND check_in >= '2026-04-01';
COMMIT;
});
exact('rows moved between partitions');

$node->safe_psql(
	'postgres', q{
CREATE TABLE public.pb_q3 PARTITION OF public.pb
	FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
INSERT INTO public.pb (property_id, check_in, check_out, total_amount, status)
SELECT 5, DATE '2026-11-01' + i, DATE '2026-11-03' + i, 77, NULL FROM generate_series(0, 20) AS i;
UPDATE public.pb_q3 SET total_amount = 78 WHERE check_in < '2026-11-05';
});
exact('a partition created after tracking');
cmp_ok(
	try_query($node,
		"SELECT count(*) FROM livekpi.booking_daily WHERE property_id = 5"),
	'>', 0,
	'rows of the new partition are counted');

$node->safe_psql('postgres', 'TRUNCATE public.pb_q1');
exact('TRUNCATE of a partition');

($rc, $out, $err) = $node->psql('postgres',
	'ALTER TABLE public.pb DETACH PARTITION public.pb_q2');
note($rc == 0 ? 'DETACH PARTITION allowed' : "DETACH PARTITION refused: $err");
exact('DETACH PARTITION (refused or handled)');
if ($rc == 0)
{
	$node->safe_psql('postgres',
		q{UPDATE public.pb_q2 SET total_amount = total_amount + 1});
	exact('writes to a detached partition');
}

$node->safe_psql(
	'postgres', q{
CREATE TABLE public.pb_q4 (LIKE public.pb);
INSERT INTO public.pb_q4 (id, property_id, check_in, check_out, total_amount, status)
SELECT 200000 + i, 6, DATE '2026-12-01' + i, DATE '2026-12-02' + i, 10, NULL
FROM generate_series(0, 9) AS i;
});
($rc, $out, $err) = $node->psql('postgres',
	q{ALTER TABLE public.pb ATTACH PARTITION public.pb_q4 FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')}
);
note($rc == 0 ? 'ATTACH PARTITION allowed' : "ATTACH PARTITION refused: $err");
exact('ATTACH PARTITION with rows (refused or handled)');
if ($rc == 0)
{
	$node->safe_psql('postgres',
		q{UPDATE public.pb SET total_amount = 11 WHERE property_id = 6});
	exact('writes to an attached partition');
}

$node->safe_psql('postgres',
	'ALTER TABLE public.pb RENAME COLUMN total_amount TO amount_total');
$amount_col = 'amount_total';
set_sources();
$node->safe_psql(
	'postgres', q{
UPDATE public.pb SET amount_total = amount_total * 2 WHERE id % 4 = 0;
INSERT INTO public.pb (property_id, check_in, check_out, amount_total) VALUES (7, '2026-02-02', '2026-02-05', 99);
});
exact('a mapped column renamed');

($rc, $out, $err) = $node->psql('postgres',
	'ALTER TABLE public.pb DROP COLUMN check_out');
isnt($rc, 0, 'dropping a mapped column is refused');
$node->safe_psql('postgres',
	q{UPDATE public.pb SET check_out = check_out + 1 WHERE id % 6 = 0});
exact('after the refused DROP COLUMN');

$node->safe_psql('postgres', 'TRUNCATE public.pb');
exact('TRUNCATE of the partitioned table');
is(try_query($node, 'SELECT count(*) FROM livekpi.booking_daily'),
	'0', 'no booking rows left after TRUNCATE');

$node->stop;
done_testing();
