#!/usr/bin/env bash
# test/suites/js.sh [TREE]: the pure modules of livekpi.js (www/lib/), the
# exact KPI arithmetic and the dashboard's model (www/model.js), in node
# without a browser
# (test/js/*.test.mjs, node's test runner).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
tree=${1:-$top}
if ! command -v node >/dev/null; then
	echo "js: node is missing (apt-get install nodejs, or make deps)" >&2
	exit 1
fi
cd "$tree" && node --test --test-reporter=spec test/js/*.test.mjs
