/*
 * The dashboard's layout and words (issue 11 item 6), measured in Chromium
 * at 1400×1000 and at 390×844 (a phone), with screenshots: values never
 * cut (scrollWidth ≤ clientWidth; the full value in the title and one tap
 * away when shown short), the change notice in its own line (its box meets
 * no card and no button) without taking the focus, month to date compared
 * with the same days of the previous month and labelled so, occupancy above
 * 100 % with its warning and an axis that shows it, plain words in the
 * footer, the configured currency (livekpi.currency) in the page's meta and
 * figures, property names, and a property-scoped token's totals equal to
 * livekpi.kpis() (the page sums rows exactly).
 * Started by test/suites/browser.sh (environment as in dashboard.test.mjs).
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

const SIZES = [
	{ name: 'desktop', width: 1400, height: 1000 },
	{ name: 'phone', width: 390, height: 844 },
];

function sql(query) {
	return execFileSync(PSQL, ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', query], { encoding: 'utf8' }).trim();
}

const usd = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' });
const dayMonth = new Intl.DateTimeFormat('en-US', { day: 'numeric', month: 'short', timeZone: 'UTC' });
const pct0 = new Intl.NumberFormat('en-US', { style: 'percent', maximumFractionDigits: 0 });

let browser;
before(async () => {
	browser = await chromium.launch({
		executablePath: CHROMIUM,
		args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
			'--disable-background-networking', '--disable-component-update', '--disable-sync'],
	});
});
after(async () => {
	await browser?.close();
});

async function openPage(size, token = TOKEN) {
	const context = await browser.newContext({ viewport: { width: size.width, height: size.height },
		locale: 'en-US', timezoneId: 'UTC', hasTouch: size.name === 'phone' });
	const page = await context.newPage();
	page.on('pageerror', (e) => console.log(`${size.name} page error:`, e.message));
	await page.goto(BASE + '#token=' + encodeURIComponent(token));
	await waitLive(page);
	return page;
}

async function waitLive(page, timeout = 15000) {
	await page.waitForFunction(() => document.body.classList.contains('loaded') &&
		document.documentElement.dataset.livekpiStatus === 'connected' &&
		!document.body.classList.contains('stale'), null, { timeout });
}

async function shot(page, name) {
	await page.screenshot({ path: path.join(ARTIFACTS, name + '.png'), fullPage: true });
}

/* Every value element: its text fits (no cut), and its title is the full value. */
async function valueFits(page) {
	return page.evaluate(() => Array.from(document.querySelectorAll('.card .value')).map((el) => ({
		id: el.closest('.card').dataset.kpi,
		scroll: el.scrollWidth,
		client: el.clientWidth,
		text: el.textContent,
		title: el.title,
		value: el.dataset.value,
		compact: el.classList.contains('compact'),
	})));
}

function assertFits(values, where) {
	for (const v of values) {
		assert.ok(v.scroll <= v.client, `${where}: ${v.id} is cut: "${v.text}" needs ${v.scroll}px of ${v.client}px`);
		assert.ok(v.title && !v.title.includes('…'), `${where}: ${v.id} has no full title`);
		assert.ok(!v.text.includes('…'), `${where}: ${v.id} shows an ellipsis`);
	}
}

function intersects(a, b) {
	return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

const month = sql("SELECT to_char(date_trunc('month', current_date), 'YYYY-MM-DD')");
const today = sql("SELECT to_char(current_date, 'YYYY-MM-DD')");

test('large values never cut, at 1400×1000 and 390×844; short form shows the full value on tap', async () => {
	/* a month revenue in the millions for property 1 */
	sql(`INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
		VALUES (1, '${month}'::date + 2, '${month}'::date + 4, 1234567.89, 'confirmed')`);
	sql('SELECT livekpi.sync()');
	const revenue = Number(sql(`SELECT room_revenue FROM livekpi.portfolio_kpis WHERE month = '${month}'`));
	for (const size of SIZES) {
		const page = await openPage(size);
		await page.waitForFunction((v) => Number(document.querySelector('.card[data-kpi="revenue"] .value').dataset.value) === v,
			revenue, { timeout: 5000 });
		const values = await valueFits(page);
		assertFits(values, size.name);
		const rev = values.find((v) => v.id === 'revenue');
		assert.equal(rev.title, usd.format(revenue), `${size.name}: the title is the full value`);
		if (rev.compact) {
			assert.match(rev.text, /^\$\d+(\.\d+)?[KMB]$/, `${size.name}: a short form such as $1.23M`);
			await page.click('.card[data-kpi="revenue"] .value');
			assert.equal(await page.textContent('#k-revenue-full'), usd.format(revenue), 'a tap shows the full value');
			assert.ok(await page.isVisible('#k-revenue-full'));
		} else {
			assert.equal(rev.text, usd.format(revenue));
		}
		if (size.name === 'phone')
			assert.ok(rev.compact, 'on a phone the revenue in the millions is shown short');
		/* one property too */
		await page.selectOption('#property', '1');
		assertFits(await valueFits(page), `${size.name}, property 1`);
		await shot(page, `20-large-values-${size.name}`);
		await page.context().close();
	}
});

test('the change notice has its own line: it covers no card or button and does not take the focus', async () => {
	for (const size of SIZES) {
		const page = await openPage(size);
		await page.focus('#month');
		const focusedBefore = await page.evaluate(() => document.activeElement?.id);
		sql(`INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
			VALUES (2, '${month}'::date + 5, '${month}'::date + 7, 410.25, 'confirmed')`);
		await page.waitForSelector('.toast', { timeout: 5000 });
		assert.match(await page.textContent('.toast .toast-text'), /\+1 booking, \+\$410 revenue/);
		const boxes = await page.evaluate(() => {
			const r = (el) => { const b = el.getBoundingClientRect(); return { x: b.x, y: b.y, width: b.width, height: b.height, what: el.className || el.id || el.tagName }; };
			return {
				notice: Array.from(document.querySelectorAll('.toast')).map(r),
				others: Array.from(document.querySelectorAll('.card, button, select')).filter((el) => el.offsetParent !== null).map(r),
				position: getComputedStyle(document.getElementById('toasts')).position,
			};
		});
		assert.equal(boxes.position, 'static', 'the notice area is in the flow of the page, not an overlay');
		for (const n of boxes.notice)
			for (const o of boxes.others)
				assert.ok(!intersects(n, o), `${size.name}: the notice meets ${o.what}`);
		assert.equal(await page.evaluate(() => document.activeElement?.id), focusedBefore, 'the focus stays where it was');
		await shot(page, `21-notice-${size.name}`);
		await page.context().close();
	}
});

test('month to date is compared with the same days of the previous month, and labelled so', async () => {
	const page = await openPage(SIZES[0]);
	const day = Number(today.slice(8, 10));
	const prevMonth = sql(`SELECT to_char(date_trunc('month', current_date) - interval '1 month', 'YYYY-MM-DD')`);
	const prevTo = sql(`SELECT to_char(least(date_trunc('month', current_date) - interval '1 month' + (${day} - 1) * interval '1 day',
		date_trunc('month', current_date) - interval '1 day'), 'YYYY-MM-DD')`);
	const d = (s) => dayMonth.format(new Date(s + 'T00:00:00Z'));
	const want = `Month to date ${d(month)}–${d(today)}, compared with ${d(prevMonth)}–${d(prevTo)}`;
	assert.equal(await page.textContent('#compare-note'), want);
	/* the revenue card's change, from SQL's booking_daily */
	const [cur, prev] = sql(`SELECT coalesce(sum(room_revenue) FILTER (WHERE day BETWEEN '${month}' AND '${today}'), 0),
		coalesce(sum(room_revenue) FILTER (WHERE day BETWEEN '${prevMonth}' AND '${prevTo}'), 0)
		FROM livekpi.booking_daily`).split('|').map(Number);
	const change = (cur - prev) / Math.abs(prev);
	const arrow = Math.abs(change) < 0.005 ? '■' : change > 0 ? '▲' : '▼';
	assert.equal(await page.textContent('#k-revenue-trend'),
		`MTD ${arrow} ${pct0.format(Math.abs(change))} vs ${d(prevMonth)}–${d(prevTo)}`);
	assert.equal(await page.textContent('#k-approved_expenses-trend'), '', 'no daily expenses: no comparison');
	/* a past month: the whole previous month */
	await page.click('#prev-month');
	assert.equal(await page.isVisible('#compare-note'), false);
	assert.match(await page.textContent('#k-revenue-trend'), / vs [A-Z][a-z]{2}$/);
	await page.context().close();
});

test('occupancy above 100 %: shown as such, with a warning to set units, on an axis that reaches it', async () => {
	/* property 3 (1 unit): three stays over the same 20 nights */
	for (let i = 0; i < 3; i++)
		sql(`INSERT INTO public.bookings (property_id, check_in, check_out, total_amount, status)
			VALUES (3, '${month}', '${month}'::date + 20, 2000, 'confirmed')`);
	sql('SELECT livekpi.sync()');
	const occ = Number(sql(`SELECT occupancy FROM livekpi.property_kpis WHERE property_id = 3 AND month = '${month}'`));
	assert.ok(occ > 1, `the data should overbook property 3 (occupancy ${occ})`);
	for (const size of SIZES) {
		const page = await openPage(size);
		await page.selectOption('#property', '3');
		const occText = await page.textContent('#k-occupancy-value');
		assert.ok(Number(occText.replace(/[^0-9.]/g, '')) > 100, `occupancy shows above 100 %: ${occText}`);
		assert.ok(await page.isVisible('#units-warning'), 'the warning is visible');
		assert.match(await page.textContent('#units-warning'), /Set units/);
		assert.match(await page.textContent('#units-warning'), /UPDATE livekpi\.properties SET units = \d+ WHERE property_id = 3;/);
		assert.equal(await page.textContent('#k-occupancy-warn'), 'Above 100 %: set units');
		const axis = await page.evaluate(() => globalThis.livekpi.occupancyAxis);
		assert.ok(axis[1] >= occ * 100, `the occupancy axis reaches ${occ * 100} % (max ${axis[1]})`);
		await shot(page, `22-overbooked-${size.name}`);
		/* a property within its units: no warning */
		const fine = sql(`SELECT property_id FROM livekpi.property_kpis WHERE month = '${month}' AND occupancy <= 1 ORDER BY property_id LIMIT 1`);
		if (fine) {
			await page.selectOption('#property', fine);
			assert.equal(await page.isVisible('#units-warning'), false);
			assert.equal(await page.isVisible('#k-occupancy-warn'), false);
		}
		await page.context().close();
	}
});

test('plain words in the footer', async () => {
	for (const size of SIZES) {
		const page = await openPage(size);
		const foot = await page.textContent('footer');
		assert.doesNotMatch(foot, /Batch|seq|connection for this browser|leader|follower/i);
		assert.match(foot, /Figures are live/);
		await page.context().close();
	}
});

test('property names, where livekpi.properties.name is set', async (t) => {
	const hasName = sql(`SELECT count(*) FROM information_schema.columns
		WHERE table_schema = 'livekpi' AND table_name = 'properties' AND column_name = 'name'`) === '1';
	if (!hasName)
		return t.skip('livekpi.properties.name is not in this build');
	sql(`UPDATE livekpi.properties SET name = 'Harbour View Loft' WHERE property_id = 2`);
	sql('SELECT livekpi.sync()');
	const page = await openPage(SIZES[1]);
	const options = await page.$$eval('#property option', (os) => os.map((o) => o.textContent));
	assert.ok(options.some((o) => o.startsWith('Harbour View Loft')), `names in the list: ${options}`);
	assert.ok(options.some((o) => o.startsWith('Property 1')), 'a property without a name: "Property N"');
	await page.selectOption('#property', '2');
	assert.match(await page.textContent('#period'), /Harbour View Loft/);
	await page.context().close();
	sql(`UPDATE livekpi.properties SET name = NULL WHERE property_id = 2`);
});

test('a property-scoped token: totals equal livekpi.kpis(), summed exactly', async () => {
	const scoped = sql(`SELECT livekpi.create_token('browser-scoped', '{1,2}')`);
	const page = await openPage(SIZES[0], scoped);
	assert.equal(await page.evaluate(() => globalThis.livekpi.client.hasView('portfolio_kpis')), false);
	const last = sql(`SELECT to_char((date_trunc('month', current_date) + interval '1 month - 1 day'), 'YYYY-MM-DD')`);
	const want = JSON.parse(sql(`SELECT to_jsonb(k) FROM livekpi.kpis('${month}', '${last}', ARRAY[1, 2]) k`));
	const got = await page.evaluate(() => Object.fromEntries(Array.from(document.querySelectorAll('.card'))
		.map((c) => [c.dataset.kpi, c.querySelector('.value').dataset.value])));
	const fields = { revenue: 'room_revenue', occupancy: 'occupancy', adr: 'adr', revpar: 'revpar', arrivals: 'arrivals',
		cancellation_rate: 'cancellation_rate', approved_expenses: 'approved_expenses', noi: 'noi' };
	for (const [card, f] of Object.entries(fields))
		assert.equal(got[card] === '' ? null : Number(got[card]), want[f] === null ? null : Number(want[f]), `${card} = kpis().${f}`);
	await shot(page, '23-scoped-token');
	await page.context().close();
	sql(`SELECT livekpi.revoke_token('browser-scoped')`);
});

test('the configured currency everywhere: welcome, the page\'s meta, the figures', async () => {
	sql(`ALTER SYSTEM SET livekpi.currency = 'EUR'`);
	sql('SELECT pg_reload_conf()');
	try {
		const context = await browser.newContext({ viewport: { width: 390, height: 844 }, locale: 'en-US', timezoneId: 'UTC' });
		const page = await context.newPage();
		const end = Date.now() + 15000;
		let currency;
		/* the push worker reads the new setting at its next loop: reload until it says so */
		for (;;) {
			await page.goto(BASE + '#token=' + encodeURIComponent(TOKEN));
			await waitLive(page);
			currency = await page.evaluate(() => globalThis.livekpi.client.welcome?.currency);
			if (currency === 'EUR' || Date.now() > end)
				break;
			await new Promise((r) => setTimeout(r, 200));
		}
		assert.equal(currency, 'EUR', 'welcome carries livekpi.currency');
		await page.waitForFunction(() => document.querySelector('meta[name="livekpi-currency"]').content === 'EUR', null, { timeout: 3000 });
		assert.match(await page.getAttribute('#k-revenue-value', 'title'), /€/);
		assert.doesNotMatch(await page.textContent('main'), /\$/);
		await shot(page, '24-currency-eur');
		await context.close();
	} finally {
		sql('ALTER SYSTEM RESET livekpi.currency');
		sql('SELECT pg_reload_conf()');
	}
});
