/*
 * The livekpi dashboard (SPEC section 8), on top of livekpi.js and uPlot
 * (committed in vendor/).  Plain ES module, no build step.  livekpi.js
 * keeps the state and never touches the DOM; this file draws it.  Sums and
 * ratios over rows (a property-scoped token has no portfolio_kpis, month to
 * date) come from lib/kpimath.js, exact as SQL computes them; floating
 * point is used only for the percentage of a change.
 */
import { LiveKpi } from './livekpi.js';
import * as kpimath from './lib/kpimath.js';
import * as model from './model.js';
import uPlot from './vendor/uPlot.esm.js';

const TOKEN_KEY = 'livekpi.token';
const SELECTION_KEY = 'livekpi.selection';
const VIEWS = ['property_kpis', 'portfolio_kpis', 'expense_monthly', 'booking_daily'];

const $ = (id) => document.getElementById(id);

/* ------------------------------------------------------------- formatting */

const locale = navigator.languages?.[0] || navigator.language || 'en-US';

function configuredCurrency() {
	const fromWindow = globalThis.LIVEKPI_CONFIG?.currency;
	const fromMeta = document.querySelector('meta[name="livekpi-currency"]')?.content;
	for (const c of [fromWindow, fromMeta]) {
		if (typeof c === 'string' && /^[A-Za-z]{3}$/.test(c.trim())) {
			try {
				new Intl.NumberFormat(locale, { style: 'currency', currency: c.trim() });
				return c.trim().toUpperCase();
			} catch { /* unknown code: next */ }
		}
	}
	return 'USD';
}

let fmt;
function makeFormats(currency) {
	fmt = {
		currency,
		money: new Intl.NumberFormat(locale, { style: 'currency', currency }),
		moneyRound: new Intl.NumberFormat(locale, { style: 'currency', currency, maximumFractionDigits: 0 }),
		moneyCompact: new Intl.NumberFormat(locale, { style: 'currency', currency, notation: 'compact', maximumFractionDigits: 1 }),
		moneyCompact2: new Intl.NumberFormat(locale, { style: 'currency', currency, notation: 'compact', maximumFractionDigits: 2 }),
		intCompact: new Intl.NumberFormat(locale, { notation: 'compact', maximumFractionDigits: 2 }),
		dayMonth: new Intl.DateTimeFormat(locale, { day: 'numeric', month: 'short', timeZone: 'UTC' }),
		int: new Intl.NumberFormat(locale, { maximumFractionDigits: 0 }),
		pct: new Intl.NumberFormat(locale, { style: 'percent', minimumFractionDigits: 1, maximumFractionDigits: 1 }),
		pct0: new Intl.NumberFormat(locale, { style: 'percent', maximumFractionDigits: 0 }),
		pts: new Intl.NumberFormat(locale, { maximumFractionDigits: 1 }),
		monthLong: new Intl.DateTimeFormat(locale, { month: 'long', year: 'numeric', timeZone: 'UTC' }),
		monthShort: new Intl.DateTimeFormat(locale, { month: 'short', timeZone: 'UTC' }),
		monthShortYear: new Intl.DateTimeFormat(locale, { month: 'short', year: '2-digit', timeZone: 'UTC' }),
		time: new Intl.DateTimeFormat(locale, { hour: '2-digit', minute: '2-digit', second: '2-digit' }),
		dateTime: new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeStyle: 'medium' }),
	};
}
makeFormats(configuredCurrency());

/* The page's currency meta follows the server's livekpi.currency. */
function setCurrency(cur) {
	if (typeof cur !== 'string' || !/^[A-Z]{3}$/.test(cur))
		return false;
	const meta = document.querySelector('meta[name="livekpi-currency"]');
	if (meta && meta.content !== cur)
		meta.content = cur;
	if (cur === fmt.currency)
		return false;
	try {
		makeFormats(cur);
	} catch {
		return false;	/* a code this browser does not know: keep the current one */
	}
	lastTrendData = lastExpData = null;
	return true;
}

const DASH = '—';

function format(kind, v) {
	if (v === null || v === undefined || Number.isNaN(v))
		return DASH;
	switch (kind) {
	case 'money': return fmt.money.format(v);
	case 'pct': return fmt.pct.format(v);
	case 'int': return fmt.int.format(v);
	default: return String(v);
	}
}

/* The short form of a value, for when the full one does not fit ($1.23M). */
function formatCompact(kind, v) {
	if (v === null || v === undefined || Number.isNaN(v))
		return DASH;
	switch (kind) {
	case 'money': return Math.abs(v) < 1000 ? fmt.moneyRound.format(v) : fmt.moneyCompact2.format(v);
	case 'int': return fmt.intCompact.format(v);
	default: return format(kind, v);
	}
}

function signed(kind, d) {
	const s = kind === 'money' ? fmt.moneyRound.format(Math.abs(d)) : fmt.int.format(Math.abs(d));
	return (d < 0 ? '−' : '+') + s;
}

function plural(n, one, many) {
	return `${fmt.int.format(n)} ${Math.abs(n) === 1 ? one : many}`;
}

function ago(ms) {
	const s = Math.max(0, Math.round(ms / 1000));
	if (s < 60)
		return `${s} s ago`;
	const m = Math.floor(s / 60);
	if (m < 60)
		return `${m} min ago`;
	const h = Math.floor(m / 60);
	if (h < 48)
		return `${h} h ago`;
	return `${Math.floor(h / 24)} days ago`;
}

/* ------------------------------------------------------------ month math */

function monthOf(date) {
	return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, '0')}-01`;
}

/* Today in this browser's calendar, 'YYYY-MM-DD'. */
function todayLocal() {
	const d = new Date();
	return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}

const addMonths = kpimath.addMonths;

/* booking_daily is read for the previous month and this one up to today:
 * month to date and the same days of the previous month. */
function dailyRange() {
	const today = todayLocal();
	return { from: addMonths(today.slice(0, 8) + '01', -1), to: today };
}

function monthDate(month) {
	return new Date(month + 'T00:00:00Z');
}

/* --------------------------------------------------------------- figures */


/*
 * Sums property_kpis rows of one month the way portfolio_kpis would, for a
 * property-scoped token (which may not read portfolio_kpis), exactly
 * (lib/kpimath.js).  Properties in scope without a row that month still
 * have available nights: their units come from their rows of other months.
 */
function aggregate(rows, month) {
	if (!rows.length)
		return null;
	let extra = 0;
	if (month) {
		const have = new Set(rows.map((r) => JSON.stringify(r.property_id)));
		for (const p of propertyList())
			if (!have.has(JSON.stringify(p.id)) && Number.isInteger(p.units))
				extra += p.units * kpimath.daysInMonth(month);
	}
	const r = kpimath.aggregate(rows, { extraAvailableNights: extra });
	if (month) {
		r.month = month;
		r.properties = propertyList().length;
	}
	return r;
}

const CARDS = [
	{ id: 'revenue', label: 'Revenue', field: 'room_revenue', kind: 'money', good: 1,
		sub: (r) => plural(r.nights_sold, 'night sold', 'nights sold') },
	{ id: 'occupancy', label: 'Occupancy', field: 'occupancy', kind: 'pct', good: 1,
		sub: (r) => r.available_nights ? `${fmt.int.format(r.nights_sold)} of ${plural(r.available_nights, 'night', 'nights')}` : 'No available nights' },
	{ id: 'adr', label: 'ADR', long: 'Average daily rate', field: 'adr', kind: 'money', good: 1,
		sub: () => 'Revenue per night sold' },
	{ id: 'revpar', label: 'RevPAR', long: 'Revenue per available room', field: 'revpar', kind: 'money', good: 1,
		sub: () => 'Revenue per available night' },
	{ id: 'arrivals', label: 'Arrivals', field: 'arrivals', kind: 'int', good: 1,
		sub: (r) => plural(r.cancelled_arrivals, 'cancellation', 'cancellations') },
	{ id: 'cancellation_rate', label: 'Cancellation rate', field: 'cancellation_rate', kind: 'pct', good: -1,
		sub: (r) => `${fmt.int.format(r.cancelled_arrivals)} of ${plural(r.arrivals + r.cancelled_arrivals, 'booking', 'bookings')}` },
	{ id: 'approved_expenses', label: 'Approved expenses', field: 'approved_expenses', kind: 'money', good: -1,
		sub: (r) => `${fmt.money.format(r.pending_expenses)} pending approval` },
	{ id: 'noi', label: 'NOI', long: 'Net operating income', field: 'noi', kind: 'money', good: 1,
		sub: () => 'Revenue − approved expenses' },
];

const EMPTY_ROW = {
	units: null, available_nights: 0, nights_sold: 0, room_revenue: 0, arrivals: 0,
	cancelled_arrivals: 0, approved_expenses: 0, pending_expenses: 0, noi: 0,
	occupancy: null, adr: null, revpar: null, cancellation_rate: null, updated_at: null,
};

/* ------------------------------------------------------------ app state */

let client = null;
let currentRange = null;	/* the booking_daily days subscribed */
let selection = loadSelection();
let lastSelectionKey = null;
let cardStamps = new Map();		/* card id → {value, at} */
let trendChart = null;
let expChart = null;
let renderQueued = false;
let lastTrendData = null;
let lastExpData = null;

function loadSelection() {
	try {
		const s = JSON.parse(localStorage.getItem(SELECTION_KEY));
		if (s && typeof s.property === 'string')
			return { property: s.property, month: null };
	} catch { /* none */ }
	return { property: 'all', month: null };
}

function saveSelection() {
	try {
		localStorage.setItem(SELECTION_KEY, JSON.stringify({ property: selection.property }));
	} catch { /* private mode */ }
}

function propertyFilter() {
	return selection.property === 'all' ? null : JSON.parse(selection.property);
}

/* The figures of one month in the selected scope: a view row, or null. */
function figures(month) {
	const prop = propertyFilter();
	if (prop === null) {
		if (client.hasView('portfolio_kpis'))
			return client.get('portfolio_kpis', { month }) || null;
		return aggregate(client.rows('property_kpis').filter((r) => r.month === month), month);
	}
	return client.get('property_kpis', { property_id: prop, month }) || null;
}

/* Properties in view: key, units and name (www/model.js). */
let propertyInfo = new Map();
function propertyList() {
	const list = model.properties(client.rows('property_kpis'), client.scope?.properties);
	propertyInfo = new Map(list.map((p) => [p.key, p]));
	return list;
}

/* The name of a property, else "Property <key>". */
function propertyName(id) {
	return model.propertyLabel(id, propertyInfo.get(JSON.stringify(id))?.name);
}

function monthList() {
	const current = monthOf(new Date());
	let min = current;
	let max = current;
	for (const view of ['portfolio_kpis', 'property_kpis']) {
		for (const r of client.rows(view)) {
			if (r.month < min)
				min = r.month;
			if (r.month > max)
				max = r.month;
		}
	}
	const out = [];
	for (let m = max; m >= min && out.length < 120; m = addMonths(m, -1))
		out.push(m);
	return out;
}

/* ------------------------------------------------------------- rendering */

function buildCards() {
	const root = $('cards');
	root.textContent = '';
	for (const c of CARDS) {
		const el = document.createElement('article');
		el.className = 'card';
		el.dataset.kpi = c.id;
		el.setAttribute('aria-labelledby', `k-${c.id}-label`);
		el.innerHTML = `
			<div class="card-head"><h3 class="label" id="k-${c.id}-label">${c.label}${c.long ? `<span class="long"> · ${c.long}</span>` : ''}</h3><span class="badge" aria-hidden="true">stale</span></div>
			<p class="value" id="k-${c.id}-value"><span class="skel skel-value"></span></p>
			<p class="value-full" id="k-${c.id}-full" hidden></p>
			<p class="sub" id="k-${c.id}-sub"><span class="skel skel-text"></span></p>
			<p class="warn" id="k-${c.id}-warn" hidden></p>
			<p class="meta"><span class="trend" id="k-${c.id}-trend"></span><time class="updated" id="k-${c.id}-updated"></time></p>`;
		if (c.long)
			el.title = c.long;
		/* a value shown in short form ($1.23M): a tap shows the full one */
		const value = el.querySelector('.value');
		const toggle = () => {
			if (!value.classList.contains('compact'))
				return;
			const full = el.querySelector('.value-full');
			full.hidden = !full.hidden;
			value.setAttribute('aria-expanded', String(!full.hidden));
		};
		value.addEventListener('click', toggle);
		value.addEventListener('keydown', (e) => {
			if (e.key === 'Enter' || e.key === ' ') {
				e.preventDefault();
				toggle();
			}
		});
		root.appendChild(el);
	}
}

/*
 * Shows a value in full when it fits its card, else in short form ($1.23M)
 * with the full value in the title (hover) and one tap away.  Never cut.
 */
function fitValue(el, fullEl, kind, v) {
	const full = format(kind, v);
	el.textContent = full;
	el.title = full;
	el.classList.remove('compact');
	if (el.scrollWidth > el.clientWidth + 0.5) {
		const short = formatCompact(kind, v);
		if (short !== full) {
			el.textContent = short;
			el.classList.add('compact');
		}
	}
	const compact = el.classList.contains('compact');
	fullEl.textContent = full;
	if (!compact)
		fullEl.hidden = true;
	if (compact) {
		el.tabIndex = 0;
		el.setAttribute('role', 'button');
		el.setAttribute('aria-label', `${full} (tap for the full value)`);
		if (!el.hasAttribute('aria-expanded'))
			el.setAttribute('aria-expanded', 'false');
	} else {
		el.removeAttribute('tabindex');
		el.removeAttribute('role');
		el.removeAttribute('aria-label');
		el.removeAttribute('aria-expanded');
	}
}

function refitValues() {
	if (!client?.hasData)
		return;
	for (const c of CARDS) {
		const el = $(`k-${c.id}-value`);
		if (el.dataset.value === undefined)
			continue;
		fitValue(el, $(`k-${c.id}-full`), c.kind, el.dataset.value === '' ? null : Number(el.dataset.value));
	}
}

function flash(el) {
	el.classList.remove('flash');
	void el.offsetWidth;	/* restart the animation */
	el.classList.add('flash');
	el.dataset.changedAt = String(Date.now());
}

function setOptions(select, items, value) {
	const want = items.map((i) => i.value + '\u0000' + i.label).join('\u0001');
	if (select.dataset.items !== want) {
		select.textContent = '';
		for (const i of items) {
			const o = document.createElement('option');
			o.value = i.value;
			o.textContent = i.label;
			select.appendChild(o);
		}
		select.dataset.items = want;
	}
	select.value = value;
}

function renderSelectors() {
	const props = propertyList();
	const propItems = [{ value: 'all', label: props.length ? `All properties (${props.length})` : 'All properties' }]
		.concat(props.map((p) => ({
			value: JSON.stringify(p.id),
			label: propertyName(p.id) + (p.units > 1 ? ` · ${p.units} units` : ''),
		})));
	if (!propItems.some((p) => p.value === selection.property))
		selection.property = 'all';
	setOptions($('property'), propItems, selection.property);

	const months = monthList();
	if (!selection.month || !months.includes(selection.month))
		selection.month = months.includes(monthOf(new Date())) ? monthOf(new Date()) : months[0];
	setOptions($('month'), months.map((m) => ({ value: m, label: fmt.monthLong.format(monthDate(m)) })), selection.month);
	$('prev-month').disabled = selection.month === months.at(-1);
	$('next-month').disabled = selection.month === months[0];
}

/*
 * The comparison of each card.  A past month: the whole previous month.
 * The current month: month to date against the same days of the previous
 * month, from booking_daily (expenses and NOI have no daily rows in the
 * stream, so they get no comparison until the month is over).
 */
function comparison(row, prevRow) {
	const month = selection.month;
	const prevName = fmt.monthShort.format(monthDate(addMonths(month, -1)));
	if (month !== monthOf(new Date()) || !client.hasView('booking_daily'))
		return { kind: 'month', cur: row, prev: prevRow, label: `vs ${prevName}` };
	const mtd = kpimath.monthToDate(month, todayLocal());
	const units = scopeUnits(row, month);
	const daily = dailyRows();
	if (units === null)
		return { kind: 'none', label: '' };
	const cur = kpimath.periodFigures(daily, { ...mtd.current, units });
	const prev = kpimath.periodFigures(daily, { ...mtd.previous, units });
	const range = (r) => `${fmt.dayMonth.format(monthDate(r.from))}–${fmt.dayMonth.format(monthDate(r.to))}`;
	return {
		kind: 'mtd', cur, prev, mtd,
		label: `vs ${range(mtd.previous)}`,
		title: `Month to date (${range(mtd.current)}) compared with the same days of ${prevName} (${range(mtd.previous)})`,
		period: `Month to date ${range(mtd.current)}, compared with ${range(mtd.previous)}`,
	};
}

/* booking_daily rows of the selected property scope. */
function dailyRows() {
	const prop = propertyFilter();
	const rows = client.rows('booking_daily');
	return prop === null ? rows : rows.filter((r) => JSON.stringify(r.property_id) === selection.property);
}

/* Units of the selected scope (available nights per day), or null. */
function scopeUnits(row, month) {
	if (row && Number.isInteger(row.available_nights))
		return row.available_nights / kpimath.daysInMonth(month);
	const prop = propertyFilter();
	if (prop !== null) {
		const u = propertyInfo.get(selection.property)?.units;
		return Number.isInteger(u) ? u : null;
	}
	let sum = 0;
	for (const p of propertyList()) {
		if (!Number.isInteger(p.units))
			return null;
		sum += p.units;
	}
	return sum || null;
}

const MTD_FIELDS = new Set(['room_revenue', 'occupancy', 'adr', 'revpar', 'arrivals', 'cancellation_rate']);

function renderCards(row, prevRow, selectionChanged) {
	const r = row || EMPTY_ROW;
	const cmp = comparison(row, prevRow);
	$('compare-note').textContent = cmp.kind === 'mtd' ? cmp.period : '';
	$('compare-note').hidden = cmp.kind !== 'mtd';
	for (const c of CARDS) {
		const valueEl = $(`k-${c.id}-value`);
		const v = r[c.field];
		const raw = v === null || v === undefined ? '' : String(v);
		const changed = valueEl.dataset.value !== undefined && valueEl.dataset.value !== raw;
		valueEl.dataset.value = raw;
		fitValue(valueEl, $(`k-${c.id}-full`), c.kind, v);
		valueEl.classList.toggle('negative', typeof v === 'number' && v < 0);
		$(`k-${c.id}-sub`).textContent = c.sub(r);

		/* against the previous month, or month to date against the same days */
		const trend = $(`k-${c.id}-trend`);
		trend.className = 'trend';
		trend.textContent = '';
		trend.removeAttribute('aria-label');
		trend.removeAttribute('title');
		let cv;
		let pv;
		if (cmp.kind === 'month' && row && prevRow) {
			cv = v;
			pv = prevRow[c.field];
		} else if (cmp.kind === 'mtd' && MTD_FIELDS.has(c.field)) {
			cv = cmp.cur[c.field];
			pv = cmp.prev[c.field];
		}
		if (typeof cv === 'number' && typeof pv === 'number') {
			let d;
			let label;
			if (c.kind === 'pct') {
				d = (cv - pv) * 100;
				label = `${fmt.pts.format(Math.abs(d))} pts`;
			} else if (pv !== 0) {
				d = (cv - pv) / Math.abs(pv);
				label = fmt.pct0.format(Math.abs(d));
			}
			if (d !== undefined && Number.isFinite(d)) {
				/* what rounds to "0%" or "0 pts" is no change */
				const dir = Math.abs(d) < (c.kind === 'pct' ? 0.05 : 0.005) ? 0 : Math.sign(d);
				const prefix = cmp.kind === 'mtd' ? 'MTD ' : '';
				trend.textContent = `${prefix}${dir > 0 ? '▲' : dir < 0 ? '▼' : '■'} ${label} ${cmp.label}`;
				trend.classList.add(dir === 0 ? 'flat' : dir === c.good ? 'good' : 'bad');
				trend.setAttribute('aria-label', `${cmp.kind === 'mtd' ? 'month to date ' : ''}${dir > 0 ? 'up' : dir < 0 ? 'down' : 'unchanged,'} ${label} ${cmp.label.replace(/^vs/, 'versus')}`);
				if (cmp.title)
					trend.title = cmp.title;
			}
		}

		/* "updated N s ago": the batch time of the row when this figure last changed */
		let stamp = cardStamps.get(c.id);
		if (selectionChanged || !stamp)
			stamp = { value: raw, at: r.updated_at || null };
		else if (changed)
			stamp = { value: raw, at: r.updated_at || stamp.at };
		cardStamps.set(c.id, stamp);
		if (changed && !selectionChanged)
			flash(valueEl.closest('.card'));
	}
	renderOverbooked(row);
	tickUpdated();
}

/*
 * Occupancy above 100 %: more nights sold than units × days, which means
 * livekpi.properties.units is too low (it defaults to 1).  Said on the card
 * and above the cards, with what to do.
 */
function renderOverbooked(row) {
	const over = row && typeof row.occupancy === 'number' && row.occupancy > 1;
	const card = document.querySelector('.card[data-kpi="occupancy"]');
	card?.classList.toggle('over', !!over);
	const warn = $('k-occupancy-warn');
	warn.hidden = !over;
	warn.textContent = over ? 'Above 100 %: set units' : '';
	const box = $('units-warning');
	if (!over) {
		box.hidden = true;
		box.textContent = '';
		return;
	}
	const prop = propertyFilter();
	const who = prop === null ? 'the properties' : propertyName(prop);
	const key = prop === null ? '…' : (typeof prop === 'number' ? String(prop) : `'${String(prop).replace(/'/g, "''")}'`);
	/* the fewest units that hold the nights sold this month */
	const days = kpimath.daysInMonth(selection.month);
	const least = Math.max(1, Math.ceil(row.nights_sold / days));
	box.replaceChildren(
		document.createTextNode(`Occupancy is ${fmt.pct.format(row.occupancy)}: more nights were sold than ${who} can offer with the units livekpi knows. Set units (rooms) in livekpi.properties${prop === null ? '' : ` (at least ${least})`}, e.g. `),
		Object.assign(document.createElement('code'), { textContent: `UPDATE livekpi.properties SET units = ${prop === null ? '…' : least} WHERE property_id = ${key};` }));
	box.hidden = false;
}

function tickUpdated() {
	if (!client?.hasData)
		return;
	const now = client.serverNow();
	for (const c of CARDS) {
		const el = $(`k-${c.id}-updated`);
		const at = cardStamps.get(c.id)?.at;
		if (!at) {
			el.textContent = 'no activity';
			el.removeAttribute('datetime');
			el.title = 'No booking or expense counts in this month';
			continue;
		}
		const t = Date.parse(at);
		el.dateTime = at;
		el.title = 'Last changed ' + fmt.dateTime.format(new Date(t));
		el.textContent = 'updated ' + ago(now - t);
	}
	renderStatusDetails();
}

function renderPeriod(row) {
	const el = $('period');
	const prop = propertyFilter();
	const parts = [fmt.monthLong.format(monthDate(selection.month))];
	if (prop === null) {
		const n = row?.properties ?? propertyList().length;
		parts.push(n ? `all properties (${fmt.int.format(n)})` : 'all properties');
	} else {
		parts.push(propertyName(prop) + (row?.units ? `, ${plural(row.units, 'unit', 'units')}` : ''));
	}
	if (row?.available_nights)
		parts.push(`${plural(row.available_nights, 'available night', 'available nights')}`);
	el.textContent = parts.join(' · ');
	if (!row) {
		const s = document.createElement('span');
		s.className = 'no-activity';
		s.textContent = 'No bookings or expenses this month yet';
		el.append(' ', s);
	}
	if (client.stale && client.hasData) {
		const s = document.createElement('span');
		s.className = 'stale-tag';
		const saved = client.savedAt && client.status !== 'connected' && !client.welcome
			? ` from ${fmt.time.format(new Date(client.savedAt))}` : '';
		s.textContent = client.status === 'offline' || !navigator.onLine
			? `offline: last known figures${saved}` : `last known figures${saved}, connecting`;
		el.append(' ', s);
	}
}

function render() {
	renderQueued = false;
	if (!client?.hasData)
		return;
	const main = $('main');
	main.setAttribute('aria-busy', 'false');
	document.body.classList.add('loaded');
	renderSelectors();
	const key = selection.property + '|' + selection.month;
	const selectionChanged = key !== lastSelectionKey;
	lastSelectionKey = key;
	const row = figures(selection.month);
	const prevRow = figures(addMonths(selection.month, -1));
	renderCards(row, prevRow, selectionChanged);
	renderPeriod(row);
	renderTrend();
	renderExpenses();
	renderStale();
}

function queueRender() {
	if (!renderQueued) {
		renderQueued = true;
		requestAnimationFrame(render);
		setTimeout(() => renderQueued && render(), 250);	/* hidden tabs get no frames */
	}
}

/* ---------------------------------------------------------------- charts */

function css(name) {
	return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function chartSize(el, height) {
	return { width: Math.max(240, Math.floor(el.clientWidth)), height };
}

function axisStyle() {
	return { stroke: css('--muted'), grid: { stroke: css('--grid'), width: 1 }, ticks: { show: false }, font: `12px ${css('--font')}` };
}

function renderTrend() {
	const months = [];
	for (let i = 11; i >= 0; i--)
		months.push(addMonths(selection.month, -i));
	const rows = months.map((m) => figures(m));
	/* x is the month number (year * 12 + month), so that a new selection
	 * changes the scale and uPlot redraws the axis labels */
	const xs = months.map(monthIndex);
	const revenue = rows.map((r) => r ? r.room_revenue : 0);
	const occ = rows.map((r) => (r && r.occupancy !== null) ? r.occupancy * 100 : null);
	const data = [xs, revenue, occ];
	const el = $('trend-chart');
	const sig = JSON.stringify([months, revenue, occ]);
	if (trendChart && lastTrendData === sig)
		return;
	lastTrendData = sig;

	const accent = css('--accent');
	const accentSoft = css('--accent-soft');
	const fills = months.map((_, i) => i === 11 ? accent : accentSoft);
	if (!trendChart) {
		el.textContent = '';
		const opts = {
			...chartSize(el, 260),
			padding: [12, 8, 0, 4],
			cursor: { drag: { x: false, y: false }, points: { size: 8 } },
			legend: { live: false },
			plugins: [tooltipPlugin((u, i) => [
				[fmt.monthLong.format(monthDate(currentTrendMonths[i])), null, null],
				['Revenue', fmt.money.format(u.data[1][i] ?? 0), css('--accent')],
				['Occupancy', u.data[2][i] === null ? DASH : fmt.pct.format(u.data[2][i] / 100), css('--accent-2')],
			])],
			scales: {
				x: { time: false, range: (u) => [u.data[0][0] - 0.5, u.data[0][11] + 0.5] },
				money: { range: (u, min, max) => [0, max > 0 ? max * 1.12 : 1] },
				/* above 100 % shows as such (units set too low): the axis grows */
				pct: { range: (u, min, max) => [0, Math.max(100, Math.ceil(((max ?? 0) * 1.08) / 10) * 10)] },
			},
			series: [
				{ label: 'Month', value: (u, v) => v === null ? DASH : fmt.monthLong.format(monthDate(monthFromIndex(v))) },
				{
					label: 'Revenue', scale: 'money', width: 0,
					fill: accentSoft, stroke: accent,
					paths: uPlot.paths.bars({ size: [0.62, 56], radius: 0.12,
						disp: { fill: { unit: 3, values: () => currentTrendFills } } }),
					points: { show: false },
					value: (u, v) => v === null ? DASH : fmt.money.format(v),
				},
				{
					label: 'Occupancy', scale: 'pct', stroke: css('--accent-2'), width: 2.5,
					points: { show: true, size: 6, fill: css('--panel') },
					value: (u, v) => v === null ? DASH : fmt.pct.format(v / 100),
				},
			],
			axes: [
				{ ...axisStyle(), grid: { show: false }, splits: (u) => u.data[0].slice(), gap: 6, size: 30,
					values: (u, splits) => {
						const per = u.bbox.width / (globalThis.devicePixelRatio || 1) / 12;
						const step = per >= 44 ? 1 : per >= 24 ? 2 : 3;
						const last = u.data[0][11];
						return splits.map((v) => ((last - v) % step === 0 ? monthLabel(v, v === u.data[0][0]) : ''));
					} },
				{ ...axisStyle(), scale: 'money', values: (u, vals) => vals.map((v) => fmt.moneyCompact.format(v)), size: 62 },
				{ ...axisStyle(), scale: 'pct', side: 1, grid: { show: false }, values: (u, vals) => vals.map((v) => v + '%'), size: 44 },
			],
		};
		currentTrendMonths = months;
		currentTrendFills = fills;
		trendChart = new uPlot(opts, data, el);
		observeSize(el, () => trendChart, 260);
	} else {
		currentTrendMonths = months;
		currentTrendFills = fills;
		trendChart.setData(data);
	}
	renderTable('trend-table', ['Month', 'Revenue', 'Occupancy', 'Nights sold'],
		months.map((m, i) => [fmt.monthLong.format(monthDate(m)), format('money', revenue[i]),
			occ[i] === null ? DASH : fmt.pct.format(occ[i] / 100), format('int', rows[i]?.nights_sold ?? 0)]));
}
let currentTrendMonths = [];

function monthIndex(month) {
	const [y, m] = month.split('-').map(Number);
	return y * 12 + (m - 1);
}

function monthFromIndex(i) {
	return `${Math.floor(i / 12)}-${String((i % 12) + 1).padStart(2, '0')}-01`;
}

function monthLabel(i, first) {
	const d = monthDate(monthFromIndex(i));
	return (first || i % 12 === 0) ? fmt.monthShortYear.format(d) : fmt.monthShort.format(d);
}
let currentTrendFills = [];

let currentCats = [];
function renderExpenses() {
	const prop = propertyFilter();
	const byCat = new Map();
	for (const r of client.rows('expense_monthly')) {
		if (r.month !== selection.month || (prop !== null && JSON.stringify(r.property_id) !== selection.property))
			continue;
		const list = byCat.get(r.category) || [];
		list.push(r);
		byCat.set(r.category, list);
	}
	const cats = Array.from(byCat.entries())
		.map(([name, rows]) => ({ name, approved: kpimath.moneySum(rows, 'approved_amount'), pending: kpimath.moneySum(rows, 'pending_amount') }))
		.filter((c) => c.approved || c.pending)
		.sort((a, b) => (b.approved + b.pending) - (a.approved + a.pending) || a.name.localeCompare(b.name));
	const el = $('exp-chart');
	const empty = cats.length === 0;
	$('exp-empty').hidden = !empty;
	el.hidden = empty;
	const sig = JSON.stringify(cats);
	if (lastExpData === sig && (expChart || empty))
		return;
	lastExpData = sig;
	renderTable('exp-table', ['Category', 'Approved', 'Pending'],
		cats.map((c) => [c.name, format('money', c.approved), format('money', c.pending)]));
	if (empty)
		return;
	currentCats = cats;
	const xs = cats.map((_, i) => i);
	const approved = cats.map((c) => c.approved);
	const pending = cats.map((c) => c.pending);
	const data = [xs, approved, pending];
	const height = Math.max(140, 46 + cats.length * 34);
	const maxTotal = Math.max(...cats.map((c) => c.approved + c.pending), 1);
	/* uPlot keeps axis labels while the scale stays the same: a new set of
	 * categories gets a new chart */
	const names = JSON.stringify(cats.map((c) => c.name));
	if (expChart && expChart.livekpiNames !== names) {
		expChart.destroy();
		expChart = null;
	}
	if (!expChart) {
		el.textContent = '';
		expChart = new uPlot({
			...chartSize(el, height),
			padding: [8, 16, 0, 0],
			cursor: { drag: { x: false, y: false }, points: { show: false } },
			legend: { live: false },
			plugins: [tooltipPlugin((u, i) => [
				[currentCats[i]?.name ?? '', null, null],
				['Approved', fmt.money.format(currentCats[i]?.approved ?? 0), css('--accent')],
				['Pending', fmt.money.format(currentCats[i]?.pending ?? 0), css('--pending')],
			])],
			scales: {
				x: { time: false, ori: 1, dir: -1, range: () => [-0.5, currentCats.length - 0.5] },
				y: { ori: 0, range: () => [0, expMax * 1.08] },
			},
			series: [
				{ label: 'Category', value: (u, v) => v === null ? DASH : currentCats[v]?.name ?? DASH },
				{
					label: 'Approved', fill: css('--accent'), stroke: css('--accent'), width: 0,
					paths: uPlot.paths.bars({ size: [0.6, 26], radius: 0 }),
					points: { show: false },
					value: (u, v) => v === null ? DASH : fmt.money.format(v),
				},
				{
					label: 'Pending', fill: css('--pending'), stroke: css('--pending'), width: 0,
					paths: uPlot.paths.bars({ size: [0.6, 26], radius: 0,
						disp: { y0: { unit: 1, values: () => currentCats.map((c) => c.approved) },
							y1: { unit: 1, values: () => currentCats.map((c) => c.approved + c.pending) } } }),
					points: { show: false },
					value: (u, v) => v === null ? DASH : fmt.money.format(v),
				},
			],
			axes: [
				{ ...axisStyle(), side: 3, grid: { show: false }, splits: () => currentCats.map((_, i) => i),
					values: () => currentCats.map((c) => c.name.length > 16 ? c.name.slice(0, 15) + '…' : c.name),
					size: (u) => expLabelWidth(u), gap: 6 },
				{ ...axisStyle(), side: 2, space: 64, size: 30, values: (u, vals) => vals.map((v) => fmt.moneyCompact.format(v)) },
			],
		}, data, el);
		expChart.livekpiNames = names;
		expMax = maxTotal;
		observeSize(el, () => expChart, () => Math.max(140, 46 + currentCats.length * 34));
	} else {
		expMax = maxTotal;
		expChart.setSize(chartSize(el, height));
		expChart.setData(data);
	}
}
let expMax = 1;

function expLabelWidth() {
	const longest = currentCats.reduce((m, c) => Math.max(m, Math.min(16, c.name.length)), 4);
	return Math.min(150, 16 + longest * 7.2);
}

/* A small hover/focus tooltip: rows of [label, value, colour]; first row is the title. */
function tooltipPlugin(rowsFor) {
	let tip;
	return {
		hooks: {
			init: (u) => {
				tip = document.createElement('div');
				tip.className = 'u-tip';
				tip.hidden = true;
				u.over.appendChild(tip);
				u.over.addEventListener('mouseleave', () => { tip.hidden = true; });
			},
			setCursor: (u) => {
				const i = u.cursor.idx;
				if (i === null || i === undefined || u.cursor.left < 0) {
					tip.hidden = true;
					return;
				}
				tip.replaceChildren();
				for (const [label, value, color] of rowsFor(u, i)) {
					const line = document.createElement('div');
					if (value === null) {
						line.className = 'u-tip-title';
						line.textContent = label;
					} else {
						const sw = document.createElement('span');
						sw.className = 'u-tip-sw';
						sw.style.background = color;
						const v = document.createElement('b');
						v.textContent = value;
						line.append(sw, `${label} `, v);
					}
					tip.appendChild(line);
				}
				tip.hidden = false;
				const w = u.over.clientWidth;
				const h = u.over.clientHeight;
				const tw = tip.offsetWidth;
				const th = tip.offsetHeight;
				let x = u.cursor.left + 12;
				if (x + tw > w)
					x = Math.max(0, u.cursor.left - tw - 12);
				let y = u.cursor.top + 12;
				if (y + th > h)
					y = Math.max(0, h - th);
				tip.style.transform = `translate(${x}px, ${y}px)`;
			},
		},
	};
}

const sizeObservers = new WeakMap();
function observeSize(el, getChart, height) {
	if (sizeObservers.has(el) || typeof ResizeObserver === 'undefined')
		return;
	let w = el.clientWidth;
	const ro = new ResizeObserver(() => {
		const chart = getChart();
		if (!chart || el.clientWidth === w)
			return;
		w = el.clientWidth;
		chart.setSize(chartSize(el, typeof height === 'function' ? height() : height));
	});
	ro.observe(el);
	sizeObservers.set(el, ro);
}

function renderTable(id, head, rows) {
	const t = document.createElement('table');
	const thead = t.createTHead().insertRow();
	for (const h of head) {
		const th = document.createElement('th');
		th.scope = 'col';
		th.textContent = h;
		thead.appendChild(th);
	}
	const tb = t.createTBody();
	for (const r of rows) {
		const tr = tb.insertRow();
		r.forEach((cell, i) => {
			const c = i === 0 ? document.createElement('th') : document.createElement('td');
			if (i === 0)
				c.scope = 'row';
			c.textContent = cell;
			tr.appendChild(c);
		});
	}
	if (!rows.length) {
		const tr = tb.insertRow();
		const td = tr.insertCell();
		td.colSpan = head.length;
		td.textContent = 'Nothing to show.';
	}
	$(id).replaceChildren(t);
}

/* ------------------------------------------------------- status, notices */

const STATUS_TEXT = { connected: 'Connected', connecting: 'Connecting…', offline: 'Offline', error: 'Error' };

let shownStatus = null;
let statusTimer = null;
function renderStatus() {
	let status = client.status;
	if (!navigator.onLine)
		status = 'offline';
	/* a handover or a quick reconnect must not blink the indicator */
	if (status === 'connecting' && shownStatus === 'connected') {
		if (!statusTimer)
			statusTimer = setTimeout(() => { statusTimer = null; renderStatus(); }, 1200);
		if (client.status === 'connecting')
			return;
	}
	clearTimeout(statusTimer);
	statusTimer = null;
	shownStatus = status;
	const el = $('conn');
	el.dataset.status = status;
	$('conn-text').textContent = STATUS_TEXT[status] || status;
	renderStale();
	renderStatusDetails();
}

function renderStale() {
	const stale = !!client?.hasData && (client.stale || !navigator.onLine || client.status !== 'connected');
	document.body.classList.toggle('stale', stale);
	for (const c of CARDS) {
		const card = document.querySelector(`.card[data-kpi="${c.id}"]`);
		if (card)
			card.classList.toggle('is-stale', stale);
	}
	renderBanner();
	if (client?.hasData && selection.month)
		renderPeriod(figures(selection.month));
}

function renderBanner() {
	const b = $('banner');
	const err = client?.lastError;
	if (client?.status === 'error') {
		const why = {
			bad_token: 'The server does not know this token.',
			token_expired: 'This token has expired.',
			token_revoked: 'This token has been revoked.',
			forbidden_property: 'This token may not see that property.',
		}[err?.code] || `The server refused the connection${err?.message ? ': ' + err.message : ''}.`;
		b.dataset.kind = 'error';
		b.replaceChildren(document.createTextNode(why + ' '), tokenButton('Enter another token'));
		b.hidden = false;
		return;
	}
	if (client?.hasData && (client.status === 'offline' || !navigator.onLine)) {
		b.dataset.kind = 'offline';
		const since = client.lastMessageAt || Date.parse(client.savedAt || '') || null;
		b.textContent = `You are offline. The figures below are the last known ones${since ? ' (as of ' + fmt.time.format(new Date(since)) + ')' : ''} and may be out of date; they catch up by themselves when the connection is back.`;
		b.hidden = false;
		return;
	}
	b.hidden = true;
}

function tokenButton(text) {
	const btn = document.createElement('button');
	btn.type = 'button';
	btn.className = 'link-btn';
	btn.textContent = text;
	btn.addEventListener('click', () => askToken());
	return btn;
}

function renderStatusDetails() {
	if (!client)
		return;
	const el = $('conn');
	let title;
	if (client.status === 'connected')
		title = `Live. Batch ${client.seq ?? DASH}${client.lagMs !== null && client.lagMs !== undefined ? `, apply lag ${fmt.int.format(client.lagMs)} ms` : ''}.`;
	else if (client.status === 'offline' && client.nextRetryAt)
		title = `Offline. Retrying in ${Math.max(0, Math.ceil((client.nextRetryAt - Date.now()) / 1000))} s.`;
	else if (client.status === 'offline')
		title = 'Offline. Waiting for the network.';
	else if (client.status === 'error')
		title = client.lastError?.message || 'Error';
	else
		title = 'Connecting to the server…';
	el.title = title;
	/* plain words: when the figures last changed, and where updates come from */
	const last = client.lastBatchAt ? Date.parse(client.lastBatchAt) : NaN;
	$('foot-seq').textContent = client.status === 'connected'
		? (Number.isNaN(last) ? 'Figures are live.' : `Figures are live; last change at ${fmt.time.format(new Date(last))}.`)
		: client.hasData ? 'Showing the last figures received.' : '';
	$('foot-role').textContent = client.role === 'follower' ? 'Updates arrive through another open tab of this dashboard.' : '';
}

/* A short notice for each batch that changes the selected month. */
function noticeFor(detail) {
	if (detail.source !== 'delta' || !selection.month)
		return;
	const month = selection.month;
	const prop = propertyFilter();
	let before = null;
	let after = null;
	if (prop === null && client.hasView('portfolio_kpis')) {
		const ch = (detail.changes.portfolio_kpis || []).find((c) => c.key.month === month);
		if (!ch)
			return;
		before = ch.before;
		after = ch.after;
	} else {
		const chs = (detail.changes.property_kpis || []).filter((c) => c.key.month === month &&
			(prop === null || JSON.stringify(c.key.property_id) === selection.property));
		if (!chs.length)
			return;
		before = kpimath.aggregate(chs.map((c) => c.before).filter(Boolean));
		after = kpimath.aggregate(chs.map((c) => c.after).filter(Boolean));
	}
	const b = before || EMPTY_ROW;
	const a = after || EMPTY_ROW;
	const parts = [];
	const dArr = a.arrivals - b.arrivals;
	const dCan = a.cancelled_arrivals - b.cancelled_arrivals;
	const dRev = kpimath.moneyDiff(b, a, 'room_revenue');
	const dExp = kpimath.moneyDiff(b, a, 'approved_expenses');
	const dPend = kpimath.moneyDiff(b, a, 'pending_expenses');
	if (dArr)
		parts.push(`${dArr > 0 ? '+' : '−'}${plural(Math.abs(dArr), 'booking', 'bookings')}`);
	if (dCan)
		parts.push(`${dCan > 0 ? '+' : '−'}${plural(Math.abs(dCan), 'cancellation', 'cancellations')}`);
	if (dRev)
		parts.push(`${signed('money', dRev)} revenue`);
	if (dExp)
		parts.push(`${signed('money', dExp)} approved expenses`);
	if (dPend && !dExp)
		parts.push(`${signed('money', dPend)} pending expenses`);
	if (!parts.length)
		return;
	toast(parts.join(', '), fmt.monthShort.format(monthDate(month)));
}

/*
 * The notice goes to its own reserved line above the cards (never over a
 * card or a button); only the newest is shown; it never takes the focus
 * (a polite live region announces it).
 */
let toastTimer = null;
function toast(text, context) {
	const box = $('toasts');
	const t = document.createElement('div');
	t.className = 'toast';
	const time = document.createElement('span');
	time.className = 'toast-time';
	time.textContent = `${context} · ${fmt.time.format(new Date())}`;
	const msg = document.createElement('span');
	msg.className = 'toast-text';
	msg.textContent = text;
	t.append(msg, ' ', time);
	box.replaceChildren(t);
	clearTimeout(toastTimer);
	toastTimer = setTimeout(() => {
		t.classList.add('leaving');
		setTimeout(() => t.remove(), 400);
	}, 8000);
}

/* ------------------------------------------------------------- token flow */

/* A short stable hash (FNV-1a, 32 bit) for names, not for security. */
function fnv1a(str) {
	let h = 0x811c9dc5;
	for (let i = 0; i < str.length; i++) {
		h ^= str.charCodeAt(i);
		h = Math.imul(h, 0x01000193) >>> 0;
	}
	return h.toString(36);
}

function takeTokenFromHash() {
	const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
	if (!m)
		return null;
	const token = decodeURIComponent(m[1]);
	try {
		localStorage.setItem(TOKEN_KEY, token);
	} catch { /* private mode: this page only */ }
	/* the token leaves the address bar (and the history entry) */
	history.replaceState(null, '', location.pathname + location.search);
	return token;
}

function storedToken() {
	try {
		return localStorage.getItem(TOKEN_KEY);
	} catch {
		return null;
	}
}

function askToken() {
	const dlg = $('token-dialog');
	const input = $('token-input');
	input.value = '';
	if (!dlg.open)
		dlg.showModal();
	input.focus();
}

function useToken(token) {
	if (client) {
		client.stop();
		client = null;
	}
	cardStamps = new Map();
	lastSelectionKey = null;
	lastTrendData = lastExpData = null;
	if (!token) {
		askToken();
		return;
	}
	currentRange = dailyRange();
	/* one name per token (not per day), so that the saved state, the lock
	 * and the channel stay the same when month to date moves on */
	client = new LiveKpi({ token, views: VIEWS, dailyRange: currentRange, name: 'livekpi:dashboard:' + fnv1a(location.host + '|' + token) });
	client.addEventListener('change', (e) => {
		if (e.detail.source === 'restore' && setCurrency(client.currency))
			queueRender();
		if (e.detail.source === 'delta')
			noticeFor(e.detail);
		queueRender();
	});
	client.addEventListener('status', (e) => {
		/* for CSS and tests: the library itself never touches the page */
		document.documentElement.dataset.livekpiStatus = e.detail.status;
		renderStatus();
		if (client.hasData)
			queueRender();
	});
	client.addEventListener('role', (e) => {
		document.documentElement.dataset.livekpiRole = e.detail.role;
		renderStatusDetails();
	});
	client.addEventListener('heartbeat', renderStatusDetails);
	client.addEventListener('welcome', () => {
		if (setCurrency(client.currency))
			queueRender();
	});
	document.documentElement.dataset.livekpiStatus = client.status;
	renderStatus();
	client.start();
}

/* ------------------------------------------------------------------ wiring */

function init() {
	buildCards();
	const fromHash = takeTokenFromHash();
	const token = fromHash || storedToken();

	$('property').addEventListener('change', (e) => {
		selection.property = e.target.value;
		saveSelection();
		render();
	});
	$('month').addEventListener('change', (e) => {
		selection.month = e.target.value;
		render();
	});
	$('prev-month').addEventListener('click', () => stepMonth(-1));
	$('next-month').addEventListener('click', () => stepMonth(1));
	$('change-token').addEventListener('click', () => askToken());
	$('token-form').addEventListener('submit', (e) => {
		const v = $('token-input').value.trim();
		if (!v) {
			e.preventDefault();
			return;
		}
		try {
			localStorage.setItem(TOKEN_KEY, v);
		} catch { /* private mode */ }
		useToken(v);
	});
	window.addEventListener('hashchange', () => {
		const t = takeTokenFromHash();
		if (t)
			useToken(t);
	});
	window.addEventListener('storage', (e) => {
		if (e.key === TOKEN_KEY && e.newValue && e.newValue !== client?.options.token)
			useToken(e.newValue);
	});
	window.addEventListener('online', renderStatus);
	window.addEventListener('offline', renderStatus);
	setInterval(() => {
		tickUpdated();
		/* a new day: month to date moves on */
		const want = dailyRange();
		if (client && currentRange && want.to !== currentRange.to && client.role !== 'follower') {
			currentRange = want;
			client.subscribe({ dailyRange: want });
		}
	}, 1000);
	document.addEventListener('visibilitychange', () => {
		if (document.visibilityState === 'visible')
			client?.reconnectNow();
	});
	if (typeof ResizeObserver !== 'undefined')
		new ResizeObserver(() => refitValues()).observe($('cards'));
	useToken(token);
}

function stepMonth(n) {
	const months = monthList();
	const i = months.indexOf(selection.month);
	const j = i - n;	/* the list is newest first */
	if (j >= 0 && j < months.length) {
		selection.month = months[j];
		render();
	}
}

init();

/* Offline reloads: the service worker keeps the page's files (www/sw.js). */
if ('serviceWorker' in navigator && window.isSecureContext && /^https?:$/.test(location.protocol))
	navigator.serviceWorker.register('sw.js').catch(() => { /* not served: online only */ });

/* for tests and the curious: window.livekpi.client */
globalThis.livekpi = {
	get client() { return client; },
	get selection() { return { ...selection }; },
	/* the occupancy axis of the trend chart, [min, max] in percent */
	get occupancyAxis() { return trendChart ? [trendChart.scales.pct.min, trendChart.scales.pct.max] : null; },
};
