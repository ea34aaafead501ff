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
}
