
# Copyright (c) 2026, livekpi authors
#
# test/t/009_poison.pl
#	  No poison change (SPEC section 5).  One source change that cannot be
#	  applied must not hold back the others: the apply worker re-runs the
#	  failed batch in careful mode, skips exactly that change, records it in
#	  livekpi.skipped_changes with its LSN, marks the KPIs stale until
#	  rebuild(), and applies everything else exactly.  Errors a user's own
#	  constraint or trigger on a KPI table raises are retried, never
#	  skipped; two changes in a row failing alike are systemic and retried.
#	  A record the worker cannot read is ignored and counted.  Finally,
#	  failures at random points with the apply worker SIGKILLed during
#	  careful mode: the same decision after every restart, no duplicate.
#
#	  Faults: livekpi.test_fail_on_amount (test-only GUC: the apply of a
#	  change with that exact amount raises SQLSTATE 22003), and a booking
#	  dated 294277-01-01, whose month roll-up needs a timestamp.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/..";

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use TestLib::LiveKpi;

my $seed = $ENV{LIVEKPI_TEST_SEED} // (time() ^ ($$ << 8)) % 1_000_000;
diag("009_poison: seed $seed (rerun with LIVEKPI_TEST_SEED=$seed)");
srand($seed);

my $node = livekpi_node('poison', conf => "livekpi.flush_interval = 20\n");
setup_tables($node, prefill => 200);
track_tables($node);
sync_ok($node, 30, 'sync after tracking');

# Rows the KPIs must not contain while a skip is in force (the independent
# recompute leaves them out).
my @excluded_amounts;

sub check_exact_except_skipped
{
	my ($label) = @_;
	my $not_excluded = @excluded_amounts
	  ? 'coalesce(total_amount NOT IN (' . join(', ', @excluded_amounts) . '), true)'
	  : 'true';
	local @TestLib::LiveKpi::BOOKING_SOURCES = @TestLib::LiveKpi::BOOKING_SOURCES;
	$TestLib::LiveKpi::BOOKING_SOURCES[0] = qq{SELECT property_id::bigint AS p, check_in AS ci,
		check_out AS co, total_amount::numeric AS amt, status::text AS st
	FROM public.bookings
	WHERE $not_excluded AND (check_in IS NULL OR check_in < '10000-01-01')};
	local @TestLib::LiveKpi::EXPENSE_SOURCES = (qq{SELECT property_id::bigint AS p,
		incurred_on AS d, amount::numeric AS amt, category::text AS cat,
		approval_status::text AS st
	FROM public.expenses WHERE } . ($not_excluded =~ s/total_amount/amount/r));
	check_independent($node, $label);
	return;
}

sub set_fail_amount
{
	my ($amount) = @_;
	if (defined $amount)
	{
		$node->safe_psql('postgres',
			"ALTER SYSTEM SET livekpi.test_fail_on_amount = '$amount'");
	}
	else
	{
		$node->safe_psql('postgres',
			'ALTER SYSTEM RESET livekpi.test_fail_on_amount');
	}
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	# the worker re-reads the file on SIGHUP; wait until a fresh backend
	# sees the value too, then give the worker a wake-up
	poll_until(
		'the new setting',
		30,
		sub {
			my $v = try_query($node, 'SHOW livekpi.test_fail_on_amount');
			return defined $v && $v eq ($amount // '');
		});
	return;
}

sub status
{
	my ($col) = @_;
	return try_query($node, "SELECT $col FROM livekpi.status");
}

sub skipped_count
{
	return try_query($node, 'SELECT count(*) FROM livekpi.skipped_changes');
}

######################################################################
# 1. A record the worker cannot read is ignored and counted.

$node->safe_psql('postgres', q{
CREATE ROLE nobody_special LOGIN;
});
my $rejected0 = status('records_rejected');
$node->safe_psql('postgres', q{
SET ROLE nobody_special;
SELECT pg_logical_emit_message(true, 'livekpi', 'x');
RESET ROLE;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (3, '2026-02-01', '2026-02-03', 100, 'confirmed');
});
sync_ok($node, 30, 'a malformed record does not stop the pipeline');
cmp_ok(status('records_rejected'), '>', $rejected0,
	'the malformed record is counted in records_rejected');
is(skipped_count(), '0', 'a malformed record is not a skipped change');

######################################################################
# 2. A user's own CHECK constraint on a KPI table: retried, not skipped.

$node->safe_psql('postgres', q{
ALTER TABLE livekpi.booking_daily ADD CONSTRAINT user_revenue_cap CHECK (room_revenue <> 777.77);
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (9001, '2027-05-05', '2027-05-06', 777.77, 'confirmed');
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (4, '2026-02-10', '2026-02-12', 50, 'confirmed');
});
ok( poll_until(
		'the worker to report the user constraint',
		60,
		sub {
			my $e = status(q{apply_state || ' ' || coalesce(last_error, '')});
			return defined $e && $e =~ /^retrying .*user_revenue_cap/;
		}),
	'a user CHECK constraint on a KPI table makes the worker retry');
is(try_query($node, "SELECT livekpi.sync('1s')"), 'f',
	'nothing past the failing change is applied meanwhile');
is(skipped_count(), '0', 'a user constraint violation is never skipped');
is(status('stale'), 'f', 'and the KPIs are not marked stale');
$node->safe_psql('postgres',
	'ALTER TABLE livekpi.booking_daily DROP CONSTRAINT user_revenue_cap');
sync_ok($node, 60, 'dropping the constraint lets the batch through');

######################################################################
# 3. A user's trigger on a KPI table raising a data error (class 22):
#    retried, not skipped.

$node->safe_psql('postgres', q{
CREATE FUNCTION public.user_monthly_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.room_revenue = 555.55 THEN
		PERFORM 1 / 0;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER user_monthly_guard BEFORE INSERT OR UPDATE ON livekpi.booking_monthly
	FOR EACH ROW EXECUTE FUNCTION public.user_monthly_guard();
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (9002, '2027-06-05', '2027-06-06', 555.55, 'confirmed');
});
ok( poll_until(
		'the worker to report the user trigger',
		60,
		sub {
			my $e = status(q{apply_state || ' ' || coalesce(last_error, '')});
			return defined $e && $e =~ /^retrying .*division by zero/;
		}),
	'a data error raised by a user trigger makes the worker retry');
is(skipped_count(), '0', 'an error of a user trigger is never skipped');
$node->safe_psql('postgres',
	'DROP TRIGGER user_monthly_guard ON livekpi.booking_monthly');
sync_ok($node, 60, 'dropping the trigger lets the batch through');
check_verify($node, 'after user errors');

######################################################################
# 4. One change that fails alone (SQLSTATE 22003 by the test GUC) among
#    others in the same transaction and batch: skipped, recorded, stale.

set_fail_amount('4242.42');
pause_ok($node, 'pause so that one batch holds several transactions');
$node->safe_psql('postgres', q{
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
VALUES (2, '2026-03-01', 12.5, 'cleaning', 'approved');
});
my $lsns = $node->safe_psql('postgres', q{
BEGIN;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (5, '2026-03-01', '2026-03-04', 300, 'confirmed');
SELECT pg_current_wal_insert_lsn();
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (5, '2026-03-10', '2026-03-12', 4242.42, 'confirmed');
SELECT pg_current_wal_insert_lsn();
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
VALUES (5, '2026-03-02', 99.99, 'repairs', 'pending');
COMMIT;
});
my ($lsn_before, $lsn_after) = split /\n/, $lsns;
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (6, '2026-03-05', '2026-03-06', 80, NULL);
});
push @excluded_amounts, '4242.42';
call_ok($node, 'livekpi.resume()', 'resume');
sync_ok($node, 60, 'the batch with the bad change is applied except that change');

is( try_query(
		$node, qq{
SELECT count(*) FILTER (WHERE message_lsn > '$lsn_before' AND message_lsn <= '$lsn_after'
						 AND commit_lsn > message_lsn AND ordinal = 2
						 AND relid = 'public.bookings'::regclass AND sqlstate = '22003'
						 AND message LIKE '%test_fail_on_amount%'),
	   count(*)
FROM livekpi.skipped_changes}),
	'1|1',
	'skipped_changes holds exactly the bad change, with its LSN, ordinal and SQLSTATE')
  or diag("between $lsn_before and $lsn_after: "
	  . try_query($node, 'SELECT * FROM livekpi.skipped_changes'));
my $skip_lsn = try_query($node, 'SELECT message_lsn FROM livekpi.skipped_changes');
is(status('stale'), 't', 'the KPIs are marked stale');
like(status('stale_reason'), qr/skipped at LSN \Q$skip_lsn\E/,
	'stale_reason names the LSN');
cmp_ok(status('rows_skipped'), '>=', 1, 'the skip is counted');
like(slurp_file($node->logfile), qr/skipped the source change at LSN \Q$skip_lsn\E/,
	'the skip is logged with its LSN');
check_exact_except_skipped('after one skipped change');
check_delta_log_contiguous($node, 'after one skipped change');

######################################################################
# 5. Two changes in a row failing alike: systemic, retried, not skipped.

set_fail_amount('3131.31');
$node->safe_psql('postgres', q{
BEGIN;
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (7, '2026-04-01', '2026-04-03', 3131.31, 'confirmed');
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (7, '2026-04-05', '2026-04-07', 3131.31, 'confirmed');
COMMIT;
});
ok( poll_until(
		'the worker to report a systemic failure',
		60,
		sub {
			my $e = status(q{apply_state || ' ' || coalesce(last_error, '')});
			return defined $e && $e =~ /^retrying .*same SQLSTATE 22003/;
		}),
	'two changes in a row failing with one SQLSTATE are retried as systemic');
is(skipped_count(), '1', 'nothing more is skipped');
set_fail_amount(undef);
sync_ok($node, 60, 'once the cause is gone both changes apply');
is(skipped_count(), '1', 'still one skipped change');
check_exact_except_skipped('after a systemic failure');

######################################################################
# 6. A booking whose month the roll-ups cannot take (until the trigger
#    skips such dates itself, it reaches the apply and fails with 22008).

my $skips0 = skipped_count();
$node->safe_psql('postgres', q{
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (8, '294277-01-01', '294277-01-02', 10, 'confirmed');
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (8, '2026-05-01', '2026-05-02', 10, 'confirmed');
});
sync_ok($node, 60, 'an extreme date does not stop the pipeline');
my $extreme = try_query($node,
	"SELECT count(*) FROM livekpi.skipped_changes WHERE sqlstate = '22008'");
ok($extreme eq '1' || skipped_count() eq $skips0,
	'the extreme date is either skipped by the apply (22008) or never reaches it');
check_exact_except_skipped('after an extreme date');
# the delete of that row fails alike; afterwards rebuild() can read the table
$node->safe_psql('postgres',
	"DELETE FROM public.bookings WHERE check_in = '294277-01-01'");
sync_ok($node, 60, 'deleting the extreme row does not stop the pipeline');

cmp_ok(try_query($node, 'SELECT count(*) FROM livekpi.verify()', 300),
	'>', 0, 'verify() shows the skipped change before rebuild()');
is(status('stale'), 't', 'still stale before rebuild()');
call_ok($node, 'livekpi.rebuild()', 'rebuild');
sync_ok($node, 60);
is(status('stale'), 'f', 'rebuild() clears stale');
check_verify($node, 'after rebuild');
@excluded_amounts = ();
check_independent($node, 'after rebuild');

######################################################################
# 7. Failures at random points, the apply worker SIGKILLed during careful
#    mode: after every restart the same decision, no duplicate, exact KPIs.

my $bad = '6161.61';
set_fail_amount($bad);
push @excluded_amounts, $bad;
my $skips_before = skipped_count();
my $injected = 0;
my $careful_kills = 0;
# spins server-side until the apply worker shows that state (at most 5 s)
$node->safe_psql('postgres', q{
CREATE FUNCTION public.wait_apply_state(s text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE t timestamptz := clock_timestamp();
BEGIN
	LOOP
		IF (SELECT apply_state FROM livekpi.status) = s THEN
			RETURN true;
		END IF;
		IF clock_timestamp() > t + interval '5 s' THEN
			RETURN false;
		END IF;
	END LOOP;
END $$;
});
for my $round (1 .. 6)
{
	pause_ok($node, "round $round: pause");
	my $sql = '';
	for my $t (1 .. 100)
	{
		my $n = 1 + int(rand(4));
		my $bad_at = rand() < 0.3 ? 1 + int(rand($n)) : 0;
		$sql .= "BEGIN;\n";
		for my $i (1 .. $n)
		{
			my $p = 1 + int(rand(12));
			my $d = int(rand(120));
			my $amount = $i == $bad_at ? $bad : sprintf('%.2f', rand(900));
			if (rand() < 0.7)
			{
				$sql .= "INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status) "
				  . "VALUES ($p, DATE '2026-01-01' + $d, DATE '2026-01-01' + $d + "
				  . int(rand(5)) . ", $amount, 'confirmed');\n";
			}
			else
			{
				$sql .= "INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status) "
				  . "VALUES ($p, DATE '2026-01-01' + $d, $amount, 'cleaning', 'approved');\n";
			}
			$injected++ if $i == $bad_at;
		}
		$sql .= "COMMIT;\n";
	}
	$node->safe_psql('postgres', $sql);
	my $pid = apply_worker_pid($node);
	call_ok($node, 'livekpi.resume()', "round $round: resume");
	# kill at once, or once the worker is in careful mode
	if ($round % 2)
	{
		my $hit = try_query($node, 'SELECT public.wait_apply_state(\'applying carefully\')');
		$careful_kills++ if defined $hit && $hit eq 't';
	}
	is(kill('KILL', $pid), 1, "round $round: SIGKILL apply worker $pid");
	ok( poll_until(
			"round $round: a new apply worker",
			90,
			sub {
				my $p = apply_worker_pid($node);
				return defined $p && $p != $pid;
			}),
		"round $round: the apply worker is back");
	sync_ok($node, 90, "round $round: everything applied after the kill");
}
cmp_ok($careful_kills, '>=', 1,
	"SIGKILL landed in careful mode ($careful_kills of 3 aimed kills)");
is(skipped_count() - $skips_before, $injected,
	"each of the $injected injected bad changes is skipped exactly once");
is( try_query(
		$node, q{SELECT count(*) FROM (SELECT commit_lsn, ordinal FROM livekpi.skipped_changes
	GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0',
	'no duplicate rows in skipped_changes');
check_exact_except_skipped('after kills in careful mode');
check_delta_log_contiguous($node, 'after kills in careful mode');
set_fail_amount(undef);
call_ok($node, 'livekpi.rebuild()', 'final rebuild');
sync_ok($node, 60);
check_verify($node, 'after the final rebuild');
is(status('stale'), 'f', 'not stale after the final rebuild');
unlike(slurp_file($node->logfile), qr/terminated by signal (?!9:)\d+/,
	'no process died of a signal other than the test\'s SIGKILLs');

reliability('poison changes (data errors in one change, user constraints and triggers, SIGKILL during careful mode)', Test::More->builder->current_test . ' checks',
	'the bad change alone skipped and recorded, user errors retried, KPIs exact after rebuild()');
$node->stop;
done_testing();
