-- Keel store, SQLite schema version 3: the drift monitor's persisted state, its alerts and
-- their webhook deliveries. Instants are INTEGER unix nanoseconds (UTC), as in version 1.

-- One row per configured detector: its running state and how far it has read its source.
CREATE TABLE drift_detectors (
    name         TEXT PRIMARY KEY NOT NULL,
    config_hash  TEXT NOT NULL,                     -- SHA-256 of the detector's resolved config
    source       TEXT NOT NULL,                     -- interactions | feedback
    cursor       INTEGER NOT NULL,                  -- last insertion seq of `source` it has read
    state        TEXT NOT NULL,                     -- JSON: detector, alert tracker, window ring
    updated_at   INTEGER NOT NULL
);

CREATE TABLE drift_alerts (
    id                     INTEGER PRIMARY KEY,
    detector               TEXT NOT NULL,
    stream                 TEXT NOT NULL,
    app                    TEXT,
    method                 TEXT NOT NULL,
    state                  TEXT NOT NULL,           -- open | acknowledged | resolved
    statistic              REAL NOT NULL,
    threshold              REAL NOT NULL,
    p_value                REAL,
    window_size            INTEGER NOT NULL,        -- observations in the window the statistic covers
    reference_size         INTEGER NOT NULL,
    samples                INTEGER NOT NULL,        -- observations the detector had seen in total
    window_first_seq       INTEGER NOT NULL,
    window_last_seq        INTEGER NOT NULL,
    window_first_at        INTEGER NOT NULL,        -- created_at of the first observation's interaction
    window_last_at         INTEGER NOT NULL,
    detail                 TEXT NOT NULL,
    sample_interaction_ids TEXT NOT NULL,           -- JSON array of interaction ids from the window
    opened_at              INTEGER NOT NULL,
    acknowledged_at        INTEGER,
    acknowledged_by        TEXT,
    resolved_at            INTEGER,
    resolved_by            TEXT
);

CREATE INDEX drift_alerts_by_state ON drift_alerts (state, id);
CREATE INDEX drift_alerts_by_detector ON drift_alerts (detector, id);

-- What still has to be delivered to which webhook; survives restarts.
CREATE TABLE alert_outbox (
    alert_id        INTEGER NOT NULL REFERENCES drift_alerts (id),
    sink            TEXT NOT NULL,
    status          TEXT NOT NULL,                  -- pending | delivered | failed
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    PRIMARY KEY (alert_id, sink)
);

CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt_at);

-- Every delivery attempt.
CREATE TABLE alert_deliveries (
    id          INTEGER PRIMARY KEY,
    alert_id    INTEGER NOT NULL REFERENCES drift_alerts (id),
    sink        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,                   -- 1, 2, 3…
    status      TEXT NOT NULL,                      -- delivered | retry | failed
    http_status INTEGER,
    error       TEXT,
    at          INTEGER NOT NULL
);

CREATE INDEX alert_deliveries_by_alert ON alert_deliveries (alert_id, id);

-- Leases: with several gateway replicas on one store, only the holder runs the monitor.
CREATE TABLE monitor_leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
