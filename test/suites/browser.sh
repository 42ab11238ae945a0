#!/usr/bin/env bash
# Browser tests of the dashboard (www/) against a real cluster: a throwaway
# cluster with livekpi preloaded and its listener on a free port, demo
# bookings and expenses, a token, then playwright-core driving Debian's
# chromium headless (test/browser/*.test.mjs, node's test runner).
#
#   test/suites/browser.sh [TREE]
#
# TREE is the copy of the source tree to take the tests from (test/run-tests.sh
# passes a scratch copy readable by the postgres user); default: this tree.
# Screenshots go to test/browser/artifacts/ of this tree (LIVEKPI_ARTIFACTS).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
tree=${1:-$top}
. "$top/test/lib.sh"

chromium=${LIVEKPI_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
	echo "browser: $chromium is missing (apt-get install chromium, or make deps)" >&2
	exit 1
fi
if [ ! -d "$tree/node_modules/playwright-core" ] && [ ! -d "$top/node_modules/playwright-core" ]; then
	echo "browser: node_modules/playwright-core is missing (npm ci, or make deps)" >&2
	exit 1
fi
if [ ! -f "$($PG_CONFIG --sharedir)/livekpi/www/index.html" ]; then
	echo "browser: note: $($PG_CONFIG --sharedir)/livekpi/www/index.html is not installed" >&2
fi

dir=$(mktemp -d /tmp/livekpi-browser.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
pgport=$(free_port)
wsport=$(free_port)
while [ "$wsport" = "$pgport" ]; do wsport=$(free_port); done

cleanup() {
	cluster_stop "$dir"
	[ -n "${LIVEKPI_KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

if ! cluster_start "$dir" "$pgport" \
	"livekpi.listen_addresses = '127.0.0.1'" \
	"livekpi.port = $wsport" \
	"livekpi.flush_interval = 0" \
	"livekpi.heartbeat_interval = 5"; then
	echo "browser: the cluster did not start" >&2
	tail -n 40 "$dir/server.log" >&2
	exit 1
fi

psql_() {
	as_pg psql -h "$dir" -p "$pgport" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 "$@"
}

if ! psql_ -c "CREATE EXTENSION livekpi"; then
	echo "browser: CREATE EXTENSION livekpi failed" >&2
	tail -n 40 "$dir/server.log" >&2
	exit 1
fi
if [ "$(psql_ -c "SELECT to_regclass('livekpi.clients') IS NOT NULL")" != t ]; then
	echo "SKIP: push worker not built (livekpi.clients view missing)"
	exit 0
fi

# Fourteen months of bookings and expenses for three properties, ending with
# the current month; every status and category kind appears.
if ! psql_ <<'SQL'
CREATE TABLE public.bookings (
	id bigserial PRIMARY KEY,
	property_id bigint,
	check_in date,
	check_out date,
	total_amount numeric(12,2),
	status text
);
CREATE TABLE public.expenses (
	id bigserial PRIMARY KEY,
	property_id bigint,
	incurred_on date,
	amount numeric(12,2),
	category text,
	approval_status text
);
INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
SELECT p, d, d + (1 + (i + p) % 4), (95 + (i * 37 + p * 11) % 90) * (1 + (i + p) % 4),
       CASE WHEN (i + p) % 13 = 0 THEN 'cancelled' ELSE 'confirmed' END
FROM generate_series(1, 3) AS p,
     generate_series(0, 440, 2) AS i,
     LATERAL (SELECT (date_trunc('month', current_date)::date - 395) + i + p * (i % 2) AS d) AS x
WHERE d < date_trunc('month', current_date)::date + 20 AND (i * p) % 5 <> 1;
INSERT INTO public.expenses (property_id, incurred_on, amount, category, approval_status)
SELECT p, (date_trunc('month', current_date)::date - 395) + i,
       round((40 + (i * 53 + p * 7) % 600)::numeric + 0.25 * (i % 4), 2),
       (ARRAY['cleaning', 'maintenance', 'utilities', 'supplies', 'management fees'])[1 + (i / 5 + p) % 5],
       (ARRAY['approved', 'approved', 'approved', 'pending', 'rejected'])[1 + (i / 5 * p + i / 15) % 5]
FROM generate_series(1, 3) AS p, generate_series(0, 410, 5) AS i;
SELECT livekpi.track_bookings('public.bookings');
SELECT livekpi.track_expenses('public.expenses');
UPDATE livekpi.properties SET units = CASE property_id WHEN 1 THEN 4 WHEN 2 THEN 2 ELSE 1 END;
SELECT livekpi.sync();
SQL
then
	echo "browser: loading the demo data failed" >&2
	tail -n 40 "$dir/server.log" >&2
	exit 1
fi
token=$(psql_ -c "SELECT livekpi.create_token('browser-test')")
if [ -z "$token" ]; then
	echo "browser: create_token returned nothing" >&2
	exit 1
fi

# The listener answers /healthz once the push worker is up.
for _ in $(seq 1 100); do
	code=$(node -e 'fetch(process.argv[1]).then((r) => console.log(r.status), () => console.log(0))' \
		"http://127.0.0.1:$wsport/healthz" 2>/dev/null || true)
	[ "$code" = 200 ] && break
	sleep 0.2
done
if [ "$code" != 200 ]; then
	echo "browser: /healthz on port $wsport answered '${code:-nothing}'" >&2
	tail -n 40 "$dir/server.log" >&2
	exit 1
fi

cat > "$dir/restart.sh" <<RESTART
#!/usr/bin/env bash
. "$top/test/lib.sh"
as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
RESTART
chmod +x "$dir/restart.sh"

artifacts=${LIVEKPI_ARTIFACTS:-$top/test/browser/artifacts}
mkdir -p "$artifacts"

status=0
(
	cd "$tree" &&
	LIVEKPI_URL="http://127.0.0.1:$wsport/" \
	LIVEKPI_TOKEN="$token" \
	LIVEKPI_CHROMIUM="$chromium" \
	LIVEKPI_PSQL="$PG_BINDIR/psql" \
	LIVEKPI_RESTART="$dir/restart.sh" \
	LIVEKPI_ARTIFACTS="$artifacts" \
	PGHOST="$dir" PGPORT="$pgport" PGUSER=postgres PGDATABASE=postgres \
	NODE_PATH="$top/node_modules" \
	timeout 600 node --test --test-concurrency=1 --test-reporter=spec test/browser/*.test.mjs
) || status=$?
if [ $status -ne 0 ]; then
	echo "--- server.log (tail)"
	tail -n 60 "$dir/server.log"
fi
echo "browser: screenshots in $artifacts"
exit $status
