//! The config repo's verbs: proposals (agents' and the operator's),
//! approve and deny, deploying `main` to an agent, and the restart
//! reconcile. Git work runs on the blocking pool; the store holds the
//! approvals.
//!
//! Order of an approve, so a crash anywhere loses nothing and decides
//! nothing twice:
//! 1. merge the proposal into `main` (git; a proposal already in `main` is
//!    not merged again);
//! 2. commit `approved` + the proposer's inbox notice + audit + event in one
//!    store transaction — only then is the operator told `ok`;
//! 3. deploy: install the agent's policy, hand the runtime the new spec,
//!    restart (or create and start a spawned agent), record
//!    `deployed_sha = main`.
//!
//! A crash after 1 leaves a pending approval whose commit is in `main`: the
//! reconcile at start sees it and finishes 2 with the approver the merge
//! commit names. A crash after 2 leaves an agent whose files at `main`
//! differ from those at `deployed_sha` (`needs_update`): the reconcile
//! deploys it. This module must never move `main` except from an
//! operator's approve or revert (and that reconcile, which only records
//! a merge that already happened).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use git2::Oid;
use hive_proto::agent::{ProposalResult, MAX_PROPOSAL_MESSAGE};
use hive_proto::operator::{AdminRequest, Approval, ConfigCommit, ConfigRev, OperatorResponse};
use hive_proto::view::{ApprovalKind, ErrorCode};
use hive_proto::{AgentName, Principal, RelPath};

use super::{Hive, Refusal};
use crate::config::{AgentPolicy, Config};
use crate::repo::{proposal, render, ConfigRepo, LogEntry, MergeOutcome, RepoError};
use crate::runtime::AgentSpec;
use crate::store::NewApproval;
use crate::Error;

/// Longest deny reason, in bytes.
pub const MAX_DENY_REASON: usize = 4096;

impl From<RepoError> for Refusal {
    fn from(e: RepoError) -> Self {
        match &e {
            RepoError::NoSuchRev(_) | RepoError::UnknownAgent(_) => {
                Refusal::new(ErrorCode::NotFound, e.to_string())
            }
            RepoError::Conflict { .. } => Refusal::new(ErrorCode::Conflict, e.to_string()),
            _ => {
                tracing::error!(error = %e, "config repo failure");
                Refusal::new(
                    ErrorCode::Internal,
                    "config repo failure (see the core's log)",
                )
            }
        }
    }
}

impl From<proposal::ProposalError> for Refusal {
    fn from(e: proposal::ProposalError) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

/// Opens (or seeds) `<state_dir>/meta` and returns it with the agents of
/// its `main`. A daemon-config agent the repo lacks, or one whose table
/// differs, is logged: the repo wins (docs/agent-config.md).
pub(super) fn open_repo(
    config: &Config,
) -> Result<(ConfigRepo, BTreeMap<AgentName, AgentPolicy>), Error> {
    let path = config.state_dir.join("meta");
    let (repo, seeded) = ConfigRepo::open_or_seed(&path, &config.agents)?;
    let main = repo.main()?;
    let agents = repo.agents_at(main)?;
    if seeded {
        tracing::info!(path = %path.display(), agents = agents.len(), "config repo seeded from the daemon config");
    } else {
        for (name, daemon) in &config.agents {
            match agents.get(name) {
                None => {
                    tracing::warn!(agent = %name, "in the daemon config but not in the config repo: ignored (propose it to add it)");
                }
                Some(repo) if render::agent_toml(repo) != render::agent_toml(daemon) => {
                    tracing::warn!(agent = %name, "its daemon-config table differs from agents/{name}/agent.toml in the config repo: the repo wins (propose the change to make it)");
                }
                Some(_) => {}
            }
        }
    }
    Ok((repo, agents))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("repo task: {e}")))?
}

fn oid(s: &str) -> Result<Oid, Refusal> {
    Oid::from_str(s)
        .map_err(|_| Refusal::new(ErrorCode::Internal, format!("bad sha {s:?} in store")))
}

impl Hive {
    /// The admin socket's config verbs (`hivectl config ...`).
    pub async fn admin_config_call(
        &self,
        who: &super::OperatorId,
        req: AdminRequest,
    ) -> Result<OperatorResponse, Refusal> {
        match req {
            AdminRequest::ConfigPropose {
                agent,
                files,
                message,
            } => Ok(OperatorResponse::Proposed(
                self.operator_propose(who.actor(), agent, files, message)
                    .await?,
            )),
            AdminRequest::ConfigRevert { rev } => Ok(OperatorResponse::Reverted {
                main: self.config_revert(who.actor(), rev).await?,
            }),
            AdminRequest::ConfigLog { agent, limit } => {
                let log = self.config_log(agent, limit).await?;
                Ok(OperatorResponse::ConfigLog(
                    log.into_iter()
                        .map(|e| ConfigCommit {
                            sha: e.sha,
                            summary: e.summary,
                            author: e.author,
                            committer: e.committer,
                            time: e.time,
                        })
                        .collect(),
                ))
            }
            AdminRequest::ConfigShow { agent, rev } => {
                let (sha, files) = self.config_show(agent, rev).await?;
                Ok(OperatorResponse::Config { sha, files })
            }
            AdminRequest::ConfigDiff { agent } => {
                Ok(OperatorResponse::Diff(self.config_diff(agent).await?))
            }
            _ => Err(Refusal::new(ErrorCode::BadRequest, "not a config verb")),
        }
    }

    /// Validates a proposal, commits it on `proposals/<id>` and opens its
    /// approval. Nothing is written when it is invalid.
    pub(super) async fn propose(
        &self,
        proposer: Principal,
        actor: String,
        agent: AgentName,
        files: BTreeMap<RelPath, String>,
        message: String,
        spawn: bool,
    ) -> Result<ProposalResult, Refusal> {
        if message.len() > MAX_PROPOSAL_MESSAGE {
            return Err(proposal::ProposalError::MessageTooLong(message.len()).into());
        }
        let repo = Arc::clone(self.repo());
        let (agent_c, actor_c, message_c) = (agent.clone(), actor.clone(), message.clone());
        let commit = blocking(move || {
            let main = repo.main()?;
            let known: BTreeSet<AgentName> = repo.agents_at(main)?.into_keys().collect();
            let checked = proposal::check(&agent_c, &files, &message_c, &known, spawn)?;
            let (commit, _base) =
                repo.commit_proposal(&agent_c, &checked.files, &message_c, &actor_c)?;
            Ok(commit)
        })
        .await?;
        let new = NewApproval {
            agent: agent.clone(),
            kind: if spawn {
                ApprovalKind::Spawn
            } else {
                ApprovalKind::Config
            },
            proposer,
            message,
            commit: commit.to_string(),
            actor,
        };
        let id = self.store().write(move |tx| tx.open_approval(&new)).await?;
        let repo = Arc::clone(self.repo());
        blocking(move || Ok(repo.set_proposal_branch(id, commit)?)).await?;
        Ok(ProposalResult {
            approval_id: id,
            branch: format!("proposals/{id}"),
            commit: commit.to_string(),
        })
    }

    /// An operator's proposal (`hivectl config propose`): for an agent in
    /// `main` it changes its config, for a new name it is a spawn.
    pub(super) async fn operator_propose(
        &self,
        actor: String,
        agent: AgentName,
        files: BTreeMap<RelPath, String>,
        message: String,
    ) -> Result<ProposalResult, Refusal> {
        let repo = Arc::clone(self.repo());
        let a = agent.clone();
        let exists = blocking(move || Ok(repo.agent_tree(&a, repo.main()?)?.is_some())).await?;
        self.propose(Principal::Operator, actor, agent, files, message, !exists)
            .await
    }

    /// Pending approvals with their diffs, oldest first.
    pub(super) async fn pending_approvals(&self) -> Result<Vec<Approval>, Refusal> {
        let list = self.store().read(|r| r.pending_approvals(None)).await?;
        let repo = Arc::clone(self.repo());
        blocking(move || {
            list.into_iter()
                .map(|mut a| {
                    a.diff = repo.diff_commit(oid(&a.commit)?)?;
                    Ok(a)
                })
                .collect()
        })
        .await
    }

    /// One approval's diff.
    pub(super) async fn approval_diff(&self, id: u64) -> Result<String, Refusal> {
        let a = self.approval(id).await?;
        let repo = Arc::clone(self.repo());
        blocking(move || Ok(repo.diff_commit(oid(&a.commit)?)?)).await
    }

    async fn approval(&self, id: u64) -> Result<Approval, Refusal> {
        self.store()
            .read(move |r| r.approval(id))
            .await?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no approval {id}")))
    }

    /// Approves `id`: merge, record (durably, before the caller hears
    /// `ok`), then deploy in the background. A conflict keeps it pending.
    pub(super) async fn approve(&self, actor: String, id: u64) -> Result<(), Refusal> {
        let a = self.approval(id).await?;
        if a.state != hive_proto::view::ApprovalState::Pending {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("approval {id} is already decided"),
            ));
        }
        let repo = Arc::clone(self.repo());
        let (commit, proposer, approver) = (oid(&a.commit)?, proposer_actor(&a), actor.clone());
        let outcome = blocking(move || Ok(repo.merge(id, commit, &proposer, &approver)?)).await?;
        match outcome {
            MergeOutcome::Conflict(paths) => {
                let conflict = format!("conflicts with main in {}", paths.join(", "));
                let (c, who) = (conflict.clone(), actor.clone());
                self.store()
                    .write(move |tx| tx.approval_conflicted(id, &who, &c))
                    .await?;
                Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!("approval {id} {conflict}; it stays pending"),
                ))
            }
            MergeOutcome::Merged(main) => {
                let sha = main.to_string();
                self.store()
                    .write(move |tx| tx.approve(id, &actor, &sha))
                    .await?;
                self.deploy_in_background(a.agent);
                Ok(())
            }
        }
    }

    pub(super) async fn deny(&self, actor: String, id: u64, reason: String) -> Result<(), Refusal> {
        super::agent_verbs::check_len("reason", &reason, MAX_DENY_REASON)?;
        if reason.trim().is_empty() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "a denial needs a reason",
            ));
        }
        self.store()
            .write(move |tx| tx.deny(id, &actor, &reason))
            .await?;
        Ok(())
    }

    /// Reverts `rev` on `main` as `actor` and deploys every agent it changes.
    pub(super) async fn config_revert(
        &self,
        actor: String,
        rev: String,
    ) -> Result<String, Refusal> {
        let repo = Arc::clone(self.repo());
        let who = actor.clone();
        let (new, changed) = blocking(move || {
            let old = repo.main()?;
            let new = repo.revert(&rev, &who)?;
            let mut changed = Vec::new();
            let names: BTreeSet<AgentName> = repo
                .agents_at(old)?
                .into_keys()
                .chain(repo.agents_at(new)?.into_keys())
                .collect();
            for n in names {
                if repo.agent_tree(&n, old)? != repo.agent_tree(&n, new)? {
                    changed.push(n);
                }
            }
            Ok((new, changed))
        })
        .await?;
        let sha = new.to_string();
        let detail = format!("main={sha} agents={changed:?}");
        self.store()
            .write(move |tx| tx.audit(&actor, "config_revert", &detail))
            .await?;
        for agent in changed {
            self.deploy_in_background(agent);
        }
        Ok(sha)
    }

    /// The agent's files at its deployed revision or at `main`.
    pub(super) async fn agent_config(
        &self,
        agent: AgentName,
        rev: ConfigRev,
    ) -> Result<(Option<String>, Vec<(String, String)>), Refusal> {
        let sha = match rev {
            ConfigRev::Main => Some(self.repo().main()?.to_string()),
            ConfigRev::Deployed => self.deployed_sha(&agent).await?,
        };
        let Some(sha) = sha else {
            return Ok((None, Vec::new()));
        };
        self.config_show(agent, sha).await
    }

    /// The agent's files at any revision.
    pub(super) async fn config_show(
        &self,
        agent: AgentName,
        rev: String,
    ) -> Result<(Option<String>, Vec<(String, String)>), Refusal> {
        let repo = Arc::clone(self.repo());
        blocking(move || {
            let at = repo.resolve(&rev)?;
            Ok((Some(at.to_string()), repo.files_at(&agent, at)?))
        })
        .await
    }

    /// The diff of the agent's files from what runs to `main`.
    pub(super) async fn config_diff(&self, agent: AgentName) -> Result<String, Refusal> {
        let deployed = self.deployed_sha(&agent).await?;
        let repo = Arc::clone(self.repo());
        blocking(move || {
            let from = deployed.as_deref().map(oid).transpose()?;
            Ok(repo.diff_agent(&agent, from, repo.main()?)?)
        })
        .await
    }

    pub(super) async fn config_log(
        &self,
        agent: Option<AgentName>,
        limit: u32,
    ) -> Result<Vec<LogEntry>, Refusal> {
        let repo = Arc::clone(self.repo());
        blocking(move || Ok(repo.log(agent.as_ref(), limit as usize)?)).await
    }

    async fn deployed_sha(&self, agent: &AgentName) -> Result<Option<String>, Refusal> {
        let rows = self.store().read(|r| r.agents()).await?;
        Ok(rows
            .into_iter()
            .find(|r| r.name == *agent)
            .and_then(|r| r.deployed_sha))
    }

    /// `(main, needs_update)` for each of `deployed`'s agents: whether its
    /// files at `main` differ from those at the deployed revision.
    pub(super) async fn deploy_state(
        &self,
        deployed: Vec<(AgentName, Option<String>)>,
    ) -> Result<(String, BTreeMap<AgentName, bool>), Refusal> {
        let repo = Arc::clone(self.repo());
        blocking(move || {
            let main = repo.main()?;
            let mut out = BTreeMap::new();
            for (name, sha) in deployed {
                let stale = match sha.as_deref().map(Oid::from_str) {
                    Some(Ok(d)) if d == main => false,
                    Some(Ok(d)) => {
                        repo.agent_tree(&name, d).ok().flatten() != repo.agent_tree(&name, main)?
                    }
                    _ => true,
                };
                out.insert(name, stale);
            }
            Ok((main.to_string(), out))
        })
        .await
    }

    fn deploy_in_background(&self, agent: AgentName) {
        let hive = self.clone();
        tokio::spawn(async move {
            if let Err(e) = hive.deploy(&agent).await {
                tracing::error!(agent = %agent, error = %e, "deploy failed; the next start retries");
            }
        });
    }

    /// Makes `agent` run what `main` says: its policy, a socket if it is
    /// new, the runtime's spec (rebuild/restart, or start if new), then
    /// `deployed_sha = main`. Idempotent.
    pub async fn deploy(&self, agent: &AgentName) -> Result<(), Refusal> {
        let _one_at_a_time = self.inner.deploy_lock.lock().await;
        let repo = Arc::clone(self.repo());
        let (main, policy) = blocking(move || {
            let main = repo.main()?;
            Ok((main, repo.agents_at(main)?))
        })
        .await?;
        let Some(policy) = policy.get(agent).cloned() else {
            return Err(Refusal::new(
                ErrorCode::Unsupported,
                format!("{agent} is no longer in main; removing agents is not supported yet"),
            ));
        };
        let new = self.policy(agent).is_none();
        if new {
            let sockets = self.inner.agent_sockets.get().ok_or_else(|| {
                Refusal::new(
                    ErrorCode::Unsupported,
                    "this core cannot add agents at run time",
                )
            })?;
            let name = agent.clone();
            self.store()
                .write(move |tx| tx.register_agent(&name))
                .await?;
            sockets.add(self, agent, policy.max_connections)?;
        }
        let spec = AgentSpec::from_config(self.config(), agent, &policy);
        self.set_policy(agent, policy.clone());
        if let (Some(rt), Some(spec)) = (self.runtime(), spec) {
            rt.deploy(agent, spec, &policy).await?;
        }
        let (name, sha) = (agent.clone(), main.to_string());
        self.store()
            .write(move |tx| tx.set_deployed(&name, &sha))
            .await?;
        tracing::info!(agent = %agent, sha = %main, "deployed");
        Ok(())
    }

    /// At start: finish approvals merged but not recorded, recreate missing
    /// proposal branches, and bring every agent whose `main` config is not
    /// what it last ran up to date. The runtime was built from `main`'s
    /// agents at this boot, so every agent it did not `adopted` (take over
    /// still running from before) runs, or will start, `main`'s spec: it is
    /// recorded as deployed. An adopted stale one is deployed (rebuilt).
    pub async fn reconcile_config(&self, adopted: &[AgentName]) -> Result<(), Refusal> {
        let pending = self.store().read(|r| r.pending_approvals(None)).await?;
        for a in pending {
            let repo = Arc::clone(self.repo());
            let commit = oid(&a.commit)?;
            let id = a.id;
            let merged = blocking(move || {
                if !repo.has_proposal_branch(id) {
                    repo.set_proposal_branch(id, commit)?;
                }
                if repo.in_main(commit)? {
                    return Ok(repo.merged_by(commit)?);
                }
                Ok(None)
            })
            .await?;
            if let Some((merge, approver)) = merged {
                let sha = merge.to_string();
                tracing::warn!(
                    approval = id,
                    "approval merged before a crash: recording it now"
                );
                self.store()
                    .write(move |tx| tx.approve(id, &approver, &sha))
                    .await?;
            }
        }
        let rows = self.store().read(|r| r.agents()).await?;
        let live = self.agent_names();
        let deployed = rows
            .into_iter()
            .filter(|r| live.contains(&r.name))
            .map(|r| (r.name, r.deployed_sha))
            .collect();
        let (_, stale) = self.deploy_state(deployed).await?;
        for (agent, stale) in stale {
            if stale && !adopted.contains(&agent) {
                let sha = self.repo().main()?.to_string();
                self.store()
                    .write(move |tx| tx.record_deployed(&agent, &sha))
                    .await?;
            } else if stale {
                if let Err(e) = self.deploy(&agent).await {
                    tracing::error!(agent = %agent, error = %e, "reconcile: deploy failed");
                }
            }
        }
        Ok(())
    }
}

fn proposer_actor(a: &Approval) -> String {
    match &a.proposer {
        Principal::Agent(n) => format!("agent:{n}"),
        other => other.to_string(),
    }
}
