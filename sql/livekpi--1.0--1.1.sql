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
	OUT records_rejected bigint)
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
	   st.stale_since
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
