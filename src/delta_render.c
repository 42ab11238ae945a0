/*-------------------------------------------------------------------------
 *
 * delta_render.c
 *	  The rows of delta_log as clients get them.  delta_log stores each
 *	  view row without the five columns the views compute from the others
 *	  (occupancy, adr, revpar, cancellation_rate, noi of property_kpis and
 *	  portfolio_kpis): those are ratios and a difference of stored values,
 *	  they are a third of such a row's bytes, and the apply worker would
 *	  compute them for every batch whether or not a client ever reads it.
 *	  livekpi._delta_render() puts them back, computed exactly as the view
 *	  definitions in sql/parts/10_core.sql (_install_key_type) compute them
 *	  (the same numeric division, round and subtraction on the same values),
 *	  so that a rendered row equals to_jsonb of the view row in SQL.  The
 *	  push worker calls it in the query that reads delta_log, for the views
 *	  its live clients need only; livekpi.delta_rows() calls it for users.
 *
 * Copyright (c) 2026, livekpi authors
 *
 * src/delta_render.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "apply_delta.h"

/* The columns a stored row of property_kpis or portfolio_kpis leaves out. */
static const char *const computed_columns[] = {
	"occupancy", "adr", "revpar", "cancellation_rate", "noi"
};

bool
delta_column_is_computed(const char *name, int len)
{
	for (int i = 0; i < lengthof(computed_columns); i++)
		if (strlen(computed_columns[i]) == len &&
			memcmp(computed_columns[i], name, len) == 0)
			return true;
	return false;
}

bool
delta_view_has_computed_columns(const char *view, int len)
{
	return (len == 13 && memcmp(view, "property_kpis", 13) == 0) ||
		(len == 14 && memcmp(view, "portfolio_kpis", 14) == 0);
}

/*
 * stored_numeric
 *		A number column of the stored row; NULL for a JSON null.  A missing
 *		or non-numeric column means the row was not written by the apply
 *		worker: that is an error, not a figure.
 */
static Numeric
stored_numeric(Jsonb *row, const char *key)
{
	JsonbValue	v;

	if (getKeyJsonValueFromContainer(&row->root, key, strlen(key), &v) == NULL ||
		(v.type != jbvNumeric && v.type != jbvNull))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("livekpi.delta_log row has no number \"%s\"", key),
				 errdetail("Row: %s.", JsonbToCString(NULL, &row->root, VARSIZE(row))),
				 errhint("Rows of delta_log are written by the apply worker only.")));
	return v.type == jbvNull ? NULL : v.val.numeric;
}

/* round(num / nullif(den, 0), scale); NULL when den is NULL or 0 */
static Numeric
ratio(Numeric num, Numeric den, int scale)
{
	Datum		zero = DirectFunctionCall1(int4_numeric, Int32GetDatum(0));

	if (num == NULL || den == NULL ||
		DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(den), zero)))
		return NULL;
	return DatumGetNumeric(DirectFunctionCall2(numeric_round,
											   DirectFunctionCall2(numeric_div,
																   NumericGetDatum(num),
																   NumericGetDatum(den)),
											   Int32GetDatum(scale)));
}

static void
push_number(JsonbParseState **st, const char *key, Numeric n)
{
	JsonbValue	k;
	JsonbValue	v;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	(void) pushJsonbValue(st, WJB_KEY, &k);
	if (n == NULL)
		v.type = jbvNull;
	else
	{
		v.type = jbvNumeric;
		v.val.numeric = n;
	}
	(void) pushJsonbValue(st, WJB_VALUE, &v);
}

/*
 * delta_render_row
 *		The view row of a stored row: the stored columns as they are, and
 *		the computed ones (any stored under those names are replaced, so a
 *		row of the old format renders the same).
 */
Jsonb *
delta_render_row(const char *view, int view_len, Jsonb *row)
{
	Numeric		nights,
				available,
				revenue,
				arrivals,
				cancelled,
				approved,
				attempts;
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	JsonbValue *res;

	if (!delta_view_has_computed_columns(view, view_len) ||
		!JB_ROOT_IS_OBJECT(row) || JB_ROOT_IS_SCALAR(row))
		return row;

	nights = stored_numeric(row, "nights_sold");
	available = stored_numeric(row, "available_nights");
	revenue = stored_numeric(row, "room_revenue");
	arrivals = stored_numeric(row, "arrivals");
	cancelled = stored_numeric(row, "cancelled_arrivals");
	approved = stored_numeric(row, "approved_expenses");
	attempts = (arrivals == NULL || cancelled == NULL) ? NULL :
		DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(arrivals),
											NumericGetDatum(cancelled)));

	(void) pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	it = JsonbIteratorInit(&row->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (delta_column_is_computed(v.val.string.val, v.val.string.len))
		{
			(void) JsonbIteratorNext(&it, &v, true);	/* its value */
			continue;
		}
		(void) pushJsonbValue(&st, WJB_KEY, &v);
		tok = JsonbIteratorNext(&it, &v, true);
		Assert(tok == WJB_VALUE);
		(void) pushJsonbValue(&st, WJB_VALUE, &v);
	}
	push_number(&st, "occupancy", ratio(nights, available, 6));
	push_number(&st, "adr", ratio(revenue, nights, 2));
	push_number(&st, "revpar", ratio(revenue, available, 2));
	push_number(&st, "cancellation_rate", ratio(cancelled, attempts, 6));
	push_number(&st, "noi", (revenue == NULL || approved == NULL) ? NULL :
				DatumGetNumeric(DirectFunctionCall2(numeric_sub, NumericGetDatum(revenue),
													NumericGetDatum(approved))));
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * livekpi._delta_render(view text, row jsonb) returns jsonb
 *		See delta_render_row.  Strict and immutable: the result depends on
 *		its arguments only.
 */
PG_FUNCTION_INFO_V1(livekpi_delta_render);
Datum
livekpi_delta_render(PG_FUNCTION_ARGS)
{
	text	   *view = PG_GETARG_TEXT_PP(0);
	Jsonb	   *row = PG_GETARG_JSONB_P(1);

	PG_RETURN_JSONB_P(delta_render_row(VARDATA_ANY(view), VARSIZE_ANY_EXHDR(view), row));
}
