/*-------------------------------------------------------------------------
 *
 * test_push_queue.c
 *	  Unit tests of the push worker's client queue (src/push_queue.c),
 *	  which needs nothing but libc: FIFO accounting, shared messages,
 *	  dropping pending messages for a resync, coalescing by key (newest
 *	  row wins, upserts before deletes, arrival order), and the two
 *	  backpressure thresholds.
 *
 *	  Built and run by `make unit` (test/suites/unit.sh).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * test/unit/test_push_queue.c
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "push_queue.h"

static int	failures = 0;
static int	checks = 0;

#define CHECK(cond) \
	do { \
		checks++; \
		if (!(cond)) \
		{ \
			failures++; \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
		} \
	} while (0)

static OutMsg *
msg(OutKind kind, const char *text)
{
	OutMsg	   *m = outmsg_new(kind, text, strlen(text));

	outmsg_hold(m);
	return m;
}

static void
test_fifo(void)
{
	LkQueue		q = {0};
	OutMsg	   *a = msg(OUT_CONTROL, "welcome");
	OutMsg	   *d = msg(OUT_DELTA, "delta-1");
	OutMsg	   *s = msg(OUT_SNAPSHOT, "snapshot");
	bool		done;

	CHECK(queue_push(&q, a));
	CHECK(queue_push(&q, d));
	CHECK(queue_push(&q, s));
	CHECK(q.queued_bytes == 7 + 7 + 8);
	CHECK(q.queued_delta_bytes == 7);
	CHECK(q.queued_snapshots == 1);
	CHECK(d->refcount == 2);

	/* a message written in two pieces */
	queue_written(&q, 3, &done);
	CHECK(!done && q.sent_off == 3);
	queue_written(&q, 4, &done);
	CHECK(done && q.sent_off == 0 && q.head->msg == d);

	/* a resync drops the delta and the snapshot, not what is half out */
	queue_written(&q, 2, &done);
	queue_drop_pending(&q);
	CHECK(q.head && q.head->msg == d && q.head->next == NULL);
	CHECK(q.queued_snapshots == 0);
	queue_free(&q);
	CHECK(q.head == NULL && q.queued_bytes == 0 && q.queued_delta_bytes == 0);
	CHECK(d->refcount == 1);
	outmsg_release(a);
	outmsg_release(d);
	outmsg_release(s);
}

static void
test_drop_keeps_control(void)
{
	LkQueue		q = {0};
	OutMsg	   *h = msg(OUT_STALE, "heartbeat");
	OutMsg	   *e = msg(OUT_CONTROL, "error");

	queue_push(&q, h);
	queue_push(&q, e);
	queue_drop_pending(&q);
	CHECK(q.head && q.head->msg == e && q.tail == q.head);
	CHECK(q.queued_bytes == 5);
	queue_free(&q);
	outmsg_release(h);
	outmsg_release(e);
}

static void
test_backpressure(void)
{
	LkQueue		q = {0};
	OutMsg	   *d = msg(OUT_DELTA, "0123456789");	/* 10 bytes */

	/* limit 40: up to 20 bytes of deltas are queued, then coalesced */
	CHECK(!queue_should_coalesce(&q, 10, 40));
	queue_push(&q, d);
	CHECK(!queue_should_coalesce(&q, 10, 40));
	queue_push(&q, d);
	CHECK(queue_should_coalesce(&q, 10, 40));
	CHECK(!queue_over_limit(&q, 40));
	CHECK(queue_coalesce_row(&q, 0, false, "{\"k\":1}", "{\"k\":1,\"v\":\"aaaaaaaaaaaa\"}"));
	queue_coalesce_mark(&q, 7, "a", "c");
	CHECK(lk_queues_coalescing == 1);
	CHECK(queue_should_coalesce(&q, 1, 1000000));	/* once coalescing, always */
	CHECK(queue_over_limit(&q, 40));	/* 20 queued + 28 coalesced */
	CHECK(!queue_can_flush_coalesced(&q));	/* deltas still queued */
	queue_free(&q);
	CHECK(lk_queues_coalescing == 0);
	outmsg_release(d);
}

static void
test_coalesce(void)
{
	LkQueue		q = {0};
	OutMsg	   *m;
	const char *want =
		"{\"type\":\"delta\",\"seq\":12,\"applied_at\":\"A\",\"committed_at\":\"C\","
		"\"upserts\":{\"property_kpis\":[{\"k\":2,\"v\":1},{\"k\":1,\"v\":3}],"
		"\"booking_daily\":[{\"d\":1}]},"
		"\"deletes\":{\"property_kpis\":[{\"k\":3}]}}";
	char		key[32];
	char		row[64];

	CHECK(queue_coalesce_row(&q, 0, false, "{\"k\":1}", "{\"k\":1,\"v\":1}"));
	CHECK(queue_coalesce_row(&q, 0, false, "{\"k\":2}", "{\"k\":2,\"v\":1}"));
	CHECK(queue_coalesce_row(&q, 0, false, "{\"k\":3}", "{\"k\":3,\"v\":1}"));
	queue_coalesce_mark(&q, 11, "a", "c");
	CHECK(queue_coalesce_row(&q, 3, false, "{\"d\":1}", "{\"d\":1}"));
	CHECK(queue_coalesce_row(&q, 0, false, "{\"k\":1}", "{\"k\":1,\"v\":3}"));	/* newest wins */
	CHECK(queue_coalesce_row(&q, 0, true, "{\"k\":3}", "{\"k\":3}"));	/* now a delete */
	queue_coalesce_mark(&q, 12, "A", "C");
	CHECK(q.co_n == 4);
	CHECK(queue_can_flush_coalesced(&q));
	m = queue_render_coalesced(&q);
	CHECK(m != NULL && m->kind == OUT_DELTA);
	if (m && strcmp(m->data, want) != 0)
	{
		failures++;
		fprintf(stderr, "coalesced delta:\n  got  %s\n  want %s\n", m->data, want);
	}
	CHECK(q.co_cap == 0 && q.co_bytes == 0 && lk_queues_coalescing == 0);
	outmsg_hold(m);
	outmsg_release(m);

	/* growth past the first table, and a key too long to merge */
	for (int i = 0; i < 1000; i++)
	{
		snprintf(key, sizeof(key), "{\"k\":%d}", i % 300);
		snprintf(row, sizeof(row), "{\"k\":%d,\"i\":%d}", i % 300, i);
		CHECK(queue_coalesce_row(&q, 1, false, key, row));
	}
	CHECK(q.co_n == 300);
	{
		char		longkey[400];

		memset(longkey, 'x', sizeof(longkey) - 1);
		longkey[sizeof(longkey) - 1] = '\0';
		CHECK(!queue_coalesce_row(&q, 1, false, longkey, "{}"));
	}
	queue_reset_coalesced(&q);
	CHECK(lk_queues_coalescing == 0);
}

int
main(void)
{
	test_fifo();
	test_drop_keeps_control();
	test_backpressure();
	test_coalesce();
	printf("test_push_queue: %d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
