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

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
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
#include "storage/buffile.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/numeric.h"
#include "utils/resowner.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "apply_kpi.h"
#include "change.h"
#include "kpi.h"
#include "livekpi.h"

/* How long the worker sleeps when nothing wakes it. */
#define IDLE_TIMEOUT_MS			1000
/* Backoff after a failed batch: doubles from the first to the last. */
#define RETRY_FIRST_MS			100
#define RETRY_MAX_MS			30000

/* Careful mode: a decoded source transaction waiting to be applied. */
typedef struct PendingTxn
{
	TransactionId xid;
	XLogRecPtr	commit_lsn;
	XLogRecPtr	end_lsn;
	TimestampTz commit_time;
	bool		has_truncate;
	int			nmessages;		/* in careful_file, from its start */
} PendingTxn;

/* A change record, read back from careful_file at its exact size. */
typedef struct PendingMessage
{
	XLogRecPtr	lsn;			/* of the logical-decoding message */
	int			len;
	char		data[FLEXIBLE_ARRAY_MEMBER];
} PendingMessage;

static void open_decoding(void);
static void publish_stale(bool stale);
static void check_test_failure(const Change *c);

static LogicalDecodingContext *decoding = NULL;
static RepOriginId origin_id = InvalidRepOriginId;
static XLogRecPtr origin_startpos = InvalidXLogRecPtr;

/*
 * Careful mode decodes one source transaction at a time (pending has at
 * most one entry); the next is decoded once it is applied.
 */
static MemoryContext pending_cxt = NULL;
static List *pending = NIL;		/* of PendingTxn */

/*
 * The records of that transaction are written to a temporary file (in
 * temp_tablespaces, under temp_file_limit), so that careful mode's memory
 * is one record at a time too; careful_msg_cxt holds the record being
 * applied.
 */
static BufFile *careful_file = NULL;
static MemoryContext careful_msg_cxt = NULL;
static PendingTxn *current = NULL;	/* being decoded */
static int64 pending_changes = 0;

/*
 * A batch is coalesced while it is decoded: each change is added to the
 * KpiBatch at once and not kept, so the worker's memory is the batch's
 * distinct KPI keys (plus the decoder's logical_decoding_work_mem), never a
 * copy of each change (docs/internals.md, "The apply path").  The
 * transactions are filtered as they begin, with the rebuild_lsn and key
 * type read before decoding (the hint); apply_pending checks the hint under
 * the state row lock, and when a rebuild moved rebuild_lsn past a
 * transaction of the batch, the batch is decoded again from the slot.
 */
typedef struct BatchInfo
{
	int			ntxns;			/* source transactions, kept or not */
	XLogRecPtr	first_commit;
	XLogRecPtr	last_commit;
	XLogRecPtr	last_end;
	TimestampTz last_commit_time;
	XLogRecPtr	first_kept;		/* commit LSN of the first one applied */
	bool		truncate;		/* a kept transaction truncated a table */
	ErrorData  *error;			/* the first error adding a change */
} BatchInfo;

static MemoryContext batch_cxt = NULL;	/* reset after each batch */
static KpiBatch batch;
static bool batch_ready = false;	/* batch initialised with hint_key_kind */
static BatchInfo binfo;

static bool hint_valid = false;
static XLogRecPtr hint_rebuild_lsn = InvalidXLogRecPtr;
static char hint_key_kind = KEY_INT;

/* The source transaction being decoded (batch mode). */
static bool in_txn = false;
static bool txn_kept = false;
static TransactionId txn_xid = InvalidTransactionId;
static XLogRecPtr txn_commit = InvalidXLogRecPtr;
static bool txn_truncate = false;
static int64 txn_added = 0;		/* changes added since begin or the last marker */
static int	txn_markers = 0;
static bool txn_skipping = false;	/* before the marker named below */
static ErrorData *txn_error = NULL;

/*
 * A rebuild marker after changes of its transaction were added: the batch
 * is decoded again, and this time that transaction's changes are skipped
 * up to its skip_marker'th marker.
 */
static bool redecode_needed = false;
static const char *redecode_reason = NULL;
static TransactionId skip_xid = InvalidTransactionId;
static int	skip_marker = 0;

/* Careful mode lasts until the origin reaches the failed batch's end. */
static XLogRecPtr careful_until = InvalidXLogRecPtr;

/* Scratch memory for decoding one change into the batch. */
static MemoryContext decode_cxt = NULL;

static TimestampTz last_batch_start = 0;

/*
 * Careful mode: set when a batch failed with an error retrying cannot cure;
 * the pending transactions are then applied one source transaction per
 * apply transaction and one change per subtransaction, until none is left.
 */
static bool careful = false;

/* Scratch memory for checking change records as they are decoded. */
static MemoryContext check_cxt = NULL;

/* What the error context callback says about the work in progress. */
typedef struct ApplyErrorContext
{
	PendingTxn *txn;			/* careful mode: the source transaction */
	PendingMessage *msg;		/* careful mode: the change */
	int			ordinal;
	int			ntxns;			/* batch: transactions */
	XLogRecPtr	first_commit;	/* batch: first and last commit LSN */
	XLogRecPtr	last_commit;
} ApplyErrorContext;

static ApplyErrorContext apply_errctx;

/* The outcome of a step run by try_step. */
typedef enum StepResult
{
	STEP_OK,
	STEP_RETRIED,				/* failed, logged, backed off */
	STEP_DATA_ERROR				/* failed with an error retrying cannot cure */
} StepResult;

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
	if (livekpi_shared->apply_connecting)
	{
		/* connecting to livekpi.database failed: see wait_for_database */
		livekpi_shared->apply_connecting = false;
		livekpi_shared->apply_database_missing = true;
		snprintf(livekpi_shared->last_error, LIVEKPI_ERROR_LEN,
				 "could not connect to database \"%s\" named by livekpi.database",
				 livekpi_database);
		livekpi_shared->last_error_at = GetCurrentTimestamp();
	}
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

/*
 * change_is_readable
 *		A record the worker cannot read (not from the capture trigger, or
 *		damaged) must not stop the pipeline: it is left out, counted in
 *		records_rejected and logged with its LSN.  change_decode only parses
 *		(no locks, no buffers), so its error can be caught here without a
 *		subtransaction.
 */
static bool
change_is_readable(const char *body, int len, XLogRecPtr lsn)
{
	MemoryContext old = MemoryContextSwitchTo(check_cxt);
	ErrorData  *edata = NULL;

	PG_TRY();
	{
		Change		c;

		if (len <= 0)
			elog(ERROR, "livekpi: empty change record");
		change_decode(body, len, &c);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(check_cxt);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);

	if (edata != NULL)
	{
		ereport(LOG,
				(errmsg("livekpi apply worker ignored a change record it cannot read at LSN %X/%X: %s",
						LSN_FORMAT_ARGS(lsn), edata->message)));
		SpinLockAcquire(&livekpi_shared->mutex);
		livekpi_shared->records_rejected++;
		SpinLockRelease(&livekpi_shared->mutex);
	}
	MemoryContextReset(check_cxt);
	return edata == NULL;
}

static void
decoding_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
					   TransactionId xid, bool last_write)
{
	resetStringInfo(ctx->out);
}

/*
 * coalesce_change
 *		Adds one change record to the batch.  An error here (a value the
 *		rules cannot take, livekpi.test_fail_on_amount) must fail the batch
 *		at apply time, where careful mode can take it, not the decoding:
 *		the first one is kept and the rest of the transaction is not read.
 *		Decoding and adding take no locks and no buffers, so the error is
 *		caught without a subtransaction.
 */
static void
coalesce_change(const char *body, int len)
{
	MemoryContext old = CurrentMemoryContext;

	txn_added++;
	if (txn_error != NULL)
		return;
	PG_TRY();
	{
		Change		c;

		MemoryContextSwitchTo(decode_cxt);
		change_decode(body, len, &c);
		check_test_failure(&c);
		kpi_batch_add(&batch, &c);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(batch_cxt);
		txn_error = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(decode_cxt);
}

/* Positions careful_file at its start, making it when it is missing. */
static void
careful_file_rewind(void)
{
	if (careful_file == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		/* interXact: it outlives the transactions it is used in */
		careful_file = BufFileCreateTemp(true);
		MemoryContextSwitchTo(old);
	}
	if (BufFileSeek(careful_file, 0, 0, SEEK_SET) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("livekpi: could not seek in the careful mode temporary file: %m")));
}

/* Careful mode: the frames of one source transaction, to careful_file. */
static void
careful_write(StringInfo msg, XLogRecPtr lsn, int len)
{
	MemoryContext old = MemoryContextSwitchTo(pending_cxt);

	switch (pq_getmsgbyte(msg))
	{
		case 'B':
			current = palloc0(sizeof(PendingTxn));
			current->xid = (TransactionId) pq_getmsgint(msg, 4);
			careful_file_rewind();
			break;
		case 'M':
			{
				const char *body = pq_getmsgbytes(msg, msg->len - msg->cursor);
				PendingMessage head;

				len--;
				if (current == NULL)
					elog(ERROR, "livekpi: change record outside a transaction");
				if (len > 0 && body[0] == CHANGE_REBUILD)
				{
					pending_changes -= current->nmessages;
					current->nmessages = 0;
					current->has_truncate = false;
					careful_file_rewind();
					break;
				}
				if (!change_is_readable(body, len, lsn))
					break;
				if (body[0] == CHANGE_TRUNCATE)
					current->has_truncate = true;
				head.lsn = lsn;
				head.len = len;
				BufFileWrite(careful_file, &head, offsetof(PendingMessage, data));
				BufFileWrite(careful_file, (void *) body, len);
				current->nmessages++;
				pending_changes++;
				break;
			}
		case 'C':
			if (current == NULL)
				elog(ERROR, "livekpi: commit outside a transaction");
			current->commit_lsn = (XLogRecPtr) pq_getmsgint64(msg);
			current->end_lsn = (XLogRecPtr) pq_getmsgint64(msg);
			current->commit_time = (TimestampTz) pq_getmsgint64(msg);
			/* Already applied before a crash: the origin remembers. */
			if (current->end_lsn <= origin_startpos)
				pending_changes -= current->nmessages;
			else
				pending = lappend(pending, current);
			current = NULL;
			break;
		default:
			elog(ERROR, "livekpi: unknown frame from the output plugin");
	}
	MemoryContextSwitchTo(old);
}

/* Makes the batch's KpiBatch when its first transaction is kept. */
static void
batch_begin(void)
{
	if (batch_ready)
		return;
	kpi_batch_init(&batch, hint_key_kind, batch_cxt);
	batch_ready = true;
}

/*
 * decoding_write
 *		Receives the plugin's binary frames.  In batch mode a transaction is
 *		kept or dropped at its 'B' frame (applied before a crash: the origin
 *		remembers; committed before rebuild_lsn: the rebuild counted it) and
 *		its changes are added to the batch as they arrive.  A rebuild marker
 *		drops the changes its transaction made before it: the rebuild
 *		already counted them; when some were added already, the batch is
 *		decoded again, skipping them.
 */
static void
decoding_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
			   TransactionId xid, bool last_write)
{
	StringInfo	out = ctx->out;
	StringInfoData msg;

	msg.data = out->data;
	msg.len = out->len;
	msg.maxlen = out->len;
	msg.cursor = 0;

	if (careful)
	{
		careful_write(&msg, lsn, out->len);
		return;
	}

	switch (pq_getmsgbyte(&msg))
	{
		case 'B':
			{
				XLogRecPtr	end;

				in_txn = true;
				txn_xid = (TransactionId) pq_getmsgint(&msg, 4);
				txn_commit = (XLogRecPtr) pq_getmsgint64(&msg);
				end = (XLogRecPtr) pq_getmsgint64(&msg);
				txn_truncate = false;
				txn_added = 0;
				txn_markers = 0;
				txn_error = NULL;
				txn_skipping = (txn_xid == skip_xid && skip_marker > 0);
				/* already applied before a crash, or counted by a rebuild */
				txn_kept = end > origin_startpos && txn_commit >= hint_rebuild_lsn;
				if (txn_kept)
					batch_begin();
				break;
			}
		case 'M':
			{
				const char *body = pq_getmsgbytes(&msg, msg.len - msg.cursor);
				int			len = out->len - 1;

				if (!in_txn)
					elog(ERROR, "livekpi: change record outside a transaction");
				if (len > 0 && body[0] == CHANGE_REBUILD)
				{
					txn_markers++;
					if (txn_skipping && txn_markers >= skip_marker)
						txn_skipping = false;
					else if (txn_kept && !txn_skipping && txn_added > 0 && !redecode_needed)
					{
						redecode_needed = true;
						redecode_reason = "a rebuild marker follows changes of its own transaction";
						skip_xid = txn_xid;
						skip_marker = txn_markers;
					}
					txn_truncate = false;
					txn_added = 0;
					break;
				}
				if (!change_is_readable(body, len, lsn))
					break;
				if (!txn_kept || txn_skipping || redecode_needed)
					break;
				if (body[0] == CHANGE_TRUNCATE)
					txn_truncate = true;
				else
					coalesce_change(body, len);
				break;
			}
		case 'C':
			{
				XLogRecPtr	commit_lsn = (XLogRecPtr) pq_getmsgint64(&msg);
				XLogRecPtr	end_lsn = (XLogRecPtr) pq_getmsgint64(&msg);
				TimestampTz commit_time = (TimestampTz) pq_getmsgint64(&msg);

				if (!in_txn)
					elog(ERROR, "livekpi: commit outside a transaction");
				in_txn = false;
				if (end_lsn <= origin_startpos)
					break;
				if (binfo.ntxns++ == 0)
					binfo.first_commit = commit_lsn;
				binfo.last_commit = commit_lsn;
				binfo.last_end = end_lsn;
				binfo.last_commit_time = commit_time;
				if (!txn_kept)
					break;
				if (binfo.first_kept == InvalidXLogRecPtr)
					binfo.first_kept = commit_lsn;
				binfo.truncate |= txn_truncate;
				if (binfo.error == NULL)
					binfo.error = txn_error;
				pending_changes += txn_added;
				break;
			}
		default:
			elog(ERROR, "livekpi: unknown frame from the output plugin");
	}
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
		if (pending_changes >= max_changes || redecode_needed ||
			(careful ? pending != NIL : (binfo.error != NULL && !in_txn)))
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

	open_decoding();
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

/* What pg_extension says about livekpi. */
typedef enum ExtensionStatus
{
	EXTENSION_MISSING,
	EXTENSION_OTHER_VERSION,	/* needs ALTER EXTENSION livekpi UPDATE */
	EXTENSION_READY
} ExtensionStatus;

/*
 * extension_status
 *		Whether the extension exists in this database, and at the version
 *		this library implements: between a restart with a new library and
 *		ALTER EXTENSION livekpi UPDATE the SQL objects are the old ones.
 */
static ExtensionStatus
extension_status(void)
{
	ExtensionStatus status = EXTENSION_MISSING;
	Oid			extoid;

	StartTransactionCommand();
	extoid = get_extension_oid("livekpi", true);
	if (OidIsValid(extoid))
	{
		Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;

		ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(extoid));
		scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
		tup = systable_getnext(scan);
		if (HeapTupleIsValid(tup))
		{
			bool		isnull;
			Datum		v = heap_getattr(tup, Anum_pg_extension_extversion,
										 RelationGetDescr(rel), &isnull);

			status = (!isnull && strcmp(TextDatumGetCString(v), LIVEKPI_VERSION) == 0) ?
				EXTENSION_READY : EXTENSION_OTHER_VERSION;
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	CommitTransactionCommand();
	return status;
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

/*
 * apply_error_callback
 *		Says which batch, source transaction and change an error comes from,
 *		the way PostgreSQL's own apply worker names the remote transaction,
 *		so that the log and livekpi.status point at the change at fault.
 */
static void
apply_error_callback(void *arg)
{
	ApplyErrorContext *e = &apply_errctx;

	if (e->msg != NULL)
		errcontext("livekpi applying change %d (message at LSN %X/%X) of the source transaction committed at LSN %X/%X",
				   e->ordinal, LSN_FORMAT_ARGS(e->msg->lsn),
				   LSN_FORMAT_ARGS(e->txn->commit_lsn));
	else if (e->txn != NULL)
		errcontext("livekpi applying the source transaction committed at LSN %X/%X",
				   LSN_FORMAT_ARGS(e->txn->commit_lsn));
	else if (e->ntxns > 0)
		errcontext("livekpi applying a batch of %d source transactions committed at LSN %X/%X to %X/%X",
				   e->ntxns, LSN_FORMAT_ARGS(e->first_commit),
				   LSN_FORMAT_ARGS(e->last_commit));
}

/*
 * lock_state
 *		Locks the state row (the apply worker and rebuild() serialize on it)
 *		and returns rebuild_lsn and the key kind.
 */
static XLogRecPtr
lock_state(char *key_kind)
{
	bool		isnull;
	XLogRecPtr	rebuild_lsn;

	if (SPI_execute("SELECT rebuild_lsn, key_type::text FROM livekpi.state FOR UPDATE",
					false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "livekpi: livekpi.state must have exactly one row");
	rebuild_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	*key_kind = key_kind_of(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	return rebuild_lsn;
}

/*
 * check_test_failure
 *		livekpi.test_fail_on_amount (tests only): a change carrying that
 *		exact amount fails to apply with a data error, the kind of failure
 *		only one change triggers.
 */
static void
check_test_failure(const Change *c)
{
	Datum		target;
	const ChangeImage *imgs[2];
	int			i;

	if (livekpi_test_fail_on_amount == NULL || livekpi_test_fail_on_amount[0] == '\0')
		return;
	target = DirectFunctionCall3(numeric_in, CStringGetDatum(livekpi_test_fail_on_amount),
								 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	imgs[0] = c->has_old ? &c->old : NULL;
	imgs[1] = c->has_new ? &c->new : NULL;
	for (i = 0; i < 2; i++)
	{
		if (imgs[i] == NULL || imgs[i]->amount == NULL)
			continue;
		if (DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(imgs[i]->amount), target)))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("livekpi.test_fail_on_amount: a change with amount %s cannot be applied",
							livekpi_test_fail_on_amount)));
	}
}

/* Adds one change record to the batch being built (read in its memory). */
static void
add_change(KpiBatch *batch, PendingMessage *m)
{
	Change		c;
	MemoryContext old = MemoryContextSwitchTo(batch->context);

	change_decode(m->data, m->len, &c);
	MemoryContextSwitchTo(old);
	if (c.kind == CHANGE_TRUNCATE)
		return;
	check_test_failure(&c);
	kpi_batch_add(batch, &c);
}

/*
 * apply_kpi_batch
 *		Writes a batch's coalesced deltas, its delta_log row and the next seq
 *		(none when nothing changed).
 */
static void
apply_kpi_batch(KpiBatch *batch, char key_kind, TimestampTz last_commit,
				XLogRecPtr last_end, int64 *seq, int64 *rows_written)
{
	int64		counted;

	/*
	 * No SQL joins the batch's keys with the KPI tables any more, so the
	 * worker does not ANALYZE them after large batches: autovacuum's
	 * statistics serve the users' queries.
	 */
	apply_kpi_batch_c(batch, key_kind, last_commit, last_end, seq, rows_written, &counted);
}

/* What an apply transaction did, published once it committed. */
typedef struct ApplyTotals
{
	int64		seq;			/* newest seq written, 0 if none */
	int64		seqs;			/* seqs written */
	int64		changes;
	int64		rows_skipped;
	int64		rows_written;
	int64		rebuilds;
} ApplyTotals;

/*
 * finish_apply
 *		Commits an apply transaction with the origin's progress, lets the
 *		slot move on and publishes what it did.
 */
static void
finish_apply(XLogRecPtr last_end, TimestampTz last_commit,
			 TimestampTz batch_start, const ApplyTotals *tot)
{
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
	if (tot->seq > 0)
		livekpi_shared->last_seq = tot->seq;
	livekpi_shared->batches += tot->seqs;
	livekpi_shared->changes_applied += tot->changes;
	livekpi_shared->rows_skipped += tot->rows_skipped;
	livekpi_shared->rows_written += tot->rows_written;
	livekpi_shared->rebuilds += tot->rebuilds;
	livekpi_shared->last_batch_at = batch_start;
	record_duration(GetCurrentTimestamp() - batch_start);
	livekpi_shared->last_commit_time = last_commit;
	livekpi_shared->confirmed_lsn = MyReplicationSlot->data.confirmed_flush;
	SpinLockRelease(&livekpi_shared->mutex);
}

/* Forgets the batch decoded so far (not the decoding position). */
static void
batch_reset(void)
{
	MemoryContextReset(batch_cxt);
	batch_ready = false;
	memset(&binfo, 0, sizeof(binfo));
	pending_changes = 0;
}

/*
 * apply_pending
 *		Applies the batch in one transaction.  Under the lock on
 *		livekpi.state it checks that the transactions were filtered with
 *		the rebuild_lsn and key type in force (else the batch is decoded
 *		again: redecode_needed), and when a tracked table was truncated it
 *		rebuilds instead.
 */
static void
apply_pending(void)
{
	XLogRecPtr	rebuild_lsn;
	TimestampTz batch_start = GetCurrentTimestamp();
	char		key_kind;
	ApplyTotals tot = {0};
	ErrorContextCallback errcallback;

	memset(&apply_errctx, 0, sizeof(apply_errctx));
	apply_errctx.ntxns = binfo.ntxns;
	apply_errctx.first_commit = binfo.first_commit;
	apply_errctx.last_commit = binfo.last_commit;
	errcallback.callback = apply_error_callback;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "livekpi: applying a batch");

	rebuild_lsn = lock_state(&key_kind);

	if ((binfo.first_kept != InvalidXLogRecPtr &&
		 (key_kind != hint_key_kind || binfo.first_kept < rebuild_lsn)) ||
		rebuild_lsn < hint_rebuild_lsn)
	{
		/* a rebuild ran since the hint was read: decode the batch again */
		error_context_stack = errcallback.previous;
		PopActiveSnapshot();
		SPI_finish();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		hint_valid = false;
		redecode_needed = true;
		redecode_reason = "a rebuild ran after the batch was decoded";
		return;
	}
	hint_rebuild_lsn = rebuild_lsn;

	if (binfo.truncate)
	{
		/* The rebuild counts everything committed so far, these included. */
		if (SPI_execute("SELECT livekpi._rebuild(false)", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "livekpi: rebuild failed");
		tot.rebuilds = 1;
	}
	else if (batch_ready)
	{
		if (binfo.error != NULL)
			ReThrowError(binfo.error);
		apply_kpi_batch(&batch, key_kind, binfo.last_commit_time, binfo.last_end,
						&tot.seq, &tot.rows_written);
		tot.seqs = tot.seq > 0 ? 1 : 0;
		tot.changes = batch.changes;
		tot.rows_skipped = batch.skipped;
	}

	error_context_stack = errcallback.previous;
	finish_apply(binfo.last_end, binfo.last_commit_time, batch_start, &tot);
	batch_reset();
}

/* ---- careful mode ---------------------------------------------------- */

/* A change careful mode skipped, recorded with the origin's progress. */
typedef struct SkippedChange
{
	XLogRecPtr	message_lsn;
	int			ordinal;
	Oid			relid;
	int			sqlerrcode;
	char	   *message;
} SkippedChange;

/*
 * raised_by_user_code
 *		Whether the error context names a function that is not livekpi's:
 *		a user's trigger (or a function it called) on a KPI table.  The
 *		worker runs with search_path = pg_catalog, so every function outside
 *		pg_catalog is printed schema-qualified.
 */
static bool
raised_by_user_code(const ErrorData *edata)
{
	const char *p = edata->context;

	while (p != NULL && (p = strstr(p, "function ")) != NULL)
	{
		p += strlen("function ");
		if (*p == '"')
			p++;
		if (strncmp(p, "livekpi.", strlen("livekpi.")) != 0)
			return true;
	}
	return false;
}

/* livekpi's own constraints: the only class 23 errors careful mode skips. */
static bool
own_constraint(const ErrorData *edata)
{
	static const char *const own[] = {
		"booking_daily_pkey", "booking_monthly_pkey", "expense_daily_pkey",
		"expense_monthly_pkey", "portfolio_monthly_pkey", "properties_pkey",
		"properties_units_check", "delta_log_pkey"
	};
	int			i;

	if (edata->schema_name == NULL || strcmp(edata->schema_name, "livekpi") != 0)
		return false;
	if (edata->constraint_name == NULL)
		return edata->sqlerrcode == ERRCODE_NOT_NULL_VIOLATION;
	for (i = 0; i < lengthof(own); i++)
		if (strcmp(edata->constraint_name, own[i]) == 0)
			return true;
	return false;
}

/*
 * is_data_error
 *		An error retrying cannot cure, caused by the data of a change (SPEC
 *		section 5): SQLSTATE classes 22 and 54, and 23 from livekpi's own
 *		constraints.  Everything else is retried with backoff: 40, 53, 55P03,
 *		57, 58, XX, a unique violation on livekpi.properties (a user adding
 *		the same property concurrently), and whatever users' own triggers
 *		and constraints on the KPI tables raise.
 */
static bool
is_data_error(const ErrorData *edata)
{
	int			category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);

	if (raised_by_user_code(edata))
		return false;
	if (category == ERRCODE_DATA_EXCEPTION || category == ERRCODE_PROGRAM_LIMIT_EXCEEDED)
		return true;
	if (category == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION)
	{
		if (edata->sqlerrcode == ERRCODE_UNIQUE_VIOLATION &&
			edata->table_name != NULL && strcmp(edata->table_name, "properties") == 0)
			return false;
		return own_constraint(edata);
	}
	return false;
}

/*
 * apply_change_alone
 *		Applies one change as a batch of its own in a subtransaction.
 *		Returns NULL when it applied, else the error (the subtransaction is
 *		rolled back).
 */
static ErrorData *
apply_change_alone(PendingMessage *m, PendingTxn *t, char key_kind, ApplyTotals *tot)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		KpiBatch	batch;
		int64		seq;
		int64		rows;

		kpi_batch_init(&batch, key_kind,
					   AllocSetContextCreate(CurTransactionContext, "livekpi change",
											 ALLOCSET_SMALL_SIZES));
		add_change(&batch, m);
		apply_kpi_batch(&batch, key_kind, t->commit_time, t->end_lsn, &seq, &rows);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		/* a released subtransaction's memory lives until the top commits */
		MemoryContextDelete(batch.context);

		if (seq > 0)
		{
			tot->seq = seq;
			tot->seqs++;
		}
		tot->rows_written += rows;
		tot->changes += batch.changes;
		tot->rows_skipped += batch.skipped;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_END_TRY();
	return edata;
}

/* Records a skipped change and marks the KPIs stale, in the apply transaction. */
static void
record_skip(PendingTxn *t, SkippedChange *sk)
{
	Oid			argtypes[6] = {PG_LSNOID, PG_LSNOID, INT4OID, OIDOID, TEXTOID, TEXTOID};
	Datum		values[6];
	char		reason[128];

	values[0] = LSNGetDatum(t->commit_lsn);
	values[1] = LSNGetDatum(sk->message_lsn);
	values[2] = Int32GetDatum(sk->ordinal);
	values[3] = ObjectIdGetDatum(sk->relid);
	values[4] = CStringGetTextDatum(unpack_sql_state(sk->sqlerrcode));
	values[5] = CStringGetTextDatum(sk->message);
	if (SPI_execute_with_args("INSERT INTO livekpi.skipped_changes "
							  "(commit_lsn, message_lsn, ordinal, relid, sqlstate, message) "
							  "VALUES ($1, $2, $3, $4, $5, $6)",
							  6, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "livekpi: could not record a skipped change");

	snprintf(reason, sizeof(reason), "a source change was skipped at LSN %X/%X",
			 LSN_FORMAT_ARGS(sk->message_lsn));
	argtypes[0] = TEXTOID;
	values[0] = CStringGetTextDatum(reason);
	if (SPI_execute_with_args("SELECT livekpi._mark_stale($1)", 1, argtypes, values,
							  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "livekpi: could not mark the KPIs stale");
}

/*
 * apply_txn_carefully
 *		Applies one source transaction in one apply transaction, each change
 *		in its own subtransaction, not coalesced.  A change that fails alone
 *		with a data error is skipped and recorded in the transaction that
 *		moves the origin past it; nothing else about the search is kept, so
 *		after a crash the same input gives the same decision.  Two changes in
 *		a row failing with the same SQLSTATE are taken for a systemic fault:
 *		nothing is skipped and the transaction is retried after a backoff.
 */
static void
apply_txn_carefully(PendingTxn *t)
{
	TimestampTz batch_start = GetCurrentTimestamp();
	XLogRecPtr	rebuild_lsn;
	char		key_kind;
	ApplyTotals tot = {0};
	List	   *skips = NIL;
	ListCell   *lc;
	ErrorContextCallback errcallback;

	memset(&apply_errctx, 0, sizeof(apply_errctx));
	apply_errctx.txn = t;
	errcallback.callback = apply_error_callback;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "livekpi: applying a transaction carefully");

	rebuild_lsn = lock_state(&key_kind);

	if (t->commit_lsn >= rebuild_lsn && t->has_truncate)
	{
		if (SPI_execute("SELECT livekpi._rebuild(false)", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "livekpi: rebuild failed");
		tot.rebuilds = 1;
	}
	else if (t->commit_lsn >= rebuild_lsn)
	{
		int			ordinal = 0;
		int			previous_failure = 0;
		int			previous_ordinal = 0;

		careful_file_rewind();
		while (ordinal < t->nmessages)
		{
			PendingMessage *m;
			PendingMessage head;
			ErrorData  *edata;
			SkippedChange *sk;
			Change		c;

			/* one record in memory at a time */
			MemoryContextReset(careful_msg_cxt);
			if (BufFileRead(careful_file, &head, offsetof(PendingMessage, data)) !=
				offsetof(PendingMessage, data))
				elog(ERROR, "livekpi: could not read the careful mode temporary file");
			m = MemoryContextAlloc(careful_msg_cxt, offsetof(PendingMessage, data) + head.len);
			*m = head;
			if (BufFileRead(careful_file, m->data, head.len) != head.len)
				elog(ERROR, "livekpi: could not read the careful mode temporary file");

			ordinal++;
			apply_errctx.msg = m;
			apply_errctx.ordinal = ordinal;
			edata = apply_change_alone(m, t, key_kind, &tot);
			if (edata == NULL)
			{
				previous_failure = 0;
				continue;
			}
			if (!is_data_error(edata))
				ReThrowError(edata);
			if (previous_failure == edata->sqlerrcode && previous_ordinal == ordinal - 1)
				ereport(ERROR,
						(errcode(edata->sqlerrcode),
						 errmsg("livekpi: changes %d and %d of one source transaction failed with the same SQLSTATE %s; not skipping what looks systemic: %s",
								previous_ordinal, ordinal, unpack_sql_state(edata->sqlerrcode),
								edata->message),
						 errhint("Fix the cause; the worker retries with backoff.")));
			previous_failure = edata->sqlerrcode;
			previous_ordinal = ordinal;

			change_decode(m->data, m->len, &c);
			/* kept past the commit, for the log */
			sk = MemoryContextAlloc(pending_cxt, sizeof(SkippedChange));
			sk->message_lsn = m->lsn;
			sk->ordinal = ordinal;
			sk->relid = c.relid;
			sk->sqlerrcode = edata->sqlerrcode;
			sk->message = MemoryContextStrdup(pending_cxt, edata->message);
			{
				/* the list too: SPI's memory is gone after the commit */
				MemoryContext old = MemoryContextSwitchTo(pending_cxt);

				skips = lappend(skips, sk);
				MemoryContextSwitchTo(old);
			}
			FreeErrorData(edata);
		}
		apply_errctx.msg = NULL;
		foreach(lc, skips)
			record_skip(t, lfirst(lc));
	}
	tot.rows_skipped += list_length(skips);
	error_context_stack = errcallback.previous;
	finish_apply(t->end_lsn, t->commit_time, batch_start, &tot);

	/* Logged once it is decided for good, i.e. committed. */
	foreach(lc, skips)
	{
		SkippedChange *sk = lfirst(lc);

		ereport(WARNING,
				(errcode(sk->sqlerrcode),
				 errmsg("livekpi skipped the source change at LSN %X/%X: %s",
						LSN_FORMAT_ARGS(sk->message_lsn), sk->message),
				 errdetail("Change %d of the source transaction committed at LSN %X/%X (table OID %u) fails alone with SQLSTATE %s; it is recorded in livekpi.skipped_changes.",
						   sk->ordinal, LSN_FORMAT_ARGS(t->commit_lsn), sk->relid,
						   unpack_sql_state(sk->sqlerrcode)),
				 errhint("The KPIs are stale until livekpi.rebuild().")));
	}
	if (skips != NIL)
		publish_stale(true);
}

/*
 * apply_carefully
 *		Careful mode: the source transaction decoded (again) from the slot,
 *		in one apply transaction; once the origin reaches the end of the
 *		batch that failed, batches resume.
 */
static void
apply_carefully(void)
{
	while (pending != NIL)
	{
		apply_txn_carefully(linitial(pending));
		pending = list_delete_first(pending);
		CHECK_FOR_INTERRUPTS();
	}
	if (origin_startpos >= careful_until)
		careful = false;
	MemoryContextReset(pending_cxt);
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
		/* a changed setting may be the cure: try again at once */
		if (ConfigReloadPending)
		{
			reload_config();
			return;
		}
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
 *		and the same changes are tried again after a backoff.  When
 *		data_errors is set, an error retrying cannot cure (is_data_error)
 *		returns STEP_DATA_ERROR at once instead, for careful mode.
 */
static StepResult
try_step(void (*step) (void), int *backoff_ms, bool data_errors)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile StepResult result = STEP_OK;

	PG_TRY();
	{
		step();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		/* The prepared plans may belong to dropped objects; make them anew. */
		apply_kpi_reset();
		MemoryContextSwitchTo(oldcxt);
		memset(&apply_errctx, 0, sizeof(apply_errctx));
		if (data_errors && is_data_error(edata))
		{
			result = STEP_DATA_ERROR;
			ereport(LOG,
					(errmsg("livekpi apply worker: a batch failed with an error retrying cannot cure; applying its transactions one change at a time: %s",
							edata->message),
					 edata->context ? errcontext_msg("%s", edata->context) : 0));
		}
		else
		{
			result = STEP_RETRIED;
			ereport(LOG,
					(errmsg("livekpi apply worker failed, will retry: %s", edata->message),
					 edata->context ? errcontext_msg("%s", edata->context) : 0));
		}
		record_error(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	if (result == STEP_OK)
		*backoff_ms = 0;
	else if (result == STEP_RETRIED)
	{
		*backoff_ms = *backoff_ms == 0 ? RETRY_FIRST_MS : Min(*backoff_ms * 2, RETRY_MAX_MS);
		livekpi_set_apply_state("retrying");
		wait_backoff(*backoff_ms);
	}
	return result;
}

/*
 * open_decoding
 *		A decoding context that reads the slot from its restart point; the
 *		origin then tells which transactions were applied already.
 */
static void
open_decoding(void)
{
	decoding = CreateDecodingContext(InvalidXLogRecPtr, plugin_options(), false,
									 reader_routine(), decoding_prepare_write,
									 decoding_write, NULL);
	XLogBeginRead(decoding->reader, MyReplicationSlot->data.restart_lsn);
	set_decoding_flag(false);
}

/*
 * restart_decoding
 *		Forgets what was decoded and not applied and reads the slot again
 *		from its restart point, with a fresh decoding context; the origin
 *		drops what was applied.  This is how a batch is retried (nothing of
 *		it is kept but its coalesced deltas, which a failed apply may have
 *		left half-used) and how careful mode reads its transactions again.
 */
static void
restart_decoding(void)
{
	if (decoding != NULL)
		FreeDecodingContext(decoding);
	decoding = NULL;
	MemoryContextReset(pending_cxt);
	pending = NIL;
	current = NULL;
	batch_reset();
	in_txn = false;
	redecode_needed = false;
	hint_valid = false;
	open_decoding();
}

/*
 * read_hint
 *		rebuild_lsn and the key type, read before a batch is decoded, so
 *		that transactions are filtered and coalesced as they arrive;
 *		apply_pending checks them again under the state row lock.
 */
static void
read_hint(void)
{
	bool		isnull;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT rebuild_lsn, key_type::text FROM livekpi.state", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "livekpi: livekpi.state must have exactly one row");
	hint_rebuild_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
	if (isnull)
		hint_rebuild_lsn = InvalidXLogRecPtr;
	hint_key_kind = key_kind_of(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	hint_valid = true;
}

/*
 * try_decode
 *		decode_until, where an error (a WAL read failure, an output plugin
 *		error) is logged, published and retried with backoff from the slot's
 *		restart point with a fresh decoding context, never a crash loop
 *		restarting into the same WAL every second.  Returns whether decoding
 *		stopped early (more to read) in *more.
 */
static bool
try_decode(XLogRecPtr end_of_wal, bool *more, int *backoff_ms)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = false;

	PG_TRY();
	{
		*more = decode_until(end_of_wal, livekpi_max_batch_changes);
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		XLogRecPtr	at = decoding->reader->ReadRecPtr;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		LWLockReleaseAll();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(oldcxt);
		set_decoding_flag(false);
		ereport(LOG,
				(errmsg("livekpi apply worker could not decode the WAL near LSN %X/%X, will retry: %s",
						LSN_FORMAT_ARGS(at), edata->message)));
		record_error(edata->message);
		FreeErrorData(edata);

		careful = false;
		restart_decoding();
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();

	if (ok)
		return true;
	*backoff_ms = *backoff_ms == 0 ? RETRY_FIRST_MS : Min(*backoff_ms * 2, RETRY_MAX_MS);
	livekpi_set_apply_state("retrying");
	wait_backoff(*backoff_ms);
	return false;
}

/*
 * wait_for_extension
 *		Waits until the extension exists at this library's version.  Changes
 *		committed meanwhile wait in the slot (the capture trigger keeps
 *		writing them).
 */
static void
wait_for_extension(void)
{
	ExtensionStatus status;

	while ((status = extension_status()) != EXTENSION_READY)
	{
		livekpi_set_apply_state(status == EXTENSION_MISSING ? "waiting for extension" :
								"needs ALTER EXTENSION livekpi UPDATE");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 status == EXTENSION_MISSING ? 5000 : IDLE_TIMEOUT_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_config();
	}
}

/*
 * wait_for_database
 *		livekpi.database did not exist when this worker last tried to
 *		connect (the connection attempt ended in FATAL).  Instead of failing
 *		to connect every second, connect to no database, say so once, and
 *		watch pg_database; exit when the database appears, so that the
 *		postmaster restarts the worker, which then connects to it.
 */
static void
wait_for_database(void)
{
	char		message[LIVEKPI_ERROR_LEN];

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->apply_connecting = false;
	SpinLockRelease(&livekpi_shared->mutex);

	snprintf(message, sizeof(message),
			 "database \"%s\" named by livekpi.database does not exist", livekpi_database);
	ereport(LOG,
			(errmsg("livekpi apply worker waits: %s", message),
			 errhint("Create the database, or set livekpi.database and restart the server.")));
	record_error(message);
	livekpi_set_apply_state("waiting for database");

	for (;;)
	{
		bool		exists;

		StartTransactionCommand();
		exists = OidIsValid(get_database_oid(livekpi_database, true));
		CommitTransactionCommand();
		if (exists)
		{
			SpinLockAcquire(&livekpi_shared->mutex);
			livekpi_shared->apply_database_missing = false;
			SpinLockRelease(&livekpi_shared->mutex);
			ereport(LOG,
					(errmsg("livekpi apply worker: database \"%s\" exists now; restarting to connect to it",
							livekpi_database)));
			proc_exit(1);
		}
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
	/* the origin first: whoever sees the slot gone sees the origin gone */
	StartTransactionCommand();
	replorigin_drop_by_name(LIVEKPI_ORIGIN_NAME, true, false);
	CommitTransactionCommand();
	ReplicationSlotRelease();
	ReplicationSlotDrop(LIVEKPI_SLOT_NAME, true);
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
	bool		database_missing;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	on_shmem_exit(apply_shmem_exit, (Datum) 0);
	SpinLockAcquire(&livekpi_shared->mutex);
	database_missing = livekpi_shared->apply_database_missing;
	livekpi_shared->apply_connecting = true;
	livekpi_shared->apply_pid = MyProcPid;
	SpinLockRelease(&livekpi_shared->mutex);
	if (database_missing)
		wait_for_database();
	BackgroundWorkerInitializeConnection(livekpi_database, NULL, 0);
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->apply_connecting = false;
	SpinLockRelease(&livekpi_shared->mutex);

	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", "livekpi apply", PGC_SUSET, PGC_S_OVERRIDE);
	allow_own_output_plugin();
	apply_decoding_work_mem();

	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->apply_pid = MyProcPid;
	livekpi_shared->apply_latch = MyLatch;
	livekpi_shared->slot_ready = false;
	SpinLockRelease(&livekpi_shared->mutex);

	pending_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi pending changes",
										ALLOCSET_DEFAULT_SIZES);
	check_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi record check",
									  ALLOCSET_SMALL_SIZES);
	careful_msg_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi careful record",
											ALLOCSET_SMALL_SIZES);
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi batch",
									  ALLOCSET_DEFAULT_SIZES);
	decode_cxt = AllocSetContextCreate(TopMemoryContext, "livekpi change decoding",
									   ALLOCSET_SMALL_SIZES);

	wait_for_extension();
	setup_origin();
	created = acquire_slot();
	if (created)
	{
		while (try_step(run_rebuild, &backoff_ms, false) != STEP_OK)
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
			ExtensionStatus status = extension_status();

			if (status == EXTENSION_MISSING)
				drop_slot_and_exit();
			if (status == EXTENSION_OTHER_VERSION)
				wait_for_extension();
			(void) try_step(refresh_stale, &backoff_ms, false);
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
		 * A batch that failed is decoded again from the slot (the origin
		 * drops what was applied), so that nothing but its coalesced deltas
		 * is ever held: see restart_decoding.
		 */
		end_of_wal = GetFlushRecPtr(NULL);
		if (!careful && !hint_valid &&
			try_step(read_hint, &backoff_ms, false) != STEP_OK)
			continue;
		livekpi_set_apply_state("streaming");
		if (!try_decode(end_of_wal, &more, &backoff_ms))
			continue;
		if (redecode_needed)
		{
			ereport(LOG,
					(errmsg("livekpi apply worker decodes the batch again from the slot: %s",
							redecode_reason)));
			restart_decoding();
			continue;
		}

		if (careful && pending != NIL)
		{
			last_batch_start = now;
			livekpi_set_apply_state("applying carefully");
			if (try_step(apply_carefully, &backoff_ms, false) != STEP_OK)
			{
				restart_decoding();
				continue;
			}
			if (!careful)
				hint_valid = false;
		}
		else if (!careful && binfo.ntxns > 0)
		{
			StepResult result;

			last_batch_start = now;
			livekpi_set_apply_state("applying");
			result = try_step(apply_pending, &backoff_ms, true);
			if (result == STEP_DATA_ERROR)
			{
				careful = true;
				careful_until = binfo.last_end;
			}
			if (result != STEP_OK || redecode_needed)
			{
				if (result == STEP_OK)
					ereport(LOG,
							(errmsg("livekpi apply worker decodes the batch again from the slot: %s",
									redecode_reason)));
				restart_decoding();
				continue;
			}
			/* the batch that had to skip up to a marker is applied */
			skip_xid = InvalidTransactionId;
			skip_marker = 0;
		}
		else if (decoding->reader->EndRecPtr > MyReplicationSlot->data.confirmed_flush &&
				 !in_txn && current == NULL)
		{
			/* Nothing of ours in that WAL: let the slot move on. */
			LogicalConfirmReceivedLocation(decoding->reader->EndRecPtr);
		}

		if (!more)
		{
			SpinLockAcquire(&livekpi_shared->mutex);
			if (!in_txn && current == NULL)
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
