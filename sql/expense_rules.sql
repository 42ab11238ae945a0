-- SPEC section 3, expenses.
\set SHOW_CONTEXT never
TRUNCATE expenses;
SELECT livekpi.sync('30s');

INSERT INTO expenses (property_id, incurred_on, amount, category, approval_status) VALUES
	(1, '2026-01-05', 40, 'cleaning', 'approved'),
	(1, '2026-01-05', 15.50, 'cleaning', 'pending'),
	(1, '2026-01-05', 9.99, 'cleaning', 'rejected'),
	(1, '2026-01-05', 1, 'cleaning', NULL),			-- NULL status: pending
	(1, '2026-01-05', 2, 'cleaning', 'APPROVED'),		-- not in the list: pending
	(1, '2026-01-06', 100, NULL, 'approved'),			-- NULL category: uncategorized
	(1, '2026-01-07', NULL, 'repairs', 'approved'),	-- NULL amount: 0, still counted
	(1, '2026-02-01', -5, 'refunds', 'approved'),
	(NULL, '2026-01-05', 3, 'cleaning', 'approved'),	-- skipped
	(2, NULL, 3, 'cleaning', 'approved'),				-- skipped
	(2, 'infinity', 3, 'cleaning', 'approved');		-- skipped
SELECT livekpi.sync('30s');
SELECT * FROM ed;
SELECT property_id, month, category, approved_amount, pending_amount, rejected_amount, expense_count
FROM livekpi.expense_monthly ORDER BY 1, 2, 3;

-- moves between categories, statuses and days
UPDATE expenses SET approval_status = 'approved' WHERE amount = 15.50;
UPDATE expenses SET category = 'laundry' WHERE amount = 9.99;
UPDATE expenses SET incurred_on = '2026-01-08' WHERE category = 'repairs';
DELETE FROM expenses WHERE amount = 2;
SELECT livekpi.sync('30s');
SELECT * FROM ed;

-- a table without status and category columns: every expense is approved
-- and uncategorized
CREATE TABLE owner_costs (property_id bigint, spent_on date, cost integer);
SELECT livekpi.track_expenses('owner_costs', date_column => 'spent_on', amount_column => 'cost',
							  category_column => NULL, status_column => NULL);
INSERT INTO owner_costs VALUES (1, '2026-01-06', 7), (3, '2026-01-06', 8);
SELECT livekpi.sync('30s');
SELECT * FROM ed WHERE day = '2026-01-06';
SELECT livekpi.untrack('owner_costs');
SELECT * FROM ed WHERE day = '2026-01-06';
DROP TABLE owner_costs;

SELECT * FROM livekpi.verify();
