/*-------------------------------------------------------------------------
 *
 * siphash.h
 *	  SipHash-2-4 (Aumasson and Bernstein, 2012): a keyed 64-bit pseudo-
 *	  random function, used to tag livekpi's change records so that only
 *	  the capture trigger can make records the decoder accepts.
 *
 *	  Plain C99 with no server headers, so that the fuzz and unit test
 *	  programs in test/fuzz/ can link it too.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/siphash.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_SIPHASH_H
#define LIVEKPI_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

/* A 128-bit key as two little-endian 64-bit halves (k0 = bytes 0..7). */
typedef struct SipKey
{
	uint64_t	k0;
	uint64_t	k1;
} SipKey;

/*
 * Incremental state, so that a tag can cover several pieces (the xid and
 * the record) without copying them into one buffer.
 */
typedef struct SipState
{
	uint64_t	v0,
				v1,
				v2,
				v3;
	uint64_t	tail;			/* up to 7 pending bytes, little-endian */
	size_t		ntail;			/* bytes in tail */
	uint64_t	total;			/* bytes consumed so far */
} SipState;

extern void lk_siphash_init(SipState *st, const SipKey *key);
extern void lk_siphash_update(SipState *st, const void *data, size_t len);
extern uint64_t lk_siphash_final(SipState *st);
extern uint64_t lk_siphash(const SipKey *key, const void *data, size_t len);
extern SipKey lk_sipkey_from_bytes(const unsigned char bytes[16]);

#endif							/* LIVEKPI_SIPHASH_H */
