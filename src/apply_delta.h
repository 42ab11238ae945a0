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

extern void apply_delta_build(char key_kind, Oid key_type,
							  Datum *b_key, Datum *b_day, int nb,
							  Datum *e_key, Datum *e_day, Datum *e_category, int ne,
							  Datum *p_key, int np,
							  Datum *upserts, Datum *deletes);

#endif							/* LIVEKPI_APPLY_DELTA_H */
