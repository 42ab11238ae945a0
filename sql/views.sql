-- SPEC section 4: property_kpis, portfolio_kpis, kpis(), units, ratios.
\set SHOW_CONTEXT never
TRUNCATE bookings, expenses;
SELECT livekpi.sync('30s');
DELETE FROM livekpi.properties;

INSERT INTO bookings (property_id, check_in, check_out, total_amount, status) VALUES
	(1, '2026-02-01', '2026-02-05', 400, 'confirmed'),	-- 4 nights in February
	(1, '2026-02-10', '2026-02-11', 90, 'cancelled'),
	(2, '2026-02-27', '2026-03-02', 300, 'confirmed');	-- 2 nights Feb, 1 March
INSERT INTO expenses (property_id, incurred_on, amount, category, approval_status) VALUES
	(1, '2026-02-03', 50, 'cleaning', 'approved'),
	(1, '2026-02-04', 20, 'supplies', 'pending'),
	(3, '2026-03-15', 35, 'repairs', 'approved');		-- a property with expenses only
SELECT livekpi.sync('30s');

SELECT property_id, first_seen IS NOT NULL AS seen, units FROM livekpi.properties ORDER BY 1;
SELECT property_id, month, units, available_nights, nights_sold, occupancy, room_revenue, adr,
	   revpar, arrivals, cancelled_arrivals, cancellation_rate, approved_expenses,
	   pending_expenses, noi, updated_at IS NOT NULL AS has_updated_at
FROM livekpi.property_kpis ORDER BY 1, 2;
SELECT month, properties, available_nights, nights_sold, occupancy, room_revenue, adr, revpar,
	   arrivals, cancelled_arrivals, cancellation_rate, approved_expenses, pending_expenses, noi
FROM livekpi.portfolio_kpis ORDER BY 1;

-- units change available nights and the ratios, and produce a delta
SELECT last_seq AS seq_before FROM livekpi.state \gset
UPDATE livekpi.properties SET units = 4 WHERE property_id = 1;
SELECT livekpi.sync('30s');
SELECT property_id, month, units, available_nights, occupancy, revpar
FROM livekpi.property_kpis WHERE property_id = 1 ORDER BY 2;
SELECT seq > :seq_before AS new_batch,
	   jsonb_path_query_array(upserts, '$.property_kpis[*].units') AS property_units,
	   ARRAY(SELECT (x ->> 'available_nights')::int
			 FROM jsonb_array_elements(upserts -> 'portfolio_kpis') x ORDER BY 1) AS portfolio_available
FROM livekpi.delta_log WHERE seq = (SELECT last_seq FROM livekpi.state);
\set VERBOSITY terse
UPDATE livekpi.properties SET units = 0 WHERE property_id = 1;	-- refused by the CHECK
\set VERBOSITY default

-- kpis() over a day range, both ends included, optionally by property
SELECT properties, available_nights, nights_sold, occupancy, room_revenue, adr, revpar, arrivals,
	   cancelled_arrivals, cancellation_rate, approved_expenses, pending_expenses, noi,
	   updated_at IS NOT NULL AS has_updated_at
FROM livekpi.kpis('2026-02-01', '2026-02-28') \gx
SELECT properties, available_nights, nights_sold, room_revenue, arrivals, approved_expenses, noi
FROM livekpi.kpis('2026-02-28', '2026-03-01', ARRAY[2]);
SELECT properties, available_nights, nights_sold, occupancy, adr
FROM livekpi.kpis('2027-01-01', '2027-01-31', ARRAY[42]);

-- a filter on property and month reaches the indexes (the tables here are
-- too small for the planner to prefer them unasked)
SET enable_seqscan = off;
EXPLAIN (COSTS OFF)
SELECT * FROM livekpi.property_kpis WHERE property_id = 1 AND month = '2026-02-01';
RESET enable_seqscan;
