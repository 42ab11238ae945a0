/*
 * livekpi.js, cross-tab sharing: one tab of a browser leads (it holds a Web
 * Lock named after the subscription and owns the WebSocket), the others
 * follow over a BroadcastChannel of the same name.  When the leader goes
 * away the lock passes to the next tab at once.
 *
 * The channel carries: 'leader' (a new leader), 'want-state' (a follower
 * asks for everything), 'state' (the leader's answer, to one follower),
 * 'msg' (a server message, numbered n = 1, 2, … per leader), 'status',
 * 'subscribe' (a follower asks the leader to change the scope), 'bye'.
 * followStep() is the follower's rule for numbered messages, pure.
 */

/** Whether this environment can share (Web Locks and BroadcastChannel). */
export function canShare() {
	return typeof BroadcastChannel !== 'undefined' && typeof navigator !== 'undefined' && !!navigator.locks;
}

/**
 * followStep(follow, m): what a follower does with a numbered 'msg' from
 * the channel.  follow is {leaderId, lastN, wantState}.  Returns
 * {follow, action}: 'apply' (the next message of its leader), 'ask' (a gap:
 * ask for the whole state again), or 'ignore'.
 */
export function followStep(follow, m) {
	if (follow.wantState || m.from !== follow.leaderId)
		return { follow, action: 'ignore' };
	if (m.n !== follow.lastN + 1)
		return { follow: { ...follow, wantState: true }, action: 'ask' };
	return { follow: { ...follow, lastN: m.n }, action: 'apply' };
}

export class TabShare {
	/**
	 * name: the lock's and channel's name.  onLead(): this tab now holds the
	 * lock.  onMessage(m): a message of another tab.
	 */
	constructor(name, id, { onLead, onMessage }) {
		this.name = name;
		this.id = id;
		this.onLead = onLead;
		this.onMessage = onMessage;
		this._channel = null;
		this._release = null;
		this._stopped = false;
	}

	start() {
		this._channel = new BroadcastChannel(this.name);
		this._channel.onmessage = (e) => {
			const m = e.data;
			if (m && m.from !== this.id && !this._stopped)
				this.onMessage(m);
		};
		navigator.locks.request(this.name, { mode: 'exclusive' }, () => {
			if (this._stopped)
				return undefined;
			return new Promise((release) => {
				this._release = release;
				this.onLead();
			});
		}).catch(() => {});
	}

	post(m) {
		if (this._channel)
			this._channel.postMessage({ ...m, from: this.id });
	}

	stop() {
		this._stopped = true;
		if (this._channel) {
			this._channel.close();
			this._channel = null;
		}
		if (this._release) {
			this._release();
			this._release = null;
		}
	}
}
