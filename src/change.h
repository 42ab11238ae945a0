/*-------------------------------------------------------------------------
 *
 * change.h
 *	  The change record: what the capture trigger puts in a transactional
 *	  logical-decoding message and what the decoder and the apply worker
 *	  read back.  One compact binary layout, kept small because every byte
 *	  is written to WAL once per captured row.
 *
 * Layout (integers little-endian, "varint" = unsigned LEB128):
 *	  kind:1 key_kind:1 relid:4 images:1 [old image] [new image]
 *	  image = flags:1 [key] [day1:4] [day2:4, bookings] [amount] [category]
 *	  key = zigzag varint (int) | 16 bytes (uuid) | varint length + bytes (text)
 *	  amount = varint length + numeric body (without varlena header)
 *	  category = varint length + bytes (expenses, when not NULL)
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
extern void change_decode(const char *data, Size len, Change *change);
extern char *change_key_to_cstring(char key_kind, Datum key);

#endif							/* LIVEKPI_CHANGE_H */
