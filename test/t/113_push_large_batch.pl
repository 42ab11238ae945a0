
# Copyright (c) 2026, livekpi authors
#
# test/t/113_push_large_batch.pl
#	  No size barriers: one source transaction whose batch touches more
#	  daily KPI rows than a delta_log part holds (DELTA_PART_ROWS, 20,000)
#	  is written as a delta in parts (delta_log_parts), never as a barrier,
#	  and reaches each client as a delta of the views in its scope:
#	  * a client of property_kpis and portfolio_kpis gets a delta, no resync;
#	  * a client of one property's booking_daily gets that property's rows;
#	  * a client of every booking_daily row, whose delta is larger than its
#	    client_buffer_limit, gets a resync (its own limit, nobody else's);
#	  * with a limit large enough, the same client gets the whole delta.
#	  After each, snapshot + deltas equals SQL.  Resume across the large
#	  batch replays it from the parts.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $node = push_node('push_large', no_extension => 1,
	conf => "livekpi.client_buffer_limit = 1024\n");
setup_tables($node, prefill => 20);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

my $all = make_token($node, 'all');
my @range = (daily_range => { from => '2020-01-01', to => '2029-12-31' });
my %hellos = (
	monthly => { type => 'hello', token => $all, views => [ 'property_kpis', 'portfolio_kpis' ] },
	one_daily => {
		type => 'hello', token => $all, views => ['booking_daily'], properties => [7], @range },
	all_daily => { type => 'hello', token => $all, views => ['booking_daily'], @range });

my (%client, %state, %seq);
for my $name (sort keys %hellos)
{
	$client{$name} = ws_open($node, name => $name, hello => $hellos{$name});
	my $snap = ws_expect($client{$name}, 'snapshot');
	ok($snap, "$name: snapshot");
	$state{$name} = {};
	apply_stream($state{$name}, $snap);
	$seq{$name} = $snap->{seq};
}

# One transaction: 3,000 stays of 10 nights over 40 properties, about
# 30,000 booking_daily rows, so the batch's delta has two parts or more.
sub large_transaction
{
	my ($offset) = @_;
	$node->safe_psql('postgres', qq{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 40, DATE '2024-01-01' + $offset + (i / 40) * 10,
	   DATE '2024-01-01' + $offset + (i / 40) * 10 + 10, 1000.00 + i % 7, 'confirmed'
FROM generate_series(0, 2999) AS i});
	sync_ok($node, 120, 'the large transaction is applied');
	return $node->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
}

sub follow
{
	my ($name, $last, $what) = @_;
	my @got;
	my $done = ws_expect(
		$client{$name},
		sub {
			my $m = shift;
			my $t = $m->{type} // '';
			push @got, $m;
			apply_stream($state{$name}, $m) if $t eq 'delta' || $t eq 'snapshot';
			($t eq 'delta' || $t eq 'heartbeat' || $t eq 'snapshot') && $m->{seq} >= $last;
		},
		"$name at seq $last", 60);
	ok($done, "$name: reaches seq $last ($what)");
	return @got;
}

sub state_equals_sql
{
	my ($name, $what) = @_;
	my %sql = (
		property_kpis => 'SELECT * FROM livekpi.property_kpis',
		portfolio_kpis => 'SELECT * FROM livekpi.portfolio_kpis',
		booking_daily => $name eq 'one_daily'
		? 'SELECT * FROM livekpi.booking_daily WHERE property_id = 7'
		: 'SELECT * FROM livekpi.booking_daily');
	for my $view (sort keys %{ $state{$name} })
	{
		ok(rows_equal_sql($node, [ values %{ $state{$name}{$view} } ], $sql{$view}),
			"$name: snapshot + deltas equals SQL ($view, $what)");
	}
}

my $before = $node->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
my $seq = large_transaction(0);
is($seq, $before + 1, 'the transaction is one batch');
is($node->safe_psql('postgres', "SELECT barrier FROM livekpi.delta_log WHERE seq = $seq"),
	'f', 'the large batch is not a barrier');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM livekpi.delta_log_parts WHERE seq = $seq"),
	'>=', 1, 'its delta is stored in parts');
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FROM (
	SELECT upserts FROM livekpi.delta_log WHERE seq = $seq
	UNION ALL SELECT upserts FROM livekpi.delta_log_parts WHERE seq = $seq) p,
	jsonb_array_elements(p.upserts -> 'booking_daily')}),
	$node->safe_psql('postgres',
		"SELECT count(*) FROM livekpi.booking_daily WHERE updated_at = (SELECT applied_at FROM livekpi.delta_log WHERE seq = $seq)"),
	'the parts hold every booking_daily row the batch wrote, once');

my @m = follow('monthly', $seq, 'the large batch');
ok((grep { ($_->{type} // '') eq 'delta' && $_->{seq} == $seq } @m), 'monthly: a delta of the large batch');
ok(!(grep { ($_->{type} // '') eq 'resync' } @m), 'monthly: no resync');
state_equals_sql('monthly', 'after the large batch');

@m = follow('one_daily', $seq, 'the large batch');
my ($d) = grep { ($_->{type} // '') eq 'delta' && $_->{seq} == $seq } @m;
ok($d, 'one_daily: a delta of the large batch');
ok(!(grep { ($_->{type} // '') eq 'resync' } @m), 'one_daily: no resync');
ok($d && !(grep { $_->{property_id} != 7 } @{ $d->{upserts}{booking_daily} // [] }),
	"one_daily: only its property's rows");
state_equals_sql('one_daily', 'after the large batch');

@m = follow('all_daily', $seq, 'the large batch');
ok((grep { ($_->{type} // '') eq 'resync' } @m),
	'all_daily: a delta past its client_buffer_limit means a resync');
state_equals_sql('all_daily', 'after the resync');

# a limit large enough for the whole delta
$node->safe_psql('postgres', 'ALTER SYSTEM SET livekpi.client_buffer_limit = 65536');
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok( poll_until(
		'the push worker sees the new limit', 30,
		sub { try_query($node, 'SHOW livekpi.client_buffer_limit') =~ /^64MB$|^65536kB$/ }),
	'client_buffer_limit raised');
# the worker reloads on its own SIGHUP at the top of a round: two
# heartbeats after the reload mean a round began after the signal
for my $n (1, 2)
{
	ok(ws_expect($client{all_daily}, 'heartbeat', "heartbeat $n after the reload", 30),
		"all_daily: heartbeat $n after the reload");
}
my $seq2 = large_transaction(400);
@m = follow('all_daily', $seq2, 'the second large batch');
($d) = grep { ($_->{type} // '') eq 'delta' && $_->{seq} == $seq2 } @m;
ok($d, 'all_daily: with room for it, the large batch arrives as one delta');
ok(!(grep { ($_->{type} // '') eq 'resync' } @m), 'all_daily: no resync');
cmp_ok(scalar @{ $d ? $d->{upserts}{booking_daily} // [] : [] }, '>', 20_000,
	'all_daily: the delta carries every daily row of the batch');
state_equals_sql('all_daily', 'after the second large batch');

# resume from before the large batches replays them from the parts
my $resumer = ws_open($node, name => 'resumer', hello => { %{ $hellos{all_daily} },
	resume_from => $seq - 1,
	epoch => $node->safe_psql('postgres', 'SELECT epoch FROM livekpi.state') });
my $w = ws_expect($resumer, 'welcome');
ok($w && $w->{resumed}, 'resume across the large batches is accepted');
my @r;
ok( ws_expect(
		$resumer,
		sub { push @r, $_[0]; ($_[0]->{type} // '') =~ /^(delta|heartbeat)$/ && $_[0]->{seq} >= $seq2 },
		'the resumer at the last batch', 60),
	'resumer reaches the last batch');
my @rseq = map { $_->{seq} } grep { ($_->{type} // '') eq 'delta' } @r;
is_deeply(\@rseq, [ sort { $a <=> $b } keys %{ { map { $_ => 1 } @rseq } } ],
	'resumer: deltas in seq order, none twice');
ok((grep { ($_->{type} // '') eq 'delta' && $_->{seq} == $seq } @r)
	  && (grep { ($_->{type} // '') eq 'delta' && $_->{seq} == $seq2 } @r),
	'resumer: both large batches replayed as deltas');

check_verify($node, 'at the end');
ws_close($_) for ($resumer, values %client);
done_testing();
