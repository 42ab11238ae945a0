/*-------------------------------------------------------------------------
 *
 * siphash.c
 *	  SipHash-2-4, written from the specification ("SipHash: a fast
 *	  short-input PRF", Aumasson and Bernstein, 2012): 2 compression rounds
 *	  per 8-byte word, 4 finalization rounds, 64-bit output.  PostgreSQL 15
 *	  has no SipHash in core.  The reference test vectors (key 00..0f,
 *	  messages 00, 00 01, ... of length 0..63) are checked by
 *	  test/fuzz/test_siphash.c.
 *
 *	  This file owns nothing but the function: how livekpi derives its key
 *	  and what the tag covers is in change.c.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/siphash.c
 *
 *-------------------------------------------------------------------------
 */
#include "siphash.h"

#define ROTL(x, b)	(uint64_t) (((x) << (b)) | ((x) >> (64 - (b))))

/* One SipRound: the ARX network of the specification, section 2. */
#define SIPROUND(st) \
	do { \
		(st)->v0 += (st)->v1; (st)->v1 = ROTL((st)->v1, 13); \
		(st)->v1 ^= (st)->v0; (st)->v0 = ROTL((st)->v0, 32); \
		(st)->v2 += (st)->v3; (st)->v3 = ROTL((st)->v3, 16); \
		(st)->v3 ^= (st)->v2; \
		(st)->v0 += (st)->v3; (st)->v3 = ROTL((st)->v3, 21); \
		(st)->v3 ^= (st)->v0; \
		(st)->v2 += (st)->v1; (st)->v1 = ROTL((st)->v1, 17); \
		(st)->v1 ^= (st)->v2; (st)->v2 = ROTL((st)->v2, 32); \
	} while (0)

/* Reads 8 bytes as a little-endian word, whatever the host's byte order. */
static uint64_t
load_le64(const unsigned char *p)
{
	return (uint64_t) p[0] | ((uint64_t) p[1] << 8) | ((uint64_t) p[2] << 16) |
		((uint64_t) p[3] << 24) | ((uint64_t) p[4] << 32) |
		((uint64_t) p[5] << 40) | ((uint64_t) p[6] << 48) |
		((uint64_t) p[7] << 56);
}

/* Absorbs one message word m: v3 ^= m, c = 2 rounds, v0 ^= m. */
static void
compress(SipState *st, uint64_t m)
{
	st->v3 ^= m;
	SIPROUND(st);
	SIPROUND(st);
	st->v0 ^= m;
}

SipKey
lk_sipkey_from_bytes(const unsigned char bytes[16])
{
	SipKey		k;

	k.k0 = load_le64(bytes);
	k.k1 = load_le64(bytes + 8);
	return k;
}

/* Initialization: the key xored into the constants "somepseudorandomlygeneratedbytes". */
void
lk_siphash_init(SipState *st, const SipKey *key)
{
	st->v0 = key->k0 ^ UINT64_C(0x736f6d6570736575);
	st->v1 = key->k1 ^ UINT64_C(0x646f72616e646f6d);
	st->v2 = key->k0 ^ UINT64_C(0x6c7967656e657261);
	st->v3 = key->k1 ^ UINT64_C(0x7465646279746573);
	st->tail = 0;
	st->ntail = 0;
	st->total = 0;
}

void
lk_siphash_update(SipState *st, const void *data, size_t len)
{
	const unsigned char *p = data;

	st->total += len;

	/* complete a word left pending by the previous call */
	while (st->ntail > 0 && len > 0)
	{
		st->tail |= (uint64_t) *p++ << (8 * st->ntail);
		len--;
		if (++st->ntail == 8)
		{
			compress(st, st->tail);
			st->tail = 0;
			st->ntail = 0;
		}
	}
	for (; len >= 8; p += 8, len -= 8)
		compress(st, load_le64(p));
	while (len > 0)
	{
		st->tail |= (uint64_t) *p++ << (8 * st->ntail++);
		len--;
	}
}

/*
 * Finalization: the last word carries the remaining bytes and, in its top
 * byte, the message length mod 256; then v2 ^= 0xff and d = 4 rounds.
 */
uint64_t
lk_siphash_final(SipState *st)
{
	compress(st, st->tail | (st->total << 56));
	st->v2 ^= 0xff;
	SIPROUND(st);
	SIPROUND(st);
	SIPROUND(st);
	SIPROUND(st);
	return st->v0 ^ st->v1 ^ st->v2 ^ st->v3;
}

uint64_t
lk_siphash(const SipKey *key, const void *data, size_t len)
{
	SipState	st;

	lk_siphash_init(&st, key);
	lk_siphash_update(&st, data, len);
	return lk_siphash_final(&st);
}
