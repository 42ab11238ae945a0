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
