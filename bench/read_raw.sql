-- bench/read_raw.sql
--
-- pgbench script of the KPI-read baseline: the same property-month
-- aggregated from the raw bookings and expenses (bench.raw_property_month,
-- inlined SQL, through the index on bookings (property_id, check_in)).

\set p random(1, :props)
\set k random(0, :months - 1)
SELECT * FROM bench.raw_property_month(:p, (CAST(:wstart AS date) + make_interval(months => :k))::date);
