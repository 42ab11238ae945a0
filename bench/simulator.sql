-- bench/simulator.sql
--
-- Live write simulator for the tables bench/datagen.sql creates: a pgbench
-- script where each transaction is one event of a property manager's day,
-- drawn by weight (per mille):
--
--   380 new booking (on a free unit; pending now and then)
--    20 booking attempt rolled back (never reaches the KPIs)
--   140 date change of an upcoming booking (shifted, sometimes longer)
--    90 cancellation of an upcoming booking ('canceled' on vrbo)
--    15 cancelled booking reinstated
--    40 price change (upsell or discount)
--    25 status progress (confirmed -> checked_in), which changes no KPI
--    20 booking deleted (entered by mistake)
--   150 expense submitted (pending)
--    70 expense approved
--    25 expense rejected
--    15 expense amount corrected
--    10 expense withdrawn (deleted)
--
-- Run it with pgbench, which gives the rate (-R), the duration (-T) and a
-- progress line (-P) for free; :props is the number of properties:
--
--   pgbench -n -c 2 -j 2 -R 20 -T 3600 -P 10 --max-tries=10 \
--           -D props=100 -f bench/simulator.sql
--
-- Tables are found through search_path (public by default).

\set r random(1, 1000)
\set prop random(1, :props)
\set x random(1, 1000000)
\set skip random(0, 60)

\if :r <= 400
	-- New booking: lead time and stay length skewed short; the unit is free.
	\set lead random_exponential(0, 300, 4.0)
	\set nights random_exponential(1, 21, 3.0)
	\set chan random(1, 100)
	\set guests random(1, 4)
	\if :r > 380
		BEGIN;
	\endif
	INSERT INTO bookings (property_id, unit_no, guest_name, check_in, check_out, guests,
	                      channel, status, total_amount, created_at, updated_at)
	SELECT p.id, u.unit_no,
	       (ARRAY['Smith','Garcia','Müller','Rossi','Dubois','Silva','Novak','Jansen'])[1 + :x % 8] || ' party',
	       d.ci, d.ci + :nights, :guests, c.channel,
	       CASE WHEN :chan > 97 THEN 'pending' ELSE 'confirmed' END,
	       CASE WHEN c.channel = 'owner' THEN 0
	            ELSE round(p.base_rate * :nights * (0.55 + 0.45 * season_weight(d.ci))::numeric
	                       + round(p.base_rate * 0.4), 2) END,
	       now(), now()
	FROM properties p,
	     LATERAL (SELECT 1 + :x % p.units AS unit_no) u,
	     LATERAL (SELECT current_date + :lead AS ci) d,
	     LATERAL (SELECT CASE WHEN :chan <= 2 THEN 'owner' WHEN :chan <= 46 THEN 'airbnb'
	                          WHEN :chan <= 76 THEN 'booking.com' WHEN :chan <= 90 THEN 'direct'
	                          ELSE 'vrbo' END AS channel) c
	WHERE p.id = :prop
	  AND NOT EXISTS (SELECT 1 FROM bookings b
	                  WHERE b.property_id = p.id AND b.unit_no = u.unit_no
	                    AND b.check_in >= d.ci - 100 AND b.check_in < d.ci + :nights
	                    AND b.check_out > d.ci
	                    AND b.status NOT IN ('cancelled', 'canceled'));
	\if :r > 380
		ROLLBACK;
	\endif

\elif :r <= 540
	-- Date change: the guest moves the stay by -3..+10 days, now and then longer.
	\set shift random(-3, 10)
	\set extend random_exponential(0, 3, 2.0)
	UPDATE bookings b
	SET check_in = b.check_in + :shift,
	    check_out = b.check_out + :shift + :extend,
	    total_amount = round(b.total_amount * (b.check_out - b.check_in + :extend)
	                         / greatest(1, b.check_out - b.check_in), 2),
	    updated_at = now()
	WHERE b.id = (SELECT id FROM bookings
	              WHERE property_id = :prop AND check_in >= current_date + :skip
	                AND status IN ('confirmed', 'pending')
	              ORDER BY check_in LIMIT 1 FOR UPDATE SKIP LOCKED)
	  AND b.check_in + :shift > current_date
	  AND NOT EXISTS (SELECT 1 FROM bookings o
	                  WHERE o.property_id = b.property_id AND o.unit_no = b.unit_no AND o.id <> b.id
	                    AND o.check_in >= b.check_in - 100
	                    AND o.check_in < b.check_out + :shift + :extend
	                    AND o.check_out > b.check_in + :shift
	                    AND o.status NOT IN ('cancelled', 'canceled'));

\elif :r <= 630
	-- Cancellation of an upcoming booking.
	UPDATE bookings
	SET status = CASE WHEN channel = 'vrbo' THEN 'canceled' ELSE 'cancelled' END, updated_at = now()
	WHERE id = (SELECT id FROM bookings
	            WHERE property_id = :prop AND check_in >= current_date + :skip
	              AND status IN ('confirmed', 'pending')
	            ORDER BY check_in LIMIT 1 FOR UPDATE SKIP LOCKED);

\elif :r <= 645
	-- A cancelled booking is reinstated (when its unit is still free).
	UPDATE bookings b
	SET status = 'confirmed', updated_at = now()
	WHERE b.id = (SELECT id FROM bookings
	              WHERE property_id = :prop AND check_in >= current_date
	                AND status IN ('cancelled', 'canceled')
	              ORDER BY check_in LIMIT 1 FOR UPDATE SKIP LOCKED)
	  AND NOT EXISTS (SELECT 1 FROM bookings o
	                  WHERE o.property_id = b.property_id AND o.unit_no = b.unit_no AND o.id <> b.id
	                    AND o.check_in >= b.check_in - 100 AND o.check_in < b.check_out
	                    AND o.check_out > b.check_in
	                    AND o.status NOT IN ('cancelled', 'canceled'));

\elif :r <= 685
	-- Price change: an upsell (late checkout, extra guest) or a discount.
	\set delta random(-60, 120)
	UPDATE bookings
	SET total_amount = greatest(0, total_amount + :delta), updated_at = now()
	WHERE id = (SELECT id FROM bookings
	            WHERE property_id = :prop AND check_in >= current_date + :skip / 4
	              AND status IN ('confirmed', 'pending')
	            ORDER BY check_in LIMIT 1 FOR UPDATE SKIP LOCKED);

\elif :r <= 710
	-- Guest arrives: a status change that changes no KPI.
	UPDATE bookings
	SET status = 'checked_in', updated_at = now()
	WHERE id = (SELECT id FROM bookings
	            WHERE property_id = :prop AND check_in >= current_date AND check_in <= current_date + 1
	              AND status = 'confirmed'
	            ORDER BY check_in LIMIT 1 FOR UPDATE SKIP LOCKED);

\elif :r <= 730
	-- A booking entered by mistake is deleted.
	DELETE FROM bookings
	WHERE id = (SELECT id FROM bookings
	            WHERE property_id = :prop AND check_in >= current_date + :skip
	            ORDER BY check_in LIMIT 1 FOR UPDATE SKIP LOCKED);

\elif :r <= 880
	-- Expense submitted for approval.
	\set cat random(1, 100)
	\set back random_exponential(0, 30, 3.0)
	\set cents random_exponential(500, 80000, 4.0)
	INSERT INTO expenses (property_id, incurred_on, category, vendor, description, amount,
	                      approval_status, submitted_at)
	SELECT :prop, current_date - :back, c.category, c.category || ' vendor ' || (1 + :x % 40),
	       c.category || ' (live)', :cents / 100.0, 'pending', now()
	FROM (SELECT CASE WHEN :cat <= 1 THEN NULL WHEN :cat <= 30 THEN 'cleaning'
	                  WHEN :cat <= 36 THEN 'laundry' WHEN :cat <= 51 THEN 'maintenance'
	                  WHEN :cat <= 63 THEN 'utilities' WHEN :cat <= 75 THEN 'supplies'
	                  WHEN :cat <= 83 THEN 'repairs' WHEN :cat <= 89 THEN 'management_fee'
	                  WHEN :cat <= 93 THEN 'marketing' WHEN :cat <= 96 THEN 'software'
	                  ELSE 'insurance' END AS category) c;

\else
	-- Decisions on pending expenses: oldest first half of the time, else
	-- from a random point of the queue.
	SELECT max(id) AS maxeid FROM expenses \gset
	\set from random(0, :maxeid) * (:x % 2)
	\if :r <= 950
		UPDATE expenses SET approval_status = 'approved', decided_at = now()
		WHERE id = (SELECT id FROM expenses
		            WHERE approval_status IN ('pending', 'on_hold') AND id >= :from
		            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);
	\elif :r <= 975
		UPDATE expenses SET approval_status = 'rejected', decided_at = now()
		WHERE id = (SELECT id FROM expenses
		            WHERE approval_status IN ('pending', 'on_hold') AND id >= :from
		            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);
	\elif :r <= 990
		\set delta random(-2000, 2000)
		UPDATE expenses SET amount = greatest(1, amount + :delta / 100.0)
		WHERE id = (SELECT id FROM expenses
		            WHERE approval_status IN ('pending', 'on_hold') AND id >= :from
		            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);
	\else
		DELETE FROM expenses
		WHERE id = (SELECT id FROM expenses
		            WHERE approval_status IN ('pending', 'on_hold') AND id >= :from
		            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);
	\endif
\endif
