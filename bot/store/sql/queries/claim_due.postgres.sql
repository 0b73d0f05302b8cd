-- Claim up to N due rows under a lease, lane first (crisis cell and people who must
-- acknowledge before public fan-out), then due time; rows another worker is claiming are
-- skipped, not waited for.
-- Parameters: lease_owner, lease_until, due_at (= lease_until), now, now, limit.
UPDATE deliveries SET state = 'sending', lease_owner = ?, lease_until = ?, due_at = ?,
    updated_at = ?
WHERE id IN (
    SELECT id FROM deliveries WHERE due_at IS NOT NULL AND due_at <= ?
    ORDER BY lane, due_at, id LIMIT ?
    FOR UPDATE SKIP LOCKED
)
RETURNING *
