/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The trigger function livekpi.capture(): on a tracked table (and on
 *	  livekpi.properties) it projects OLD and NEW onto the mapped columns,
 *	  classifies them with the settings captured when the table was tracked,
 *	  and writes one transactional logical-decoding message per changed row
 *	  (per statement for TRUNCATE).  It never raises an error because of a
 *	  value it finds odd: values are converted by kpi.c's rules, which flag
 *	  what SPEC section 3 cannot use (a day outside the usable range, a key
 *	  too long for an index row) and clip long categories.
 *
 * Trigger arguments (written by livekpi._create_capture_triggers):
 *	  0 kind (B, E or U)      1 key kind (i, u, t)     2 unused (0)
 *	  3 key attnum            4 day1 attnum            5 day2 attnum
 *	  6 amount attnum         7 status attnum          8 category attnum
 *	  9 max_stay_nights       10 time zone             11 n = size of list 1
 *	  12.. list 1 (cancelled or approved statuses), then list 2 (rejected)
 *	  Attribute numbers are those of the tracked root table; 0 means none.
 *	  The tracked root is found from the catalog, not from an argument, so
 *	  that triggers restored by pg_dump into a new database keep working.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/capture.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/partition.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "replication/message.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "change.h"
#include "kpi.h"
#include "livekpi.h"

#define NUM_FIXED_ARGS 12

typedef struct MappedColumn
{
	AttrNumber	attnum;			/* in the firing relation; 0 = not mapped */
	Oid			typid;
	bool		is_bpchar;
	bool		is_varlena_text;	/* text, varchar or bpchar */
	FmgrInfo	output;			/* status and category only */
} MappedColumn;

/* Everything the trigger needs, parsed once per trigger and relation. */
typedef struct CaptureMapping
{
	Oid			tgoid;
	Oid			firing_relid;
	char		kind;
	char		key_kind;
	Oid			root_relid;
	MappedColumn key;
	MappedColumn day1;
	MappedColumn day2;
	MappedColumn amount;
	MappedColumn status;
	MappedColumn category;
	int			max_stay;
	text	   *timezone;
	int			nlist1;
	char	  **list1;
	int			nlist2;
	char	  **list2;
	MemoryContext row_cxt;		/* reset for every row */
} CaptureMapping;

static StringInfo message_buf = NULL;

/* Whether relid has livekpi's own (not cloned) capture trigger. */
static bool
has_own_capture_trigger(Oid relid)
{
	Relation	tgrel;
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&keys[0], Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&keys[1], Anum_pg_trigger_tgname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("livekpi_capture"));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 2, keys);
	if (HeapTupleIsValid(tuple = systable_getnext(scan)))
		found = !OidIsValid(((Form_pg_trigger) GETSTRUCT(tuple))->tgparentid);
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return found;
}

/*
 * tracked_root
 *		The tracked table a row of rel belongs to: rel itself, or the
 *		nearest partition ancestor that carries livekpi's own capture
 *		trigger (partitions have clones of it, or only a TRUNCATE trigger).
 */
static Oid
tracked_root(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	ListCell   *lc;
	List	   *ancestors;

	if (!rel->rd_rel->relispartition || has_own_capture_trigger(relid))
		return relid;
	ancestors = get_partition_ancestors(relid);
	foreach(lc, ancestors)
	{
		if (has_own_capture_trigger(lfirst_oid(lc)))
			return lfirst_oid(lc);
	}
	return relid;
}

static void
protocol_error(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("livekpi.capture() %s", what),
			 errhint("livekpi creates its triggers itself; use livekpi.track_bookings() or livekpi.track_expenses().")));
}

/*
 * map_column
 *		Resolves a root-table attribute number in the firing relation, which
 *		is a partition with its own attribute numbers when the root is a
 *		partitioned table.  Matching by name is what PostgreSQL itself does
 *		for partitions, and runs once per statement.
 */
static void
map_column(MappedColumn *col, const char *arg, Oid root_relid, Relation rel,
		   bool want_output, MemoryContext mcxt)
{
	AttrNumber	root_attnum = (AttrNumber) pg_strtoint32(arg);
	TupleDesc	desc = RelationGetDescr(rel);
	Form_pg_attribute att;

	memset(col, 0, sizeof(*col));
	if (root_attnum <= 0)
		return;

	if (RelationGetRelid(rel) == root_relid)
		col->attnum = root_attnum;
	else
	{
		char	   *name = get_attname(root_relid, root_attnum, false);

		col->attnum = get_attnum(RelationGetRelid(rel), name);
		if (col->attnum == InvalidAttrNumber)
			elog(ERROR, "livekpi: column \"%s\" of the tracked table is missing in partition \"%s\"",
				 name, RelationGetRelationName(rel));
	}
	att = TupleDescAttr(desc, col->attnum - 1);
	if (att->attisdropped)
		elog(ERROR, "livekpi: a mapped column of \"%s\" was dropped",
			 RelationGetRelationName(rel));
	col->typid = att->atttypid;
	col->is_bpchar = (getBaseType(att->atttypid) == BPCHAROID);
	col->is_varlena_text = (att->atttypid == TEXTOID || att->atttypid == VARCHAROID ||
							att->atttypid == BPCHAROID);
	if (want_output)
	{
		Oid			outfunc;
		bool		isvarlena;

		getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
		fmgr_info_cxt(outfunc, &col->output, mcxt);
	}
}

static CaptureMapping *
get_mapping(FunctionCallInfo fcinfo, TriggerData *trigdata)
{
	CaptureMapping *m = (CaptureMapping *) fcinfo->flinfo->fn_extra;
	Trigger    *tg = trigdata->tg_trigger;
	Relation	rel = trigdata->tg_relation;
	MemoryContext old;
	char	  **args = tg->tgargs;
	int			i;

	if (m != NULL && m->tgoid == tg->tgoid &&
		m->firing_relid == RelationGetRelid(rel))
		return m;

	if (tg->tgnargs < NUM_FIXED_ARGS)
		protocol_error("was called with the wrong number of trigger arguments");

	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	m = palloc0(sizeof(CaptureMapping));
	m->tgoid = tg->tgoid;
	m->firing_relid = RelationGetRelid(rel);
	m->kind = args[0][0];
	m->key_kind = args[1][0];
	m->root_relid = m->kind == CHANGE_UNITS ? RelationGetRelid(rel) : tracked_root(rel);
	if (m->kind != CHANGE_BOOKING && m->kind != CHANGE_EXPENSE && m->kind != CHANGE_UNITS)
		protocol_error("was called with an unknown change kind");
	if (m->key_kind != KEY_INT && m->key_kind != KEY_UUID && m->key_kind != KEY_TEXT)
		protocol_error("was called with an unknown key kind");

	map_column(&m->key, args[3], m->root_relid, rel, false, old);
	map_column(&m->day1, args[4], m->root_relid, rel, false, old);
	map_column(&m->day2, args[5], m->root_relid, rel, false, old);
	map_column(&m->amount, args[6], m->root_relid, rel, false, old);
	map_column(&m->status, args[7], m->root_relid, rel, true, fcinfo->flinfo->fn_mcxt);
	map_column(&m->category, args[8], m->root_relid, rel, true, fcinfo->flinfo->fn_mcxt);
	m->row_cxt = AllocSetContextCreate(fcinfo->flinfo->fn_mcxt, "livekpi capture row",
									   ALLOCSET_SMALL_SIZES);
	m->max_stay = pg_strtoint32(args[9]);
	m->timezone = cstring_to_text(args[10]);
	m->nlist1 = pg_strtoint32(args[11]);
	if (m->nlist1 < 0 || NUM_FIXED_ARGS + m->nlist1 > tg->tgnargs)
		protocol_error("was called with a malformed status list");
	m->list1 = palloc(sizeof(char *) * Max(m->nlist1, 1));
	for (i = 0; i < m->nlist1; i++)
		m->list1[i] = pstrdup(args[NUM_FIXED_ARGS + i]);
	m->nlist2 = tg->tgnargs - NUM_FIXED_ARGS - m->nlist1;
	m->list2 = palloc(sizeof(char *) * Max(m->nlist2, 1));
	for (i = 0; i < m->nlist2; i++)
		m->list2[i] = pstrdup(args[NUM_FIXED_ARGS + m->nlist1 + i]);

	if (message_buf == NULL)
	{
		MemoryContextSwitchTo(TopMemoryContext);
		message_buf = makeStringInfo();
	}
	MemoryContextSwitchTo(old);

	fcinfo->flinfo->fn_extra = m;
	return m;
}

/* Text of a status or category value, compared the way SQL's ::text does. */
static char *
text_value(MappedColumn *col, Datum value, int *len)
{
	char	   *s;
	int			n;

	if (col->is_varlena_text)
	{
		/* text, varchar and char(n): the bytes themselves, no output call */
		text	   *t = DatumGetTextPP(value);

		n = VARSIZE_ANY_EXHDR(t);
		s = palloc(n + 1);
		memcpy(s, VARDATA_ANY(t), n);
	}
	else
	{
		s = OutputFunctionCall(&col->output, value);
		n = strlen(s);
	}

	if (col->is_bpchar)
		while (n > 0 && s[n - 1] == ' ')
			n--;
	s[n] = '\0';
	*len = n;
	return s;
}

static bool
in_list(const char *s, char **list, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

static Datum
to_key(CaptureMapping *m, Datum value)
{
	switch (m->key.typid)
	{
		case INT2OID:
			return Int64GetDatum((int64) DatumGetInt16(value));
		case INT4OID:
			return Int64GetDatum((int64) DatumGetInt32(value));
		case INT8OID:
			return value;
		default:
			/* uuid, text and varchar are passed through */
			return value;
	}
}

/* Projects one row onto the mapped columns, as SPEC section 3 reads it. */
static void
project(CaptureMapping *m, HeapTuple tuple, TupleDesc desc, ChangeImage *img)
{
	Datum		v;
	bool		isnull;

	memset(img, 0, sizeof(*img));

	v = heap_getattr(tuple, m->key.attnum, desc, &isnull);
	if (isnull || !kpi_key_usable(m->key_kind, v))
		img->flags |= IMG_KEY_NULL; /* a key too long is skipped like NULL */
	else
		img->key = to_key(m, v);

	if (m->kind == CHANGE_UNITS)
		return;

	v = heap_getattr(tuple, m->day1.attnum, desc, &isnull);
	if (isnull || !kpi_to_day(m->day1.typid, v, m->timezone, &img->day1))
		img->flags |= IMG_DAY1_SKIP;

	if (m->kind == CHANGE_BOOKING)
	{
		v = heap_getattr(tuple, m->day2.attnum, desc, &isnull);
		if (isnull || !kpi_to_day(m->day2.typid, v, m->timezone, &img->day2))
			img->flags |= IMG_DAY2_SKIP;
		if (!(img->flags & (IMG_DAY1_SKIP | IMG_DAY2_SKIP)) &&
			(int64) img->day2 - (int64) img->day1 > m->max_stay)
			img->flags |= IMG_TOO_LONG;
	}

	v = heap_getattr(tuple, m->amount.attnum, desc, &isnull);
	if (isnull)
		img->flags |= IMG_AMOUNT_NULL;
	else
	{
		img->amount = kpi_to_numeric(m->amount.typid, v);
		if (kpi_numeric_not_finite(img->amount))
		{
			img->flags |= IMG_AMOUNT_ODD;
			img->amount = NULL;
		}
	}

	if (m->kind == CHANGE_BOOKING)
	{
		if (m->status.attnum)
		{
			v = heap_getattr(tuple, m->status.attnum, desc, &isnull);
			if (!isnull)
			{
				int			len;

				if (in_list(text_value(&m->status, v, &len), m->list1, m->nlist1))
					img->flags |= IMG_CANCELLED;
			}
		}
	}
	else
	{
		ExpenseClass cls = EXPENSE_APPROVED;

		if (m->status.attnum)
		{
			v = heap_getattr(tuple, m->status.attnum, desc, &isnull);
			cls = EXPENSE_PENDING;
			if (!isnull)
			{
				int			len;
				char	   *s = text_value(&m->status, v, &len);

				if (in_list(s, m->list1, m->nlist1))
					cls = EXPENSE_APPROVED;
				else if (in_list(s, m->list2, m->nlist2))
					cls = EXPENSE_REJECTED;
			}
		}
		img->flags |= (uint8) (cls << IMG_CLASS_SHIFT);

		img->flags |= IMG_CATEGORY_NULL;
		if (m->category.attnum)
		{
			v = heap_getattr(tuple, m->category.attnum, desc, &isnull);
			if (!isnull)
			{
				img->category = text_value(&m->category, v, &img->category_len);
				/* counted under its first characters (SPEC section 2) */
				img->category_len = kpi_category_clip(img->category, img->category_len);
				img->flags &= ~IMG_CATEGORY_NULL;
			}
		}
	}
}

/*
 * emit
 *		Signs the record for this top-level transaction and writes it.  The
 *		row change that fired the trigger has already assigned the xid.
 */
static void
emit(StringInfo buf)
{
	change_sign(buf, GetTopTransactionId());
	LogLogicalMessage(LIVEKPI_MESSAGE_PREFIX, buf->data, buf->len, true);
	livekpi_wake_apply_at_commit();
}

/*
 * livekpi.capture()
 *		AFTER ROW trigger for INSERT, UPDATE OF the mapped columns and
 *		DELETE, and AFTER STATEMENT trigger for TRUNCATE.  An UPDATE that
 *		leaves the projection unchanged writes nothing.
 */
PG_FUNCTION_INFO_V1(livekpi_capture);
Datum
livekpi_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent ev;
	CaptureMapping *m;
	TupleDesc	desc;
	ChangeImage old_img,
				new_img;
	bool		has_old,
				has_new;
	int			header_len;
	MemoryContext old_cxt;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("livekpi.capture() was not called by trigger manager")));
	ev = trigdata->tg_event;
	if (!TRIGGER_FIRED_AFTER(ev))
		protocol_error("must be fired AFTER");

	m = get_mapping(fcinfo, trigdata);
	resetStringInfo(message_buf);

	if (TRIGGER_FIRED_BY_TRUNCATE(ev))
	{
		if (m->kind == CHANGE_UNITS)
			return PointerGetDatum(NULL);
		change_encode_header(message_buf, CHANGE_TRUNCATE, m->key_kind,
							 m->root_relid, false, false);
		emit(message_buf);
		return PointerGetDatum(NULL);
	}
	if (!TRIGGER_FIRED_FOR_ROW(ev))
		protocol_error("must be fired FOR EACH ROW for INSERT, UPDATE and DELETE");

	/*
	 * The apply worker registers properties itself and already publishes
	 * what that changes; only users' edits of livekpi.properties are news.
	 */
	if (m->kind == CHANGE_UNITS && livekpi_shared != NULL &&
		livekpi_shared->apply_pid == MyProcPid)
		return PointerGetDatum(NULL);

	has_old = TRIGGER_FIRED_BY_UPDATE(ev) || TRIGGER_FIRED_BY_DELETE(ev);
	has_new = TRIGGER_FIRED_BY_UPDATE(ev) || TRIGGER_FIRED_BY_INSERT(ev);
	desc = RelationGetDescr(trigdata->tg_relation);

	/* Conversions allocate; keep them out of the (long) query context. */
	MemoryContextReset(m->row_cxt);
	old_cxt = MemoryContextSwitchTo(m->row_cxt);

	change_encode_header(message_buf, m->kind, m->key_kind, m->root_relid,
						 has_old, has_new);
	header_len = message_buf->len;
	if (has_old)
	{
		project(m, trigdata->tg_trigtuple, desc, &old_img);
		change_encode_image(message_buf, m->kind, m->key_kind, &old_img);
	}
	if (has_new)
	{
		int			old_end = message_buf->len;
		int			old_len = old_end - header_len;

		project(m, TRIGGER_FIRED_BY_UPDATE(ev) ? trigdata->tg_newtuple : trigdata->tg_trigtuple,
				desc, &new_img);
		change_encode_image(message_buf, m->kind, m->key_kind, &new_img);

		/* An UPDATE that changes nothing we project is not a change. */
		if (has_old && m->kind != CHANGE_UNITS &&
			message_buf->len - old_end == old_len &&
			memcmp(message_buf->data + header_len, message_buf->data + old_end, old_len) == 0)
		{
			MemoryContextSwitchTo(old_cxt);
			return PointerGetDatum(NULL);
		}
	}
	MemoryContextSwitchTo(old_cxt);
	emit(message_buf);

	return PointerGetDatum(NULL);
}

/*
 * livekpi._emit_rebuild_marker()
 *		Written by a rebuild into its own transaction's stream: the apply
 *		worker drops the changes that transaction made before it, which the
 *		rebuild has already counted.
 */
PG_FUNCTION_INFO_V1(livekpi_emit_rebuild_marker);
Datum
livekpi_emit_rebuild_marker(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	initStringInfo(&buf);
	change_encode_header(&buf, CHANGE_REBUILD, KEY_INT, InvalidOid, false, false);
	change_sign(&buf, GetTopTransactionId());
	LogLogicalMessage(LIVEKPI_MESSAGE_PREFIX, buf.data, buf.len, true);
	pfree(buf.data);
	PG_RETURN_VOID();
}
