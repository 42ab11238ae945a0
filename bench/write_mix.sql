-- bench/write_mix.sql
--
-- pgbench script of the write-overhead benchmark: the booking insert /
-- update / delete mix of a busy property manager (60 % new bookings, 30 %
-- updates of an existing booking, half of them date and price changes and
-- half cancellations or reinstatements, 10 % deletions).  bench/run.sh
-- replaces @TABLE@ with each compared table; :rows is the number of rows the
-- table started with and :props the first property id of its range.

\set r random(1, 100)
\set id random(1, :rows)
\set prop random(:props, :props + 1999)
\set lead random(0, 700)
\set nights random_exponential(1, 21, 3.0)
\if :r <= 60
INSERT INTO @TABLE@ (property_id, unit_no, guest_name, check_in, check_out, guests, channel, status,
                     total_amount, created_at, updated_at)
VALUES (:prop, 1, 'Bench party', DATE '2025-01-01' + CAST(:lead AS int),
        DATE '2025-01-01' + CAST(:lead AS int) + CAST(:nights AS int),
        2, 'airbnb', 'confirmed', CAST(:nights AS int) * 123.45, now(), now());
\elif :r <= 75
UPDATE @TABLE@ SET check_out = check_out + 1, total_amount = total_amount + 95, updated_at = now()
WHERE id = :id;
\elif :r <= 90
UPDATE @TABLE@
SET status = CASE WHEN status IN ('cancelled', 'canceled') THEN 'confirmed' ELSE 'cancelled' END,
    updated_at = now()
WHERE id = :id;
\else
DELETE FROM @TABLE@ WHERE id = :id;
\endif
