#-------------------------------------------------------------------------
#
# 013_capture_disabled.pl
#	  Disabling capture is never a silent loss (issue 8 item 4, SPEC
#	  section 2): ALTER TABLE bookings DISABLE TRIGGER ALL, 500 inserts
#	  from another session, ENABLE TRIGGER ALL.  While capture is off,
#	  livekpi.status says stale and /healthz answers 503; enabling it
#	  again recomputes the KPIs by itself: /healthz 200, verify() empty,
#	  and the 500 bookings are counted.
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
use TestLib::LiveKpiPush;

my $node = push_node('capture_disabled');
$node->safe_psql(
	'postgres', q{
CREATE TABLE bookings (id serial PRIMARY KEY, property_id int, check_in date, check_out date,
					   total_amount numeric, status text);
INSERT INTO bookings (property_id, check_in, check_out, total_amount)
SELECT i % 10, DATE '2026-06-01' + i % 30, DATE '2026-06-02' + i % 30, 100 FROM generate_series(1, 100) i;
SELECT livekpi.track_bookings('bookings');
});
is($node->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'synced');
my ($st, $body);
ok(poll_until('/healthz 200', 60, sub { ($st, $body) = http_get($node, '/healthz'); $st == 200 }),
	'/healthz is 200 before');

my ($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE bookings DISABLE TRIGGER ALL');
is($rc, 0, 'DISABLE TRIGGER ALL works');
like($err, qr/WARNING:\s+livekpi does not capture changes of table public\.bookings/,
	'a WARNING names the table at once');
like($err, qr/DETAIL:.*the KPIs are marked stale/, 'and says what it means');
is($node->safe_psql('postgres', q{SELECT stale || ' ' || stale_reason FROM livekpi.status}),
	'true capture was disabled on public.bookings', 'livekpi.status says stale, and why');
ok(poll_until('/healthz 503', 60, sub { ($st, $body) = http_get($node, '/healthz'); $st == 503 }),
	'/healthz answers 503 while capture is off');
like($body, qr/"stale":true/, '/healthz says stale');

$node->safe_psql('postgres', q{
INSERT INTO bookings (property_id, check_in, check_out, total_amount)
SELECT i % 10, DATE '2026-07-01' + i % 30, DATE '2026-07-03' + i % 30, 50 FROM generate_series(1, 500) i;
});
is($node->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'synced while off');
isnt($node->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0',
	'the 500 rows are not in the KPIs while capture is off');
is($node->safe_psql('postgres', q{SELECT stale FROM livekpi.status}), 't', 'still stale');

($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE bookings ENABLE TRIGGER ALL');
is($rc, 0, 'ENABLE TRIGGER ALL works');
like($err, qr/NOTICE:\s+livekpi capture is whole again: recomputing the KPIs/, 'livekpi recomputes');
is($node->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'synced after');
is($node->safe_psql('postgres', q{SELECT stale FROM livekpi.status}), 'f', 'no longer stale');
is($node->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0', 'verify() is empty');
is($node->safe_psql('postgres',
		q{SELECT sum(nights_sold) FROM livekpi.booking_daily WHERE day >= '2026-07-01'}),
	'1000', 'the 500 two-night bookings are counted');
ok(poll_until('/healthz 200', 60, sub { ($st, $body) = http_get($node, '/healthz'); $st == 200 }),
	'/healthz is 200 again');
is($node->safe_psql('postgres',
		q{SELECT string_agg(tgname || '=' || tgenabled::text, ' ' ORDER BY tgname) FROM pg_trigger
		  WHERE tgrelid = 'bookings'::regclass AND tgname LIKE 'livekpi%'}),
	'livekpi_capture=A livekpi_truncate=A', 'the capture triggers fire ALWAYS again');

# and changes stream again
$node->safe_psql('postgres', q{DELETE FROM bookings WHERE id % 3 = 0});
is($node->safe_psql('postgres', q{SELECT livekpi.sync('60s')}), 't', 'synced after deletes');
is($node->safe_psql('postgres', q{SELECT count(*) FROM livekpi.verify()}), '0', 'still exact');

reliability('DISABLE TRIGGER ALL on a tracked table, 500 inserts, ENABLE', '1',
	'stale and /healthz 503 meanwhile, then rebuilt by itself and exact');
$node->stop;
done_testing();
