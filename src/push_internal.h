/*-------------------------------------------------------------------------
 *
 * push_internal.h
 *	  What the files of the push worker share, and nothing else sees.
 *
 *	  push_worker.c   the loop: registration, shared memory and status,
 *	                  signals, the listener, the main loop, its contexts
 *	  push_event.c    the libwebsockets callbacks (bytes in, bytes out)
 *	  push_http.c     HTTP: routing, static files, /healthz, /metrics,
 *	                  handshake checks (RFC 6455, Origin)
 *	  push_session.c  the session state machine of a WebSocket client
 *	  push_queue.c    the per-client queue, coalescing, backpressure
 *	  push_stream.c   batches from delta_log to clients, snapshots
 *	  push_sql.c      the only user of SPI: one transaction per step
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_internal.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_PUSH_INTERNAL_H
#define LIVEKPI_PUSH_INTERNAL_H

#include <libwebsockets.h>

#include "lib/ilist.h"
#include "utils/timestamp.h"

#include "protocol.h"
#include "push.h"
#include "push_queue.h"

#define LK_SUBPROTOCOL			"livekpi.v1"
#define LK_STREAM_PATH			"/v1/stream"
#define LK_TICK_USEC			(100 * 1000)
/* on a hot standby with clients: how often the replay position is read */
#define LK_REPLAY_POLL_USEC		(5 * 1000)
#define LK_HELLO_DEADLINE_MS	10000
#define LK_TOKEN_RECHECK_MS		500
#define LK_WRITE_CHUNK			(64 * 1024)
/*
 * libwebsockets' per-connection receive buffer: client messages are small
 * and a longer one is assembled from pieces (ws_receive), so a connection
 * costs 4 kB here instead of LK_MAX_MESSAGE
 */
#define LK_RX_BUFFER			4096
#define LK_BATCHES_PER_READ		256
/* rows of delta_log fetched (and held) at once, whatever the batch size */
#define LK_FETCH_ROWS			1000
/*
 * a read of delta_log (one query) ends at the first batch end past this
 * many rows: the executor keeps what it detoasted for a query's batches
 * until the query ends
 */
#define LK_ROWS_PER_READ		20000
/* hellos and subscribes checked in one round's transaction */
#define LK_REQUESTS_PER_ROUND	256
#define LK_SOCKET_SNDBUF		(128 * 1024)
/* listener retries after a failure to listen: from 1 s, doubling, to 60 s */
#define LK_LISTEN_RETRY_MIN_MS	1000
#define LK_LISTEN_RETRY_MAX_MS	60000

/* the library's version, for livekpi_build_info in /metrics */
#ifndef LIVEKPI_LIBRARY_VERSION
#define LIVEKPI_LIBRARY_VERSION	"1.1"
#endif

/* WebSocket close codes of SPEC section 7 */
#define LK_CLOSE_PROTOCOL		1002
#define LK_CLOSE_UNSUPPORTED	1003
#define LK_CLOSE_INVALID		1007
#define LK_CLOSE_POLICY			1008
#define LK_CLOSE_TOO_BIG		1009
#define LK_CLOSE_INTERNAL		1011
#define LK_CLOSE_TRY_LATER		1013
#define LK_CLOSE_UNAUTHORIZED	4401
#define LK_CLOSE_FORBIDDEN		4403

/*
 * The states of a connection (push_session.c has the transition table).
 */
typedef enum SessState
{
	SESS_HTTP = 0,				/* a plain HTTP request, not a WebSocket */
	SESS_AWAIT_HELLO,			/* connected, nothing received yet */
	SESS_HELLO_CHECK,			/* hello received, checked next SQL round */
	SESS_SNAPSHOT_WAIT,			/* welcomed; a snapshot is due */
	SESS_LIVE,					/* gets every batch after pos */
	SESS_SUBSCRIBE_CHECK,		/* subscribe received, checked next round */
	SESS_CLOSING,				/* error queued; closes once it is out */
	SESS_NUM_STATES
} SessState;

typedef enum SessEvent
{
	EV_HELLO = 0,				/* client sent hello */
	EV_SUBSCRIBE,				/* client sent subscribe */
	EV_ACCEPT_SNAPSHOT,			/* request accepted, snapshot needed */
	EV_ACCEPT_RESUME,			/* hello accepted, resume from its seq */
	EV_SNAPSHOT_QUEUED,			/* snapshot queued: live from its seq */
	EV_RESYNC,					/* client must start over (resync sent) */
	EV_FAIL,					/* error sent: close */
	SESS_NUM_EVENTS
} SessEvent;

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

/*
 * One connection, the per-session user data of lws.  Everything here is
 * malloc'd (lws frees the struct itself): it lives as long as the socket.
 */
typedef struct PushClient
{
	dlist_node	node;			/* all_clients, or http_waiting */
	struct lws *wsi;
	SessState	state;
	int			slot;			/* in livekpi_push_shared, or -1 */
	TimestampTz connected_at;
	char		peer[LK_PEER_LEN];

	/* inbound message being assembled */
	char	   *inbuf;
	size_t		inlen;

	/* the hello or subscribe waiting for the SQL round */
	LkClientMessage *request;

	/* after hello */
	int64		token_id;
	char		label[LK_LABEL_LEN];
	TimestampTz token_expires;
	bool		token_all;
	int			token_nprops;
	char	  **token_props;	/* malloc'd, sorted */
	ClientScope scope;

	/* stream position: everything in scope up to pos is queued */
	int64		pos;
	uint8		stream_mode;	/* for the batch being read (push_stream.c) */
	TimestampTz last_heartbeat;

	LkQueue		q;

	/* the close that follows the error message */
	int			close_code;
	char		close_reason[64];

	/* HTTP request waiting for a token check (/metrics from afar) */
	char	   *http_token;
	bool		http_pending;

	/* HTTP response (SESS_HTTP) */
	char	   *http_body;
	size_t		http_len;
	int			http_status;
	const char *http_type;
} PushClient;

/* One row of a batch as read from delta_log. */
typedef struct BatchRow
{
	uint8		view;			/* index into lk_view_names */
	bool		is_delete;
	char	   *json;
	char	   *prop;			/* property key text, NULL for portfolio */
	char	   *day;			/* booking_daily's day */
	char	   *key;			/* the key object as text */
} BatchRow;

/* A batch of delta_log as it is read: the header, then its rows in pieces. */
typedef struct Batch
{
	int64		seq;
	bool		barrier;
	char	   *applied_at;
	char	   *committed_at;
} Batch;

/*
 * Where a read of delta_log goes (push_stream.c).  A batch of any size is
 * streamed: begin, then its rows LK_FETCH_ROWS at a time (in memory that is
 * reset after each call), then end; rows come ordered by kind (upserts
 * first) and view.  begin returns false to stop the read.
 */
typedef struct BatchSink
{
	bool		(*begin) (struct BatchSink *sink, const Batch *b);
	void		(*rows) (struct BatchSink *sink, const Batch *b, const BatchRow *rows, int n);
	void		(*end) (struct BatchSink *sink, const Batch *b);
	void	   *arg;
} BatchSink;

/* A read of delta_log: batches (after, upto] */
typedef struct BatchRead
{
	int64		after;
	int64		upto;
	uint32		views;			/* LK_VIEW_* bits: the rows of other views are not read */
	int64		nbatches;		/* batches handed to the sink */
	int64		last;			/* seq of the last of them */
	int64		state_seq;
	bool		state_ok;
} BatchRead;

typedef struct SnapshotJob
{
	ClientScope *scope;
	int64		seq;
	char	   *json;			/* in lk_stream_cxt */
} SnapshotJob;

/* A hello or subscribe checked by the SQL round */
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
	char	  **props;			/* canonical, sorted, lk_loop_cxt */
	char	   *scope_json;
	char		daily_from[11];
	char		daily_to[11];
	int64		latest;
	bool		resumed;
	int64		resume_pos;
	TimestampTz now;
} RequestJob;

/* Everything one round's SQL transaction checks */
typedef struct RoundChecks
{
	int			njobs;
	RequestJob *jobs;
	int			nmetrics;
	PushClient **metrics;		/* /metrics requests with a bearer token */
	bool	   *metrics_ok;
	int			ntokens;		/* open connections' tokens, sorted */
	int64	   *token_ids;
	bool	   *revoked;
	bool	   *expired;
} RoundChecks;

/* push_worker.c: the loop's state */
extern dlist_head all_clients;
extern dlist_head http_waiting;
extern int	nclients;
extern int	max_clients_effective;
extern bool requests_pending;
extern bool snapshots_pending;
extern bool catchup_pending;
extern volatile bool wake_pending;
extern volatile bool pm_dead;
extern unsigned char *write_scratch;
extern MemoryContext lk_loop_cxt;
extern MemoryContext lk_stream_cxt;
extern char server_epoch[LK_MAX_EPOCH + 1];
extern char key_type[64];
extern int64 broadcast_seq;
extern int64 stat_messages;
extern int64 stat_bytes;
extern char www_dir[MAXPGPATH];
extern bool lk_database_missing;
extern bool lk_extension_ready;

extern int	slot_acquire(PushClient *c);
extern void slot_release(int i);
extern void slot_publish(PushClient *c);
extern void set_push_error(const char *msg);
extern void publish_stats(void);

/* push_event.c */
extern const struct lws_protocols push_protocols[];
extern void lws_log_to_elog(int level, const char *line);

/* push_http.c */
extern int	handle_http(struct lws *wsi, PushClient *c, const char *uri);
extern int	http_write_response(struct lws *wsi, PushClient *c);
extern void http_prepare(PushClient *c, int status, const char *type, const char *body);
extern void http_answer_metrics(PushClient *c, bool authorized);
extern int	handshake_check(struct lws *wsi);
extern void origins_init(void);

/* push_session.c */
extern bool sess_event(PushClient *c, SessEvent ev);
extern bool sess_welcomed(const PushClient *c);
extern void client_fail(PushClient *c, const char *code, const char *message, int close_code);
extern void client_enqueue(PushClient *c, OutMsg *m);
extern void client_enqueue_text(PushClient *c, OutKind kind, const char *text);
extern void client_drop_pending(PushClient *c);
extern void client_message(PushClient *c, LkClientMessage *msg);
extern void client_release(PushClient *c);
extern void send_resync(PushClient *c, int64 seq);
extern void process_requests(void);
extern void housekeeping(void);

/* push_stream.c */
extern void poll_batches(void);
extern void catch_up(void);
extern void flush_all_coalesced(void);
extern void send_snapshots(void);
extern void snap_cache_clear(void);

/* push_sql.c */
extern bool sql_read_state(BatchRead *br);
extern bool sql_read_batches(BatchRead *br, BatchSink *sink);
extern bool sql_snapshot(SnapshotJob *job);
extern bool sql_round_checks(RoundChecks *rc);
extern void sql_session_setup(void);

#endif							/* LIVEKPI_PUSH_INTERNAL_H */
