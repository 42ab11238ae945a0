/*-------------------------------------------------------------------------
 *
 * pg_shim.c
 *	  The few server functions src/change.c calls, for the fuzz target
 *	  test/fuzz/fuzz_change.c, which runs outside the server: allocation
 *	  with malloc (all freed after each input, so that ASan sees real
 *	  overflows and no pool hides them), StringInfo appends, and text
 *	  construction.  Anything reporting an error aborts: the checked
 *	  decoder must never raise one, and the fuzzer only re-encodes what
 *	  decoded.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * test/fuzz/pg_shim.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>

#include "access/xlog.h"
#include "catalog/pg_control.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "pg_shim.h"

/* every palloc of the current input, freed by shim_free_all() */
static void **allocs;
static size_t nallocs,
			maxallocs;

Oid			MyDatabaseId = 16384;

void *
palloc(Size size)
{
	void	   *p = malloc(size ? size : 1);

	if (p == NULL)
		abort();
	if (nallocs == maxallocs)
	{
		maxallocs = maxallocs ? 2 * maxallocs : 64;
		allocs = realloc(allocs, maxallocs * sizeof(void *));
		if (allocs == NULL)
			abort();
	}
	allocs[nallocs++] = p;
	return p;
}

void
shim_free_all(void)
{
	for (size_t i = 0; i < nallocs; i++)
		free(allocs[i]);
	nallocs = 0;
}

char *
GetMockAuthenticationNonce(void)
{
	static char nonce[MOCK_AUTH_NONCE_LEN] = "fuzzing nonce, 32 bytes long...";

	return nonce;
}

/* StringInfo buffers of the fuzzer are malloc'd: grow them with realloc. */
void
appendBinaryStringInfo(StringInfo str, const char *data, int datalen)
{
	if (str->len + datalen + 1 > str->maxlen)
	{
		str->maxlen = 2 * (str->len + datalen + 1);
		str->data = realloc(str->data, str->maxlen);
		if (str->data == NULL)
			abort();
	}
	memcpy(str->data + str->len, data, datalen);
	str->len += datalen;
	str->data[str->len] = '\0';
}

void
appendStringInfoChar(StringInfo str, char ch)
{
	appendBinaryStringInfo(str, &ch, 1);
}

text *
cstring_to_text_with_len(const char *s, int len)
{
	text	   *t = palloc(len + VARHDRSZ);

	SET_VARSIZE(t, len + VARHDRSZ);
	memcpy(VARDATA(t), s, len);
	return t;
}

/* values made by cstring_to_text_with_len are never toasted */
struct varlena *
pg_detoast_datum_packed(struct varlena *datum)
{
	return datum;
}

bool
errstart_cold(int elevel, const char *domain)
{
	abort();
}

bool
errstart(int elevel, const char *domain)
{
	abort();
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	abort();
}

int
errmsg_internal(const char *fmt,...)
{
	abort();
}

Datum
DirectFunctionCall1Coll(PGFunction func, Oid collation, Datum arg1)
{
	abort();
}

char *
psprintf(const char *fmt,...)
{
	abort();
}

char *
text_to_cstring(const text *t)
{
	abort();
}

Datum
uuid_out(PG_FUNCTION_ARGS)
{
	abort();
}
