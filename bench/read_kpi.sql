-- bench/read_kpi.sql
--
-- pgbench script of the KPI-read benchmark: one property-month from
-- livekpi.property_kpis.  :props properties, :months months from :wstart.

\set p random(1, :props)
\set k random(0, :months - 1)
SELECT * FROM livekpi.property_kpis
WHERE property_id = :p AND month = (CAST(:wstart AS date) + make_interval(months => :k))::date;
