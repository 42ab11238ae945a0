/*
 * The dashboard in a real browser against a real cluster (issue 4, item 4).
 * Started by test/suites/browser.sh, which provides through the environment:
 *   LIVEKPI_URL        http://127.0.0.1:PORT/ of the push worker
 *   LIVEKPI_TOKEN      a whole-portfolio token
 *   LIVEKPI_PSQL       psql binary; PGHOST/PGPORT/PGUSER/PGDATABASE set
 *   LIVEKPI_RESTART    script that restarts the cluster (pg_ctl restart)
 *   LIVEKPI_ARTIFACTS  where screenshots go
 *   LIVEKPI_CHROMIUM   the browser (default /usr/bin/chromium)
 * The steps share one browser context and run in order.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.LIVEKPI_URL;
const TOKEN = process.env.LIVEKPI_TOKEN;
const PSQL = process.env.LIVEKPI_PSQL || 'psql';
const ARTIFACTS = process.env.LIVEKPI_ARTIFACTS || path.resolve('test/browser/artifacts');
const CHROMIUM = process.env.LIVEKPI_CHROMIUM || '/usr/bin/chromium';

if (!BASE || !TOKEN)
	throw new Error('run me through test/suites/browser.sh (LIVEKPI_URL and LIVEKPI_TOKEN unset)');

mkdirSync(ARTIFACTS, { recursive: true });

/* card id on the page → column of property_kpis / portfolio_kpis */
const CARD_FIELDS = {
	revenue: 'room_revenue',
	occupancy: 'occupancy',
	adr: 'adr',
	revpar: 'revpar',
	arrivals: 'arrivals',
	cancellation_rate: 'cancellation_rate',
	approved_expenses: 'approved_expenses',
	noi: 'noi',
};

function sql(query) {
	return execFileSync(PSQL, ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', query], { encoding: 'utf8' }).trim();
}

function sqlJson(query) {
	const out = sql(query);
	return out ? JSON.parse(out) : null;
}

function lit(v) {
	return `'${String(v).replace(/'/g, "''")}'`;
}

/* The SQL row the page should show for its current selection. */
function expectedRow(sel) {
	if (sel.property === 'all')
		return sqlJson(`SELECT to_jsonb(k) FROM livekpi.portfolio_kpis k WHERE month = ${lit(sel.month)}`);
	return sqlJson(`SELECT to_jsonb(k) FROM livekpi.property_kpis k
		WHERE property_id = ${lit(JSON.parse(sel.property))} AND month = ${lit(sel.month)}`);
}

function expectedCards(row) {
	const out = {};
	for (const [card, field] of Object.entries(CARD_FIELDS)) {
		const v = row ? row[field] : (['occupancy', 'adr', 'revpar', 'cancellation_rate'].includes(field) ? null : 0);
		out[card] = v === null || v === undefined ? null : Number(v);
	}
	return out;
}

async function pageCards(page) {
	return page.evaluate((ids) => {
		const out = {};
		for (const id of ids) {
			const v = document.querySelector(`.card[data-kpi="${id}"] .value`)?.dataset.value;
			out[id] = v === undefined || v === '' ? null : Number(v);
		}
		return out;
	}, Object.keys(CARD_FIELDS));
}

async function selection(page) {
	return page.evaluate(() => ({
		property: document.getElementById('property').value,
		month: document.getElementById('month').value,
	}));
}

async function waitLive(page, timeout = 10000) {
	await page.waitForFunction(() => document.body.classList.contains('loaded') &&
		document.documentElement.dataset.livekpiStatus === 'connected' &&
		!document.body.classList.contains('stale'), null, { timeout });
}

async function waitCards(page, want, timeout) {
	await page.waitForFunction((w) => {
		for (const [id, v] of Object.entries(w)) {
			const raw = document.querySelector(`.card[data-kpi="${id}"] .value`)?.dataset.value;
			const got = raw === undefined || raw === '' ? null : Number(raw);
			if (got !== v)
				return false;
		}
		return true;
	}, want, { timeout, polling: 25 });
}

async function clients() {
	return Number(sql('SELECT count(*) FROM livekpi.clients'));
}

/* Polls until fn() returns true, or fails after timeout ms. */
async function eventually(fn, timeout, what) {
	const end = Date.now() + timeout;
	let last;
	while (Date.now() < end) {
		last = await fn();
		if (last === true)
			return;
		await new Promise((r) => setTimeout(r, 50));
	}
	assert.fail(`${what} (last: ${JSON.stringify(last)})`);
}

async function shot(page, name, opts = {}) {
	await page.screenshot({ path: path.join(ARTIFACTS, name + '.png'), ...opts });
}

/* A confirmed two-night booking inside `month` (first day of month). */
function insertBooking(propertyId, month, amount, day = 10) {
	sql(`INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
		VALUES (${lit(propertyId)}, ${lit(month)}::date + ${day - 1}, ${lit(month)}::date + ${day + 1}, ${amount}, 'confirmed')`);
}

let browser;
let context;
let tab1;
let tab2;
let tab3;
let month;

before(async () => {
	browser = await chromium.launch({
		executablePath: CHROMIUM,
		args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
			'--disable-background-networking', '--disable-component-update', '--disable-sync'],
	});
	context = await browser.newContext({ viewport: { width: 1366, height: 900 }, locale: 'en-US', timezoneId: 'UTC' });
	context.on('weberror', (e) => console.log('page error:', e.error().message));
});

after(async () => {
	await browser?.close();
});

test('first paint shows exactly the SQL figures of the selected month', async () => {
	tab1 = await context.newPage();
	tab1.on('console', (m) => m.type() === 'error' && console.log('tab1 console:', m.text()));
	await tab1.goto(BASE + '#token=' + encodeURIComponent(TOKEN));
	await waitLive(tab1);

	/* the token left the address bar and is kept in the browser */
	assert.ok(!tab1.url().includes('token'), `token still in the address bar: ${tab1.url()}`);
	assert.equal(await tab1.evaluate(() => localStorage.getItem('livekpi.token')), TOKEN);

	const sel = await selection(tab1);
	month = sel.month;
	assert.equal(sel.property, 'all');
	assert.match(month, /^\d{4}-\d{2}-01$/);
	const row = expectedRow(sel);
	assert.ok(row, `portfolio_kpis has no row for ${month}: the demo data should cover it`);
	assert.deepEqual(await pageCards(tab1), expectedCards(row));

	/* formatted for people: currency with separators, percentages */
	const revenueText = await tab1.textContent('.card[data-kpi="revenue"] .value');
	assert.equal(revenueText, new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' }).format(row.room_revenue));
	const occText = await tab1.textContent('.card[data-kpi="occupancy"] .value');
	assert.match(occText, /^\d+(\.\d)?%$/);
	await shot(tab1, '01-first-paint');

	/* one property: the property_kpis row */
	const prop = sql(`SELECT property_id FROM livekpi.property_kpis WHERE month = ${lit(month)} ORDER BY property_id LIMIT 1`);
	await tab1.selectOption('#property', JSON.stringify(Number(prop)));
	const sel1 = await selection(tab1);
	assert.deepEqual(await pageCards(tab1), expectedCards(expectedRow(sel1)));
	await shot(tab1, '02-one-property');

	/* and the previous month, through the keyboard */
	await tab1.focus('#prev-month');
	await tab1.keyboard.press('Enter');
	const sel2 = await selection(tab1);
	assert.notEqual(sel2.month, month);
	assert.deepEqual(await pageCards(tab1), expectedCards(expectedRow(sel2)));

	await tab1.selectOption('#property', 'all');
	await tab1.selectOption('#month', month);
	assert.deepEqual(await pageCards(tab1), expectedCards(row));
});

test('a committed booking changes the figure within 2 s, highlighted, with a fresh "updated" time', async () => {
	const before = await pageCards(tab1);
	/* let "updated N s ago" grow first, so that a fresh one can be told apart */
	await new Promise((r) => setTimeout(r, 2200));
	const t0 = Date.now();
	insertBooking(1, month, 1240);
	const want = before.revenue + 1240;
	await waitCards(tab1, { revenue: Math.round(want * 100) / 100 }, 2000);
	const took = Date.now() - t0;
	console.log(`# commit → revenue card: ${took} ms`);
	assert.ok(took <= 2000, `took ${took} ms`);

	assert.ok(await tab1.evaluate(() => document.querySelector('.card[data-kpi="revenue"]').classList.contains('flash')),
		'the changed card is highlighted');
	const updated = await tab1.textContent('.card[data-kpi="revenue"] .updated');
	assert.match(updated, /^updated [0-2] s ago$/);
	const arrivals = await pageCards(tab1);
	assert.equal(arrivals.arrivals, before.arrivals + 1);

	/* the notice summarises the batch and does not take the focus */
	await tab1.waitForSelector('.toast', { timeout: 2000 });
	const notice = await tab1.textContent('.toast .toast-text');
	assert.match(notice, /\+1 booking/);
	assert.match(notice, /\+\$1,240 revenue/);
	assert.notEqual(await tab1.evaluate(() => document.activeElement?.closest('.toasts') ? 'toast' : 'other'), 'toast');

	/* exactly the database's figures */
	sql('SELECT livekpi.sync()');
	assert.deepEqual(await pageCards(tab1), expectedCards(expectedRow(await selection(tab1))));
	await shot(tab1, '03-after-booking');
});

test('a second and a third tab without the token share the one connection', async () => {
	tab2 = await context.newPage();
	await tab2.goto(BASE);
	await waitLive(tab2);
	tab3 = await context.newPage();
	await tab3.setViewportSize({ width: 390, height: 844 });	/* phone width */
	await tab3.goto(BASE);
	await waitLive(tab3);

	const want = await pageCards(tab1);
	assert.deepEqual(await pageCards(tab2), want);
	assert.deepEqual(await pageCards(tab3), want);
	assert.equal(await tab1.evaluate(() => document.documentElement.dataset.livekpiRole), 'leader');
	assert.equal(await tab2.evaluate(() => document.documentElement.dataset.livekpiRole), 'follower');
	assert.equal(await tab3.evaluate(() => document.documentElement.dataset.livekpiRole), 'follower');

	await eventually(async () => (await clients()) === 1, 2000, 'one connection in livekpi.clients');
	await new Promise((r) => setTimeout(r, 500));
	assert.equal(await clients(), 1);

	/* followers get live changes too */
	const before = await pageCards(tab2);
	insertBooking(2, month, 310, 12);
	const revenue = Math.round((before.revenue + 310) * 100) / 100;
	await waitCards(tab2, { revenue }, 2000);
	await waitCards(tab3, { revenue }, 2000);
	await shot(tab2, '04-follower-tab');
	await shot(tab3, '05-phone-width', { fullPage: true });
});

test('closing the leader hands over within 1 s and updates continue', async () => {
	const t0 = Date.now();
	await tab1.close();
	await Promise.race([
		tab2.waitForFunction(() => document.documentElement.dataset.livekpiRole === 'leader' &&
			document.documentElement.dataset.livekpiStatus === 'connected', null, { timeout: 1000, polling: 10 }),
		tab3.waitForFunction(() => document.documentElement.dataset.livekpiRole === 'leader' &&
			document.documentElement.dataset.livekpiStatus === 'connected', null, { timeout: 1000, polling: 10 }),
	]);
	const took = Date.now() - t0;
	console.log(`# leader closed → new leader connected: ${took} ms`);
	assert.ok(took <= 1000, `handover took ${took} ms`);
	await eventually(async () => (await clients()) === 1, 2000, 'one connection after the handover');

	const before = await pageCards(tab2);
	insertBooking(1, month, 455.5, 14);
	const revenue = Math.round((before.revenue + 455.5) * 100) / 100;
	await waitCards(tab2, { revenue }, 2000);
	await waitCards(tab3, { revenue }, 2000);
	sql('SELECT livekpi.sync()');
	assert.deepEqual(await pageCards(tab2), expectedCards(expectedRow(await selection(tab2))));
});

test('offline: figures stay, marked stale; a write made meanwhile appears after reconnect', async () => {
	const before = await pageCards(tab2);
	await context.setOffline(true);
	for (const tab of [tab2, tab3]) {
		await tab.waitForFunction(() => document.getElementById('conn-text').textContent === 'Offline' &&
			document.body.classList.contains('stale'), null, { timeout: 2000 });
		assert.ok(await tab.isVisible('text=offline'), 'the word "offline" is visible');
	}
	assert.deepEqual(await pageCards(tab2), before, 'values stay while offline');

	insertBooking(3, month, 777, 5);
	sql('SELECT livekpi.sync()');
	await new Promise((r) => setTimeout(r, 800));
	assert.deepEqual(await pageCards(tab2), before, 'nothing arrives while offline');
	await shot(tab2, '06-offline');
	await shot(tab3, '07-offline-phone');

	await context.setOffline(false);
	const revenue = Math.round((before.revenue + 777) * 100) / 100;
	await waitCards(tab2, { revenue }, 10000);
	await waitCards(tab3, { revenue }, 10000);
	await waitLive(tab2);
	const leader = (await tab2.evaluate(() => document.documentElement.dataset.livekpiRole)) === 'leader' ? tab2 : tab3;
	assert.equal(await leader.evaluate(() => globalThis.livekpi.client.welcome?.resumed), true,
		'the reconnect resumed from the last seq');
	assert.deepEqual(await pageCards(tab2), expectedCards(expectedRow(await selection(tab2))));
	await eventually(async () => (await clients()) === 1, 3000, 'one connection after going online');
});

test('a server restart is survived', async () => {
	execFileSync(process.env.LIVEKPI_RESTART, { stdio: 'inherit' });
	await waitLive(tab2, 30000);
	await waitLive(tab3, 30000);
	const before = await pageCards(tab2);
	insertBooking(2, month, 99.99, 3);
	const revenue = Math.round((before.revenue + 99.99) * 100) / 100;
	await waitCards(tab2, { revenue }, 3000);
	await waitCards(tab3, { revenue }, 3000);
	sql('SELECT livekpi.sync()');
	assert.deepEqual(await pageCards(tab2), expectedCards(expectedRow(await selection(tab2))));
	await eventually(async () => (await clients()) === 1, 3000, 'one connection after the restart');
	await shot(tab2, '08-after-restart');
});

test('a reload without the server shows the last known figures at once, marked stale', async () => {
	const want = await pageCards(tab2);
	await tab3.close();
	/* wait for the last state to reach IndexedDB (saved at most 1 s after a change) */
	await new Promise((r) => setTimeout(r, 1500));
	let unreachable = true;
	await context.routeWebSocket(/\/v1\/stream/, (ws) => {
		if (unreachable)
			ws.close({ code: 1011, reason: 'test: server unreachable' });
		else
			ws.connectToServer();
	});
	await tab2.reload();
	await tab2.waitForFunction(() => document.body.classList.contains('loaded'), null, { timeout: 3000 });
	assert.deepEqual(await pageCards(tab2), want);
	assert.ok(await tab2.evaluate(() => document.body.classList.contains('stale')), 'restored figures are marked stale');
	assert.notEqual(await tab2.textContent('#conn-text'), 'Connected');
	await shot(tab2, '09-restored-stale');
	unreachable = false;
	await waitLive(tab2, 15000);
});

test('a reload while the browser is offline opens the page and shows the last known figures', async () => {
	const want = await pageCards(tab2);
	await new Promise((r) => setTimeout(r, 1500));
	await context.setOffline(true);
	try {
		await tab2.reload();
		await tab2.waitForFunction(() => document.body.classList.contains('loaded'), null, { timeout: 3000 });
		assert.deepEqual(await pageCards(tab2), want);
		assert.ok(await tab2.evaluate(() => document.body.classList.contains('stale')), 'marked stale');
		assert.equal(await tab2.textContent('#conn-text'), 'Offline');
		await shot(tab2, '10-offline-reload');
	} finally {
		await context.setOffline(false);
	}
	await waitLive(tab2, 15000);
	sql('SELECT livekpi.sync()');
	assert.deepEqual(await pageCards(tab2), expectedCards(expectedRow(await selection(tab2))));
});
