-- SPEC section 5: token administration only through functions (issue 11 item 7).
\set SHOW_CONTEXT never
-- the GRANTs docs/protocol.md gives a token administrator
CREATE ROLE livekpi_token_admin;
GRANT USAGE ON SCHEMA livekpi TO livekpi_token_admin;
GRANT EXECUTE ON FUNCTION livekpi.create_token(text, bigint[], interval),
						  livekpi._create_token(text, text[], interval),
						  livekpi.revoke_token(text) TO livekpi_token_admin;
GRANT SELECT ON livekpi.tokens, livekpi.clients TO livekpi_token_admin;
GRANT EXECUTE ON FUNCTION livekpi._push_clients() TO livekpi_token_admin;

SET ROLE livekpi_token_admin;
SELECT livekpi.create_token('owner 7', ARRAY[7], '1 day') LIKE 'lk_%' AS created;
SELECT livekpi.create_token('front desk') LIKE 'lk_%' AS created;
SELECT label, properties, expires_at - created_at AS valid_for, revoked_at IS NOT NULL AS revoked
FROM livekpi.tokens WHERE label IN ('owner 7', 'front desk') ORDER BY label;
SELECT livekpi.revoke_token('front desk');
SELECT count(*) AS clients FROM livekpi.clients;
-- cannot widen, extend or un-revoke, nor forge a token
UPDATE livekpi.push_tokens SET properties = NULL WHERE label = 'owner 7';
UPDATE livekpi.push_tokens SET expires_at = 'infinity' WHERE label = 'owner 7';
UPDATE livekpi.push_tokens SET revoked_at = NULL WHERE label = 'front desk';
INSERT INTO livekpi.push_tokens (label, secret_hash, expires_at)
VALUES ('forged', sha256('x'), 'infinity');
DELETE FROM livekpi.push_tokens;
SELECT label FROM livekpi.push_tokens;
RESET ROLE;
SELECT label, properties, expires_at - created_at AS valid_for, revoked_at IS NOT NULL AS revoked
FROM livekpi.tokens WHERE label IN ('owner 7', 'front desk') ORDER BY label;

DELETE FROM livekpi.push_tokens WHERE label IN ('owner 7', 'front desk');
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA livekpi FROM livekpi_token_admin;
REVOKE ALL ON ALL TABLES IN SCHEMA livekpi FROM livekpi_token_admin;
REVOKE ALL ON SCHEMA livekpi FROM livekpi_token_admin;
DROP ROLE livekpi_token_admin;
