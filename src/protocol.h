/*-------------------------------------------------------------------------
 *
 * protocol.h
 *	  The client side of protocol v1 (SPEC section 7): the parsed form of a
 *	  client message and the parser that produces it.
 *
 * The parser depends on nothing but libc, never allocates and never
 * throws, so that it can run inside a libwebsockets callback (where an
 * ereport(ERROR) would longjmp through the library) and be fuzzed on its
 * own (test/fuzz/).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/protocol.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_PROTOCOL_H
#define LIVEKPI_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest client message (and inbound WebSocket message) accepted. */
#define LK_MAX_MESSAGE			65536
#define LK_MAX_TOKEN			256
#define LK_MAX_EPOCH			128
#define LK_MAX_PROPERTIES		4096
#define LK_MAX_PROPERTY_LEN		256
#define LK_MAX_DEPTH			32

/* The views a client can subscribe to, as bits. */
#define LK_VIEW_PROPERTY_KPIS	0x01
#define LK_VIEW_PORTFOLIO_KPIS	0x02
#define LK_VIEW_EXPENSE_MONTHLY	0x04
#define LK_VIEW_BOOKING_DAILY	0x08
#define LK_NUM_VIEWS			4

typedef enum LkMsgType
{
	LK_MSG_HELLO,
	LK_MSG_SUBSCRIBE
} LkMsgType;

typedef struct LkClientMessage
{
	LkMsgType	type;
	bool		has_token;
	char		token[LK_MAX_TOKEN + 1];
	bool		has_views;
	uint32_t	views;			/* LK_VIEW_* bits */
	bool		has_properties;
	int			nproperties;
	bool		property_is_number[LK_MAX_PROPERTIES];
	int			property_off[LK_MAX_PROPERTIES];	/* into propbuf */
	char		propbuf[LK_MAX_MESSAGE];	/* NUL-terminated strings */
	bool		has_daily_range;
	char		daily_from[11];
	char		daily_to[11];
	bool		has_resume_from;
	int64_t		resume_from;
	bool		has_epoch;
	char		epoch[LK_MAX_EPOCH + 1];
} LkClientMessage;

extern const char *const lk_view_names[LK_NUM_VIEWS];

extern int	lk_view_from_name(const char *name, size_t len);
extern bool lk_parse_client_message(const char *buf, size_t len,
									LkClientMessage *msg,
									char *errbuf, size_t errlen);
extern void lk_json_escape(const char *in, char *out, size_t outlen);

#endif							/* LIVEKPI_PROTOCOL_H */
