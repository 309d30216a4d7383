//! The audit log's hash chain. Each row's hash is SHA-256 over the previous
//! row's hash and this row's fields, each length-prefixed so no two
//! different rows hash alike. Verification recomputes the chain from the
//! first row and names the first row that does not match.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::StoreError;

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

/// Appends one row after the current head.
pub fn append(
    conn: &Connection,
    at: i64,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<u64, StoreError> {
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match head {
        Some((s, h)) => (s as u64 + 1, h),
        None => (1, GENESIS.to_owned()),
    };
    let hash = row_hash(&prev, seq, at, actor, action, detail);
    conn.execute(
        "INSERT INTO audit (seq, at, actor, action, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq as i64, at, actor, action, detail, prev, hash],
    )?;
    Ok(seq)
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
