/*
 * livekpi.js: client library for the livekpi WebSocket stream (SPEC
 * sections 7 and 8).  It never touches the DOM: it keeps state and emits
 * events; what to draw is the page's business.
 *
 *   import { LiveKpi } from '/livekpi.js';
 *   const lk = new LiveKpi({ token: 'lk_…' });
 *   lk.addEventListener('change', (e) => render(lk.rows('property_kpis')));
 *   lk.start();
 *
 * One module per job (in lib/, each usable alone), like phoenix.js and
 * centrifuge-js:
 *   lib/protocol.js    messages, view keys, which refusals are final
 *   lib/store.js       the local state and how each message changes it (pure)
 *   lib/backoff.js     jittered exponential reconnect delays (pure)
 *   lib/connection.js  one WebSocket and its heartbeat watchdog
 *   lib/share.js       one connection for all tabs (Web Locks, BroadcastChannel)
 *   lib/persist.js     the last state in IndexedDB
 *   lib/kpimath.js     exact sums and ratios over rows, as SQL computes them
 * This file wires them into LiveKpi.  Reference: docs/livekpi-js.md.
 */
import { FATAL_CODES, helloMessage, isFatalClose, isView, rowKey, subscribeMessage } from './lib/protocol.js';
import { initialState, reduce, replaceAll, rowsOf, plainRows, withViews } from './lib/store.js';
import { backoffDelay, nextAttempt } from './lib/backoff.js';
import { Connection } from './lib/connection.js';
import { TabShare, canShare, followStep } from './lib/share.js';
import * as persist from './lib/persist.js';

export { PROTOCOL, VIEW_KEYS, rowKey, keyOf } from './lib/protocol.js';
export * as store from './lib/store.js';
export * as kpimath from './lib/kpimath.js';

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
	const loc = globalThis.location;
	if (!loc || !/^https?:$/.test(loc.protocol))
		return 'ws://127.0.0.1:8089/v1/stream';
	return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/v1/stream';
}

function randomId() {
	if (globalThis.crypto?.randomUUID)
		return crypto.randomUUID();
	return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

function browserOffline() {
	return typeof navigator !== 'undefined' && navigator.onLine === false;
}

/**
 * A live subscription.  Events (CustomEvent, data in `detail`):
 *  - 'change'   {source, seq, changes, applied_at, committed_at}: source is
 *               'restore' (IndexedDB), 'snapshot', 'delta' or 'sync' (copied
 *               from the leading tab); changes is {view: [{key, before, after}]}.
 *  - 'status'   {status, previous, stale, error}: 'connecting', 'connected',
 *               'offline' or 'error'.
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
			if (!isView(v))
				throw new Error(`livekpi: unknown view ${v}`);
		const o = this.options;
		this.name = o.name || 'livekpi:' + hash([o.url, o.token, o.views.join(','),
			JSON.stringify(o.properties), JSON.stringify(o.dailyRange)].join('|'));

		this._s = initialState(o.views);
		this.stale = true;			/* figures may be behind the database */
		this.status = 'connecting';
		this.role = 'solo';
		this.lastError = null;
		this.serverOffsetMs = 0;	/* server clock minus ours */
		this.savedAt = null;		/* when the restored state was saved */
		this.lastMessageAt = null;
		this.nextRetryAt = null;

		this._id = randomId();
		this._conn = null;
		this._attempt = 0;
		this._timer = null;
		this._stopped = true;
		this._fatal = false;
		this._share = null;
		this._n = 0;				/* leader: broadcast counter */
		this._follow = { leaderId: null, lastN: -1, wantState: false };
		this._leaderStatus = null;
		this._persistTimer = null;
		this._wasConnected = false;
		this._retryNow = false;
		this._onOnline = () => this.reconnectNow();
		this._onOffline = () => this._goneOffline();
		this._onPageHide = () => this._flushPersist();
	}

	/* ------------------------------------------------------- state access */

	get views() { return this._s.views; }
	get seq() { return this._s.seq; }
	get epoch() { return this._s.epoch; }
	get scope() { return this._s.scope; }
	get welcome() { return this._s.welcome; }
	get hasData() { return this._s.hasData; }
	get lagMs() { return this._s.lagMs; }
	get lastBatchAt() { return this._s.lastBatchAt; }
	/** The server's currency (ISO 4217, from welcome; kept with the state). */
	get currency() { return this._s.currency; }
	/** The whole state (read only; see lib/store.js). */
	get snapshot() { return this._s; }

	/** Whether a view is subscribed (portfolio_kpis is dropped for scoped tokens). */
	hasView(view) {
		return this._s.views.includes(view);
	}

	/** Every row of a view, as an array (in no particular order). */
	rows(view) {
		return rowsOf(this._s, view);
	}

	/** One row by key ({property_id, month} …), or undefined. */
	get(view, key) {
		return this._s.rows[view]?.get(rowKey(view, key));
	}

	/** The server's clock now (ms since the epoch), from welcome/heartbeat. */
	serverNow() {
		return Date.now() + this.serverOffsetMs;
	}

	/* ---------------------------------------------------------- lifecycle */

	/** Starts: restores the saved state, then leads or follows. */
	async start() {
		if (!this._stopped)
			return this;
		this._stopped = false;
		this._fatal = false;
		if (typeof globalThis.addEventListener === 'function') {
			globalThis.addEventListener('online', this._onOnline);
			globalThis.addEventListener('offline', this._onOffline);
			globalThis.addEventListener('pagehide', this._onPageHide);
		}
		if (this.options.persist)
			await this._restore();
		if (this._stopped)
			return this;
		if (!this.options.share || !canShare()) {
			this._setRole('solo');
			this._connect();
			return this;
		}
		this._share = new TabShare(this.name, this._id, {
			onLead: () => this._becomeLeader(),
			onMessage: (m) => this._onChannel(m),
		});
		this._setRole('follower');
		this._share.start();
		this._askState();
		return this;
	}

	/** Stops for good: closes the socket, leaves the channel, frees the lock. */
	stop() {
		if (this._stopped)
			return;
		this._stopped = true;
		clearTimeout(this._timer);
		this._flushPersist();
		if (typeof globalThis.removeEventListener === 'function') {
			globalThis.removeEventListener('online', this._onOnline);
			globalThis.removeEventListener('offline', this._onOffline);
			globalThis.removeEventListener('pagehide', this._onPageHide);
		}
		this._conn?.close(1000, 'client stop');
		this._conn = null;
		if (this._share) {
			if (this.role === 'leader')
				this._post({ t: 'bye' });
			this._share.stop();
			this._share = null;
		}
	}

	/**
	 * Changes the scope (same fields as hello but the token); the server
	 * answers with a new snapshot.  Tabs sharing a connection share its
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
		this._s = withViews(this._s, this.options.views);
		this._conn?.send(subscribeMessage(this._scope()));
	}

	/** Reconnect now (the network came back, the page became visible). */
	reconnectNow() {
		if (this._stopped || this._fatal)
			return;
		if (this.role === 'follower') {
			this._setStatus(this._leaderStatus || 'connecting', { force: true });
			return;
		}
		if (this._conn?.isActive)
			return;
		this._attempt = 0;
		this._connect();
	}

	/** Forgets the saved state of this subscription (e.g. on sign-out). */
	async forget() {
		await persist.remove(this.name);
	}

	/* --------------------------------------------------------------- state */

	_scope() {
		return { views: this._s.views, properties: this.options.properties, dailyRange: this.options.dailyRange };
	}

	_setStatus(status, extra = {}) {
		const previous = this.status;
		if (status === previous && !extra.force)
			return;
		this.status = status;
		if (status !== 'connected')
			this.stale = true;
		this._emit('status', { status, previous, stale: this.stale, error: this.lastError });
		if (this.role === 'leader')
			this._post({ t: 'status', status, stale: this.stale, error: this.lastError,
				nextRetryAt: this.nextRetryAt });
	}

	_setRole(role) {
		this.role = role;
		this._emit('role', { role });
	}

	_emit(type, detail) {
		this.dispatchEvent(new CustomEvent(type, { detail }));
	}

	/* One server message: the leader's socket, or relayed to a follower. */
	_handle(msg) {
		this.lastMessageAt = Date.now();
		if (typeof msg.server_time === 'string') {
			const t = Date.parse(msg.server_time);
			if (!Number.isNaN(t))
				this.serverOffsetMs = t - Date.now();
		}
		const { state, changes, event } = reduce(this._s, msg);
		this._s = state;
		switch (event) {
		case 'welcome':
			if (msg.resumed)
				this.stale = false;
			this.lastError = null;
			this._emit('welcome', msg);
			break;
		case 'change':
			if (msg.type === 'snapshot') {
				this.stale = (this.role === 'follower' ? this._leaderStatus : this.status) !== 'connected';
				this._emit('change', { source: 'snapshot', seq: msg.seq, changes });
			} else {
				this._emit('change', { source: 'delta', seq: msg.seq, changes,
					applied_at: msg.applied_at, committed_at: msg.committed_at });
			}
			this._schedulePersist();
			break;
		case 'heartbeat':
			this._emit('heartbeat', msg);
			this._schedulePersist();
			break;
		case 'resync':
			this._emit('resync', msg);
			break;
		case 'servererror':
			this.lastError = { code: msg.code, message: msg.message };
			this._emit('servererror', msg);
			break;
		default:
			break;
		}
	}

	/* ------------------------------------------------------ leader: socket */

	_connect() {
		if (this._stopped || this._fatal || this.role === 'follower')
			return;
		clearTimeout(this._timer);
		this.nextRetryAt = null;
		if (browserOffline()) {
			this._setStatus('offline', { force: true });
			return;	/* the 'online' event reconnects */
		}
		/* 'connecting' until connected once; after a drop 'offline' until
		 * the server answers */
		this._setStatus(this._wasConnected ? 'offline' : 'connecting', { force: true });
		const conn = new Connection(this.options.url, {
			onOpen: () => conn.send(helloMessage(this.options.token, this._scope(), this._s)),
			onMessage: (msg) => this._onSocketMessage(conn, msg),
			onClose: (e) => this._onSocketClose(conn, e),
		}, { heartbeatTimeout: this.options.heartbeatTimeout });
		this._conn = conn;
		try {
			conn.open();
		} catch (err) {
			this._conn = null;
			this.lastError = { code: 'connect_failed', message: String(err) };
			this._scheduleReconnect();
		}
	}

	_onSocketMessage(conn, msg) {
		if (this._conn !== conn)
			return;
		this._handle(msg);
		if (this.role === 'leader')
			this._post({ t: 'msg', n: ++this._n, msg });
		if (msg.type === 'welcome') {
			this._wasConnected = true;
			this._setStatus('connected', { force: true });
		} else if (msg.type === 'snapshot' || msg.type === 'delta') {
			if (this.status === 'connected' && this.stale && !this._s.awaitSnapshot) {
				this.stale = false;
				this._setStatus('connected', { force: true });
			}
			this._attempt = 0;
		} else if (msg.type === 'error') {
			this._onServerError(msg);
		}
	}

	_onSocketClose(conn, e) {
		if (this._conn !== conn)
			return;
		this._conn = null;
		if (this._stopped)
			return;
		if (e.timeout) {
			this.lastError = { code: 'timeout', message: 'no message from the server' };
			this._scheduleReconnect();
			return;
		}
		if (this._retryNow) {
			this._retryNow = false;
			this._connect();
			return;
		}
		if (this._fatal || isFatalClose(e.code)) {
			this._fatal = true;
			if (!this.lastError)
				this.lastError = { code: 'closed', message: `closed by the server (${e.code})` };
			this._setStatus('error', { force: true });
			return;
		}
		if (!this.lastError || this.status === 'connected')
			this.lastError = { code: 'closed', message: `connection closed (${e.code}${e.reason ? ' ' + e.reason : ''})` };
		this._scheduleReconnect();
	}

	_onServerError(msg) {
		if (msg.code === 'forbidden_view' && this.options.dropForbiddenViews &&
			this._s.views.includes('portfolio_kpis')) {
			/* a property-scoped token: do without portfolio_kpis */
			this._s = withViews(this._s, this._s.views.filter((v) => v !== 'portfolio_kpis'));
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
		const delay = backoffDelay(this._attempt, { min: this.options.minBackoff, max: this.options.maxBackoff });
		this._attempt = nextAttempt(this._attempt);
		this.nextRetryAt = Date.now() + delay;
		this._setStatus(this._wasConnected || this._attempt > 2 ? 'offline' : 'connecting', { force: true });
		clearTimeout(this._timer);
		this._timer = setTimeout(() => this._connect(), delay);
	}

	_goneOffline() {
		/* the browser says the network is gone: do not wait minutes for the
		 * socket to notice */
		if (this.role === 'follower') {
			this._setStatus('offline', { force: true });
			return;
		}
		this._conn?.close(4000, 'browser offline');
		this._conn = null;
		clearTimeout(this._timer);
		this.nextRetryAt = null;
		this._setStatus('offline', { force: true });
	}

	/* --------------------------------------------------- cross-tab sharing */

	_post(m) {
		this._share?.post(m);
	}

	_askState() {
		this._follow = { ...this._follow, wantState: true };
		this._post({ t: 'want-state' });
	}

	_becomeLeader() {
		this._setRole('leader');
		this._follow = { leaderId: this._id, lastN: -1, wantState: false };
		this._n = 0;
		this._post({ t: 'leader' });
		this._attempt = 0;
		this._connect();
	}

	_stateForChannel(to) {
		const s = this._s;
		return {
			t: 'state', to, n: this._n, seq: s.seq, epoch: s.epoch, scope: s.scope, views: s.views,
			rows: plainRows(s), hasData: s.hasData, status: this.status, stale: this.stale,
			error: this.lastError, lagMs: s.lagMs, serverOffsetMs: this.serverOffsetMs,
			nextRetryAt: this.nextRetryAt, lastBatchAt: s.lastBatchAt, currency: s.currency,
			welcome: s.welcome,
		};
	}

	_onChannel(m) {
		if (this.role === 'leader') {
			if (m.t === 'want-state')
				this._post(this._stateForChannel(m.from));
			else if (m.t === 'subscribe')
				this.subscribe({ views: m.views, properties: m.properties, dailyRange: m.dailyRange });
			return;
		}
		switch (m.t) {
		case 'leader':
			this._follow = { ...this._follow, leaderId: m.from };
			this._askState();
			break;
		case 'state': {
			if (m.to !== this._id)
				break;
			this._follow = { leaderId: m.from, lastN: m.n, wantState: false };
			let s = withViews({ ...this._s, seq: m.seq, epoch: m.epoch, scope: m.scope, lagMs: m.lagMs,
				lastBatchAt: m.lastBatchAt, currency: m.currency ?? this._s.currency,
				welcome: m.welcome ?? this._s.welcome }, m.views);
			this.serverOffsetMs = m.serverOffsetMs;
			this.lastError = m.error;
			this.nextRetryAt = m.nextRetryAt;
			this._leaderStatus = m.status;
			if (m.hasData) {
				const r = replaceAll(s, m.rows);
				s = r.state;
				this._s = s;
				this.stale = m.stale;
				this._emit('change', { source: 'sync', seq: m.seq, changes: r.changes });
			} else {
				this._s = s;
			}
			this._followStatus(m.status, m.stale);
			break;
		}
		case 'msg': {
			const step = followStep(this._follow, m);
			this._follow = step.follow;
			if (step.action === 'ask')
				this._askState();
			else if (step.action === 'apply')
				this._handle(m.msg);
			break;
		}
		case 'status':
			if (m.from !== this._follow.leaderId)
				break;
			this.lastError = m.error;
			this.nextRetryAt = m.nextRetryAt;
			this._leaderStatus = m.status;
			this._followStatus(m.status, m.stale);
			break;
		default:
			break;	/* 'bye': the lock passes on by itself */
		}
	}

	_followStatus(status, stale) {
		if (browserOffline())
			status = 'offline';
		this.stale = status !== 'connected' || stale;
		this._setStatus(status, { force: true });
	}

	/* --------------------------------------------------------- persistence */

	async _restore() {
		const r = persist.fromRecord(await persist.load(this.name), this._s.views);
		if (!r || this._s.hasData)
			return;
		this._s = r.state;
		this.savedAt = r.savedAt;
		this.stale = true;
		this._emit('change', { source: 'restore', seq: this._s.seq, changes: r.changes, savedAt: this.savedAt });
	}

	_schedulePersist() {
		if (!this.options.persist || this.role === 'follower' || this._persistTimer)
			return;
		this._persistTimer = setTimeout(() => this._flushPersist(), 1000);
	}

	_flushPersist() {
		clearTimeout(this._persistTimer);
		this._persistTimer = null;
		if (!this.options.persist || this.role === 'follower' || !this._s.hasData || this._s.awaitSnapshot)
			return;
		persist.save(this.name, persist.toRecord(this._s, new Date().toISOString()));
	}
}

export default LiveKpi;
