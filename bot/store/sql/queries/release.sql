-- Give a claimed row back to the queue unsent, due at a later time (the next slot of a rate limit, a
-- provider that is down); only the lease that holds it may.
-- Parameters: due_at, next_attempt_at, id, lease_owner.
UPDATE deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' ELSE 'queued' END,
    due_at = ?, next_attempt_at = ?, lease_owner = NULL, lease_until = NULL
WHERE id = ? AND state = 'sending' AND lease_owner = ?
