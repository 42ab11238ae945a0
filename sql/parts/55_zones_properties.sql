/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 55: per-table time zones, properties from the
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
	PERFORM livekpi._settle_mapping(rel, key_attnum, property_column, problems,
									'livekpi.track_properties()', NULL);

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
