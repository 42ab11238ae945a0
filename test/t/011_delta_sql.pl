
# Copyright (c) 2026, livekpi authors
#
# test/t/011_delta_sql.pl
#	  The delta_log rows the apply worker builds in C (apply_delta.c), as
#	  livekpi.delta_rows() renders them (delta_render.c computes the columns
#	  delta_log leaves out), against SQL, over random batches: every upsert
#	  is exactly to_jsonb of the view row in SQL at that batch (same keys, same numeric text, same rounding),
#	  every deleted key has no view row, and every view row the batch
#	  touched (updated_at = the batch's applied_at) is among the upserts.
#	  Batches mix inserts, updates and deletes of bookings and expenses, and
#	  changes of livekpi.properties.units (which resend every month of the
#	  property and of the portfolio).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
diag("011_delta_sql: seed $seed (rerun with LIVEKPI_TEST_SEED=$seed)");
srand($seed);

my $node = livekpi_node('deltasql');
setup_tables($node, prefill => 100);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

my %keycols = (
	property_kpis   => [qw(property_id month)],
	portfolio_kpis  => [qw(month)],
	expense_monthly => [qw(property_id month category)],
	booking_daily   => [qw(property_id day)]);

my %units_changed;

sub round_sql
{
	my $sql = "BEGIN;\n";
	for (1 .. 1 + int(rand(12)))
	{
		my $r = rand();
		my $p = 1 + int(rand(9));
		my $d = int(rand(75));
		my $n = int(rand(6));
		my $amt = sprintf('%.2f', rand(3000) / (1 + int(rand(3))));
		if ($r < 0.35)
		{
			my $st = (qw(confirmed cancelled pending), 'NULL')[ int(rand(4)) ];
			$st = "'$st'" unless $st eq 'NULL';
			$sql .= "INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status) "
			  . "VALUES ($p, DATE '2026-01-20' + $d, DATE '2026-01-20' + $d + $n, $amt, $st);\n";
		}
		elsif ($r < 0.5)
		{
			$sql .= "UPDATE public.bookings SET total_amount = $amt, check_out = check_out + 1 "
			  . "WHERE id = (SELECT id FROM public.bookings ORDER BY random() LIMIT 1);\n";
		}
		elsif ($r < 0.62)
		{
			$sql .= "DELETE FROM public.bookings WHERE id = (SELECT id FROM public.bookings ORDER BY random() LIMIT 1);\n";
		}
		elsif ($r < 0.78)
		{
			my $cat = (qw('cleaning' 'repairs' NULL 'x'))[ int(rand(4)) ];
			my $st = (qw('approved' 'rejected' NULL 'pending'))[ int(rand(4)) ];
			$sql .= "INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status) "
			  . "VALUES ($p, DATE '2026-01-20' + $d, $amt, $cat, $st);\n";
		}
		elsif ($r < 0.88)
		{
			$sql .= "DELETE FROM public.expenses WHERE id = (SELECT id FROM public.expenses ORDER BY random() LIMIT 1);\n";
		}
		elsif ($r < 0.95)
		{
			$sql .= "INSERT INTO public.stays (prop, arrive, depart, price, state) "
			  . "VALUES ($p, TIMESTAMPTZ '2026-02-01 10:00+00' + $d * interval '13 hours', "
			  . "TIMESTAMPTZ '2026-02-01 10:00+00' + $d * interval '13 hours' + $n * interval '1 day', $amt, 'ok');\n";
		}
		else
		{
			$sql .= "UPDATE livekpi.properties SET units = 1 + " . int(rand(4)) . " WHERE property_id = $p;\n";
			$units_changed{$p} = 1;
		}
	}
	return $sql . "COMMIT;\n";
}

# A batch of delta_log as clients get it: rows rendered by
# livekpi.delta_rows() (delta_log stores property_kpis and portfolio_kpis rows
# without their computed columns), gathered back into {view: [row, ...]}.
sub delta_cte
{
	my ($seq) = @_;
	my $agg = sub {
		my ($op) = @_;
		return "coalesce((SELECT jsonb_object_agg(r.view, r.rows) FROM (SELECT view, jsonb_agg(data) AS rows "
		  . "FROM livekpi.delta_rows(l.seq) WHERE op = '$op' GROUP BY view) r), '{}')";
	};
	return "d AS (SELECT l.seq, l.applied_at, " . $agg->('upsert') . " AS upserts, "
	  . $agg->('delete') . " AS deletes FROM livekpi.delta_log l WHERE l.seq = $seq)";
}

my ($bad_upserts, $bad_deletes, $missing, $batches) = (0, 0, 0, 0);
my ($units_rounds, $units_missing) = (0, 0);
for my $round (1 .. 40)
{
	my $before = try_query($node, 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log');
	%units_changed = ();
	pause_ok($node, "round $round: pause") if $round % 4 == 0;
	$node->safe_psql('postgres', round_sql()) for 1 .. 1 + int(rand(3));
	if ($round % 4 == 0)
	{
		my $p = $node->safe_psql('postgres', 'UPDATE livekpi.properties SET units = units % 5 + 1 '
			  . 'WHERE property_id = (SELECT property_id FROM livekpi.properties ORDER BY random() LIMIT 1) '
			  . 'RETURNING property_id');
		$units_changed{$p} = 1;
	}
	call_ok($node, 'livekpi.resume()', "round $round: resume") if $round % 4 == 0;
	sync_ok($node, 30, "round $round: sync");
	my $seq = try_query($node, 'SELECT coalesce(max(seq), 0) FROM livekpi.delta_log WHERE NOT barrier');
	next if $seq <= $before;
	$batches++;
	# A pause puts the round in one batch: a units change resends every
	# month of the property and of the portfolio.
	if ($round % 4 == 0 && %units_changed)
	{
		my $props = join(',', sort keys %units_changed);
		$units_rounds++;
		my $m = try_query(
			$node, qq{
WITH ${\ delta_cte($seq)}
SELECT (SELECT count(*) FROM d, livekpi.property_kpis v
		WHERE v.property_id IN ($props)
		  AND NOT coalesce(d.upserts -> 'property_kpis', '[]') \@> jsonb_build_array(to_jsonb(v)))
	 + (SELECT count(*) FROM d, livekpi.portfolio_kpis v
		WHERE NOT coalesce(d.upserts -> 'portfolio_kpis', '[]') \@> jsonb_build_array(to_jsonb(v)))});
		if (($m // '-1') ne '0')
		{
			$units_missing++;
			diag("round $round, seq $seq: $m rows of properties $props or of the portfolio missing after a units change");
		}
	}
	# Only the newest batch can be compared with SQL now.
	for my $view (sort keys %keycols)
	{
		my $match = join(' AND ',
			map { "v.$_ = (k.value ->> '$_')::" . ($_ eq 'category' ? 'text' : $_ eq 'property_id' ? 'bigint' : 'date') }
			  @{ $keycols{$view} });
		my $r = try_query(
			$node, qq{
WITH ${\ delta_cte($seq)}
SELECT (SELECT count(*) FROM d, jsonb_array_elements(coalesce(d.upserts -> '$view', '[]')) u
		WHERE NOT EXISTS (SELECT FROM livekpi.$view v WHERE to_jsonb(v) = u.value)),
	   (SELECT count(*) FROM d, jsonb_array_elements(coalesce(d.deletes -> '$view', '[]')) k
		WHERE EXISTS (SELECT FROM livekpi.$view v WHERE $match)),
	   (SELECT count(*) FROM d, livekpi.$view v
		WHERE v.updated_at = d.applied_at
		  AND NOT coalesce(d.upserts -> '$view', '[]') \@> jsonb_build_array(to_jsonb(v)))});
		my ($u, $del, $m) = split /\|/, ($r // '-1|-1|-1');
		if ($u ne '0' || $del ne '0' || $m ne '0')
		{
			diag("round $round, seq $seq, $view: $u upserts differ from SQL, $del deleted keys exist, $m touched rows missing");
			diag(try_query($node, "SELECT view, op, data FROM livekpi.delta_rows($seq)"));
		}
		$bad_upserts++ if $u ne '0';
		$bad_deletes++ if $del ne '0';
		$missing++ if $m ne '0';
	}
}
cmp_ok($batches, '>=', 20, "compared $batches batches");
is($bad_upserts, 0, 'every upsert equals to_jsonb of the SQL view row');
is($bad_deletes, 0, 'every deleted key is gone from the view');
is($missing, 0, 'every touched view row is in the upserts');
cmp_ok($units_rounds, '>=', 1, "batches with a units change: $units_rounds");
is($units_missing, 0, 'a units change resends every month of the property and the portfolio');
# The stored rows are the compact ones: no computed column is stored.
my ($stored, $with_computed) = split /\|/, try_query(
	$node, q{
SELECT count(*), count(*) FILTER (WHERE r.value ?| ARRAY['occupancy', 'adr', 'revpar', 'cancellation_rate', 'noi'])
FROM (SELECT upserts AS j FROM livekpi.delta_log UNION ALL SELECT upserts FROM livekpi.delta_log_parts) x,
	 jsonb_each(x.j) v, jsonb_array_elements(v.value) r
WHERE v.key IN ('property_kpis', 'portfolio_kpis')});
cmp_ok($stored, '>', 0, "stored property_kpis and portfolio_kpis rows: $stored");
is($with_computed, 0, 'delta_log stores no computed column');
check_verify($node, 'after the rounds');

$node->stop;
done_testing();
