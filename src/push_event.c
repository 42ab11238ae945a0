/*-------------------------------------------------------------------------
 *
 * push_event.c
 *	  The libwebsockets protocol callbacks of the listener: bytes in,
 *	  bytes out, and the adopted wake-up descriptors.
 *
 * This file owns the one lws protocol ("livekpi.v1") and its callback:
 * HTTP requests are handed to push_http.c, WebSocket frames are
 * assembled and parsed (with the libc-only parser of protocol.c) and
 * handed to the session (push_session.c), and queued messages are
 * written out in LK_WRITE_CHUNK fragments.  Callbacks never touch the
 * database and never call anything that can ereport(ERROR): lws would be
 * longjmp'd through.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_event.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/socket.h>
#include <unistd.h>

#include "postmaster/postmaster.h"
#include "storage/pmsignal.h"

#include "livekpi.h"
#include "push_internal.h"

/* ----------------------------------------------------------------
 * WebSocket callbacks
 * ----------------------------------------------------------------
 */
static void
ws_established(struct lws *wsi, PushClient *c)
{
	memset(c, 0, sizeof(*c));
	c->wsi = wsi;
	c->state = SESS_AWAIT_HELLO;
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
	client_release(c);
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

	if (c->state == SESS_HTTP || c->state == SESS_CLOSING)
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

	client_message(c, msg);
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

	while (c->q.head && budget-- > 0)
	{
		OutMsg	   *m = c->q.head->msg;
		size_t		len = m->len;
		size_t		remaining = m->len - c->q.sent_off;
		size_t		chunk = Min(remaining, (size_t) LK_WRITE_CHUNK);
		bool		start = c->q.sent_off == 0;
		bool		fin = chunk == remaining;
		int			flags = lws_write_ws_flags(LWS_WRITE_TEXT, start, fin);
		int			n;

		memcpy(write_scratch + LWS_PRE, m->data + c->q.sent_off, chunk);
		n = lws_write(wsi, write_scratch + LWS_PRE, chunk, (enum lws_write_protocol) flags);
		if (n < (int) chunk)
			return -1;
		{
			bool		done;

			queue_written(&c->q, chunk, &done);
			if (done)
			{
				stat_messages++;
				stat_bytes += (int64) len;
			}
		}
		if (lws_send_pipe_choked(wsi))
			break;
	}
	if (c->q.head)
	{
		lws_callback_on_writable(wsi);
		return 0;
	}
	if (c->state == SESS_CLOSING)
	{
		lws_close_reason(wsi, (enum lws_close_status) c->close_code,
						 (unsigned char *) c->close_reason, strlen(c->close_reason));
		return -1;
	}
	/* a drained client may take more */
	if (c->state == SESS_LIVE && c->pos < broadcast_seq)
		catchup_pending = true;
	if (c->state == SESS_SNAPSHOT_WAIT)
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
			if (c == NULL || c->state != SESS_HTTP)
				break;
			return http_write_response(wsi, c);

		case LWS_CALLBACK_HTTP_FILE_COMPLETION:
			if (lws_http_transaction_completed(wsi))
				return -1;
			return 0;

		case LWS_CALLBACK_CLOSED_HTTP:
			if (c && c->state == SESS_HTTP && c->http_pending)
			{
				dlist_delete(&c->node);
				c->http_pending = false;
			}
			if (c && c->state == SESS_HTTP)
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
				if (handshake_check(wsi) != 0)
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

const struct lws_protocols push_protocols[] = {
	{LK_SUBPROTOCOL, push_callback, sizeof(PushClient), LK_RX_BUFFER, 0, NULL, LK_WRITE_CHUNK},
	{NULL, NULL, 0, 0, 0, NULL, 0}
};


/*
 * lws_log_to_elog
 *		libwebsockets' own errors and warnings go to the server log.  LOG
 *		level never throws, so this is safe inside lws.
 */
void
lws_log_to_elog(int level, const char *line)
{
	size_t		len = strlen(line);

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	elog(LOG, "libwebsockets: %.*s", (int) len, line);
}
