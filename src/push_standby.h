/*-------------------------------------------------------------------------
 *
 * push_standby.h
 *	  The push worker on a hot standby (SPEC section 10): noticing replayed
 *	  batches, replay lag, the node's role, and what the worker must do
 *	  differently there.  Implemented in push_standby.c.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_standby.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_PUSH_STANDBY_H
#define LIVEKPI_PUSH_STANDBY_H

#include "datatype/timestamp.h"

struct LkClientMessage;

/*
 * How often (µs) the push worker looks at the replay position while it
 * has clients on a standby: a replayed batch reaches them this much later
 * at most, on top of the replay lag.
 */
#define LK_STANDBY_POLL_USEC		(5 * 1000)

/*
 * How long (ms after the connection opened) a hello that resumes from a
 * seq this standby has not replayed yet waits for replay to reach it,
 * before it is answered with a snapshot instead.
 */
#define LK_STANDBY_RESUME_WAIT_MS	5000

/* How many times a step cancelled by a recovery conflict is run again. */
#define LK_STANDBY_CONFLICT_RETRIES	3

extern bool livekpi_in_recovery(void);
extern int64 livekpi_replay_lag_ms(void);
extern const char *livekpi_role(void);

/* push worker: called from its main loop and its SQL steps */
extern bool push_standby_replayed_new_wal(void);
extern long push_standby_poll_usec(int nclients, long idle_usec);
extern bool push_standby_hold_request(const struct LkClientMessage *msg,
									  int64 known_seq, TimestampTz connected_at);
extern bool push_standby_retry(int sqlerrcode, int attempt);
extern void push_standby_read_state(void);
extern void push_standby_publish_seq(int64 seq);

#endif							/* LIVEKPI_PUSH_STANDBY_H */
