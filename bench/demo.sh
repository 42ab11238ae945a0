#!/usr/bin/env bash
# bench/demo.sh: `make demo`.  Starts a throwaway cluster in .demo/ on free
# ports, loads a realistic portfolio (bench/datagen.sql), tracks it, prints
# the dashboard URL and the commands to try, then runs the live write
# simulator (bench/simulator.sql) until Ctrl-C (or SIGINT, SIGTERM or SIGHUP
# to it or its process group, with or without a terminal), which stops
# everything this script started and removes the cluster.
#
#   ./bench/demo.sh [--properties N] [--years N] [--rate TX_PER_S] [--keep]
#
# The same settings come from the environment as DEMO_PROPERTIES (100),
# DEMO_YEARS (2), DEMO_RATE (5 transactions per second) and DEMO_KEEP=1
# (keep the cluster's files after Ctrl-C), e.g. `make demo DEMO_RATE=50`.
set -euo pipefail
# Started in the background by a non-interactive shell (a supervisor,
# `setsid make demo </dev/null &`), this script inherits SIGINT ignored, and
# bash cannot trap a signal ignored at entry: Ctrl-C or a SIGINT to the
# process group would leave the cluster running.  Start over once with the
# default dispositions so that the traps below always work.
# (env --default-signal: coreutils 8.31 and later, Debian 11 and later.)
if [ -z "${LIVEKPI_DEMO_SIGNALS_RESET:-}" ] && env --default-signal=INT true 2>/dev/null; then
	export LIVEKPI_DEMO_SIGNALS_RESET=1
	exec env --default-signal=INT,TERM,HUP bash "$0" "$@"
fi
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/lib.sh"

properties=${DEMO_PROPERTIES:-100}
years=${DEMO_YEARS:-2}
rate=${DEMO_RATE:-5}
keep=${DEMO_KEEP:-0}
while [ $# -gt 0 ]; do
	case $1 in
	--properties) properties=$2; shift 2 ;;
	--years) years=$2; shift 2 ;;
	--rate) rate=$2; shift 2 ;;
	--keep) keep=1; shift ;;
	-h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "demo: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
done

if [ ! -f "$($PG_CONFIG --pkglibdir)/livekpi.so" ]; then
	echo "demo: livekpi is not installed for $PG_CONFIG; run 'make demo' (it builds and installs first)" >&2
	exit 1
fi

bold="" plain=""
if [ -t 1 ]; then
	bold=$(tput bold 2>/dev/null || true)
	plain=$(tput sgr0 2>/dev/null || true)
fi
say() { printf '%s==>%s %s\n' "$bold" "$plain" "$*"; }

# One folder per demo under .demo/, so that two demos never meet.  The
# postgres user must reach it (initdb refuses root); when it cannot (a
# checkout under /root) or the socket path would be too long, the cluster
# goes to /tmp and .demo/ holds a link to it.
mkdir -p "$top/.demo"
run=$(mktemp -d "$top/.demo/run.XXXXXX")
chmod 755 "$run"
dir=$run
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$run" 2>/dev/null || [ ${#run} -gt 80 ]; then
	dir=$(mktemp -d /tmp/livekpi-demo.XXXXXX)
	chmod 755 "$dir"
	ln -s "$dir" "$run/cluster"
fi
port=$(free_port)
http_port=$(free_port)
children=()

cleanup() {
	trap - EXIT INT TERM
	echo
	for pid in "${children[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	say "stopping the demo cluster"
	cluster_stop "$dir"
	if [ "$keep" = 1 ]; then
		say "kept its files in $dir"
	else
		rm -rf "$run"
		[ "$dir" = "$run" ] || rm -rf "$dir"
		rmdir "$top/.demo" 2>/dev/null || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

say "starting PostgreSQL on 127.0.0.1:$port (files in ${dir#$top/})"
cluster_start "$dir" "$port" \
	"livekpi.listen_addresses = '127.0.0.1'" \
	"livekpi.port = $http_port" \
	"livekpi.flush_interval = 500"

PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
q() { "${PSQL[@]}" -c "$1"; }

say "loading $properties properties with $years years of seasonal bookings and expenses"
# datagen prints "NOTICE:  datagen: bookings 35 %": show it as one line.
"${PSQL[@]}" -v properties="$properties" -v years="$years" -f "$top/bench/datagen.sql" 2>&1 |
	while IFS= read -r line; do
		case $line in
		*"datagen: "*)
			if [ -t 1 ]; then printf '\r    %-60s' "${line##*datagen: }"; else echo "    ${line##*datagen: }"; fi ;;
		*) printf '\n%s\n' "$line" ;;
		esac
	done
[ -t 1 ] && echo
q "SELECT 1 FROM public.bookings LIMIT 1" >/dev/null

say "tracking public.bookings and public.expenses"
q "CREATE EXTENSION livekpi"
q "SELECT livekpi.track_bookings('public.bookings')" >/dev/null
q "SELECT livekpi.track_expenses('public.expenses')" >/dev/null
q "INSERT INTO livekpi.properties (property_id, units)
   SELECT id, units FROM public.properties
   ON CONFLICT (property_id) DO UPDATE SET units = EXCLUDED.units" >/dev/null
q "SELECT livekpi.sync('60s')" >/dev/null

echo
psql -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "
	SELECT month, properties, occupancy, room_revenue, adr, revpar, cancellation_rate, approved_expenses, noi
	FROM livekpi.portfolio_kpis WHERE month <= date_trunc('month', current_date)
	ORDER BY month DESC LIMIT 3"

have_tokens=$(q "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'livekpi' AND p.proname = 'create_token'")
tail_bin=""
for c in "$($PG_CONFIG --bindir)/livekpi-tail" "$top/livekpi-tail" "$(command -v livekpi-tail || true)"; do
	[ -n "$c" ] && [ -x "$c" ] && { tail_bin=$c; break; }
done

say "try it"
if [ "$have_tokens" != 0 ]; then
	token=$(q "SELECT livekpi.create_token('demo')")
	echo "    dashboard:     ${bold}http://127.0.0.1:$http_port/#token=$token${plain}"
	if [ -n "$tail_bin" ]; then
		echo "    live deltas:   $tail_bin --url ws://127.0.0.1:$http_port/v1/stream --token $token"
	fi
else
	echo "    dashboard:     not available: the WebSocket listener is not built yet in this tree"
fi
echo "    psql:          psql -h 127.0.0.1 -p $port -U postgres"
echo "                   SELECT * FROM livekpi.property_kpis WHERE property_id = 1 ORDER BY month DESC LIMIT 3;"
echo "                   SELECT * FROM livekpi.status;"
echo "    raw changes:   pg_recvlogical -h 127.0.0.1 -p $port -U postgres -d postgres --slot demo_json --create-slot -P livekpi"
echo "                   pg_recvlogical -h 127.0.0.1 -p $port -U postgres -d postgres --slot demo_json --start -o format=json -f -"
echo "                   (drop it afterwards: --slot demo_json --drop-slot)"
echo "    server log:    ${dir#$top/}/server.log"
echo

say "simulating about $rate writes/s (new bookings, date changes, cancellations, expenses); Ctrl-C stops the demo"
# A one-line KPI summary every 15 s beside pgbench's own progress line.
(
	trap 'kill $nap 2>/dev/null; exit 0' TERM
	while :; do
		sleep 15 &
		nap=$!
		wait $nap
		"${PSQL[@]}" -F ' ' -c "
			SELECT 'this month: revenue ' || coalesce(k.room_revenue, 0) || ', occupancy '
			       || coalesce(round(k.occupancy * 100, 1), 0) || ' %, arrivals ' || coalesce(k.arrivals, 0)
			       || ' | apply lag ' || coalesce(to_jsonb(s)->>'lag_ms', '?') || ' ms'
			FROM livekpi.status s
			LEFT JOIN livekpi.portfolio_kpis k ON k.month = date_trunc('month', current_date)::date" \
			2>/dev/null | sed 's/^/    /' || true
	done
) &
children+=($!)
# pgbench runs in the background and the script waits for it, so that
# Ctrl-C (or a SIGTERM to this script alone) runs the cleanup at once.
pgbench -h 127.0.0.1 -p "$port" -U postgres -n -c 2 -j 2 -R "$rate" -T 31536000 -P 15 --max-tries=10 \
	-D props="$properties" -f "$top/bench/simulator.sql" postgres \
	> >(grep --line-buffered -v -E '^(pgbench \(|transaction type|scaling factor|query mode|number of|maximum number|duration|latency|rate limit|initial connection|tps =)') 2>&1 &
children+=($!)
wait $! || true
