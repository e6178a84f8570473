-- Keel store, SQLite schema version 6: the human review queue — cases, their labels, and
-- the final label of each case. Instants are INTEGER unix nanoseconds (UTC), as in 0001.

-- One case per (interaction, reason): opening the same case twice changes nothing.
CREATE TABLE review_cases (
    id              INTEGER PRIMARY KEY,
    interaction_id  TEXT NOT NULL REFERENCES interactions (id),
    app             TEXT NOT NULL,
    reason          TEXT NOT NULL,                    -- flagged | escalated | wrong_answer_report | low_satisfaction | drift_alert | sampled
    alert_id        INTEGER,                          -- the drift alert, for reason drift_alert
    priority        INTEGER NOT NULL,                 -- higher is worked first
    status          TEXT NOT NULL,                    -- open | in_review | labelled | needs_adjudication | closed
    needs_second    INTEGER NOT NULL,                 -- 1 when two labels by different reviewers are needed
    assignee        TEXT,                             -- who holds the lock
    lock_expires_at INTEGER,                          -- the lock lapses at this instant
    created_at      INTEGER NOT NULL,
    due_at          INTEGER NOT NULL,                 -- the SLA: labelled by then
    first_taken_at  INTEGER,
    labelled_at     INTEGER,                          -- when the final label was recorded
    closed_at       INTEGER,
    UNIQUE (interaction_id, reason)
);

CREATE INDEX review_cases_queue ON review_cases (status, priority DESC, created_at, id);
CREATE INDEX review_cases_by_app ON review_cases (app, created_at);

-- Every label given to a case: the first and second reviews and the adjudication.
CREATE TABLE review_labels (
    id          INTEGER PRIMARY KEY,
    case_id     INTEGER NOT NULL REFERENCES review_cases (id),
    kind        TEXT NOT NULL,                        -- review | adjudication
    reviewer    TEXT NOT NULL,
    label       TEXT NOT NULL,                        -- ok | violation | wrong_answer | over_refusal
    category    TEXT,                                 -- violations
    correction  TEXT,                                 -- wrong_answer: the corrected answer; over_refusal: what it should have said
    note        TEXT,
    at          INTEGER NOT NULL,
    final       INTEGER NOT NULL,                     -- 1 for the label that decides the case
    UNIQUE (case_id, reviewer, kind)
);

CREATE INDEX review_labels_by_case ON review_labels (case_id, id);
CREATE INDEX review_labels_final ON review_labels (final, at);
