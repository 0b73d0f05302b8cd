-- Tocsin schema, SQLite dialect. Times are UTC epoch seconds (REAL); JSON is TEXT.
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    systems TEXT NOT NULL,
    unaffected TEXT NOT NULL,
    impact TEXT NOT NULL,
    sites TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    cause TEXT NOT NULL,
    locale TEXT NOT NULL,
    declared_by TEXT NOT NULL,
    claims TEXT NOT NULL,
    audiences TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    resolved_at REAL,
    source TEXT NOT NULL,
    source_key TEXT
);
CREATE INDEX incidents_source ON incidents (source, source_key);

CREATE TABLE timeline (
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (incident_id, seq)
);

CREATE TABLE statements (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    kind TEXT NOT NULL,
    locale TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    text TEXT NOT NULL,
    bodies TEXT NOT NULL,
    author TEXT NOT NULL,
    approved_by TEXT,
    created_at REAL NOT NULL,
    claims TEXT NOT NULL,
    audiences TEXT NOT NULL
);
CREATE INDEX statements_incident ON statements (incident_id, seq);

CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    incident_id TEXT NOT NULL REFERENCES incidents (id),
    seq INTEGER NOT NULL,
    statement_id TEXT NOT NULL REFERENCES statements (id),
    audience TEXT NOT NULL,
    recipient TEXT NOT NULL,
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    locale TEXT NOT NULL,
    site TEXT,
    contacts TEXT NOT NULL,
    policy TEXT NOT NULL,
    ack_token TEXT NOT NULL UNIQUE,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL,
    next_attempt_at REAL,
    lease_owner TEXT,
    lease_until REAL,
    provider_id TEXT,
    last_error TEXT,
    failover_of INTEGER,
    escalation_of INTEGER,
    root_id INTEGER,
    escalate_at REAL,
    escalated INTEGER NOT NULL DEFAULT 0,
    acknowledged_by TEXT,
    acknowledged_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- The work queue: due rows only (queued/retrying by next attempt, sending by lease expiry).
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX deliveries_incident ON deliveries (incident_id, id);
CREATE INDEX deliveries_provider ON deliveries (channel, provider_id);
CREATE INDEX deliveries_address ON deliveries (channel, address, id);
CREATE INDEX deliveries_root ON deliveries (root_id);
CREATE INDEX deliveries_escalate ON deliveries (escalate_at) WHERE escalated = 0;

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    provider_id TEXT,
    error TEXT,
    code TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
