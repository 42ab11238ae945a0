/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 30: operations (status, sync, pause, resume,
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
	OUT bytes_sent bigint, OUT push_last_error text, OUT push_last_error_at timestamptz,
	OUT records_rejected bigint, OUT role text, OUT replay_lsn pg_lsn,
	OUT replay_lag_ms bigint, OUT seq_served bigint)
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
	   st.epoch,
	   s.records_rejected,
	   st.stale_reason IS NOT NULL AS stale,
	   st.stale_reason,
	   st.stale_since,
	   s.role,
	   s.replay_lsn,
	   s.replay_lag_ms,
	   s.seq_served
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
