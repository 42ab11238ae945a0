/*-------------------------------------------------------------------------
 *
 * push_stream.c
 *	  From delta_log to the clients: the batches the apply worker commits,
 *	  replay for resuming and lagging clients, and snapshots.
 *
 * This file owns: the broadcast position (the newest batch handed to live
 * clients) and the epoch it belongs to; filtering a batch by a client's
 * scope and serialising it once per distinct scope, as its rows stream by
 * (a batch of any size: the message is dropped past client_buffer_limit
 * and its clients resync); backpressure (a client's rows are coalesced
 * past half of client_buffer_limit and it is resynced past the limit, see
 * push_queue.c); catch-up replay; and snapshots, built once per distinct
 * scope and cached until the next batch.  The SQL behind it is in
 * push_sql.c, which hands rows over LK_FETCH_ROWS at a time; what a read
 * keeps lives in lk_stream_cxt, reset after each read.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_stream.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/memutils.h"

#include "livekpi.h"
#include "push_internal.h"

static char broadcast_epoch[LK_MAX_EPOCH + 1] = "";	/* epoch of broadcast_seq */

static bool
prop_in_scope(const ClientScope *s, const char *prop)
{
	if (s->all_properties)
		return true;
	if (prop == NULL)
		return false;
	return bsearch(&prop, s->properties, s->nproperties, sizeof(char *),
				   livekpi_cmp_cstring) != NULL;
}

static bool
row_in_scope(const ClientScope *s, const BatchRow *r)
{
	if ((s->views & (1u << r->view)) == 0)
		return false;
	if ((1u << r->view) == LK_VIEW_PORTFOLIO_KPIS)
		return true;
	if (!prop_in_scope(s, r->prop))
		return false;
	if ((1u << r->view) == LK_VIEW_BOOKING_DAILY && r->day != NULL &&
		(strcmp(r->day, s->daily_from) < 0 || strcmp(r->day, s->daily_to) > 0))
		return false;
	return true;
}

/* What a client does with the batch being read. */
enum
{
	MODE_NONE,					/* not at this batch (behind, ahead, not live) */
	MODE_MESSAGE,				/* takes its scope group's delta message */
	MODE_COALESCE,				/* a slow reader: the rows are coalesced */
	MODE_RESYNC					/* gets a resync at the batch's end */
};

/*
 * The clients of one scope, and the delta message of the batch being read,
 * built as its rows stream by.  The message never holds more than
 * client_buffer_limit: a delta that grows past it would put every client
 * that takes it past its own limit, so they get a resync instead.
 */
typedef struct ScopeGroup
{
	PushClient **clients;
	int			nclients;
	bool		building;		/* some client takes the message */
	bool		overflow;		/* the message passed client_buffer_limit */
	bool		any;			/* a row was in scope */
	int			kind;			/* section open: -1 none, 0 upserts, 1 deletes */
	int			open_view;
	StringInfoData buf;
} ScopeGroup;

typedef struct Dispatch
{
	ScopeGroup *groups;
	int			ngroups;
	size_t		limit;
	bool		gap;			/* the first batch read was not after+1 */
	int64		expect;			/* the seq the first batch must have */
} Dispatch;

/*
 * delta_section
 *		Close the open section of the message and open kind's (upserts
 *		then deletes; an empty section is written as {}).
 */
static void
delta_section(ScopeGroup *g, int kind)
{
	while (g->kind < kind)
	{
		if (g->kind >= 0)
			appendStringInfoString(&g->buf, g->open_view >= 0 ? "]}" : "}");
		g->kind++;
		appendStringInfoString(&g->buf, g->kind == 0 ? ",\"upserts\":{" : ",\"deletes\":{");
		g->open_view = -1;
	}
}

static void
delta_add(ScopeGroup *g, const BatchRow *r)
{
	delta_section(g, r->is_delete ? 1 : 0);
	if (g->open_view != r->view)
	{
		appendStringInfo(&g->buf, "%s\"%s\":[", g->open_view >= 0 ? "]," : "",
						 lk_view_names[r->view]);
		g->open_view = r->view;
	}
	else
		appendStringInfoChar(&g->buf, ',');
	appendStringInfoString(&g->buf, r->json);
	g->any = true;
}

static bool
dispatch_begin(BatchSink *sink, const Batch *b)
{
	Dispatch   *d = (Dispatch *) sink->arg;
	MemoryContext old;

	if (d->expect >= 0)
	{
		if (b->seq != d->expect)
		{
			/* retention passed us by */
			d->gap = true;
			return false;
		}
		d->expect = -1;
	}
	old = MemoryContextSwitchTo(lk_stream_cxt);
	for (int gi = 0; gi < d->ngroups; gi++)
	{
		ScopeGroup *g = &d->groups[gi];

		g->building = g->overflow = g->any = false;
		for (int k = 0; k < g->nclients; k++)
		{
			PushClient *c = g->clients[k];

			if (c->state != SESS_LIVE || c->pos != b->seq - 1)
				c->stream_mode = MODE_NONE;
			else if (b->barrier)
				c->stream_mode = MODE_RESYNC;
			else if (queue_should_coalesce(&c->q, 0, d->limit))
				c->stream_mode = MODE_COALESCE;
			else
			{
				c->stream_mode = MODE_MESSAGE;
				g->building = true;
			}
		}
		if (g->building)
		{
			if (g->buf.data == NULL)
				initStringInfo(&g->buf);
			resetStringInfo(&g->buf);
			appendStringInfo(&g->buf, "{\"type\":\"delta\",\"seq\":" INT64_FORMAT
							 ",\"applied_at\":\"%s\",\"committed_at\":\"%s\"",
							 b->seq, b->applied_at ? b->applied_at : "",
							 b->committed_at ? b->committed_at : "");
			g->kind = -1;
			g->open_view = -1;
		}
	}
	MemoryContextSwitchTo(old);
	return true;
}

static void
dispatch_rows(BatchSink *sink, const Batch *b, const BatchRow *rows, int n)
{
	Dispatch   *d = (Dispatch *) sink->arg;
	MemoryContext old = MemoryContextSwitchTo(lk_stream_cxt);

	for (int gi = 0; gi < d->ngroups; gi++)
	{
		ScopeGroup *g = &d->groups[gi];
		const ClientScope *scope = &g->clients[0]->scope;

		if (g->building && !g->overflow)
		{
			for (int i = 0; i < n; i++)
				if (row_in_scope(scope, &rows[i]))
					delta_add(g, &rows[i]);
			if ((size_t) g->buf.len > d->limit)
			{
				g->overflow = true;
				pfree(g->buf.data);
				g->buf.data = NULL;
			}
		}
		for (int k = 0; k < g->nclients; k++)
		{
			PushClient *c = g->clients[k];

			if (c->stream_mode != MODE_COALESCE)
				continue;
			for (int i = 0; i < n; i++)
			{
				if (row_in_scope(scope, &rows[i]) &&
					!queue_coalesce_row(&c->q, rows[i].view, rows[i].is_delete,
										rows[i].key, rows[i].json))
				{
					c->stream_mode = MODE_RESYNC;
					break;
				}
			}
			if (c->stream_mode == MODE_COALESCE && queue_over_limit(&c->q, d->limit))
				c->stream_mode = MODE_RESYNC;
		}
	}
	MemoryContextSwitchTo(old);
}

/*
 * dispatch_end
 *		The batch's message to the clients that take it, and every other
 *		client at the batch to its place: a slow reader's coalesced rows
 *		are marked with the batch, and a client past client_buffer_limit
 *		(or at a barrier) gets a resync.
 */
static void
dispatch_end(BatchSink *sink, const Batch *b)
{
	Dispatch   *d = (Dispatch *) sink->arg;

	for (int gi = 0; gi < d->ngroups; gi++)
	{
		ScopeGroup *g = &d->groups[gi];
		OutMsg	   *m = NULL;

		if (g->building && !g->overflow && g->any)
		{
			delta_section(g, 1);
			appendStringInfoString(&g->buf, g->open_view >= 0 ? "]}}" : "}}");
			m = outmsg_new(OUT_DELTA, g->buf.data, g->buf.len);
			outmsg_hold(m);
		}
		if (g->buf.data != NULL)
		{
			pfree(g->buf.data);
			g->buf.data = NULL;
		}
		for (int k = 0; k < g->nclients; k++)
		{
			PushClient *c = g->clients[k];
			int			mode = c->stream_mode;

			c->stream_mode = MODE_NONE;
			if (mode == MODE_NONE)
				continue;
			c->pos = b->seq;
			if (mode == MODE_COALESCE)
			{
				queue_coalesce_mark(&c->q, b->seq, b->applied_at, b->committed_at);
				continue;
			}
			if (mode == MODE_MESSAGE && g->building && !g->overflow && !g->any)
				continue;		/* nothing in scope: the client just advances */
			if (mode == MODE_MESSAGE && m == NULL)
			{
				/* out of memory or over the limit */
				send_resync(c, b->seq);
				continue;
			}
			/*
			 * A message that takes a client's pending deltas past the limit
			 * means a resync; past half of it, the client's later batches are
			 * coalesced (dispatch_begin).
			 */
			if (mode == MODE_RESYNC || c->q.queued_delta_bytes + m->len > d->limit)
				send_resync(c, b->seq);
			else
				client_enqueue(c, m);
		}
		outmsg_release(m);
	}
}

static int
cmp_client_sig(const void *a, const void *b)
{
	const PushClient *ca = *(PushClient *const *) a;
	const PushClient *cb = *(PushClient *const *) b;

	return strcmp(ca->scope.signature, cb->scope.signature);
}

/*
 * read_and_dispatch
 *		Stream batches (after, upto] to the given clients (sorted by scope
 *		signature, so that each run of one scope shares one message per
 *		batch).  Returns false when the read failed; *gap is set when the
 *		first batch is no longer retained.  The memory it holds is one
 *		fetch of rows plus, per scope, a message of at most
 *		client_buffer_limit.
 */
static bool
read_and_dispatch(PushClient **clients, int n, int64 after, int64 upto,
				  BatchRead *rd, bool *gap)
{
	Dispatch	d;
	BatchSink	sink = {dispatch_begin, dispatch_rows, dispatch_end, &d};
	bool		ok;

	memset(&d, 0, sizeof(d));
	d.limit = (size_t) livekpi_client_buffer_limit * 1024;
	d.expect = after + 1;
	d.groups = MemoryContextAllocZero(lk_stream_cxt, sizeof(ScopeGroup) * Max(n, 1));
	for (int start = 0; start < n;)
	{
		int			end = start + 1;

		while (end < n && strcmp(clients[end]->scope.signature, clients[start]->scope.signature) == 0)
			end++;
		d.groups[d.ngroups].clients = clients + start;
		d.groups[d.ngroups].nclients = end - start;
		d.ngroups++;
		start = end;
	}
	memset(rd, 0, sizeof(*rd));
	rd->after = after;
	rd->upto = upto;
	for (int i = 0; i < n; i++)
		rd->views |= clients[i]->scope.views;
	ok = sql_read_batches(rd, &sink);
	/* a failed read leaves no client in a batch's mode */
	for (int i = 0; i < n; i++)
		clients[i]->stream_mode = MODE_NONE;
	*gap = d.gap || (ok && rd->nbatches == 0);
	return ok;
}

/*
 * flush_all_coalesced
 *		Queue each live client's coalesced delta once the deltas before it
 *		have gone out.
 */
void
flush_all_coalesced(void)
{
	dlist_iter	it;

	if (lk_queues_coalescing == 0)
		return;

	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);
		OutMsg	   *m;

		if (c->state != SESS_LIVE || !queue_can_flush_coalesced(&c->q))
			continue;
		m = queue_render_coalesced(&c->q);
		if (m == NULL)
		{
			send_resync(c, c->pos);
			continue;
		}
		outmsg_hold(m);
		client_enqueue(c, m);
		outmsg_release(m);
	}
}

static bool
any_live_client(void)
{
	dlist_iter	it;

	dlist_foreach(it, &all_clients)
	{
		if (dlist_container(PushClient, node, it.cur)->state == SESS_LIVE)
			return true;
	}
	return false;
}

/*
 * poll_batches
 *		Read what the apply worker committed since we last looked and
 *		stream it to the live clients, LK_BATCHES_PER_READ batches per
 *		read, only the rows of views some live client has; with no live
 *		client nothing is read.  Also notices a new epoch (a renumbering rebuild or a
 *		recreated extension): then every client gets a resync.
 */
void
poll_batches(void)
{
	BatchRead	br;

	memset(&br, 0, sizeof(br));
	lk_extension_ready = sql_read_state(&br);
	if (!lk_extension_ready)
		return;

	if (broadcast_seq < 0 ||
		strcmp(broadcast_epoch, server_epoch) != 0 || br.state_seq < broadcast_seq)
	{
		dlist_iter	it;
		bool		first = broadcast_seq < 0;

		broadcast_seq = br.state_seq;
		strlcpy(broadcast_epoch, server_epoch, sizeof(broadcast_epoch));
		snap_cache_clear();
		if (first)
			return;
		/* everything a client holds may be stale: start over */
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);

			if (sess_welcomed(c))
				send_resync(c, broadcast_seq);
		}
		return;
	}

	if (broadcast_seq < br.state_seq)
		snap_cache_clear();
	if (!any_live_client())
	{
		/* nobody to send to: a client that comes takes a snapshot */
		broadcast_seq = br.state_seq;
		return;
	}
	while (broadcast_seq < br.state_seq)
	{
		BatchRead	rd;
		PushClient **live;
		int			nlive = 0;
		int64		upto = Min(br.state_seq, broadcast_seq + LK_BATCHES_PER_READ);
		bool		gap;
		dlist_iter	it;

		live = MemoryContextAlloc(lk_stream_cxt, sizeof(PushClient *) * Max(nclients, 1));
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);

			if (c->state == SESS_LIVE)
				live[nlive++] = c;
		}
		qsort(live, nlive, sizeof(PushClient *), cmp_client_sig);
		if (!read_and_dispatch(live, nlive, broadcast_seq, upto, &rd, &gap))
		{
			MemoryContextReset(lk_stream_cxt);
			return;
		}
		if (gap)
		{
			/* a gap: retention passed us by; live clients must resync */
			for (int i = 0; i < nlive; i++)
			{
				PushClient *c = live[i];

				if (c->state == SESS_LIVE && c->pos <= upto)
					send_resync(c, upto);
			}
			broadcast_seq = upto;
		}
		else
			broadcast_seq = rd.last;
		MemoryContextReset(lk_stream_cxt);
	}
}

/*
 * catch_up
 *		Clients behind the broadcast position (resumed, or just given a
 *		snapshot older than what we broadcast) replay from delta_log, a
 *		bounded number of batches per round and only while their queue is
 *		under half the buffer limit, so a slow reader never grows memory.
 */
void
catch_up(void)
{
	dlist_iter	it;
	size_t		limit = (size_t) livekpi_client_buffer_limit * 1024;

	catchup_pending = false;
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);
		BatchRead	rd;
		bool		gap;

		if (c->state != SESS_LIVE || c->pos >= broadcast_seq)
			continue;
		if (c->q.queued_delta_bytes > limit / 2)
			continue;
		if (!read_and_dispatch(&c, 1, c->pos, Min(broadcast_seq, c->pos + LK_BATCHES_PER_READ),
							   &rd, &gap))
		{
			MemoryContextReset(lk_stream_cxt);
			return;
		}
		if (gap)
			send_resync(c, broadcast_seq);	/* no longer retained */
		if (c->state == SESS_LIVE && c->pos < broadcast_seq)
			catchup_pending = true;
		MemoryContextReset(lk_stream_cxt);
	}
}

/*
 * The snapshots built since the last batch, by scope signature: clients
 * that reconnect together (after a restart, say) share one query per
 * scope even across rounds.  A cached snapshot older than the newest
 * batch would still be correct (the client replays from its seq), but
 * the cache is emptied at every new batch so snapshots stay fresh.
 */
#define LK_SNAP_CACHE 32
typedef struct SnapCacheEntry
{
	char	   *signature;
	int64		seq;
	OutMsg	   *msg;
} SnapCacheEntry;

static SnapCacheEntry snap_cache[LK_SNAP_CACHE];
static int	snap_cache_n = 0;

void
snap_cache_clear(void)
{
	for (int i = 0; i < snap_cache_n; i++)
	{
		free(snap_cache[i].signature);
		outmsg_release(snap_cache[i].msg);
	}
	snap_cache_n = 0;
}

static SnapCacheEntry *
snap_cache_find(const char *signature)
{
	for (int i = 0; i < snap_cache_n; i++)
		if (strcmp(snap_cache[i].signature, signature) == 0)
			return &snap_cache[i];
	return NULL;
}

static void
snap_cache_add(const char *signature, int64 seq, OutMsg *m)
{
	char	   *sig;

	if (snap_cache_n >= LK_SNAP_CACHE || m == NULL)
		return;
	sig = strdup(signature);
	if (sig == NULL)
		return;
	outmsg_hold(m);
	snap_cache[snap_cache_n].signature = sig;
	snap_cache[snap_cache_n].seq = seq;
	snap_cache[snap_cache_n].msg = m;
	snap_cache_n++;
}

/*
 * send_snapshots
 *		Every client that needs a snapshot (and whose queue is drained of
 *		deltas) gets one; clients with the same scope share one snapshot
 *		built once, so that many reconnects after a restart cost one query
 *		per distinct scope.
 */
void
send_snapshots(void)
{
	PushClient **want;
	int			nwant = 0;
	dlist_iter	it;

	if (!snapshots_pending)
		return;
	snapshots_pending = false;

	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->state == SESS_SNAPSHOT_WAIT && c->q.queued_snapshots == 0 &&
			c->q.queued_delta_bytes == 0)
			nwant++;
	}
	if (nwant == 0)
		return;
	want = palloc(sizeof(PushClient *) * nwant);
	nwant = 0;
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->state == SESS_SNAPSHOT_WAIT && c->q.queued_snapshots == 0 &&
			c->q.queued_delta_bytes == 0)
			want[nwant++] = c;
	}
	qsort(want, nwant, sizeof(PushClient *), cmp_client_sig);
	for (int start = 0; start < nwant;)
	{
		int			end = start + 1;
		SnapshotJob job;
		OutMsg	   *m;
		SnapCacheEntry *hit;

		while (end < nwant &&
			   strcmp(want[end]->scope.signature, want[start]->scope.signature) == 0)
			end++;
		memset(&job, 0, sizeof(job));
		job.scope = &want[start]->scope;
		hit = snap_cache_find(job.scope->signature);
		if (hit)
		{
			m = hit->msg;
			job.seq = hit->seq;
			outmsg_hold(m);
		}
		else
		{
			if (!sql_snapshot(&job))
			{
				for (int k = start; k < end; k++)
					client_fail(want[k], "internal", "could not build the snapshot",
								LK_CLOSE_INTERNAL);
				start = end;
				continue;
			}
			m = outmsg_new(OUT_SNAPSHOT, job.json, strlen(job.json));
			MemoryContextReset(lk_stream_cxt);
			outmsg_hold(m);
			if (job.seq == broadcast_seq)
				snap_cache_add(job.scope->signature, job.seq, m);
		}
		for (int k = start; k < end; k++)
		{
			PushClient *c = want[k];

			if (m == NULL)
			{
				client_fail(c, "internal", "out of memory", LK_CLOSE_INTERNAL);
				continue;
			}
			client_enqueue(c, m);
			c->pos = job.seq;
			sess_event(c, EV_SNAPSHOT_QUEUED);
			if (job.seq < broadcast_seq)
				catchup_pending = true;
		}
		outmsg_release(m);
		start = end;
	}
	pfree(want);
	MemoryContextReset(lk_stream_cxt);
}
