-- Inbound SMS replies already taken (provider message id, or a digest of time, sender and
-- text): a replayed "OK" must not acknowledge the number's next delivery.
CREATE TABLE inbound_replies (
    message_key TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL
);

-- Dashboard sessions, server-side so that logout and a revoked token end them. The browser
-- holds a random id; this table holds its SHA-256 digest only.
CREATE TABLE dashboard_sessions (
    digest TEXT PRIMARY KEY,
    token_name TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
