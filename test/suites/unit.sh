#!/usr/bin/env bash
# test/suites/unit.sh [TREE]
#	  Unit tests of the parts that need no server (src/push_queue.c), built
#	  with ASan and UBSan.  test/run-tests.sh passes its scratch tree.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
if [ $# -gt 0 ] && [ -d "$1" ]; then top=$(cd "$1" && pwd); fi
make -s -C "$top" unit
