-- Keel store, SQLite schema version 4: admin tokens, stored policy versions and their
-- lifecycle, gate runs, and what shadow policies would have decided.
-- Instants are INTEGER unix nanoseconds (UTC), as in 0001.

-- Admin tokens. Only an argon2id hash of each token is kept; the public lookup id (part of
-- the token) finds the row, so a verification is one argon2 check. Names are never reused,
-- so the audit log's actors stay unambiguous.
CREATE TABLE access_tokens (
    lookup_id    TEXT PRIMARY KEY NOT NULL,           -- 16 lowercase hex characters
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,                       -- admin | policy_author | reviewer | auditor | viewer
    secret_hash  TEXT NOT NULL,                       -- argon2id PHC string
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    last_used_at INTEGER,                             -- refreshed at most once per cache period
    revoked_at   INTEGER,
    revoked_by   TEXT
);

-- Policy versions: the full, self-contained source text of each version (a policy that
-- extends a file is stored resolved) and where it is in its lifecycle.
CREATE TABLE policy_versions (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    status         TEXT NOT NULL,                     -- draft | approved | shadow | canary | active | retired
    author         TEXT NOT NULL,
    approver       TEXT,
    parent_version TEXT,                              -- the version it was based on, same name
    origin         TEXT NOT NULL,                     -- where the text came from (a file, `api`, keel.toml)
    source_text    TEXT NOT NULL,
    sha256         TEXT NOT NULL,                     -- of source_text
    canary_share   REAL,                              -- set while status = canary
    created_at     INTEGER NOT NULL,
    approved_at    INTEGER,
    status_at      INTEGER NOT NULL,                  -- when the status last changed
    activated_at   INTEGER,                           -- when it last became active
    PRIMARY KEY (name, version)
);

-- At most one active, one shadow and one canary version per policy name, whatever writes.
CREATE UNIQUE INDEX policy_versions_one_active ON policy_versions (name) WHERE status = 'active';
CREATE UNIQUE INDEX policy_versions_one_shadow ON policy_versions (name) WHERE status = 'shadow';
CREATE UNIQUE INDEX policy_versions_one_canary ON policy_versions (name) WHERE status = 'canary';

-- A stored version's identity and text never change, and versions are never deleted.
CREATE TRIGGER policy_versions_text_is_immutable
BEFORE UPDATE OF name, version, author, origin, source_text, sha256, parent_version, created_at ON policy_versions
BEGIN
    SELECT RAISE(ABORT, 'a stored policy version is immutable: add a new version instead');
END;

CREATE TRIGGER policy_versions_no_delete BEFORE DELETE ON policy_versions
BEGIN
    SELECT RAISE(ABORT, 'policy versions are never deleted: retire them instead');
END;

-- Every status change of every version, in order (the audit log has them too, hashed).
CREATE TABLE policy_transitions (
    seq         INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    from_status TEXT,                                 -- NULL when the version was added
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          INTEGER NOT NULL,
    detail      TEXT NOT NULL,                        -- JSON object
    FOREIGN KEY (name, version) REFERENCES policy_versions (name, version)
);

CREATE INDEX policy_transitions_by_version ON policy_transitions (name, version, seq);

-- Gate runs: one replay or evaluation of one policy version; promotion past `approved`
-- needs a passing one for that exact version (name, version and text hash).
CREATE TABLE gate_runs (
    id             INTEGER PRIMARY KEY,
    policy_name    TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    policy_sha256  TEXT NOT NULL,
    kind           TEXT NOT NULL,                     -- replay | eval
    passed         INTEGER NOT NULL,                  -- 0 or 1
    summary        TEXT NOT NULL,                     -- JSON
    run_sha256     TEXT NOT NULL,                     -- of the full run record, kept by its producer
    actor          TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    FOREIGN KEY (policy_name, policy_version) REFERENCES policy_versions (name, version)
);

CREATE INDEX gate_runs_by_version ON gate_runs (policy_name, policy_version, id);

-- What a shadow policy would have decided for a served interaction, per phase.
CREATE TABLE shadow_decisions (
    interaction_id TEXT NOT NULL REFERENCES interactions (id) ON DELETE CASCADE,
    ord            INTEGER NOT NULL,
    policy_name    TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    phase          TEXT NOT NULL,                     -- input | output
    action         TEXT NOT NULL,                     -- allow | flag | redact | escalate | block
    rule           TEXT,                              -- NULL when no rule matched
    PRIMARY KEY (interaction_id, ord)
);

CREATE INDEX shadow_decisions_by_policy ON shadow_decisions (policy_name, policy_version, interaction_id);

-- Counters bumped by every change to tokens or policy versions, in the same transaction:
-- running gateways poll this one row to notice changes made by other processes.
CREATE TABLE access_generation (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    policies INTEGER NOT NULL,
    tokens   INTEGER NOT NULL
);

INSERT INTO access_generation (id, policies, tokens) VALUES (1, 0, 0);
