#!/usr/bin/env bash
# bench/rebuild.sh: only the rebuild part of bench/run.sh, for iterating on
# rebuild(): one throwaway cluster under bench/out/rebuild/, the same data
# (bench/datagen.sql) and the same plain-SQL REFRESH MATERIALIZED VIEW
# baseline (bench/setup.sql's matviews), alternated in one run.
#
#   BENCH_BOOKINGS [1000000] BENCH_EXPENSES [1000000] BENCH_PROPERTIES [2000]
#   BENCH_ROUNDS [3]  BENCH_KEEP=1 keeps the cluster and its data for a rerun
#   (a rerun with the cluster kept re-creates the extension and re-tracks);
#   BENCH_DIR [bench/out/rebuild] where the cluster lives.
# Timings never decide a test.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/lib.sh"
bookings=${BENCH_BOOKINGS:-1000000} expenses=${BENCH_EXPENSES:-1000000}
properties=${BENCH_PROPERTIES:-2000} rounds=${BENCH_ROUNDS:-3}
dir=${BENCH_DIR:-$top/bench/out/rebuild}
mkdir -p "$dir"; chmod 755 "$dir"
port_file=$dir/port
[ -f "$port_file" ] || free_port > "$port_file"
port=$(cat "$port_file")
cluster_stop "$dir"
cluster_start "$dir" "$port" "shared_preload_libraries = 'livekpi'" \
	"shared_buffers = '2GB'" "max_wal_size = '20GB'" "checkpoint_timeout = '1h'" \
	"work_mem = '64MB'" "maintenance_work_mem = '512MB'" \
	"livekpi.listen_addresses = '127.0.0.1'" "livekpi.port = $(free_port)"
[ "${BENCH_KEEP:-0}" = 1 ] || trap 'cluster_stop "$dir"' EXIT
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres)
q() { "${PSQL[@]}" -c "$1"; }
# timed SQL...: wall ms of the statements (one session), and the CPU ms of
# that server process (user + system), which a loaded machine disturbs less.
timed() {
	local out
	out=$({
		echo 'SELECT pg_backend_pid() AS pid \gset'
		echo '\setenv BACKEND_PID :pid'
		echo "\\! awk '{print \"cpu0\", \$14 + \$15}' /proc/\$BACKEND_PID/stat"
		echo '\timing on'
		for s in "$@"; do echo "${s%;};"; done
		echo '\timing off'
		echo "\\! awk '{print \"cpu1\", \$14 + \$15}' /proc/\$BACKEND_PID/stat"
	} | "${PSQL[@]}")
	local wall cpu0 cpu1 hz
	hz=$(getconf CLK_TCK)
	wall=$(echo "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | paste -sd+ | bc -l)
	cpu0=$(echo "$out" | sed -n 's/^cpu0 //p')
	cpu1=$(echo "$out" | sed -n 's/^cpu1 //p')
	echo "$wall (cpu $(( (cpu1 - cpu0) * 1000 / hz )))"
}
if [ "$(q "SELECT to_regclass('gen.bookings') IS NOT NULL")" = f ]; then
	"${PSQL[@]}" -v schema=gen -v properties="$properties" -v years=3 \
		-v bookings="$bookings" -v expenses="$expenses" -f "$top/bench/datagen.sql" 2>&1 |
		grep -v -E 'NOTICE:  datagen' || true
	q "CREATE SCHEMA bench"
	sed -n '/^CREATE MATERIALIZED VIEW bench.mv_booking_daily/,/^CREATE UNIQUE INDEX ON bench.mv_portfolio_monthly/p' \
		"$top/bench/setup.sql" | "${PSQL[@]}"
	q "VACUUM ANALYZE"
fi
q "DROP EXTENSION IF EXISTS livekpi"
q "CREATE EXTENSION livekpi"
echo "backfill bookings ms: $(timed "SELECT livekpi.track_bookings('gen.bookings')")"
echo "backfill expenses ms: $(timed "SELECT livekpi.track_expenses('gen.expenses')")"
# Each timed step starts once the apply worker has decoded the WAL before it
# (the previous step's millions of heap inserts), as in bench/run.sh.
for r in $(seq 1 "$rounds"); do
	q "SELECT livekpi.sync('300s')" >/dev/null
	q "CHECKPOINT"
	echo "round $r REFRESH ms: $(timed "REFRESH MATERIALIZED VIEW bench.mv_booking_daily" \
		"REFRESH MATERIALIZED VIEW bench.mv_booking_monthly" "REFRESH MATERIALIZED VIEW bench.mv_expense_daily" \
		"REFRESH MATERIALIZED VIEW bench.mv_expense_monthly" "REFRESH MATERIALIZED VIEW bench.mv_portfolio_monthly")"
	"${PSQL[@]}" >/dev/null <<-'SQL'
		SELECT format('VACUUM %s', string_agg(c.oid::regclass::text, ', '))
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'livekpi' AND c.relkind = 'r' \gexec
	SQL
	q "SELECT livekpi.sync('300s')" >/dev/null
	q "CHECKPOINT"
	echo "round $r rebuild ms: $(timed "SELECT livekpi.rebuild()")"
done
q "SELECT count(*) FROM livekpi.verify()" | sed 's/^/verify differences: /'
