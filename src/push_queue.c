/*-------------------------------------------------------------------------
 *
 * push_queue.c
 *	  The per-client outbound queue of the push worker (SPEC section 7,
 *	  "a slow client never blocks others and never grows memory without
 *	  bound").
 *
 * This file owns: the shared, reference-counted outgoing messages; a
 * client's FIFO of them with its byte accounting; dropping what a client
 * has not started to receive when it is going to get a resync; and the
 * coalesced delta of a slow client, in which later batches are merged by
 * (view, key), the newest row or delete winning, rendered as one delta
 * once the queue has drained.
 *
 * It knows nothing of SQL, scopes or libwebsockets: the caller decides
 * which rows are in a client's scope and asks for a writable callback.
 * It only uses libc and never throws, so lws callbacks may call it and
 * test/unit/test_push_queue.c tests it without a server.
 *
 * Memory: a queue holds at most what the caller lets it (the caller
 * checks queue_should_coalesce and queue_over_limit against
 * client_buffer_limit); messages are shared, so N clients with the same
 * scope cost one copy of a delta.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_queue.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "push_queue.h"

int			lk_queues_coalescing = 0;

/*
 * outmsg_new
 *		A message with refcount 0; NULL when out of memory.
 */
OutMsg *
outmsg_new(OutKind kind, const char *data, size_t len)
{
	OutMsg	   *m = malloc(offsetof(OutMsg, data) + len + 1);

	if (m == NULL)
		return NULL;
	m->refcount = 0;
	m->kind = kind;
	m->len = len;
	memcpy(m->data, data, len);
	m->data[len] = '\0';
	return m;
}

void
outmsg_hold(OutMsg *m)
{
	if (m)
		m->refcount++;
}

void
outmsg_release(OutMsg *m)
{
	if (m && --m->refcount <= 0)
		free(m);
}

/*
 * queue_push
 *		Append a message (taking a reference).  False when out of memory.
 */
bool
queue_push(LkQueue *q, OutMsg *m)
{
	QNode	   *n;

	if (m == NULL)
		return false;
	n = malloc(sizeof(QNode));
	if (n == NULL)
		return false;
	n->next = NULL;
	n->msg = m;
	m->refcount++;
	if (q->tail)
		q->tail->next = n;
	else
		q->head = n;
	q->tail = n;
	q->queued_bytes += m->len;
	if (m->kind == OUT_DELTA)
		q->queued_delta_bytes += m->len;
	if (m->kind == OUT_SNAPSHOT)
		q->queued_snapshots++;
	return true;
}

static void
unlink_accounting(LkQueue *q, OutMsg *m)
{
	q->queued_bytes -= m->len;
	if (m->kind == OUT_DELTA)
		q->queued_delta_bytes -= m->len;
	if (m->kind == OUT_SNAPSHOT)
		q->queued_snapshots--;
}

/*
 * queue_written
 *		n more bytes of the head message went out; when it is complete it
 *		is removed and *message_done set.
 */
void
queue_written(LkQueue *q, size_t n, bool *message_done)
{
	QNode	   *node = q->head;

	*message_done = false;
	if (node == NULL)
		return;
	q->sent_off += n;
	if (q->sent_off < node->msg->len)
		return;
	q->head = node->next;
	if (q->head == NULL)
		q->tail = NULL;
	unlink_accounting(q, node->msg);
	q->sent_off = 0;
	outmsg_release(node->msg);
	free(node);
	*message_done = true;
}

/*
 * queue_drop_pending
 *		Forget the deltas, snapshots, heartbeats and resyncs a client has
 *		not started to receive, and its coalesced delta; used when it is
 *		going to get a resync and a snapshot instead.  Control messages
 *		(welcome, error) and a half-written message stay.
 */
void
queue_drop_pending(LkQueue *q)
{
	QNode	   *prev = NULL;
	QNode	   *n = q->head;

	queue_reset_coalesced(q);
	while (n)
	{
		QNode	   *next = n->next;

		if (n->msg->kind != OUT_CONTROL && !(n == q->head && q->sent_off > 0))
		{
			if (prev)
				prev->next = next;
			else
				q->head = next;
			if (q->tail == n)
				q->tail = prev;
			unlink_accounting(q, n->msg);
			outmsg_release(n->msg);
			free(n);
		}
		else
			prev = n;
		n = next;
	}
}

void
queue_free(LkQueue *q)
{
	while (q->head)
	{
		QNode	   *n = q->head;

		q->head = n->next;
		outmsg_release(n->msg);
		free(n);
	}
	q->tail = NULL;
	q->sent_off = 0;
	q->queued_bytes = q->queued_delta_bytes = 0;
	q->queued_snapshots = 0;
	queue_reset_coalesced(q);
}

/*
 * queue_should_coalesce
 *		Backpressure, first stage: once a client's queued deltas would pass
 *		half of the limit (or it is already coalescing), a batch of len
 *		bytes is merged into the coalesced delta instead of queued.
 */
bool
queue_should_coalesce(const LkQueue *q, size_t len, size_t limit)
{
	return q->co_cap != 0 || q->queued_delta_bytes + len > limit / 2;
}

/*
 * queue_over_limit
 *		Backpressure, second stage: pending deltas (queued and coalesced)
 *		past the limit mean the client gets a resync instead.
 */
bool
queue_over_limit(const LkQueue *q, size_t limit)
{
	return q->queued_delta_bytes + q->co_bytes > limit;
}

void
queue_reset_coalesced(LkQueue *q)
{
	if (q->co_cap == 0)
		return;
	for (size_t i = 0; i < q->co_cap; i++)
	{
		free(q->co[i].key);
		free(q->co[i].json);
	}
	free(q->co);
	q->co = NULL;
	q->co_cap = q->co_n = 0;
	q->co_order = 0;
	q->co_bytes = 0;
	lk_queues_coalescing--;
}

/* FNV-1a: the keys are short JSON texts */
static size_t
key_hash(const char *k)
{
	uint64_t	h = 1469598103934665603ULL;

	for (; *k; k++)
		h = (h ^ (unsigned char) *k) * 1099511628211ULL;
	return (size_t) h;
}

static CoEntry *
co_find_slot(CoEntry *tab, size_t cap, const char *key)
{
	size_t		i = key_hash(key) & (cap - 1);

	while (tab[i].key != NULL && strcmp(tab[i].key, key) != 0)
		i = (i + 1) & (cap - 1);
	return &tab[i];
}

static bool
co_grow(LkQueue *q)
{
	size_t		ncap = q->co_cap ? q->co_cap * 2 : 64;
	CoEntry    *ntab = calloc(ncap, sizeof(CoEntry));

	if (ntab == NULL)
		return false;
	for (size_t i = 0; i < q->co_cap; i++)
		if (q->co[i].key)
			*co_find_slot(ntab, ncap, q->co[i].key) = q->co[i];
	free(q->co);
	if (q->co_cap == 0)
		lk_queues_coalescing++;
	q->co = ntab;
	q->co_cap = ncap;
	return true;
}

/*
 * queue_coalesce_row
 *		Merge one in-scope row of a batch into the coalesced delta.  False
 *		when the key is too long to merge safely or memory ran out (the
 *		caller then falls back to a resync).
 */
bool
queue_coalesce_row(LkQueue *q, int view, bool is_delete, const char *key,
				   const char *json)
{
	char		k[LK_CO_KEYLEN];
	CoEntry    *e;
	char	   *j;
	size_t		len;

	if (key == NULL || json == NULL || strlen(key) + 2 >= LK_CO_KEYLEN)
		return false;
	if ((q->co_cap == 0 || (q->co_n + 1) * 10 > q->co_cap * 7) && !co_grow(q))
		return false;
	snprintf(k, sizeof(k), "%c%s", 'a' + view, key);
	len = strlen(json);
	j = malloc(len + 1);
	if (j == NULL)
		return false;
	memcpy(j, json, len + 1);
	e = co_find_slot(q->co, q->co_cap, k);
	if (e->key == NULL)
	{
		e->key = strdup(k);
		if (e->key == NULL)
		{
			free(j);
			return false;
		}
		q->co_n++;
	}
	else
	{
		q->co_bytes -= e->len;
		free(e->json);
	}
	e->view = (uint8_t) view;
	e->is_delete = is_delete;
	e->order = q->co_order++;
	e->json = j;
	e->len = len + 1;
	q->co_bytes += e->len;
	return true;
}

/*
 * queue_coalesce_mark
 *		The coalesced delta now includes batch seq: it carries that batch's
 *		seq and times (SPEC section 7).  Starts an empty one if needed, so
 *		that a batch with nothing in scope still moves the position.
 */
void
queue_coalesce_mark(LkQueue *q, int64_t seq, const char *applied_at,
					const char *committed_at)
{
	if (q->co_cap == 0 && !co_grow(q))
		return;
	q->co_seq = seq;
	snprintf(q->co_applied_at, sizeof(q->co_applied_at), "%s", applied_at ? applied_at : "");
	snprintf(q->co_committed_at, sizeof(q->co_committed_at), "%s",
			 committed_at ? committed_at : "");
}

/*
 * queue_can_flush_coalesced
 *		A coalesced delta goes out once the deltas queued before it have.
 */
bool
queue_can_flush_coalesced(const LkQueue *q)
{
	return q->co_cap != 0 && q->queued_delta_bytes == 0;
}

static int
cmp_co_entry(const void *a, const void *b)
{
	const CoEntry *x = *(CoEntry *const *) a;
	const CoEntry *y = *(CoEntry *const *) b;

	if (x->is_delete != y->is_delete)
		return x->is_delete ? 1 : -1;
	if (x->view != y->view)
		return x->view < y->view ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order ? 1 : 0;
}

/* a growable byte buffer that remembers running out of memory */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		oom;
} Buf;

static void
buf_put(Buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap)
	{
		size_t		ncap = b->cap ? b->cap : 256;
		char	   *nd;

		while (b->len + n + 1 > ncap)
			ncap *= 2;
		nd = realloc(b->data, ncap);
		if (nd == NULL)
		{
			b->oom = true;
			return;
		}
		b->data = nd;
		b->cap = ncap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
buf_str(Buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

/*
 * queue_render_coalesced
 *		The coalesced delta as one OUT_DELTA message (refcount 0), upserts
 *		before deletes, views in their order, rows in arrival order; the
 *		coalesced state is reset.  NULL when out of memory (then also
 *		reset: the caller resyncs the client).
 */
OutMsg *
queue_render_coalesced(LkQueue *q)
{
	CoEntry   **all;
	size_t		k = 0;
	Buf			b = {0};
	char		head[256];
	OutMsg	   *m = NULL;

	all = malloc(sizeof(CoEntry *) * (q->co_n ? q->co_n : 1));
	if (all == NULL)
	{
		queue_reset_coalesced(q);
		return NULL;
	}
	for (size_t i = 0; i < q->co_cap; i++)
		if (q->co[i].key)
			all[k++] = &q->co[i];
	qsort(all, k, sizeof(CoEntry *), cmp_co_entry);

	snprintf(head, sizeof(head),
			 "{\"type\":\"delta\",\"seq\":%lld,\"applied_at\":\"%s\",\"committed_at\":\"%s\",\"upserts\":{",
			 (long long) q->co_seq, q->co_applied_at, q->co_committed_at);
	buf_str(&b, head);
	for (int kind = 0; kind < 2; kind++)
	{
		int			open_view = -1;

		if (kind == 1)
			buf_str(&b, "},\"deletes\":{");
		for (size_t i = 0; i < k; i++)
		{
			if (all[i]->is_delete != (kind == 1))
				continue;
			if (open_view != all[i]->view)
			{
				if (open_view >= 0)
					buf_str(&b, "],");
				buf_str(&b, "\"");
				buf_str(&b, lk_view_names[all[i]->view]);
				buf_str(&b, "\":[");
				open_view = all[i]->view;
			}
			else
				buf_str(&b, ",");
			buf_put(&b, all[i]->json, all[i]->len - 1);
		}
		if (open_view >= 0)
			buf_str(&b, "]");
	}
	buf_str(&b, "}}");
	free(all);
	queue_reset_coalesced(q);
	if (!b.oom)
		m = outmsg_new(OUT_DELTA, b.data, b.len);
	free(b.data);
	return m;
}
