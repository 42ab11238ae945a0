/*-------------------------------------------------------------------------
 *
 * apply_kpi.c
 *	  Writes one batch's coalesced KPI deltas into the KPI tables
 *	  (booking_daily, booking_monthly, expense_daily, expense_monthly,
 *	  portfolio_monthly, properties) in C: index lookups and the executor's
 *	  simple-relation routines under one EState per batch, the way
 *	  PostgreSQL's logical replication apply worker writes rows, with no
 *	  SQL planned or interpreted for them.  The monthly and portfolio
 *	  roll-ups are summed from the daily deltas in memory.  Rows whose
 *	  counts reach zero are deleted; every row written gets updated_at.
 *	  The delta_log row is built in C too (apply_delta.c); the seq, its
 *	  insert and delta_log's retention are three SQL statements prepared
 *	  once.
 *
 *	  The apply worker is the only writer of these tables while it holds
 *	  the livekpi.state row lock, so rows are found with one index scan per
 *	  table per batch, rescanned per key, without tuple locks.  The rows of
 *	  booking_daily and booking_monthly are written in (key, date) order,
 *	  and the nearby dates of one key (a stay's nights, a property's months)
 *	  are found by one range scan walked along their index entries, rather
 *	  than one B-tree descent per row (walk_find).  New rows go in with
 *	  table_multi_insert, a heap page at a time (insert_row).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/apply_kpi.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/nodeModifyTable.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include "apply_delta.h"
#include "apply_kpi.h"
#include "livekpi.h"

#define MAX_KEYS		3
#define MAX_MEASURES	7

/*
 * The rows of a (key, date) table that one range scan finds: dates of one
 * key up to this many days apart share the scan (a descent of the B-tree
 * costs about as much as walking a dozen index entries).  Index entries in
 * a gap are skipped without reading the heap.
 */
#define WALK_GAP_DAILY_DAYS		16
#define WALK_GAP_MONTHLY_DAYS	400

/*
 * New rows of a KPI table wait for table_multi_insert() in groups of at
 * most this many (as COPY FROM buffers them, copyfrom.c); a KPI row is at
 * most a B-tree index row (2.7 kB), so a table's group stays under 3 MB.
 */
#define MULTI_INSERT_ROWS		1000

/* One KPI table of the batch: relation, index scan and column numbers. */
typedef struct KpiTable
{
	const char *name;
	int			nkeys;
	const char *keys[MAX_KEYS];
	int			nmeasures;
	const char *measures[MAX_MEASURES];
	bool		is_count[MAX_MEASURES]; /* bigint counts; else numeric sums */
	int			walk_gap;		/* > 0: a (key, date) table read by walk_find */

	Index		rti;
	Relation	rel;
	Relation	index;
	ResultRelInfo *rri;
	IndexScanDesc scan;
	ScanKeyData skey[MAX_KEYS];
	TupleTableSlot *found;
	TupleTableSlot *newslot;
	AttrNumber	key_att[MAX_KEYS];
	AttrNumber	measure_att[MAX_MEASURES];
	AttrNumber	updated_att;
	AttrNumber	first_seen_att; /* properties */
	ExprState **defaults;		/* per attribute, for columns we do not set */

	/* new rows waiting for table_multi_insert (insert_row) */
	TupleTableSlot **pending;
	int			npending;

	/* walk_find's range scan: key = $1 AND date >= $2 AND date <= $3 */
	ScanKeyData range_key[3];
	int			walk_end;		/* rows before this one belong to the scan */
	bool		walk_done;		/* the scan has no more entries */
	bool		walk_ahead;		/* the entry read last lies past the row sought */
	DateADT		walk_day;		/* that entry's date */
} KpiTable;

enum
{
	T_BOOKING_DAILY,
	T_BOOKING_MONTHLY,
	T_EXPENSE_DAILY,
	T_EXPENSE_MONTHLY,
	T_PORTFOLIO,
	T_PROPERTIES,
	T_COUNT
};

static const KpiTable table_defs[T_COUNT] = {
	{"booking_daily", 2, {"property_id", "day"}, 4,
		{"nights_sold", "room_revenue", "arrivals", "cancelled_arrivals"}, {true, false, true, true},
	WALK_GAP_DAILY_DAYS},
	{"booking_monthly", 2, {"property_id", "month"}, 4,
		{"nights_sold", "room_revenue", "arrivals", "cancelled_arrivals"}, {true, false, true, true},
	WALK_GAP_MONTHLY_DAYS},
	{"expense_daily", 3, {"property_id", "day", "category"}, 4,
	{"approved_amount", "pending_amount", "rejected_amount", "expense_count"}, {false, false, false, true}},
	{"expense_monthly", 3, {"property_id", "month", "category"}, 4,
	{"approved_amount", "pending_amount", "rejected_amount", "expense_count"}, {false, false, false, true}},
	{"portfolio_monthly", 1, {"month"}, 7,
		{"nights_sold", "room_revenue", "arrivals", "cancelled_arrivals",
		"approved_expenses", "pending_expenses", "expense_count"},
	{true, false, true, true, false, false, true}},
	{"properties", 1, {"property_id"}, 0, {NULL}, {false}},
};

/* The batch being written. */
typedef struct ApplyKpi
{
	EState	   *estate;
	EPQState	epqstate;
	KpiTable	t[T_COUNT];
	TimestampTz now;
	Oid			key_type;
	int16		key_len;
	bool		key_byval;
	char		key_align;
	int64		rows_written;
	int64		rows_added_or_deleted;	/* change the tables' row counts */
	Datum	   *new_properties; /* keys inserted into livekpi.properties */
	int			nnew;
	MemoryContext index_cxt;	/* one pending row's index entries */
	Jsonb	  **b_rows;			/* booking_daily rows as left, for the delta */
	ApplyMonthRow *m_rows;		/* booking_monthly rows as left, for the delta */
	int			nm;
} ApplyKpi;

/* One row of deltas; values[] in the order of the table's measures. */
typedef struct DeltaRow
{
	Datum		keys[MAX_KEYS];
	Datum		values[MAX_MEASURES];
} DeltaRow;

/* SQL of the delta_log side, prepared once per key kind. */
static SPIPlanPtr seq_plan = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr part_plan = NULL;
static SPIPlanPtr retention_plan = NULL;
static char plans_key_kind = '\0';

/* For the sort comparators (qsort has no context argument). */
static char sort_key_kind;

static Datum numeric_zero;

static int
key_compare(Datum a, Datum b)
{
	switch (sort_key_kind)
	{
		case KEY_INT:
			{
				int64		x = DatumGetInt64(a);
				int64		y = DatumGetInt64(b);

				return x < y ? -1 : (x > y ? 1 : 0);
			}
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
text_compare(Datum a, Datum b)
{
	char		saved = sort_key_kind;
	int			c;

	sort_key_kind = KEY_TEXT;
	c = key_compare(a, b);
	sort_key_kind = saved;
	return c;
}

/* Orders delta rows by (key, month[, category]) for the roll-ups. */
static int
booking_month_cmp(const void *pa, const void *pb)
{
	const DeltaRow *a = pa;
	const DeltaRow *b = pb;
	int			c = key_compare(a->keys[0], b->keys[0]);

	if (c != 0)
		return c;
	return DatumGetDateADT(a->keys[1]) < DatumGetDateADT(b->keys[1]) ? -1 :
		(DatumGetDateADT(a->keys[1]) > DatumGetDateADT(b->keys[1]) ? 1 : 0);
}

static int
expense_month_cmp(const void *pa, const void *pb)
{
	const DeltaRow *a = pa;
	const DeltaRow *b = pb;
	int			c = booking_month_cmp(pa, pb);

	return c != 0 ? c : text_compare(a->keys[2], b->keys[2]);
}

static int
key_cmp(const void *pa, const void *pb)
{
	return key_compare(*(const Datum *) pa, *(const Datum *) pb);
}

static AttrNumber
attnum_of(Relation rel, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	elog(ERROR, "livekpi: column %s.%s is missing", RelationGetRelationName(rel), name);
	return InvalidAttrNumber;	/* keep compiler quiet */
}

/*
 * open_table
 *		Opens one KPI table for the batch: its primary key index with one
 *		scan for all lookups, its ResultRelInfo, and updatedCols on its
 *		range table entry so that BEFORE UPDATE OF triggers see what changes.
 */
static void
open_table(ApplyKpi *ak, KpiTable *t, Oid nspid, Index rti, List **rtable)
{
	Oid			relid = get_relname_relid(t->name, nspid);
	RangeTblEntry *rte;
	TupleDesc	desc;
	int			i;

	if (!OidIsValid(relid))
		elog(ERROR, "livekpi: table livekpi.%s is missing", t->name);
	t->rel = table_open(relid, RowExclusiveLock);
	t->index = index_open(RelationGetPrimaryKeyIndex(t->rel), RowExclusiveLock);
	desc = RelationGetDescr(t->rel);
	t->rti = rti;

	for (i = 0; i < t->nkeys; i++)
	{
		Oid			opfamily = t->index->rd_opfamily[i];
		Oid			intype = t->index->rd_opcintype[i];
		Oid			op = get_opfamily_member(opfamily, intype, intype, BTEqualStrategyNumber);

		t->key_att[i] = attnum_of(t->rel, t->keys[i]);
		if (t->index->rd_index->indkey.values[i] != t->key_att[i])
			elog(ERROR, "livekpi: the primary key of livekpi.%s is not the expected one", t->name);
		ScanKeyEntryInitialize(&t->skey[i], 0, i + 1, BTEqualStrategyNumber, intype,
							   t->index->rd_indcollation[i], get_opcode(op), (Datum) 0);
	}
	if (t->walk_gap > 0)
	{
		Oid			opfamily = t->index->rd_opfamily[1];
		Oid			intype = t->index->rd_opcintype[1];
		Oid			ge = get_opfamily_member(opfamily, intype, intype, BTGreaterEqualStrategyNumber);
		Oid			le = get_opfamily_member(opfamily, intype, intype, BTLessEqualStrategyNumber);

		/* walk_find takes the dates in ascending order */
		if (intype != DATEOID || (t->index->rd_indoption[1] & INDOPTION_DESC) != 0)
			elog(ERROR, "livekpi: the primary key of livekpi.%s is not the expected one", t->name);
		t->range_key[0] = t->skey[0];
		ScanKeyEntryInitialize(&t->range_key[1], 0, 2, BTGreaterEqualStrategyNumber, intype,
							   t->index->rd_indcollation[1], get_opcode(ge), (Datum) 0);
		ScanKeyEntryInitialize(&t->range_key[2], 0, 2, BTLessEqualStrategyNumber, intype,
							   t->index->rd_indcollation[1], get_opcode(le), (Datum) 0);
	}
	for (i = 0; i < t->nmeasures; i++)
		t->measure_att[i] = attnum_of(t->rel, t->measures[i]);
	t->updated_att = attnum_of(t->rel, "updated_at");
	t->first_seen_att = (strcmp(t->name, "properties") == 0) ?
		attnum_of(t->rel, "first_seen") : InvalidAttrNumber;

	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = t->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	for (i = 0; i < t->nmeasures; i++)
		rte->updatedCols = bms_add_member(rte->updatedCols,
										  t->measure_att[i] - FirstLowInvalidHeapAttributeNumber);
	rte->updatedCols = bms_add_member(rte->updatedCols,
									  t->updated_att - FirstLowInvalidHeapAttributeNumber);
	*rtable = lappend(*rtable, rte);

	t->found = table_slot_create(t->rel, &ak->estate->es_tupleTable);
	t->newslot = ExecInitExtraTupleSlot(ak->estate, desc, &TTSOpsVirtual);
	t->defaults = NULL;
}

/*
 * Defaults of the columns a new row gets that livekpi does not set (those
 * it sets would only be evaluated to be overwritten, for every new row).
 */
static void
prepare_defaults(ApplyKpi *ak, KpiTable *t)
{
	TupleDesc	desc = RelationGetDescr(t->rel);
	bool	   *set = palloc0(sizeof(bool) * desc->natts);
	int			i;

	for (i = 0; i < t->nkeys; i++)
		set[t->key_att[i] - 1] = true;
	for (i = 0; i < t->nmeasures; i++)
		set[t->measure_att[i] - 1] = true;
	set[t->updated_att - 1] = true;
	if (t->first_seen_att != InvalidAttrNumber)
		set[t->first_seen_att - 1] = true;

	t->defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		Node	   *expr;

		if (att->attisdropped || att->attgenerated || set[i])
			continue;
		expr = build_column_default(t->rel, att->attnum);
		if (expr != NULL)
			t->defaults[i] = ExecInitExpr(expression_planner((Expr *) expr), NULL);
	}
}

static bool
lookup(KpiTable *t, const Datum *keys)
{
	int			i;

	for (i = 0; i < t->nkeys; i++)
		t->skey[i].sk_argument = keys[i];
	index_rescan(t->scan, t->skey, t->nkeys, NULL, 0);
	return index_getnext_slot(t->scan, ForwardScanDirection, t->found);
}

/*
 * fill_new_row
 *		A new row: defaults for the columns livekpi does not set, then the
 *		keys, the measures and the timestamps.
 */
static void
fill_new_row(ApplyKpi *ak, KpiTable *t, const DeltaRow *row)
{
	TupleTableSlot *slot = t->newslot;
	TupleDesc	desc = RelationGetDescr(t->rel);
	ExprContext *econtext = GetPerTupleExprContext(ak->estate);
	int			i;

	if (t->defaults == NULL)
		prepare_defaults(ak, t);
	ExecClearTuple(slot);
	for (i = 0; i < desc->natts; i++)
	{
		slot->tts_values[i] = (Datum) 0;
		slot->tts_isnull[i] = true;
		if (t->defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExprSwitchContext(t->defaults[i], econtext,
															&slot->tts_isnull[i]);
	}
	for (i = 0; i < t->nkeys; i++)
	{
		slot->tts_values[t->key_att[i] - 1] = row->keys[i];
		slot->tts_isnull[t->key_att[i] - 1] = false;
	}
	for (i = 0; i < t->nmeasures; i++)
	{
		slot->tts_values[t->measure_att[i] - 1] = row->values[i];
		slot->tts_isnull[t->measure_att[i] - 1] = false;
	}
	slot->tts_values[t->updated_att - 1] = TimestampTzGetDatum(ak->now);
	slot->tts_isnull[t->updated_att - 1] = false;
	if (t->first_seen_att != InvalidAttrNumber)
	{
		slot->tts_values[t->first_seen_att - 1] = TimestampTzGetDatum(ak->now);
		slot->tts_isnull[t->first_seen_att - 1] = false;
	}
	ExecStoreVirtualTuple(slot);
}

/*
 * walk_find
 *		lookup() for the rows of a (key, date) table sorted by key and date
 *		and taken in that order (rows[i], of n): finds rows[i] in t->found.
 *		The first row of a run of one key's dates at most t->walk_gap days
 *		apart starts one range scan over the run; the rows after it
 *		continue that scan, skipping the entries between them by the date
 *		in the index tuple, without reading the heap.  The batch's own
 *		writes are not seen by the scan (they are after its snapshot's
 *		command), and an entry read past the row sought waits for the next.
 */
static bool
walk_find(KpiTable *t, const DeltaRow *rows, int i, int n)
{
	IndexScanDesc scan = t->scan;
	DateADT		want = DatumGetDateADT(rows[i].keys[1]);

	if (i >= t->walk_end)
	{
		int			j = i;

		while (j + 1 < n &&
			   (int64) DatumGetDateADT(rows[j + 1].keys[1]) -
			   DatumGetDateADT(rows[j].keys[1]) <= t->walk_gap &&
			   key_compare(rows[j + 1].keys[0], rows[i].keys[0]) == 0)
			j++;
		t->range_key[0].sk_argument = rows[i].keys[0];
		t->range_key[1].sk_argument = rows[i].keys[1];
		t->range_key[2].sk_argument = rows[j].keys[1];
		index_rescan(scan, t->range_key, 3, NULL, 0);
		t->walk_end = j + 1;
		t->walk_done = false;
		t->walk_ahead = false;
	}
	for (;;)
	{
		if (!t->walk_ahead)
		{
			bool		isnull;

			if (t->walk_done || index_getnext_tid(scan, ForwardScanDirection) == NULL)
			{
				t->walk_done = true;
				return false;
			}
			t->walk_day = DatumGetDateADT(index_getattr(scan->xs_itup, 2,
														scan->xs_itupdesc, &isnull));
			if (isnull)
				elog(ERROR, "livekpi: NULL key in livekpi.%s", t->name);
		}
		t->walk_ahead = false;
		if (t->walk_day < want)
			continue;
		if (t->walk_day > want)
		{
			t->walk_ahead = true;
			return false;
		}
		/* a dead version's entry is followed by the live one's */
		if (index_fetch_heap(scan, t->found))
			return true;
	}
}

/*
 * simple_insert
 *		ExecSimpleRelationInsert of t->newslot in per-tuple memory, which the
 *		caller resets for every row: what the executor allocates for one
 *		row (index tuples, insertion scan keys, TOAST work) would otherwise
 *		stay in the SPI context until the batch ends, hundreds of megabytes
 *		for a bulk load.  Index scans stay in the longer-lived context (an
 *		index AM may allocate scan state lazily, e.g. nbtree's killed items).
 */
static void
simple_insert(ApplyKpi *ak, KpiTable *t)
{
	MemoryContext old = MemoryContextSwitchTo(GetPerTupleMemoryContext(ak->estate));

	ExecSimpleRelationInsert(t->rri, ak->estate, t->newslot);
	MemoryContextSwitchTo(old);
}

/*
 * flush_inserts
 *		Inserts t's pending rows with one table_multi_insert() (a WAL record
 *		per heap page rather than per row), then gives each its index
 *		entries and queues its AFTER triggers, as ExecSimpleRelationInsert()
 *		does for one row.
 */
static void
flush_inserts(ApplyKpi *ak, KpiTable *t)
{
	EState	   *estate = ak->estate;
	int			i;

	if (t->npending == 0)
		return;
	table_multi_insert(t->rel, t->pending, t->npending, estate->es_output_cid, 0, NULL);
	for (i = 0; i < t->npending; i++)
	{
		TupleTableSlot *slot = t->pending[i];
		MemoryContext old = MemoryContextSwitchTo(ak->index_cxt);
		List	   *recheck = NIL;

		if (t->rri->ri_NumIndices > 0)
			recheck = ExecInsertIndexTuples(t->rri, slot, estate, false, false, NULL, NIL);
		ExecARInsertTriggers(estate, t->rri, slot, recheck, NULL);
		MemoryContextSwitchTo(old);
		MemoryContextReset(ak->index_cxt);
		ExecClearTuple(slot);
	}
	t->npending = 0;
}

/*
 * insert_row
 *		Inserts t->newslot: what ExecSimpleRelationInsert() does before the
 *		heap now (stored generated columns, constraints), the rest when
 *		MULTI_INSERT_ROWS rows wait or the caller flushes.  Nothing reads a
 *		table's new rows before that: the batch's index scans do not see its
 *		own writes.  A table with BEFORE ROW INSERT triggers gets its rows
 *		one at a time, since such a trigger may read the table (COPY FROM
 *		does the same).
 */
static void
insert_row(ApplyKpi *ak, KpiTable *t)
{
	TriggerDesc *trig = t->rri->ri_TrigDesc;
	TupleConstr *constr = RelationGetDescr(t->rel)->constr;
	MemoryContext old;

	if (trig != NULL && trig->trig_insert_before_row)
	{
		simple_insert(ak, t);
		return;
	}
	old = MemoryContextSwitchTo(GetPerTupleMemoryContext(ak->estate));
	if (constr != NULL && constr->has_generated_stored)
		ExecComputeStoredGenerated(t->rri, ak->estate, t->newslot, CMD_INSERT);
	if (constr != NULL)
		ExecConstraints(t->rri, t->newslot, ak->estate);
	MemoryContextSwitchTo(old);

	if (t->pending == NULL)
		t->pending = palloc0(sizeof(TupleTableSlot *) * MULTI_INSERT_ROWS);
	if (t->pending[t->npending] == NULL)
		t->pending[t->npending] = table_slot_create(t->rel, &ak->estate->es_tupleTable);
	ExecCopySlot(t->pending[t->npending], t->newslot);
	if (++t->npending == MULTI_INSERT_ROWS)
		flush_inserts(ak, t);
}

/*
 * write_row
 *		Adds a row of deltas to its KPI row (in t->found when found):
 *		updates it, inserts it, or deletes it when its counts reach zero
 *		(SPEC section 3: a row exists exactly when something contributes to
 *		it).  A missing row whose deltas count nothing is not made, as the
 *		SQL upsert-then-delete did not keep it either.  Returns the row
 *		written (in per-tuple memory), or NULL.
 */
static TupleTableSlot *
write_row(ApplyKpi *ak, KpiTable *t, const DeltaRow *row, bool found)
{
	EState	   *estate = ak->estate;
	bool		zero = true;
	int			i;

	ak->rows_written++;
	if (found)
	{
		TupleTableSlot *slot = t->newslot;
		TupleDesc	desc = RelationGetDescr(t->rel);
		MemoryContext old = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));

		slot_getallattrs(t->found);
		ExecClearTuple(slot);
		memcpy(slot->tts_values, t->found->tts_values, sizeof(Datum) * desc->natts);
		memcpy(slot->tts_isnull, t->found->tts_isnull, sizeof(bool) * desc->natts);
		for (i = 0; i < t->nmeasures; i++)
		{
			int			a = t->measure_att[i] - 1;
			Datum		v;

			if (slot->tts_isnull[a])
				elog(ERROR, "livekpi: NULL in livekpi.%s.%s", t->name, t->measures[i]);
			v = t->is_count[i] ? kpi_add_count(slot->tts_values[a], row->values[i]) :
				kpi_add_sum(slot->tts_values[a], row->values[i]);
			slot->tts_values[a] = v;
			if (t->is_count[i] && DatumGetInt64(v) != 0)
				zero = false;
		}
		slot->tts_values[t->updated_att - 1] = TimestampTzGetDatum(ak->now);
		ExecStoreVirtualTuple(slot);

		if (zero)
		{
			ExecSimpleRelationDelete(t->rri, estate, &ak->epqstate, t->found);
			MemoryContextSwitchTo(old);
			ak->rows_added_or_deleted++;
			return NULL;
		}
		ExecSimpleRelationUpdate(t->rri, estate, &ak->epqstate, t->found, slot);
		MemoryContextSwitchTo(old);
		return slot;
	}
	else
	{
		for (i = 0; i < t->nmeasures; i++)
			if (t->is_count[i] && DatumGetInt64(row->values[i]) != 0)
				zero = false;
		if (zero)
			return NULL;
		fill_new_row(ak, t, row);
		insert_row(ak, t);
		ak->rows_added_or_deleted++;
		return t->newslot;
	}
}

/* write_row of a row found by its key. */
static TupleTableSlot *
add_row(ApplyKpi *ak, KpiTable *t, const DeltaRow *row)
{
	ResetPerTupleExprContext(ak->estate);
	return write_row(ak, t, row, lookup(t, row->keys));
}

/* write_row of rows[i] of a (key, date) table's rows in order (walk_find). */
static TupleTableSlot *
add_sorted_row(ApplyKpi *ak, KpiTable *t, const DeltaRow *rows, int i, int n)
{
	ResetPerTupleExprContext(ak->estate);
	return write_row(ak, t, &rows[i], walk_find(t, rows, i, n));
}

/*
 * rollup_sorted
 *		Sums runs of equal keys of rows sorted by the table's key in place;
 *		returns the number of rows left.
 */
static int
rollup_sorted(DeltaRow *rows, int n, const KpiTable *t,
			  int (*cmp) (const void *, const void *))
{
	int			out = 0;
	int			i,
				m;

	if (n == 0)
		return 0;
	for (i = 1; i < n; i++)
	{
		if (cmp(&rows[out], &rows[i]) == 0)
		{
			for (m = 0; m < t->nmeasures; m++)
				rows[out].values[m] = t->is_count[m] ?
					kpi_add_count(rows[out].values[m], rows[i].values[m]) :
					kpi_add_sum(rows[out].values[m], rows[i].values[m]);
		}
		else
			rows[++out] = rows[i];
	}
	return out + 1;
}

/* rollup_sorted after sorting the rows by the table's key. */
static int
rollup(DeltaRow *rows, int n, const KpiTable *t,
	   int (*cmp) (const void *, const void *))
{
	if (n > 1)
		qsort(rows, n, sizeof(DeltaRow), cmp);
	return rollup_sorted(rows, n, t, cmp);
}

/* A booking_daily row of the batch, for sorting them by (key, day). */
typedef struct DailyOrder
{
	Datum		key;
	DateADT		day;
	int			index;			/* in the batch's arrays */
} DailyOrder;

static int
daily_order_cmp(const void *pa, const void *pb)
{
	const DailyOrder *a = pa;
	const DailyOrder *b = pb;
	int			c = key_compare(a->key, b->key);

	if (c != 0)
		return c;
	return a->day < b->day ? -1 : (a->day > b->day ? 1 : 0);
}

/* daily_order_cmp for integer keys, the common case, without key_compare */
static int
daily_order_cmp_int(const void *pa, const void *pb)
{
	const DailyOrder *a = pa;
	const DailyOrder *b = pb;
	int64		x = DatumGetInt64(a->key);
	int64		y = DatumGetInt64(b->key);

	if (x != y)
		return x < y ? -1 : 1;
	return a->day < b->day ? -1 : (a->day > b->day ? 1 : 0);
}

/* qsort of DailyOrder by daily_order_cmp_int, with the comparison inlined */
#define ST_SORT sort_daily_order_int
#define ST_ELEMENT_TYPE DailyOrder
#define ST_COMPARE(a, b) daily_order_cmp_int(a, b)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * portfolio_add
 *		Adds a property-month's deltas to its month's row of the portfolio
 *		(rows, *n of them, kept sorted by month): a batch spans few months,
 *		so a binary search beats sorting a row per property-month.
 */
static void
portfolio_add(DeltaRow *rows, int *n, const KpiTable *t, DateADT month,
			  const Datum *values)
{
	int			lo = 0,
				hi = *n;
	int			m;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (DatumGetDateADT(rows[mid].keys[0]) < month)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < *n && DatumGetDateADT(rows[lo].keys[0]) == month)
	{
		for (m = 0; m < t->nmeasures; m++)
			rows[lo].values[m] = t->is_count[m] ?
				kpi_add_count(rows[lo].values[m], values[m]) :
				kpi_add_sum(rows[lo].values[m], values[m]);
		return;
	}
	memmove(&rows[lo + 1], &rows[lo], sizeof(DeltaRow) * (*n - lo));
	rows[lo].keys[0] = DateADTGetDatum(month);
	memcpy(rows[lo].values, values, sizeof(Datum) * t->nmeasures);
	(*n)++;
}

static void
prepare_plans(char key_kind)
{
	Oid			insert_types[6] = {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, PG_LSNOID,
		JSONBOID, JSONBOID};
	Oid			part_types[4] = {INT8OID, INT4OID, JSONBOID, JSONBOID};
	Oid			retention_types[4] = {INT8OID, INT4OID, TIMESTAMPTZOID, INT4OID};

	apply_kpi_reset();
	seq_plan = SPI_prepare("UPDATE livekpi.state SET last_seq = last_seq + 1 RETURNING last_seq",
						   0, NULL);
	insert_plan = SPI_prepare("INSERT INTO livekpi.delta_log (seq, applied_at, committed_at, lsn, upserts, deletes) "
							  "VALUES ($1, $2, $3, $4, $5, $6)", 6, insert_types);
	part_plan = SPI_prepare("INSERT INTO livekpi.delta_log_parts (seq, part, upserts, deletes) "
							"VALUES ($1, $2, $3, $4)", 4, part_types);
	retention_plan = SPI_prepare("WITH gone AS (DELETE FROM livekpi.delta_log l WHERE l.seq <= $1 - $2 "
								 "OR l.applied_at < $3 - make_interval(secs => $4) RETURNING l.seq) "
								 "DELETE FROM livekpi.delta_log_parts p USING gone WHERE p.seq = gone.seq",
								 4, retention_types);
	if (seq_plan == NULL || insert_plan == NULL || part_plan == NULL || retention_plan == NULL)
		elog(ERROR, "livekpi: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(seq_plan);
	SPI_keepplan(insert_plan);
	SPI_keepplan(part_plan);
	SPI_keepplan(retention_plan);
	plans_key_kind = key_kind;
}

void
apply_kpi_reset(void)
{
	SPIPlanPtr *plans[4] = {&seq_plan, &insert_plan, &part_plan, &retention_plan};
	int			i;

	for (i = 0; i < lengthof(plans); i++)
	{
		if (*plans[i] != NULL)
			SPI_freeplan(*plans[i]);
		*plans[i] = NULL;
	}
	plans_key_kind = '\0';
}

/* Where the parts of a large batch's delta go (delta_log_parts). */
typedef struct DeltaPartWriter
{
	int64		seq;
	int32		part;
} DeltaPartWriter;

static void
write_delta_part(Datum upserts, Datum deletes, void *arg)
{
	DeltaPartWriter *w = (DeltaPartWriter *) arg;
	Datum		values[4];

	values[0] = Int64GetDatum(w->seq);
	values[1] = Int32GetDatum(++w->part);
	values[2] = upserts;
	values[3] = deletes;
	if (SPI_execute_plan(part_plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "livekpi: could not write delta_log_parts");
	pfree(DatumGetPointer(upserts));
	pfree(DatumGetPointer(deletes));
}

/*
 * write_delta_log
 *		The batch's seq and delta_log row (and, for a delta of more than
 *		DELTA_PART_ROWS rows, its earlier parts in delta_log_parts), and
 *		delta_log's retention.  Returns the seq.
 */
static int64
write_delta_log(ApplyKpi *ak, KpiArrays *a, char key_kind, TimestampTz last_commit,
				XLogRecPtr last_end)
{
	Datum		values[10];
	bool		isnull;
	int64		seq;
	int			nnew = ak->nnew;
	int			nunits;
	Datum	   *props;

	if (plans_key_kind != key_kind || seq_plan == NULL)
		prepare_plans(key_kind);

	/* The writes above are read by apply_delta_build. */
	CommandCounterIncrement();

	if (SPI_execute_plan(seq_plan, NULL, NULL, false, 0) != SPI_OK_UPDATE_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "livekpi: livekpi.state must have exactly one row");
	seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	values[0] = Int64GetDatum(seq);
	values[1] = TimestampTzGetDatum(ak->now);
	values[2] = TimestampTzGetDatum(last_commit);
	values[3] = LSNGetDatum(last_end);
	{
		DeltaPartWriter parts = {seq, 0};

		nunits = a->nunits;
		props = palloc(sizeof(Datum) * (nnew + nunits + 1));
		memcpy(props, ak->new_properties, sizeof(Datum) * nnew);
		memcpy(props + nnew, a->u_key, sizeof(Datum) * nunits);
		apply_delta_build(key_kind, ak->key_type, a->b_key, a->b_day, ak->b_rows, a->nbooking,
						  a->e_key, a->e_day, a->e_category, a->nexpense, props, nnew + nunits,
						  ak->m_rows, ak->nm, write_delta_part, &parts,
						  &values[4], &values[5]);
		if (SPI_execute_plan(insert_plan, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "livekpi: could not write delta_log");
	}

	values[1] = Int32GetDatum(livekpi_delta_retention_batches);
	values[2] = TimestampTzGetDatum(ak->now);
	values[3] = Int32GetDatum(livekpi_delta_retention);
	if (SPI_execute_plan(retention_plan, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "livekpi: could not trim delta_log");
	return seq;
}

/*
 * apply_kpi_batch_c
 *		Writes the batch; see the file header.  The caller holds the
 *		livekpi.state row lock, is connected to SPI and has an active
 *		snapshot.  Sets *seq (0: nothing changed, no delta_log row),
 *		*rows_written (KPI rows touched) and *rows_counted (rows inserted or
 *		deleted, which change the tables' statistics).
 */
void
apply_kpi_batch_c(KpiBatch *batch, char key_kind, TimestampTz last_commit,
				  XLogRecPtr last_end, int64 *seq, int64 *rows_written,
				  int64 *rows_counted)
{
	ApplyKpi	ak;
	KpiArrays	a;
	Oid			nspid = get_namespace_oid("livekpi", false);
	List	   *rtable = NIL;
	Snapshot	snapshot;
	int			i,
				nb,
				ne;
	Datum	   *b_key,
			   *b_day,
			   *b_nights,
			   *b_revenue,
			   *b_arrivals,
			   *b_cancelled;
	Datum	   *e_key,
			   *e_day,
			   *e_category,
			   *e_approved,
			   *e_pending,
			   *e_rejected,
			   *e_count;
	DeltaRow   *rows;
	DailyOrder *order;
	ApplyJsonFormat *b_format = NULL;
	DeltaRow   *months;
	DeltaRow   *portfolio;
	int			nmonths,
				nportfolio;
	Datum	   *keys;
	int			nkeys;
	int			nunits;

	kpi_batch_arrays(batch, &a);
	memset(&ak, 0, sizeof(ak));
	ak.now = GetCurrentTransactionStartTimestamp();
	ak.key_type = kpi_key_type(key_kind);
	get_typlenbyvalalign(ak.key_type, &ak.key_len, &ak.key_byval, &ak.key_align);
	sort_key_kind = key_kind;
	if (numeric_zero == (Datum) 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		numeric_zero = DirectFunctionCall3(numeric_in, CStringGetDatum("0"),
										   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		MemoryContextSwitchTo(old);
	}

	nb = a.nbooking;
	b_key = a.b_key;
	b_day = a.b_day;
	b_nights = a.b_nights;
	b_revenue = a.b_revenue;
	b_arrivals = a.b_arrivals;
	b_cancelled = a.b_cancelled;
	ne = a.nexpense;
	e_key = a.e_key;
	e_day = a.e_day;
	e_category = a.e_category;
	e_approved = a.e_approved;
	e_pending = a.e_pending;
	e_rejected = a.e_rejected;
	e_count = a.e_count;
	nunits = a.nunits;

	/*
	 * Every batch (and, in careful mode, every change) sees what the ones
	 * before it in this transaction wrote.
	 */
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());

	ak.estate = CreateExecutorState();
	ak.estate->es_output_cid = GetCurrentCommandId(true);
	ak.estate->es_snapshot = snapshot;
	for (i = 0; i < T_COUNT; i++)
	{
		ak.t[i] = table_defs[i];
		open_table(&ak, &ak.t[i], nspid, i + 1, &rtable);
	}
	ExecInitRangeTable(ak.estate, rtable);
	for (i = 0; i < T_COUNT; i++)
	{
		KpiTable   *t = &ak.t[i];

		t->rri = makeNode(ResultRelInfo);
		InitResultRelInfo(t->rri, t->rel, t->rti, NULL, 0);
		/* where AFTER trigger events look their relation up */
		ak.estate->es_opened_result_relations =
			lappend(ak.estate->es_opened_result_relations, t->rri);
		ExecOpenIndices(t->rri, false);
		t->scan = index_beginscan(t->rel, t->index, snapshot,
								  t->walk_gap > 0 ? 3 : t->nkeys, 0);
		/* walk_find reads the dates of the entries it skips */
		if (t->walk_gap > 0)
			t->scan->xs_want_itup = true;
	}
	EvalPlanQualInit(&ak.epqstate, ak.estate, NULL, NIL, -1);
	ak.index_cxt = AllocSetContextCreate(CurrentMemoryContext, "livekpi index entries",
										 ALLOCSET_SMALL_SIZES);
	AfterTriggerBeginQuery();

	/*
	 * booking_daily in (key, day) order, so that a stay's nights are found
	 * by one range scan, then its month roll-up, which that order leaves
	 * sorted by (key, month).  The rows written are kept as the delta's
	 * JSON (indexed as in the batch's arrays, which write_delta_log passes
	 * on), unless a trigger of the user's may change what is stored (then
	 * apply_delta reads them back).
	 */
	{
		TriggerDesc *trig = ak.t[T_BOOKING_DAILY].rri->ri_TrigDesc;

		if (trig == NULL || (!trig->trig_insert_before_row && !trig->trig_update_before_row))
		{
			ak.b_rows = palloc0(sizeof(Jsonb *) * Max(nb, 1));
			b_format = apply_delta_json_format(RelationGetDescr(ak.t[T_BOOKING_DAILY].rel));
		}
	}
	order = palloc(sizeof(DailyOrder) * Max(nb, 1));
	for (i = 0; i < nb; i++)
	{
		order[i].key = b_key[i];
		order[i].day = DatumGetDateADT(b_day[i]);
		order[i].index = i;
	}
	if (nb > 1 && key_kind == KEY_INT)
		sort_daily_order_int(order, nb);
	else if (nb > 1)
		qsort(order, nb, sizeof(DailyOrder), daily_order_cmp);
	rows = palloc(sizeof(DeltaRow) * Max(nb, 1));
	for (i = 0; i < nb; i++)
	{
		int			k = order[i].index;

		rows[i].keys[0] = b_key[k];
		rows[i].keys[1] = b_day[k];
		rows[i].values[0] = b_nights[k];
		rows[i].values[1] = b_revenue[k];
		rows[i].values[2] = b_arrivals[k];
		rows[i].values[3] = b_cancelled[k];
	}
	for (i = 0; i < nb; i++)
	{
		TupleTableSlot *written = add_sorted_row(&ak, &ak.t[T_BOOKING_DAILY], rows, i, nb);

		if (ak.b_rows != NULL && written != NULL)
			ak.b_rows[order[i].index] = apply_delta_format_jsonb(b_format, written);
	}
	flush_inserts(&ak, &ak.t[T_BOOKING_DAILY]);
	months = palloc(sizeof(DeltaRow) * Max(nb + ne, 1));
	for (i = 0; i < nb; i++)
	{
		months[i] = rows[i];
		months[i].keys[1] = DateADTGetDatum(kpi_month_of(DatumGetDateADT(rows[i].keys[1])));
	}
	nmonths = rollup_sorted(months, nb, &ak.t[T_BOOKING_MONTHLY], booking_month_cmp);

	/*
	 * The portfolio's months, from the property-months, and the batch's
	 * properties (the property-months are sorted by property).
	 */
	portfolio = palloc(sizeof(DeltaRow) * Max(nb + ne, 1));
	nportfolio = 0;
	keys = palloc(sizeof(Datum) * Max(nb + ne, 1));
	nkeys = 0;
	for (i = 0; i < nmonths; i++)
	{
		Datum		v[MAX_MEASURES] = {months[i].values[0], months[i].values[1],
			months[i].values[2], months[i].values[3],
		numeric_zero, numeric_zero, Int64GetDatum(0)};

		portfolio_add(portfolio, &nportfolio, &ak.t[T_PORTFOLIO],
					  DatumGetDateADT(months[i].keys[1]), v);
		if (nkeys == 0 || key_compare(keys[nkeys - 1], months[i].keys[0]) != 0)
			keys[nkeys++] = months[i].keys[0];
	}
	{
		TriggerDesc *trig = ak.t[T_BOOKING_MONTHLY].rri->ri_TrigDesc;

		if (trig == NULL || (!trig->trig_insert_before_row && !trig->trig_update_before_row))
			ak.m_rows = palloc(sizeof(ApplyMonthRow) * Max(nmonths, 1));
	}
	for (i = 0; i < nmonths; i++)
	{
		KpiTable   *t = &ak.t[T_BOOKING_MONTHLY];
		TupleTableSlot *written = add_sorted_row(&ak, t, months, i, nmonths);

		if (ak.m_rows != NULL)
		{
			/* kept for property_kpis, past the per-row memory */
			ApplyMonthRow *m = &ak.m_rows[ak.nm++];

			m->key = months[i].keys[0];
			m->month = DatumGetDateADT(months[i].keys[1]);
			m->exists = written != NULL;
			if (written != NULL)
			{
				m->nights = written->tts_values[t->measure_att[0] - 1];
				m->revenue = datumCopy(written->tts_values[t->measure_att[1] - 1], false, -1);
				m->arrivals = written->tts_values[t->measure_att[2] - 1];
				m->cancelled = written->tts_values[t->measure_att[3] - 1];
				m->updated_at = written->tts_values[t->updated_att - 1];
			}
		}
	}
	flush_inserts(&ak, &ak.t[T_BOOKING_MONTHLY]);

	/* expense_daily, then its month roll-up */
	rows = repalloc(rows, sizeof(DeltaRow) * Max(ne, 1));
	for (i = 0; i < ne; i++)
	{
		rows[i].keys[0] = e_key[i];
		rows[i].keys[1] = e_day[i];
		rows[i].keys[2] = e_category[i];
		rows[i].values[0] = e_approved[i];
		rows[i].values[1] = e_pending[i];
		rows[i].values[2] = e_rejected[i];
		rows[i].values[3] = e_count[i];
		(void) add_row(&ak, &ak.t[T_EXPENSE_DAILY], &rows[i]);
	}
	flush_inserts(&ak, &ak.t[T_EXPENSE_DAILY]);
	for (i = 0; i < ne; i++)
	{
		months[i] = rows[i];
		months[i].keys[1] = DateADTGetDatum(kpi_month_of(DatumGetDateADT(e_day[i])));
	}
	nmonths = rollup(months, ne, &ak.t[T_EXPENSE_MONTHLY], expense_month_cmp);
	for (i = 0; i < nmonths; i++)
	{
		Datum		v[MAX_MEASURES] = {Int64GetDatum(0), numeric_zero,
			Int64GetDatum(0), Int64GetDatum(0),
		months[i].values[0], months[i].values[1], months[i].values[3]};

		portfolio_add(portfolio, &nportfolio, &ak.t[T_PORTFOLIO],
					  DatumGetDateADT(months[i].keys[1]), v);
	}
	for (i = 0; i < nmonths; i++)
		(void) add_row(&ak, &ak.t[T_EXPENSE_MONTHLY], &months[i]);
	flush_inserts(&ak, &ak.t[T_EXPENSE_MONTHLY]);

	/* portfolio */
	for (i = 0; i < nportfolio; i++)
		(void) add_row(&ak, &ak.t[T_PORTFOLIO], &portfolio[i]);
	flush_inserts(&ak, &ak.t[T_PORTFOLIO]);

	/*
	 * properties appear when first seen: the batch's properties in key
	 * order (the booking ones are in order already)
	 */
	memcpy(keys + nkeys, e_key, sizeof(Datum) * ne);
	nkeys += ne;
	if (ne > 0)
	{
		int			out = 0;

		qsort(keys, nkeys, sizeof(Datum), key_cmp);
		for (i = 1; i < nkeys; i++)
			if (key_compare(keys[out], keys[i]) != 0)
				keys[++out] = keys[i];
		nkeys = out + 1;
	}
	ak.new_properties = palloc(sizeof(Datum) * Max(nkeys, 1));
	for (i = 0; i < nkeys; i++)
	{
		KpiTable   *t = &ak.t[T_PROPERTIES];
		DeltaRow	row;

		row.keys[0] = keys[i];
		ResetPerTupleExprContext(ak.estate);
		if (lookup(t, row.keys))
			continue;
		fill_new_row(&ak, t, &row);
		simple_insert(&ak, t);
		ak.new_properties[ak.nnew++] = keys[i];
	}

	AfterTriggerEndQuery(ak.estate);
	EvalPlanQualEnd(&ak.epqstate);
	MemoryContextDelete(ak.index_cxt);
	for (i = 0; i < T_COUNT; i++)
		index_endscan(ak.t[i].scan);
	/* indices, and relations AFTER triggers opened */
	ExecCloseResultRelations(ak.estate);
	for (i = 0; i < T_COUNT; i++)
	{
		index_close(ak.t[i].index, NoLock);
		table_close(ak.t[i].rel, NoLock);
	}
	ExecResetTupleTable(ak.estate->es_tupleTable, false);
	FreeExecutorState(ak.estate);
	UnregisterSnapshot(snapshot);

	*rows_written = ak.rows_written;
	*rows_counted = ak.rows_added_or_deleted;
	*seq = 0;
	if (ak.rows_written == 0 && nunits == 0 && ak.nnew == 0)
		return;
	*seq = write_delta_log(&ak, &a, key_kind, last_commit, last_end);
}
