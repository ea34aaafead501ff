//! The run's JSON Lines event file, written by the executor itself: one `write(2)` per turn
//! of its loop, before the attempts started in that turn are submitted. A write is in the
//! kernel's page cache when it returns, so it survives the `hive` process being killed; the
//! file is therefore the write-ahead log of attempt starts, and the database (written in
//! batches by the writer thread) catches up from it after a crash (see
//! [`super::StateStore::recover`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{RunRow, StepRow};

/// The executor's end of a run's JSONL file.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
}

impl Journal {
    /// Opens `path` for appending (a torn last line, from a crash mid-write, is cut first).
    pub(crate) fn open(path: &Path) -> std::io::Result<Journal> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            file.seek(SeekFrom::Start(len - 1))?;
            let mut last = [0u8; 1];
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                let keep = last_newline(&mut file, len)?;
                file.set_len(keep)?;
            }
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Queues one line (written by the next [`Journal::flush`]).
    pub(crate) fn push(&mut self, line: &str) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    /// Writes the queued lines (one `write(2)` for all of them, usually).
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The `type` of a run file's first line: the run's row and its steps, written before the
/// run starts, so that a run whose `hive` was killed before the database's first commit can
/// still be resumed (see `StateStore::run`). It has `seq` 0: it is not an event.
pub(crate) const HEADER_TYPE: &str = "run_created";

/// The header line of a new run (serialized straight from the rows: a plan of 100,000 steps
/// makes a header of a few MB, and a `Value` tree of it cost more than the run's creation).
pub(crate) fn header_line(run: &RunRow, steps: &[StepRow]) -> String {
    #[derive(serde::Serialize)]
    struct Header<'a> {
        seq: u64,
        at: String,
        run: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        plan_id: &'a str,
        plan_version: &'a str,
        plan_path: &'a str,
        plan_hash: &'a str,
        vars: &'a str,
        options: &'a str,
        metadata: Option<&'a str>,
        steps: Vec<(u32, i64, &'a str, &'a str)>,
    }
    let h = Header {
        seq: 0,
        at: super::ts(run.created_at),
        run: &run.run_id,
        kind: HEADER_TYPE,
        plan_id: &run.plan_id,
        plan_version: &run.plan_version,
        plan_path: &run.plan_path,
        plan_hash: &run.plan_hash,
        vars: &run.vars,
        options: &run.options,
        metadata: run.metadata.as_deref(),
        steps: steps
            .iter()
            .map(|s| (s.no, s.ord, &*s.step_id, &*s.name))
            .collect(),
    };
    serde_json::to_string(&h).unwrap_or_default()
}

/// The run and steps of `path`'s header line; `None` when the file is missing or does not
/// start with a complete, well-formed header.
pub(crate) fn read_header(path: &Path) -> std::io::Result<Option<(RunRow, Vec<StepRow>)>> {
    use std::io::BufRead;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Ok(None);
    }
    let Ok(v) = serde_json::from_str::<Value>(&line) else {
        return Ok(None);
    };
    Ok(parse_header(&v))
}

fn parse_header(v: &Value) -> Option<(RunRow, Vec<StepRow>)> {
    if v.get("type")?.as_str()? != HEADER_TYPE {
        return None;
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let created_at = humantime::parse_rfc3339(v.get("at")?.as_str()?).ok()?;
    let run = RunRow {
        run_id: std::sync::Arc::from(v.get("run")?.as_str()?),
        plan_id: text("plan_id")?,
        plan_version: text("plan_version")?,
        plan_path: text("plan_path")?,
        plan_hash: text("plan_hash")?,
        vars: text("vars")?,
        options: text("options")?,
        created_at: created_at.into(),
        metadata: text("metadata"),
    };
    let mut steps = Vec::new();
    for s in v.get("steps")?.as_array()? {
        let a = s.as_array()?;
        steps.push(StepRow {
            no: u32::try_from(a.first()?.as_u64()?).ok()?,
            ord: a.get(1)?.as_i64()?,
            step_id: std::sync::Arc::from(a.get(2)?.as_str()?),
            parent: None,
            item: None,
            name: std::sync::Arc::from(a.get(3)?.as_str()?),
        });
    }
    Some((run, steps))
}

/// The length of `file` up to and including its last newline.
fn last_newline(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The complete lines of `path` whose `seq` is above `after`, in order, parsed (reading
/// backwards from the end until a line at or below `after`).
pub(crate) fn tail_after(path: &Path, after: u64) -> std::io::Result<Vec<(u64, String, Value)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let end = last_newline(&mut file, len)?;
    // Read backwards in growing chunks until the first line read is at or below `after`.
    let mut start = end;
    let mut step = 64 * 1024u64;
    loop {
        start = start.saturating_sub(step);
        step = step.saturating_mul(2);
        file.seek(SeekFrom::Start(start))?;
        let mut text = vec![0u8; (end - start) as usize];
        file.read_exact(&mut text)?;
        // Skip a partial first line unless we are at the start of the file.
        let body = if start == 0 {
            &text[..]
        } else {
            match text.iter().position(|b| *b == b'\n') {
                Some(i) => &text[i + 1..],
                None => &[][..],
            }
        };
        let mut out = Vec::new();
        let mut reached = start == 0;
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let Some(seq) = v.get("seq").and_then(Value::as_u64) else {
                continue;
            };
            if seq <= after {
                reached = true;
                continue;
            }
            out.push((seq, String::from_utf8_lossy(line).into_owned(), v));
        }
        if reached {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_are_cut_and_tails_found() {
        let dir = std::env::temp_dir().join(format!("hive-journal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("r.jsonl");
        std::fs::write(
            &p,
            "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n{\"seq\":4,\"x\":",
        )
        .expect("write");
        let tail = tail_after(&p, 2).expect("tail");
        assert_eq!(tail.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3]);
        let mut j = Journal::open(&p).expect("open");
        j.push("{\"seq\":4}");
        j.flush().expect("flush");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n{\"seq\":4}\n");
        assert_eq!(tail_after(&p, 0).expect("all").len(), 4);
        assert!(tail_after(&dir.join("none"), 0)
            .expect("missing")
            .is_empty());
        // Long files: the backwards reader crosses chunk boundaries.
        let mut big = String::new();
        for i in 1..=20_000 {
            big.push_str(&format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "x".repeat(20)));
        }
        std::fs::write(&p, big).expect("write");
        let t = tail_after(&p, 19_990).expect("tail");
        assert_eq!(t.first().map(|x| x.0), Some(19_991));
        assert_eq!(t.len(), 10);
        assert_eq!(tail_after(&p, 100).expect("tail").len(), 19_900);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_header_line_carries_the_run_and_its_steps() {
        let dir = std::env::temp_dir().join(format!("hive-journal-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("r.jsonl");
        let run = RunRow {
            run_id: "r1".into(),
            plan_id: "p".into(),
            plan_version: "1".into(),
            plan_path: "/x/p.json".into(),
            plan_hash: "abc".into(),
            vars: r#"{"A":"b"}"#.into(),
            options: "{}".into(),
            created_at: crate::ids::Timestamp::now(),
            metadata: Some(r#"{"k":1}"#.into()),
        };
        let steps: Vec<StepRow> = (0..3)
            .map(|i| StepRow {
                no: i,
                step_id: format!("s{i}").into(),
                ord: i64::from(i),
                parent: None,
                item: None,
                name: format!("Step {i}").into(),
            })
            .collect();
        let mut j = Journal::open(&p).expect("open");
        j.push(&header_line(&run, &steps));
        j.push("{\"seq\":1,\"type\":\"run_started\"}");
        j.flush().expect("flush");
        let (r, s) = read_header(&p).expect("read").expect("a header");
        assert_eq!(
            (&*r.run_id, r.plan_path.as_str(), r.vars.as_str()),
            ("r1", "/x/p.json", r#"{"A":"b"}"#)
        );
        assert_eq!(r.metadata.as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(
            super::super::ts(r.created_at),
            super::super::ts(run.created_at)
        );
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[2].no, s[2].ord, &*s[2].step_id, &*s[2].name),
            (2, 2, "s2", "Step 2")
        );
        // The header is not an event: tails never include it.
        assert_eq!(tail_after(&p, 0).expect("tail").len(), 1);
        // A file without a (complete) header has none.
        std::fs::write(&p, "{\"seq\":1,\"type\":\"run_started\"}\n").expect("write");
        assert!(read_header(&p).expect("read").is_none());
        std::fs::write(&p, header_line(&run, &steps)).expect("write"); // no newline: torn
        assert!(read_header(&p).expect("read").is_none());
        assert!(read_header(&dir.join("none")).expect("missing").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
