//! The container runtimes' rows: each agent's uid range
//! (`runtime_uid_ranges`, allocated once, never shared) and the record of a
//! container still running (`runtime_containers`, for adoption by the next
//! daemon). This module owns the allocation rule; it must never decide what
//! a record means (the backend encodes and checks it).

use hive_proto::view::ErrorCode;
use hive_proto::AgentName;
use rusqlite::{params, OptionalExtension};

use super::read::Reader;
use super::tx::Tx;
use super::StoreError;
use crate::config::{UidPool, UID_RANGE_SIZE};

impl Tx<'_> {
    /// `agent`'s uid base: the one it was given before, or else the lowest
    /// range of `pool` no agent holds. The same agent always gets the same
    /// base, even if the pool changed since; no two agents ever share one.
    pub fn uid_range(&mut self, agent: &AgentName, pool: UidPool) -> Result<u32, StoreError> {
        if let Some(base) = self.reader().uid_range(agent)? {
            return Ok(base);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT base FROM runtime_uid_ranges WHERE base >= ?1 AND base < ?2")?;
        let end = i64::from(pool.start) + i64::from(pool.count) * i64::from(UID_RANGE_SIZE);
        let taken: std::collections::BTreeSet<i64> = stmt
            .query_map(params![i64::from(pool.start), end], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let base = (0..pool.count)
            .map(|i| pool.base(i))
            .find(|b| !taken.contains(&i64::from(*b)))
            .ok_or_else(|| {
                StoreError::refused(
                    ErrorCode::Limit,
                    format!(
                        "the uid pool is exhausted: all {} ranges from {} are taken (raise uid_pool.count)",
                        pool.count, pool.start
                    ),
                )
            })?;
        self.conn.execute(
            "INSERT INTO runtime_uid_ranges (agent, base, count, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![agent.as_str(), i64::from(base), i64::from(UID_RANGE_SIZE), self.now()],
        )?;
        Ok(base)
    }

    /// Records (or replaces) the running container of `agent`.
    pub fn set_container_record(
        &mut self,
        agent: &AgentName,
        record: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO runtime_containers (agent, record, started_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(agent) DO UPDATE SET record = excluded.record, started_at = excluded.started_at",
            params![agent.as_str(), record, self.now()],
        )?;
        Ok(())
    }

    /// Forgets `agent`'s container: it has ended.
    pub fn clear_container_record(&mut self, agent: &AgentName) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM runtime_containers WHERE agent = ?1",
            params![agent.as_str()],
        )?;
        Ok(())
    }
}

impl Reader<'_> {
    /// `agent`'s uid base, if it was ever given one.
    pub fn uid_range(&self, agent: &AgentName) -> Result<Option<u32>, StoreError> {
        let base: Option<i64> = self
            .conn
            .query_row(
                "SELECT base FROM runtime_uid_ranges WHERE agent = ?1",
                params![agent.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        base.map(|b| {
            u32::try_from(b).map_err(|_| StoreError::Corrupt {
                table: "runtime_uid_ranges",
                id: b,
                what: "base is not a uid".into(),
            })
        })
        .transpose()
    }

    /// Every recorded running container: `(agent, record)`.
    pub fn container_records(&self) -> Result<Vec<(AgentName, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT rowid, agent, record FROM runtime_containers ORDER BY agent")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, agent, record) = row?;
            let agent = AgentName::new(&agent).map_err(|e| StoreError::Corrupt {
                table: "runtime_containers",
                id,
                what: e.to_string(),
            })?;
            out.push((agent, record));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::Hub;
    use crate::store::Store;

    #[tokio::test]
    async fn uid_ranges_are_allocated_once_never_shared_and_refused_when_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), Arc::new(Hub::new())).unwrap();
        let pool = UidPool {
            start: 131072,
            count: 2,
        };
        let (a, b, c) = (
            AgentName::new("alice").unwrap(),
            AgentName::new("bob").unwrap(),
            AgentName::new("carol").unwrap(),
        );
        let alloc = |n: &AgentName, pool: UidPool| {
            let n = n.clone();
            store.write(move |tx| tx.uid_range(&n, pool))
        };
        assert_eq!(alloc(&a, pool).await.unwrap(), 131072);
        assert_eq!(alloc(&b, pool).await.unwrap(), 196608);
        assert_eq!(alloc(&a, pool).await.unwrap(), 131072);
        let err = alloc(&c, pool).await.unwrap_err().to_string();
        assert!(err.contains("uid pool is exhausted"), "{err}");
        // A moved pool keeps old agents where they were.
        let moved = UidPool {
            start: 65536,
            count: 4,
        };
        assert_eq!(alloc(&b, moved).await.unwrap(), 196608);
        assert_eq!(alloc(&c, moved).await.unwrap(), 65536);
        let a2 = a.clone();
        store
            .write(move |tx| tx.set_container_record(&a2, "{\"x\":1}"))
            .await
            .unwrap();
        let recs = store.read(|r| r.container_records()).await.unwrap();
        assert_eq!(recs, [(a.clone(), "{\"x\":1}".to_owned())]);
        store
            .write(move |tx| tx.clear_container_record(&a))
            .await
            .unwrap();
        assert!(store
            .read(|r| r.container_records())
            .await
            .unwrap()
            .is_empty());
        store.shutdown().await;
    }
}
