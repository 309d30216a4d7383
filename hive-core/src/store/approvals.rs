//! The `approvals` table: config proposals and spawn requests, pending and
//! decided. Each decision commits with its audit row, its event and the
//! proposer's inbox notice in one transaction, so an approval is decided
//! once and the proposer hears of it exactly as durably as it happened.
//! This module must never touch the config repo (the hive does, before or
//! after these writes, in the order `hive::config_verbs` documents).

use hive_proto::event::Event;
use hive_proto::view::{Approval, ApprovalKind, ApprovalState, ItemKind};
use hive_proto::{AgentName, Principal};
use rusqlite::{params, OptionalExtension};

use super::read::Reader;
use super::tx::{NewMessage, Tx};
use super::{sql_int, StoreError};

/// An approval about to be opened.
#[derive(Clone, Debug)]
pub struct NewApproval {
    pub agent: AgentName,
    pub kind: ApprovalKind,
    pub proposer: Principal,
    pub message: String,
    pub commit: String,
    /// Who the audit log records (`agent:<name>`, `operator:<login>`).
    pub actor: String,
}

/// A stored approval; [`Approval`] without its diff (the repo has it).
pub type ApprovalRow = Approval;

const COLS: &str = "id, agent, kind, proposer, message, commit_sha, created_at, state, conflict, decided_by, decided_at, reason, merged_sha";

fn kind_str(k: ApprovalKind) -> &'static str {
    match k {
        ApprovalKind::Config => "config",
        ApprovalKind::Spawn => "spawn",
    }
}

fn state_str(s: ApprovalState) -> &'static str {
    match s {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Approval, StoreError>> {
    let id: i64 = r.get(0)?;
    let agent: String = r.get(1)?;
    let kind: String = r.get(2)?;
    let proposer: String = r.get(3)?;
    let state: String = r.get(7)?;
    let corrupt = |what: String| StoreError::Corrupt {
        table: "approvals",
        id,
        what,
    };
    let decoded = (|| {
        Ok(Approval {
            id: id as u64,
            agent: AgentName::new(&agent).map_err(|e| corrupt(e.to_string()))?,
            kind: match kind.as_str() {
                "config" => ApprovalKind::Config,
                "spawn" => ApprovalKind::Spawn,
                other => return Err(corrupt(format!("kind {other:?}"))),
            },
            proposer: Principal::parse(&proposer).map_err(|e| corrupt(e.to_string()))?,
            message: r.get(4)?,
            diff: String::new(),
            created_at: r.get(6)?,
            commit: r.get(5)?,
            state: match state.as_str() {
                "pending" => ApprovalState::Pending,
                "approved" => ApprovalState::Approved,
                "denied" => ApprovalState::Denied,
                other => return Err(corrupt(format!("state {other:?}"))),
            },
            conflict: r.get(8)?,
            decided_by: r.get(9)?,
            decided_at: r.get(10)?,
            reason: r.get(11)?,
            merged_sha: r.get(12)?,
        })
    })();
    Ok(decoded)
}

impl Reader<'_> {
    pub fn approval(&self, id: u64) -> Result<Option<Approval>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLS} FROM approvals WHERE id = ?1"),
                [sql_int(id)],
                row,
            )
            .optional()?
            .transpose()
    }

    /// Pending approvals, oldest first; with `proposer`, only theirs.
    pub fn pending_approvals(
        &self,
        proposer: Option<&Principal>,
    ) -> Result<Vec<Approval>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM approvals WHERE state = 'pending'
             AND (?1 IS NULL OR proposer = ?1) ORDER BY id"
        ))?;
        let who = proposer.map(|p| p.to_string());
        let rows = stmt.query_map([who], row)?;
        rows.map(|r| r?).collect()
    }

    /// The newest approvals, decided or not, newest first.
    pub fn recent_approvals(&self, limit: u32) -> Result<Vec<Approval>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLS} FROM approvals ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], row)?;
        rows.map(|r| r?).collect()
    }
}

impl Tx<'_> {
    /// Opens an approval, audited and announced; returns its id.
    pub fn open_approval(&mut self, a: &NewApproval) -> Result<u64, StoreError> {
        self.conn.execute(
            "INSERT INTO approvals (agent, kind, proposer, message, commit_sha, created_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending')",
            params![
                a.agent.as_str(),
                kind_str(a.kind),
                a.proposer.to_string(),
                a.message,
                a.commit,
                self.now()
            ],
        )?;
        let id = self.conn.last_insert_rowid() as u64;
        self.audit(
            &a.actor,
            "propose",
            &format!(
                "approval={id} kind={} agent={} commit={}",
                kind_str(a.kind),
                a.agent,
                a.commit
            ),
        )?;
        self.event(Event::ApprovalOpened {
            id,
            agent: a.agent.clone(),
        })?;
        Ok(id)
    }

    /// The approval, if it is still pending; `conflict` otherwise.
    fn pending(&self, id: u64) -> Result<Approval, StoreError> {
        let a = self.reader().approval(id)?.ok_or_else(|| {
            StoreError::refused(
                hive_proto::view::ErrorCode::NotFound,
                format!("no approval {id}"),
            )
        })?;
        if a.state != ApprovalState::Pending {
            return Err(StoreError::refused(
                hive_proto::view::ErrorCode::Conflict,
                format!(
                    "approval {id} is already {} (by {})",
                    state_str(a.state),
                    a.decided_by.as_deref().unwrap_or("?")
                ),
            ));
        }
        Ok(a)
    }

    /// Records that approving `id` conflicted with `main`; it stays pending.
    pub fn approval_conflicted(
        &mut self,
        id: u64,
        actor: &str,
        conflict: &str,
    ) -> Result<(), StoreError> {
        self.pending(id)?;
        self.conn.execute(
            "UPDATE approvals SET conflict = ?2 WHERE id = ?1",
            params![sql_int(id), conflict],
        )?;
        self.audit(
            actor,
            "approve_conflict",
            &format!("approval={id} {conflict}"),
        )
    }

    /// Marks `id` approved (merged into `main` as `merged_sha`), tells the
    /// proposer, audits and announces it.
    pub fn approve(
        &mut self,
        id: u64,
        actor: &str,
        merged_sha: &str,
    ) -> Result<Approval, StoreError> {
        let a = self.pending(id)?;
        self.conn.execute(
            "UPDATE approvals SET state = 'approved', conflict = NULL, decided_by = ?2,
             decided_at = ?3, merged_sha = ?4 WHERE id = ?1",
            params![sql_int(id), actor, self.now(), merged_sha],
        )?;
        let body = format!(
            "approval {id} ({} {}) was approved by {actor}; main is now {merged_sha}",
            kind_str(a.kind),
            a.agent
        );
        self.decided(
            &a,
            actor,
            "approve",
            true,
            body,
            &format!("merged={merged_sha}"),
        )?;
        self.pending_or_decided(id)
    }

    /// Marks `id` denied with `reason`, tells the proposer, audits it.
    pub fn deny(&mut self, id: u64, actor: &str, reason: &str) -> Result<Approval, StoreError> {
        let a = self.pending(id)?;
        self.conn.execute(
            "UPDATE approvals SET state = 'denied', decided_by = ?2, decided_at = ?3, reason = ?4
             WHERE id = ?1",
            params![sql_int(id), actor, self.now(), reason],
        )?;
        let body = format!(
            "approval {id} ({} {}) was denied by {actor}: {reason}",
            kind_str(a.kind),
            a.agent
        );
        self.decided(&a, actor, "deny", false, body, &format!("reason={reason}"))?;
        self.pending_or_decided(id)
    }

    fn pending_or_decided(&self, id: u64) -> Result<Approval, StoreError> {
        self.reader()
            .approval(id)?
            .ok_or_else(|| StoreError::Commit(format!("approval {id} vanished")))
    }

    fn decided(
        &mut self,
        a: &Approval,
        actor: &str,
        action: &str,
        approved: bool,
        body: String,
        detail: &str,
    ) -> Result<(), StoreError> {
        if let Principal::Agent(_) = &a.proposer {
            let mut m = NewMessage::plain(Principal::Operator, a.proposer.clone(), body, None);
            m.kind = ItemKind::ApprovalDecided;
            self.insert_message(m)?;
        }
        self.audit(
            actor,
            action,
            &format!("approval={} agent={} {detail}", a.id, a.agent),
        )?;
        self.event(Event::ApprovalDecided { id: a.id, approved })?;
        Ok(())
    }

    /// Records what `agent` runs at boot, started from `main`'s spec: an
    /// observation, not a change, so neither audited nor announced.
    pub fn record_deployed(&mut self, agent: &AgentName, sha: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE agents SET deployed_sha = ?2 WHERE name = ?1",
            params![agent.as_str(), sha],
        )?;
        Ok(())
    }

    /// Records what `agent` now runs after a deploy, audited and announced.
    pub fn set_deployed(&mut self, agent: &AgentName, sha: &str) -> Result<(), StoreError> {
        self.register_agent(agent)?;
        self.conn.execute(
            "UPDATE agents SET deployed_sha = ?2 WHERE name = ?1",
            params![agent.as_str(), sha],
        )?;
        self.audit("hive", "deploy", &format!("agent={agent} sha={sha}"))?;
        self.event(Event::AgentDeployed {
            agent: agent.clone(),
            sha: sha.to_owned(),
        })?;
        Ok(())
    }
}
