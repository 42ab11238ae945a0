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
 * How long (ms after the connection opened) a hello that resumes from a
 * seq this standby has not replayed yet waits for replay to reach it,
 * before it is answered with a snapshot instead.
 */
#define LK_STANDBY_RESUME_WAIT_MS	5000

extern bool livekpi_in_recovery(void);
extern int64 livekpi_replay_lag_ms(void);
extern const char *livekpi_role(void);

/* push worker: called from its main loop and its SQL steps */
extern bool push_standby_hold_request(const struct LkClientMessage *msg,
									  int64 known_seq, TimestampTz connected_at);
extern void push_standby_publish_seq(int64 seq);

#endif							/* LIVEKPI_PUSH_STANDBY_H */
