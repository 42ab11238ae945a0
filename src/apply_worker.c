/*-------------------------------------------------------------------------
 *
 * apply_worker.c
 *	  The apply worker: owns the logical slot "livekpi" and the replication
 *	  origin "livekpi", decodes the slot in-process with the livekpi output
 *	  plugin, and applies what committed in batches, each batch one
 *	  transaction that writes the KPI tables, a delta_log row, livekpi.state
 *	  and the origin's progress together.  That transaction is the unit of
 *	  exactly-once: after a crash the origin says where to resume, and
 *	  decoded transactions at or before it are dropped.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/apply_worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "nodes/makefuncs.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "change.h"
#include "kpi.h"
#include "livekpi.h"

/* How long the worker sleeps when nothing wakes it. */
#define IDLE_TIMEOUT_MS			1000
/* Backoff after a failed batch: doubles from the first to the last. */
#define RETRY_FIRST_MS			100
#define RETRY_MAX_MS			30000
/* KPI rows written by one batch after which the KPI tables are analyzed. */
#define ANALYZE_AFTER_ROWS		10000

/* A decoded source transaction waiting to be applied. */
typedef struct PendingTxn
{
	TransactionId xid;
	XLogRecPtr	commit_lsn;
	XLogRecPtr	end_lsn;
	TimestampTz commit_time;
	bool		has_truncate;
	List	   *messages;		/* of PendingMessage */
} PendingTxn;

/* A change record, copied out of the decoder's buffer at its exact size. */
typedef struct PendingMessage
{
	int			len;
	char		data[FLEXIBLE_ARRAY_MEMBER];
} PendingMessage;

static LogicalDecodingContext *decoding = NULL;
static RepOriginId origin_id = InvalidRepOriginId;
static XLogRecPtr origin_startpos = InvalidXLogRecPtr;

static MemoryContext pending_cxt = NULL;
static List *pending = NIL;		/* of PendingTxn, in commit order */
static PendingTxn *current = NULL;	/* being decoded */
static int64 pending_changes = 0;

static SPIPlanPtr apply_plan = NULL;
static char apply_plan_key_kind = '\0';
static TimestampTz last_batch_start = 0;

void
livekpi_register_apply_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "livekpi", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "livekpi_apply_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "livekpi apply", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "livekpi apply", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

static void
apply_shmem_exit(int code, Datum arg)
{
	if (livekpi_shared == NULL)
		return;
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->apply_pid = 0;
	livekpi_shared->apply_latch = NULL;
	livekpi_shared->slot_ready = false;
	strlcpy(livekpi_shared->apply_state, "stopped", LIVEKPI_STATE_LEN);
	SpinLockRelease(&livekpi_shared->mutex);
}

static void
record_error(const char *message)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	strlcpy(livekpi_shared->last_error, message, LIVEKPI_ERROR_LEN);
	livekpi_shared->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&livekpi_shared->mutex);
}

static void
apply_decoding_work_mem(void)
{
	char		value[32];

	snprintf(value, sizeof(value), "%dkB", livekpi_decoding_work_mem);
	SetConfigOption("logical_decoding_work_mem", value, PGC_SUSET, PGC_S_OVERRIDE);
}

/* Reloads the configuration file and re-applies what the worker derives. */
static void
reload_config(void)
{
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	apply_decoding_work_mem();
}

/* Counts a batch in the duration histogram; the caller holds the mutex. */
static void
record_duration(int64 us)
{
	static const int bounds_ms[] = LIVEKPI_DURATION_BOUNDS_MS;
	int			i;

	for (i = 0; i < lengthof(bounds_ms); i++)
		if (us <= (int64) bounds_ms[i] * 1000)
			break;
	livekpi_shared->batch_duration_counts[i]++;
	livekpi_shared->batch_duration_sum_us += us;
}

/* ---- decoding -------------------------------------------------------- */

static void
decoding_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
					   TransactionId xid, bool last_write)
{
	resetStringInfo(ctx->out);
}

/*
 * decoding_write
 *		Receives the plugin's binary frames and groups them into PendingTxn
 *		entries.  A rebuild marker drops the changes its transaction made
 *		before it: the rebuild already counted them.
 */
static void
decoding_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
			   TransactionId xid, bool last_write)
{
	StringInfo	out = ctx->out;
	MemoryContext old = MemoryContextSwitchTo(pending_cxt);
	StringInfoData msg;

	msg.data = out->data;
	msg.len = out->len;
	msg.maxlen = out->len;
	msg.cursor = 0;

	switch (pq_getmsgbyte(&msg))
	{
		case 'B':
			current = palloc0(sizeof(PendingTxn));
			current->xid = (TransactionId) pq_getmsgint(&msg, 4);
			break;
		case 'M':
			{
				const char *body = pq_getmsgbytes(&msg, msg.len - msg.cursor);
				int			len = out->len - 1;
				PendingMessage *copy;

				if (current == NULL)
					elog(ERROR, "livekpi: change record outside a transaction");
				if (len > 0 && body[0] == CHANGE_REBUILD)
				{
					pending_changes -= list_length(current->messages);
					current->messages = NIL;
					current->has_truncate = false;
					break;
				}
				if (len > 0 && body[0] == CHANGE_TRUNCATE)
					current->has_truncate = true;
				copy = palloc(offsetof(PendingMessage, data) + len);
				copy->len = len;
				memcpy(copy->data, body, len);
				current->messages = lappend(current->messages, copy);
				pending_changes++;
				break;
			}
		case 'C':
			if (current == NULL)
				elog(ERROR, "livekpi: commit outside a transaction");
			current->commit_lsn = (XLogRecPtr) pq_getmsgint64(&msg);
			current->end_lsn = (XLogRecPtr) pq_getmsgint64(&msg);
			current->commit_time = (TimestampTz) pq_getmsgint64(&msg);
			/* Already applied before a crash: the origin remembers. */
			if (current->end_lsn <= origin_startpos)
				pending_changes -= list_length(current->messages);
			else
				pending = lappend(pending, current);
			current = NULL;
			break;
		default:
			elog(ERROR, "livekpi: unknown frame from the output plugin");
	}
	MemoryContextSwitchTo(old);
}

/*
 * set_decoding_flag
 *		PROC_IN_LOGICAL_DECODING makes every other backend leave this
 *		process's transaction out of its snapshots, which is right for a
 *		walsender that never writes and wrong for a worker that does: a
 *		batch would look aborted to its readers while it runs, and they
 *		would set hint bits accordingly.  So the flag is on only while the
 *		worker decodes, outside any transaction of its own.
 */
static void
set_decoding_flag(bool on)
{
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	if (on)
		MyProc->statusFlags |= PROC_IN_LOGICAL_DECODING;
	else
		MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
}

/*
 * decode_until
 *		Reads WAL up to end_of_wal, or until max_changes changes are
 *		pending; the plugin emits a transaction only at its commit, so the
 *		check between records never splits one.  Returns true when it
 *		stopped early.
 */
static bool
decode_until(XLogRecPtr end_of_wal, int64 max_changes)
{
	bool		stopped_early = false;

	Assert(!IsTransactionOrTransactionBlock());
	set_decoding_flag(true);
	while (decoding->reader->EndRecPtr < end_of_wal)
	{
		XLogRecord *record;
		char	   *errm = NULL;

		record = XLogReadRecord(decoding->reader, &errm);
		if (errm)
			elog(ERROR, "livekpi: could not read WAL: %s", errm);
		if (record != NULL)
			LogicalDecodingProcessRecord(decoding, decoding->reader);
		if (pending_changes >= max_changes)
		{
			stopped_early = true;
			break;
		}
		CHECK_FOR_INTERRUPTS();
	}
	set_decoding_flag(false);
	return stopped_early;
}

/* ---- slot and origin ------------------------------------------------- */

static List *
plugin_options(void)
{
	return list_make2(makeDefElem("format", (Node *) makeString("binary"), -1),
					  makeDefElem("skip_origin",
								  (Node *) makeString(psprintf("%d", origin_id)), -1));
}

static XLogReaderRoutine *
reader_routine(void)
{
	static XLogReaderRoutine routine = {
		.page_read = read_local_xlog_page,
		.segment_open = wal_segment_open,
		.segment_close = wal_segment_close,
	};

	return &routine;
}

/*
 * create_slot
 *		Like pg_create_logical_replication_slot, from a worker that has no
 *		transaction id: waits for the transactions running now to end, then
 *		the slot decodes everything that commits later.
 */
static void
create_slot(void)
{
	LogicalDecodingContext *ctx;

	livekpi_set_apply_state("creating slot");
	ReplicationSlotCreate(LIVEKPI_SLOT_NAME, true, RS_EPHEMERAL, false);
	ctx = CreateInitDecodingContext("livekpi", NIL, false, InvalidXLogRecPtr,
									reader_routine(), NULL, NULL, NULL);
	DecodingContextFindStartpoint(ctx);
	FreeDecodingContext(ctx);
	ReplicationSlotPersist();
	ReplicationSlotRelease();
	ereport(LOG,
			(errmsg("livekpi created replication slot \"%s\"", LIVEKPI_SLOT_NAME)));
}

/*
 * acquire_slot
 *		Acquires the slot, creating it when it is missing and re-creating it
 *		when max_slot_wal_keep_size invalidated it.  Returns true when the
 *		slot is new, so that changes from before it must come from a rebuild.
 */
static bool
acquire_slot(void)
{
	bool		created = false;
	ReplicationSlot *slot;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(LIVEKPI_SLOT_NAME, false);
	LWLockRelease(ReplicationSlotControlLock);

	if (slot != NULL)
	{
		ReplicationSlotAcquire(LIVEKPI_SLOT_NAME, true);
		if (MyReplicationSlot->data.database != MyDatabaseId ||
			!SlotIsLogical(MyReplicationSlot) ||
			MyReplicationSlot->data.invalidated_at != InvalidXLogRecPtr ||
			MyReplicationSlot->data.restart_lsn == InvalidXLogRecPtr ||
			strcmp(NameStr(MyReplicationSlot->data.plugin), "livekpi") != 0)
		{
			ereport(LOG,
					(errmsg("livekpi replication slot \"%s\" is invalid or lost; recreating it and rebuilding the KPI tables",
							LIVEKPI_SLOT_NAME)));
			ReplicationSlotRelease();
			ReplicationSlotDrop(LIVEKPI_SLOT_NAME, true);
			slot = NULL;
		}
	}
	if (slot == NULL)
	{
		create_slot();
		ReplicationSlotAcquire(LIVEKPI_SLOT_NAME, true);
		created = true;
	}

	decoding = CreateDecodingContext(InvalidXLogRecPtr, plugin_options(), false,
									 reader_routine(), decoding_prepare_write,
									 decoding_write, NULL);
	XLogBeginRead(decoding->reader, MyReplicationSlot->data.restart_lsn);
	set_decoding_flag(false);
	return created;
}

static void
setup_origin(void)
{
	StartTransactionCommand();
	origin_id = replorigin_by_name(LIVEKPI_ORIGIN_NAME, true);
	if (origin_id == InvalidRepOriginId)
		origin_id = replorigin_create(LIVEKPI_ORIGIN_NAME);
	CommitTransactionCommand();

	replorigin_session_setup(origin_id);
	replorigin_session_origin = origin_id;
	origin_startpos = replorigin_session_get_progress(false);
}

/* ---- applying -------------------------------------------------------- */

static bool
extension_exists(void)
{
	bool		exists;

	StartTransactionCommand();
	exists = OidIsValid(get_extension_oid("livekpi", true));
	CommitTransactionCommand();
	return exists;
}

/* Publishes whether livekpi.state says the KPIs are stale, for /healthz. */
static void
publish_stale(bool stale)
{
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->stale = stale;
	SpinLockRelease(&livekpi_shared->mutex);
}

/*
 * refresh_stale
 *		Any backend may mark the KPIs stale (livekpi._mark_stale); the
 *		worker re-reads the flag once a second so that /healthz, which
 *		runs no SQL, follows within that second.
 */
static void
refresh_stale(void)
{
	bool		isnull;
	bool		stale = false;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT stale_reason IS NOT NULL FROM livekpi.state", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		stale = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	publish_stale(stale);
}

static char
key_kind_of(const char *key_type)
{
	if (key_type == NULL || strcmp(key_type, "bigint") == 0)
		return KEY_INT;
	if (strcmp(key_type, "uuid") == 0)
		return KEY_UUID;
	return KEY_TEXT;
}

static void
prepare_apply_plan(char key_kind)
{
	Oid			keyarr = get_array_type(kpi_key_type(key_kind));
	Oid			argtypes[20] = {
		keyarr, DATEARRAYOID, INT8ARRAYOID, NUMERICARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
		keyarr, DATEARRAYOID, TEXTARRAYOID, NUMERICARRAYOID, NUMERICARRAYOID, NUMERICARRAYOID, INT8ARRAYOID,
		keyarr, TIMESTAMPTZOID, TIMESTAMPTZOID, PG_LSNOID, INT8OID, INT4OID, INT4OID
	};
	SPIPlanPtr	plan;

	if (apply_plan != NULL)
	{
		SPI_freeplan(apply_plan);
		apply_plan = NULL;
	}
	plan = SPI_prepare("SELECT seq, rows_written FROM livekpi._apply_batch("
					   "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
					   "$14, $15, $16, $17, $18, $19, $20)", 20, argtypes);
	if (plan == NULL)
		elog(ERROR, "livekpi: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	apply_plan = plan;
	apply_plan_key_kind = key_kind;
}

/*
 * apply_pending
 *		Applies every pending transaction in one transaction.  Under the lock
 *		on livekpi.state it drops transactions a concurrent rebuild already
 *		counted, and when a tracked table was truncated it rebuilds instead.
 */
static void
apply_pending(void)
{
	XLogRecPtr	rebuild_lsn;
	XLogRecPtr	last_end = InvalidXLogRecPtr;
	TimestampTz last_commit = 0;
	TimestampTz batch_start = GetCurrentTimestamp();
	char	   *key_type;
	bool		isnull;
	bool		truncate = false;
	int64		seq = 0;
	int64		rows_written = 0;
	KpiBatch	batch;
	ListCell   *lc;
	MemoryContext batch_cxt;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "livekpi: applying a batch");

	if (SPI_execute("SELECT rebuild_lsn, key_type::text FROM livekpi.state FOR UPDATE",
					false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "livekpi: livekpi.state must have exactly one row");
	rebuild_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	key_type = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

	foreach(lc, pending)
	{
		PendingTxn *t = lfirst(lc);

		last_end = t->end_lsn;
		last_commit = t->commit_time;
		if (t->commit_lsn >= rebuild_lsn && t->has_truncate)
			truncate = true;
	}

	if (truncate)
	{
		/* The rebuild counts everything committed so far, these included. */
		if (SPI_execute("SELECT livekpi._rebuild(false)", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "livekpi: rebuild failed");
		SpinLockAcquire(&livekpi_shared->mutex);
		livekpi_shared->rebuilds++;
		SpinLockRelease(&livekpi_shared->mutex);
	}
	else
	{
		char		key_kind = key_kind_of(key_type);
		KpiArrays	a;
		Datum		values[20];
		char		nulls[20];

		batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "livekpi batch",
										  ALLOCSET_DEFAULT_SIZES);
		kpi_batch_init(&batch, key_kind, batch_cxt);
		foreach(lc, pending)
		{
			PendingTxn *t = lfirst(lc);
			ListCell   *mc;

			if (t->commit_lsn < rebuild_lsn)
				continue;
			foreach(mc, t->messages)
			{
				PendingMessage *m = lfirst(mc);
				Change		c;
				MemoryContext old = MemoryContextSwitchTo(batch_cxt);

				change_decode(m->data, m->len, &c);
				MemoryContextSwitchTo(old);
				if (c.kind == CHANGE_TRUNCATE)
					continue;
				kpi_batch_add(&batch, &c);
			}
		}
		kpi_batch_arrays(&batch, &a);

		if (apply_plan == NULL || apply_plan_key_kind != key_kind)
			prepare_apply_plan(key_kind);

		memset(nulls, ' ', sizeof(nulls));
		values[0] = PointerGetDatum(a.b_key);
		values[1] = PointerGetDatum(a.b_day);
		values[2] = PointerGetDatum(a.b_nights);
		values[3] = PointerGetDatum(a.b_revenue);
		values[4] = PointerGetDatum(a.b_arrivals);
		values[5] = PointerGetDatum(a.b_cancelled);
		values[6] = PointerGetDatum(a.e_key);
		values[7] = PointerGetDatum(a.e_day);
		values[8] = PointerGetDatum(a.e_category);
		values[9] = PointerGetDatum(a.e_approved);
		values[10] = PointerGetDatum(a.e_pending);
		values[11] = PointerGetDatum(a.e_rejected);
		values[12] = PointerGetDatum(a.e_count);
		values[13] = PointerGetDatum(a.u_key);
		values[14] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
		values[15] = TimestampTzGetDatum(last_commit);
		values[16] = LSNGetDatum(last_end);
		values[17] = Int64GetDatum(batch.changes);
		values[18] = Int32GetDatum(livekpi_delta_retention);
		values[19] = Int32GetDatum(livekpi_delta_retention_batches);

		if (SPI_execute_plan(apply_plan, values, nulls, false, 0) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "livekpi: livekpi._apply_batch() returned no row");
		seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (isnull)
			seq = 0;
		rows_written = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

		/*
		 * A large batch changes the KPI tables faster than autovacuum
		 * re-analyzes them; with stale row counts the planner once joined
		 * a 21,000-key batch by scanning booking_daily for every key.
		 */
		if (rows_written >= ANALYZE_AFTER_ROWS &&
			SPI_execute("ANALYZE livekpi.booking_daily, livekpi.booking_monthly, "
						"livekpi.expense_daily, livekpi.expense_monthly, livekpi.portfolio_monthly",
						false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "livekpi: could not analyze the KPI tables");

		SpinLockAcquire(&livekpi_shared->mutex);
		livekpi_shared->changes_applied += batch.changes;
		livekpi_shared->rows_skipped += batch.skipped;
		SpinLockRelease(&livekpi_shared->mutex);
	}

	/* Progress commits with the KPI writes: this is what exactly-once means. */
	replorigin_session_origin_lsn = last_end;
	replorigin_session_origin_timestamp = last_commit;

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);

	LogicalConfirmReceivedLocation(last_end);
	origin_startpos = last_end;
	livekpi_wake_push_now();

	SpinLockAcquire(&livekpi_shared->mutex);
	if (seq > 0)
	{
		livekpi_shared->last_seq = seq;
		livekpi_shared->batches++;
	}
	livekpi_shared->rows_written += rows_written;
	livekpi_shared->last_batch_at = batch_start;
	record_duration(GetCurrentTimestamp() - batch_start);
	livekpi_shared->last_commit_time = last_commit;
	livekpi_shared->confirmed_lsn = MyReplicationSlot->data.confirmed_flush;
	SpinLockRelease(&livekpi_shared->mutex);

	MemoryContextReset(pending_cxt);
	pending = NIL;
	pending_changes = 0;
}

/*
 * run_rebuild
 *		The worker's own rebuild, after it (re)created its slot: the KPI
 *		tables must then be recomputed from the tracked tables, under a new
 *		epoch since the stream they came from is gone.
 */
static void
run_rebuild(void)
{
	livekpi_set_apply_state("rebuilding");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT livekpi._rebuild(true)", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "livekpi: rebuild failed");
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	livekpi_wake_push_now();
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->rebuilds++;
	SpinLockRelease(&livekpi_shared->mutex);
}

/*
 * wait_backoff
 *		Sleeps before a retry, but not through a shutdown, a reload or a
 *		pause(): commits keep setting the latch, so it waits out the
 *		remaining time in a loop.
 */
static void
wait_backoff(int ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		bool		paused;

		if (remaining <= 0)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 remaining, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_config();
		SpinLockAcquire(&livekpi_shared->mutex);
		paused = livekpi_shared->paused;
		SpinLockRelease(&livekpi_shared->mutex);
		if (paused)
			return;
	}
}

/*
 * try_step
 *		Runs one step that may fail for reasons outside livekpi (a lock
 *		timeout, a full disk, a user's constraint on livekpi.properties):
 *		the error is logged and published, the transaction rolled back,
 *		and the same changes are tried again after a backoff.
 */
static bool
try_step(void (*step) (void), int *backoff_ms)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = false;

	PG_TRY();
	{
		step();
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		/* The prepared plan may belong to dropped objects; make it anew. */
		apply_plan = NULL;
		AbortCurrentTransaction();
		MemoryContextSwitchTo(oldcxt);
		ereport(LOG,
				(errmsg("livekpi apply worker failed, will retry: %s", edata->message)));
		record_error(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	if (ok)
	{
		*backoff_ms = 0;
		return true;
	}
	*backoff_ms = *backoff_ms == 0 ? RETRY_FIRST_MS : Min(*backoff_ms * 2, RETRY_MAX_MS);
	livekpi_set_apply_state("retrying");
	wait_backoff(*backoff_ms);
	return false;
}

static void
wait_for_extension(void)
{
	livekpi_set_apply_state("waiting for extension");
	while (!extension_exists())
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 5000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_config();
	}
}

/*
 * drop_slot_and_exit
 *		After DROP EXTENSION the slot would pin WAL forever: drop it and the
 *		origin, then exit; the postmaster restarts the worker, which waits
 *		for the extension to come back.
 */
static void
drop_slot_and_exit(void)
{
	ereport(LOG,
			(errmsg("livekpi extension was dropped; dropping replication slot \"%s\" and origin \"%s\"",
					LIVEKPI_SLOT_NAME, LIVEKPI_ORIGIN_NAME)));
	if (decoding != NULL)
		FreeDecodingContext(decoding);
	decoding = NULL;
	replorigin_session_reset();
	replorigin_session_origin = InvalidRepOriginId;
	ReplicationSlotRelease();
	ReplicationSlotDrop(LIVEKPI_SLOT_NAME, true);
	StartTransactionCommand();
	replorigin_drop_by_name(LIVEKPI_ORIGIN_NAME, true, false);
	CommitTransactionCommand();
	/* exit code 1: the postmaster restarts us to wait for the extension */
	proc_exit(1);
}

/*
 * allow_own_output_plugin
 *		Newer PostgreSQL 15 minor releases only let output plugins listed in
 *		output_plugin_libraries decode.  That setting guards against
 *		REPLICATION users loading arbitrary libraries; this worker is the
 *		library itself, running as superuser, so it adds livekpi to the list
 *		for its own session only.
 */
static void
allow_own_output_plugin(void)
{
	const char *current = GetConfigOption("output_plugin_libraries", true, false);

	if (current == NULL)
		return;					/* a minor release without the setting */
	if (strstr(current, "livekpi") == NULL)
		SetConfigOption("output_plugin_libraries",
						current[0] ? psprintf("%s, livekpi", current) : "livekpi",
						PGC_SUSET, PGC_S_OVERRIDE);
}

void
livekpi_apply_main(Datum main_arg)
{
	int			backoff_ms = 0;
	TimestampTz last_extension_check = 0;
	bool		created;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(livekpi_database, NULL, 0);
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "livekpi apply", PGC_SUSET, PGC_S_OVERRIDE);
	allow_own_output_plugin();
	apply_decoding_work_mem();

	on_shmem_exit(apply_shmem_exit, (Datum) 0);
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->apply_pid = MyProcPid;
	livekpi_shared->apply_latch = MyLatch;
	livekpi_shared->slot_ready = false;
	SpinLockRelease(&livekpi_shared->mutex);

	pending_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi pending changes",
										ALLOCSET_DEFAULT_SIZES);

	wait_for_extension();
	setup_origin();
	created = acquire_slot();
	if (created)
	{
		while (!try_step(run_rebuild, &backoff_ms))
			;
	}

	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->slot_ready = true;
	livekpi_shared->confirmed_lsn = MyReplicationSlot->data.confirmed_flush;
	SpinLockRelease(&livekpi_shared->mutex);

	for (;;)
	{
		XLogRecPtr	end_of_wal;
		bool		more;
		TimestampTz now;
		bool		paused;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_config();

		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_extension_check, now, IDLE_TIMEOUT_MS))
		{
			if (!extension_exists())
				drop_slot_and_exit();
			(void) try_step(refresh_stale, &backoff_ms);
			last_extension_check = now;
		}

		SpinLockAcquire(&livekpi_shared->mutex);
		paused = livekpi_shared->paused;
		SpinLockRelease(&livekpi_shared->mutex);
		if (paused)
		{
			livekpi_set_apply_state("paused");
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 IDLE_TIMEOUT_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}

		/* flush_interval: at most one batch start per interval */
		if (livekpi_flush_interval > 0 && last_batch_start != 0 &&
			!TimestampDifferenceExceeds(last_batch_start, now, livekpi_flush_interval))
		{
			long		wait_ms = livekpi_flush_interval -
				TimestampDifferenceMilliseconds(last_batch_start, now);

			(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Max(wait_ms, 1), PG_WAIT_EXTENSION);
			continue;
		}

		/*
		 * A batch that failed stays pending and is retried before anything
		 * new is decoded, so that batches keep their boundaries.
		 */
		end_of_wal = GetFlushRecPtr(NULL);
		if (pending == NIL)
		{
			livekpi_set_apply_state("streaming");
			more = decode_until(end_of_wal, livekpi_max_batch_changes);
		}
		else
			more = true;

		if (pending != NIL)
		{
			last_batch_start = now;
			livekpi_set_apply_state("applying");
			if (!try_step(apply_pending, &backoff_ms))
				continue;
		}
		else if (decoding->reader->EndRecPtr > MyReplicationSlot->data.confirmed_flush &&
				 current == NULL)
		{
			/* Nothing of ours in that WAL: let the slot move on. */
			LogicalConfirmReceivedLocation(decoding->reader->EndRecPtr);
		}

		if (!more)
		{
			SpinLockAcquire(&livekpi_shared->mutex);
			if (current == NULL)
				livekpi_shared->processed_lsn = Max(livekpi_shared->processed_lsn,
													Min(decoding->reader->EndRecPtr, end_of_wal));
			livekpi_shared->caught_up_at = GetCurrentTimestamp();
			livekpi_shared->confirmed_lsn = MyReplicationSlot->data.confirmed_flush;
			SpinLockRelease(&livekpi_shared->mutex);
			livekpi_set_apply_state("idle");

			if (GetFlushRecPtr(NULL) <= decoding->reader->EndRecPtr)
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 IDLE_TIMEOUT_MS, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
			}
		}
	}
}
