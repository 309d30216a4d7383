//! Network isolation (DESIGN §1.6): containers reach neither the host nor
//! each other. This module owns the hive's nftables table
//! (`table inet hyperhive`) the way Incus and libvirt own theirs — rendered
//! from the config ([`ruleset`]), installed in one `nft -f` transaction and
//! verified by reading it back ([`nft`]), restored by [`Isolation::run_reconcile`]
//! within one reconcile period (`[network] reconcile_period_ms`, default
//! [`RECONCILE_PERIOD`]) when someone deletes or edits it, and removed
//! at clean shutdown — plus each agent's addresses ([`addressing`], kept in
//! the store) and their configuration on its veth ([`veth`]).
//!
//! It fails closed: until the table is installed and verified,
//! [`Isolation::check_ready`] refuses, so a runtime starts no agent
//! container, and the reconcile loop calls back to stop running ones.
//!
//! This module must never touch another table, never configure an
//! interface that is not an agent's, and never open a socket.

pub mod addressing;
pub mod nft;
pub mod ruleset;
pub mod veth;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hive_proto::operator::NetworkIsolation;
use hive_proto::AgentName;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentPolicy, NetworkConfig};
use crate::store::{Store, StoreError};
use addressing::AgentAddresses;
use nft::Nft;
use ruleset::{AgentRules, Ruleset};
use veth::IpTools;

/// The hive's table, in the `inet` family.
pub const TABLE: &str = "hyperhive";
/// Every agent's host-side interface starts with this (`ve-` + the
/// container name `h-<name>`, as nspawn names it): the table drops what
/// comes from any of them that it has no policy for.
pub const AGENT_IF_PREFIX: &str = "ve-h-";
/// The container side of an nspawn veth.
pub const CONTAINER_IF: &str = "host0";
/// How often the reconcile loop reads the table back unless
/// `[network] reconcile_period_ms` says otherwise. An edit or deletion is
/// repaired within one period plus one `nft` run.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(1);

/// Why isolation could not be set up or kept.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("network isolation is not enforced ({0}), so no agent container runs")]
    NotEnforced(String),
    #[error("could not run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    #[error("table inet {TABLE} read back wrong: {0}")]
    Verify(String),
    #[error("agent {0} has no network slot (it is not a configured agent)")]
    UnknownAgent(AgentName),
    #[error(
        "agent {agent}: {name:?} is not an agent interface (ve-h-…, at most 15 of [A-Za-z0-9_.-])"
    )]
    BadInterface { agent: AgentName, name: String },
    #[error("agent {agent}: interface {name} is already agent {other}'s")]
    InterfaceTaken {
        agent: AgentName,
        name: String,
        other: AgentName,
    },
    #[error("container leader {pid}: {message}")]
    Leader { pid: u32, message: String },
    #[error("allocating network addresses: {0}")]
    Store(#[from] StoreError),
}

/// The programs isolation runs; tests point them elsewhere.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    pub nft: Nft,
    pub ip: IpTools,
}

/// What one reconcile pass found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The table is as installed.
    Intact,
    /// It was absent or changed (`what`) and is installed again.
    Repaired { what: String },
    /// It had never been installed (or had failed) and now is.
    Installed,
    /// It cannot be installed: one sentence.
    Failed(String),
    /// [`Isolation::remove`] ran; nothing is kept any more.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    NotInstalled,
    Enforced,
    Failed(String),
    Removed,
}

struct State {
    status: Status,
    /// The listing of the table as last installed.
    fingerprint: Option<String>,
    repairs: u64,
}

/// An agent as isolation knows it.
struct Known {
    rules: AgentRules,
    /// Whether a runtime has reported `rules.host_if` (else it is predicted).
    attached: bool,
}

struct Inner {
    net: NetworkConfig,
    tools: Tools,
    /// Where slots are kept, for agents added at run time.
    store: Store,
    agents: Mutex<BTreeMap<AgentName, Known>>,
    state: Mutex<State>,
    /// One install or reconcile pass at a time.
    install: tokio::sync::Mutex<()>,
}

/// The hive's isolation: cheap to clone, shared by the daemon, the runtime
/// and the health view.
#[derive(Clone)]
pub struct Isolation {
    inner: Arc<Inner>,
}

impl Isolation {
    /// Gives every configured agent its slot in the pools (kept in the
    /// store: the same addresses as last time) and its predicted interface
    /// `ve-h-<name>`. Installs nothing yet: call [`Isolation::apply`].
    pub async fn new(
        net: NetworkConfig,
        tools: Tools,
        store: &Store,
        agents: &BTreeMap<AgentName, AgentPolicy>,
    ) -> Result<Self, IsolationError> {
        let names: Vec<AgentName> = agents.keys().cloned().collect();
        let mut rules = BTreeMap::new();
        for (name, addresses) in allocate(&net, store, names).await? {
            let known = Known::new(name.clone(), addresses, &agents[&name]);
            rules.insert(name, known);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                net,
                tools,
                store: store.clone(),
                agents: Mutex::new(rules),
                state: Mutex::new(State {
                    status: Status::NotInstalled,
                    fingerprint: None,
                    repairs: 0,
                }),
                install: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn agents(&self) -> MutexGuard<'_, BTreeMap<AgentName, Known>> {
        self.inner.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An agent added, or its policy changed, at run time (a spawn or a
    /// deploy): it gets its slot (kept in the store, as at start) and the
    /// table is installed again with its rules, before its container can
    /// start. An agent already attached keeps its interface.
    pub async fn set_agent(
        &self,
        agent: &AgentName,
        policy: &AgentPolicy,
    ) -> Result<(), IsolationError> {
        let (_, addresses) = allocate(&self.inner.net, &self.inner.store, vec![agent.clone()])
            .await?
            .pop()
            .expect("one agent, one slot");
        let changed = {
            let mut agents = self.agents();
            match agents.get_mut(agent) {
                Some(known) => {
                    let before = known.rules.clone();
                    known.rules.egress = policy.egress;
                    known.rules.allow_hosts = policy.allow_hosts.clone();
                    known.rules != before
                }
                None => {
                    agents.insert(agent.clone(), Known::new(agent.clone(), addresses, policy));
                    true
                }
            }
        };
        if changed {
            self.apply().await?;
        }
        Ok(())
    }

    /// An agent removed at run time (its container already stopped): its
    /// rules leave the table; its slot stays its own in the store.
    pub async fn remove_agent(&self, agent: &AgentName) -> Result<(), IsolationError> {
        if self.agents().remove(agent).is_some() {
            self.apply().await?;
        }
        Ok(())
    }

    /// The agents the table has rules for.
    pub fn agent_names(&self) -> Vec<AgentName> {
        self.agents().keys().cloned().collect()
    }

    /// The table as it should be now.
    pub fn render(&self) -> Ruleset {
        let agents: Vec<AgentRules> = self.agents().values().map(|k| k.rules.clone()).collect();
        ruleset::render(&self.inner.net, &agents)
    }

    /// An agent's addresses.
    pub fn addresses(&self, agent: &AgentName) -> Option<AgentAddresses> {
        self.agents().get(agent).map(|k| k.rules.addresses)
    }

    /// Renders, installs (one transaction replacing the table) and verifies
    /// by reading it back. On failure the hive is marked not enforced.
    pub async fn apply(&self) -> Result<(), IsolationError> {
        let _one = self.inner.install.lock().await;
        self.apply_locked().await
    }

    async fn apply_locked(&self) -> Result<(), IsolationError> {
        if self.state().status == Status::Removed {
            return Err(IsolationError::NotEnforced(
                "the daemon is shutting down".into(),
            ));
        }
        let rules = self.render();
        let nft = &self.inner.tools.nft;
        let result: Result<String, IsolationError> = async {
            nft.install(&rules).await?;
            let got = nft.list().await?.ok_or_else(|| {
                IsolationError::Verify("it is absent right after installing".into())
            })?;
            nft::verify(&rules, &got).map_err(IsolationError::Verify)?;
            Ok(got.fingerprint)
        }
        .await;
        let mut st = self.state();
        match result {
            Ok(fingerprint) => {
                st.status = Status::Enforced;
                st.fingerprint = Some(fingerprint);
                Ok(())
            }
            Err(e) => {
                st.status = Status::Failed(e.to_string());
                st.fingerprint = None;
                Err(e)
            }
        }
    }

    /// The gate every container start passes: `Ok` only while the table is
    /// installed and verified.
    pub fn check_ready(&self) -> Result<(), IsolationError> {
        match &self.state().status {
            Status::Enforced => Ok(()),
            Status::NotInstalled => Err(IsolationError::NotEnforced(format!(
                "table inet {TABLE} is not installed yet"
            ))),
            Status::Failed(reason) => Err(IsolationError::NotEnforced(reason.clone())),
            Status::Removed => Err(IsolationError::NotEnforced(
                "the daemon is shutting down".into(),
            )),
        }
    }

    /// What `Health` shows.
    pub fn health(&self) -> NetworkIsolation {
        match self.check_ready() {
            Ok(()) => NetworkIsolation::Enforced {
                repairs: self.state().repairs,
            },
            Err(e) => NetworkIsolation::Failed {
                reason: e.to_string(),
            },
        }
    }

    /// Called by a runtime once an agent's container is up: records its
    /// host interface (re-installing the table if it differs from the one
    /// predicted) and configures both ends of its veth, the container end
    /// inside `leader_pid`'s network namespace. Refused while the table is
    /// not enforced.
    pub async fn attach(
        &self,
        agent: &AgentName,
        host_if: &str,
        leader_pid: u32,
    ) -> Result<AgentAddresses, IsolationError> {
        self.attach_as(agent, host_if, leader_pid, CONTAINER_IF)
            .await
    }

    /// [`Isolation::attach`] for a runtime whose container interface is not
    /// `host0`.
    pub async fn attach_as(
        &self,
        agent: &AgentName,
        host_if: &str,
        leader_pid: u32,
        container_if: &str,
    ) -> Result<AgentAddresses, IsolationError> {
        let bad_if = |name: &str| IsolationError::BadInterface {
            agent: agent.clone(),
            name: name.to_owned(),
        };
        if !veth::valid_agent_if(host_if) {
            return Err(bad_if(host_if));
        }
        if container_if.is_empty()
            || container_if.len() > crate::config::MAX_IFNAME
            || !container_if
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad_if(container_if));
        }
        let netns = veth::leader_netns(leader_pid)?;
        let (addresses, changed) = {
            let mut agents = self.agents();
            if !agents.contains_key(agent) {
                return Err(IsolationError::UnknownAgent(agent.clone()));
            }
            let mut changed = false;
            for other in agents.values_mut() {
                if other.rules.host_if == host_if && &other.rules.name != agent {
                    if other.attached {
                        return Err(IsolationError::InterfaceTaken {
                            agent: agent.clone(),
                            name: host_if.to_owned(),
                            other: other.rules.name.clone(),
                        });
                    }
                    // Only predicted: the runtime will report its real one.
                    other.rules.host_if.clear();
                    changed = true;
                }
            }
            let known = agents.get_mut(agent).expect("checked above");
            changed |= known.rules.host_if != host_if;
            known.rules.host_if = host_if.to_owned();
            known.attached = true;
            (known.rules.addresses, changed)
        };
        if changed {
            self.apply().await?;
        } else {
            self.check_ready()?;
        }
        veth::configure(
            &self.inner.tools.ip,
            host_if,
            &netns,
            container_if,
            &addresses,
        )
        .await?;
        Ok(addresses)
    }

    /// One pass: read the table back; if it is absent or differs from what
    /// was installed, install it again.
    pub async fn reconcile(&self) -> Reconciled {
        let _one = self.inner.install.lock().await;
        let (expected, was) = {
            let st = self.state();
            (st.fingerprint.clone(), st.status.clone())
        };
        if was == Status::Removed {
            return Reconciled::Removed;
        }
        let listing = self.inner.tools.nft.list().await;
        let what = match (&expected, &listing) {
            (Some(fp), Ok(Some(l))) if &l.fingerprint == fp => return Reconciled::Intact,
            (_, Ok(None)) => "deleted".to_owned(),
            (_, Ok(Some(_))) => "changed".to_owned(),
            (_, Err(e)) => format!("unreadable ({e})"),
        };
        match self.apply_locked().await {
            Ok(()) if expected.is_some() => {
                self.state().repairs += 1;
                Reconciled::Repaired { what }
            }
            Ok(()) => Reconciled::Installed,
            Err(e) => Reconciled::Failed(e.to_string()),
        }
    }

    /// Reconciles every reconcile period (`NetworkConfig::reconcile_period`)
    /// until `stop`. When the table
    /// cannot be kept, `on_failure` runs once (with the reason) so the
    /// daemon stops every running container; passes go on, and a later
    /// success makes starts possible again.
    pub async fn run_reconcile<F, Fut>(&self, stop: CancellationToken, on_failure: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut tick = tokio::time::interval(self.inner.net.reconcile_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = self.check_ready().is_err();
        if failing {
            if let Err(e) = self.check_ready() {
                on_failure(e.to_string()).await;
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let mut outcome = self.reconcile().await;
            if matches!(outcome, Reconciled::Failed(_)) && !failing {
                // One immediate second try before stopping every agent: a
                // change racing the repair (the table deleted again between
                // `nft -f` and the read-back) fails one pass, not two in a
                // row; a table that cannot be kept fails both.
                outcome = self.reconcile().await;
            }
            match outcome {
                Reconciled::Intact => {}
                Reconciled::Repaired { what } => {
                    failing = false;
                    tracing::warn!(
                        table = TABLE,
                        what = %what,
                        took_ms = started.elapsed().as_millis() as u64,
                        "the hive's nftables table was tampered with; restored"
                    );
                }
                Reconciled::Installed => {
                    failing = false;
                    tracing::info!(table = TABLE, "network isolation is enforced again");
                }
                Reconciled::Failed(reason) => {
                    if !failing {
                        failing = true;
                        tracing::error!(reason = %reason, "network isolation lost; stopping every agent container");
                        on_failure(reason).await;
                    }
                }
                Reconciled::Removed => return,
            }
        }
    }

    /// For `hivectl doctor`: reads the table back and compares it with what
    /// the core would install now (its chains, rule counts and sets) and
    /// with what it last installed (every rule). `Err` is one sentence.
    /// Changes nothing: repairing is the reconcile loop's job.
    pub async fn check_table(&self) -> Result<(), String> {
        let listing = self
            .inner
            .tools
            .nft
            .list()
            .await
            .map_err(|e| format!("table inet {TABLE} cannot be read: {e}"))?;
        let Some(listing) = listing else {
            return Err(format!("table inet {TABLE} is missing"));
        };
        nft::verify(&self.render(), &listing)
            .map_err(|e| format!("table inet {TABLE} is not what the core would install: {e}"))?;
        let installed = self.state().fingerprint.clone();
        match installed {
            Some(fp) if fp != listing.fingerprint => Err(format!(
                "table inet {TABLE} differs from what the core installed (a rule was edited)"
            )),
            Some(_) => Ok(()),
            None => Err(format!(
                "table inet {TABLE} is there but the core has not installed it ({})",
                self.health().sentence()
            )),
        }
    }

    /// The reconcile period, for `hivectl doctor`'s advice.
    pub fn reconcile_period(&self) -> Duration {
        self.inner.net.reconcile_period
    }

    /// At clean shutdown: deletes the table. Starts are refused from now on.
    pub async fn remove(&self) -> Result<(), IsolationError> {
        self.stop_keeping().await;
        self.inner.tools.nft.remove().await
    }

    /// At a shutdown that leaves containers running for the next daemon to
    /// adopt: the table stays as it is, guarding them, and this daemon
    /// stops reconciling it. Starts are refused from now on.
    pub async fn leave_in_place(&self) {
        self.stop_keeping().await;
    }

    async fn stop_keeping(&self) {
        let _one = self.inner.install.lock().await;
        let mut st = self.state();
        st.status = Status::Removed;
        st.fingerprint = None;
    }
}

impl Known {
    fn new(name: AgentName, addresses: AgentAddresses, policy: &AgentPolicy) -> Self {
        Self {
            rules: AgentRules {
                host_if: predicted_host_if(&name),
                name,
                addresses,
                egress: policy.egress,
                allow_hosts: policy.allow_hosts.clone(),
            },
            attached: false,
        }
    }
}

/// Each agent's slot (allocated once, kept in the store) and addresses.
async fn allocate(
    net: &NetworkConfig,
    store: &Store,
    names: Vec<AgentName>,
) -> Result<Vec<(AgentName, AgentAddresses)>, IsolationError> {
    let capacity = addressing::capacity(net);
    let slots = store
        .write(move |tx| {
            names
                .iter()
                .map(|n| Ok((n.clone(), tx.isolation_slot(n, capacity)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    slots
        .into_iter()
        .map(|(name, slot)| {
            let addresses = addressing::addresses(net, slot).ok_or_else(|| {
                StoreError::refused(
                    hive_proto::view::ErrorCode::Limit,
                    format!("agent {name}'s slot {slot} is outside the pools"),
                )
            })?;
            Ok((name, addresses))
        })
        .collect()
}

/// The host interface nspawn and nixos-container give the agent's
/// container (`runtime::container_name`); a runtime that learns otherwise
/// tells [`Isolation::attach`].
pub fn predicted_host_if(agent: &AgentName) -> String {
    crate::runtime::container_name::host_interface(agent)
}
