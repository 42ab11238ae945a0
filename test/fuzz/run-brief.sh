#!/usr/bin/env bash
# test/fuzz/run-brief.sh [SECONDS]
#	  Build the client-message fuzz target and run it briefly (make test);
#	  `make fuzz` runs it longer.  Needs clang with libFuzzer.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-${FUZZ_SECONDS:-20}}
make -s -C "$top" test/fuzz/fuzz_protocol
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$top"/test/fuzz/corpus/* "$work"/
"$top"/test/fuzz/fuzz_protocol -max_total_time="$secs" -max_len=70000 \
	-print_final_stats=1 "$work" 2>&1 | tail -n 5
