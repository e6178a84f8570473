-- Keel store, SQLite schema version 1.
-- Instants are INTEGER unix nanoseconds (UTC) so ordering and ranges are exact, except
-- audit_log.at, which is fixed-width RFC 3339 UTC text with nanoseconds because the chain
-- hashes that text.

CREATE TABLE interactions (
    id                TEXT PRIMARY KEY NOT NULL,      -- UUIDv7, hyphenated lowercase
    created_at        INTEGER NOT NULL,               -- unix nanoseconds
    app               TEXT NOT NULL,
    model             TEXT NOT NULL,
    stream            INTEGER NOT NULL,               -- 0 or 1
    request_text      TEXT,                           -- NULL under privacy `none`
    request_sha256    TEXT NOT NULL,
    response_text     TEXT,
    response_sha256   TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    http_status       INTEGER NOT NULL,
    error             TEXT,
    upstream_ms       REAL NOT NULL,
    overhead_us       INTEGER NOT NULL,
    total_ms          REAL NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    policy_name       TEXT NOT NULL,
    policy_version    TEXT NOT NULL,
    decision          TEXT NOT NULL,                  -- allow | flag | redact | escalate | block
    decisions         TEXT NOT NULL,                  -- JSON array of Decision
    checks            TEXT NOT NULL,                  -- JSON array of CheckResult
    checks_hit        TEXT NOT NULL                   -- JSON array of distinct names that hit
);

CREATE INDEX interactions_by_time ON interactions (created_at, id);
CREATE INDEX interactions_by_app ON interactions (app, created_at, id);
CREATE INDEX interactions_by_decision ON interactions (decision, created_at, id);

CREATE TABLE check_hits (
    interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,
    ord            INTEGER NOT NULL,                  -- position in Interaction.checks
    phase          TEXT NOT NULL,                     -- input | output
    check_name     TEXT NOT NULL,
    score          REAL NOT NULL,
    hit            INTEGER NOT NULL,                  -- 0 or 1
    PRIMARY KEY (interaction_id, ord)
);

CREATE INDEX check_hits_by_check ON check_hits (check_name, hit, interaction_id);

CREATE TABLE handoffs (
    id             INTEGER PRIMARY KEY,
    interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,
    app            TEXT NOT NULL,
    created_at     INTEGER NOT NULL,                  -- unix nanoseconds
    reason         TEXT NOT NULL
);

CREATE INDEX handoffs_by_time ON handoffs (created_at, id);
CREATE INDEX handoffs_by_app ON handoffs (app, created_at, id);
CREATE INDEX handoffs_by_interaction ON handoffs (interaction_id);

CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,                 -- 1, 2, 3… assigned by the writer
    at           TEXT NOT NULL,                       -- 2025-01-02T03:04:05.123456789Z
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    payload      TEXT NOT NULL,                       -- JSON text, hashed as stored
    payload_hash TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

-- The log is append-only. These guards stop mistakes, not a determined editor of the file:
-- the hash chain is what detects that.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
