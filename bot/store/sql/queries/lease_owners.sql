-- Who holds each row now, the rows locked until the transaction ends (PostgreSQL), so that
-- no claim slips between this read and the fenced write.
-- Formatted with one placeholder per row (ids) and the row lock of the dialect (lock).
SELECT id, lease_owner FROM deliveries WHERE id IN ({ids}) ORDER BY id{lock}
