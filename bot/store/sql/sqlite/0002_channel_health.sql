-- Provider health as the workers last saw it (circuit breakers), for the CLI and dashboard.
CREATE TABLE channel_health (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    detail TEXT
);
