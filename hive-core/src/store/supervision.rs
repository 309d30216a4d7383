//! The supervisor's rows: an agent's crashes (`supervision_exits`). One
//! write records a crash, its event and the notice to every manager agent
//! together, so a manager is told exactly when the crash is on record. This
//! module decides nothing about restarts; it stores what the supervisor
//! decided.

use hive_proto::agent::MAX_BODY;
use hive_proto::event::Event;
use hive_proto::view::ItemKind;
use hive_proto::{AgentName, Principal};
use rusqlite::params;

use super::read::Reader;
use super::tx::{NewMessage, Tx};
use super::StoreError;

/// Crashes kept per agent; older ones are deleted as new ones arrive.
pub const EXITS_KEPT: i64 = 100;

/// One crash as the supervisor saw it.
#[derive(Clone, Debug)]
pub struct CrashRecord {
    pub agent: AgentName,
    /// A sentence: `exited with status 3`, `killed by signal 9 (SIGKILL)`.
    pub reason: String,
    /// The container's last journal lines, oldest first.
    pub journal_tail: Vec<String>,
    /// When it is started again; `None`: it stays down.
    pub restart_in_ms: Option<u64>,
    /// What the notice to managers says about the restart.
    pub restart_note: String,
    /// Agents flagged `manager` (other than the crashed one) to tell.
    pub managers: Vec<AgentName>,
}

/// A stored crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashRow {
    pub id: u64,
    pub agent: AgentName,
    pub at: i64,
    pub reason: String,
    pub journal_tail: Vec<String>,
    pub restart_in_ms: Option<u64>,
}

impl Tx<'_> {
    /// Records a crash, raises [`Event::AgentCrashed`] and sends each
    /// manager an [`ItemKind::AgentCrashed`] notice.
    pub fn record_crash(&mut self, c: &CrashRecord) -> Result<u64, StoreError> {
        let tail = serde_json::to_string(&c.journal_tail)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let restart = c.restart_in_ms.map(|ms| ms.min(i64::MAX as u64) as i64);
        let now = self.now();
        self.conn().execute(
            "INSERT INTO supervision_exits (agent, at, reason, journal_tail, restart_in_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![c.agent.as_str(), now, c.reason, tail, restart],
        )?;
        let id = self.conn().last_insert_rowid() as u64;
        self.conn().execute(
            "DELETE FROM supervision_exits WHERE agent = ?1
               AND id NOT IN (SELECT id FROM supervision_exits WHERE agent = ?1
                              ORDER BY id DESC LIMIT ?2)",
            params![c.agent.as_str(), EXITS_KEPT],
        )?;
        self.event(Event::AgentCrashed {
            agent: c.agent.clone(),
            reason: c.reason.clone(),
            restart_in_ms: c.restart_in_ms,
        })?;
        let body = notice(c);
        for manager in &c.managers {
            self.insert_message(NewMessage {
                kind: ItemKind::AgentCrashed,
                from: Principal::Hive,
                to: Principal::Agent(manager.clone()),
                body: body.clone(),
                in_reply_to: None,
                question_id: None,
                options: Vec::new(),
                multi: false,
            })?;
        }
        self.audit(
            "hive",
            "crash",
            &format!("agent={} reason={}", c.agent, c.reason),
        )?;
        Ok(id)
    }
}

impl Reader<'_> {
    /// `agent`'s newest crashes first, at most `limit`.
    pub fn crashes(&self, agent: &AgentName, limit: u32) -> Result<Vec<CrashRow>, StoreError> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT id, at, reason, journal_tail, restart_in_ms FROM supervision_exits
             WHERE agent = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![agent.as_str(), limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        rows.map(|r| {
            let (id, at, reason, tail, restart) = r?;
            let journal_tail = serde_json::from_str(&tail).map_err(|e| StoreError::Corrupt {
                table: "supervision_exits",
                id,
                what: e.to_string(),
            })?;
            Ok(CrashRow {
                id: id as u64,
                agent: agent.clone(),
                at,
                reason,
                journal_tail,
                restart_in_ms: restart.map(|ms| ms.max(0) as u64),
            })
        })
        .collect()
    }
}

/// The manager's notice: who, why, what happens next, and the journal tail
/// as far as it fits in one message body.
fn notice(c: &CrashRecord) -> String {
    let mut body = format!(
        "agent {} crashed: {}; {}",
        c.agent, c.reason, c.restart_note
    );
    if !c.journal_tail.is_empty() {
        body.push_str("\nlast lines:");
        // Newest lines matter most: keep as many of the last ones as fit.
        let mut lines: Vec<&str> = Vec::new();
        let mut len = body.len();
        for line in c.journal_tail.iter().rev() {
            if len + 1 + line.len() > MAX_BODY {
                break;
            }
            len += 1 + line.len();
            lines.push(line);
        }
        for line in lines.iter().rev() {
            body.push('\n');
            body.push_str(line);
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_keeps_the_newest_lines_that_fit_one_body() {
        let c = CrashRecord {
            agent: AgentName::new("bob").unwrap(),
            reason: "exited with status 3".into(),
            journal_tail: (0..40)
                .map(|i| format!("{i:04}{}", "x".repeat(4000)))
                .collect(),
            restart_in_ms: Some(1000),
            restart_note: "restarting in 1000 ms".into(),
            managers: vec![],
        };
        let body = notice(&c);
        assert!(body.len() <= MAX_BODY);
        assert!(body.starts_with("agent bob crashed: exited with status 3; restarting in 1000 ms"));
        assert!(body.ends_with(&c.journal_tail[39]), "newest line kept");
        assert!(!body.contains("0000x"), "oldest line dropped");
    }
}
