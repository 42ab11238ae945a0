/*-------------------------------------------------------------------------
 *
 * kpi.h
 *	  SPEC section 3 in C: what a captured change contributes to the daily
 *	  KPI rows, coalesced per key in memory so that a batch writes each
 *	  touched row once.  The set-based SQL recompute (rebuild, verify)
 *	  states the same rules; the differential tests hold the two together.
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
#include "utils/hsearch.h"

#include "change.h"

typedef struct KpiBatch
{
	MemoryContext context;
	char		key_kind;
	HTAB	   *booking_daily;
	HTAB	   *expense_daily;
	HTAB	   *units_changed;
	int64		changes;		/* captured rows applied */
	int64		skipped;		/* rows or values skipped per SPEC section 3 */
} KpiBatch;

/* The coalesced deltas of a batch as arrays, ready to pass to SQL. */
typedef struct KpiArrays
{
	int			nbooking;
	ArrayType  *b_key;
	ArrayType  *b_day;
	ArrayType  *b_nights;
	ArrayType  *b_revenue;
	ArrayType  *b_arrivals;
	ArrayType  *b_cancelled;
	int			nexpense;
	ArrayType  *e_key;
	ArrayType  *e_day;
	ArrayType  *e_category;
	ArrayType  *e_approved;
	ArrayType  *e_pending;
	ArrayType  *e_rejected;
	ArrayType  *e_count;
	int			nunits;
	ArrayType  *u_key;
} KpiArrays;

extern void kpi_batch_init(KpiBatch *batch, char key_kind, MemoryContext context);
extern void kpi_batch_add(KpiBatch *batch, const Change *change);
extern void kpi_batch_arrays(KpiBatch *batch, KpiArrays *arrays);
extern Oid	kpi_key_type(char key_kind);

#endif							/* LIVEKPI_KPI_H */
