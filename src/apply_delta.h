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
#include "utils/jsonb.h"

/*
 * b_rows, when not NULL: for each booking_daily key, to_jsonb of the row
 * the batch left (apply_delta_slot_jsonb of the slot it wrote), or NULL
 * when no row is left; the rows are then not read back.
 */
extern void apply_delta_build(char key_kind, Oid key_type,
							  Datum *b_key, Datum *b_day, Jsonb **b_rows, int nb,
							  Datum *e_key, Datum *e_day, Datum *e_category, int ne,
							  Datum *p_key, int np,
							  Datum *upserts, Datum *deletes);

extern Jsonb *apply_delta_slot_jsonb(TupleTableSlot *slot);

#endif							/* LIVEKPI_APPLY_DELTA_H */
