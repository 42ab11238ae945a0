#!/usr/bin/env bash
# make test-sanitize: the regress, isolation and TAP suites against a
# livekpi.so built with UndefinedBehaviorSanitizer (gcc; libubsan is a
# shared library, so the uninstrumented postgres can load it).  Every
# report is written to a log file; any report fails the run.  A normal
# build is installed again at the end.  (ASan stays with the libFuzzer
# targets: Debian's server is not ASan-built and palloc hides most heap
# bugs from it.)
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. "$top/test/lib.sh"

logs=$(mktemp -d /tmp/livekpi-ubsan.XXXXXX)
chmod 777 "$logs"
# report, don't abort: one report must not hide the next; and every jsonb
# delta object the apply worker writes directly in binary form is compared
# byte for byte with PostgreSQL's own builder (an ERROR fails the batch)
ubsan_c="-fsanitize=undefined -fno-omit-frame-pointer -DLIVEKPI_CHECK_VIEWS_OBJECT"

make -s clean
make -s LIVEKPI_SANITIZE_CFLAGS="$ubsan_c" LIVEKPI_SANITIZE_LDFLAGS="-fsanitize=undefined" all install
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$logs/ubsan"
LIVEKPI_CORE_ONLY=1 ./test/run-tests.sh
rc=$?
reports=$(ls "$logs" | wc -l)
if [ "$reports" -gt 0 ]; then
	echo "test-sanitize: $reports UBSan report file(s):"
	head -n 40 "$logs"/*
	rc=1
fi
make -s clean
make -s all install
echo "test-sanitize: $reports UBSan report(s); suites exit $rc"
exit $rc
