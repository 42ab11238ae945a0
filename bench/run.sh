#!/usr/bin/env bash
# bench/run.sh: the SPEC section 9 benchmarks that concern the core
# pipeline (`make bench`).  One throwaway cluster under bench/out/, every
# figure measured in the same run as its baseline, workers running during
# every write benchmark; rewrites BENCHMARKS.md (bench/report.py).
#
#   write overhead   pgbench booking mix, tracked vs untracked vs a PL/pgSQL
#                    queue-table + NOTIFY trigger, alternated rounds
#   bulk load        INSERT ... SELECT of 300,000 bookings, same three tables;
#                    apply throughput until sync() returns
#   rebuild          livekpi.rebuild() over 1M bookings + 1M expenses vs
#                    REFRESH MATERIALIZED VIEW of the same KPIs in plain SQL
#   KPI read         one property-month from property_kpis vs the same
#                    figures aggregated from the raw rows
#   WAL              extra WAL of the tracked transaction per row, and the
#                    apply worker's WAL per change
#
# Environment (defaults in brackets):
#   BENCH_QUICK=1           small sizes and short runs, to check the script;
#                           writes bench/out/BENCHMARKS.quick.md instead
#   BENCH_ROUNDS [3]        alternated rounds of the write and bulk tests
#   BENCH_SECONDS [20]      pgbench duration of each write round
#   BENCH_CLIENTS [2 x cores] pgbench clients of the write rounds (saturation:
#                           the CPU, not the client count, must be the limit)
#   BENCH_BULK_ROWS [300000]
#   BENCH_BOOKINGS [1000000], BENCH_EXPENSES [1000000], BENCH_PROPERTIES [2000]
#   BENCH_READ_SECONDS [10] pgbench duration of each read test
#   BENCH_REPORT            output file [BENCHMARKS.md at the top of the tree]
#   BENCH_KEEP=1            leave the cluster running at the end
#
# Timings never decide a test: this script fails only when a step errors.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/lib.sh"

started=$(date +%s)
if [ -n "${MAKELEVEL:-}" ]; then command_line="make bench"; else command_line="./bench/run.sh"; fi
[ "${PG_CONFIG:-pg_config}" = pg_config ] || command_line="PG_CONFIG=$PG_CONFIG $command_line"
for v in $(env | sed -n 's/^\(BENCH_[A-Z_]*\)=.*/\1/p' | sort); do
	command_line="$v=${!v} $command_line"
done

quick=${BENCH_QUICK:-0}
if [ "$quick" = 1 ]; then
	rounds=${BENCH_ROUNDS:-2} seconds=${BENCH_SECONDS:-3} clients=${BENCH_CLIENTS:-$((2 * $(nproc)))}
	bulk_rows=${BENCH_BULK_ROWS:-30000} bookings=${BENCH_BOOKINGS:-50000}
	expenses=${BENCH_EXPENSES:-50000} properties=${BENCH_PROPERTIES:-200}
	read_seconds=${BENCH_READ_SECONDS:-2} write_rows=20000 wal_single=1000 wal_bulk=5000
	report=${BENCH_REPORT:-$top/bench/out/BENCHMARKS.quick.md}
else
	rounds=${BENCH_ROUNDS:-3} seconds=${BENCH_SECONDS:-20} clients=${BENCH_CLIENTS:-$((2 * $(nproc)))}
	bulk_rows=${BENCH_BULK_ROWS:-300000} bookings=${BENCH_BOOKINGS:-1000000}
	expenses=${BENCH_EXPENSES:-1000000} properties=${BENCH_PROPERTIES:-2000}
	read_seconds=${BENCH_READ_SECONDS:-10} write_rows=200000 wal_single=5000 wal_bulk=20000
	report=${BENCH_REPORT:-$top/BENCHMARKS.md}
fi
years=3

out=$top/bench/out
dir=$out/cluster
work=$out/work
results=$out/results.tsv
mkdir -p "$out"
chmod 755 "$out"
if [ -f "$dir/data/postmaster.pid" ]; then cluster_stop "$dir"; fi
rm -rf "$dir" "$work"
mkdir -p "$work"
: > "$results"

log() { printf '[%4ds] %s\n' $(($(date +%s) - started)) "$*"; }
res() { printf '%s\t%s\n' "$1" "$2" >> "$results"; }

# livekpi present in this PostgreSQL?  Without it only the baselines run.
have_livekpi=1
if [ ! -f "$($PG_CONFIG --pkglibdir)/livekpi.so" ] ||
	[ ! -f "$($PG_CONFIG --sharedir)/extension/livekpi.control" ]; then
	have_livekpi=0
	log "livekpi is not installed for $PG_CONFIG: measuring the baselines only"
fi
preload="shared_preload_libraries = 'livekpi'"
[ $have_livekpi = 1 ] || preload="shared_preload_libraries = ''"

port=$(free_port)
push_port=$(free_port)
settings=(
	"$preload"
	"shared_buffers = '2GB'"
	"max_wal_size = '20GB'"
	"checkpoint_timeout = '1h'"
	"work_mem = '64MB'"
	"maintenance_work_mem = '512MB'"
	"livekpi.flush_interval = 500"
	"livekpi.listen_addresses = '127.0.0.1'"
	"livekpi.port = $push_port"
)
cleanup() {
	[ "${BENCH_KEEP:-0}" = 1 ] && return
	[ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
	cluster_stop "$dir"
}
trap cleanup EXIT
log "cluster in $dir, port $port"
cluster_start "$dir" "$port" "${settings[@]}"

PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres)
PGBENCH=(pgbench -h "$dir" -p "$port" -U postgres -n)
q() { "${PSQL[@]}" -c "$1"; }
# timed SQL...: runs the statements in one session and prints the
# duration in ms of each, one a line (autocommit: commits included).
timed() {
	{
		echo '\timing on'
		for stmt in "$@"; do echo "${stmt%;};"; done
	} | "${PSQL[@]}" | tee "$work/timed.out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
	if grep -qx f "$work/timed.out"; then sync_failed; fi
}
# A sync() that times out means the apply worker is stuck: stop here.
sync_failed() {
	echo "bench: livekpi.sync() timed out; livekpi.status.last_error: $(status last_error)" >&2
	tail -n 20 "$dir/server.log" >&2
	exit 1
}
qsync() { [ "$(q "SELECT livekpi.sync('$1')")" = t ] || sync_failed; }
# status FIELD: one field of livekpi.status ('' when absent).
status() { q "SELECT to_jsonb(s)->>'$1' FROM livekpi.status s" 2>/dev/null || true; }
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(statistics.median(v) if v else "")' "$@"; }

# --- machine ------------------------------------------------------------------
res date "$(date -u '+%Y-%m-%d %H:%M UTC')"
res command "$command_line"
res nproc "$(nproc)"
res memory "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
res cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
res pg_version "$(q 'SELECT version()')"
res git "$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)"
res settings "$(printf '%s; ' "${settings[@]:1}")synchronous_commit = on, fsync = on, autovacuum = on"
res quick "$quick"
res have_livekpi "$have_livekpi"
res load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
res sizes "rounds=$rounds seconds=$seconds clients=$clients bulk_rows=$bulk_rows bookings=$bookings expenses=$expenses properties=$properties write_rows=$write_rows"

# --- data ---------------------------------------------------------------------
if [ $have_livekpi = 1 ]; then
	q "CREATE EXTENSION livekpi"
fi
log "generating $bookings bookings and $expenses expenses over $properties properties"
"${PSQL[@]}" -v schema=gen -v properties="$properties" -v years=$years \
	-v bookings="$bookings" -v expenses="$expenses" -f "$top/bench/datagen.sql" 2>&1 |
	grep -v -E 'NOTICE:  datagen: (bookings|expenses) [0-9]' || true
q "SELECT 1 FROM gen.bookings LIMIT 1" >/dev/null
res data_nights "$(q "SELECT round(avg(check_out - check_in), 2) FROM gen.bookings")"
wstart=$(q "SELECT (date_trunc('year', current_date) - interval '$((years - 1)) years')::date")
"${PSQL[@]}" -v write_rows=$write_rows -v bulk_rows="$bulk_rows" -v wal_rows=$wal_bulk -f "$top/bench/setup.sql"
q "VACUUM ANALYZE"
for t in w_plain w_tracked w_queue; do
	sed "s/@TABLE@/bench.$t/g" "$top/bench/write_mix.sql" > "$work/write_$t.sql"
done
# Bulk-load targets: a fresh empty table per round and variant, so that no
# round has to delete the previous one's rows (for the tracked table that
# would be as much apply work again).
kinds="plain queue"
[ $have_livekpi = 1 ] && kinds="plain tracked queue"
for r in $(seq 1 "$rounds"); do
	for k in $kinds; do
		q "CREATE TABLE bench.b_${k}_r$r (LIKE gen.bookings INCLUDING ALL)"
	done
	q "CREATE TRIGGER queue_capture AFTER INSERT OR UPDATE OR DELETE ON bench.b_queue_r$r
	   FOR EACH ROW EXECUTE FUNCTION bench.queue_capture()"
done

# The benchmark tables are tracked while still empty (each track_*() call
# recomputes every KPI, which costs the most once schema gen is tracked);
# w_tracked gets its rows through the stream after the rebuild rounds.
if [ $have_livekpi = 1 ]; then
	log "tracking the (empty) write, bulk and WAL tables"
	for t in w_tracked wal_tracked $(for r in $(seq 1 "$rounds"); do echo b_tracked_r$r; done); do
		q "SELECT livekpi.track_bookings('bench.$t')" >/dev/null
	done
fi

# --- backfill, rebuild and its baseline -----------------------------------------
if [ $have_livekpi = 1 ]; then
	log "tracking gen.bookings and gen.expenses (backfill)"
	ms=$(timed "SELECT livekpi.track_bookings('gen.bookings')")
	res backfill_bookings_ms "$ms"
	ms=$(timed "SELECT livekpi.track_expenses('gen.expenses')")
	res backfill_expenses_ms "$ms"
	q "INSERT INTO livekpi.properties (property_id, units)
	   SELECT id, units FROM gen.properties
	   ON CONFLICT (property_id) DO UPDATE SET units = EXCLUDED.units" >/dev/null
	qsync 120s
fi
mv_refresh=(
	"REFRESH MATERIALIZED VIEW bench.mv_booking_daily;"
	"REFRESH MATERIALIZED VIEW bench.mv_booking_monthly;"
	"REFRESH MATERIALIZED VIEW bench.mv_expense_daily;"
	"REFRESH MATERIALIZED VIEW bench.mv_expense_monthly;"
	"REFRESH MATERIALIZED VIEW bench.mv_portfolio_monthly;"
)
# Each timed step starts once the apply worker has decoded the WAL before it
# (the previous step's millions of heap inserts, which it reads whether or
# not they are livekpi's), so neither step pays for the other's decoding.
for r in $(seq 1 "$rounds"); do
	[ $have_livekpi = 1 ] && qsync 300s
	q "CHECKPOINT"
	ms=$(timed "${mv_refresh[@]}" | paste -sd+ | bc -l)
	res refresh_ms_r$r "$ms"
	log "rebuild round $r: REFRESH of the KPI matviews $ms ms"
	if [ $have_livekpi = 1 ]; then
		# like a freshly refreshed matview, start from tables without dead rows
		"${PSQL[@]}" >/dev/null <<-'EOF'
			SELECT format('VACUUM %s', string_agg(c.oid::regclass::text, ', '))
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = 'livekpi' AND c.relkind = 'r' \gexec
		EOF
		qsync 300s
		q "CHECKPOINT"
		ms=$(timed "SELECT livekpi.rebuild()")
		res rebuild_ms_r$r "$ms"
		log "rebuild round $r: livekpi.rebuild() $ms ms"
	fi
done
q "VACUUM ANALYZE"

# --- KPI read ------------------------------------------------------------------
months=$((years * 12))
read_test() { # name script
	local name=$1 script=$2 d=$work/read_$1
	mkdir -p "$d"
	(cd "$d" && "${PGBENCH[@]}" -M prepared -c 1 -T "$read_seconds" -l \
		-D props="$properties" -D months=$months -D wstart="$wstart" -f "$script" postgres >pgbench.out 2>&1) ||
		{ cat "$d/pgbench.out"; return 1; }
	# per-transaction log: client tx latency_us script epoch epoch_us
	cat "$d"/pgbench_log.* | awk '{print $3}' | sort -n | awk '
		{ v[NR] = $1 }
		END { p = int(NR * 0.99); if (p < 1) p = 1; printf "%s %s %d\n", v[int((NR + 1) / 2)], v[p], NR }'
}
# server-side execution time (EXPLAIN ANALYZE, planning and round trip left out)
exec_ms() { # query-template with %1$s for the property and %2$L for the month; [samples]
	q "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY bench.execution_ms(format(\$q\$$1\$q\$,
	              1 + floor(random() * $properties)::int,
	              (DATE '$wstart' + make_interval(months => floor(random() * $((years * 12)))::int))::date)))::numeric, 4)
	   FROM generate_series(1, ${2:-500})"
}
res read_raw_exec_ms "$(exec_ms "SELECT * FROM bench.raw_property_month(%s, %L)")"
log "KPI read: raw aggregate"
set -- $(read_test raw "$top/bench/read_raw.sql")
res read_raw_median_us "$1"
res read_raw_p99_us "$2"
res read_raw_count "$3"
if [ $have_livekpi = 1 ]; then
	log "KPI read: property_kpis"
	set -- $(read_test kpi "$top/bench/read_kpi.sql")
	res read_kpi_exec_ms "$(exec_ms "SELECT * FROM livekpi.property_kpis WHERE property_id = %s AND month = %L")"
	res read_kpi_median_us "$1"
	res read_kpi_p99_us "$2"
	res read_kpi_count "$3"
	res read_kpi_plan "$(q "EXPLAIN (COSTS OFF) SELECT * FROM livekpi.property_kpis
		WHERE property_id = 17 AND month = DATE '$wstart' + 6" | tr '\n' '~')"
	# The two must agree: compare 50 property-months that have KPI rows.
	res read_match "$(q "
		WITH s AS (SELECT * FROM livekpi.property_kpis
		           WHERE property_id <= $properties ORDER BY random() LIMIT 50)
		SELECT count(*) FILTER (WHERE to_jsonb(s) - 'updated_at' - 'name' = to_jsonb(r)) || '/' || count(*)
		FROM s, LATERAL bench.raw_property_month(s.property_id::int, s.month) r")"

	# A portfolio-month: portfolio_kpis against every raw stay that may
	# reach the month (about 1.5 s each here, hence fewer samples).
	log "KPI read: portfolio_kpis"
	set -- $(read_test portfolio "$top/bench/read_portfolio.sql")
	res read_pf_median_us "$1"
	res read_pf_p99_us "$2"
	res read_pf_count "$3"
	res read_pf_exec_ms "$(exec_ms 'SELECT * FROM livekpi.portfolio_kpis WHERE month = %2$L')"
	log "KPI read: raw portfolio aggregate"
	res read_pf_raw_exec_ms "$(exec_ms 'SELECT * FROM bench.raw_portfolio_month(%2$L)' 9)"
	res read_pf_match "$(q "
		WITH s AS (SELECT * FROM livekpi.portfolio_kpis ORDER BY random() LIMIT 3)
		SELECT count(*) FILTER (WHERE to_jsonb(s) - 'updated_at' = to_jsonb(r)) || '/' || count(*)
		FROM s, LATERAL bench.raw_portfolio_month(s.month) r")"
fi

# --- write overhead --------------------------------------------------------------
log "loading the write tables"
q "INSERT INTO bench.w_tracked SELECT * FROM bench.w_plain"
q "SELECT setval(pg_get_serial_sequence('bench.w_tracked', 'id'), $write_rows)" >/dev/null
[ $have_livekpi = 1 ] && qsync 300s
q "VACUUM ANALYZE bench.w_tracked"
# Samples the apply lag every 200 ms while the benchmarks write.
if [ $have_livekpi = 1 ]; then
	(
		while sleep 0.5; do
			"${PSQL[@]}" -c "SELECT extract(epoch FROM clock_timestamp()), to_jsonb(s)->>'lag_ms',
			                        to_jsonb(s)->>'lag_bytes' FROM livekpi.status s" 2>/dev/null || true
		done
	) > "$work/lag.txt" &
	sampler=$!
fi
# CPU seconds the livekpi workers use (they share the cores with the load)
worker_cpu() {
	local pid total=0
	for pid in $(q "SELECT apply_pid FROM livekpi.status UNION ALL SELECT push_pid FROM livekpi.status" 2>/dev/null); do
		[ -r "/proc/$pid/stat" ] && total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
	done
	echo "$total"
}
# CPU ticks of the apply worker alone
apply_cpu() {
	local pid
	pid=$(q "SELECT apply_pid FROM livekpi.status" 2>/dev/null)
	[ -n "$pid" ] && [ -r "/proc/$pid/stat" ] && sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}' || echo 0
}
hz=$(getconf CLK_TCK)
order=($kinds)
for r in $(seq 1 "$rounds"); do
	for k in "${order[@]}"; do
		q "TRUNCATE bench.queue; CHECKPOINT"
		if [ "$k" = tracked ]; then
			a0=$(apply_cpu)
			n0=$(status changes_applied)
		fi
		c0=$([ $have_livekpi = 1 ] && worker_cpu || echo 0)
		t0=$(date +%s.%N)
		"${PGBENCH[@]}" -M prepared -c "$clients" -j "$clients" -T "$seconds" \
			-D rows=$write_rows -D props=100001 -f "$work/write_w_$k.sql" postgres > "$work/write_${k}_$r.out" 2>&1 ||
			{ cat "$work/write_${k}_$r.out"; exit 1; }
		t1=$(date +%s.%N)
		c1=$([ $have_livekpi = 1 ] && worker_cpu || echo 0)
		res write_worker_cpu_${k}_r$r "$(python3 -c "print(round(($c1 - $c0) / $hz / ($t1 - $t0), 3))")"
		tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/write_${k}_$r.out")
		res write_tps_${k}_r$r "$tps"
		res write_window_${k}_r$r "$t0 $t1"
		extra=""
		if [ "$k" = tracked ]; then
			ms=$(timed "SELECT livekpi.sync('120s')")
			res write_sync_ms_r$r "$ms"
			# the apply worker's CPU over the round and its sync(), per change
			# applied (a worker restarted in between reads as nothing)
			a1=$(apply_cpu)
			n1=$(status changes_applied)
			if [ -n "$n0" ] && [ -n "$n1" ] && [ "$n1" -gt "$n0" ] && [ "$a1" -ge "$a0" ]; then
				res apply_us_per_change_r$r "$(python3 -c "print(round(($a1 - $a0) / $hz * 1e6 / ($n1 - $n0), 1))")"
				res write_changes_r$r "$((n1 - n0))"
			fi
			extra=", sync() after it $ms ms"
		fi
		log "write round $r: $k $tps tps$extra"
	done
	order=("${order[@]:1}" "${order[0]}")
done
if [ -n "${sampler:-}" ]; then
	kill "$sampler" 2>/dev/null || true
	wait "$sampler" 2>/dev/null || true
	sampler=
fi
if [ $have_livekpi = 1 ]; then
	# highest lag sampled during the tracked rounds
	for r in $(seq 1 "$rounds"); do
		set -- $(awk -F'\t' -v r="write_window_tracked_r$r" '$1 == r {print $2}' "$results")
		awk -F'|' -v a="$1" -v b="$2" '$1 >= a && $1 <= b && $2 != "" {print $2}' "$work/lag.txt"
	done | sort -n | tail -1 | { read -r v || true; res write_max_lag_ms "${v:-}"; }
fi

# --- bulk load ----------------------------------------------------------------------
q "VACUUM ANALYZE bench.bulk_src"
order=($kinds)
for r in $(seq 1 "$rounds"); do
	# Each round's rows get their own property range, so that every round's
	# apply makes new daily rows (SPEC section 9: about a million distinct
	# ones) instead of updating the previous round's.
	bulk_select="SELECT id, property_id + $(((r - 1) * 10000)), unit_no, guest_name, check_in, check_out,
	             guests, channel, status, total_amount, created_at, updated_at FROM bench.bulk_src"
	for k in "${order[@]}"; do
		q "TRUNCATE bench.queue; CHECKPOINT"
		if [ "$k" = tracked ]; then
			before=$(status changes_applied)
			tout=$(timed "INSERT INTO bench.b_tracked_r$r $bulk_select" \
				"SELECT 'lsn_a ' || bench.flushed_lsn()" \
				"SELECT livekpi.sync('300s')" \
				"SELECT 'lsn_b ' || bench.flushed_lsn()")
			set -- $tout
			res bulk_ms_tracked_r$r "$1"
			res bulk_sync_ms_r$r "$3"
			after=$(status changes_applied)
			res bulk_changes_r$r "$([ -n "$before" ] && [ -n "$after" ] && echo $((after - before)) || echo)"
			if [ "$r" = 1 ]; then
				# apply worker WAL per change on a bulk load: the transactions
				# that wrote to schema livekpi between the commit and sync()
				a=$(sed -n 's/^lsn_a //p' "$work/timed.out")
				b=$(sed -n 's/^lsn_b //p' "$work/timed.out")
				res apply_wal_bulk "$(q "SELECT round(bytes / $bulk_rows, 1) || ' ' || records || ' ' || transactions
				                         || ' ' || round((bytes - fpi_bytes) / $bulk_rows, 1)
				                         FROM bench.livekpi_wal('$a', '$b')")"
				res apply_wal_bulk_window "$(q "SELECT round(('$b'::pg_lsn - '$a'::pg_lsn) / $bulk_rows, 1)")"
			fi
			log "bulk round $r: tracked insert $1 ms, sync() after it $3 ms"
		else
			ms=$(timed "INSERT INTO bench.b_${k}_r$r $bulk_select")
			res bulk_ms_${k}_r$r "$ms"
			log "bulk round $r: $k insert $ms ms"
		fi
	done
	order=("${order[@]:1}" "${order[0]}")
done

# --- WAL per row -----------------------------------------------------------------------
log "WAL per row"
wal_tables="wal_plain"
[ $have_livekpi = 1 ] && wal_tables="wal_plain wal_tracked"
q "CHECKPOINT"
wal_rounds=$((rounds < 5 ? 5 : rounds))
for r in $(seq 0 "$wal_rounds"); do	# round 0 warms up (full-page images after the checkpoint)
	for t in $wal_tables; do q "VACUUM bench.$t"; done
	for t in $wal_tables; do
		k=${t#wal_}
		for form in single bulk; do
			n=$wal_single single=true
			[ $form = bulk ] && n=$wal_bulk single=false
			for op in insert update delete; do
				line=$(q "SELECT p.touched, p.end_lsn - p.start_lsn, p.start_lsn, p.end_lsn
				          FROM bench.wal_probe('bench.$t', '$op', $n, $single) p")
				IFS='|' read -r touched bytes a b <<<"$line"
				q "SELECT bench.flushed_lsn()" >/dev/null
				# Page maintenance (full-page images, pruning, index cleanup) depends
				# on checkpoint timing and on earlier rounds' dead rows, not on
				# livekpi: left out of both sides.
				line=$(q "SELECT coalesce(sum(fpi_size), 0)
				                 + coalesce(sum(record_size) FILTER (WHERE rec IN ('Heap2/PRUNE',
				                   'Heap2/VACUUM', 'Heap2/VISIBLE', 'Heap2/FREEZE_PAGE', 'Btree/DELETE',
				                   'Btree/VACUUM', 'Btree/REUSE_PAGE', 'Btree/UNLINK_PAGE')), 0),
				                 coalesce(sum(combined_size) FILTER (WHERE rec LIKE 'LogicalMessage/%'), 0)
				          FROM (SELECT \"resource_manager/record_type\" AS rec, *
				                FROM pg_get_wal_stats('$a', '$b', true)) w")
				IFS='|' read -r fpi msg <<<"$line"
				[ "$r" = 0 ] && continue
				res wal_${k}_${op}_${form}_r$r "$(python3 -c "print(round(($bytes - $fpi) / $touched, 1))")"
				res walfpi_${k}_${op}_${form}_r$r "$(python3 -c "print(round($fpi / $touched, 1))")"
				res walmsg_${k}_${op}_${form}_r$r "$(python3 -c "print(round($msg / $touched, 1))")"
			done
		done
		q "VACUUM bench.$t"
	done
done

# apply worker WAL per change under the OLTP mix (many small transactions)
if [ $have_livekpi = 1 ]; then
	log "apply worker WAL per change, OLTP mix"
	qsync 120s
	before=$(status changes_applied)
	a=$(q "SELECT bench.flushed_lsn()")
	"${PGBENCH[@]}" -M prepared -c "$clients" -j "$clients" -t 1500 \
		-D rows=$write_rows -D props=100001 -f "$work/write_w_tracked.sql" postgres > "$work/apply_wal.out" 2>&1 ||
		{ cat "$work/apply_wal.out"; exit 1; }
	qsync 120s
	b=$(q "SELECT bench.flushed_lsn()")
	after=$(status changes_applied)
	changes=$([ -n "$before" ] && [ -n "$after" ] && echo $((after - before)) || echo $((clients * 1500)))
	res apply_wal_oltp "$(q "SELECT round(bytes / $changes, 1) || ' ' || records || ' ' || transactions || ' $changes'
	                         || ' ' || round((bytes - fpi_bytes) / $changes, 1)
	                         FROM bench.livekpi_wal('$a', '$b')")"
	res apply_wal_oltp_by_table "$(q "SELECT json_object_agg(tbl, round(bytes / $changes, 1) ORDER BY bytes DESC) FROM bench.livekpi_wal_by_table('$a', '$b')")"
	res apply_status "$(q "SELECT to_jsonb(s) FROM livekpi.status s")"
	log "verify()"
	res verify_differences "$(q "SELECT count(*) FROM livekpi.verify()")"
fi

res load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
cluster_stop "$dir"

# --- push worker (bench/push_bench.sh owns those measurements) ---------------------
if [ -x "$top/bench/push_bench.sh" ] && [ "${BENCH_PUSH:-1}" = 1 ] && [ $have_livekpi = 1 ]; then
	log "push worker benchmarks (bench/push_bench.sh)"
	if [ "$quick" = 1 ]; then
		export PUSH_LAT_SECONDS=${PUSH_LAT_SECONDS:-3} PUSH_FANOUT_CLIENTS=${PUSH_FANOUT_CLIENTS:-200}
		export PUSH_TPUT_CLIENTS=${PUSH_TPUT_CLIENTS:-100} PUSH_TPUT_SECONDS=${PUSH_TPUT_SECONDS:-3}
	fi
	"$top/bench/push_bench.sh" > "$out/push.jsonl" 2> "$work/push_bench.log" ||
		{ tail -20 "$work/push_bench.log"; echo "bench: bench/push_bench.sh failed" >&2; : > "$out/push.jsonl"; }
	while IFS= read -r line; do
		[ -n "$line" ] && res push "$line"
	done < "$out/push.jsonl"
fi

res duration_s $(($(date +%s) - started))
python3 "$top/bench/report.py" "$results" > "$report.tmp"
mv "$report.tmp" "$report"
log "wrote $report"
