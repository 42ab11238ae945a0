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
SELECT data::jsonb - 'xid' - 'commit_lsn' - 'commit_time' AS change,
	   data::jsonb ->> 'commit_lsn' ~ '^[0-9A-F]+/[0-9A-F]+$' AS has_commit_lsn,
	   (data::jsonb ->> 'commit_time')::timestamptz <= now() AS has_commit_time
FROM pg_logical_slot_get_changes('regress_json', NULL, NULL, 'format', 'json');
-- bad options are refused
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'format', 'xml');
SELECT * FROM pg_logical_slot_peek_changes('regress_json', NULL, NULL, 'color', 'blue');
SELECT pg_drop_replication_slot('regress_json');
DROP TABLE untracked;
TRUNCATE expenses;
SELECT livekpi.sync('30s');
