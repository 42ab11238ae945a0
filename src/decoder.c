/*-------------------------------------------------------------------------
 *
 * decoder.c
 *	  The logical decoding output plugin "livekpi".  It passes on only the
 *	  transactional messages with prefix "livekpi" that livekpi's own C code
 *	  wrote, framed by their transaction's begin and commit (commit LSN, end
 *	  LSN, commit time); transactions without such messages produce no
 *	  output at all.
 *
 *	  Every record is checked before anything of it is copied out: its size
 *	  (CHANGE_MAX_RECORD_SIZE), its SipHash tag for the transaction's
 *	  top-level xid, that it decodes, and that the capture trigger of the
 *	  table it names existed when it was written (the historic catalog
 *	  snapshot of decoding says so).  A record failing any check is dropped,
 *	  logged with its LSN and, inside the apply worker, counted once in
 *	  livekpi.status.records_rejected.  See docs/internals.md.
 *
 * Options (test_decoding's conventions; '-' and '_' are the same):
 *	  format=json (default) prints one JSON object per captured change, for
 *	  pg_recvlogical -P livekpi.  format=binary is what the apply worker
 *	  reads:
 *		'B' xid:4 commit_lsn:8 end_lsn:8 | 'M' change record, without its
 *		tag | 'C' commit_lsn:8 end_lsn:8 time:8
 *	  ('B' carries the commit's LSNs so that the worker can decide whether
 *	  it applies a transaction before it reads the transaction's changes.)
 *	  skip_origin=<origin id> drops transactions replayed by that
 *	  replication origin (the apply worker's own) before they are even
 *	  reassembled; skip_origin=on drops every transaction that has an
 *	  origin (test_decoding's only-local), off (default) none.
 *	  include_xids=on|off (default on): the "xid" field of the JSON form.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/decoder.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "libpq/pqformat.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "miscadmin.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

#include "change.h"
#include "livekpi.h"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

typedef struct DecoderData
{
	MemoryContext context;		/* reset after every message */
	bool		json;
	bool		include_xids;
	bool		skip_any_origin;
	RepOriginId skip_origin;
} DecoderData;

/*
 * Per transaction: whether its 'B' frame was written yet, whether it had a
 * rejected record, and the relation the last accepted record named (most
 * transactions change one table: one catalog lookup each).
 */
typedef struct DecoderTxn
{
	bool		began;
	bool		rejected;
	Oid			checked_relid;
	char		checked_kind;
	char		checked_key_kind;
} DecoderTxn;

static void decoder_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt,
							bool is_init);
static void decoder_shutdown(LogicalDecodingContext *ctx);
static void decoder_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn);
static void decoder_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						   XLogRecPtr commit_lsn);
static void decoder_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
						   Relation relation, ReorderBufferChange *change);
static void decoder_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
							XLogRecPtr message_lsn, bool transactional,
							const char *prefix, Size sz, const char *message);
static bool decoder_filter_origin(LogicalDecodingContext *ctx, RepOriginId origin_id);
static bool in_apply_worker(void);
static TransactionId toplevel_xid(ReorderBufferTXN *txn);

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = decoder_startup;
	cb->begin_cb = decoder_begin;
	cb->change_cb = decoder_change;
	cb->commit_cb = decoder_commit;
	cb->message_cb = decoder_message;
	cb->filter_by_origin_cb = decoder_filter_origin;
	cb->shutdown_cb = decoder_shutdown;
}

/* The option names a user may give, for the HINT of an unknown one. */
#define DECODER_VALID_OPTIONS "\"format\", \"skip_origin\" and \"include_xids\""

/* A boolean option's value: on/off, true/false, yes/no, 1/0 (parse_bool). */
static bool
option_bool(DefElem *elem, const char *val)
{
	bool		result;

	/* a bare option name, as in -o include_xids, means on */
	if (val == NULL)
		return true;
	if (!parse_bool(val, &result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not parse value \"%s\" for parameter \"%s\"",
						val, elem->defname),
				 errhint("Use on, off, true, false, yes, no, 1 or 0.")));
	return result;
}

/*
 * skip_origin's value: a replication origin's id (what the apply worker
 * passes, so digits are always an id: 0 is none), or a boolean word, on
 * meaning every origin, the way test_decoding's only-local does it.
 */
static void
option_skip_origin(DecoderData *data, DefElem *elem, const char *val)
{
	bool		b;

	if (val != NULL && val[0] != '\0' && strspn(val, "0123456789") == strlen(val))
	{
		int64		id = pg_strtoint64(val);

		if (id > PG_UINT16_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("replication origin id %s for parameter \"%s\" is out of range",
							val, elem->defname),
					 errhint("Origin ids are between 0 and %d.", PG_UINT16_MAX)));
		data->skip_origin = (RepOriginId) id;
		data->skip_any_origin = false;
		return;
	}
	if (val != NULL && !parse_bool(val, &b))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not parse value \"%s\" for parameter \"%s\"",
						val, elem->defname),
				 errhint("Give a replication origin id (see pg_replication_origin.roident), or on to skip every replicated transaction, or off.")));
	data->skip_any_origin = (val == NULL) ? true : b;
	data->skip_origin = InvalidRepOriginId;
}

/* startup: parse options the way test_decoding and wal2json do */
static void
decoder_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	DecoderData *data = palloc0(sizeof(DecoderData));
	ListCell   *lc;

	data->context = AllocSetContextCreate(ctx->context, "livekpi decoder",
										  ALLOCSET_DEFAULT_SIZES);
	data->json = true;
	data->include_xids = true;
	data->skip_origin = InvalidRepOriginId;

	foreach(lc, ctx->output_plugin_options)
	{
		DefElem    *elem = lfirst(lc);
		char	   *val = elem->arg ? strVal(elem->arg) : NULL;
		char	   *name = pstrdup(elem->defname);
		char	   *c;

		/* include-xids and include_xids alike */
		for (c = name; *c; c++)
			if (*c == '-')
				*c = '_';

		if (strcmp(name, "format") == 0)
		{
			if (val != NULL && pg_strcasecmp(val, "json") == 0)
				data->json = true;
			else if (val != NULL && pg_strcasecmp(val, "binary") == 0)
				data->json = false;
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("could not parse value \"%s\" for parameter \"%s\"",
								val ? val : "(null)", elem->defname),
						 errhint("Valid formats are \"json\" (the default) and \"binary\".")));
		}
		else if (strcmp(name, "skip_origin") == 0)
			option_skip_origin(data, elem, val);
		else if (strcmp(name, "include_xids") == 0)
			data->include_xids = option_bool(elem, val);
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" = \"%s\" is unknown",
							elem->defname, val ? val : "(null)"),
					 errhint("Valid options are " DECODER_VALID_OPTIONS ".")));
	}

	opt->output_type = data->json ? OUTPUT_PLUGIN_TEXTUAL_OUTPUT
		: OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;
	ctx->output_plugin_private = data;
}

/* shutdown: free the per-message context */
static void
decoder_shutdown(LogicalDecodingContext *ctx)
{
	DecoderData *data = ctx->output_plugin_private;

	MemoryContextDelete(data->context);
}

/* filter_by_origin: drop the apply worker's own transactions */
static bool
decoder_filter_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	DecoderData *data = ctx->output_plugin_private;

	if (data->skip_any_origin)
		return origin_id != InvalidRepOriginId;
	return data->skip_origin != InvalidRepOriginId && origin_id == data->skip_origin;
}

/* begin: defer the 'B' frame until the transaction shows a message */
static void
decoder_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	txn->output_plugin_private =
		MemoryContextAllocZero(ctx->context, sizeof(DecoderTxn));
}

/* change: livekpi reads only its own messages */
static void
decoder_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   Relation relation, ReorderBufferChange *change)
{
}

/* commit: close the frame of a transaction that had messages */
static void
decoder_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   XLogRecPtr commit_lsn)
{
	DecoderData *data = ctx->output_plugin_private;
	DecoderTxn *t = txn->output_plugin_private;
	bool		began = t != NULL && t->began;

	/* this transaction's rejections are counted: decoding it again won't */
	if (t != NULL && t->rejected && in_apply_worker())
	{
		SpinLockAcquire(&livekpi_shared->mutex);
		if (livekpi_shared->rejected_upto < txn->end_lsn)
			livekpi_shared->rejected_upto = txn->end_lsn;
		SpinLockRelease(&livekpi_shared->mutex);
	}
	if (t != NULL)
	{
		pfree(t);
		txn->output_plugin_private = NULL;
	}
	if (!began || data->json)
		return;

	OutputPluginPrepareWrite(ctx, true);
	pq_sendbyte(ctx->out, 'C');
	pq_sendint64(ctx->out, commit_lsn);
	pq_sendint64(ctx->out, txn->end_lsn);
	pq_sendint64(ctx->out, txn->xact_time.commit_time);
	OutputPluginWrite(ctx, true);
}

/* Whether this process is the apply worker, whose rejections are counted. */
static bool
in_apply_worker(void)
{
	return livekpi_shared != NULL && livekpi_shared->apply_pid == MyProcPid;
}

/*
 * toplevel_xid
 *		The xid the capture trigger signed with (GetTopTransactionId()): a
 *		subtransaction's changes are replayed inside their top-level one.
 */
static TransactionId
toplevel_xid(ReorderBufferTXN *txn)
{
	return txn->toptxn ? txn->toptxn->xid : txn->xid;
}

/* A timestamp in RFC 3339, in UTC with microseconds: 2026-11-29T19:54:45.123456Z */
static void
json_rfc3339(StringInfo out, TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		appendStringInfoString(out, "null");
		return;
	}
	appendStringInfo(out, "\"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\"",
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

static void
json_key(StringInfo out, char key_kind, const ChangeImage *img)
{
	if (img->flags & IMG_KEY_NULL)
		appendStringInfoString(out, "null");
	else if (key_kind == KEY_INT)
		appendStringInfo(out, INT64_FORMAT, DatumGetInt64(img->key));
	else
		escape_json(out, change_key_to_cstring(key_kind, img->key));
}

/* A day as an ISO 8601 date, whatever the session's DateStyle. */
static void
json_day(StringInfo out, bool skip, DateADT day)
{
	struct pg_tm tm;
	char		buf[MAXDATELEN + 1];

	if (skip)
	{
		appendStringInfoString(out, "null");
		return;
	}
	j2date(day + POSTGRES_EPOCH_JDATE, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	EncodeDateOnly(&tm, USE_XSD_DATES, buf);
	escape_json(out, buf);
}

static void
json_image(StringInfo out, const Change *c, const ChangeImage *img)
{
	static const char *const classes[] = {"approved", "pending", "rejected", "?"};

	appendStringInfoString(out, "{\"property\":");
	json_key(out, c->key_kind, img);
	if (c->kind == CHANGE_UNITS)
	{
		appendStringInfoChar(out, '}');
		return;
	}
	appendStringInfoString(out, c->kind == CHANGE_BOOKING ? ",\"check_in\":" : ",\"date\":");
	json_day(out, img->flags & IMG_DAY1_SKIP, img->day1);
	if (c->kind == CHANGE_BOOKING)
	{
		appendStringInfoString(out, ",\"check_out\":");
		json_day(out, img->flags & IMG_DAY2_SKIP, img->day2);
	}
	appendStringInfoString(out, ",\"amount\":");
	if (img->amount != NULL)
		appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(numeric_out,
																		NumericGetDatum(img->amount))));
	else if (img->flags & IMG_AMOUNT_ODD)
		appendStringInfoString(out, "\"not finite\"");
	else
		appendStringInfoString(out, "null");
	if (c->kind == CHANGE_BOOKING)
	{
		appendStringInfo(out, ",\"cancelled\":%s",
						 (img->flags & IMG_CANCELLED) ? "true" : "false");
		if (img->flags & IMG_TOO_LONG)
			appendStringInfoString(out, ",\"too_long\":true");
	}
	else
	{
		appendStringInfo(out, ",\"status\":\"%s\",\"category\":",
						 classes[change_expense_class(img)]);
		if (img->category != NULL)
			escape_json(out, pnstrdup(img->category, img->category_len));
		else
			appendStringInfoString(out, "null");
	}
	appendStringInfoChar(out, '}');
}

/* One change as JSON: what pg_recvlogical -o format=json users read. */
static void
write_json_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				  const Change *c)
{
	DecoderData *data = ctx->output_plugin_private;
	StringInfo	out = ctx->out;
	const char *kind;
	const char *op;
	char	   *relname = NULL;

	switch (c->kind)
	{
		case CHANGE_BOOKING:
			kind = "booking";
			break;
		case CHANGE_EXPENSE:
			kind = "expense";
			break;
		case CHANGE_UNITS:
			kind = "units";
			break;
		case CHANGE_TRUNCATE:
			kind = "truncate";
			break;
		default:
			kind = "rebuild";
			break;
	}
	if (c->kind == CHANGE_TRUNCATE)
		op = "truncate";
	else if (c->has_old && c->has_new)
		op = "update";
	else if (c->has_new)
		op = "insert";
	else if (c->has_old)
		op = "delete";
	else
		op = "marker";

	if (OidIsValid(c->relid))
	{
		char	   *name = get_rel_name(c->relid);

		if (name != NULL)
			relname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(c->relid)),
												 name);
	}

	appendStringInfoChar(out, '{');
	if (data->include_xids)
		appendStringInfo(out, "\"xid\":%u,", toplevel_xid(txn));
	appendStringInfo(out, "\"commit_lsn\":\"%X/%X\",\"commit_time\":",
					 LSN_FORMAT_ARGS(txn->final_lsn));
	json_rfc3339(out, txn->xact_time.commit_time);
	appendStringInfo(out, ",\"kind\":\"%s\",\"op\":\"%s\",\"table\":", kind, op);
	if (relname != NULL)
		escape_json(out, relname);
	else
		appendStringInfoString(out, "null");
	/* the property the change is about: the new row's, else the old row's */
	if (c->has_new || c->has_old)
	{
		appendStringInfoString(out, ",\"property\":");
		json_key(out, c->key_kind, c->has_new ? &c->new : &c->old);
	}
	if (c->has_old)
	{
		appendStringInfoString(out, ",\"old\":");
		json_image(out, c, &c->old);
	}
	if (c->has_new)
	{
		appendStringInfoString(out, ",\"new\":");
		json_image(out, c, &c->new);
	}
	appendStringInfoChar(out, '}');
}

/*
 * trigger_captures
 *		Whether relid had, in the catalog snapshot the record was written
 *		in, a trigger calling livekpi.capture() for this kind of change and
 *		key kind: the trigger's own arguments 0 and 1 (see capture.c).  A
 *		TRUNCATE record comes from the livekpi_truncate trigger of a
 *		bookings or expenses table.  pg_trigger is a catalog, so decoding's
 *		historic snapshot can read it.
 */
static bool
trigger_captures(Oid relid, char kind, char key_kind)
{
	Relation	tgrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (!found && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tuple);
		char	   *fname;
		char	   *nspname;
		bytea	   *args;
		bool		isnull;
		Datum		d;
		const char *p;
		int			n;

		if (tg->tgnargs < 2)
			continue;
		fname = get_func_name(tg->tgfoid);
		nspname = get_namespace_name(get_func_namespace(tg->tgfoid));
		if (fname == NULL || nspname == NULL || strcmp(fname, "capture") != 0 ||
			strcmp(nspname, "livekpi") != 0)
			continue;
		d = heap_getattr(tuple, Anum_pg_trigger_tgargs, RelationGetDescr(tgrel), &isnull);
		if (isnull)
			continue;
		/* tgargs: the arguments, each terminated by a zero byte */
		args = DatumGetByteaPP(d);
		p = VARDATA_ANY(args);
		n = VARSIZE_ANY_EXHDR(args);
		if (n < 4 || p[1] != '\0' || p[3] != '\0' || p[2] != key_kind)
			continue;
		if (kind == CHANGE_TRUNCATE)
			found = (p[0] == CHANGE_BOOKING || p[0] == CHANGE_EXPENSE) &&
				(tg->tgtype & TRIGGER_TYPE_TRUNCATE);
		else
			found = (p[0] == kind) && (tg->tgtype & TRIGGER_TYPE_ROW);
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return found;
}

/*
 * check_record
 *		Everything a record must pass before any of it is output.  Returns
 *		NULL and the decoded change when it passes, else the reason.
 */
static const char *
check_record(DecoderTxn *t, TransactionId xid, const char *message, Size sz,
			 Change *c)
{
	const char *why;

	if (sz > CHANGE_MAX_RECORD_SIZE)
		return psprintf("change record of %zu bytes is larger than the %d bytes allowed",
						sz, CHANGE_MAX_RECORD_SIZE);
	if (!change_verify(message, sz, xid))
		return "change record not written by livekpi's capture trigger in this transaction (authentication tag does not match)";
	if (!change_decode_checked(message, sz - CHANGE_TAG_LEN, c, &why))
		return why;
	if (c->kind == CHANGE_REBUILD)
		return OidIsValid(c->relid) ? "rebuild marker naming a relation" : NULL;
	if (t->checked_relid == c->relid && t->checked_kind == c->kind &&
		t->checked_key_kind == c->key_kind)
		return NULL;
	if (!trigger_captures(c->relid, c->kind, c->key_kind))
		return psprintf("change record for relation %u, which livekpi does not capture",
						c->relid);
	t->checked_relid = c->relid;
	t->checked_kind = c->kind;
	t->checked_key_kind = c->key_kind;
	return NULL;
}

/*
 * reject
 *		Logs a rejected record and, in the apply worker, counts it; WAL that
 *		the worker decodes again (after a retry or a restart) is neither
 *		logged nor counted again.
 */
static void
reject(XLogRecPtr lsn, XLogRecPtr counted_at, bool transactional, const char *why)
{
	if (in_apply_worker())
	{
		bool		fresh;

		SpinLockAcquire(&livekpi_shared->mutex);
		if (transactional)
			fresh = counted_at > livekpi_shared->rejected_upto;
		else
		{
			fresh = counted_at > livekpi_shared->rejected_nontx_upto;
			if (fresh)
				livekpi_shared->rejected_nontx_upto = counted_at;
		}
		if (fresh)
			livekpi_shared->records_rejected++;
		SpinLockRelease(&livekpi_shared->mutex);
		if (!fresh)
			return;
	}
	ereport(WARNING,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("livekpi: rejected change record at %X/%X: %s",
					LSN_FORMAT_ARGS(lsn), why),
			 errdetail("It contributes nothing to the KPIs; anyone may call pg_logical_emit_message() with the prefix \"%s\".",
					   LIVEKPI_MESSAGE_PREFIX)));
}

/* message: pass on livekpi's authentic transactional messages, nothing else */
static void
decoder_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				XLogRecPtr message_lsn, bool transactional,
				const char *prefix, Size sz, const char *message)
{
	DecoderData *data = ctx->output_plugin_private;
	DecoderTxn *t = txn ? txn->output_plugin_private : NULL;
	MemoryContext old;
	Change		c;
	const char *why;

	if (strcmp(prefix, LIVEKPI_MESSAGE_PREFIX) != 0)
		return;
	if (!transactional || t == NULL)
	{
		/* the trigger writes only transactional messages */
		reject(message_lsn, message_lsn, false,
			   "non-transactional message with livekpi's prefix");
		return;
	}

	old = MemoryContextSwitchTo(data->context);
	why = check_record(t, toplevel_xid(txn), message, sz, &c);
	if (why != NULL)
	{
		t->rejected = true;
		reject(message_lsn, txn->end_lsn, true, why);
		MemoryContextSwitchTo(old);
		MemoryContextReset(data->context);
		return;
	}

	if (data->json)
	{
		OutputPluginPrepareWrite(ctx, true);
		write_json_change(ctx, txn, &c);
		OutputPluginWrite(ctx, true);
		MemoryContextSwitchTo(old);
		MemoryContextReset(data->context);
		t->began = true;
		return;
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(data->context);

	if (!t->began)
	{
		OutputPluginPrepareWrite(ctx, false);
		pq_sendbyte(ctx->out, 'B');
		pq_sendint32(ctx->out, txn->xid);
		pq_sendint64(ctx->out, txn->final_lsn);
		pq_sendint64(ctx->out, txn->end_lsn);
		OutputPluginWrite(ctx, false);
		t->began = true;
	}
	OutputPluginPrepareWrite(ctx, false);
	pq_sendbyte(ctx->out, 'M');
	appendBinaryStringInfo(ctx->out, message, sz - CHANGE_TAG_LEN);
	OutputPluginWrite(ctx, false);
}
