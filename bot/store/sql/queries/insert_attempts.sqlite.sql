-- The attempts of a batch of outcomes in one statement, each inserted only where the
-- outcome's lease still holds the row (fencing), in the order given.
-- Parameter: a JSON array of [delivery_id, at, outcome, provider_id, error, code,
-- lease_owner], at in integer microseconds since the epoch.
INSERT INTO attempts (delivery_id, at, outcome, provider_id, error, code)
SELECT a.value ->> 0, (a.value ->> 1) / 1000000.0, a.value ->> 2, a.value ->> 3,
    a.value ->> 4, a.value ->> 5
FROM json_each(?) AS a
JOIN deliveries AS d ON d.id = a.value ->> 0 AND d.lease_owner = a.value ->> 6
ORDER BY a.key
