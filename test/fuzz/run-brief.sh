#!/usr/bin/env bash
# test/fuzz/run-brief.sh [SECONDS | TREE]
#	  Build the fuzz targets (client messages, src/protocol.c; change
#	  records, src/change.c; HTTP request rules, src/http_rules.c) and run
#	  each for SECONDS (default $FUZZ_SECONDS, else 20), after the SipHash
#	  reference vectors.  Given a directory instead
#	  (as test/run-tests.sh passes its scratch tree to test/suites/*.sh),
#	  build and run there.  `make fuzz` runs it for 300 s.  A crash fails
#	  the run and leaves the input in crash-* in the current directory.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${FUZZ_SECONDS:-20}
if [ $# -gt 0 ]; then
	if [ -d "$1" ]; then top=$(cd "$1" && pwd); else secs=$1; fi
fi
if ! command -v clang >/dev/null; then
	echo "run-brief.sh: clang (with libFuzzer) is required" >&2
	exit 1
fi
make -s -C "$top" test/fuzz/fuzz_protocol test/fuzz/fuzz_change test/fuzz/fuzz_http test/fuzz/test_siphash
"$top"/test/fuzz/test_siphash
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/protocol" "$work/change" "$work/http"
cp "$top"/test/fuzz/corpus/* "$work/protocol"/
cp "$top"/test/fuzz/corpus_change/* "$work/change"/
cp "$top"/test/fuzz/corpus_http/* "$work/http"/
"$top"/test/fuzz/fuzz_protocol -max_total_time="$secs" -max_len=70000 \
	-print_final_stats=1 "$work/protocol" 2>&1 | tail -n 6
"$top"/test/fuzz/fuzz_change -max_total_time="$secs" -max_len=4096 \
	-print_final_stats=1 "$work/change" 2>&1 | tail -n 6
"$top"/test/fuzz/fuzz_http -max_total_time="$secs" -max_len=4096 \
	-print_final_stats=1 "$work/http" 2>&1 | tail -n 6
