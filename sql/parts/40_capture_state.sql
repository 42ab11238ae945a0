/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 40: capture that is disabled or bypassed.
 *
 * SPEC section 2: disabling a tracked table's triggers is never a silent
 * loss.  While a livekpi trigger of a tracked table (or of one of its
 * partitions, or of the table tracked by track_properties) does not fire
 * for ordinary sessions, the KPIs are marked stale (livekpi.status,
 * /healthz) with a WARNING; when every such trigger fires again, livekpi
 * recomputes the KPIs by itself, in the transaction of the ALTER TABLE
 * that made capture whole.  A table rewritten without firing triggers
 * (the table_rewrite event) is recomputed at the end of that command.
 *-------------------------------------------------------------------------
 */

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
