/*-------------------------------------------------------------------------
 *
 * apply_delta.h
 *	  The delta_log row of a batch, built in C (apply_delta.c).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/apply_delta.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_APPLY_DELTA_H
#define LIVEKPI_APPLY_DELTA_H

#include "change.h"
#include "executor/tuptable.h"
#include "utils/date.h"
#include "utils/jsonb.h"

/*
 * A booking_monthly row as the batch left it (exists: false when deleted or
 * never made), sorted by key and month.
 */
typedef struct ApplyMonthRow
{
	Datum		key;
	DateADT		month;
	bool		exists;
	Datum		nights;
	Datum		revenue;
	Datum		arrivals;
	Datum		cancelled;
	Datum		updated_at;
} ApplyMonthRow;

/*
 * A delta of more rows than this is handed out in parts: every time the
 * rows built reach it, emit(upserts, deletes, emit_arg) gets them as one
 * part (delta_log_parts), and *upserts / *deletes get the last part.  So
 * no jsonb value grows with the batch (a jsonb is limited to 256 MB) and
 * the push worker can read a batch in pieces.
 */
#define DELTA_PART_ROWS		20000

typedef void (*ApplyDeltaEmit) (Datum upserts, Datum deletes, void *arg);

/*
 * m_rows, when not NULL: the booking_monthly rows the batch wrote, which
 * are then not read back.
 *
 * b_rows, when not NULL: for each booking_daily key, to_jsonb of the row
 * the batch left (apply_delta_format_jsonb of the slot it wrote), or NULL
 * when no row is left; the rows are then not read back.
 */
extern void apply_delta_build(char key_kind, Oid key_type,
							  Datum *b_key, Datum *b_day, Jsonb **b_rows, int nb,
							  Datum *e_key, Datum *e_day, Datum *e_category, int ne,
							  Datum *p_key, int np,
							  ApplyMonthRow *m_rows, int nm,
							  ApplyDeltaEmit emit, void *emit_arg,
							  Datum *upserts, Datum *deletes);

extern Jsonb *apply_delta_slot_jsonb(TupleTableSlot *slot);

/* to_jsonb of rows of one descriptor, its keys prepared once */
typedef struct ApplyJsonFormat ApplyJsonFormat;

extern ApplyJsonFormat *apply_delta_json_format(TupleDesc desc);
extern Jsonb *apply_delta_format_jsonb(ApplyJsonFormat *format, TupleTableSlot *slot);

/*
 * delta_render.c: delta_log stores the rows of property_kpis and
 * portfolio_kpis without the columns the views compute from the others;
 * delta_render_row renders a stored row as the view's row.
 */
extern bool delta_column_is_computed(const char *name, int len);
extern bool delta_view_has_computed_columns(const char *view, int len);
extern Jsonb *delta_render_row(const char *view, int view_len, Jsonb *row);

#endif							/* LIVEKPI_APPLY_DELTA_H */
