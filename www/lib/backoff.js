/*
 * livekpi.js, reconnect timing: jittered exponential backoff and the
 * heartbeat watchdog's deadline.  Pure; the connection (connection.js)
 * owns the timers.
 */

/**
 * The delay before reconnect attempt number `attempt` (0 for the first
 * retry): min doubling up to max, drawn between half and all of it.
 * random() returns [0, 1), Math.random by default.
 */
export function backoffDelay(attempt, { min = 250, max = 10000 } = {}, random = Math.random) {
	const base = Math.min(max, min * 2 ** Math.max(0, attempt));
	return Math.round(base / 2 + random() * base / 2);
}

/** The next attempt number (capped, so that 2 ** attempt stays finite). */
export function nextAttempt(attempt) {
	return Math.min(attempt + 1, 16);
}
