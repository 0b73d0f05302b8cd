-- A renewed lease keeps the row from being due; the state is left as it is (a delivery
-- acknowledged or reported delivered while its send runs stays so, and is not made due).
-- Rows are locked in id order, as outcomes lock them, so that the two never deadlock.
-- Formatted with one placeholder per row (ids) and the row lock of the dialect (lock).
-- Parameters: lease_until, due_at (= lease_until), lease_owner, ids...
UPDATE deliveries SET lease_until = ?,
    due_at = CASE WHEN state = 'sending' THEN ? ELSE due_at END
WHERE id IN (
    SELECT id FROM deliveries WHERE lease_owner = ? AND id IN ({ids}) ORDER BY id{lock}
)
RETURNING id
