/*-------------------------------------------------------------------------
 * livekpi--1.0--1.1.sql: upgrade from 1.0 to 1.1.
 *
 * Each section brings one concern of 1.1 to an existing 1.0 install; the
 * result must equal a fresh 1.1 install (test/t/007_upgrade.pl compares the
 * catalogs).  The update ends with a rebuild, so that 1.0 change records
 * still in the slot (not authenticated) are not needed.
 *-------------------------------------------------------------------------
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION livekpi UPDATE TO '1.1'" to load this file. \quit

-- ---------------------------------------------------------------------
-- Section 0: stale state, skipped changes, status columns
-- ---------------------------------------------------------------------
ALTER TABLE livekpi.state ADD COLUMN stale_reason text, ADD COLUMN stale_since timestamptz;

CREATE TABLE livekpi.skipped_changes (
	commit_lsn	pg_lsn NOT NULL,
	message_lsn pg_lsn,
	ordinal		int NOT NULL,
	relid		oid,
	sqlstate	text NOT NULL,
	message		text NOT NULL,
	skipped_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (commit_lsn, ordinal)
);

CREATE FUNCTION livekpi._mark_stale(reason text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	UPDATE livekpi.state
	SET stale_reason = CASE WHEN stale_reason IS NULL THEN reason
							WHEN position(reason IN stale_reason) > 0 THEN stale_reason
							ELSE stale_reason || '; ' || reason END,
		stale_since = coalesce(stale_since, now());
	PERFORM livekpi._wake_apply();
END
$$;

-- (status view and _status() are re-created in the final section)

-- ---------------------------------------------------------------------
-- Section A: change-record authentication, output plugin options
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Section B: KPI rules in C, extreme values, rebuild
-- ---------------------------------------------------------------------
-- Values the math cannot use are skipped (usable days 4714-12-01 BC ..
-- 294276-11-30, categories clipped to 200 characters, text keys up to 1024
-- bytes), in verify()'s SQL recompute as in kpi.c; rebuild() recomputes with
-- kpi.c's rules in C (_booking_rows, _expense_rows) into fresh heaps that it
-- swaps in, and never rewrites the stored timezone or max_stay_nights;
-- track_* backfills only the new table (_backfill).  (Generated from
-- sql/parts/20_track.sql; _track is also Section C's: keep its call of
-- _backfill there.)
CREATE OR REPLACE FUNCTION livekpi._local_day(x timestamptz, tz text) RETURNS date
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN (x AT TIME ZONE tz)::date;
EXCEPTION WHEN datetime_field_overflow THEN
	RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION livekpi._day_sql(rel regclass, attnum int2, tz text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT format('CASE WHEN %1$s BETWEEN %2$L::date AND %3$L::date THEN %1$s END',
				  CASE a.atttypid
					  WHEN 'date'::regtype THEN quote_ident(a.attname)
					  WHEN 'timestamp'::regtype THEN quote_ident(a.attname) || '::date'
					  ELSE format('CASE WHEN %1$I BETWEEN %2$L::timestamptz AND %3$L::timestamptz THEN (%1$I AT TIME ZONE %4$L)::date ELSE livekpi._local_day(%1$I, %4$L) END',
								  a.attname, '4714-12-10 00:00:00+00 BC', '294276-12-20 00:00:00+00', tz)
				  END,
				  '4714-12-01 BC', '294276-11-30')
	FROM pg_attribute a
	WHERE a.attrelid = rel AND a.attnum = _day_sql.attnum
$$;

CREATE OR REPLACE FUNCTION livekpi._booking_recompute_sql(key_type text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t record;
	parts text[] := '{}';
BEGIN
	FOR t IN SELECT * FROM livekpi.tracked_tables WHERE kind = 'bookings' ORDER BY relid::oid LOOP
		parts := parts || format(
			'SELECT %s::%s AS pid, %s AS ci, %s AS co, %s::numeric AS amt, %s AS cancelled, %s AS max_stay FROM %s',
			livekpi._attname(t.relid, t.property_attnum), key_type,
			livekpi._day_sql(t.relid, t.day1_attnum, t.timezone),
			livekpi._day_sql(t.relid, t.day2_attnum, t.timezone),
			livekpi._attname(t.relid, t.amount_attnum),
			CASE WHEN t.status_attnum IS NULL THEN 'false'
				 ELSE format('coalesce(%s::text = ANY (%L::text[]), false)',
							 livekpi._attname(t.relid, t.status_attnum), t.statuses1) END,
			t.max_stay_nights,
			livekpi._from_sql(t.relid));
	END LOOP;
	IF cardinality(parts) = 0 THEN
		parts := ARRAY[format('SELECT NULL::%s AS pid, NULL::date AS ci, NULL::date AS co, NULL::numeric AS amt, false AS cancelled, 0 AS max_stay WHERE false', key_type)];
	END IF;

	RETURN format($q$
		WITH src AS (%s),
		valid AS (
			SELECT pid, ci, co - ci AS n, cancelled,
				   CASE WHEN amt IS NULL OR amt IN ('NaN', 'Infinity', '-Infinity') THEN 0
						ELSE amt END AS amt
			FROM src
			WHERE pid IS NOT NULL AND ci IS NOT NULL AND co IS NOT NULL
			  AND octet_length(pid::text) <= 1024	-- LIVEKPI_MAX_KEY_BYTES
			  AND isfinite(ci) AND isfinite(co) AND co - ci <= max_stay),
		contrib AS (
			SELECT pid, ci AS day, 0 AS nights,
				   CASE WHEN NOT cancelled AND n <= 0 THEN amt ELSE 0 END AS rev,
				   CASE WHEN cancelled THEN 0 ELSE 1 END AS arr,
				   CASE WHEN cancelled THEN 1 ELSE 0 END AS canc
			FROM valid
			UNION ALL
			SELECT pid, ci + i, 1,
				   CASE WHEN i < n - 1 THEN round(amt / n, 2)
						ELSE amt - round(amt / n, 2) * (n - 1) END,
				   0, 0
			FROM valid, generate_series(0, n - 1) AS i
			WHERE NOT cancelled AND n >= 1)
		SELECT pid, day, sum(nights)::bigint, sum(rev), sum(arr)::bigint, sum(canc)::bigint
		FROM contrib GROUP BY pid, day
	$q$, array_to_string(parts, ' UNION ALL '));
END
$$;

CREATE OR REPLACE FUNCTION livekpi._expense_recompute_sql(key_type text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t record;
	parts text[] := '{}';
BEGIN
	FOR t IN SELECT * FROM livekpi.tracked_tables WHERE kind = 'expenses' ORDER BY relid::oid LOOP
		parts := parts || format(
			'SELECT %s::%s AS pid, %s AS d, %s::numeric AS amt, %s AS cat, %s AS cls FROM %s',
			livekpi._attname(t.relid, t.property_attnum), key_type,
			livekpi._day_sql(t.relid, t.day1_attnum, t.timezone),
			livekpi._attname(t.relid, t.amount_attnum),
			-- LIVEKPI_MAX_CATEGORY_CHARS: the first 200 characters
			CASE WHEN t.category_attnum IS NULL THEN '''uncategorized'''
				 ELSE format('coalesce(left(%s::text, 200), ''uncategorized'')',
							 livekpi._attname(t.relid, t.category_attnum)) END,
			CASE WHEN t.status_attnum IS NULL THEN '0'
				 ELSE format('CASE WHEN %1$s::text = ANY (%2$L::text[]) THEN 0 WHEN %1$s::text = ANY (%3$L::text[]) THEN 2 ELSE 1 END',
							 livekpi._attname(t.relid, t.status_attnum), t.statuses1, t.statuses2) END,
			livekpi._from_sql(t.relid));
	END LOOP;
	IF cardinality(parts) = 0 THEN
		parts := ARRAY[format('SELECT NULL::%s AS pid, NULL::date AS d, NULL::numeric AS amt, NULL::text AS cat, 0 AS cls WHERE false', key_type)];
	END IF;

	RETURN format($q$
		WITH src AS (%s),
		valid AS (
			SELECT pid, d, cat, cls,
				   CASE WHEN amt IS NULL OR amt IN ('NaN', 'Infinity', '-Infinity') THEN 0
						ELSE amt END AS amt
			FROM src
			WHERE pid IS NOT NULL AND d IS NOT NULL AND isfinite(d)
			  AND octet_length(pid::text) <= 1024)	-- LIVEKPI_MAX_KEY_BYTES
		SELECT pid, d, cat,
			   sum(CASE WHEN cls = 0 THEN amt ELSE 0 END),
			   sum(CASE WHEN cls = 1 THEN amt ELSE 0 END),
			   sum(CASE WHEN cls = 2 THEN amt ELSE 0 END),
			   count(*)
		FROM valid GROUP BY pid, d, cat
	$q$, array_to_string(parts, ' UNION ALL '));
END
$$;

CREATE OR REPLACE FUNCTION livekpi._booking_rows(key "any", check_in "any", check_out "any", amount "any",
									  status text, cancelled_statuses text[], max_stay int,
									  timezone text)
RETURNS TABLE (day date, nights int, revenue numeric, arrivals int, cancelled int)
	AS 'MODULE_PATHNAME', 'livekpi_booking_rows' LANGUAGE C STABLE;

CREATE OR REPLACE FUNCTION livekpi._expense_rows(key "any", day "any", amount "any", category text,
									  status text, has_status boolean, approved_statuses text[],
									  rejected_statuses text[], timezone text)
RETURNS TABLE (day date, category text, class int, amount numeric)
	AS 'MODULE_PATHNAME', 'livekpi_expense_rows' LANGUAGE C STABLE;

CREATE OR REPLACE FUNCTION livekpi._new_heap(target regclass) RETURNS oid
	AS 'MODULE_PATHNAME', 'livekpi_new_heap' LANGUAGE C STRICT;

CREATE OR REPLACE FUNCTION livekpi._fill_heap(heap oid, query text) RETURNS bigint
	AS 'MODULE_PATHNAME', 'livekpi_fill_heap' LANGUAGE C STRICT;

CREATE OR REPLACE FUNCTION livekpi._swap_heap(target regclass, heap oid) RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_swap_heap' LANGUAGE C STRICT;

CREATE OR REPLACE FUNCTION livekpi._month(day date) RETURNS date
	AS 'MODULE_PATHNAME', 'livekpi_month' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OR REPLACE FUNCTION livekpi._booking_rows_sql(key_type text, only_rel regclass DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t record;
	parts text[] := '{}';
BEGIN
	FOR t IN SELECT * FROM livekpi.tracked_tables
			 WHERE kind = 'bookings' AND (only_rel IS NULL OR relid = only_rel)
			 ORDER BY relid::oid LOOP
		parts := parts || format(
			'SELECT pid, (c).day, (c).nights, (c).revenue, (c).arrivals, (c).cancelled FROM ('
			'SELECT %1$s::%2$s AS pid, livekpi._booking_rows(%1$s, %3$s, %4$s, %5$s, %6$s, %7$L::text[], %8$s, %9$L) AS c '
			'FROM %10$s) s',
			livekpi._attname(t.relid, t.property_attnum), key_type,
			livekpi._attname(t.relid, t.day1_attnum),
			livekpi._attname(t.relid, t.day2_attnum),
			livekpi._attname(t.relid, t.amount_attnum),
			CASE WHEN t.status_attnum IS NULL THEN 'NULL::text'
				 ELSE livekpi._attname(t.relid, t.status_attnum) || '::text' END,
			t.statuses1, t.max_stay_nights, t.timezone,
			livekpi._from_sql(t.relid));
	END LOOP;
	IF cardinality(parts) = 0 THEN
		parts := ARRAY[format('SELECT NULL::%s AS pid, NULL::date AS day, 0 AS nights, 0::numeric AS revenue, 0 AS arrivals, 0 AS cancelled WHERE false', key_type)];
	END IF;
	RETURN array_to_string(parts, ' UNION ALL ');
END
$$;

CREATE OR REPLACE FUNCTION livekpi._expense_rows_sql(key_type text, only_rel regclass DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t record;
	parts text[] := '{}';
BEGIN
	FOR t IN SELECT * FROM livekpi.tracked_tables
			 WHERE kind = 'expenses' AND (only_rel IS NULL OR relid = only_rel)
			 ORDER BY relid::oid LOOP
		parts := parts || format(
			'SELECT pid, (c).day, (c).category, (c).class, (c).amount FROM ('
			'SELECT %1$s::%2$s AS pid, livekpi._expense_rows(%1$s, %3$s, %4$s, %5$s, %6$s, %7$s, %8$L::text[], %9$L::text[], %10$L) AS c '
			'FROM %11$s) s',
			livekpi._attname(t.relid, t.property_attnum), key_type,
			livekpi._attname(t.relid, t.day1_attnum),
			livekpi._attname(t.relid, t.amount_attnum),
			CASE WHEN t.category_attnum IS NULL THEN 'NULL::text'
				 ELSE livekpi._attname(t.relid, t.category_attnum) || '::text' END,
			CASE WHEN t.status_attnum IS NULL THEN 'NULL::text'
				 ELSE livekpi._attname(t.relid, t.status_attnum) || '::text' END,
			CASE WHEN t.status_attnum IS NULL THEN 'false' ELSE 'true' END,
			t.statuses1, t.statuses2, t.timezone,
			livekpi._from_sql(t.relid));
	END LOOP;
	IF cardinality(parts) = 0 THEN
		parts := ARRAY[format('SELECT NULL::%s AS pid, NULL::date AS day, NULL::text AS category, 0 AS class, 0::numeric AS amount WHERE false', key_type)];
	END IF;
	RETURN array_to_string(parts, ' UNION ALL ');
END
$$;

CREATE OR REPLACE FUNCTION livekpi._rebuild(new_epoch boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	point pg_lsn;
	s bigint;
	kt text;
	bd oid;
	ed oid;
	bm oid;
	em oid;
	pm oid;
BEGIN
	PERFORM livekpi._require_read_committed('rebuild()');
	PERFORM livekpi._lock_tracked_tables();
	PERFORM 1 FROM livekpi.state FOR UPDATE;
	point := pg_current_wal_insert_lsn();
	PERFORM livekpi._emit_rebuild_marker();

	kt := (SELECT key_type FROM livekpi.state)::text;

	/*
	 * The KPI tables are refilled the way REFRESH MATERIALIZED VIEW does it:
	 * each into a fresh heap (bulk-inserted, frozen, indexed once at the
	 * swap), the monthly ones from the new daily heaps.  Until the swaps,
	 * readers see the old rows (the tables are locked EXCLUSIVE); the swaps
	 * take ACCESS EXCLUSIVE locks, held to commit.  Each _fill_heap() runs
	 * with a snapshot taken after the locks above.
	 */
	bd := livekpi._new_heap('livekpi.booking_daily');
	ed := livekpi._new_heap('livekpi.expense_daily');
	bm := livekpi._new_heap('livekpi.booking_monthly');
	em := livekpi._new_heap('livekpi.expense_monthly');
	pm := livekpi._new_heap('livekpi.portfolio_monthly');

	PERFORM livekpi._fill_heap(bd, format(
		'SELECT pid, day, sum(nights), sum(revenue), sum(arrivals), sum(cancelled), now() '
		'FROM (%s) x GROUP BY pid, day', livekpi._booking_rows_sql(kt)));
	PERFORM livekpi._fill_heap(ed, format(
		'SELECT pid, day, category, coalesce(sum(amount) FILTER (WHERE class = 0), 0), '
		'coalesce(sum(amount) FILTER (WHERE class = 1), 0), '
		'coalesce(sum(amount) FILTER (WHERE class = 2), 0), count(*), now() '
		'FROM (%s) x GROUP BY pid, day, category', livekpi._expense_rows_sql(kt)));
	PERFORM livekpi._fill_heap(bm, format(
		'SELECT property_id, livekpi._month(day), sum(nights_sold)::bigint, '
		'sum(room_revenue), sum(arrivals)::bigint, sum(cancelled_arrivals)::bigint, now() '
		'FROM %s GROUP BY 1, 2', bd::regclass));
	PERFORM livekpi._fill_heap(em, format(
		'SELECT property_id, livekpi._month(day), category, sum(approved_amount), '
		'sum(pending_amount), sum(rejected_amount), sum(expense_count)::bigint, now() '
		'FROM %s GROUP BY 1, 2, 3', ed::regclass));
	PERFORM livekpi._fill_heap(pm, format(
		'SELECT month, sum(n)::bigint, sum(r), sum(a)::bigint, sum(c)::bigint, sum(ap), sum(pe), '
		'sum(ec)::bigint, now() '
		'FROM (SELECT month, nights_sold AS n, room_revenue AS r, arrivals AS a, '
		'cancelled_arrivals AS c, 0 AS ap, 0 AS pe, 0 AS ec FROM %s '
		'UNION ALL SELECT month, 0, 0, 0, 0, approved_amount, pending_amount, expense_count '
		'FROM %s) x GROUP BY month', bm::regclass, em::regclass));

	PERFORM livekpi._swap_heap('livekpi.booking_daily', bd);
	PERFORM livekpi._swap_heap('livekpi.expense_daily', ed);
	PERFORM livekpi._swap_heap('livekpi.booking_monthly', bm);
	PERFORM livekpi._swap_heap('livekpi.expense_monthly', em);
	PERFORM livekpi._swap_heap('livekpi.portfolio_monthly', pm);

	INSERT INTO livekpi.properties (property_id, first_seen, updated_at)
	SELECT DISTINCT property_id, now(), now()
	FROM (SELECT property_id FROM livekpi.booking_monthly
		  UNION ALL SELECT property_id FROM livekpi.expense_monthly) x
	ON CONFLICT (property_id) DO NOTHING;

	UPDATE livekpi.state
	SET rebuild_lsn = point,
		stale_reason = NULL,
		stale_since = NULL,
		last_seq = last_seq + 1,
		epoch = CASE WHEN new_epoch THEN gen_random_uuid()::text ELSE epoch END
	RETURNING last_seq INTO s;
	INSERT INTO livekpi.delta_log (seq, applied_at, committed_at, lsn, barrier)
	VALUES (s, now(), now(), point, true);
	-- the next batches are planned on the new row counts
	ANALYZE livekpi.booking_daily, livekpi.booking_monthly, livekpi.expense_daily,
		livekpi.expense_monthly, livekpi.portfolio_monthly;
	PERFORM livekpi._wake_push();
END
$$;

CREATE OR REPLACE FUNCTION livekpi._backfill(rel regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t livekpi.tracked_tables;
	kt text;
	s bigint;
	daily regclass;
	rel_bytes bigint;
	daily_bytes bigint;
	h_daily oid;
	h_monthly oid;
	h_portfolio oid;
BEGIN
	PERFORM livekpi._require_read_committed('track_*()');
	SELECT * INTO STRICT t FROM livekpi.tracked_tables WHERE relid = rel;
	EXECUTE format('LOCK TABLE %s IN SHARE MODE', rel);
	PERFORM 1 FROM livekpi.state FOR UPDATE;
	kt := (SELECT key_type FROM livekpi.state)::text;
	daily := CASE t.kind WHEN 'bookings' THEN 'livekpi.booking_daily' ELSE 'livekpi.expense_daily' END;

	/*
	 * A table at least a tenth the size of the daily KPI table of its kind
	 * (an empty KPI table included) is merged the way rebuild() writes:
	 * its kind's daily rows and its contribution aggregated together into
	 * fresh heaps, swapped in.  A smaller one is added in place, row by row
	 * (INSERT ... ON CONFLICT), which costs in proportion to it alone.
	 */
	SELECT coalesce(sum(pg_relation_size(p.relid)), 0) INTO rel_bytes
	FROM (SELECT rel AS relid UNION SELECT relid FROM pg_partition_tree(rel)) p;
	daily_bytes := pg_relation_size(daily);
	IF NOT EXISTS (SELECT FROM livekpi.booking_daily WHERE t.kind = 'bookings'
				   UNION ALL SELECT FROM livekpi.expense_daily WHERE t.kind = 'expenses')
	   OR rel_bytes * 10 >= daily_bytes THEN
		h_daily := livekpi._new_heap(daily);
		h_monthly := livekpi._new_heap(CASE t.kind WHEN 'bookings' THEN 'livekpi.booking_monthly'
												   ELSE 'livekpi.expense_monthly' END);
		h_portfolio := livekpi._new_heap('livekpi.portfolio_monthly');
		IF t.kind = 'bookings' THEN
			PERFORM livekpi._fill_heap(h_daily, format(
				'SELECT pid, day, sum(n)::bigint, sum(r), sum(a)::bigint, sum(c)::bigint, max(u) FROM ('
				'SELECT property_id AS pid, day, nights_sold AS n, room_revenue AS r, arrivals AS a, '
				'cancelled_arrivals AS c, updated_at AS u FROM livekpi.booking_daily UNION ALL '
				'SELECT pid, day, nights, revenue, arrivals, cancelled, now() FROM (%s) x) y '
				'GROUP BY pid, day', livekpi._booking_rows_sql(kt, rel)));
			PERFORM livekpi._fill_heap(h_monthly, format(
				'SELECT property_id, livekpi._month(day), sum(nights_sold)::bigint, '
				'sum(room_revenue), sum(arrivals)::bigint, sum(cancelled_arrivals)::bigint, max(updated_at) '
				'FROM %s GROUP BY 1, 2', h_daily::regclass));
			PERFORM livekpi._fill_heap(h_portfolio, format(
				'SELECT month, sum(n)::bigint, sum(r), sum(a)::bigint, sum(c)::bigint, sum(ap), sum(pe), '
				'sum(ec)::bigint, max(u) '
				'FROM (SELECT month, nights_sold AS n, room_revenue AS r, arrivals AS a, '
				'cancelled_arrivals AS c, 0 AS ap, 0 AS pe, 0 AS ec, updated_at AS u FROM %s '
				'UNION ALL SELECT month, 0, 0, 0, 0, approved_amount, pending_amount, expense_count, '
				'updated_at FROM livekpi.expense_monthly) x GROUP BY month', h_monthly::regclass));
			PERFORM livekpi._swap_heap('livekpi.booking_daily', h_daily);
			PERFORM livekpi._swap_heap('livekpi.booking_monthly', h_monthly);
		ELSE
			PERFORM livekpi._fill_heap(h_daily, format(
				'SELECT pid, day, category, sum(ap), sum(pe), sum(re), sum(c)::bigint, max(u) FROM ('
				'SELECT property_id AS pid, day, category, approved_amount AS ap, pending_amount AS pe, '
				'rejected_amount AS re, expense_count AS c, updated_at AS u FROM livekpi.expense_daily '
				'UNION ALL SELECT pid, day, category, CASE WHEN class = 0 THEN amount ELSE 0 END, '
				'CASE WHEN class = 1 THEN amount ELSE 0 END, CASE WHEN class = 2 THEN amount ELSE 0 END, '
				'1, now() FROM (%s) x) y GROUP BY pid, day, category', livekpi._expense_rows_sql(kt, rel)));
			PERFORM livekpi._fill_heap(h_monthly, format(
				'SELECT property_id, livekpi._month(day), category, sum(approved_amount), '
				'sum(pending_amount), sum(rejected_amount), sum(expense_count)::bigint, max(updated_at) '
				'FROM %s GROUP BY 1, 2, 3', h_daily::regclass));
			PERFORM livekpi._fill_heap(h_portfolio, format(
				'SELECT month, sum(n)::bigint, sum(r), sum(a)::bigint, sum(c)::bigint, sum(ap), sum(pe), '
				'sum(ec)::bigint, max(u) '
				'FROM (SELECT month, nights_sold AS n, room_revenue AS r, arrivals AS a, '
				'cancelled_arrivals AS c, 0 AS ap, 0 AS pe, 0 AS ec, updated_at AS u '
				'FROM livekpi.booking_monthly '
				'UNION ALL SELECT month, 0, 0, 0, 0, approved_amount, pending_amount, expense_count, '
				'updated_at FROM %s) x GROUP BY month', h_monthly::regclass));
			PERFORM livekpi._swap_heap('livekpi.expense_daily', h_daily);
			PERFORM livekpi._swap_heap('livekpi.expense_monthly', h_monthly);
		END IF;
		PERFORM livekpi._swap_heap('livekpi.portfolio_monthly', h_portfolio);
		EXECUTE format(
			'INSERT INTO livekpi.properties (property_id, first_seen, updated_at) '
			'SELECT DISTINCT property_id, now(), now() FROM livekpi.%s '
			'ON CONFLICT (property_id) DO NOTHING',
			CASE t.kind WHEN 'bookings' THEN 'booking_monthly' ELSE 'expense_monthly' END);
	ELSIF t.kind = 'bookings' THEN
		EXECUTE format($q$
		WITH d AS MATERIALIZED (
			SELECT pid, day, sum(nights) AS n, sum(revenue) AS r, sum(arrivals) AS a,
				   sum(cancelled) AS c
			FROM (%s) x GROUP BY pid, day),
		daily AS (
			INSERT INTO livekpi.booking_daily AS k
				(property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals, updated_at)
			SELECT pid, day, n, r, a, c, now() FROM d
			ON CONFLICT (property_id, day) DO UPDATE
				SET nights_sold = k.nights_sold + excluded.nights_sold,
					room_revenue = k.room_revenue + excluded.room_revenue,
					arrivals = k.arrivals + excluded.arrivals,
					cancelled_arrivals = k.cancelled_arrivals + excluded.cancelled_arrivals,
					updated_at = excluded.updated_at),
		monthly AS (
			INSERT INTO livekpi.booking_monthly AS k
				(property_id, month, nights_sold, room_revenue, arrivals, cancelled_arrivals, updated_at)
			SELECT pid, livekpi._month(day), sum(n), sum(r), sum(a), sum(c), now() FROM d GROUP BY 1, 2
			ON CONFLICT (property_id, month) DO UPDATE
				SET nights_sold = k.nights_sold + excluded.nights_sold,
					room_revenue = k.room_revenue + excluded.room_revenue,
					arrivals = k.arrivals + excluded.arrivals,
					cancelled_arrivals = k.cancelled_arrivals + excluded.cancelled_arrivals,
					updated_at = excluded.updated_at),
		portfolio AS (
			INSERT INTO livekpi.portfolio_monthly AS k
				(month, nights_sold, room_revenue, arrivals, cancelled_arrivals, approved_expenses,
				 pending_expenses, expense_count, updated_at)
			SELECT livekpi._month(day), sum(n), sum(r), sum(a), sum(c), 0, 0, 0, now() FROM d GROUP BY 1
			ON CONFLICT (month) DO UPDATE
				SET nights_sold = k.nights_sold + excluded.nights_sold,
					room_revenue = k.room_revenue + excluded.room_revenue,
					arrivals = k.arrivals + excluded.arrivals,
					cancelled_arrivals = k.cancelled_arrivals + excluded.cancelled_arrivals,
					updated_at = excluded.updated_at)
		INSERT INTO livekpi.properties (property_id, first_seen, updated_at)
		SELECT DISTINCT pid, now(), now() FROM d
		ON CONFLICT (property_id) DO NOTHING
		$q$, livekpi._booking_rows_sql(kt, rel));
	ELSE
		EXECUTE format($q$
		WITH d AS MATERIALIZED (
			SELECT pid, day, category,
				   coalesce(sum(amount) FILTER (WHERE class = 0), 0) AS ap,
				   coalesce(sum(amount) FILTER (WHERE class = 1), 0) AS pe,
				   coalesce(sum(amount) FILTER (WHERE class = 2), 0) AS re,
				   count(*) AS c
			FROM (%s) x GROUP BY pid, day, category),
		daily AS (
			INSERT INTO livekpi.expense_daily AS k
				(property_id, day, category, approved_amount, pending_amount, rejected_amount,
				 expense_count, updated_at)
			SELECT pid, day, category, ap, pe, re, c, now() FROM d
			ON CONFLICT (property_id, day, category) DO UPDATE
				SET approved_amount = k.approved_amount + excluded.approved_amount,
					pending_amount = k.pending_amount + excluded.pending_amount,
					rejected_amount = k.rejected_amount + excluded.rejected_amount,
					expense_count = k.expense_count + excluded.expense_count,
					updated_at = excluded.updated_at),
		monthly AS (
			INSERT INTO livekpi.expense_monthly AS k
				(property_id, month, category, approved_amount, pending_amount, rejected_amount,
				 expense_count, updated_at)
			SELECT pid, livekpi._month(day), category, sum(ap), sum(pe), sum(re), sum(c), now()
			FROM d GROUP BY 1, 2, 3
			ON CONFLICT (property_id, month, category) DO UPDATE
				SET approved_amount = k.approved_amount + excluded.approved_amount,
					pending_amount = k.pending_amount + excluded.pending_amount,
					rejected_amount = k.rejected_amount + excluded.rejected_amount,
					expense_count = k.expense_count + excluded.expense_count,
					updated_at = excluded.updated_at),
		portfolio AS (
			INSERT INTO livekpi.portfolio_monthly AS k
				(month, nights_sold, room_revenue, arrivals, cancelled_arrivals, approved_expenses,
				 pending_expenses, expense_count, updated_at)
			SELECT livekpi._month(day), 0, 0, 0, 0, sum(ap), sum(pe), sum(c), now() FROM d GROUP BY 1
			ON CONFLICT (month) DO UPDATE
				SET approved_expenses = k.approved_expenses + excluded.approved_expenses,
					pending_expenses = k.pending_expenses + excluded.pending_expenses,
					expense_count = k.expense_count + excluded.expense_count,
					updated_at = excluded.updated_at)
		INSERT INTO livekpi.properties (property_id, first_seen, updated_at)
		SELECT DISTINCT pid, now(), now() FROM d
		ON CONFLICT (property_id) DO NOTHING
		$q$, livekpi._expense_rows_sql(kt, rel));
	END IF;

	UPDATE livekpi.state SET last_seq = last_seq + 1 RETURNING last_seq INTO s;
	INSERT INTO livekpi.delta_log (seq, applied_at, committed_at, lsn, barrier)
	VALUES (s, now(), now(), pg_current_wal_insert_lsn(), true);
	-- the next batches are planned on the new row counts
	IF t.kind = 'bookings' THEN
		ANALYZE livekpi.booking_daily, livekpi.booking_monthly, livekpi.portfolio_monthly;
	ELSE
		ANALYZE livekpi.expense_daily, livekpi.expense_monthly, livekpi.portfolio_monthly;
	END IF;
	PERFORM livekpi._wake_push();
END
$$;

CREATE OR REPLACE FUNCTION livekpi.rebuild() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r record;
BEGIN
	PERFORM livekpi._require_read_committed('rebuild()');
	PERFORM livekpi._lock_tracked_tables();
	FOR r IN SELECT relid FROM livekpi.tracked_tables ORDER BY relid::oid LOOP
		PERFORM livekpi._create_capture_triggers(r.relid);
	END LOOP;
	PERFORM livekpi._rebuild(false);
END
$$;

CREATE OR REPLACE FUNCTION livekpi._track(rel regclass, kind text, property_column name,
							   day1_column name, day2_column name, amount_column name,
							   status_column name, category_column name,
							   statuses1 text[], statuses2 text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	c record;
	key_attnum int2;
	new_key regtype;
	cur_key regtype;
	other regclass;
BEGIN
	PERFORM livekpi._require_read_committed('track_' || kind || '()');
	IF rel IS NULL THEN
		RAISE EXCEPTION 'rel must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	SELECT relkind, relowner, relpersistence INTO c FROM pg_class WHERE oid = rel;
	IF c.relkind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '% is not a table', rel
			USING ERRCODE = 'wrong_object_type',
				  DETAIL = 'livekpi tracks ordinary and partitioned tables.';
	END IF;
	IF c.relpersistence = 't' THEN
		RAISE EXCEPTION 'cannot track temporary table %', rel
			USING ERRCODE = 'feature_not_supported',
				  DETAIL = 'The apply worker cannot see another session''s temporary tables.';
	END IF;
	IF NOT livekpi._caller_owns(rel) THEN
		RAISE EXCEPTION 'must be owner of table %', rel
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	IF EXISTS (SELECT FROM livekpi.tracked_tables WHERE relid = rel) THEN
		RAISE EXCEPTION 'table % is already tracked', rel
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Call livekpi.untrack() first to track it with another mapping.';
	END IF;
	SELECT t.relid INTO other FROM livekpi.tracked_tables t
	WHERE t.relid::oid IN (SELECT a.relid FROM pg_partition_ancestors(rel) a WHERE a.relid <> rel)
	   OR t.relid::oid IN (SELECT p.relid FROM pg_partition_tree(rel) p WHERE p.relid <> rel)
	LIMIT 1;
	IF other IS NOT NULL THEN
		RAISE EXCEPTION 'cannot track % because % is tracked and they share a partition tree', rel, other
			USING ERRCODE = 'duplicate_object',
				  DETAIL = 'Each row must be counted once: track either the partitioned table or its partitions.';
	END IF;

	key_attnum := livekpi._resolve_column(rel, property_column, 'property_column', 'key');
	new_key := livekpi._key_type_of((SELECT atttypid FROM pg_attribute
									  WHERE attrelid = rel AND attnum = key_attnum)::regtype);
	SELECT key_type INTO cur_key FROM livekpi.state;
	IF new_key <> cur_key THEN
		IF EXISTS (SELECT FROM livekpi.tracked_tables) THEN
			RAISE EXCEPTION 'property key column "%" of table % has type %, but the tracked tables use %',
				property_column, rel, new_key, cur_key
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = 'All tracked tables share one property key type.';
		END IF;
		PERFORM livekpi._install_key_type(new_key);
	END IF;

	INSERT INTO livekpi.tracked_tables
		(relid, kind, property_attnum, day1_attnum, day2_attnum, amount_attnum,
		 status_attnum, category_attnum, statuses1, statuses2, max_stay_nights, timezone)
	VALUES (rel, kind, key_attnum,
			livekpi._resolve_column(rel, day1_column,
				CASE kind WHEN 'bookings' THEN 'check_in_column' ELSE 'date_column' END, 'date'),
			CASE WHEN kind = 'bookings'
				 THEN livekpi._resolve_column(rel, day2_column, 'check_out_column', 'date') END,
			livekpi._resolve_column(rel, amount_column, 'amount_column', 'amount'),
			CASE WHEN status_column IS NOT NULL
				 THEN livekpi._resolve_column(rel, status_column, 'status_column', 'text') END,
			CASE WHEN category_column IS NOT NULL
				 THEN livekpi._resolve_column(rel, category_column, 'category_column', 'text') END,
			coalesce(statuses1, '{}'), coalesce(statuses2, '{}'),
			current_setting('livekpi.max_stay_nights')::int,
			current_setting('livekpi.timezone'));

	PERFORM livekpi._create_capture_triggers(rel);
	-- A new key type needs a rebuild: it moves rebuild_lsn past records of
	-- the old key kind still in the stream (units of deleted properties).
	IF new_key <> cur_key THEN
		PERFORM livekpi._rebuild(false);
	ELSE
		PERFORM livekpi._backfill(rel);
	END IF;
	PERFORM livekpi._wake_apply();
END
$$;
SELECT livekpi._revoke_public();

-- ---------------------------------------------------------------------
-- Section C: tracking API, time zones, properties, disabled capture, tokens
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Section D: (dashboard and CLI: no SQL expected)
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Section E: push worker
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Section F: apply path, careful mode
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Final section (lead): views and functions re-created, privileges, rebuild
-- ---------------------------------------------------------------------
