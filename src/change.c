/*-------------------------------------------------------------------------
 *
 * change.c
 *	  Encoding, authentication and decoding of the change record described
 *	  in change.h.  Decoding allocates in the current memory context and
 *	  points into the message where it can; the caller keeps the message
 *	  alive.
 *
 *	  change_decode_checked() reads untrusted bytes (anyone may call
 *	  pg_logical_emit_message with livekpi's prefix): it never raises an
 *	  error, never reads past the end, allocates at most the record's own
 *	  length, and accepts only the one canonical encoding of a change, so
 *	  that decoding and re-encoding give back the same bytes
 *	  (test/fuzz/fuzz_change.c checks that).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/change.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_control.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "change.h"

static void
put_varint(StringInfo buf, uint64 v)
{
	while (v >= 0x80)
	{
		appendStringInfoCharMacro(buf, (char) ((v & 0x7f) | 0x80));
		v >>= 7;
	}
	appendStringInfoCharMacro(buf, (char) v);
}

/* zigzag, so that small negative numbers stay small */
static void
put_zvarint(StringInfo buf, int64 v)
{
	put_varint(buf, ((uint64) v << 1) ^ (uint64) (v >> 63));
}

void
change_encode_header(StringInfo buf, char kind, char key_kind, Oid relid,
					 bool has_old, bool has_new)
{
	appendStringInfoCharMacro(buf, kind);
	appendStringInfoCharMacro(buf, key_kind);
	put_varint(buf, relid);
	appendStringInfoCharMacro(buf, (char) ((has_old ? 1 : 0) | (has_new ? 2 : 0)));
}

void
change_encode_image(StringInfo buf, char kind, char key_kind,
					const ChangeImage *img)
{
	appendStringInfoCharMacro(buf, (char) img->flags);

	if (!(img->flags & IMG_KEY_NULL))
	{
		switch (key_kind)
		{
			case KEY_INT:
				put_zvarint(buf, DatumGetInt64(img->key));
				break;
			case KEY_UUID:
				appendBinaryStringInfo(buf, (char *) DatumGetUUIDP(img->key)->data,
									   UUID_LEN);
				break;
			case KEY_TEXT:
				{
					text	   *t = DatumGetTextPP(img->key);

					put_varint(buf, VARSIZE_ANY_EXHDR(t));
					appendBinaryStringInfo(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
					break;
				}
			default:
				elog(ERROR, "livekpi: unknown key kind %d", key_kind);
		}
	}

	if (kind == CHANGE_UNITS)
		return;

	if (!(img->flags & IMG_DAY1_SKIP))
		put_zvarint(buf, img->day1);
	if (kind == CHANGE_BOOKING && !(img->flags & IMG_DAY2_SKIP))
	{
		/* a stay is a few nights: the difference takes one byte */
		if (!(img->flags & IMG_DAY1_SKIP))
			put_zvarint(buf, (int64) img->day2 - (int64) img->day1);
		else
			put_zvarint(buf, img->day2);
	}
	if (!(img->flags & (IMG_AMOUNT_NULL | IMG_AMOUNT_ODD)))
	{
		/* the amount may be a packed (short-header) numeric straight from the row */
		Size		len = VARSIZE_ANY_EXHDR(img->amount);

		put_varint(buf, len);
		appendBinaryStringInfo(buf, VARDATA_ANY(img->amount), len);
	}
	if (kind == CHANGE_EXPENSE && !(img->flags & IMG_CATEGORY_NULL))
	{
		put_varint(buf, img->category_len);
		appendBinaryStringInfo(buf, img->category, img->category_len);
	}
}

/* ---- authentication ------------------------------------------------- */

/*
 * change_record_key
 *		The 128-bit SipHash key of this database's change records, derived
 *		once per backend.  The mock authentication nonce is 32 random bytes
 *		made by initdb, kept in pg_control (so the same on physical
 *		standbys, which decode nothing of their own but may be promoted),
 *		shown by no SQL function and never dumped.  Its first 16 bytes key
 *		SipHash over (label, database OID, its last 16 bytes); two labels
 *		give the two halves.  Nothing is stored, so there is nothing to
 *		rotate: a restore or a new cluster has no slot and rebuilds anyway.
 */
const SipKey *
change_record_key(void)
{
	static bool ready = false;
	static SipKey key;

	if (!ready)
	{
		const unsigned char *nonce = (const unsigned char *) GetMockAuthenticationNonce();
		SipKey		master;
		unsigned char input[1 + 4 + MOCK_AUTH_NONCE_LEN - 16];
		uint32		db = (uint32) MyDatabaseId;

		StaticAssertStmt(MOCK_AUTH_NONCE_LEN >= 32, "nonce too short for the key");
		master = lk_sipkey_from_bytes(nonce);
		input[1] = db & 0xff;
		input[2] = (db >> 8) & 0xff;
		input[3] = (db >> 16) & 0xff;
		input[4] = (db >> 24) & 0xff;
		memcpy(input + 5, nonce + 16, MOCK_AUTH_NONCE_LEN - 16);
		input[0] = 'L';
		key.k0 = lk_siphash(&master, input, sizeof(input));
		input[0] = 'R';
		key.k1 = lk_siphash(&master, input, sizeof(input));
		ready = true;
	}
	return &key;
}

/* The tag of a record body written by top-level transaction xid. */
static uint64
record_tag(TransactionId xid, const char *data, Size len)
{
	SipState	st;
	unsigned char x[4];

	x[0] = xid & 0xff;
	x[1] = (xid >> 8) & 0xff;
	x[2] = (xid >> 16) & 0xff;
	x[3] = (xid >> 24) & 0xff;
	lk_siphash_init(&st, change_record_key());
	lk_siphash_update(&st, x, sizeof(x));
	lk_siphash_update(&st, data, len);
	return lk_siphash_final(&st);
}

/*
 * change_sign
 *		Appends the tag to a complete record body in buf.  The writer passes
 *		GetTopTransactionId(): the decoder sees the record inside its
 *		top-level transaction, whatever subtransaction wrote it.
 */
void
change_sign(StringInfo buf, TransactionId toplevel_xid)
{
	uint64		tag = record_tag(toplevel_xid, buf->data, buf->len);
	char		b[CHANGE_TAG_LEN];
	int			i;

	for (i = 0; i < CHANGE_TAG_LEN; i++)
		b[i] = (char) ((tag >> (8 * i)) & 0xff);
	appendBinaryStringInfo(buf, b, CHANGE_TAG_LEN);
}

/*
 * change_verify
 *		Whether data (body and tag) was signed for toplevel_xid.  The body
 *		is data's first len - CHANGE_TAG_LEN bytes.  Compares in constant
 *		time, although a rejected record tells its forger nothing anyway.
 */
bool
change_verify(const char *data, Size len, TransactionId toplevel_xid)
{
	uint64		tag;
	uint8		diff = 0;
	Size		body;
	int			i;

	if (len < CHANGE_TAG_LEN || len > CHANGE_MAX_RECORD_SIZE)
		return false;
	body = len - CHANGE_TAG_LEN;
	tag = record_tag(toplevel_xid, data, body);
	for (i = 0; i < CHANGE_TAG_LEN; i++)
		diff |= (uint8) data[body + i] ^ (uint8) ((tag >> (8 * i)) & 0xff);
	return diff == 0;
}

/* ---- decoding ------------------------------------------------------- */

/*
 * A cursor over one record.  Every read checks the remaining length first;
 * the first failure sets why and makes every later read fail, so callers
 * may read on and test once.
 */
typedef struct Reader
{
	const char *p;
	const char *end;
	const char *why;			/* NULL while the record is well formed */
} Reader;

static bool
need(Reader *r, uint64 n)
{
	if (r->why != NULL)
		return false;
	if ((uint64) (r->end - r->p) < n)
	{
		r->why = "truncated change record";
		return false;
	}
	return true;
}

static void
fail(Reader *r, const char *why)
{
	if (r->why == NULL)
		r->why = why;
}

static uint8
get_byte(Reader *r)
{
	if (!need(r, 1))
		return 0;
	return (uint8) *r->p++;
}

/* A varint in its shortest form, at most 64 bits; anything else fails. */
static uint64
get_varint(Reader *r)
{
	uint64		v = 0;
	int			shift = 0;

	for (;;)
	{
		uint8		b = get_byte(r);

		if (r->why != NULL)
			return 0;
		if (shift == 63 && b > 1)
		{
			fail(r, "varint out of range in change record");
			return 0;
		}
		v |= (uint64) (b & 0x7f) << shift;
		if (!(b & 0x80))
		{
			if (b == 0 && shift > 0)
				fail(r, "overlong varint in change record");
			return v;
		}
		shift += 7;
	}
}

static int64
get_zvarint(Reader *r)
{
	uint64		z = get_varint(r);

	return (int64) (z >> 1) ^ -(int64) (z & 1);
}

/* A day number: must be a finite date, as the trigger writes only those. */
static DateADT
get_day(Reader *r, int64 v)
{
	if (v <= (int64) DATEVAL_NOBEGIN || v >= (int64) DATEVAL_NOEND)
	{
		fail(r, "day out of range in change record");
		return 0;
	}
	return (DateADT) v;
}

/* Which image flag bits each kind may carry; others are malformed. */
static uint8
allowed_flags(char kind)
{
	switch (kind)
	{
		case CHANGE_BOOKING:
			return IMG_KEY_NULL | IMG_DAY1_SKIP | IMG_DAY2_SKIP | IMG_AMOUNT_NULL |
				IMG_AMOUNT_ODD | IMG_CANCELLED | IMG_TOO_LONG;
		case CHANGE_EXPENSE:
			return IMG_KEY_NULL | IMG_DAY1_SKIP | IMG_AMOUNT_NULL | IMG_AMOUNT_ODD |
				IMG_CATEGORY_NULL | (0x3 << IMG_CLASS_SHIFT);
		default:
			return IMG_KEY_NULL;
	}
}

static void
decode_image(Reader *r, char kind, char key_kind, ChangeImage *img)
{
	memset(img, 0, sizeof(*img));
	img->flags = get_byte(r);
	if (img->flags & ~allowed_flags(kind))
		fail(r, "unknown image flags in change record");
	if ((img->flags & IMG_AMOUNT_NULL) && (img->flags & IMG_AMOUNT_ODD))
		fail(r, "contradictory amount flags in change record");
	if (kind == CHANGE_EXPENSE && change_expense_class(img) > EXPENSE_REJECTED)
		fail(r, "unknown expense class in change record");
	if (r->why != NULL)
		return;

	if (!(img->flags & IMG_KEY_NULL))
	{
		switch (key_kind)
		{
			case KEY_INT:
				img->key = Int64GetDatum(get_zvarint(r));
				break;
			case KEY_UUID:
				if (need(r, UUID_LEN))
				{
					pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));

					memcpy(u->data, r->p, UUID_LEN);
					r->p += UUID_LEN;
					img->key = UUIDPGetDatum(u);
				}
				break;
			case KEY_TEXT:
				{
					uint64		len = get_varint(r);

					if (need(r, len))
					{
						img->key = PointerGetDatum(cstring_to_text_with_len(r->p, (int) len));
						r->p += len;
					}
					break;
				}
		}
	}

	if (kind == CHANGE_UNITS)
		return;

	if (!(img->flags & IMG_DAY1_SKIP))
		img->day1 = get_day(r, get_zvarint(r));
	if (kind == CHANGE_BOOKING && !(img->flags & IMG_DAY2_SKIP))
	{
		int64		v = get_zvarint(r);

		/* |v| < 2^63 here, and day1 fits in 32 bits: no overflow */
		if (!(img->flags & IMG_DAY1_SKIP))
		{
			if (v > PG_INT32_MAX || v < PG_INT32_MIN)
				fail(r, "day out of range in change record");
			else
				v += img->day1;
		}
		img->day2 = get_day(r, v);
	}
	if (!(img->flags & (IMG_AMOUNT_NULL | IMG_AMOUNT_ODD)))
	{
		uint64		len = get_varint(r);

		/* the trigger writes only finite numerics, which have a header */
		if (len < sizeof(uint16))
			fail(r, "amount too short in change record");
		else if (need(r, len) && ((uint8) r->p[1] & 0xC0) == 0xC0)
			fail(r, "amount not finite in change record");
		if (need(r, len))
		{
			Numeric		n = palloc(VARHDRSZ + len);

			SET_VARSIZE(n, VARHDRSZ + len);
			memcpy(VARDATA(n), r->p, len);
			r->p += len;
			img->amount = n;
		}
	}
	if (kind == CHANGE_EXPENSE && !(img->flags & IMG_CATEGORY_NULL))
	{
		uint64		len = get_varint(r);

		if (need(r, len))
		{
			img->category = r->p;
			img->category_len = (int) len;
			r->p += len;
		}
	}
}

/*
 * change_decode_checked
 *		Decodes a record body (without its tag).  Returns false, with a
 *		reason in *why, for anything the trigger cannot have written:
 *		truncated or trailing bytes, unknown kinds or flags, non-canonical
 *		varints, days that are not finite dates.  Never raises an error.
 *		What an amount's numeric body holds is not checked here: numeric
 *		functions check it where it is used.
 */
bool
change_decode_checked(const char *data, Size len, Change *change,
					  const char **why)
{
	Reader		r = {data, data + len, NULL};
	uint8		images;
	uint64		relid;

	memset(change, 0, sizeof(*change));
	if (len > CHANGE_MAX_RECORD_SIZE)
		fail(&r, "change record too large");
	change->kind = (char) get_byte(&r);
	change->key_kind = (char) get_byte(&r);
	relid = get_varint(&r);
	images = get_byte(&r);
	if (relid > PG_UINT32_MAX)
		fail(&r, "relation OID out of range in change record");
	change->relid = (Oid) relid;
	if (images & ~3)
		fail(&r, "unknown image bits in change record");
	change->has_old = (images & 1) != 0;
	change->has_new = (images & 2) != 0;
	if (change->key_kind != KEY_INT && change->key_kind != KEY_UUID &&
		change->key_kind != KEY_TEXT)
		fail(&r, "unknown key kind in change record");

	switch (change->kind)
	{
		case CHANGE_BOOKING:
		case CHANGE_EXPENSE:
		case CHANGE_UNITS:
			if (!change->has_old && !change->has_new)
				fail(&r, "change record without images");
			if (change->has_old)
				decode_image(&r, change->kind, change->key_kind, &change->old);
			if (change->has_new)
				decode_image(&r, change->kind, change->key_kind, &change->new);
			break;
		case CHANGE_TRUNCATE:
		case CHANGE_REBUILD:
			if (images != 0)
				fail(&r, "images in a truncate or rebuild record");
			break;
		default:
			fail(&r, "unknown change kind in change record");
	}
	if (r.why == NULL && r.p != r.end)
		fail(&r, "trailing bytes in change record");
	if (why != NULL)
		*why = r.why;
	return r.why == NULL;
}

/*
 * change_decode
 *		For records the output plugin has already checked: a failure here is
 *		data corruption, an error.
 */
void
change_decode(const char *data, Size len, Change *change)
{
	const char *why;

	if (!change_decode_checked(data, len, change, &why))
		elog(ERROR, "livekpi: %s", why);
}

char *
change_key_to_cstring(char key_kind, Datum key)
{
	switch (key_kind)
	{
		case KEY_INT:
			return psprintf(INT64_FORMAT, DatumGetInt64(key));
		case KEY_UUID:
			return DatumGetCString(DirectFunctionCall1(uuid_out, key));
		case KEY_TEXT:
			return text_to_cstring(DatumGetTextPP(key));
	}
	elog(ERROR, "livekpi: unknown key kind %d", key_kind);
	return NULL;				/* keep compiler quiet */
}
