//! The schema and connection settings. Every table the store uses is
//! created here; later versions add migrations keyed on `user_version`.

use rusqlite::Connection;

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS agents (
    name         TEXT PRIMARY KEY,
    status       TEXT,
    status_at    INTEGER,
    run_state    TEXT NOT NULL DEFAULT 'unknown',
    deployed_sha TEXT,
    created_at   INTEGER NOT NULL
);

-- Every mailbox (an agent's or the operator's) lives here. A message to `*`
-- is one row per recipient.
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    sender      TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    body        TEXT NOT NULL,
    in_reply_to INTEGER,
    question_id INTEGER,
    options     TEXT NOT NULL DEFAULT '[]',
    multi       INTEGER NOT NULL DEFAULT 0,
    sent_at     INTEGER NOT NULL,
    acked_at    INTEGER
);
CREATE INDEX IF NOT EXISTS messages_unacked ON messages(recipient, id) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_to ON messages(recipient, id);
CREATE INDEX IF NOT EXISTS messages_from ON messages(sender, id);

CREATE TABLE IF NOT EXISTS questions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    asker       TEXT NOT NULL,
    addressee   TEXT NOT NULL,
    question    TEXT NOT NULL,
    options     TEXT NOT NULL,
    multi       INTEGER NOT NULL,
    asked_at    INTEGER NOT NULL,
    expires_at  INTEGER,
    state       TEXT NOT NULL,
    answer      TEXT,
    answered_by TEXT,
    answered_at INTEGER
);
CREATE INDEX IF NOT EXISTS questions_open ON questions(state, expires_at);

CREATE TABLE IF NOT EXISTS reminders (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    agent   TEXT NOT NULL,
    body    TEXT NOT NULL,
    due_at  INTEGER NOT NULL,
    state   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reminders_pending ON reminders(state, due_at);

-- Config proposals and spawn requests (owned by the config repo's verbs in
-- hive::config_verbs). `commit_sha` is the proposal commit on
-- proposals/<id>; `diff` is computed from the repo when shown.
CREATE TABLE IF NOT EXISTS approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    proposer    TEXT NOT NULL,
    message     TEXT NOT NULL,
    commit_sha  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    state       TEXT NOT NULL,
    conflict    TEXT,
    decided_by  TEXT,
    decided_at  INTEGER,
    reason      TEXT,
    merged_sha  TEXT
);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals(state, id);

-- The event stream; `seq` is never reused (AUTOINCREMENT), body is postcard.
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    at   INTEGER NOT NULL,
    body BLOB NOT NULL
);

-- Owned by `isolation`: each agent's slot in the `[network]` pools, given
-- once and kept, so an agent has the same addresses across restarts.
CREATE TABLE IF NOT EXISTS isolation_slots (
    agent        TEXT PRIMARY KEY,
    slot         INTEGER NOT NULL UNIQUE,
    allocated_at INTEGER NOT NULL
);

-- Append-only: each row's hash covers the previous row's hash, so a changed
-- or deleted row breaks the chain (`hivectl audit verify`). The triggers stop
-- honest mistakes; the chain catches the rest.
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Owned by the supervisor (`crate::supervision`): every unexpected exit of
-- an agent's container, with the reason and its last journal lines (a JSON
-- array); `restart_in_ms` NULL means it stayed down. Bounded per agent
-- (`store::supervision::EXITS_KEPT`).
CREATE TABLE IF NOT EXISTS supervision_exits (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    agent         TEXT NOT NULL,
    at            INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    journal_tail  TEXT NOT NULL,
    restart_in_ms INTEGER
);
CREATE INDEX IF NOT EXISTS supervision_exits_agent ON supervision_exits(agent, id);

-- runtime: each agent's uid range, allocated once and never given to
-- another agent (UNIQUE base), so files it owns stay its own.
CREATE TABLE IF NOT EXISTS runtime_uid_ranges (
    agent      TEXT PRIMARY KEY,
    base       INTEGER NOT NULL UNIQUE,
    count      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- runtime: the containers a container runtime started and has not seen
-- end, so the next daemon adopts them instead of starting them twice.
-- `record` is the backend's own JSON (pids, start times, cgroup dirs).
CREATE TABLE IF NOT EXISTS runtime_containers (
    agent      TEXT PRIMARY KEY,
    record     TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
"#;

/// Settings and schema for the one writer connection.
pub fn prepare_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is synced at every commit, so an acknowledged write
    // survives power loss, not only a crash of the process.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(QUOTA_SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// The quotas once kept each mailbox's backlog in this table; it lives in
/// the writer's memory now (`store::usage`), so an older database drops it.
const QUOTA_SCHEMA: &str = "DROP TABLE IF EXISTS quota_mailbox_usage;";

/// Settings for a reader connection.
pub fn prepare_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}
