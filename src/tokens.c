/*-------------------------------------------------------------------------
 *
 * tokens.c
 *	  Access tokens of the push listener (SPEC section 5) and the
 *	  SQL-callable functions of the push part.
 *
 * This file owns the secret side of tokens: making a secret, hashing it
 * (SHA-256 through PostgreSQL's own pg_cryptohash, so only the hash is
 * ever stored), finding a token from a presented secret with a
 * constant-time comparison, and waking the push worker when a token is
 * revoked so that its connections close within a second.  It also owns
 * livekpi._push_clients(), the function behind the livekpi.clients view.
 * The table and the SQL wrappers are in sql/parts/50_push.sql.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/tokens.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "livekpi.h"
#include "push.h"

#define LK_SECRET_BYTES 32

PG_FUNCTION_INFO_V1(livekpi_token_secret);
PG_FUNCTION_INFO_V1(livekpi_tokens_changed);
PG_FUNCTION_INFO_V1(livekpi_push_clients);

static bool token_change_pending = false;
static bool token_callback_registered = false;

/*
 * livekpi_cmp_cstring
 *		qsort/bsearch comparator for arrays of C strings.
 */
int
livekpi_cmp_cstring(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * livekpi_cmp_int64
 *		qsort/bsearch comparator for arrays of int64 (token ids).
 */
int
livekpi_cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * sha256_of
 *		SHA-256 of a secret, with PostgreSQL's hashing (OpenSSL when built
 *		with it), the same function as SQL's sha256().
 */
static void
sha256_of(const char *secret, uint8 *out)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL ||
		pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) secret, strlen(secret)) < 0 ||
		pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
	{
		pg_cryptohash_free(ctx);
		elog(ERROR, "could not compute SHA-256");
	}
	pg_cryptohash_free(ctx);
}

/*
 * equal_constant_time
 *		Compare two digests without an early exit, so that the time taken
 *		says nothing about where they differ.
 */
static bool
equal_constant_time(const uint8 *a, const uint8 *b, size_t len)
{
	volatile uint8 diff = 0;

	for (size_t i = 0; i < len; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

/*
 * livekpi_token_lookup
 *		Find the token whose secret is "secret".  Called by the push worker
 *		inside a transaction with SPI connected.  On LK_TOKEN_OK, *token is
 *		filled, its strings allocated in cxt.  A secret that does not look
 *		like one of ours is unknown without touching the table.
 */
LkTokenStatus
livekpi_token_lookup(const char *secret, LkToken *token, MemoryContext cxt)
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	bytea	   *hash;
	Oid			argtypes[1] = {BYTEAOID};
	Datum		values[1];
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	bytea	   *stored;
	LkTokenStatus status;

	memset(token, 0, sizeof(*token));
	if (strncmp(secret, "lk_", 3) != 0 || strlen(secret) > 200)
		return LK_TOKEN_UNKNOWN;

	sha256_of(secret, digest);
	hash = (bytea *) palloc(VARHDRSZ + sizeof(digest));
	SET_VARSIZE(hash, VARHDRSZ + sizeof(digest));
	memcpy(VARDATA(hash), digest, sizeof(digest));
	values[0] = PointerGetDatum(hash);

	ret = SPI_execute_with_args(
								"SELECT id, label, secret_hash, properties, expires_at, "
								"       revoked_at IS NOT NULL, expires_at <= now() "
								"  FROM livekpi.push_tokens WHERE secret_hash = $1",
								1, argtypes, values, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "token lookup failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return LK_TOKEN_UNKNOWN;

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	stored = DatumGetByteaPP(SPI_getbinval(tup, desc, 3, &isnull));
	if (isnull || VARSIZE_ANY_EXHDR(stored) != sizeof(digest) ||
		!equal_constant_time((uint8 *) VARDATA_ANY(stored), digest, sizeof(digest)))
		return LK_TOKEN_UNKNOWN;

	token->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	strlcpy(token->label, TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull)),
			sizeof(token->label));
	token->expires_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 5, &isnull));
	if (isnull)
		token->expires_at = DT_NOEND;

	d = SPI_getbinval(tup, desc, 4, &isnull);
	token->all_properties = isnull;
	if (!isnull)
	{
		ArrayType  *arr = DatumGetArrayTypeP(d);
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		MemoryContext old;

		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		old = MemoryContextSwitchTo(cxt);
		token->properties = palloc(sizeof(char *) * Max(n, 1));
		token->nproperties = 0;
		for (int i = 0; i < n; i++)
			if (!nulls[i])
				token->properties[token->nproperties++] = TextDatumGetCString(elems[i]);
		MemoryContextSwitchTo(old);
		qsort(token->properties, token->nproperties, sizeof(char *), livekpi_cmp_cstring);
	}

	if (DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull)))
		status = LK_TOKEN_REVOKED;
	else if (DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull)) && !isnull)
		status = LK_TOKEN_EXPIRED;
	else
		status = LK_TOKEN_OK;
	return status;
}

/*
 * livekpi_token_touch
 *		Record that a token was used.  Optional: skipped on a hot standby,
 *		where the push worker must not write.
 */
void
livekpi_token_touch(int64 token_id)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];

	if (RecoveryInProgress())
		return;
	values[0] = Int64GetDatum(token_id);
	SPI_execute_with_args("UPDATE livekpi.push_tokens SET last_used_at = now() "
						  "WHERE id = $1",
						  1, argtypes, values, NULL, false, 0);
}

/*
 * token_xact_callback
 *		At commit of a transaction that changed tokens, tell the push worker:
 *		bump the generation it compares against and write its eventfd.
 *		Doing it at commit (not at the UPDATE) means the worker cannot
 *		look before the change is visible and then miss it.
 */
static void
token_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (token_change_pending && livekpi_push_shared != NULL)
			{
				uint64		one = 1;

				pg_atomic_fetch_add_u64(&livekpi_push_shared->token_generation, 1);
				if (livekpi_shared != NULL && livekpi_shared->push_wakeup_fd >= 0)
				{
					ssize_t		rc pg_attribute_unused();

					rc = write(livekpi_shared->push_wakeup_fd, &one, sizeof(one));
				}
			}
			token_change_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			token_change_pending = false;
			break;
		default:
			break;
	}
}

/*
 * livekpi_token_wake_push_at_commit
 *		Arrange for the push worker to re-check tokens when the current
 *		transaction commits.
 */
void
livekpi_token_wake_push_at_commit(void)
{
	if (!token_callback_registered)
	{
		RegisterXactCallback(token_xact_callback, NULL);
		token_callback_registered = true;
	}
	token_change_pending = true;
}

/*
 * livekpi._token_secret() RETURNS text
 *		A new secret: "lk_" and 32 bytes from pg_strong_random in base64url.
 */
Datum
livekpi_token_secret(PG_FUNCTION_ARGS)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	uint8		raw[LK_SECRET_BYTES + 2];
	char		out[3 + (LK_SECRET_BYTES + 2) / 3 * 4 + 1];
	int			n = 0;

	if (!pg_strong_random(raw, LK_SECRET_BYTES))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random token")));
	raw[LK_SECRET_BYTES] = raw[LK_SECRET_BYTES + 1] = 0;
	out[n++] = 'l';
	out[n++] = 'k';
	out[n++] = '_';
	for (int i = 0; i < LK_SECRET_BYTES; i += 3)
	{
		uint32		v = ((uint32) raw[i] << 16) | ((uint32) raw[i + 1] << 8) | raw[i + 2];
		int			chars = (i + 3 <= LK_SECRET_BYTES) ? 4 : (LK_SECRET_BYTES - i) + 1;

		for (int j = 0; j < chars; j++)
			out[n++] = alphabet[(v >> (18 - 6 * j)) & 0x3F];
	}
	out[n] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(out));
}

/*
 * livekpi._tokens_changed() RETURNS void
 *		Called by revoke_token(): wake the push worker at commit.
 */
Datum
livekpi_tokens_changed(PG_FUNCTION_ARGS)
{
	livekpi_token_wake_push_at_commit();
	PG_RETURN_VOID();
}

/*
 * livekpi._push_clients() RETURNS SETOF record
 *		The open WebSocket connections, from the push worker's slots in
 *		shared memory; behind the livekpi.clients view.
 */
Datum
livekpi_push_clients(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (livekpi_push_shared == NULL)
		PG_RETURN_VOID();

	for (int i = 0; i < livekpi_push_shared->nslots; i++)
	{
		LkClientSlot *slot = &livekpi_push_shared->slots[i];
		LkClientSlot copy;
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		SpinLockAcquire(&slot->mutex);
		copy = *slot;
		SpinLockRelease(&slot->mutex);
		if (!copy.in_use)
			continue;

		if (copy.label[0])
			values[0] = CStringGetTextDatum(copy.label);
		else
			nulls[0] = true;
		values[1] = CStringGetTextDatum(copy.peer);
		values[2] = TimestampTzGetDatum(copy.connected_at);
		if (copy.last_seq >= 0)
			values[3] = Int64GetDatum(copy.last_seq);
		else
			nulls[3] = true;
		values[4] = Int64GetDatum(copy.queued_bytes);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}
