/*-------------------------------------------------------------------------
 *
 * apply_delta.c
 *	  The delta_log row of a batch, built in C after the batch's writes:
 *	  for each of the four SPEC section 7 views, the rows the batch touched
 *	  that still exist ("upserts": to_jsonb of the view row) and the keys of
 *	  those that no longer do ("deletes").  The same rows the SQL function
 *	  livekpi._batch_deltas computes, without planning or interpreting SQL:
 *	  table rows are read through their primary keys, and view rows are
 *	  computed from them with the same functions the view definitions call
 *	  (numeric division and round, integer products, greatest), then turned
 *	  into JSON by to_jsonb itself, so that numbers and timestamps print
 *	  exactly as in SQL.  The view definitions are in sql/parts/10_core.sql
 *	  (_install_key_type); a change there must be made here too (the push
 *	  protocol tests compare the two).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/apply_delta.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "nodes/makefuncs.h"
#include "pgtime.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datum.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "apply_delta.h"
#include "kpi.h"

/* A primary-key index scan over the first nkeys key columns. */
typedef struct Lookup
{
	Relation	rel;
	Relation	index;
	IndexScanDesc scan;
	ScanKeyData skey[3];
	int			nkeys;
	TupleTableSlot *slot;
	ApplyJsonFormat *format;	/* of the table's rows */
} Lookup;

/* The rows of one view for the delta. */
typedef struct ViewDelta
{
	const char *name;
	List	   *upserts;		/* of Jsonb * */
	List	   *deletes;		/* of Jsonb * */
} ViewDelta;

enum
{
	V_PROPERTY_KPIS,
	V_PORTFOLIO_KPIS,
	V_EXPENSE_MONTHLY,
	V_BOOKING_DAILY,
	V_COUNT
};

/* A (key, month[, category]) to look at. */
typedef struct MonthKey
{
	Datum		key;
	DateADT		month;
	Datum		category;
} MonthKey;

static char sort_key_kind;

/* ---- small helpers ---------------------------------------------------- */

/*
 * to_jsonb_of
 *		to_jsonb(value) of a value of the given type, through the SQL
 *		function itself (it takes the type from its call expression).
 */
static Jsonb *
to_jsonb_of(Oid type, Datum value)
{
	static struct
	{
		Oid			type;
		FmgrInfo	finfo;
	}			cache[16];
	static int	ncache = 0;
	int			i;

	for (i = 0; i < ncache; i++)
		if (cache[i].type == type)
			return DatumGetJsonbP(FunctionCall1(&cache[i].finfo, value));
	if (ncache == lengthof(cache))
		ncache = 0;				/* view row types change with the key type */
	i = ncache++;
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		cache[i].type = InvalidOid;
		fmgr_info_cxt(F_TO_JSONB, &cache[i].finfo, TopMemoryContext);
		cache[i].finfo.fn_expr = (Node *)
			makeFuncExpr(F_TO_JSONB, JSONBOID,
						 list_make1(makeNullConst(type, -1, InvalidOid)),
						 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		cache[i].type = type;
		MemoryContextSwitchTo(old);
	}
	return DatumGetJsonbP(FunctionCall1(&cache[i].finfo, value));
}

/*
 * encode_timestamptz
 *		JsonEncodeDateTime of a timestamptz, remembering the last one: every
 *		row a batch writes has the same updated_at.  The text depends on the
 *		session's time zone, which is part of the cache key.
 */
static void
encode_timestamptz(Datum value, JsonbValue *jv)
{
	static char last_text[MAXDATELEN + 1];
	static int	last_len = -1;
	static Datum last_value;
	static pg_tz *last_zone;
	char	   *text;

	if (last_len >= 0 && last_value == value && last_zone == session_timezone)
	{
		text = palloc(last_len + 1);
		memcpy(text, last_text, last_len + 1);
		jv->type = jbvString;
		jv->val.string.val = text;
		jv->val.string.len = last_len;
		return;
	}
	text = JsonEncodeDateTime(NULL, value, TIMESTAMPTZOID, NULL);
	jv->type = jbvString;
	jv->val.string.val = text;
	jv->val.string.len = strlen(text);
	last_len = -1;
	if (jv->val.string.len < sizeof(last_text))
	{
		memcpy(last_text, text, jv->val.string.len + 1);
		last_value = value;
		last_zone = session_timezone;
		last_len = jv->val.string.len;
	}
}

/*
 * integer_numeric
 *		int64_to_numeric, with the small values (the counts of a daily row)
 *		made once: JSON of a batch's rows asks for them again and again.
 *		The numerics are only read (copied into jsonb values).
 */
#define SMALL_NUMERICS	64

static Numeric
integer_numeric(int64 v)
{
	static Numeric small[SMALL_NUMERICS];

	if (v >= 0 && v < SMALL_NUMERICS)
	{
		if (small[v] == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			small[v] = int64_to_numeric(v);
			MemoryContextSwitchTo(old);
		}
		return small[v];
	}
	return int64_to_numeric(v);
}

/*
 * jsonb_scalar_of
 *		The JsonbValue to_jsonb gives a value of the types the KPI tables and
 *		views have, built without to_jsonb's per-call type lookups and text
 *		round trip: integers and finite numerics as numbers (to_jsonb's
 *		numeric_in(numeric_out(v)) keeps the value and its scale), dates and
 *		timestamps through JsonEncodeDateTime as to_jsonb does, text as
 *		itself.  Returns false for any other type or value (the caller then
 *		asks to_jsonb).
 */
static bool
jsonb_scalar_of(Oid type, Datum value, JsonbValue *jv)
{
	switch (type)
	{
		case INT2OID:
			jv->type = jbvNumeric;
			jv->val.numeric = integer_numeric(DatumGetInt16(value));
			return true;
		case INT4OID:
			jv->type = jbvNumeric;
			jv->val.numeric = integer_numeric(DatumGetInt32(value));
			return true;
		case INT8OID:
			jv->type = jbvNumeric;
			jv->val.numeric = integer_numeric(DatumGetInt64(value));
			return true;
		case NUMERICOID:
			{
				Numeric		n = DatumGetNumeric(value);

				if (numeric_is_nan(n) || numeric_is_inf(n))
					return false;
				jv->type = jbvNumeric;
				jv->val.numeric = n;
				return true;
			}
		case DATEOID:
		case TIMESTAMPOID:
			jv->type = jbvString;
			jv->val.string.val = JsonEncodeDateTime(NULL, value, type, NULL);
			jv->val.string.len = strlen(jv->val.string.val);
			return true;
		case TIMESTAMPTZOID:
			encode_timestamptz(value, jv);
			return true;
		case TEXTOID:
			{
				text	   *t = DatumGetTextPP(value);

				jv->type = jbvString;
				jv->val.string.val = VARDATA_ANY(t);
				jv->val.string.len = VARSIZE_ANY_EXHDR(t);
				return true;
			}
		default:
			return false;
	}
}

/*
 * The object keys of a row type's JSON, prepared once for many rows: its
 * columns (not dropped) in the order a jsonb object keeps its keys (shorter
 * first, then bytewise; uniqueifyJsonbObject), so that values_to_jsonb
 * hands JsonbValueToJsonb an object already in that order.
 */
struct ApplyJsonFormat
{
	TupleDesc	desc;
	int			n;
	int		   *att;			/* the columns' indexes, in key order */
	JsonbValue *keys;			/* their names */
	bool		direct;			/* every column of a type row_jsonb_direct writes */
	JEntry	   *key_entries;	/* the keys' JEntries, as convertJsonbObject sets them */
	char	   *key_bytes;		/* the keys, one after the other */
	uint32		key_len;
};

static int
json_key_cmp(const void *pa, const void *pb)
{
	const JsonbValue *a = pa;
	const JsonbValue *b = pb;

	if (a->val.string.len != b->val.string.len)
		return a->val.string.len < b->val.string.len ? -1 : 1;
	return memcmp(a->val.string.val, b->val.string.val, a->val.string.len);
}

static void check_jsonb_length(Size len);
static void format_prepare_direct(ApplyJsonFormat *f);
#ifdef LIVEKPI_CHECK_VIEWS_OBJECT
static Jsonb *values_to_jsonb_built(ApplyJsonFormat *f, Datum *values, bool *nulls);
#endif

/* The column types row_jsonb_direct writes itself. */
static bool
direct_type(Oid type)
{
	switch (type)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case NUMERICOID:
		case DATEOID:
		case TIMESTAMPTZOID:
		case TEXTOID:
			return true;
		default:
			return false;
	}
}

#define DIRECT_MAX_COLUMNS		32

/*
 * integer_numeric, remembering for each column position the last value past
 * the small ones: a property's rows come one after another, with the same
 * property_id.  Valid until the next call for the same position.
 */
static Numeric
integer_numeric_cached(int pos, int64 v)
{
	static int64 last_v[DIRECT_MAX_COLUMNS];
	static Numeric last_n[DIRECT_MAX_COLUMNS];

	if (v >= 0 && v < SMALL_NUMERICS)
		return integer_numeric(v);
	if (last_n[pos] == NULL || last_v[pos] != v)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		if (last_n[pos] != NULL)
			pfree(last_n[pos]);
		last_n[pos] = int64_to_numeric(v);
		last_v[pos] = v;
		MemoryContextSwitchTo(old);
	}
	return last_n[pos];
}

/* A value as row_jsonb_direct writes it: a string, a numeric or null. */
typedef struct DirectValue
{
	char		kind;			/* 's', 'n', '0' */
	const char *data;			/* string bytes; numeric data after its header */
	uint32		len;			/* string length; numeric data length */
} DirectValue;

/*
 * The sign bits of a numeric's first header word, which mark NaN and the
 * infinities (NUMERIC_SIGN_MASK and NUMERIC_SPECIAL of numeric.c, part of
 * its stored format); read in place, since a numeric in a row may have a
 * short varlena header and then is not aligned for struct NumericData.
 */
#define NUMERIC_SIGN_BITS		0xC000
#define NUMERIC_SPECIAL_BITS	0xC000
#define DIRECT_TEXT_BYTES		(MAXDATELEN + 1)

/*
 * row_jsonb_direct
 *		values_to_jsonb_built's result written directly in jsonb's binary
 *		form, the bytes convertJsonbObject writes for the same pairs (the
 *		keys already in jsonb's order, their JEntries and bytes made once
 *		with the format), at its exact size: no JsonbValue tree, no 1 kB
 *		buffer, no copy.  A short-header numeric is written with the 4-byte
 *		header to_jsonb's numeric has.  NULL when the format has a column
 *		of another type or too many columns, or a value is not a finite
 *		number (the caller then takes the general way).
 */
static Jsonb *
row_jsonb_direct(ApplyJsonFormat *f, Datum *values, bool *nulls)
{
	DirectValue v[DIRECT_MAX_COLUMNS];
	char		texts[DIRECT_MAX_COLUMNS][DIRECT_TEXT_BYTES];
	uint32		size;
	uint32		totallen;
	Jsonb	   *jb;
	char	   *p;
	JEntry	   *entries;
	int			n = f->n;
	int			k;

	if (!f->direct)
		return NULL;
	for (k = 0; k < n; k++)
	{
		int			i = f->att[k];
		Oid			type = TupleDescAttr(f->desc, i)->atttypid;
		Numeric		num = NULL;

		if (nulls[i])
		{
			v[k].kind = '0';
			v[k].len = 0;
			continue;
		}
		switch (type)
		{
			case INT2OID:
				num = integer_numeric_cached(k, DatumGetInt16(values[i]));
				break;
			case INT4OID:
				num = integer_numeric_cached(k, DatumGetInt32(values[i]));
				break;
			case INT8OID:
				num = integer_numeric_cached(k, DatumGetInt64(values[i]));
				break;
			case NUMERICOID:
				{
					struct varlena *raw = (struct varlena *) DatumGetPointer(values[i]);

					uint16		first;

					if (VARATT_IS_EXTENDED(raw) && !VARATT_IS_SHORT(raw))
						return NULL;	/* compressed or external: not a KPI row's */
					v[k].kind = 'n';
					v[k].data = VARDATA_ANY(raw);
					v[k].len = VARSIZE_ANY_EXHDR(raw);
					/* NaN and the infinities: to_jsonb writes them as strings */
					memcpy(&first, v[k].data, sizeof(first));
					if ((first & NUMERIC_SIGN_BITS) == NUMERIC_SPECIAL_BITS)
						return NULL;
					continue;
				}
			case DATEOID:
				(void) JsonEncodeDateTime(texts[k], values[i], DATEOID, NULL);
				v[k].kind = 's';
				v[k].data = texts[k];
				v[k].len = strlen(texts[k]);
				continue;
			case TIMESTAMPTZOID:
				{
					JsonbValue	jv;

					encode_timestamptz(values[i], &jv);
					if (jv.val.string.len >= DIRECT_TEXT_BYTES)
						return NULL;
					memcpy(texts[k], jv.val.string.val, jv.val.string.len);
					pfree(jv.val.string.val);
					v[k].kind = 's';
					v[k].data = texts[k];
					v[k].len = jv.val.string.len;
					continue;
				}
			case TEXTOID:
				{
					text	   *t = DatumGetTextPP(values[i]);

					v[k].kind = 's';
					v[k].data = VARDATA_ANY(t);
					v[k].len = VARSIZE_ANY_EXHDR(t);
					continue;
				}
			default:
				return NULL;
		}
		v[k].kind = 'n';
		v[k].data = VARDATA(num);
		v[k].len = VARSIZE(num) - VARHDRSZ;
	}

	/* the size: header, JEntries, keys, then each value (numerics int-aligned) */
	size = VARHDRSZ + sizeof(uint32) + 2 * n * sizeof(JEntry) + f->key_len;
	for (k = 0; k < n; k++)
	{
		if (v[k].kind == 'n')
			size = INTALIGN(size) + VARHDRSZ + v[k].len;
		else
			size += v[k].len;
	}
	jb = palloc(size);
	SET_VARSIZE(jb, size);
	jb->root.header = n | JB_FOBJECT;
	entries = jb->root.children;
	memcpy(entries, f->key_entries, n * sizeof(JEntry));
	p = (char *) &entries[2 * n];
	memcpy(p, f->key_bytes, f->key_len);
	p += f->key_len;
	totallen = f->key_len;
	for (k = 0; k < n; k++)
	{
		uint32		len;
		JEntry		meta;

		if (v[k].kind == 'n')
		{
			char	   *start = p;

			while ((p - (char *) jb) % sizeof(uint32) != 0)
				*p++ = '\0';
			SET_VARSIZE(p, VARHDRSZ + v[k].len);
			memcpy(p + VARHDRSZ, v[k].data, v[k].len);
			p += VARHDRSZ + v[k].len;
			len = p - start;
			meta = JENTRY_ISNUMERIC;
		}
		else
		{
			memcpy(p, v[k].data, v[k].len);
			p += v[k].len;
			len = v[k].len;
			meta = v[k].kind == 's' ? JENTRY_ISSTRING : JENTRY_ISNULL;
		}
		totallen += len;
		check_jsonb_length(totallen);
		entries[n + k] = ((k + n) % JB_OFFSET_STRIDE == 0) ?
			(meta | totallen | JENTRY_HAS_OFF) : (meta | len);
	}
	Assert(p - (char *) jb == size);
#ifdef LIVEKPI_CHECK_VIEWS_OBJECT
	{
		MemoryContext check_cxt = AllocSetContextCreate(CurrentMemoryContext,
														"livekpi row check",
														ALLOCSET_DEFAULT_SIZES);
		MemoryContext old = MemoryContextSwitchTo(check_cxt);
		Jsonb	   *other = values_to_jsonb_built(f, values, nulls);
		bool		same = VARSIZE(other) == size && memcmp(other, jb, size) == 0;

		MemoryContextSwitchTo(old);
		MemoryContextDelete(check_cxt);
		if (!same)
		{
			int			d = 0;

			while (d < size && d < VARSIZE(other) && ((char *) other)[d] == ((char *) jb)[d])
				d++;
			elog(ERROR, "livekpi: row_jsonb_direct differs: %u vs %u bytes, from byte %d (%02x vs %02x): %s",
				 size, VARSIZE(other), d, ((unsigned char *) jb)[d], ((unsigned char *) other)[d],
				 JsonbToCString(NULL, &other->root, VARSIZE(other)));
		}
	}
#endif
	return jb;
}

/*
 * apply_delta_json_format
 *		The keys of to_jsonb of rows of the descriptor, which must outlive
 *		the format.
 */
ApplyJsonFormat *
apply_delta_json_format(TupleDesc desc)
{
	ApplyJsonFormat *f = palloc(sizeof(ApplyJsonFormat));
	int			i;

	f->desc = desc;
	f->n = 0;
	f->att = palloc(sizeof(int) * Max(desc->natts, 1));
	f->keys = palloc(sizeof(JsonbValue) * Max(desc->natts, 1));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		JsonbValue *k;

		if (att->attisdropped)
			continue;
		k = &f->keys[f->n++];
		k->type = jbvString;
		k->val.string.val = NameStr(att->attname);
		k->val.string.len = strlen(NameStr(att->attname));
	}
	if (f->n > 1)
		qsort(f->keys, f->n, sizeof(JsonbValue), json_key_cmp);
	for (i = 0; i < f->n; i++)
	{
		int			a;

		/* the column of each key: names point into the descriptor */
		for (a = 0; a < desc->natts; a++)
			if (NameStr(TupleDescAttr(desc, a)->attname) == f->keys[i].val.string.val)
				break;
		Assert(a < desc->natts);
		f->att[i] = a;
	}
	format_prepare_direct(f);
	return f;
}

/*
 * format_prepare_direct
 *		The keys' part of row_jsonb_direct's rows, once per format (again
 *		when its keys change).
 */
static void
format_prepare_direct(ApplyJsonFormat *f)
{
	uint32		off = 0;
	int			i;

	f->direct = f->n > 0 && f->n <= DIRECT_MAX_COLUMNS;
	for (i = 0; i < f->n; i++)
		if (!direct_type(TupleDescAttr(f->desc, f->att[i])->atttypid))
			f->direct = false;
	f->key_entries = palloc(sizeof(JEntry) * Max(f->n, 1));
	f->key_len = 0;
	for (i = 0; i < f->n; i++)
		f->key_len += f->keys[i].val.string.len;
	f->key_bytes = palloc(Max(f->key_len, 1));
	for (i = 0; i < f->n; i++)
	{
		int			len = f->keys[i].val.string.len;

		memcpy(f->key_bytes + off, f->keys[i].val.string.val, len);
		off += len;
		f->key_entries[i] = (i % JB_OFFSET_STRIDE == 0) ?
			(JENTRY_ISSTRING | off | JENTRY_HAS_OFF) : (JENTRY_ISSTRING | len);
	}
}

static void
push_binary(JsonbParseState **st, JsonbIteratorToken tok, Jsonb *jb)
{
	JsonbValue	v;

	v.type = jbvBinary;
	v.val.binary.data = &jb->root;
	v.val.binary.len = VARSIZE(jb) - VARHDRSZ;
	(void) pushJsonbValue(st, tok, &v);
}

static void
push_key(JsonbParseState **st, const char *name)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) name;
	v.val.string.len = strlen(name);
	(void) pushJsonbValue(st, WJB_KEY, &v);
}

/*
 * values_to_jsonb
 *		to_jsonb of the format's columns of a row of its descriptor, from
 *		its values, built directly when every column has a type
 *		jsonb_scalar_of knows: an object of pairs already in jsonb's key
 *		order (which is what pushJsonbValue would sort them into), converted
 *		once.  A column of another type (a uuid key, a column a user added)
 *		is to_jsonb of its value, as to_jsonb of the row has it.
 */
static Jsonb *
values_to_jsonb_built(ApplyJsonFormat *f, Datum *values, bool *nulls)
{
	TupleDesc	desc = f->desc;
	JsonbPair  *pairs = palloc(sizeof(JsonbPair) * Max(f->n, 1));
	JsonbValue	object;
	Jsonb	   *res;
	int			k;

	for (k = 0; k < f->n; k++)
	{
		int			i = f->att[k];

		pairs[k].key = f->keys[k];
		pairs[k].order = k;
		if (nulls[i])
			pairs[k].value.type = jbvNull;
		else if (!jsonb_scalar_of(TupleDescAttr(desc, i)->atttypid, values[i], &pairs[k].value))
		{
			JsonbParseState *st = NULL;

			pfree(pairs);
			(void) pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
			for (k = 0; k < f->n; k++)
			{
				JsonbValue	v;

				i = f->att[k];
				(void) pushJsonbValue(&st, WJB_KEY, &f->keys[k]);
				if (nulls[i])
				{
					v.type = jbvNull;
					(void) pushJsonbValue(&st, WJB_VALUE, &v);
				}
				else if (jsonb_scalar_of(TupleDescAttr(desc, i)->atttypid, values[i], &v))
					(void) pushJsonbValue(&st, WJB_VALUE, &v);
				else
					push_binary(&st, WJB_VALUE,
								to_jsonb_of(TupleDescAttr(desc, i)->atttypid, values[i]));
			}
			return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
		}
	}
	object.type = jbvObject;
	object.val.object.nPairs = f->n;
	object.val.object.pairs = pairs;
	res = JsonbValueToJsonb(&object);
	pfree(pairs);
	return res;
}

/*
 * A delta row is built in scratch memory and copied out at its own size:
 * JsonbValueToJsonb leaves a row in a buffer of at least 1 kB (the
 * StringInfo of convertToJsonb), and the texts of its dates and numbers are
 * garbage once it is built, while a batch keeps up to hundreds of thousands
 * of rows (at 1.3 kB a row, a load of 300,000 bookings peaked at 870 MB).
 */
static MemoryContext row_scratch = NULL;

static MemoryContext
row_scratch_begin(void)
{
	if (row_scratch == NULL)
		row_scratch = AllocSetContextCreate(TopMemoryContext, "livekpi delta row",
											ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(row_scratch);
	return MemoryContextSwitchTo(row_scratch);
}

static Jsonb *
row_scratch_end(MemoryContext caller, Jsonb *built)
{
	Jsonb	   *row;

	MemoryContextSwitchTo(caller);
	row = palloc(VARSIZE(built));
	memcpy(row, built, VARSIZE(built));
	return row;
}

/* values_to_jsonb_built, in the caller's memory at the row's size */
static Jsonb *
values_to_jsonb(ApplyJsonFormat *f, Datum *values, bool *nulls)
{
	Jsonb	   *direct = row_jsonb_direct(f, values, nulls);
	MemoryContext caller;

	if (direct != NULL)
		return direct;
	caller = row_scratch_begin();

	return row_scratch_end(caller, values_to_jsonb_built(f, values, nulls));
}

/*
 * apply_delta_format_jsonb
 *		to_jsonb of the row in a slot of the format's descriptor:
 *		apply_kpi.c calls it with each booking_daily row it writes, so that
 *		the delta does not read it back.
 */
Jsonb *
apply_delta_format_jsonb(ApplyJsonFormat *f, TupleTableSlot *slot)
{
	slot_getallattrs(slot);
	return values_to_jsonb(f, slot->tts_values, slot->tts_isnull);
}

/*
 * apply_delta_slot_jsonb
 *		to_jsonb of the row in a slot, its format prepared for this row
 *		alone (apply_delta_format_jsonb is the one for many rows).
 */
Jsonb *
apply_delta_slot_jsonb(TupleTableSlot *slot)
{
	return apply_delta_format_jsonb(apply_delta_json_format(slot->tts_tupleDescriptor), slot);
}

/* A key object such as {"property_id": 1, "month": "2026-01-01"}. */
static Jsonb *
key_object_built(int n, const char *const *names, const Oid *types, const Datum *values)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;
	int			i;

	(void) pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < n; i++)
	{
		JsonbValue	v;

		push_key(&st, names[i]);
		if (jsonb_scalar_of(types[i], values[i], &v))
			(void) pushJsonbValue(&st, WJB_VALUE, &v);
		else
			push_binary(&st, WJB_VALUE, to_jsonb_of(types[i], values[i]));
	}
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/* key_object_built, in the caller's memory at the key's size */
static Jsonb *
key_object(int n, const char *const *names, const Oid *types, const Datum *values)
{
	MemoryContext caller = row_scratch_begin();

	return row_scratch_end(caller, key_object_built(n, names, types, values));
}

static Datum views_object_pushed(ViewDelta *views, bool upserts);

static int
view_name_cmp(const void *pa, const void *pb)
{
	const char *a = (*(ViewDelta *const *) pa)->name;
	const char *b = (*(ViewDelta *const *) pb)->name;
	size_t		la = strlen(a);
	size_t		lb = strlen(b);

	if (la != lb)
		return la < lb ? -1 : 1;
	return memcmp(a, b, la);
}

static void
pad_to_int(char *buf, Size *len)
{
	while (*len % sizeof(uint32) != 0)
		buf[(*len)++] = '\0';
}

static void
check_jsonb_length(Size len)
{
	if (len > JENTRY_OFFLENMASK)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("total size of jsonb array elements exceeds the maximum of %u bytes",
						JENTRY_OFFLENMASK)));
}

/*
 * views_object
 *		{"view": [row, ...], ...} of the views with something to say,
 *		written in jsonb's binary form directly: the rows are jsonb objects
 *		already, and a container inside another is the same bytes as on its
 *		own (aligned to 4 bytes, as convertJsonbArray aligns it), so each row
 *		is copied as it is, where pushJsonbValue would unpack every row into
 *		values and convert them all again (byte for byte the same result,
 *		the code below follows convertJsonbObject and convertJsonbArray).
 */
static Datum
views_object(ViewDelta *views, bool upserts)
{
	ViewDelta  *present[V_COUNT];
	int			npairs = 0;
	Size		bound = VARHDRSZ + sizeof(uint32);
	Size		len;
	char	   *buf;
	uint32		header;
	Size		jentries;
	Size		totallen;
	int			i;

	for (i = 0; i < V_COUNT; i++)
	{
		List	   *rows = upserts ? views[i].upserts : views[i].deletes;
		ListCell   *lc;

		if (rows == NIL)
			continue;
		present[npairs++] = &views[i];
		bound += 2 * sizeof(JEntry) + strlen(views[i].name) +
			3 + sizeof(uint32) + sizeof(JEntry) * list_length(rows);
		foreach(lc, rows)
		{
			Jsonb	   *jb = lfirst(lc);

			if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
				return views_object_pushed(views, upserts);
			bound += 3 + VARSIZE(jb) - VARHDRSZ;
			check_jsonb_length(bound);
		}
	}
	if (npairs > 1)
		qsort(present, npairs, sizeof(ViewDelta *), view_name_cmp);

	buf = palloc(bound);
	len = VARHDRSZ;
	header = npairs | JB_FOBJECT;
	memcpy(buf + len, &header, sizeof(uint32));
	len += sizeof(uint32);
	jentries = len;
	len += sizeof(JEntry) * npairs * 2;

	/* the keys */
	totallen = 0;
	for (i = 0; i < npairs; i++)
	{
		Size		klen = strlen(present[i]->name);
		JEntry		meta;

		memcpy(buf + len, present[i]->name, klen);
		len += klen;
		totallen += klen;
		meta = JENTRY_ISSTRING | klen;
		if (i % JB_OFFSET_STRIDE == 0)
			meta = JENTRY_ISSTRING | totallen | JENTRY_HAS_OFF;
		memcpy(buf + jentries + sizeof(JEntry) * i, &meta, sizeof(JEntry));
	}

	/* the arrays of rows */
	for (i = 0; i < npairs; i++)
	{
		List	   *rows = upserts ? present[i]->upserts : present[i]->deletes;
		Size		base = len;
		Size		elem_jentries;
		Size		elems_len = 0;
		JEntry		meta;
		ListCell   *lc;

		pad_to_int(buf, &len);
		header = list_length(rows) | JB_FARRAY;
		memcpy(buf + len, &header, sizeof(uint32));
		len += sizeof(uint32);
		elem_jentries = len;
		len += sizeof(JEntry) * list_length(rows);
		foreach(lc, rows)
		{
			Jsonb	   *jb = lfirst(lc);
			int			e = foreach_current_index(lc);
			Size		start = len;
			JEntry		emeta;

			pad_to_int(buf, &len);
			memcpy(buf + len, &jb->root, VARSIZE(jb) - VARHDRSZ);
			len += VARSIZE(jb) - VARHDRSZ;
			elems_len += len - start;
			check_jsonb_length(elems_len);
			emeta = JENTRY_ISCONTAINER | (len - start);
			if (e % JB_OFFSET_STRIDE == 0)
				emeta = JENTRY_ISCONTAINER | elems_len | JENTRY_HAS_OFF;
			memcpy(buf + elem_jentries + sizeof(JEntry) * e, &emeta, sizeof(JEntry));
		}
		check_jsonb_length(len - base);
		totallen += len - base;
		check_jsonb_length(totallen);
		meta = JENTRY_ISCONTAINER | (len - base);
		if ((i + npairs) % JB_OFFSET_STRIDE == 0)
			meta = JENTRY_ISCONTAINER | totallen | JENTRY_HAS_OFF;
		memcpy(buf + jentries + sizeof(JEntry) * (i + npairs), &meta, sizeof(JEntry));
	}
	Assert(len <= bound);
	SET_VARSIZE(buf, len);
#ifdef LIVEKPI_CHECK_VIEWS_OBJECT
	{
		/* in a context of its own: the check must not change the memory tests */
		MemoryContext check_cxt = AllocSetContextCreate(CurrentMemoryContext,
														"livekpi views_object check",
														ALLOCSET_DEFAULT_SIZES);
		MemoryContext old = MemoryContextSwitchTo(check_cxt);
		Jsonb	   *other = DatumGetJsonbP(views_object_pushed(views, upserts));
		uint32		other_len = VARSIZE(other);
		bool		same = other_len == len && memcmp(other, buf, len) == 0;

		MemoryContextSwitchTo(old);
		MemoryContextDelete(check_cxt);
		if (!same)
			elog(ERROR, "livekpi: views_object differs: %u vs %zu bytes", other_len, len);
		elog(LOG, "livekpi: views_object same: %zu bytes", len);
	}
#endif
	return PointerGetDatum(buf);
}

/* views_object the general way: pushJsonbValue unpacks every row. */
static Datum
views_object_pushed(ViewDelta *views, bool upserts)
{
	JsonbParseState *st = NULL;
	JsonbValue *res;
	int			i;

	(void) pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < V_COUNT; i++)
	{
		List	   *rows = upserts ? views[i].upserts : views[i].deletes;
		ListCell   *lc;

		if (rows == NIL)
			continue;
		push_key(&st, views[i].name);
		(void) pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
		foreach(lc, rows)
			push_binary(&st, WJB_ELEM, lfirst(lc));
		(void) pushJsonbValue(&st, WJB_END_ARRAY, NULL);
	}
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbPGetDatum(JsonbValueToJsonb(res));
}

/*
 * emit_part_if_full
 *		Hand the rows built so far out as one part once they reach
 *		DELTA_PART_ROWS (see apply_delta.h), and start the next part.
 */
static void
emit_part_if_full(ViewDelta *views, ApplyDeltaEmit emit, void *emit_arg)
{
	int			n = 0;
	int			i;

	for (i = 0; i < V_COUNT; i++)
		n += list_length(views[i].upserts) + list_length(views[i].deletes);
	if (n < DELTA_PART_ROWS)
		return;
	emit(views_object(views, true), views_object(views, false), emit_arg);
	for (i = 0; i < V_COUNT; i++)
	{
		list_free(views[i].upserts);
		list_free(views[i].deletes);
		views[i].upserts = views[i].deletes = NIL;
	}
}

static void
lookup_open(Lookup *l, Oid nspid, const char *name, int nkeys, Snapshot snapshot)
{
	Oid			relid = get_relname_relid(name, nspid);
	int			i;

	if (!OidIsValid(relid))
		elog(ERROR, "livekpi: table livekpi.%s is missing", name);
	l->rel = table_open(relid, AccessShareLock);
	l->index = index_open(RelationGetPrimaryKeyIndex(l->rel), AccessShareLock);
	l->nkeys = nkeys;
	for (i = 0; i < nkeys; i++)
	{
		Oid			intype = l->index->rd_opcintype[i];
		Oid			op = get_opfamily_member(l->index->rd_opfamily[i], intype, intype,
											 BTEqualStrategyNumber);

		ScanKeyEntryInitialize(&l->skey[i], 0, i + 1, BTEqualStrategyNumber, intype,
							   l->index->rd_indcollation[i], get_opcode(op), (Datum) 0);
	}
	l->scan = index_beginscan(l->rel, l->index, snapshot, nkeys, 0);
	l->slot = table_slot_create(l->rel, NULL);
	l->format = apply_delta_json_format(RelationGetDescr(l->rel));
}

static void
lookup_close(Lookup *l)
{
	index_endscan(l->scan);
	ExecDropSingleTupleTableSlot(l->slot);
	index_close(l->index, AccessShareLock);
	table_close(l->rel, AccessShareLock);
}

/* Positions the scan on the keys; then lookup_next gives the rows. */
static void
lookup_start(Lookup *l, const Datum *keys)
{
	int			i;

	for (i = 0; i < l->nkeys; i++)
		l->skey[i].sk_argument = keys[i];
	index_rescan(l->scan, l->skey, l->nkeys, NULL, 0);
}

static bool
lookup_next(Lookup *l)
{
	return index_getnext_slot(l->scan, ForwardScanDirection, l->slot);
}

static bool
lookup(Lookup *l, const Datum *keys)
{
	lookup_start(l, keys);
	return lookup_next(l);
}

static Datum
col(Lookup *l, const char *name, bool *isnull)
{
	TupleDesc	desc = RelationGetDescr(l->rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
		if (strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0 &&
			!TupleDescAttr(desc, i)->attisdropped)
			return slot_getattr(l->slot, i + 1, isnull);
	elog(ERROR, "livekpi: column %s.%s is missing", RelationGetRelationName(l->rel), name);
	return (Datum) 0;			/* keep compiler quiet */
}

static Datum
col_notnull(Lookup *l, const char *name)
{
	bool		isnull;
	Datum		v = col(l, name, &isnull);

	if (isnull)
		elog(ERROR, "livekpi: NULL in livekpi.%s.%s", RelationGetRelationName(l->rel), name);
	return v;
}

static int
key_compare(Datum a, Datum b, char kind)
{
	switch (kind)
	{
		case KEY_INT:
			return DatumGetInt64(a) < DatumGetInt64(b) ? -1 :
				(DatumGetInt64(a) > DatumGetInt64(b) ? 1 : 0);
		case KEY_UUID:
			return memcmp(DatumGetUUIDP(a)->data, DatumGetUUIDP(b)->data, UUID_LEN);
		default:
			{
				text	   *x = DatumGetTextPP(a);
				text	   *y = DatumGetTextPP(b);
				int			lx = VARSIZE_ANY_EXHDR(x);
				int			ly = VARSIZE_ANY_EXHDR(y);
				int			c = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(lx, ly));

				return c != 0 ? c : (lx < ly ? -1 : (lx > ly ? 1 : 0));
			}
	}
}

static int
month_key_cmp(const void *pa, const void *pb)
{
	const MonthKey *a = pa;
	const MonthKey *b = pb;
	int			c = key_compare(a->key, b->key, sort_key_kind);

	if (c != 0)
		return c;
	if (a->month != b->month)
		return a->month < b->month ? -1 : 1;
	if (a->category == (Datum) 0 || b->category == (Datum) 0)
		return 0;
	return key_compare(a->category, b->category, KEY_TEXT);
}

static int
month_date_cmp(const void *pa, const void *pb)
{
	DateADT		a = *(const DateADT *) pa;
	DateADT		b = *(const DateADT *) pb;

	return a < b ? -1 : (a > b ? 1 : 0);
}

/* Sorts and removes duplicates; returns the new count. */
static int
unique_month_keys(MonthKey *k, int n)
{
	int			out = 0;
	int			i;

	if (n == 0)
		return 0;
	qsort(k, n, sizeof(MonthKey), month_key_cmp);
	for (i = 1; i < n; i++)
		if (month_key_cmp(&k[out], &k[i]) != 0)
			k[++out] = k[i];
	return out + 1;
}

/* (month + interval '1 month')::date - month */
static int32
days_in_month(DateADT month)
{
	int			y,
				m,
				d;

	j2date(month + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	return date2j(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1) - date2j(y, m, 1);
}

/* greatest() of timestamptz values, NULLs ignored */
static void
greatest(Datum *result, bool *result_null, Datum v, bool v_null)
{
	if (v_null)
		return;
	if (*result_null || DatumGetTimestampTz(v) > DatumGetTimestampTz(*result))
	{
		*result = v;
		*result_null = false;
	}
}

/* A row of a view, filled by column name. */
typedef struct ViewRow
{
	TupleDesc	desc;
	ApplyJsonFormat *format;
	Datum	   *values;
	bool	   *nulls;
	bool	   *set;
} ViewRow;

/*
 * row_init
 *		A row of property_kpis or portfolio_kpis as delta_log stores it: the
 *		view's columns but those computed from the others, which the push
 *		worker renders (delta_render.c).
 */
static void
row_init(ViewRow *r, TupleDesc desc)
{
	int			kept = 0;

	r->desc = desc;
	r->format = apply_delta_json_format(desc);
	for (int k = 0; k < r->format->n; k++)
		if (!delta_column_is_computed(r->format->keys[k].val.string.val,
									  r->format->keys[k].val.string.len))
		{
			r->format->keys[kept] = r->format->keys[k];
			r->format->att[kept++] = r->format->att[k];
		}
	r->format->n = kept;
	format_prepare_direct(r->format);
	r->values = palloc(sizeof(Datum) * desc->natts);
	r->nulls = palloc(sizeof(bool) * desc->natts);
	r->set = palloc(sizeof(bool) * desc->natts);
}

static void
row_reset(ViewRow *r)
{
	memset(r->set, 0, sizeof(bool) * r->desc->natts);
}

static void
row_put(ViewRow *r, const char *name, Datum v, bool isnull)
{
	int			i;

	for (i = 0; i < r->desc->natts; i++)
		if (strcmp(NameStr(TupleDescAttr(r->desc, i)->attname), name) == 0)
		{
			r->values[i] = v;
			r->nulls[i] = isnull;
			r->set[i] = true;
			return;
		}
	elog(ERROR, "livekpi: view column %s is missing", name);
}

static Jsonb *
row_to_jsonb(ViewRow *r)
{
	int			i;

	for (i = 0; i < r->desc->natts; i++)
		if (!r->set[i] && !TupleDescAttr(r->desc, i)->attisdropped &&
			!delta_column_is_computed(NameStr(TupleDescAttr(r->desc, i)->attname),
									  strlen(NameStr(TupleDescAttr(r->desc, i)->attname))))
			elog(ERROR, "livekpi: view column %s is not computed by the apply worker",
				 NameStr(TupleDescAttr(r->desc, i)->attname));
	return values_to_jsonb(r->format, r->values, r->nulls);
}

/* The booking_monthly row the batch wrote for (key, month), if any. */
static ApplyMonthRow *
find_month_row(ApplyMonthRow *rows, int n, Datum key, DateADT month, char kind)
{
	int			lo = 0,
				hi = n - 1;

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;
		int			c = key_compare(rows[mid].key, key, kind);

		if (c == 0)
			c = rows[mid].month < month ? -1 : (rows[mid].month > month ? 1 : 0);
		if (c == 0)
			return &rows[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return NULL;
}

/* ---- the delta ------------------------------------------------------- */

void
apply_delta_build(char key_kind, Oid key_type,
				  Datum *b_key, Datum *b_day, Jsonb **b_rows, int nb,
				  Datum *e_key, Datum *e_day, Datum *e_category, int ne,
				  Datum *p_key, int np,
				  ApplyMonthRow *m_rows, int nm,
				  ApplyDeltaEmit emit, void *emit_arg,
				  Datum *upserts, Datum *deletes)
{
	Oid			nspid = get_namespace_oid("livekpi", false);
	ViewDelta	views[V_COUNT] = {
		{"property_kpis"}, {"portfolio_kpis"}, {"expense_monthly"}, {"booking_daily"}
	};
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	Lookup		bd,
				bm,
				bm_all,
				em,
				em_prop,
				em_all,
				pm,
				pm_all,
				pr;
	MonthKey   *keys;
	DateADT    *months;
	int			nkeys,
				nmonths,
				capacity,
				i;
	Relation	pk_view,
				pf_view;
	ViewRow		row;
	Datum		zero = DirectFunctionCall1(int4_numeric, Int32GetDatum(0));
	static const char *const daily_names[] = {"property_id", "day"};
	static const char *const month_names[] = {"property_id", "month", "category"};
	static const char *const portfolio_names[] = {"month"};
	Oid			daily_types[2] = {key_type, DATEOID};
	Oid			month_types[3] = {key_type, DATEOID, TEXTOID};
	Oid			portfolio_types[1] = {DATEOID};
	bool		p_found = false;
	Datum		p_units = (Datum) 0,
				p_name = (Datum) 0,
				p_updated = (Datum) 0;
	bool		p_units_null = true,
				p_name_null = true,
				p_updated_null = true;

	sort_key_kind = key_kind;
	lookup_open(&bd, nspid, "booking_daily", 2, snapshot);
	lookup_open(&bm, nspid, "booking_monthly", 2, snapshot);
	lookup_open(&em, nspid, "expense_monthly", 3, snapshot);
	lookup_open(&em_prop, nspid, "expense_monthly", 2, snapshot);
	lookup_open(&pm, nspid, "portfolio_monthly", 1, snapshot);
	/* every row of a property, every month (a scan keeps its key count) */
	lookup_open(&bm_all, nspid, "booking_monthly", 1, snapshot);
	lookup_open(&em_all, nspid, "expense_monthly", 1, snapshot);
	lookup_open(&pm_all, nspid, "portfolio_monthly", 0, snapshot);
	lookup_open(&pr, nspid, "properties", 1, snapshot);

	/* booking_daily: the (property, day) keys of the batch, distinct already */
	for (i = 0; i < nb; i++)
	{
		Datum		k[2] = {b_key[i], b_day[i]};

		emit_part_if_full(views, emit, emit_arg);

		if (b_rows != NULL)
		{
			if (b_rows[i] != NULL)
				views[V_BOOKING_DAILY].upserts =
					lappend(views[V_BOOKING_DAILY].upserts, b_rows[i]);
			else
				views[V_BOOKING_DAILY].deletes =
					lappend(views[V_BOOKING_DAILY].deletes,
							key_object(2, daily_names, daily_types, k));
		}
		else if (lookup(&bd, k))
			views[V_BOOKING_DAILY].upserts =
				lappend(views[V_BOOKING_DAILY].upserts,
						apply_delta_format_jsonb(bd.format, bd.slot));
		else
			views[V_BOOKING_DAILY].deletes =
				lappend(views[V_BOOKING_DAILY].deletes,
						key_object(2, daily_names, daily_types, k));
	}

	/* expense_monthly: (property, month, category) */
	capacity = Max(nb + ne, 16);
	keys = palloc(sizeof(MonthKey) * capacity);
	for (i = 0; i < ne; i++)
	{
		keys[i].key = e_key[i];
		keys[i].month = kpi_month_of(DatumGetDateADT(e_day[i]));
		keys[i].category = e_category[i];
	}
	nkeys = unique_month_keys(keys, ne);
	for (i = 0; i < nkeys; i++)
	{
		Datum		k[3] = {keys[i].key, DateADTGetDatum(keys[i].month), keys[i].category};

		emit_part_if_full(views, emit, emit_arg);

		if (lookup(&em, k))
			views[V_EXPENSE_MONTHLY].upserts =
				lappend(views[V_EXPENSE_MONTHLY].upserts,
						apply_delta_format_jsonb(em.format, em.slot));
		else
			views[V_EXPENSE_MONTHLY].deletes =
				lappend(views[V_EXPENSE_MONTHLY].deletes,
						key_object(3, month_names, month_types, k));
	}

	/*
	 * property_kpis: the (property, month) keys of the batch, and every
	 * month of the properties that appeared or whose units changed.  The
	 * booking_monthly rows the batch wrote are those of its booking keys,
	 * sorted and distinct already.
	 */
	nkeys = 0;
	if (m_rows != NULL)
		for (i = 0; i < nm; i++)
		{
			keys[nkeys].key = m_rows[i].key;
			keys[nkeys].month = m_rows[i].month;
			keys[nkeys++].category = (Datum) 0;
		}
	else
		for (i = 0; i < nb; i++)
		{
			keys[nkeys].key = b_key[i];
			keys[nkeys].month = kpi_month_of(DatumGetDateADT(b_day[i]));
			keys[nkeys++].category = (Datum) 0;
		}
	for (i = 0; i < ne; i++)
	{
		keys[nkeys].key = e_key[i];
		keys[nkeys].month = kpi_month_of(DatumGetDateADT(e_day[i]));
		keys[nkeys++].category = (Datum) 0;
	}
	for (i = 0; i < np; i++)
	{
		Lookup	   *ls[2] = {&bm_all, &em_all};
		int			j;

		for (j = 0; j < 2; j++)
		{
			Lookup	   *l = ls[j];

			lookup_start(l, &p_key[i]);
			while (lookup_next(l))
			{
				if (nkeys == capacity)
				{
					capacity *= 2;
					keys = repalloc(keys, sizeof(MonthKey) * capacity);
				}
				keys[nkeys].key = p_key[i];
				keys[nkeys].month = DatumGetDateADT(col_notnull(l, "month"));
				keys[nkeys++].category = (Datum) 0;
			}
		}
	}
	if (m_rows == NULL || ne > 0 || np > 0)
		nkeys = unique_month_keys(keys, nkeys);

	pk_view = relation_open(get_relname_relid("property_kpis", nspid), AccessShareLock);
	row_init(&row, RelationGetDescr(pk_view));
	for (i = 0; i < nkeys; i++)
	{
		Datum		k[2] = {keys[i].key, DateADTGetDatum(keys[i].month)};
		ApplyMonthRow *m = find_month_row(m_rows, nm, k[0], keys[i].month, key_kind);
		bool		has_b = m != NULL ? m->exists : lookup(&bm, k);
		bool		has_e = false;
		Datum		nights = Int64GetDatum(0),
					revenue = zero,
					arrivals = Int64GetDatum(0),
					cancelled = Int64GetDatum(0),
					approved = zero,
					pending = zero;
		Datum		updated = (Datum) 0;
		bool		updated_null = true;
		bool		units_null = true;
		Datum		units = (Datum) 0;
		bool		name_null = true;
		Datum		name = (Datum) 0;
		Datum		avail = (Datum) 0;
		int32		days = days_in_month(keys[i].month);
		bool		isnull;
		Datum		v;

		emit_part_if_full(views, emit, emit_arg);

		/*
		 * The keys are sorted by property: its livekpi.properties row is
		 * read once for all its months.
		 */
		if (i == 0 || key_compare(keys[i].key, keys[i - 1].key, key_kind) != 0)
		{
			Datum		pk[1] = {keys[i].key};

			p_found = lookup(&pr, pk);
			if (p_found)
			{
				p_units = col(&pr, "units", &p_units_null);
				p_name = col(&pr, "name", &p_name_null);
				p_updated = col(&pr, "updated_at", &p_updated_null);
				if (!p_name_null)
					p_name = datumCopy(p_name, false, -1);
			}
		}

		if (has_b && m != NULL)
		{
			nights = m->nights;
			revenue = m->revenue;
			arrivals = m->arrivals;
			cancelled = m->cancelled;
			greatest(&updated, &updated_null, m->updated_at, false);
		}
		else if (has_b)
		{
			nights = col_notnull(&bm, "nights_sold");
			revenue = col_notnull(&bm, "room_revenue");
			arrivals = col_notnull(&bm, "arrivals");
			cancelled = col_notnull(&bm, "cancelled_arrivals");
			v = col(&bm, "updated_at", &isnull);
			greatest(&updated, &updated_null, v, isnull);
		}
		lookup_start(&em_prop, k);
		{
			Datum		e_updated = (Datum) 0;
			bool		e_updated_null = true;

			while (lookup_next(&em_prop))
			{
				approved = has_e ?
					DirectFunctionCall2(numeric_add, approved, col_notnull(&em_prop, "approved_amount")) :
					col_notnull(&em_prop, "approved_amount");
				pending = has_e ?
					DirectFunctionCall2(numeric_add, pending, col_notnull(&em_prop, "pending_amount")) :
					col_notnull(&em_prop, "pending_amount");
				v = col(&em_prop, "updated_at", &isnull);
				greatest(&e_updated, &e_updated_null, v, isnull);
				has_e = true;
			}
			greatest(&updated, &updated_null, e_updated, e_updated_null);
		}
		if (!has_b && !has_e)
		{
			views[V_PROPERTY_KPIS].deletes =
				lappend(views[V_PROPERTY_KPIS].deletes,
						key_object(2, month_names, month_types, k));
			continue;
		}
		if (p_found)
		{
			units = p_units;
			units_null = p_units_null;
			name = p_name;
			name_null = p_name_null;
			greatest(&updated, &updated_null, p_updated, p_updated_null);
		}

		row_reset(&row);
		row_put(&row, "property_id", k[0], false);
		row_put(&row, "month", k[1], false);
		row_put(&row, "units", units, units_null);
		if (!units_null)
			avail = DirectFunctionCall2(int4mul, units, Int32GetDatum(days));
		row_put(&row, "available_nights",
				units_null ? (Datum) 0 : DirectFunctionCall1(int48, avail), units_null);
		row_put(&row, "nights_sold", nights, false);
		row_put(&row, "room_revenue", revenue, false);
		row_put(&row, "arrivals", arrivals, false);
		row_put(&row, "cancelled_arrivals", cancelled, false);
		row_put(&row, "approved_expenses", approved, false);
		row_put(&row, "pending_expenses", pending, false);
		row_put(&row, "updated_at", updated, updated_null);
		row_put(&row, "name", name, name_null);
		views[V_PROPERTY_KPIS].upserts = lappend(views[V_PROPERTY_KPIS].upserts,
												 row_to_jsonb(&row));
	}
	relation_close(pk_view, AccessShareLock);

	/* portfolio_kpis: the months of the batch, or all when properties changed */
	capacity = Max(nb + ne, 16);
	months = palloc(sizeof(DateADT) * capacity);
	nmonths = 0;
	if (m_rows != NULL)
		for (i = 0; i < nm; i++)
			months[nmonths++] = m_rows[i].month;
	else
		for (i = 0; i < nb; i++)
			months[nmonths++] = kpi_month_of(DatumGetDateADT(b_day[i]));
	for (i = 0; i < ne; i++)
		months[nmonths++] = kpi_month_of(DatumGetDateADT(e_day[i]));
	if (np > 0)
	{
		lookup_start(&pm_all, NULL);
		while (lookup_next(&pm_all))
		{
			if (nmonths == capacity)
			{
				capacity *= 2;
				months = repalloc(months, sizeof(DateADT) * capacity);
			}
			months[nmonths++] = DatumGetDateADT(col_notnull(&pm_all, "month"));
		}
	}
	if (nmonths > 0)
	{
		int			out = 0;

		qsort(months, nmonths, sizeof(DateADT), month_date_cmp);
		for (i = 1; i < nmonths; i++)
			if (months[i] != months[out])
				months[++out] = months[i];
		nmonths = out + 1;
	}

	pf_view = relation_open(get_relname_relid("portfolio_kpis", nspid), AccessShareLock);
	row_init(&row, RelationGetDescr(pf_view));
	{
		bool		have_pr = false;
		int64		nprops = 0;
		Datum		sum_units = Int64GetDatum(0);
		Datum		pr_updated = (Datum) 0;
		bool		pr_updated_null = true;

		for (i = 0; i < nmonths; i++)
		{
			Datum		k[1] = {DateADTGetDatum(months[i])};
			Datum		nights,
						revenue,
						arrivals,
						cancelled,
						approved,
						avail;
			Datum		updated;
			bool		updated_null;
			bool		isnull;
			Datum		v;

			emit_part_if_full(views, emit, emit_arg);

			if (!lookup(&pm, k))
			{
				views[V_PORTFOLIO_KPIS].deletes =
					lappend(views[V_PORTFOLIO_KPIS].deletes,
							key_object(1, portfolio_names, portfolio_types, k));
				continue;
			}
			if (!have_pr)
			{
				/* count(*), coalesce(sum(units), 0), max(updated_at) of properties */
				TableScanDesc scan = table_beginscan(pr.rel, snapshot, 0, NULL);
				TupleTableSlot *slot = table_slot_create(pr.rel, NULL);
				AttrNumber	ua = InvalidAttrNumber,
							ta = InvalidAttrNumber;
				int			a;

				for (a = 0; a < RelationGetDescr(pr.rel)->natts; a++)
				{
					if (strcmp(NameStr(TupleDescAttr(RelationGetDescr(pr.rel), a)->attname), "units") == 0)
						ua = a + 1;
					if (strcmp(NameStr(TupleDescAttr(RelationGetDescr(pr.rel), a)->attname), "updated_at") == 0)
						ta = a + 1;
				}
				while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
				{
					nprops++;
					v = slot_getattr(slot, ua, &isnull);
					if (!isnull)
						sum_units = DirectFunctionCall2(int84pl, sum_units, v);
					v = slot_getattr(slot, ta, &isnull);
					greatest(&pr_updated, &pr_updated_null, v, isnull);
				}
				ExecDropSingleTupleTableSlot(slot);
				table_endscan(scan);
				have_pr = true;
			}
			nights = col_notnull(&pm, "nights_sold");
			revenue = col_notnull(&pm, "room_revenue");
			arrivals = col_notnull(&pm, "arrivals");
			cancelled = col_notnull(&pm, "cancelled_arrivals");
			approved = col_notnull(&pm, "approved_expenses");
			updated = col(&pm, "updated_at", &updated_null);
			greatest(&updated, &updated_null, pr_updated, pr_updated_null);
			avail = DirectFunctionCall2(int84mul, sum_units, Int32GetDatum(days_in_month(months[i])));

			row_reset(&row);
			row_put(&row, "month", k[0], false);
			row_put(&row, "properties", Int64GetDatum(nprops), false);
			row_put(&row, "available_nights", avail, false);
			row_put(&row, "nights_sold", nights, false);
			row_put(&row, "room_revenue", revenue, false);
			row_put(&row, "arrivals", arrivals, false);
			row_put(&row, "cancelled_arrivals", cancelled, false);
			row_put(&row, "approved_expenses", approved, false);
			row_put(&row, "pending_expenses", col_notnull(&pm, "pending_expenses"), false);
			row_put(&row, "updated_at", updated, updated_null);
			views[V_PORTFOLIO_KPIS].upserts = lappend(views[V_PORTFOLIO_KPIS].upserts,
													  row_to_jsonb(&row));
		}
	}
	relation_close(pf_view, AccessShareLock);

	lookup_close(&bd);
	lookup_close(&bm);
	lookup_close(&em);
	lookup_close(&em_prop);
	lookup_close(&pm);
	lookup_close(&bm_all);
	lookup_close(&em_all);
	lookup_close(&pm_all);
	lookup_close(&pr);
	UnregisterSnapshot(snapshot);

	*upserts = views_object(views, true);
	*deletes = views_object(views, false);
}
