-- Who holds each row now, as one JSON array of [id, lease_owner] (one step of SQLite).
-- Parameter: a JSON array of delivery ids.
SELECT json_group_array(json_array(id, lease_owner)) AS owners
FROM deliveries WHERE id IN (SELECT value FROM json_each(?))
