/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 45: per-table time zones, properties from the
 * user's own table, and errors without internal CONTEXT.
 *-------------------------------------------------------------------------
 */

CREATE FUNCTION livekpi._raise_error(sqlstate text, message text, detail text, hint text)
RETURNS void
	AS 'MODULE_PATHNAME', 'livekpi_raise_error' LANGUAGE C;

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
