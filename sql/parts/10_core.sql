/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 10: the core pipeline.
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
	key_type	regtype NOT NULL DEFAULT 'bigint',
	-- Why the KPIs are not exact until rebuild() (NULL: they are), and since
	-- when: a skipped poison change, capture that was disabled, ...
	stale_reason text,
	stale_since timestamptz
);
INSERT INTO livekpi.state DEFAULT VALUES;

/*
 * skipped_changes: source changes the apply worker could not apply and
 * skipped (SPEC section 5), each recorded in the transaction that moves the
 * replication origin past it.
 */
CREATE TABLE livekpi.skipped_changes (
	commit_lsn	pg_lsn NOT NULL,
	message_lsn pg_lsn,
	ordinal		int NOT NULL,		-- the change's place in its transaction, from 1
	relid		oid,				-- the tracked table it came from, when known
	sqlstate	text NOT NULL,
	message		text NOT NULL,
	skipped_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (commit_lsn, ordinal)
);

/*
 * _mark_stale(reason)
 *		The one way to say the KPIs are no longer exact: a rebuild() clears
 *		it.  The apply worker publishes the flag to /healthz when it is woken.
 */
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
-- A batch whose delta has more than DELTA_PART_ROWS rows (src/apply_kpi.c)
-- is stored in parts: the delta_log row holds the last part, this table the
-- earlier ones, written by the same transaction and trimmed with it.
CREATE TABLE livekpi.delta_log_parts (
	seq			bigint NOT NULL,
	part		int NOT NULL,
	upserts		jsonb NOT NULL DEFAULT '{}',
	deletes		jsonb NOT NULL DEFAULT '{}',
	PRIMARY KEY (seq, part)
);
-- A batch's rows are compressed as they are written: lz4 costs a fraction
-- of pglz on the apply worker's critical path (when the server has it).
DO $$
BEGIN
	ALTER TABLE livekpi.delta_log ALTER COLUMN upserts SET COMPRESSION lz4;
	ALTER TABLE livekpi.delta_log ALTER COLUMN deletes SET COMPRESSION lz4;
	ALTER TABLE livekpi.delta_log_parts ALTER COLUMN upserts SET COMPRESSION lz4;
	ALTER TABLE livekpi.delta_log_parts ALTER COLUMN deletes SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
	NULL;
END
$$;

/*
 * _delta_render(view, row)
 *		A row of delta_log as the view's row: rows of property_kpis and
 *		portfolio_kpis are stored without occupancy, adr, revpar,
 *		cancellation_rate and noi, which this computes as the views do
 *		(src/delta_render.c); other rows are returned as they are.
 */
CREATE FUNCTION livekpi._delta_render(view text, row_stored jsonb) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'livekpi_delta_render' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

/*
 * delta_rows(seq)
 *		The rows of one batch of delta_log, its parts included, as clients
 *		get them: op 'upsert' with to_jsonb of the view row, or 'delete'
 *		with the key of a row that no longer exists.
 */
CREATE FUNCTION livekpi.delta_rows(seq bigint)
RETURNS TABLE (view text, op text, data jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT v.key, 'upsert', livekpi._delta_render(v.key, r.value)
	FROM (SELECT d.upserts AS j FROM livekpi.delta_log d WHERE d.seq = delta_rows.seq
		  UNION ALL
		  SELECT p.upserts FROM livekpi.delta_log_parts p WHERE p.seq = delta_rows.seq) x,
		 jsonb_each(x.j) v, jsonb_array_elements(v.value) r
	UNION ALL
	SELECT v.key, 'delete', r.value
	FROM (SELECT d.deletes AS j FROM livekpi.delta_log d WHERE d.seq = delta_rows.seq
		  UNION ALL
		  SELECT p.deletes FROM livekpi.delta_log_parts p WHERE p.seq = delta_rows.seq) x,
		 jsonb_each(x.j) v, jsonb_array_elements(v.value) r
$$;

-- ---------------------------------------------------------------------
-- KPI tables (property_id takes the key type in _install_key_type).
-- The apply worker updates their rows in place batch after batch: the
-- fillfactor leaves room on each page so that those updates are HOT (no
-- new index entries), most for the monthly and portfolio rows, which
-- nearly every batch updates.
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
) WITH (fillfactor = 80);

CREATE TABLE livekpi.booking_monthly (
	property_id bigint NOT NULL,
	month		date NOT NULL,
	nights_sold bigint NOT NULL DEFAULT 0,
	room_revenue numeric NOT NULL DEFAULT 0,
	arrivals	bigint NOT NULL DEFAULT 0,
	cancelled_arrivals bigint NOT NULL DEFAULT 0,
	updated_at	timestamptz NOT NULL,
	PRIMARY KEY (property_id, month)
) WITH (fillfactor = 50);

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
) WITH (fillfactor = 80);

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
) WITH (fillfactor = 50);

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
) WITH (fillfactor = 10);

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
