/*-------------------------------------------------------------------------
 * livekpi--1.1.sql, part 90: objects typed by the property key (bigint
 * until a table with another key type is tracked), privileges, and the
 * wake-up that tells the apply worker the extension exists.
 *-------------------------------------------------------------------------
 */
SELECT livekpi._install_key_type('bigint');
SELECT livekpi._revoke_public();
SELECT livekpi._wake_apply();
