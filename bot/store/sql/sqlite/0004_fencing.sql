-- Attempts whose result the provider left unknown: a channel reconciles before resending.
ALTER TABLE deliveries ADD COLUMN unknown_attempts INTEGER NOT NULL DEFAULT 0;
UPDATE deliveries SET unknown_attempts = (
    SELECT COUNT(*) FROM attempts
    WHERE attempts.delivery_id = deliveries.id AND attempts.outcome = 'unknown'
)
WHERE EXISTS (
    SELECT 1 FROM attempts
    WHERE attempts.delivery_id = deliveries.id AND attempts.outcome = 'unknown'
);
-- Whether the recipient must acknowledge, as a column: a reply "OK" finds the delivery it
-- answers through deliveries_address (channel, address, id), not by matching the policy text.
ALTER TABLE deliveries ADD COLUMN require_ack INTEGER NOT NULL DEFAULT 0;
UPDATE deliveries SET require_ack = 1 WHERE policy LIKE '%"require_ack":true%';
