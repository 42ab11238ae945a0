
# Copyright (c) 2026, livekpi authors
#
# test/t/104_push_tail.pl
#	  livekpi-tail (SPEC section 8), installed with the extension: one JSON
#	  message per line, --views/--properties/--resume-from, exit codes, and
#	  --follow across a server restart with clients connected (a python
#	  client resumes too): nothing missed, nothing repeated.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;
use TestLib::LiveKpiPush;

my $node = push_node('push_tail');
fake_batch($node, 1, "'2026-01-05'", 3, 300);
fake_batch($node, 2, "'2026-01-06'", 1, 50);
my $all = make_token($node, 'all');
my $p2 = make_token($node, 'p2', '{2}');
my $url = push_url($node);

sub tail
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'livekpi-tail', '--url', $url, @args ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(30));
	return ($? >> 8, [ map { json_decode($_) } grep { length } split /\n/, $out ], $err);
}

my ($rc, $msgs, $err) = tail('--token', $all, '--count', 2);
is($rc, 0, 'exit 0 after --count messages');
is($msgs->[0]{type}, 'welcome', 'first line: welcome');
is($msgs->[1]{type}, 'snapshot', 'second line: snapshot');
ok(rows_equal_sql($node, $msgs->[1]{rows}{property_kpis}, 'SELECT * FROM livekpi.property_kpis'),
	'snapshot through livekpi-tail equals SQL');

($rc, $msgs) = tail('--token', $p2, '--views', 'property_kpis', '--properties', '2', '--count', 2);
is_deeply($msgs->[0]{scope}{properties}, [2], '--properties');
is_deeply($msgs->[0]{views}, ['property_kpis'], '--views');

($rc, $msgs) = tail('--token', $all, '--views', 'booking_daily', '--from', '2026-01-06',
	'--to', '2026-01-06', '--count', 2);
ok(rows_equal_sql($node, $msgs->[1]{rows}{booking_daily},
		q{SELECT * FROM livekpi.booking_daily WHERE day = '2026-01-06'}), '--from/--to');

my $seq = $node->safe_psql('postgres', 'SELECT last_seq FROM livekpi.state');
my $s2 = fake_batch($node, 1, "'2026-01-07'", 1, 10);
($rc, $msgs) = tail('--token', $all, '--resume-from', $seq, '--count', 2);
ok($msgs->[0]{resumed}, '--resume-from resumes');
is($msgs->[1]{seq}, $s2, 'and replays the next batch');

($rc, $msgs, $err) = tail('--token', 'lk_wrong', '--count', 5);
is($rc, 3, 'bad token: exit 3');
is($msgs->[0]{code}, 'bad_token', 'the error is printed');
like($err, qr/4401/, 'close code on stderr');
($rc, $msgs) = tail('--token', $p2, '--views', 'portfolio_kpis');
is($rc, 4, 'forbidden: exit 4');
($rc) = tail('--token', $all, '--url');
is($rc, 1, 'usage error: exit 1');
my ($rc2, $m2, $e2) = (IPC::Run::run([ 'livekpi-tail', '--url', 'ws://127.0.0.1:1/v1/stream', '--token', $all ],
	'>', \my $o, '2>', \my $e, IPC::Run::timeout(30)), undef, undef);
is($? >> 8, 2, 'connection refused: exit 2');

############################################################
# --follow across a restart, with a python client resuming as well
my ($fout, $ferr) = ('', '');
my $follow = IPC::Run::start(
	[ 'livekpi-tail', '--url', $url, '--token', $all, '--follow' ],
	'>', \$fout, '2>', \$ferr);
my $py = ws_open($node, name => 'py', hello => { type => 'hello', token => $all });
ok(ws_expect($py, 'snapshot'), 'python client connected');
my $before = fake_batch($node, 1, "'2026-01-08'", 1, 10);
ok(poll_until('tail got the batch', 20, sub { $follow->pump_nb; $fout =~ /"seq":$before\b/ }),
	'livekpi-tail --follow receives deltas');
my $pyd = ws_expect($py, 'delta');
is($pyd->{seq}, $before, 'python client receives it too');

$node->restart;
my $cl = ws_expect_closed($py, 30);
ok($cl, 'python client sees the server go away');
my $during = fake_batch($node, 2, "'2026-01-09'", 1, 10);	# while nobody is connected
my $epoch = $node->safe_psql('postgres', 'SELECT epoch FROM livekpi.state');
my $py2;
ok( poll_until(
		'listener back', 30,
		sub {
			$py2 = ws_open($node, name => 'py2',
				hello => { type => 'hello', token => $all, resume_from => $before + 0, epoch => $epoch });
			!$py2->{connect_error};
		}),
	'python client reconnects');
my $w = ws_expect($py2, 'welcome');
ok($w && $w->{resumed}, 'python client resumes after the restart');
is(ws_expect($py2, 'delta')->{seq}, $during, 'and gets the batch committed while it was away');
my $after = fake_batch($node, 1, "'2026-01-10'", 1, 10);
is(ws_expect($py2, 'delta')->{seq}, $after, 'then live again');

ok(poll_until('tail resumed', 40, sub { $follow->pump_nb; $fout =~ /"seq":$after\b/ }),
	'livekpi-tail --follow reconnected and resumed');
$follow->kill_kill;
my @lines = map { json_decode($_) } grep { length } split /\n/, $fout;
my @dseq = map { $_->{seq} } grep { $_->{type} eq 'delta' } @lines;
my %n;
$n{$_}++ for @dseq;
ok(!grep({ $_ > 1 } values %n), 'livekpi-tail: no delta twice');
ok($n{$during}, 'livekpi-tail: the batch committed during the restart was not missed');
is(scalar(grep { $_->{type} eq 'welcome' } @lines), 2, 'two welcomes: connect and reconnect');
ok((grep { $_->{type} eq 'welcome' } @lines)[1]{resumed}, 'the reconnect resumed');

$node->stop;
done_testing();
