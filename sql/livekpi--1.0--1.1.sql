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

-- Users' grants on functions and views this script drops and re-creates
-- are carried over: remembered here, given back in the final section.
SELECT set_config('livekpi_upgrade.acl', coalesce(jsonb_agg(x)::text, '[]'), true)
FROM (SELECT 'FUNCTION' AS kind, p.oid::regprocedure::text AS ident, a.grantee::regrole::text AS grantee,
			 a.privilege_type AS privilege, a.is_grantable AS grantable
	  FROM pg_proc p, aclexplode(p.proacl) a
	  WHERE p.pronamespace = 'livekpi'::regnamespace AND a.grantee <> 0 AND a.grantee <> p.proowner
	  UNION ALL
	  SELECT 'TABLE', c.oid::regclass::text, a.grantee::regrole::text, a.privilege_type, a.is_grantable
	  FROM pg_class c, aclexplode(c.relacl) a
	  WHERE c.relnamespace = 'livekpi'::regnamespace AND a.grantee <> 0 AND a.grantee <> c.relowner) x;

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

-- rebuild() clears the stale mark
CREATE OR REPLACE FUNCTION livekpi._rebuild(new_epoch boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	point pg_lsn;
	s bigint;
BEGIN
	PERFORM livekpi._require_read_committed('rebuild()');
	PERFORM livekpi._lock_tracked_tables();
	PERFORM 1 FROM livekpi.state FOR UPDATE;
	point := pg_current_wal_insert_lsn();
	PERFORM livekpi._emit_rebuild_marker();

	-- Each statement below takes a new snapshot, after the locks.
	DELETE FROM livekpi.booking_daily;
	DELETE FROM livekpi.booking_monthly;
	DELETE FROM livekpi.expense_daily;
	DELETE FROM livekpi.expense_monthly;
	DELETE FROM livekpi.portfolio_monthly;

	INSERT INTO livekpi.booking_daily
		(property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals, updated_at)
	SELECT r.*, now() FROM livekpi._recompute_booking_daily() r;
	INSERT INTO livekpi.expense_daily
		(property_id, day, category, approved_amount, pending_amount, rejected_amount,
		 expense_count, updated_at)
	SELECT r.*, now() FROM livekpi._recompute_expense_daily() r;

	INSERT INTO livekpi.booking_monthly
		(property_id, month, nights_sold, room_revenue, arrivals, cancelled_arrivals, updated_at)
	SELECT property_id, date_trunc('month', day)::date, sum(nights_sold), sum(room_revenue),
		   sum(arrivals), sum(cancelled_arrivals), now()
	FROM livekpi.booking_daily GROUP BY 1, 2;
	INSERT INTO livekpi.expense_monthly
		(property_id, month, category, approved_amount, pending_amount, rejected_amount,
		 expense_count, updated_at)
	SELECT property_id, date_trunc('month', day)::date, category, sum(approved_amount),
		   sum(pending_amount), sum(rejected_amount), sum(expense_count), now()
	FROM livekpi.expense_daily GROUP BY 1, 2, 3;
	INSERT INTO livekpi.portfolio_monthly
		(month, nights_sold, room_revenue, arrivals, cancelled_arrivals, approved_expenses,
		 pending_expenses, expense_count, updated_at)
	SELECT month, sum(n), sum(r), sum(a), sum(c), sum(ap), sum(pe), sum(ec), now()
	FROM (SELECT month, nights_sold AS n, room_revenue AS r, arrivals AS a,
				 cancelled_arrivals AS c, 0 AS ap, 0 AS pe, 0 AS ec
		  FROM livekpi.booking_monthly
		  UNION ALL
		  SELECT month, 0, 0, 0, 0, approved_amount, pending_amount, expense_count
		  FROM livekpi.expense_monthly) x
	GROUP BY month;

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

-- ---------------------------------------------------------------------
-- Section A: change-record authentication, output plugin options
-- ---------------------------------------------------------------------
-- No SQL objects: records are signed by the C trigger and checked by the
-- output plugin (src/change.c, src/decoder.c).  The 1.1 library rejects
-- 1.0's unsigned records (counted in records_rejected), so changes
-- committed under 1.0 and still in the slot reach the KPIs only through
-- the rebuild this update ends with.

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

-- (_track: re-created in section C, which changes its signature)
SELECT livekpi._revoke_public();

-- ---------------------------------------------------------------------
-- Section C: tracking API, time zones, properties, disabled capture, tokens
-- ---------------------------------------------------------------------

-- C1. Disabled or bypassed capture (issue 8 item 4)

/*
 * _capture_gaps()
 *		The tracked tables (by their tracked root) some of whose livekpi
 *		triggers do not fire for ordinary sessions: disabled ('D') or
 *		replica-only ('R').  'O' (what ENABLE TRIGGER sets) fires for
 *		ordinary sessions; _on_capture_state() turns it back into ALWAYS.
 */
CREATE FUNCTION livekpi._capture_gaps(OUT relid regclass, OUT triggers text)
RETURNS SETOF record
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT t.relid,
		   string_agg(format('%s on %s (%s)', g.tgname, g.tgrelid::regclass,
							 CASE g.tgenabled WHEN 'D' THEN 'disabled' ELSE 'enabled for replica only' END),
					  ', ' ORDER BY g.tgrelid, g.tgname)
	FROM livekpi.tracked_tables t
	JOIN pg_trigger g ON g.tgrelid = ANY (ARRAY[t.relid::oid] || t.partitions::oid[])
		AND g.tgname IN ('livekpi_capture', 'livekpi_truncate')
	WHERE g.tgenabled IN ('D', 'R')
	GROUP BY t.relid
	UNION ALL
	SELECT g.tgrelid::regclass, format('%s on %s (%s)', g.tgname, g.tgrelid::regclass,
									   CASE g.tgenabled WHEN 'D' THEN 'disabled' ELSE 'enabled for replica only' END)
	FROM pg_trigger g
	WHERE g.tgname IN ('livekpi_property', 'livekpi_units') AND g.tgenabled IN ('D', 'R')
$$;

-- the stale reason a disabled capture of this table leaves
CREATE FUNCTION livekpi._capture_gap_reason(rel regclass) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT format('capture was disabled on %s', rel)
$$;

/*
 * _on_capture_state()
 *		After every ALTER TABLE: warns about and marks stale each tracked
 *		table whose capture no longer fires; when capture is whole again
 *		after a gap (or after a table rewrite in this command), recomputes
 *		the KPIs.  SECURITY DEFINER: it runs on every user's DDL.
 */
CREATE FUNCTION livekpi._on_capture_state() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	g record;
	touched oid[];
	reason text;
	n_gaps int := 0;
	rewritten boolean;
BEGIN
	IF current_setting('livekpi_internal.ddl', true) = 'on'
	   OR NOT EXISTS (SELECT FROM livekpi.tracked_tables)
		  AND NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'livekpi_property') THEN
		RETURN;
	END IF;
	SELECT coalesce(array_agg(c.objid), '{}') INTO touched
	FROM pg_event_trigger_ddl_commands() c WHERE c.classid = 'pg_class'::regclass;

	-- ENABLE TRIGGER (and ENABLE TRIGGER ALL) leave 'O': back to ALWAYS, so
	-- that sessions with session_replication_role = replica are captured too.
	PERFORM set_config('livekpi_internal.ddl', 'on', true);
	FOR g IN
		SELECT tg.tgrelid::regclass AS rel, tg.tgname
		FROM pg_trigger tg
		WHERE tg.tgrelid = ANY (touched) AND tg.tgenabled = 'O'
		  AND tg.tgname IN ('livekpi_capture', 'livekpi_truncate', 'livekpi_property', 'livekpi_units')
		  AND (tg.tgrelid IN (SELECT t.relid FROM livekpi.tracked_tables t)
			   OR tg.tgrelid IN (SELECT unnest(t.partitions) FROM livekpi.tracked_tables t)
			   OR tg.tgname IN ('livekpi_property', 'livekpi_units'))
	LOOP
		EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', g.rel, g.tgname);
	END LOOP;
	PERFORM set_config('livekpi_internal.ddl', 'off', true);

	FOR g IN SELECT * FROM livekpi._capture_gaps() LOOP
		n_gaps := n_gaps + 1;
		reason := livekpi._capture_gap_reason(g.relid);
		IF position(reason IN coalesce((SELECT stale_reason FROM livekpi.state), '')) = 0 THEN
			RAISE WARNING 'livekpi does not capture changes of table % while its trigger is disabled', g.relid
				USING DETAIL = format('Not firing: %s. Rows written meanwhile are not counted: the KPIs are marked stale (livekpi.status, /healthz).', g.triggers),
					  HINT = 'Enable the trigger again (ALTER TABLE ... ENABLE TRIGGER ALL): livekpi then recomputes the KPIs by itself.';
			PERFORM livekpi._mark_stale(reason);
		END IF;
	END LOOP;

	rewritten := coalesce(current_setting('livekpi_internal.rewritten', true), '') = 'on';
	IF rewritten THEN
		PERFORM set_config('livekpi_internal.rewritten', 'off', true);
	END IF;
	IF n_gaps = 0
	   AND (rewritten OR (SELECT stale_reason FROM livekpi.state) LIKE '%capture was disabled on %') THEN
		IF current_setting('transaction_isolation') <> 'read committed' THEN
			-- _rebuild() needs READ COMMITTED; stay stale until rebuild()
			PERFORM livekpi._mark_stale('capture was bypassed (rewrite or disabled trigger)');
			RAISE WARNING 'livekpi could not recompute the KPIs in a % transaction', upper(current_setting('transaction_isolation'))
				USING DETAIL = 'The KPIs stay marked stale.',
					  HINT = 'Run SELECT livekpi.rebuild() in a READ COMMITTED transaction.';
		ELSE
			RAISE NOTICE 'livekpi capture is whole again: recomputing the KPIs';
			PERFORM livekpi._backfill_properties();
			PERFORM livekpi._rebuild(false);
		END IF;
	END IF;
END
$$;

CREATE EVENT TRIGGER livekpi_capture_state ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION livekpi._on_capture_state();

/*
 * _on_rewrite()
 *		A tracked table (or a partition of one) about to be rewritten by
 *		ALTER TABLE: its rows change without firing the capture trigger, so
 *		the command ends with a recompute (_on_capture_state).
 */
CREATE FUNCTION livekpi._on_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	rel oid := pg_event_trigger_table_rewrite_oid();
	root regclass;
BEGIN
	IF current_setting('livekpi_internal.ddl', true) = 'on' THEN
		RETURN;
	END IF;
	SELECT t.relid INTO root FROM livekpi.tracked_tables t
	WHERE t.relid::oid = rel OR rel = ANY (t.partitions::oid[]);
	IF root IS NULL AND NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel AND tgname = 'livekpi_property') THEN
		RETURN;
	END IF;
	RAISE WARNING 'table % is rewritten without firing livekpi''s capture trigger', rel::regclass
		USING DETAIL = 'livekpi recomputes the KPIs when the command ends.';
	PERFORM set_config('livekpi_internal.rewritten', 'on', true);
END
$$;

CREATE EVENT TRIGGER livekpi_rewrite ON table_rewrite
	EXECUTE FUNCTION livekpi._on_rewrite();

/*
 * _keep_stale_while_disabled()
 *		A rebuild while capture is still disabled is exact at that moment
 *		only: the KPIs stay stale until capture is whole again.
 */
CREATE FUNCTION livekpi._keep_stale_while_disabled() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	g record;
BEGIN
	IF NEW.stale_reason IS NULL AND OLD.stale_reason IS NOT NULL THEN
		FOR g IN SELECT * FROM livekpi._capture_gaps() LOOP
			NEW.stale_reason := concat_ws('; ', NEW.stale_reason, livekpi._capture_gap_reason(g.relid));
			NEW.stale_since := OLD.stale_since;
		END LOOP;
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER livekpi_keep_stale BEFORE UPDATE OF stale_reason ON livekpi.state
	FOR EACH ROW EXECUTE FUNCTION livekpi._keep_stale_while_disabled();
ALTER TABLE livekpi.state ENABLE ALWAYS TRIGGER livekpi_keep_stale;

-- C2. Per-table time zones, one error for every mapping problem (issue 11
-- items 2 and 5).  track_bookings and track_expenses gain a timezone
-- argument: they are dropped and re-created, and every role that had
-- EXECUTE on the 1.0 functions gets it on the new ones.
DO $$
BEGIN
	PERFORM set_config('livekpi_internal.track_grants', coalesce(string_agg(
		format('GRANT EXECUTE ON FUNCTION %s TO %s%s',
			   CASE p.proname WHEN 'track_bookings'
					THEN 'livekpi.track_bookings(regclass, name, name, name, name, name, text[], text)'
					ELSE 'livekpi.track_expenses(regclass, name, name, name, name, name, text[], text[], text)' END,
			   CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
			   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), ';'), ''), true)
	FROM pg_proc p
	CROSS JOIN LATERAL aclexplode(p.proacl) a
	LEFT JOIN pg_roles r ON r.oid = a.grantee
	WHERE p.pronamespace = 'livekpi'::regnamespace
	  AND p.proname IN ('track_bookings', 'track_expenses')
	  AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner;
END
$$;
DROP FUNCTION livekpi.track_bookings(regclass, name, name, name, name, name, text[]);
DROP FUNCTION livekpi.track_expenses(regclass, name, name, name, name, name, text[], text[]);
DROP FUNCTION livekpi._track(regclass, text, name, name, name, name, name, name, text[], text[]);
DROP FUNCTION livekpi._resolve_column(regclass, name, text, text);

CREATE FUNCTION livekpi._raise_error(sqlstate text, message text, detail text, hint text)
RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_raise_error' LANGUAGE C;

CREATE FUNCTION livekpi._map_column(rel regclass, col name, arg text, allowed text,
									OUT attnum int2, OUT problem text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	a record;
	ok boolean;
BEGIN
	IF col IS NULL THEN
		problem := format('%s must not be NULL.', arg);
		RETURN;
	END IF;
	SELECT att.attnum, att.atttypid::regtype AS typ, t.typcategory, t.typtype INTO a
	FROM pg_attribute att JOIN pg_type t ON t.oid = att.atttypid
	WHERE att.attrelid = rel AND att.attname = col AND att.attnum > 0 AND NOT att.attisdropped;
	IF NOT FOUND THEN
		problem := format('%s: column "%s" does not exist; name the column with %s => ''...''.',
						  arg, col, arg);
		RETURN;
	END IF;
	ok := CASE allowed
			  WHEN 'key' THEN livekpi._key_type_of(a.typ) IS NOT NULL
			  WHEN 'date' THEN a.typ IN ('date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype)
			  WHEN 'amount' THEN a.typ IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype,
										   'numeric'::regtype, 'real'::regtype, 'double precision'::regtype)
			  ELSE a.typcategory = 'S' OR a.typtype = 'e'
		  END;
	IF NOT ok THEN
		problem := format('%s: column "%s" has unsupported type %s; %s', arg, col, a.typ,
						  CASE allowed
							  WHEN 'key' THEN 'a property key must be smallint, integer, bigint, uuid, text or varchar.'
							  WHEN 'date' THEN 'a date column must be date, timestamp or timestamptz.'
							  WHEN 'amount' THEN 'an amount must be smallint, integer, bigint, numeric, real or double precision.'
							  ELSE 'a status or category column must be of a string type or an enum.' END);
		RETURN;
	END IF;
	attnum := a.attnum;
END
$$;

CREATE FUNCTION livekpi._check_zone(zone text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF zone IS NULL OR zone = '' THEN
		RETURN 'timezone must not be empty.';
	END IF;
	PERFORM now() AT TIME ZONE zone;
	RETURN NULL;
EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
	RETURN format('timezone: time zone "%s" is not recognized; use a name from pg_timezone_names, such as ''America/New_York''.', zone);
END
$$;

CREATE FUNCTION livekpi._track(rel regclass, kind text, property_column name,
							   day1_column name, day2_column name, amount_column name,
							   status_column name, category_column name,
							   statuses1 text[], statuses2 text[], zone text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	c record;
	m record;
	key_attnum int2;
	day1 int2;
	day2 int2;
	amount int2;
	status int2;
	category int2;
	problems text[] := '{}';
	new_key regtype;
	cur_key regtype;
	other regclass;
	fn text := format('livekpi.track_%s()', kind);
	tz_cols text;
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		PERFORM livekpi._raise_error('25000',
			format('%s cannot run in a %s transaction', fn, upper(current_setting('transaction_isolation'))),
			'It recomputes the KPIs from a snapshot taken after it locks the tracked tables.',
			'Run it in a READ COMMITTED transaction.');
	END IF;
	IF rel IS NULL THEN
		PERFORM livekpi._raise_error('22004', 'rel must not be NULL', NULL, NULL);
	END IF;
	SELECT relkind, relowner, relpersistence INTO c FROM pg_class WHERE oid = rel;
	IF c.relkind NOT IN ('r', 'p') THEN
		PERFORM livekpi._raise_error('42809', format('%s is not a table', rel),
			'livekpi tracks ordinary and partitioned tables.', NULL);
	END IF;
	IF c.relpersistence = 't' THEN
		PERFORM livekpi._raise_error('0A000', format('cannot track temporary table %s', rel),
			'The apply worker cannot see another session''s temporary tables.', NULL);
	END IF;
	IF NOT livekpi._caller_owns(rel) THEN
		PERFORM livekpi._raise_error('42501', format('must be owner of table %s', rel), NULL, NULL);
	END IF;
	IF EXISTS (SELECT FROM livekpi.tracked_tables WHERE relid = rel) THEN
		PERFORM livekpi._raise_error('42710', format('table %s is already tracked', rel), NULL,
			'Call livekpi.untrack() first to track it with another mapping.');
	END IF;
	SELECT t.relid INTO other FROM livekpi.tracked_tables t
	WHERE t.relid::oid IN (SELECT a.relid FROM pg_partition_ancestors(rel) a WHERE a.relid <> rel)
	   OR t.relid::oid IN (SELECT p.relid FROM pg_partition_tree(rel) p WHERE p.relid <> rel)
	LIMIT 1;
	IF other IS NOT NULL THEN
		PERFORM livekpi._raise_error('42710',
			format('cannot track %s because %s is tracked and they share a partition tree', rel, other),
			'Each row must be counted once: track either the partitioned table or its partitions.', NULL);
	END IF;

	-- every mapping problem of the call, then one error
	m := livekpi._map_column(rel, property_column, 'property_column', 'key');
	key_attnum := m.attnum;
	problems := problems || m.problem;
	m := livekpi._map_column(rel, day1_column,
							 CASE kind WHEN 'bookings' THEN 'check_in_column' ELSE 'date_column' END, 'date');
	day1 := m.attnum;
	problems := problems || m.problem;
	IF kind = 'bookings' THEN
		m := livekpi._map_column(rel, day2_column, 'check_out_column', 'date');
		day2 := m.attnum;
		problems := problems || m.problem;
	END IF;
	m := livekpi._map_column(rel, amount_column, 'amount_column', 'amount');
	amount := m.attnum;
	problems := problems || m.problem;
	IF status_column IS NOT NULL THEN
		m := livekpi._map_column(rel, status_column, 'status_column', 'text');
		status := m.attnum;
		problems := problems || m.problem;
	END IF;
	IF category_column IS NOT NULL THEN
		m := livekpi._map_column(rel, category_column, 'category_column', 'text');
		category := m.attnum;
		problems := problems || m.problem;
	END IF;
	IF zone IS NOT NULL THEN
		problems := problems || livekpi._check_zone(zone);
	END IF;

	/*
	 * A bookings or expenses table's own unique key is no property key:
	 * each row would be its own property, and (for a uuid or text primary
	 * key) the KPI tables would silently take its type.
	 */
	IF key_attnum IS NOT NULL AND EXISTS (
		SELECT FROM pg_index i
		WHERE i.indrelid = rel AND i.indisunique AND i.indnkeyatts = 1
		  AND i.indkey[0] = key_attnum AND i.indpred IS NULL) THEN
		problems := problems || format('property_column: column "%s" is a unique key of the table (each row would be its own property); name the column that identifies the property, such as property_column => ''listing_id''.',
									   property_column);
	END IF;

	IF key_attnum IS NOT NULL THEN
		new_key := livekpi._key_type_of((SELECT atttypid FROM pg_attribute
										  WHERE attrelid = rel AND attnum = key_attnum)::regtype);
		SELECT key_type INTO cur_key FROM livekpi.state;
		IF new_key <> cur_key AND EXISTS (SELECT FROM livekpi.tracked_tables) THEN
			problems := problems || format('property_column: column "%s" has key type %s, but the tracked tables use %s; all tracked tables share one property key type.',
										   property_column, new_key, cur_key);
		END IF;
	END IF;

	problems := array_remove(problems, NULL);
	IF cardinality(problems) > 0 THEN
		PERFORM livekpi._raise_error(
			CASE WHEN problems[1] LIKE '%does not exist%' THEN '42703' ELSE '42804' END,
			format('cannot track table %s: %s', rel,
				   CASE cardinality(problems) WHEN 1 THEN '1 problem with the mapping'
						ELSE cardinality(problems) || ' problems with the mapping' END),
			array_to_string(problems, E'\n'),
			format('Fix them all in one call of %s; named arguments are the simplest.', fn));
	END IF;

	IF new_key <> cur_key THEN
		PERFORM livekpi._install_key_type(new_key);
		RAISE NOTICE 'livekpi''s property key type is now % (it was %)', new_key, cur_key
			USING DETAIL = format('%s is the first tracked table; its column "%s" sets the key type of the KPI tables.', rel, property_column);
	END IF;

	zone := coalesce(zone, current_setting('livekpi.timezone'));
	INSERT INTO livekpi.tracked_tables
		(relid, kind, property_attnum, day1_attnum, day2_attnum, amount_attnum,
		 status_attnum, category_attnum, statuses1, statuses2, max_stay_nights, timezone)
	VALUES (rel, kind, key_attnum, day1, day2, amount, status, category,
			coalesce(statuses1, '{}'), coalesce(statuses2, '{}'),
			current_setting('livekpi.max_stay_nights')::int, zone);

	SELECT string_agg(format('"%s"', a.attname), ', ' ORDER BY a.attnum) INTO tz_cols
	FROM pg_attribute a
	WHERE a.attrelid = rel AND a.attnum IN (day1, day2) AND a.atttypid = 'timestamptz'::regtype;
	IF tz_cols IS NOT NULL THEN
		RAISE NOTICE 'livekpi dates the timestamptz column% % of table % in time zone "%"',
			CASE WHEN tz_cols LIKE '%,%' THEN 's' ELSE '' END, tz_cols, rel, zone
			USING HINT = 'Change it with SELECT livekpi.set_timezone(''' || rel::text || ''', ''Area/City'').';
	END IF;

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

CREATE FUNCTION livekpi.track_bookings(
	rel regclass,
	property_column name DEFAULT 'property_id',
	check_in_column name DEFAULT 'check_in',
	check_out_column name DEFAULT 'check_out',
	amount_column name DEFAULT 'total_amount',
	status_column name DEFAULT 'status',
	cancelled_statuses text[] DEFAULT '{cancelled,canceled}',
	timezone text DEFAULT NULL)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT livekpi._track(rel, 'bookings', property_column, check_in_column, check_out_column,
						  amount_column, status_column, NULL, cancelled_statuses, '{}', timezone)
$$;

CREATE FUNCTION livekpi.track_expenses(
	rel regclass,
	property_column name DEFAULT 'property_id',
	date_column name DEFAULT 'incurred_on',
	amount_column name DEFAULT 'amount',
	category_column name DEFAULT 'category',
	status_column name DEFAULT 'approval_status',
	approved_statuses text[] DEFAULT '{approved}',
	rejected_statuses text[] DEFAULT '{rejected}',
	timezone text DEFAULT NULL)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT livekpi._track(rel, 'expenses', property_column, date_column, NULL,
						  amount_column, status_column, category_column,
						  approved_statuses, rejected_statuses, timezone)
$$;

/*
 * set_timezone(rel, zone)
 *		The zone that dates the timestamptz columns of one tracked table:
 *		stored with its tracking, put into its capture triggers, and every
 *		KPI recomputed with it.  rebuild() never changes it.
 */
CREATE FUNCTION livekpi.set_timezone(rel regclass, zone text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	problem text;
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		PERFORM livekpi._raise_error('25000',
			format('livekpi.set_timezone() cannot run in a %s transaction', upper(current_setting('transaction_isolation'))),
			'It recomputes the KPIs from a snapshot taken after it locks the tracked tables.',
			'Run it in a READ COMMITTED transaction.');
	END IF;
	IF rel IS NULL OR NOT EXISTS (SELECT FROM livekpi.tracked_tables t WHERE t.relid = rel) THEN
		PERFORM livekpi._raise_error('42704', format('table %s is not tracked', coalesce(rel::text, 'NULL')),
			NULL, 'livekpi.tracked lists the tracked tables.');
	END IF;
	IF NOT livekpi._caller_owns(rel) THEN
		PERFORM livekpi._raise_error('42501', format('must be owner of table %s', rel), NULL, NULL);
	END IF;
	problem := livekpi._check_zone(zone);
	IF problem IS NOT NULL THEN
		PERFORM livekpi._raise_error('22023', format('invalid time zone for table %s', rel),
			problem, 'SELECT name FROM pg_timezone_names lists the zones PostgreSQL knows.');
	END IF;
	PERFORM livekpi._lock_tracked_tables();
	UPDATE livekpi.tracked_tables t SET timezone = zone WHERE t.relid = rel;
	PERFORM livekpi._create_capture_triggers(rel);
	PERFORM livekpi._rebuild(false);
END
$$;


DO $$
DECLARE
	g text;
BEGIN
	FOREACH g IN ARRAY coalesce(string_to_array(nullif(current_setting('livekpi_internal.track_grants', true), ''), ';'), '{}') LOOP
		EXECUTE g;
	END LOOP;
END
$$;

-- C3. Properties: names, track_properties(), the key type through a logical
-- restore (issue 11 item 3).  property_kpis gains name as its last column
-- (CREATE OR REPLACE keeps users' GRANTs on it); livekpi_units also fires
-- on a change of name; untrack() also releases the properties table.
-- ---------------------------------------------------------------------
-- Properties from the user's own table (SPEC section 2, track_properties)
-- ---------------------------------------------------------------------

-- names of the properties; with track_properties, from the user's table
ALTER TABLE livekpi.properties ADD COLUMN name text;

/*
 * key_settings: the property key type when it is not bigint, as extension
 * configuration data.  pg_dump loads it before livekpi.properties (name
 * order), and its trigger switches the restored KPI tables to that key
 * type first, so that uuid and text keys, units and names come back with a
 * logical restore.  _on_key_type() keeps it equal to state.key_type.
 */
CREATE TABLE livekpi.key_settings (
	singleton	boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	key_type	regtype NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('livekpi.key_settings', '');

CREATE FUNCTION livekpi._on_key_settings() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF NEW.key_type IS DISTINCT FROM (SELECT key_type FROM livekpi.state) THEN
		PERFORM livekpi._install_key_type(NEW.key_type);
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER livekpi_key_settings AFTER INSERT ON livekpi.key_settings
	FOR EACH ROW EXECUTE FUNCTION livekpi._on_key_settings();
ALTER TABLE livekpi.key_settings ENABLE ALWAYS TRIGGER livekpi_key_settings;

CREATE FUNCTION livekpi._on_key_type() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	DELETE FROM livekpi.key_settings;
	IF NEW.key_type <> 'bigint'::regtype THEN
		INSERT INTO livekpi.key_settings (key_type) VALUES (NEW.key_type);
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER livekpi_key_type AFTER UPDATE OF key_type ON livekpi.state
	FOR EACH ROW WHEN (OLD.key_type IS DISTINCT FROM NEW.key_type)
	EXECUTE FUNCTION livekpi._on_key_type();
ALTER TABLE livekpi.state ENABLE ALWAYS TRIGGER livekpi_key_type;

/*
 * tracked_properties: the one table track_properties() keeps
 * livekpi.properties equal to.  units_skipped counts the rows whose units
 * were NULL, not positive or too large (and rows with a NULL key): their
 * property kept its previous units.
 */
CREATE TABLE livekpi.tracked_properties (
	relid		regclass PRIMARY KEY,
	singleton	boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton),
	property_attnum int2 NOT NULL,
	units_attnum int2,
	name_attnum int2,
	units_skipped bigint NOT NULL DEFAULT 0,
	tracked_at	timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('livekpi.tracked_properties', '');

-- the units a value of the units column gives, NULL when it is unusable
CREATE FUNCTION livekpi._units_value(v text) RETURNS int
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	n numeric;
BEGIN
	n := v::numeric;
	IF n IS NULL OR n <= 0 OR n > 2147483647 OR n <> trunc(n) THEN
		RETURN NULL;
	END IF;
	RETURN n::int;
EXCEPTION WHEN invalid_text_representation THEN
	RETURN NULL;
END
$$;

/*
 * _property_sync()
 *		AFTER INSERT OR UPDATE of a row of the tracked properties table:
 *		upserts its units and name into livekpi.properties in the user's
 *		transaction.  The capture trigger of livekpi.properties then streams
 *		the change to the KPIs and the clients.  A deleted row leaves the
 *		property as it was.  SECURITY DEFINER: the table's writers need no
 *		rights on livekpi's tables.
 */
CREATE FUNCTION livekpi._property_sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t livekpi.tracked_properties;
	j jsonb := to_jsonb(NEW);
	k_name text;
	u_name text;
	n_name text;
	v_units int;
	skipped boolean := false;
BEGIN
	SELECT * INTO t FROM livekpi.tracked_properties p
	WHERE p.relid::oid IN (TG_RELID, pg_partition_root(TG_RELID));
	IF NOT FOUND THEN
		RETURN NULL;
	END IF;
	SELECT a.attname INTO k_name FROM pg_attribute a WHERE a.attrelid = t.relid AND a.attnum = t.property_attnum;
	SELECT a.attname INTO u_name FROM pg_attribute a WHERE a.attrelid = t.relid AND a.attnum = t.units_attnum;
	SELECT a.attname INTO n_name FROM pg_attribute a WHERE a.attrelid = t.relid AND a.attnum = t.name_attnum;

	IF j -> k_name IS NULL OR jsonb_typeof(j -> k_name) = 'null' THEN
		UPDATE livekpi.tracked_properties p SET units_skipped = units_skipped + 1 WHERE p.relid = t.relid;
		RETURN NULL;
	END IF;
	IF t.units_attnum IS NOT NULL THEN
		v_units := livekpi._units_value(j ->> u_name);
		skipped := v_units IS NULL;
	END IF;

	INSERT INTO livekpi.properties AS p (property_id, units, name, first_seen, updated_at)
	SELECT r.property_id, coalesce(v_units, 1), CASE WHEN t.name_attnum IS NOT NULL THEN j ->> n_name END,
		   now(), now()
	FROM jsonb_populate_record(NULL::livekpi.properties, jsonb_build_object('property_id', j -> k_name)) r
	ON CONFLICT (property_id) DO UPDATE
		SET units = coalesce(v_units, p.units),
			name = CASE WHEN t.name_attnum IS NOT NULL THEN excluded.name ELSE p.name END,
			updated_at = now()
		WHERE p.units IS DISTINCT FROM coalesce(v_units, p.units)
		   OR (t.name_attnum IS NOT NULL AND p.name IS DISTINCT FROM excluded.name);
	IF skipped THEN
		UPDATE livekpi.tracked_properties p SET units_skipped = units_skipped + 1 WHERE p.relid = t.relid;
	END IF;
	RETURN NULL;
END
$$;

/*
 * _backfill_properties()
 *		Makes livekpi.properties equal to the table track_properties()
 *		follows, set-based: when it is tracked, and when its trigger fires
 *		again after it was disabled.  Returns the rows with a key and the
 *		rows skipped (NULL key, or units not a positive integer).
 */
CREATE FUNCTION livekpi._backfill_properties(OUT n bigint, OUT skipped bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t livekpi.tracked_properties;
	property_column text;
	units_column text;
	name_column text;
	src text;
	staged text;
	rel regclass;
	units_attnum int2;
	name_attnum int2;
BEGIN
	SELECT * INTO t FROM livekpi.tracked_properties;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	rel := t.relid;
	units_attnum := t.units_attnum;
	name_attnum := t.name_attnum;
	SELECT attname INTO property_column FROM pg_attribute WHERE attrelid = rel AND attnum = t.property_attnum;
	SELECT attname INTO units_column FROM pg_attribute WHERE attrelid = rel AND attnum = units_attnum;
	SELECT attname INTO name_column FROM pg_attribute WHERE attrelid = rel AND attnum = name_attnum;
	-- backfill: every row is a property (one row of a key that repeats wins)
	src := format('SELECT %s AS k, %s AS u, %s AS n FROM %s',
				  quote_ident(property_column),
				  CASE WHEN units_attnum IS NULL THEN 'NULL::int'
					   ELSE format('livekpi._units_value(%I::text)', units_column) END,
				  CASE WHEN name_attnum IS NULL THEN 'NULL::text' ELSE format('%I::text', name_column) END,
				  livekpi._from_sql(rel));
	staged := format($q$SELECT DISTINCT ON (r.property_id) r.property_id AS pid, s.u, s.n
		FROM (%s) s
		CROSS JOIN LATERAL jsonb_populate_record(NULL::livekpi.properties,
												 jsonb_build_object('property_id', s.k)) r
		WHERE s.k IS NOT NULL
		ORDER BY r.property_id$q$, src);
	EXECUTE format($q$INSERT INTO livekpi.properties (property_id, units, name, first_seen, updated_at)
		SELECT x.pid, coalesce(x.u, 1), x.n, now(), now() FROM (%s) x
		ON CONFLICT (property_id) DO NOTHING$q$, staged);
	EXECUTE format($q$UPDATE livekpi.properties p
		SET units = coalesce(x.u, p.units),
			name = CASE WHEN %2$L THEN x.n ELSE p.name END,
			updated_at = now()
		FROM (%1$s) x
		WHERE p.property_id = x.pid
		  AND (p.units IS DISTINCT FROM coalesce(x.u, p.units)
			   OR (%2$L AND p.name IS DISTINCT FROM x.n))$q$, staged, name_attnum IS NOT NULL);
	EXECUTE format('SELECT count(*) FILTER (WHERE s.k IS NOT NULL), count(*) FILTER (WHERE s.k IS NULL OR (%L AND s.u IS NULL)) FROM (%s) s',
				   units_attnum IS NOT NULL, src) INTO n, skipped;
	UPDATE livekpi.tracked_properties SET units_skipped = units_skipped + skipped WHERE relid = rel;
END
$$;

/*
 * track_properties(rel, property_column, units_column, name_column)
 *		Keeps livekpi.properties.units and name equal to the user's own
 *		table: backfills them now, then a trigger on the table keeps them
 *		in step.  At most one table.  Every problem with the call in one
 *		error, like track_*.
 */
CREATE FUNCTION livekpi.track_properties(
	rel regclass,
	property_column name DEFAULT 'property_id',
	units_column name DEFAULT 'units',
	name_column name DEFAULT 'name')
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	c record;
	m record;
	key_attnum int2;
	units_attnum int2;
	name_attnum int2;
	problems text[] := '{}';
	new_key regtype;
	cur_key regtype;
	other regclass;
	tg oid;
	n bigint;
	skipped bigint;
BEGIN
	IF rel IS NULL THEN
		PERFORM livekpi._raise_error('22004', 'rel must not be NULL', NULL, NULL);
	END IF;
	SELECT relkind, relpersistence INTO c FROM pg_class WHERE oid = rel;
	IF c.relkind NOT IN ('r', 'p') THEN
		PERFORM livekpi._raise_error('42809', format('%s is not a table', rel),
			'livekpi tracks ordinary and partitioned tables.', NULL);
	END IF;
	IF c.relpersistence = 't' THEN
		PERFORM livekpi._raise_error('0A000', format('cannot track temporary table %s', rel), NULL, NULL);
	END IF;
	IF NOT livekpi._caller_owns(rel) THEN
		PERFORM livekpi._raise_error('42501', format('must be owner of table %s', rel), NULL, NULL);
	END IF;
	SELECT relid INTO other FROM livekpi.tracked_properties;
	IF other IS NOT NULL THEN
		PERFORM livekpi._raise_error('42710',
			format('livekpi already takes its properties from table %s', other),
			'At most one table can be tracked with livekpi.track_properties().',
			format('Call livekpi.untrack(%L) first.', other::text));
	END IF;
	IF EXISTS (SELECT FROM livekpi.tracked_tables t WHERE t.relid = rel) THEN
		PERFORM livekpi._raise_error('42710', format('table %s is already tracked as %s', rel,
			(SELECT kind FROM livekpi.tracked_tables t WHERE t.relid = rel)), NULL, NULL);
	END IF;

	m := livekpi._map_column(rel, property_column, 'property_column', 'key');
	key_attnum := m.attnum;
	problems := problems || m.problem;
	IF units_column IS NOT NULL THEN
		m := livekpi._map_column(rel, units_column, 'units_column', 'amount');
		units_attnum := m.attnum;
		problems := problems || CASE WHEN m.problem IS NULL AND
			(SELECT atttypid FROM pg_attribute WHERE attrelid = rel AND attnum = m.attnum)
				IN ('real'::regtype, 'double precision'::regtype)
			THEN format('units_column: column "%s" has type %s; units must be smallint, integer, bigint or numeric.',
						units_column, (SELECT atttypid::regtype FROM pg_attribute WHERE attrelid = rel AND attnum = m.attnum))
			ELSE replace(m.problem, 'an amount must be smallint, integer, bigint, numeric, real or double precision',
						 'units must be smallint, integer, bigint or numeric') END;
	END IF;
	IF name_column IS NOT NULL THEN
		m := livekpi._map_column(rel, name_column, 'name_column', 'text');
		name_attnum := m.attnum;
		problems := problems || replace(m.problem, 'a status or category column', 'a name column');
	END IF;
	IF key_attnum IS NOT NULL THEN
		new_key := livekpi._key_type_of((SELECT atttypid FROM pg_attribute
										  WHERE attrelid = rel AND attnum = key_attnum)::regtype);
		SELECT key_type INTO cur_key FROM livekpi.state;
		IF new_key <> cur_key AND EXISTS (SELECT FROM livekpi.tracked_tables) THEN
			problems := problems || format('property_column: column "%s" has key type %s, but the tracked tables use %s; all tracked tables share one property key type.',
										   property_column, new_key, cur_key);
		END IF;
	END IF;
	problems := array_remove(problems, NULL);
	IF cardinality(problems) > 0 THEN
		PERFORM livekpi._raise_error(
			CASE WHEN problems[1] LIKE '%does not exist%' THEN '42703' ELSE '42804' END,
			format('cannot track table %s: %s', rel,
				   CASE cardinality(problems) WHEN 1 THEN '1 problem with the mapping'
						ELSE cardinality(problems) || ' problems with the mapping' END),
			array_to_string(problems, E'\n'),
			'Fix them all in one call of livekpi.track_properties(); named arguments are the simplest.');
	END IF;
	IF new_key <> cur_key THEN
		PERFORM livekpi._install_key_type(new_key);
		RAISE NOTICE 'livekpi''s property key type is now % (it was %)', new_key, cur_key;
	END IF;

	INSERT INTO livekpi.tracked_properties (relid, property_attnum, units_attnum, name_attnum)
	VALUES (rel, key_attnum, units_attnum, name_attnum);

	SELECT b.n, b.skipped INTO n, skipped FROM livekpi._backfill_properties() b;

	PERFORM set_config('livekpi_internal.ddl', 'on', true);
	EXECUTE format('CREATE TRIGGER livekpi_property AFTER INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION livekpi._property_sync()', rel);
	EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER livekpi_property', rel);
	FOR tg IN SELECT oid FROM pg_trigger WHERE tgrelid = rel AND tgname = 'livekpi_property' LOOP
		PERFORM livekpi._depend_on_extension('pg_trigger'::regclass, tg);
	END LOOP;
	PERFORM set_config('livekpi_internal.ddl', 'off', true);
	RAISE NOTICE 'livekpi takes the units and names of its properties from table % (% rows%)', rel, n,
		CASE WHEN skipped > 0 THEN format(', %s skipped: NULL key or units not a positive integer', skipped) ELSE '' END;
END
$$;

-- ---------------------------------------------------------------------
-- Token administration only through functions (issue 11 item 7)
-- ---------------------------------------------------------------------

/*
 * create_token() and revoke_token() run as the extension's owner, so that a
 * token administrator needs EXECUTE on them and no privilege at all on
 * livekpi.push_tokens: a direct UPDATE could widen a scoped token, make it
 * never expire or un-revoke it.  docs/protocol.md lists the GRANTs.
 */
ALTER FUNCTION livekpi._create_token(text, text[], interval) SECURITY DEFINER;
ALTER FUNCTION livekpi.revoke_token(text) SECURITY DEFINER;
INSERT INTO livekpi.key_settings (key_type)
SELECT key_type FROM livekpi.state WHERE key_type <> 'bigint'::regtype;

CREATE OR REPLACE FUNCTION livekpi._install_key_type(key_type regtype) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $install$
DECLARE
	k text := key_type::text;
	kind text := livekpi._key_kind(key_type);
	obj record;
	members text[] := ARRAY[
		'VIEW livekpi.property_kpis',
		'VIEW livekpi.portfolio_kpis',
		'FUNCTION livekpi.kpis',
		'FUNCTION livekpi.create_token',
		'FUNCTION livekpi._apply_batch',
		'FUNCTION livekpi._batch_deltas',
		'FUNCTION livekpi._recompute_booking_daily',
		'FUNCTION livekpi._recompute_expense_daily'];
	m text;
	in_extension_script boolean;
BEGIN
	IF key_type NOT IN ('bigint'::regtype, 'uuid'::regtype, 'text'::regtype) THEN
		RAISE EXCEPTION 'livekpi cannot use % as its property key type', key_type
			USING ERRCODE = 'feature_not_supported';
	END IF;

	-- Inside CREATE EXTENSION every new object becomes a member by itself;
	-- the objects exist only when the key type changes later.
	in_extension_script := to_regclass('livekpi.property_kpis') IS NULL;
	PERFORM set_config('livekpi_internal.ddl', 'on', true);

	-- The apply worker locks this row before it touches a KPI table; taking
	-- it first here keeps the two from deadlocking over those tables.
	PERFORM 1 FROM livekpi.state FOR UPDATE;

	-- Drop what depends on the key type.
	IF to_regclass('livekpi.property_kpis') IS NOT NULL THEN
		FOREACH m IN ARRAY members LOOP
			FOR obj IN
				SELECT CASE WHEN m LIKE 'VIEW %' THEN m
							ELSE 'FUNCTION ' || p.oid::regprocedure::text END AS ident
				FROM (SELECT 1) one
				LEFT JOIN pg_proc p ON m LIKE 'FUNCTION %'
					AND p.pronamespace = 'livekpi'::regnamespace
					AND p.proname = split_part(m, '.', 2)
				WHERE m LIKE 'VIEW %' OR p.oid IS NOT NULL
			LOOP
				IF NOT in_extension_script THEN
					EXECUTE format('ALTER EXTENSION livekpi DROP %s', obj.ident);
				END IF;
				EXECUTE format('DROP %s', obj.ident);
			END LOOP;
		END LOOP;
	END IF;

	-- Key columns.
	FOR obj IN SELECT unnest(ARRAY['properties', 'booking_daily', 'booking_monthly',
									'expense_daily', 'expense_monthly']) AS t
	LOOP
		BEGIN
			EXECUTE format('ALTER TABLE livekpi.%I ALTER COLUMN property_id TYPE %s USING property_id::text::%s',
						   obj.t, k, k);
		EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
			RAISE EXCEPTION 'livekpi.% holds property keys that cannot become %', obj.t, k
				USING ERRCODE = 'datatype_mismatch',
					  DETAIL = 'The first table tracked with another key type changes the key type of the KPI tables.',
					  HINT = 'Delete the rows of livekpi.properties left from the tables tracked before, or track a table whose key type matches them.';
		END;
	END LOOP;

	-- The capture trigger on livekpi.properties carries the key kind.
	DROP TRIGGER IF EXISTS livekpi_units ON livekpi.properties;
	EXECUTE format($t$CREATE TRIGGER livekpi_units
		AFTER INSERT OR UPDATE OF units, name OR DELETE ON livekpi.properties
		FOR EACH ROW EXECUTE FUNCTION livekpi.capture('U', %L, '0', '1', '0', '0', '0', '0', '0', '0', 'UTC', '0')$t$,
		kind);
	ALTER TABLE livekpi.properties ENABLE ALWAYS TRIGGER livekpi_units;

	EXECUTE $v$
	CREATE VIEW livekpi.property_kpis AS
	SELECT k.property_id,
		   k.month,
		   p.units,
		   (p.units * d.days)::bigint AS available_nights,
		   coalesce(b.nights_sold, 0) AS nights_sold,
		   round(coalesce(b.nights_sold, 0)::numeric / nullif(p.units * d.days, 0), 6) AS occupancy,
		   coalesce(b.room_revenue, 0) AS room_revenue,
		   round(coalesce(b.room_revenue, 0) / nullif(coalesce(b.nights_sold, 0), 0), 2) AS adr,
		   round(coalesce(b.room_revenue, 0) / nullif(p.units * d.days, 0), 2) AS revpar,
		   coalesce(b.arrivals, 0) AS arrivals,
		   coalesce(b.cancelled_arrivals, 0) AS cancelled_arrivals,
		   round(coalesce(b.cancelled_arrivals, 0)::numeric
				 / nullif(coalesce(b.arrivals, 0) + coalesce(b.cancelled_arrivals, 0), 0), 6) AS cancellation_rate,
		   coalesce(e.approved_expenses, 0) AS approved_expenses,
		   coalesce(e.pending_expenses, 0) AS pending_expenses,
		   coalesce(b.room_revenue, 0) - coalesce(e.approved_expenses, 0) AS noi,
		   greatest(b.updated_at, e.updated_at, p.updated_at) AS updated_at,
		   p.name
	FROM (SELECT property_id, month FROM livekpi.booking_monthly
		  UNION
		  SELECT property_id, month FROM livekpi.expense_monthly) k
	CROSS JOIN LATERAL (SELECT ((k.month + interval '1 month')::date - k.month) AS days) d
	LEFT JOIN livekpi.properties p ON p.property_id = k.property_id
	LEFT JOIN livekpi.booking_monthly b ON b.property_id = k.property_id AND b.month = k.month
	LEFT JOIN LATERAL (
		SELECT sum(x.approved_amount) AS approved_expenses,
			   sum(x.pending_amount) AS pending_expenses,
			   max(x.updated_at) AS updated_at
		FROM livekpi.expense_monthly x
		WHERE x.property_id = k.property_id AND x.month = k.month) e ON true
	$v$;

	EXECUTE $v$
	CREATE VIEW livekpi.portfolio_kpis AS
	SELECT m.month,
		   pr.properties,
		   (pr.units * d.days)::bigint AS available_nights,
		   m.nights_sold,
		   round(m.nights_sold::numeric / nullif(pr.units * d.days, 0), 6) AS occupancy,
		   m.room_revenue,
		   round(m.room_revenue / nullif(m.nights_sold, 0), 2) AS adr,
		   round(m.room_revenue / nullif(pr.units * d.days, 0), 2) AS revpar,
		   m.arrivals,
		   m.cancelled_arrivals,
		   round(m.cancelled_arrivals::numeric / nullif(m.arrivals + m.cancelled_arrivals, 0), 6) AS cancellation_rate,
		   m.approved_expenses,
		   m.pending_expenses,
		   m.room_revenue - m.approved_expenses AS noi,
		   greatest(m.updated_at, pr.updated_at) AS updated_at
	FROM livekpi.portfolio_monthly m
	CROSS JOIN LATERAL (SELECT ((m.month + interval '1 month')::date - m.month) AS days) d
	CROSS JOIN (SELECT count(*) AS properties,
					   coalesce(sum(units), 0) AS units,
					   max(updated_at) AS updated_at
				FROM livekpi.properties) pr
	$v$;

	EXECUTE format($f$
	CREATE FUNCTION livekpi.kpis(from_day date, to_day date, properties %1$s[] DEFAULT NULL)
	RETURNS TABLE (properties bigint, available_nights bigint, nights_sold bigint,
				   occupancy numeric, room_revenue numeric, adr numeric, revpar numeric,
				   arrivals bigint, cancelled_arrivals bigint, cancellation_rate numeric,
				   approved_expenses numeric, pending_expenses numeric, noi numeric,
				   updated_at timestamptz)
	LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $body$
		SELECT pr.n,
			   pr.units * d.days,
			   b.nights,
			   round(b.nights::numeric / nullif(pr.units * d.days, 0), 6),
			   b.revenue,
			   round(b.revenue / nullif(b.nights, 0), 2),
			   round(b.revenue / nullif(pr.units * d.days, 0), 2),
			   b.arrivals,
			   b.cancelled,
			   round(b.cancelled::numeric / nullif(b.arrivals + b.cancelled, 0), 6),
			   e.approved,
			   e.pending,
			   b.revenue - e.approved,
			   greatest(pr.updated_at, b.updated_at, e.updated_at)
		FROM (SELECT greatest(to_day - from_day + 1, 0)::bigint AS days) d,
			 (SELECT count(*) AS n, coalesce(sum(p.units), 0)::bigint AS units, max(p.updated_at) AS updated_at
			  FROM livekpi.properties p
			  WHERE kpis.properties IS NULL OR p.property_id = ANY (kpis.properties)) pr,
			 (SELECT coalesce(sum(x.nights_sold), 0)::bigint AS nights,
					 coalesce(sum(x.room_revenue), 0) AS revenue,
					 coalesce(sum(x.arrivals), 0)::bigint AS arrivals,
					 coalesce(sum(x.cancelled_arrivals), 0)::bigint AS cancelled,
					 max(x.updated_at) AS updated_at
			  FROM livekpi.booking_daily x
			  WHERE x.day BETWEEN from_day AND to_day
				AND (kpis.properties IS NULL OR x.property_id = ANY (kpis.properties))) b,
			 (SELECT coalesce(sum(x.approved_amount), 0) AS approved,
					 coalesce(sum(x.pending_amount), 0) AS pending,
					 max(x.updated_at) AS updated_at
			  FROM livekpi.expense_daily x
			  WHERE x.day BETWEEN from_day AND to_day
				AND (kpis.properties IS NULL OR x.property_id = ANY (kpis.properties))) e
	$body$$f$, k);

	EXECUTE format($f$
	CREATE FUNCTION livekpi.create_token(label text, properties %1$s[] DEFAULT NULL,
										 valid_for interval DEFAULT '30 days')
	RETURNS text
	LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $body$
	BEGIN
		RETURN livekpi._create_token(label, properties::text[], valid_for);
	END
	$body$$f$, k);

	EXECUTE format($f$
	CREATE FUNCTION livekpi._recompute_booking_daily()
	RETURNS TABLE (property_id %1$s, day date, nights_sold bigint, room_revenue numeric,
				   arrivals bigint, cancelled_arrivals bigint)
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $body$
	BEGIN
		RETURN QUERY EXECUTE livekpi._booking_recompute_sql(%1$L);
	END
	$body$$f$, k);

	EXECUTE format($f$
	CREATE FUNCTION livekpi._recompute_expense_daily()
	RETURNS TABLE (property_id %1$s, day date, category text, approved_amount numeric,
				   pending_amount numeric, rejected_amount numeric, expense_count bigint)
	LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $body$
	BEGIN
		RETURN QUERY EXECUTE livekpi._expense_recompute_sql(%1$L);
	END
	$body$$f$, k);

	EXECUTE format($f$
	CREATE FUNCTION livekpi._apply_batch(
		b_key %1$s[], b_day date[], b_nights bigint[], b_revenue numeric[],
		b_arrivals bigint[], b_cancelled bigint[],
		e_key %1$s[], e_day date[], e_category text[], e_approved numeric[],
		e_pending numeric[], e_rejected numeric[], e_count bigint[],
		u_key %1$s[], applied_at timestamptz, committed_at timestamptz,
		batch_lsn pg_lsn, changes bigint, retention int, retention_batches int,
		OUT seq bigint, OUT rows_written bigint)
	LANGUAGE plpgsql
	-- The apply worker analyzes the KPI tables after a large batch, so that
	-- these joins of a batch's keys with primary keys are planned on fresh
	-- row counts (see ANALYZE_AFTER_ROWS in apply_worker.c).
	SET search_path = pg_catalog, pg_temp
	AS $body$
	DECLARE
		n bigint;
		new_props %1$s[];
		bd_keys jsonb;
	BEGIN
		rows_written := 0;

		-- daily and monthly booking rows
		INSERT INTO livekpi.booking_daily AS t
			(property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals, updated_at)
		SELECT d.k, d.day, d.n, d.r, d.a, d.c, applied_at
		FROM unnest(b_key, b_day, b_nights, b_revenue, b_arrivals, b_cancelled) AS d(k, day, n, r, a, c)
		ON CONFLICT (property_id, day) DO UPDATE
			SET nights_sold = t.nights_sold + excluded.nights_sold,
				room_revenue = t.room_revenue + excluded.room_revenue,
				arrivals = t.arrivals + excluded.arrivals,
				cancelled_arrivals = t.cancelled_arrivals + excluded.cancelled_arrivals,
				updated_at = excluded.updated_at;
		GET DIAGNOSTICS n = ROW_COUNT;
		rows_written := rows_written + n;

		INSERT INTO livekpi.booking_monthly AS t
			(property_id, month, nights_sold, room_revenue, arrivals, cancelled_arrivals, updated_at)
		SELECT d.k, date_trunc('month', d.day)::date, sum(d.n), sum(d.r), sum(d.a), sum(d.c), applied_at
		FROM unnest(b_key, b_day, b_nights, b_revenue, b_arrivals, b_cancelled) AS d(k, day, n, r, a, c)
		GROUP BY 1, 2
		ON CONFLICT (property_id, month) DO UPDATE
			SET nights_sold = t.nights_sold + excluded.nights_sold,
				room_revenue = t.room_revenue + excluded.room_revenue,
				arrivals = t.arrivals + excluded.arrivals,
				cancelled_arrivals = t.cancelled_arrivals + excluded.cancelled_arrivals,
				updated_at = excluded.updated_at;
		GET DIAGNOSTICS n = ROW_COUNT;
		rows_written := rows_written + n;

		-- daily and monthly expense rows
		INSERT INTO livekpi.expense_daily AS t
			(property_id, day, category, approved_amount, pending_amount, rejected_amount,
			 expense_count, updated_at)
		SELECT d.k, d.day, d.cat, d.ap, d.pe, d.re, d.c, applied_at
		FROM unnest(e_key, e_day, e_category, e_approved, e_pending, e_rejected, e_count)
			AS d(k, day, cat, ap, pe, re, c)
		ON CONFLICT (property_id, day, category) DO UPDATE
			SET approved_amount = t.approved_amount + excluded.approved_amount,
				pending_amount = t.pending_amount + excluded.pending_amount,
				rejected_amount = t.rejected_amount + excluded.rejected_amount,
				expense_count = t.expense_count + excluded.expense_count,
				updated_at = excluded.updated_at;
		GET DIAGNOSTICS n = ROW_COUNT;
		rows_written := rows_written + n;

		INSERT INTO livekpi.expense_monthly AS t
			(property_id, month, category, approved_amount, pending_amount, rejected_amount,
			 expense_count, updated_at)
		SELECT d.k, date_trunc('month', d.day)::date, d.cat, sum(d.ap), sum(d.pe), sum(d.re),
			   sum(d.c), applied_at
		FROM unnest(e_key, e_day, e_category, e_approved, e_pending, e_rejected, e_count)
			AS d(k, day, cat, ap, pe, re, c)
		GROUP BY 1, 2, 3
		ON CONFLICT (property_id, month, category) DO UPDATE
			SET approved_amount = t.approved_amount + excluded.approved_amount,
				pending_amount = t.pending_amount + excluded.pending_amount,
				rejected_amount = t.rejected_amount + excluded.rejected_amount,
				expense_count = t.expense_count + excluded.expense_count,
				updated_at = excluded.updated_at;
		GET DIAGNOSTICS n = ROW_COUNT;
		rows_written := rows_written + n;

		-- portfolio
		INSERT INTO livekpi.portfolio_monthly AS t
			(month, nights_sold, room_revenue, arrivals, cancelled_arrivals,
			 approved_expenses, pending_expenses, expense_count, updated_at)
		SELECT x.month, sum(x.n), sum(x.r), sum(x.a), sum(x.c), sum(x.ap), sum(x.pe), sum(x.ec),
			   applied_at
		FROM (SELECT date_trunc('month', d.day)::date AS month, d.n, d.r, d.a, d.c,
					 0::numeric AS ap, 0::numeric AS pe, 0::bigint AS ec
			  FROM unnest(b_day, b_nights, b_revenue, b_arrivals, b_cancelled) AS d(day, n, r, a, c)
			  UNION ALL
			  SELECT date_trunc('month', d.day)::date, 0, 0, 0, 0, d.ap, d.pe, d.c
			  FROM unnest(e_day, e_approved, e_pending, e_count) AS d(day, ap, pe, c)) x
		GROUP BY x.month
		ON CONFLICT (month) DO UPDATE
			SET nights_sold = t.nights_sold + excluded.nights_sold,
				room_revenue = t.room_revenue + excluded.room_revenue,
				arrivals = t.arrivals + excluded.arrivals,
				cancelled_arrivals = t.cancelled_arrivals + excluded.cancelled_arrivals,
				approved_expenses = t.approved_expenses + excluded.approved_expenses,
				pending_expenses = t.pending_expenses + excluded.pending_expenses,
				expense_count = t.expense_count + excluded.expense_count,
				updated_at = excluded.updated_at;
		GET DIAGNOSTICS n = ROW_COUNT;
		rows_written := rows_written + n;

		-- a row exists exactly when something contributes to it
		DELETE FROM livekpi.booking_daily t
		USING unnest(b_key, b_day) AS d(k, day)
		WHERE t.property_id = d.k AND t.day = d.day
		  AND t.nights_sold = 0 AND t.arrivals = 0 AND t.cancelled_arrivals = 0;
		DELETE FROM livekpi.booking_monthly t
		USING (SELECT DISTINCT d.k, date_trunc('month', d.day)::date AS month
			   FROM unnest(b_key, b_day) AS d(k, day)) d
		WHERE t.property_id = d.k AND t.month = d.month
		  AND t.nights_sold = 0 AND t.arrivals = 0 AND t.cancelled_arrivals = 0;
		DELETE FROM livekpi.expense_daily t
		USING unnest(e_key, e_day, e_category) AS d(k, day, cat)
		WHERE t.property_id = d.k AND t.day = d.day AND t.category = d.cat
		  AND t.expense_count = 0;
		DELETE FROM livekpi.expense_monthly t
		USING (SELECT DISTINCT d.k, date_trunc('month', d.day)::date AS month, d.cat
			   FROM unnest(e_key, e_day, e_category) AS d(k, day, cat)) d
		WHERE t.property_id = d.k AND t.month = d.month AND t.category = d.cat
		  AND t.expense_count = 0;
		DELETE FROM livekpi.portfolio_monthly t
		WHERE t.month IN (SELECT date_trunc('month', d)::date FROM unnest(b_day || e_day) AS d)
		  AND t.nights_sold = 0 AND t.arrivals = 0 AND t.cancelled_arrivals = 0
		  AND t.expense_count = 0;

		-- properties appear when first seen
		WITH ins AS (
			INSERT INTO livekpi.properties AS p (property_id, first_seen, updated_at)
			SELECT DISTINCT k, applied_at, applied_at FROM unnest(b_key || e_key) AS k
			ON CONFLICT (property_id) DO NOTHING
			RETURNING p.property_id)
		SELECT array_agg(ins.property_id) INTO new_props FROM ins;

		IF rows_written = 0 AND cardinality(u_key) = 0 AND new_props IS NULL THEN
			seq := NULL;
			RETURN;
		END IF;

		UPDATE livekpi.state SET last_seq = state.last_seq + 1 RETURNING state.last_seq INTO seq;

		/*
		 * A batch that touched more daily rows than a delta should carry
		 * (a bulk load) is written as a barrier: clients take a snapshot,
		 * which is smaller and cheaper than such a delta, and the delta's
		 * memory stays bounded.  The limit is documented in protocol.md.
		 */
		IF cardinality(b_key) + cardinality(e_key) > 20000 THEN
			INSERT INTO livekpi.delta_log (seq, applied_at, committed_at, lsn, barrier)
			VALUES (_apply_batch.seq, _apply_batch.applied_at, _apply_batch.committed_at,
					batch_lsn, true);
		ELSE
			INSERT INTO livekpi.delta_log (seq, applied_at, committed_at, lsn, upserts, deletes)
			SELECT _apply_batch.seq, _apply_batch.applied_at, _apply_batch.committed_at, batch_lsn,
				   d.upserts, d.deletes
			FROM livekpi._batch_deltas(b_key, b_day, e_key, e_day, e_category,
									   coalesce(new_props, '{}') || u_key) AS d;
		END IF;

		DELETE FROM livekpi.delta_log l
		WHERE l.seq <= _apply_batch.seq - retention_batches
		   OR l.applied_at < _apply_batch.applied_at - make_interval(secs => retention);

		PERFORM livekpi._wake_push();
	END
	$body$$f$, k);

	EXECUTE format($f$
	CREATE FUNCTION livekpi._batch_deltas(
		b_key %1$s[], b_day date[], e_key %1$s[], e_day date[], e_category text[],
		p_key %1$s[], OUT upserts jsonb, OUT deletes jsonb)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
	AS $body$
	DECLARE
		pk_key %1$s[];
		pk_month date[];
		pf_month date[];
		rows jsonb[];
	BEGIN
		/*
		 * The SPEC section 7 rows this batch touched: for each view, the
		 * keys it touched that still exist go to upserts (to_jsonb of the
		 * view row), the others to deletes.  Rows are collected as
		 * [view, row or null, key].
		 */
		SELECT array_agg(jsonb_build_array('booking_daily', to_jsonb(r),
										   jsonb_build_object('property_id', k.k, 'day', k.day)))
		INTO rows
		FROM (SELECT DISTINCT d.k, d.day FROM unnest(b_key, b_day) AS d(k, day)) k
		LEFT JOIN livekpi.booking_daily r ON r.property_id = k.k AND r.day = k.day;

		rows := rows || ARRAY(
			SELECT jsonb_build_array('expense_monthly', to_jsonb(r),
									 jsonb_build_object('property_id', k.k, 'month', k.month,
														'category', k.cat))
			FROM (SELECT DISTINCT d.k, date_trunc('month', d.day)::date AS month, d.cat
				  FROM unnest(e_key, e_day, e_category) AS d(k, day, cat)) k
			LEFT JOIN livekpi.expense_monthly r
				ON r.property_id = k.k AND r.month = k.month AND r.category = k.cat);

		SELECT array_agg(x.k), array_agg(x.month) INTO pk_key, pk_month
		FROM (SELECT d.k, date_trunc('month', d.day)::date AS month
			  FROM unnest(b_key || e_key, b_day || e_day) AS d(k, day)
			  UNION
			  SELECT m.property_id, m.month FROM livekpi.booking_monthly m
			  WHERE m.property_id = ANY (p_key)
			  UNION
			  SELECT m.property_id, m.month FROM livekpi.expense_monthly m
			  WHERE m.property_id = ANY (p_key)) x;

		/*
		 * Each key is looked up through the view's indexes: measured with
		 * 2,000 properties, a join with the whole view cost 420 ms a batch,
		 * the lookups about 20 us a key.
		 */
		rows := rows || ARRAY(
			SELECT jsonb_build_array('property_kpis',
				(SELECT to_jsonb(r) FROM livekpi.property_kpis r
				 WHERE r.property_id = k.k AND r.month = k.month),
				jsonb_build_object('property_id', k.k, 'month', k.month))
			FROM unnest(pk_key, pk_month) AS k(k, month));

		SELECT array_agg(DISTINCT m) INTO pf_month
		FROM (SELECT date_trunc('month', d)::date AS m FROM unnest(b_day || e_day) AS d
			  UNION ALL
			  SELECT x.month FROM livekpi.portfolio_monthly x WHERE cardinality(p_key) > 0) x;
		rows := rows || ARRAY(
			SELECT jsonb_build_array('portfolio_kpis', to_jsonb(r), jsonb_build_object('month', k.month))
			FROM unnest(pf_month) AS k(month)
			LEFT JOIN livekpi.portfolio_kpis r ON r.month = k.month);

		SELECT coalesce(jsonb_object_agg(v, list) FILTER (WHERE kind = 'u'), '{}'),
			   coalesce(jsonb_object_agg(v, list) FILTER (WHERE kind = 'd'), '{}')
		INTO upserts, deletes
		FROM (SELECT x ->> 0 AS v,
					 CASE WHEN jsonb_typeof(x -> 1) = 'object' THEN 'u' ELSE 'd' END AS kind,
					 jsonb_agg(CASE WHEN jsonb_typeof(x -> 1) = 'object' THEN x -> 1 ELSE x -> 2 END) AS list
			  FROM unnest(rows) AS x
			  GROUP BY 1, 2) g;
	END
	$body$$f$, k);

	-- Objects made after CREATE EXTENSION join the extension explicitly.
	IF NOT in_extension_script THEN
		FOR obj IN SELECT * FROM (
			SELECT 'VIEW ' || c.oid::regclass::text AS ident
			FROM pg_class c
			WHERE c.oid IN ('livekpi.property_kpis'::regclass, 'livekpi.portfolio_kpis'::regclass)
			UNION ALL
			SELECT 'FUNCTION ' || p.oid::regprocedure::text
			FROM pg_proc p
			WHERE p.pronamespace = 'livekpi'::regnamespace
			  AND p.proname IN ('kpis', 'create_token', '_apply_batch', '_batch_deltas',
								'_recompute_booking_daily', '_recompute_expense_daily')) o
			WHERE NOT EXISTS (SELECT FROM pg_depend d
							  WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
								AND d.objid = CASE WHEN o.ident LIKE 'VIEW %'
												   THEN substr(o.ident, 6)::regclass::oid
												   ELSE substr(o.ident, 10)::regprocedure::oid END)
		LOOP
			EXECUTE format('ALTER EXTENSION livekpi ADD %s', obj.ident);
		END LOOP;
	END IF;

	UPDATE livekpi.state SET key_type = _install_key_type.key_type;
	PERFORM livekpi._revoke_public();
	PERFORM set_config('livekpi_internal.ddl', 'off', true);
END
$install$;

CREATE OR REPLACE VIEW livekpi.property_kpis AS
SELECT k.property_id,
	   k.month,
	   p.units,
	   (p.units * d.days)::bigint AS available_nights,
	   coalesce(b.nights_sold, 0) AS nights_sold,
	   round(coalesce(b.nights_sold, 0)::numeric / nullif(p.units * d.days, 0), 6) AS occupancy,
	   coalesce(b.room_revenue, 0) AS room_revenue,
	   round(coalesce(b.room_revenue, 0) / nullif(coalesce(b.nights_sold, 0), 0), 2) AS adr,
	   round(coalesce(b.room_revenue, 0) / nullif(p.units * d.days, 0), 2) AS revpar,
	   coalesce(b.arrivals, 0) AS arrivals,
	   coalesce(b.cancelled_arrivals, 0) AS cancelled_arrivals,
	   round(coalesce(b.cancelled_arrivals, 0)::numeric
			 / nullif(coalesce(b.arrivals, 0) + coalesce(b.cancelled_arrivals, 0), 0), 6) AS cancellation_rate,
	   coalesce(e.approved_expenses, 0) AS approved_expenses,
	   coalesce(e.pending_expenses, 0) AS pending_expenses,
	   coalesce(b.room_revenue, 0) - coalesce(e.approved_expenses, 0) AS noi,
	   greatest(b.updated_at, e.updated_at, p.updated_at) AS updated_at,
	   p.name
FROM (SELECT property_id, month FROM livekpi.booking_monthly
	  UNION
	  SELECT property_id, month FROM livekpi.expense_monthly) k
CROSS JOIN LATERAL (SELECT ((k.month + interval '1 month')::date - k.month) AS days) d
LEFT JOIN livekpi.properties p ON p.property_id = k.property_id
LEFT JOIN livekpi.booking_monthly b ON b.property_id = k.property_id AND b.month = k.month
LEFT JOIN LATERAL (
	SELECT sum(x.approved_amount) AS approved_expenses,
		   sum(x.pending_amount) AS pending_expenses,
		   max(x.updated_at) AS updated_at
	FROM livekpi.expense_monthly x
	WHERE x.property_id = k.property_id AND x.month = k.month) e ON true;
DO $$
BEGIN
	DROP TRIGGER livekpi_units ON livekpi.properties;
	EXECUTE format($t$CREATE TRIGGER livekpi_units
		AFTER INSERT OR UPDATE OF units, name OR DELETE ON livekpi.properties
		FOR EACH ROW EXECUTE FUNCTION livekpi.capture('U', %L, '0', '1', '0', '0', '0', '0', '0', '0', 'UTC', '0')$t$,
		livekpi._key_kind((SELECT key_type FROM livekpi.state)));
	ALTER TABLE livekpi.properties ENABLE ALWAYS TRIGGER livekpi_units;
END
$$;

CREATE OR REPLACE FUNCTION livekpi.untrack(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t livekpi.tracked_tables;
BEGIN
	PERFORM livekpi._require_read_committed('untrack()');
	-- the table track_properties() follows: its rows stay in livekpi.properties
	IF EXISTS (SELECT FROM livekpi.tracked_properties p WHERE p.relid = rel) THEN
		IF NOT livekpi._caller_owns(rel) THEN
			RAISE EXCEPTION 'must be owner of table %', rel
				USING ERRCODE = 'insufficient_privilege';
		END IF;
		PERFORM set_config('livekpi_internal.ddl', 'on', true);
		EXECUTE format('DROP TRIGGER IF EXISTS livekpi_property ON %s', rel);
		PERFORM set_config('livekpi_internal.ddl', 'off', true);
		DELETE FROM livekpi.tracked_properties p WHERE p.relid = rel;
		RETURN;
	END IF;
	SELECT * INTO t FROM livekpi.tracked_tables WHERE relid = rel;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table % is not tracked', rel
			USING ERRCODE = 'undefined_object';
	END IF;
	IF NOT livekpi._caller_owns(rel) THEN
		RAISE EXCEPTION 'must be owner of table %', rel
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM livekpi._drop_capture_triggers(rel, t.partitions);
	DELETE FROM livekpi.tracked_tables WHERE relid = rel;
	PERFORM livekpi._rebuild(false);
END
$$;

-- C4. _on_drop: DROP TRIGGER's DETAIL (issue 8 item 4), the properties table
CREATE OR REPLACE FUNCTION livekpi._on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t record;
	changed boolean := false;
BEGIN
	IF current_setting('livekpi_internal.ddl', true) = 'on' THEN
		RETURN;
	END IF;
	FOR t IN
		SELECT DISTINCT tt.relid::oid AS relid, tt.partitions,
			   bool_or(d.object_type = 'table' AND d.objid = tt.relid::oid) AS table_dropped,
			   bool_or(d.object_type = 'trigger' AND d.address_names[3] IN ('livekpi_capture', 'livekpi_truncate')
					   AND to_regclass(quote_ident(d.address_names[1]) || '.'
									   || quote_ident(d.address_names[2])) = ANY (ARRAY[tt.relid] || tt.partitions))
				   AS trigger_dropped,
			   bool_or(d.object_type = 'table column'
					   AND to_regclass(quote_ident(d.address_names[1]) || '.'
									   || quote_ident(d.address_names[2])) = ANY (ARRAY[tt.relid] || tt.partitions))
				   AS column_dropped,
			   bool_or(d.object_type = 'table' AND d.objid = ANY (tt.partitions::oid[])) AS partition_dropped
		FROM livekpi.tracked_tables tt, pg_event_trigger_dropped_objects() d
		GROUP BY tt.relid, tt.partitions
	LOOP
		IF t.table_dropped THEN
			DELETE FROM livekpi.tracked_tables WHERE relid::oid = t.relid;
			changed := true;
		ELSIF t.trigger_dropped THEN
			RAISE WARNING 'table % is no longer tracked by livekpi', t.relid::regclass
				USING DETAIL = CASE WHEN t.column_dropped
								   THEN 'Its capture trigger was dropped, with a column it mapped.'
								   ELSE 'Its capture trigger was dropped (DROP TRIGGER); livekpi untracked the table and recomputed the KPIs without its rows.' END,
					  HINT = 'Track it again with livekpi.track_bookings() or livekpi.track_expenses().';
			PERFORM livekpi._drop_capture_triggers(t.relid::regclass, t.partitions);
			DELETE FROM livekpi.tracked_tables WHERE relid::oid = t.relid;
			changed := true;
		ELSIF t.partition_dropped THEN
			UPDATE livekpi.tracked_tables SET partitions = livekpi._partitions(relid)
			WHERE relid::oid = t.relid;
			changed := true;
		END IF;
	END LOOP;
	-- the table track_properties() follows: dropped, its trigger dropped, or
	-- a mapped column dropped; livekpi.properties keeps what it had
	FOR t IN
		SELECT p.relid::oid AS relid,
			   bool_or(d.object_type = 'table' AND d.objid = p.relid::oid) AS table_dropped,
			   bool_or(d.object_type = 'trigger' AND d.address_names[3] = 'livekpi_property') AS trigger_dropped,
			   bool_or(d.object_type = 'table column' AND d.objid = p.relid::oid
					   AND d.objsubid IN (p.property_attnum, p.units_attnum, p.name_attnum)) AS column_dropped
		FROM livekpi.tracked_properties p, pg_event_trigger_dropped_objects() d
		GROUP BY p.relid
	LOOP
		IF t.table_dropped THEN
			DELETE FROM livekpi.tracked_properties p WHERE p.relid::oid = t.relid;
		ELSIF t.trigger_dropped OR t.column_dropped THEN
			RAISE WARNING 'livekpi no longer takes units and names from table %', t.relid::regclass
				USING DETAIL = CASE WHEN t.column_dropped THEN 'A column it mapped was dropped.'
								   ELSE 'Its trigger livekpi_property was dropped.' END || ' livekpi.properties keeps the units and names it had.',
					  HINT = 'Call livekpi.track_properties() again to follow the table.';
			PERFORM set_config('livekpi_internal.ddl', 'on', true);
			EXECUTE format('DROP TRIGGER IF EXISTS livekpi_property ON %s', t.relid::regclass);
			PERFORM set_config('livekpi_internal.ddl', 'off', true);
			DELETE FROM livekpi.tracked_properties p WHERE p.relid::oid = t.relid;
		END IF;
	END LOOP;
	IF changed THEN
		PERFORM livekpi._rebuild(false);
	END IF;
END
$$;

-- nothing new is PUBLIC's (a GRANT on a new function starts from its default ACL)
SELECT livekpi._revoke_public();

-- ---------------------------------------------------------------------
-- Section D: (dashboard and CLI: no SQL expected)
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Section E: push worker
-- ---------------------------------------------------------------------

-- ---------------------------------------------------------------------
-- Section F: apply path, careful mode
-- ---------------------------------------------------------------------
-- Nothing to change: careful mode uses skipped_changes and _mark_stale
-- (section 0), and the C apply path writes the 1.0 KPI tables as they are
-- (livekpi._apply_batch is no longer called but kept).

-- ---------------------------------------------------------------------
-- Final section (lead): views and functions re-created, privileges, rebuild
-- ---------------------------------------------------------------------
DROP VIEW livekpi.status;
DROP FUNCTION livekpi._status();
CREATE FUNCTION livekpi._status(
	OUT apply_pid int, OUT apply_state text, OUT paused boolean, OUT slot_name text,
	OUT slot_ready boolean, OUT processed_lsn pg_lsn, OUT confirmed_lsn pg_lsn,
	OUT lag_bytes bigint, OUT lag_ms bigint, OUT last_seq_applied bigint,
	OUT last_batch_at timestamptz, OUT last_commit_at timestamptz,
	OUT changes_applied bigint, OUT rows_written bigint, OUT rows_skipped bigint,
	OUT batches bigint, OUT rebuilds bigint, OUT last_error text, OUT last_error_at timestamptz,
	OUT push_pid int, OUT push_state text, OUT clients int, OUT messages_sent bigint,
	OUT bytes_sent bigint, OUT push_last_error text, OUT push_last_error_at timestamptz,
	OUT records_rejected bigint, OUT role text, OUT replay_lsn pg_lsn,
	OUT replay_lag_ms bigint, OUT seq_served bigint)
AS 'MODULE_PATHNAME', 'livekpi_status' LANGUAGE C;

CREATE VIEW livekpi.status AS
SELECT s.apply_pid,
	   s.apply_state,
	   s.paused,
	   s.push_pid,
	   s.push_state,
	   s.slot_name,
	   s.slot_ready,
	   r.wal_status AS slot_wal_status,
	   s.confirmed_lsn,
	   s.processed_lsn,
	   s.lag_bytes,
	   s.lag_ms,
	   st.last_seq,
	   s.last_batch_at,
	   s.last_commit_at,
	   s.changes_applied,
	   s.rows_written,
	   s.rows_skipped,
	   s.batches,
	   s.rebuilds,
	   s.clients,
	   s.messages_sent,
	   s.bytes_sent,
	   s.last_error,
	   s.last_error_at,
	   s.push_last_error,
	   s.push_last_error_at,
	   st.epoch,
	   s.records_rejected,
	   st.stale_reason IS NOT NULL AS stale,
	   st.stale_reason,
	   st.stale_since,
	   s.role,
	   s.replay_lsn,
	   s.replay_lag_ms,
	   s.seq_served
FROM livekpi._status() s
CROSS JOIN livekpi.state st
LEFT JOIN pg_replication_slots r ON r.slot_name = s.slot_name;

-- Grants remembered at the top, given back to the objects that exist again.
DO $$
DECLARE
	g record;
BEGIN
	FOR g IN SELECT * FROM jsonb_to_recordset(current_setting('livekpi_upgrade.acl')::jsonb)
			 AS x(kind text, ident text, grantee text, privilege text, grantable boolean)
	LOOP
		IF (g.kind = 'FUNCTION' AND to_regprocedure(g.ident) IS NOT NULL) OR
		   (g.kind = 'TABLE' AND to_regclass(g.ident) IS NOT NULL) THEN
			EXECUTE format('GRANT %s ON %s %s TO %s%s', g.privilege, g.kind, g.ident, g.grantee,
						   CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
		END IF;
	END LOOP;
END
$$;

SELECT livekpi._revoke_public();
-- 1.0 change records still in the slot carry no tag and would be rejected:
-- the rebuild counts everything committed so far instead.
SELECT livekpi._rebuild(false);
SELECT livekpi._wake_apply();
