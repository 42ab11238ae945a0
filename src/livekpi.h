/*-------------------------------------------------------------------------
 *
 * livekpi.h
 *	  Declarations shared by every part of livekpi.so: the GUC variables,
 *	  the shared-memory state both background workers publish (the source
 *	  of the livekpi.status view), and the wake-up primitives that connect
 *	  committing backends to the workers.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/livekpi.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_H
#define LIVEKPI_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/spin.h"

/* Name of the logical slot, the replication origin and the message prefix. */
#define LIVEKPI_SLOT_NAME		"livekpi"
#define LIVEKPI_ORIGIN_NAME		"livekpi"
#define LIVEKPI_MESSAGE_PREFIX	"livekpi"

/*
 * The SQL version this library implements: the apply worker waits, with
 * state "needs ALTER EXTENSION livekpi UPDATE", while pg_extension says
 * another one (a restart with a new library before the update).
 */
#define LIVEKPI_VERSION			"1.1"

/*
 * Upper bounds (ms) of the batch-duration histogram buckets published for
 * /metrics; the last bucket is +Inf.
 */
#define LIVEKPI_DURATION_BUCKETS 12
#define LIVEKPI_DURATION_BOUNDS_MS {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000}

/* Size of the text buffers published in shared memory. */
#define LIVEKPI_STATE_LEN		48
#define LIVEKPI_ERROR_LEN		512

/* GUC variables (guc.c) */
extern char *livekpi_database;
extern int	livekpi_flush_interval;
extern int	livekpi_max_batch_changes;
extern int	livekpi_decoding_work_mem;
extern int	livekpi_delta_retention;
extern int	livekpi_delta_retention_batches;
extern int	livekpi_max_lag;
extern int	livekpi_max_stay_nights;
extern char *livekpi_timezone;
extern char *livekpi_listen_addresses;
extern int	livekpi_port;
extern int	livekpi_max_clients;
extern int	livekpi_client_buffer_limit;
extern int	livekpi_heartbeat_interval;
extern char *livekpi_ssl_cert_file;
extern char *livekpi_ssl_key_file;
extern char *livekpi_allowed_origins;
extern char *livekpi_currency;
extern char *livekpi_test_fail_on_amount;

extern void livekpi_define_gucs(void);

/*
 * State published by the workers.  Fields are protected by "mutex"; the
 * latch pointers are written once by their owners and read without it.
 */
typedef struct LiveKpiShared
{
	slock_t		mutex;

	/* apply worker */
	pid_t		apply_pid;
	Latch	   *apply_latch;
	char		apply_state[LIVEKPI_STATE_LEN];
	bool		paused;
	bool		slot_ready;		/* slot exists and is consistent */
	XLogRecPtr	confirmed_lsn;	/* slot's confirmed_flush after last batch */
	XLogRecPtr	processed_lsn;	/* WAL read, decoded and applied up to here */
	TimestampTz last_commit_time;	/* commit time of newest applied source xact */
	TimestampTz caught_up_at;	/* last time processed_lsn reached the WAL end */
	int64		last_seq;
	TimestampTz last_batch_at;
	int64		changes_applied;
	int64		rows_written;
	int64		rows_skipped;
	int64		batches;
	int64		rebuilds;
	int64		records_rejected;	/* change records not from the trigger */
	/*
	 * Rejections already counted and logged, so that WAL decoded again
	 * (after a retry or a restart of the worker) counts them once: end LSN
	 * of the newest transaction with a rejected record (transactions are
	 * decoded in commit order), and LSN of the newest non-transactional
	 * message (decoded in WAL order).  Written by the output plugin inside
	 * the apply worker.
	 */
	XLogRecPtr	rejected_upto;
	XLogRecPtr	rejected_nontx_upto;
	bool		stale;			/* state.stale_reason is set: KPIs inexact */
	bool		apply_connecting;	/* between start and database connection */
	bool		apply_database_missing; /* livekpi.database did not exist */
	char		last_error[LIVEKPI_ERROR_LEN];
	TimestampTz last_error_at;
	int64		batch_duration_counts[LIVEKPI_DURATION_BUCKETS];	/* not cumulative */
	int64		batch_duration_sum_us;

	/* push worker */
	pid_t		push_pid;
	char		push_state[LIVEKPI_STATE_LEN];
	int			clients;
	int			max_clients_effective;
	int64		messages_sent;
	int64		bytes_sent;
	char		push_error[LIVEKPI_ERROR_LEN];
	TimestampTz push_error_at;

	/*
	 * eventfd made by _PG_init in the postmaster and so inherited by every
	 * backend: written after a batch or a token change commits, watched by
	 * the push worker's event loop.  -1 when it could not be made.
	 */
	int			push_wakeup_fd;

	/* push worker: newest seq read and served (-1 before the first read) */
	int64		push_seq_served;

	/* standby: last time replay was seen caught up with a streaming receiver */
	TimestampTz standby_current_at;
} LiveKpiShared;

extern LiveKpiShared *livekpi_shared;

/* livekpi.c */
extern void livekpi_wake_apply_at_commit(void);
extern void livekpi_wake_push_at_commit(void);
extern void livekpi_wake_push_now(void);
extern void livekpi_set_apply_state(const char *state);
extern void livekpi_set_push_state(const char *state);
extern bool livekpi_loaded_via_preload(void);
extern int64 livekpi_apply_lag_ms(void);

/* apply_worker.c */
extern void livekpi_register_apply_worker(void);
PGDLLEXPORT void livekpi_apply_main(Datum main_arg);

/* push_worker.c: the listener; registered only when listen_addresses is set */
extern void livekpi_register_push_worker(void);
extern Size livekpi_push_shmem_size(void);
extern void livekpi_push_shmem_init(void);

#endif							/* LIVEKPI_H */
