/*-------------------------------------------------------------------------
 *
 * http_rules.c
 *	  Pure rules of the push listener's HTTP side (see http_rules.h).
 *
 * This file owns: which handler a request path goes to and which paths
 * may name a static file; what a valid Sec-WebSocket-Version and
 * Sec-WebSocket-Key are (RFC 6455 section 4.2.1: version 13, a key that
 * is the base64 of 16 bytes); matching an Origin against a comma list
 * (livekpi.allowed_origins, or the listener's own origins); and taking
 * the token out of an "Authorization: Bearer" header.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/http_rules.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http_rules.h"

/*
 * lk_http_route
 *		The handler of a request path.  For LK_ROUTE_STATIC, relpath gets
 *		the file's path below www/ ("/" is "/index.html"); paths with "..",
 *		hidden names, backslashes or over 200 bytes are not found.
 */
LkRoute
lk_http_route(const char *uri, char *relpath, size_t relsize)
{
	const char *rel = uri;

	if (relsize > 0)
		relpath[0] = '\0';
	if (uri == NULL || uri[0] != '/')
		return LK_ROUTE_NOT_FOUND;
	if (strcmp(uri, "/healthz") == 0)
		return LK_ROUTE_HEALTHZ;
	if (strcmp(uri, "/metrics") == 0)
		return LK_ROUTE_METRICS;
	if (strcmp(uri, "/v1/stream") == 0)
		return LK_ROUTE_STREAM;
	if (strcmp(uri, "/") == 0)
		rel = "/index.html";
	if (strstr(rel, "..") != NULL || strstr(rel, "/.") != NULL ||
		strchr(rel, '\\') != NULL || strlen(rel) > 200 || strlen(rel) >= relsize)
		return LK_ROUTE_NOT_FOUND;
	memcpy(relpath, rel, strlen(rel) + 1);
	return LK_ROUTE_STATIC;
}

/*
 * lk_ws_version_ok
 *		RFC 6455 4.2.2: the only version we speak is 13; anything else
 *		gets 426 with "Sec-WebSocket-Version: 13".
 */
bool
lk_ws_version_ok(const char *version)
{
	return version != NULL && strcmp(version, "13") == 0;
}

static bool
is_b64(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		(c >= '0' && c <= '9') || c == '+' || c == '/';
}

/*
 * lk_ws_key_valid
 *		RFC 6455 4.1: the key is a base64-encoded 16-byte value, so exactly
 *		22 base64 characters, of which the last encodes only 2 bits, then
 *		"==".
 */
bool
lk_ws_key_valid(const char *key)
{
	static const char last_ok[] = "AQgw";

	if (key == NULL || strlen(key) != 24)
		return false;
	for (int i = 0; i < 22; i++)
		if (!is_b64(key[i]))
			return false;
	return strchr(last_ok, key[21]) != NULL && key[22] == '=' && key[23] == '=';
}

/*
 * lk_origin_in_list
 *		Whether origin is one of a comma list (blanks around items and a
 *		trailing slash ignored, case-insensitive, else exact).
 */
bool
lk_origin_in_list(const char *origin, const char *list)
{
	const char *o = list;
	size_t		olen;

	if (origin == NULL || list == NULL)
		return false;
	olen = strlen(origin);
	while (*o)
	{
		const char *comma = strchr(o, ',');
		size_t		len = comma ? (size_t) (comma - o) : strlen(o);

		while (len > 0 && (*o == ' ' || *o == '\t'))
		{
			o++;
			len--;
		}
		while (len > 0 && (o[len - 1] == ' ' || o[len - 1] == '\t' || o[len - 1] == '/'))
			len--;
		if (len > 0 && len == olen && strncasecmp(o, origin, len) == 0)
			return true;
		if (!comma)
			break;
		o = comma + 1;
	}
	return false;
}

/*
 * lk_bearer_token
 *		The token of an "Authorization: Bearer <token>" header, or NULL.
 */
const char *
lk_bearer_token(const char *authorization)
{
	if (authorization == NULL || strlen(authorization) <= 7 ||
		strncasecmp(authorization, "Bearer ", 7) != 0)
		return NULL;
	return authorization + 7;
}
