-- bench/setup.sql
--
-- Objects the benchmarks need besides the generated data (bench/datagen.sql
-- loads schema "gen" first).  Plain SQL, no livekpi: bench/run.sh does the
-- tracking.  Everything lives in schema "bench".
--
--   w_plain, w_tracked, w_queue   write-overhead tables (200,000 bookings
--                                 each, properties 100001..; w_tracked is
--                                 filled by bench/run.sh once tracked)
--   bulk_src                      the rows of the bulk loads (bench/run.sh
--                                 creates one empty target per round)
--   wal_plain, wal_tracked        WAL probes (autovacuum off), fed from wal_src
--   queue + queue_capture()       the baseline: a PL/pgSQL trigger writing a
--                                 queue table plus NOTIFY
--   mv_*                          the same KPIs as plain-SQL materialized views
--   raw_property_month()          one property-month aggregated from raw rows
--   raw_portfolio_month()         one portfolio-month aggregated from raw rows
--   wal_probe()                   WAL written by one operation inside one
--                                 transaction

\set ON_ERROR_STOP on
\set QUIET on
\if :{?write_rows} \else \set write_rows 200000 \endif
\if :{?bulk_rows} \else \set bulk_rows 300000 \endif
\if :{?wal_rows} \else \set wal_rows 20000 \endif

SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;

-- Source rows: copies of generated bookings moved to their own property
-- ranges, so that the tracked copies never mix with schema gen's KPIs.
CREATE TABLE bench.bulk_src AS
	SELECT id, property_id + 200000 AS property_id, unit_no, guest_name, check_in, check_out, guests,
	       channel, status, total_amount, created_at, updated_at
	FROM gen.bookings ORDER BY id LIMIT :bulk_rows;
CREATE TABLE bench.wal_src AS
	SELECT id, property_id + 300000 AS property_id, unit_no, guest_name, check_in, check_out, guests,
	       channel, status, total_amount, created_at, updated_at
	FROM gen.bookings ORDER BY id LIMIT :wal_rows;
ALTER TABLE bench.wal_src ADD PRIMARY KEY (id);

CREATE TABLE bench.w_plain (LIKE gen.bookings INCLUDING ALL);
CREATE TABLE bench.w_tracked (LIKE gen.bookings INCLUDING ALL);
CREATE TABLE bench.w_queue (LIKE gen.bookings INCLUDING ALL);
CREATE TABLE bench.wal_plain (LIKE gen.bookings INCLUDING ALL) WITH (autovacuum_enabled = false);
CREATE TABLE bench.wal_tracked (LIKE gen.bookings INCLUDING ALL) WITH (autovacuum_enabled = false);

INSERT INTO bench.w_plain
	SELECT id, property_id + 100000, unit_no, guest_name, check_in, check_out, guests, channel, status,
	       total_amount, created_at, updated_at
	FROM gen.bookings ORDER BY id LIMIT :write_rows;
INSERT INTO bench.w_queue SELECT * FROM bench.w_plain;
SELECT setval(pg_get_serial_sequence('bench.w_plain', 'id'), :write_rows),
       setval(pg_get_serial_sequence('bench.w_queue', 'id'), :write_rows) \gset

-- Baseline: the classic pattern livekpi replaces.  Each row change queues
-- the same projection livekpi captures, and the transaction notifies a
-- consumer (none runs; the queue is emptied between runs).
CREATE TABLE bench.queue (
	id         bigserial PRIMARY KEY,
	rel        regclass NOT NULL,
	op         text NOT NULL,
	old_row    jsonb,
	new_row    jsonb,
	queued_at  timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION bench.queue_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO bench.queue (rel, op, old_row, new_row)
	VALUES (TG_RELID, TG_OP,
	        CASE WHEN TG_OP <> 'INSERT' THEN jsonb_build_object('property_id', OLD.property_id,
	             'check_in', OLD.check_in, 'check_out', OLD.check_out,
	             'total_amount', OLD.total_amount, 'status', OLD.status) END,
	        CASE WHEN TG_OP <> 'DELETE' THEN jsonb_build_object('property_id', NEW.property_id,
	             'check_in', NEW.check_in, 'check_out', NEW.check_out,
	             'total_amount', NEW.total_amount, 'status', NEW.status) END);
	PERFORM pg_notify('kpi_queue', '');
	RETURN NULL;
END $$;
CREATE TRIGGER queue_capture AFTER INSERT OR UPDATE OR DELETE ON bench.w_queue
	FOR EACH ROW EXECUTE FUNCTION bench.queue_capture();

-- The same KPIs as livekpi's tables (SPEC section 3), as plain-SQL
-- materialized views over schema gen, refreshed in dependency order.
CREATE MATERIALIZED VIEW bench.mv_booking_daily AS
SELECT property_id, day,
       sum(nights)::bigint AS nights_sold, sum(revenue) AS room_revenue,
       sum(arrival)::bigint AS arrivals, sum(cancelled)::bigint AS cancelled_arrivals
FROM (
	SELECT b.property_id, b.check_in + g.i AS day,
	       CASE WHEN b.n >= 1 THEN 1 ELSE 0 END AS nights,
	       CASE WHEN b.n <= 0 THEN b.amount
	            WHEN g.i < b.n - 1 THEN round(b.amount / b.n, 2)
	            ELSE b.amount - round(b.amount / b.n, 2) * (b.n - 1) END AS revenue,
	       CASE WHEN g.i = 0 THEN 1 ELSE 0 END AS arrival,
	       0 AS cancelled
	FROM (SELECT property_id, check_in, check_out - check_in AS n, coalesce(total_amount, 0) AS amount
	      FROM gen.bookings
	      WHERE property_id IS NOT NULL AND check_in IS NOT NULL AND check_out IS NOT NULL
	        AND check_out - check_in <= 1000
	        AND (status IS NULL OR status NOT IN ('cancelled', 'canceled'))) b
	CROSS JOIN LATERAL generate_series(0, greatest(b.n, 1) - 1) g(i)
	UNION ALL
	SELECT property_id, check_in, 0, 0, 0, 1
	FROM gen.bookings
	WHERE property_id IS NOT NULL AND check_in IS NOT NULL AND check_out IS NOT NULL
	  AND check_out - check_in <= 1000 AND status IN ('cancelled', 'canceled')
) x
GROUP BY property_id, day
WITH NO DATA;
CREATE UNIQUE INDEX ON bench.mv_booking_daily (property_id, day);

CREATE MATERIALIZED VIEW bench.mv_booking_monthly AS
SELECT property_id, date_trunc('month', day)::date AS month,
       sum(nights_sold)::bigint AS nights_sold, sum(room_revenue) AS room_revenue,
       sum(arrivals)::bigint AS arrivals, sum(cancelled_arrivals)::bigint AS cancelled_arrivals
FROM bench.mv_booking_daily GROUP BY 1, 2
WITH NO DATA;
CREATE UNIQUE INDEX ON bench.mv_booking_monthly (property_id, month);

CREATE MATERIALIZED VIEW bench.mv_expense_daily AS
SELECT property_id, incurred_on AS day, coalesce(category, 'uncategorized') AS category,
       coalesce(sum(amount) FILTER (WHERE approval_status = 'approved'), 0) AS approved_amount,
       coalesce(sum(amount) FILTER (WHERE approval_status IS NULL
                                     OR approval_status NOT IN ('approved', 'rejected')), 0) AS pending_amount,
       coalesce(sum(amount) FILTER (WHERE approval_status = 'rejected'), 0) AS rejected_amount,
       count(*) AS expense_count
FROM gen.expenses
WHERE property_id IS NOT NULL AND incurred_on IS NOT NULL
GROUP BY 1, 2, 3
WITH NO DATA;
CREATE UNIQUE INDEX ON bench.mv_expense_daily (property_id, day, category);

CREATE MATERIALIZED VIEW bench.mv_expense_monthly AS
SELECT property_id, date_trunc('month', day)::date AS month, category,
       sum(approved_amount) AS approved_amount, sum(pending_amount) AS pending_amount,
       sum(rejected_amount) AS rejected_amount, sum(expense_count)::bigint AS expense_count
FROM bench.mv_expense_daily GROUP BY 1, 2, 3
WITH NO DATA;
CREATE UNIQUE INDEX ON bench.mv_expense_monthly (property_id, month, category);

CREATE MATERIALIZED VIEW bench.mv_portfolio_monthly AS
SELECT coalesce(b.month, e.month) AS month,
       coalesce(b.nights_sold, 0) AS nights_sold, coalesce(b.room_revenue, 0) AS room_revenue,
       coalesce(b.arrivals, 0) AS arrivals, coalesce(b.cancelled_arrivals, 0) AS cancelled_arrivals,
       coalesce(e.approved_expenses, 0) AS approved_expenses,
       coalesce(e.pending_expenses, 0) AS pending_expenses,
       coalesce(e.expense_count, 0) AS expense_count
FROM (SELECT month, sum(nights_sold)::bigint AS nights_sold, sum(room_revenue) AS room_revenue,
             sum(arrivals)::bigint AS arrivals, sum(cancelled_arrivals)::bigint AS cancelled_arrivals
      FROM bench.mv_booking_monthly GROUP BY 1) b
FULL JOIN (SELECT month, sum(approved_amount) AS approved_expenses,
                  sum(pending_amount) AS pending_expenses, sum(expense_count)::bigint AS expense_count
           FROM bench.mv_expense_monthly GROUP BY 1) e USING (month)
WITH NO DATA;
CREATE UNIQUE INDEX ON bench.mv_portfolio_monthly (month);

-- One property-month of property_kpis computed from the raw rows, exactly
-- (stays may start up to max_stay_nights = 1000 days before the month).
-- A single-SELECT SQL function, so the planner inlines it.
CREATE FUNCTION bench.raw_property_month(p int, d0 date)
RETURNS TABLE (property_id int, month date, units int, available_nights int,
               nights_sold bigint, occupancy numeric, room_revenue numeric, adr numeric,
               revpar numeric, arrivals bigint, cancelled_arrivals bigint,
               cancellation_rate numeric, approved_expenses numeric, pending_expenses numeric,
               noi numeric)
LANGUAGE sql STABLE AS $$
WITH m AS (SELECT d0 AS d0, (d0 + interval '1 month')::date AS d1),
b AS (
	SELECT b.check_in, b.check_out - b.check_in AS n, coalesce(b.total_amount, 0) AS amount,
	       coalesce(b.status IN ('cancelled', 'canceled'), false) AS cancelled
	FROM gen.bookings b, m
	WHERE b.property_id = p AND b.check_in >= m.d0 - 1000 AND b.check_in < m.d1
	  AND b.check_out - b.check_in <= 1000),
nights AS (
	SELECT count(*) FILTER (WHERE b.n >= 1) AS nights_sold,
	       coalesce(sum(CASE WHEN b.n <= 0 THEN b.amount
	                         WHEN g.i < b.n - 1 THEN round(b.amount / b.n, 2)
	                         ELSE b.amount - round(b.amount / b.n, 2) * (b.n - 1) END), 0) AS room_revenue
	FROM b, m,
	     LATERAL generate_series(greatest(0, m.d0 - b.check_in),
	                             least(greatest(b.n, 1), m.d1 - b.check_in) - 1) g(i)
	WHERE NOT b.cancelled),
arr AS (
	SELECT count(*) FILTER (WHERE NOT b.cancelled) AS arrivals,
	       count(*) FILTER (WHERE b.cancelled) AS cancelled_arrivals
	FROM b, m WHERE b.check_in >= m.d0),
ex AS (
	SELECT coalesce(sum(e.amount) FILTER (WHERE e.approval_status = 'approved'), 0) AS approved_expenses,
	       coalesce(sum(e.amount) FILTER (WHERE e.approval_status IS NULL
	                                       OR e.approval_status NOT IN ('approved', 'rejected')), 0)
	         AS pending_expenses
	FROM gen.expenses e, m
	WHERE e.property_id = p AND e.incurred_on >= m.d0 AND e.incurred_on < m.d1),
u AS (SELECT pr.units, pr.units * (m.d1 - m.d0) AS available_nights FROM gen.properties pr, m WHERE pr.id = p)
SELECT p, m.d0, u.units, u.available_nights, nights.nights_sold,
       round(nights.nights_sold::numeric / nullif(u.available_nights, 0), 6),
       nights.room_revenue,
       round(nights.room_revenue / nullif(nights.nights_sold, 0), 2),
       round(nights.room_revenue / nullif(u.available_nights, 0), 2),
       arr.arrivals, arr.cancelled_arrivals,
       round(arr.cancelled_arrivals::numeric / nullif(arr.arrivals + arr.cancelled_arrivals, 0), 6),
       ex.approved_expenses, ex.pending_expenses, nights.room_revenue - ex.approved_expenses
FROM m, u, nights, arr, ex
$$;

-- One portfolio-month of portfolio_kpis computed from all the raw rows:
-- raw_property_month() of every property, added up, the ratios taken of
-- the sums as the view takes them.  Nothing short of reading every stay
-- that may reach the month, which the materialized portfolio_monthly
-- spares a dashboard.
CREATE FUNCTION bench.raw_portfolio_month(d0 date)
RETURNS TABLE (month date, properties bigint, available_nights bigint,
               nights_sold bigint, occupancy numeric, room_revenue numeric, adr numeric,
               revpar numeric, arrivals bigint, cancelled_arrivals bigint,
               cancellation_rate numeric, approved_expenses numeric, pending_expenses numeric,
               noi numeric)
LANGUAGE sql STABLE AS $$
SELECT d0, s.properties, s.available_nights, s.nights_sold,
       round(s.nights_sold::numeric / nullif(s.available_nights, 0), 6),
       s.room_revenue,
       round(s.room_revenue / nullif(s.nights_sold, 0), 2),
       round(s.room_revenue / nullif(s.available_nights, 0), 2),
       s.arrivals, s.cancelled_arrivals,
       round(s.cancelled_arrivals::numeric / nullif(s.arrivals + s.cancelled_arrivals, 0), 6),
       s.approved_expenses, s.pending_expenses, s.room_revenue - s.approved_expenses
FROM (SELECT count(*) AS properties, sum(r.available_nights)::bigint AS available_nights,
             sum(r.nights_sold)::bigint AS nights_sold, sum(r.room_revenue) AS room_revenue,
             sum(r.arrivals)::bigint AS arrivals, sum(r.cancelled_arrivals)::bigint AS cancelled_arrivals,
             sum(r.approved_expenses) AS approved_expenses, sum(r.pending_expenses) AS pending_expenses
      FROM gen.properties pr, LATERAL bench.raw_property_month(pr.id, d0) r) s
$$;

-- WAL written by one operation on a table, inside one transaction (so the
-- commit record and the apply worker, which cannot see the transaction yet,
-- are left out).  single = one statement per row, else one statement.
-- Returns the LSNs around the operation and the rows it touched.
CREATE FUNCTION bench.wal_probe(tbl regclass, op text, nrows int, single boolean,
                                OUT start_lsn pg_lsn, OUT end_lsn pg_lsn, OUT touched bigint)
LANGUAGE plpgsql AS $$
DECLARE
	r record;
	n bigint;
BEGIN
	touched := 0;
	start_lsn := pg_current_wal_insert_lsn();
	IF single THEN
		FOR r IN SELECT id FROM bench.wal_src ORDER BY id LIMIT nrows LOOP
			IF op = 'insert' THEN
				EXECUTE format('INSERT INTO %s SELECT * FROM bench.wal_src WHERE id = $1', tbl) USING r.id;
			ELSIF op = 'update' THEN
				EXECUTE format('UPDATE %s SET check_out = check_out + 1, total_amount = total_amount + 1 '
				               'WHERE id = $1', tbl) USING r.id;
			ELSE
				EXECUTE format('DELETE FROM %s WHERE id = $1', tbl) USING r.id;
			END IF;
			GET DIAGNOSTICS n = ROW_COUNT;
			touched := touched + n;
		END LOOP;
	ELSE
		IF op = 'insert' THEN
			EXECUTE format('INSERT INTO %s SELECT * FROM bench.wal_src ORDER BY id LIMIT $1', tbl) USING nrows;
		ELSIF op = 'update' THEN
			EXECUTE format('UPDATE %s SET check_out = check_out + 1, total_amount = total_amount + 1', tbl);
		ELSE
			EXECUTE format('DELETE FROM %s', tbl);
		END IF;
		GET DIAGNOSTICS touched = ROW_COUNT;
	END IF;
	end_lsn := pg_current_wal_insert_lsn();
END $$;

-- WAL of the transactions that wrote to schema livekpi between two LSNs
-- (the apply worker's batches), whatever else ran at the same time.
CREATE FUNCTION bench.livekpi_wal(a pg_lsn, b pg_lsn, OUT records bigint, OUT bytes numeric,
                                  OUT transactions bigint, OUT fpi_bytes numeric)
LANGUAGE sql AS $$
WITH r AS (SELECT * FROM pg_get_wal_records_info(a, b)),
rels AS (
	SELECT pg_relation_filenode(c.oid)::text AS fn
	FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
	WHERE s.nspname = 'livekpi' AND pg_relation_filenode(c.oid) IS NOT NULL
	UNION
	SELECT pg_relation_filenode(t.reltoastrelid)::text
	FROM pg_class t JOIN pg_namespace s ON s.oid = t.relnamespace
	WHERE s.nspname = 'livekpi' AND t.reltoastrelid <> 0),
x AS (
	SELECT DISTINCT r.xid
	FROM r, LATERAL regexp_matches(r.block_ref, 'rel \d+/\d+/(\d+)', 'g') m
	WHERE r.xid <> '0' AND m[1] IN (SELECT fn FROM rels))
SELECT count(*), coalesce(sum(r.record_length), 0), (SELECT count(*) FROM x),
	   coalesce(sum(r.fpi_length), 0)
FROM r WHERE r.xid IN (SELECT xid FROM x)
$$;

-- The same WAL by what it changed: each livekpi table with its indexes and
-- TOAST, the rest (commit records, other relations) as "other"; bytes
-- without full-page images.
CREATE FUNCTION bench.livekpi_wal_by_table(a pg_lsn, b pg_lsn)
RETURNS TABLE (tbl text, records bigint, bytes numeric)
LANGUAGE sql AS $$
WITH r AS (SELECT * FROM pg_get_wal_records_info(a, b)),
owner AS (
	SELECT pg_relation_filenode(c.oid)::text AS fn, c.relname::text AS tbl
	FROM pg_class c WHERE c.relnamespace = 'livekpi'::regnamespace AND c.relkind IN ('r', 'p')
	UNION ALL
	SELECT pg_relation_filenode(i.indexrelid)::text, c.relname::text
	FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	WHERE c.relnamespace = 'livekpi'::regnamespace
	UNION ALL
	SELECT pg_relation_filenode(t.oid)::text, c.relname::text
	FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid
	WHERE c.relnamespace = 'livekpi'::regnamespace
	UNION ALL
	SELECT pg_relation_filenode(i.indexrelid)::text, c.relname::text
	FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid
	WHERE c.relnamespace = 'livekpi'::regnamespace),
rr AS (
	SELECT r.xid, r.record_length - r.fpi_length AS len,
		   (regexp_match(r.block_ref, 'rel \d+/\d+/(\d+)'))[1] AS fn
	FROM r),
x AS (SELECT DISTINCT xid FROM rr WHERE xid <> '0' AND fn IN (SELECT fn FROM owner))
SELECT coalesce(o.tbl, 'other'), count(*), sum(rr.len)
FROM rr LEFT JOIN owner o ON o.fn = rr.fn
WHERE rr.xid IN (SELECT xid FROM x)
GROUP BY 1 ORDER BY 3 DESC
$$;

-- Server-side execution time of one query in ms (EXPLAIN ANALYZE without
-- per-node timing: no planning, no client round trip).
CREATE FUNCTION bench.execution_ms(query text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	plan json;
BEGIN
	EXECUTE 'EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ' || query INTO plan;
	RETURN (plan -> 0 ->> 'Execution Time')::float8;
END $$;

-- Waits until the WAL up to the current insert position is flushed, so
-- that pg_walinspect may read it.
CREATE FUNCTION bench.flushed_lsn() RETURNS pg_lsn LANGUAGE plpgsql AS $$
DECLARE
	target pg_lsn := pg_current_wal_insert_lsn();
BEGIN
	FOR i IN 1 .. 1000 LOOP
		EXIT WHEN pg_current_wal_flush_lsn() >= target;
		PERFORM pg_sleep(0.01);
	END LOOP;
	RETURN target;
END $$;

ANALYZE bench.w_plain;
ANALYZE bench.w_queue;
ANALYZE bench.bulk_src;
ANALYZE bench.wal_src;
\set QUIET off
