/*
 * livekpi.js, exact KPI arithmetic: sums and ratios over the rows the
 * server sends, computed the way SQL computes them (docs/kpis.md), never in
 * floating point.  Amounts are numeric with 2 decimals and counts are
 * integers: both become BigInt in their smallest unit (cents), sums are
 * exact, and each ratio is rounded half away from zero, as PostgreSQL's
 * round(numeric, n) does: occupancy and cancellation rate to 6 decimals,
 * ADR and RevPAR to 2.  Results are handed back as JavaScript numbers
 * parsed from the exact decimal text, i.e. the same number JSON.parse gives
 * for the SQL value.  Pure; tested in node (test/js/kpimath.test.mjs).
 */

const DEC = /^([+-])?(\d*)(?:\.(\d*))?(?:e([+-]?\d+))?$/i;

/**
 * toScaled(v, scale): v (a number, a decimal string, null) as a BigInt of
 * units of 10^-scale; null and '' are 0.  More decimals than scale are
 * rounded half away from zero.
 */
export function toScaled(v, scale) {
	if (v === null || v === undefined || v === '')
		return 0n;
	if (typeof v === 'bigint')
		return v * 10n ** BigInt(scale);
	const s = typeof v === 'number' ? numberText(v) : String(v).trim();
	const m = DEC.exec(s);
	if (!m || (m[2] === '' && (m[3] === undefined || m[3] === '')))
		throw new Error(`kpimath: not a decimal: ${s}`);
	let digits = (m[2] || '') + (m[3] || '');
	let exp = Number(m[4] || 0) - (m[3] || '').length + scale;	/* value = digits × 10^exp */
	let n;
	if (exp >= 0) {
		n = BigInt(digits || '0') * 10n ** BigInt(exp);
	} else {
		const cut = -exp;
		if (digits.length <= cut)
			digits = '0'.repeat(cut - digits.length + 1) + digits;
		const keep = digits.slice(0, digits.length - cut);
		const rest = digits.slice(digits.length - cut);
		n = BigInt(keep || '0');
		if (rest[0] >= '5')
			n += 1n;	/* half away from zero (the sign comes after) */
	}
	return m[1] === '-' ? -n : n;
}

/* A finite number's shortest round-trip text (what JSON.stringify writes). */
function numberText(x) {
	if (!Number.isFinite(x))
		throw new Error(`kpimath: not a finite number: ${x}`);
	return String(x);
}

/** The decimal text of a scaled BigInt: fromText(123456n, 2) is "1234.56". */
export function scaledText(n, scale) {
	const neg = n < 0n;
	let digits = (neg ? -n : n).toString();
	if (scale === 0)
		return (neg ? '-' : '') + digits;
	if (digits.length <= scale)
		digits = '0'.repeat(scale - digits.length + 1) + digits;
	return (neg ? '-' : '') + digits.slice(0, -scale) + '.' + digits.slice(-scale);
}

/** A scaled BigInt as the number JSON.parse would give for its decimal text. */
export function scaledNumber(n, scale) {
	return Number(scaledText(n, scale));
}

/**
 * roundDiv(num, den, scale): num / den rounded half away from zero to
 * `scale` decimals, as a BigInt of units of 10^-scale.  null when den is 0
 * (SQL's ratios are NULL then).
 */
export function roundDiv(num, den, scale) {
	if (den === 0n)
		return null;
	if (den < 0n) {
		num = -num;
		den = -den;
	}
	const n = num * 10n ** BigInt(scale);
	let q = n / den;
	const r = n % den;
	if (2n * (r < 0n ? -r : r) >= den)
		q += n < 0n ? -1n : 1n;
	return q;
}

/** Sum of a field over rows, exactly, as a scaled BigInt. */
export function sumScaled(rows, field, scale) {
	let s = 0n;
	for (const r of rows)
		s += toScaled(r?.[field], scale);
	return s;
}

const MONEY = 2;

/* The figures that are summed, and their scale. */
export const SUMMED = Object.freeze({
	available_nights: 0, nights_sold: 0, arrivals: 0, cancelled_arrivals: 0,
	room_revenue: MONEY, approved_expenses: MONEY, pending_expenses: MONEY,
});

/**
 * The ratios of a set of sums (scaled BigInts as SUMMED lists them), as
 * numbers or null: occupancy, adr, revpar, cancellation_rate, noi.
 */
export function ratios(s) {
	const n = (v, scale) => (v === null ? null : scaledNumber(v, scale));
	return {
		occupancy: n(roundDiv(s.nights_sold, s.available_nights, 6), 6),
		adr: n(roundDiv(s.room_revenue, s.nights_sold * 100n, 2), 2),
		revpar: n(roundDiv(s.room_revenue, s.available_nights * 100n, 2), 2),
		cancellation_rate: n(roundDiv(s.cancelled_arrivals, s.arrivals + s.cancelled_arrivals, 6), 6),
		noi: s.approved_expenses === undefined ? null : scaledNumber(s.room_revenue - s.approved_expenses, MONEY),
	};
}

/**
 * aggregate(rows, {extraAvailableNights}): property_kpis rows of one month
 * summed into one row shaped like portfolio_kpis (what a property-scoped
 * token cannot ask for), exactly.  extraAvailableNights adds the available
 * nights of properties in scope that have no row that month.  null for no
 * rows and no extra nights.
 */
export function aggregate(rows, { extraAvailableNights = 0 } = {}) {
	if (!rows.length && !extraAvailableNights)
		return null;
	const s = {};
	for (const [f, scale] of Object.entries(SUMMED))
		s[f] = sumScaled(rows, f, scale);
	s.available_nights += BigInt(extraAvailableNights);
	const out = { properties: rows.length, month: rows[0]?.month ?? null };
	for (const [f, scale] of Object.entries(SUMMED))
		out[f] = scaledNumber(s[f], scale);
	Object.assign(out, ratios(s));
	out.updated_at = rows.map((x) => x.updated_at).filter(Boolean).sort().at(-1) ?? null;
	return out;
}

/**
 * periodFigures(dailyRows, {from, to, units}): the booking figures of the
 * days from..to (both included, 'YYYY-MM-DD') from booking_daily rows, with
 * available nights = units × days: nights_sold, room_revenue, arrivals,
 * cancelled_arrivals, available_nights, occupancy, adr, revpar,
 * cancellation_rate.  Rows outside the days are ignored.
 */
export function periodFigures(dailyRows, { from, to, units }) {
	const rows = dailyRows.filter((r) => r.day >= from && r.day <= to);
	const days = daysBetween(from, to) + 1;
	const s = {
		nights_sold: sumScaled(rows, 'nights_sold', 0),
		room_revenue: sumScaled(rows, 'room_revenue', MONEY),
		arrivals: sumScaled(rows, 'arrivals', 0),
		cancelled_arrivals: sumScaled(rows, 'cancelled_arrivals', 0),
		available_nights: BigInt(units) * BigInt(days),
	};
	const r = ratios(s);
	return {
		from, to, days,
		nights_sold: Number(s.nights_sold), room_revenue: scaledNumber(s.room_revenue, MONEY),
		arrivals: Number(s.arrivals), cancelled_arrivals: Number(s.cancelled_arrivals),
		available_nights: Number(s.available_nights),
		occupancy: r.occupancy, adr: r.adr, revpar: r.revpar, cancellation_rate: r.cancellation_rate,
	};
}

/** The exact difference after − before of a money field (rows may be null). */
export function moneyDiff(before, after, field) {
	return scaledNumber(toScaled(after?.[field], MONEY) - toScaled(before?.[field], MONEY), MONEY);
}

/** Sum of a money field over rows, exactly, as a number. */
export function moneySum(rows, field) {
	return scaledNumber(sumScaled(rows, field, MONEY), MONEY);
}

/* ----------------------------------------------------------- calendar */

function utc(day) {
	const [y, m, d] = day.split('-').map(Number);
	return Date.UTC(y, m - 1, d);
}

export function daysBetween(from, to) {
	return Math.round((utc(to) - utc(from)) / 86400000);
}

export function daysInMonth(month) {
	const [y, m] = month.split('-').map(Number);
	return new Date(Date.UTC(y, m, 0)).getUTCDate();
}

export function addMonths(month, n) {
	const [y, m] = month.split('-').map(Number);
	return new Date(Date.UTC(y, m - 1 + n, 1)).toISOString().slice(0, 10);
}

function dayOf(month, d) {
	return month.slice(0, 8) + String(d).padStart(2, '0');
}

/**
 * monthToDate(month, today): the days of month-to-date and the same days of
 * the previous month: {current: {from, to}, previous: {from, to}, day}.
 * `today` is 'YYYY-MM-DD' in month.  When the previous month is shorter
 * (31 March vs February), its range ends on its last day.
 */
export function monthToDate(month, today) {
	const day = Number(today.slice(8, 10));
	const prev = addMonths(month, -1);
	return {
		day,
		current: { from: month, to: dayOf(month, day) },
		previous: { from: prev, to: dayOf(prev, Math.min(day, daysInMonth(prev))) },
	};
}
