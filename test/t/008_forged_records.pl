
# Copyright (c) 2026, livekpi authors
#
# test/t/008_forged_records.pl
#	  Only the capture trigger can feed the KPIs (SPEC section 2, issue 8):
#	  a role with no grants writes messages with livekpi's prefix (1.0's
#	  record format built by hand, a genuine record's bytes replayed in its
#	  own transaction, a truncated one, an oversized one, a
#	  non-transactional one), some inside subtransactions, while genuine
#	  changes are made inside savepoints too.  Then: sync() is true,
#	  verify() empty, records_rejected counts each forgery once, the log
#	  names each once with its LSN, also after the apply worker restarts,
#	  and a genuine change afterwards is applied.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $node = livekpi_node('forged');
setup_tables($node, prefill => 40);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

my $rejected_sql = 'SELECT records_rejected FROM livekpi.status';
my $rejected0 = try_query($node, $rejected_sql);

# A genuine record's bytes, as the capture trigger wrote them to WAL.
$node->safe_psql('postgres', q{
SELECT pg_create_logical_replication_slot('raw', 'test_decoding');
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount)
VALUES (900, '2026-05-01', '2026-05-04', 300);
});
my $genuine = $node->safe_psql('postgres', q{
SELECT encode(substring(data FROM position('content:'::bytea IN data) + 8), 'hex')
FROM pg_logical_slot_get_binary_changes('raw', NULL, NULL)
WHERE position('prefix: livekpi'::bytea IN data) > 0;
SELECT pg_drop_replication_slot('raw');
});
ok($genuine =~ /^[0-9a-f]{40,80}$/, 'captured a genuine record')
  or diag("genuine: $genuine");

# 1.0's format: 'B' 'i' relid:4 images flags key(zigzag 901) day1:4 day2:4
# amount (numeric body of 450.00).
my $relid = $node->safe_psql('postgres', q{SELECT 'public.bookings'::regclass::oid});
my $le32 = sub { unpack('H*', pack('V', $_[0])) };
my $day = sub {
	$node->safe_psql('postgres', "SELECT DATE '$_[0]' - DATE '2000-01-01'");
};
my $v10 = '4269' . $le32->($relid) . '0200' . '8a0e'
  . $le32->($day->('2026-05-01')) . $le32->($day->('2026-05-04')) . '040081c201';

$node->safe_psql('postgres', q{
CREATE ROLE forger LOGIN;
GRANT INSERT ON public.bookings TO forger;
GRANT USAGE ON SEQUENCE public.bookings_id_seq TO forger;
});
my @forgeries = (
	"SELECT pg_logical_emit_message(true, 'livekpi', '\\x$v10'::bytea)",
	"SELECT pg_logical_emit_message(true, 'livekpi', '\\x$genuine'::bytea)",
	"SELECT pg_logical_emit_message(true, 'livekpi', 'x')",
	"SELECT pg_logical_emit_message(true, 'livekpi', repeat('x', 2000000))",
	"SELECT pg_logical_emit_message(false, 'livekpi', '\\x$genuine'::bytea)",
	# forged inside a subtransaction, beside a genuine change in another
	"BEGIN; SAVEPOINT a; INSERT INTO public.bookings (property_id, check_in, check_out, total_amount)
	   VALUES (901, '2026-05-01', '2026-05-02', 10); RELEASE a; SAVEPOINT b;
	 SELECT pg_logical_emit_message(true, 'livekpi', '\\x$genuine'::bytea); RELEASE b; COMMIT",
);
for my $sql (@forgeries)
{
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE forger; $sql",
		on_error_stop => 1);
	is($rc, 0, 'forger may call pg_logical_emit_message') or diag($err);
}
my $n_forged = scalar @forgeries;

# Genuine changes in savepoints of the owner's transactions are accepted.
$node->safe_psql('postgres', q{
BEGIN;
SAVEPOINT s1;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount)
VALUES (902, '2026-05-01', '2026-05-03', 200);
SAVEPOINT s2;
UPDATE public.bookings SET total_amount = 250 WHERE property_id = 902;
RELEASE s2;
RELEASE s1;
COMMIT;
});

sync_ok($node, 60, 'sync is true after the forgeries');
is(try_query($node, $rejected_sql) - $rejected0, $n_forged,
	'records_rejected counts each forgery');
check_verify($node, 'after forgeries');
is( try_query(
		$node,
		q{SELECT string_agg(property_id || ':' || nights_sold, ',' ORDER BY property_id)
		  FROM (SELECT property_id, sum(nights_sold) AS nights_sold FROM livekpi.booking_daily
				WHERE property_id BETWEEN 900 AND 902 GROUP BY 1) s}),
	'900:3,901:1,902:2',
	'only the genuine changes reached the KPIs');

sub logged_rejections
{
	my $log = slurp_file($node->logfile);
	my @lsns = $log =~ /rejected change record at ([0-9A-F]+\/[0-9A-F]+)/g;
	return @lsns;
}
my @lsns = logged_rejections();
is(scalar @lsns, $n_forged, 'each rejection logged once');
my %distinct = map { $_ => 1 } @lsns;
is(scalar keys %distinct, $n_forged, 'each with its own LSN');

# A restarted worker reads the slot again: nothing is counted or logged twice.
my $pid = apply_worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( poll_until(
		'a new apply worker',
		60,
		sub {
			my $p = apply_worker_pid($node);
			return defined $p && $p != $pid;
		}),
	'apply worker restarted');
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount)
VALUES (903, '2026-06-01', '2026-06-02', 20);
});
sync_ok($node, 60, 'sync after the restart');
is(try_query($node, 'SELECT sum(nights_sold) FROM livekpi.booking_daily WHERE property_id = 903'),
	'1', 'a genuine change after the forgeries is applied');
is(try_query($node, $rejected_sql) - $rejected0, $n_forged, 'nothing counted twice');
is(scalar(logged_rejections()), $n_forged, 'nothing logged twice');

# The worker dies after decoding a forged record, before its batch commits:
# its successor decodes the same transaction again from the slot, and still
# counts and logs the record once.
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; SELECT 1 FROM livekpi.state FOR UPDATE;');
my ($rc, $out, $err) = $node->psql('postgres', qq{SET ROLE forger;
BEGIN;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount)
VALUES (904, '2026-06-01', '2026-06-03', 30);
SELECT pg_logical_emit_message(true, 'livekpi', '\\x$genuine'::bytea);
COMMIT;}, on_error_stop => 1);
is($rc, 0, 'forged beside a genuine change') or diag($err);
$n_forged++;
ok( poll_until(
		'the worker to decode the forgery and wait for the state row',
		60,
		sub {
			return scalar(logged_rejections()) == $n_forged
			  && (try_query($node, 'SELECT apply_state FROM livekpi.status') // '') eq
			  'applying';
		}),
	'forgery decoded, batch waiting');
$pid = apply_worker_pid($node);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( poll_until(
		'a new apply worker',
		60,
		sub {
			my $p = apply_worker_pid($node);
			return defined $p && $p != $pid;
		}),
	'apply worker restarted mid-batch');
$locker->query_safe('COMMIT;');
$locker->quit;
sync_ok($node, 60, 'sync after the mid-batch restart');
is(try_query($node, 'SELECT sum(nights_sold) FROM livekpi.booking_daily WHERE property_id = 904'),
	'2', 'the genuine change beside the forgery is applied');
is(try_query($node, $rejected_sql) - $rejected0, $n_forged,
	'decoded twice, counted once');
is(scalar(logged_rejections()), $n_forged, 'decoded twice, logged once');
is(try_query($node, 'SELECT last_error IS NULL OR last_error ~ \'terminat\' FROM livekpi.status'), 't',
	'no other error in the apply worker');
check_verify($node, 'at the end');

reliability('forged and replayed change records inside and beside savepoints, a worker killed after decoding one', Test::More->builder->current_test . ' checks',
	'each ignored, logged and counted once; genuine changes applied');
$node->stop;
done_testing();
