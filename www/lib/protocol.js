/*
 * livekpi.js, protocol: what the messages of livekpi.v1 look like (SPEC
 * section 7, docs/protocol.md).  The subprotocol name, the key columns of
 * each view, the hello and subscribe messages, and which refusals are final.
 * Pure functions; no I/O, no DOM.
 */

export const PROTOCOL = 'livekpi.v1';

/* Key columns of every view. */
export const VIEW_KEYS = Object.freeze({
	property_kpis: Object.freeze(['property_id', 'month']),
	portfolio_kpis: Object.freeze(['month']),
	expense_monthly: Object.freeze(['property_id', 'month', 'category']),
	booking_daily: Object.freeze(['property_id', 'day']),
});

/* Error codes after which reconnecting with the same hello cannot help. */
export const FATAL_CODES = Object.freeze(new Set([
	'bad_token', 'token_expired', 'token_revoked', 'forbidden_property',
	'bad_message', 'too_large',
]));

/* Close codes that end the session (token refused, forbidden, bad message). */
export const FATAL_CLOSE_CODES = Object.freeze(new Set([4401, 4403, 1003, 1007, 1009]));

export function isView(view) {
	return Object.prototype.hasOwnProperty.call(VIEW_KEYS, view);
}

/** The key of a row (or of a key object) of a view, as a string. */
export function rowKey(view, row) {
	const cols = VIEW_KEYS[view];
	if (!cols)
		throw new Error(`livekpi: unknown view ${view}`);
	return JSON.stringify(cols.map((c) => row[c]));
}

/** Picks the key columns out of a row. */
export function keyOf(view, row) {
	const key = {};
	for (const c of VIEW_KEYS[view])
		key[c] = row[c];
	return key;
}

/** The members of hello and subscribe that describe the scope. */
export function scopeFields({ views, properties, dailyRange }) {
	const f = { views: views.slice() };
	if (properties)
		f.properties = properties.slice();
	if (dailyRange)
		f.daily_range = { from: dailyRange.from, to: dailyRange.to };
	return f;
}

/**
 * The hello for a connection: token, scope, and the position to resume
 * from when both a seq and the epoch it belongs to are known.
 */
export function helloMessage(token, scope, position = {}) {
	const hello = { type: 'hello', token, ...scopeFields(scope) };
	if (position.seq !== null && position.seq !== undefined && position.epoch) {
		hello.resume_from = position.seq;
		hello.epoch = position.epoch;
	}
	return hello;
}

export function subscribeMessage(scope) {
	return { type: 'subscribe', ...scopeFields(scope) };
}

/** A text frame as a message object, or null when it is not JSON. */
export function parseMessage(text) {
	try {
		const msg = JSON.parse(text);
		return msg && typeof msg === 'object' && typeof msg.type === 'string' ? msg : null;
	} catch {
		return null;
	}
}

/** Whether a close (or the error before it) ends the session for good. */
export function isFatalClose(code) {
	return FATAL_CLOSE_CODES.has(code);
}
