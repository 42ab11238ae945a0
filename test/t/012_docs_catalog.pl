#-------------------------------------------------------------------------
#
# 012_docs_catalog.pl
#	  The reference documentation matches the running system (issue 11
#	  item 10): every livekpi.* setting with its default, unit and context
#	  in the table of docs/operations.md; every user-facing function, table
#	  and view with a section of docs/sql.md (and no section for one that
#	  does not exist); the columns of livekpi.status, in order, in its table
#	  in docs/sql.md.  Fails as soon as the docs and the catalog drift.
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

my $root = "$FindBin::RealBin/../..";

sub slurp_doc
{
	my ($name) = @_;
	open my $fh, '<', "$root/docs/$name" or die "cannot read docs/$name: $!";
	local $/;
	my $text = <$fh>;
	close $fh;
	return $text;
}

my $ops = slurp_doc('operations.md');
my $sql = slurp_doc('sql.md');

my $node = livekpi_node('docs');
$node->safe_psql('postgres', 'CREATE EXTENSION livekpi');

# --- settings: docs/operations.md, "| `livekpi.x` | `default` (unit) | context | ... |"
my %doc_guc;
for my $line (split /\n/, $ops)
{
	next unless $line =~ /^\|\s*`(livekpi\.[a-z_]+)`\s*\|\s*([^|]*?)\s*\|\s*(\w+)\s*\|/;
	my ($name, $default, $context) = ($1, $2, $3);
	my $unit = $default =~ /\(([a-zA-Z]+)[,)]/ ? $1 : '';
	my $value = $default eq 'empty' ? '' : ($default =~ /`([^`]*)`/ ? $1 : $default);
	$doc_guc{$name} = "$value|$unit|$context";
}
my %cat_guc = map { my ($n, $v) = split /\t/, $_, 2; ($n => $v) } split /\n/,
  $node->safe_psql(
	'postgres', q{
SELECT name, boot_val || '|' || coalesce(unit, '') || '|' || context
FROM pg_settings WHERE name LIKE 'livekpi.%' ORDER BY name},
	extra_params => [ '-F', "\t" ]);
ok(scalar(keys %cat_guc) > 10, 'the server has livekpi settings');
for my $name (sort keys %cat_guc)
{
	is($doc_guc{$name} // 'not documented',
		$cat_guc{$name},
		"docs/operations.md: $name (default|unit|context)");
}
for my $name (sort keys %doc_guc)
{
	ok(exists $cat_guc{$name}, "docs/operations.md documents $name, which exists");
}

# --- functions, tables and views: a "### livekpi.x" section of docs/sql.md each
my %documented;
for my $line (split /\n/, $sql)
{
	next unless $line =~ /^###\s+(livekpi\..*)$/;
	my $heading = $1;
	$documented{$1} = 1 while $heading =~ /livekpi\.([a-z_]+)/g;
}
my @objects = split /\n/, $node->safe_psql(
	'postgres', q{
SELECT DISTINCT proname FROM pg_proc
WHERE pronamespace = 'livekpi'::regnamespace AND proname !~ '^_' AND proname <> 'capture'
UNION
SELECT relname FROM pg_class
WHERE relnamespace = 'livekpi'::regnamespace AND relkind IN ('r', 'v', 'p')
ORDER BY 1});
for my $obj (@objects)
{
	ok($documented{$obj}, "docs/sql.md has a section for livekpi.$obj");
}
my %exists = map { $_ => 1 } @objects;
for my $obj (sort keys %documented)
{
	ok($exists{$obj}, "docs/sql.md documents livekpi.$obj, which exists");
}

# --- livekpi.status: the column table of its section, in order
my ($status_section) = $sql =~ /^### livekpi\.status \(view\)\n(.*?)^###/ms;
my @doc_cols = $status_section =~ /^\|\s*`([a-z_]+)`\s*\|/mg;
my $cat_cols = $node->safe_psql(
	'postgres', q{
SELECT string_agg(attname, ' ' ORDER BY attnum) FROM pg_attribute
WHERE attrelid = 'livekpi.status'::regclass AND attnum > 0});
is(join(' ', @doc_cols), $cat_cols, 'docs/sql.md lists the columns of livekpi.status in order');

# the apply worker's states named there are the ones src/apply_worker.c sets
my ($states) = $status_section =~ /^\|\s*`apply_state`\s*\|[^|]*\|\s*(.*?)\s*\|$/m;
my %doc_states = map { $_ => 1 } $states =~ /`([^`]+)`/g;
open my $fh, '<', "$root/src/apply_worker.c" or die $!;
local $/;
my $src = <$fh>;
close $fh;
my %src_states = map { $_ => 1 } $src =~ /livekpi_set_apply_state\("([^"]+)"\)/g;
for my $state (sort keys %src_states)
{
	ok($doc_states{$state}, "docs/sql.md names the apply state \"$state\"");
}

$node->stop;
done_testing();
