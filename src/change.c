/*-------------------------------------------------------------------------
 *
 * change.c
 *	  Encoding and decoding of the change record described in change.h.
 *	  Decoding allocates in the current memory context and points into the
 *	  message where it can; the caller keeps the message alive.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/change.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

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

static void
put_int32(StringInfo buf, int32 v)
{
	uint32		u = (uint32) v;
	char		b[4];

	b[0] = u & 0xff;
	b[1] = (u >> 8) & 0xff;
	b[2] = (u >> 16) & 0xff;
	b[3] = (u >> 24) & 0xff;
	appendBinaryStringInfo(buf, b, 4);
}

void
change_encode_header(StringInfo buf, char kind, char key_kind, Oid relid,
					 bool has_old, bool has_new)
{
	appendStringInfoCharMacro(buf, kind);
	appendStringInfoCharMacro(buf, key_kind);
	put_int32(buf, (int32) relid);
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
				{
					int64		v = DatumGetInt64(img->key);

					/* zigzag, so that small negative keys stay small */
					put_varint(buf, ((uint64) v << 1) ^ (uint64) (v >> 63));
					break;
				}
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
		put_int32(buf, img->day1);
	if (kind == CHANGE_BOOKING && !(img->flags & IMG_DAY2_SKIP))
		put_int32(buf, img->day2);
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

/* A cursor over one message; running past its end is data corruption. */
typedef struct Reader
{
	const char *p;
	const char *end;
} Reader;

static void
need(Reader *r, Size n)
{
	if ((Size) (r->end - r->p) < n)
		elog(ERROR, "livekpi: truncated change record");
}

static uint8
get_byte(Reader *r)
{
	need(r, 1);
	return (uint8) *r->p++;
}

static int32
get_int32(Reader *r)
{
	const unsigned char *b;
	uint32		u;

	need(r, 4);
	b = (const unsigned char *) r->p;
	u = (uint32) b[0] | ((uint32) b[1] << 8) | ((uint32) b[2] << 16) | ((uint32) b[3] << 24);
	r->p += 4;
	return (int32) u;
}

static uint64
get_varint(Reader *r)
{
	uint64		v = 0;
	int			shift = 0;

	for (;;)
	{
		uint8		b = get_byte(r);

		v |= (uint64) (b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
		shift += 7;
		if (shift > 63)
			elog(ERROR, "livekpi: malformed varint in change record");
	}
}

static void
decode_image(Reader *r, char kind, char key_kind, ChangeImage *img)
{
	memset(img, 0, sizeof(*img));
	img->flags = get_byte(r);

	if (!(img->flags & IMG_KEY_NULL))
	{
		switch (key_kind)
		{
			case KEY_INT:
				{
					uint64		z = get_varint(r);

					img->key = Int64GetDatum((int64) (z >> 1) ^ -(int64) (z & 1));
					break;
				}
			case KEY_UUID:
				{
					pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));

					need(r, UUID_LEN);
					memcpy(u->data, r->p, UUID_LEN);
					r->p += UUID_LEN;
					img->key = UUIDPGetDatum(u);
					break;
				}
			case KEY_TEXT:
				{
					uint64		len = get_varint(r);

					need(r, len);
					img->key = PointerGetDatum(cstring_to_text_with_len(r->p, len));
					r->p += len;
					break;
				}
			default:
				elog(ERROR, "livekpi: unknown key kind %d", key_kind);
		}
	}

	if (kind == CHANGE_UNITS)
		return;

	if (!(img->flags & IMG_DAY1_SKIP))
		img->day1 = get_int32(r);
	if (kind == CHANGE_BOOKING && !(img->flags & IMG_DAY2_SKIP))
		img->day2 = get_int32(r);
	if (!(img->flags & (IMG_AMOUNT_NULL | IMG_AMOUNT_ODD)))
	{
		uint64		len = get_varint(r);
		Numeric		n;

		need(r, len);
		n = palloc(VARHDRSZ + len);
		SET_VARSIZE(n, VARHDRSZ + len);
		memcpy(VARDATA(n), r->p, len);
		r->p += len;
		img->amount = n;
	}
	if (kind == CHANGE_EXPENSE && !(img->flags & IMG_CATEGORY_NULL))
	{
		uint64		len = get_varint(r);

		need(r, len);
		img->category = r->p;
		img->category_len = (int) len;
		r->p += len;
	}
}

void
change_decode(const char *data, Size len, Change *change)
{
	Reader		r = {data, data + len};
	uint8		images;

	memset(change, 0, sizeof(*change));
	change->kind = (char) get_byte(&r);
	change->key_kind = (char) get_byte(&r);
	change->relid = (Oid) get_int32(&r);
	images = get_byte(&r);
	change->has_old = (images & 1) != 0;
	change->has_new = (images & 2) != 0;

	switch (change->kind)
	{
		case CHANGE_BOOKING:
		case CHANGE_EXPENSE:
		case CHANGE_UNITS:
			if (change->has_old)
				decode_image(&r, change->kind, change->key_kind, &change->old);
			if (change->has_new)
				decode_image(&r, change->kind, change->key_kind, &change->new);
			break;
		case CHANGE_TRUNCATE:
		case CHANGE_REBUILD:
			break;
		default:
			elog(ERROR, "livekpi: unknown change kind %d", change->kind);
	}
	if (r.p != r.end)
		elog(ERROR, "livekpi: trailing bytes in change record");
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
