-- Only the capture trigger can feed the KPIs (SPEC section 2): messages with
-- livekpi's prefix that anyone can write with pg_logical_emit_message() are
-- ignored, counted in records_rejected, and never stop the pipeline.
\set SHOW_CONTEXT never
SELECT livekpi.sync('30s');
CREATE TEMP TABLE rejected0 AS SELECT records_rejected AS n, clock_timestamp() AS t0 FROM livekpi.status;
-- an external client of the output plugin sees the same filter
SELECT 'init' FROM pg_create_logical_replication_slot('regress_external', 'livekpi');

-- the bytes of a genuine record, as written to WAL by the capture trigger
SELECT 'init' FROM pg_create_logical_replication_slot('regress_raw', 'test_decoding');
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
VALUES (300, 80, '2026-03-01', '2026-03-04', 450);
SELECT substring(data FROM position('content:'::bytea IN data) + 8) AS genuine
FROM pg_logical_slot_get_binary_changes('regress_raw', NULL, NULL)
WHERE position('prefix: livekpi'::bytea IN data) > 0 \gset
SELECT pg_drop_replication_slot('regress_raw');
SELECT length(:'genuine'::bytea) BETWEEN 20 AND 40 AS genuine_is_small;

-- little-endian int4, as 1.0's change format wrote it
CREATE FUNCTION pg_temp.le32(v int) RETURNS bytea LANGUAGE sql AS $$
	SELECT set_byte(set_byte(set_byte(set_byte('\x00000000'::bytea,
		0, v & 255), 1, (v >> 8) & 255), 2, (v >> 16) & 255), 3, (v >> 24) & 255)
$$;
-- 1.0's format, built by hand: booking, int key, relid, new image only;
-- flags 0, property 81 (zigzag varint a2 01), 2026-03-01 .. 2026-03-04,
-- amount 450.00 (numeric body 0081 c201)
SELECT '\x4269'::bytea || pg_temp.le32('bookings'::regclass::oid::int) || '\x0200a201'::bytea
	|| pg_temp.le32('2026-03-01'::date - '2000-01-01') || pg_temp.le32('2026-03-04'::date - '2000-01-01')
	|| '\x040081c201'::bytea AS forged_v10 \gset
SELECT length(:'forged_v10'::bytea) AS forged_v10_len;
-- 1.0's rebuild marker: the worker used to drop the changes its
-- transaction made before it
SELECT '\x526900000000' || '00'::text AS forged_marker \gset

-- a role with no grant on anything of livekpi's, not even USAGE on its
-- schema; the INSERT privilege is only for the marker case
CREATE ROLE regress_forger;
GRANT INSERT ON bookings TO regress_forger;
SET ROLE regress_forger;
SELECT has_schema_privilege('livekpi', 'USAGE') AS forger_has_usage;
SELECT 'forged_v10' FROM pg_logical_emit_message(true, 'livekpi', :'forged_v10'::bytea);
-- the genuine record replayed in another transaction
SELECT 'replayed' FROM pg_logical_emit_message(true, 'livekpi', :'genuine'::bytea);
-- the genuine record with its property changed (the tag no longer matches)
SELECT 'tampered' FROM pg_logical_emit_message(true, 'livekpi',
	overlay(:'genuine'::bytea PLACING '\x00'::bytea FROM 8 FOR 1));
-- truncated, empty, oversized
SELECT 'truncated' FROM pg_logical_emit_message(true, 'livekpi', 'x');
SELECT 'empty' FROM pg_logical_emit_message(true, 'livekpi', ''::bytea);
SELECT 'oversized' FROM pg_logical_emit_message(true, 'livekpi', repeat('B', 1048577));
BEGIN;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
VALUES (301, 82, '2026-03-01', '2026-03-02', 100);
SELECT 'marker' FROM pg_logical_emit_message(true, 'livekpi', :'forged_marker'::bytea);
COMMIT;
-- non-transactional: the trigger never writes one
SELECT 'nontransactional' FROM pg_logical_emit_message(false, 'livekpi', :'genuine'::bytea);
RESET ROLE;

-- the pipeline goes on, nothing forged counts, every forgery is counted
SELECT livekpi.sync('30s');
SELECT (SELECT records_rejected FROM livekpi.status) - n AS rejected FROM rejected0;
SELECT count(*) AS differences FROM livekpi.verify();
SELECT property_id, day, nights_sold, room_revenue, arrivals FROM bd
WHERE property_id BETWEEN 80 AND 82;
SELECT apply_state, coalesce(last_error_at < t0, true) AS no_new_error FROM livekpi.status, rejected0;

-- a genuine change afterwards is applied
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
VALUES (302, 83, '2026-03-10', '2026-03-11', 90);
SELECT livekpi.sync('30s');
SELECT property_id, day, nights_sold, room_revenue, arrivals FROM bd WHERE property_id = 83;
SELECT count(*) AS differences FROM livekpi.verify();

-- an external client decoding the same WAL gets the genuine changes only
-- (each rejected record is a WARNING naming its LSN, which varies) and
-- counts nothing: only the apply worker's decoding counts
SET client_min_messages = error;
SELECT data::jsonb ->> 'op' AS op, data::jsonb ->> 'property' AS property
FROM pg_logical_slot_get_changes('regress_external', NULL, NULL);
RESET client_min_messages;
SELECT pg_drop_replication_slot('regress_external');
SELECT (SELECT records_rejected FROM livekpi.status) - n AS rejected_still FROM rejected0;

DELETE FROM bookings WHERE id BETWEEN 300 AND 302;
SELECT livekpi.sync('30s');
REVOKE ALL ON bookings FROM regress_forger;
DROP ROLE regress_forger;
