-- Claims take due rows ORDER BY due_at, id. With id in the index PostgreSQL reads the first
-- rows in that order instead of sorting every due row at each claim (65 ms per claim with
-- 100,000 rows due; 0.1 ms with this index). SQLite gets the same index, so that the two
-- schemas stay one.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (due_at, id) WHERE due_at IS NOT NULL;
