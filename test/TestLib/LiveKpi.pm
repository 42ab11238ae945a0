
# Copyright (c) 2026, livekpi authors
#
# test/TestLib/LiveKpi.pm
#	  Helpers shared by the livekpi TAP tests (test/t/*.pl): a node set up
#	  with test/livekpi.conf, the tracked test tables, a seeded random
#	  writer that runs as its own process (so several write concurrently),
#	  and an independent recompute of the KPI tables written from SPEC
#	  section 3, so that the tests do not rely on livekpi.verify() alone.
#
#	  Load it from a test with
#	    use FindBin;
#	    use lib "$FindBin::RealBin/..";
#	    use TestLib::LiveKpi;

package TestLib::LiveKpi;

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use IPC::Run;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(
  livekpi_node try_query poll_until setup_tables track_tables
  start_writers finish_writers writers_done writer_report
  check_independent check_verify check_delta_log_contiguous
  apply_worker_pid sync_ok call_ok pause_ok reliability
);

# Directory of test/ (this file lives in test/TestLib/).
my $testdir = abs_path(dirname(__FILE__) . '/..');

# The zone livekpi.timezone is set to in the tests: far from UTC, so that a
# timestamptz converted with the session's zone instead gives other days.
our $TIMEZONE = 'Pacific/Auckland';

#
# livekpi_node(name, conf => "...", init => {...})
#
# A started node with test/livekpi.conf, wal_level = logical, livekpi
# serving database "postgres", plus any extra configuration.
#
sub livekpi_node
{
	my ($name, %opt) = @_;
	require PostgreSQL::Test::Cluster;
	my $node = PostgreSQL::Test::Cluster->new($name);
	# Not allows_streaming: that sets shared_buffers = 1MB and
	# max_connections = 10.  test/livekpi.conf sets wal_level = logical.
	$node->init(%{ $opt{init} // {} });
	open my $fh, '<', "$testdir/livekpi.conf"
	  or die "cannot read $testdir/livekpi.conf: $!";
	local $/;
	my $conf = <$fh>;
	close $fh;
	$node->append_conf('postgresql.conf', $conf);
	$node->append_conf('postgresql.conf',
		    "livekpi.database = 'postgres'\n"
		  . "livekpi.timezone = '$TIMEZONE'\n"
		  . "restart_after_crash = on\n"
		  . "log_statement = none\n"
		  . "log_min_messages = warning\n"
		  . "log_line_prefix = '%m [%p] %b '\n"
		  . ($opt{conf} // ''));
	$node->start unless $opt{no_start};
	return $node;
}

#
# reliability(what, how_many, outcome): one row of docs/reliability.md
# (test/reliability-report.sh), printed as a note; the outcome reads FAILED
# when the test has failed so far.
#
sub reliability
{
	my ($what, $count, $outcome) = @_;
	my $b = Test::More->builder;
	Test::More::note("reliability: $what ($0)|$count|"
		  . ($b->is_passing ? $outcome : 'FAILED'));
	return;
}

# Output of $sql, or undef when it fails (server restarting, ...).
sub try_query
{
	my ($node, $sql, $timeout) = @_;
	my ($rc, $out, $err);
	# psql may exit before it reads its input while the server restarts
	# after a crash; IPC::Run then dies with "Broken pipe"
	eval {
		($rc, $out, $err) = $node->psql(
			'postgres', $sql,
			timeout => $timeout // 60,
			on_error_stop => 1);
		1;
	} or return undef;
	return undef if $rc != 0;
	return $out;
}

#
# poll_until(description, timeout_seconds, sub) -> bool
#
# Calls sub every 50 ms until it returns true or the deadline passes.
#
sub poll_until
{
	my ($what, $timeout, $cb) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		return 1 if $cb->();
		usleep(50_000);
	}
	Test::More::diag("timed out after ${timeout}s waiting for $what");
	return 0;
}

sub apply_worker_pid
{
	my ($node) = @_;
	my $pid = try_query($node,
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'livekpi apply'"
	);
	return (defined $pid && $pid =~ /^(\d+)$/) ? $1 : undef;
}

# SELECT of a function returning void succeeded (its errors are printed).
sub call_ok
{
	my ($node, $call, $name, $timeout) = @_;
	my ($rc, $out, $err) = $node->psql(
		'postgres', "SELECT $call",
		timeout => $timeout // 120,
		on_error_stop => 1);
	return Test::More::ok($rc == 0, $name) || Test::More::diag($err);
}

# livekpi.pause(), then livekpi.status shows the worker paused.
sub pause_ok
{
	my ($node, $name) = @_;
	my $state;
	call_ok($node, 'livekpi.pause()', $name);
	return Test::More::ok(
		poll_until(
			'livekpi.status to show the pause',
			30,
			sub {
				$state = try_query($node, 'SELECT apply_state FROM livekpi.status');
				return defined $state && $state =~ /paus/i;
			}),
		'status shows the apply worker paused')
	  || Test::More::diag('apply_state: ' . ($state // 'query failed'));
}

# livekpi.sync(timeout) returned true.
sub sync_ok
{
	my ($node, $timeout, $name) = @_;
	my $out = try_query($node, "SELECT livekpi.sync('${timeout}s')",
		$timeout + 30);
	Test::More::is($out, 't', $name // "livekpi.sync('${timeout}s') is true");
}

#
# The test tables: two booking tables (date columns with the default names;
# timestamptz columns with other names and a bigint key) and one expense
# table.  Rows inserted before tracking exercise the backfill.
#
sub setup_tables
{
	my ($node, %opt) = @_;
	my $pre = $opt{prefill} // 200;
	$node->safe_psql('postgres', qq{
CREATE TABLE public.bookings (
	id bigserial PRIMARY KEY,
	property_id int,
	check_in date,
	check_out date,
	total_amount numeric(12,2),
	status text,
	note text);
CREATE TABLE public.expenses (
	id bigserial PRIMARY KEY,
	property_id int,
	incurred_on date,
	amount numeric(10,2),
	category text,
	approval_status text);
CREATE TABLE public.stays (
	stay_id bigserial PRIMARY KEY,
	prop bigint,
	arrive timestamptz,
	depart timestamptz,
	price numeric,
	state varchar(20));
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT 1 + i % 7, DATE '2026-01-01' + i % 90, DATE '2026-01-01' + i % 90 + i % 6,
	   (i * 37.13) % 2000, (ARRAY['confirmed','cancelled',NULL,'pending'])[1 + i % 4]
FROM generate_series(1, $pre) AS i;
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
SELECT 1 + i % 5, DATE '2026-01-01' + i % 80, (i * 11.7) % 500,
	   (ARRAY['cleaning','repairs',NULL])[1 + i % 3],
	   (ARRAY['approved','rejected',NULL,'pending'])[1 + i % 4]
FROM generate_series(1, $pre / 2) AS i;
INSERT INTO public.stays (prop, arrive, depart, price, state)
SELECT 1 + i % 9, TIMESTAMPTZ '2026-01-01 00:00+00' + i * interval '7 hours',
	   TIMESTAMPTZ '2026-01-01 00:00+00' + i * interval '7 hours' + (i % 5) * interval '31 hours',
	   i * 3.333, (ARRAY['ok','canceled',NULL])[1 + i % 3]
FROM generate_series(1, $pre / 4) AS i;
});
	return;
}

sub track_tables
{
	my ($node) = @_;
	$node->safe_psql('postgres', qq{CREATE EXTENSION livekpi;});
	$node->safe_psql('postgres',
		qq{SELECT livekpi.track_bookings('public.bookings');});
	$node->safe_psql('postgres',
		qq{SELECT livekpi.track_expenses('public.expenses');});
	$node->safe_psql(
		'postgres', qq{
SELECT livekpi.track_bookings('public.stays', property_column => 'prop',
	check_in_column => 'arrive', check_out_column => 'depart',
	amount_column => 'price', status_column => 'state');});
	return;
}

######################################################################
# Independent recompute (SPEC section 3), in SQL written for the tests.

my $CANCELLED = q{'{cancelled,canceled}'::text[]};
my $MAX_STAY  = 1000;
# SPEC section 2: days a month can be taken of (docs/kpis.md); the others,
# infinite ones included, are skipped like NULL.  Categories count under
# their first 200 characters.
my $FIRST_DAY = q{DATE '4714-12-01 BC'};
my $LAST_DAY  = q{DATE '294276-11-30'};

# Rows (p, ci, co, amt, st) of the tracked booking tables of setup_tables().
our @BOOKING_SOURCES = (
	q{SELECT property_id::bigint AS p, check_in AS ci, check_out AS co,
		   total_amount::numeric AS amt, status::text AS st
	FROM public.bookings},
	qq{SELECT prop::bigint, (arrive AT TIME ZONE '$TIMEZONE')::date,
		   (depart AT TIME ZONE '$TIMEZONE')::date, price::numeric, state::text
	FROM public.stays});

# Rows (p, d, amt, cat, st) of the tracked expense tables.
our @EXPENSE_SOURCES = (
	q{SELECT property_id::bigint AS p, incurred_on AS d, amount::numeric AS amt,
		   category::text AS cat, approval_status::text AS st
	FROM public.expenses});

sub expected_booking_daily_sql
{
	my $src = join("\n\tUNION ALL\n", @BOOKING_SOURCES);
	return qq{
WITH src AS (
	$src
), b AS (
	SELECT p, ci, co - ci AS n, coalesce(amt, 0) AS amt,
		   coalesce(st = ANY ($CANCELLED), false) AS canc
	FROM src
	WHERE p IS NOT NULL AND ci IS NOT NULL AND co IS NOT NULL
	  AND ci BETWEEN $FIRST_DAY AND $LAST_DAY AND co BETWEEN $FIRST_DAY AND $LAST_DAY
	  AND co - ci <= $MAX_STAY
), c AS (
	SELECT p, ci AS day, 0 AS nights,
		   CASE WHEN NOT canc AND n <= 0 THEN amt ELSE 0 END AS rev,
		   CASE WHEN canc THEN 0 ELSE 1 END AS arr,
		   CASE WHEN canc THEN 1 ELSE 0 END AS carr
	FROM b
	UNION ALL
	SELECT p, ci + i, 1,
		   CASE WHEN i < n - 1 THEN round(amt / n, 2)
				ELSE amt - round(amt / n, 2) * (n - 1) END,
		   0, 0
	FROM b, generate_series(0, n - 1) AS i
	WHERE NOT canc AND n >= 1
)
SELECT p AS property_id, day, sum(nights)::bigint AS nights_sold,
	   sum(rev)::numeric AS room_revenue, sum(arr)::bigint AS arrivals,
	   sum(carr)::bigint AS cancelled_arrivals
FROM c GROUP BY 1, 2};
}

sub expected_expense_daily_sql
{
	my $src = join("\n\tUNION ALL\n", @EXPENSE_SOURCES);
	return qq{
SELECT p AS property_id, d AS day, coalesce(left(cat, 200), 'uncategorized') AS category,
	   sum(CASE WHEN st = 'approved' THEN coalesce(amt, 0) ELSE 0 END)::numeric AS approved_amount,
	   sum(CASE WHEN st IS DISTINCT FROM 'approved' AND st IS DISTINCT FROM 'rejected'
			THEN coalesce(amt, 0) ELSE 0 END)::numeric AS pending_amount,
	   sum(CASE WHEN st = 'rejected' THEN coalesce(amt, 0) ELSE 0 END)::numeric AS rejected_amount,
	   count(*)::bigint AS expense_count
FROM ($src) src
WHERE p IS NOT NULL AND d IS NOT NULL AND d BETWEEN $FIRST_DAY AND $LAST_DAY
GROUP BY 1, 2, 3};
}

# name => [stored query, expected query]; the same columns in the same order.
sub kpi_comparisons
{
	my $bd = expected_booking_daily_sql();
	my $ed = expected_expense_daily_sql();
	my $bm = qq{
SELECT property_id, date_trunc('month', day)::date AS month,
	   sum(nights_sold)::bigint, sum(room_revenue)::numeric,
	   sum(arrivals)::bigint, sum(cancelled_arrivals)::bigint
FROM ($bd) d GROUP BY 1, 2};
	my $em = qq{
SELECT property_id, date_trunc('month', day)::date AS month, category,
	   sum(approved_amount)::numeric, sum(pending_amount)::numeric,
	   sum(rejected_amount)::numeric, sum(expense_count)::bigint
FROM ($ed) d GROUP BY 1, 2, 3};
	my $pm = qq{
SELECT coalesce(b.month, e.month) AS month,
	   coalesce(b.n, 0)::bigint, coalesce(b.r, 0)::numeric,
	   coalesce(b.a, 0)::bigint, coalesce(b.c, 0)::bigint,
	   coalesce(e.ap, 0)::numeric, coalesce(e.pe, 0)::numeric,
	   coalesce(e.cnt, 0)::bigint
FROM (SELECT date_trunc('month', day)::date AS month, sum(nights_sold) AS n,
			 sum(room_revenue) AS r, sum(arrivals) AS a,
			 sum(cancelled_arrivals) AS c
	  FROM ($bd) d GROUP BY 1) b
FULL JOIN
	 (SELECT date_trunc('month', day)::date AS month,
			 sum(approved_amount) AS ap, sum(pending_amount) AS pe,
			 sum(expense_count) AS cnt
	  FROM ($ed) d GROUP BY 1) e ON b.month = e.month};

	return (
		booking_daily => [
			q{SELECT property_id::bigint, day, nights_sold::bigint,
					 room_revenue::numeric, arrivals::bigint,
					 cancelled_arrivals::bigint
			  FROM livekpi.booking_daily}, $bd
		],
		booking_monthly => [
			q{SELECT property_id::bigint, month, nights_sold::bigint,
					 room_revenue::numeric, arrivals::bigint,
					 cancelled_arrivals::bigint
			  FROM livekpi.booking_monthly}, $bm
		],
		expense_daily => [
			q{SELECT property_id::bigint, day, category::text,
					 approved_amount::numeric, pending_amount::numeric,
					 rejected_amount::numeric, expense_count::bigint
			  FROM livekpi.expense_daily}, $ed
		],
		expense_monthly => [
			q{SELECT property_id::bigint, month, category::text,
					 approved_amount::numeric, pending_amount::numeric,
					 rejected_amount::numeric, expense_count::bigint
			  FROM livekpi.expense_monthly}, $em
		],
		portfolio_monthly => [
			q{SELECT month, nights_sold::bigint, room_revenue::numeric,
					 arrivals::bigint, cancelled_arrivals::bigint,
					 approved_expenses::numeric, pending_expenses::numeric,
					 expense_count::bigint
			  FROM livekpi.portfolio_monthly}, $pm
		]);
}

#
# check_independent(node, label): one test per KPI table, comparing it with
# the recompute above (multiset difference both ways, printed on failure),
# plus: every property seen is registered in livekpi.properties.
#
sub check_independent
{
	my ($node, $label) = @_;
	my @cmp = kpi_comparisons();
	while (my ($kpi, $q) = splice(@cmp, 0, 2))
	{
		my ($stored, $expected) = @$q;
		my $diff = qq{
SELECT side, d::text FROM (
	(SELECT 'stored only' AS side, s AS d FROM (($stored) EXCEPT ALL ($expected)) s)
	UNION ALL
	(SELECT 'expected only', e FROM (($expected) EXCEPT ALL ($stored)) e)
) x ORDER BY 2, 1};
		my $rows = try_query($node, "SELECT count(*) FROM ($diff) z", 300);
		my $count_stored =
		  try_query($node, "SELECT count(*) FROM ($stored) z", 120);
		Test::More::is($rows, '0',
			"$label: $kpi equals the independent recompute ($count_stored rows)"
		) or Test::More::diag(
			try_query($node, "$diff LIMIT 40", 300) // 'query failed');
	}
	my $missing = try_query(
		$node, q{
SELECT count(*) FROM (
	SELECT property_id::bigint FROM livekpi.booking_daily
	UNION SELECT property_id::bigint FROM livekpi.expense_daily
	EXCEPT SELECT property_id::bigint FROM livekpi.properties) m});
	Test::More::is($missing, '0',
		"$label: every property with KPI rows is in livekpi.properties");
	return;
}

sub check_verify
{
	my ($node, $label) = @_;
	my $n = try_query($node, 'SELECT count(*) FROM livekpi.verify()', 300);
	Test::More::is($n, '0', "$label: livekpi.verify() is empty")
	  or Test::More::diag(
		try_query(
			$node, 'SELECT * FROM livekpi.verify() ORDER BY 1, 2, 3 LIMIT 40',
			300) // 'verify() failed');
	return;
}

# seq grows by exactly 1 per batch: no gaps and no duplicates in delta_log.
sub check_delta_log_contiguous
{
	my ($node, $label) = @_;
	my $r = try_query($node,
		'SELECT count(*) = count(DISTINCT seq) AND coalesce(max(seq) - min(seq) + 1, 0) = count(*) FROM livekpi.delta_log'
	);
	Test::More::is($r, 't', "$label: delta_log seq is contiguous")
	  or Test::More::diag(
		try_query($node,
			'SELECT min(seq), max(seq), count(*) FROM livekpi.delta_log'));
	return;
}

######################################################################
# Writers.
#
# start_writers(node, dir, n, seed, ops_per_writer, stop => file) starts n
# processes; each runs writer_main() below, which generates random SQL
# transactions from its own seeded generator and feeds them to psql in
# chunks, one connection per chunk, tolerating failed connections (the
# crash test kills the server under them).  ops_per_writer = 0 means run
# until the stop file exists.

sub start_writers
{
	my ($node, $dir, $n, $seed, $ops, %opt) = @_;
	my @w;
	for my $i (1 .. $n)
	{
		my $prefix = "$dir/writer$i";
		unlink "$prefix.err", "$prefix.sum";
		my @cmd = (
			$^X, '-I', $testdir, '-MTestLib::LiveKpi', '-e',
			'TestLib::LiveKpi::writer_main(@ARGV)',
			'--',
			connstr => $node->connstr('postgres'),
			seed => $seed * 100 + $i,
			index => $i,
			ops => $ops,
			writers => $n,
			chunk => $opt{chunk} // 250,
			stop => $opt{stop} // '',
			prefix => $prefix);
		my $h = IPC::Run::start(\@cmd, '<', \undef, '>', "$prefix.out",
			'2>&1', IPC::Run::timeout($opt{timeout} // 300));
		push @w, { h => $h, prefix => $prefix };
	}
	return \@w;
}

# All writers have written their summary (they are done or about to exit).
sub writers_done
{
	my ($writers) = @_;
	return !grep { !-e "$_->{prefix}.sum" } @$writers;
}

sub finish_writers
{
	my ($writers) = @_;
	for my $w (@$writers)
	{
		# the harness's timeout (start_writers) bounds this wait
		eval { $w->{h}->finish; 1 } or do {
			Test::More::diag("writer $w->{prefix} failed: $@");
			eval { $w->{h}->kill_kill };
		};
	}
	return;
}

#
# writer_report(writers, allowed_regex) -> (total_ops, total_commits,
# \@unexpected_error_lines, error_count, psql_runs_that_failed)
#
sub writer_report
{
	my ($writers, $allowed) = @_;
	my ($ops, $tx, $errors, $failed_chunks, @unexpected) = (0, 0, 0, 0);
	for my $w (@$writers)
	{
		if (open my $fh, '<', "$w->{prefix}.sum")
		{
			my $line = <$fh> // '';
			$ops += $1 if $line =~ /ops=(\d+)/;
			$tx += $1 if $line =~ /tx=(\d+)/;
			$failed_chunks += $1 if $line =~ /failed_chunks=(\d+)/;
			close $fh;
		}
		else
		{
			push @unexpected, "$w->{prefix}: no summary";
		}
		if (open my $fh, '<', "$w->{prefix}.err")
		{
			while (my $l = <$fh>)
			{
				next unless $l =~ /(ERROR|FATAL|PANIC):/;
				$errors++;
				push @unexpected, $l unless $l =~ $allowed;
			}
			close $fh;
		}
	}
	return ($ops, $tx, \@unexpected, $errors, $failed_chunks);
}

######################################################################
# The writer process.

my ($w_inserted, $w_writers, $w_index) = (0, 4, 0);

sub _r { return rand($_[0]); }
sub _pick { return $_[ int(rand(@_)) ]; }

sub _amount
{
	my ($decimals) = @_;
	my $r = rand();
	return 'NULL' if $r < 0.08;
	return sprintf('-%.2f', rand(400)) if $r < 0.16;
	return int(rand(2000)) if $r < 0.30;
	return sprintf('%.3f', rand(1500)) if $decimals && $r < 0.40;
	return sprintf('%.2f', 0.01 + int(rand(3)) * 0.01 + 100 * int(rand(10)))
	  if $r < 0.45;    # small amounts that do not divide evenly
	return sprintf('%.2f', rand(3000));
}

sub _nights
{
	my $r = rand();
	return undef if $r < 0.03;
	return 0 if $r < 0.10;
	return -1 - int(rand(5)) if $r < 0.16;
	return 8 + int(rand(50)) if $r < 0.19;
	return 995 + int(rand(11)) if $r < 0.1915;    # around max_stay_nights
	return 1 + int(rand(7));
}

sub _prop { return rand() < 0.03 ? 'NULL' : 1 + int(rand(12)); }

sub _bstatus
{
	return _pick(
		"'confirmed'", "'confirmed'", "'confirmed'", "'confirmed'",
		"'confirmed'", "'cancelled'", "'cancelled'", "'canceled'",
		'NULL',        'NULL',        "'pending'",   "'checked_out'",
		"'Cancelled'");
}

# check_in and check_out expressions for the date table
sub _bdates
{
	my $r = rand();
	return ("'infinity'", "DATE '2026-02-01'") if $r < 0.005;
	return ("DATE '2026-02-01'", "'infinity'") if $r < 0.01;
	return ('NULL', "DATE '2026-02-03'") if $r < 0.02;
	my $d = int(rand(150));
	my $n = _nights();
	my $ci = "DATE '2026-01-01' + $d";
	return ($ci, 'NULL') unless defined $n;
	return ($ci, "DATE '2026-01-01' + " . ($d + $n));
}

sub _booking_values
{
	my ($ci, $co) = _bdates();
	return sprintf('(%s, %s, %s, %s, %s)',
		_prop(), $ci, $co, _amount(0), _bstatus());
}

sub _stay_values
{
	my $h = int(rand(150 * 24));
	my $n = _nights() // 2;
	$n = 40 if $n > 40;
	my $h2 = $h + $n * 24 + int(rand(24)) - 12;
	my $prop = _prop();
	return sprintf(
		"(%s, TIMESTAMPTZ '2026-01-01 00:00+00' + %d * interval '1 hour' + interval '%d min', TIMESTAMPTZ '2026-01-01 00:00+00' + %d * interval '1 hour', %s, %s)",
		$prop, $h, int(rand(60)), $h2, _amount(1),
		_pick("'ok'", "'ok'", "'canceled'", "'cancelled'", 'NULL'));
}

sub _expense_values
{
	my $date =
	  rand() < 0.03
	  ? 'NULL'
	  : (rand() < 0.005 ? "'-infinity'"
		: "DATE '2026-01-01' + " . int(rand(150)));
	return sprintf('(%s, %s, %s, %s, %s)',
		_prop(), $date, _amount(0),
		_pick("'cleaning'", "'repairs'", "'utilities'", "'cleaning'", 'NULL', "''"),
		_pick("'approved'", "'approved'", "'approved'", "'rejected'",
			"'pending'", 'NULL', 'NULL', "'draft'"));
}

# an id that probably exists
sub _id
{
	my $max = $w_inserted * $w_writers + 250;
	return 1 + int(rand($max));
}

my $bcols = '(property_id, check_in, check_out, total_amount, status)';
my $ecols = '(property_id, incurred_on, amount, category, approval_status)';
my $scols = '(prop, arrive, depart, price, state)';

# One random DML statement.
sub _op
{
	my $r = rand(100);
	if ($r < 16)
	{
		$w_inserted++;
		return "INSERT INTO public.bookings $bcols VALUES " . _booking_values();
	}
	if ($r < 21)
	{
		my $k = 2 + int(rand(5));
		$w_inserted += $k;
		return "INSERT INTO public.bookings $bcols VALUES "
		  . join(', ', map { _booking_values() } 1 .. $k);
	}
	if ($r < 28)
	{
		my ($ci, $co) = _bdates();
		return sprintf(
			'UPDATE public.bookings SET check_in = %s, check_out = %s WHERE id = %d',
			$ci, $co, _id());
	}
	if ($r < 34)
	{
		return sprintf(
			'UPDATE public.bookings SET total_amount = %s WHERE id = %d',
			_amount(0), _id());
	}
	if ($r < 40)
	{
		return sprintf('UPDATE public.bookings SET status = %s WHERE id = %d',
			_bstatus(), _id());
	}
	if ($r < 43)
	{
		return sprintf(
			'UPDATE public.bookings SET property_id = %s WHERE id = %d',
			_prop(), _id());
	}
	if ($r < 46)
	{
		my ($ci, $co) = _bdates();
		return sprintf(
			'UPDATE public.bookings SET (property_id, check_in, check_out, total_amount, status) = (%s, %s, %s, %s, %s) WHERE id = %d',
			_prop(), $ci, $co, _amount(0), _bstatus(), _id());
	}
	if ($r < 48)
	{
		my $id = _id();
		return sprintf(
			'UPDATE public.bookings SET total_amount = total_amount + %.2f, check_out = check_out + %d WHERE id BETWEEN %d AND %d',
			rand(50) - 20, int(rand(3)) - 1, $id, $id + int(rand(8)));
	}
	if ($r < 50)
	{
		return sprintf("UPDATE public.bookings SET note = 'n%d' WHERE id = %d",
			int(rand(1000)), _id());
	}
	if ($r < 55)
	{
		return sprintf('DELETE FROM public.bookings WHERE id = %d', _id());
	}
	if ($r < 56)
	{
		my $d = int(rand(150));
		return sprintf(
			"DELETE FROM public.bookings WHERE property_id = %d AND check_in BETWEEN DATE '2026-01-01' + %d AND DATE '2026-01-01' + %d",
			1 + int(rand(12)), $d, $d + 2);
	}
	if ($r < 57.5)
	{
		my ($ci, $co) = _bdates();
		return sprintf(
			"MERGE INTO public.bookings b USING (VALUES (%d, %s::int, (%s)::date, (%s)::date, %s::numeric, %s::text)) AS v(id, p, ci, co, amt, st) ON b.id = v.id WHEN MATCHED AND v.amt IS NULL THEN DELETE WHEN MATCHED THEN UPDATE SET total_amount = v.amt, status = v.st, check_out = v.co WHEN NOT MATCHED THEN INSERT (id, property_id, check_in, check_out, total_amount, status) VALUES (v.id, v.p, v.ci, v.co, v.amt, v.st)",
			# each writer its own ids: concurrent MERGEs inserting one id conflict
			2_000_000 + 1000 * $w_index + int(rand(200)), _prop(), $ci, $co,
			_amount(0),
			_bstatus());
	}
	if ($r < 59)
	{
		my ($ci, $co) = _bdates();
		return sprintf(
			"INSERT INTO public.bookings (id, property_id, check_in, check_out, total_amount, status) VALUES (%d, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET total_amount = EXCLUDED.total_amount, check_in = EXCLUDED.check_in, status = EXCLUDED.status",
			1_000_000 + int(rand(300)), _prop(), $ci, $co, _amount(0),
			_bstatus());
	}
	if ($r < 67)
	{
		return "INSERT INTO public.expenses $ecols VALUES " . _expense_values();
	}
	if ($r < 70)
	{
		return "INSERT INTO public.expenses $ecols VALUES "
		  . join(', ', map { _expense_values() } 1 .. 2 + int(rand(4)));
	}
	if ($r < 74)
	{
		return sprintf('UPDATE public.expenses SET amount = %s WHERE id = %d',
			_amount(0), _id() / 2);
	}
	if ($r < 78)
	{
		return sprintf(
			'UPDATE public.expenses SET approval_status = %s WHERE id = %d',
			_pick("'approved'", "'rejected'", "'pending'", 'NULL'),
			_id() / 2);
	}
	if ($r < 82)
	{
		my $v = _expense_values();
		return
		  "UPDATE public.expenses SET $ecols = $v WHERE id = " . int(_id() / 2);
	}
	if ($r < 85)
	{
		my $id = int(_id() / 2);
		return sprintf(
			'DELETE FROM public.expenses WHERE id IN (%d, %d, %d)',
			$id, $id + 3, $id + 7);
	}
	if ($r < 91)
	{
		return "INSERT INTO public.stays $scols VALUES "
		  . join(', ', map { _stay_values() } 1 .. 1 + int(rand(3)));
	}
	if ($r < 95)
	{
		return sprintf(
			"UPDATE public.stays SET depart = depart + %d * interval '5 hours', price = price + %.3f WHERE stay_id = %d",
			int(rand(9)) - 4, rand(30), int(_id() / 3));
	}
	if ($r < 97)
	{
		return sprintf("UPDATE public.stays SET state = %s WHERE stay_id = %d",
			_pick("'ok'", "'canceled'", 'NULL'), int(_id() / 3));
	}
	return sprintf('DELETE FROM public.stays WHERE stay_id = %d',
		int(_id() / 3));
}

# One transaction; returns (sql, dml statement count, commits).
sub _transaction
{
	my ($ops, @sql) = (0);
	my $r = rand();
	# rare: TRUNCATE (the apply worker rebuilds when it reaches one), and
	# one rolled back (which must change nothing)
	return ("TRUNCATE public.stays;\n", 1, 1) if $r < 0.0005;
	return ("BEGIN;\nTRUNCATE public.stays;\n" . _op() . ";\nROLLBACK;\n", 2, 0)
	  if $r < 0.0010;
	if ($r < 0.3)
	{
		return (_op() . ";\n", 1, 1);
	}
	push @sql, 'BEGIN;';
	my $sp = 0;
	my $body;
	$body = sub {
		my ($depth) = @_;
		my $k = 1 + int(rand(4));
		for (1 .. $k)
		{
			if ($depth < 2 && rand() < 0.25)
			{
				my $name = 'sp' . (++$sp);
				push @sql, "SAVEPOINT $name;";
				$body->($depth + 1);
				my $e = rand();
				if ($e < 0.5)
				{
					push @sql, "ROLLBACK TO SAVEPOINT $name;";
					if (rand() < 0.3)
					{
						push @sql, _op() . ';';
						$ops++;
					}
				}
				else
				{
					push @sql, "RELEASE SAVEPOINT $name;";
				}
			}
			else
			{
				push @sql, _op() . ';';
				$ops++;
			}
		}
	};
	$body->(0);
	my $commit = rand() < 0.85;
	push @sql, $commit ? 'COMMIT;' : 'ROLLBACK;';
	undef $body;
	return (join("\n", @sql) . "\n", $ops, $commit ? 1 : 0);
}

sub writer_main
{
	my %a = @_;
	srand($a{seed});
	$w_writers = $a{writers};
	$w_index = $a{index};
	my ($ops, $tx, $chunks, $failed) = (0, 0, 0, 0);
	my $file = "$a{prefix}.sql";
	while (1)
	{
		last if $a{ops} && $ops >= $a{ops};
		last if $a{stop} ne '' && -e $a{stop};
		my ($sql, $n) = ('', 0);
		while ($n < $a{chunk})
		{
			my ($s, $o, $c) = _transaction();
			$sql .= $s;
			$n += $o;
			$tx += $c;
		}
		$ops += $n;
		open my $fh, '>', $file or die "cannot write $file: $!";
		print $fh $sql;
		close $fh;
		$chunks++;
		my $ok = IPC::Run::run(
			[
				'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=0',
				'-d', $a{connstr}, '-f', $file
			],
			'<', \undef, '>', '/dev/null', '2>>', "$a{prefix}.err");
		unless ($ok)
		{
			# connection refused or lost: the server is restarting
			$failed++;
			usleep(100_000);
		}
	}
	open my $fh, '>', "$a{prefix}.sum" or die;
	print $fh "ops=$ops tx=$tx chunks=$chunks failed_chunks=$failed\n";
	close $fh;
	return;
}

1;
