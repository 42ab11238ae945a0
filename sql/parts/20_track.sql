/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 20: tracking tables, rebuild and verify.
 *
 * rebuild() and the backfill recompute with src/kpi.c's rules, through
 * the C contribution functions of src/recompute.c.  verify()'s recompute
 * here (_booking_recompute_sql, _expense_recompute_sql) is SPEC section 3 a
 * second time, in SQL: the independent check on both.
 *-------------------------------------------------------------------------
 */

ALTER TABLE livekpi.tracked_tables ADD COLUMN partitions regclass[] NOT NULL DEFAULT '{}';

-- quote_ident of a column by attribute number (follows renames)
CREATE FUNCTION livekpi._attname(rel regclass, attnum int2) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT quote_ident(a.attname) FROM pg_attribute a
	WHERE a.attrelid = rel AND a.attnum = _attname.attnum AND NOT a.attisdropped
$$;

/*
 * _day_sql(rel, attnum, tz)
 *		SQL for a mapped date column as the day SPEC section 3 counts it on,
 *		NULL when it cannot be used (infinite, or outside 4714-12-01 BC ..
 *		294276-11-30: LIVEKPI_FIRST_DAY .. LIVEKPI_LAST_DAY in src/kpi.h).
 *		verify() states the rule here in SQL, independently of kpi.c; a
 *		timestamptz near either end of the timestamp range goes through
 *		_local_day(), which turns "out of range" into NULL.
 */
CREATE FUNCTION livekpi._day_sql(rel regclass, attnum int2, tz text) RETURNS text
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

-- (x AT TIME ZONE tz)::date, NULL when that is out of the timestamp range
CREATE FUNCTION livekpi._local_day(x timestamptz, tz text) RETURNS date
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN (x AT TIME ZONE tz)::date;
EXCEPTION WHEN datetime_field_overflow THEN
	RETURN NULL;
END
$$;

CREATE FUNCTION livekpi._from_sql(rel regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE c.relkind WHEN 'p' THEN '' ELSE 'ONLY ' END || rel::text
	FROM pg_class c WHERE c.oid = rel
$$;

/*
 * _booking_recompute_sql(key_type)
 *		One query over every tracked bookings table that returns the daily
 *		booking KPIs of SPEC section 3.
 */
CREATE FUNCTION livekpi._booking_recompute_sql(key_type text) RETURNS text
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

/*
 * _expense_recompute_sql(key_type)
 *		One query over every tracked expenses table that returns the daily
 *		expense KPIs of SPEC section 3.
 */
CREATE FUNCTION livekpi._expense_recompute_sql(key_type text) RETURNS text
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

/*
 * The rebuild's recompute: kpi.c's rules, in C, over the tracked tables
 * (src/recompute.c).  _booking_rows and _expense_rows give the daily rows
 * one source row contributes, called in the target list so that the query
 * streams; _fill_grouped groups them by key in C (SQL when that gives up).
 * _new_heap, _fill_grouped, _fill_heap and _swap_heap load the grouped rows
 * into fresh heaps and swap them in.
 */
CREATE FUNCTION livekpi._booking_rows(key "any", check_in "any", check_out "any", amount "any",
									  status text, cancelled_statuses text[], max_stay int,
									  timezone text)
RETURNS TABLE (day date, nights int, arrivals int, cancelled int, revenue numeric)
	AS 'MODULE_PATHNAME', 'livekpi_booking_rows' LANGUAGE C STABLE ROWS 5;
CREATE FUNCTION livekpi._expense_rows(key "any", day "any", amount "any", category text,
									  status text, has_status boolean, approved_statuses text[],
									  rejected_statuses text[], timezone text)
RETURNS TABLE (day date, class int, category text, amount numeric)
	AS 'MODULE_PATHNAME', 'livekpi_expense_rows' LANGUAGE C STABLE ROWS 1;
CREATE FUNCTION livekpi._new_heap(target regclass) RETURNS oid
	AS 'MODULE_PATHNAME', 'livekpi_new_heap' LANGUAGE C STRICT;
CREATE FUNCTION livekpi._fill_heap(heap oid, query text, month_heap oid DEFAULT 0) RETURNS boolean
	AS 'MODULE_PATHNAME', 'livekpi_fill_heap' LANGUAGE C STRICT;
CREATE FUNCTION livekpi._swap_heap(target regclass, heap oid) RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_swap_heap' LANGUAGE C STRICT;
CREATE FUNCTION livekpi._month(day date) RETURNS date
	AS 'MODULE_PATHNAME', 'livekpi_month' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION livekpi._fill_grouped(daily oid, monthly oid, query text) RETURNS text
	AS 'MODULE_PATHNAME', 'livekpi_fill_grouped' LANGUAGE C STRICT;

/*
 * _group_days_sql(daily, query)
 *		query's rows (in the layout of the daily heap daily) grouped by key
 *		in SQL, as _fill_grouped groups them in C: counts and sums added,
 *		updated_at the latest.
 */
CREATE FUNCTION livekpi._group_days_sql(daily oid, query text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT format('SELECT %s FROM (%s) x (%s) GROUP BY %s',
				  string_agg(CASE WHEN a.attname IN ('property_id', 'day', 'category') THEN quote_ident(a.attname)
								  WHEN a.attname = 'updated_at' THEN 'max(updated_at)'
								  WHEN a.atttypid = 'bigint'::regtype THEN format('sum(%I)::bigint', a.attname)
								  ELSE format('sum(%I)', a.attname) END, ', ' ORDER BY a.attnum),
				  query,
				  string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
				  string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
					  FILTER (WHERE a.attname IN ('property_id', 'day', 'category')))
	FROM pg_attribute a
	WHERE a.attrelid = daily AND a.attnum > 0 AND NOT a.attisdropped
$$;

/*
 * _fill_days_and_months(daily, monthly, query)
 *		Fills the fresh heaps of a daily KPI table and of its monthly table
 *		from query's rows, in the daily table's layout, one per contribution
 *		(or per existing daily row): grouped by key in C, the months rolled
 *		up in C while the days load.  When a grouping gives up (past the
 *		memory of a hash aggregate, see _fill_grouped), SQL groups instead:
 *		the days with _group_days_sql, the months from the filled daily
 *		heap.  updated_at of a month is its days' latest.
 */
CREATE FUNCTION livekpi._fill_days_and_months(daily oid, monthly oid, query text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	filled text;
BEGIN
	filled := livekpi._fill_grouped(daily, monthly, query);
	IF filled = 'days and months' THEN
		RETURN;
	END IF;
	IF filled = 'none' AND livekpi._fill_heap(daily, livekpi._group_days_sql(daily, query), monthly) THEN
		RETURN;
	END IF;
	IF EXISTS (SELECT FROM pg_attribute
			   WHERE attrelid = daily AND attname = 'category' AND NOT attisdropped) THEN
		PERFORM livekpi._fill_heap(monthly, format(
			'SELECT property_id, livekpi._month(day), category, sum(approved_amount), '
			'sum(pending_amount), sum(rejected_amount), sum(expense_count)::bigint, max(updated_at) '
			'FROM %s GROUP BY 1, 2, 3', daily::regclass));
	ELSE
		PERFORM livekpi._fill_heap(monthly, format(
			'SELECT property_id, livekpi._month(day), sum(nights_sold)::bigint, '
			'sum(room_revenue), sum(arrivals)::bigint, sum(cancelled_arrivals)::bigint, max(updated_at) '
			'FROM %s GROUP BY 1, 2', daily::regclass));
	END IF;
END
$$;

/*
 * _booking_rows_sql(key_type, only_rel)
 *		One query over every tracked bookings table (or only only_rel): (pid, day, nights,
 *		revenue, arrivals, cancelled), one row per night or arrival, by the
 *		C rules.  Columns are passed as they are stored; statuses as ::text,
 *		which is how the capture trigger compares them.
 */
CREATE FUNCTION livekpi._booking_rows_sql(key_type text, only_rel regclass DEFAULT NULL) RETURNS text
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

/*
 * _expense_rows_sql(key_type, only_rel)
 *		One query over every tracked expenses table (or only only_rel): (pid, day, category,
 *		class, amount), one row per expense that counts, by the C rules.
 */
CREATE FUNCTION livekpi._expense_rows_sql(key_type text, only_rel regclass DEFAULT NULL) RETURNS text
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

-- every partition (all levels) of a table, the table excluded
CREATE FUNCTION livekpi._partitions(rel regclass) RETURNS regclass[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT coalesce(array_agg(p.relid ORDER BY p.relid::oid), '{}')
	FROM pg_partition_tree(rel) p WHERE p.relid <> rel
$$;

/*
 * _create_capture_triggers(rel)
 *		(Re)creates the capture triggers of a tracked table from its row in
 *		tracked_tables and the settings stored there.  TRUNCATE triggers are
 *		not cloned to partitions, so every partition gets its own.
 */
CREATE FUNCTION livekpi._create_capture_triggers(rel regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t livekpi.tracked_tables;
	args text;
	cols text;
	part oid;
	tg oid;
BEGIN
	SELECT * INTO STRICT t FROM livekpi.tracked_tables WHERE relid = rel;
	PERFORM set_config('livekpi_internal.ddl', 'on', true);

	args := array_to_string(ARRAY(SELECT quote_literal(x) FROM unnest(ARRAY[
		CASE t.kind WHEN 'bookings' THEN 'B' ELSE 'E' END,
		livekpi._key_kind((SELECT key_type FROM livekpi.state)),
		'0',
		t.property_attnum::text, t.day1_attnum::text, coalesce(t.day2_attnum, 0)::text,
		t.amount_attnum::text, coalesce(t.status_attnum, 0)::text,
		coalesce(t.category_attnum, 0)::text,
		t.max_stay_nights::text, t.timezone,
		cardinality(t.statuses1)::text] || t.statuses1 || t.statuses2) AS x), ', ');

	SELECT string_agg(livekpi._attname(rel, a), ', ') INTO cols
	FROM unnest(ARRAY[t.property_attnum, t.day1_attnum, t.day2_attnum, t.amount_attnum,
					  t.status_attnum, t.category_attnum]) AS a
	WHERE a IS NOT NULL;

	PERFORM livekpi._drop_capture_triggers(rel, t.partitions);
	PERFORM set_config('livekpi_internal.ddl', 'on', true);
	t.partitions := livekpi._partitions(rel);
	UPDATE livekpi.tracked_tables SET partitions = t.partitions WHERE relid = rel;

	EXECUTE format('CREATE TRIGGER livekpi_capture AFTER INSERT OR UPDATE OF %s OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION livekpi.capture(%s)',
				   cols, rel, args);
	EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER livekpi_capture', rel);

	FOREACH part IN ARRAY ARRAY[rel::oid] || t.partitions::oid[] LOOP
		EXECUTE format('CREATE TRIGGER livekpi_truncate AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION livekpi.capture(%s)',
					   part::regclass, args);
		EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER livekpi_truncate', part::regclass);
		IF part <> rel::oid THEN
			EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER livekpi_capture', part::regclass);
		END IF;
		-- DROP EXTENSION takes these triggers with it
		FOR tg IN SELECT oid FROM pg_trigger
				  WHERE tgrelid = part AND tgname IN ('livekpi_capture', 'livekpi_truncate')
					AND tgparentid = 0
		LOOP
			PERFORM livekpi._depend_on_extension('pg_trigger'::regclass, tg);
		END LOOP;
	END LOOP;
	PERFORM set_config('livekpi_internal.ddl', 'off', true);
END
$$;

CREATE FUNCTION livekpi._drop_capture_triggers(rel regclass, parts regclass[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	part oid;
BEGIN
	PERFORM set_config('livekpi_internal.ddl', 'on', true);
	FOREACH part IN ARRAY ARRAY[rel::oid] || parts::oid[] LOOP
		IF EXISTS (SELECT FROM pg_class WHERE oid = part) THEN
			IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = part AND tgname = 'livekpi_capture'
					   AND tgparentid = 0) THEN
				EXECUTE format('DROP TRIGGER livekpi_capture ON %s', part::regclass);
			END IF;
			IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = part AND tgname = 'livekpi_truncate') THEN
				EXECUTE format('DROP TRIGGER livekpi_truncate ON %s', part::regclass);
			END IF;
		END IF;
	END LOOP;
	PERFORM set_config('livekpi_internal.ddl', 'off', true);
END
$$;

/*
 * _lock_tracked_tables()
 *		Takes SHARE locks on every tracked table without ever waiting while
 *		holding some of them: all are tried with NOWAIT in OID order, and
 *		when one is busy the attempt is rolled back, that one alone is waited
 *		for, and the whole set is tried again.  Writers that touch several
 *		tracked tables in any order cannot deadlock with a rebuild.
 */
CREATE FUNCTION livekpi._lock_tracked_tables() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r record;
	busy regclass;
BEGIN
	LOOP
		busy := NULL;
		BEGIN
			FOR r IN SELECT relid FROM livekpi.tracked_tables ORDER BY relid::oid LOOP
				busy := r.relid;
				EXECUTE format('LOCK TABLE %s IN SHARE MODE NOWAIT', r.relid);
			END LOOP;
			RETURN;
		EXCEPTION WHEN lock_not_available THEN
			NULL;
		END;
		BEGIN
			EXECUTE format('LOCK TABLE %s IN SHARE MODE', busy);
			RAISE EXCEPTION USING ERRCODE = 'LK001';
		EXCEPTION WHEN SQLSTATE 'LK001' THEN
			NULL;
		END;
	END LOOP;
END
$$;

CREATE FUNCTION livekpi._require_read_committed(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'livekpi.% cannot run in a % transaction', what,
			upper(current_setting('transaction_isolation'))
			USING ERRCODE = 'invalid_transaction_state',
				  DETAIL = 'It recomputes the KPIs from a snapshot taken after it locks the tracked tables.',
				  HINT = 'Run it in a READ COMMITTED transaction.';
	END IF;
END
$$;

/*
 * _analyze_if_never(tables)
 *		ANALYZE the tables that have never been analyzed.  A rebuild or a
 *		large backfill writes fresh heaps, whose rows autovacuum does not
 *		count as changes of the table, so a table filled that way the first
 *		time would have no statistics for users' queries for a long time.
 *		After that the distribution of KPI rows changes slowly and the
 *		statistics are kept, as a refreshed materialized view keeps them:
 *		analyzing every time cost 0.4 s of a 13 s rebuild of 1M + 1M rows
 *		(bench/rebuild.sh), and no plan of livekpi's own depends on them
 *		(the apply path is in C).
 */
CREATE FUNCTION livekpi._analyze_if_never(VARIADIC tables regclass[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t regclass;
BEGIN
	FOR t IN
		SELECT x.t FROM unnest(tables) x(t)
		WHERE coalesce(pg_stat_get_last_analyze_time(x.t), pg_stat_get_last_autoanalyze_time(x.t)) IS NULL
	LOOP
		EXECUTE format('ANALYZE %s', t);
	END LOOP;
END
$$;

/*
 * _rebuild(new_epoch)
 *		Recomputes every KPI table from the tracked tables, consistently with
 *		the stream: writers wait on the table locks, the apply worker on the
 *		state row, and rebuild_lsn tells the worker which decoded changes
 *		the recompute already holds.  Clients learn of it from a barrier.
 */
CREATE FUNCTION livekpi._rebuild(new_epoch boolean) RETURNS void
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
	 * swap), the monthly ones rolled up from the daily rows as they load.  Until the swaps,
	 * readers see the old rows (the tables are locked EXCLUSIVE); the swaps
	 * take ACCESS EXCLUSIVE locks, held to commit.  Each _fill_heap() runs
	 * with a snapshot taken after the locks above.
	 */
	bd := livekpi._new_heap('livekpi.booking_daily');
	ed := livekpi._new_heap('livekpi.expense_daily');
	bm := livekpi._new_heap('livekpi.booking_monthly');
	em := livekpi._new_heap('livekpi.expense_monthly');
	pm := livekpi._new_heap('livekpi.portfolio_monthly');

	PERFORM livekpi._fill_days_and_months(bd, bm, format(
		'SELECT pid, day, nights::bigint, revenue, arrivals::bigint, cancelled::bigint, now() '
		'FROM (%s) x', livekpi._booking_rows_sql(kt)));
	PERFORM livekpi._fill_days_and_months(ed, em, format(
		'SELECT pid, day, category, CASE WHEN class = 0 THEN amount ELSE 0 END, '
		'CASE WHEN class = 1 THEN amount ELSE 0 END, CASE WHEN class = 2 THEN amount ELSE 0 END, '
		'1::bigint, now() FROM (%s) x', livekpi._expense_rows_sql(kt)));
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
	PERFORM livekpi._analyze_if_never('livekpi.booking_daily', 'livekpi.booking_monthly',
		'livekpi.expense_daily', 'livekpi.expense_monthly', 'livekpi.portfolio_monthly');
	PERFORM livekpi._wake_push();
END
$$;

/*
 * _backfill(rel)
 *		Adds the current rows of a table that has just been tracked to the
 *		KPIs, without recomputing the other tracked tables.  Called by
 *		track_* right after the capture trigger is made in the same
 *		transaction: the trigger's lock keeps writers of rel out until
 *		commit, so the rows this snapshot sees are exactly those the trigger
 *		never captured, and no change of rel is in the stream yet.  The
 *		stream of the other tables goes on untouched: rebuild_lsn stays, no
 *		rebuild marker is written (a marker would drop this transaction's
 *		earlier changes of other tables, which are not recomputed here).
 *		The state row is locked as a batch locks it, so no batch writes the
 *		KPI tables meanwhile; clients learn of it from a barrier.  A table's
 *		rows only add counts, so no KPI row falls to zero.  A large table is
 *		merged into fresh heaps (ACCESS EXCLUSIVE locks on the KPI tables of
 *		its kind and portfolio_monthly, as in rebuild()), a small one added
 *		in place.
 */
CREATE FUNCTION livekpi._backfill(rel regclass) RETURNS void
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
			PERFORM livekpi._fill_days_and_months(h_daily, h_monthly, format(
				'SELECT property_id, day, nights_sold, room_revenue, arrivals, cancelled_arrivals, '
				'updated_at FROM livekpi.booking_daily UNION ALL '
				'SELECT pid, day, nights::bigint, revenue, arrivals::bigint, cancelled::bigint, now() '
				'FROM (%s) x', livekpi._booking_rows_sql(kt, rel)));
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
			PERFORM livekpi._fill_days_and_months(h_daily, h_monthly, format(
				'SELECT property_id, day, category, approved_amount, pending_amount, rejected_amount, '
				'expense_count, updated_at FROM livekpi.expense_daily '
				'UNION ALL SELECT pid, day, category, CASE WHEN class = 0 THEN amount ELSE 0 END, '
				'CASE WHEN class = 1 THEN amount ELSE 0 END, CASE WHEN class = 2 THEN amount ELSE 0 END, '
				'1::bigint, now() FROM (%s) x', livekpi._expense_rows_sql(kt, rel)));
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
	IF t.kind = 'bookings' THEN
		PERFORM livekpi._analyze_if_never('livekpi.booking_daily', 'livekpi.booking_monthly',
			'livekpi.portfolio_monthly');
	ELSE
		PERFORM livekpi._analyze_if_never('livekpi.expense_daily', 'livekpi.expense_monthly',
			'livekpi.portfolio_monthly');
	END IF;
	PERFORM livekpi._wake_push();
END
$$;

/*
 * rebuild()
 *		The user's rebuild: recomputes with the settings stored with each
 *		tracked table (timezone, max_stay_nights), which it never changes:
 *		a restored database keeps the zone it was tracked with, whatever
 *		this server's livekpi.timezone says.  The capture triggers are made
 *		again from those settings, which repairs triggers a restore left out.
 */
CREATE FUNCTION livekpi.rebuild() RETURNS void
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

-- The one key type (bigint, uuid or text) a column of this type maps to.
CREATE FUNCTION livekpi._key_type_of(typ regtype) RETURNS regtype
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE typ
			   WHEN 'smallint'::regtype THEN 'bigint'::regtype
			   WHEN 'integer'::regtype THEN 'bigint'::regtype
			   WHEN 'bigint'::regtype THEN 'bigint'::regtype
			   WHEN 'uuid'::regtype THEN 'uuid'::regtype
			   WHEN 'text'::regtype THEN 'text'::regtype
			   WHEN 'character varying'::regtype THEN 'text'::regtype
		   END
$$;

/*
 * _map_column(rel, column, arg, allowed)
 *		Attribute number of a mapped column, or the problem with it as one
 *		line naming the column and the argument that maps it (track_* lists
 *		every problem of a call in one error).  allowed: 'key', 'date',
 *		'amount' or 'text'.
 */
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

/*
 * _check_zone(zone)
 *		NULL when PostgreSQL knows the time zone, else the problem.
 */
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

/*
 * _settle_mapping(rel, key_attnum, property_column, problems, fn, key_detail)
 *		The end of every track_*() mapping check (_track and
 *		track_properties): the property column's key type must be the one
 *		the tracked tables share; every problem found is raised in one
 *		error; then the first tracked table sets the KPI tables' key type
 *		(a NOTICE says so, with key_detail when given).  Returns whether it
 *		did, which asks the caller for a rebuild.
 */
CREATE FUNCTION livekpi._settle_mapping(rel regclass, key_attnum int2, property_column name,
										problems text[], fn text, key_detail text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	new_key regtype;
	cur_key regtype;
BEGIN
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
		IF key_detail IS NULL THEN
			RAISE NOTICE 'livekpi''s property key type is now % (it was %)', new_key, cur_key;
		ELSE
			RAISE NOTICE 'livekpi''s property key type is now % (it was %)', new_key, cur_key
				USING DETAIL = key_detail;
		END IF;
		RETURN true;
	END IF;
	RETURN false;
END
$$;

/*
 * _track(...)
 *		What track_bookings and track_expenses share: checks (every mapping
 *		problem of the call in one error, without internal CONTEXT), the
 *		mapping row, the triggers, and the backfill of the table's current
 *		rows.  zone NULL: livekpi.timezone now.
 */
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
	key_changed boolean;
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

	key_changed := livekpi._settle_mapping(rel, key_attnum, property_column, problems, fn,
		format('%s is the first tracked table; its column "%s" sets the key type of the KPI tables.', rel, property_column));

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
	IF key_changed THEN
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
 * track_bookings, track_expenses and untrack run as the extension's owner
 * (SECURITY DEFINER), so that the owner of a table needs only EXECUTE on
 * them; _caller_owns() checks the caller owns the table.
 */
CREATE FUNCTION livekpi.untrack(rel regclass) RETURNS void
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

/*
 * _on_drop()
 *		Keeps tracking true to the catalog when things are dropped: a dropped
 *		tracked table is forgotten; a table whose capture trigger was dropped
 *		with a mapped column (DROP COLUMN ... CASCADE) is untracked with a
 *		WARNING; a dropped partition took its rows along.  Only objects this
 *		very command dropped count, so a restore that recreates tables before
 *		their triggers is left alone.  SECURITY DEFINER: it runs on every
 *		user's DDL, and users need no access to livekpi's tables for that.
 */
CREATE FUNCTION livekpi._on_drop() RETURNS event_trigger
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

CREATE EVENT TRIGGER livekpi_drop ON sql_drop
	EXECUTE FUNCTION livekpi._on_drop();

/*
 * _on_ddl()
 *		When the partitions of a tracked table change (ATTACH, DETACH, CREATE
 *		TABLE ... PARTITION OF), rows moved without firing triggers: the new
 *		partitions get their TRUNCATE triggers, the detached ones lose theirs,
 *		and the KPIs are rebuilt.  SECURITY DEFINER as _on_drop().
 */
CREATE FUNCTION livekpi._on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	t record;
	changed boolean := false;
	gone regclass[];
BEGIN
	IF current_setting('livekpi_internal.ddl', true) = 'on' THEN
		RETURN;
	END IF;
	FOR t IN SELECT * FROM livekpi.tracked_tables LOOP
		IF EXISTS (SELECT FROM pg_class WHERE oid = t.relid)
		   AND t.partitions IS DISTINCT FROM livekpi._partitions(t.relid)
		   AND EXISTS (SELECT FROM pg_trigger WHERE tgrelid = t.relid
					   AND tgname = 'livekpi_capture' AND tgparentid = 0) THEN
			SELECT coalesce(array_agg(p), '{}') INTO gone
			FROM unnest(t.partitions) p WHERE p <> ALL (livekpi._partitions(t.relid));
			PERFORM livekpi._drop_capture_triggers(t.relid, gone);
			PERFORM livekpi._create_capture_triggers(t.relid);
			changed := true;
		END IF;
	END LOOP;
	IF changed THEN
		PERFORM livekpi._rebuild(false);
	END IF;
END
$$;

CREATE EVENT TRIGGER livekpi_ddl ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
	EXECUTE FUNCTION livekpi._on_ddl();

/*
 * verify()
 *		Recomputes every KPI table from the tracked tables and returns each
 *		difference from what is stored; no rows means exact.
 */
CREATE FUNCTION livekpi.verify()
RETURNS TABLE (kpi text, key text, column_name text, stored text, expected text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN QUERY
	WITH eb AS (SELECT * FROM livekpi._recompute_booking_daily()),
	ee AS (SELECT * FROM livekpi._recompute_expense_daily()),
	expected_rows AS (
		SELECT 'booking_daily' AS t,
			   jsonb_build_object('property_id', property_id, 'day', day) AS k,
			   jsonb_build_object('nights_sold', nights_sold, 'room_revenue', room_revenue,
								  'arrivals', arrivals, 'cancelled_arrivals', cancelled_arrivals) AS v
		FROM eb
		UNION ALL
		SELECT 'booking_monthly', jsonb_build_object('property_id', property_id, 'month', month),
			   jsonb_build_object('nights_sold', sum(nights_sold), 'room_revenue', sum(room_revenue),
								  'arrivals', sum(arrivals), 'cancelled_arrivals', sum(cancelled_arrivals))
		FROM (SELECT *, date_trunc('month', day)::date AS month FROM eb) x
		GROUP BY property_id, month
		UNION ALL
		SELECT 'expense_daily',
			   jsonb_build_object('property_id', property_id, 'day', day, 'category', category),
			   jsonb_build_object('approved_amount', approved_amount, 'pending_amount', pending_amount,
								  'rejected_amount', rejected_amount, 'expense_count', expense_count)
		FROM ee
		UNION ALL
		SELECT 'expense_monthly',
			   jsonb_build_object('property_id', property_id, 'month', month, 'category', category),
			   jsonb_build_object('approved_amount', sum(approved_amount), 'pending_amount', sum(pending_amount),
								  'rejected_amount', sum(rejected_amount), 'expense_count', sum(expense_count))
		FROM (SELECT *, date_trunc('month', day)::date AS month FROM ee) x
		GROUP BY property_id, month, category
		UNION ALL
		SELECT 'portfolio_monthly', jsonb_build_object('month', month),
			   jsonb_build_object('nights_sold', sum(n), 'room_revenue', sum(r), 'arrivals', sum(a),
								  'cancelled_arrivals', sum(c), 'approved_expenses', sum(ap),
								  'pending_expenses', sum(pe), 'expense_count', sum(ec))
		FROM (SELECT date_trunc('month', day)::date AS month, nights_sold AS n, room_revenue AS r,
					 arrivals AS a, cancelled_arrivals AS c, 0 AS ap, 0 AS pe, 0 AS ec FROM eb
			  UNION ALL
			  SELECT date_trunc('month', day)::date, 0, 0, 0, 0, approved_amount, pending_amount,
					 expense_count FROM ee) x
		GROUP BY month),
	stored_rows AS (
		SELECT 'booking_daily' AS t,
			   jsonb_build_object('property_id', property_id, 'day', day) AS k,
			   jsonb_build_object('nights_sold', nights_sold, 'room_revenue', room_revenue,
								  'arrivals', arrivals, 'cancelled_arrivals', cancelled_arrivals) AS v
		FROM livekpi.booking_daily
		UNION ALL
		SELECT 'booking_monthly', jsonb_build_object('property_id', property_id, 'month', month),
			   jsonb_build_object('nights_sold', nights_sold, 'room_revenue', room_revenue,
								  'arrivals', arrivals, 'cancelled_arrivals', cancelled_arrivals)
		FROM livekpi.booking_monthly
		UNION ALL
		SELECT 'expense_daily',
			   jsonb_build_object('property_id', property_id, 'day', day, 'category', category),
			   jsonb_build_object('approved_amount', approved_amount, 'pending_amount', pending_amount,
								  'rejected_amount', rejected_amount, 'expense_count', expense_count)
		FROM livekpi.expense_daily
		UNION ALL
		SELECT 'expense_monthly',
			   jsonb_build_object('property_id', property_id, 'month', month, 'category', category),
			   jsonb_build_object('approved_amount', approved_amount, 'pending_amount', pending_amount,
								  'rejected_amount', rejected_amount, 'expense_count', expense_count)
		FROM livekpi.expense_monthly
		UNION ALL
		SELECT 'portfolio_monthly', jsonb_build_object('month', month),
			   jsonb_build_object('nights_sold', nights_sold, 'room_revenue', room_revenue,
								  'arrivals', arrivals, 'cancelled_arrivals', cancelled_arrivals,
								  'approved_expenses', approved_expenses,
								  'pending_expenses', pending_expenses, 'expense_count', expense_count)
		FROM livekpi.portfolio_monthly)
	SELECT coalesce(s.t, e.t), coalesce(s.k, e.k)::text, c.col, s.v ->> c.col, e.v ->> c.col
	FROM stored_rows s
	FULL JOIN expected_rows e ON s.t = e.t AND s.k = e.k
	CROSS JOIN LATERAL jsonb_object_keys(coalesce(e.v, s.v)) AS c(col)
	WHERE (s.v -> c.col) IS DISTINCT FROM (e.v -> c.col)
	UNION ALL
	SELECT 'properties', jsonb_build_object('property_id', x.property_id)::text, 'property_id',
		   NULL, x.property_id::text
	FROM (SELECT property_id FROM eb UNION SELECT property_id FROM ee) x
	WHERE NOT EXISTS (SELECT FROM livekpi.properties p WHERE p.property_id = x.property_id)
	ORDER BY 1, 2, 3;
END
$$;
