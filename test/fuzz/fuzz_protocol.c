/*-------------------------------------------------------------------------
 *
 * fuzz_protocol.c
 *	  libFuzzer target for the push worker's client-message parser
 *	  (src/protocol.c), which reads untrusted input inside the server.
 *
 *	  make fuzz              runs it for FUZZ_SECONDS (default 300)
 *	  test/fuzz/run-brief.sh runs it for a few seconds (make test)
 *
 * Besides memory errors (ASan/UBSan), it checks what the worker relies
 * on: on success the strings are terminated and the counts in range.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * test/fuzz/fuzz_protocol.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

static LkClientMessage msg;

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char		err[256];

	if (lk_parse_client_message((const char *) data, size, &msg, err, sizeof(err)))
	{
		if (memchr(msg.token, '\0', sizeof(msg.token)) == NULL ||
			memchr(msg.epoch, '\0', sizeof(msg.epoch)) == NULL)
			abort();
		if (msg.nproperties < 0 || msg.nproperties > LK_MAX_PROPERTIES)
			abort();
		for (int i = 0; i < msg.nproperties; i++)
		{
			int			off = msg.property_off[i];

			if (off < 0 || off >= (int) sizeof(msg.propbuf) ||
				memchr(msg.propbuf + off, '\0', sizeof(msg.propbuf) - off) == NULL)
				abort();
		}
		if ((msg.views & ~0xFu) != 0)
			abort();
		if (msg.has_daily_range && (strlen(msg.daily_from) != 10 || strlen(msg.daily_to) != 10))
			abort();
		if (msg.type == LK_MSG_HELLO && !msg.has_token)
			abort();
	}
	else if (memchr(err, '\0', sizeof(err)) == NULL || err[0] == '\0')
		abort();
	return 0;
}
