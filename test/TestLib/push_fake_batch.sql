-- test/TestLib/push_fake_batch.sql
--	  For the push worker's TAP tests: push_test_batch() plays the apply
--	  worker's part as internals.md describes it (KPI rows, one delta_log
--	  row and state.last_seq in one transaction, then a wake-up), so that
--	  the stream can be tested on its own, with exact control over seqs.
CREATE OR REPLACE FUNCTION public.push_test_batch(
	p bigint, d date, nights int DEFAULT 1, rev numeric DEFAULT 100,
	remove boolean DEFAULT false, barrier boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	s bigint;
	m date := date_trunc('month', d)::date;
	up jsonb := '{}';
	dl jsonb := '{}';
BEGIN
	SELECT last_seq + 1 INTO s FROM livekpi.state FOR UPDATE;
	IF barrier THEN
		INSERT INTO livekpi.delta_log VALUES (s, now(), now(), pg_current_wal_lsn(), true, '{}', '{}');
		UPDATE livekpi.state SET last_seq = s;
		PERFORM livekpi._tokens_changed();
		RETURN s;
	END IF;
	-- As the apply worker's own registrations, this one sends no units
	-- change (which the real apply worker would turn into a batch of its own).
	ALTER TABLE livekpi.properties DISABLE TRIGGER livekpi_units;
	INSERT INTO livekpi.properties (property_id) VALUES (p) ON CONFLICT DO NOTHING;
	ALTER TABLE livekpi.properties ENABLE ALWAYS TRIGGER livekpi_units;
	IF remove THEN
		DELETE FROM livekpi.booking_daily WHERE property_id = p AND day = d;
		DELETE FROM livekpi.booking_monthly WHERE property_id = p AND month = m;
		dl := jsonb_build_object(
			'booking_daily', jsonb_build_array(jsonb_build_object('property_id', p, 'day', d)),
			'property_kpis', jsonb_build_array(jsonb_build_object('property_id', p, 'month', m)));
	ELSE
		INSERT INTO livekpi.booking_daily AS b VALUES (p, d, nights, rev, 1, 0, now())
		ON CONFLICT (property_id, day) DO UPDATE
			SET nights_sold = b.nights_sold + excluded.nights_sold,
				room_revenue = b.room_revenue + excluded.room_revenue,
				arrivals = b.arrivals + 1, updated_at = now();
		INSERT INTO livekpi.booking_monthly AS b VALUES (p, m, nights, rev, 1, 0, now())
		ON CONFLICT (property_id, month) DO UPDATE
			SET nights_sold = b.nights_sold + excluded.nights_sold,
				room_revenue = b.room_revenue + excluded.room_revenue,
				arrivals = b.arrivals + 1, updated_at = now();
		up := jsonb_build_object(
			'booking_daily', (SELECT jsonb_agg(to_jsonb(b)) FROM livekpi.booking_daily b
							   WHERE property_id = p AND day = d),
			'property_kpis', (SELECT jsonb_agg(to_jsonb(v)) FROM livekpi.property_kpis v
							   WHERE property_id = p AND month = m));
	END IF;
	DELETE FROM livekpi.portfolio_monthly WHERE month = m;
	INSERT INTO livekpi.portfolio_monthly (month, nights_sold, room_revenue, arrivals,
										   cancelled_arrivals, updated_at)
	SELECT m, sum(nights_sold), sum(room_revenue), sum(arrivals), 0, now()
	  FROM livekpi.booking_monthly WHERE month = m HAVING count(*) > 0;
	IF EXISTS (SELECT 1 FROM livekpi.portfolio_monthly WHERE month = m) THEN
		up := up || jsonb_build_object('portfolio_kpis',
			(SELECT jsonb_agg(to_jsonb(v)) FROM livekpi.portfolio_kpis v WHERE month = m));
	ELSE
		dl := dl || jsonb_build_object('portfolio_kpis', jsonb_build_array(jsonb_build_object('month', m)));
	END IF;
	-- views with nothing to say are absent; NULL values inside rows stay
	-- (to_jsonb of a view row, such as property_kpis.name)
	INSERT INTO livekpi.delta_log VALUES (s, now(), now(), pg_current_wal_lsn(), false,
		(SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') FROM jsonb_each(up) e
		 WHERE jsonb_typeof(e.value) <> 'null'), dl);
	UPDATE livekpi.state SET last_seq = s;
	PERFORM livekpi._tokens_changed();	-- writes the push worker's eventfd at commit
	RETURN s;
END
$$;
