/*
 * livekpi.js: browser client for the livekpi WebSocket stream (SPEC section 7).
 *
 *   import { LiveKpi } from '/livekpi.js';
 *   const lk = new LiveKpi({ token: 'lk_…' });
 *   lk.addEventListener('change', e => render(lk.rows('property_kpis')));
 *   lk.start();
 *
 * What it does for you:
 *  - connects to /v1/stream with subprotocol livekpi.v1 and says hello;
 *  - keeps a local copy of every subscribed view, keyed by the view's key
 *    columns, and applies snapshot / delta / resync / heartbeat exactly;
 *  - reconnects with jittered exponential backoff and resumes from the last
 *    seq it saw (with the epoch, so a recreated database is noticed);
 *  - shares one WebSocket between the tabs of a browser: one tab leads (Web
 *    Locks), the others receive the state over a BroadcastChannel, and when
 *    the leader goes away the next tab takes over at once;
 *  - keeps the last state, seq and epoch in IndexedDB so that a reload shows
 *    the last known figures at once (marked stale) and resumes from there.
 *
 * No dependencies; plain ES module.  Reference: docs/livekpi-js.md.
 */

export const PROTOCOL = 'livekpi.v1';

/* Key columns of every view (SPEC section 7). */
export const VIEW_KEYS = Object.freeze({
	property_kpis: ['property_id', 'month'],
	portfolio_kpis: ['month'],
	expense_monthly: ['property_id', 'month', 'category'],
	booking_daily: ['property_id', 'day'],
});

/* Error codes after which reconnecting with the same hello cannot help. */
const FATAL_CODES = new Set([
	'bad_token', 'token_expired', 'token_revoked', 'forbidden_property',
	'bad_message', 'too_large',
]);

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

/* Small stable string hash (FNV-1a, 32 bit), for names only, not security. */
function hash(s) {
	let h = 0x811c9dc5;
	for (let i = 0; i < s.length; i++) {
		h ^= s.charCodeAt(i);
		h = Math.imul(h, 0x01000193) >>> 0;
	}
	return h.toString(36);
}

function defaultUrl() {
	if (typeof location === 'undefined' || !/^https?:$/.test(location.protocol))
		return 'ws://127.0.0.1:8089/v1/stream';
	return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/stream';
}

function randomId() {
	if (globalThis.crypto?.randomUUID)
		return crypto.randomUUID();
	return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/* ---------------------------------------------------------------- IndexedDB */

const IDB_NAME = 'livekpi';
const IDB_STORE = 'state';

function idbOpen() {
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

function idbRequest(db, mode, fn) {
	return new Promise((resolve, reject) => {
		const tx = db.transaction(IDB_STORE, mode);
		const req = fn(tx.objectStore(IDB_STORE));
		tx.oncomplete = () => resolve(req.result);
		tx.onerror = () => reject(tx.error);
		tx.onabort = () => reject(tx.error);
	});
}

/* ------------------------------------------------------------------ client */

/**
 * A live subscription.  Events (all CustomEvent, data in `detail`):
 *  - 'change'   {source, seq, changes, applied_at, committed_at}: the state
 *               changed; source is 'restore' (from IndexedDB), 'snapshot',
 *               'delta' or 'sync' (copied from the leading tab); changes is
 *               {view: [{key, before, after}]} (before/after null for an
 *               insert/delete).
 *  - 'status'   {status, previous, stale, error}: 'connecting', 'connected',
 *               'offline' or 'error' (see docs for each).
 *  - 'role'     {role}: 'leader', 'follower' or 'solo'.
 *  - 'welcome', 'heartbeat', 'resync', 'servererror': the server's message.
 */
export class LiveKpi extends EventTarget {
	constructor(options = {}) {
		super();
		if (!options.token)
			throw new Error('livekpi: a token is required');
		this.options = {
			url: defaultUrl(),
			views: ['property_kpis', 'portfolio_kpis'],
			properties: null,
			dailyRange: null,
			share: true,
			persist: true,
			minBackoff: 250,
			maxBackoff: 10000,
			heartbeatTimeout: 45000,
			dropForbiddenViews: true,
			...options,
		};
		for (const v of this.options.views)
			if (!VIEW_KEYS[v])
				throw new Error(`livekpi: unknown view ${v}`);
		const o = this.options;
		this.name = o.name || 'livekpi:' + hash([o.url, o.token, o.views.join(','),
			JSON.stringify(o.properties), JSON.stringify(o.dailyRange)].join('|'));

		this.views = this.options.views.slice();	/* may shrink (forbidden_view) */
		this.state = new Map(this.views.map((v) => [v, new Map()]));
		this.seq = null;			/* position: from snapshot, delta, heartbeat */
		this.epoch = null;
		this.scope = null;			/* welcome.scope */
		this.hasData = false;		/* a snapshot (or restored state) is held */
		this.stale = true;			/* figures may be behind the database */
		this.status = 'connecting';
		this.role = 'solo';
		this.lastError = null;
		this.lagMs = null;
		this.serverOffsetMs = 0;	/* server clock minus ours */
		this.savedAt = null;		/* when the restored state was saved */
		this.lastMessageAt = null;
		this.lastBatchAt = null;	/* applied_at of the newest delta */
		this.nextRetryAt = null;
		this.welcome = null;

		this._id = randomId();
		this._ws = null;
		this._attempt = 0;
		this._timer = null;
		this._watchdog = null;
		this._stopped = true;
		this._fatal = false;
		this._awaitSnapshot = false;
		this._channel = null;
		this._releaseLock = null;
		this._n = 0;				/* leader: broadcast counter */
		this._leaderId = null;		/* follower: whose broadcasts we follow */
		this._lastN = -1;
		this._wantState = false;
		this._persistTimer = null;
		this._onOnline = () => this._kick();
		this._onOffline = () => this._goneOffline();
		this._onPageHide = () => this._flushPersist();
		this._onVisible = () => {
			if (typeof document !== 'undefined' && document.visibilityState === 'visible' &&
				this.role !== 'follower' && !this._ws && !this._fatal)
				this._kick();
		};
		this._wasConnected = false;
		this._retryNow = false;
	}

	/* ---------------------------------------------------------- public API */

	/** Starts: restores the saved state, then leads or follows. */
	async start() {
		if (!this._stopped)
			return this;
		this._stopped = false;
		this._fatal = false;
		if (typeof window !== 'undefined') {
			window.addEventListener('online', this._onOnline);
			window.addEventListener('offline', this._onOffline);
			window.addEventListener('pagehide', this._onPageHide);
			document.addEventListener('visibilitychange', this._onVisible);
		}
		if (this.options.persist)
			await this._restore();
		if (this._stopped)
			return this;
		const canShare = this.options.share && typeof BroadcastChannel !== 'undefined' &&
			typeof navigator !== 'undefined' && navigator.locks;
		if (!canShare) {
			this._setRole('solo');
			this._connect();
			return this;
		}
		this._channel = new BroadcastChannel(this.name);
		this._channel.onmessage = (e) => this._onChannel(e.data);
		this._setRole('follower');
		this._askState();
		navigator.locks.request(this.name, { mode: 'exclusive' }, () => {
			if (this._stopped)
				return undefined;
			return new Promise((release) => {
				this._releaseLock = release;
				this._becomeLeader();
			});
		}).catch(() => {});
		return this;
	}

	/** Stops for good: closes the socket, leaves the channel, frees the lock. */
	stop() {
		if (this._stopped)
			return;
		this._stopped = true;
		clearTimeout(this._timer);
		clearTimeout(this._watchdog);
		this._flushPersist();
		if (typeof window !== 'undefined') {
			window.removeEventListener('online', this._onOnline);
			window.removeEventListener('offline', this._onOffline);
			window.removeEventListener('pagehide', this._onPageHide);
			document.removeEventListener('visibilitychange', this._onVisible);
		}
		if (this._ws) {
			const ws = this._ws;
			this._ws = null;
			ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
			try { ws.close(1000, 'client stop'); } catch { /* already closed */ }
		}
		if (this._channel) {
			if (this.role === 'leader')
				this._post({ t: 'bye' });
			this._channel.close();
			this._channel = null;
		}
		if (this._releaseLock) {
			this._releaseLock();
			this._releaseLock = null;
		}
	}

	/** Every row of a view, as an array (in no particular order). */
	rows(view) {
		const m = this.state.get(view);
		return m ? Array.from(m.values()) : [];
	}

	/** One row by key ({property_id, month} …), or undefined. */
	get(view, key) {
		return this.state.get(view)?.get(rowKey(view, key));
	}

	/** The server's clock now (ms since the epoch), from welcome/heartbeat. */
	serverNow() {
		return Date.now() + this.serverOffsetMs;
	}

	/**
	 * Changes the scope (same fields as hello but the token); the server
	 * answers with a new snapshot.  In a shared setup every tab shares the
	 * scope: a follower forwards the request to the leader.
	 */
	subscribe({ views, properties, dailyRange } = {}) {
		if (views)
			this.options.views = views.slice();
		if (properties !== undefined)
			this.options.properties = properties;
		if (dailyRange !== undefined)
			this.options.dailyRange = dailyRange;
		if (this.role === 'follower') {
			this._post({ t: 'subscribe', views, properties, dailyRange });
			return;
		}
		this.views = this.options.views.slice();
		const msg = { type: 'subscribe', ...this._scopeFields() };
		if (this._ws && this._ws.readyState === 1)
			this._ws.send(JSON.stringify(msg));
	}

	/* --------------------------------------------------------------- state */

	_scopeFields() {
		const o = this.options;
		const f = { views: this.views };
		if (o.properties)
			f.properties = o.properties;
		if (o.dailyRange)
			f.daily_range = o.dailyRange;
		return f;
	}

	_setStatus(status, extra = {}) {
		const previous = this.status;
		if (status === previous && !extra.force)
			return;
		this.status = status;
		if (status !== 'connected')
			this.stale = true;
		if (typeof document !== 'undefined')
			document.documentElement.dataset.livekpiStatus = status;
		this._emit('status', { status, previous, stale: this.stale, error: this.lastError });
		if (this.role === 'leader')
			this._post({ t: 'status', status, stale: this.stale, error: this.lastError,
				nextRetryAt: this.nextRetryAt, lagMs: this.lagMs });
	}

	_setRole(role) {
		this.role = role;
		if (typeof document !== 'undefined')
			document.documentElement.dataset.livekpiRole = role;
		this._emit('role', { role });
	}

	_emit(type, detail) {
		this.dispatchEvent(new CustomEvent(type, { detail }));
	}

	/* Replaces every view with `rows` ({view: [row…]}); returns the changes. */
	_replace(rowsByView) {
		const changes = {};
		for (const view of this.views) {
			const old = this.state.get(view) || new Map();
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
			this.state.set(view, fresh);
		}
		for (const view of Array.from(this.state.keys()))
			if (!this.views.includes(view))
				this.state.delete(view);
		this.hasData = true;
		return changes;
	}

	/* Applies one delta's upserts and deletes; returns the changes. */
	_applyDelta(msg) {
		const changes = {};
		for (const [view, keys] of Object.entries(msg.deletes || {})) {
			const m = this.state.get(view);
			if (!m)
				continue;
			for (const key of keys) {
				const k = rowKey(view, key);
				const before = m.get(k);
				if (before) {
					m.delete(k);
					(changes[view] ||= []).push({ key: keyOf(view, key), before, after: null });
				}
			}
		}
		for (const [view, rows] of Object.entries(msg.upserts || {})) {
			const m = this.state.get(view);
			if (!m)
				continue;
			for (const row of rows) {
				const k = rowKey(view, row);
				const before = m.get(k) || null;
				m.set(k, row);
				(changes[view] ||= []).push({ key: keyOf(view, row), before, after: row });
			}
		}
		return changes;
	}

	/*
	 * One server message, applied to the local state.  The leader calls it
	 * for what the socket receives, a follower for what the leader relays.
	 */
	_handle(msg) {
		this.lastMessageAt = Date.now();
		if (msg.server_time) {
			const t = Date.parse(msg.server_time);
			if (!Number.isNaN(t))
				this.serverOffsetMs = t - Date.now();
		}
		switch (msg.type) {
		case 'welcome':
			this.welcome = msg;
			this.scope = msg.scope || null;
			if (Array.isArray(msg.views) && msg.views.length)
				this.views = msg.views.filter((v) => VIEW_KEYS[v]);
			if (!msg.resumed) {
				this._awaitSnapshot = true;
			} else {
				this.stale = false;
			}
			this.epoch = msg.epoch ?? this.epoch;
			this.lastError = null;
			this._emit('welcome', msg);
			break;
		case 'snapshot': {
			const changes = this._replace(msg.rows);
			this.seq = msg.seq;
			this._awaitSnapshot = false;
			this.stale = (this.role === 'follower' ? this._leaderStatus : this.status) !== 'connected';
			this._emit('change', { source: 'snapshot', seq: msg.seq, changes });
			this._schedulePersist();
			break;
		}
		case 'delta': {
			const changes = this._applyDelta(msg);
			this.seq = msg.seq;
			this.lastBatchAt = msg.applied_at || null;
			this._emit('change', { source: 'delta', seq: msg.seq, changes,
				applied_at: msg.applied_at, committed_at: msg.committed_at });
			this._schedulePersist();
			break;
		}
		case 'heartbeat':
			if (typeof msg.seq === 'number' && (this.seq === null || msg.seq > this.seq) && !this._awaitSnapshot)
				this.seq = msg.seq;
			this.lagMs = msg.lag_ms ?? null;
			this._emit('heartbeat', msg);
			this._schedulePersist();
			break;
		case 'resync':
			this._awaitSnapshot = true;
			this._emit('resync', msg);
			break;
		case 'error':
			this.lastError = { code: msg.code, message: msg.message };
			this._emit('servererror', msg);
			break;
		default:
			break;	/* newer protocol: ignore what we do not know */
		}
	}

	/* ------------------------------------------------------ leader: socket */

	_connect() {
		if (this._stopped || this._fatal || this.role === 'follower')
			return;
		clearTimeout(this._timer);
		this.nextRetryAt = null;
		if (typeof navigator !== 'undefined' && navigator.onLine === false) {
			this._setStatus('offline', { force: true });
			return;	/* 'online' event will call _kick */
		}
		/* 'connecting' until this client has been connected once; after a
		 * drop it stays 'offline' (retrying) until the server answers */
		this._setStatus(this._wasConnected ? 'offline' : 'connecting', { force: true });
		let ws;
		try {
			ws = new WebSocket(this.options.url, PROTOCOL);
		} catch (err) {
			this.lastError = { code: 'connect_failed', message: String(err) };
			this._scheduleReconnect();
			return;
		}
		this._ws = ws;
		this._openedAt = null;
		ws.onopen = () => {
			this._openedAt = Date.now();
			const hello = { type: 'hello', token: this.options.token, ...this._scopeFields() };
			if (this.seq !== null && this.epoch) {
				hello.resume_from = this.seq;
				hello.epoch = this.epoch;
			}
			ws.send(JSON.stringify(hello));
			this._armWatchdog();
		};
		ws.onmessage = (e) => {
			if (this._ws !== ws)
				return;
			let msg;
			try {
				msg = JSON.parse(e.data);
			} catch {
				return;
			}
			this._armWatchdog();
			this._handle(msg);
			if (this.role === 'leader')
				this._post({ t: 'msg', n: ++this._n, msg });
			if (msg.type === 'welcome') {
				this._wasConnected = true;
				this._setStatus('connected', { force: true });
			} else if (msg.type === 'snapshot' || msg.type === 'delta') {
				if (this.status === 'connected' && this.stale && !this._awaitSnapshot) {
					this.stale = false;
					this._setStatus('connected', { force: true });
				}
				if (this._openedAt && Date.now() - this._openedAt > 0)
					this._attempt = 0;
			} else if (msg.type === 'error') {
				this._onServerError(msg);
			}
		};
		ws.onerror = () => { /* a close follows */ };
		ws.onclose = (e) => {
			if (this._ws !== ws)
				return;
			this._ws = null;
			clearTimeout(this._watchdog);
			if (this._stopped)
				return;
			if (this._retryNow) {
				this._retryNow = false;
				this._connect();
				return;
			}
			if (this._fatal || [4401, 4403, 1003, 1007, 1009].includes(e.code)) {
				this._fatal = true;
				if (!this.lastError)
					this.lastError = { code: 'closed', message: `closed by the server (${e.code})` };
				this._setStatus('error', { force: true });
				return;
			}
			if (!this.lastError || this.status === 'connected')
				this.lastError = { code: 'closed', message: `connection closed (${e.code}${e.reason ? ' ' + e.reason : ''})` };
			this._scheduleReconnect();
		};
	}

	_onServerError(msg) {
		if (msg.code === 'forbidden_view' && this.options.dropForbiddenViews &&
			this.views.includes('portfolio_kpis')) {
			/* a property-scoped token: do without portfolio_kpis */
			this.views = this.views.filter((v) => v !== 'portfolio_kpis');
			this.state.delete('portfolio_kpis');
			this.lastError = null;
			this._retryNow = true;	/* the close that follows reconnects at once */
			return;
		}
		if (FATAL_CODES.has(msg.code))
			this._fatal = true;
	}

	_scheduleReconnect() {
		if (this._stopped || this._fatal)
			return;
		const base = Math.min(this.options.maxBackoff, this.options.minBackoff * 2 ** this._attempt);
		const delay = Math.round(base / 2 + Math.random() * base / 2);	/* jitter */
		this._attempt = Math.min(this._attempt + 1, 16);
		this.nextRetryAt = Date.now() + delay;
		this._setStatus(this._wasConnected || this._attempt > 2 ? 'offline' : 'connecting', { force: true });
		clearTimeout(this._timer);
		this._timer = setTimeout(() => this._connect(), delay);
	}

	/* Reconnect now (browser came back online, tab became visible). */
	_kick() {
		if (this._stopped)
			return;
		if (this.role === 'follower') {
			this._setStatus(this._leaderStatus || 'connecting', { force: true });
			return;
		}
		if (this._ws && this._ws.readyState <= 1)
			return;
		this._attempt = 0;
		this._connect();
	}

	_goneOffline() {
		/* The browser says the network is gone: do not wait for the socket
		 * to notice, it can take minutes. */
		if (this.role === 'follower') {
			this._setStatus('offline', { force: true });
			return;
		}
		if (this._ws) {
			const ws = this._ws;
			this._ws = null;
			ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
			try { ws.close(4000, 'browser offline'); } catch { /* ignore */ }
		}
		clearTimeout(this._timer);
		clearTimeout(this._watchdog);
		this.nextRetryAt = null;
		this._setStatus('offline', { force: true });
	}

	_armWatchdog() {
		clearTimeout(this._watchdog);
		this._watchdog = setTimeout(() => {
			if (this._ws) {
				this.lastError = { code: 'timeout', message: 'no message from the server' };
				try { this._ws.close(4000, 'heartbeat timeout'); } catch { /* ignore */ }
				const ws = this._ws;
				this._ws = null;
				ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
				this._scheduleReconnect();
			}
		}, this.options.heartbeatTimeout);
	}

	/* --------------------------------------------------- cross-tab sharing */

	_post(m) {
		if (this._channel)
			this._channel.postMessage({ ...m, from: this._id });
	}

	_askState() {
		this._wantState = true;
		this._post({ t: 'want-state' });
	}

	_becomeLeader() {
		this._setRole('leader');
		this._leaderId = this._id;
		this._n = 0;
		this._post({ t: 'leader' });
		this._attempt = 0;
		this._connect();
	}

	_snapshotForChannel() {
		const rows = {};
		for (const [view, m] of this.state)
			rows[view] = Array.from(m.values());
		return {
			t: 'state', n: this._n, seq: this.seq, epoch: this.epoch, scope: this.scope,
			views: this.views, rows, hasData: this.hasData, status: this.status,
			stale: this.stale, error: this.lastError, lagMs: this.lagMs,
			serverOffsetMs: this.serverOffsetMs, nextRetryAt: this.nextRetryAt,
			lastBatchAt: this.lastBatchAt,
		};
	}

	_onChannel(m) {
		if (!m || m.from === this._id || this._stopped)
			return;
		if (this.role === 'leader') {
			if (m.t === 'want-state')
				this._post({ ...this._snapshotForChannel(), to: m.from });
			else if (m.t === 'subscribe')
				this.subscribe({ views: m.views, properties: m.properties, dailyRange: m.dailyRange });
			return;
		}
		/* follower */
		switch (m.t) {
		case 'leader':
			this._leaderId = m.from;
			this._askState();
			break;
		case 'bye':
			break;	/* the lock passes on by itself */
		case 'state':
			if (m.to !== this._id)
				break;
			this._wantState = false;
			this._leaderId = m.from;
			this._lastN = m.n;
			this.seq = m.seq;
			this.epoch = m.epoch;
			this.scope = m.scope;
			this.views = m.views;
			this.lagMs = m.lagMs;
			this.serverOffsetMs = m.serverOffsetMs;
			this.lastBatchAt = m.lastBatchAt;
			this.lastError = m.error;
			this.nextRetryAt = m.nextRetryAt;
			this._leaderStatus = m.status;
			if (m.hasData) {
				const changes = this._replace(m.rows);
				this.stale = m.stale;
				this._emit('change', { source: 'sync', seq: m.seq, changes });
			}
			this._followStatus(m.status, m.stale);
			break;
		case 'msg':
			if (this._wantState || m.from !== this._leaderId)
				break;
			if (m.n !== this._lastN + 1) {
				this._askState();	/* missed something: start over */
				break;
			}
			this._lastN = m.n;
			this._handle(m.msg);
			break;
		case 'status':
			if (m.from !== this._leaderId)
				break;
			this.lastError = m.error;
			this.nextRetryAt = m.nextRetryAt;
			this.lagMs = m.lagMs;
			this._leaderStatus = m.status;
			this._followStatus(m.status, m.stale);
			break;
		default:
			break;
		}
	}

	_followStatus(status, stale) {
		if (typeof navigator !== 'undefined' && navigator.onLine === false)
			status = 'offline';
		this.stale = status !== 'connected' || stale;
		this._setStatus(status, { force: true });
	}

	/* --------------------------------------------------------- persistence */

	async _restore() {
		try {
			const db = await idbOpen();
			const saved = await idbRequest(db, 'readonly', (s) => s.get(this.name));
			db.close();
			if (!saved || !saved.rows || this.hasData)
				return;
			this.views = (saved.views || this.views).filter((v) => VIEW_KEYS[v]);
			const changes = this._replace(saved.rows);
			this.seq = saved.seq;
			this.epoch = saved.epoch;
			this.scope = saved.scope || null;
			this.savedAt = saved.savedAt || null;
			this.lastBatchAt = saved.lastBatchAt || null;
			this.stale = true;
			this._emit('change', { source: 'restore', seq: this.seq, changes, savedAt: this.savedAt });
		} catch {
			/* no IndexedDB (private mode, file://): live only */
		}
	}

	_schedulePersist() {
		if (!this.options.persist || this.role === 'follower' || this._persistTimer)
			return;
		this._persistTimer = setTimeout(() => this._flushPersist(), 1000);
	}

	_flushPersist() {
		clearTimeout(this._persistTimer);
		this._persistTimer = null;
		if (!this.options.persist || this.role === 'follower' || !this.hasData || this._awaitSnapshot)
			return;
		const rows = {};
		for (const [view, m] of this.state)
			rows[view] = Array.from(m.values());
		const record = {
			seq: this.seq, epoch: this.epoch, scope: this.scope, views: this.views,
			rows, savedAt: new Date().toISOString(), lastBatchAt: this.lastBatchAt,
		};
		idbOpen().then((db) => idbRequest(db, 'readwrite', (s) => s.put(record, this.name))
			.finally(() => db.close())).catch(() => {});
	}

	/** Forgets the saved state of this subscription (e.g. on sign-out). */
	async forget() {
		try {
			const db = await idbOpen();
			await idbRequest(db, 'readwrite', (s) => s.delete(this.name));
			db.close();
		} catch { /* nothing saved */ }
	}
}

function sameRow(a, b) {
	const ka = Object.keys(a);
	if (ka.length !== Object.keys(b).length)
		return false;
	for (const k of ka)
		if (a[k] !== b[k])
			return false;
	return true;
}

export default LiveKpi;
