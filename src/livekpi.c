/*-------------------------------------------------------------------------
 *
 * livekpi.c
 *	  Library entry point and the state shared between processes:
 *	  _PG_init, the shared-memory block both workers publish their state in,
 *	  the eventfd that wakes the push worker, commit-time wake-ups, and the
 *	  SQL functions that read or steer that state (status, sync, pause,
 *	  resume, requirement checks).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/livekpi.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogrecovery.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "catalog/dependency.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "livekpi.h"
#include "push_standby.h"

PG_MODULE_MAGIC;

LiveKpiShared *livekpi_shared = NULL;

static bool loaded_via_preload = false;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static int	push_wakeup_fd = -1;

/* Backend-local: wake-ups owed when the current transaction commits. */
static bool xact_callback_registered = false;
static bool wake_apply_pending = false;
static bool wake_push_pending = false;

void		_PG_init(void);

static void livekpi_shmem_request(void);
static void livekpi_shmem_startup(void);
static void livekpi_xact_callback(XactEvent event, void *arg);

/*
 * _PG_init
 *		Runs in the postmaster when livekpi is in shared_preload_libraries.
 *		When the library is loaded any other way (CREATE EXTENSION without
 *		the preload) it stays inert, so that livekpi._check_requirements()
 *		can explain what is missing instead of failing obscurely.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	loaded_via_preload = true;
	livekpi_define_gucs();

	/*
	 * Made here so that every process forked from the postmaster inherits
	 * it: committing backends and the apply worker write, the push worker
	 * polls.
	 */
	push_wakeup_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (push_wakeup_fd < 0)
		ereport(LOG,
				(errmsg("livekpi could not create its wake-up eventfd: %m"),
				 errdetail("The push worker will poll instead of being woken.")));

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = livekpi_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = livekpi_shmem_startup;

	livekpi_register_apply_worker();
	if (livekpi_listen_addresses != NULL && livekpi_listen_addresses[0] != '\0')
		livekpi_register_push_worker();
}

bool
livekpi_loaded_via_preload(void)
{
	return loaded_via_preload;
}

static void
livekpi_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(LiveKpiShared)));
	RequestAddinShmemSpace(livekpi_push_shmem_size());
}

static void
livekpi_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	livekpi_shared = ShmemInitStruct("livekpi", sizeof(LiveKpiShared), &found);
	if (!found)
	{
		memset(livekpi_shared, 0, sizeof(LiveKpiShared));
		SpinLockInit(&livekpi_shared->mutex);
		strlcpy(livekpi_shared->apply_state, "not started", LIVEKPI_STATE_LEN);
		strlcpy(livekpi_shared->push_state, "not started", LIVEKPI_STATE_LEN);
		livekpi_shared->push_seq_served = -1;
	}
	/* Re-set after every crash restart: the fd survives, shared memory not. */
	livekpi_shared->push_wakeup_fd = push_wakeup_fd;
	livekpi_push_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * livekpi_xact_callback
 *		Delivers the wake-ups a transaction owes once it has committed, so
 *		that a worker never wakes to find changes it cannot see yet, and a
 *		rolled-back transaction wakes nobody.
 */
static void
livekpi_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_apply_pending && livekpi_shared != NULL)
			{
				Latch	   *latch = livekpi_shared->apply_latch;

				if (latch != NULL)
					SetLatch(latch);
			}
			if (wake_push_pending)
				livekpi_wake_push_now();
			wake_apply_pending = wake_push_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_apply_pending = wake_push_pending = false;
			break;
		default:
			break;
	}
}

static void
ensure_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(livekpi_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

/* Called by the capture trigger once per row: only sets a flag. */
void
livekpi_wake_apply_at_commit(void)
{
	if (likely(wake_apply_pending))
		return;
	ensure_xact_callback();
	wake_apply_pending = true;
}

void
livekpi_wake_push_at_commit(void)
{
	ensure_xact_callback();
	wake_push_pending = true;
}

void
livekpi_wake_push_now(void)
{
	uint64		one = 1;
	int			fd = livekpi_shared ? livekpi_shared->push_wakeup_fd : -1;

	/* EAGAIN means the counter is already non-zero: the wake-up is pending. */
	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
		(void) 0;
}

void
livekpi_set_apply_state(const char *state)
{
	if (livekpi_shared == NULL)
		return;
	SpinLockAcquire(&livekpi_shared->mutex);
	strlcpy(livekpi_shared->apply_state, state, LIVEKPI_STATE_LEN);
	SpinLockRelease(&livekpi_shared->mutex);
}

void
livekpi_set_push_state(const char *state)
{
	if (livekpi_shared == NULL)
		return;
	SpinLockAcquire(&livekpi_shared->mutex);
	strlcpy(livekpi_shared->push_state, state, LIVEKPI_STATE_LEN);
	SpinLockRelease(&livekpi_shared->mutex);
}

/*
 * livekpi_apply_lag_ms
 *		How far the apply worker is behind: 0 when it has read all the WAL
 *		flushed so far, else the time since it last had; on a standby, where
 *		no apply worker runs, the replay lag (push_standby.c).  One
 *		definition for livekpi.status, /healthz, /metrics and heartbeats.
 */
int64
livekpi_apply_lag_ms(void)
{
	XLogRecPtr	processed;
	TimestampTz caught_up_at;
	XLogRecPtr	flush;

	if (livekpi_shared == NULL)
		return 0;
	if (livekpi_in_recovery())
		return livekpi_replay_lag_ms();
	flush = GetFlushRecPtr(NULL);
	SpinLockAcquire(&livekpi_shared->mutex);
	processed = livekpi_shared->processed_lsn;
	caught_up_at = livekpi_shared->caught_up_at;
	SpinLockRelease(&livekpi_shared->mutex);
	if (caught_up_at == 0 || processed >= flush)
		return 0;
	return Max(0, (GetCurrentTimestamp() - caught_up_at) / 1000);
}

static void
require_preload(void)
{
	if (!loaded_via_preload || livekpi_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("livekpi must be loaded via shared_preload_libraries"),
				 errhint("Add livekpi to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * livekpi._check_requirements()
 *		Called first by the extension script so that CREATE EXTENSION fails
 *		before anything is created, listing every unmet server requirement
 *		at once (one restart fixes them all) with a hint.
 */
PG_FUNCTION_INFO_V1(livekpi_check_requirements);
Datum
livekpi_check_requirements(PG_FUNCTION_ARGS)
{
	const char *dbname = get_database_name(MyDatabaseId);
	const char *want_db = GetConfigOption("livekpi.database", true, false);
	const char *plugins = GetConfigOption("output_plugin_libraries", true, false);
	StringInfoData unmet;
	StringInfoData fix;
	int			n = 0;

	initStringInfo(&unmet);
	initStringInfo(&fix);
	if (want_db == NULL || want_db[0] == '\0')
		want_db = "postgres";	/* the default of livekpi.database */

	if (!loaded_via_preload || livekpi_shared == NULL)
	{
		appendStringInfo(&unmet, "%s- livekpi is not in shared_preload_libraries (it is \"%s\").",
						 n++ ? "\n" : "", GetConfigOption("shared_preload_libraries", false, false));
		appendStringInfoString(&fix, "shared_preload_libraries = 'livekpi' (beside the libraries already listed)");
	}
	if (wal_level < WAL_LEVEL_LOGICAL)
	{
		appendStringInfo(&unmet, "%s- wal_level is \"%s\"; livekpi needs logical.",
						 n++ ? "\n" : "", GetConfigOption("wal_level", false, false));
		appendStringInfo(&fix, "%swal_level = logical", fix.len ? ", " : "");
	}
	if (dbname == NULL || strcmp(dbname, want_db) != 0)
	{
		appendStringInfo(&unmet, "%s- livekpi.database is \"%s\", not this database \"%s\"; the workers connect to the database it names.",
						 n++ ? "\n" : "", want_db, dbname ? dbname : "");
		appendStringInfo(&fix, "%slivekpi.database = '%s' (or create the extension in \"%s\")",
						 fix.len ? ", " : "", dbname ? dbname : "", want_db);
	}
	if (n > 0)
	{
		/* not a requirement: the apply worker allows itself; tools need it */
		if (plugins != NULL && strstr(plugins, "livekpi") == NULL)
			appendStringInfoString(&fix, "; to read changes with pg_recvlogical also add livekpi to output_plugin_libraries");
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 n == 1 ? errmsg("livekpi cannot be created: 1 server requirement is not met") :
				 errmsg("livekpi cannot be created: %d server requirements are not met", n),
				 errdetail_internal("%s", unmet.data),
				 errhint("Set %s in postgresql.conf (or with ALTER SYSTEM), restart the server, and run CREATE EXTENSION livekpi again.",
						 fix.data)));
	}
	PG_RETURN_VOID();
}

/*
 * livekpi._raise_error(sqlstate, message, detail, hint)
 *		Raises a user's error from SQL without the CONTEXT lines of the
 *		PL/pgSQL functions it is raised from: track_* report their mapping
 *		problems this way, and livekpi's internal statements mean nothing to
 *		the user.  Every enclosing PG_TRY restores error_context_stack.
 */
PG_FUNCTION_INFO_V1(livekpi_raise_error);
Datum
livekpi_raise_error(PG_FUNCTION_ARGS)
{
	char	   *state = PG_ARGISNULL(0) ? "P0001" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *message = PG_ARGISNULL(1) ? "livekpi error" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *detail = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *hint = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));

	if (strlen(state) != 5)
		state = "P0001";
	error_context_stack = NULL;
	ereport(ERROR,
			(errcode(MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4])),
			 errmsg_internal("%s", message),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
	PG_RETURN_VOID();
}

/*
 * livekpi._wake_apply()
 *		Wakes the apply worker when the calling transaction commits; the
 *		extension script calls it so that the worker notices a new
 *		extension without waiting for its idle timeout.
 */
PG_FUNCTION_INFO_V1(livekpi_wake_apply);
Datum
livekpi_wake_apply(PG_FUNCTION_ARGS)
{
	if (livekpi_shared != NULL)
		livekpi_wake_apply_at_commit();
	PG_RETURN_VOID();
}

static void
set_paused(bool paused)
{
	require_preload();
	SpinLockAcquire(&livekpi_shared->mutex);
	livekpi_shared->paused = paused;
	SpinLockRelease(&livekpi_shared->mutex);
	if (livekpi_shared->apply_latch)
		SetLatch(livekpi_shared->apply_latch);
}

PG_FUNCTION_INFO_V1(livekpi_pause);
Datum
livekpi_pause(PG_FUNCTION_ARGS)
{
	set_paused(true);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(livekpi_resume);
Datum
livekpi_resume(PG_FUNCTION_ARGS)
{
	set_paused(false);
	PG_RETURN_VOID();
}

/*
 * livekpi.sync(timeout)
 *		Waits until the apply worker has processed all WAL written before the
 *		call, which includes every change committed before it.  The WAL is
 *		flushed first so that asynchronous commits are covered too.
 */
PG_FUNCTION_INFO_V1(livekpi_sync);
Datum
livekpi_sync(PG_FUNCTION_ARGS)
{
	Interval   *timeout = PG_GETARG_INTERVAL_P(0);
	XLogRecPtr	target;
	TimestampTz deadline;
	int64		timeout_us;

	require_preload();
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("livekpi.sync() cannot run during recovery")));

	timeout_us = timeout->time + (int64) timeout->day * USECS_PER_DAY +
		(int64) timeout->month * 30 * USECS_PER_DAY;
	if (timeout_us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));

	/*
	 * Everything inserted so far, async commits included.  The insert
	 * position just past a page header is not a record boundary: neither
	 * XLogFlush() nor a reader ever gets there, so use the page start.
	 */
	target = GetXLogInsertRecPtr();
	if (XLogSegmentOffset(target, wal_segment_size) == SizeOfXLogLongPHD)
		target -= SizeOfXLogLongPHD;
	else if (target % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		target -= SizeOfXLogShortPHD;
	XLogFlush(target);
	deadline = GetCurrentTimestamp() + timeout_us;

	for (;;)
	{
		XLogRecPtr	processed;
		bool		ready;
		long		remaining_ms;
		TimestampTz now;

		SpinLockAcquire(&livekpi_shared->mutex);
		processed = livekpi_shared->processed_lsn;
		ready = livekpi_shared->slot_ready;
		SpinLockRelease(&livekpi_shared->mutex);

		if (ready && processed >= target)
			PG_RETURN_BOOL(true);

		now = GetCurrentTimestamp();
		if (now >= deadline)
			PG_RETURN_BOOL(false);
		remaining_ms = Min(TimestampDifferenceMilliseconds(now, deadline), 10);

		if (livekpi_shared->apply_latch)
			SetLatch(livekpi_shared->apply_latch);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(remaining_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * livekpi._status()
 *		One row of what both workers publish; the livekpi.status view adds
 *		the slot's view of things from pg_replication_slots.
 */
PG_FUNCTION_INFO_V1(livekpi_status);
Datum
livekpi_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[31];
	bool		nulls[31];
	LiveKpiShared s;
	XLogRecPtr	flush;
	int			i = 0;

	require_preload();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	SpinLockAcquire(&livekpi_shared->mutex);
	memcpy(&s, livekpi_shared, sizeof(s));
	SpinLockRelease(&livekpi_shared->mutex);
	flush = RecoveryInProgress() ? GetXLogReplayRecPtr(NULL) : GetFlushRecPtr(NULL);
	/* on a standby no apply worker is normal: it starts at promotion */
	if (s.apply_pid == 0 && livekpi_in_recovery())
		strlcpy(s.apply_state, "standby", sizeof(s.apply_state));

	memset(nulls, 0, sizeof(nulls));
#define PUT(v) (values[i++] = (v))
#define PUT_NULL_IF(cond, v) (nulls[i] = (cond), values[i++] = (cond) ? (Datum) 0 : (v))
	PUT_NULL_IF(s.apply_pid == 0, Int32GetDatum(s.apply_pid));
	PUT(CStringGetTextDatum(s.apply_state));
	PUT(BoolGetDatum(s.paused));
	PUT(CStringGetTextDatum(LIVEKPI_SLOT_NAME));
	PUT(BoolGetDatum(s.slot_ready));
	PUT_NULL_IF(s.processed_lsn == InvalidXLogRecPtr, LSNGetDatum(s.processed_lsn));
	PUT_NULL_IF(s.confirmed_lsn == InvalidXLogRecPtr, LSNGetDatum(s.confirmed_lsn));
	PUT_NULL_IF(s.processed_lsn == InvalidXLogRecPtr,
				Int64GetDatum(flush > s.processed_lsn ? (int64) (flush - s.processed_lsn) : 0));
	PUT(Int64GetDatum(livekpi_apply_lag_ms()));
	PUT_NULL_IF(s.last_seq == 0, Int64GetDatum(s.last_seq));
	PUT_NULL_IF(s.last_batch_at == 0, TimestampTzGetDatum(s.last_batch_at));
	PUT_NULL_IF(s.last_commit_time == 0, TimestampTzGetDatum(s.last_commit_time));
	PUT(Int64GetDatum(s.changes_applied));
	PUT(Int64GetDatum(s.rows_written));
	PUT(Int64GetDatum(s.rows_skipped));
	PUT(Int64GetDatum(s.batches));
	PUT(Int64GetDatum(s.rebuilds));
	PUT_NULL_IF(s.last_error[0] == '\0', CStringGetTextDatum(s.last_error));
	PUT_NULL_IF(s.last_error_at == 0, TimestampTzGetDatum(s.last_error_at));
	PUT_NULL_IF(s.push_pid == 0, Int32GetDatum(s.push_pid));
	PUT(CStringGetTextDatum(s.push_state));
	PUT(Int32GetDatum(s.clients));
	PUT(Int64GetDatum(s.messages_sent));
	PUT(Int64GetDatum(s.bytes_sent));
	PUT_NULL_IF(s.push_error[0] == '\0', CStringGetTextDatum(s.push_error));
	PUT_NULL_IF(s.push_error_at == 0, TimestampTzGetDatum(s.push_error_at));
	PUT(Int64GetDatum(s.records_rejected));
	/* SPEC section 10 */
	PUT(CStringGetTextDatum(livekpi_role()));
	PUT_NULL_IF(!livekpi_in_recovery(), LSNGetDatum(GetXLogReplayRecPtr(NULL)));
	PUT(Int64GetDatum(livekpi_replay_lag_ms()));
	PUT_NULL_IF(s.push_pid == 0 || s.push_seq_served < 0, Int64GetDatum(s.push_seq_served));
#undef PUT
#undef PUT_NULL_IF
	Assert(i == 31);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* livekpi._wake_push(): the push worker reads the new batch after commit. */
PG_FUNCTION_INFO_V1(livekpi_wake_push);
Datum
livekpi_wake_push(PG_FUNCTION_ARGS)
{
	if (livekpi_shared != NULL)
		livekpi_wake_push_at_commit();
	PG_RETURN_VOID();
}

/*
 * livekpi._depend_on_extension(classid, objid)
 *		Makes an object the extension created outside its script, such as
 *		a capture trigger on a user's table, go away with DROP EXTENSION
 *		without CASCADE (an automatic dependency).
 */
PG_FUNCTION_INFO_V1(livekpi_depend_on_extension);
Datum
livekpi_depend_on_extension(PG_FUNCTION_ARGS)
{
	ObjectAddress object;
	ObjectAddress extension;

	object.classId = PG_GETARG_OID(0);
	object.objectId = PG_GETARG_OID(1);
	object.objectSubId = 0;
	extension.classId = ExtensionRelationId;
	extension.objectId = get_extension_oid("livekpi", false);
	extension.objectSubId = 0;
	recordDependencyOn(&object, &extension, DEPENDENCY_AUTO);
	PG_RETURN_VOID();
}

/*
 * livekpi._caller_owns(rel)
 *		Whether the role that called into livekpi owns rel.  track_* and
 *		untrack run as SECURITY DEFINER so that a table's owner needs no
 *		privileges on livekpi's own tables; GetOuterUserId() is the caller's
 *		role (SET ROLE included), which SECURITY DEFINER does not change.
 */
PG_FUNCTION_INFO_V1(livekpi_caller_owns);
Datum
livekpi_caller_owns(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(pg_class_ownercheck(PG_GETARG_OID(0), GetOuterUserId()));
}
