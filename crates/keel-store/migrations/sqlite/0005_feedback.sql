-- Keel store, SQLite schema version 5: user feedback on interactions and the events of
-- handoffs to a human. Instants are INTEGER unix nanoseconds (UTC), as in version 1.

-- One row per feedback event. `seq` is the drift monitor's cursor: AUTOINCREMENT so a value
-- is never reused and VACUUM cannot renumber it (a plain rowid could be).
CREATE TABLE feedback (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,              -- client-supplied idempotency key
    body_sha256    TEXT NOT NULL,                     -- what a retry of the same event must match
    interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,
    app            TEXT NOT NULL,
    satisfaction   INTEGER,                           -- 1..5
    thumbs         TEXT,                              -- up | down
    wrong_answer   INTEGER,                           -- 0 or 1
    comment        TEXT,
    actor          TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE INDEX feedback_by_interaction ON feedback (interaction_id);
CREATE INDEX feedback_by_app ON feedback (app, created_at);

-- requested | taken | resolved events of the handoff of an interaction. A `requested` event
-- for an interaction without a `handoffs` row creates one; a gateway `escalate` creates the
-- row with no event, and its created_at is when it was requested.
CREATE TABLE handoff_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    body_sha256    TEXT NOT NULL,
    interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,
    event          TEXT NOT NULL,                     -- requested | taken | resolved
    actor          TEXT NOT NULL,
    at             INTEGER NOT NULL
);

CREATE INDEX handoff_events_by_interaction ON handoff_events (interaction_id, event);
