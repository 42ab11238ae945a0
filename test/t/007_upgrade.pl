#-------------------------------------------------------------------------
#
# 007_upgrade.pl
#	  Version 1.0 (its install script as released, sql/livekpi--1.0.sql)
#	  with tracked data and a user's grants, under the 1.1 library: the
#	  apply worker waits for ALTER EXTENSION while capture goes on; the
#	  update keeps the grants, ends exact (verify() and the independent
#	  recompute), keeps streaming, and leaves the same catalog as a fresh
#	  1.1 install.
#
#-------------------------------------------------------------------------
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/..";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $node = livekpi_node('upgrade');

$node->safe_psql('postgres', q{
CREATE ROLE dash LOGIN;
CREATE EXTENSION livekpi VERSION '1.0';});
is($node->safe_psql('postgres',
		q{SELECT extversion FROM pg_extension WHERE extname = 'livekpi'}),
	'1.0', 'version 1.0 installs from its released script');

setup_tables($node, prefill => 400);
$node->safe_psql('postgres', q{
SELECT livekpi.track_bookings('public.bookings');
SELECT livekpi.track_expenses('public.expenses');
SELECT livekpi.track_bookings('public.stays', property_column => 'prop',
	check_in_column => 'arrive', check_out_column => 'depart',
	amount_column => 'price', status_column => 'state');
GRANT USAGE ON SCHEMA livekpi TO dash;
GRANT SELECT ON livekpi.status, livekpi.property_kpis, livekpi.portfolio_kpis TO dash;
GRANT EXECUTE ON FUNCTION livekpi.sync(interval), livekpi.kpis(date, date, bigint[]) TO dash;});

ok( poll_until(
		'the apply worker to wait for the update',
		60,
		sub {
			my $s = try_query($node, 'SELECT apply_state FROM livekpi.status');
			return defined $s && $s eq 'needs ALTER EXTENSION livekpi UPDATE';
		}),
	'under the new library the apply worker waits for ALTER EXTENSION UPDATE');

# Capture goes on while the worker waits; nothing is lost.
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 7, DATE '2026-02-01' + i % 40, DATE '2026-02-01' + i % 40 + i % 4, i * 3.5, NULL
FROM generate_series(1, 300) i;
UPDATE public.expenses SET amount = amount + 1 WHERE id % 3 = 0;
DELETE FROM public.bookings WHERE id % 11 = 0;});

$node->safe_psql('postgres', 'ALTER EXTENSION livekpi UPDATE');
is($node->safe_psql('postgres',
		q{SELECT extversion FROM pg_extension WHERE extname = 'livekpi'}),
	'1.1', 'ALTER EXTENSION livekpi UPDATE reaches 1.1');

sync_ok($node, 60, 'the apply worker streams again after the update');
check_independent($node, 'after the update');
check_verify($node, 'after the update');

$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 5, DATE '2026-03-01' + i % 20, DATE '2026-03-01' + i % 20 + 2, 99.99, 'confirmed'
FROM generate_series(1, 200) i;
INSERT INTO public.stays (prop, arrive, depart, price, state)
VALUES (3, '2026-03-04 22:00+00', '2026-03-07 10:00+00', 420, 'ok');});
sync_ok($node, 60, 'changes made after the update are applied');
check_independent($node, 'streaming after the update');
check_verify($node, 'streaming after the update');

is( $node->safe_psql('postgres', q{
SELECT has_table_privilege('dash', 'livekpi.status', 'SELECT')
   AND has_table_privilege('dash', 'livekpi.property_kpis', 'SELECT')
   AND has_function_privilege('dash', 'livekpi.sync(interval)', 'EXECUTE')
   AND has_function_privilege('dash', 'livekpi.kpis(date, date, bigint[])', 'EXECUTE')}),
	't', "a user's grants survive the update");
is($node->safe_psql('postgres', q{
SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a
WHERE p.pronamespace = 'livekpi'::regnamespace AND a.grantee = 0}),
	'0', 'nothing in the schema is executable by PUBLIC after the update');

# The catalog the update leaves equals a fresh install's.
# (livekpi lives in one database of a cluster: the fresh install gets its own)
my $fresh = livekpi_node('fresh');
$fresh->safe_psql('postgres', 'CREATE EXTENSION livekpi');

my $catalog = q{
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'livekpi'),
members AS (
	SELECT d.classid, d.objid, d.objsubid
	FROM pg_depend d, ext
	WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e')
SELECT string_agg(line, E'\x1e' ORDER BY line) FROM (
	SELECT pg_describe_object(classid, objid, objsubid) ||
		   CASE WHEN classid = 'pg_proc'::regclass
				THEN E'\n' || pg_get_functiondef(objid)
				WHEN classid = 'pg_class'::regclass
				THEN E'\n' || (SELECT c.relkind::text || ' ' || coalesce(pg_get_viewdef(c.oid), '') ||
							  coalesce(array_to_string(c.reloptions, ','), '')
							  FROM pg_class c WHERE c.oid = objid)
				ELSE '' END AS line
	FROM members
	UNION ALL
	SELECT format('column %s.%s %s %s %s', a.attrelid::regclass, a.attname,
				  format_type(a.atttypid, a.atttypmod), a.attnotnull,
				  pg_get_expr(ad.adbin, ad.adrelid))
	FROM members m
	JOIN pg_attribute a ON m.classid = 'pg_class'::regclass AND a.attrelid = m.objid
	LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	WHERE a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT format('column order %s: %s', c.oid::regclass,
				  string_agg(a.attname, ',' ORDER BY a.attnum))
	FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
	WHERE c.relnamespace = 'livekpi'::regnamespace AND c.relkind IN ('r', 'v')
	  AND a.attnum > 0 AND NOT a.attisdropped
	GROUP BY c.oid
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	WHERE c.relnamespace = 'livekpi'::regnamespace
	UNION ALL
	SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
	FROM pg_constraint WHERE connamespace = 'livekpi'::regnamespace
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid)
	FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	WHERE c.relnamespace = 'livekpi'::regnamespace AND NOT t.tgisinternal
	UNION ALL
	SELECT 'event trigger ' || evtname || ' ' || evtevent || ' ' || evtfoid::regproc
	FROM pg_event_trigger
	UNION ALL
	SELECT 'config table ' || c::regclass
	FROM pg_extension, unnest(extconfig) c WHERE extname = 'livekpi'
	UNION ALL
	SELECT 'public can execute ' || p.oid::regprocedure
	FROM pg_proc p WHERE p.pronamespace = 'livekpi'::regnamespace
	  AND has_function_privilege('public', p.oid, 'EXECUTE')
) x};

my @upgraded = split /\x1e/, $node->safe_psql('postgres', $catalog);
my @fresh = split /\x1e/, $fresh->safe_psql('postgres', $catalog);
my %in_fresh = map { $_ => 1 } @fresh;
my %in_upgraded = map { $_ => 1 } @upgraded;
my @only_upgraded = grep { !$in_fresh{$_} } @upgraded;
my @only_fresh = grep { !$in_upgraded{$_} } @fresh;
ok(@fresh > 100, 'the catalog description covers the extension (' . scalar(@fresh) . ' entries)');
is(scalar(@only_upgraded) + scalar(@only_fresh), 0,
	'the updated catalog equals a fresh 1.1 install')
  or diag("only after the update:\n" . join("\n---\n", @only_upgraded)
	  . "\n\nonly in a fresh install:\n" . join("\n---\n", @only_fresh));

$node->stop;
$fresh->stop;
done_testing();
