/*
 * Service worker of the livekpi dashboard: keeps the page's own files so that
 * a reload without network still opens the dashboard, which then shows the
 * last known figures from IndexedDB (marked stale) until it reconnects.
 * Network first: a reachable server always serves the current files.
 * Only the dashboard's static files are handled; /v1/stream, /healthz and
 * /metrics never go through the cache.
 */
const CACHE = 'livekpi-shell-v2';
const SHELL = ['./', 'app.js', 'model.js', 'livekpi.js', 'style.css', 'vendor/uPlot.esm.js', 'vendor/uPlot.min.css',
	'lib/protocol.js', 'lib/store.js', 'lib/backoff.js', 'lib/connection.js', 'lib/share.js',
	'lib/persist.js', 'lib/kpimath.js'];

self.addEventListener('install', (event) => {
	event.waitUntil(caches.open(CACHE)
		.then((c) => Promise.all(SHELL.map((u) => c.add(u).catch(() => {}))))
		.then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
	event.waitUntil(caches.keys()
		.then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
		.then(() => self.clients.claim()));
});

function isShell(url) {
	if (url.origin !== self.location.origin)
		return false;
	const scope = new URL(self.registration.scope).pathname;
	if (!url.pathname.startsWith(scope))
		return false;
	const rest = url.pathname.slice(scope.length);
	return rest === '' || rest === 'index.html' || /^(app|model|livekpi)\.js$/.test(rest) ||
		rest === 'style.css' || rest.startsWith('vendor/') || /^lib\/[a-z]+\.js$/.test(rest);
}

self.addEventListener('fetch', (event) => {
	const req = event.request;
	if (req.method !== 'GET')
		return;
	const url = new URL(req.url);
	if (!isShell(url))
		return;
	const key = url.pathname.endsWith('/index.html') ? new URL('./', url).href : url.origin + url.pathname;
	event.respondWith((async () => {
		try {
			const res = await fetch(req, { cache: 'no-cache' });
			if (res.ok) {
				const copy = res.clone();
				caches.open(CACHE).then((c) => c.put(key, copy)).catch(() => {});
			}
			return res;
		} catch (err) {
			const hit = await caches.match(key);
			if (hit)
				return hit;
			throw err;
		}
	})());
});
