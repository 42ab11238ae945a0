/*-------------------------------------------------------------------------
 *
 * fuzz_change.c
 *	  libFuzzer target for the change-record decoder (src/change.c), which
 *	  reads untrusted input inside the server: anyone may write a message
 *	  with livekpi's prefix.  Built with ASan and UBSan against the server
 *	  headers, with test/fuzz/pg_shim.c standing in for the server.
 *
 *	  make fuzz              runs every fuzz target for FUZZ_SECONDS
 *	  test/fuzz/run-brief.sh runs them for a few seconds (make test)
 *
 * Besides memory errors and undefined behaviour, it checks what the output
 * plugin and the apply worker rely on:
 *	  - change_decode_checked() never raises an error (the shim aborts);
 *	  - a record it accepts re-encodes to exactly the same bytes, so there
 *	    is one encoding per change and nothing in a record goes unread;
 *	  - signing a body makes change_verify() accept it for that xid only,
 *	    and a changed byte makes it fail.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * test/fuzz/fuzz_change.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>

#include "change.h"
#include "pg_shim.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
reencode(const Change *c, StringInfo out)
{
	change_encode_header(out, c->kind, c->key_kind, c->relid, c->has_old, c->has_new);
	if (c->has_old)
		change_encode_image(out, c->kind, c->key_kind, &c->old);
	if (c->has_new)
		change_encode_image(out, c->kind, c->key_kind, &c->new);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Change		c;
	const char *why = NULL;
	StringInfoData out;
	TransactionId xid = 0;
	bool		ok;

	/* the input as a record body, exactly as the plugin hands it over */
	ok = change_decode_checked((const char *) data, size, &c, &why);
	if (!ok && (why == NULL || why[0] == '\0'))
		abort();
	if (ok && why != NULL)
		abort();

	/* the input as a whole tagged record: a random tag must not pass */
	if (size >= 4)
		memcpy(&xid, data, 4);
	(void) change_verify((const char *) data, size, xid);

	if (ok)
	{
		out.maxlen = (int) size + 64;
		out.data = malloc(out.maxlen);
		out.len = 0;
		out.cursor = 0;
		if (out.data == NULL)
			abort();
		reencode(&c, &out);
		if ((size_t) out.len != size || memcmp(out.data, data, size) != 0)
			abort();

		/* authentication round trip, and a flipped byte fails it */
		change_sign(&out, xid);
		if (!change_verify(out.data, out.len, xid))
			abort();
		if (change_verify(out.data, out.len, xid + 1))
			abort();
		out.data[size / 2] ^= 0x01;
		if (change_verify(out.data, out.len, xid))
			abort();
		free(out.data);
	}
	shim_free_all();
	return 0;
}
