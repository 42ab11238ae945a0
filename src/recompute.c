/*-------------------------------------------------------------------------
 *
 * recompute.c
 *	  rebuild() and backfill in C: the SQL-callable contribution functions
 *	  that apply kpi.c's rules (the very code of the incremental path) to
 *	  the rows of a tracked table, one row at a time so that the query
 *	  streams them into PostgreSQL's aggregation, and the bulk load of the
 *	  aggregated KPI rows into fresh heaps that are swapped in at the end,
 *	  the way REFRESH MATERIALIZED VIEW does it (matview.c).
 *
 *	  verify() does not use this file: its SQL recompute is the independent
 *	  check on both paths.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/recompute.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/multixact.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/cluster.h"
#include "commands/tablecmds.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "jit/jit.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"

#include "change.h"
#include "kpi.h"

/*
 * Per call site (fn_extra): the argument types, the status lists (which the
 * generated query passes as constants), the result row type, and the
 * booking being expanded.  The functions return sets value per call by
 * hand rather than through funcapi's SRF_ macros: those make a memory
 * context per input row, which costs more than the row's work.
 */
typedef struct RowsCallInfo
{
	Oid			key_type;
	Oid			day1_type;
	Oid			day2_type;
	Oid			amount_type;
	int			nlist1;
	char	  **list1;
	int			nlist2;
	char	  **list2;
	TupleDesc	desc;
	MemoryContext row_cxt;		/* the current input row's values */
	bool		active;			/* rows of the current input row pending */
	KpiBookingIter it;
	HeapTuple	expense;		/* the one row of an expense, pending */
} RowsCallInfo;

static char **
text_array_strings(ArrayType *arr, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	char	  **out;
	int			i,
				k = 0;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	out = palloc(sizeof(char *) * Max(*n, 1));
	for (i = 0; i < *n; i++)
		if (!nulls[i])
			out[k++] = TextDatumGetCString(elems[i]);
	*n = k;
	return out;
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

static RowsCallInfo *
call_info(FunctionCallInfo fcinfo, int list1_arg, int list2_arg)
{
	RowsCallInfo *ci = fcinfo->flinfo->fn_extra;
	ReturnSetInfo *rsi = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;

	if (rsi == NULL || !IsA(rsi, ReturnSetInfo) ||
		(rsi->allowedModes & SFRM_ValuePerCall) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (ci != NULL)
		return ci;
	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	ci = palloc0(sizeof(RowsCallInfo));
	ci->key_type = get_fn_expr_argtype(fcinfo->flinfo, 0);
	ci->day1_type = get_fn_expr_argtype(fcinfo->flinfo, 1);
	ci->day2_type = list2_arg < 0 ? get_fn_expr_argtype(fcinfo->flinfo, 2) : InvalidOid;
	ci->amount_type = get_fn_expr_argtype(fcinfo->flinfo, list2_arg < 0 ? 3 : 2);
	if (!PG_ARGISNULL(list1_arg))
		ci->list1 = text_array_strings(PG_GETARG_ARRAYTYPE_P(list1_arg), &ci->nlist1);
	if (list2_arg >= 0 && !PG_ARGISNULL(list2_arg))
		ci->list2 = text_array_strings(PG_GETARG_ARRAYTYPE_P(list2_arg), &ci->nlist2);
	if (get_call_result_type(fcinfo, NULL, &ci->desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "livekpi: a contribution function must return a row type");
	ci->desc = CreateTupleDescCopy(ci->desc);
	BlessTupleDesc(ci->desc);
	ci->row_cxt = AllocSetContextCreate(fcinfo->flinfo->fn_mcxt, "livekpi contribution row",
										ALLOCSET_SMALL_SIZES);
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = ci;
	return ci;
}

static char
key_kind_of(Oid typid)
{
	if (typid == TEXTOID || typid == VARCHAROID)
		return KEY_TEXT;
	if (typid == UUIDOID)
		return KEY_UUID;
	return KEY_INT;
}

/* The amount of a row as the capture trigger sees it (flags and value). */
static void
project_amount(RowsCallInfo *ci, FunctionCallInfo fcinfo, int arg, ChangeImage *img)
{
	if (PG_ARGISNULL(arg))
		img->flags |= IMG_AMOUNT_NULL;
	else
	{
		img->amount = kpi_to_numeric(ci->amount_type, PG_GETARG_DATUM(arg));
		if (kpi_numeric_not_finite(img->amount))
		{
			img->flags |= IMG_AMOUNT_ODD;
			img->amount = NULL;
		}
	}
}

static Datum
end_of_set(FunctionCallInfo fcinfo, RowsCallInfo *ci)
{
	ci->active = false;
	((ReturnSetInfo *) fcinfo->resultinfo)->isDone = ExprEndResult;
	fcinfo->isnull = true;
	return (Datum) 0;
}

/*
 * livekpi._booking_rows(key "any", check_in "any", check_out "any",
 *		amount "any", status text, cancelled_statuses text[], max_stay int,
 *		timezone text) RETURNS TABLE (day date, nights int, revenue numeric,
 *		arrivals int, cancelled int)
 *
 *		The daily rows one booking contributes, by kpi.c's rules; none when
 *		it is skipped.  status is the status column as ::text (NULL when the
 *		table has none).  Value per call, so that a query calling it in its
 *		target list streams.
 */
PG_FUNCTION_INFO_V1(livekpi_booking_rows);
Datum
livekpi_booking_rows(PG_FUNCTION_ARGS)
{
	RowsCallInfo *ci = call_info(fcinfo, 5, -1);
	KpiBookingRow row;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (!ci->active)
	{
		MemoryContext old;
		ChangeImage img;
		bool		amount_odd;
		text	   *tz;
		int			max_stay = PG_ARGISNULL(6) ? 0 : PG_GETARG_INT32(6);

		MemoryContextReset(ci->row_cxt);
		old = MemoryContextSwitchTo(ci->row_cxt);
		tz = PG_ARGISNULL(7) ? cstring_to_text("UTC") : PG_GETARG_TEXT_PP(7);
		memset(&img, 0, sizeof(img));
		if (PG_ARGISNULL(0) || !kpi_key_usable(key_kind_of(ci->key_type), PG_GETARG_DATUM(0)))
			img.flags |= IMG_KEY_NULL;
		if (PG_ARGISNULL(1) || !kpi_to_day(ci->day1_type, PG_GETARG_DATUM(1), tz, &img.day1))
			img.flags |= IMG_DAY1_SKIP;
		if (PG_ARGISNULL(2) || !kpi_to_day(ci->day2_type, PG_GETARG_DATUM(2), tz, &img.day2))
			img.flags |= IMG_DAY2_SKIP;
		if (!(img.flags & (IMG_DAY1_SKIP | IMG_DAY2_SKIP)) &&
			(int64) img.day2 - (int64) img.day1 > max_stay)
			img.flags |= IMG_TOO_LONG;
		project_amount(ci, fcinfo, 3, &img);
		if (!PG_ARGISNULL(4) &&
			in_list(TextDatumGetCString(PG_GETARG_DATUM(4)), ci->list1, ci->nlist1))
			img.flags |= IMG_CANCELLED;
		ci->active = kpi_booking_begin(&img, &ci->it, &amount_odd);
		MemoryContextSwitchTo(old);
		if (!ci->active)
			return end_of_set(fcinfo, ci);
	}
	if (!kpi_booking_next(&ci->it, &row))
		return end_of_set(fcinfo, ci);

	/* fixed-width columns first: the query's (c).x reads cached offsets */
	values[0] = DateADTGetDatum(row.day);
	values[1] = Int32GetDatum((int32) row.nights);
	values[2] = Int32GetDatum((int32) row.arrivals);
	values[3] = Int32GetDatum((int32) row.cancelled);
	values[4] = NumericGetDatum(row.revenue != NULL ? row.revenue : int64_to_numeric(0));
	((ReturnSetInfo *) fcinfo->resultinfo)->isDone = ExprMultipleResult;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(ci->desc, values, nulls)));
}

/*
 * livekpi._expense_rows(key "any", day "any", amount "any", category text,
 *		status text, has_status boolean, approved_statuses text[],
 *		rejected_statuses text[], timezone text) RETURNS TABLE (day date,
 *		category text, class int, amount numeric)
 *
 *		The one row an expense contributes by kpi.c's rules (class 0
 *		approved, 1 pending, 2 rejected; amount 0 when NULL or odd), or
 *		none when it is skipped.
 */
PG_FUNCTION_INFO_V1(livekpi_expense_rows);
Datum
livekpi_expense_rows(PG_FUNCTION_ARGS)
{
	RowsCallInfo *ci = call_info(fcinfo, 6, 7);
	ChangeImage img;
	text	   *tz;
	ExpenseClass cls = EXPENSE_APPROVED;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	if (ci->active)
		return end_of_set(fcinfo, ci);

	tz = PG_ARGISNULL(8) ? cstring_to_text("UTC") : PG_GETARG_TEXT_PP(8);
	memset(&img, 0, sizeof(img));
	if (PG_ARGISNULL(0) || !kpi_key_usable(key_kind_of(ci->key_type), PG_GETARG_DATUM(0)))
		img.flags |= IMG_KEY_NULL;
	if (PG_ARGISNULL(1) || !kpi_to_day(ci->day1_type, PG_GETARG_DATUM(1), tz, &img.day1))
		img.flags |= IMG_DAY1_SKIP;
	if (img.flags & (IMG_KEY_NULL | IMG_DAY1_SKIP))
		return end_of_set(fcinfo, ci);
	project_amount(ci, fcinfo, 2, &img);
	if (!PG_ARGISNULL(5) && PG_GETARG_BOOL(5))
	{
		cls = EXPENSE_PENDING;
		if (!PG_ARGISNULL(4))
		{
			char	   *s = TextDatumGetCString(PG_GETARG_DATUM(4));

			if (in_list(s, ci->list1, ci->nlist1))
				cls = EXPENSE_APPROVED;
			else if (in_list(s, ci->list2, ci->nlist2))
				cls = EXPENSE_REJECTED;
		}
	}

	values[0] = DateADTGetDatum(img.day1);
	values[1] = Int32GetDatum((int32) cls);
	if (PG_ARGISNULL(3))
		values[2] = CStringGetTextDatum("uncategorized");
	else
	{
		text	   *t = PG_GETARG_TEXT_PP(3);
		int			len = VARSIZE_ANY_EXHDR(t);
		int			clipped = kpi_category_clip(VARDATA_ANY(t), len);

		values[2] = clipped == len ? PointerGetDatum(t) :
			PointerGetDatum(cstring_to_text_with_len(VARDATA_ANY(t), clipped));
	}
	values[3] = NumericGetDatum(img.amount ? img.amount : int64_to_numeric(0));
	ci->active = true;			/* the next call ends the set */
	((ReturnSetInfo *) fcinfo->resultinfo)->isDone = ExprMultipleResult;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(ci->desc, values, nulls)));
}

/*
 * HeapLoader: a fresh heap's rows written a page at a time with
 * table_multi_insert (one WAL record per page rather than per row), frozen,
 * as COPY FREEZE writes them.  At most LOADER_ROWS rows wait, copied into
 * the loader's own slots: a KPI row fits a B-tree index row, so under
 * 3 MB.
 */
#define LOADER_ROWS		1000

typedef struct HeapLoader
{
	Relation	rel;
	CommandId	cid;
	BulkInsertState bistate;
	MemoryContext cxt;			/* the slots and their rows */
	TupleTableSlot **slots;
	int			n;
} HeapLoader;

static void
loader_begin(HeapLoader *l, Relation rel, CommandId cid)
{
	l->rel = rel;
	l->cid = cid;
	l->bistate = GetBulkInsertState();
	l->cxt = AllocSetContextCreate(CurrentMemoryContext, "livekpi heap loader",
								   ALLOCSET_DEFAULT_SIZES);
	l->slots = MemoryContextAllocZero(l->cxt, sizeof(TupleTableSlot *) * LOADER_ROWS);
	l->n = 0;
}

static void
loader_flush(HeapLoader *l)
{
	int			i;

	if (l->n == 0)
		return;
	table_multi_insert(l->rel, l->slots, l->n, l->cid,
					   TABLE_INSERT_SKIP_FSM | TABLE_INSERT_FROZEN, l->bistate);
	for (i = 0; i < l->n; i++)
		ExecClearTuple(l->slots[i]);
	l->n = 0;
}

static void
loader_add(HeapLoader *l, TupleTableSlot *slot)
{
	if (l->slots[l->n] == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(l->cxt);

		l->slots[l->n] = MakeSingleTupleTableSlot(RelationGetDescr(l->rel),
												  table_slot_callbacks(l->rel));
		MemoryContextSwitchTo(old);
	}
	ExecCopySlot(l->slots[l->n], slot);
	if (++l->n == LOADER_ROWS)
		loader_flush(l);
}

static void
loader_end(HeapLoader *l)
{
	int			i;

	loader_flush(l);
	for (i = 0; i < LOADER_ROWS && l->slots[i] != NULL; i++)
		ExecDropSingleTupleTableSlot(l->slots[i]);
	MemoryContextDelete(l->cxt);
	FreeBulkInsertState(l->bistate);
	table_finish_bulk_insert(l->rel, TABLE_INSERT_SKIP_FSM);
}

/*
 * Rollup: rows grouped in C by their keys, counts and sums added,
 * updated_at the latest: what SQL's GROUP BY with sum() and max() computes.
 * Two uses, sharing the rules:
 *
 * - the days (_fill_grouped): the daily rows that the source rows
 *   contribute, one per night or expense, grouped by their KPI key,
 *   instead of by a HashAggregate of PostgreSQL's numeric aggregate states,
 *   which cost several times a running sum and are read back in hash order;
 * - the months (_fill_heap with a month heap, and _fill_grouped): a monthly
 *   KPI table has its daily table's columns with month for day, and its
 *   rows are the daily rows grouped by the keys and the month, rolled up
 *   while the daily rows load instead of read again from the daily heap.
 *
 * The groups (RollupGroup) stay within the memory a hash aggregate of the
 * same rows may use (get_hash_memory_limit()); past it, for a NULL (which
 * SQL's aggregates skip), or for a table whose columns do not follow these
 * rules, the roll-up gives up and the caller groups the rows in SQL, which
 * spills.  A dropped column of the target stays NULL.
 */
typedef struct Rollup
{
	Relation	rel;
	TupleTableSlot *row;		/* a daily row as a monthly one */
	struct rollup_hash *groups;
	MemoryContext cxt;			/* the groups and their running values */
	Size		limit;
	bool		given_up;
	int			natts;
	AttrNumber *from;			/* monthly column -> daily column */
	char	   *how;			/* ROLLUP_KEY, ROLLUP_MONTH, ... */
	struct RollupBlock *blocks; /* the groups' values, in the order made */
	struct RollupBlock *last_block;
	int			nkeys;
	int		   *key_col;		/* the key columns (of the monthly row) */
	bool	   *key_byval;
	int16	   *key_len;
} Rollup;

/*
 * A month's group: its monthly row, keys and running values.  The groups
 * are a simplehash table of these, hashed and compared by the keys' binary
 * images (datum_image_hash, as Memoize does), which for these key types
 * and deterministic collations is their equality.
 */
typedef struct RollupGroup
{
	Datum	   *values;
	uint32		hash;
	char		status;			/* simplehash's */
} RollupGroup;

static uint32
group_key_hash(const Rollup *mr, const Datum *values)
{
	uint32		h = 0;
	int			i;

	for (i = 0; i < mr->nkeys; i++)
		h = hash_combine(h, datum_image_hash(values[mr->key_col[i]], mr->key_byval[i],
											 mr->key_len[i]));
	return h;
}

/*
 * datum_image_eq, with the common cases inline: a plain or short-header
 * text (a category, a text key) is compared in place, without the size
 * lookups and detoasting that cost a cache miss each in a large grouping.
 */
static inline bool
key_image_eq(Datum a, Datum b, bool byval, int16 len)
{
	if (byval)
		return a == b;
	if (len > 0)
		return memcmp(DatumGetPointer(a), DatumGetPointer(b), len) == 0;
	if (len == -1 &&
		!VARATT_IS_EXTERNAL(DatumGetPointer(a)) && !VARATT_IS_COMPRESSED(DatumGetPointer(a)) &&
		!VARATT_IS_EXTERNAL(DatumGetPointer(b)) && !VARATT_IS_COMPRESSED(DatumGetPointer(b)))
		return VARSIZE_ANY_EXHDR(DatumGetPointer(a)) == VARSIZE_ANY_EXHDR(DatumGetPointer(b)) &&
			memcmp(VARDATA_ANY(DatumGetPointer(a)), VARDATA_ANY(DatumGetPointer(b)),
				   VARSIZE_ANY_EXHDR(DatumGetPointer(a))) == 0;
	return datum_image_eq(a, b, byval, len);
}

static bool
group_key_equal(const Rollup *mr, const Datum *a, const Datum *b)
{
	int			i;

	for (i = 0; i < mr->nkeys; i++)
		if (!key_image_eq(a[mr->key_col[i]], b[mr->key_col[i]], mr->key_byval[i],
						  mr->key_len[i]))
			return false;
	return true;
}

#define SH_PREFIX		rollup
#define SH_ELEMENT_TYPE	RollupGroup
#define SH_KEY_TYPE		Datum *
#define SH_KEY			values
#define SH_HASH_KEY(tb, key)	group_key_hash((tb)->private_data, key)
#define SH_EQUAL(tb, a, b)		group_key_equal((tb)->private_data, a, b)
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a)		((a)->hash)
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

#define ROLLUP_KEY		'k'		/* property_id, category; day for the days */
#define ROLLUP_MONTH	'm'		/* the month of the daily row's day */
#define ROLLUP_NONE		'-'		/* a dropped column: NULL */
#define ROLLUP_COUNT	'c'		/* bigint, added */
#define ROLLUP_SUM		's'		/* numeric, added */
#define ROLLUP_LATEST	'u'		/* updated_at, the latest */

/*
 * A DestReceiver that loads a heap made by livekpi._new_heap() (HeapLoader)
 * and rolls its rows up into a monthly heap (Rollup).
 */
typedef struct HeapFillReceiver
{
	DestReceiver pub;
	HeapLoader	loader;
	TupleTableSlot *mapped;		/* when the heap has dropped columns */
	AttrNumber *map;			/* heap column -> query column (0: NULL) */
	Rollup	   *days;			/* _fill_grouped: rows grouped, not loaded */
	Rollup	   *months;			/* or NULL */
} HeapFillReceiver;

static void rollup_add(Rollup *mr, TupleTableSlot *daily);

/*
 * The query's columns must be the heap's live columns, in order and type;
 * a KPI table altered since install (dropped columns) gets its rows mapped.
 */
static void
fill_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	HeapFillReceiver *r = (HeapFillReceiver *) self;
	TupleDesc	desc = RelationGetDescr(r->loader.rel);
	int			i,
				q = 0;
	bool		identical = desc->natts == typeinfo->natts;

	r->map = palloc0(sizeof(AttrNumber) * desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
		{
			identical = false;
			continue;
		}
		if (q >= typeinfo->natts || TupleDescAttr(typeinfo, q)->atttypid != att->atttypid)
			elog(ERROR, "livekpi: the rebuild query does not match the columns of %s",
				 RelationGetRelationName(r->loader.rel));
		r->map[i] = ++q;
	}
	if (q != typeinfo->natts)
		elog(ERROR, "livekpi: the rebuild query does not match the columns of %s",
			 RelationGetRelationName(r->loader.rel));
	if (!identical)
		r->mapped = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
}

static bool
fill_receive(TupleTableSlot *slot, DestReceiver *self)
{
	HeapFillReceiver *r = (HeapFillReceiver *) self;

	if (r->mapped != NULL)
	{
		int			i;

		slot_getallattrs(slot);
		ExecClearTuple(r->mapped);
		for (i = 0; i < r->mapped->tts_tupleDescriptor->natts; i++)
		{
			if (r->map[i] == 0)
			{
				r->mapped->tts_values[i] = (Datum) 0;
				r->mapped->tts_isnull[i] = true;
			}
			else
			{
				r->mapped->tts_values[i] = slot->tts_values[r->map[i] - 1];
				r->mapped->tts_isnull[i] = slot->tts_isnull[r->map[i] - 1];
			}
		}
		ExecStoreVirtualTuple(r->mapped);
		slot = r->mapped;
	}
	if (r->days != NULL)
	{
		if (!r->days->given_up)
			rollup_add(r->days, slot);
		return !r->days->given_up;	/* stops the query when it gave up */
	}
	if (r->months != NULL && !r->months->given_up)
		rollup_add(r->months, slot);
	loader_add(&r->loader, slot);
	return true;
}

/*
 * The mapped slot lives in the executor's query context (rStartup runs in
 * it), which ExecutorEnd() frees: drop it while that context is alive.
 */
static void
fill_shutdown(DestReceiver *self)
{
	HeapFillReceiver *r = (HeapFillReceiver *) self;

	if (r->mapped != NULL)
		ExecDropSingleTupleTableSlot(r->mapped);
	r->mapped = NULL;
}

static void
fill_destroy(DestReceiver *self)
{
}

/* The heap must be one _new_heap() made in this transaction for a KPI table. */
static Relation
open_new_heap(Oid heap)
{
	Relation	rel = table_open(heap, AccessExclusiveLock);

	if (rel->rd_createSubid == InvalidSubTransactionId ||
		strncmp(RelationGetRelationName(rel), "pg_temp_", 8) != 0 ||
		get_namespace_oid("livekpi", false) != RelationGetNamespace(rel))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("livekpi: relation %u is not a heap made by livekpi._new_heap()", heap)));
	return rel;
}

static void
check_kpi_table(Oid target)
{
	if (get_rel_namespace(target) != get_namespace_oid("livekpi", false) ||
		get_rel_relkind(target) != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("livekpi: %s is not a KPI table", get_rel_name(target))));
}

/*
 * livekpi._new_heap(target regclass) RETURNS oid
 *		An empty heap with the target's columns, storage options and
 *		tablespace, to be filled by _fill_heap() and swapped in by
 *		_swap_heap().  The target is locked EXCLUSIVE: readers keep reading
 *		it until the swap.
 */
PG_FUNCTION_INFO_V1(livekpi_new_heap);
Datum
livekpi_new_heap(PG_FUNCTION_ARGS)
{
	Oid			target = PG_GETARG_OID(0);
	Relation	rel;
	Oid			heap;

	check_kpi_table(target);
	rel = table_open(target, ExclusiveLock);
	heap = make_new_heap(target, rel->rd_rel->reltablespace, rel->rd_rel->relam,
						 rel->rd_rel->relpersistence, ExclusiveLock);
	table_close(rel, NoLock);
	CommandCounterIncrement();
	PG_RETURN_OID(heap);
}

/*
 * rollup_begin
 *		A Rollup of daily's rows into target: daily itself (the days), or
 *		its monthly table (by_month).  Given up from the start when a
 *		target column has no daily column of its name (month: day) and
 *		type, or is not a key, a count, a sum or updated_at.
 */
static Rollup *
rollup_begin(Relation daily, Relation target, bool by_month)
{
	Rollup	   *mr = palloc0(sizeof(Rollup));
	TupleDesc	desc = RelationGetDescr(target);
	int			i;

	mr->rel = target;
	mr->natts = desc->natts;
	mr->from = palloc0(sizeof(AttrNumber) * desc->natts);
	mr->how = palloc0(desc->natts);
	mr->key_col = palloc(sizeof(int) * desc->natts);
	mr->key_byval = palloc(sizeof(bool) * desc->natts);
	mr->key_len = palloc(sizeof(int16) * desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		AttrNumber	d;

		if (att->attisdropped)
		{
			mr->how[i] = ROLLUP_NONE;
			continue;
		}
		d = get_attnum(RelationGetRelid(daily),
					   by_month && strcmp(name, "month") == 0 ? "day" : name);
		if (d <= 0 || TupleDescAttr(RelationGetDescr(daily), d - 1)->atttypid != att->atttypid)
		{
			mr->given_up = true;
			return mr;
		}
		mr->from[i] = d;
		if (strcmp(name, "property_id") == 0 || strcmp(name, "category") == 0 ||
			(!by_month && strcmp(name, "day") == 0))
			mr->how[i] = ROLLUP_KEY;
		else if (by_month && strcmp(name, "month") == 0 && att->atttypid == DATEOID)
			mr->how[i] = ROLLUP_MONTH;
		else if (strcmp(name, "updated_at") == 0 && att->atttypid == TIMESTAMPTZOID)
			mr->how[i] = ROLLUP_LATEST;
		else if (att->atttypid == INT8OID)
			mr->how[i] = ROLLUP_COUNT;
		else if (att->atttypid == NUMERICOID)
			mr->how[i] = ROLLUP_SUM;
		else
		{
			mr->given_up = true;
			return mr;
		}
		if (mr->how[i] == ROLLUP_KEY || mr->how[i] == ROLLUP_MONTH)
		{
			/* equal images are equal keys unless a collation says otherwise */
			if (OidIsValid(att->attcollation) &&
				!get_collation_isdeterministic(att->attcollation))
			{
				mr->given_up = true;
				return mr;
			}
			mr->key_col[mr->nkeys] = i;
			mr->key_byval[mr->nkeys] = att->attbyval;
			mr->key_len[mr->nkeys] = att->attlen;
			mr->nkeys++;
		}
	}

	mr->cxt = AllocSetContextCreate(CurrentMemoryContext, "livekpi roll-up",
									ALLOCSET_DEFAULT_SIZES);
	mr->groups = rollup_create(mr->cxt, 1024, mr);
	mr->row = MakeSingleTupleTableSlot(desc, &TTSOpsVirtual);
	mr->limit = get_hash_memory_limit();
	return mr;
}

/* Frees the groups and the slot: the caller groups the rows in SQL. */
static void
rollup_end(Rollup *mr)
{
	MemoryContextDelete(mr->cxt);
	ExecDropSingleTupleTableSlot(mr->row);
	mr->groups = NULL;
	mr->blocks = mr->last_block = NULL;
}

static void
rollup_give_up(Rollup *mr)
{
	mr->given_up = true;
	rollup_end(mr);
}

/*
 * A new group's values array, with copies of its by-reference keys right
 * after it: carved from blocks of ROLLUP_VALUES_BLOCK bytes, as they are
 * freed only with the whole roll-up (a palloc each would add a chunk header
 * and round up, and a key compared at every lookup would be one more cache
 * miss away).  rollup_finish reads the groups back through the blocks, in
 * the order they were made, not through the hash table: in hash order
 * every group's values were a cache and TLB miss (a million-booking
 * rebuild spent 0.8 s on them).  The sums stay palloc'd: each addition
 * replaces them.
 */
#define ROLLUP_VALUES_BLOCK		(64 * 1024)

typedef struct RollupBlock
{
	struct RollupBlock *next;
	Size		used;			/* bytes of groups after the header */
	Size		size;
} RollupBlock;

#define ROLLUP_BLOCK_DATA(b)	((char *) (b) + MAXALIGN(sizeof(RollupBlock)))

/* Bytes of a group's values array and the keys after it. */
static Size
rollup_entry_size(Rollup *mr, const Datum *row)
{
	TupleDesc	desc = mr->row->tts_tupleDescriptor;
	Size		size = MAXALIGN(sizeof(Datum) * mr->natts);

	for (int i = 0; i < mr->natts; i++)
		if (mr->how[i] == ROLLUP_KEY && !TupleDescAttr(desc, i)->attbyval)
			size += MAXALIGN(datumGetSize(row[i], false, TupleDescAttr(desc, i)->attlen));
	return size;
}

static Datum *
rollup_values(Rollup *mr, const Datum *row)
{
	TupleDesc	desc = mr->row->tts_tupleDescriptor;
	Size		size = rollup_entry_size(mr, row);
	RollupBlock *b = mr->last_block;
	Datum	   *values;
	char	   *keys;
	int			i;

	if (b == NULL || b->size - b->used < size)
	{
		Size		data = Max(size, ROLLUP_VALUES_BLOCK);

		b = MemoryContextAlloc(mr->cxt, MAXALIGN(sizeof(RollupBlock)) + data);
		b->next = NULL;
		b->used = 0;
		b->size = data;
		if (mr->last_block != NULL)
			mr->last_block->next = b;
		else
			mr->blocks = b;
		mr->last_block = b;
	}
	values = (Datum *) (ROLLUP_BLOCK_DATA(b) + b->used);
	keys = (char *) values + MAXALIGN(sizeof(Datum) * mr->natts);
	b->used += size;

	for (i = 0; i < mr->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (mr->how[i] == ROLLUP_NONE)
			values[i] = (Datum) 0;
		else if (mr->how[i] == ROLLUP_KEY && !att->attbyval)
		{
			Size		len = datumGetSize(row[i], false, att->attlen);

			memcpy(keys, DatumGetPointer(row[i]), len);
			values[i] = PointerGetDatum(keys);
			keys += MAXALIGN(len);
		}
		else if (mr->how[i] == ROLLUP_SUM)
		{
			/* kept unpacked: numeric_add would unpack a short header each time */
			values[i] = PointerGetDatum(PG_DETOAST_DATUM_COPY(row[i]));
		}
		else
			values[i] = datumCopy(row[i], att->attbyval, att->attlen);
	}
	return values;
}

/* Adds a daily row (in the daily heap's layout) to its group. */
static void
rollup_add(Rollup *mr, TupleTableSlot *daily)
{
	RollupGroup *group;
	Datum	   *values;
	bool		found;
	int			i;

	slot_getallattrs(daily);
	ExecClearTuple(mr->row);
	for (i = 0; i < mr->natts; i++)
	{
		Datum		v;

		mr->row->tts_values[i] = (Datum) 0;
		mr->row->tts_isnull[i] = mr->how[i] == ROLLUP_NONE;
		if (mr->how[i] == ROLLUP_NONE)
			continue;
		/* a NULL is what SQL's aggregates skip: leave it to them */
		if (daily->tts_isnull[mr->from[i] - 1])
		{
			rollup_give_up(mr);
			return;
		}
		v = daily->tts_values[mr->from[i] - 1];
		mr->row->tts_values[i] = mr->how[i] == ROLLUP_MONTH ?
			DateADTGetDatum(kpi_month_of(DatumGetDateADT(v))) : v;
	}
	ExecStoreVirtualTuple(mr->row);

	group = rollup_insert(mr->groups, mr->row->tts_values, &found);
	if (!found)
	{
		MemoryContext old = MemoryContextSwitchTo(mr->cxt);

		group->values = rollup_values(mr, mr->row->tts_values);
		MemoryContextSwitchTo(old);
		if (MemoryContextMemAllocated(mr->cxt, true) > mr->limit)
			rollup_give_up(mr);
		return;
	}
	values = group->values;
	for (i = 0; i < mr->natts; i++)
	{
		Datum		v = mr->row->tts_values[i];

		if (mr->how[i] == ROLLUP_COUNT)
			values[i] = kpi_add_count(values[i], v);
		else if (mr->how[i] == ROLLUP_SUM)
		{
			MemoryContext old = MemoryContextSwitchTo(mr->cxt);
			Datum		sum = kpi_add_sum(values[i], v);

			pfree(DatumGetPointer(values[i]));
			values[i] = sum;
			MemoryContextSwitchTo(old);
		}
		else if (mr->how[i] == ROLLUP_LATEST &&
				 DatumGetTimestampTz(v) > DatumGetTimestampTz(values[i]))
			values[i] = v;
	}
}

/*
 * rollup_finish
 *		Writes the groups with loader (open on the roll-up's target heap)
 *		and, with a next roll-up (the days' months), adds each to it; false
 *		when the roll-up gave up (nothing is written then).
 */
static bool
rollup_finish(Rollup *mr, HeapLoader *loader, Rollup *next)
{
	RollupBlock *b;
	int			i;

	if (mr->given_up)
		return false;
	Assert(loader->rel == mr->rel);
	for (b = mr->blocks; b != NULL; b = b->next)
	{
		Size		off = 0;

		while (off < b->used)
		{
			Datum	   *values = (Datum *) (ROLLUP_BLOCK_DATA(b) + off);

			off += rollup_entry_size(mr, values);
			ExecClearTuple(mr->row);
			memcpy(mr->row->tts_values, values, sizeof(Datum) * mr->natts);
			for (i = 0; i < mr->natts; i++)
				mr->row->tts_isnull[i] = mr->how[i] == ROLLUP_NONE;
			ExecStoreVirtualTuple(mr->row);
			if (next != NULL && !next->given_up)
				rollup_add(next, mr->row);
			loader_add(loader, mr->row);
		}
	}
	rollup_end(mr);
	return true;
}

/*
 * fill
 *		Runs query (livekpi's own, generated by rebuild or backfill) into
 *		heap, which must have the query's row type.  The executor streams
 *		the rows to the receiver: no SPI tuple tables, no per-row index
 *		maintenance.  With group_days, the rows are a daily table's
 *		contributions, grouped by key in C (Rollup) before they are loaded;
 *		with a month_heap (a daily heap's monthly table), the daily rows
 *		are rolled up into it as they load.  *days_done tells whether heap
 *		was filled (false only when the grouping gave up: nothing is
 *		written then), *months_done whether month_heap was.
 */
static void
fill(Oid heap, const char *sql, Oid month_heap, bool group_days,
	 bool *days_done, bool *months_done)
{
	HeapFillReceiver r;
	List	   *raw;
	List	   *queries;
	PlannedStmt *plan;
	QueryDesc  *qdesc;
	int			nestlevel;
	char		mem[32];

	memset(&r, 0, sizeof(r));
	r.pub.receiveSlot = fill_receive;
	r.pub.rStartup = fill_startup;
	r.pub.rShutdown = fill_shutdown;
	r.pub.rDestroy = fill_destroy;
	r.pub.mydest = DestNone;
	loader_begin(&r.loader, open_new_heap(heap), GetCurrentCommandId(true));

	raw = pg_parse_query(sql);
	if (list_length(raw) != 1)
		elog(ERROR, "livekpi._fill_heap wants one query");
	queries = pg_analyze_and_rewrite_fixedparams(linitial_node(RawStmt, raw), sql, NULL, 0, NULL);
	if (list_length(queries) != 1 || linitial_node(Query, queries)->commandType != CMD_SELECT)
		elog(ERROR, "livekpi._fill_heap wants one SELECT");
	plan = pg_plan_query(linitial_node(Query, queries), sql, CURSOR_OPT_PARALLEL_OK, NULL);

	/*
	 * No JIT: the work is in livekpi's C functions and the grouping, not in
	 * expressions, and compiling them cost a second of a 1M-booking
	 * rebuild (the planner sees millions of rows and asks for inlining and
	 * optimization).
	 */
	plan->jitFlags = PGJIT_NONE;

	/*
	 * The aggregation is a maintenance task: like an index build, it may
	 * use maintenance_work_mem (work_mem would make the hash aggregate of a
	 * large portfolio spill to disk).  Set for this query and the
	 * roll-ups' limits only.
	 */
	nestlevel = NewGUCNestLevel();
	snprintf(mem, sizeof(mem), "%d", maintenance_work_mem);
	(void) set_config_option("work_mem", mem, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (group_days)
		r.days = rollup_begin(r.loader.rel, r.loader.rel, false);
	if (OidIsValid(month_heap))
	{
		if (month_heap == heap)
			elog(ERROR, "livekpi._fill_heap wants two heaps");
		r.months = rollup_begin(r.loader.rel, open_new_heap(month_heap), true);
	}

	/* a snapshot that sees what this transaction did so far */
	PushCopiedSnapshot(GetActiveSnapshot());
	UpdateActiveSnapshotCommandId();
	qdesc = CreateQueryDesc(plan, sql, GetActiveSnapshot(), InvalidSnapshot,
							(DestReceiver *) &r, NULL, NULL, 0);
	ExecutorStart(qdesc, 0);
	ExecutorRun(qdesc, ForwardScanDirection, 0L, true);
	ExecutorFinish(qdesc);
	ExecutorEnd(qdesc);
	FreeQueryDesc(qdesc);
	PopActiveSnapshot();

	*days_done = r.days == NULL || rollup_finish(r.days, &r.loader, r.months);
	*months_done = false;
	if (r.months != NULL)
	{
		if (*days_done && !r.months->given_up)
		{
			HeapLoader	months_loader;

			loader_begin(&months_loader, r.months->rel, r.loader.cid);
			*months_done = rollup_finish(r.months, &months_loader, NULL);
			loader_end(&months_loader);
		}
		else if (!r.months->given_up)
			rollup_give_up(r.months);
		table_close(r.months->rel, NoLock);
	}
	AtEOXact_GUC(true, nestlevel);

	loader_end(&r.loader);
	table_close(r.loader.rel, NoLock);
	CommandCounterIncrement();
}

/*
 * livekpi._fill_heap(heap oid, query text, month_heap oid DEFAULT 0)
 * RETURNS boolean
 *		fill() of query's rows as they are; returns whether the months were
 *		rolled up into month_heap (false also without one).
 */
PG_FUNCTION_INFO_V1(livekpi_fill_heap);
Datum
livekpi_fill_heap(PG_FUNCTION_ARGS)
{
	bool		days_done;
	bool		months_done;

	fill(PG_GETARG_OID(0), text_to_cstring(PG_GETARG_TEXT_PP(1)), PG_GETARG_OID(2), false,
		 &days_done, &months_done);
	PG_RETURN_BOOL(months_done);
}

/*
 * livekpi._fill_grouped(daily oid, monthly oid, query text) RETURNS text
 *		fill() of the daily heap with query's contributions grouped by key
 *		in C, and of the monthly heap with their months: 'days and months',
 *		'days' (the caller rolls the months up in SQL), or 'none' (nothing
 *		written: the caller groups the contributions in SQL).
 */
PG_FUNCTION_INFO_V1(livekpi_fill_grouped);
Datum
livekpi_fill_grouped(PG_FUNCTION_ARGS)
{
	bool		days_done;
	bool		months_done;

	fill(PG_GETARG_OID(0), text_to_cstring(PG_GETARG_TEXT_PP(2)), PG_GETARG_OID(1), true,
		 &days_done, &months_done);
	PG_RETURN_TEXT_P(cstring_to_text(!days_done ? "none" :
									 months_done ? "days and months" : "days"));
}

/*
 * livekpi._swap_heap(target regclass, heap oid) RETURNS void
 *		Gives target the filled heap's storage and rebuilds its indexes
 *		(finish_heap_swap, as REFRESH MATERIALIZED VIEW and CLUSTER do); the
 *		heap and the old storage go.  Takes an ACCESS EXCLUSIVE lock on the
 *		target, held to the end of the transaction.
 */
PG_FUNCTION_INFO_V1(livekpi_swap_heap);
Datum
livekpi_swap_heap(PG_FUNCTION_ARGS)
{
	Oid			target = PG_GETARG_OID(0);
	Oid			heap = PG_GETARG_OID(1);
	Relation	rel;
	char		persistence;

	check_kpi_table(target);
	table_close(open_new_heap(heap), NoLock);
	rel = table_open(target, AccessExclusiveLock);
	CheckTableNotInUse(rel, "livekpi.rebuild()");
	persistence = rel->rd_rel->relpersistence;
	table_close(rel, NoLock);
	finish_heap_swap(target, heap, false, false, true, true,
					 RecentXmin, ReadNextMultiXactId(), persistence);
	PG_RETURN_VOID();
}

/*
 * livekpi._month(day date) RETURNS date
 *		The first day of day's month, by calendar arithmetic: what
 *		date_trunc('month', day)::date gives for every usable day, without
 *		the trip through timestamptz and the session's zone.
 */
PG_FUNCTION_INFO_V1(livekpi_month);
Datum
livekpi_month(PG_FUNCTION_ARGS)
{
	DateADT		day = PG_GETARG_DATEADT(0);

	if (DATE_NOT_FINITE(day))
		PG_RETURN_DATEADT(day);
	PG_RETURN_DATEADT(kpi_month_of(day));
}
