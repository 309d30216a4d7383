//! Bounded journals of what agents write: the last [`JOURNAL_LINES`] lines
//! of each agent's stdout and stderr, kept in memory for `Journal` requests
//! and the agent page's journal tail, each line cut at
//! [`JOURNAL_LINE_MAX`] bytes ([`Journal`], for children whose output the
//! daemon pumps) — or a per-agent file the container writes to directly, so
//! it outlives the daemon ([`tail_file`], kept under [`JOURNAL_FILE_MAX`] by
//! [`trim_file`]).
//!
//! This module owns the bound and the line splitting; it must never grow
//! without limit, whatever an agent writes, and never decide what a line
//! means.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Lines of each agent's output kept for `Journal`.
pub const JOURNAL_LINES: usize = 2000;
/// Longest journal line kept, in bytes; the rest of a longer line is dropped.
pub const JOURNAL_LINE_MAX: usize = 4096;

/// A journal file is trimmed back to half this size once it grows past it.
pub const JOURNAL_FILE_MAX: u64 = 8 << 20;
/// Most bytes read from a journal file's end for a tail.
pub const TAIL_READ_MAX: u64 = 1 << 20;

/// The last `n` lines of the journal file at `path` (oldest first), read
/// from at most its last [`TAIL_READ_MAX`] bytes; each cut at
/// [`JOURNAL_LINE_MAX`]. A missing file is an empty journal.
pub fn tail_file(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let from = len.saturating_sub(TAIL_READ_MAX);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(TAIL_READ_MAX).read_to_end(&mut buf)?;
    // Started mid-file: the first line is a fragment.
    let body = if from > 0 {
        buf.iter()
            .position(|&b| b == b'\n')
            .map_or(&buf[..0], |i| &buf[i + 1..])
    } else {
        &buf[..]
    };
    let mut lines = VecDeque::new();
    let mut split = LineSplitter::default();
    let mut keep = |l: &[u8]| {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(String::from_utf8_lossy(l).into_owned());
    };
    split.feed(body, &mut keep);
    split.finish(&mut keep);
    Ok(lines.into())
}

/// Keeps the journal file at `path` bounded: past [`JOURNAL_FILE_MAX`], its
/// head is dropped so about half remains. Writers append with `O_APPEND`,
/// so they carry on at the new end. `FALLOC_FL_COLLAPSE_RANGE` does it in
/// place without losing a concurrent write; where the file system cannot,
/// the tail is copied to the front and the file cut — a line written in
/// that instant may be lost. Returns whether it trimmed.
pub fn trim_file(path: &Path) -> io::Result<bool> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    if len <= JOURNAL_FILE_MAX {
        return Ok(false);
    }
    let block = std::os::unix::fs::MetadataExt::blksize(&meta).max(512);
    let drop_len = (len - JOURNAL_FILE_MAX / 2) / block * block;
    // SAFETY: fallocate on a valid fd with a block-aligned range inside the
    // file; it touches no memory of ours.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_COLLAPSE_RANGE,
            0,
            drop_len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let keep = JOURNAL_FILE_MAX / 2;
    file.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    (&mut file).take(keep).read_to_end(&mut tail)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&tail)?;
    Ok(true)
}

/// The last lines a child wrote, shared between its output pumps and
/// `Journal` requests.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<VecDeque<String>>>);

impl Journal {
    pub fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == JOURNAL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
    }
}

/// Splits a byte stream into lines, cutting each at [`JOURNAL_LINE_MAX`]
/// bytes (the rest of an over-long line is dropped, not wrapped).
#[derive(Default)]
pub struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `bytes`; calls `emit` for every complete line.
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                emit(&self.line);
                self.line.clear();
            } else if self.line.len() < JOURNAL_LINE_MAX {
                self.line.push(b);
            }
        }
    }

    /// The unterminated last line, if any.
    pub fn finish(self, mut emit: impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            emit(&self.line);
        }
    }
}

/// Copies a child's output into its journal and the daemon's log, line by
/// line, until the stream ends.
pub async fn pump(mut out: impl AsyncRead + Unpin, label: String, journal: Journal) {
    let mut buf = [0u8; 8192];
    let mut split = LineSplitter::default();
    let emit = |line: &[u8]| {
        let text = String::from_utf8_lossy(line).into_owned();
        tracing::info!(target: "agent", agent = label.as_str(), "{text}");
        journal.push(text);
    };
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        split.feed(&buf[..n], emit);
    }
    split.finish(emit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_file_is_tailed_and_trimmed_while_a_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        assert!(tail_file(&path, 5).unwrap().is_empty());
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut n = 0u64;
        while std::fs::metadata(&path).unwrap().len() <= JOURNAL_FILE_MAX {
            writeln!(w, "line {n:08} {}", "y".repeat(100)).unwrap();
            n += 1;
        }
        assert!(trim_file(&path).unwrap());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= JOURNAL_FILE_MAX / 2 + 8192, "{len}");
        writeln!(w, "after the trim").unwrap();
        let tail = tail_file(&path, 2).unwrap();
        assert!(
            tail[0].starts_with(&format!("line {:08}", n - 1)),
            "{tail:?}"
        );
        assert_eq!(tail[1], "after the trim");
        assert!(!trim_file(&path).unwrap());
    }

    #[test]
    fn the_journal_keeps_only_the_last_lines_and_cuts_long_ones() {
        let j = Journal::default();
        let mut s = LineSplitter::default();
        let long = vec![b'x'; JOURNAL_LINE_MAX + 100];
        s.feed(&long, |_| {});
        s.feed(b"\n", |l| j.push(String::from_utf8_lossy(l).into_owned()));
        assert_eq!(j.tail(1)[0].len(), JOURNAL_LINE_MAX);
        for i in 0..JOURNAL_LINES + 5 {
            j.push(i.to_string());
        }
        let all = j.tail(usize::MAX);
        assert_eq!(all.len(), JOURNAL_LINES);
        assert_eq!(all.last().unwrap(), &(JOURNAL_LINES + 4).to_string());
        assert_eq!(
            j.tail(2),
            [
                (JOURNAL_LINES + 3).to_string(),
                (JOURNAL_LINES + 4).to_string()
            ]
        );
    }
}
