/*-------------------------------------------------------------------------
 *
 * http_rules.h
 *	  The push listener's rules for an HTTP request, as pure functions:
 *	  routing, static-file paths, WebSocket handshake fields (RFC 6455),
 *	  Origin lists and Bearer headers.
 *
 * Like protocol.c, these depend on libc only, never allocate and never
 * throw, so that lws callbacks can call them and test/fuzz/fuzz_http.c
 * can fuzz them without a server.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/http_rules.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_HTTP_RULES_H
#define LIVEKPI_HTTP_RULES_H

#include <stdbool.h>
#include <stddef.h>

typedef enum LkRoute
{
	LK_ROUTE_STATIC,			/* a file of www/ (or the placeholder page) */
	LK_ROUTE_HEALTHZ,
	LK_ROUTE_METRICS,
	LK_ROUTE_STREAM,			/* /v1/stream without an upgrade: 426 */
	LK_ROUTE_NOT_FOUND
} LkRoute;

/* longest origin we compare */
#define LK_MAX_ORIGIN			256

extern LkRoute lk_http_route(const char *uri, char *relpath, size_t relsize);
extern bool lk_ws_version_ok(const char *version);
extern bool lk_ws_key_valid(const char *key);
extern bool lk_origin_in_list(const char *origin, const char *list);
extern const char *lk_bearer_token(const char *authorization);

#endif							/* LIVEKPI_HTTP_RULES_H */
