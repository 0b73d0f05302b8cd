-- The outcome of one send, written only by the lease that holds the row (fencing). A row
-- acknowledged or reported delivered while its send ran keeps that state.
-- Parameters: state, attempts added, provider_id, last_error, next_attempt_at, due_at,
-- escalate_at, unknown attempts added, updated_at, id, lease_owner.
UPDATE deliveries SET
    state = CASE WHEN state = 'sending' THEN ? ELSE state END,
    attempts = attempts + ?,
    provider_id = COALESCE(?, provider_id),
    last_error = ?,
    next_attempt_at = ?,
    due_at = CASE WHEN state = 'sending' THEN ? ELSE due_at END,
    escalate_at = COALESCE(?, escalate_at),
    unknown_attempts = unknown_attempts + ?,
    lease_owner = NULL, lease_until = NULL, updated_at = COALESCE(?, updated_at)
WHERE id = ? AND lease_owner = ?
