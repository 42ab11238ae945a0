/*
 * lib/kpimath.js: exact sums and ratios, rounded as PostgreSQL's
 * round(numeric, n) (half away from zero), against the worked examples of
 * docs/kpis.md and cases where floating point gets it wrong.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as k from '../../www/lib/kpimath.js';

test('toScaled parses numbers and decimal text exactly', () => {
	assert.equal(k.toScaled(1234.56, 2), 123456n);
	assert.equal(k.toScaled('1234.56', 2), 123456n);
	assert.equal(k.toScaled(0.1, 2), 10n);
	assert.equal(k.toScaled(-5, 2), -500n);
	assert.equal(k.toScaled(null, 2), 0n);
	assert.equal(k.toScaled(1e21, 2), 100000000000000000000000n);
	assert.equal(k.toScaled('0.005', 2), 1n);
	assert.equal(k.toScaled('-0.005', 2), -1n);
	assert.equal(k.toScaled(12, 0), 12n);
	assert.throws(() => k.toScaled('abc', 2));
});

test('roundDiv rounds half away from zero, like round(numeric)', () => {
	assert.equal(k.roundDiv(35n, 200n, 2), 18n);		/* 0.175 → 0.18 */
	assert.equal(k.roundDiv(-5n, 200n, 2), -3n);		/* −0.025 → −0.03 */
	assert.equal(k.roundDiv(1n, 3n, 6), 333333n);
	assert.equal(k.roundDiv(2n, 3n, 6), 666667n);
	assert.equal(k.roundDiv(1n, 0n, 6), null);
});

test('ADR and RevPAR where floating point rounds the wrong way', () => {
	/* 1.15 over 2 nights: SQL says 0.58; Math.round(0.575 * 100) / 100 is 0.57 */
	const row = { month: '2026-02-01', available_nights: 2, nights_sold: 2, room_revenue: 1.15, arrivals: 1,
		cancelled_arrivals: 0, approved_expenses: 0, pending_expenses: 0 };
	const a = k.aggregate([row]);
	assert.equal(a.adr, 0.58);
	assert.equal(a.revpar, 0.58);
	/* a refund: −0.05 over 2 available nights is −0.03 in SQL, −0.02 with Math.round */
	const b = k.aggregate([{ ...row, room_revenue: -0.05, nights_sold: 0 }]);
	assert.equal(b.revpar, -0.03);
	assert.equal(b.adr, null);
	/* sums stay exact: 0.1 + 0.2 is 0.3 */
	const c = k.aggregate([{ ...row, room_revenue: 0.1 }, { ...row, room_revenue: 0.2 }]);
	assert.equal(c.room_revenue, 0.3);
});

test('the portfolio of docs/kpis.md, February 2026, from its property rows', () => {
	const feb = [
		{ property_id: 1, month: '2026-02-01', units: 1, available_nights: 28, nights_sold: 4, occupancy: 0.142857,
			room_revenue: 400.00, adr: 100.00, revpar: 14.29, arrivals: 1, cancelled_arrivals: 1,
			cancellation_rate: 0.5, approved_expenses: 50.00, pending_expenses: 20.00, noi: 350.00,
			updated_at: '2026-02-10T10:00:00+00:00' },
		{ property_id: 2, month: '2026-02-01', units: 1, available_nights: 28, nights_sold: 2, occupancy: 0.071429,
			room_revenue: 200.00, adr: 100.00, revpar: 7.14, arrivals: 1, cancelled_arrivals: 0,
			cancellation_rate: 0, approved_expenses: 0, pending_expenses: 0, noi: 200.00,
			updated_at: '2026-02-27T10:00:00+00:00' },
	];
	/* property 3 has no February row; its 28 available nights still count */
	const p = k.aggregate(feb, { extraAvailableNights: 28 });
	assert.equal(p.available_nights, 84);
	assert.equal(p.nights_sold, 6);
	assert.equal(p.occupancy, 0.071429);
	assert.equal(p.room_revenue, 600);
	assert.equal(p.adr, 100);
	assert.equal(p.revpar, 7.14);
	assert.equal(p.arrivals, 2);
	assert.equal(p.cancelled_arrivals, 1);
	assert.equal(p.cancellation_rate, 0.333333);
	assert.equal(p.approved_expenses, 50);
	assert.equal(p.pending_expenses, 20);
	assert.equal(p.noi, 550);
	assert.equal(p.updated_at, '2026-02-27T10:00:00+00:00');
	assert.equal(k.aggregate([]), null);
});

test('month to date and the same days of the previous month', () => {
	assert.deepEqual(k.monthToDate('2026-03-01', '2026-03-31'), {
		day: 31,
		current: { from: '2026-03-01', to: '2026-03-31' },
		previous: { from: '2026-02-01', to: '2026-02-28' },
	});
	assert.deepEqual(k.monthToDate('2026-11-01', '2026-11-29').previous, { from: '2026-10-01', to: '2026-10-29' });
	const daily = [
		{ property_id: 1, day: '2026-10-28', nights_sold: 1, room_revenue: 33.33, arrivals: 1, cancelled_arrivals: 0 },
		{ property_id: 1, day: '2026-10-29', nights_sold: 1, room_revenue: 33.33, arrivals: 0, cancelled_arrivals: 0 },
		{ property_id: 1, day: '2026-10-30', nights_sold: 1, room_revenue: 33.34, arrivals: 0, cancelled_arrivals: 1 },
	];
	const f = k.periodFigures(daily, { from: '2026-10-01', to: '2026-10-29', units: 2 });
	assert.equal(f.days, 29);
	assert.equal(f.available_nights, 58);
	assert.equal(f.nights_sold, 2);
	assert.equal(f.room_revenue, 66.66);
	assert.equal(f.arrivals, 1);
	assert.equal(f.cancelled_arrivals, 0);
	assert.equal(f.occupancy, 0.034483);	/* 2 / 58 */
	assert.equal(f.adr, 33.33);
	assert.equal(f.revpar, 1.15);			/* 66.66 / 58 = 1.1493… */
	assert.equal(f.cancellation_rate, 0);
});

test('money differences and sums are exact', () => {
	assert.equal(k.moneyDiff({ room_revenue: 0.1 }, { room_revenue: 0.3 }, 'room_revenue'), 0.2);
	assert.equal(k.moneyDiff(null, { room_revenue: 1240 }, 'room_revenue'), 1240);
	assert.equal(k.moneySum([{ a: 0.1 }, { a: 0.2 }, { a: null }], 'a'), 0.3);
});
