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

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "kpi.h"

/* Whether SPEC section 3 can use a day (see LIVEKPI_FIRST_DAY in kpi.h). */
bool
kpi_day_usable(DateADT day)
{
	return day >= LIVEKPI_FIRST_DAY && day <= LIVEKPI_LAST_DAY;
}

/*
 * kpi_month_of
 *		The first day of a day's month, with the error SQL's
 *		date_trunc('month', day)::date gives for a day past the timestamp
 *		range, so that the paths that compute months fail alike (and careful
 *		mode skips the day).
 */
DateADT
kpi_month_of(DateADT day)
{
	int			y,
				m,
				d;

	if (day >= (TIMESTAMP_END_JULIAN - POSTGRES_EPOCH_JDATE))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("date out of range for timestamp")));
	j2date(day + POSTGRES_EPOCH_JDATE, &y, &m, &d);
	return date2j(y, m, 1) - POSTGRES_EPOCH_JDATE;
}

/* A KPI count (bigint) plus another, with bigint's overflow error. */
Datum
kpi_add_count(Datum a, Datum b)
{
	int64		r;

	if (pg_add_s64_overflow(DatumGetInt64(a), DatumGetInt64(b), &r))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("bigint out of range")));
	return Int64GetDatum(r);
}

/* A KPI sum (numeric) plus another. */
Datum
kpi_add_sum(Datum a, Datum b)
{
	return DirectFunctionCall2(numeric_add, a, b);
}

/*
 * local_day_careful
 *		(value AT TIME ZONE zone)::date for a value so close to either end of
 *		the timestamp range that the zone's offset may carry it out: the
 *		conversion runs in a subtransaction, and "out of range" means the
 *		value is skipped.  Any other error (an unknown zone) is raised.
 */
static bool
local_day_careful(Datum value, text *timezone, DateADT *day)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = false;
	volatile DateADT result = 0;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		result = DatumGetDateADT(DirectFunctionCall1(timestamp_date,
													 DirectFunctionCall2(timestamptz_zone,
																		 PointerGetDatum(timezone),
																		 value)));
		ok = true;
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode != ERRCODE_DATETIME_VALUE_OUT_OF_RANGE)
			ReThrowError(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	*day = result;
	return ok;
}

/*
 * kpi_to_day
 *		A date, timestamp or timestamptz as the day SPEC section 3 counts it
 *		on, the way SQL's x::date and (x AT TIME ZONE zone)::date do it.
 *		Returns false, never an error, for a value that is not a usable day
 *		(infinite, or outside LIVEKPI_FIRST_DAY .. LIVEKPI_LAST_DAY).
 */
bool
kpi_to_day(Oid typid, Datum value, text *timezone, DateADT *day)
{
	/* No zone moves a time by a week (PostgreSQL allows at most 167 h). */
	const int64 margin = INT64CONST(8) * USECS_PER_DAY;
	DateADT		d;

	switch (typid)
	{
		case DATEOID:
			d = DatumGetDateADT(value);
			break;
		case TIMESTAMPOID:
			if (TIMESTAMP_NOT_FINITE(DatumGetTimestamp(value)))
				return false;
			d = DatumGetDateADT(DirectFunctionCall1(timestamp_date, value));
			break;
		case TIMESTAMPTZOID:
			{
				TimestampTz ts = DatumGetTimestampTz(value);

				if (TIMESTAMP_NOT_FINITE(ts))
					return false;
				if (ts < MIN_TIMESTAMP + margin || ts >= END_TIMESTAMP - margin)
				{
					if (!local_day_careful(value, timezone, &d))
						return false;
				}
				else
					d = DatumGetDateADT(DirectFunctionCall1(timestamp_date,
															DirectFunctionCall2(timestamptz_zone,
																				PointerGetDatum(timezone),
																				value)));
				break;
			}
		default:
			elog(ERROR, "livekpi: unsupported date type %u", typid);
	}
	if (!kpi_day_usable(d))
		return false;
	*day = d;
	return true;
}

/*
 * kpi_to_numeric
 *		An amount as a numeric.  A numeric value is returned as stored,
 *		packed header and all, to spare a copy per row; read it with
 *		VARDATA_ANY, or kpi_numeric_not_finite().
 */
Numeric
kpi_to_numeric(Oid typid, Datum value)
{
	switch (typid)
	{
		case NUMERICOID:
			return (Numeric) PG_DETOAST_DATUM_PACKED(value);
		case INT2OID:
			return DatumGetNumeric(DirectFunctionCall1(int2_numeric, value));
		case INT4OID:
			return DatumGetNumeric(DirectFunctionCall1(int4_numeric, value));
		case INT8OID:
			return DatumGetNumeric(DirectFunctionCall1(int8_numeric, value));
		case FLOAT4OID:
			return DatumGetNumeric(DirectFunctionCall1(float4_numeric, value));
		case FLOAT8OID:
			return DatumGetNumeric(DirectFunctionCall1(float8_numeric, value));
	}
	elog(ERROR, "livekpi: unsupported amount type %u", typid);
	return NULL;				/* keep compiler quiet */
}

/*
 * kpi_numeric_not_finite
 *		NaN and the infinities, for a numeric that may have a packed header.
 *		numeric_is_nan() wants an aligned, unpacked value; the first two
 *		bytes of the on-disk format say it as well: both top bits set marks
 *		the special values (NUMERIC_SPECIAL in numeric.c).
 */
bool
kpi_numeric_not_finite(Numeric num)
{
	uint16		header;

	if (VARSIZE_ANY_EXHDR(num) < sizeof(uint16))
		return false;
	memcpy(&header, VARDATA_ANY(num), sizeof(uint16));
	return (header & 0xC000) == 0xC000;
}

/*
 * kpi_key_usable
 *		Whether a (non-NULL) property key can be a KPI key: a text key longer
 *		than LIVEKPI_MAX_KEY_BYTES would not fit an index row.  The length is
 *		read without detoasting.
 */
bool
kpi_key_usable(char key_kind, Datum key)
{
	if (key_kind != KEY_TEXT)
		return true;
	return toast_raw_datum_size(key) - VARHDRSZ <= LIVEKPI_MAX_KEY_BYTES;
}

/* Bytes of the first LIVEKPI_MAX_CATEGORY_CHARS characters of a category. */
int
kpi_category_clip(const char *category, int len)
{
	if (len <= LIVEKPI_MAX_CATEGORY_CHARS)
		return len;
	return pg_mbcharcliplen(category, len, LIVEKPI_MAX_CATEGORY_CHARS);
}

static Numeric numeric_zero(void);

/*
 * kpi_booking_begin
 *		SPEC section 3 for one side of a booking: whether it counts, and if
 *		so the state kpi_booking_next() walks.  The nights' revenue always
 *		sums to the amount: every night but the last gets round(amount / n,
 *		2), the last the rest.  *amount_odd tells that a NaN or infinite
 *		amount counted as 0 (callers count it as skipped).  The key is the
 *		caller's to check (kpi_key_usable).
 */
bool
kpi_booking_begin(const ChangeImage *img, KpiBookingIter *it, bool *amount_odd)
{
	*amount_odd = false;
	if ((img->flags & (IMG_KEY_NULL | IMG_DAY1_SKIP | IMG_DAY2_SKIP | IMG_TOO_LONG)) ||
		!kpi_day_usable(img->day1) || !kpi_day_usable(img->day2))
		return false;

	memset(it, 0, sizeof(*it));
	it->day1 = img->day1;
	it->n = (int64) img->day2 - (int64) img->day1;
	it->cancelled = (img->flags & IMG_CANCELLED) != 0;
	if (it->cancelled)
		return true;

	*amount_odd = (img->flags & IMG_AMOUNT_ODD) != 0;
	it->amount = img->amount ? img->amount : numeric_zero();
	if (it->n >= 1)
	{
		it->base = DatumGetNumeric(DirectFunctionCall2(numeric_round,
													   DirectFunctionCall2(numeric_div,
																		   NumericGetDatum(it->amount),
																		   NumericGetDatum(int64_to_numeric(it->n))),
													   Int32GetDatum(2)));
		it->last = DatumGetNumeric(DirectFunctionCall2(numeric_sub,
													   NumericGetDatum(it->amount),
													   DirectFunctionCall2(numeric_mul,
																		   NumericGetDatum(it->base),
																		   NumericGetDatum(int64_to_numeric(it->n - 1)))));
	}
	return true;
}

/*
 * kpi_booking_next
 *		The next daily row of a booking begun with kpi_booking_begin(), or
 *		false when there are no more.  A cancelled booking gives one row (a
 *		cancelled arrival), a stay of n <= 0 nights one row (the arrival and
 *		the whole amount), a stay of n >= 1 nights one row per night, the
 *		first with the arrival.
 */
bool
kpi_booking_next(KpiBookingIter *it, KpiBookingRow *row)
{
	int64		rows = (it->cancelled || it->n <= 0) ? 1 : it->n;
	int64		i = it->next;

	if (i >= rows)
		return false;
	it->next++;
	row->day = it->day1 + (DateADT) i;
	if (it->cancelled)
	{
		row->nights = 0;
		row->revenue = NULL;
		row->arrivals = 0;
		row->cancelled = 1;
	}
	else if (it->n <= 0)
	{
		row->nights = 0;
		row->revenue = it->amount;
		row->arrivals = 1;
		row->cancelled = 0;
	}
	else
	{
		row->nights = 1;
		row->revenue = i < it->n - 1 ? it->base : it->last;
		row->arrivals = (i == 0) ? 1 : 0;
		row->cancelled = 0;
	}
	return true;
}

/* Hash keys point at data that lives in the batch's memory context. */
typedef struct DailyKey
{
	Datum		key;
	DateADT		day;
	const char *category;		/* expenses only; terminated */
} DailyKey;

/*
 * One coalesced key of a batch, stored in the hash table's own array (64
 * bytes), so that a lookup reads one place in memory: a bulk load looks a
 * key up for every night it adds.  The sums are those of a booking_daily,
 * an expense_daily or (none) a units key, by the table the entry is in.
 */
typedef struct DailyEntry
{
	DailyKey	k;
	uint32		hash;
	char		status;			/* simplehash's */
	union
	{
		struct
		{
			int64		nights;
			int64		arrivals;
			int64		cancelled;
			Numeric		revenue;
		}			b;
		struct
		{
			Numeric		amount[3];	/* indexed by ExpenseClass */
			int64		count;
		}			e;
	}			u;
} DailyEntry;

static uint32 daily_key_hash(const DailyKey *k);
static bool daily_key_equal(const DailyKey *a, const DailyKey *b);

#define SH_PREFIX		daily
#define SH_ELEMENT_TYPE	DailyEntry
#define SH_KEY_TYPE		DailyKey
#define SH_KEY			k
#define SH_HASH_KEY(tb, key)	daily_key_hash(&(key))
#define SH_EQUAL(tb, a, b)		daily_key_equal(&(a), &(b))
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a)		((a)->hash)
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* The hash functions get no context: the batch being filled sets this. */
static char hashing_key_kind;

static uint32
key_hash(Datum key)
{
	switch (hashing_key_kind)
	{
		case KEY_INT:
			{
				uint64		v = (uint64) DatumGetInt64(key);

				return hash_combine(murmurhash32((uint32) v), murmurhash32((uint32) (v >> 32)));
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
daily_key_hash(const DailyKey *k)
{
	uint32		h = key_hash(k->key);

	h = hash_combine(h, murmurhash32((uint32) k->day));
	if (k->category != NULL)
		h = hash_combine(h, hash_bytes((const unsigned char *) k->category,
									   strlen(k->category)));
	return h;
}

static bool
daily_key_equal(const DailyKey *a, const DailyKey *b)
{
	if (a->day != b->day || !key_equal(a->key, b->key))
		return false;
	if ((a->category == NULL) != (b->category == NULL))
		return false;
	return a->category == NULL || strcmp(a->category, b->category) == 0;
}

void
kpi_batch_init(KpiBatch *batch, char key_kind, MemoryContext context)
{
	memset(batch, 0, sizeof(*batch));
	batch->context = context;
	batch->key_kind = key_kind;
	/* small at first: most batches are a few changes, and they grow by doubling */
	batch->booking_daily = daily_create(context, 64, NULL);
	batch->expense_daily = daily_create(context, 16, NULL);
	batch->units_changed = daily_create(context, 8, NULL);
	batch->scratch = AllocSetContextCreate(context, "livekpi batch scratch",
										   ALLOCSET_SMALL_SIZES);
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

/*
 * lookup
 *		The entry of (key, day, category) in table, made when missing; valid
 *		until the next lookup in the same table (an insert may move them).
 */
static DailyEntry *
lookup(KpiBatch *batch, daily_hash *table, Datum key, DateADT day,
	   const char *category, int category_len, bool *found)
{
	DailyKey	k;
	DailyEntry *entry;

	k.key = key;
	k.day = day;
	k.category = category != NULL ? pnstrdup(category, category_len) : NULL;
	entry = daily_insert(table, k, found);
	if (!*found)
	{
		MemoryContext old = MemoryContextSwitchTo(batch->context);

		/* what the entry keeps lives as long as the batch; the rest is scratch */
		entry->k.key = copy_key(batch->key_kind, key);
		if (category != NULL)
			entry->k.category = pstrdup(k.category);
		memset(&entry->u, 0, sizeof(entry->u));
		MemoryContextSwitchTo(old);
	}
	return entry;
}

static Numeric
numeric_zero(void)
{
	return int64_to_numeric(0);
}

/* A zero that lives as long as the batch. */
static Numeric
batch_zero(KpiBatch *batch)
{
	MemoryContext old = MemoryContextSwitchTo(batch->context);
	Numeric		z = numeric_zero();

	MemoryContextSwitchTo(old);
	return z;
}

/*
 * add_signed
 *		acc +/- value, kept in the batch's memory; the old sum is freed, so
 *		that a batch's memory is one sum per key however many changes add
 *		to it (the arithmetic itself runs in the scratch context).  A new
 *		key's first sum (acc NULL) is value itself, or its negation: what
 *		0 +/- value gives, without the addition.
 */
static Numeric
add_signed(KpiBatch *batch, Numeric acc, Numeric value, int sign)
{
	Numeric		sum;
	Numeric		kept;

	if (acc == NULL)
		sum = sign > 0 ? (Numeric) PG_DETOAST_DATUM(NumericGetDatum(value)) :
			DatumGetNumeric(DirectFunctionCall1(numeric_uminus, NumericGetDatum(value)));
	else
		sum = DatumGetNumeric(DirectFunctionCall2(sign > 0 ? numeric_add : numeric_sub,
												  NumericGetDatum(acc),
												  NumericGetDatum(value)));
	kept = MemoryContextAlloc(batch->context, VARSIZE(sum));
	memcpy(kept, sum, VARSIZE(sum));
	if (acc != NULL)
		pfree(acc);
	return kept;
}

/*
 * add_booking
 *		SPEC section 3 for one side of a booking change, with sign +1 (NEW)
 *		or -1 (OLD): the rows kpi_booking_next() gives, added to the batch.
 */
static void
add_booking(KpiBatch *batch, const ChangeImage *img, int sign)
{
	KpiBookingIter it;
	KpiBookingRow row;
	bool		amount_odd;

	if (!kpi_booking_begin(img, &it, &amount_odd) ||
		!kpi_key_usable(batch->key_kind, img->key))
	{
		batch->skipped++;
		return;
	}
	if (amount_odd)
		batch->skipped++;
	while (kpi_booking_next(&it, &row))
	{
		bool		found;
		DailyEntry *e = lookup(batch, batch->booking_daily, img->key, row.day, NULL, 0, &found);

		e->u.b.nights += sign * row.nights;
		e->u.b.arrivals += sign * row.arrivals;
		e->u.b.cancelled += sign * row.cancelled;
		if (row.revenue != NULL)
			e->u.b.revenue = add_signed(batch, e->u.b.revenue, row.revenue, sign);
		else if (e->u.b.revenue == NULL)
			e->u.b.revenue = batch_zero(batch);
	}
}

/* SPEC section 3 for one side of an expense change. */
static void
add_expense(KpiBatch *batch, const ChangeImage *img, int sign)
{
	static const char uncategorized[] = "uncategorized";
	const char *category = img->category;
	int			category_len = img->category_len;
	DailyEntry *e;
	bool		found;
	int			i;
	int			cls = change_expense_class(img);

	if ((img->flags & (IMG_KEY_NULL | IMG_DAY1_SKIP)) || !kpi_day_usable(img->day1) ||
		!kpi_key_usable(batch->key_kind, img->key))
	{
		batch->skipped++;
		return;
	}
	if (img->flags & IMG_CATEGORY_NULL)
	{
		category = uncategorized;
		category_len = sizeof(uncategorized) - 1;
	}
	else
		category_len = kpi_category_clip(category, category_len);
	if (img->flags & IMG_AMOUNT_ODD)
		batch->skipped++;
	if (cls > EXPENSE_REJECTED)
		elog(ERROR, "livekpi: malformed expense class %d", cls);

	e = lookup(batch, batch->expense_daily, img->key, img->day1,
			   category, category_len, &found);
	e->u.e.count += sign;
	if (img->amount != NULL)
		e->u.e.amount[cls] = add_signed(batch, e->u.e.amount[cls], img->amount, sign);
	for (i = 0; i < lengthof(e->u.e.amount); i++)
		if (e->u.e.amount[i] == NULL)
			e->u.e.amount[i] = batch_zero(batch);
}

/*
 * kpi_batch_add
 *		Adds one change to the batch.  Its temporaries (the booking's
 *		per-night amounts, sums before they are kept) go to the scratch
 *		context, reset before returning: the batch grows with the keys it
 *		touches, not with the changes it reads (docs/internals.md, "The
 *		apply path").
 */
void
kpi_batch_add(KpiBatch *batch, const Change *change)
{
	MemoryContext old = MemoryContextSwitchTo(batch->scratch);

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
	MemoryContextReset(batch->scratch);
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

static bool
numeric_is_zero(Numeric n)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
											 NumericGetDatum(numeric_zero()))) == 0;
}

/*
 * Columns of KpiArrays for n rows each (never a zero-size palloc); cols
 * ends with NULL.
 */
static void
datum_columns(long n, Datum **const *cols)
{
	for (; *cols != NULL; cols++)
		**cols = palloc(sizeof(Datum) * Max(n, 1));
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
	long		nb = batch->booking_daily->members;
	long		ne = batch->expense_daily->members;
	long		nu = batch->units_changed->members;
	daily_iterator iter;
	DailyEntry *e;
	int			n;

	memset(a, 0, sizeof(*a));

	datum_columns(nb, (Datum **const[]) {&a->b_key, &a->b_day, &a->b_nights, &a->b_revenue,
		&a->b_arrivals, &a->b_cancelled, NULL});
	n = 0;
	daily_start_iterate(batch->booking_daily, &iter);
	while ((e = daily_iterate(batch->booking_daily, &iter)) != NULL)
	{
		if (e->u.b.nights == 0 && e->u.b.arrivals == 0 && e->u.b.cancelled == 0 &&
			numeric_is_zero(e->u.b.revenue))
			continue;
		a->b_key[n] = e->k.key;
		a->b_day[n] = DateADTGetDatum(e->k.day);
		a->b_nights[n] = Int64GetDatum(e->u.b.nights);
		a->b_revenue[n] = NumericGetDatum(e->u.b.revenue);
		a->b_arrivals[n] = Int64GetDatum(e->u.b.arrivals);
		a->b_cancelled[n] = Int64GetDatum(e->u.b.cancelled);
		n++;
	}
	a->nbooking = n;

	datum_columns(ne, (Datum **const[]) {&a->e_key, &a->e_day, &a->e_category, &a->e_approved,
		&a->e_pending, &a->e_rejected, &a->e_count, NULL});
	n = 0;
	daily_start_iterate(batch->expense_daily, &iter);
	while ((e = daily_iterate(batch->expense_daily, &iter)) != NULL)
	{
		if (e->u.e.count == 0 && numeric_is_zero(e->u.e.amount[0]) &&
			numeric_is_zero(e->u.e.amount[1]) && numeric_is_zero(e->u.e.amount[2]))
			continue;
		a->e_key[n] = e->k.key;
		a->e_day[n] = DateADTGetDatum(e->k.day);
		a->e_category[n] = CStringGetTextDatum(e->k.category);
		a->e_approved[n] = NumericGetDatum(e->u.e.amount[EXPENSE_APPROVED]);
		a->e_pending[n] = NumericGetDatum(e->u.e.amount[EXPENSE_PENDING]);
		a->e_rejected[n] = NumericGetDatum(e->u.e.amount[EXPENSE_REJECTED]);
		a->e_count[n] = Int64GetDatum(e->u.e.count);
		n++;
	}
	a->nexpense = n;

	datum_columns(nu, (Datum **const[]) {&a->u_key, NULL});
	n = 0;
	daily_start_iterate(batch->units_changed, &iter);
	while ((e = daily_iterate(batch->units_changed, &iter)) != NULL)
		a->u_key[n++] = e->k.key;
	a->nunits = n;
	MemoryContextSwitchTo(old);
}
