/*-------------------------------------------------------------------------
 *
 * push_session.c
 *	  The WebSocket session of one client (SPEC section 7) as a state
 *	  machine: one table of states and events, each transition in one
 *	  place (sess_event), and the work each state asks of the loop.
 *
 * This file owns: the transition table; what a client message does to a
 * session (hello, subscribe, protocol errors); installing an accepted
 * request (scope, welcome, snapshot or resume); errors and closes; the
 * round's checks as the loop sees them (collect pending requests, token
 * checks and /metrics tokens, hand them to push_sql.c in one
 * transaction, apply the answers); and per-session housekeeping (hello
 * deadline, heartbeats, token expiry).
 *
 *	 state            hello   subscribe  accepted  resumed  snapshot  resync  fail
 *	 AWAIT_HELLO      CHECK   (error)    -         -        -         -       CLOSING
 *	 HELLO_CHECK      (error) (error)    SNAP_WAIT LIVE     -         -       CLOSING
 *	 SNAPSHOT_WAIT    (error) SUB_CHECK  -         -        LIVE      same    CLOSING
 *	 LIVE             (error) SUB_CHECK  -         -        -         SNAP_W. CLOSING
 *	 SUBSCRIBE_CHECK  (error) SUB_CHECK  SNAP_WAIT -        -         same    CLOSING
 *	 CLOSING          CLOSING everywhere (input is ignored)
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_session.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "livekpi.h"
#include "push_internal.h"
#include "push_standby.h"

#define X		(-1)			/* not allowed in this state */
#define SAME	(-2)			/* allowed, the state does not change */

static const int sess_next[SESS_NUM_STATES][SESS_NUM_EVENTS] = {
	/* hello, subscribe, accept_snapshot, accept_resume, snapshot, resync, fail */
	[SESS_HTTP] = {X, X, X, X, X, X, X},
	[SESS_AWAIT_HELLO] = {SESS_HELLO_CHECK, X, X, X, X, SAME, SESS_CLOSING},
	[SESS_HELLO_CHECK] = {X, X, SESS_SNAPSHOT_WAIT, SESS_LIVE, X, SAME, SESS_CLOSING},
	[SESS_SNAPSHOT_WAIT] = {X, SESS_SUBSCRIBE_CHECK, X, X, SESS_LIVE, SAME, SESS_CLOSING},
	[SESS_LIVE] = {X, SESS_SUBSCRIBE_CHECK, X, X, X, SESS_SNAPSHOT_WAIT, SESS_CLOSING},
	[SESS_SUBSCRIBE_CHECK] = {X, SAME, SESS_SNAPSHOT_WAIT, X, X, SAME, SESS_CLOSING},
	[SESS_CLOSING] = {SAME, SAME, SAME, SAME, SAME, SAME, SAME},
};

/*
 * sess_event
 *		Apply one event to a session.  False (and no change) when the event
 *		is not allowed in its state; the caller decides what that means
 *		(a protocol error for client messages).
 */
bool
sess_event(PushClient *c, SessEvent ev)
{
	int			next = sess_next[c->state][ev];

	if (next == X)
		return false;
	if (next != SAME)
		c->state = (SessState) next;
	if (c->state == SESS_SNAPSHOT_WAIT)
		snapshots_pending = true;
	if (c->state == SESS_HELLO_CHECK || c->state == SESS_SUBSCRIBE_CHECK)
		requests_pending = true;
	return true;
}

/*
 * sess_welcomed
 *		The client got its welcome: it has a token and a scope.
 */
bool
sess_welcomed(const PushClient *c)
{
	return c->state == SESS_SNAPSHOT_WAIT || c->state == SESS_LIVE ||
		c->state == SESS_SUBSCRIBE_CHECK;
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
 * client_enqueue
 *		Queue a message for a client and ask lws for a writable callback.
 *		Nothing is queued once the session is closing (its error is).
 */
void
client_enqueue(PushClient *c, OutMsg *m)
{
	if (m == NULL || c->state == SESS_CLOSING)
		return;
	if (queue_push(&c->q, m))
		lws_callback_on_writable(c->wsi);
}

void
client_enqueue_text(PushClient *c, OutKind kind, const char *text)
{
	OutMsg	   *m = outmsg_new(kind, text, strlen(text));

	if (m == NULL)
		return;
	outmsg_hold(m);
	client_enqueue(c, m);
	outmsg_release(m);
}

void
client_drop_pending(PushClient *c)
{
	queue_drop_pending(&c->q);
}

/*
 * client_fail
 *		Send {"type":"error"} and close with the given code once it is out.
 *		Any later input is ignored and nothing else is queued.
 */
void
client_fail(PushClient *c, const char *code, const char *message, int close_code)
{
	char		esc[512];
	char		buf[768];

	if (c->state == SESS_CLOSING)
		return;
	lk_json_escape(message, esc, sizeof(esc));
	snprintf(buf, sizeof(buf), "{\"type\":\"error\",\"code\":\"%s\",\"message\":\"%s\"}",
			 code, esc);
	client_drop_pending(c);
	client_enqueue_text(c, OUT_CONTROL, buf);
	sess_event(c, EV_FAIL);
	c->close_code = close_code;
	strlcpy(c->close_reason, code, sizeof(c->close_reason));
	if (c->request)
	{
		free(c->request);
		c->request = NULL;
	}
	lws_callback_on_writable(c->wsi);
}

/*
 * send_resync
 *		The client must start over: what it has not started to receive is
 *		dropped, a resync is queued and a snapshot follows.
 */
void
send_resync(PushClient *c, int64 seq)
{
	char		buf[96];

	if (!sess_event(c, EV_RESYNC))
		return;
	snprintf(buf, sizeof(buf), "{\"type\":\"resync\",\"seq\":" INT64_FORMAT "}", seq);
	client_drop_pending(c);
	client_enqueue_text(c, OUT_STALE, buf);
}

/*
 * client_message
 *		A parsed client message (malloc'd; the session takes it).  hello and
 *		subscribe wait for the round's SQL check; anything the state does
 *		not allow is bad_message.
 */
void
client_message(PushClient *c, LkClientMessage *msg)
{
	SessState	before = c->state;

	if (!sess_event(c, msg->type == LK_MSG_HELLO ? EV_HELLO : EV_SUBSCRIBE))
	{
		const char *why;

		if (msg->type == LK_MSG_HELLO)
			why = "hello was already received";
		else if (before == SESS_HELLO_CHECK)
			why = "wait for welcome before subscribe";
		else
			why = "the first message must be hello";
		free(msg);
		client_fail(c, "bad_message", why, LK_CLOSE_INVALID);
		return;
	}
	if (c->state == SESS_CLOSING)
	{
		free(msg);
		return;
	}
	free(c->request);
	c->request = msg;
}

/*
 * client_release
 *		Free what a session holds (the connection is gone).
 */
void
client_release(PushClient *c)
{
	queue_free(&c->q);
	free(c->inbuf);
	c->inbuf = NULL;
	free(c->request);
	c->request = NULL;
	if (c->token_props)
	{
		for (int i = 0; i < c->token_nprops; i++)
			free(c->token_props[i]);
		free(c->token_props);
		c->token_props = NULL;
	}
	scope_free(&c->scope);
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
 *		After the SQL check: install the new scope, answer with welcome (for
 *		hello) and schedule the snapshot or the replay.  Runs in lk_loop_cxt.
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
	if (ns.signature == NULL || ns.scope_json == NULL)
	{
		scope_free(&ns);
		client_fail(c, "internal", "out of memory", LK_CLOSE_INTERNAL);
		return;
	}

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

	if (msg->type == LK_MSG_HELLO)
	{
		char	   *w;

		w = psprintf("{\"type\":\"welcome\",\"protocol\":1,\"epoch\":\"%s\",\"seq\":" INT64_FORMAT
					 ",\"resumed\":%s,\"scope\":{\"properties\":%s},\"views\":%s,"
					 "\"server_time\":\"%s\",\"currency\":\"%s\"}",
					 server_epoch, job->latest, job->resumed ? "true" : "false",
					 ns.scope_json, views_json(ns.views), timestamp_json(job->now),
					 livekpi_currency);
		client_enqueue_text(c, OUT_CONTROL, w);
		c->last_heartbeat = job->now;
	}

	/* a new scope invalidates what is queued */
	client_drop_pending(c);
	if (job->resumed)
	{
		c->pos = job->resume_pos;
		sess_event(c, EV_ACCEPT_RESUME);
		catchup_pending = true;
	}
	else
		sess_event(c, EV_ACCEPT_SNAPSHOT);
	slot_publish(c);
}

static TimestampTz last_token_check = 0;
static uint64 seen_token_generation = 0;

/*
 * tokens_due
 *		Token validity is checked when a revoke_token() commits (the
 *		generation moved) and every LK_TOKEN_RECHECK_MS, so that
 *		connections of a revoked token go within a second in any case.
 *		Expiry needs no query: it is checked here.
 */
static bool
tokens_due(TimestampTz now)
{
	uint64		gen = pg_atomic_read_u64(&livekpi_push_shared->token_generation);
	dlist_iter	it;

	if (gen == seen_token_generation &&
		!TimestampDifferenceExceeds(last_token_check, now, LK_TOKEN_RECHECK_MS))
		return false;
	seen_token_generation = gen;
	last_token_check = now;

	dlist_foreach(it, &all_clients)
	{
		PushClient *c = dlist_container(PushClient, node, it.cur);

		if (sess_welcomed(c) && c->token_expires <= now)
			client_fail(c, "token_expired", "this token has expired",
						LK_CLOSE_UNAUTHORIZED);
	}
	return true;
}

/*
 * process_requests
 *		The round's checks: at most LK_REQUESTS_PER_ROUND pending hellos and
 *		subscribes, the /metrics bearer tokens, and (when due) the tokens of
 *		open connections, all in one short transaction (push_sql.c), then
 *		the answers.  What is left waits for the next round, so sockets are
 *		served between two rounds however many clients say hello at once.
 *		Runs in lk_loop_cxt.
 */
void
process_requests(void)
{
	RoundChecks rc;
	dlist_iter	it;
	dlist_mutable_iter mit;
	TimestampTz now;
	bool		check_tokens;
	int			n = 0;
	int			left = 0;

	if (lk_database_missing)
	{
		/* nothing to check against: refuse (see livekpi_push_main) */
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);

			if (c->request != NULL)
				client_fail(c, "internal", "livekpi.database does not exist",
							LK_CLOSE_INTERNAL);
		}
		dlist_foreach_modify(mit, &http_waiting)
		{
			PushClient *c = dlist_container(PushClient, node, mit.cur);

			dlist_delete(&c->node);
			c->http_pending = false;
			http_answer_metrics(c, false);
		}
		requests_pending = false;
		return;
	}
	now = GetCurrentTimestamp();
	check_tokens = tokens_due(now);
	memset(&rc, 0, sizeof(rc));
	if (requests_pending)
	{
		rc.jobs = palloc0(sizeof(RequestJob) * LK_REQUESTS_PER_ROUND);
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);

			if (c->request == NULL || c->state == SESS_CLOSING)
				continue;
			/* a resume ahead of this standby's replay waits (bounded) */
			if (push_standby_hold_request(c->request, broadcast_seq, c->connected_at))
			{
				left++;
				continue;
			}
			if (rc.njobs == LK_REQUESTS_PER_ROUND)
			{
				left++;
				break;
			}
			rc.jobs[rc.njobs].c = c;
			rc.jobs[rc.njobs].msg = c->request;
			rc.njobs++;
		}
		dlist_foreach(it, &http_waiting)
			n++;
		rc.metrics = palloc(sizeof(PushClient *) * Max(n, 1));
		rc.metrics_ok = palloc0(sizeof(bool) * Max(n, 1));
		dlist_foreach(it, &http_waiting)
			rc.metrics[rc.nmetrics++] = dlist_container(PushClient, node, it.cur);
	}
	requests_pending = left > 0;

	if (check_tokens)
	{
		n = 0;
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);

			if (sess_welcomed(c))
				n++;
		}
		rc.token_ids = palloc(sizeof(int64) * Max(n, 1));
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);

			if (sess_welcomed(c))
				rc.token_ids[rc.ntokens++] = c->token_id;
		}
		qsort(rc.token_ids, rc.ntokens, sizeof(int64), livekpi_cmp_int64);
		n = 0;
		for (int i = 0; i < rc.ntokens; i++)
			if (i == 0 || rc.token_ids[i] != rc.token_ids[n - 1])
				rc.token_ids[n++] = rc.token_ids[i];
		rc.ntokens = n;
		rc.revoked = palloc0(sizeof(bool) * Max(n, 1));
		rc.expired = palloc0(sizeof(bool) * Max(n, 1));
	}
	if (rc.njobs == 0 && rc.nmetrics == 0 && rc.ntokens == 0)
		return;

	if (!sql_round_checks(&rc))
	{
		for (int i = 0; i < rc.njobs; i++)
			client_fail(rc.jobs[i].c, "internal", "the server could not process the request",
						LK_CLOSE_INTERNAL);
		rc.ntokens = 0;
		memset(rc.metrics_ok, 0, sizeof(bool) * rc.nmetrics);
	}
	else
	{
		for (int i = 0; i < rc.njobs; i++)
		{
			RequestJob *job = &rc.jobs[i];

			if (job->c->state == SESS_CLOSING)
				continue;
			if (job->err_code)
				client_fail(job->c, job->err_code, job->err_msg, job->close_code);
			else
				apply_request(job);
		}
	}
	for (int i = 0; i < rc.njobs; i++)
	{
		PushClient *c = rc.jobs[i].c;

		free(c->request);
		c->request = NULL;
	}

	/* /metrics from afar */
	dlist_foreach_modify(mit, &http_waiting)
	{
		PushClient *c = dlist_container(PushClient, node, mit.cur);

		for (int i = 0; i < rc.nmetrics; i++)
			if (rc.metrics[i] == c)
			{
				dlist_delete(&c->node);
				c->http_pending = false;
				http_answer_metrics(c, rc.metrics_ok[i]);
				break;
			}
	}

	/* revoked and expired tokens */
	if (rc.ntokens > 0)
	{
		dlist_foreach(it, &all_clients)
		{
			PushClient *c = dlist_container(PushClient, node, it.cur);
			int64	   *hit;

			if (!sess_welcomed(c))
				continue;
			hit = bsearch(&c->token_id, rc.token_ids, rc.ntokens, sizeof(int64),
						  livekpi_cmp_int64);
			if (hit == NULL)
				continue;
			if (rc.revoked[hit - rc.token_ids])
				client_fail(c, "token_revoked", "this token has been revoked",
							LK_CLOSE_UNAUTHORIZED);
			else if (rc.expired[hit - rc.token_ids])
				client_fail(c, "token_expired", "this token has expired",
							LK_CLOSE_UNAUTHORIZED);
		}
	}
}

static TimestampTz last_slot_publish = 0;

/*
 * housekeeping
 *		Every tick: the hello deadline, heartbeats, slot publication.  Runs
 *		in lk_loop_cxt.
 */
void
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

		if (c->state == SESS_AWAIT_HELLO &&
			TimestampDifferenceExceeds(c->connected_at, now, LK_HELLO_DEADLINE_MS))
		{
			client_fail(c, "bad_message", "no hello within 10 s", LK_CLOSE_POLICY);
			continue;
		}
		if (c->state == SESS_LIVE && livekpi_heartbeat_interval > 0 && c->q.head == NULL &&
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
	publish_stats();
}
