/*-------------------------------------------------------------------------
 *
 * decoder.c
 *	  The logical decoding output plugin "livekpi".  It passes on only the
 *	  transactional messages with prefix "livekpi", framed by their
 *	  transaction's begin and commit (commit LSN, end LSN, commit time);
 *	  transactions without such messages produce no output at all.
 *
 *	  format=binary (default) is what the apply worker reads:
 *		'B' xid:4 | 'M' change record | 'C' commit_lsn:8 end_lsn:8 time:8
 *	  format=json prints one JSON object per captured change, for
 *	  pg_recvlogical -P livekpi -o format=json.
 *	  skip_origin=<id> drops transactions replayed by that replication
 *	  origin (the apply worker's own), before they are even reassembled.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/decoder.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "libpq/pqformat.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "miscadmin.h"
#include "utils/datetime.h"
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
	RepOriginId skip_origin;
} DecoderData;

/* Per transaction: whether its 'B' frame was written yet. */
typedef struct DecoderTxn
{
	bool		began;
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

/* startup: parse options, worded like test_decoding's errors */
static void
decoder_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	DecoderData *data = palloc0(sizeof(DecoderData));
	ListCell   *lc;

	data->context = AllocSetContextCreate(ctx->context, "livekpi decoder",
										  ALLOCSET_DEFAULT_SIZES);
	data->skip_origin = InvalidRepOriginId;

	foreach(lc, ctx->output_plugin_options)
	{
		DefElem    *elem = lfirst(lc);
		char	   *val = elem->arg ? strVal(elem->arg) : NULL;

		if (strcmp(elem->defname, "format") == 0)
		{
			if (val != NULL && strcmp(val, "json") == 0)
				data->json = true;
			else if (val != NULL && strcmp(val, "binary") == 0)
				data->json = false;
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("could not parse value \"%s\" for parameter \"%s\"",
								val ? val : "(null)", elem->defname),
						 errhint("Valid formats are \"binary\" and \"json\".")));
		}
		else if (strcmp(elem->defname, "skip_origin") == 0)
		{
			if (val == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("parameter \"%s\" needs a value", elem->defname)));
			data->skip_origin = (RepOriginId) pg_strtoint32(val);
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" = \"%s\" is unknown",
							elem->defname, val ? val : "(null)")));
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

	appendStringInfo(out, "{\"xid\":%u,\"commit_lsn\":\"%X/%X\",\"commit_time\":",
					 txn->xid, LSN_FORMAT_ARGS(txn->final_lsn));
	escape_json(out, timestamptz_to_str(txn->xact_time.commit_time));
	appendStringInfo(out, ",\"kind\":\"%s\",\"op\":\"%s\",\"table\":", kind, op);
	if (relname != NULL)
		escape_json(out, relname);
	else
		appendStringInfoString(out, "null");
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

/* message: pass on livekpi's transactional messages, nothing else */
static void
decoder_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				XLogRecPtr message_lsn, bool transactional,
				const char *prefix, Size sz, const char *message)
{
	DecoderData *data = ctx->output_plugin_private;
	DecoderTxn *t = txn ? txn->output_plugin_private : NULL;
	MemoryContext old;

	if (!transactional || t == NULL || strcmp(prefix, LIVEKPI_MESSAGE_PREFIX) != 0)
		return;

	if (data->json)
	{
		Change		c;

		old = MemoryContextSwitchTo(data->context);
		change_decode(message, sz, &c);
		OutputPluginPrepareWrite(ctx, true);
		write_json_change(ctx, txn, &c);
		OutputPluginWrite(ctx, true);
		MemoryContextSwitchTo(old);
		MemoryContextReset(data->context);
		t->began = true;
		return;
	}

	if (!t->began)
	{
		OutputPluginPrepareWrite(ctx, false);
		pq_sendbyte(ctx->out, 'B');
		pq_sendint32(ctx->out, txn->xid);
		OutputPluginWrite(ctx, false);
		t->began = true;
	}
	OutputPluginPrepareWrite(ctx, false);
	pq_sendbyte(ctx->out, 'M');
	appendBinaryStringInfo(ctx->out, message, sz);
	OutputPluginWrite(ctx, false);
}
