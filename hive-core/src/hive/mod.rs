//! The hive's domain layer: every agent verb and operator verb, with its
//! policy check, applied to the store. Callers pass the identity their
//! *socket* established ([`AgentName`] from the listener, [`OperatorId`]
//! from SO_PEERCRED or the gateway); no request field is ever believed about
//! who is asking.
//!
//! This module must never read a byte from a peer, and never decide identity.

mod agent_verbs;
mod config_verbs;
mod operator_verbs;
pub mod quota;
pub mod reply_budget;
mod scheduler;
mod state_files;
#[cfg(test)]
mod tests;

pub use agent_verbs::MAX_OPTION;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use futures::future::BoxFuture;
use hive_proto::operator::LifecycleAction;
use hive_proto::view::RunState;
use tokio::sync::Notify;

use hive_proto::agent::ErrorBody;
use hive_proto::event::EventRecord;
use hive_proto::operator::RpcError;
use hive_proto::view::{ErrorCode, Message};
use hive_proto::{AgentName, Principal};
use tokio::sync::broadcast;

use crate::config::{AgentPolicy, Config};
use crate::hub::{ConnectionGuard, Hub};
use crate::repo::ConfigRepo;
use crate::runtime::AgentSpec;
use crate::store::{Store, StoreError};
use crate::Error;

/// Who is calling on an operator socket, as the socket established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorId {
    /// A user on `admin.sock`, named from SO_PEERCRED's uid.
    Shell { user: String, uid: u32 },
    /// A login the gateway authenticated, relayed over `web.sock`.
    Web { login: String },
}

impl OperatorId {
    /// The actor string the audit log records.
    pub fn actor(&self) -> String {
        match self {
            Self::Shell { user, .. } => format!("operator:{user}"),
            Self::Web { login } => format!("operator:{login}@web"),
        }
    }
}

/// A request the hive refuses: goes back to the peer as an error code and a
/// sentence. Internal failures are logged in full and sent as `internal`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused { code, message } => Refusal::new(code, message),
            StoreError::Closed => {
                Refusal::new(ErrorCode::Unavailable, "the store is shutting down")
            }
            ref e if e.is_disk_full() => {
                tracing::error!(error = %e, "store write refused: the disk is full");
                Refusal::new(
                    ErrorCode::Unavailable,
                    "the hive's disk is full: nothing was written; retry once space is freed",
                )
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Refusal::new(ErrorCode::Internal, "internal error (see the core's log)")
            }
        }
    }
}

impl From<Refusal> for ErrorBody {
    fn from(r: Refusal) -> Self {
        ErrorBody::new(r.code, r.message)
    }
}

impl From<Refusal> for RpcError {
    fn from(r: Refusal) -> Self {
        RpcError::new(r.code, r.message)
    }
}

/// What the operator verbs need from the container runtime. The daemon
/// installs one with [`Hive::set_runtime`]; until then lifecycle and journal
/// requests are answered `unsupported`.
pub trait RuntimeControl: Send + Sync + 'static {
    /// `process`, `nspawn`, `nixos-container`: shown in `Health`.
    fn name(&self) -> &'static str;
    /// Starts, stops, ... an agent. Refuse with `unsupported` what this
    /// runtime cannot do.
    fn lifecycle<'a>(
        &'a self,
        agent: &'a AgentName,
        action: LifecycleAction,
    ) -> BoxFuture<'a, Result<(), Refusal>>;
    /// Destroys the agent's container and removes its own dirs.
    fn purge<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), Refusal>> {
        let _ = agent;
        Box::pin(async move {
            Err(Refusal::new(
                ErrorCode::Unsupported,
                format!(
                    "destroy --purge is not supported by the {} runtime",
                    self.name()
                ),
            ))
        })
    }
    /// The last `lines` lines of the agent's log.
    fn journal<'a>(
        &'a self,
        agent: &'a AgentName,
        lines: u32,
    ) -> BoxFuture<'a, Result<Vec<String>, Refusal>>;
    /// What the runtime last saw of the agent.
    fn run_state(&self, agent: &AgentName) -> RunState;
    /// Runs `agent` from `spec` and `policy` from now on (an approved
    /// config or a spawn): the runtime gets the spec and the agent is
    /// (re)started so it runs what the config now says. A runtime that runs
    /// nothing (`detached`) accepts it as done.
    fn deploy<'a>(
        &'a self,
        agent: &'a AgentName,
        spec: AgentSpec,
        policy: &'a AgentPolicy,
    ) -> BoxFuture<'a, Result<(), Refusal>>;
    /// Agents run without isolation (shown as a banner on every page).
    fn unsandboxed(&self) -> bool {
        false
    }
    /// The runtime's half of the agent's status row.
    fn agent_view(&self, agent: &AgentName) -> crate::runtime::AgentView {
        crate::runtime::AgentView::of_state(self.run_state(agent))
    }
}

/// Binds a spawned agent's socket and serves it, at run time (the daemon
/// binds the others at start).
pub trait AgentSockets: Send + Sync + 'static {
    fn add(&self, hive: &Hive, agent: &AgentName, max_connections: u32) -> Result<(), Refusal>;
}

/// What [`Hive::events_after`] found for a resuming subscriber.
#[derive(Clone, Debug, PartialEq)]
pub enum EventsAfter {
    /// Stored events after `since`, oldest first; empty when there are none.
    Events(Vec<EventRecord>),
    /// Events after `since` are gone: the oldest kept one is
    /// `resume_from + 1`. Or `since` is past the newest event this store
    /// has (`resume_from`): the client counted in another store. Either way
    /// sent on as `ServerFrame::Lagged { resume_from }`: reload, resume.
    Pruned { resume_from: u64 },
}

/// The running hive: cheap to clone, shared by every socket task.
#[derive(Clone)]
pub struct Hive {
    inner: Arc<Inner>,
}

struct Inner {
    /// The daemon config, with `agents` replaced by the config repo's
    /// `main` as it was at start (the repo is the truth after seeding).
    config: Config,
    /// The live agent set and each agent's deployed policy: approvals
    /// change policies and spawns add agents while the hive runs.
    policies: RwLock<BTreeMap<AgentName, Arc<AgentPolicy>>>,
    repo: Arc<ConfigRepo>,
    /// One deploy at a time, so two approvals for one agent apply in order.
    deploy_lock: tokio::sync::Mutex<()>,
    agent_sockets: OnceLock<Arc<dyn AgentSockets>>,
    store: Store,
    hub: Arc<Hub>,
    started: Instant,
    /// Wakes the scheduler when a new deadline is set.
    scheduler_wake: Notify,
    runtime: OnceLock<Arc<dyn RuntimeControl>>,
    /// The in-memory quotas: send rate and status coalescing per agent.
    meters: quota::Meters,
    /// The network isolation of container runtimes; unset for the others.
    isolation: OnceLock<crate::isolation::Isolation>,
    /// Who is connected to `web.sock` (for `hivectl doctor`).
    gateway_peers: crate::operator_socket::GatewayPeers,
}

impl Hive {
    /// Opens the config repo (seeding it from the daemon config on first
    /// start) and the store, and registers the repo's agents.
    pub async fn open(mut config: Config) -> Result<Self, Error> {
        let hub = Arc::new(Hub::new());
        let (repo, agents) = config_verbs::open_repo(&config)?;
        config.agents = agents;
        let store = Store::open(&config.store_path(), Arc::clone(&hub))?;
        store
            .register_agents(config.agents.keys().cloned().collect())
            .await?;
        let policies = config
            .agents
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                policies: RwLock::new(policies),
                repo: Arc::new(repo),
                deploy_lock: tokio::sync::Mutex::new(()),
                agent_sockets: OnceLock::new(),
                config,
                store,
                hub,
                started: Instant::now(),
                scheduler_wake: Notify::new(),
                runtime: OnceLock::new(),
                meters: quota::Meters::default(),
                isolation: OnceLock::new(),
                gateway_peers: Default::default(),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    /// The agent's deployed policy, or `None` if no such agent.
    pub fn policy(&self, agent: &AgentName) -> Option<Arc<AgentPolicy>> {
        self.policies().get(agent).cloned()
    }

    /// Every live agent's name, sorted.
    pub fn agent_names(&self) -> Vec<AgentName> {
        self.policies().keys().cloned().collect()
    }

    fn policies(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<AgentName, Arc<AgentPolicy>>> {
        self.inner
            .policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn set_policy(&self, agent: &AgentName, policy: AgentPolicy) {
        self.inner
            .policies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.clone(), Arc::new(policy));
    }

    /// The config repo.
    pub fn repo(&self) -> &Arc<ConfigRepo> {
        &self.inner.repo
    }

    /// Installs what binds a spawned agent's socket at run time. Only the
    /// first call takes effect.
    pub fn set_agent_sockets(&self, sockets: Arc<dyn AgentSockets>) {
        let _ = self.inner.agent_sockets.set(sockets);
    }

    /// Marks a connection on `agent`'s socket open until the guard drops.
    pub fn connection_opened(&self, agent: &AgentName) -> ConnectionGuard {
        self.inner.hub.connection_opened(agent)
    }

    /// New messages for `agent` from now on. Subscribe *before* reading the
    /// backlog with [`Hive::unacked`] so nothing falls between the two.
    pub fn subscribe_inbox(&self, agent: &AgentName) -> broadcast::Receiver<Arc<Message>> {
        self.inner
            .hub
            .subscribe_mailbox(&Principal::Agent(agent.clone()))
    }

    /// `agent`'s unacknowledged messages with `id > after`, oldest first.
    pub async fn unacked(
        &self,
        agent: &AgentName,
        after: u64,
        max: u32,
    ) -> Result<Vec<Message>, Refusal> {
        Ok(self
            .inner
            .store
            .unacked(Principal::Agent(agent.clone()), after, max)
            .await?)
    }

    /// Events committed from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<EventRecord> {
        self.inner.hub.subscribe_events()
    }

    /// Stored events with `seq > since`, oldest first.
    pub async fn events_since(&self, since: u64, limit: u32) -> Result<Vec<EventRecord>, Refusal> {
        Ok(self.inner.store.events_since(since, limit).await?)
    }

    /// The oldest stored event's sequence number (`None` when there are
    /// none). Subscribers resuming from before it get `Lagged`.
    pub async fn first_event_seq(&self) -> Result<Option<u64>, Refusal> {
        Ok(self.inner.store.read(|r| r.first_event_seq()).await?)
    }

    /// The next page for a subscriber that has seen every event up to
    /// `since`: the stored events with `seq > since`, oldest first, or
    /// [`EventsAfter::Pruned`] when some of the events it still needs are
    /// no longer kept.
    ///
    /// The page is read first and the oldest kept `seq` only when the page
    /// does not start at `since + 1`: `seq` is never reused and only pruning
    /// deletes events, so a hole right after `since` whose events are older
    /// than the oldest kept one means they were pruned. Reading in this order
    /// means a prune that races with the read is caught either way, never
    /// skipped over in silence.
    pub async fn events_after(&self, since: u64, limit: u32) -> Result<EventsAfter, Refusal> {
        Ok(self
            .inner
            .store
            .read(move |r| {
                let page = r.events_since(since, limit)?;
                if page.is_empty() {
                    // `since` ahead of the newest event: the client's
                    // numbers come from another store (restored or
                    // replaced). Following on would skip every event up
                    // to `since` in silence; it must reload instead.
                    let newest = r.last_event_seq()?;
                    if since > newest {
                        return Ok(EventsAfter::Pruned {
                            resume_from: newest,
                        });
                    }
                }
                let wanted = since.saturating_add(1);
                if page.first().is_some_and(|e| e.seq > wanted) {
                    if let Some(first) = r.first_event_seq()? {
                        if first > wanted {
                            return Ok(EventsAfter::Pruned {
                                resume_from: first - 1,
                            });
                        }
                    }
                }
                Ok(EventsAfter::Events(page))
            })
            .await?)
    }

    /// Installs the container runtime. Only the first call takes effect.
    pub fn set_runtime(&self, runtime: Arc<dyn RuntimeControl>) {
        let _ = self.inner.runtime.set(runtime);
    }

    /// Installs the network isolation `Health` reports (container runtimes).
    pub fn set_isolation(&self, isolation: crate::isolation::Isolation) {
        let _ = self.inner.isolation.set(isolation);
    }

    /// The network isolation of a container runtime, if any.
    pub fn isolation(&self) -> Option<&crate::isolation::Isolation> {
        self.inner.isolation.get()
    }

    /// What `Health` says of the hive's nftables table.
    pub fn network_isolation(&self) -> hive_proto::operator::NetworkIsolation {
        self.inner
            .isolation
            .get()
            .map(|i| i.health())
            .unwrap_or(hive_proto::operator::NetworkIsolation::NotUsed)
    }

    /// The processes connected to `web.sock` now.
    pub fn gateway_peers(&self) -> &crate::operator_socket::GatewayPeers {
        &self.inner.gateway_peers
    }

    fn runtime(&self) -> Option<&Arc<dyn RuntimeControl>> {
        self.inner.runtime.get()
    }

    fn wake_scheduler(&self) {
        self.inner.scheduler_wake.notify_one();
    }

    /// Writes the statuses still waiting for their rate (the newest one
    /// per agent is never dropped), then flushes and stops the store's
    /// writer.
    pub async fn shutdown(&self) {
        for (agent, text) in self.inner.meters.take_pending_statuses() {
            if let Err(e) = self.write_status(&agent, text).await {
                tracing::warn!(agent = %agent, error = %e, "writing the last status at shutdown");
            }
        }
        self.inner.store.shutdown().await;
    }
}
