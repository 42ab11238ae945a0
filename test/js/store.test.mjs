/*
 * lib/store.js, lib/protocol.js, lib/backoff.js, lib/share.js (followStep)
 * and lib/persist.js (records): the state changes of livekpi.js as pure
 * functions, in node, without a browser or a server.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initialState, reduce, rowsOf, withViews } from '../../www/lib/store.js';
import { helloMessage, rowKey, keyOf, parseMessage, isFatalClose, subscribeMessage } from '../../www/lib/protocol.js';
import { backoffDelay, nextAttempt } from '../../www/lib/backoff.js';
import { followStep } from '../../www/lib/share.js';
import { toRecord, fromRecord } from '../../www/lib/persist.js';

const r1 = { property_id: 1, month: '2026-01-01', room_revenue: 100 };
const r2 = { property_id: 2, month: '2026-01-01', room_revenue: 50 };
const p1 = { month: '2026-01-01', room_revenue: 150 };

function run(state, ...msgs) {
	let s = state;
	const out = [];
	for (const m of msgs) {
		const r = reduce(s, m);
		out.push(r);
		s = r.state;
	}
	return { state: s, out };
}

test('welcome, snapshot, delta: the state is the SQL state, each step pure', () => {
	const s0 = initialState(['property_kpis', 'portfolio_kpis']);
	const { state, out } = run(s0,
		{ type: 'welcome', protocol: 1, epoch: 'e1', seq: 7, resumed: false, scope: { properties: null },
			views: ['property_kpis', 'portfolio_kpis'], server_time: '2026-01-05T10:00:00+00:00', currency: 'EUR' },
		{ type: 'snapshot', seq: 7, rows: { property_kpis: [r1, r2], portfolio_kpis: [p1] } },
		{ type: 'delta', seq: 8, applied_at: 'a', committed_at: 'c',
			upserts: { property_kpis: [{ ...r1, room_revenue: 130 }], portfolio_kpis: [{ ...p1, room_revenue: 180 }] },
			deletes: { property_kpis: [{ property_id: 2, month: '2026-01-01' }] } });
	assert.equal(out[0].event, 'welcome');
	assert.equal(out[0].state.awaitSnapshot, true);
	assert.equal(out[0].state.currency, 'EUR');
	assert.equal(out[1].event, 'change');
	assert.equal(out[1].changes.property_kpis.length, 2);
	assert.deepEqual(rowsOf(state, 'property_kpis'), [{ ...r1, room_revenue: 130 }]);
	assert.deepEqual(rowsOf(state, 'portfolio_kpis'), [{ ...p1, room_revenue: 180 }]);
	assert.equal(state.seq, 8);
	assert.equal(state.epoch, 'e1');
	assert.equal(state.lastBatchAt, 'a');
	assert.deepEqual(out[2].changes.property_kpis.map((c) => [c.key, c.before?.room_revenue ?? null, c.after?.room_revenue ?? null]),
		[[{ property_id: 2, month: '2026-01-01' }, 50, null], [{ property_id: 1, month: '2026-01-01' }, 100, 130]]);
	/* nothing was changed in place: the snapshot's state still has both rows */
	assert.equal(rowsOf(out[1].state, 'property_kpis').length, 2);
	assert.equal(rowsOf(s0, 'property_kpis').length, 0);
	/* a view the delta did not touch keeps its Map */
	const again = reduce(state, { type: 'delta', seq: 9, upserts: { property_kpis: [r2] }, deletes: {} });
	assert.equal(again.state.rows.portfolio_kpis, state.rows.portfolio_kpis);
	assert.notEqual(again.state.rows.property_kpis, state.rows.property_kpis);
});

test('a snapshot after a resync gives the changes against what was shown', () => {
	const { state } = run(initialState(['property_kpis']),
		{ type: 'welcome', epoch: 'e', seq: 1, resumed: false, views: ['property_kpis'] },
		{ type: 'snapshot', seq: 1, rows: { property_kpis: [r1, r2] } });
	const { state: s2, out } = run(state, { type: 'resync', seq: 5 },
		{ type: 'heartbeat', seq: 6, lag_ms: 3 },
		{ type: 'snapshot', seq: 5, rows: { property_kpis: [r1] } });
	assert.equal(out[0].state.awaitSnapshot, true);
	assert.equal(out[1].state.seq, 1, 'a heartbeat does not move the position while a snapshot is due');
	assert.equal(out[1].state.lagMs, 3);
	assert.equal(s2.seq, 5);
	assert.equal(s2.awaitSnapshot, false);
	assert.deepEqual(out[2].changes, { property_kpis: [{ key: { property_id: 2, month: '2026-01-01' }, before: r2, after: null }] });
	const hb = reduce(s2, { type: 'heartbeat', seq: 9, lag_ms: 0 });
	assert.equal(hb.state.seq, 9, 'a heartbeat moves the position');
	assert.equal(reduce(hb.state, { type: 'heartbeat', seq: 4 }).state.seq, 9, 'never backwards');
});

test('a resumed welcome keeps the state; unknown messages change nothing', () => {
	const { state } = run(initialState(['property_kpis']),
		{ type: 'welcome', epoch: 'e', seq: 1, resumed: false },
		{ type: 'snapshot', seq: 1, rows: { property_kpis: [r1] } });
	const w = reduce(state, { type: 'welcome', epoch: 'e', seq: 3, resumed: true, views: ['property_kpis'] });
	assert.equal(w.state.awaitSnapshot, false);
	assert.equal(w.state.seq, 1, 'the position comes from snapshots, deltas and heartbeats, not welcome');
	assert.deepEqual(rowsOf(w.state, 'property_kpis'), [r1]);
	const u = reduce(state, { type: 'from_the_future', x: 1 });
	assert.equal(u.state, state);
	assert.equal(u.event, null);
	const e = reduce(state, { type: 'error', code: 'bad_token', message: 'x' });
	assert.equal(e.event, 'servererror');
});

test('withViews drops a forbidden view and its rows', () => {
	const { state } = run(initialState(['property_kpis', 'portfolio_kpis']),
		{ type: 'snapshot', seq: 1, rows: { property_kpis: [r1], portfolio_kpis: [p1] } });
	const s = withViews(state, ['property_kpis']);
	assert.deepEqual(s.views, ['property_kpis']);
	assert.equal(s.rows.portfolio_kpis, undefined);
});

test('protocol: keys, hello with resume only when seq and epoch are known', () => {
	assert.equal(rowKey('property_kpis', r1), '[1,"2026-01-01"]');
	assert.deepEqual(keyOf('expense_monthly', { property_id: 'a', month: 'm', category: 'c', x: 1 }),
		{ property_id: 'a', month: 'm', category: 'c' });
	assert.throws(() => rowKey('nope', {}));
	const scope = { views: ['booking_daily'], properties: [2], dailyRange: { from: '2026-01-01', to: '2026-01-31' } };
	assert.deepEqual(helloMessage('lk_x', scope, { seq: null, epoch: 'e' }),
		{ type: 'hello', token: 'lk_x', views: ['booking_daily'], properties: [2],
			daily_range: { from: '2026-01-01', to: '2026-01-31' } });
	assert.deepEqual(helloMessage('lk_x', { views: ['property_kpis'] }, { seq: 0, epoch: 'e' }),
		{ type: 'hello', token: 'lk_x', views: ['property_kpis'], resume_from: 0, epoch: 'e' });
	assert.deepEqual(subscribeMessage({ views: ['property_kpis'] }), { type: 'subscribe', views: ['property_kpis'] });
	assert.equal(parseMessage('{"type":"heartbeat"}').type, 'heartbeat');
	assert.equal(parseMessage('not json'), null);
	assert.equal(parseMessage('[1]'), null);
	assert.ok(isFatalClose(4401) && isFatalClose(1007) && !isFatalClose(1006) && !isFatalClose(1013));
});

test('backoff: jittered between half and all of a doubling delay, capped', () => {
	const o = { min: 250, max: 10000 };
	assert.equal(backoffDelay(0, o, () => 0), 125);
	assert.equal(backoffDelay(0, o, () => 0.999999), 250);
	assert.equal(backoffDelay(3, o, () => 0), 1000);
	assert.equal(backoffDelay(10, o, () => 0.999999), 10000);
	assert.equal(backoffDelay(16, o, () => 0), 5000);
	let a = 0;
	for (let i = 0; i < 100; i++)
		a = nextAttempt(a);
	assert.equal(a, 16);
});

test('followStep: a follower applies its leader\'s messages in order, asks again on a gap', () => {
	let f = { leaderId: 'L', lastN: 3, wantState: false };
	let r = followStep(f, { from: 'L', n: 4 });
	assert.equal(r.action, 'apply');
	f = r.follow;
	assert.equal(followStep(f, { from: 'X', n: 5 }).action, 'ignore');
	r = followStep(f, { from: 'L', n: 6 });
	assert.equal(r.action, 'ask');
	assert.equal(r.follow.wantState, true);
	assert.equal(followStep(r.follow, { from: 'L', n: 7 }).action, 'ignore');
});

test('persist: a record gives back the same state', () => {
	const { state } = run(initialState(['property_kpis']),
		{ type: 'welcome', epoch: 'e', seq: 1, resumed: false, currency: 'GBP' },
		{ type: 'snapshot', seq: 4, rows: { property_kpis: [r1, r2] } });
	const rec = JSON.parse(JSON.stringify(toRecord(state, '2026-01-01T00:00:00Z')));
	const back = fromRecord(rec, ['property_kpis']);
	assert.equal(back.state.seq, 4);
	assert.equal(back.state.epoch, 'e');
	assert.equal(back.state.currency, 'GBP');
	assert.equal(back.savedAt, '2026-01-01T00:00:00Z');
	assert.deepEqual(rowsOf(back.state, 'property_kpis'), [r1, r2]);
	assert.equal(fromRecord(undefined, ['property_kpis']), null);
});

test('the library never touches the DOM and loads in node', async () => {
	const { readFileSync, readdirSync } = await import('node:fs');
	const dir = new URL('../../www/', import.meta.url);
	const files = ['livekpi.js', ...readdirSync(new URL('lib/', dir)).map((f) => 'lib/' + f)];
	for (const f of files) {
		const src = readFileSync(new URL(f, dir), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
		assert.doesNotMatch(src, /\bdocument\b|\bwindow\b|\bHTMLElement\b|querySelector/, `${f} touches the DOM`);
	}
	const { LiveKpi, kpimath } = await import('../../www/livekpi.js');
	const lk = new LiveKpi({ token: 'lk_x', views: ['property_kpis'] });
	assert.equal(lk.status, 'connecting');
	assert.deepEqual(lk.rows('property_kpis'), []);
	assert.equal(typeof kpimath.aggregate, 'function');
});
