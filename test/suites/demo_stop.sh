#!/usr/bin/env bash
# test/suites/demo_stop.sh WORK: `make demo` run without a terminal, the way
# a supervisor runs it (setsid, stdin from /dev/null, started in the
# background of a non-interactive shell, which leaves SIGINT ignored), stops
# everything it started on SIGINT and on SIGTERM to its process group: the
# cluster (and with it the listener), the simulator, the summary loop
# (issue 11 item 11).
#
# For each signal: start the demo detached with a small portfolio, await
# the dashboard URL it prints and an answer from it, send the signal to the
# group, then await the end of every process of the group, the cluster's
# postmaster.pid gone and the listener's port closed.  No timing is checked;
# the waits are bounded only so that a hang fails instead of blocking.
set -euo pipefail
work=${1:?usage: test/suites/demo_stop.sh WORK}
. "$work/test/lib.sh"

tmp=$(mktemp -d /tmp/livekpi-demo-stop.XXXXXX)
pgid=""
cluster=""
cleanup() {
	[ -n "$pgid" ] && kill -KILL -- "-$pgid" 2>/dev/null || true
	[ -n "$cluster" ] && [ -f "$cluster/data/postmaster.pid" ] && cluster_stop "$cluster"
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "demo_stop suite: FAIL: $*" >&2
	[ -f "$tmp/demo.log" ] && { echo "--- demo output (tail)" >&2; tail -n 30 "$tmp/demo.log" >&2; }
	exit 1
}

# await SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
await() {
	local limit=$1 what=$2
	shift 2
	local end=$((SECONDS + limit))
	until "$@"; do
		[ $SECONDS -lt $end ] || fail "timed out after ${limit}s waiting for $what"
		sleep 0.2
	done
}

http_code() {
	python3 - "$1" <<'PY' 2>/dev/null || echo 0
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except Exception as e:
    print(getattr(e, 'code', 0))
PY
}

port_closed() {
	! python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2)' "$1" 2>/dev/null
}

group_gone() { ! pgrep -g "$1" >/dev/null; }

run_demo() {
	local sig=$1
	: > "$tmp/demo.log"
	echo "demo_stop suite: make demo under setsid without a terminal, then SIG$sig to its group"
	# A non-interactive shell's background job: SIGINT and SIGQUIT ignored,
	# as under a supervisor.  setsid makes it a group of its own.
	bash -c 'setsid make -C "$1" -s demo DEMO_PROPERTIES=5 DEMO_YEARS=1 DEMO_RATE=20 </dev/null >"$2" 2>&1 &
		echo $!' _ "$work" "$tmp/demo.log" > "$tmp/pid"
	local pid
	pid=$(cat "$tmp/pid")
	await 30 "the demo's process group" test -n "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')"
	pgid=$(ps -o pgid= -p "$pid" | tr -d ' ')
	[ "$pgid" = "$pid" ] || fail "setsid did not make a new process group ($pgid, $pid)"
	# the condition of the bug: make (and what it starts) ignores SIGINT
	local ign
	ign=$(sed -n 's/^SigIgn:[[:space:]]*//p' "/proc/$pid/status")
	[ $((0x$ign & 2)) != 0 ] || fail "make does not ignore SIGINT: the test would not show the bug"

	await 600 "the dashboard URL" grep -q 'dashboard: .*http://127.0.0.1:[0-9]*/#token=' "$tmp/demo.log"
	local url http_port
	url=$(grep -o 'http://127.0.0.1:[0-9]*/#token=[A-Za-z0-9_-]*' "$tmp/demo.log" | head -n 1)
	http_port=$(sed 's|http://127.0.0.1:\([0-9]*\)/.*|\1|' <<<"$url")
	await 60 "the dashboard to answer" test "$(http_code "http://127.0.0.1:$http_port/")" = 200
	cluster=$(sed -n 's/.*(files in \(.*\)).*/\1/p' "$tmp/demo.log" | head -n 1)
	case $cluster in /*) ;; *) cluster=$work/$cluster ;; esac
	[ -f "$cluster/data/postmaster.pid" ] || fail "no postmaster.pid in $cluster/data"
	await 60 "the simulator" pgrep -g "$pgid" -x pgbench >/dev/null

	kill "-$sig" -- "-$pgid"
	await 120 "every process of the demo's group to end" group_gone "$pgid"
	await 60 "the cluster to stop" test ! -f "$cluster/data/postmaster.pid"
	await 60 "the listener to close" port_closed "$http_port"
	pgid=""
	grep -q 'stopping the demo cluster' "$tmp/demo.log" || fail "the demo did not say it stopped the cluster"
	[ ! -e "$cluster" ] || fail "the demo cluster's files were not removed ($cluster)"
	cluster=""
}

run_demo INT
run_demo TERM
echo "demo_stop suite: ok"
