-- Priority lanes: 0 urgent (people who must acknowledge, the crisis cell), 1 normal. Claims
-- take due rows ORDER BY lane, due_at, id, and this index gives them in that order without
-- sorting every due row. Rows queued before this migration keep their place: those asking
-- for an acknowledgement become urgent.
ALTER TABLE deliveries ADD COLUMN lane INTEGER NOT NULL DEFAULT 1;
UPDATE deliveries SET lane = 0 WHERE policy LIKE '%"require_ack":true%';
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (lane, due_at, id) WHERE due_at IS NOT NULL;

-- Rate limits shared by every worker of the deployment: one token bucket per provider or
-- destination key. Workers take tokens in small chunks; a 429 pauses the bucket for all.
-- No row is the same as a full bucket; there is one row per distinct key ever limited.
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated_at REAL NOT NULL,
    paused_until REAL NOT NULL DEFAULT 0,
    last_taken REAL NOT NULL DEFAULT 0
);
