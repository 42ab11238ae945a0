
# Copyright (c) 2026, livekpi authors
#
# test/t/101_push_protocol.pl
#	  Protocol v1 of SPEC section 7 against an independent client
#	  (python3-websockets): hello/welcome, a snapshot equal to SQL, deltas
#	  in seq order equal to SQL, heartbeats carrying the client's position,
#	  token and client scopes, subscribe, resume (exact, beyond retention,
#	  other epoch), barrier resync, deletes, livekpi.clients.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $node = push_node('push_protocol');

# some data before anyone connects
fake_batch($node, 1, "'2026-01-05'", 3, 300);
fake_batch($node, 2, "'2026-01-10'", 1, 99.5);
fake_batch($node, 3, "'2026-02-01'", 2, 250);
my $epoch = $node->safe_psql('postgres', 'SELECT epoch FROM livekpi.state');
my $seq0 = $node->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');

my $all = make_token($node, 'all');
like($all, qr/^lk_[A-Za-z0-9_-]{40,}$/, 'token format');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM livekpi.push_tokens WHERE secret_hash = sha256(convert_to('$all', 'UTF8'))"),
	'1', 'only the SHA-256 of the secret is stored');
unlike($node->safe_psql('postgres', 'SELECT t::text FROM livekpi.push_tokens t'),
	qr/\Q$all\E/, 'the secret itself is nowhere in the table');
my $p1 = make_token($node, 'p1', '{1}');
my $p13 = make_token($node, 'p13', '{1,3}');

############################################################
# hello, welcome, snapshot
my $a = ws_open($node, name => 'a', hello => { type => 'hello', token => $all });
my $w = ws_expect($a, 'welcome');
ok($w, 'welcome received');
is($w->{protocol}, 1, 'protocol 1');
is($w->{epoch}, $epoch, 'welcome carries the epoch');
is($w->{currency}, 'USD', 'welcome carries livekpi.currency');
is($w->{seq}, $seq0, 'welcome seq is the latest batch');
ok(!$w->{resumed}, 'not resumed');
is($w->{scope}{properties}, undef, 'whole-portfolio scope is null');
is_deeply($w->{views}, [ 'property_kpis', 'portfolio_kpis' ], 'default views');
like($w->{server_time}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$/, 'server_time in UTC');

my $s = ws_expect($a, 'snapshot');
is($s->{seq}, $seq0, 'snapshot seq');
is_deeply([ sort keys %{ $s->{rows} } ], [ 'portfolio_kpis', 'property_kpis' ],
	'every requested view in the snapshot');
ok(rows_equal_sql($node, $s->{rows}{property_kpis}, 'SELECT * FROM livekpi.property_kpis'),
	'snapshot property_kpis equals SQL');
ok(rows_equal_sql($node, $s->{rows}{portfolio_kpis}, 'SELECT * FROM livekpi.portfolio_kpis'),
	'snapshot portfolio_kpis equals SQL');
is($node->safe_psql('postgres', "SELECT last_used_at IS NOT NULL FROM livekpi.tokens WHERE label = 'all'"),
	't', 'last_used_at recorded');

my %state;
apply_stream(\%state, $s);

############################################################
# a batch becomes a delta
my $seq1 = fake_batch($node, 1, "'2026-01-06'", 2, 120);
my $d = ws_expect($a, 'delta');
is($d->{seq}, $seq1, 'delta seq');
like($d->{applied_at}, qr/\+00:00$/, 'applied_at in UTC');
like($d->{committed_at}, qr/\+00:00$/, 'committed_at in UTC');
ok(rows_equal_sql($node, $d->{upserts}{property_kpis},
		"SELECT * FROM livekpi.property_kpis WHERE property_id = 1 AND month = '2026-01-01'"),
	'delta row is to_jsonb of the view row');
ok(!exists $d->{upserts}{booking_daily}, 'views not subscribed are left out');
apply_stream(\%state, $d);

my $hb = ws_expect($a, 'heartbeat');
is($hb->{seq}, $seq1, 'heartbeat carries the position');
ok(defined $hb->{lag_ms}, 'heartbeat lag_ms');

# deletes
my $seq2 = fake_batch($node, 3, "'2026-02-01'", 0, 0, 'true');
$d = ws_expect($a, 'delta');
is($d->{seq}, $seq2, 'delete delta seq');
is_deeply($d->{deletes}{property_kpis}, [ { property_id => 3, month => '2026-02-01' } ],
	'delete carries the key object');
apply_stream(\%state, $d);
ok(rows_equal_sql($node, [ values %{ $state{property_kpis} } ], 'SELECT * FROM livekpi.property_kpis'),
	'snapshot + deltas equals SQL (property_kpis)');
ok(rows_equal_sql($node, [ values %{ $state{portfolio_kpis} } ], 'SELECT * FROM livekpi.portfolio_kpis'),
	'snapshot + deltas equals SQL (portfolio_kpis)');

############################################################
# scoped tokens
my $b = ws_open($node, name => 'b', hello => { type => 'hello', token => $p1 });
$w = ws_expect($b, 'welcome');
is_deeply($w->{scope}{properties}, [1], 'scoped token: scope in welcome');
is_deeply($w->{views}, ['property_kpis'], 'scoped token: default views without portfolio');
$s = ws_expect($b, 'snapshot');
ok(rows_equal_sql($node, $s->{rows}{property_kpis},
		'SELECT * FROM livekpi.property_kpis WHERE property_id = 1'),
	'scoped snapshot has only its properties');
my $seq3 = fake_batch($node, 2, "'2026-01-11'", 1, 10);
$d = ws_expect($a, 'delta');
is($d->{seq}, $seq3, 'portfolio client sees property 2');
$hb = ws_expect($b, sub { $_[0]->{type} eq 'heartbeat' && $_[0]->{seq} >= $seq3 }, 'heartbeat past property 2 batch');
ok($hb, 'scoped client advances past a batch outside its scope');
ok(!grep({ ($_->{type} // '') eq 'delta' && $_->{seq} == $seq3 } ws_all($b)),
	'scoped client never sees another property');
my $seq4 = fake_batch($node, 1, "'2026-01-12'", 1, 10);
$d = ws_expect($b, 'delta');
is($d->{seq}, $seq4, 'scoped client gets its own property');
ok(!exists $d->{upserts}{portfolio_kpis}, 'scoped client gets no portfolio rows');

# narrowing and widening
my $c = ws_open($node, name => 'c',
	hello => { type => 'hello', token => $p13, properties => [3] });
$w = ws_expect($c, 'welcome');
is_deeply($w->{scope}{properties}, [3], 'properties narrow the token scope');
# a hello longer than libwebsockets' 4 kB receive buffer (LK_RX_BUFFER) is
# assembled from its pieces: 3,000 properties, about 17 kB
my $long = ws_open($node, name => 'long',
	hello => { type => 'hello', token => $all, properties => [ 100_000 .. 102_999 ] });
$w = ws_expect($long, 'welcome');
is(scalar @{ $w ? $w->{scope}{properties} // [] : [] }, 3000,
	'a 17 kB hello (several receive buffers) is read whole');
ws_close($long);
$c = ws_open($node, name => 'c2',
	hello => { type => 'hello', token => $p1, properties => [ 1, 2 ] });
my $e = ws_expect($c, 'error');
is($e->{code}, 'forbidden_property', 'property outside the token: forbidden_property');
is(ws_expect_closed($c)->{_closed}, 4403, 'closed with 4403');
$c = ws_open($node, name => 'c3',
	hello => { type => 'hello', token => $p1, views => ['portfolio_kpis'] });
is(ws_expect($c, 'error')->{code}, 'forbidden_view', 'scoped token asking for portfolio: forbidden_view');
is(ws_expect_closed($c)->{_closed}, 4403, 'closed with 4403');

# booking_daily and daily_range
$c = ws_open($node, name => 'c4',
	hello => { type => 'hello', token => $all, views => ['booking_daily'] });
is(ws_expect($c, 'error')->{code}, 'bad_message', 'booking_daily without daily_range: bad_message');
is(ws_expect_closed($c)->{_closed}, 1007, 'closed with 1007');
$c = ws_open($node, name => 'c5',
	hello => { type => 'hello', token => $all, views => [ 'booking_daily', 'expense_monthly' ],
		daily_range => { from => '2026-01-06', to => '2026-01-10' } });
$s = ws_expect($c, 'snapshot');
ok(rows_equal_sql($node, $s->{rows}{booking_daily},
		q{SELECT * FROM livekpi.booking_daily WHERE day BETWEEN '2026-01-06' AND '2026-01-10'}),
	'booking_daily snapshot limited to the range');
is_deeply($s->{rows}{expense_monthly}, [], 'empty view present as []');
my $seq5 = fake_batch($node, 1, "'2026-03-01'", 1, 10);
fake_batch($node, 1, "'2026-01-07'", 1, 10);
$d = ws_expect($c, 'delta');
ok($d->{seq} > $seq5, 'a day outside the range is not sent');
is($d->{upserts}{booking_daily}[0]{day}, '2026-01-07', 'a day inside the range is');

# subscribe replaces the scope, with a new snapshot
ws_send($c, { type => 'subscribe', views => ['property_kpis'], properties => [2] });
$s = ws_expect($c, 'snapshot');
ok(rows_equal_sql($node, $s->{rows}{property_kpis},
		'SELECT * FROM livekpi.property_kpis WHERE property_id = 2'),
	'subscribe answered with a snapshot of the new scope');
is_deeply([ keys %{ $s->{rows} } ], ['property_kpis'], 'only the new views');
ws_close($c);

############################################################
# livekpi.clients
ok( poll_until(
		'livekpi.clients', 10,
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) FROM livekpi.clients WHERE label = 'all' AND peer = '127.0.0.1' AND last_seq >= $seq4"
			) >= 1;
		}),
	'livekpi.clients shows the connection, label and position');

############################################################
# resume
my $last = 0;
$_->{type} && $_->{type} =~ /^(delta|heartbeat|snapshot)$/ && $_->{seq} > $last and $last = $_->{seq}
  for ws_all($a);
ws_close($a);
my @missed = map { fake_batch($node, 1 + $_ % 3, "'2026-01-2$_'", 1, 5) } 1 .. 3;
$a = ws_open($node, name => 'a2',
	hello => { type => 'hello', token => $all, resume_from => $last + 0, epoch => $epoch });
$w = ws_expect($a, 'welcome');
ok($w->{resumed}, 'resume within retention: resumed');
my @got;
for (1 .. (@missed + ($missed[0] - $last - 1)))
{
	my $m = ws_expect($a, 'delta') or last;
	push @got, $m->{seq};
	last if $m->{seq} >= $missed[-1];
}
is_deeply([ grep { $_ > $last } @got ], [ ($last + 1) .. $missed[-1] ],
	'every batch after resume_from replayed once, in order');
my @extra = ws_quiet($a, 1.5);
ok(!grep({ ($_->{type} // '') =~ /^(delta|snapshot)$/ } @extra), 'nothing repeated, no snapshot');
ws_close($a);

# resume beyond retention
$node->safe_psql('postgres', "DELETE FROM livekpi.delta_log WHERE seq <= $missed[1]");
$a = ws_open($node, name => 'a3',
	hello => { type => 'hello', token => $all, resume_from => $last + 0 });
$w = ws_expect($a, 'welcome');
ok(!$w->{resumed}, 'resume beyond retention: not resumed');
ok(ws_expect($a, 'snapshot'), 'a snapshot instead');
ws_close($a);

# other epoch
$a = ws_open($node, name => 'a4',
	hello => { type => 'hello', token => $all, resume_from => $missed[-1] + 0, epoch => 'other' });
ok(!ws_expect($a, 'welcome')->{resumed}, 'other epoch: not resumed');
ok(ws_expect($a, 'snapshot'), 'other epoch: snapshot');
ws_close($a);

# resume_from in the future
$a = ws_open($node, name => 'a5',
	hello => { type => 'hello', token => $all, resume_from => $missed[-1] + 1000 });
ok(!ws_expect($a, 'welcome')->{resumed}, 'resume_from beyond the latest: not resumed');
ws_close($a);

# resume from the latest: nothing to replay
$a = ws_open($node, name => 'a6',
	hello => { type => 'hello', token => $all, resume_from => $missed[-1] + 0, epoch => $epoch });
ok(ws_expect($a, 'welcome')->{resumed}, 'resume from the latest: resumed');
my $seq6 = fake_batch($node, 2, "'2026-01-15'", 1, 1);
is(ws_expect($a, 'delta')->{seq}, $seq6, 'then live');

############################################################
# a barrier: resync then snapshot
my $bseq = fake_batch($node, 0, "'2026-01-01'", 0, 0, 'false', 'true');
my $r = ws_expect($a, 'resync');
is($r->{seq}, $bseq, 'barrier: resync with its seq');
$s = ws_expect($a, 'snapshot');
ok($s && $s->{seq} >= $bseq, 'barrier: followed by a snapshot');

############################################################
# a new epoch (a renumbering rebuild, a recreated extension): resync
my $cur = ws_open($node, name => 'epoch', hello => { type => 'hello', token => $all });
ok(ws_expect($cur, 'snapshot'), 'connected before the epoch changes');
$node->safe_psql('postgres',
	"BEGIN; UPDATE livekpi.state SET epoch = 'epoch-two'; SELECT livekpi._tokens_changed(); COMMIT;");
$r = ws_expect($cur, 'resync');
ok($r, 'new epoch: connected client gets resync');
ok(ws_expect($cur, 'snapshot'), 'and a snapshot');
my $n = ws_open($node, name => 'epoch2', hello => { type => 'hello', token => $all });
is(ws_expect($n, 'welcome')->{epoch}, 'epoch-two', 'welcome carries the new epoch');
ws_close($a);

$node->stop;
done_testing();
