/*-------------------------------------------------------------------------
 *
 * push_worker.c
 *	  The push worker: a background worker that serves HTTP and WebSocket
 *	  (SPEC section 7) with libwebsockets from inside PostgreSQL.
 *
 * This file owns the listener and the stream: registration, the worker's
 * shared memory (client slots), the event loop, the libwebsockets
 * callbacks, per-client queues and backpressure, and the SQL that reads
 * snapshots and batches from livekpi.delta_log.
 *
 * Structure.  lws runs its own poll loop (Debian's 4.1.6 has no external
 * poll support); the eventfd livekpi_shared->push_wakeup_fd, written by
 * the apply worker after each batch commits, by revoke_token() at commit
 * and by our own signal handlers, and the postmaster-death pipe are
 * adopted into that loop as raw file descriptors, and a 100 ms lws timer
 * bounds every wait.  lws callbacks never touch the database and never
 * call anything that can ereport(ERROR): they parse client messages (with
 * the libc-only parser of protocol.c), move bytes and set flags.
 * Everything that needs SQL runs in the main loop between two
 * lws_service() calls, inside PG_TRY, one transaction per step.
 *
 * Outgoing messages are malloc'd, reference-counted buffers shared by all
 * the clients they go to: a batch is filtered and serialised once per
 * distinct client scope, a snapshot once per (scope, seq).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "livekpi.h"
#include "protocol.h"
#include "push.h"
#include "push_standby.h"

#define LK_SUBPROTOCOL			"livekpi.v1"
#define LK_STREAM_PATH			"/v1/stream"
#define LK_TICK_USEC			(100 * 1000)
#define LK_HELLO_DEADLINE_MS	10000
#define LK_TOKEN_RECHECK_MS		500
#define LK_WRITE_CHUNK			(64 * 1024)
#define LK_BATCHES_PER_READ		256
#define LK_CO_KEYLEN			320
#define LK_SOCKET_SNDBUF		(128 * 1024)

/* WebSocket close codes of SPEC section 7 */
#define LK_CLOSE_UNSUPPORTED	1003
#define LK_CLOSE_POLICY			1008
#define LK_CLOSE_INVALID		1007
#define LK_CLOSE_TOO_BIG		1009
#define LK_CLOSE_INTERNAL		1011
#define LK_CLOSE_TRY_LATER		1013
#define LK_CLOSE_UNAUTHORIZED	4401
#define LK_CLOSE_FORBIDDEN		4403

LkPushShared *livekpi_push_shared = NULL;

/* ----------------------------------------------------------------
 * Messages and clients
 * ----------------------------------------------------------------
 */
typedef enum OutKind
{
	OUT_CONTROL,				/* welcome, error: never dropped */
	OUT_STALE,					/* heartbeat, resync: replaced by a resync */
	OUT_SNAPSHOT,				/* replaced by a resync */
	OUT_DELTA					/* counts toward client_buffer_limit */
} OutKind;

typedef struct OutMsg
{
	int			refcount;
	OutKind		kind;
	size_t		len;
	char		data[FLEXIBLE_ARRAY_MEMBER];
} OutMsg;

typedef struct QNode
{
	struct QNode *next;
	OutMsg	   *msg;
} QNode;

typedef enum ClientPhase
{
	PHASE_HTTP = 0,				/* a plain HTTP request, not a WebSocket */
	PHASE_AWAIT_HELLO,
	PHASE_LIVE,
	PHASE_CLOSING
} ClientPhase;

/* What a client asked to see, after checks against its token. */
typedef struct ClientScope
{
	uint32		views;
	bool		all_properties;
	int			nproperties;
	char	  **properties;		/* canonical text, sorted, malloc'd */
	char		daily_from[11];
	char		daily_to[11];
	char	   *signature;		/* malloc'd; equal signatures, equal scope */
	char	   *scope_json;		/* "null" or JSON array of the keys */
} ClientScope;

typedef struct PushClient
{
	dlist_node	node;			/* in all_clients (WebSockets only) */
	struct lws *wsi;
	ClientPhase phase;
	int			slot;			/* in livekpi_push_shared, or -1 */
	TimestampTz connected_at;
	char		peer[LK_PEER_LEN];

	/* inbound message being assembled */
	char	   *inbuf;
	size_t		inlen;

	/* a hello or subscribe waiting for the main loop */
	LkClientMessage *request;
	bool		hello_done;

	/* after hello */
	int64		token_id;
	char		label[LK_LABEL_LEN];
	TimestampTz token_expires;
	bool		token_all;
	int			token_nprops;
	char	  **token_props;	/* malloc'd, sorted */
	ClientScope scope;
	bool		have_scope;

	/* stream position: everything in scope up to pos is queued */
	int64		pos;
	bool		need_snapshot;
	bool		resync_first;	/* send a resync before the snapshot */
	TimestampTz last_heartbeat;

	/* outbound queue */
	QNode	   *qhead;
	QNode	   *qtail;
	size_t		sent_off;		/* bytes of qhead->msg already written */
	size_t		queued_bytes;
	size_t		queued_delta_bytes;
	int			queued_snapshots;

	/*
	 * Coalesced delta of a slow client: once its queue holds half of
	 * client_buffer_limit, further batches are merged here by (view, key), the newest row (or
	 * delete) winning; it is queued as one delta when the queue drains.
	 */
	MemoryContext co_cxt;
	HTAB	   *co_hash;
	uint64		co_order;
	size_t		co_bytes;
	int64		co_seq;
	char		co_applied_at[64];
	char		co_committed_at[64];

	/* close after the queue drains */
	bool		close_pending;
	int			close_code;
	char		close_reason[64];

	/* HTTP request waiting for a token check (/metrics from afar) */
	char	   *http_token;
	bool		http_pending;

	/* HTTP response (PHASE_HTTP) */
	char	   *http_body;
	size_t		http_len;
	int			http_status;
	const char *http_type;
} PushClient;

static dlist_head all_clients = DLIST_STATIC_INIT(all_clients);
static dlist_head http_waiting = DLIST_STATIC_INIT(http_waiting);
static int	nclients = 0;
static int	max_clients_effective = 0;

/* ----------------------------------------------------------------
 * Worker state
 * ----------------------------------------------------------------
 */
static volatile sig_atomic_t got_sigterm = false;
static volatile bool pm_dead = false;
static volatile bool wake_pending = true;
static volatile bool tick_pending = true;
static bool requests_pending = false;
static bool snapshots_pending = false;	/* some client may want a snapshot */
static int	co_clients = 0;		/* clients with a coalesced delta */
static bool catchup_pending = false;

static struct lws_context *lws_ctx = NULL;
static struct lws_vhost *first_vhost = NULL;
static lws_sorted_usec_list_t tick_sul;
static lws_sorted_usec_list_t replay_sul;	/* standby: wakes lws_service() */
static unsigned char *write_scratch = NULL;

static MemoryContext round_cxt = NULL;

/* what we know of the stream */
static char server_epoch[LK_MAX_EPOCH + 1] = "";
static char key_type[64] = "text";
static int64 broadcast_seq = -1;	/* newest batch dispatched to live clients */
static char broadcast_epoch[LK_MAX_EPOCH + 1] = "";	/* epoch of broadcast_seq */
static char last_committed_at[64] = "";
static char last_applied_at[64] = "";

static TimestampTz last_token_check = 0;
static uint64 seen_token_generation = 0;
static TimestampTz last_slot_publish = 0;
static TimestampTz last_poll = 0;

/* counters published to livekpi_shared */
static int64 stat_messages = 0;
static int64 stat_bytes = 0;

static char www_dir[MAXPGPATH];

static void client_enqueue(PushClient *c, OutMsg *m);
static void snap_cache_clear(void);

/* ----------------------------------------------------------------
 * Registration and shared memory
 * ----------------------------------------------------------------
 */

/*
 * livekpi_register_push_worker
 *		Register the push worker; _PG_init calls it when
 *		livekpi.listen_addresses is set.  It restarts 5 s after a crash.
 */
void
livekpi_register_push_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "livekpi");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "livekpi_push_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "livekpi push worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "livekpi push worker");
	RegisterBackgroundWorker(&worker);
}

static int
push_slot_count(void)
{
	return Max(livekpi_max_clients, 1);
}

/*
 * livekpi_push_shmem_size
 *		Shared memory of the push part: one slot per possible client.
 */
Size
livekpi_push_shmem_size(void)
{
	return add_size(offsetof(LkPushShared, slots),
					mul_size(push_slot_count(), sizeof(LkClientSlot)));
}

/*
 * livekpi_push_shmem_init
 *		Attach to (and on first use initialise) the client slots.  Called
 *		from the shmem_startup_hook under AddinShmemInitLock.
 */
void
livekpi_push_shmem_init(void)
{
	bool		found;

	livekpi_push_shared = ShmemInitStruct("livekpi push",
										  livekpi_push_shmem_size(), &found);
	if (!found)
	{
		pg_atomic_init_u64(&livekpi_push_shared->token_generation, 0);
		livekpi_push_shared->nslots = push_slot_count();
		for (int i = 0; i < livekpi_push_shared->nslots; i++)
		{
			LkClientSlot *slot = &livekpi_push_shared->slots[i];

			SpinLockInit(&slot->mutex);
			slot->in_use = false;
		}
	}
}

static int	slot_hint = 0;

static int
slot_acquire(PushClient *c)
{
	int			n = livekpi_push_shared->nslots;

	for (int k = 0; k < n; k++)
	{
		int			i = (slot_hint + k) % n;
		LkClientSlot *slot = &livekpi_push_shared->slots[i];

		if (slot->in_use)		/* only this process writes in_use */
			continue;
		SpinLockAcquire(&slot->mutex);
		slot->in_use = true;
		slot->label[0] = '\0';
		strlcpy(slot->peer, c->peer, sizeof(slot->peer));
		slot->connected_at = c->connected_at;
		slot->last_seq = -1;
		slot->queued_bytes = 0;
		SpinLockRelease(&slot->mutex);
		slot_hint = i + 1;
		return i;
	}
	return -1;
}

static void
slot_release(int i)
{
	LkClientSlot *slot;

	if (i < 0)
		return;
	slot = &livekpi_push_shared->slots[i];
	SpinLockAcquire(&slot->mutex);
	slot->in_use = false;
	SpinLockRelease(&slot->mutex);
}

static void
slot_publish(PushClient *c)
{
	LkClientSlot *slot;

	if (c->slot < 0)
		return;
	slot = &livekpi_push_shared->slots[c->slot];
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->label, c->label, sizeof(slot->label));
	slot->last_seq = c->hello_done ? c->pos : -1;
	slot->queued_bytes = (int64) c->queued_bytes;
	SpinLockRelease(&slot->mutex);
}

/*
 * set_push_error
 *		Publish the last error in livekpi.status (and the log).
 */
static void
set_push_error(const char *msg)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	strlcpy(livekpi_shared->push_error, msg, sizeof(livekpi_shared->push_error));
	livekpi_shared->push_error_at = GetCurrentTimestamp();
	SpinLockRelease(&livekpi_shared->mutex);
}

static void
publish_state(const char *state)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	strlcpy(livekpi_shared->push_state, state, sizeof(livekpi_shared->push_state));
	SpinLockRelease(&livekpi_shared->mutex);
}

static void
publish_stats(void)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->clients = nclients;
	livekpi_shared->messages_sent = stat_messages;
	livekpi_shared->bytes_sent = stat_bytes;
	SpinLockRelease(&livekpi_shared->mutex);
}

/* ----------------------------------------------------------------
 * Outgoing messages (no ereport: safe inside callbacks)
 * ----------------------------------------------------------------
 */
static OutMsg *
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

static void
outmsg_release(OutMsg *m)
{
	if (m && --m->refcount <= 0)
		free(m);
}

/*
 * outmsg_hold / outmsg_drop
 *		A message built for a group of clients is held while it is handed
 *		out, so that it survives even if no client takes it.
 */
static void
outmsg_hold(OutMsg *m)
{
	if (m)
		m->refcount++;
}

static void
client_enqueue(PushClient *c, OutMsg *m)
{
	QNode	   *n;

	if (m == NULL || c->phase == PHASE_CLOSING)
		return;
	n = malloc(sizeof(QNode));
	if (n == NULL)
		return;
	n->next = NULL;
	n->msg = m;
	m->refcount++;
	if (c->qtail)
		c->qtail->next = n;
	else
		c->qhead = n;
	c->qtail = n;
	c->queued_bytes += m->len;
	if (m->kind == OUT_DELTA)
		c->queued_delta_bytes += m->len;
	if (m->kind == OUT_SNAPSHOT)
		c->queued_snapshots++;
	lws_callback_on_writable(c->wsi);
}

static void
client_enqueue_text(PushClient *c, OutKind kind, const char *text)
{
	OutMsg	   *m = outmsg_new(kind, text, strlen(text));

	if (m == NULL)
		return;
	outmsg_hold(m);
	client_enqueue(c, m);
	outmsg_release(m);
}

/*
 * client_drop_pending_deltas
 *		Forget the deltas a client has not started to receive; used when it
 *		is going to get a resync and a snapshot instead.
 */
static void
co_reset(PushClient *c)
{
	if (c->co_hash)
		co_clients--;
	if (c->co_cxt)
		MemoryContextDelete(c->co_cxt);
	c->co_cxt = NULL;
	c->co_hash = NULL;
	c->co_bytes = 0;
	c->co_order = 0;
}

static void
client_drop_pending_deltas(PushClient *c)
{
	QNode	   *prev = NULL;
	QNode	   *n = c->qhead;

	co_reset(c);

	while (n)
	{
		QNode	   *next = n->next;

		if (n->msg->kind != OUT_CONTROL && !(n == c->qhead && c->sent_off > 0))
		{
			if (prev)
				prev->next = next;
			else
				c->qhead = next;
			if (c->qtail == n)
				c->qtail = prev;
			c->queued_bytes -= n->msg->len;
			if (n->msg->kind == OUT_DELTA)
				c->queued_delta_bytes -= n->msg->len;
			if (n->msg->kind == OUT_SNAPSHOT)
				c->queued_snapshots--;
			outmsg_release(n->msg);
			free(n);
		}
		else
			prev = n;
		n = next;
	}
}

static void
client_free_queue(PushClient *c)
{
	while (c->qhead)
	{
		QNode	   *n = c->qhead;

		c->qhead = n->next;
		outmsg_release(n->msg);
		free(n);
	}
	c->qtail = NULL;
	c->queued_bytes = c->queued_delta_bytes = 0;
	c->queued_snapshots = 0;
}

static void
scope_free(ClientScope *s)
{
	if (s->properties)
	{
		for (int i = 0; i < s->nproperties; i++)
			free(s->properties[i]);
		free(s->properties);
	}
	free(s->signature);
	free(s->scope_json);
	memset(s, 0, sizeof(*s));
}

/*
 * client_fail
 *		Send {"type":"error"} and close with the given code once it is out.
 *		Any later input is ignored and nothing else is queued.
 */
static void
client_fail(PushClient *c, const char *code, const char *message, int close_code)
{
	char		esc[512];
	char		buf[768];

	if (c->phase == PHASE_CLOSING)
		return;
	lk_json_escape(message, esc, sizeof(esc));
	snprintf(buf, sizeof(buf), "{\"type\":\"error\",\"code\":\"%s\",\"message\":\"%s\"}",
			 code, esc);
	client_drop_pending_deltas(c);
	client_enqueue_text(c, OUT_CONTROL, buf);
	c->phase = PHASE_CLOSING;
	c->close_pending = true;
	c->close_code = close_code;
	strlcpy(c->close_reason, code, sizeof(c->close_reason));
	c->need_snapshot = false;
	if (c->request)
	{
		free(c->request);
		c->request = NULL;
	}
	lws_callback_on_writable(c->wsi);
}

/* ----------------------------------------------------------------
 * Signals and wake-ups
 * ----------------------------------------------------------------
 */
static void
poke_eventfd(void)
{
	if (livekpi_shared && livekpi_shared->push_wakeup_fd >= 0)
	{
		uint64		one = 1;
		ssize_t		rc pg_attribute_unused();

		rc = write(livekpi_shared->push_wakeup_fd, &one, sizeof(one));
	}
}

static void
push_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	poke_eventfd();
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
push_sighup(SIGNAL_ARGS)
{
	int			save_errno = errno;

	ConfigReloadPending = true;
	poke_eventfd();
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
tick_cb(lws_sorted_usec_list_t *sul)
{
	tick_pending = true;
	lws_sul_schedule(lws_ctx, 0, &tick_sul, tick_cb, LK_TICK_USEC);
}

/* On a standby with clients, end lws_service() every few ms: see push_standby.c */
static void
replay_cb(lws_sorted_usec_list_t *sul)
{
	lws_sul_schedule(lws_ctx, 0, &replay_sul, replay_cb,
					 push_standby_poll_usec(nclients, LK_TICK_USEC));
}

/* ----------------------------------------------------------------
 * HTTP
 * ----------------------------------------------------------------
 */
static const char *
mime_of(const char *path)
{
	const char *dot = strrchr(path, '.');

	if (dot == NULL)
		return "application/octet-stream";
	if (strcmp(dot, ".html") == 0)
		return "text/html; charset=utf-8";
	if (strcmp(dot, ".js") == 0 || strcmp(dot, ".mjs") == 0)
		return "text/javascript; charset=utf-8";
	if (strcmp(dot, ".css") == 0)
		return "text/css; charset=utf-8";
	if (strcmp(dot, ".json") == 0 || strcmp(dot, ".map") == 0)
		return "application/json";
	if (strcmp(dot, ".svg") == 0)
		return "image/svg+xml";
	if (strcmp(dot, ".png") == 0)
		return "image/png";
	if (strcmp(dot, ".ico") == 0)
		return "image/x-icon";
	if (strcmp(dot, ".woff2") == 0)
		return "font/woff2";
	if (strcmp(dot, ".txt") == 0)
		return "text/plain; charset=utf-8";
	return "application/octet-stream";
}

/*
 * add_security_headers
 *		Headers every response carries: no sniffing, no framing, no
 *		referrer, and a CSP that allows the dashboard's own scripts and its
 *		WebSocket and nothing else.
 */
static int
add_security_headers(struct lws *wsi, unsigned char **p, unsigned char *end)
{
	static const struct
	{
		const char *name;
		const char *value;
	}			hdrs[] = {
		{"x-content-type-options:", "nosniff"},
		{"x-frame-options:", "DENY"},
		{"referrer-policy:", "no-referrer"},
		{"content-security-policy:",
		"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
		"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"},
	};

	for (int i = 0; i < (int) lengthof(hdrs); i++)
		if (lws_add_http_header_by_name(wsi, (const unsigned char *) hdrs[i].name,
										(const unsigned char *) hdrs[i].value,
										(int) strlen(hdrs[i].value), p, end))
			return 1;
	return 0;
}

static void
http_prepare(PushClient *c, int status, const char *type, const char *body)
{
	free(c->http_body);
	c->http_len = strlen(body);
	c->http_body = malloc(c->http_len + 1);
	if (c->http_body)
		memcpy(c->http_body, body, c->http_len + 1);
	else
		c->http_len = 0;
	c->http_status = status;
	c->http_type = type;
}

/*
 * health_body
 *		The /healthz answer, from the workers' shared state: 503 when the
 *		apply worker is not running, the KPIs are stale or it lags past
 *		max_lag.
 */
static int
health_body(char *buf, size_t len)
{
	pid_t		apply_pid;
	int64		last_seq;
	char		state[LIVEKPI_STATE_LEN];
	int			clients;
	bool		stale;
	long		lag_ms = (long) livekpi_apply_lag_ms();
	bool		ok;

	SpinLockAcquire(&livekpi_shared->mutex);
	apply_pid = livekpi_shared->apply_pid;
	last_seq = livekpi_shared->last_seq;
	strlcpy(state, livekpi_shared->apply_state, sizeof(state));
	clients = livekpi_shared->clients;
	stale = livekpi_shared->stale;
	SpinLockRelease(&livekpi_shared->mutex);

	/* on a standby, no apply worker is normal and lag_ms is replay lag */
	ok = (apply_pid != 0 || livekpi_in_recovery()) && !stale &&
		lag_ms <= (long) livekpi_max_lag * 1000L;
	snprintf(buf, len,
			 "{\"status\":\"%s\",\"apply_worker\":%s,\"apply_state\":\"%s\","
			 "\"last_seq\":" INT64_FORMAT ",\"lag_ms\":%ld,\"clients\":%d,\"stale\":%s,"
			 "\"role\":\"%s\"}\n",
			 ok ? "ok" : "unhealthy", apply_pid != 0 ? "true" : "false",
			 state, last_seq, lag_ms, clients, stale ? "true" : "false", livekpi_role());
	return ok ? 200 : 503;
}

static int
metrics_body(char *buf, size_t len)
{
	static const int bounds_ms[] = LIVEKPI_DURATION_BOUNDS_MS;
	int64		batches,
				changes,
				rows,
				msgs,
				bytes,
				sum_us;
	int64		counts[LIVEKPI_DURATION_BUCKETS];
	int64		cumulative = 0;
	int			clients;
	double		lag = (double) livekpi_apply_lag_ms() / 1000.0;
	int			n;
	int			i;

	SpinLockAcquire(&livekpi_shared->mutex);
	batches = livekpi_shared->batches;
	changes = livekpi_shared->changes_applied;
	rows = livekpi_shared->rows_written;
	msgs = livekpi_shared->messages_sent;
	bytes = livekpi_shared->bytes_sent;
	clients = livekpi_shared->clients;
	memcpy(counts, livekpi_shared->batch_duration_counts, sizeof(counts));
	sum_us = livekpi_shared->batch_duration_sum_us;
	SpinLockRelease(&livekpi_shared->mutex);

	n = snprintf(buf, len,
				 "# HELP livekpi_batches_total Batches applied.\n"
				 "# TYPE livekpi_batches_total counter\n"
				 "livekpi_batches_total " INT64_FORMAT "\n"
				 "# HELP livekpi_changes_total Row changes applied.\n"
				 "# TYPE livekpi_changes_total counter\n"
				 "livekpi_changes_total " INT64_FORMAT "\n"
				 "# HELP livekpi_rows_written_total KPI rows written.\n"
				 "# TYPE livekpi_rows_written_total counter\n"
				 "livekpi_rows_written_total " INT64_FORMAT "\n"
				 "# HELP livekpi_lag_seconds Apply lag: 0 while all flushed WAL is read, else the time since it was.\n"
				 "# TYPE livekpi_lag_seconds gauge\n"
				 "livekpi_lag_seconds %.3f\n"
				 "# HELP livekpi_clients Open WebSocket connections.\n"
				 "# TYPE livekpi_clients gauge\n"
				 "livekpi_clients %d\n"
				 "# HELP livekpi_messages_sent_total WebSocket messages sent.\n"
				 "# TYPE livekpi_messages_sent_total counter\n"
				 "livekpi_messages_sent_total " INT64_FORMAT "\n"
				 "# HELP livekpi_bytes_sent_total WebSocket payload bytes sent.\n"
				 "# TYPE livekpi_bytes_sent_total counter\n"
				 "livekpi_bytes_sent_total " INT64_FORMAT "\n"
				 "# HELP livekpi_batch_duration_seconds Time to apply a batch.\n"
				 "# TYPE livekpi_batch_duration_seconds histogram\n",
				 batches, changes, rows, lag, clients, msgs, bytes);
	for (i = 0; i < LIVEKPI_DURATION_BUCKETS && n >= 0 && (size_t) n < len; i++)
	{
		cumulative += counts[i];
		if (i < lengthof(bounds_ms))
			n += snprintf(buf + n, len - n,
						  "livekpi_batch_duration_seconds_bucket{le=\"%g\"} " INT64_FORMAT "\n",
						  bounds_ms[i] / 1000.0, cumulative);
		else
			n += snprintf(buf + n, len - n,
						  "livekpi_batch_duration_seconds_bucket{le=\"+Inf\"} " INT64_FORMAT "\n"
						  "livekpi_batch_duration_seconds_sum %.6f\n"
						  "livekpi_batch_duration_seconds_count " INT64_FORMAT "\n",
						  cumulative, sum_us / 1000000.0, cumulative);
	}
	return 200;
}

static bool
peer_is_loopback(struct lws *wsi)
{
	char		ip[64];

	lws_get_peer_simple(wsi, ip, sizeof(ip));
	return strncmp(ip, "127.", 4) == 0 || strcmp(ip, "::1") == 0 ||
		strncmp(ip, "::ffff:127.", 11) == 0;
}

/*
 * serve_static
 *		Serve a file of the installed www/ directory.  Paths with "..",
 *		hidden names or anything but a regular file are 404.
 */
static int
serve_static(struct lws *wsi, const char *uri)
{
	char		path[MAXPGPATH];
	struct stat st;
	unsigned char hdr[1024];
	unsigned char *p = hdr;
	const char *rel = uri;

	if (strcmp(uri, "/") == 0)
		rel = "/index.html";
	if (strstr(rel, "..") != NULL || strstr(rel, "/.") != NULL ||
		strchr(rel, '\\') != NULL || strlen(rel) > 200)
		return lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL) ? -1 : 0;
	snprintf(path, sizeof(path), "%s%s", www_dir, rel);
	if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
	{
		if (strcmp(rel, "/index.html") == 0)
			return 1;			/* caller serves a placeholder page */
		return lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL) ? -1 : 0;
	}
	if (add_security_headers(wsi, &p, hdr + sizeof(hdr)))
		return -1;
	if (lws_add_http_header_by_name(wsi, (const unsigned char *) "cache-control:",
									(const unsigned char *) "no-cache", 8, &p,
									hdr + sizeof(hdr)))
		return -1;
	*p = '\0';
	if (lws_serve_http_file(wsi, path, mime_of(path), (const char *) hdr,
							(int) (p - hdr)) < 0)
		return -1;
	return 0;
}

/*
 * handle_http
 *		LWS_CALLBACK_HTTP: route one request.  Dynamic answers are written
 *		from the HTTP_WRITEABLE callback.
 */
static int
handle_http(struct lws *wsi, PushClient *c, const char *uri)
{
	char		body[4096];
	int			status;
	int			rc;

	c->phase = PHASE_HTTP;
	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
		return lws_return_http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, NULL) ? -1 : 0;

	if (strcmp(uri, "/healthz") == 0)
	{
		status = health_body(body, sizeof(body));
		http_prepare(c, status, "application/json", body);
	}
	else if (strcmp(uri, "/metrics") == 0)
	{
		char		auth[LK_MAX_TOKEN + 16];

		if (!peer_is_loopback(wsi))
		{
			/* others need "Authorization: Bearer <token>", checked by SQL */
			if (lws_hdr_copy(wsi, auth, sizeof(auth), WSI_TOKEN_HTTP_AUTHORIZATION) > 7 &&
				pg_strncasecmp(auth, "Bearer ", 7) == 0)
			{
				c->http_token = strdup(auth + 7);
				if (c->http_token == NULL)
					return -1;
				c->wsi = wsi;
				c->http_pending = true;
				dlist_push_tail(&http_waiting, &c->node);
				requests_pending = true;
				return 0;
			}
			http_prepare(c, 401, "text/plain; charset=utf-8",
						 "metrics need \"Authorization: Bearer <token>\" from this address\n");
		}
		else
		{
			status = metrics_body(body, sizeof(body));
			http_prepare(c, status, "text/plain; version=0.0.4; charset=utf-8", body);
		}
	}
	else if (strcmp(uri, LK_STREAM_PATH) == 0)
	{
		http_prepare(c, 426, "text/plain; charset=utf-8",
					 "this address is a WebSocket endpoint (subprotocol livekpi.v1)\n");
	}
	else
	{
		rc = serve_static(wsi, uri);
		if (rc <= 0)
			return rc;
		http_prepare(c, 200, "text/html; charset=utf-8",
					 "<!doctype html><html><head><meta charset=\"utf-8\">"
					 "<title>livekpi</title></head><body><h1>livekpi</h1>"
					 "<p>The dashboard is not installed.  The WebSocket stream is at "
					 "<code>/v1/stream</code>.</p></body></html>\n");
	}
	lws_callback_on_writable(wsi);
	return 0;
}

static int
http_write_response(struct lws *wsi, PushClient *c)
{
	unsigned char buf[LWS_PRE + 2048];
	unsigned char *start = buf + LWS_PRE;
	unsigned char *p = start;
	unsigned char *end = buf + sizeof(buf);

	if (c->http_body == NULL)
		return -1;
	if (lws_add_http_common_headers(wsi, (unsigned int) c->http_status, c->http_type,
									(lws_filepos_t) c->http_len, &p, end) ||
		add_security_headers(wsi, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "cache-control:",
									(const unsigned char *) "no-store", 8, &p, end) ||
		lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	if (lws_write(wsi, (unsigned char *) c->http_body, c->http_len,
				  LWS_WRITE_HTTP_FINAL) != (int) c->http_len)
		return -1;
	free(c->http_body);
	c->http_body = NULL;
	if (lws_http_transaction_completed(wsi))
		return -1;
	return 0;
}

/*
 * origin_allowed
 *		SPEC section 6, livekpi.allowed_origins: no Origin header is a
 *		non-browser client and allowed; "*" allows all; empty allows only
 *		the listener's own origin (the Host header); else a comma list.
 */
static bool
origin_allowed(struct lws *wsi)
{
	char		origin[256];
	char		host[256];
	const char *list = livekpi_allowed_origins ? livekpi_allowed_origins : "";
	const char *o;

	if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0)
		return true;
	if (lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) < 0)
		return false;
	if (strcmp(list, "*") == 0)
		return true;
	if (list[0] == '\0')
	{
		const char *after;

		if (lws_hdr_copy(wsi, host, sizeof(host), WSI_TOKEN_HOST) <= 0)
			return false;
		if (strncmp(origin, "http://", 7) == 0)
			after = origin + 7;
		else if (strncmp(origin, "https://", 8) == 0)
			after = origin + 8;
		else
			return false;
		return pg_strcasecmp(after, host) == 0;
	}
	o = list;
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
		if (len == strlen(origin) && pg_strncasecmp(o, origin, len) == 0)
			return true;
		if (!comma)
			break;
		o = comma + 1;
	}
	return false;
}

/* ----------------------------------------------------------------
 * WebSocket callbacks
 * ----------------------------------------------------------------
 */
static void
ws_established(struct lws *wsi, PushClient *c)
{
	memset(c, 0, sizeof(*c));
	c->wsi = wsi;
	c->phase = PHASE_AWAIT_HELLO;
	c->connected_at = GetCurrentTimestamp();
	c->pos = -1;
	c->slot = -1;
	lws_get_peer_simple(wsi, c->peer, sizeof(c->peer));
	if (strncmp(c->peer, "::ffff:", 7) == 0 && strchr(c->peer, '.') != NULL)
		memmove(c->peer, c->peer + 7, strlen(c->peer + 7) + 1);	/* IPv4-mapped */
	dlist_push_tail(&all_clients, &c->node);
	nclients++;

	if (nclients > max_clients_effective)
	{
		client_fail(c, "too_many_clients",
					"the server has reached livekpi.max_clients; try again later",
					LK_CLOSE_TRY_LATER);
		return;
	}
	c->slot = slot_acquire(c);

	/*
	 * Bound what the kernel holds for each client: Linux would otherwise
	 * grow a socket's send buffer to megabytes, which times 10,000 clients
	 * is more memory than the queues we account for, and which hides a
	 * stalled reader from client_buffer_limit.
	 */
	{
		int			sndbuf = LK_SOCKET_SNDBUF;

		(void) setsockopt(lws_get_socket_fd(wsi), SOL_SOCKET, SO_SNDBUF,
						  &sndbuf, sizeof(sndbuf));
	}
}

static void
ws_closed(PushClient *c)
{
	if (c->wsi == NULL)
		return;
	dlist_delete(&c->node);
	nclients--;
	slot_release(c->slot);
	c->slot = -1;
	client_free_queue(c);
	co_reset(c);
	free(c->inbuf);
	free(c->request);
	if (c->token_props)
	{
		for (int i = 0; i < c->token_nprops; i++)
			free(c->token_props[i]);
		free(c->token_props);
	}
	scope_free(&c->scope);
	c->wsi = NULL;
}

/*
 * ws_receive
 *		A fragment of a client message.  Messages are assembled up to 64 kB
 *		and parsed; hello and subscribe go to the main loop, which alone
 *		talks to the database.
 */
static void
ws_receive(struct lws *wsi, PushClient *c, const char *in, size_t len)
{
	char		err[256];
	LkClientMessage *msg;
	bool		final;

	if (c->phase != PHASE_AWAIT_HELLO && c->phase != PHASE_LIVE)
		return;
	if (lws_frame_is_binary(wsi))
	{
		client_fail(c, "bad_message", "binary frames are not accepted",
					LK_CLOSE_UNSUPPORTED);
		return;
	}
	if (c->inlen + len + lws_remaining_packet_payload(wsi) > LK_MAX_MESSAGE)
	{
		client_fail(c, "too_large", "messages are limited to 64 kB", LK_CLOSE_TOO_BIG);
		return;
	}
	final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
	if (c->inbuf == NULL)
	{
		c->inbuf = malloc(LK_MAX_MESSAGE);
		if (c->inbuf == NULL)
		{
			client_fail(c, "internal", "out of memory", LK_CLOSE_INTERNAL);
			return;
		}
	}
	memcpy(c->inbuf + c->inlen, in, len);
	c->inlen += len;
	if (!final)
		return;

	msg = malloc(sizeof(LkClientMessage));
	if (msg == NULL)
	{
		client_fail(c, "internal", "out of memory", LK_CLOSE_INTERNAL);
		return;
	}
	if (!lk_parse_client_message(c->inbuf, c->inlen, msg, err, sizeof(err)))
	{
		free(msg);
		client_fail(c, "bad_message", err, LK_CLOSE_INVALID);
		return;
	}
	free(c->inbuf);
	c->inbuf = NULL;
	c->inlen = 0;

	if (msg->type == LK_MSG_HELLO && (c->hello_done || c->request != NULL))
	{
		free(msg);
		client_fail(c, "bad_message", "hello was already received", LK_CLOSE_INVALID);
		return;
	}
	if (msg->type == LK_MSG_SUBSCRIBE && !c->hello_done &&
		(c->request == NULL || c->request->type == LK_MSG_HELLO) && c->request == NULL)
	{
		free(msg);
		client_fail(c, "bad_message", "the first message must be hello", LK_CLOSE_INVALID);
		return;
	}
	if (msg->type == LK_MSG_SUBSCRIBE && c->request != NULL &&
		c->request->type == LK_MSG_HELLO)
	{
		/* a subscribe right behind a hello not yet processed: keep it */
		free(msg);
		client_fail(c, "bad_message", "wait for welcome before subscribe",
					LK_CLOSE_INVALID);
		return;
	}
	free(c->request);
	c->request = msg;
	requests_pending = true;
}

/*
 * ws_writeable
 *		Write queued messages while the socket takes them.  Big messages go
 *		out in 64 kB fragments so that one snapshot does not hold the loop,
 *		each copied into a scratch buffer with LWS_PRE head room (the
 *		queued buffers are shared between clients and must stay intact).
 */
static int
ws_writeable(struct lws *wsi, PushClient *c)
{
	int			budget = 64;

	while (c->qhead && budget-- > 0)
	{
		OutMsg	   *m = c->qhead->msg;
		size_t		remaining = m->len - c->sent_off;
		size_t		chunk = Min(remaining, (size_t) LK_WRITE_CHUNK);
		bool		start = c->sent_off == 0;
		bool		fin = chunk == remaining;
		int			flags = lws_write_ws_flags(LWS_WRITE_TEXT, start, fin);
		int			n;

		memcpy(write_scratch + LWS_PRE, m->data + c->sent_off, chunk);
		n = lws_write(wsi, write_scratch + LWS_PRE, chunk, (enum lws_write_protocol) flags);
		if (n < (int) chunk)
			return -1;
		c->sent_off += chunk;
		if (fin)
		{
			QNode	   *node = c->qhead;

			stat_messages++;
			stat_bytes += (int64) m->len;
			c->qhead = node->next;
			if (c->qhead == NULL)
				c->qtail = NULL;
			c->queued_bytes -= m->len;
			if (m->kind == OUT_DELTA)
				c->queued_delta_bytes -= m->len;
			if (m->kind == OUT_SNAPSHOT)
				c->queued_snapshots--;
			c->sent_off = 0;
			outmsg_release(m);
			free(node);
		}
		if (lws_send_pipe_choked(wsi))
			break;
	}
	if (c->qhead)
	{
		lws_callback_on_writable(wsi);
		return 0;
	}
	if (c->close_pending)
	{
		lws_close_reason(wsi, (enum lws_close_status) c->close_code,
						 (unsigned char *) c->close_reason, strlen(c->close_reason));
		return -1;
	}
	/* a drained client may take more */
	if (c->hello_done && c->pos < broadcast_seq)
		catchup_pending = true;
	if (c->need_snapshot)
		snapshots_pending = true;
	return 0;
}

/*
 * push_callback
 *		The one protocol of the listener: HTTP requests, the WebSocket
 *		stream, and the adopted wake-up descriptors.
 */
static int
push_callback(struct lws *wsi, enum lws_callback_reasons reason,
			  void *user, void *in, size_t len)
{
	PushClient *c = (PushClient *) user;

	switch (reason)
	{
		case LWS_CALLBACK_HTTP:
			if (c == NULL)
				return -1;
			memset(c, 0, sizeof(*c));
			c->slot = -1;
			return handle_http(wsi, c, (const char *) in);

		case LWS_CALLBACK_HTTP_WRITEABLE:
			if (c == NULL || c->phase != PHASE_HTTP)
				break;
			return http_write_response(wsi, c);

		case LWS_CALLBACK_HTTP_FILE_COMPLETION:
			if (lws_http_transaction_completed(wsi))
				return -1;
			return 0;

		case LWS_CALLBACK_CLOSED_HTTP:
			if (c && c->phase == PHASE_HTTP && c->http_pending)
			{
				dlist_delete(&c->node);
				c->http_pending = false;
			}
			if (c && c->phase == PHASE_HTTP)
			{
				free(c->http_token);
				c->http_token = NULL;
				free(c->http_body);
				c->http_body = NULL;
			}
			break;

		case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
			{
				char		uri[128];

				if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 ||
					strcmp(uri, LK_STREAM_PATH) != 0)
					return 1;
				if (!origin_allowed(wsi))
					return 1;
				break;
			}

		case LWS_CALLBACK_ESTABLISHED:
			ws_established(wsi, c);
			break;

		case LWS_CALLBACK_RECEIVE:
			ws_receive(wsi, c, (const char *) in, len);
			break;

		case LWS_CALLBACK_SERVER_WRITEABLE:
			if (c->wsi == NULL)
				return -1;
			return ws_writeable(wsi, c);

		case LWS_CALLBACK_CLOSED:
			ws_closed(c);
			break;

		case LWS_CALLBACK_RAW_RX_FILE:
			{
				int			fd = lws_get_socket_fd(wsi);
				uint64		v;

				if (fd == postmaster_alive_fds[POSTMASTER_FD_WATCH])
				{
					pm_dead = true;
					return -1;
				}
				while (read(fd, &v, sizeof(v)) == sizeof(v))
					;
				wake_pending = true;
				break;
			}

		case LWS_CALLBACK_RAW_CLOSE_FILE:
			break;

		default:
			break;
	}
	return 0;
}

static const struct lws_protocols push_protocols[] = {
	{LK_SUBPROTOCOL, push_callback, sizeof(PushClient), LK_MAX_MESSAGE, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};

static const lws_retry_bo_t push_retry = {
	.secs_since_valid_ping = 30,
	.secs_since_valid_hangup = 75,
};

/*
 * lws_log_to_elog
 *		libwebsockets' own errors and warnings go to the server log.  LOG
 *		level never throws, so this is safe inside lws.
 */
static void
lws_log_to_elog(int level, const char *line)
{
	size_t		len = strlen(line);

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	elog(LOG, "libwebsockets: %.*s", (int) len, line);
}

/* ----------------------------------------------------------------
 * SQL access (main loop only, inside transactions)
 * ----------------------------------------------------------------
 */

/*
 * run_step
 *		Run fn in its own transaction with SPI connected, catching any
 *		error: an error is logged and published in livekpi.status, the
 *		transaction rolled back, and the loop goes on.  Returns success.
 */
static bool
run_step(const char *what, void (*fn) (void *), void *arg, bool repeatable_read)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;
	volatile int sqlerrcode = 0;
	int			attempt = 0;

retry:
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (repeatable_read)
		XactIsoLevel = XACT_REPEATABLE_READ;
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, what);
		fn(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		char		msg[LIVEKPI_ERROR_LEN];

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		sqlerrcode = edata->sqlerrcode;
		snprintf(msg, sizeof(msg), "%s: %s", what, edata->message);
		ereport(LOG,
				(errmsg("livekpi push worker: %s", msg)));
		set_push_error(msg);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	/* a standby's recovery conflict (40001): run it again, see push_standby.c */
	if (!ok && push_standby_retry(sqlerrcode, ++attempt))
	{
		ok = true;
		goto retry;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);
	return ok;
}

static char *
spi_text(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *v = SPI_getvalue(tup, desc, col);

	return v;
}

/*
 * read_state
 *		Epoch, newest seq and key type, from livekpi.state.
 */
static bool
read_state(int64 *last_seq)
{
	bool		isnull;
	int			ret;

	/* before CREATE EXTENSION (or after DROP) there is nothing to read */
	ret = SPI_execute("SELECT to_regclass('livekpi.state') IS NOT NULL "
					  "AND to_regclass('livekpi.push_tokens') IS NOT NULL", true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		return false;
	ret = SPI_execute("SELECT epoch, last_seq, coalesce(key_type::text, 'text') "
					  "FROM livekpi.state", true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed == 0)
		return false;
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *epoch = spi_text(tup, desc, 1);
		char	   *seq = spi_text(tup, desc, 2);
		char	   *kt = spi_text(tup, desc, 3);

		strlcpy(server_epoch, epoch ? epoch : "", sizeof(server_epoch));
		*last_seq = seq ? strtoi64(seq, NULL, 10) : 0;
		strlcpy(key_type, kt ? kt : "text", sizeof(key_type));
	}
	return true;
}

static bool
key_is_number(void)
{
	return strcmp(key_type, "bigint") == 0 || strcmp(key_type, "integer") == 0 ||
		strcmp(key_type, "smallint") == 0;
}

/* ----------------------------------------------------------------
 * Batches
 * ----------------------------------------------------------------
 */
typedef struct BatchRow
{
	uint8		view;			/* index into lk_view_names */
	bool		is_delete;
	char	   *json;
	char	   *prop;			/* property key text, NULL for portfolio */
	char	   *day;			/* booking_daily's day */
	char	   *key;			/* the key object as text */
} BatchRow;

typedef struct Batch
{
	int64		seq;
	bool		barrier;
	char	   *applied_at;
	char	   *committed_at;
	int			nrows;
	BatchRow   *rows;
} Batch;

typedef struct BatchRead
{
	int64		after;
	int64		upto;
	int			nbatches;
	Batch	   *batches;
	int64		state_seq;
	bool		state_ok;
	char		epoch_before[LK_MAX_EPOCH + 1];
} BatchRead;

static const char *batch_sql =
"SELECT d.seq, d.barrier, to_json(d.applied_at) #>> '{}', "
"       to_json(d.committed_at) #>> '{}', e.kind, e.view, e.elem::text, "
"       e.elem ->> 'property_id', e.elem ->> 'day', "
"       CASE e.view "
"         WHEN 'property_kpis' THEN jsonb_build_object('property_id', e.elem -> 'property_id', 'month', e.elem -> 'month') "
"         WHEN 'portfolio_kpis' THEN jsonb_build_object('month', e.elem -> 'month') "
"         WHEN 'expense_monthly' THEN jsonb_build_object('property_id', e.elem -> 'property_id', 'month', e.elem -> 'month', 'category', e.elem -> 'category') "
"         WHEN 'booking_daily' THEN jsonb_build_object('property_id', e.elem -> 'property_id', 'day', e.elem -> 'day') "
"       END::text "
"  FROM livekpi.delta_log d "
"  LEFT JOIN LATERAL ( "
"       SELECT 0 AS kind, u.key AS view, r.value AS elem "
"         FROM jsonb_each(coalesce(d.upserts, '{}')) u, jsonb_array_elements(u.value) r "
"       UNION ALL "
"       SELECT 1, x.key, r.value "
"         FROM jsonb_each(coalesce(d.deletes, '{}')) x, jsonb_array_elements(x.value) r "
"  ) e ON true "
" WHERE d.seq > $1 AND d.seq <= $2 "
" ORDER BY d.seq, e.kind, e.view";

static SPIPlanPtr batch_plan = NULL;

/*
 * read_batches_step
 *		Read batches (after, upto] of delta_log into round_cxt.
 */
static void
read_batches_step(void *arg)
{
	BatchRead  *br = (BatchRead *) arg;
	Datum		values[2];
	int			ret;
	MemoryContext old;
	Batch	   *cur = NULL;
	int			cap = 16;

	if (batch_plan == NULL)
	{
		Oid			types[2] = {INT8OID, INT8OID};

		batch_plan = SPI_prepare(batch_sql, 2, types);
		if (batch_plan == NULL)
			elog(ERROR, "could not prepare the delta_log query: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(batch_plan);
	}
	values[0] = Int64GetDatum(br->after);
	values[1] = Int64GetDatum(br->upto);
	ret = SPI_execute_plan(batch_plan, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "delta_log query failed: %s", SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(round_cxt);
	br->batches = palloc(sizeof(Batch) * cap);
	br->nbatches = 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		seq = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *view;
		int			bit;

		if (cur == NULL || cur->seq != seq)
		{
			if (br->nbatches == cap)
			{
				cap *= 2;
				br->batches = repalloc(br->batches, sizeof(Batch) * cap);
			}
			cur = &br->batches[br->nbatches++];
			cur->seq = seq;
			cur->barrier = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)) && !isnull;
			cur->applied_at = spi_text(tup, desc, 3);
			cur->committed_at = spi_text(tup, desc, 4);
			cur->nrows = 0;
			cur->rows = NULL;
		}
		view = spi_text(tup, desc, 6);
		if (view == NULL)
			continue;
		bit = lk_view_from_name(view, strlen(view));
		if (bit == 0)
			continue;			/* a view this server does not stream */
		if (cur->rows == NULL)
			cur->rows = palloc(sizeof(BatchRow) * 8);
		else if ((cur->nrows & (cur->nrows - 1)) == 0 && cur->nrows >= 8)
			cur->rows = repalloc(cur->rows, sizeof(BatchRow) * cur->nrows * 2);
		{
			BatchRow   *r = &cur->rows[cur->nrows++];

			r->view = (uint8) (pg_rightmost_one_pos32((uint32) bit));
			r->is_delete = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull)) == 1;
			r->json = spi_text(tup, desc, 7);
			r->prop = spi_text(tup, desc, 8);
			r->day = spi_text(tup, desc, 9);
			r->key = spi_text(tup, desc, 10);
		}
	}
	MemoryContextSwitchTo(old);
}

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

static void
send_resync(PushClient *c, int64 seq)
{
	char		buf[96];

	snprintf(buf, sizeof(buf), "{\"type\":\"resync\",\"seq\":" INT64_FORMAT "}", seq);
	client_drop_pending_deltas(c);
	client_enqueue_text(c, OUT_STALE, buf);
	c->need_snapshot = true;
	snapshots_pending = true;
}

/*
 * deliver_batch
 *		Give one batch to one client (whose position is just before it),
 *		applying backpressure: past client_buffer_limit of pending deltas
 *		the client gets a resync and, once drained, a new snapshot.
 */
typedef struct CoEntry
{
	char		key[LK_CO_KEYLEN];	/* view letter + key object text */
	uint8		view;
	bool		is_delete;
	uint64		order;
	char	   *json;
	size_t		len;
} CoEntry;

/*
 * coalesce_batch
 *		Merge the in-scope rows of a batch into the client's coalesced
 *		delta.  Returns false when a key is too long to merge safely (the
 *		caller then falls back to a resync).
 */
static bool
coalesce_batch(PushClient *c, const Batch *b)
{
	if (c->co_hash == NULL)
	{
		HASHCTL		ctl;

		c->co_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi coalesced delta",
										  ALLOCSET_DEFAULT_SIZES);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = LK_CO_KEYLEN;
		ctl.entrysize = sizeof(CoEntry);
		ctl.hcxt = c->co_cxt;
		c->co_hash = hash_create("livekpi coalesced delta", 64, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		co_clients++;
		c->co_bytes = 0;
	}
	for (int i = 0; i < b->nrows; i++)
	{
		const BatchRow *r = &b->rows[i];
		char		key[LK_CO_KEYLEN];
		CoEntry    *e;
		bool		found;
		size_t		len;

		if (!row_in_scope(&c->scope, r))
			continue;
		if (r->key == NULL || strlen(r->key) + 2 >= LK_CO_KEYLEN)
			return false;
		snprintf(key, sizeof(key), "%c%s", 'a' + r->view, r->key);
		e = hash_search(c->co_hash, key, HASH_ENTER, &found);
		if (found)
		{
			c->co_bytes -= e->len;
			pfree(e->json);
		}
		len = strlen(r->json);
		e->view = r->view;
		e->is_delete = r->is_delete;
		e->order = c->co_order++;
		e->json = MemoryContextStrdup(c->co_cxt, r->json);
		e->len = len + 1;
		c->co_bytes += e->len;
	}
	c->co_seq = b->seq;
	strlcpy(c->co_applied_at, b->applied_at ? b->applied_at : "", sizeof(c->co_applied_at));
	strlcpy(c->co_committed_at, b->committed_at ? b->committed_at : "", sizeof(c->co_committed_at));
	return true;
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

/*
 * flush_coalesced
 *		Queue a client's coalesced delta as one message once the delta
 *		before it has gone out.  It carries the seq and times of the last
 *		batch merged into it.
 */
static void
flush_coalesced(PushClient *c)
{
	HASH_SEQ_STATUS st;
	CoEntry    *e;
	CoEntry   **all;
	long		n = hash_get_num_entries(c->co_hash);
	long		k = 0;
	StringInfoData buf;
	OutMsg	   *m;

	all = palloc(sizeof(CoEntry *) * Max(n, 1));
	hash_seq_init(&st, c->co_hash);
	while ((e = hash_seq_search(&st)) != NULL)
		all[k++] = e;
	qsort(all, k, sizeof(CoEntry *), cmp_co_entry);

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"type\":\"delta\",\"seq\":" INT64_FORMAT
					 ",\"applied_at\":\"%s\",\"committed_at\":\"%s\",\"upserts\":{",
					 c->co_seq, c->co_applied_at, c->co_committed_at);
	for (int kind = 0; kind < 2; kind++)
	{
		int			open_view = -1;

		if (kind == 1)
			appendStringInfoString(&buf, "},\"deletes\":{");
		for (long i = 0; i < k; i++)
		{
			if (all[i]->is_delete != (kind == 1))
				continue;
			if (open_view != all[i]->view)
			{
				if (open_view >= 0)
					appendStringInfoString(&buf, "],");
				appendStringInfo(&buf, "\"%s\":[", lk_view_names[all[i]->view]);
				open_view = all[i]->view;
			}
			else
				appendStringInfoChar(&buf, ',');
			appendStringInfoString(&buf, all[i]->json);
		}
		if (open_view >= 0)
			appendStringInfoChar(&buf, ']');
	}
	appendStringInfoString(&buf, "}}");
	co_reset(c);
	m = outmsg_new(OUT_DELTA, buf.data, buf.len);
	pfree(buf.data);
	pfree(all);
	if (m == NULL)
	{
		client_fail(c, "internal", "out of memory", LK_CLOSE_INTERNAL);
		return;
	}
	outmsg_hold(m);
	client_enqueue(c, m);
	outmsg_release(m);
}

static void
flush_all_coalesced(void)
{
	dlist_iter	it;

	if (co_clients == 0)
		return;

	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->co_hash && c->queued_delta_bytes == 0 && c->phase == PHASE_LIVE)
			flush_coalesced(c);
	}
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

	if (b->barrier)
	{
		send_resync(c, b->seq);
		c->pos = b->seq;
		return;
	}
	c->pos = b->seq;
	if (m == NULL)
		return;
	if (c->co_hash == NULL && c->queued_delta_bytes + m->len <= limit / 2)
	{
		client_enqueue(c, m);
		return;
	}
	if (!coalesce_batch(c, b) || c->queued_delta_bytes + c->co_bytes > limit)
		send_resync(c, b->seq);
}

static bool
client_is_live(PushClient *c)
{
	return c->phase == PHASE_LIVE && c->hello_done && !c->need_snapshot &&
		c->request == NULL;
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

		if (client_is_live(c))
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

				if (c->pos != b->seq - 1 || c->need_snapshot)
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
 *		dispatch it.  Also notices a new epoch (a renumbering rebuild or a
 *		recreated extension): then every client gets a resync.
 */
static void
state_step(void *arg)
{
	BatchRead  *br = (BatchRead *) arg;

	br->state_ok = read_state(&br->state_seq);
	if (br->state_ok)
		push_standby_read_state();
}

static void
poll_batches(void)
{
	BatchRead	br;

	memset(&br, 0, sizeof(br));
	if (!run_step("reading livekpi.state", state_step, &br, false) || !br.state_ok)
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

			if (c->hello_done && c->phase == PHASE_LIVE)
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
		if (!run_step("reading livekpi.delta_log", read_batches_step, &rd, false))
			return;
		if (rd.nbatches == 0 || rd.batches[0].seq != broadcast_seq + 1)
		{
			/* a gap: retention passed us by; live clients must resync */
			dlist_iter	it;

			dlist_foreach(it, &all_clients)
			{
				PushClient *c = dlist_container(PushClient, node, it.cur);

				if (client_is_live(c) && c->pos <= rd.upto)
					send_resync(c, rd.upto);
			}
			broadcast_seq = rd.upto;
			continue;
		}
		dispatch_batches(&rd);
		{
			Batch	   *last = &rd.batches[rd.nbatches - 1];

			broadcast_seq = last->seq;
			if (last->committed_at)
				strlcpy(last_committed_at, last->committed_at, sizeof(last_committed_at));
			if (last->applied_at)
				strlcpy(last_applied_at, last->applied_at, sizeof(last_applied_at));
		}
		MemoryContextReset(round_cxt);
	}
}

/*
 * catch_up
 *		Clients behind the broadcast position (resumed, or just given a
 *		snapshot older than what we broadcast) replay from delta_log, a
 *		bounded number of batches per round and only while their queue is
 *		under half the buffer limit, so a slow reader never grows memory.
 */
static void
catch_up(void)
{
	dlist_iter	it;
	size_t		limit = (size_t) livekpi_client_buffer_limit * 1024;

	catchup_pending = false;
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);
		BatchRead	rd;

		if (c->phase != PHASE_LIVE || !c->hello_done || c->need_snapshot ||
			c->request != NULL || c->pos >= broadcast_seq)
			continue;
		if (c->queued_delta_bytes > limit / 2)
			continue;
		memset(&rd, 0, sizeof(rd));
		rd.after = c->pos;
		rd.upto = Min(broadcast_seq, c->pos + LK_BATCHES_PER_READ);
		if (!run_step("replaying livekpi.delta_log", read_batches_step, &rd, false))
			return;
		if (rd.nbatches == 0 || rd.batches[0].seq != c->pos + 1)
		{
			/* no longer retained */
			send_resync(c, broadcast_seq);
			MemoryContextReset(round_cxt);
			continue;
		}
		for (int i = 0; i < rd.nbatches && !c->need_snapshot; i++)
		{
			OutMsg	   *m = rd.batches[i].barrier ? NULL : build_delta(&rd.batches[i], &c->scope);

			outmsg_hold(m);
			deliver_batch(c, &rd.batches[i], m);
			outmsg_release(m);
		}
		if (c->pos < broadcast_seq)
			catchup_pending = true;
		MemoryContextReset(round_cxt);
	}
}

/* ----------------------------------------------------------------
 * Snapshots
 * ----------------------------------------------------------------
 */
typedef struct SnapshotJob
{
	ClientScope *scope;
	int64		seq;
	char	   *json;			/* in round_cxt */
} SnapshotJob;

static const char *view_order[LK_NUM_VIEWS] = {
	"property_id, month",
	"month",
	"property_id, month, category",
	"property_id, day"
};

/*
 * snapshot_step
 *		Build one snapshot message in a REPEATABLE READ transaction: the
 *		seq read from livekpi.state and the view rows are of the same
 *		commit.  Rows are to_jsonb() of the views' rows, like the deltas.
 */
static void
snapshot_step(void *arg)
{
	SnapshotJob *job = (SnapshotJob *) arg;
	ClientScope *s = job->scope;
	StringInfoData buf;
	int64		seq;
	Datum		values[3];
	Oid			types[3] = {TEXTARRAYOID, DATEOID, DATEOID};
	char		nulls[3] = {' ', ' ', ' '};
	MemoryContext old;

	if (!read_state(&seq))
		elog(ERROR, "livekpi.state is empty");
	job->seq = seq;

	if (s->all_properties)
		nulls[0] = 'n', values[0] = (Datum) 0;
	else
	{
		Datum	   *elems = palloc(sizeof(Datum) * Max(s->nproperties, 1));

		for (int i = 0; i < s->nproperties; i++)
			elems[i] = CStringGetTextDatum(s->properties[i]);
		values[0] = PointerGetDatum(construct_array(elems, s->nproperties, TEXTOID,
													-1, false, TYPALIGN_INT));
	}
	if (s->views & LK_VIEW_BOOKING_DAILY)
	{
		values[1] = DirectFunctionCall1(date_in, CStringGetDatum(s->daily_from));
		values[2] = DirectFunctionCall1(date_in, CStringGetDatum(s->daily_to));
	}
	else
	{
		nulls[1] = nulls[2] = 'n';
		values[1] = values[2] = (Datum) 0;
	}

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"type\":\"snapshot\",\"seq\":" INT64_FORMAT ",\"rows\":{", seq);
	{
		bool		first = true;

		for (int v = 0; v < LK_NUM_VIEWS; v++)
		{
			char	   *sql;
			int			ret;
			char	   *rows;

			if ((s->views & (1u << v)) == 0)
				continue;
			if ((1u << v) == LK_VIEW_PORTFOLIO_KPIS)
				sql = psprintf("SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY %s), '[]')::text "
							   "FROM livekpi.%s v WHERE $1 IS NULL OR $1 IS NOT NULL",
							   view_order[v], lk_view_names[v]);
			else if ((1u << v) == LK_VIEW_BOOKING_DAILY)
				sql = psprintf("SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY %s), '[]')::text "
							   "FROM livekpi.%s v WHERE ($1 IS NULL OR v.property_id = ANY ($1::%s[])) "
							   "AND v.day BETWEEN $2 AND $3",
							   view_order[v], lk_view_names[v], key_type);
			else
				sql = psprintf("SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY %s), '[]')::text "
							   "FROM livekpi.%s v WHERE ($1 IS NULL OR v.property_id = ANY ($1::%s[]))",
							   view_order[v], lk_view_names[v], key_type);
			ret = SPI_execute_with_args(sql, 3, types, values, nulls, true, 0);
			if (ret != SPI_OK_SELECT || SPI_processed != 1)
				elog(ERROR, "snapshot of %s failed", lk_view_names[v]);
			rows = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			appendStringInfo(&buf, "%s\"%s\":%s", first ? "" : ",", lk_view_names[v], rows);
			first = false;
		}
	}
	appendStringInfoString(&buf, "}}");
	old = MemoryContextSwitchTo(round_cxt);
	job->json = pstrdup(buf.data);
	MemoryContextSwitchTo(old);
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

static void
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
static void
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

		if (c->phase == PHASE_LIVE && c->need_snapshot && c->hello_done &&
			c->request == NULL && c->queued_snapshots == 0 && c->queued_delta_bytes == 0)
			nwant++;
	}
	if (nwant == 0)
		return;
	want = palloc(sizeof(PushClient *) * nwant);
	nwant = 0;
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->phase == PHASE_LIVE && c->need_snapshot && c->hello_done &&
			c->request == NULL && c->queued_snapshots == 0 && c->queued_delta_bytes == 0)
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
			if (!run_step("building a snapshot", snapshot_step, &job, true))
			{
				for (int k = start; k < end; k++)
					client_fail(want[k], "internal", "could not build the snapshot",
								LK_CLOSE_INTERNAL);
				start = end;
				continue;
			}
			m = outmsg_new(OUT_SNAPSHOT, job.json, strlen(job.json));
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
			c->need_snapshot = false;
			if (job.seq < broadcast_seq)
				catchup_pending = true;
		}
		outmsg_release(m);
		start = end;
	}
	pfree(want);
	MemoryContextReset(round_cxt);
}

/* ----------------------------------------------------------------
 * hello and subscribe
 * ----------------------------------------------------------------
 */
typedef struct RequestJob
{
	PushClient *c;
	LkClientMessage *msg;
	/* results */
	const char *err_code;
	char		err_msg[256];
	int			close_code;
	LkToken		token;
	int			nprops;
	char	  **props;			/* canonical, sorted, round_cxt */
	char	   *scope_json;
	char		daily_from[11];
	char		daily_to[11];
	int64		latest;
	bool		resumed;
	int64		resume_pos;
	TimestampTz now;
} RequestJob;

static void
job_error(RequestJob *job, const char *code, int close_code, const char *fmt,...)
	pg_attribute_printf(4, 5);

static void
job_error(RequestJob *job, const char *code, int close_code, const char *fmt,...)
{
	va_list		ap;

	job->err_code = code;
	job->close_code = close_code;
	va_start(ap, fmt);
	vsnprintf(job->err_msg, sizeof(job->err_msg), fmt, ap);
	va_end(ap);
}

/*
 * canonical_keys
 *		The client's property keys through the key type and back to text,
 *		sorted and distinct, so that they compare with the text of the
 *		delta rows.  Keys that are not valid for the key type are reported
 *		instead of raised.
 */
static bool
canonical_keys(RequestJob *job)
{
	LkClientMessage *msg = job->msg;
	Datum	   *elems;
	Datum		values[1];
	Oid			types[1] = {TEXTARRAYOID};
	char	   *sql;
	int			ret;
	MemoryContext old;
	volatile bool ok = true;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (msg->nproperties == 0)
	{
		job->nprops = 0;
		job->props = NULL;
		return true;
	}
	for (int i = 0; i < msg->nproperties; i++)
	{
		if (msg->property_is_number[i] != key_is_number())
		{
			job_error(job, "bad_message", LK_CLOSE_INVALID,
					  "property keys are of type %s", key_type);
			return false;
		}
	}
	elems = palloc(sizeof(Datum) * msg->nproperties);
	for (int i = 0; i < msg->nproperties; i++)
		elems[i] = CStringGetTextDatum(msg->propbuf + msg->property_off[i]);
	values[0] = PointerGetDatum(construct_array(elems, msg->nproperties, TEXTOID,
												-1, false, TYPALIGN_INT));
	sql = psprintf("SELECT array_agg(k ORDER BY k), to_jsonb(array_agg(k::%s ORDER BY k))::text "
				   "FROM (SELECT DISTINCT (p::%s)::text AS k FROM unnest($1) p) s",
				   key_type, key_type);

	/* a bad key is the client's mistake: catch it in a subtransaction */
	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, 1, types, values, NULL, true, 0);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not check property keys");
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			ArrayType  *arr = DatumGetArrayTypeP(d);
			Datum	   *ke;
			bool	   *kn;
			int			n;

			deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &ke, &kn, &n);
			old = MemoryContextSwitchTo(round_cxt);
			job->props = palloc(sizeof(char *) * Max(n, 1));
			job->nprops = n;
			for (int i = 0; i < n; i++)
				job->props[i] = TextDatumGetCString(ke[i]);
			job->scope_json = pstrdup(SPI_getvalue(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 2));
			MemoryContextSwitchTo(old);
		}
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		job_error(job, "bad_message", LK_CLOSE_INVALID, "invalid property key: %s",
				  edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return ok;
}

/*
 * token_props_json
 *		JSON array of a token's keys (for the welcome's scope), typed.
 */
static char *
keys_json(char **keys, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	Datum		values[1];
	Oid			types[1] = {TEXTARRAYOID};
	char	   *sql;
	int			ret;

	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(keys[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	sql = psprintf("SELECT coalesce(to_jsonb(array_agg(p::%s ORDER BY p::%s)), '[]')::text "
				   "FROM unnest($1) p", key_type, key_type);
	ret = SPI_execute_with_args(sql, 1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not format property keys");
	return MemoryContextStrdup(round_cxt,
							   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
}

/*
 * request_step
 *		Check a hello or subscribe against the database: the token, the
 *		views and properties it allows, the daily range, and whether a
 *		resume is possible.  Errors meant for the client go to job->err_*.
 */
static void
request_step(void *arg)
{
	RequestJob *job = (RequestJob *) arg;
	LkClientMessage *msg = job->msg;
	PushClient *c = job->c;
	bool		token_all;
	int			token_nprops;
	char	  **token_props;
	uint32		views;

	job->now = GetCurrentTimestamp();
	if (!read_state(&job->latest))
		return job_error(job, "internal", LK_CLOSE_INTERNAL,
						 "livekpi is not installed in database \"%s\"", livekpi_database);

	if (msg->type == LK_MSG_HELLO)
	{
		LkTokenStatus st = livekpi_token_lookup(msg->token, &job->token, round_cxt);

		if (st == LK_TOKEN_UNKNOWN)
			return job_error(job, "bad_token", LK_CLOSE_UNAUTHORIZED, "unknown token");
		if (st == LK_TOKEN_REVOKED)
			return job_error(job, "token_revoked", LK_CLOSE_UNAUTHORIZED,
							 "this token has been revoked");
		if (st == LK_TOKEN_EXPIRED)
			return job_error(job, "token_expired", LK_CLOSE_UNAUTHORIZED,
							 "this token has expired");
		token_all = job->token.all_properties;
		token_nprops = job->token.nproperties;
		token_props = job->token.properties;
	}
	else
	{
		token_all = c->token_all;
		token_nprops = c->token_nprops;
		token_props = c->token_props;
	}

	/* views */
	views = msg->has_views ? msg->views
		: (LK_VIEW_PROPERTY_KPIS | (token_all ? LK_VIEW_PORTFOLIO_KPIS : 0));
	if ((views & LK_VIEW_PORTFOLIO_KPIS) && !token_all)
		return job_error(job, "forbidden_view", LK_CLOSE_FORBIDDEN,
						 "portfolio_kpis needs a whole-portfolio token");
	if ((views & LK_VIEW_BOOKING_DAILY) && !msg->has_daily_range)
		return job_error(job, "bad_message", LK_CLOSE_INVALID,
						 "booking_daily needs \"daily_range\"");
	if (msg->has_daily_range)
	{
		/* through date_in, which rejects February 30th */
		Datum		f = DirectFunctionCall1(date_in, CStringGetDatum(msg->daily_from));
		Datum		t = DirectFunctionCall1(date_in, CStringGetDatum(msg->daily_to));

		strlcpy(job->daily_from, DatumGetCString(DirectFunctionCall1(date_out, f)), 11);
		strlcpy(job->daily_to, DatumGetCString(DirectFunctionCall1(date_out, t)), 11);
	}

	/* properties */
	if (msg->has_properties)
	{
		if (!canonical_keys(job))
			return;
		if (!token_all)
			for (int i = 0; i < job->nprops; i++)
				if (bsearch(&job->props[i], token_props, token_nprops, sizeof(char *),
							livekpi_cmp_cstring) == NULL)
					return job_error(job, "forbidden_property", LK_CLOSE_FORBIDDEN,
									 "property %s is outside this token's scope",
									 job->props[i]);
	}
	else if (!token_all)
	{
		job->nprops = token_nprops;
		job->props = token_props;
		job->scope_json = keys_json(token_props, token_nprops);
	}
	if (job->scope_json == NULL && (msg->has_properties || !token_all))
		job->scope_json = keys_json(job->props, job->nprops);

	/* resume: possible when every batch after S is retained, no barrier */
	job->resumed = false;
	if (msg->type == LK_MSG_HELLO && msg->has_resume_from &&
		(!msg->has_epoch || strcmp(msg->epoch, server_epoch) == 0) &&
		msg->resume_from <= job->latest)
	{
		if (msg->resume_from == job->latest)
			job->resumed = true;
		else
		{
			Oid			types[1] = {INT8OID};
			Datum		values[1] = {Int64GetDatum(msg->resume_from)};
			int			ret;

			ret = SPI_execute_with_args(
										"SELECT (SELECT min(seq) FROM livekpi.delta_log) <= $1 + 1 "
										"   AND NOT EXISTS (SELECT 1 FROM livekpi.delta_log "
										"                    WHERE seq > $1 AND barrier)",
										1, types, values, NULL, true, 1);
			if (ret == SPI_OK_SELECT && SPI_processed == 1)
			{
				bool		isnull;
				Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull);

				job->resumed = !isnull && DatumGetBool(d);
			}
		}
		job->resume_pos = msg->resume_from;
	}

	if (msg->type == LK_MSG_HELLO)
		livekpi_token_touch(job->token.id);
	(void) views;
	job->msg->views = views;
}

static char **
malloc_strings(char **src, int n)
{
	char	  **dst = malloc(sizeof(char *) * Max(n, 1));

	if (dst == NULL)
		return NULL;
	for (int i = 0; i < n; i++)
	{
		dst[i] = strdup(src[i]);
		if (dst[i] == NULL)
		{
			for (int j = 0; j < i; j++)
				free(dst[j]);
			free(dst);
			return NULL;
		}
	}
	return dst;
}

static char *
views_json(uint32 views)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (int v = 0; v < LK_NUM_VIEWS; v++)
		if (views & (1u << v))
		{
			appendStringInfo(&buf, "%s\"%s\"", first ? "" : ",", lk_view_names[v]);
			first = false;
		}
	appendStringInfoChar(&buf, ']');
	return buf.data;
}

static char *
timestamp_json(TimestampTz t)
{
	char		buf[MAXDATELEN + 1];

	JsonEncodeDateTime(buf, TimestampTzGetDatum(t), TIMESTAMPTZOID, NULL);
	return pstrdup(buf);
}

/*
 * apply_request
 *		After request_step: install the new scope, answer with welcome (for
 *		hello) and schedule the snapshot or the replay.
 */
static void
apply_request(RequestJob *job)
{
	PushClient *c = job->c;
	LkClientMessage *msg = job->msg;
	ClientScope ns;
	StringInfoData sig;

	memset(&ns, 0, sizeof(ns));
	ns.views = msg->views;
	ns.all_properties = !msg->has_properties && (msg->type == LK_MSG_HELLO ? job->token.all_properties : c->token_all);
	if (!ns.all_properties)
	{
		ns.nproperties = job->nprops;
		ns.properties = malloc_strings(job->props, job->nprops);
		if (ns.properties == NULL)
		{
			client_fail(c, "internal", "out of memory", LK_CLOSE_INTERNAL);
			return;
		}
	}
	strlcpy(ns.daily_from, msg->has_daily_range ? job->daily_from : "", sizeof(ns.daily_from));
	strlcpy(ns.daily_to, msg->has_daily_range ? job->daily_to : "", sizeof(ns.daily_to));

	initStringInfo(&sig);
	appendStringInfo(&sig, "%x|%s|%s|%c", ns.views, ns.daily_from, ns.daily_to,
					 ns.all_properties ? 'A' : 'S');
	for (int i = 0; i < ns.nproperties; i++)
		appendStringInfo(&sig, "\x1f%s", ns.properties[i]);
	ns.signature = strdup(sig.data);
	ns.scope_json = strdup(ns.all_properties ? "null" : (job->scope_json ? job->scope_json : "[]"));
	pfree(sig.data);

	if (msg->type == LK_MSG_HELLO)
	{
		c->token_id = job->token.id;
		strlcpy(c->label, job->token.label, sizeof(c->label));
		c->token_expires = job->token.expires_at;
		c->token_all = job->token.all_properties;
		c->token_nprops = job->token.nproperties;
		c->token_props = c->token_all ? NULL
			: malloc_strings(job->token.properties, job->token.nproperties);
	}
	scope_free(&c->scope);
	c->scope = ns;
	c->have_scope = true;

	if (msg->type == LK_MSG_HELLO)
	{
		char	   *vj = views_json(ns.views);
		char	   *now = timestamp_json(job->now);
		char	   *w;

		w = psprintf("{\"type\":\"welcome\",\"protocol\":1,\"epoch\":\"%s\",\"seq\":" INT64_FORMAT
					 ",\"resumed\":%s,\"scope\":{\"properties\":%s},\"views\":%s,"
					 "\"server_time\":\"%s\",\"currency\":\"%s\"}",
					 server_epoch, job->latest, job->resumed ? "true" : "false",
					 ns.scope_json, vj, now, livekpi_currency);
		client_enqueue_text(c, OUT_CONTROL, w);
		c->hello_done = true;
		c->phase = PHASE_LIVE;
		c->last_heartbeat = job->now;
	}

	/* a new scope invalidates what is queued */
	client_drop_pending_deltas(c);
	if (job->resumed)
	{
		c->pos = job->resume_pos;
		c->need_snapshot = false;
		catchup_pending = true;
	}
	else
	{
		c->need_snapshot = true;
		snapshots_pending = true;
	}
	slot_publish(c);
}

typedef struct MetricsAuth
{
	const char *secret;
	LkTokenStatus status;
} MetricsAuth;

static void
metrics_auth_step(void *arg)
{
	MetricsAuth *ma = (MetricsAuth *) arg;
	LkToken		token;

	ma->status = livekpi_token_lookup(ma->secret, &token, round_cxt);
}

/*
 * process_http_waiting
 *		Answer /metrics requests from non-loopback peers once their bearer
 *		token is checked (any valid token will do).
 */
static void
process_http_waiting(void)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &http_waiting)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);
		MetricsAuth ma;
		char		body[4096];

		dlist_delete(&c->node);
		c->http_pending = false;
		ma.secret = c->http_token;
		ma.status = LK_TOKEN_UNKNOWN;
		if (run_step("checking a metrics token", metrics_auth_step, &ma, false) &&
			ma.status == LK_TOKEN_OK)
		{
			int			status = metrics_body(body, sizeof(body));

			http_prepare(c, status, "text/plain; version=0.0.4; charset=utf-8", body);
		}
		else
			http_prepare(c, 401, "text/plain; charset=utf-8", "invalid token\n");
		lws_callback_on_writable(c->wsi);
	}
}

/*
 * process_requests
 *		Handle every hello and subscribe received since the last round.
 */
static void
process_requests(void)
{
	dlist_iter	it;

	requests_pending = false;
	process_http_waiting();
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);
		RequestJob	job;

		if (c->request == NULL || c->phase == PHASE_CLOSING)
			continue;
		/* a standby not yet at the seq a hello resumes from: wait a little */
		if (push_standby_hold_request(c->request, broadcast_seq, c->connected_at))
		{
			requests_pending = true;
			continue;
		}
		memset(&job, 0, sizeof(job));
		job.c = c;
		job.msg = c->request;
		if (!run_step("checking a hello", request_step, &job, false))
			client_fail(c, "internal", "the server could not process the request",
						LK_CLOSE_INTERNAL);
		else if (job.err_code)
			client_fail(c, job.err_code, job.err_msg, job.close_code);
		else
			apply_request(&job);
		if (c->request)
		{
			free(c->request);
			c->request = NULL;
		}
		MemoryContextReset(round_cxt);
	}
}

/* ----------------------------------------------------------------
 * Periodic work
 * ----------------------------------------------------------------
 */
typedef struct TokenCheck
{
	int			n;
	int64	   *ids;
	bool	   *revoked;
	bool	   *expired;
} TokenCheck;

static void
token_check_step(void *arg)
{
	TokenCheck *tc = (TokenCheck *) arg;
	Datum	   *elems = palloc(sizeof(Datum) * Max(tc->n, 1));
	Datum		values[1];
	Oid			types[1] = {INT8ARRAYOID};
	int			ret;

	for (int i = 0; i < tc->n; i++)
		elems[i] = Int64GetDatum(tc->ids[i]);
	values[0] = PointerGetDatum(construct_array(elems, tc->n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	ret = SPI_execute_with_args("SELECT id, revoked_at IS NOT NULL, expires_at <= now() "
								"FROM livekpi.push_tokens WHERE id = ANY ($1) "
								"AND (revoked_at IS NOT NULL OR expires_at <= now())",
								1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "token check failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull));

		for (int i = 0; i < tc->n; i++)
			if (tc->ids[i] == id)
			{
				tc->revoked[i] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull));
				tc->expired[i] = !tc->revoked[i];
			}
	}
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * check_tokens
 *		Close the connections of revoked or expired tokens.  Runs when a
 *		revoke_token() commits (the generation moved) and every 500 ms, so
 *		that connections go within a second in any case.
 */
static void
check_tokens(TimestampTz now)
{
	uint64		gen = pg_atomic_read_u64(&livekpi_push_shared->token_generation);
	TokenCheck	tc;
	dlist_iter	it;
	int			n = 0;

	if (gen == seen_token_generation &&
		!TimestampDifferenceExceeds(last_token_check, now, LK_TOKEN_RECHECK_MS))
		return;
	seen_token_generation = gen;
	last_token_check = now;

	/* expiry needs no query */
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->hello_done && c->phase == PHASE_LIVE)
		{
			if (c->token_expires <= now)
				client_fail(c, "token_expired", "this token has expired",
							LK_CLOSE_UNAUTHORIZED);
			else
				n++;
		}
	}
	if (n == 0)
		return;

	tc.ids = palloc(sizeof(int64) * n);
	tc.n = 0;
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->hello_done && c->phase == PHASE_LIVE)
			tc.ids[tc.n++] = c->token_id;
	}
	qsort(tc.ids, tc.n, sizeof(int64), cmp_int64);
	n = 0;
	for (int i = 0; i < tc.n; i++)
		if (i == 0 || tc.ids[i] != tc.ids[n - 1])
			tc.ids[n++] = tc.ids[i];
	tc.n = n;
	tc.revoked = palloc0(sizeof(bool) * n);
	tc.expired = palloc0(sizeof(bool) * n);
	if (!run_step("checking tokens", token_check_step, &tc, false))
		return;
	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);
		int64	   *hit;

		if (!c->hello_done || c->phase != PHASE_LIVE)
			continue;
		hit = bsearch(&c->token_id, tc.ids, tc.n, sizeof(int64), cmp_int64);
		if (hit == NULL)
			continue;
		if (tc.revoked[hit - tc.ids])
			client_fail(c, "token_revoked", "this token has been revoked",
						LK_CLOSE_UNAUTHORIZED);
		else if (tc.expired[hit - tc.ids])
			client_fail(c, "token_expired", "this token has expired",
						LK_CLOSE_UNAUTHORIZED);
	}
}

/*
 * housekeeping
 *		Hello deadline, heartbeats, token validity, slot publication.
 */
static void
housekeeping(void)
{
	TimestampTz now = GetCurrentTimestamp();
	dlist_iter	it;
	char	   *now_json = NULL;
	long		lag_ms = (long) livekpi_apply_lag_ms();
	bool		publish = TimestampDifferenceExceeds(last_slot_publish, now, 250);

	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (c->phase == PHASE_AWAIT_HELLO && c->request == NULL &&
			TimestampDifferenceExceeds(c->connected_at, now, LK_HELLO_DEADLINE_MS))
		{
			client_fail(c, "bad_message", "no hello within 10 s", LK_CLOSE_POLICY);
			continue;
		}
		if (client_is_live(c) && livekpi_heartbeat_interval > 0 && c->qhead == NULL &&
			TimestampDifferenceExceeds(c->last_heartbeat, now,
									   livekpi_heartbeat_interval * 1000))
		{
			char		buf[256];

			if (now_json == NULL)
				now_json = timestamp_json(now);
			snprintf(buf, sizeof(buf),
					 "{\"type\":\"heartbeat\",\"seq\":" INT64_FORMAT
					 ",\"server_time\":\"%s\",\"lag_ms\":%ld}",
					 c->pos, now_json, lag_ms);
			client_enqueue_text(c, OUT_STALE, buf);
			c->last_heartbeat = now;
		}
		if (publish)
			slot_publish(c);
	}
	if (publish)
		last_slot_publish = now;
	check_tokens(now);
	publish_stats();
}

/* ----------------------------------------------------------------
 * Context and main loop
 * ----------------------------------------------------------------
 */

/*
 * raise_fd_limit
 *		The postgres user's soft open-files limit is often 1024: raise it to
 *		the hard limit, and cap the clients we accept by what we got.
 */
static int
raise_fd_limit(void)
{
	struct rlimit rl;
	int			avail;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
	{
		if (rl.rlim_cur < rl.rlim_max)
		{
			rl.rlim_cur = rl.rlim_max;
			if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
				getrlimit(RLIMIT_NOFILE, &rl);
		}
		avail = rl.rlim_cur == RLIM_INFINITY ? INT_MAX : (int) Min(rl.rlim_cur, (rlim_t) INT_MAX);
	}
	else
		avail = 1024;
	/* leave room for the server's own files and the listener */
	return Max(Min(livekpi_max_clients, avail - 64), 1);
}

static void
adopt_fd(int fd, const char *what)
{
	lws_sock_file_fd_type u;

	if (fd < 0)
		return;
	u.filefd = (lws_filefd_type) (intptr_t) fd;
	if (lws_adopt_descriptor_vhost(first_vhost, LWS_ADOPT_RAW_FILE_DESC, u,
								   LK_SUBPROTOCOL, NULL) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("livekpi push worker could not watch the %s", what)));
}

/*
 * create_listener
 *		One lws context, one vhost per listen address ("*" means all).
 */
static void
create_listener(void)
{
	struct lws_context_creation_info info;
	char	   *list;
	char	   *tok;
	char	   *saveptr = NULL;
	bool		tls = livekpi_ssl_cert_file && livekpi_ssl_cert_file[0] &&
		livekpi_ssl_key_file && livekpi_ssl_key_file[0];
	int			fds = max_clients_effective + 64;

	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_to_elog);

	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8;
	if (tls)
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.count_threads = 1;
	info.fd_limit_per_thread = (unsigned int) fds;
	info.pt_serv_buf_size = 32 * 1024;
	info.max_http_header_data = 4096;
	info.timeout_secs = 20;
	info.retry_and_idle_policy = &push_retry;
	info.gid = -1;
	info.uid = -1;
	lws_ctx = lws_create_context(&info);
	if (lws_ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("livekpi push worker could not create its listener context")));

	list = pstrdup(livekpi_listen_addresses);
	for (tok = strtok_r(list, ",", &saveptr); tok; tok = strtok_r(NULL, ",", &saveptr))
	{
		struct lws_vhost *vh;
		char		name[64];

		while (*tok == ' ')
			tok++;
		while (*tok && tok[strlen(tok) - 1] == ' ')
			tok[strlen(tok) - 1] = '\0';
		if (*tok == '\0')
			continue;
		memset(&info, 0, sizeof(info));
		info.port = livekpi_port;
		info.iface = (strcmp(tok, "*") == 0 || strcmp(tok, "0.0.0.0") == 0) ? NULL : tok;
		info.protocols = push_protocols;
		snprintf(name, sizeof(name), "livekpi-%s", tok);
		info.vhost_name = name;
		info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;

		/*
		 * lws with IPv6 on binds an IPv4 literal as the IPv6 wildcard:
		 * listen on IPv4 only for IPv4 addresses (and "0.0.0.0").
		 */
		if (strchr(tok, ':') == NULL && strcmp(tok, "*") != 0)
			info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
		if (tls)
		{
			/* TLS only: no plain-text redirect on the same port */
			info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
			info.ssl_cert_filepath = livekpi_ssl_cert_file;
			info.ssl_private_key_filepath = livekpi_ssl_key_file;
		}
		info.retry_and_idle_policy = &push_retry;
		vh = lws_create_vhost(lws_ctx, &info);
		if (vh == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("livekpi push worker could not listen on %s port %d", tok, livekpi_port),
					 errhint("Check livekpi.listen_addresses, livekpi.port%s and the server log.",
							 tls ? ", livekpi.ssl_cert_file, livekpi.ssl_key_file" : "")));
		if (first_vhost == NULL)
			first_vhost = vh;
	}
	if (first_vhost == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("livekpi.listen_addresses names no address")));

	adopt_fd(livekpi_shared->push_wakeup_fd, "wake-up eventfd");
	adopt_fd(postmaster_alive_fds[POSTMASTER_FD_WATCH], "postmaster");
	lws_sul_schedule(lws_ctx, 0, &tick_sul, tick_cb, LK_TICK_USEC);
	lws_sul_schedule(lws_ctx, 0, &replay_sul, replay_cb, LK_TICK_USEC);
}

static void
push_shutdown(int code, Datum arg)
{
	if (lws_ctx)
	{
		struct lws_context *ctx = lws_ctx;

		lws_ctx = NULL;
		lws_context_destroy(ctx);
	}
	if (livekpi_shared)
	{
		SpinLockAcquire(&livekpi_shared->mutex);
		if (livekpi_shared->push_pid == MyProcPid)
		{
			livekpi_shared->push_pid = 0;
			livekpi_shared->clients = 0;
			strlcpy(livekpi_shared->push_state, "stopped", sizeof(livekpi_shared->push_state));
		}
		SpinLockRelease(&livekpi_shared->mutex);
	}
}

/*
 * livekpi_push_main
 *		Entry point of the push worker.
 */
void
livekpi_push_main(Datum main_arg)
{
	char		sharedir[MAXPGPATH];

	pqsignal(SIGTERM, push_sigterm);
	pqsignal(SIGHUP, push_sighup);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(livekpi_database, NULL, 0);
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "livekpi push worker", PGC_USERSET, PGC_S_OVERRIDE);
	pgstat_report_appname("livekpi push worker");

	get_share_path(my_exec_path, sharedir);
	snprintf(www_dir, sizeof(www_dir), "%s/livekpi/www", sharedir);

	round_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi push round",
									  ALLOCSET_DEFAULT_SIZES);
	write_scratch = MemoryContextAlloc(TopMemoryContext, LWS_PRE + LK_WRITE_CHUNK);

	max_clients_effective = raise_fd_limit();
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->push_pid = MyProcPid;
	livekpi_shared->max_clients_effective = max_clients_effective;
	livekpi_shared->clients = 0;
	SpinLockRelease(&livekpi_shared->mutex);
	publish_state("starting");
	before_shmem_exit(push_shutdown, (Datum) 0);

	/* slots left by a crashed predecessor */
	for (int i = 0; i < livekpi_push_shared->nslots; i++)
		slot_release(i);

	create_listener();
	publish_state("listening");
	ereport(LOG,
			(errmsg("livekpi push worker listening on %s port %d%s (max %d clients)",
					livekpi_listen_addresses, livekpi_port,
					(livekpi_ssl_cert_file && livekpi_ssl_cert_file[0]) ? " with TLS" : "",
					max_clients_effective)));

	while (!got_sigterm)
	{
		lws_service(lws_ctx, 0);

		if (pm_dead || !PostmasterIsAlive())
			proc_exit(1);
		if (got_sigterm)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		ResetLatch(MyLatch);

		if (requests_pending)
			process_requests();
		/* a standby learns of new batches from replay (SPEC section 10) */
		if (push_standby_replayed_new_wal())
			wake_pending = true;
		if (wake_pending || TimestampDifferenceExceeds(last_poll, GetCurrentTimestamp(), 1000))
		{
			wake_pending = false;
			last_poll = GetCurrentTimestamp();
			poll_batches();
			push_standby_publish_seq(broadcast_seq);
		}
		if (catchup_pending)
			catch_up();
		flush_all_coalesced();
		send_snapshots();
		if (tick_pending)
		{
			tick_pending = false;
			housekeeping();
		}
		MemoryContextReset(round_cxt);
	}
	publish_state("stopping");
	proc_exit(0);
}
