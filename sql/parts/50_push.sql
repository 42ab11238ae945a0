-- sql/parts/50_push.sql
--	  The push listener's SQL: access tokens (SPEC section 5) and the
--	  livekpi.clients view.  Only a SHA-256 hash of each secret is stored;
--	  the secret is shown once, by create_token().  Owned by the push
--	  worker part (src/tokens.c, src/push_worker.c).

CREATE TABLE livekpi.push_tokens (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	label			text NOT NULL CHECK (label <> ''),
	secret_hash		bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
	properties		text[],
	created_at		timestamptz NOT NULL DEFAULT now(),
	expires_at		timestamptz NOT NULL,
	revoked_at		timestamptz,
	last_used_at	timestamptz
);
COMMENT ON TABLE livekpi.push_tokens IS
	'Access tokens of the livekpi push listener; only a SHA-256 hash of each secret is kept.';
-- a label names one live token at a time
CREATE UNIQUE INDEX push_tokens_live_label ON livekpi.push_tokens (label)
	WHERE revoked_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('livekpi.push_tokens', '');
SELECT pg_catalog.pg_extension_config_dump(
	pg_catalog.pg_get_serial_sequence('livekpi.push_tokens', 'id')::regclass, '');

CREATE FUNCTION livekpi._token_secret() RETURNS text
	LANGUAGE c VOLATILE STRICT
	AS 'MODULE_PATHNAME', 'livekpi_token_secret';

CREATE FUNCTION livekpi._tokens_changed() RETURNS void
	LANGUAGE c VOLATILE
	AS 'MODULE_PATHNAME', 'livekpi_tokens_changed';

-- Called by the typed livekpi.create_token() of the core part with the keys
-- in their text form (already canonical: they went through the key type).
CREATE FUNCTION livekpi._create_token(label text, properties text[], valid_for interval)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	secret text;
BEGIN
	IF label IS NULL OR label = '' THEN
		RAISE EXCEPTION 'token label must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF valid_for IS NULL OR valid_for <= interval '0' THEN
		RAISE EXCEPTION 'valid_for must be a positive interval'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('valid_for was %s.', coalesce(valid_for::text, 'NULL'));
	END IF;
	IF properties IS NOT NULL AND array_position(properties, NULL) IS NOT NULL THEN
		RAISE EXCEPTION 'properties must not contain NULL'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass NULL instead of an array for a whole-portfolio token.';
	END IF;
	IF EXISTS (SELECT 1 FROM livekpi.push_tokens t
				WHERE t.label = _create_token.label AND t.revoked_at IS NULL) THEN
		RAISE EXCEPTION 'a token labelled "%" already exists', label
			USING ERRCODE = 'unique_violation',
				  HINT = 'Revoke it first with livekpi.revoke_token(), or choose another label.';
	END IF;
	secret := livekpi._token_secret();
	INSERT INTO livekpi.push_tokens (label, secret_hash, properties, expires_at)
	VALUES (label, sha256(convert_to(secret, 'UTF8')),
			(SELECT array_agg(DISTINCT p ORDER BY p) FROM unnest(properties) p),
			now() + valid_for);
	RETURN secret;
END
$$;

CREATE FUNCTION livekpi.revoke_token(label text) RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n bigint;
BEGIN
	UPDATE livekpi.push_tokens t SET revoked_at = now()
	 WHERE t.label = revoke_token.label AND t.revoked_at IS NULL;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		-- the push worker closes the token's connections once we commit
		PERFORM livekpi._tokens_changed();
	END IF;
	RETURN n > 0;
END
$$;
COMMENT ON FUNCTION livekpi.revoke_token(text) IS
	'Revoke the live token with this label; its open connections are closed within a second.';

CREATE VIEW livekpi.tokens AS
	SELECT label, properties, created_at, expires_at, revoked_at, last_used_at
	  FROM livekpi.push_tokens
	 ORDER BY created_at, id;
COMMENT ON VIEW livekpi.tokens IS
	'Access tokens of the push listener (never the secret).';

CREATE FUNCTION livekpi._push_clients(
	OUT label text, OUT peer text, OUT connected_at timestamptz,
	OUT last_seq bigint, OUT queued_bytes bigint)
RETURNS SETOF record
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'livekpi_push_clients';

CREATE VIEW livekpi.clients AS
	SELECT label, peer, connected_at, last_seq, queued_bytes
	  FROM livekpi._push_clients();
COMMENT ON VIEW livekpi.clients IS
	'Open WebSocket connections of the push listener.';

REVOKE ALL ON livekpi.push_tokens, livekpi.tokens, livekpi.clients FROM PUBLIC;
REVOKE ALL ON FUNCTION livekpi._token_secret(), livekpi._tokens_changed(),
	livekpi._create_token(text, text[], interval), livekpi.revoke_token(text),
	livekpi._push_clients() FROM PUBLIC;
