/*
 * livekpi.js, state store: the local copy of the subscribed views and the
 * stream position, and how each server message changes them.
 *
 * Every function here is pure: it takes a state and returns a new one
 * (views a message does not touch keep their Map; a touched view gets a
 * new Map), with the list of row changes.  No I/O, no timers, no DOM, so
 * that test/js/store.test.mjs checks them in node.
 *
 * A state:
 *   { views: [view…], rows: {view: Map(rowKey → row)}, seq, epoch, scope,
 *     welcome, currency, hasData, awaitSnapshot, lagMs, lastBatchAt,
 *     serverTime }
 * A change list: {view: [{key, before, after}]}, before null for a new
 * row, after null for a deleted one.
 */
import { isView, keyOf, rowKey } from './protocol.js';

export function initialState(views) {
	const vs = views.filter(isView);
	return {
		views: vs,
		rows: Object.fromEntries(vs.map((v) => [v, new Map()])),
		seq: null,
		epoch: null,
		scope: null,
		welcome: null,
		currency: null,
		hasData: false,
		awaitSnapshot: false,
		lagMs: null,
		lastBatchAt: null,
		serverTime: null,
	};
}

export function sameRow(a, b) {
	const ka = Object.keys(a);
	if (ka.length !== Object.keys(b).length)
		return false;
	for (const k of ka) {
		const x = a[k];
		const y = b[k];
		if (x !== y && !(x && y && typeof x === 'object' && JSON.stringify(x) === JSON.stringify(y)))
			return false;
	}
	return true;
}

/** Keeps only the given views (the others' rows are dropped). */
export function withViews(state, views) {
	const vs = views.filter(isView);
	const rows = {};
	for (const v of vs)
		rows[v] = state.rows[v] || new Map();
	return { ...state, views: vs, rows };
}

/** Replaces every view with rowsByView ({view: [row…]}). */
export function replaceAll(state, rowsByView) {
	const changes = {};
	const rows = {};
	for (const view of state.views) {
		const old = state.rows[view] || new Map();
		const fresh = new Map();
		for (const row of rowsByView?.[view] || [])
			fresh.set(rowKey(view, row), row);
		const list = [];
		for (const [k, row] of fresh) {
			const before = old.get(k);
			if (!before || !sameRow(before, row))
				list.push({ key: keyOf(view, row), before: before || null, after: row });
		}
		for (const [k, row] of old)
			if (!fresh.has(k))
				list.push({ key: keyOf(view, row), before: row, after: null });
		if (list.length)
			changes[view] = list;
		rows[view] = fresh;
	}
	return { state: { ...state, rows, hasData: true }, changes };
}

/** Applies one delta's deletes then upserts. */
export function applyDelta(state, msg) {
	const changes = {};
	const rows = { ...state.rows };
	const touched = new Set();
	const mapOf = (view) => {
		if (!touched.has(view)) {
			rows[view] = new Map(rows[view]);
			touched.add(view);
		}
		return rows[view];
	};
	for (const [view, keys] of Object.entries(msg.deletes || {})) {
		if (!rows[view])
			continue;
		for (const key of keys) {
			const k = rowKey(view, key);
			const before = rows[view].get(k);
			if (before) {
				mapOf(view).delete(k);
				(changes[view] ||= []).push({ key: keyOf(view, key), before, after: null });
			}
		}
	}
	for (const [view, list] of Object.entries(msg.upserts || {})) {
		if (!rows[view])
			continue;
		for (const row of list) {
			const k = rowKey(view, row);
			const before = rows[view].get(k) || null;
			mapOf(view).set(k, row);
			(changes[view] ||= []).push({ key: keyOf(view, row), before, after: row });
		}
	}
	return { state: { ...state, rows }, changes };
}

/**
 * reduce(state, msg): the state after one server message, and what
 * happened: {state, changes, event}.  event is 'welcome', 'change',
 * 'heartbeat', 'resync', 'servererror' or null (an unknown type: a newer
 * server; ignored).  changes is set for 'change' only.
 */
export function reduce(state, msg) {
	const s = { ...state };
	if (typeof msg.server_time === 'string')
		s.serverTime = msg.server_time;
	switch (msg.type) {
	case 'welcome': {
		let next = { ...s, welcome: msg, scope: msg.scope || null, epoch: msg.epoch ?? s.epoch };
		if (typeof msg.currency === 'string' && /^[A-Z]{3}$/.test(msg.currency))
			next.currency = msg.currency;
		if (Array.isArray(msg.views) && msg.views.length)
			next = withViews(next, msg.views);
		next.awaitSnapshot = !msg.resumed;
		return { state: next, changes: null, event: 'welcome' };
	}
	case 'snapshot': {
		const r = replaceAll(s, msg.rows);
		return { state: { ...r.state, seq: msg.seq, awaitSnapshot: false }, changes: r.changes, event: 'change' };
	}
	case 'delta': {
		const r = applyDelta(s, msg);
		return { state: { ...r.state, seq: msg.seq, lastBatchAt: msg.applied_at || null }, changes: r.changes, event: 'change' };
	}
	case 'heartbeat': {
		const next = { ...s, lagMs: msg.lag_ms ?? null };
		/* a heartbeat moves the position, except while a snapshot is due */
		if (typeof msg.seq === 'number' && !s.awaitSnapshot && (s.seq === null || msg.seq > s.seq))
			next.seq = msg.seq;
		return { state: next, changes: null, event: 'heartbeat' };
	}
	case 'resync':
		return { state: { ...s, awaitSnapshot: true }, changes: null, event: 'resync' };
	case 'error':
		return { state: s, changes: null, event: 'servererror' };
	default:
		return { state, changes: null, event: null };
	}
}

/** Every row of a view, as an array. */
export function rowsOf(state, view) {
	const m = state.rows[view];
	return m ? Array.from(m.values()) : [];
}

/** The rows of every view, as plain arrays (for the channel and IndexedDB). */
export function plainRows(state) {
	const out = {};
	for (const view of state.views)
		out[view] = rowsOf(state, view);
	return out;
}
