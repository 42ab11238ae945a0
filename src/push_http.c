/*-------------------------------------------------------------------------
 *
 * push_http.c
 *	  The HTTP side of the listener (SPEC section 7): routing, the
 *	  dashboard's static files, /healthz, /metrics, and the checks of a
 *	  WebSocket handshake (RFC 6455 version and key, Origin).
 *
 * Everything here runs inside libwebsockets callbacks: nothing throws and
 * nothing touches the database.  /metrics from a non-loopback peer needs
 * a bearer token, which the next SQL round checks (push_session.c); the
 * answer is written from the HTTP_WRITEABLE callback.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "miscadmin.h"
#include "replication/slot.h"
#include "replication/walreceiver.h"
#include "storage/lwlock.h"

#include "http_rules.h"
#include "livekpi.h"
#include "push_internal.h"
#include "push_standby.h"

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

void
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
 *		The /healthz answer, from the workers' shared state (SPEC section
 *		7): 503 with the first reason that applies: livekpi.database does
 *		not exist, the extension is not installed there, the apply worker
 *		is not running, its slot is not streaming, the KPIs are stale, or
 *		it lags past max_lag.
 */
static int
health_body(char *buf, size_t len)
{
	pid_t		apply_pid;
	int64		last_seq;
	char		state[LIVEKPI_STATE_LEN];
	int			clients;
	bool		stale;
	bool		slot_ready;
	long		lag_ms = (long) livekpi_apply_lag_ms();
	bool		standby = RecoveryInProgress();
	const char *reason = NULL;
	char		esc[256];

	SpinLockAcquire(&livekpi_shared->mutex);
	apply_pid = livekpi_shared->apply_pid;
	last_seq = livekpi_shared->last_seq;
	strlcpy(state, livekpi_shared->apply_state, sizeof(state));
	clients = livekpi_shared->clients;
	stale = livekpi_shared->stale;
	slot_ready = livekpi_shared->slot_ready;
	SpinLockRelease(&livekpi_shared->mutex);

	if (lk_database_missing)
		reason = "livekpi.database does not exist";
	else if (!lk_extension_ready)
		reason = "the extension is not installed in livekpi.database";
	else if (standby)
	{
		/* no apply worker on a standby is normal: replay is what counts */
		if (stale)
			reason = "the KPIs are stale until livekpi.rebuild()";
		else if (lag_ms > (long) livekpi_max_lag * 1000L)
			reason = "the replay lag exceeds livekpi.max_lag";
	}
	else if (apply_pid == 0)
		reason = "the apply worker is not running";
	else if (!slot_ready || !(strcmp(state, "streaming") == 0 || strcmp(state, "applying") == 0 ||
							  strcmp(state, "idle") == 0 || strcmp(state, "paused") == 0))
		reason = "the apply worker is not streaming";
	else if (stale)
		reason = "the KPIs are stale until livekpi.rebuild()";
	else if (lag_ms > (long) livekpi_max_lag * 1000L)
		reason = "the apply lag exceeds livekpi.max_lag";
	lk_json_escape(state, esc, sizeof(esc));
	snprintf(buf, len,
			 "{\"status\":\"%s\",\"apply_worker\":%s,\"apply_state\":\"%s\","
			 "\"last_seq\":" INT64_FORMAT ",\"lag_ms\":%ld,\"clients\":%d,\"stale\":%s,"
			 "\"role\":\"%s\",\"seq_served\":" INT64_FORMAT "%s%s%s}\n",
			 reason ? "unhealthy" : "ok", apply_pid != 0 ? "true" : "false",
			 esc, last_seq, lag_ms, clients, stale ? "true" : "false",
			 standby ? "standby" : "primary", broadcast_seq,
			 reason ? ",\"reason\":\"" : "", reason ? reason : "", reason ? "\"" : "");
	return reason ? 503 : 200;
}

/*
 * slot_retained_wal
 *		Bytes of WAL the livekpi slot holds back (from its restart_lsn to
 *		the WAL written), read from shared memory as pg_replication_slots
 *		does; -1 when there is no slot.
 */
static int64
slot_retained_wal(void)
{
	XLogRecPtr	restart = InvalidXLogRecPtr;
	XLogRecPtr	end;

	if (ReplicationSlotCtl == NULL)
		return -1;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (!s->in_use || strcmp(NameStr(s->data.name), LIVEKPI_SLOT_NAME) != 0)
			continue;
		SpinLockAcquire(&s->mutex);
		restart = s->data.restart_lsn;
		SpinLockRelease(&s->mutex);
		break;
	}
	LWLockRelease(ReplicationSlotControlLock);
	if (XLogRecPtrIsInvalid(restart))
		return -1;
	end = RecoveryInProgress() ? GetXLogReplayRecPtr(NULL) : GetXLogWriteRecPtr();
	return end > restart ? (int64) (end - restart) : 0;
}

/*
 * metrics_body
 *		Prometheus text (docs/protocol.md lists every metric).  The batch
 *		counter and the duration histogram count the same thing, every
 *		batch the apply worker committed: livekpi_batches_total is the
 *		histogram's count; batches that changed KPI rows (and got a seq,
 *		livekpi.status.batches) are livekpi_delta_batches_total.  Lag is
 *		livekpi_apply_lag_ms(), the one definition livekpi.status and
 *		/healthz use too.
 */
static int
metrics_body(char *buf, size_t len)
{
	static const int bounds_ms[] = LIVEKPI_DURATION_BOUNDS_MS;
	int64		delta_batches,
				changes,
				rows,
				skipped,
				rejected,
				rebuilds,
				msgs,
				bytes,
				sum_us;
	int64		counts[LIVEKPI_DURATION_BUCKETS];
	int64		total = 0;
	int64		cumulative = 0;
	int64		retained = slot_retained_wal();
	int			clients;
	bool		paused,
				stale;
	bool		apply_error,
				push_error;
	double		lag = (double) livekpi_apply_lag_ms() / 1000.0;
	bool		standby = RecoveryInProgress();
	int			n;
	int			i;

	SpinLockAcquire(&livekpi_shared->mutex);
	delta_batches = livekpi_shared->batches;
	changes = livekpi_shared->changes_applied;
	rows = livekpi_shared->rows_written;
	skipped = livekpi_shared->rows_skipped;
	rejected = livekpi_shared->records_rejected;
	rebuilds = livekpi_shared->rebuilds;
	paused = livekpi_shared->paused;
	stale = livekpi_shared->stale;
	apply_error = livekpi_shared->last_error[0] != '\0';
	push_error = livekpi_shared->push_error[0] != '\0';
	msgs = livekpi_shared->messages_sent;
	bytes = livekpi_shared->bytes_sent;
	clients = livekpi_shared->clients;
	memcpy(counts, livekpi_shared->batch_duration_counts, sizeof(counts));
	sum_us = livekpi_shared->batch_duration_sum_us;
	SpinLockRelease(&livekpi_shared->mutex);
	for (i = 0; i < LIVEKPI_DURATION_BUCKETS; i++)
		total += counts[i];

	n = snprintf(buf, len,
				 "# HELP livekpi_build_info The running livekpi library.\n"
				 "# TYPE livekpi_build_info gauge\n"
				 "livekpi_build_info{version=\"%s\",pg_version=\"%s\"} 1\n"
				 "# HELP livekpi_batches_total Batches applied (every apply transaction; the histogram's count).\n"
				 "# TYPE livekpi_batches_total counter\n"
				 "livekpi_batches_total " INT64_FORMAT "\n"
				 "# HELP livekpi_delta_batches_total Batches that changed KPI rows and got a seq (livekpi.status.batches).\n"
				 "# TYPE livekpi_delta_batches_total counter\n"
				 "livekpi_delta_batches_total " INT64_FORMAT "\n"
				 "# HELP livekpi_changes_total Row changes applied.\n"
				 "# TYPE livekpi_changes_total counter\n"
				 "livekpi_changes_total " INT64_FORMAT "\n"
				 "# HELP livekpi_rows_written_total KPI rows written.\n"
				 "# TYPE livekpi_rows_written_total counter\n"
				 "livekpi_rows_written_total " INT64_FORMAT "\n"
				 "# HELP livekpi_rows_skipped_total Source rows skipped (values the KPI math cannot use).\n"
				 "# TYPE livekpi_rows_skipped_total counter\n"
				 "livekpi_rows_skipped_total " INT64_FORMAT "\n"
				 "# HELP livekpi_records_rejected_total Change records ignored (not from the capture trigger, or undecodable).\n"
				 "# TYPE livekpi_records_rejected_total counter\n"
				 "livekpi_records_rejected_total " INT64_FORMAT "\n"
				 "# HELP livekpi_rebuilds_total Rebuilds since the server started.\n"
				 "# TYPE livekpi_rebuilds_total counter\n"
				 "livekpi_rebuilds_total " INT64_FORMAT "\n"
				 "# HELP livekpi_errors Whether the last attempt of a worker failed (livekpi.status last_error, push_last_error).\n"
				 "# TYPE livekpi_errors gauge\n"
				 "livekpi_errors{worker=\"apply\"} %d\n"
				 "livekpi_errors{worker=\"push\"} %d\n"
				 "# HELP livekpi_paused 1 while livekpi.pause() is in effect.\n"
				 "# TYPE livekpi_paused gauge\n"
				 "livekpi_paused %d\n"
				 "# HELP livekpi_stale 1 while the KPIs are stale (until livekpi.rebuild()).\n"
				 "# TYPE livekpi_stale gauge\n"
				 "livekpi_stale %d\n"
				 "# HELP livekpi_slot_retained_wal_bytes WAL the livekpi slot holds back (-1: no slot).\n"
				 "# TYPE livekpi_slot_retained_wal_bytes gauge\n"
				 "livekpi_slot_retained_wal_bytes " INT64_FORMAT "\n"
				 "# HELP livekpi_lag_seconds Apply lag: 0 while all flushed WAL is read, else the time since it was.\n"
				 "# TYPE livekpi_lag_seconds gauge\n"
				 "livekpi_lag_seconds %.3f\n"
				 "# HELP livekpi_standby 1 on a hot standby (the push worker serves what it replayed).\n"
				 "# TYPE livekpi_standby gauge\n"
				 "livekpi_standby %d\n"
				 "# HELP livekpi_replay_lag_seconds On a standby: 0 while all WAL received is replayed and the receiver streams, else how far replay is behind (SPEC section 10).\n"
				 "# TYPE livekpi_replay_lag_seconds gauge\n"
				 "livekpi_replay_lag_seconds %.3f\n"
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
				 LIVEKPI_LIBRARY_VERSION, PG_VERSION,
				 total, delta_batches, changes, rows, skipped, rejected, rebuilds,
				 apply_error ? 1 : 0, push_error ? 1 : 0, paused ? 1 : 0, stale ? 1 : 0,
				 retained, lag, standby ? 1 : 0,
				 standby ? (double) livekpi_replay_lag_ms() / 1000.0 : 0.0, clients, msgs, bytes);
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
 *		Serve a file of the installed www/ directory (rel: a path
 *		lk_http_route accepted).  Anything but a regular file is 404.
 */
static int
serve_static(struct lws *wsi, const char *rel)
{
	char		path[MAXPGPATH];
	struct stat st;
	unsigned char hdr[1024];
	unsigned char *p = hdr;

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
int
handle_http(struct lws *wsi, PushClient *c, const char *uri)
{
	char		body[8192];
	char		rel[256];
	int			status;
	int			rc;

	c->state = SESS_HTTP;
	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
		return lws_return_http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, NULL) ? -1 : 0;

	switch (lk_http_route(uri, rel, sizeof(rel)))
	{
		case LK_ROUTE_HEALTHZ:
			status = health_body(body, sizeof(body));
			http_prepare(c, status, "application/json", body);
			break;
		case LK_ROUTE_METRICS:
			if (!peer_is_loopback(wsi))
			{
				char		auth[LK_MAX_TOKEN + 16];
				const char *token = NULL;

				/* others need "Authorization: Bearer <token>", checked by SQL */
				if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION) < (int) sizeof(auth) &&
					lws_hdr_copy(wsi, auth, sizeof(auth), WSI_TOKEN_HTTP_AUTHORIZATION) > 0)
					token = lk_bearer_token(auth);
				if (token)
				{
					c->http_token = strdup(token);
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
			break;
		case LK_ROUTE_STREAM:
			http_prepare(c, 426, "text/plain; charset=utf-8",
						 "this address is a WebSocket endpoint (subprotocol livekpi.v1)\n");
			break;
		case LK_ROUTE_NOT_FOUND:
			return lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL) ? -1 : 0;
		case LK_ROUTE_STATIC:
			rc = serve_static(wsi, rel);
			if (rc <= 0)
				return rc;
			http_prepare(c, 200, "text/html; charset=utf-8",
						 "<!doctype html><html><head><meta charset=\"utf-8\">"
						 "<title>livekpi</title></head><body><h1>livekpi</h1>"
						 "<p>The dashboard is not installed.  The WebSocket stream is at "
						 "<code>/v1/stream</code>.</p></body></html>\n");
			break;
	}
	lws_callback_on_writable(wsi);
	return 0;
}

int
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
 * The listener's own origins (for an empty livekpi.allowed_origins), made
 * once from livekpi.listen_addresses, livekpi.port and TLS: a comma list
 * such as "http://127.0.0.1:8089,http://localhost:8089".  A wildcard
 * address adds localhost, the host name and every interface address.
 * Never the request's Host header, which the client chooses.
 */
static char own_origins[8192] = "";

static void
add_origin(const char *scheme, const char *host, bool ipv6)
{
	char		one[LK_MAX_ORIGIN];
	int			defport = strcmp(scheme, "https") == 0 ? 443 : 80;

	snprintf(one, sizeof(one), "%s://%s%s%s:%d", scheme, ipv6 ? "[" : "", host,
			 ipv6 ? "]" : "", livekpi_port);
	if (strlen(own_origins) + strlen(one) + 2 < sizeof(own_origins))
	{
		if (own_origins[0])
			strlcat(own_origins, ",", sizeof(own_origins));
		strlcat(own_origins, one, sizeof(own_origins));
	}
	if (livekpi_port == defport)
	{
		snprintf(one, sizeof(one), "%s://%s%s%s", scheme, ipv6 ? "[" : "", host,
				 ipv6 ? "]" : "");
		if (strlen(own_origins) + strlen(one) + 2 < sizeof(own_origins))
		{
			strlcat(own_origins, ",", sizeof(own_origins));
			strlcat(own_origins, one, sizeof(own_origins));
		}
	}
}

void
origins_init(void)
{
	const char *scheme = (livekpi_ssl_cert_file && livekpi_ssl_cert_file[0] &&
						  livekpi_ssl_key_file && livekpi_ssl_key_file[0]) ? "https" : "http";
	char	   *list = pstrdup(livekpi_listen_addresses ? livekpi_listen_addresses : "");
	char	   *saveptr = NULL;

	own_origins[0] = '\0';
	for (char *tok = strtok_r(list, ",", &saveptr); tok; tok = strtok_r(NULL, ",", &saveptr))
	{
		while (*tok == ' ')
			tok++;
		while (*tok && tok[strlen(tok) - 1] == ' ')
			tok[strlen(tok) - 1] = '\0';
		if (*tok == '\0')
			continue;
		if (strcmp(tok, "*") == 0 || strcmp(tok, "0.0.0.0") == 0 || strcmp(tok, "::") == 0)
		{
			struct ifaddrs *ifs;
			char		name[256];

			add_origin(scheme, "localhost", false);
			if (gethostname(name, sizeof(name)) == 0)
			{
				name[sizeof(name) - 1] = '\0';
				add_origin(scheme, name, false);
			}
			if (getifaddrs(&ifs) == 0)
			{
				for (struct ifaddrs *ifa = ifs; ifa; ifa = ifa->ifa_next)
				{
					char		addr[INET6_ADDRSTRLEN];

					if (ifa->ifa_addr == NULL)
						continue;
					if (ifa->ifa_addr->sa_family == AF_INET &&
						inet_ntop(AF_INET, &((struct sockaddr_in *) ifa->ifa_addr)->sin_addr,
								  addr, sizeof(addr)))
						add_origin(scheme, addr, false);
					else if (ifa->ifa_addr->sa_family == AF_INET6 &&
							 inet_ntop(AF_INET6, &((struct sockaddr_in6 *) ifa->ifa_addr)->sin6_addr,
									   addr, sizeof(addr)) &&
							 strncmp(addr, "fe80", 4) != 0)
						add_origin(scheme, addr, true);
				}
				freeifaddrs(ifs);
			}
		}
		else
		{
			add_origin(scheme, tok, strchr(tok, ':') != NULL);
			if (strcmp(tok, "127.0.0.1") == 0 || strcmp(tok, "::1") == 0)
				add_origin(scheme, "localhost", false);
		}
	}
	pfree(list);
}

/*
 * origin_allowed
 *		SPEC section 6, livekpi.allowed_origins: no Origin header is a
 *		non-browser client and allowed; "*" allows all; empty allows only
 *		the listener's own origins (own_origins); else a comma list.
 */
static bool
origin_allowed(struct lws *wsi)
{
	char		origin[LK_MAX_ORIGIN];
	const char *list = livekpi_allowed_origins ? livekpi_allowed_origins : "";

	if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0)
		return true;
	if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) >= (int) sizeof(origin) ||
		lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) < 0)
		return false;
	if (strcmp(list, "*") == 0)
		return true;
	return lk_origin_in_list(origin, list[0] ? list : own_origins);
}

/*
 * refuse_handshake
 *		Answer a WebSocket handshake with an HTTP error (and for 426 the
 *		version we speak, RFC 6455 4.4); the connection then closes.
 */
static int
refuse_handshake(struct lws *wsi, int status, const char *body)
{
	unsigned char buf[LWS_PRE + 1024];
	unsigned char *start = buf + LWS_PRE;
	unsigned char *p = start;
	unsigned char *end = buf + sizeof(buf);
	size_t		len = strlen(body);

	if (lws_add_http_header_status(wsi, (unsigned int) status, &p, end) ||
		(status == 426 &&
		 lws_add_http_header_by_name(wsi, (const unsigned char *) "sec-websocket-version:",
									 (const unsigned char *) "13", 2, &p, end)) ||
		lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE,
									 (const unsigned char *) "text/plain; charset=utf-8",
									 25, &p, end) ||
		lws_add_http_header_content_length(wsi, (lws_filepos_t) len, &p, end) ||
		lws_add_http_header_by_name(wsi, (const unsigned char *) "connection:",
									(const unsigned char *) "close", 5, &p, end) ||
		lws_finalize_http_header(wsi, &p, end))
		return 1;
	if ((size_t) (end - p) > len)
	{
		memcpy(p, body, len);
		p += len;
	}
	(void) lws_write(wsi, start, (size_t) (p - start), LWS_WRITE_HTTP_HEADERS);
	return 1;
}

/*
 * handshake_check
 *		LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: nonzero refuses the
 *		upgrade.  The path must be the stream's; the version 13 (else 426);
 *		the key the base64 of 16 bytes (else 400); the Origin allowed
 *		(else 403).
 */
int
handshake_check(struct lws *wsi)
{
	char		uri[128];
	char		field[64];

	if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 ||
		strcmp(uri, LK_STREAM_PATH) != 0)
		return refuse_handshake(wsi, 404, "not found\n");
	if (lws_hdr_total_length(wsi, WSI_TOKEN_VERSION) >= (int) sizeof(field) ||
		lws_hdr_copy(wsi, field, sizeof(field), WSI_TOKEN_VERSION) <= 0 ||
		!lk_ws_version_ok(field))
		return refuse_handshake(wsi, 426, "only WebSocket version 13 is supported\n");
	if (lws_hdr_total_length(wsi, WSI_TOKEN_KEY) >= (int) sizeof(field) ||
		lws_hdr_copy(wsi, field, sizeof(field), WSI_TOKEN_KEY) <= 0 ||
		!lk_ws_key_valid(field))
		return refuse_handshake(wsi, 400, "malformed Sec-WebSocket-Key\n");
	if (!origin_allowed(wsi))
		return refuse_handshake(wsi, 403, "origin not allowed (livekpi.allowed_origins)\n");
	return 0;
}

/*
 * http_answer_metrics
 *		The answer to a /metrics request whose bearer token the SQL round
 *		checked.
 */
void
http_answer_metrics(PushClient *c, bool authorized)
{
	char		body[8192];

	if (authorized)
		http_prepare(c, metrics_body(body, sizeof(body)),
					 "text/plain; version=0.0.4; charset=utf-8", body);
	else
		http_prepare(c, 401, "text/plain; charset=utf-8", "invalid token\n");
	lws_callback_on_writable(c->wsi);
}
