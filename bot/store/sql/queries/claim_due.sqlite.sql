-- Claim up to N due rows under a lease, lane first (crisis cell and people who must
-- acknowledge before public fan-out), then due time. SQLite's write transaction already
-- excludes every other writer. Each row comes back as one JSON text, formatted in with
-- bot.store.rows.json_delivery (delivery).
-- Parameters: lease_owner, lease_until, due_at (= lease_until), now, now, limit.
UPDATE deliveries SET state = 'sending', lease_owner = ?, lease_until = ?, due_at = ?,
    updated_at = ?
WHERE id IN (
    SELECT id FROM deliveries WHERE due_at IS NOT NULL AND due_at <= ?
    ORDER BY lane, due_at, id LIMIT ?
)
RETURNING {delivery} AS delivery
