#!/usr/bin/env bash
# bench/push_bench.sh: the SPEC section 9 benchmarks of the push worker.
#
# This file owns the push measurements: it builds bench/ws_bench.c, starts
# its own throwaway cluster (test/lib.sh) with the listener on loopback,
# tracks public.bookings and public.expenses, creates a token, measures,
# stops the cluster and prints one line of JSON per measurement on stdout
# and nothing else (progress goes to stderr):
#
#   latency_flush0     commit -> WebSocket receive, flush_interval 0,
#                      pgbench -R rate of one-row booking inserts; per
#                      transaction: client receive clock of the delta that
#                      carried it minus its commit timestamp (both UTC, the
#                      same host clock); per delta: minus committed_at
#   latency_flush500   the same with flush_interval 500 (ALTER SYSTEM)
#   fanout             N open ws clients (scoped to properties 1-3, so the
#                      snapshots stay small), one booking committed per round;
#                      per client receive minus committed_at; push worker
#                      VmRSS/VmHWM while they are connected
#   push_throughput    delta messages/s sent by the push worker to M clients
#                      under a pgbench -R stream of small batches, from
#                      livekpi.status.messages_sent over a fixed window
#   standby_latency    SPEC section 10: a streaming hot standby made with
#                      pg_basebackup runs its own listener; one client on
#                      the primary and one on the standby, a light
#                      pgbench -R stream of one-row inserts; per batch
#                      (seq): its receive time at the standby client minus
#                      its receive time at the primary client (the same
#                      host clock)
#   standby_latency_sat  the same under an unthrottled pgbench (saturation)
#   standby_fanout     the fan-out measurement with the N clients on the
#                      standby's listener (a round is timed from the
#                      primary's committed_at, so it includes replay)
#
# Environment (defaults in brackets):
#   PUSH_BENCH_DIR       work directory [bench/out/push]; the cluster is
#                        recreated in it on every run
#   PUSH_LAT_SECONDS [15], PUSH_LAT_RATE [1000]   latency pgbench load
#   PUSH_FANOUT_CLIENTS [10000], PUSH_FANOUT_ROUNDS [3]
#   PUSH_TPUT_CLIENTS [2000], PUSH_TPUT_SECONDS [8] (window), PUSH_TPUT_RATE [400]
#   PUSH_STANDBY_SECONDS [15], PUSH_STANDBY_RATE [50]   standby, light load
#   PUSH_STANDBY_SAT_SECONDS [10]   standby at saturation (pgbench -c 4 unthrottled)
#   PUSH_ONLY=fanout | standby | standby_fanout   run only that part
#                        (standby includes standby_fanout)
#   PUSH_KEEP=1          leave the cluster running at the end
#
# Exits non-zero only when a step fails; timings never fail it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/lib.sh"

lat_seconds=${PUSH_LAT_SECONDS:-15}
lat_rate=${PUSH_LAT_RATE:-1000}
fan_clients=${PUSH_FANOUT_CLIENTS:-10000}
fan_rounds=${PUSH_FANOUT_ROUNDS:-3}
tput_clients=${PUSH_TPUT_CLIENTS:-2000}
tput_seconds=${PUSH_TPUT_SECONDS:-8}
tput_rate=${PUSH_TPUT_RATE:-400}
sb_seconds=${PUSH_STANDBY_SECONDS:-15}
sb_rate=${PUSH_STANDBY_RATE:-50}
sb_sat_seconds=${PUSH_STANDBY_SAT_SECONDS:-10}
only=${PUSH_ONLY:-}

out=${PUSH_BENCH_DIR:-$top/bench/out/push}
dir=$out/cluster
sbdir=$out/standby
work=$out/work
started=$(date +%s)
log() { printf '[push %4ds] %s\n' $(($(date +%s) - started)) "$*" >&2; }
die() { echo "push_bench: $*" >&2; exit 1; }

mkdir -p "$out"
chmod 755 "$out"
if [ -f "$dir/data/postmaster.pid" ]; then cluster_stop "$dir"; fi
if [ -f "$sbdir/data/postmaster.pid" ]; then cluster_stop "$sbdir"; fi
rm -rf "$dir" "$sbdir" "$work"
mkdir -p "$work"

cc -O2 -Wall -o "$work/ws_bench" "$top/bench/ws_bench.c" -lwebsockets ||
	die "could not build ws_bench (libwebsockets-dev installed?)"

port=$(free_port)
push_port=$(free_port)
bench_pid=
bench2_pid=
pgbench_pid=
# (every step may fail, e.g. a client that already exited: the clusters
# must still stop)
cleanup() {
	local pid
	for pid in "$bench_pid" "$bench2_pid" "$pgbench_pid"; do
		[ -z "$pid" ] || kill "$pid" 2>/dev/null || true
	done
	[ "${PUSH_KEEP:-0}" = 1 ] && return
	cluster_stop "$sbdir"
	cluster_stop "$dir"
}
trap cleanup EXIT
log "cluster in $dir, port $port, listener 127.0.0.1:$push_port"
cluster_start "$dir" "$port" \
	"shared_preload_libraries = 'livekpi'" \
	"wal_level = logical" \
	"livekpi.listen_addresses = '127.0.0.1'" \
	"livekpi.port = $push_port" \
	"livekpi.max_clients = 12000" \
	"livekpi.flush_interval = 0" \
	"max_connections = 50" \
	"track_commit_timestamp = on"

PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres)
PGBENCH=(pgbench -h "$dir" -p "$port" -U postgres -n)
q() { "${PSQL[@]}" -c "$1"; }
status() { q "SELECT $1 FROM livekpi.status"; }
now() { date +%s.%N; }

# wait_for COMMAND SECONDS WHAT: poll COMMAND every 50 ms until it succeeds.
# ws_bench exits once it wrote its last round, which can fall between a
# check and the liveness test: a dead ws_bench is a failure only if COMMAND
# still fails after it exited.
wait_for() {
	local deadline
	deadline=$(($(date +%s) + $2))
	until eval "$1"; do
		[ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $3"
		if [ -n "$bench_pid" ] && ! kill -0 "$bench_pid" 2>/dev/null; then
			eval "$1" && break
			die "ws_bench died waiting for $3"
		fi
		sleep 0.05
	done
}

# --- setup -------------------------------------------------------------------
q "CREATE EXTENSION livekpi"
q "CREATE TABLE public.bookings (
	id bigserial PRIMARY KEY,
	property_id int NOT NULL,
	check_in date NOT NULL,
	check_out date NOT NULL,
	total_amount numeric(12,2),
	status text)"
q "CREATE TABLE public.expenses (
	id bigserial PRIMARY KEY,
	property_id int NOT NULL,
	incurred_on date NOT NULL,
	amount numeric(12,2),
	category text,
	approval_status text)"
q "SELECT livekpi.track_bookings('public.bookings')" >/dev/null
q "SELECT livekpi.track_expenses('public.expenses')" >/dev/null
q "INSERT INTO livekpi.properties (property_id, units)
   SELECT g, 10 FROM generate_series(1, 100) g" >/dev/null
token=$(q "SELECT livekpi.create_token('push bench')")
wait_for '[ "$(status "push_state" 2>/dev/null)" = listening ]' 30 "the push worker"
push_pid=$(status push_pid)
log "push worker pid $push_pid"

cat > "$work/insert.sql" <<'EOF'
\set p random(1, 100)
\set d random(0, 364)
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (:p, DATE '2026-01-01' + :d, DATE '2026-01-01' + :d + 3, 360.00, 'confirmed');
EOF

# the throughput stream: every transaction hits the same property-month, so
# a batch is one property_kpis row and one portfolio_kpis row however many
# transactions it holds (small deltas)
cat > "$work/insert_one.sql" <<'EOF'
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
VALUES (1, DATE '2026-03-10', DATE '2026-03-12', 200.00, 'confirmed');
EOF

BENCH=("$work/ws_bench" --host 127.0.0.1 --port "$push_port" --token "$token")

# start_bench NAME ARGS...: ws_bench in the background, waits for readiness
start_bench() {
	local name=$1
	shift
	rm -f "$work/$name".{ready,target,out}
	"${BENCH[@]}" --ready-file "$work/$name.ready" --target-file "$work/$name.target" \
		--out "$work/$name.out" "$@" 2>"$work/$name.err" &
	bench_pid=$!
	wait_for '[ -f "$work/$name.ready" ]' 150 "$name clients to connect"
}

# end_round NAME N: everything committed so far is applied; ws_bench waits
# until all clients saw the newest seq and writes its N-th line
end_round() {
	local name=$1 n=$2
	[ "$(q "SELECT livekpi.sync('60s')")" = t ] || die "livekpi.sync() timed out"
	status last_seq > "$work/$name.target"
	kill -USR1 "$bench_pid"
	wait_for '[ -f "$work/$name.out" ] && [ "$(wc -l < "$work/$name.out")" -ge '"$n"' ]' 60 "$name round $n"
}

stop_bench() {
	kill "$bench_pid" 2>/dev/null || true
	wait "$bench_pid" 2>/dev/null || true
	bench_pid=
}

# field JSON KEY: a top-level number or string of a one-line JSON object
field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

set_flush() {
	q "ALTER SYSTEM SET livekpi.flush_interval = $1" >/dev/null
	q "SELECT pg_reload_conf()" >/dev/null
	local want=$1
	[ "$want" = 0 ] || want="${want}ms"
	wait_for '[ "$(q "SHOW livekpi.flush_interval")" = "$want" ]' 10 "flush_interval $1"
	# the apply worker reloads on its own SIGHUP: give it one round trip
	q "SELECT livekpi.sync('10s')" >/dev/null
}

# --- commit -> receive latency ------------------------------------------------
# committed_at of a delta is the newest commit of its batch, so each
# transaction is matched to the first delta whose committed_at is not older
# than its own commit timestamp (track_commit_timestamp: the same WAL commit
# time the apply worker publishes); p50/p99 are over transactions, and the
# per-delta figures are reported beside them.
latency() { # NAME FLUSH_MS
	local name=$1 flush=$2 lo tps
	set_flush "$flush"
	lo=$(q "SELECT coalesce(max(id), 0) FROM public.bookings")
	start_bench "$name" --clients 1 --drain-timeout 30 --dump "$work/$name.deltas"
	log "$name: pgbench -R $lat_rate for $lat_seconds s"
	"${PGBENCH[@]}" -c 2 -j 2 -R "$lat_rate" -T "$lat_seconds" -f "$work/insert.sql" postgres \
		> "$work/$name.pgbench" 2>&1 || { cat "$work/$name.pgbench" >&2; die "pgbench failed"; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/$name.pgbench")
	end_round "$name" 1
	stop_bench
	q "SELECT round(extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint
	   FROM public.bookings WHERE id > $lo" > "$work/$name.commits"
	python3 - "$name" "$flush" "${tps:-0}" "$work/$name.commits" "$work/$name.deltas" \
		"$(head -1 "$work/$name.out")" <<'PY'
import bisect, json, sys
name, flush, tps, commits_f, deltas_f, client = sys.argv[1:7]
client = json.loads(client)
commits = sorted(int(x) for x in open(commits_f) if x.strip())
deltas = [tuple(int(v) for v in l.split()) for l in open(deltas_f) if l.strip()]
deltas.sort(key=lambda d: d[2])                 # seq order = commit order
keys = [d[0] for d in deltas]
lat, missed = [], 0
for c in commits:
    i = bisect.bisect_left(keys, c)
    if i == len(keys):
        missed += 1
    else:
        lat.append((deltas[i][1] - c) / 1000.0)
lat.sort()
def pct(v, p):
    return round(v[max(0, min(len(v) - 1, int(p * len(v) + 0.999999) - 1))], 3) if v else None
print(json.dumps({
    "name": name, "flush_interval_ms": int(flush),
    "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": pct(lat, 1.0),
    "n": len(lat), "missed": missed, "tps": round(float(tps), 1),
    "deltas": len(deltas),
    "delta_p50_ms": client.get("p50_ms"), "delta_p99_ms": client.get("p99_ms"),
    "drained": client.get("drained"),
}))
PY
	log "$name client: $(head -1 "$work/$name.out")"
}

if [ -z "$only" ]; then
latency latency_flush0 0
latency latency_flush500 500
fi
set_flush 0

# --- fan-out ------------------------------------------------------------------
# fanout NAME PUSH_PORT PID CATCHUP: N clients on the listener at PUSH_PORT
# (push worker PID); each round commits one booking on the primary, then
# CATCHUP (a command) waits until that listener's node has the batch, then
# ws_bench waits until every client received it
fanout() {
	local name=$1 fport=$2 fpid=$3 catchup=$4 rss_kb hwm_kb line reached_all r
	log "$name: connecting $fan_clients clients"
	BENCH=("$work/ws_bench" --host 127.0.0.1 --port "$fport" --token "$token")
	start_bench "$name" --clients "$fan_clients" --inflight 400 --hold --drain-timeout 30 \
		--hello-extra '"views":["property_kpis","portfolio_kpis"],"properties":[1,2,3]'
	log "$name: $(cat "$work/$name.ready")"
	for r in $(seq 1 "$fan_rounds"); do
		q "INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
		   VALUES ($(((r - 1) % 3 + 1)), DATE '2026-02-01', DATE '2026-02-04', 450.00, 'confirmed')"
		[ "$(q "SELECT livekpi.sync('60s')")" = t ] || die "livekpi.sync() timed out"
		"$catchup"
		status last_seq > "$work/$name.target"
		kill -USR1 "$bench_pid"
		wait_for '[ -f "$work/$name.out" ] && [ "$(wc -l < "$work/$name.out")" -ge '"$r"' ]' 60 "$name round $r"
		log "$name round $r: $(tail -1 "$work/$name.out")"
	done
	rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$fpid/status")
	hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$fpid/status")
	stop_bench
	BENCH=("$work/ws_bench" --host 127.0.0.1 --port "$push_port" --token "$token")
	line=$(tail -1 "$work/$name.out")
	reached_all=true
	while read -r l; do
		[ "$(field "$l" drained)" = True ] || reached_all=false
	done < "$work/$name.out"
	printf '{"name":"%s","clients":%s,"live":%s,"rounds":%s,"all_reached":%s,"p50_ms":%s,"p99_ms":%s,"max_ms":%s,"n":%s,"push_rss_mb":%s,"push_hwm_mb":%s,"connect_s":%s}\n' \
		"$name" "$fan_clients" "$(field "$line" live)" "$fan_rounds" "$reached_all" \
		"$(field "$line" p50_ms)" "$(field "$line" p99_ms)" "$(field "$line" max_ms)" "$(field "$line" n)" \
		"$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k / 1024}')" \
		"$(awk -v k="$hwm_kb" 'BEGIN {printf "%.1f", k / 1024}')" \
		"$(field "$line" connect_s)"
}

if [ -z "$only" ] || [ "$only" = fanout ]; then
fanout fanout "$push_port" "$push_pid" :
# the server notices the closed sockets on its own; wait until it has
wait_for '[ "$(status clients)" = 0 ]' 30 "the fan-out clients to be gone"
fi

# --- push throughput ----------------------------------------------------------
if [ -z "$only" ]; then
# A rate-limited stream of one-row transactions makes many small batches
# (flush_interval 0); every batch goes to every client, so the push worker
# is offered batches/s x clients messages/s and sends what it can (a client
# that falls behind gets coalesced deltas, i.e. fewer messages).
log "throughput: $tput_clients clients, pgbench -R $tput_rate"
start_bench tput --clients "$tput_clients" --no-record --drain-timeout 60
"${PGBENCH[@]}" -c 2 -j 2 -R "$tput_rate" -T $((tput_seconds + 4)) -f "$work/insert_one.sql" postgres \
	> "$work/tput.pgbench" 2>&1 &
pgbench_pid=$!
# warm-up: the stream has reached the clients
wait_for '[ "$(status messages_sent)" -gt $((tput_clients * 50)) ]' 20 "the throughput stream"
sleep 1
IFS='|' read -r m0 b0 y0 t0 <<<"$(q "SELECT messages_sent, batches, bytes_sent, extract(epoch FROM clock_timestamp()) FROM livekpi.status")"
sleep "$tput_seconds"	# the measurement window itself
IFS='|' read -r m1 b1 y1 t1 <<<"$(q "SELECT messages_sent, batches, bytes_sent, extract(epoch FROM clock_timestamp()) FROM livekpi.status")"
wait "$pgbench_pid" || { cat "$work/tput.pgbench" >&2; die "pgbench failed"; }
pgbench_pid=
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/tput.pgbench")
end_round tput 1
stop_bench
line=$(head -1 "$work/tput.out")
python3 - "$m0" "$m1" "$b0" "$b1" "$y0" "$y1" "$t0" "$t1" "$tput_clients" "${tps:-0}" "$line" <<'PY'
import json, sys
m0, m1, b0, b1, y0, y1 = (int(x) for x in sys.argv[1:7])
t0, t1 = float(sys.argv[7]), float(sys.argv[8])
clients, tps, client = int(sys.argv[9]), float(sys.argv[10]), json.loads(sys.argv[11])
w = t1 - t0
msgs = m1 - m0
span = client.get("delta_span_s") or 0
print(json.dumps({
    "name": "push_throughput",
    "msgs_per_s": round(msgs / w),
    "clients": clients,
    "window_s": round(w, 2),
    "batches_per_s": round((b1 - b0) / w, 1),
    "offered_msgs_per_s": round((b1 - b0) / w * clients),
    "avg_msg_bytes": round((y1 - y0) / msgs) if msgs else None,
    "tps": round(tps, 1),
    "client_deltas": client.get("deltas"),
    "client_deltas_per_s": round(client["deltas"] / span) if span else None,
    "all_reached": client.get("drained"),
}))
PY
log "throughput client: $line"
fi

# --- standby: a batch's arrival at a standby client minus at a primary client --
if [ -z "$only" ] || [ "$only" = standby ] || [ "$only" = standby_fanout ]; then
sb_port=$(free_port)
sb_push_port=$(free_port)
log "standby: pg_basebackup into $sbdir, port $sb_port, listener 127.0.0.1:$sb_push_port"
mkdir -p "$sbdir"
[ "$(id -u)" = 0 ] && chown postgres: "$sbdir"
as_pg pg_basebackup -h "$dir" -p "$port" -U postgres -D "$sbdir/data" -R -X stream \
	--checkpoint fast --no-sync >/dev/null || die "pg_basebackup failed"
{
	echo "port = $sb_port"
	echo "unix_socket_directories = '$sbdir'"
	echo "livekpi.port = $sb_push_port"
	echo "hot_standby = on"
	echo "hot_standby_feedback = on"
} | as_pg tee -a "$sbdir/data/postgresql.conf" >/dev/null
as_pg pg_ctl -D "$sbdir/data" -l "$sbdir/server.log" -w -t 60 start >/dev/null || die "standby did not start"
SBPSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$sbdir" -p "$sb_port" -U postgres -d postgres)
wait_for '[ "$("${SBPSQL[@]}" -c "SELECT push_state FROM livekpi.status" 2>/dev/null)" = listening ]' 60 "the standby's push worker"
set_flush 0
# standby_round NAME LOAD RATE SECONDS: RATE 0 = pgbench unthrottled (saturation)
standby_round() {
	local name=$1 load=$2 rate=$3 seconds=$4 tps replay_lag
	local rate_arg=(-c 1 -j 1 -R "$rate")
	[ "$rate" = 0 ] && rate_arg=(-c 4 -j 2)
	start_bench "${name}_p" --clients 1 --drain-timeout 60 --dump "$work/${name}_p.deltas"
	primary_bench=$bench_pid
	rm -f "$work/${name}_s".{ready,target,out}
	"$work/ws_bench" --host 127.0.0.1 --port "$sb_push_port" --token "$token" --clients 1 --drain-timeout 60 \
		--dump "$work/${name}_s.deltas" --ready-file "$work/${name}_s.ready" \
		--target-file "$work/${name}_s.target" --out "$work/${name}_s.out" 2>"$work/${name}_s.err" &
	bench2_pid=$!
	wait_for '[ -f "$work/${name}_s.ready" ]' 60 "the standby client to connect"
	log "$name: pgbench ${rate_arg[*]} for $seconds s"
	"${PGBENCH[@]}" "${rate_arg[@]}" -T "$seconds" -f "$work/insert.sql" postgres \
		> "$work/$name.pgbench" 2>&1 || { cat "$work/$name.pgbench" >&2; die "pgbench failed"; }
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/$name.pgbench")
	[ "$(q "SELECT livekpi.sync('120s')")" = t ] || die "livekpi.sync() timed out"
	status last_seq > "$work/${name}_p.target"
	status last_seq > "$work/${name}_s.target"
	kill -USR1 "$primary_bench" "$bench2_pid"
	bench_pid=	# each ws_bench exits once it has written its line
	wait_for '[ -f "$work/${name}_p.out" ] && [ -f "$work/${name}_s.out" ]' 120 "both $name clients"
	wait "$primary_bench" 2>/dev/null || true
	wait "$bench2_pid" 2>/dev/null || true
	bench2_pid=
	replay_lag=$("${SBPSQL[@]}" -c "SELECT replay_lag_ms FROM livekpi.status" 2>/dev/null || echo null)
	python3 - "$work/${name}_p.deltas" "$work/${name}_s.deltas" "${tps:-0}" "$rate" "${replay_lag:-null}" \
		"$name" "$load" <<'PY'
import json, sys
def load(f):
    return {int(l.split()[2]): int(l.split()[1]) for l in open(f) if l.strip()}
p, s = load(sys.argv[1]), load(sys.argv[2])
d = sorted((s[k] - p[k]) / 1000.0 for k in p if k in s)
def pct(v, q):
    return round(v[max(0, min(len(v) - 1, int(q * len(v) + 0.999999) - 1))], 3) if v else None
print(json.dumps({
    "name": sys.argv[6], "load": sys.argv[7], "rate": int(sys.argv[4]),
    "tps": round(float(sys.argv[3]), 1),
    "p50_ms": pct(d, 0.5), "p99_ms": pct(d, 0.99), "max_ms": pct(d, 1.0), "min_ms": pct(d, 0.0),
    "n": len(d), "primary_batches": len(p), "standby_batches": len(s),
    "missing_at_standby": len([k for k in p if k not in s]),
    "replay_lag_ms_after": None if sys.argv[5] in ("", "null") else int(sys.argv[5]),
}))
PY
}
if [ "$only" != standby_fanout ]; then
standby_round standby_latency light "$sb_rate" "$sb_seconds"
standby_round standby_latency_sat saturation 0 "$sb_sat_seconds"
fi
# fan-out of one standby: the same clients on the standby's listener; a
# round waits for the standby to replay the batch before it is timed from
# committed_at (so the figure includes replay)
sb_push_pid=$("${SBPSQL[@]}" -c "SELECT push_pid FROM livekpi.status")
standby_replayed() {
	wait_for '[ "$("${SBPSQL[@]}" -c "SELECT last_seq FROM livekpi.status")" = "$(status last_seq)" ]' 30 \
		"the standby to replay the batch"
}
fanout standby_fanout "$sb_push_port" "$sb_push_pid" standby_replayed
cluster_stop "$sbdir"
fi
log "done in $(($(date +%s) - started)) s"
