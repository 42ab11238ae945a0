/*-------------------------------------------------------------------------
 *
 * pg_shim.h
 *	  What test/fuzz/pg_shim.c adds to the server functions it replaces.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * test/fuzz/pg_shim.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_PG_SHIM_H
#define LIVEKPI_PG_SHIM_H

extern void shim_free_all(void);

#endif							/* LIVEKPI_PG_SHIM_H */
