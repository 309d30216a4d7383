//! Bounded journals of what agents write: the last [`JOURNAL_LINES`] lines
//! of each agent's stdout and stderr, kept in memory for `Journal` requests
//! and the agent page's journal tail, each line cut at
//! [`JOURNAL_LINE_MAX`] bytes.
//!
//! This module owns the bound and the line splitting; it must never grow
//! without limit, whatever an agent writes, and never decide what a line
//! means.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Lines of each agent's output kept for `Journal`.
pub const JOURNAL_LINES: usize = 2000;
/// Longest journal line kept, in bytes; the rest of a longer line is dropped.
pub const JOURNAL_LINE_MAX: usize = 4096;

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
