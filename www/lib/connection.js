/*
 * livekpi.js, connection: one WebSocket to /v1/stream with the livekpi.v1
 * subprotocol, and the watchdog that replaces a socket which stopped
 * talking (no message within heartbeatTimeout: heartbeats come every
 * livekpi.heartbeat_interval seconds).  It reports open, message and close
 * to its owner and decides nothing else: reconnecting is the owner's
 * (livekpi.js, with backoff.js).  No DOM.
 */
import { PROTOCOL, parseMessage } from './protocol.js';

export class Connection {
	/**
	 * handlers: onOpen(), onMessage(msg), onClose({code, reason, timeout}).
	 * options: heartbeatTimeout (ms), WebSocket (an implementation, for tests).
	 */
	constructor(url, handlers, { heartbeatTimeout = 45000, WebSocket: Impl = globalThis.WebSocket } = {}) {
		this.url = url;
		this.handlers = handlers;
		this.heartbeatTimeout = heartbeatTimeout;
		this.Impl = Impl;
		this.ws = null;
		this.openedAt = null;
		this._watchdog = null;
	}

	/** Opens the socket; throws when the URL is refused outright. */
	open() {
		const ws = new this.Impl(this.url, PROTOCOL);
		this.ws = ws;
		ws.onopen = () => {
			if (this.ws !== ws)
				return;
			this.openedAt = Date.now();
			this._arm();
			this.handlers.onOpen?.();
		};
		ws.onmessage = (e) => {
			if (this.ws !== ws)
				return;
			const msg = parseMessage(e.data);
			if (!msg)
				return;
			this._arm();
			this.handlers.onMessage?.(msg);
		};
		ws.onerror = () => { /* a close follows */ };
		ws.onclose = (e) => {
			if (this.ws !== ws)
				return;
			this._detach();
			this.handlers.onClose?.({ code: e.code, reason: e.reason || '', timeout: false });
		};
	}

	get isOpen() {
		return !!this.ws && this.ws.readyState === 1;
	}

	/** True while a socket exists that is connecting or open. */
	get isActive() {
		return !!this.ws && this.ws.readyState <= 1;
	}

	send(msg) {
		if (this.isOpen)
			this.ws.send(JSON.stringify(msg));
	}

	/** Closes without reporting a close to the owner. */
	close(code = 1000, reason = 'client stop') {
		const ws = this.ws;
		this._detach();
		if (ws) {
			ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
			try { ws.close(code, reason); } catch { /* already closed */ }
		}
	}

	_detach() {
		clearTimeout(this._watchdog);
		this._watchdog = null;
		this.ws = null;
	}

	_arm() {
		clearTimeout(this._watchdog);
		this._watchdog = setTimeout(() => {
			if (!this.ws)
				return;
			this.close(4000, 'heartbeat timeout');
			this.handlers.onClose?.({ code: 4000, reason: 'no message from the server', timeout: true });
		}, this.heartbeatTimeout);
	}
}
