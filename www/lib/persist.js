/*
 * livekpi.js, persistence: the last state, seq and epoch of a subscription
 * in IndexedDB (database "livekpi", store "state", one record per
 * subscription name), so that a reload shows the last known figures at once
 * and resumes from that seq.  toRecord/fromRecord are pure; load, save and
 * remove do the I/O and never throw (no IndexedDB: nothing is kept).
 */
import { isView } from './protocol.js';
import { initialState, plainRows, replaceAll } from './store.js';

const IDB_NAME = 'livekpi';
const IDB_STORE = 'state';

/** What is saved of a state. */
export function toRecord(state, savedAt) {
	return {
		seq: state.seq, epoch: state.epoch, scope: state.scope, views: state.views,
		rows: plainRows(state), savedAt, lastBatchAt: state.lastBatchAt, currency: state.currency,
	};
}

/** A state from a saved record (null when the record is unusable). */
export function fromRecord(record, views) {
	if (!record || !record.rows)
		return null;
	const base = initialState((record.views || views).filter(isView));
	const { state, changes } = replaceAll(base, record.rows);
	return {
		state: {
			...state, seq: record.seq ?? null, epoch: record.epoch ?? null, scope: record.scope || null,
			lastBatchAt: record.lastBatchAt || null, currency: record.currency || null,
		},
		changes,
		savedAt: record.savedAt || null,
	};
}

function open() {
	return new Promise((resolve, reject) => {
		if (typeof indexedDB === 'undefined')
			return reject(new Error('no IndexedDB'));
		const req = indexedDB.open(IDB_NAME, 1);
		req.onupgradeneeded = () => req.result.createObjectStore(IDB_STORE);
		req.onsuccess = () => resolve(req.result);
		req.onerror = () => reject(req.error);
		req.onblocked = () => reject(new Error('IndexedDB blocked'));
	});
}

function request(db, mode, fn) {
	return new Promise((resolve, reject) => {
		const tx = db.transaction(IDB_STORE, mode);
		const req = fn(tx.objectStore(IDB_STORE));
		tx.oncomplete = () => resolve(req.result);
		tx.onerror = () => reject(tx.error);
		tx.onabort = () => reject(tx.error);
	});
}

async function withDb(mode, fn) {
	try {
		const db = await open();
		try {
			return await request(db, mode, fn);
		} finally {
			db.close();
		}
	} catch {
		return undefined;	/* private mode, file://: live only */
	}
}

export function load(name) {
	return withDb('readonly', (s) => s.get(name));
}

export function save(name, record) {
	return withDb('readwrite', (s) => s.put(record, name));
}

export function remove(name) {
	return withDb('readwrite', (s) => s.delete(name));
}
