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

-- ---------------------------------------------------------------------
-- Section C: tracking API, time zones, properties, disabled capture, tokens
-- ---------------------------------------------------------------------

-- C1. Disabled or bypassed capture (issue 8 item 4); DROP TRIGGER's DETAIL
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
	IF changed THEN
		PERFORM livekpi._rebuild(false);
	END IF;
END
$$;

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
					  HINT = 'ENABLE TRIGGER livekpi_capture (or ENABLE TRIGGER ALL) again: livekpi then recomputes the KPIs by itself.';
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
	FOREACH g IN ARRAY string_to_array(nullif(current_setting('livekpi_internal.track_grants', true), ''), ';') LOOP
		EXECUTE g;
	END LOOP;
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

-- ---------------------------------------------------------------------
-- Final section (lead): views and functions re-created, privileges, rebuild
-- ---------------------------------------------------------------------
