/*-------------------------------------------------------------------------
 *
 * push.h
 *	  Declarations shared by the files of the push worker: push_worker.c
 *	  (the listener and the stream), tokens.c (tokens and the SQL-callable
 *	  functions of the push part) and protocol.c (the client messages).
 *
 * The push worker's own shared memory is a table of client slots, one per
 * possible connection, written by the worker and read by the
 * livekpi.clients view, plus a counter of token changes.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_PUSH_H
#define LIVEKPI_PUSH_H

#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/palloc.h"
#include "utils/timestamp.h"

#define LK_LABEL_LEN		128
#define LK_PEER_LEN			64

/* One open WebSocket connection, as the livekpi.clients view shows it. */
typedef struct LkClientSlot
{
	slock_t		mutex;
	bool		in_use;
	char		label[LK_LABEL_LEN];	/* empty until hello is accepted */
	char		peer[LK_PEER_LEN];
	TimestampTz connected_at;
	int64		last_seq;
	int64		queued_bytes;
} LkClientSlot;

typedef struct LkPushShared
{
	/* bumped at commit of every transaction that revoked a token */
	pg_atomic_uint64 token_generation;
	/* push worker starts since the last one that reached its database */
	int			failed_starts;
	int			nslots;
	LkClientSlot slots[FLEXIBLE_ARRAY_MEMBER];
} LkPushShared;

extern LkPushShared *livekpi_push_shared;

/* A token as the worker sees it after a successful lookup. */
typedef enum LkTokenStatus
{
	LK_TOKEN_OK,
	LK_TOKEN_UNKNOWN,
	LK_TOKEN_EXPIRED,
	LK_TOKEN_REVOKED
} LkTokenStatus;

typedef struct LkToken
{
	int64		id;
	char		label[LK_LABEL_LEN];
	bool		all_properties; /* NULL properties: the whole portfolio */
	int			nproperties;
	char	  **properties;		/* canonical text form, sorted */
	TimestampTz expires_at;
} LkToken;

/* tokens.c: called by the worker inside a transaction, SPI connected */
extern LkTokenStatus livekpi_token_lookup(const char *secret, LkToken *token,
										  MemoryContext cxt);
extern void livekpi_token_touch(int64 token_id);
extern void livekpi_token_wake_push_at_commit(void);
extern int	livekpi_cmp_cstring(const void *a, const void *b);
extern int	livekpi_cmp_int64(const void *a, const void *b);

/* push_worker.c (the push_*.c files share push_internal.h) */
PGDLLEXPORT void livekpi_push_main(Datum main_arg);

#endif							/* LIVEKPI_PUSH_H */
