//! The SQLite database of the state directory: its schema, how it is opened (WAL,
//! `synchronous = NORMAL`, a busy timeout), and SQLite errors mapped to [`StateError`].

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::StateError;

/// Bumped when the tables change incompatibly.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// Rows are keyed by integers composed from the run's number (`runs.run_no`), the step's
/// number within the run (`step_no`: plan order, then `for_each` items) and the attempt or
/// event number, so that a run's writes are appends to a few pages (see [`step_key`]).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_no INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    plan_id TEXT NOT NULL,
    plan_version TEXT NOT NULL,
    plan_path TEXT NOT NULL,
    plan_hash TEXT NOT NULL,
    vars TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    resumes INTEGER NOT NULL DEFAULT 0,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY,
    run_no INTEGER NOT NULL,
    step_no INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    ord INTEGER NOT NULL,
    parent TEXT,
    item TEXT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    error TEXT,
    outputs TEXT,
    result TEXT,
    cache_key TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    run_no INTEGER NOT NULL,
    step_no INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    error TEXT,
    agent TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_no INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    step_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    outputs TEXT,
    result TEXT,
    created_at TEXT NOT NULL
) WITHOUT ROWID;
";

/// `steps.id` of step `step_no` of run `run_no`.
pub(crate) fn step_key(run_no: i64, step_no: u32) -> i64 {
    (run_no << 32) | i64::from(step_no)
}

/// The `steps.id` range of a run.
pub(crate) fn step_range(run_no: i64) -> (i64, i64) {
    (run_no << 32, (run_no << 32) | 0xFFFF_FFFF)
}

/// `attempts.id` of attempt `attempt` of step `step_no` (steps < 2^24, attempts < 2^16).
pub(crate) fn attempt_key(run_no: i64, step_no: u32, attempt: u32) -> i64 {
    (run_no << 40) | (i64::from(step_no & 0xFF_FFFF) << 16) | i64::from(attempt & 0xFFFF)
}

/// The `attempts.id` range of a run.
pub(crate) fn attempt_range(run_no: i64) -> (i64, i64) {
    (run_no << 40, (run_no << 40) | 0xFF_FFFF_FFFF)
}

/// `events.id` of event `seq` of a run (seq < 2^40).
pub(crate) fn event_key(run_no: i64, seq: u64) -> i64 {
    (run_no << 40) | (seq as i64 & 0xFF_FFFF_FFFF)
}

/// The `events.id` range of a run.
pub(crate) fn event_range(run_no: i64) -> (i64, i64) {
    (event_key(run_no, 0), event_key(run_no, u64::MAX))
}

/// Maps a SQLite error on `path` to a [`StateError`]: corrupt and locked databases get their
/// own variants, so that the command line can say what to do.
pub(crate) fn map_err(path: &Path, e: rusqlite::Error) -> StateError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StateError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => StateError::Locked {
            path: path.to_path_buf(),
        },
        _ => StateError::Sql {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    }
}

/// Opens (creating if needed) the database at `path` and makes sure its tables exist.
pub(crate) fn open(path: &Path, create: bool) -> Result<Connection, StateError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_err(path, e))?;
    let m = |e| map_err(path, e);
    conn.busy_timeout(Duration::from_secs(5)).map_err(m)?;
    // The WAL stays small: checkpoints at SQLite's default 1000 pages (the writer thread
    // runs them, off the dispatch path), and the file is truncated back to 4 MiB after one.
    conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)
        .map_err(m)?;
    // journal_mode reads the header: a file that is not a database fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(m)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StateError::Sql {
            path: path.to_path_buf(),
            message: format!("cannot switch to WAL mode (journal mode is {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(m)?;
    conn.pragma_update(None, "foreign_keys", "OFF").map_err(m)?;
    // Closing the last connection would checkpoint the WAL (with fsyncs) on the way out of
    // every `hive` command; the auto-checkpoint during writes keeps the WAL bounded anyway.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(m)?;
    // A database this version has set up says so in its header (`user_version`): nothing
    // to create or check (compiling the schema's statements was a third of every open).
    let ready: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(m)?;
    if ready == SCHEMA_VERSION {
        return Ok(conn);
    }
    conn.execute_batch(SCHEMA).map_err(m)?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })
        .map_err(m)?;
    match version.as_deref().map(str::parse::<i64>) {
        None => {
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )
            .map_err(m)?;
        }
        Some(Ok(v)) if v == SCHEMA_VERSION => {}
        Some(other) => {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                message: format!(
                    "state schema version {other:?} is not {SCHEMA_VERSION} (written by another Hive version)"
                ),
            })
        }
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(m)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_up_database_opens_without_its_schema_and_another_version_is_refused() {
        let dir = std::env::temp_dir().join(format!("hive-db-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("state.db");
        let conn = open(&path, true).expect("create");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version");
        assert_eq!(v, SCHEMA_VERSION, "set up once, marked in the header");
        drop(conn);
        assert!(open(&path, true).is_ok(), "the marked database opens");
        // A database of another version (its header unmarked for this one) is refused.
        let conn = Connection::open(&path).expect("raw");
        conn.execute_batch(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'; PRAGMA user_version = 0;",
        )
        .expect("downgrade");
        drop(conn);
        match open(&path, true) {
            Err(StateError::Corrupt { message, .. }) => {
                assert!(message.contains("another Hive version"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
