-- The output plugin on its own: format=json, as pg_recvlogical prints it.
\set SHOW_CONTEXT never
SELECT 'init' FROM pg_create_logical_replication_slot('regress_json', 'livekpi');
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount, status)
VALUES (100, 70, '2026-12-30', '2027-01-02', 300, 'confirmed');
UPDATE bookings SET status = 'cancelled' WHERE id = 100;
DELETE FROM bookings WHERE id = 100;
INSERT INTO expenses (property_id, incurred_on, amount, category, approval_status)
VALUES (70, '2026-12-30', 'NaN', NULL, 'rejected');
BEGIN;
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount) VALUES (101, 71, '2026-01-01', '2026-01-02', 1);
ROLLBACK;
CREATE TABLE untracked (x int);
INSERT INTO untracked VALUES (1);
-- JSON is the default; commit_time is RFC 3339 in UTC
SELECT data::jsonb - 'xid' - 'commit_lsn' - 'commit_time' AS change,
	   data::jsonb ->> 'commit_lsn' ~ '^[0-9A-F]+/[0-9A-F]+$' AS has_commit_lsn,
	   (data::jsonb ->> 'commit_time')::timestamptz <= now() AS has_commit_time,
	   data::jsonb ->> 'commit_time' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS rfc3339,
	   (data::jsonb ->> 'xid')::xid IS NOT NULL AS has_xid
FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL);
-- the same with format=json, boolean words, hyphenated names, skip_origin
SELECT count(*) AS changes, bool_and(NOT (data::jsonb ? 'xid')) AS no_xid
FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'format', 'JSON',
	 'include-xids', 'off', 'skip_origin', 'on');
SELECT count(*) AS changes
FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'include_xids', '1',
	 'skip-origin', 'false');
SELECT count(*) AS changes
FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'skip_origin', '0');
-- skip_origin: replayed transactions (here by a replication origin of
-- the session's) are dropped by their origin's id, or all with on
SELECT pg_replication_origin_create('regress_origin') IS NOT NULL AS origin_created;
SELECT pg_replication_origin_session_setup('regress_origin');
INSERT INTO bookings (id, property_id, check_in, check_out, total_amount)
VALUES (102, 72, '2026-02-01', '2026-02-02', 5);
DELETE FROM bookings WHERE id = 102;
SELECT pg_replication_origin_session_reset();
SELECT count(*) AS all_changes FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL);
SELECT count(*) AS local_changes
FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'skip_origin', 'yes');
SELECT count(*) AS changes_not_from_origin
FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'skip_origin',
	 (SELECT roident::text FROM pg_replication_origin WHERE roname = 'regress_origin'));
SELECT pg_replication_origin_drop('regress_origin');
SELECT count(*) AS binary_frames
FROM pg_logical_slot_get_binary_changes('regress_json', NULL, NULL, 'format', 'binary',
	 'skip_origin', '7');
-- bad options are refused
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'format', 'xml');
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'color', 'blue');
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'include_xids', 'maybe');
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'skip_origin', 'maybe');
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'skip_origin', '70000');
SELECT pg_drop_replication_slot('regress_json');
DROP TABLE untracked;
TRUNCATE expenses;
SELECT livekpi.sync('30s');
