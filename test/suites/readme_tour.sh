#!/usr/bin/env bash
# test/suites/readme_tour.sh WORK: the README's "Five-minute tour" works as
# written on a Debian-managed cluster (issue 11, "Done when").
#
# Needs root and Debian's postgresql-common (pg_createcluster, pg_ctlcluster,
# pg_dropcluster) with the extension installed into the system PostgreSQL 15
# (`make test` does that first); otherwise it says "skipped" and exits 0.
#
# Everything the user is told to type is taken from README.md's tour section,
# so that a wrong README fails this suite:
#  * the first ```sh block (createdb, the conf.d file, pg_ctlcluster restart,
#    psql) runs as root with only the cluster's name put in for `main`
#    (and PGCLUSTER pointing Debian's pg_wrapper at it); its `psql` line
#    reads every ```sql block of the tour (tables, sample rows, tracking,
#    queries), stopping at the first error;
#  * livekpi.sync() is true, livekpi.verify() is empty, and the sample rows
#    give the figures they must in America/New_York;
#  * the token from the tour's create_token() call opens the dashboard URL
#    of the tour, the curl of /healthz says ok, and the livekpi-tail line
#    (found on PATH) prints welcome and snapshot, then the delta of a new
#    booking, until Ctrl-C;
#  * the pg_recvlogical lines (create slot, stream JSON, drop slot) work as
#    the postgres user.
# A throwaway cluster 15/lktour_PID on free ports is created and always
# dropped; no other cluster is touched.  Exits non-zero on any failure.
set -euo pipefail
work=${1:?usage: test/suites/readme_tour.sh WORK}

if [ "$(id -u)" != 0 ]; then
	echo "readme_tour suite: skipped (needs root: it creates a Debian-managed cluster with pg_createcluster)"
	exit 0
fi
for cmd in pg_createcluster pg_ctlcluster pg_dropcluster curl; do
	if ! command -v "$cmd" >/dev/null; then
		echo "readme_tour suite: skipped ($cmd not found: needs Debian's postgresql-common and curl)"
		exit 0
	fi
done
if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || [ ! -f /usr/share/postgresql/15/extension/livekpi.control ]; then
	echo "readme_tour suite: skipped (livekpi is not installed into Debian's PostgreSQL 15; run make install)"
	exit 0
fi

. "$work/test/lib.sh"
readme=$work/README.md
name=lktour_$$
cluster=15/$name
created=0
tmp=$(mktemp -d /tmp/livekpi-readme-tour.XXXXXX)
chmod 755 "$tmp"
bgpids=()

cleanup() {
	local pid
	for pid in "${bgpids[@]}"; do kill "$pid" 2>/dev/null || true; done
	if [ "$created" = 1 ]; then
		pg_dropcluster --stop 15 "$name" >/dev/null 2>&1 ||
			echo "readme_tour suite: WARNING: pg_dropcluster --stop 15 $name failed" >&2
		# pg_dropcluster leaves conf.d/ when it holds files it did not make
		# (the README's livekpi.conf and ours); the name is ours alone.
		[ -n "$name" ] && rm -rf "/etc/postgresql/15/$name"
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "readme_tour suite: FAIL: $*" >&2
	local log=/var/log/postgresql/postgresql-15-$name.log
	[ -f "$log" ] && { echo "--- $log (tail)" >&2; tail -n 30 "$log" >&2; }
	exit 1
}

# --- the tour, out of README.md
awk -v dir="$tmp" '
	/^## / { intour = ($0 ~ /^## Five-minute tour/) }
	!intour { next }
	/^```/ {
		if (!inblock) { inblock = 1; n++; lang = substr($0, 4); file = dir "/block" n "." (lang == "" ? "txt" : lang); printf "" > file; next }
		inblock = 0; close(file); next
	}
	inblock { print > file }
	{ if (!inblock) print > (dir "/prose.txt") }
' "$readme"
mapfile -t sh_blocks < <(ls "$tmp"/block*.sh 2>/dev/null | sort -V)
mapfile -t sql_blocks < <(ls "$tmp"/block*.sql 2>/dev/null | sort -V)
[ "${#sh_blocks[@]}" -ge 3 ] || fail "README's tour has ${#sh_blocks[@]} sh blocks (expected set-up, tools, pg_recvlogical)"
[ "${#sql_blocks[@]}" -ge 1 ] || fail "README's tour has no sql block"
setup=${sh_blocks[0]}
tools=${sh_blocks[1]}
recv=${sh_blocks[2]}

pgport=$(free_port)
lport=$(free_port)
while [ "$lport" = "$pgport" ]; do lport=$(free_port); done

# What must be substituted: the cluster's name for `main`, the listener's
# port for 8089, the token for lk_….
subst() {
	sed -e "s/15 main\b/15 $name/g; s#15/main/#15/$name/#g; s/postgresql@15-main/postgresql@15-$name/g" \
		-e "s/127\.0\.0\.1:8089/127.0.0.1:$lport/g" \
		-e "s/lk_…/${token:-lk_…}/g"
}

echo "readme_tour suite: pg_createcluster 15 $name --port $pgport (listener on $lport)"
created=1
pg_createcluster 15 "$name" --port "$pgport" -- --no-sync >"$tmp/createcluster.log" 2>&1 ||
	{ cat "$tmp/createcluster.log"; fail "pg_createcluster"; }
confdir=/etc/postgresql/15/$name
[ -d "$confdir/conf.d" ] || fail "$confdir/conf.d does not exist (the README writes there)"
# The one setting the README does not give: another cluster may hold 8089.
echo "livekpi.port = $lport" >"$confdir/conf.d/zz-readme-tour.conf"
# The user's cluster is running before the tour begins.
pg_ctlcluster 15 "$name" start || fail "pg_ctlcluster 15 $name start"

# The set-up block, redirected to our cluster and never to another one.
subst <"$setup" >"$tmp/setup.sh"
grep -qE '(^|[^[:alnum:]_])main([^[:alnum:]_]|$)' "$tmp/setup.sh" &&
	{ cat "$tmp/setup.sh"; fail "the set-up block names cluster main in a form this suite cannot redirect"; }
grep -q "/etc/postgresql/15/$name/" "$tmp/setup.sh" ||
	fail "the set-up block does not write the settings under /etc/postgresql/15/main/"
grep -Eq "^[^#]*pg_ctlcluster 15 $name restart" "$tmp/setup.sh" ||
	fail "the set-up block does not restart the cluster with pg_ctlcluster"
[ "$(grep -c "psql -d mydb'" "$tmp/setup.sh")" = 1 ] ||
	fail "the set-up block has no single \"psql -d mydb'\" line to type the SQL into"
{
	echo '\set QUIET on'
	echo '\set ON_ERROR_STOP on'
	echo '\pset pager off'
	cat "${sql_blocks[@]}"
} >"$tmp/tour.sql"
chmod 644 "$tmp/tour.sql"
sed -i "s|psql -d mydb'|psql -X -d mydb' <'$tmp/tour.sql'|" "$tmp/setup.sh"

echo "readme_tour suite: the set-up block and the tour's SQL (${#sql_blocks[@]} blocks)"
(cd "$tmp" && PGCLUSTER=$cluster bash -e "$tmp/setup.sh") >"$tmp/setup.out" 2>&1 ||
	{ cat "$tmp/setup.out"; fail "the README's set-up block or SQL failed (output above)"; }
grep -E '^(ERROR|FATAL|psql:)' "$tmp/setup.out" && { cat "$tmp/setup.out"; fail "errors in the tour's SQL"; }

PSQL=(runuser -u postgres -- env PGCLUSTER="$cluster" psql -X -q -At -v ON_ERROR_STOP=1 -d mydb)
q() { (cd "$tmp" && "${PSQL[@]}" -c "$1"); }
exact() {
	local synced diffs
	synced=$(q "SELECT livekpi.sync('30s')") || fail "livekpi.sync()"
	[ "$synced" = t ] || fail "livekpi.sync('30s') returned $synced ($1)"
	diffs=$(q "SELECT count(*) FROM livekpi.verify()") || fail "livekpi.verify()"
	if [ "$diffs" != 0 ]; then
		q "SELECT * FROM livekpi.verify() LIMIT 20" >&2 || true
		fail "livekpi.verify() returned $diffs differences ($1)"
	fi
}
exact "after the tour's SQL"

# The sample rows, dated in New York: property 7 has 3 nights of $600 and
# 2 of the 3 nights of the arrival on 30 March, 21:00 (in UTC it would be
# 31 March, with 2 nights in all); property 8's booking is cancelled.
got=$(q "SELECT units, nights_sold, room_revenue, arrivals FROM livekpi.property_kpis
         WHERE property_id = 7 AND month = '2026-03-01'")
[ "$got" = "12|5|900.00|2" ] || fail "property 7, March 2026: units|nights|revenue|arrivals = '$got', expected 12|5|900.00|2"
got=$(q "SELECT cancelled_arrivals, approved_expenses, pending_expenses FROM livekpi.kpis('2026-03-01', '2026-03-31', ARRAY[7, 8])")
[ "$got" = "1|120.00|80.00" ] || fail "kpis(March 2026, {7,8}): cancelled|approved|pending = '$got', expected 1|120.00|80.00"
got=$(q "SELECT name FROM livekpi.properties WHERE property_id = 8")
[ "$got" = "Elm Street Inn" ] || fail "livekpi.properties.name of 8 is '$got' (track_properties)"

# --- the dashboard, /healthz and livekpi-tail
call=$(grep -o "SELECT livekpi\.create_token('[^']*')" "$tmp/prose.txt" | head -n 1)
[ -n "$call" ] || fail "the tour shows no SELECT livekpi.create_token(...)"
token=$(q "$call") || fail "$call"
case $token in lk_*) ;; *) fail "$call returned '$token'" ;; esac
url=$(grep -o 'http://127\.0\.0\.1:8089/#token=lk_…' "$tmp/prose.txt" | head -n 1)
[ -n "$url" ] || fail "the tour shows no dashboard URL http://127.0.0.1:8089/#token=lk_…"
url=$(subst <<<"$url")
echo "readme_tour suite: dashboard $url"
code=$(curl -s -o "$tmp/index.html" -w '%{http_code}' --max-time 10 "$url") || true
[ "$code" = 200 ] || fail "the dashboard URL answered HTTP $code"
grep -qi '<html' "$tmp/index.html" || fail "the dashboard URL did not answer a page"

subst <"$tools" >"$tmp/tools.sh"
health=$(grep -E '^curl ' "$tmp/tools.sh" | head -n 1)
[ -n "$health" ] || fail "the tour shows no curl of /healthz"
out=$(bash -c "$health" 2>&1) || fail "$health: $out"
grep -q '"status":"ok"' <<<"$out" || fail "$health answered: $out"

tail_line=$(grep -E '^livekpi-tail ' "$tmp/tools.sh" | head -n 1)
[ -n "$tail_line" ] || fail "the tour shows no livekpi-tail line"
where=$(command -v livekpi-tail) || fail "livekpi-tail is not on PATH ($PATH)"
echo "readme_tour suite: livekpi-tail ($where)"
read -ra tail_argv <<<"$tail_line"
"${tail_argv[@]}" >"$tmp/tail.out" 2>"$tmp/tail.err" &
tail_pid=$!
bgpids+=("$tail_pid")
wait_for() { # FILE PATTERN SECONDS
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
wait_for "$tmp/tail.out" '"type":"snapshot"' 10 ||
	{ cat "$tmp/tail.out" "$tmp/tail.err" >&2; fail "livekpi-tail printed no snapshot"; }
grep -q '"type":"welcome"' "$tmp/tail.out" || fail "livekpi-tail printed no welcome"
q "INSERT INTO bookings (property_id, check_in, check_out, total_amount, status)
   VALUES (8, '2026-03-21 15:00-04', '2026-03-23 11:00-04', 333.00, 'confirmed')" ||
	fail "inserting a booking"
wait_for "$tmp/tail.out" '"type":"delta"' 10 ||
	{ cat "$tmp/tail.out" "$tmp/tail.err" >&2; fail "livekpi-tail printed no delta for the new booking"; }
kill -INT "$tail_pid"
rc=0
wait "$tail_pid" || rc=$?
[ "$rc" = 130 ] || { cat "$tmp/tail.err" >&2; fail "livekpi-tail exited $rc after Ctrl-C (documented: 130)"; }

# --- pg_recvlogical, as the postgres user
subst <"$recv" >"$tmp/recv.sh"
mapfile -t recv_lines < <(grep -E '^pg_recvlogical ' "$tmp/recv.sh")
[ "${#recv_lines[@]}" = 3 ] || fail "expected 3 pg_recvlogical lines (create, start, drop), found ${#recv_lines[@]}"
as_user() { (cd "$tmp" && runuser -u postgres -- env PGCLUSTER="$cluster" bash -c "$1"); }
echo "readme_tour suite: ${recv_lines[0]}"
as_user "${recv_lines[0]}" >"$tmp/recv0.out" 2>&1 || { cat "$tmp/recv0.out"; fail "${recv_lines[0]}"; }
q "INSERT INTO expenses (property_id, incurred_on, amount, category, approval_status)
   VALUES (7, '2026-03-22', 44.00, 'laundry', 'approved')" || fail "inserting an expense"
echo "readme_tour suite: ${recv_lines[1]}"
# setpriv execs, so that $! is pg_recvlogical itself and gets the Ctrl-C.
(cd "$tmp" && exec setpriv --reuid=postgres --regid=postgres --init-groups \
	env HOME=/var/lib/postgresql PGCLUSTER="$cluster" ${recv_lines[1]}) >"$tmp/recv1.out" 2>"$tmp/recv1.err" &
recv_pid=$!
bgpids+=("$recv_pid")
wait_for "$tmp/recv1.out" 'laundry' 10 ||
	{ cat "$tmp/recv1.out" "$tmp/recv1.err" >&2; fail "pg_recvlogical printed no JSON for the new expense"; }
kill -INT "$recv_pid" 2>/dev/null || true
wait "$recv_pid" 2>/dev/null || true
grep -m1 laundry "$tmp/recv1.out" | python3 -c 'import json, sys; json.loads(sys.stdin.readline())' ||
	fail "pg_recvlogical's line is not JSON: $(grep -m1 laundry "$tmp/recv1.out")"
echo "readme_tour suite: ${recv_lines[2]}"
as_user "${recv_lines[2]}" >"$tmp/recv2.out" 2>&1 || { cat "$tmp/recv2.out"; fail "${recv_lines[2]}"; }
[ "$(q "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'demo'")" = 0 ] ||
	fail "the slot demo is still there after --drop-slot"

exact "after the tour's tools"
echo "readme_tour suite: ok"
