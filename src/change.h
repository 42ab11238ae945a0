/*-------------------------------------------------------------------------
 *
 * change.h
 *	  The change record: what the capture trigger puts in a transactional
 *	  logical-decoding message and what the decoder and the apply worker
 *	  read back.  One compact binary layout, kept small because every byte
 *	  is written to WAL once per captured row.
 *
 * Layout of version 1.1 ("varint" = unsigned LEB128, shortest form only;
 * "zvarint" = zigzag-mapped signed varint; "tag" little-endian):
 *	  kind:1 key_kind:1 relid:varint images:1 [old image] [new image] tag:8
 *	  image = flags:1 [key] [day1] [day2, bookings] [amount] [category]
 *	  key = zvarint (int) | 16 bytes (uuid) | varint length + bytes (text)
 *	  day1 = zvarint days since 2000-01-01
 *	  day2 = zvarint day2 - day1 when day1 is present, else zvarint day2
 *	  amount = varint length + numeric body (without varlena header)
 *	  category = varint length + bytes (expenses, when not NULL)
 *	  tag = SipHash-2-4(record key, top-level xid:4 || everything before tag)
 *
 * The tag authenticates the record: the key is derived from the cluster's
 * secret mock-authentication nonce and the database OID (change_record_key),
 * which no SQL function exposes, so only livekpi's own C code (the capture
 * trigger and the rebuild marker) can make a record the output plugin
 * accepts; covering the top-level xid makes a record copied into another
 * transaction fail too.  See docs/internals.md, "Change records".
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/change.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef LIVEKPI_CHANGE_H
#define LIVEKPI_CHANGE_H

#include "lib/stringinfo.h"
#include "utils/date.h"
#include "utils/numeric.h"

#include "siphash.h"

/*
 * The largest record the output plugin accepts, tag included.  A legitimate
 * record stays far below it: two numeric amounts (at most ~74 kB each), a
 * category clipped to LIVEKPI_MAX_CATEGORY_CHARS (kpi.h) and a property key; only a
 * text key of about a megabyte, which no KPI table could index anyway, can
 * make one longer.  Bounds the memory a forged message can make the decoder
 * and the apply worker spend.
 */
#define CHANGE_MAX_RECORD_SIZE	(1024 * 1024)

/* bytes of the authentication tag at the end of every record */
#define CHANGE_TAG_LEN		8

/*
 * A category counts under its first 200 characters (SPEC section 2); the
 * trigger clips it before it is written, which also keeps records small.
 */

/* change kinds */
#define CHANGE_BOOKING		'B'
#define CHANGE_EXPENSE		'E'
#define CHANGE_TRUNCATE		'T'
#define CHANGE_UNITS		'U' /* livekpi.properties.units changed */
#define CHANGE_REBUILD		'R' /* rebuild marker inside the rebuilding xact */

/* property key kinds: the one key type all tracked tables share */
#define KEY_INT				'i'
#define KEY_UUID			'u'
#define KEY_TEXT			't'

/* image flags */
#define IMG_KEY_NULL		0x01
#define IMG_DAY1_SKIP		0x02	/* NULL or infinite */
#define IMG_DAY2_SKIP		0x04	/* NULL or infinite (bookings) */
#define IMG_AMOUNT_NULL		0x08
#define IMG_AMOUNT_ODD		0x10	/* NaN or infinite: counts as 0 */
#define IMG_CANCELLED		0x20	/* bookings */
#define IMG_TOO_LONG		0x40	/* bookings: more than max_stay_nights */
#define IMG_CATEGORY_NULL	0x20	/* expenses */
#define IMG_CLASS_SHIFT		6		/* expenses: two bits of ExpenseClass */

typedef enum ExpenseClass
{
	EXPENSE_APPROVED = 0,
	EXPENSE_PENDING = 1,
	EXPENSE_REJECTED = 2
} ExpenseClass;

/* One side (OLD or NEW) of a captured row, already projected and classified. */
typedef struct ChangeImage
{
	uint8		flags;
	Datum		key;			/* int64, pg_uuid_t * or text * */
	DateADT		day1;			/* check-in, or the expense date */
	DateADT		day2;			/* check-out */
	Numeric		amount;			/* NULL when NULL or odd */
	const char *category;		/* not terminated; NULL when NULL */
	int			category_len;
} ChangeImage;

typedef struct Change
{
	char		kind;
	char		key_kind;
	Oid			relid;			/* tracked (root) table */
	bool		has_old;
	bool		has_new;
	ChangeImage old;
	ChangeImage new;
} Change;

static inline ExpenseClass
change_expense_class(const ChangeImage *img)
{
	return (ExpenseClass) ((img->flags >> IMG_CLASS_SHIFT) & 0x3);
}

extern void change_encode_header(StringInfo buf, char kind, char key_kind,
								 Oid relid, bool has_old, bool has_new);
extern void change_encode_image(StringInfo buf, char kind, char key_kind,
								const ChangeImage *img);
extern void change_sign(StringInfo buf, TransactionId toplevel_xid);
extern bool change_verify(const char *data, Size len, TransactionId toplevel_xid);
extern const SipKey *change_record_key(void);
extern bool change_decode_checked(const char *data, Size len, Change *change,
								  const char **why);
extern void change_decode(const char *data, Size len, Change *change);
extern char *change_key_to_cstring(char key_kind, Datum key);

#endif							/* LIVEKPI_CHANGE_H */
