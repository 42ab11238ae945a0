/*-------------------------------------------------------------------------
 *
 * push_stream.c
 *	  From delta_log to the clients: the batches the apply worker commits,
 *	  replay for resuming and lagging clients, and snapshots.
 *
 * This file owns: the broadcast position (the newest batch handed to live
 * clients) and the epoch it belongs to; filtering a batch by a client's
 * scope and serialising it once per distinct scope; backpressure (a
 * client's rows are coalesced past half of client_buffer_limit and it is
 * resynced past the limit, see push_queue.c); catch-up replay; and
 * snapshots, built once per distinct scope and cached until the next
 * batch.  The SQL behind it is in push_sql.c; what it reads lives in
 * lk_stream_cxt, reset after each piece (LK_ROWS_PER_READ rows).
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

/*
 * build_delta
 *		The delta message of one batch for one scope, or NULL when nothing
 *		in the batch is in scope (the client then just advances).
 */
static OutMsg *
build_delta(const Batch *b, const ClientScope *s)
{
	StringInfoData buf;
	bool		any = false;
	OutMsg	   *m;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"type\":\"delta\",\"seq\":" INT64_FORMAT
					 ",\"applied_at\":\"%s\",\"committed_at\":\"%s\"",
					 b->seq, b->applied_at ? b->applied_at : "",
					 b->committed_at ? b->committed_at : "");
	for (int kind = 0; kind < 2; kind++)
	{
		int			open_view = -1;

		appendStringInfoString(&buf, kind == 0 ? ",\"upserts\":{" : ",\"deletes\":{");
		for (int i = 0; i < b->nrows; i++)
		{
			const BatchRow *r = &b->rows[i];

			if (r->is_delete != (kind == 1) || !row_in_scope(s, r))
				continue;
			if (open_view != r->view)
			{
				if (open_view >= 0)
					appendStringInfoString(&buf, "],");
				appendStringInfo(&buf, "\"%s\":[", lk_view_names[r->view]);
				open_view = r->view;
			}
			else
				appendStringInfoChar(&buf, ',');
			appendStringInfoString(&buf, r->json);
			any = true;
		}
		if (open_view >= 0)
			appendStringInfoChar(&buf, ']');
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfoChar(&buf, '}');
	if (!any)
	{
		pfree(buf.data);
		return NULL;
	}
	m = outmsg_new(OUT_DELTA, buf.data, buf.len);
	pfree(buf.data);
	return m;
}


/*
 * deliver_batch
 *		Give one batch to one client (whose position is just before it).
 *		Backpressure: once a client's queued deltas pass half of
 *		client_buffer_limit, later batches are coalesced by key into one
 *		pending delta, queued when the queue drains; past client_buffer_limit
 *		of pending deltas the client gets a resync and, once drained, a new
 *		snapshot.  Memory per client is so bounded by the limit.
 */
static void
deliver_batch(PushClient *c, const Batch *b, OutMsg *m)
{
	size_t		limit = (size_t) livekpi_client_buffer_limit * 1024;
	bool		ok = true;

	if (b->barrier)
	{
		send_resync(c, b->seq);
		c->pos = b->seq;
		return;
	}
	c->pos = b->seq;
	if (m == NULL)
		return;
	if (!queue_should_coalesce(&c->q, m->len, limit))
	{
		client_enqueue(c, m);
		return;
	}
	for (int i = 0; i < b->nrows && ok; i++)
	{
		const BatchRow *r = &b->rows[i];

		if (row_in_scope(&c->scope, r))
			ok = queue_coalesce_row(&c->q, r->view, r->is_delete, r->key, r->json);
	}
	if (ok)
		queue_coalesce_mark(&c->q, b->seq, b->applied_at, b->committed_at);
	if (!ok || queue_over_limit(&c->q, limit))
		send_resync(c, b->seq);
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

static int
cmp_client_sig(const void *a, const void *b)
{
	const PushClient *ca = *(PushClient *const *) a;
	const PushClient *cb = *(PushClient *const *) b;

	return strcmp(ca->scope.signature, cb->scope.signature);
}

/*
 * dispatch_batches
 *		Hand batches read from delta_log to every live client whose position
 *		is just before each batch.  A batch is serialised once per distinct
 *		scope: clients are sorted by scope signature and each run shares
 *		the message.
 */
static void
dispatch_batches(BatchRead *br)
{
	PushClient **live;
	int			nlive = 0;
	dlist_iter	it;

	if (br->nbatches == 0)
		return;
	live = palloc(sizeof(PushClient *) * Max(nclients, 1));
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->state == SESS_LIVE)
			live[nlive++] = c;
	}
	qsort(live, nlive, sizeof(PushClient *), cmp_client_sig);

	for (int start = 0; start < nlive;)
	{
		int			end = start + 1;

		while (end < nlive &&
			   strcmp(live[end]->scope.signature, live[start]->scope.signature) == 0)
			end++;
		for (int bi = 0; bi < br->nbatches; bi++)
		{
			Batch	   *b = &br->batches[bi];
			OutMsg	   *m = NULL;
			bool		built = false;

			for (int k = start; k < end; k++)
			{
				PushClient *c = live[k];

				if (c->pos != b->seq - 1 || c->state != SESS_LIVE)
					continue;
				if (!built && !b->barrier)
				{
					m = build_delta(b, &c->scope);
					outmsg_hold(m);
					built = true;
				}
				deliver_batch(c, b, m);
			}
			outmsg_release(m);
		}
		start = end;
	}
	pfree(live);
}

/*
 * poll_batches
 *		Read what the apply worker committed since we last looked and
 *		dispatch it, in pieces of at most LK_ROWS_PER_READ rows.  Also
 *		notices a new epoch (a renumbering rebuild or a recreated
 *		extension): then every client gets a resync.
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
	while (broadcast_seq < br.state_seq)
	{
		BatchRead	rd;

		memset(&rd, 0, sizeof(rd));
		rd.after = broadcast_seq;
		rd.upto = Min(br.state_seq, broadcast_seq + LK_BATCHES_PER_READ);
		if (!sql_read_batches(&rd))
		{
			MemoryContextReset(lk_stream_cxt);
			return;
		}
		if (rd.nbatches == 0 || rd.batches[0].seq != broadcast_seq + 1)
		{
			/* a gap: retention passed us by; live clients must resync */
			dlist_iter	it;

			dlist_foreach(it, &all_clients)
			{
				PushClient *c = dlist_container(PushClient, node, it.cur);

				if (c->state == SESS_LIVE && c->pos <= rd.upto)
					send_resync(c, rd.upto);
			}
			broadcast_seq = rd.upto;
			MemoryContextReset(lk_stream_cxt);
			continue;
		}
		dispatch_batches(&rd);
		broadcast_seq = rd.batches[rd.nbatches - 1].seq;
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

		if (c->state != SESS_LIVE || c->pos >= broadcast_seq)
			continue;
		if (c->q.queued_delta_bytes > limit / 2)
			continue;
		memset(&rd, 0, sizeof(rd));
		rd.after = c->pos;
		rd.upto = Min(broadcast_seq, c->pos + LK_BATCHES_PER_READ);
		if (!sql_read_batches(&rd))
		{
			MemoryContextReset(lk_stream_cxt);
			return;
		}
		if (rd.nbatches == 0 || rd.batches[0].seq != c->pos + 1)
		{
			/* no longer retained */
			send_resync(c, broadcast_seq);
			MemoryContextReset(lk_stream_cxt);
			continue;
		}
		for (int i = 0; i < rd.nbatches && c->state == SESS_LIVE; i++)
		{
			OutMsg	   *m = rd.batches[i].barrier ? NULL : build_delta(&rd.batches[i], &c->scope);

			outmsg_hold(m);
			deliver_batch(c, &rd.batches[i], m);
			outmsg_release(m);
		}
		if (c->pos < broadcast_seq)
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
