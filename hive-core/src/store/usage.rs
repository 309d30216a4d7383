//! What each mailbox holds unacknowledged (messages, body bytes), for the
//! `max_unacked` and `max_unacked_bytes` quotas (`hive::quota`). It is
//! derived data, so it lives in the writer thread's memory, not in a
//! table: counted from `messages` when the writer starts, then changed by
//! `Tx::insert_message` and `Tx::ack` through a job's own delta, which is
//! added to the batch's when the job's savepoint is kept and to the counts
//! only when the batch commits. A check therefore sees exactly what is
//! committed plus what this batch and this job wrote, and costs a hash
//! lookup instead of a statement (callgrind: the table version cost ~14k
//! instructions a message, docs/perf.md).
//!
//! This module must never be read or written outside the writer thread.

use std::collections::HashMap;

use rusqlite::Connection;

/// `(messages, bytes)` changes per mailbox (its `Principal` as text).
#[derive(Debug, Default)]
pub(super) struct Delta(HashMap<String, (i64, i64)>);

impl Delta {
    pub(super) fn add(&mut self, mailbox: String, messages: i64, bytes: i64) {
        let e = self.0.entry(mailbox).or_default();
        e.0 += messages;
        e.1 += bytes;
    }

    pub(super) fn append(&mut self, other: Delta) {
        for (mailbox, (n, b)) in other.0 {
            self.add(mailbox, n, b);
        }
    }

    fn get(&self, mailbox: &str) -> (i64, i64) {
        self.0.get(mailbox).copied().unwrap_or((0, 0))
    }
}

/// The committed counts.
#[derive(Debug, Default)]
pub(super) struct MailboxUsage(HashMap<String, (u64, u64)>);

impl MailboxUsage {
    /// Counts every unacknowledged message in `conn`'s `messages`.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut stmt = conn.prepare(
            "SELECT recipient, COUNT(*), COALESCE(SUM(octet_length(body)), 0) FROM messages
             WHERE acked_at IS NULL GROUP BY recipient",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut usage = HashMap::new();
        for row in rows {
            let (mailbox, n, bytes) = row?;
            usage.insert(mailbox, (n.max(0) as u64, bytes.max(0) as u64));
        }
        Ok(Self(usage))
    }

    /// What `mailbox` holds once `pending` (the batch's and the job's
    /// uncommitted deltas) is counted too.
    pub(super) fn with(&self, mailbox: &str, pending: &[&Delta]) -> (u64, u64) {
        let (mut n, mut bytes) = self
            .0
            .get(mailbox)
            .map_or((0, 0), |&(n, b)| (n as i64, b as i64));
        for d in pending {
            let (dn, db) = d.get(mailbox);
            n += dn;
            bytes += db;
        }
        (n.max(0) as u64, bytes.max(0) as u64)
    }

    /// A committed batch's delta.
    pub(super) fn apply(&mut self, delta: Delta) {
        for (mailbox, (dn, db)) in delta.0 {
            let (n, b) = self.0.get(&mailbox).copied().unwrap_or((0, 0));
            let now = ((n as i64 + dn).max(0) as u64, (b as i64 + db).max(0) as u64);
            // Only mailboxes with a backlog are kept.
            if now == (0, 0) {
                self.0.remove(&mailbox);
            } else {
                self.0.insert(mailbox, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_committed_plus_what_is_pending_and_never_negative() {
        let mut usage = MailboxUsage::default();
        let mut batch = Delta::default();
        batch.add("agent:bob".into(), 2, 30);
        let mut job = Delta::default();
        job.add("agent:bob".into(), 1, 5);
        assert_eq!(usage.with("agent:bob", &[&batch, &job]), (3, 35));
        assert_eq!(usage.with("agent:bob", &[]), (0, 0));
        batch.append(job);
        usage.apply(batch);
        assert_eq!(usage.with("agent:bob", &[]), (3, 35));
        let mut acks = Delta::default();
        acks.add("agent:bob".into(), -4, -100);
        usage.apply(acks);
        assert_eq!(usage.with("agent:bob", &[]), (0, 0));
        assert!(usage.0.is_empty(), "an empty mailbox is not kept");
    }
}
