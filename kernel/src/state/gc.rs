//! Retention: [`StateStore::gc`] removes old runs from a state directory, their rows and their
//! files together, and never a run that a process is executing.
//!
//! A state directory keeps every run until told otherwise: the database rows (run, steps,
//! attempts, events) and, under `runs/`, the run's JSONL file, lock file and scratch
//! directory. A run killed before the database's first commit exists in its JSONL file only;
//! it is a run here too. The cache table is not touched: its entries carry their own outputs
//! and do not depend on the run that made them.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{db, journal, lock::RunLock, parse_ts, valid_run_id, StateError, StateStore};
use crate::ids::Timestamp;

/// Which runs [`StateStore::gc`] removes. Nothing is selected until
/// [`older_than`](GcOptions::older_than) or [`keep`](GcOptions::keep) is set; with both, a run
/// is removed when it is old enough and not among the newest.
///
/// ```
/// # use std::time::Duration;
/// let mut opts = hive_kernel::GcOptions::new();
/// opts.older_than(Duration::from_secs(30 * 86_400)).keep(100);
/// ```
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    older_than: Option<Duration>,
    keep: Option<usize>,
    dry_run: bool,
    vacuum: bool,
}

impl GcOptions {
    /// Selects nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs that ended (or, if they never ended, were created) longer ago than `age`.
    pub fn older_than(&mut self, age: Duration) -> &mut Self {
        self.older_than = Some(age);
        self
    }

    /// Never the `n` most recently created runs (alone: every run but those).
    pub fn keep(&mut self, n: usize) -> &mut Self {
        self.keep = Some(n);
        self
    }

    /// Report what would be removed, and remove nothing.
    pub fn dry_run(&mut self, yes: bool) -> &mut Self {
        self.dry_run = yes;
        self
    }

    /// Afterwards, rewrite the database file so that it shrinks (SQLite's `VACUUM`, which
    /// needs as much free disk as the remaining database and waits for other writers).
    /// Without it the freed pages are reused by later runs but the file keeps its size.
    pub fn vacuum(&mut self, yes: bool) -> &mut Self {
        self.vacuum = yes;
        self
    }
}

/// A run that [`StateStore::gc`] removed (or would remove).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct GcRun {
    /// The run id.
    pub run_id: String,
    /// `plan_id` of its plan (empty when only stray files were left of it).
    pub plan_id: String,
    /// Its state: a run state, `interrupted` (no process executes it), or `leftover` (files
    /// only, without a readable header).
    pub state: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
}

/// What [`StateStore::gc`] did.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Nothing was removed: `removed` is what would have been.
    pub dry_run: bool,
    /// The runs removed, oldest first.
    pub removed: Vec<GcRun>,
    /// How many runs are left.
    pub kept: usize,
    /// Selected runs that a process is executing now: left alone.
    pub busy: Vec<String>,
    /// Bytes of the removed runs' files (JSONL, lock, scratch directory).
    pub file_bytes: u64,
    /// The database's size (with its WAL) before.
    pub db_bytes_before: u64,
    /// The database's size (with its WAL) after.
    pub db_bytes_after: u64,
    /// The database file was rewritten (`VACUUM`).
    pub vacuumed: bool,
    /// Why `VACUUM` failed (the runs are removed all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vacuum_error: Option<String>,
}

impl GcRun {
    /// When its age counts from: its end, else its creation.
    fn age_from(&self) -> Timestamp {
        self.finished_at.unwrap_or(self.created_at)
    }

    /// As reported: `gc` reports only runs that no process executes, so a `pending` or
    /// `running` one (its process gone since the listing, perhaps) is `interrupted`.
    fn shown(&self) -> GcRun {
        let mut run = self.clone();
        if matches!(run.state.as_str(), "running" | "pending") {
            run.state = "interrupted".into();
        }
        run
    }
}

/// Runs deleted per database transaction.
const CHUNK: usize = 256;

impl StateStore {
    /// Removes the runs `opts` selects: their database rows in one transaction per few
    /// hundred runs, then their files. A run whose lock is held (being executed, resumed,
    /// or created right now) is skipped and listed in [`GcReport::busy`]; the locks of the
    /// others are held until their files are gone, so no `hive resume` can start one
    /// half-removed.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, StateError> {
        let mut report = GcReport {
            dry_run: opts.dry_run,
            db_bytes_before: self.db_bytes(),
            ..GcReport::default()
        };
        let all = self.found_runs()?;
        let now = Timestamp::now();
        let selected = select(&all, opts, now);
        let runs_dir = self.dir.join("runs");
        if opts.dry_run {
            for &i in &selected {
                if RunLock::held(&runs_dir, &all[i].run_id) {
                    report.busy.push(all[i].run_id.clone());
                } else {
                    report.removed.push(all[i].shown());
                }
            }
            report.kept = all.len() - report.removed.len();
            report.db_bytes_after = report.db_bytes_before;
            return Ok(report);
        }
        let cutoff = opts.older_than.map(|d| cutoff(now, d));
        // A chunk at a time: its locks (a descriptor each) are held until its files are gone.
        for chunk in selected.chunks(CHUNK) {
            let mut locked: Vec<(usize, RunLock)> = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let id = &all[i].run_id;
                match RunLock::acquire(&runs_dir, id) {
                    Ok(l) => locked.push((i, l)),
                    Err(StateError::RunBusy { .. }) => report.busy.push(id.clone()),
                    Err(e) => return Err(e),
                }
            }
            let gone = self.delete_rows(&all, &locked, cutoff)?;
            for (&(i, _), gone) in locked.iter().zip(gone) {
                if gone {
                    report.file_bytes += remove_files(&runs_dir, &all[i].run_id)?;
                    report.removed.push(all[i].shown());
                }
            }
        }
        report.kept = all.len() - report.removed.len();
        let conn = self.conn.lock();
        if opts.vacuum {
            match conn.execute_batch("VACUUM") {
                Ok(()) => report.vacuumed = true,
                Err(e) => report.vacuum_error = Some(self.m()(e).to_string()),
            }
        }
        // The deletions went through the WAL: fold it into the database and empty it, so
        // that the size reported is the database's. Best effort: a `hive` committing now
        // keeps the WAL in use, which is fine.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        drop(conn);
        report.db_bytes_after = self.db_bytes();
        Ok(report)
    }

    /// The size of the database and its WAL.
    fn db_bytes(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.db.clone().into_os_string();
        wal.push("-wal");
        len(&self.db) + len(Path::new(&wal))
    }

    /// Every run: the database's, then those with files only, oldest first.
    fn found_runs(&self) -> Result<Vec<GcRun>, StateError> {
        let mut all: Vec<GcRun> = self
            .runs()?
            .into_iter()
            .map(|r| GcRun {
                state: r.shown_state().to_string(),
                plan_id: r.plan_id,
                created_at: r.created_at,
                finished_at: r.finished_at,
                run_id: r.run_id,
            })
            .collect();
        let known: HashSet<String> = all.iter().map(|r| r.run_id.clone()).collect();
        let runs_dir = self.dir.join("runs");
        let entries = match std::fs::read_dir(&runs_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sorted(all)),
            Err(source) => {
                return Err(StateError::Io {
                    path: runs_dir,
                    source,
                })
            }
        };
        let mut strays: HashSet<String> = HashSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| StateError::Io {
                path: runs_dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let id = name
                .strip_suffix(".jsonl")
                .or_else(|| name.strip_suffix(".lock"))
                .unwrap_or(name);
            if valid_run_id(id) && created_from_id(id).is_some() && !known.contains(id) {
                strays.insert(id.to_string());
            }
        }
        for id in strays {
            let header = journal::read_header(&self.events_path(&id)).ok().flatten();
            let run = match header {
                Some((run, _)) if *run.run_id == *id => GcRun {
                    plan_id: run.plan_id,
                    state: "interrupted".into(),
                    created_at: run.created_at,
                    finished_at: None,
                    run_id: id,
                },
                _ => GcRun {
                    plan_id: String::new(),
                    state: "leftover".into(),
                    created_at: created_from_id(&id).unwrap_or_default(),
                    finished_at: None,
                    run_id: id,
                },
            };
            all.push(run);
        }
        Ok(sorted(all))
    }

    /// Deletes the rows of the locked runs `chunk` in one transaction; for each, whether it
    /// is to go (false: it became young again).
    fn delete_rows(
        &self,
        all: &[GcRun],
        chunk: &[(usize, RunLock)],
        cutoff: Option<Timestamp>,
    ) -> Result<Vec<bool>, StateError> {
        let mut conn = self.conn.lock();
        let m = self.m();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&m)?;
        let mut gone = Vec::with_capacity(chunk.len());
        for &(i, _) in chunk {
            // Looked up again under the lock: a run resumed since the listing may be young
            // again, and a run of the files only may have been taken into the database.
            let now: Option<(i64, Option<String>, Option<String>)> = tx
                .query_row(
                    "SELECT run_no, created_at, finished_at FROM runs WHERE run_id = ?1",
                    [&all[i].run_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(&m)?;
            let Some((run_no, created, finished)) = now else {
                // Files only (or its rows went meanwhile): the files go.
                gone.push(true);
                continue;
            };
            let from = parse_ts(finished).or(parse_ts(created)).unwrap_or_default();
            if cutoff.is_some_and(|c| from >= c) {
                gone.push(false);
                continue;
            }
            let (elo, ehi) = db::event_range(run_no);
            let (alo, ahi) = db::attempt_range(run_no);
            let (slo, shi) = db::step_range(run_no);
            tx.execute(
                "DELETE FROM events WHERE id BETWEEN ?1 AND ?2",
                params![elo, ehi],
            )
            .map_err(&m)?;
            tx.execute(
                "DELETE FROM attempts WHERE id BETWEEN ?1 AND ?2",
                params![alo, ahi],
            )
            .map_err(&m)?;
            tx.execute(
                "DELETE FROM steps WHERE id BETWEEN ?1 AND ?2",
                params![slo, shi],
            )
            .map_err(&m)?;
            tx.execute("DELETE FROM runs WHERE run_no = ?1", [run_no])
                .map_err(&m)?;
            gone.push(true);
        }
        tx.commit().map_err(&m)?;
        Ok(gone)
    }
}

fn sorted(mut all: Vec<GcRun>) -> Vec<GcRun> {
    all.sort_by(|a, b| (a.created_at, &a.run_id).cmp(&(b.created_at, &b.run_id)));
    all
}

fn cutoff(now: Timestamp, age: Duration) -> Timestamp {
    Timestamp(
        now.0
            .saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX)),
    )
}

/// The indices (into `all`, oldest first) of the runs `opts` selects.
fn select(all: &[GcRun], opts: &GcOptions, now: Timestamp) -> Vec<usize> {
    if opts.older_than.is_none() && opts.keep.is_none() {
        return Vec::new();
    }
    let end = all.len() - opts.keep.unwrap_or(0).min(all.len());
    let cutoff = opts.older_than.map(|d| cutoff(now, d));
    (0..end)
        .filter(|&i| cutoff.is_none_or(|c| all[i].age_from() < c))
        .collect()
}

/// The creation time written in a run id (`YYYYMMDD-HHMMSS-mmm-...`).
fn created_from_id(id: &str) -> Option<Timestamp> {
    let b = id.as_bytes();
    if b.len() < 19 || b[8] != b'-' || b[15] != b'-' || b[19..].first().is_some_and(|&c| c != b'-')
    {
        return None;
    }
    let digits =
        |r: std::ops::Range<usize>| id.get(r).filter(|s| s.bytes().all(|c| c.is_ascii_digit()));
    let s = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        digits(0..4)?,
        digits(4..6)?,
        digits(6..8)?,
        digits(9..11)?,
        digits(11..13)?,
        digits(13..15)?,
        digits(16..19)?
    );
    humantime::parse_rfc3339(&s).ok().map(Timestamp::from)
}

/// Removes a run's files (its JSONL file, scratch directory, then lock file); the bytes they
/// held. A file already gone is fine.
fn remove_files(runs_dir: &Path, id: &str) -> Result<u64, StateError> {
    let gone = |path: &Path, r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    };
    let scratch = runs_dir.join(id);
    let mut bytes = tree_bytes(&scratch);
    gone(&scratch, std::fs::remove_dir_all(&scratch))?;
    for ext in ["jsonl", "lock"] {
        let p = runs_dir.join(format!("{id}.{ext}"));
        bytes += tree_bytes(&p);
        gone(&p, std::fs::remove_file(&p))?;
    }
    Ok(bytes)
}

/// The bytes of the files under `p` (0 if it does not exist).
fn tree_bytes(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str, created: u64, finished: Option<u64>) -> GcRun {
        GcRun {
            run_id: id.into(),
            plan_id: "p".into(),
            state: "succeeded".into(),
            created_at: Timestamp(created),
            finished_at: finished.map(Timestamp),
        }
    }

    #[test]
    fn selection_by_age_and_by_count() {
        const S: u64 = 1_000_000;
        let now = Timestamp(1_000 * S);
        // Created at 100, 200, 300, 400 s; the second never ended; the first ended late.
        let all = vec![
            found("a", 100 * S, Some(950 * S)),
            found("b", 200 * S, None),
            found("c", 300 * S, Some(310 * S)),
            found("d", 400 * S, Some(410 * S)),
        ];
        let pick = |o: &GcOptions| select(&all, o, now);
        assert!(pick(&GcOptions::new()).is_empty(), "nothing unless asked");
        let age = |s: u64| Duration::from_secs(s);
        // Older than 500 s: ended before 500 s, or never ended and created before.
        assert_eq!(pick(GcOptions::new().older_than(age(500))), [1, 2, 3]);
        assert_eq!(pick(GcOptions::new().older_than(age(10_000))), [0usize; 0]);
        assert_eq!(pick(GcOptions::new().keep(1)), [0, 1, 2]);
        assert_eq!(pick(GcOptions::new().keep(0)), [0, 1, 2, 3]);
        assert_eq!(pick(GcOptions::new().keep(9)), [0usize; 0]);
        assert_eq!(pick(GcOptions::new().older_than(age(500)).keep(2)), [1]);
    }

    /// Runs that exist as files only (killed before the database's first commit, or stray
    /// leftovers named like a run) are runs to `gc` too; other files in `runs/` are not, and
    /// a run whose lock is held is left alone.
    #[test]
    fn file_only_runs_and_leftovers_are_removed_other_files_are_not() {
        use crate::state::new_run_id;
        use crate::state::tests::header_only_run;
        let dir = std::env::temp_dir().join(format!("hive-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::open(&dir).expect("store");
        let runs = dir.join("runs");
        // Killed before its first commit: a JSONL file with a header, a lock, a scratch dir.
        let (id, mut j) = header_only_run(&store, &["a"]);
        j.flush().expect("flush");
        drop(j);
        drop(store.lock_run(&id).expect("lock"));
        std::fs::create_dir_all(store.run_dir(&id).join("sub")).expect("scratch");
        std::fs::write(store.run_dir(&id).join("sub").join("f"), b"12345").expect("file");
        // A leftover scratch directory, and a run being created right now (lock held).
        let stray = "20260101-000000-000-abcdef";
        std::fs::create_dir_all(runs.join(stray)).expect("stray");
        let live = new_run_id();
        let live_lock = store.lock_run(&live).expect("live lock");
        std::fs::write(runs.join("notes.txt"), b"mine").expect("notes");

        let dry = store
            .gc(GcOptions::new().keep(0).dry_run(true))
            .expect("dry run");
        let mut ids: Vec<&str> = dry.removed.iter().map(|r| r.run_id.as_str()).collect();
        ids.sort_unstable();
        let mut want = vec![id.as_str(), stray];
        want.sort_unstable();
        assert_eq!(ids, want);
        assert_eq!(dry.busy, std::slice::from_ref(&live));
        assert!(store.events_path(&id).exists(), "a dry run removes nothing");

        let r = store.gc(GcOptions::new().keep(0)).expect("gc");
        assert_eq!(r.removed.len(), 2);
        assert_eq!(r.busy, std::slice::from_ref(&live));
        assert_eq!(r.kept, 1);
        let by_id = |x: &str| r.removed.iter().find(|g| g.run_id == x).expect("removed");
        assert_eq!(
            (by_id(&id).state.as_str(), by_id(&id).plan_id.as_str()),
            ("interrupted", "p")
        );
        assert_eq!(by_id(stray).state, "leftover");
        assert!(r.file_bytes >= 5, "{}", r.file_bytes);
        assert!(!store.events_path(&id).exists());
        assert!(!store.run_dir(&id).exists());
        assert!(!runs.join(format!("{id}.lock")).exists());
        assert!(!runs.join(stray).exists());
        assert!(runs.join("notes.txt").exists(), "not a run's file");
        assert!(
            runs.join(format!("{live}.lock")).exists(),
            "a held lock stays"
        );
        assert!(matches!(store.run(&id), Err(StateError::NoSuchRun(_))));
        drop(live_lock);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A reader that asks for a run while `gc` holds its lock waits, then finds nothing, and
    /// leaves no lock file behind.
    #[test]
    fn a_reader_waiting_on_a_run_being_removed_finds_nothing() {
        use crate::state::tests::header_only_run;
        let dir = std::env::temp_dir().join(format!("hive-gc-read-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = StateStore::open(&dir).expect("store");
        let (id, mut j) = header_only_run(&store, &["a"]);
        j.flush().expect("flush");
        drop(j);
        let lock = store.lock_run(&id).expect("lock, as gc takes it");
        std::thread::scope(|s| {
            let reader = s.spawn(|| store.run(&id));
            // The reader waits for the lock; meanwhile the run's files go, as in gc.
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!reader.is_finished(), "the reader waits for the lock");
            remove_files(&dir.join("runs"), &id).expect("remove");
            drop(lock);
            let r = reader.join().expect("reader");
            assert!(matches!(r, Err(StateError::NoSuchRun(_))), "{r:?}");
        });
        assert!(!dir.join("runs").join(format!("{id}.lock")).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn run_ids_carry_their_creation_time() {
        let t = created_from_id("20261122-063231-036-138cc1").expect("an id");
        assert_eq!(t.to_string(), "2026-11-22T06:32:31.036000Z");
        for bad in [
            "20261122",
            "2026112x-063231-036-1",
            "20261122_063231_036_1",
            "x",
        ] {
            assert!(created_from_id(bad).is_none(), "{bad}");
        }
    }
}
