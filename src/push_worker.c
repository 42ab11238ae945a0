/*-------------------------------------------------------------------------
 *
 * push_worker.c
 *	  The push worker: a background worker that serves HTTP and WebSocket
 *	  (SPEC section 7) with libwebsockets from inside PostgreSQL.
 *
 * This file owns the loop: registration, the worker's shared memory
 * (client slots) and what it publishes in livekpi.status, signals, the
 * listener (one lws context, one vhost per address), and the main loop
 * with its memory contexts.  The other concerns are in their own files
 * (see push_internal.h): the lws callbacks (push_event.c), HTTP
 * (push_http.c), the session state machine (push_session.c), the client
 * queue (push_queue.c), the stream (push_stream.c) and SQL (push_sql.c).
 *
 * Structure.  lws runs its own poll loop (Debian's 4.1.6 has no external
 * poll support); the eventfd livekpi_shared->push_wakeup_fd, written by
 * the apply worker after each batch commits, by revoke_token() at commit
 * and by our own signal handlers, and the postmaster-death pipe are
 * adopted into that loop as raw file descriptors, and a 100 ms lws timer
 * bounds every wait.  Everything that needs SQL runs between two
 * lws_service() calls, in short transactions (push_sql.c), never held
 * across one.
 *
 * Memory.  Each round of the loop runs in lk_loop_cxt, reset at the end
 * of every round; what is read from delta_log lives in lk_stream_cxt,
 * reset after each piece.  What outlives a round is malloc'd and owned
 * by a connection (its queue, scope and token: see push_queue.c), so the
 * worker's memory is bounded by clients x client_buffer_limit plus a
 * fixed working set (LK_FETCH_ROWS rows, one delta message of at most
 * client_buffer_limit per scope while a batch is read, one snapshot per
 * scope).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <unistd.h>

#include "access/xact.h"
#include "access/heapam.h"
#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_database.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "postmaster/postmaster.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "livekpi.h"
#include "push_internal.h"
#include "push_standby.h"

LkPushShared *livekpi_push_shared = NULL;

/* the loop's state, shared by the push_*.c files */
dlist_head	all_clients = DLIST_STATIC_INIT(all_clients);
dlist_head	http_waiting = DLIST_STATIC_INIT(http_waiting);
int			nclients = 0;
int			max_clients_effective = 0;
bool		requests_pending = false;
bool		snapshots_pending = false;	/* some client may want a snapshot */
bool		catchup_pending = false;
volatile bool wake_pending = true;
volatile bool pm_dead = false;
unsigned char *write_scratch = NULL;
MemoryContext lk_loop_cxt = NULL;
MemoryContext lk_stream_cxt = NULL;
char		server_epoch[LK_MAX_EPOCH + 1] = "";
char		key_type[64] = "text";
int64		broadcast_seq = -1; /* newest batch dispatched to live clients */
int64		stat_messages = 0;	/* published to livekpi_shared */
int64		stat_bytes = 0;
char		www_dir[MAXPGPATH];
bool		lk_database_missing = false;	/* running without a database */
bool		lk_extension_ready = false; /* livekpi.state was readable */

static volatile sig_atomic_t got_sigterm = false;
static volatile bool tick_pending = true;
static struct lws_context *lws_ctx = NULL;
static struct lws_vhost *first_vhost = NULL;
static lws_sorted_usec_list_t tick_sul;
static TimestampTz last_poll = 0;

static const lws_retry_bo_t push_retry = {
	.secs_since_valid_ping = 30,
	.secs_since_valid_hangup = 75,
};

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
		livekpi_push_shared->failed_starts = 0;
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

int
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

void
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

void
slot_publish(PushClient *c)
{
	LkClientSlot *slot;

	if (c->slot < 0)
		return;
	slot = &livekpi_push_shared->slots[c->slot];
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->label, c->label, sizeof(slot->label));
	slot->last_seq = sess_welcomed(c) ? c->pos : -1;
	slot->queued_bytes = (int64) c->q.queued_bytes;
	SpinLockRelease(&slot->mutex);
}

/*
 * set_push_error
 *		Publish the last error in livekpi.status (and the log).
 */
void
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

void
publish_stats(void)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->clients = nclients;
	livekpi_shared->messages_sent = stat_messages;
	livekpi_shared->bytes_sent = stat_bytes;
	SpinLockRelease(&livekpi_shared->mutex);
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

/*
 * replay_cb
 *		On a hot standby no apply worker writes the wake-up eventfd: while
 *		clients are connected, look at the replay position every
 *		LK_REPLAY_POLL_USEC and wake the loop when it moved, so that a
 *		replayed batch reaches clients within a few milliseconds (SPEC
 *		section 10).  Reading the position is a spinlock, no SQL.
 */
static lws_sorted_usec_list_t replay_sul;
static XLogRecPtr last_replay = InvalidXLogRecPtr;

static void
replay_cb(lws_sorted_usec_list_t *sul)
{
	if (!RecoveryInProgress())
	{
		wake_pending = true;	/* promoted: the apply worker takes over */
		return;
	}
	if (nclients > 0)
	{
		XLogRecPtr	r = GetXLogReplayRecPtr(NULL);

		if (r != last_replay)
		{
			last_replay = r;
			wake_pending = true;
		}
	}
	lws_sul_schedule(lws_ctx, 0, &replay_sul, replay_cb, LK_REPLAY_POLL_USEC);
}

static void
tick_cb(lws_sorted_usec_list_t *sul)
{
	tick_pending = true;
	lws_sul_schedule(lws_ctx, 0, &tick_sul, tick_cb, LK_TICK_USEC);
}

/* ----------------------------------------------------------------
 * Context and main loop
 * ----------------------------------------------------------------
 */

/*
 * raise_fd_limit
 *		The postgres user's soft open-files limit is often 1024: set it to
 *		what max_clients needs beside the server's own files (up to the hard
 *		limit), and cap the clients we accept by what we got.  Not past what
 *		is needed: libwebsockets sizes its fd table by this limit, and a hard
 *		limit of "unlimited" would make that table absurd.
 */
static int
raise_fd_limit(void)
{
	struct rlimit rl;
	int			avail;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
	{
		rlim_t		want = (rlim_t) livekpi_max_clients + 64 + max_files_per_process;

		if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
			want = rl.rlim_max;
		if (rl.rlim_cur != want)
		{
			rl.rlim_cur = want;
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

static bool create_listener(char *why, size_t whylen);

/*
 * listener_destroy
 *		Undo a partly made listener, so that the next attempt starts clean.
 */
static void
listener_destroy(void)
{
	if (lws_ctx)
	{
		struct lws_context *ctx = lws_ctx;

		lws_ctx = NULL;
		lws_context_destroy(ctx);
	}
	first_vhost = NULL;
}

/*
 * probe_listen
 *		Bind a socket to (iface, livekpi.port) and let it go, to learn why
 *		listening fails (errno) before libwebsockets tries: lws only says
 *		that it failed.  iface NULL means every address.
 */
static bool
probe_listen(const char *iface, char *why, size_t whylen)
{
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	char		port[16];
	int			rc;
	bool		ok = false;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%d", livekpi_port);
	rc = getaddrinfo(iface, port, &hints, &res);
	if (rc != 0)
	{
		snprintf(why, whylen, "could not resolve \"%s\": %s", iface ? iface : "*",
				 gai_strerror(rc));
		return false;
	}
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
	{
		int			fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		int			one = 1;

		if (fd < 0)
			continue;
		(void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			(void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1) != 0)
		{
			snprintf(why, whylen, "could not listen on %s port %d: %s",
					 iface ? iface : "*", livekpi_port, strerror(errno));
			close(fd);
			ok = false;
			break;
		}
		close(fd);
		ok = true;
	}
	freeaddrinfo(res);
	if (!ok && why[0] == '\0')
		snprintf(why, whylen, "could not listen on %s port %d", iface ? iface : "*",
				 livekpi_port);
	return ok;
}

/*
 * database_exists
 *		Whether livekpi.database exists, read from the shared catalog
 *		pg_database (the worker is then connected to no database).
 */
static bool
database_exists(void)
{
	bool		found = false;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	/*
	 * A plain heap scan, as autovacuum's launcher does: without a database
	 * the indexes of pg_database cannot be opened (their relcache entries
	 * are read from pg_class).
	 */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && (tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		found = strcmp(NameStr(db->datname), livekpi_database) == 0;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}

/*
 * wait_or_exit
 *		Sleep ms on the latch (signals wake it); exit on SIGTERM.
 */
static void
wait_or_exit(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	if (got_sigterm)
		proc_exit(0);
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/*
 * listen_with_backoff
 *		Make the listener, and while that fails (the port is taken, by
 *		another cluster say), say why once per distinct reason, publish it
 *		in livekpi.status (push_last_error) and retry from 1 s, doubling,
 *		up to once a minute, instead of exiting and being restarted every
 *		5 s with a log line each time.
 */
static void
listen_with_backoff(void)
{
	char		why[LIVEKPI_ERROR_LEN];
	char		last[LIVEKPI_ERROR_LEN] = "";
	long		delay = LK_LISTEN_RETRY_MIN_MS;

	for (;;)
	{
		why[0] = '\0';
		if (create_listener(why, sizeof(why)))
			break;
		if (strcmp(why, last) != 0)
		{
			ereport(LOG,
					(errmsg("livekpi push worker %s", why),
					 errhint("Another server (another cluster?) may be using this address and port: "
							 "set livekpi.port (or livekpi.listen_addresses) to a free one.  "
							 "The worker retries with a growing delay, up to once a minute.")));
			strlcpy(last, why, sizeof(last));
		}
		else
			elog(DEBUG1, "livekpi push worker %s", why);
		set_push_error(why);
		publish_state("cannot listen");
		wait_or_exit(delay);
		delay = Min(delay * 2, LK_LISTEN_RETRY_MAX_MS);
	}
	if (last[0])
		ereport(LOG, (errmsg("livekpi push worker: the listener works again")));
}

/*
 * create_listener
 *		One lws context, one vhost per listen address ("*" means all).
 */
static bool
create_listener(char *why, size_t whylen)
{
	struct lws_context_creation_info info;
	char	   *list;
	char	   *tok;
	char	   *saveptr = NULL;
	bool		tls = livekpi_ssl_cert_file && livekpi_ssl_cert_file[0] &&
		livekpi_ssl_key_file && livekpi_ssl_key_file[0];

	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_to_elog);

	memset(&info, 0, sizeof(info));
	info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8;
	if (tls)
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.count_threads = 1;

	/*
	 * No fd_limit_per_thread: below the open-files limit it switches
	 * libwebsockets 4.1 to a linear search of every connection for each
	 * ready socket (wsi_from_fd), which made a fan-out to 10,000 clients
	 * quadratic.  max_clients_effective is enforced on accept instead.
	 */
	info.pt_serv_buf_size = 32 * 1024;
	info.max_http_header_data = 4096;
	info.timeout_secs = 20;
	info.retry_and_idle_policy = &push_retry;
	info.gid = -1;
	info.uid = -1;
	lws_ctx = lws_create_context(&info);
	if (lws_ctx == NULL)
	{
		snprintf(why, whylen, "could not create the listener context");
		return false;
	}

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
		if (!probe_listen(info.iface, why, whylen))
		{
			listener_destroy();
			return false;
		}
		vh = lws_create_vhost(lws_ctx, &info);
		if (vh == NULL)
		{
			snprintf(why, whylen, "could not listen on %s port %d%s", tok, livekpi_port,
					 tls ? " (check livekpi.ssl_cert_file and livekpi.ssl_key_file)" : "");
			listener_destroy();
			return false;
		}
		if (first_vhost == NULL)
			first_vhost = vh;
	}
	pfree(list);
	if (first_vhost == NULL)
	{
		snprintf(why, whylen, "livekpi.listen_addresses names no address");
		listener_destroy();
		return false;
	}

	adopt_fd(livekpi_shared->push_wakeup_fd, "wake-up eventfd");
	adopt_fd(postmaster_alive_fds[POSTMASTER_FD_WATCH], "postmaster");
	lws_sul_schedule(lws_ctx, 0, &tick_sul, tick_cb, LK_TICK_USEC);
	if (RecoveryInProgress())
		lws_sul_schedule(lws_ctx, 0, &replay_sul, replay_cb, LK_REPLAY_POLL_USEC);
	return true;
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
 * return_free_memory
 *		A burst of connections and their parsed messages (up to 64 kB
 *		each) leaves glibc's heap large after they are freed; give the free
 *		part back to the system once a second so that the worker's RSS
 *		follows its clients, not its busiest moment (10,000 clients of
 *		bench/push_bench.sh: 258 MB before, 243 MB with it).
 */
static void
return_free_memory(void)
{
#ifdef __GLIBC__
	static TimestampTz last_trim = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (!TimestampDifferenceExceeds(last_trim, now, 1000))
		return;
	last_trim = now;
	malloc_trim(0);
#endif
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

	/*
	 * A start that did not reach its database connection died in
	 * InitPostgres, most likely because livekpi.database does not exist:
	 * then this one connects to no database, says so once, serves /healthz
	 * (503) and waits for the database instead of failing every 5 s.
	 */
	lk_database_missing = livekpi_push_shared->failed_starts > 0;
	livekpi_push_shared->failed_starts++;
	BackgroundWorkerInitializeConnection(lk_database_missing ? NULL : livekpi_database, NULL, 0);
	if (lk_database_missing && database_exists())
	{
		/* it was something else, and it is gone: start normally */
		livekpi_push_shared->failed_starts = 0;
		proc_exit(1);
	}
	if (!lk_database_missing)
		livekpi_push_shared->failed_starts = 0;
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "livekpi push worker", PGC_USERSET, PGC_S_OVERRIDE);
	pgstat_report_appname("livekpi push worker");

	get_share_path(my_exec_path, sharedir);
	snprintf(www_dir, sizeof(www_dir), "%s/livekpi/www", sharedir);

	lk_loop_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi push round",
										ALLOCSET_DEFAULT_SIZES);
	lk_stream_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi push stream",
										  ALLOCSET_DEFAULT_SIZES);
	sql_session_setup();
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

	if (lk_database_missing)
	{
		char		msg[LIVEKPI_ERROR_LEN];

		snprintf(msg, sizeof(msg), "livekpi.database \"%s\" does not exist", livekpi_database);
		ereport(LOG,
				(errmsg("livekpi push worker: %s", msg),
				 errhint("Create the database or set livekpi.database and restart the server.  "
						 "Until then /healthz answers 503 and the stream is refused.")));
		set_push_error(msg);
	}

	origins_init();
	listen_with_backoff();
	publish_state(lk_database_missing ? "no database" : "listening");
	ereport(LOG,
			(errmsg("livekpi push worker listening on %s port %d%s (max %d clients)",
					livekpi_listen_addresses, livekpi_port,
					(livekpi_ssl_cert_file && livekpi_ssl_cert_file[0]) ? " with TLS" : "",
					max_clients_effective)));

	while (!got_sigterm)
	{
		MemoryContextSwitchTo(lk_loop_cxt);
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

		process_requests();
		if (lk_database_missing)
		{
			/* check once in a while whether the database came */
			if (TimestampDifferenceExceeds(last_poll, GetCurrentTimestamp(), 5000))
			{
				last_poll = GetCurrentTimestamp();
				if (database_exists())
				{
					ereport(LOG,
							(errmsg("livekpi push worker: livekpi.database \"%s\" exists now; restarting",
									livekpi_database)));
					livekpi_push_shared->failed_starts = 0;
					proc_exit(1);
				}
			}
		}
		else if (wake_pending || TimestampDifferenceExceeds(last_poll, GetCurrentTimestamp(), 1000))
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
			return_free_memory();
		}
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(lk_loop_cxt);
	}
	publish_state("stopping");
	proc_exit(0);
}
