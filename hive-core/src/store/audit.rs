//! The audit log's hash chain. Each row's hash is SHA-256 over the previous
//! row's hash and this row's fields, each length-prefixed so no two
//! different rows hash alike. Verification recomputes the chain from the
//! first row and names the first row that does not match.
//!
//! The chain alone cannot show a missing *tail* (the newest rows deleted)
//! or a chain recomputed from some row on. So the head (sequence number and
//! hash) is also written outside the database: every [`HEAD_EVERY`] rows
//! and at clean shutdown, the writer logs it (the journal) and replaces the
//! root-only head file next to the database ([`head_path`]) after the
//! commit that produced it. `audit verify` checks the chain against the
//! newest recorded head: a head past the chain's end is a missing tail, a
//! head whose row hashes differently is a rewritten chain.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::StoreError;

/// Rows between two recorded heads.
pub const HEAD_EVERY: u64 = 1000;
/// The head file's name, beside the database in the root-only state dir.
pub const HEAD_FILE: &str = "audit.head";

/// Where the head of the chain in the database `db` is recorded.
pub fn head_path(db: &Path) -> PathBuf {
    db.with_file_name(HEAD_FILE)
}

/// A recorded head: row `seq` had hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    /// Parses the head file's one line, `<seq> <hash>`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let hash = parts.next()?;
        let hex_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        (hex_ok && parts.next().is_none()).then(|| Self {
            seq,
            hash: hash.to_owned(),
        })
    }

    /// Reads the head file; `Ok(None)` if none was recorded yet.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map(Some).ok_or_else(|| {
                format!("the recorded audit head {} does not parse", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// Logs the head and replaces the head file (mode 0600, synced,
    /// renamed into place) with it.
    pub fn record(&self, path: &Path, why: &str) -> std::io::Result<()> {
        tracing::info!(seq = self.seq, hash = %self.hash, why, "audit chain head");
        let tmp = path.with_extension("head.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{} {}", self.seq, self.hash)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// The newest row of the chain, if any.
pub fn current_head(conn: &Connection) -> Result<Option<Head>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()?)
}

/// The stored hash of row `seq`.
pub fn hash_at(conn: &Connection, seq: u64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [super::sql_int(seq)],
            |r| r.get(0),
        )
        .optional()?)
}

/// Compares the chain (`rows` long, already verified) with the newest
/// recorded head; `Some(reason)` when they disagree.
pub fn check_head(conn: &Connection, rows: u64, head: &Head) -> Result<Option<String>, StoreError> {
    if head.seq > rows {
        return Ok(Some(format!(
            "the chain ends at row {rows} but row {} (hash {}) was recorded as written: \
             rows {}..={} are missing (the log was truncated)",
            head.seq,
            head.hash,
            rows + 1,
            head.seq
        )));
    }
    match hash_at(conn, head.seq)? {
        Some(h) if h == head.hash => Ok(None),
        _ => Ok(Some(format!(
            "row {} does not have the hash recorded for it ({}): the chain was rewritten",
            head.seq, head.hash
        ))),
    }
}

/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditReport {
    /// Every row matches; `head` is the last row's hash.
    Intact { rows: u64, head: String },
    /// Row `seq` does not hash to what is stored (or its link is wrong).
    Broken { seq: u64, reason: String },
}

pub fn row_hash(prev: &str, seq: u64, at: i64, actor: &str, action: &str, detail: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        prev.as_bytes(),
        &seq.to_be_bytes(),
        &at.to_be_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        detail.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Appends one row after the current head; returns the new head.
pub fn append(
    conn: &Connection,
    at: i64,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<Head, StoreError> {
    // Both statements run with every audited write: cached, not parsed
    // again each time (callgrind: re-preparing was a quarter of the core's
    // instructions per message, docs/perf.md).
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (seq, prev) = match head {
        Some((s, h)) => (s as u64 + 1, h),
        None => (1, GENESIS.to_owned()),
    };
    let hash = row_hash(&prev, seq, at, actor, action, detail);
    conn.prepare_cached(
        "INSERT INTO audit (seq, at, actor, action, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![seq as i64, at, actor, action, detail, prev, hash])?;
    Ok(Head { seq, hash })
}

/// Recomputes the whole chain.
pub fn verify(conn: &Connection) -> Result<AuditReport, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, detail, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1u64;
    let mut count = 0u64;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let seq = seq as u64;
        let (at, actor, action, detail): (i64, String, String, String) =
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let (stored_prev, stored_hash): (String, String) = (r.get(5)?, r.get(6)?);
        if seq != expected_seq {
            return Ok(AuditReport::Broken {
                seq: expected_seq,
                reason: format!("row {expected_seq} is missing (next row is {seq})"),
            });
        }
        if stored_prev != prev {
            return Ok(AuditReport::Broken {
                seq,
                reason: format!("row {seq} does not link to row {}", seq - 1),
            });
        }
        let hash = row_hash(&prev, seq, at, &actor, &action, &detail);
        if hash != stored_hash {
            return Ok(AuditReport::Broken {
                seq,
                reason: format!("row {seq} was changed after it was written"),
            });
        }
        prev = hash;
        expected_seq += 1;
        count += 1;
    }
    Ok(AuditReport::Intact {
        rows: count,
        head: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        super::super::schema::prepare_writer(&c).unwrap();
        c
    }

    #[test]
    fn chain_holds_and_breaks() {
        let c = db();
        for i in 0..5 {
            append(&c, i, "operator:root", "send", &format!("row {i}")).unwrap();
        }
        assert!(matches!(
            verify(&c).unwrap(),
            AuditReport::Intact { rows: 5, .. }
        ));

        c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
        c.execute("UPDATE audit SET detail = 'forged' WHERE seq = 3", [])
            .unwrap();
        assert_eq!(
            verify(&c).unwrap(),
            AuditReport::Broken {
                seq: 3,
                reason: "row 3 was changed after it was written".into()
            }
        );
    }

    #[test]
    fn deleting_a_row_is_seen() {
        let c = db();
        for i in 0..3 {
            append(&c, i, "hive", "x", "y").unwrap();
        }
        c.execute_batch("DROP TRIGGER audit_no_delete").unwrap();
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(matches!(
            verify(&c).unwrap(),
            AuditReport::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn triggers_refuse_honest_mistakes() {
        let c = db();
        append(&c, 1, "hive", "x", "y").unwrap();
        assert!(c.execute("UPDATE audit SET detail = 'z'", []).is_err());
        assert!(c.execute("DELETE FROM audit", []).is_err());
    }
}
