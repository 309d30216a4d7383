//! The operator verbs, applied for the operator the socket established.
//! These are the only entry points to operator authority (answering as the
//! operator, lifecycle, approvals); the agent socket has no path here.

use hive_proto::agent::MAX_BODY;
use hive_proto::operator::{Health, OperatorRequest, OperatorResponse};
use hive_proto::view::{AgentDetail, AgentSummary, ErrorCode, RunState};
use hive_proto::{AgentName, Principal};

use super::agent_verbs::check_len;
use super::reply_budget::Budget;
use super::{state_files, Hive, OperatorId, Refusal};
use crate::store::{AuditHead, AuditReport, NewMessage};

/// Most rows one listing returns.
pub const MAX_LIST: u32 = 1000;
/// Most journal lines one request returns.
pub const MAX_JOURNAL_LINES: u32 = 5000;

impl Hive {
    /// Applies one operator request for `who`.
    pub async fn operator_call(
        &self,
        who: &OperatorId,
        req: OperatorRequest,
    ) -> Result<OperatorResponse, Refusal> {
        match req {
            OperatorRequest::ListAgents => Ok(OperatorResponse::Agents(self.summaries().await?)),
            OperatorRequest::AgentDetail { name } => {
                Ok(OperatorResponse::Agent(Box::new(self.detail(&name).await?)))
            }
            OperatorRequest::Lifecycle { name, action } => {
                self.known(&name)?;
                let Some(rt) = self.runtime() else {
                    return Err(unsupported("lifecycle actions"));
                };
                let actor = who.actor();
                let detail = format!("agent={name} action={action:?}");
                // Record the request before acting: the log shows what was
                // attempted even if the runtime then fails or hangs.
                self.store()
                    .write(move |tx| tx.audit(&actor, "lifecycle", &detail))
                    .await?;
                rt.lifecycle(&name, action).await?;
                Ok(OperatorResponse::Done)
            }
            OperatorRequest::Pending => {
                Ok(OperatorResponse::Approvals(self.pending_approvals().await?))
            }
            OperatorRequest::Approve { id } => {
                self.approve(who.actor(), id).await?;
                Ok(OperatorResponse::Done)
            }
            OperatorRequest::Deny { id, reason } => {
                self.deny(who.actor(), id, reason).await?;
                Ok(OperatorResponse::Done)
            }
            OperatorRequest::ApprovalDiff { id } => {
                Ok(OperatorResponse::Diff(self.approval_diff(id).await?))
            }
            OperatorRequest::AgentConfig { agent, rev } => {
                self.known(&agent)?;
                let (sha, files) = self.agent_config(agent, rev).await?;
                Ok(OperatorResponse::Config { sha, files })
            }
            OperatorRequest::Questions => {
                let qs = self
                    .store()
                    .read(|r| {
                        let mut budget = Budget::operator();
                        r.open_questions_to(&Principal::Operator, &mut |q| budget.admit(q))
                    })
                    .await?;
                Ok(OperatorResponse::Questions(qs))
            }
            OperatorRequest::AnswerQuestion { id, answer } => {
                self.answer(Principal::Operator, who.actor(), id, answer)
                    .await?;
                Ok(OperatorResponse::Done)
            }
            OperatorRequest::SendMessage { to, body } => {
                self.known(&to)?;
                check_len("body", &body, MAX_BODY)?;
                let actor = who.actor();
                let id = self
                    .store()
                    .write(move |tx| {
                        let m = tx.insert_message(NewMessage::plain(
                            Principal::Operator,
                            Principal::Agent(to.clone()),
                            body,
                            None,
                        ))?;
                        tx.audit(&actor, "send", &format!("to={to} ids=[{}]", m.id))?;
                        Ok(m.id)
                    })
                    .await?;
                Ok(OperatorResponse::MessageSent { id })
            }
            OperatorRequest::Messages {
                mailbox,
                before,
                limit,
            } => {
                if let Principal::Agent(a) = &mailbox {
                    self.known(a)?;
                }
                let limit = limit.clamp(1, MAX_LIST);
                let msgs = self
                    .store()
                    .read(move |r| {
                        // Newest first: a client pages on with `before` =
                        // the oldest id it got, so a cut-short page loses
                        // nothing.
                        let mut budget = Budget::operator();
                        r.messages(&mailbox, before, limit, &mut |m| budget.admit(m))
                    })
                    .await?;
                Ok(OperatorResponse::Messages(msgs))
            }
            OperatorRequest::ReadStateFile { agent, rel_path } => {
                self.known(&agent)?;
                let dir = self.config().agent_state_dir(&agent);
                let (bytes, truncated) =
                    blocking(move || state_files::read_file(&dir, &rel_path)).await?;
                Ok(OperatorResponse::File { bytes, truncated })
            }
            OperatorRequest::ListStateDir { agent, rel_path } => {
                self.known(&agent)?;
                let dir = self.config().agent_state_dir(&agent);
                let entries =
                    blocking(move || state_files::list_dir(&dir, rel_path.as_ref())).await?;
                Ok(OperatorResponse::Dir(entries))
            }
            OperatorRequest::Journal { agent, lines } => {
                self.known(&agent)?;
                let Some(rt) = self.runtime() else {
                    return Err(unsupported("journals"));
                };
                let lines = rt
                    .journal(&agent, lines.clamp(1, MAX_JOURNAL_LINES))
                    .await?;
                Ok(OperatorResponse::Journal(lines))
            }
            OperatorRequest::Audit { since, limit } => {
                let limit = limit.clamp(1, MAX_LIST);
                let rows = self
                    .store()
                    .read(move |r| r.audit_since(since, limit))
                    .await?;
                Ok(OperatorResponse::Audit(rows))
            }
            OperatorRequest::SecretNames { agent } => crate::secrets::list(self, agent).await,
            OperatorRequest::Health => {
                let last_event_seq = self.store().read(|r| r.last_event_seq()).await?;
                let agents = self.config().agents.len() as u32;
                let connected_agents = self.hub().connected_among(self.config().agents.keys());
                Ok(OperatorResponse::Health(Health {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    runtime: self
                        .runtime()
                        .map(|r| r.name())
                        .unwrap_or("detached")
                        .to_owned(),
                    uptime_ms: self.inner.started.elapsed().as_millis() as u64,
                    agents,
                    connected_agents,
                    last_event_seq,
                    network: self.network_isolation(),
                    unsandboxed: self.runtime().is_some_and(|r| r.unsandboxed()),
                }))
            }
        }
    }

    /// Recomputes the audit chain (admin socket only). A broken chain is a
    /// `conflict` naming the first bad row.
    /// `admin.sock` only: destroys the agent's container and removes its
    /// own dirs. Audited before the runtime acts, like every lifecycle verb.
    pub async fn purge(
        &self,
        who: &OperatorId,
        name: AgentName,
    ) -> Result<OperatorResponse, Refusal> {
        self.known(&name)?;
        let Some(rt) = self.runtime() else {
            return Err(unsupported("lifecycle actions"));
        };
        let actor = who.actor();
        let detail = format!("agent={name} action=Destroy purge=true");
        self.store()
            .write(move |tx| tx.audit(&actor, "lifecycle", &detail))
            .await?;
        rt.purge(&name).await?;
        Ok(OperatorResponse::Done)
    }

    /// Audit rows after `since` for `hivectl audit export` (admin only).
    pub async fn audit_export(
        &self,
        _who: &OperatorId,
        since: u64,
        limit: u32,
    ) -> Result<OperatorResponse, Refusal> {
        let limit = limit.clamp(1, MAX_LIST);
        let rows = self
            .store()
            .read(move |r| r.audit_since(since, limit))
            .await?;
        Ok(OperatorResponse::Audit(rows))
    }

    pub async fn audit_verify(&self, _who: &OperatorId) -> Result<OperatorResponse, Refusal> {
        // The head file first: it is written after its commit, so a chain
        // read that starts after it sees at least that row.
        let head_path = self.store().audit_head_path();
        let recorded = blocking(move || {
            AuditHead::read(&head_path).map_err(|e| Refusal::new(ErrorCode::Conflict, e))
        })
        .await?;
        match self
            .store()
            .read(move |r| r.verify_audit_against(recorded.as_ref()))
            .await?
        {
            AuditReport::Intact { rows, head } => {
                Ok(OperatorResponse::AuditVerified { rows, head })
            }
            AuditReport::Broken { seq, reason } => Err(Refusal::new(
                ErrorCode::Conflict,
                format!("audit chain broken at row {seq}: {reason}"),
            )),
        }
    }

    fn known(&self, agent: &AgentName) -> Result<(), Refusal> {
        if self.policy(agent).is_none() {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("no agent {agent}"),
            ));
        }
        Ok(())
    }

    /// The runtime's half of an agent's row (`Unknown` before a runtime is
    /// installed); `hivectl doctor` takes leader pids from it too.
    pub(crate) fn agent_view(&self, agent: &AgentName) -> crate::runtime::AgentView {
        self.runtime()
            .map(|r| r.agent_view(agent))
            .unwrap_or_else(|| crate::runtime::AgentView::of_state(RunState::Unknown))
    }

    /// Every configured agent's dashboard row.
    pub async fn summaries(&self) -> Result<Vec<AgentSummary>, Refusal> {
        let rows: Vec<_> = self
            .store()
            .read(|r| r.agents())
            .await?
            .into_iter()
            .filter(|row| self.policy(&row.name).is_some())
            .collect();
        let deployed = rows
            .iter()
            .map(|r| (r.name.clone(), r.deployed_sha.clone()))
            .collect();
        let (main, stale) = self.deploy_state(deployed).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let view = self.agent_view(&row.name);
                AgentSummary {
                    run_state: view.state,
                    connections: self.hub().connections(&row.name),
                    status: row.status,
                    status_at: row.status_at,
                    unread: row.unread,
                    open_questions: row.open_questions,
                    deployed_sha: row.deployed_sha,
                    main_sha: Some(main.clone()),
                    needs_update: stale.get(&row.name).copied().unwrap_or(true),
                    manager: self.policy(&row.name).is_some_and(|p| p.manager),
                    container: view.container,
                    uid_range: view.uid_range.map(|r| hive_proto::view::UidRange {
                        base: r.base,
                        count: r.count,
                    }),
                    leader_pid: view.leader_pid,
                    crash_reason: view.crash.map(|c| match &view.crash_note {
                        Some(note) => format!("{c}; {note}"),
                        None => c.to_string(),
                    }),
                    last_activity_at: self.hub().last_request(&row.name),
                    name: row.name,
                }
            })
            .collect())
    }

    async fn detail(&self, name: &AgentName) -> Result<AgentDetail, Refusal> {
        self.known(name)?;
        let summary = self
            .summaries()
            .await?
            .into_iter()
            .find(|s| s.name == *name)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no agent {name}")))?;
        let who = Principal::Agent(name.clone());
        let agent = name.clone();
        let (questions, reminders) = self
            .store()
            .read(move |r| {
                let mut budget = Budget::operator();
                let mut qs = r.open_questions_by(&who, &mut |q| budget.admit(q))?;
                qs.extend(r.open_questions_to(&who, &mut |q| budget.admit(q))?);
                qs.sort_by_key(|q| q.id);
                Ok((qs, r.pending_reminders(&agent, &mut |m| budget.admit(m))?))
            })
            .await?;
        Ok(AgentDetail {
            summary,
            allowed_recipients: self
                .policy(name)
                .map(|p| p.allowed_recipients.to_strings())
                .unwrap_or_default(),
            questions,
            reminders,
        })
    }
}

fn unsupported(what: &str) -> Refusal {
    Refusal::new(
        ErrorCode::Unsupported,
        format!("{what} are not supported by this runtime"),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?
}
