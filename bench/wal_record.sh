#!/usr/bin/env bash
# bench/wal_record.sh: WAL written per row by the tracked transaction itself
# (SPEC section 9, "WAL"), and the bulk-load time, tracked vs untracked, for
# whatever livekpi build $PG_CONFIG has installed.  docs/internals.md
# ("Change records") and BENCHMARKS.md quote its figures.
#
#   PG_CONFIG=... [KEY=int|uuid|text] bench/wal_record.sh [ROWS [BULK_ROWS]]
#                                                         (int, 10000, 300000)
#
# A throwaway cluster (full_page_writes off, so that only record bytes
# count), one table tracked and one not, same columns (int keys); the
# workers are paused with livekpi.pause(), so only the writer's WAL counts.
# ROWS single-row INSERT, UPDATE and DELETE statements, each its own
# transaction, on each table; the WAL between pg_current_wal_insert_lsn()
# before and after, per row; and the logical-message records alone
# (pg_walinspect).  Then INSERT ... SELECT of BULK_ROWS rows into each,
# $BULK_ROUNDS times (5), alternated; the fastest of each is reported (the
# least disturbed by whatever else the machine runs).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/test/lib.sh"
rows=${1:-10000}
bulk=${2:-300000}
key=${KEY:-int}
case $key in
	int) keytype=int keyexpr='%d' bulkexpr='g % 2000' ;;
	uuid) keytype=uuid keyexpr="md5('%d')::uuid" bulkexpr='md5((g % 2000)::text)::uuid' ;;
	text) keytype=text keyexpr="'property %d'" bulkexpr="'property ' || g % 2000" ;;
	*) echo "KEY must be int, uuid or text" >&2; exit 2 ;;
esac
dir=$(mktemp -d /tmp/livekpi-walrec.XXXX)
port=$(free_port)
trap 'cluster_stop "$dir"; rm -rf "$dir"' EXIT
cluster_start "$dir" "$port" "full_page_writes = off" "fsync = off" \
	"synchronous_commit = off" "max_wal_size = '10GB'" "checkpoint_timeout = '1h'" \
	"autovacuum = off"
q() { as_pg psql -X -q -At -h "$dir" -p "$port" -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
run_file() { as_pg psql -X -q -h "$dir" -p "$port" -d postgres -v ON_ERROR_STOP=1 -f "$1" >/dev/null; }

q "CREATE EXTENSION livekpi" >/dev/null
q "CREATE EXTENSION pg_walinspect" >/dev/null
q "SELECT livekpi.sync('60s')" >/dev/null
for t in plain tracked; do
	q "CREATE TABLE t_$t (id int PRIMARY KEY, property_id $keytype, check_in date, check_out date,
	                      total_amount numeric(12, 2), status text)"
done
q "SELECT livekpi.track_bookings('t_tracked')" >/dev/null
q "SELECT livekpi.pause()" >/dev/null
until [ "$(q "SELECT paused FROM livekpi.status")" = t ]; do sleep 0.1; done

sqlf=$dir/stmts.sql
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
echo "property key: $keytype"
printf '%-8s %-8s %12s %12s\n' op table "WAL B/row" "msg B/row"
for op in insert update delete; do
	for t in plain tracked; do
		case $op in
			insert) awk -v n="$rows" -v t="$t" -v k="$keyexpr" 'BEGIN { for (i = 1; i <= n; i++)
				printf "INSERT INTO t_%s VALUES (%d, " k ", DATE %s + %d, DATE %s + %d, %d.50, %s);\n",
					t, i, i % 2000, "'"'"'2026-01-01'"'"'", i % 900, "'"'"'2026-01-01'"'"'", i % 900 + 3, 100 + i % 500, "'"'"'confirmed'"'"'" }' ;;
			update) awk -v n="$rows" -v t="$t" 'BEGIN { for (i = 1; i <= n; i++)
				printf "UPDATE t_%s SET check_out = check_out + 1, total_amount = total_amount + 1 WHERE id = %d;\n", t, i }' ;;
			delete) awk -v n="$rows" -v t="$t" 'BEGIN { for (i = 1; i <= n; i++)
				printf "DELETE FROM t_%s WHERE id = %d;\n", t, i }' ;;
		esac >"$sqlf"
		chmod a+r "$sqlf"
		q "CHECKPOINT"
		a=$(q "SELECT pg_current_wal_insert_lsn()")
		run_file "$sqlf"
		b=$(q "SELECT pg_current_wal_insert_lsn()")
		q "CHECKPOINT"	# pg_walinspect reads only flushed WAL
		per_row=$(q "SELECT round(('$b'::pg_lsn - '$a'::pg_lsn) / $rows::numeric, 1)")
		msg=$(q "SELECT coalesce(round(sum(combined_size) / $rows::numeric, 1), 0)
		         FROM pg_get_wal_stats('$a', '$b') WHERE \"resource_manager/record_type\" = 'LogicalMessage'")
		printf '%-8s %-8s %12s %12s\n' "$op" "$t" "$per_row" "$msg"
	done
done

q "TRUNCATE t_plain, t_tracked"
echo
rounds=${BULK_ROUNDS:-5}
echo "bulk load of $bulk rows (INSERT ... SELECT), best of $rounds, ms:"
declare -A best
for round in $(seq 1 "$rounds"); do
	for t in tracked plain; do
		q "TRUNCATE t_$t"
		q "CHECKPOINT"
		t0=$(date +%s%N)
		q "INSERT INTO t_$t SELECT g, $bulkexpr,
		   DATE '2026-01-01' + g % 900,
		   DATE '2026-01-01' + g % 900 + 3, 100 + g % 500, 'confirmed'
		   FROM generate_series(1, $bulk) g"
		ms=$(( ($(date +%s%N) - t0) / 1000000 ))
		if [ -z "${best[$t]:-}" ] || python3 -c "import sys; sys.exit(0 if $ms < ${best[$t]} else 1)"; then
			best[$t]=$ms
		fi
	done
done
printf 'plain %s  tracked %s  ratio %s\n' "${best[plain]}" "${best[tracked]}" \
	"$(python3 -c "print(round(${best[tracked]} / ${best[plain]}, 3))")"
