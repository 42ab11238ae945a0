/*-------------------------------------------------------------------------
 *
 * apply_kpi.h
 *	  The C writer of a batch's KPI deltas (apply_kpi.c), called by the
 *	  apply worker inside its apply transaction.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/apply_kpi.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_APPLY_KPI_H
#define LIVEKPI_APPLY_KPI_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"

#include "kpi.h"

extern void apply_kpi_batch_c(KpiBatch *batch, char key_kind, TimestampTz last_commit,
							  XLogRecPtr last_end, int64 *seq, int64 *rows_written,
							  int64 *rows_counted);
extern void apply_kpi_reset(void);

#endif							/* LIVEKPI_APPLY_KPI_H */
