/*-------------------------------------------------------------------------
 *
 * push_queue.h
 *	  The push worker's per-client outbound queue: shared, reference-counted
 *	  messages, coalescing of a slow client's deltas by key, and the
 *	  accounting that client_buffer_limit is checked against.
 *
 * This part uses nothing but libc (no palloc, no ereport, no SQL, no
 * libwebsockets), so it runs inside lws callbacks and is unit-tested on
 * its own (test/unit/test_push_queue.c).  Out of memory is reported by
 * return values, never thrown.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_queue.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_PUSH_QUEUE_H
#define LIVEKPI_PUSH_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest coalescing key (view letter + key object text) we accept. */
#define LK_CO_KEYLEN			320

typedef enum OutKind
{
	OUT_CONTROL,				/* welcome, error: never dropped */
	OUT_STALE,					/* heartbeat, resync: replaced by a resync */
	OUT_SNAPSHOT,				/* replaced by a resync */
	OUT_DELTA					/* counts toward client_buffer_limit */
} OutKind;

/*
 * A message as it goes on the wire.  One message built for a group of
 * clients is shared by all their queues (refcount); the builder holds it
 * while handing it out so that it survives if no client takes it.
 */
typedef struct OutMsg
{
	int			refcount;
	OutKind		kind;
	size_t		len;
	char		data[];
} OutMsg;

typedef struct QNode
{
	struct QNode *next;
	OutMsg	   *msg;
} QNode;

/* One row of a coalesced delta: the newest row (or delete) of its key. */
typedef struct CoEntry
{
	char	   *key;			/* view letter + key object text; NULL: free */
	uint8_t		view;
	bool		is_delete;
	uint64_t	order;			/* arrival order, to keep the output stable */
	char	   *json;
	size_t		len;
} CoEntry;

typedef struct LkQueue
{
	QNode	   *head;
	QNode	   *tail;
	size_t		sent_off;		/* bytes of head->msg already written */
	size_t		queued_bytes;	/* all queued messages */
	size_t		queued_delta_bytes; /* OUT_DELTA messages only */
	int			queued_snapshots;

	/*
	 * The coalesced delta of a slow client (co_cap == 0: none): an
	 * open-addressing hash of CoEntry by key.
	 */
	CoEntry    *co;
	size_t		co_cap;
	size_t		co_n;
	uint64_t	co_order;
	size_t		co_bytes;
	int64_t		co_seq;
	char		co_applied_at[64];
	char		co_committed_at[64];
} LkQueue;

/* Number of queues that hold a coalesced delta (so the loop can skip). */
extern int	lk_queues_coalescing;

extern OutMsg *outmsg_new(OutKind kind, const char *data, size_t len);
extern void outmsg_hold(OutMsg *m);
extern void outmsg_release(OutMsg *m);

extern bool queue_push(LkQueue *q, OutMsg *m);
extern void queue_written(LkQueue *q, size_t n, bool *message_done);
extern void queue_drop_pending(LkQueue *q);
extern void queue_free(LkQueue *q);

extern bool queue_should_coalesce(const LkQueue *q, size_t len, size_t limit);
extern bool queue_coalesce_row(LkQueue *q, int view, bool is_delete,
							   const char *key, const char *json);
extern void queue_coalesce_mark(LkQueue *q, int64_t seq, const char *applied_at,
								const char *committed_at);
extern bool queue_over_limit(const LkQueue *q, size_t limit);
extern bool queue_can_flush_coalesced(const LkQueue *q);
extern OutMsg *queue_render_coalesced(LkQueue *q);
extern void queue_reset_coalesced(LkQueue *q);

#endif							/* LIVEKPI_PUSH_QUEUE_H */
