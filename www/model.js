/*
 * The dashboard's own view of the properties, pure (no DOM; tested in node
 * by test/js/model.test.mjs): which properties are in view, with their units
 * and names, and how a property is called on the page.
 */

/*
 * properties(rows, scopeProperties): the properties of property_kpis rows
 * and of the token's scope, each {id, key, units, name} from its newest
 * row (units and name are the same in every row; the newest wins should
 * they differ while a change is streaming in), sorted by key.  name is
 * livekpi.properties.name when the rows carry it and it is not blank.
 */
export function properties(rows, scopeProperties = null) {
	const ids = new Map();
	const info = new Map();
	for (const r of rows) {
		const k = JSON.stringify(r.property_id);
		ids.set(k, r.property_id);
		const u = info.get(k);
		if (!u || r.month > u.month)
			info.set(k, { month: r.month, units: r.units, name: typeof r.name === 'string' && r.name.trim() ? r.name.trim() : null });
	}
	for (const p of scopeProperties || [])
		if (!ids.has(JSON.stringify(p)))
			ids.set(JSON.stringify(p), p);
	const list = Array.from(ids.entries()).map(([key, id]) => ({
		id, key, units: info.get(key)?.units ?? null, name: info.get(key)?.name ?? null,
	}));
	list.sort((a, b) => (typeof a.id === 'number' && typeof b.id === 'number') ? a.id - b.id
		: String(a.id).localeCompare(String(b.id), undefined, { numeric: true }));
	return list;
}

/* How the page calls a property: its name, else "Property <key>" (a long
 * uuid key shortened). */
export function propertyLabel(id, name) {
	if (typeof name === 'string' && name.trim())
		return name.trim();
	const s = String(id);
	return `Property ${s.length > 14 ? s.slice(0, 8) + '…' : s}`;
}
