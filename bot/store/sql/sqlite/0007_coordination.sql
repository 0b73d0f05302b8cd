-- Coordination between processes sharing one database.
-- The scheduler's leader (SQLite; PostgreSQL leads with an advisory lock instead): a lease
-- the leader renews while it runs its periodic work, taken over once it expires.
CREATE TABLE leaders (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
-- Incident numbers per day prefix, allocated atomically (two declarations never share one).
CREATE TABLE incident_counters (
    prefix TEXT PRIMARY KEY,
    last_number INTEGER NOT NULL
);
-- Idempotency-Key of the HTTP API: written in the transaction of the change it made; the
-- answer is kept to be given again to a retry within 24 h.
CREATE TABLE idempotency_keys (
    principal TEXT NOT NULL,
    request_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (principal, request_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
-- The incident channel's live progress message: one per incident, across restarts.
CREATE TABLE progress_messages (
    incident_id TEXT PRIMARY KEY REFERENCES incidents (id),
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    last_text TEXT NOT NULL,
    pending INTEGER NOT NULL
);
