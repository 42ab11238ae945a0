/*
 * www/model.js: the dashboard's properties and their names (issue 11:
 * "the dashboard lists Property 101"): the name of livekpi.properties when
 * the rows carry it, else "Property N".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { properties, propertyLabel } from '../../www/model.js';

test('a property is called by its name when it has one', () => {
	assert.equal(propertyLabel(101, 'Harbour View Loft'), 'Harbour View Loft');
	assert.equal(propertyLabel(101, '  Loft 3 '), 'Loft 3');
	assert.equal(propertyLabel(101, null), 'Property 101');
	assert.equal(propertyLabel(101, '   '), 'Property 101');
	assert.equal(propertyLabel('2f1c9a8e-4b7d-4e0a-9d55-0c1e2a3b4c5d', undefined), 'Property 2f1c9a8e…');
});

test('properties: from the rows and the scope, newest row wins, sorted by key', () => {
	const rows = [
		{ property_id: 10, month: '2026-01-01', units: 2, name: 'Old name' },
		{ property_id: 10, month: '2026-02-01', units: 3, name: 'Lake House' },
		{ property_id: 2, month: '2026-02-01', units: 1 },
		{ property_id: 7, month: '2026-02-01', units: 4, name: null },
	];
	assert.deepEqual(properties(rows, [2, 9]), [
		{ id: 2, key: '2', units: 1, name: null },
		{ id: 7, key: '7', units: 4, name: null },
		{ id: 9, key: '9', units: null, name: null },
		{ id: 10, key: '10', units: 3, name: 'Lake House' },
	]);
	assert.deepEqual(properties([{ property_id: 'b', month: 'm' }, { property_id: 'a10', month: 'm' }, { property_id: 'a9', month: 'm' }])
		.map((p) => p.id), ['a9', 'a10', 'b']);
});
