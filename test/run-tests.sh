#!/usr/bin/env bash
# Runs every test suite against the installed extension: pg_regress,
# isolation and TAP (make installcheck), then the suites that live outside
# PGXS (fuzz, browser).  As root it runs them as the postgres user in a
# scratch copy of the tree, since initdb refuses to run as root.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/lib.sh"

work=$top
if [ "$(id -u)" = 0 ]; then
	# the scratch copy goes when every suite passed (kept for a look otherwise)
	work=$(mktemp -d /tmp/livekpi-test.XXXXXX)
	rsync -a --exclude .git --exclude node_modules --exclude /bench/out --exclude /.demo \
		"$top/" "$work/"
	[ -d "$top/node_modules" ] && ln -s "$top/node_modules" "$work/node_modules"
	chown -R postgres: "$work"
	chmod o+rx "$work"
fi

passed=0
failed=0
failures=()
suite() {
	local name=$1
	shift
	echo "=== $name"
	if "$@"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures+=("$name")
		return 1
	fi
}

show_diffs() {
	for f in "$work"/regression.diffs "$work"/output_iso/regression.diffs; do
		[ -s "$f" ] && { echo "--- $f"; head -c 20000 "$f"; }
	done
	return 0
}

suite regress as_pg make -C "$work" -s PG_CONFIG="$PG_CONFIG" installcheck-regress-only || show_diffs
suite isolation as_pg make -C "$work" -s PG_CONFIG="$PG_CONFIG" installcheck-isolation-only || show_diffs
suite tap as_pg make -C "$work" -s PG_CONFIG="$PG_CONFIG" installcheck-tap-only
"$top/test/reliability-report.sh" "$work/tmp_check/log" "$top/docs/reliability.md" || true
# LIVEKPI_CORE_ONLY=1 (test/run-sanitized.sh): regress, isolation and TAP only.
for extra in "$top"/test/suites/*.sh; do
	[ -z "${LIVEKPI_CORE_ONLY:-}" ] || break
	[ -e "$extra" ] || continue
	suite "$(basename "$extra" .sh)" "$extra" "$work"
done

echo
if [ $failed -gt 0 ]; then
	echo "failed suites: ${failures[*]}"
	for log in "$work"/tmp_check/log/*; do
		[ -f "$log" ] || continue
		case "$log" in *regress_log_*) ;; *) continue ;; esac
		grep -q "not ok" "$log" && { echo "--- $log (tail)"; tail -n 60 "$log"; }
	done
fi
echo "suites: $passed passed, $failed failed"
if [ "$work" != "$top" ]; then
	if [ $failed -eq 0 ]; then
		rm -rf "$work"
	else
		echo "the test tree and its logs are kept in $work"
	fi
fi
[ $failed -eq 0 ]
