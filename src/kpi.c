/*-------------------------------------------------------------------------
 *
 * kpi.c
 *	  The contribution rules of SPEC section 3 and the per-batch coalescing
 *	  of their results by (property, day) and (property, day, category).
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/kpi.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "kpi.h"

/* Hash keys point at data that lives in the batch's memory context. */
typedef struct DailyKey
{
	Datum		key;
	DateADT		day;
	const char *category;		/* expenses only; terminated */
} DailyKey;

typedef struct BookingEntry
{
	DailyKey	k;
	int64		nights;
	int64		arrivals;
	int64		cancelled;
	Numeric		revenue;
} BookingEntry;

typedef struct ExpenseEntry
{
	DailyKey	k;
	Numeric		amount[3];		/* indexed by ExpenseClass */
	int64		count;
} ExpenseEntry;

typedef struct UnitsEntry
{
	DailyKey	k;
} UnitsEntry;

/* dynahash's callbacks get no context: the batch being filled sets this. */
static char hashing_key_kind;

static uint32
key_hash(Datum key)
{
	switch (hashing_key_kind)
	{
		case KEY_INT:
			{
				int64		v = DatumGetInt64(key);

				return hash_bytes((const unsigned char *) &v, sizeof(v));
			}
		case KEY_UUID:
			return hash_bytes(DatumGetUUIDP(key)->data, UUID_LEN);
		default:
			{
				text	   *t = DatumGetTextPP(key);

				return hash_bytes((const unsigned char *) VARDATA_ANY(t),
								  VARSIZE_ANY_EXHDR(t));
			}
	}
}

static bool
key_equal(Datum a, Datum b)
{
	switch (hashing_key_kind)
	{
		case KEY_INT:
			return DatumGetInt64(a) == DatumGetInt64(b);
		case KEY_UUID:
			return memcmp(DatumGetUUIDP(a)->data, DatumGetUUIDP(b)->data, UUID_LEN) == 0;
		default:
			{
				text	   *ta = DatumGetTextPP(a);
				text	   *tb = DatumGetTextPP(b);

				return VARSIZE_ANY_EXHDR(ta) == VARSIZE_ANY_EXHDR(tb) &&
					memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), VARSIZE_ANY_EXHDR(ta)) == 0;
			}
	}
}

static uint32
daily_hash(const void *p, Size keysize)
{
	const DailyKey *k = p;
	uint32		h = key_hash(k->key);

	h = hash_combine(h, murmurhash32((uint32) k->day));
	if (k->category != NULL)
		h = hash_combine(h, hash_bytes((const unsigned char *) k->category,
									   strlen(k->category)));
	return h;
}

static int
daily_match(const void *p1, const void *p2, Size keysize)
{
	const DailyKey *a = p1;
	const DailyKey *b = p2;

	if (a->day != b->day || !key_equal(a->key, b->key))
		return 1;
	if ((a->category == NULL) != (b->category == NULL))
		return 1;
	if (a->category != NULL && strcmp(a->category, b->category) != 0)
		return 1;
	return 0;
}

/* The hash table stores the key struct; copy what it points at. */
static void *
daily_keycopy(void *dest, const void *src, Size keysize)
{
	memcpy(dest, src, sizeof(DailyKey));
	return dest;
}

static HTAB *
make_table(const char *name, Size entrysize, MemoryContext cxt)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(DailyKey);
	ctl.entrysize = entrysize;
	ctl.hash = daily_hash;
	ctl.match = daily_match;
	ctl.keycopy = daily_keycopy;
	ctl.hcxt = cxt;
	return hash_create(name, 1024, &ctl,
					   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_KEYCOPY | HASH_CONTEXT);
}

void
kpi_batch_init(KpiBatch *batch, char key_kind, MemoryContext context)
{
	memset(batch, 0, sizeof(*batch));
	batch->context = context;
	batch->key_kind = key_kind;
	batch->booking_daily = make_table("livekpi booking deltas", sizeof(BookingEntry), context);
	batch->expense_daily = make_table("livekpi expense deltas", sizeof(ExpenseEntry), context);
	batch->units_changed = make_table("livekpi units changes", sizeof(UnitsEntry), context);
}

/* Keys decoded from a message are copied so the message can go. */
static Datum
copy_key(char key_kind, Datum key)
{
	if (key_kind == KEY_INT)
		return key;
	if (key_kind == KEY_UUID)
	{
		pg_uuid_t  *u = palloc(sizeof(pg_uuid_t));

		memcpy(u, DatumGetUUIDP(key), sizeof(pg_uuid_t));
		return UUIDPGetDatum(u);
	}
	return PointerGetDatum(DatumGetTextPCopy(key));
}

static void *
lookup(KpiBatch *batch, HTAB *table, Datum key, DateADT day,
	   const char *category, int category_len, bool *found)
{
	DailyKey	k;
	void	   *entry;
	char	   *cat = NULL;

	if (category != NULL)
		cat = pnstrdup(category, category_len);
	k.key = key;
	k.day = day;
	k.category = cat;
	entry = hash_search(table, &k, HASH_ENTER, found);
	if (!*found)
	{
		DailyKey   *stored = (DailyKey *) entry;

		stored->key = copy_key(batch->key_kind, key);
	}
	else if (cat != NULL)
		pfree(cat);
	return entry;
}

static Numeric
numeric_zero(void)
{
	return int64_to_numeric(0);
}

static Numeric
add_signed(Numeric acc, Numeric value, int sign)
{
	return DatumGetNumeric(DirectFunctionCall2(sign > 0 ? numeric_add : numeric_sub,
											   NumericGetDatum(acc),
											   NumericGetDatum(value)));
}

static BookingEntry *
booking_entry(KpiBatch *batch, Datum key, DateADT day)
{
	bool		found;
	BookingEntry *e = lookup(batch, batch->booking_daily, key, day, NULL, 0, &found);

	if (!found)
	{
		e->nights = e->arrivals = e->cancelled = 0;
		e->revenue = numeric_zero();
	}
	return e;
}

/*
 * add_booking
 *		SPEC section 3 for one side of a booking change, with sign +1 (NEW)
 *		or -1 (OLD).  The nights' revenue always sums to the amount: every
 *		night but the last gets round(amount / n, 2), the last the rest.
 */
static void
add_booking(KpiBatch *batch, const ChangeImage *img, int sign)
{
	int64		n;
	Numeric		amount;
	BookingEntry *e;

	if (img->flags & (IMG_KEY_NULL | IMG_DAY1_SKIP | IMG_DAY2_SKIP | IMG_TOO_LONG))
	{
		batch->skipped++;
		return;
	}
	n = (int64) img->day2 - (int64) img->day1;

	if (img->flags & IMG_CANCELLED)
	{
		booking_entry(batch, img->key, img->day1)->cancelled += sign;
		return;
	}

	if (img->flags & IMG_AMOUNT_ODD)
		batch->skipped++;
	amount = img->amount ? img->amount : numeric_zero();

	e = booking_entry(batch, img->key, img->day1);
	e->arrivals += sign;
	if (n <= 0)
	{
		e->revenue = add_signed(e->revenue, amount, sign);
		return;
	}
	else
	{
		Numeric		base;
		Numeric		last;
		int64		i;

		base = DatumGetNumeric(DirectFunctionCall2(numeric_round,
												   DirectFunctionCall2(numeric_div,
																	   NumericGetDatum(amount),
																	   NumericGetDatum(int64_to_numeric(n))),
												   Int32GetDatum(2)));
		last = DatumGetNumeric(DirectFunctionCall2(numeric_sub,
												   NumericGetDatum(amount),
												   DirectFunctionCall2(numeric_mul,
																	   NumericGetDatum(base),
																	   NumericGetDatum(int64_to_numeric(n - 1)))));
		for (i = 0; i < n; i++)
		{
			e = booking_entry(batch, img->key, img->day1 + (DateADT) i);
			e->nights += sign;
			e->revenue = add_signed(e->revenue, i < n - 1 ? base : last, sign);
		}
	}
}

/* SPEC section 3 for one side of an expense change. */
static void
add_expense(KpiBatch *batch, const ChangeImage *img, int sign)
{
	static const char uncategorized[] = "uncategorized";
	const char *category = img->category;
	int			category_len = img->category_len;
	ExpenseEntry *e;
	bool		found;
	int			cls = change_expense_class(img);

	if (img->flags & (IMG_KEY_NULL | IMG_DAY1_SKIP))
	{
		batch->skipped++;
		return;
	}
	if (img->flags & IMG_CATEGORY_NULL)
	{
		category = uncategorized;
		category_len = sizeof(uncategorized) - 1;
	}
	if (img->flags & IMG_AMOUNT_ODD)
		batch->skipped++;
	if (cls > EXPENSE_REJECTED)
		elog(ERROR, "livekpi: malformed expense class %d", cls);

	e = lookup(batch, batch->expense_daily, img->key, img->day1,
			   category, category_len, &found);
	if (!found)
	{
		e->amount[0] = e->amount[1] = e->amount[2] = numeric_zero();
		e->count = 0;
	}
	e->count += sign;
	if (img->amount != NULL)
		e->amount[cls] = add_signed(e->amount[cls], img->amount, sign);
}

void
kpi_batch_add(KpiBatch *batch, const Change *change)
{
	MemoryContext old = MemoryContextSwitchTo(batch->context);

	if (change->key_kind != batch->key_kind)
		elog(ERROR, "livekpi: change record has key kind '%c', tables have '%c'",
			 change->key_kind, batch->key_kind);
	hashing_key_kind = batch->key_kind;

	switch (change->kind)
	{
		case CHANGE_BOOKING:
			if (change->has_old)
				add_booking(batch, &change->old, -1);
			if (change->has_new)
				add_booking(batch, &change->new, +1);
			batch->changes++;
			break;
		case CHANGE_EXPENSE:
			if (change->has_old)
				add_expense(batch, &change->old, -1);
			if (change->has_new)
				add_expense(batch, &change->new, +1);
			batch->changes++;
			break;
		case CHANGE_UNITS:
			{
				const ChangeImage *img = change->has_new ? &change->new : &change->old;
				bool		found;

				if (!(img->flags & IMG_KEY_NULL))
					(void) lookup(batch, batch->units_changed, img->key, 0, NULL, 0, &found);
				batch->changes++;
				break;
			}
		default:
			elog(ERROR, "livekpi: change kind '%c' cannot be applied", change->kind);
	}
	MemoryContextSwitchTo(old);
}

Oid
kpi_key_type(char key_kind)
{
	switch (key_kind)
	{
		case KEY_INT:
			return INT8OID;
		case KEY_UUID:
			return UUIDOID;
		default:
			return TEXTOID;
	}
}

static ArrayType *
make_array(Datum *values, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return construct_array(values, n, elemtype, typlen, typbyval, typalign);
}

static bool
numeric_is_zero(Numeric n)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
											 NumericGetDatum(numeric_zero()))) == 0;
}

/*
 * kpi_batch_arrays
 *		The coalesced deltas as parallel arrays; keys whose changes cancelled
 *		out within the batch are left out, so they write nothing.
 */
void
kpi_batch_arrays(KpiBatch *batch, KpiArrays *a)
{
	MemoryContext old = MemoryContextSwitchTo(batch->context);
	Oid			keytype = kpi_key_type(batch->key_kind);
	long		nb = hash_get_num_entries(batch->booking_daily);
	long		ne = hash_get_num_entries(batch->expense_daily);
	long		nu = hash_get_num_entries(batch->units_changed);
	Datum	   *key = palloc(sizeof(Datum) * Max(Max(nb, ne), Max(nu, 1)));
	Datum	   *day = palloc(sizeof(Datum) * Max(Max(nb, ne), 1));
	Datum	   *c1 = palloc(sizeof(Datum) * Max(Max(nb, ne), 1));
	Datum	   *c2 = palloc(sizeof(Datum) * Max(Max(nb, ne), 1));
	Datum	   *c3 = palloc(sizeof(Datum) * Max(Max(nb, ne), 1));
	Datum	   *c4 = palloc(sizeof(Datum) * Max(Max(nb, ne), 1));
	Datum	   *c5 = palloc(sizeof(Datum) * Max(Max(nb, ne), 1));
	HASH_SEQ_STATUS seq;
	int			n;

	memset(a, 0, sizeof(*a));

	n = 0;
	{
		BookingEntry *e;

		hash_seq_init(&seq, batch->booking_daily);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (e->nights == 0 && e->arrivals == 0 && e->cancelled == 0 &&
				numeric_is_zero(e->revenue))
				continue;
			key[n] = e->k.key;
			day[n] = DateADTGetDatum(e->k.day);
			c1[n] = Int64GetDatum(e->nights);
			c2[n] = NumericGetDatum(e->revenue);
			c3[n] = Int64GetDatum(e->arrivals);
			c4[n] = Int64GetDatum(e->cancelled);
			n++;
		}
	}
	a->nbooking = n;
	a->b_key = make_array(key, n, keytype);
	a->b_day = make_array(day, n, DATEOID);
	a->b_nights = make_array(c1, n, INT8OID);
	a->b_revenue = make_array(c2, n, NUMERICOID);
	a->b_arrivals = make_array(c3, n, INT8OID);
	a->b_cancelled = make_array(c4, n, INT8OID);

	n = 0;
	{
		ExpenseEntry *e;
		Datum	   *cat = palloc(sizeof(Datum) * Max(ne, 1));

		hash_seq_init(&seq, batch->expense_daily);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (e->count == 0 && numeric_is_zero(e->amount[0]) &&
				numeric_is_zero(e->amount[1]) && numeric_is_zero(e->amount[2]))
				continue;
			key[n] = e->k.key;
			day[n] = DateADTGetDatum(e->k.day);
			cat[n] = CStringGetTextDatum(e->k.category);
			c1[n] = NumericGetDatum(e->amount[EXPENSE_APPROVED]);
			c2[n] = NumericGetDatum(e->amount[EXPENSE_PENDING]);
			c3[n] = NumericGetDatum(e->amount[EXPENSE_REJECTED]);
			c5[n] = Int64GetDatum(e->count);
			n++;
		}
		a->nexpense = n;
		a->e_key = make_array(key, n, keytype);
		a->e_day = make_array(day, n, DATEOID);
		a->e_category = make_array(cat, n, TEXTOID);
		a->e_approved = make_array(c1, n, NUMERICOID);
		a->e_pending = make_array(c2, n, NUMERICOID);
		a->e_rejected = make_array(c3, n, NUMERICOID);
		a->e_count = make_array(c5, n, INT8OID);
	}

	n = 0;
	{
		UnitsEntry *e;

		hash_seq_init(&seq, batch->units_changed);
		while ((e = hash_seq_search(&seq)) != NULL)
			key[n++] = e->k.key;
		a->nunits = n;
		a->u_key = make_array(key, n, keytype);
	}
	MemoryContextSwitchTo(old);
}
