#!/usr/bin/env bash
# Gathers the "reliability: what|how many|outcome" lines that the TAP tests
# print (test/t/*.pl, as notes in their regress_log_* files) into
# docs/reliability.md, so that the page says what the last full run of the
# suite tried and what came of it.
#
#   test/reliability-report.sh LOGDIR OUTPUT
set -euo pipefail
logdir=$1
out=$2
rows=$(grep -h '# reliability: ' "$logdir"/regress_log_* 2>/dev/null | sed 's/^.*# reliability: //' || true)
[ -n "$rows" ] || { echo "reliability-report: no reliability lines in $logdir" >&2; exit 0; }
{
	cat <<'HEAD'
# Reliability: what the test suite tries, and what came of it

This page is written by `make test` (test/reliability-report.sh) from the
TAP tests' `reliability:` lines; do not edit it by hand.  Each row is one
kind of fault or hostile input, how many times the last full run tried it,
and the outcome the test asserted.  "FAILED" means that run failed.

| fault or hostile input | tried | outcome |
|---|---:|---|
HEAD
	printf '%s\n' "$rows" | awk -F'|' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }'
	echo
	echo "Last written by \`make test\` on $(date -u +%Y-%m-%d), PostgreSQL $(${PG_CONFIG:-pg_config} --version | awk '{print $2}'), $(nproc) cores."
	echo "Each row names the test that tried it, in parentheses."
} > "$out"
echo "reliability-report: wrote $out"
