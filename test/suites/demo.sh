#!/usr/bin/env bash
# test/suites/demo.sh WORK: the demo's data generator and live simulator
# against a temporary cluster, then livekpi.verify() must be empty.
#
# WORK is a copy of the tree the postgres user can read (test/run-tests.sh
# passes it).  Three paths into the KPIs are covered: the backfill of
# tables loaded before tracking (public), the stream of a bulk load into
# tables tracked while empty (schema late), and the simulator's mix of
# small transactions (inserts, date changes, cancellations, deletes,
# expense decisions, rolled-back transactions) on both.  Exits non-zero on
# any failure.  No timing is checked.
set -euo pipefail
work=${1:?usage: test/suites/demo.sh WORK}
. "$work/test/lib.sh"

tmp=$(mktemp -d /tmp/livekpi-demo-test.XXXXXX)
chmod 755 "$tmp"
dir=$tmp/cluster
port=$(free_port)
cleanup() {
	cluster_stop "$dir"
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "demo suite: FAIL: $*" >&2
	[ -f "$dir/server.log" ] && { echo "--- server.log (tail)" >&2; tail -n 40 "$dir/server.log" >&2; }
	exit 1
}

cluster_start "$dir" "$port" "livekpi.listen_addresses = ''" "livekpi.flush_interval = 100" ||
	fail "cluster did not start"
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
q() { "${PSQL[@]}" -c "$1"; }

echo "demo suite: generator (backfill path)"
"${PSQL[@]}" -v properties=30 -v years=2 -f "$work/bench/datagen.sql" 2>/dev/null ||
	fail "bench/datagen.sql failed"
q "CREATE EXTENSION livekpi" || fail "CREATE EXTENSION livekpi"
q "SELECT livekpi.track_bookings('public.bookings')" >/dev/null || fail "track_bookings(public.bookings)"
q "SELECT livekpi.track_expenses('public.expenses')" >/dev/null || fail "track_expenses(public.expenses)"
q "INSERT INTO livekpi.properties (property_id, units)
   SELECT id, units FROM public.properties
   ON CONFLICT (property_id) DO UPDATE SET units = EXCLUDED.units" >/dev/null || fail "setting units"

echo "demo suite: generator into tables tracked while empty (stream path)"
q "CREATE SCHEMA late;
   CREATE TABLE late.properties (LIKE public.properties INCLUDING ALL);
   CREATE TABLE late.bookings (LIKE public.bookings INCLUDING ALL);
   CREATE TABLE late.expenses (LIKE public.expenses INCLUDING ALL)" || fail "creating schema late"
q "SELECT livekpi.track_bookings('late.bookings')" >/dev/null || fail "track_bookings(late.bookings)"
q "SELECT livekpi.track_expenses('late.expenses')" >/dev/null || fail "track_expenses(late.expenses)"
"${PSQL[@]}" -v schema=late -v properties=10 -v years=1 -v seed=0.7 -f "$work/bench/datagen.sql" 2>/dev/null ||
	fail "bench/datagen.sql into schema late failed"

echo "demo suite: simulator"
for schema in public late; do
	props=$(q "SELECT count(*) FROM $schema.properties")
	PGOPTIONS="-c search_path=$schema" pgbench -h 127.0.0.1 -p "$port" -U postgres -n -c 2 -j 2 \
		-R 150 -T 4 --max-tries=10 -D props="$props" -f "$work/bench/simulator.sql" postgres \
		>"$tmp/pgbench_$schema.out" 2>&1 || { cat "$tmp/pgbench_$schema.out"; fail "simulator on $schema"; }
	grep -E '^number of (transactions actually processed|failed)' "$tmp/pgbench_$schema.out" | sed 's/^/    /'
done

synced=$(q "SELECT livekpi.sync('60s')") || fail "livekpi.sync()"
[ "$synced" = t ] || fail "livekpi.sync('60s') returned $synced"
diffs=$(q "SELECT count(*) FROM livekpi.verify()") || fail "livekpi.verify()"
if [ "$diffs" != 0 ]; then
	q "SELECT * FROM livekpi.verify() LIMIT 20" >&2 || true
	fail "livekpi.verify() returned $diffs differences"
fi
rows=$(q "SELECT count(*) FROM livekpi.booking_daily")
[ "$rows" -gt 0 ] || fail "livekpi.booking_daily is empty"
echo "demo suite: ok ($rows booking_daily rows, verify() empty)"
