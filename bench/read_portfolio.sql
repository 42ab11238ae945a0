-- bench/read_portfolio.sql
--
-- pgbench script of the portfolio-read benchmark: one month of
-- livekpi.portfolio_kpis.  :months months from :wstart.  Its baseline,
-- bench.raw_portfolio_month(), reads every stay that may reach the month
-- and is timed server-side only (bench/run.sh).

\set k random(0, :months - 1)
SELECT * FROM livekpi.portfolio_kpis
WHERE month = (CAST(:wstart AS date) + make_interval(months => :k))::date;
