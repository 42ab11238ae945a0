/*-------------------------------------------------------------------------
 *
 * kpi.h
 *	  SPEC section 3 in C, the one source of the KPI rules: how stored
 *	  values become days, amounts, keys and categories (and which are
 *	  skipped), what a captured change contributes to the daily KPI rows,
 *	  coalesced per key in memory so that a batch writes each touched row
 *	  once.  rebuild() and the backfill use the same code (recompute.c);
 *	  verify()'s SQL recompute states the rules independently, and the
 *	  differential tests hold the two together.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/kpi.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_KPI_H
#define LIVEKPI_KPI_H

#include "utils/array.h"
#include "datatype/timestamp.h"
#include "utils/date.h"

#include "change.h"

typedef struct KpiBatch
{
	MemoryContext context;		/* the entries, keys and sums */
	MemoryContext scratch;		/* one change's temporaries */
	char		key_kind;
	struct daily_hash *booking_daily;	/* simplehash tables (kpi.c) */
	struct daily_hash *expense_daily;
	struct daily_hash *units_changed;
	int64		changes;		/* captured rows applied */
	int64		skipped;		/* rows or values skipped per SPEC section 3 */
} KpiBatch;

/*
 * The coalesced deltas of a batch as parallel arrays, one per column, in
 * the batch's memory; numerics point into the batch's entries.
 */
typedef struct KpiArrays
{
	int			nbooking;
	Datum	   *b_key;
	Datum	   *b_day;
	Datum	   *b_nights;
	Datum	   *b_revenue;
	Datum	   *b_arrivals;
	Datum	   *b_cancelled;
	int			nexpense;
	Datum	   *e_key;
	Datum	   *e_day;
	Datum	   *e_category;
	Datum	   *e_approved;
	Datum	   *e_pending;
	Datum	   *e_rejected;
	Datum	   *e_count;
	int			nunits;
	Datum	   *u_key;
} KpiArrays;

/*
 * Limits of the values SPEC section 3 can use (docs/kpis.md, "Skipped rows").
 *
 * LIVEKPI_FIRST_DAY .. LIVEKPI_LAST_DAY: the days whose month, and the month
 * after it, PostgreSQL can compute (date_trunc and date + interval go
 * through timestamp, whose range ends on 294276-12-31 and starts on
 * 4714-11-24 BC): 4714-12-01 BC .. 294276-11-30.  A date outside them, or
 * infinite, is skipped like NULL.  Both dates of a booking are checked, so
 * every night check_in + i (i < n) lies inside the range too.
 *
 * LIVEKPI_MAX_CATEGORY_CHARS: a longer category counts under its first
 * that many characters (not bytes), which keeps the expense keys within a
 * B-tree index row.
 *
 * LIVEKPI_MAX_KEY_BYTES: a text property key longer than this is skipped
 * like NULL: with a category of LIVEKPI_MAX_CATEGORY_CHARS 4-byte
 * characters it still fits an index row (2704 bytes).
 */
#define LIVEKPI_FIRST_DAY	(7 - POSTGRES_EPOCH_JDATE)	/* 4714-12-01 BC: JD 7 */
#define LIVEKPI_LAST_DAY	(TIMESTAMP_END_JULIAN - 32 - POSTGRES_EPOCH_JDATE)	/* 294276-11-30 */
#define LIVEKPI_MAX_CATEGORY_CHARS	200
#define LIVEKPI_MAX_KEY_BYTES		1024

extern bool kpi_day_usable(DateADT day);
extern DateADT kpi_month_of(DateADT day);
extern Datum kpi_add_count(Datum a, Datum b);
extern Datum kpi_add_sum(Datum a, Datum b);
extern bool kpi_to_day(Oid typid, Datum value, text *timezone, DateADT *day);
extern Numeric kpi_to_numeric(Oid typid, Datum value);
extern bool kpi_numeric_not_finite(Numeric num);
extern bool kpi_key_usable(char key_kind, Datum key);
extern int	kpi_category_clip(const char *category, int len);

/*
 * The daily booking rows one side of a booking contributes, one at a time:
 * the incremental path adds them to a batch, rebuild() streams them to SQL.
 */
typedef struct KpiBookingRow
{
	DateADT		day;
	int64		nights;
	Numeric		revenue;		/* NULL: nothing */
	int64		arrivals;
	int64		cancelled;
} KpiBookingRow;

typedef struct KpiBookingIter
{
	DateADT		day1;
	int64		n;
	int64		next;			/* next night; n when done */
	bool		cancelled;
	Numeric		amount;
	Numeric		base;
	Numeric		last;
} KpiBookingIter;

extern bool kpi_booking_begin(const ChangeImage *img, KpiBookingIter *it, bool *amount_odd);
extern bool kpi_booking_next(KpiBookingIter *it, KpiBookingRow *row);

extern void kpi_batch_init(KpiBatch *batch, char key_kind, MemoryContext context);
extern void kpi_batch_add(KpiBatch *batch, const Change *change);
extern void kpi_batch_arrays(KpiBatch *batch, KpiArrays *arrays);
extern Oid	kpi_key_type(char key_kind);

#endif							/* LIVEKPI_KPI_H */
