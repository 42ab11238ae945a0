/*-------------------------------------------------------------------------
 *
 * fuzz_http.c
 *	  libFuzzer target for the push listener's HTTP request rules
 *	  (src/http_rules.c): routing and static-file paths, the WebSocket
 *	  handshake fields, Origin lists and Bearer headers, all of which
 *	  read untrusted request text inside the server.
 *
 *	  make fuzz              runs it for FUZZ_SECONDS (default 300)
 *	  test/fuzz/run-brief.sh runs it for a few seconds (make test)
 *
 * The input is split at NUL bytes into the fields of one request (path,
 * Sec-WebSocket-Version, Sec-WebSocket-Key, Origin, allowed_origins,
 * Authorization).  Besides memory errors (ASan/UBSan) it checks what the
 * worker relies on: a static path never climbs out of www/ and fits its
 * buffer, an accepted key is 24 bytes of base64, a bearer token lies
 * inside its header.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * test/fuzz/fuzz_http.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_rules.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NFIELDS 6

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	   *buf = malloc(size + 1);
	char	   *field[NFIELDS];
	size_t		at = 0;
	char		rel[256];
	LkRoute		route;
	const char *tok;

	memcpy(buf, data, size);
	buf[size] = '\0';
	for (int i = 0; i < NFIELDS; i++)
	{
		field[i] = buf + (at <= size ? at : size);
		if (at <= size)
			at += strlen(buf + at) + 1;
	}

	route = lk_http_route(field[0], rel, sizeof(rel));
	if (route == LK_ROUTE_STATIC)
	{
		if (rel[0] != '/' || strstr(rel, "..") != NULL || strstr(rel, "/.") != NULL ||
			memchr(rel, '\0', sizeof(rel)) == NULL)
			abort();
	}
	(void) lk_ws_version_ok(field[1]);
	if (lk_ws_key_valid(field[2]) && strlen(field[2]) != 24)
		abort();
	if (lk_origin_in_list(field[3], field[4]) && strlen(field[3]) == 0)
		abort();
	tok = lk_bearer_token(field[5]);
	if (tok != NULL && (tok < field[5] || tok > field[5] + strlen(field[5])))
		abort();
	free(buf);
	return 0;
}
