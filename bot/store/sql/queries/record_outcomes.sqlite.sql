-- The outcomes of a batch of sends in one statement (one step of SQLite: the connection's
-- thread holds the GIL once, not once per row), each written only by the lease that holds
-- its row (fencing). A row acknowledged or reported delivered while its send ran keeps that
-- state. As record_outcome.sql, row by row.
-- Parameter: a JSON array of record_outcome.sql's parameter rows (state, attempts added,
-- provider_id, last_error, next_attempt_at, due_at, escalate_at, unknown attempts added,
-- updated_at, id, lease_owner), times in integer microseconds since the epoch (exact).
UPDATE deliveries SET
    state = CASE WHEN state = 'sending' THEN o.value ->> 0 ELSE state END,
    attempts = attempts + (o.value ->> 1),
    provider_id = COALESCE(o.value ->> 2, provider_id),
    last_error = o.value ->> 3,
    next_attempt_at = (o.value ->> 4) / 1000000.0,
    due_at = CASE WHEN state = 'sending' THEN (o.value ->> 5) / 1000000.0 ELSE due_at END,
    escalate_at = COALESCE((o.value ->> 6) / 1000000.0, escalate_at),
    unknown_attempts = unknown_attempts + (o.value ->> 7),
    lease_owner = NULL, lease_until = NULL,
    updated_at = COALESCE((o.value ->> 8) / 1000000.0, updated_at)
FROM json_each(?) AS o
WHERE deliveries.id = o.value ->> 9 AND deliveries.lease_owner = o.value ->> 10
