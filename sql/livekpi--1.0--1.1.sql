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
