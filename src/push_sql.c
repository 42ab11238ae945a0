/*-------------------------------------------------------------------------
 *
 * push_sql.c
 *	  The push worker's SQL: the only file of the push worker that uses
 *	  SPI or starts transactions.
 *
 * This file owns every statement the push worker runs: reading
 * livekpi.state and delta_log (in bounded pieces), building snapshots,
 * and the round's checks (hellos, subscribes, /metrics bearer tokens,
 * revocation of open connections' tokens, last_used_at).  Each entry
 * point is one short transaction, run between two lws_service() calls
 * and never held across one; an error is caught, logged and published in
 * livekpi.status, and the loop goes on.
 *
 * Results are copied into the caller's context (lk_loop_cxt, reset every
 * round, or lk_stream_cxt, reset after each piece of the stream) before
 * SPI_finish frees SPI's memory.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/push_sql.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_bitutils.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "livekpi.h"
#include "push_internal.h"

/*
 * run_step
 *		Run fn in its own transaction with SPI connected, catching any
 *		error: an error is logged and published in livekpi.status, the
 *		transaction rolled back, and the loop goes on.  Returns success.
 */
static int	last_step_sqlerrcode = 0;

/*
 * Subtransactions per client on a primary; none on a hot standby, where
 * PostgreSQL 15 turns a recovery conflict inside a subtransaction into
 * FATAL (every client would be dropped): there the round is retried on
 * SQLSTATE 40001 instead.
 */
static bool use_subxacts = true;

static bool
run_step(const char *what, void (*fn) (void *), void *arg, bool repeatable_read)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (repeatable_read)
		XactIsoLevel = XACT_REPEATABLE_READ;
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, what);
		fn(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		char		msg[LIVEKPI_ERROR_LEN];

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		last_step_sqlerrcode = edata->sqlerrcode;
		snprintf(msg, sizeof(msg), "%s: %s", what, edata->message);
		ereport(LOG,
				(errmsg("livekpi push worker: %s", msg)));
		set_push_error(msg);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);
	return ok;
}

/*
 * sql_session_setup
 *		Session settings of the worker.  Its only write is last_used_at, a
 *		best-effort hint: it must never wait for a WAL flush on the hot
 *		path, so synchronous_commit is off for the whole session.
 */
void
sql_session_setup(void)
{
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
}

/* a column as text, copied into cxt (NULL stays NULL) */
static char *
spi_text(HeapTuple tup, TupleDesc desc, int col, MemoryContext cxt)
{
	char	   *v = SPI_getvalue(tup, desc, col);

	if (v == NULL)
		return NULL;
	return MemoryContextStrdup(cxt, v);
}

/*
 * read_state
 *		Epoch, newest seq and key type, from livekpi.state.
 */
static bool
read_state(int64 *last_seq)
{
	bool		isnull;
	int			ret;

	/* before CREATE EXTENSION (or after DROP) there is nothing to read */
	ret = SPI_execute("SELECT to_regclass('livekpi.state') IS NOT NULL "
					  "AND to_regclass('livekpi.push_tokens') IS NOT NULL", true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		return false;
	ret = SPI_execute("SELECT epoch, last_seq, coalesce(key_type::text, 'text'), "
					  "stale_reason IS NOT NULL FROM livekpi.state", true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed == 0)
		return false;
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *epoch = SPI_getvalue(tup, desc, 1);
		char	   *seq = SPI_getvalue(tup, desc, 2);
		char	   *kt = SPI_getvalue(tup, desc, 3);

		strlcpy(server_epoch, epoch ? epoch : "", sizeof(server_epoch));
		*last_seq = seq ? strtoi64(seq, NULL, 10) : 0;
		strlcpy(key_type, kt ? kt : "text", sizeof(key_type));

		/*
		 * On a standby no apply worker publishes the stale flag: the
		 * replayed state row is the source.
		 */
		if (RecoveryInProgress())
		{
			bool		stale = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));

			SpinLockAcquire(&livekpi_shared->mutex);
			livekpi_shared->stale = !isnull && stale;
			SpinLockRelease(&livekpi_shared->mutex);
		}
	}
	return true;
}

static bool
key_is_number(void)
{
	return strcmp(key_type, "bigint") == 0 || strcmp(key_type, "integer") == 0 ||
		strcmp(key_type, "smallint") == 0;
}

static void
state_step(void *arg)
{
	BatchRead  *br = (BatchRead *) arg;

	br->state_ok = read_state(&br->state_seq);
}

/*
 * sql_read_state
 *		Epoch, newest seq and key type (into the loop's globals).
 */
bool
sql_read_state(BatchRead *br)
{
	return run_step("reading livekpi.state", state_step, br, false) && br->state_ok;
}

/* ----------------------------------------------------------------
 * Batches
 * ----------------------------------------------------------------
 */
/*
 * The rows of the batches (after, upto], of the views in $3 only, each
 * rendered as the view's row by livekpi._delta_render (delta_render.c: the
 * columns delta_log leaves out are computed here, for the views some live
 * client has), with the key that identifies it.
 */
static const char *batch_sql =
"SELECT d.seq, d.barrier, to_json(d.applied_at) #>> '{}', "
"       to_json(d.committed_at) #>> '{}', e.kind, e.view, e.elem::text, "
"       e.elem ->> 'property_id', e.elem ->> 'day', "
"       CASE e.view "
"         WHEN 'property_kpis' THEN jsonb_build_object('property_id', e.elem -> 'property_id', 'month', e.elem -> 'month') "
"         WHEN 'portfolio_kpis' THEN jsonb_build_object('month', e.elem -> 'month') "
"         WHEN 'expense_monthly' THEN jsonb_build_object('property_id', e.elem -> 'property_id', 'month', e.elem -> 'month', 'category', e.elem -> 'category') "
"         WHEN 'booking_daily' THEN jsonb_build_object('property_id', e.elem -> 'property_id', 'day', e.elem -> 'day') "
"       END::text "
"  FROM livekpi.delta_log d "
"  LEFT JOIN LATERAL ( "
"       SELECT 0 AS kind, u.key AS view, livekpi._delta_render(u.key, r.value) AS elem "
"         FROM (SELECT d.upserts AS j "
"               UNION ALL SELECT p.upserts FROM livekpi.delta_log_parts p WHERE p.seq = d.seq) pu, "
"              jsonb_each(pu.j) u, jsonb_array_elements(u.value) r "
"        WHERE u.key = ANY ($3) "
"       UNION ALL "
"       SELECT 1, x.key, r.value "
"         FROM (SELECT d.deletes AS j "
"               UNION ALL SELECT p.deletes FROM livekpi.delta_log_parts p WHERE p.seq = d.seq) px, "
"              jsonb_each(px.j) x, jsonb_array_elements(x.value) r "
"        WHERE x.key = ANY ($3) "
"  ) e ON true "
" WHERE d.seq > $1 AND d.seq <= $2 "
" ORDER BY d.seq, e.kind, e.view";

static SPIPlanPtr batch_plan = NULL;

typedef struct BatchReadJob
{
	BatchRead  *br;
	BatchSink  *sink;
} BatchReadJob;

/*
 * read_batches_step
 *		Stream batches (after, upto] of delta_log to the sink through a
 *		cursor, LK_FETCH_ROWS rows at a time: a batch's header goes to
 *		lk_stream_cxt, its rows to a context reset after every fetch.  So
 *		the memory of a read is bounded by LK_FETCH_ROWS rows whatever the
 *		size of a batch (the sink bounds what it keeps, see push_stream.c).
 *		The read stops at the first batch end past LK_ROWS_PER_READ rows;
 *		br->last says how far it went.
 */
static void
read_batches_step(void *arg)
{
	BatchReadJob *job = (BatchReadJob *) arg;
	BatchRead  *br = job->br;
	BatchSink  *sink = job->sink;
	MemoryContext rows_cxt;
	Datum		values[3];
	Datum		names[LK_NUM_VIEWS];
	int			nnames = 0;
	Portal		portal;
	Batch		cur;
	bool		open = false;
	bool		stop = false;
	int64		streamed = 0;
	BatchRow   *rows;

	if (batch_plan == NULL)
	{
		Oid			types[3] = {INT8OID, INT8OID, TEXTARRAYOID};

		batch_plan = SPI_prepare(batch_sql, 3, types);
		if (batch_plan == NULL)
			elog(ERROR, "could not prepare the delta_log query: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(batch_plan);
	}
	rows_cxt = AllocSetContextCreate(CurrentMemoryContext, "livekpi push rows",
									 ALLOCSET_DEFAULT_SIZES);
	rows = MemoryContextAlloc(lk_stream_cxt, sizeof(BatchRow) * LK_FETCH_ROWS);
	values[0] = Int64GetDatum(br->after);
	values[1] = Int64GetDatum(br->upto);
	for (int v = 0; v < LK_NUM_VIEWS; v++)
		if (br->views & (1u << v))
			names[nnames++] = CStringGetTextDatum(lk_view_names[v]);
	values[2] = PointerGetDatum(construct_array(names, nnames, TEXTOID, -1, false, TYPALIGN_INT));
	portal = SPI_cursor_open(NULL, batch_plan, values, NULL, true);
	br->nbatches = 0;
	memset(&cur, 0, sizeof(cur));
	while (!stop)
	{
		int			nrows = 0;

		SPI_cursor_fetch(portal, true, LK_FETCH_ROWS);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed && !stop; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		seq = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			char	   *view;
			int			bit;

			if (!open || cur.seq != seq)
			{
				if (open)
				{
					if (nrows > 0)
						sink->rows(sink, &cur, rows, nrows);
					nrows = 0;
					sink->end(sink, &cur);
					open = false;
					if (streamed >= LK_ROWS_PER_READ)
					{
						/* enough for one query: the rest is read next time */
						stop = true;
						break;
					}
				}
				cur.seq = seq;
				cur.barrier = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)) && !isnull;
				cur.applied_at = spi_text(tup, desc, 3, lk_stream_cxt);
				cur.committed_at = spi_text(tup, desc, 4, lk_stream_cxt);
				open = true;
				br->nbatches++;
				br->last = seq;
				if (!sink->begin(sink, &cur))
				{
					open = false;
					stop = true;
					break;
				}
			}
			streamed++;
			view = SPI_getvalue(tup, desc, 6);
			if (view == NULL)
				continue;
			bit = lk_view_from_name(view, strlen(view));
			if (bit == 0)
				continue;		/* a view this server does not stream */
			{
				BatchRow   *r = &rows[nrows++];

				r->view = (uint8) (pg_rightmost_one_pos32((uint32) bit));
				r->is_delete = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull)) == 1;
				r->json = spi_text(tup, desc, 7, rows_cxt);
				r->prop = spi_text(tup, desc, 8, rows_cxt);
				r->day = spi_text(tup, desc, 9, rows_cxt);
				r->key = spi_text(tup, desc, 10, rows_cxt);
			}
		}
		if (open && nrows > 0)
			sink->rows(sink, &cur, rows, nrows);
		SPI_freetuptable(SPI_tuptable);
		MemoryContextReset(rows_cxt);
	}
	if (open)
		sink->end(sink, &cur);
	SPI_cursor_close(portal);
	MemoryContextDelete(rows_cxt);
}

/*
 * sql_read_batches
 *		Stream batches (after, upto] of delta_log to the sink, in one
 *		short transaction (see read_batches_step).
 */
bool
sql_read_batches(BatchRead *br, BatchSink *sink)
{
	BatchReadJob job = {br, sink};

	return run_step("reading livekpi.delta_log", read_batches_step, &job, false);
}

/* ----------------------------------------------------------------
 * Snapshots
 * ----------------------------------------------------------------
 */
static const char *view_order[LK_NUM_VIEWS] = {
	"property_id, month",
	"month",
	"property_id, month, category",
	"property_id, day"
};

/*
 * snapshot_step
 *		Build one snapshot message in a REPEATABLE READ transaction: the
 *		seq read from livekpi.state and the view rows are of the same
 *		commit.  Rows are to_jsonb() of the views' rows, like the deltas.
 */
static void
snapshot_step(void *arg)
{
	SnapshotJob *job = (SnapshotJob *) arg;
	ClientScope *s = job->scope;
	StringInfoData buf;
	int64		seq;
	Datum		values[3];
	Oid			types[3] = {TEXTARRAYOID, DATEOID, DATEOID};
	char		nulls[3] = {' ', ' ', ' '};
	MemoryContext old;

	if (!read_state(&seq))
		elog(ERROR, "livekpi.state is empty");
	job->seq = seq;

	if (s->all_properties)
		nulls[0] = 'n', values[0] = (Datum) 0;
	else
	{
		Datum	   *elems = palloc(sizeof(Datum) * Max(s->nproperties, 1));

		for (int i = 0; i < s->nproperties; i++)
			elems[i] = CStringGetTextDatum(s->properties[i]);
		values[0] = PointerGetDatum(construct_array(elems, s->nproperties, TEXTOID,
													-1, false, TYPALIGN_INT));
	}
	if (s->views & LK_VIEW_BOOKING_DAILY)
	{
		values[1] = DirectFunctionCall1(date_in, CStringGetDatum(s->daily_from));
		values[2] = DirectFunctionCall1(date_in, CStringGetDatum(s->daily_to));
	}
	else
	{
		nulls[1] = nulls[2] = 'n';
		values[1] = values[2] = (Datum) 0;
	}

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"type\":\"snapshot\",\"seq\":" INT64_FORMAT ",\"rows\":{", seq);
	{
		bool		first = true;

		for (int v = 0; v < LK_NUM_VIEWS; v++)
		{
			char	   *sql;
			int			ret;
			char	   *rows;

			if ((s->views & (1u << v)) == 0)
				continue;
			if ((1u << v) == LK_VIEW_PORTFOLIO_KPIS)
				sql = psprintf("SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY %s), '[]')::text "
							   "FROM livekpi.%s v WHERE $1 IS NULL OR $1 IS NOT NULL",
							   view_order[v], lk_view_names[v]);
			else if ((1u << v) == LK_VIEW_BOOKING_DAILY)
				sql = psprintf("SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY %s), '[]')::text "
							   "FROM livekpi.%s v WHERE ($1 IS NULL OR v.property_id = ANY ($1::%s[])) "
							   "AND v.day BETWEEN $2 AND $3",
							   view_order[v], lk_view_names[v], key_type);
			else
				sql = psprintf("SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY %s), '[]')::text "
							   "FROM livekpi.%s v WHERE ($1 IS NULL OR v.property_id = ANY ($1::%s[]))",
							   view_order[v], lk_view_names[v], key_type);
			ret = SPI_execute_with_args(sql, 3, types, values, nulls, true, 0);
			if (ret != SPI_OK_SELECT || SPI_processed != 1)
				elog(ERROR, "snapshot of %s failed", lk_view_names[v]);
			rows = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			appendStringInfo(&buf, "%s\"%s\":%s", first ? "" : ",", lk_view_names[v], rows);
			first = false;
		}
	}
	appendStringInfoString(&buf, "}}");
	old = MemoryContextSwitchTo(lk_stream_cxt);
	job->json = pstrdup(buf.data);
	MemoryContextSwitchTo(old);
}

/*
 * sql_snapshot
 *		One snapshot for job->scope, in a REPEATABLE READ transaction.
 */
bool
sql_snapshot(SnapshotJob *job)
{
	return run_step("building a snapshot", snapshot_step, job, true);
}

/* ----------------------------------------------------------------
 * The round's checks: hello, subscribe, tokens
 * ----------------------------------------------------------------
 */
static void
job_error(RequestJob *job, const char *code, int close_code, const char *fmt,...)
	pg_attribute_printf(4, 5);

static void
job_error(RequestJob *job, const char *code, int close_code, const char *fmt,...)
{
	va_list		ap;

	job->err_code = code;
	job->close_code = close_code;
	va_start(ap, fmt);
	vsnprintf(job->err_msg, sizeof(job->err_msg), fmt, ap);
	va_end(ap);
}

/*
 * read_checked_keys
 *		Runs the key check (sql, one text[] parameter) and keeps its answer,
 *		the distinct keys as text and their typed JSON, in lk_loop_cxt; the
 *		cast in sql raises an error for a key of the wrong type.
 */
static void
read_checked_keys(RequestJob *job, const char *sql, Oid *types, Datum *values)
{
	int			ret;
	bool		isnull;
	Datum		d;
	ArrayType  *arr;
	Datum	   *ke;
	bool	   *kn;
	int			n;
	MemoryContext old;

	ret = SPI_execute_with_args(sql, 1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not check property keys");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	arr = DatumGetArrayTypeP(d);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &ke, &kn, &n);
	old = MemoryContextSwitchTo(lk_loop_cxt);
	job->props = palloc(sizeof(char *) * Max(n, 1));
	job->nprops = n;
	for (int i = 0; i < n; i++)
		job->props[i] = TextDatumGetCString(ke[i]);
	job->scope_json = pstrdup(SPI_getvalue(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2));
	MemoryContextSwitchTo(old);
}

/*
 * canonical_keys
 *		The client's property keys through the key type and back to text,
 *		sorted and distinct, so that they compare with the text of the
 *		delta rows.  Keys that are not valid for the key type are reported
 *		instead of raised.
 */
static bool
canonical_keys(RequestJob *job)
{
	LkClientMessage *msg = job->msg;
	Datum	   *elems;
	Datum		values[1];
	Oid			types[1] = {TEXTARRAYOID};
	char	   *sql;
	volatile bool ok = true;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	if (msg->nproperties == 0)
	{
		job->nprops = 0;
		job->props = NULL;
		return true;
	}
	for (int i = 0; i < msg->nproperties; i++)
	{
		if (msg->property_is_number[i] != key_is_number())
		{
			job_error(job, "bad_message", LK_CLOSE_INVALID,
					  "property keys are of type %s", key_type);
			return false;
		}
	}
	if (!use_subxacts && key_is_number())
	{
		/*
		 * No subtransaction on a standby (see round_step): make sure the
		 * cast below cannot fail by checking the numbers here.
		 */
		int64		lo = strcmp(key_type, "smallint") == 0 ? PG_INT16_MIN :
			strcmp(key_type, "integer") == 0 ? PG_INT32_MIN : PG_INT64_MIN;
		int64		hi = strcmp(key_type, "smallint") == 0 ? PG_INT16_MAX :
			strcmp(key_type, "integer") == 0 ? PG_INT32_MAX : PG_INT64_MAX;

		for (int i = 0; i < msg->nproperties; i++)
		{
			const char *k = msg->propbuf + msg->property_off[i];
			char	   *end;
			int64		v;

			errno = 0;
			v = strtoi64(k, &end, 10);
			if (errno != 0 || end == k || *end != '\0' || v < lo || v > hi)
			{
				job_error(job, "bad_message", LK_CLOSE_INVALID,
						  "invalid property key: %s is not a valid %s", k, key_type);
				return false;
			}
		}
	}
	elems = palloc(sizeof(Datum) * msg->nproperties);
	for (int i = 0; i < msg->nproperties; i++)
		elems[i] = CStringGetTextDatum(msg->propbuf + msg->property_off[i]);
	values[0] = PointerGetDatum(construct_array(elems, msg->nproperties, TEXTOID,
												-1, false, TYPALIGN_INT));
	sql = psprintf("SELECT array_agg(k ORDER BY k), to_jsonb(array_agg(k::%s ORDER BY k))::text "
				   "FROM (SELECT DISTINCT (p::%s)::text AS k FROM unnest($1) p) s",
				   key_type, key_type);

	if (!use_subxacts)
	{
		read_checked_keys(job, sql, types, values);
		return true;
	}

	/* a bad key is the client's mistake: catch it in a subtransaction */
	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		read_checked_keys(job, sql, types, values);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		job_error(job, "bad_message", LK_CLOSE_INVALID, "invalid property key: %s",
				  edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return ok;
}

/*
 * token_props_json
 *		JSON array of a token's keys (for the welcome's scope), typed.
 */
static char *
keys_json(char **keys, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	Datum		values[1];
	Oid			types[1] = {TEXTARRAYOID};
	char	   *sql;
	int			ret;

	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(keys[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	sql = psprintf("SELECT coalesce(to_jsonb(array_agg(p::%s ORDER BY p::%s)), '[]')::text "
				   "FROM unnest($1) p", key_type, key_type);
	ret = SPI_execute_with_args(sql, 1, types, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not format property keys");
	return MemoryContextStrdup(lk_loop_cxt,
							   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
}

/*
 * valid_calendar_date
 *		Whether "YYYY-MM-DD" (the parser checked the shape) is a day of the
 *		calendar, as date_in would accept it.
 */
static bool
valid_calendar_date(const char *s)
{
	int			y,
				m,
				d,
				y2,
				m2,
				d2;

	if (sscanf(s, "%d-%d-%d", &y, &m, &d) != 3 || m < 1 || m > 12 || d < 1 || d > 31)
		return false;
	j2date(date2j(y, m, d), &y2, &m2, &d2);
	return y == y2 && m == m2 && d == d2;
}

/*
 * request_step
 *		(job->latest is already set by the round.)  Check a hello or subscribe against the database: the token, the
 *		views and properties it allows, the daily range, and whether a
 *		resume is possible.  Errors meant for the client go to job->err_*.
 */
static void
request_step(void *arg)
{
	RequestJob *job = (RequestJob *) arg;
	LkClientMessage *msg = job->msg;
	PushClient *c = job->c;
	bool		token_all;
	int			token_nprops;
	char	  **token_props;
	uint32		views;

	job->now = GetCurrentTimestamp();

	if (msg->type == LK_MSG_HELLO)
	{
		LkTokenStatus st = livekpi_token_lookup(msg->token, &job->token, lk_loop_cxt);

		if (st == LK_TOKEN_UNKNOWN)
			return job_error(job, "bad_token", LK_CLOSE_UNAUTHORIZED, "unknown token");
		if (st == LK_TOKEN_REVOKED)
			return job_error(job, "token_revoked", LK_CLOSE_UNAUTHORIZED,
							 "this token has been revoked");
		if (st == LK_TOKEN_EXPIRED)
			return job_error(job, "token_expired", LK_CLOSE_UNAUTHORIZED,
							 "this token has expired");
		token_all = job->token.all_properties;
		token_nprops = job->token.nproperties;
		token_props = job->token.properties;
	}
	else
	{
		token_all = c->token_all;
		token_nprops = c->token_nprops;
		token_props = c->token_props;
	}

	/* views */
	views = msg->has_views ? msg->views
		: (LK_VIEW_PROPERTY_KPIS | (token_all ? LK_VIEW_PORTFOLIO_KPIS : 0));
	if ((views & LK_VIEW_PORTFOLIO_KPIS) && !token_all)
		return job_error(job, "forbidden_view", LK_CLOSE_FORBIDDEN,
						 "portfolio_kpis needs a whole-portfolio token");
	if ((views & LK_VIEW_BOOKING_DAILY) && !msg->has_daily_range)
		return job_error(job, "bad_message", LK_CLOSE_INVALID,
						 "booking_daily needs \"daily_range\"");
	if (msg->has_daily_range)
	{
		Datum		f;
		Datum		t;

		/* without a subtransaction (a standby) date_in must not fail */
		if (!use_subxacts && (!valid_calendar_date(msg->daily_from) ||
							  !valid_calendar_date(msg->daily_to)))
			return job_error(job, "bad_message", LK_CLOSE_INVALID,
							 "daily_range has a date that does not exist");
		/* through date_in, which rejects February 30th */
		f = DirectFunctionCall1(date_in, CStringGetDatum(msg->daily_from));
		t = DirectFunctionCall1(date_in, CStringGetDatum(msg->daily_to));

		strlcpy(job->daily_from, DatumGetCString(DirectFunctionCall1(date_out, f)), 11);
		strlcpy(job->daily_to, DatumGetCString(DirectFunctionCall1(date_out, t)), 11);
	}

	/* properties */
	if (msg->has_properties)
	{
		if (!canonical_keys(job))
			return;
		if (!token_all)
			for (int i = 0; i < job->nprops; i++)
				if (bsearch(&job->props[i], token_props, token_nprops, sizeof(char *),
							livekpi_cmp_cstring) == NULL)
					return job_error(job, "forbidden_property", LK_CLOSE_FORBIDDEN,
									 "property %s is outside this token's scope",
									 job->props[i]);
	}
	else if (!token_all)
	{
		job->nprops = token_nprops;
		job->props = token_props;
		job->scope_json = keys_json(token_props, token_nprops);
	}
	if (job->scope_json == NULL && (msg->has_properties || !token_all))
		job->scope_json = keys_json(job->props, job->nprops);

	/* resume: possible when every batch after S is retained, no barrier */
	job->resumed = false;
	if (msg->type == LK_MSG_HELLO && msg->has_resume_from &&
		(!msg->has_epoch || strcmp(msg->epoch, server_epoch) == 0) &&
		msg->resume_from <= job->latest)
	{
		if (msg->resume_from == job->latest)
			job->resumed = true;
		else
		{
			Oid			types[1] = {INT8OID};
			Datum		values[1] = {Int64GetDatum(msg->resume_from)};
			int			ret;

			ret = SPI_execute_with_args(
										"SELECT (SELECT min(seq) FROM livekpi.delta_log) <= $1 + 1 "
										"   AND NOT EXISTS (SELECT 1 FROM livekpi.delta_log "
										"                    WHERE seq > $1 AND barrier)",
										1, types, values, NULL, true, 1);
			if (ret == SPI_OK_SELECT && SPI_processed == 1)
			{
				bool		isnull;
				Datum		d = SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull);

				job->resumed = !isnull && DatumGetBool(d);
			}
		}
		job->resume_pos = msg->resume_from;
	}

	job->msg->views = views;
}


/*
 * round_step
 *		Everything a round needs from the database, in one transaction: the
 *		state, each pending hello and subscribe (each in a subtransaction, so
 *		that one client's failure stays with that client), the bearer
 *		tokens of /metrics requests, the revocation and expiry of the open
 *		connections' tokens, and last_used_at of the tokens just accepted,
 *		in one UPDATE (the session has synchronous_commit off; nothing is
 *		written during recovery).
 */
static void
round_step(void *arg)
{
	RoundChecks *rc = (RoundChecks *) arg;
	int64		latest = 0;
	bool		installed;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int64	   *touch;
	int			ntouch = 0;

	installed = read_state(&latest);
	touch = palloc(sizeof(int64) * Max(rc->njobs, 1));
	for (int i = 0; i < rc->njobs; i++)
	{
		RequestJob *job = &rc->jobs[i];

		if (!installed)
		{
			job_error(job, "internal", LK_CLOSE_INTERNAL,
					  "livekpi is not installed in database \"%s\"", livekpi_database);
			continue;
		}
		job->latest = latest;
		if (!use_subxacts)
		{
			request_step(job);
			if (job->err_code == NULL && job->msg->type == LK_MSG_HELLO)
				touch[ntouch++] = job->token.id;
			continue;
		}
		BeginInternalSubTransaction(NULL);
		PG_TRY();
		{
			request_step(job);
			ReleaseCurrentSubTransaction();
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			ereport(LOG,
					(errmsg("livekpi push worker: checking a request from %s: %s",
							job->c->peer, edata->message)));
			job_error(job, "internal", LK_CLOSE_INTERNAL,
					  "the server could not process the request");
			FreeErrorData(edata);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (job->err_code == NULL && job->msg->type == LK_MSG_HELLO)
			touch[ntouch++] = job->token.id;
	}

	for (int i = 0; i < rc->nmetrics; i++)
	{
		LkToken		token;

		rc->metrics_ok[i] = installed &&
			livekpi_token_lookup(rc->metrics[i]->http_token, &token, cxt) == LK_TOKEN_OK;
	}

	if (rc->ntokens > 0 && installed)
	{
		Datum	   *elems = palloc(sizeof(Datum) * rc->ntokens);
		Datum		values[1];
		Oid			types[1] = {INT8ARRAYOID};
		int			ret;

		for (int i = 0; i < rc->ntokens; i++)
			elems[i] = Int64GetDatum(rc->token_ids[i]);
		values[0] = PointerGetDatum(construct_array(elems, rc->ntokens, INT8OID, 8, true,
													TYPALIGN_DOUBLE));
		ret = SPI_execute_with_args("SELECT id, revoked_at IS NOT NULL "
									"FROM livekpi.push_tokens WHERE id = ANY ($1) "
									"AND (revoked_at IS NOT NULL OR expires_at <= now())",
									1, types, values, NULL, true, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "token check failed");
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
														 SPI_tuptable->tupdesc, 1, &isnull));
			bool		revoked = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r],
															 SPI_tuptable->tupdesc, 2, &isnull));
			int64	   *hit = bsearch(&id, rc->token_ids, rc->ntokens, sizeof(int64),
									  livekpi_cmp_int64);

			if (hit)
			{
				rc->revoked[hit - rc->token_ids] = revoked;
				rc->expired[hit - rc->token_ids] = !revoked;
			}
		}
	}

	if (ntouch > 0 && !RecoveryInProgress())
	{
		Datum	   *elems = palloc(sizeof(Datum) * ntouch);
		Datum		values[1];
		Oid			types[1] = {INT8ARRAYOID};

		for (int i = 0; i < ntouch; i++)
			elems[i] = Int64GetDatum(touch[i]);
		values[0] = PointerGetDatum(construct_array(elems, ntouch, INT8OID, 8, true,
													TYPALIGN_DOUBLE));
		SPI_execute_with_args("UPDATE livekpi.push_tokens SET last_used_at = now() "
							  "WHERE id = ANY ($1)",
							  1, types, values, NULL, false, 0);
	}
}

/*
 * sql_round_checks
 *		Run the round's checks (see round_step).  False when the whole
 *		transaction failed (the caller answers every request with an
 *		internal error).
 */
bool
sql_round_checks(RoundChecks *rc)
{
	use_subxacts = !RecoveryInProgress();
	for (int attempt = 0;; attempt++)
	{
		last_step_sqlerrcode = 0;
		if (run_step("checking requests and tokens", round_step, rc, false))
			return true;
		if (use_subxacts || attempt >= 2 ||
			last_step_sqlerrcode != ERRCODE_T_R_SERIALIZATION_FAILURE)
			return false;
		/* a recovery conflict on a standby: the round again, from scratch */
		for (int i = 0; i < rc->njobs; i++)
		{
			PushClient *c = rc->jobs[i].c;
			LkClientMessage *msg = rc->jobs[i].msg;

			memset(&rc->jobs[i], 0, sizeof(RequestJob));
			rc->jobs[i].c = c;
			rc->jobs[i].msg = msg;
		}
		if (rc->nmetrics > 0)
			memset(rc->metrics_ok, 0, sizeof(bool) * rc->nmetrics);
		if (rc->ntokens > 0)
		{
			memset(rc->revoked, 0, sizeof(bool) * rc->ntokens);
			memset(rc->expired, 0, sizeof(bool) * rc->ntokens);
		}
	}
}
