/*-------------------------------------------------------------------------
 * livekpi--1.0.sql, part 10: the core pipeline.
 *
 * Tracking (track_bookings, track_expenses, untrack), the KPI tables and
 * views, the batch applier called by the apply worker, rebuild, verify,
 * and the operational functions.  The objects whose column or argument
 * types are the property key type are made by _install_key_type(), once
 * here with bigint and again when the first tracked table has another key
 * type.
 *-------------------------------------------------------------------------
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION livekpi" to load this file. \quit

-- The schema is made here, not named in the control file, so that it is a
-- member of the extension and DROP EXTENSION removes it.
CREATE SCHEMA livekpi;
CREATE FUNCTION livekpi._check_requirements() RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_check_requirements' LANGUAGE C;
SELECT livekpi._check_requirements();

CREATE FUNCTION livekpi._wake_apply() RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_wake_apply' LANGUAGE C;
CREATE FUNCTION livekpi._wake_push() RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_wake_push' LANGUAGE C;
CREATE FUNCTION livekpi._emit_rebuild_marker() RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_emit_rebuild_marker' LANGUAGE C;
CREATE FUNCTION livekpi._depend_on_extension(classid regclass, objid oid) RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_depend_on_extension' LANGUAGE C STRICT;
CREATE FUNCTION livekpi._caller_owns(rel regclass) RETURNS boolean
	AS 'MODULE_PATHNAME', 'livekpi_caller_owns' LANGUAGE C STRICT;
CREATE FUNCTION livekpi.capture() RETURNS trigger
	AS 'MODULE_PATHNAME', 'livekpi_capture' LANGUAGE C;

-- ---------------------------------------------------------------------
-- State and mapping
-- ---------------------------------------------------------------------

CREATE TABLE livekpi.state (
	singleton	boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	epoch		text NOT NULL DEFAULT gen_random_uuid()::text,
	last_seq	bigint NOT NULL DEFAULT 0,
	rebuild_lsn pg_lsn NOT NULL DEFAULT '0/0',
	key_type	regtype NOT NULL DEFAULT 'bigint'
);
INSERT INTO livekpi.state DEFAULT VALUES;

CREATE TABLE livekpi.tracked_tables (
	relid		regclass PRIMARY KEY,
	kind		text NOT NULL CHECK (kind IN ('bookings', 'expenses')),
	property_attnum int2 NOT NULL,
	day1_attnum int2 NOT NULL,		-- check_in, or the expense date
	day2_attnum int2,				-- check_out
	amount_attnum int2 NOT NULL,
	status_attnum int2,
	category_attnum int2,
	statuses1	text[] NOT NULL DEFAULT '{}',	-- cancelled, or approved
	statuses2	text[] NOT NULL DEFAULT '{}',	-- rejected
	max_stay_nights int NOT NULL,
	timezone	text NOT NULL,
	tracked_at	timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('livekpi.tracked_tables', '');

CREATE TABLE livekpi.delta_log (
	seq			bigint PRIMARY KEY,
	applied_at	timestamptz NOT NULL,
	committed_at timestamptz,
	lsn			pg_lsn,
	barrier		boolean NOT NULL DEFAULT false,
	upserts		jsonb NOT NULL DEFAULT '{}',
	deletes		jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX delta_log_applied_at ON livekpi.delta_log (applied_at);
-- A batch's rows are compressed as they are written: lz4 costs a fraction
-- of pglz on the apply worker's critical path (when the server has it).
DO $$
BEGIN
	ALTER TABLE livekpi.delta_log ALTER COLUMN upserts SET COMPRESSION lz4;
	ALTER TABLE livekpi.delta_log ALTER COLUMN deletes SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
	NULL;
END
$$;

-- ---------------------------------------------------------------------
-- KPI tables (property_id takes the key type in _install_key_type)
-- ---------------------------------------------------------------------

CREATE TABLE livekpi.properties (
	property_id bigint PRIMARY KEY,
	units		int NOT NULL DEFAULT 1 CHECK (units > 0),
	first_seen	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('livekpi.properties', '');

CREATE TABLE livekpi.booking_daily (
	property_id bigint NOT NULL,
	day			date NOT NULL,
	nights_sold bigint NOT NULL DEFAULT 0,
	room_revenue numeric NOT NULL DEFAULT 0,
	arrivals	bigint NOT NULL DEFAULT 0,
	cancelled_arrivals bigint NOT NULL DEFAULT 0,
	updated_at	timestamptz NOT NULL,
	PRIMARY KEY (property_id, day)
);

CREATE TABLE livekpi.booking_monthly (
	property_id bigint NOT NULL,
	month		date NOT NULL,
	nights_sold bigint NOT NULL DEFAULT 0,
	room_revenue numeric NOT NULL DEFAULT 0,
	arrivals	bigint NOT NULL DEFAULT 0,
	cancelled_arrivals bigint NOT NULL DEFAULT 0,
	updated_at	timestamptz NOT NULL,
	PRIMARY KEY (property_id, month)
);

CREATE TABLE livekpi.expense_daily (
	property_id bigint NOT NULL,
	day			date NOT NULL,
	category	text NOT NULL,
	approved_amount numeric NOT NULL DEFAULT 0,
	pending_amount numeric NOT NULL DEFAULT 0,
	rejected_amount numeric NOT NULL DEFAULT 0,
	expense_count bigint NOT NULL DEFAULT 0,
	updated_at	timestamptz NOT NULL,
	PRIMARY KEY (property_id, day, category)
);

CREATE TABLE livekpi.expense_monthly (
	property_id bigint NOT NULL,
	month		date NOT NULL,
	category	text NOT NULL,
	approved_amount numeric NOT NULL DEFAULT 0,
	pending_amount numeric NOT NULL DEFAULT 0,
	rejected_amount numeric NOT NULL DEFAULT 0,
	expense_count bigint NOT NULL DEFAULT 0,
	updated_at	timestamptz NOT NULL,
	PRIMARY KEY (property_id, month, category)
);

CREATE TABLE livekpi.portfolio_monthly (
	month		date PRIMARY KEY,
	nights_sold bigint NOT NULL DEFAULT 0,
	room_revenue numeric NOT NULL DEFAULT 0,
	arrivals	bigint NOT NULL DEFAULT 0,
	cancelled_arrivals bigint NOT NULL DEFAULT 0,
	approved_expenses numeric NOT NULL DEFAULT 0,
	pending_expenses numeric NOT NULL DEFAULT 0,
	expense_count bigint NOT NULL DEFAULT 0,
	updated_at	timestamptz NOT NULL
);

-- properties.updated_at follows user edits of units
CREATE FUNCTION livekpi._properties_touch() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	NEW.updated_at := now();
	RETURN NEW;
END
$$;
CREATE TRIGGER livekpi_touch BEFORE UPDATE OF units ON livekpi.properties
	FOR EACH ROW EXECUTE FUNCTION livekpi._properties_touch();

-- ---------------------------------------------------------------------
-- Objects typed by the property key
-- ---------------------------------------------------------------------

/*
 * _key_kind: the one-letter key kind the capture trigger and the apply
 * worker use for a key type.
 */
CREATE FUNCTION livekpi._key_kind(key_type regtype) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE key_type WHEN 'bigint'::regtype THEN 'i' WHEN 'uuid'::regtype THEN 'u' ELSE 't' END
$$;

/*
 * _install_key_type(key_type)
 *		(Re)creates every object whose type involves the property key: the
 *		key columns of the KPI tables, the views over them, and the functions
 *		that take or return keys.  Run by the install script with bigint,
 *		and by track_* when the first tracked table has another key type
 *		(the KPI tables are empty then).  Objects made outside CREATE
 *		EXTENSION are added to the extension so that DROP EXTENSION drops
 *		them.
 */
CREATE FUNCTION livekpi._install_key_type(key_type regtype) RETURNS void
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
		AFTER INSERT OR UPDATE OF units OR DELETE ON livekpi.properties
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
		   greatest(b.updated_at, e.updated_at, p.updated_at) AS updated_at
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
/*-------------------------------------------------------------------------
 * livekpi--1.0.sql, part 20: tracking tables, rebuild and verify.
 *
 * The set-based recompute here is SPEC section 3 a second time, in SQL;
 * src/kpi.c is the first.  verify() and the differential tests compare
 * the two.
 *-------------------------------------------------------------------------
 */

ALTER TABLE livekpi.tracked_tables ADD COLUMN partitions regclass[] NOT NULL DEFAULT '{}';

-- quote_ident of a column by attribute number (follows renames)
CREATE FUNCTION livekpi._attname(rel regclass, attnum int2) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT quote_ident(a.attname) FROM pg_attribute a
	WHERE a.attrelid = rel AND a.attnum = _attname.attnum AND NOT a.attisdropped
$$;

-- SQL for a mapped date column as a day, the way the capture trigger does it
CREATE FUNCTION livekpi._day_sql(rel regclass, attnum int2, tz text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE a.atttypid
			   WHEN 'date'::regtype THEN quote_ident(a.attname)
			   WHEN 'timestamp'::regtype THEN quote_ident(a.attname) || '::date'
			   ELSE format('(%I AT TIME ZONE %L)::date', a.attname, tz)
		   END
	FROM pg_attribute a
	WHERE a.attrelid = rel AND a.attnum = _day_sql.attnum
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
			CASE WHEN t.category_attnum IS NULL THEN '''uncategorized'''
				 ELSE format('coalesce(%s::text, ''uncategorized'')',
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
			WHERE pid IS NOT NULL AND d IS NOT NULL AND isfinite(d))
		SELECT pid, d, cat,
			   sum(CASE WHEN cls = 0 THEN amt ELSE 0 END),
			   sum(CASE WHEN cls = 1 THEN amt ELSE 0 END),
			   sum(CASE WHEN cls = 2 THEN amt ELSE 0 END),
			   count(*)
		FROM valid GROUP BY pid, d, cat
	$q$, array_to_string(parts, ' UNION ALL '));
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

/*
 * rebuild()
 *		The user's rebuild: also puts the current livekpi.max_stay_nights and
 *		livekpi.timezone into the capture triggers, which is how changing
 *		them takes effect.
 */
CREATE FUNCTION livekpi.rebuild() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r record;
BEGIN
	PERFORM livekpi._require_read_committed('rebuild()');
	PERFORM livekpi._lock_tracked_tables();
	UPDATE livekpi.tracked_tables
	SET max_stay_nights = current_setting('livekpi.max_stay_nights')::int,
		timezone = current_setting('livekpi.timezone');
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
 * _resolve_column(rel, column, role, allowed)
 *		Attribute number of a mapped column, or an error naming the table and
 *		the column.  allowed: 'key', 'date', 'amount' or 'text'.
 */
CREATE FUNCTION livekpi._resolve_column(rel regclass, col name, arg text, allowed text)
RETURNS int2
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	a record;
	ok boolean;
BEGIN
	SELECT att.attnum, att.atttypid::regtype AS typ, t.typcategory, t.typtype INTO a
	FROM pg_attribute att JOIN pg_type t ON t.oid = att.atttypid
	WHERE att.attrelid = rel AND att.attname = col AND att.attnum > 0 AND NOT att.attisdropped;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of table % does not exist', col, rel
			USING ERRCODE = 'undefined_column',
				  HINT = format('Name the column with %s => ''...''.', arg);
	END IF;
	ok := CASE allowed
			  WHEN 'key' THEN livekpi._key_type_of(a.typ) IS NOT NULL
			  WHEN 'date' THEN a.typ IN ('date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype)
			  WHEN 'amount' THEN a.typ IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype,
										   'numeric'::regtype, 'real'::regtype, 'double precision'::regtype)
			  ELSE a.typcategory = 'S' OR a.typtype = 'e'
		  END;
	IF NOT ok THEN
		RAISE EXCEPTION 'column "%" of table % has unsupported type %', col, rel, a.typ
			USING ERRCODE = 'datatype_mismatch',
				  DETAIL = CASE allowed
					  WHEN 'key' THEN 'A property key must be smallint, integer, bigint, uuid, text or varchar.'
					  WHEN 'date' THEN 'A date column must be date, timestamp or timestamptz.'
					  WHEN 'amount' THEN 'An amount must be smallint, integer, bigint, numeric, real or double precision.'
					  ELSE 'A status or category column must be of a string type or an enum.' END;
	END IF;
	RETURN a.attnum;
END
$$;

/*
 * _track(...)
 *		What track_bookings and track_expenses share: checks, the mapping row,
 *		the triggers, and a rebuild that backfills the table's current rows.
 */
CREATE FUNCTION livekpi._track(rel regclass, kind text, property_column name,
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
	PERFORM livekpi._rebuild(false);
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
	cancelled_statuses text[] DEFAULT '{cancelled,canceled}')
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT livekpi._track(rel, 'bookings', property_column, check_in_column, check_out_column,
						  amount_column, status_column, NULL, cancelled_statuses, '{}')
$$;

CREATE FUNCTION livekpi.track_expenses(
	rel regclass,
	property_column name DEFAULT 'property_id',
	date_column name DEFAULT 'incurred_on',
	amount_column name DEFAULT 'amount',
	category_column name DEFAULT 'category',
	status_column name DEFAULT 'approval_status',
	approved_statuses text[] DEFAULT '{approved}',
	rejected_statuses text[] DEFAULT '{rejected}')
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
	SELECT livekpi._track(rel, 'expenses', property_column, date_column, NULL,
						  amount_column, status_column, category_column,
						  approved_statuses, rejected_statuses)
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
			   bool_or(d.object_type = 'trigger' AND d.address_names[3] = 'livekpi_capture'
					   AND to_regclass(quote_ident(d.address_names[1]) || '.'
									   || quote_ident(d.address_names[2])) = tt.relid) AS trigger_dropped,
			   bool_or(d.object_type = 'table' AND d.objid = ANY (tt.partitions::oid[])) AS partition_dropped
		FROM livekpi.tracked_tables tt, pg_event_trigger_dropped_objects() d
		GROUP BY tt.relid, tt.partitions
	LOOP
		IF t.table_dropped THEN
			DELETE FROM livekpi.tracked_tables WHERE relid::oid = t.relid;
			changed := true;
		ELSIF t.trigger_dropped THEN
			RAISE WARNING 'table % is no longer tracked by livekpi', t.relid::regclass
				USING DETAIL = 'Its capture trigger was dropped, with a column it mapped.';
			PERFORM livekpi._drop_capture_triggers(t.relid::regclass, t.partitions);
			DELETE FROM livekpi.tracked_tables WHERE relid::oid = t.relid;
			changed := true;
		ELSIF t.partition_dropped THEN
			UPDATE livekpi.tracked_tables SET partitions = livekpi._partitions(relid)
			WHERE relid::oid = t.relid;
			changed := true;
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
/*-------------------------------------------------------------------------
 * livekpi--1.0.sql, part 30: operations (status, sync, pause, resume,
 * epoch) and privileges.
 *-------------------------------------------------------------------------
 */

CREATE FUNCTION livekpi._status(
	OUT apply_pid int, OUT apply_state text, OUT paused boolean, OUT slot_name text,
	OUT slot_ready boolean, OUT processed_lsn pg_lsn, OUT confirmed_lsn pg_lsn,
	OUT lag_bytes bigint, OUT lag_ms bigint, OUT last_seq_applied bigint,
	OUT last_batch_at timestamptz, OUT last_commit_at timestamptz,
	OUT changes_applied bigint, OUT rows_written bigint, OUT rows_skipped bigint,
	OUT batches bigint, OUT rebuilds bigint, OUT last_error text, OUT last_error_at timestamptz,
	OUT push_pid int, OUT push_state text, OUT clients int, OUT messages_sent bigint,
	OUT bytes_sent bigint, OUT push_last_error text, OUT push_last_error_at timestamptz)
AS 'MODULE_PATHNAME', 'livekpi_status' LANGUAGE C;

/*
 * status: what the workers publish, with the newest batch from the state
 * table.  lag_ms is 0 while the apply worker has read all flushed WAL, and
 * otherwise the time since it last had.
 */
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
	   st.epoch
FROM livekpi._status() s
CROSS JOIN livekpi.state st
LEFT JOIN pg_replication_slots r ON r.slot_name = s.slot_name;

CREATE FUNCTION livekpi.sync(timeout interval DEFAULT '10s') RETURNS boolean
	AS 'MODULE_PATHNAME', 'livekpi_sync' LANGUAGE C STRICT;
CREATE FUNCTION livekpi.pause() RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_pause' LANGUAGE C;
CREATE FUNCTION livekpi.resume() RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_resume' LANGUAGE C;

CREATE FUNCTION livekpi.epoch() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT epoch FROM livekpi.state
$$;

-- tracked tables with their mapping by column name
CREATE VIEW livekpi.tracked AS
SELECT t.relid AS table_name,
	   t.kind,
	   livekpi._attname(t.relid, t.property_attnum) AS property_column,
	   livekpi._attname(t.relid, t.day1_attnum) AS day_column,
	   livekpi._attname(t.relid, t.day2_attnum) AS check_out_column,
	   livekpi._attname(t.relid, t.amount_attnum) AS amount_column,
	   livekpi._attname(t.relid, t.status_attnum) AS status_column,
	   livekpi._attname(t.relid, t.category_attnum) AS category_column,
	   t.statuses1 AS cancelled_or_approved_statuses,
	   t.statuses2 AS rejected_statuses,
	   t.max_stay_nights,
	   t.timezone,
	   t.tracked_at
FROM livekpi.tracked_tables t;

/*
 * _revoke_public()
 *		Nothing in the schema is usable by PUBLIC; docs/operations.md lists
 *		the GRANTs a read-only dashboard role needs.  Run again whenever
 *		objects are made anew.
 */
CREATE FUNCTION livekpi._revoke_public() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	REVOKE ALL ON ALL TABLES IN SCHEMA livekpi FROM PUBLIC;
	REVOKE ALL ON ALL FUNCTIONS IN SCHEMA livekpi FROM PUBLIC;
	REVOKE ALL ON SCHEMA livekpi FROM PUBLIC;
END
$$;
-- sql/parts/50_push.sql
--	  The push listener's SQL: access tokens (SPEC section 5) and the
--	  livekpi.clients view.  Only a SHA-256 hash of each secret is stored;
--	  the secret is shown once, by create_token().  Owned by the push
--	  worker part (src/tokens.c, src/push_worker.c).

CREATE TABLE livekpi.push_tokens (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	label			text NOT NULL CHECK (label <> ''),
	secret_hash		bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
	properties		text[],
	created_at		timestamptz NOT NULL DEFAULT now(),
	expires_at		timestamptz NOT NULL,
	revoked_at		timestamptz,
	last_used_at	timestamptz
);
COMMENT ON TABLE livekpi.push_tokens IS
	'Access tokens of the livekpi push listener; only a SHA-256 hash of each secret is kept.';
-- a label names one live token at a time
CREATE UNIQUE INDEX push_tokens_live_label ON livekpi.push_tokens (label)
	WHERE revoked_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('livekpi.push_tokens', '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('livekpi.push_tokens', 'id')::regclass, '');

CREATE FUNCTION livekpi._token_secret() RETURNS text
	LANGUAGE c VOLATILE STRICT
	AS 'MODULE_PATHNAME', 'livekpi_token_secret';

CREATE FUNCTION livekpi._tokens_changed() RETURNS void
	LANGUAGE c VOLATILE
	AS 'MODULE_PATHNAME', 'livekpi_tokens_changed';

-- Called by the typed livekpi.create_token() of the core part with the keys
-- in their text form (already canonical: they went through the key type).
CREATE FUNCTION livekpi._create_token(label text, properties text[], valid_for interval)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	secret text;
BEGIN
	IF label IS NULL OR label = '' THEN
		RAISE EXCEPTION 'token label must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF valid_for IS NULL OR valid_for <= interval '0' THEN
		RAISE EXCEPTION 'valid_for must be a positive interval'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('valid_for was %s.', coalesce(valid_for::text, 'NULL'));
	END IF;
	IF properties IS NOT NULL AND array_position(properties, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'properties must not contain NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass NULL instead of an array for a whole-portfolio token.';
	END IF;
	IF EXISTS (SELECT 1 FROM livekpi.push_tokens t
				WHERE t.label = _create_token.label AND t.revoked_at IS NULL) THEN
		RAISE EXCEPTION 'a token labelled "%" already exists', label
			USING ERRCODE = 'unique_violation',
				  HINT = 'Revoke it first with livekpi.revoke_token(), or choose another label.';
	END IF;
	secret := livekpi._token_secret();
	INSERT INTO livekpi.push_tokens (label, secret_hash, properties, expires_at)
	VALUES (label, sha256(convert_to(secret, 'UTF8')),
			(SELECT array_agg(DISTINCT p ORDER BY p) FROM unnest(properties) p),
			now() + valid_for);
	RETURN secret;
END
$$;

CREATE FUNCTION livekpi.revoke_token(label text) RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	UPDATE livekpi.push_tokens t SET revoked_at = now()
	 WHERE t.label = revoke_token.label AND t.revoked_at IS NULL;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		-- the push worker closes the token's connections once we commit
		PERFORM livekpi._tokens_changed();
	END IF;
	RETURN n > 0;
END
$$;
COMMENT ON FUNCTION livekpi.revoke_token(text) IS
	'Revoke the live token with this label; its open connections are closed within a second.';

CREATE VIEW livekpi.tokens AS
	SELECT label, properties, created_at, expires_at, revoked_at, last_used_at
	  FROM livekpi.push_tokens
	 ORDER BY created_at, id;
COMMENT ON VIEW livekpi.tokens IS
	'Access tokens of the push listener (never the secret).';

CREATE FUNCTION livekpi._push_clients(
	OUT label text, OUT peer text, OUT connected_at timestamptz,
	OUT last_seq bigint, OUT queued_bytes bigint)
RETURNS SETOF record
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'livekpi_push_clients';

CREATE VIEW livekpi.clients AS
	SELECT label, peer, connected_at, last_seq, queued_bytes
	  FROM livekpi._push_clients();
COMMENT ON VIEW livekpi.clients IS
	'Open WebSocket connections of the push listener.';

REVOKE ALL ON livekpi.push_tokens, livekpi.tokens, livekpi.clients FROM PUBLIC;
REVOKE ALL ON FUNCTION livekpi._token_secret(), livekpi._tokens_changed(),
	livekpi._create_token(text, text[], interval), livekpi.revoke_token(text),
	livekpi._push_clients() FROM PUBLIC;
/*-------------------------------------------------------------------------
 * livekpi--1.0.sql, part 90: objects typed by the property key (bigint
 * until a table with another key type is tracked), privileges, and the
 * wake-up that tells the apply worker the extension exists.
 *-------------------------------------------------------------------------
 */
SELECT livekpi._install_key_type('bigint');
SELECT livekpi._revoke_public();
SELECT livekpi._wake_apply();
