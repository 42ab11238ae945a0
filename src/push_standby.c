/*-------------------------------------------------------------------------
 *
 * push_standby.c
 *	  Serving from a hot standby (SPEC section 10).
 *
 * This file owns the pieces of serving from a streaming hot standby (no
 * apply worker; the KPI tables, delta_log, state and the tokens arrive by
 * WAL replay) that the rest of livekpi asks about:
 *
 *	- replay lag as SPEC section 10 defines it, and the node's role, for
 *	  livekpi.status, /healthz, /metrics and heartbeats;
 *	- a resume from a seq the standby has not replayed yet, which waits
 *	  (at most LK_STANDBY_RESUME_WAIT_MS) instead of sending a snapshot at
 *	  once;
 *	- the newest seq the push worker serves, for livekpi.status.
 *
 * The rest lives with the code it changes: the replay polling in
 * push_worker.c (replay_cb), the plain transactions and the 40001 retry in
 * push_sql.c (a recovery conflict inside a subtransaction is FATAL in
 * PostgreSQL 15), and the stale flag read from the replayed state row in
 * push_sql.c's read_state().
 *
 * Nothing here writes to the database.  On a primary every function is a
 * cheap no-op, so the callers need no test of their own.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_standby.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "executor/spi.h"
#include "replication/walreceiver.h"
#include "storage/spin.h"
#include "utils/errcodes.h"
#include "utils/timestamp.h"

#include "livekpi.h"
#include "protocol.h"
#include "push_standby.h"


/*
 * livekpi_in_recovery
 *		Whether this node is a standby.  RecoveryInProgress() reads shared
 *		memory only until recovery has ended, then a local flag.
 */
bool
livekpi_in_recovery(void)
{
	return RecoveryInProgress();
}

const char *
livekpi_role(void)
{
	return livekpi_in_recovery() ? "standby" : "primary";
}

/*
 * livekpi_replay_lag_ms
 *		How far behind the primary this standby serves, in ms: 0 when
 *		everything the WAL receiver has received is replayed and the
 *		receiver is streaming (so that a standby of an idle primary is not
 *		"behind"); while replay is behind, the time since it started on
 *		what it has not finished; otherwise (the receiver is not streaming:
 *		primary gone, network cut) the time since it was last seen current
 *		(or since the server started), since nothing bounds how much it may
 *		be missing.  0 on a primary.
 *
 * "Last seen current" is sampled by every caller (the push worker does so
 * every 100 ms): the WAL receiver's own timestamps cannot serve, since it
 * resets them each time it retries the connection.
 */
int64
livekpi_replay_lag_ms(void)
{
	WalRcvState state = WALRCV_STOPPED;
	TimestampTz since;
	TimestampTz now;

	if (!livekpi_in_recovery() || livekpi_shared == NULL)
		return 0;
	now = GetCurrentTimestamp();
	if (WalRcv != NULL)
	{
		SpinLockAcquire(&WalRcv->mutex);
		state = WalRcv->walRcvState;
		SpinLockRelease(&WalRcv->mutex);
	}
	if (state == WALRCV_STREAMING)
	{
		int			delay = GetReplicationApplyDelay();

		if (delay == 0)
		{
			SpinLockAcquire(&livekpi_shared->mutex);
			livekpi_shared->standby_current_at = now;
			SpinLockRelease(&livekpi_shared->mutex);
			return 0;
		}
		if (delay > 0)
			return delay;
	}
	SpinLockAcquire(&livekpi_shared->mutex);
	since = livekpi_shared->standby_current_at;
	SpinLockRelease(&livekpi_shared->mutex);
	return TimestampDifferenceMilliseconds(Max(since, PgStartTime), now);
}

/*
 * push_standby_hold_request
 *		Whether a hello should wait for replay: on a standby, a client that
 *		resumes from a seq newer than the newest this node has read (it saw
 *		that seq on a node further ahead) is kept waiting until replay gets
 *		there, so that it resumes rather than going back to an older
 *		snapshot; never longer than LK_STANDBY_RESUME_WAIT_MS after the
 *		connection opened, after which it gets the snapshot.  Either way it
 *		is never sent a gap.
 */
bool
push_standby_hold_request(const LkClientMessage *msg, int64 known_seq,
						  TimestampTz connected_at)
{
	if (msg == NULL || msg->type != LK_MSG_HELLO || !msg->has_resume_from)
		return false;
	if (msg->resume_from <= known_seq || !livekpi_in_recovery())
		return false;
	return !TimestampDifferenceExceeds(connected_at, GetCurrentTimestamp(),
									   LK_STANDBY_RESUME_WAIT_MS);
}

/*
 * push_standby_publish_seq
 *		The newest seq the push worker has read and sends to its live
 *		clients, for livekpi.status (seq_served): on a standby, what it
 *		has replayed.
 */
void
push_standby_publish_seq(int64 seq)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->push_seq_served = seq;
	SpinLockRelease(&livekpi_shared->mutex);
}
