//! The table of agents a container runtime (`nspawn`, `nixos-container`)
//! manages: per agent its spec, container name, run state, uid base, the
//! running container (a backend's own type) and why it last crashed. It
//! owns the transitions every container backend shares — claim a start,
//! record a started container, drop a finished one only if it is still the
//! current one — and the status row's runtime half ([`Slots::view`]).
//!
//! It must never start, signal or inspect a process, and never hold its
//! lock across an `.await`: backends copy what they need out of it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hive_proto::view::RunState;
use hive_proto::AgentName;

use super::cgroup::AgentCgroup;
use super::container_name::container_name;
use super::{AgentSpec, AgentView, ExitReason, RuntimeError, UidRange};
use crate::config::{UidPool, UID_RANGE_SIZE};
use crate::store::Store;

/// What a backend's running container tells the table.
pub trait Run: Send + Sync + 'static {
    /// The container's init on the host.
    fn leader_pid(&self) -> u32;
    /// The cgroup `pause` freezes.
    fn cgroup(&self) -> &AgentCgroup;
    /// Whether it is frozen (set by [`Slots::set_paused`]).
    fn paused(&self) -> &AtomicBool;
}

/// One agent of a container runtime.
pub struct Slot<R> {
    pub spec: AgentSpec,
    /// From [`container_name`]: fixed for the agent's life.
    pub container: String,
    pub state: RunState,
    pub uid_base: Option<u32>,
    pub run: Option<Arc<R>>,
    pub crash: Option<ExitReason>,
}

impl<R> Slot<R> {
    fn new(agent: &AgentName, spec: AgentSpec) -> Self {
        Self {
            spec,
            container: container_name(agent),
            state: RunState::Stopped,
            uid_base: None,
            run: None,
            crash: None,
        }
    }

    /// Whether `run` is the container this slot holds now.
    pub fn holds(&self, run: &Arc<R>) -> bool {
        self.run.as_ref().is_some_and(|r| Arc::ptr_eq(r, run))
    }
}

/// Every agent of one runtime.
pub struct Slots<R>(Mutex<HashMap<AgentName, Slot<R>>>);

impl<R: Run> Slots<R> {
    pub fn new(agents: &BTreeMap<AgentName, AgentSpec>) -> Self {
        Self(Mutex::new(
            agents
                .iter()
                .map(|(name, spec)| (name.clone(), Slot::new(name, spec.clone())))
                .collect(),
        ))
    }

    pub fn lock(&self) -> MutexGuard<'_, HashMap<AgentName, Slot<R>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running container, `None` when stopped; refuses an unknown agent.
    pub fn running(&self, agent: &AgentName) -> Result<Option<Arc<R>>, RuntimeError> {
        let slots = self.lock();
        let slot = slots
            .get(agent)
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        Ok(slot.run.clone())
    }

    /// The agent's spec and container name; refuses an unknown agent.
    pub fn spec(&self, agent: &AgentName) -> Result<(AgentSpec, String), RuntimeError> {
        let slots = self.lock();
        let slot = slots
            .get(agent)
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        Ok((slot.spec.clone(), slot.container.clone()))
    }

    /// Marks the agent `starting` and hands out its spec and container
    /// name; refuses one that runs or is starting already.
    pub fn begin_start(&self, agent: &AgentName) -> Result<(AgentSpec, String), RuntimeError> {
        let mut slots = self.lock();
        let slot = slots
            .get_mut(agent)
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        if slot.run.is_some() || slot.state == RunState::Starting {
            return Err(RuntimeError::AlreadyRunning(agent.clone()));
        }
        slot.state = RunState::Starting;
        slot.crash = None;
        Ok((slot.spec.clone(), slot.container.clone()))
    }

    /// The claimed start succeeded (or a container was adopted): `state`
    /// (`running`, or `paused` for an adopted frozen one).
    pub fn started(&self, agent: &AgentName, run: Arc<R>, uid_base: u32, state: RunState) {
        if let Some(slot) = self.lock().get_mut(agent) {
            slot.run = Some(run);
            slot.uid_base = Some(uid_base);
            slot.state = state;
        }
    }

    /// The claimed start failed: back to `stopped`.
    pub fn start_failed(&self, agent: &AgentName) {
        if let Some(slot) = self.lock().get_mut(agent) {
            slot.state = RunState::Stopped;
        }
    }

    /// Sets the state of a running agent (stopping, paused, running).
    pub fn set_running_state(&self, agent: &AgentName, state: RunState) {
        if let Some(slot) = self.lock().get_mut(agent) {
            if slot.run.is_some() {
                slot.state = state;
            }
        }
    }

    /// `pause` / `resume`: freezes or thaws the running container's cgroup
    /// and shows it `paused` or `running`.
    pub async fn set_paused(&self, agent: &AgentName, paused: bool) -> Result<(), RuntimeError> {
        let run = self
            .running(agent)?
            .ok_or_else(|| RuntimeError::NotRunning(agent.clone()))?;
        run.cgroup()
            .set_frozen(paused)
            .await
            .map_err(RuntimeError::io(agent, "freezing", Path::new("cgroup")))?;
        run.paused().store(paused, Ordering::SeqCst);
        self.set_running_state(
            agent,
            if paused {
                RunState::Paused
            } else {
                RunState::Running
            },
        );
        Ok(())
    }

    /// `run`'s init is gone unasked: shown `crashed` at once, if `run` is
    /// still the agent's container.
    pub fn mark_crashed(&self, agent: &AgentName, run: &Arc<R>) {
        if let Some(slot) = self.lock().get_mut(agent) {
            if slot.holds(run) {
                slot.state = RunState::Crashed;
            }
        }
    }

    /// `run` has ended (asked for or not), if it is still the agent's
    /// container: `stopped`, or `crashed` with `reason`.
    pub fn finished(&self, agent: &AgentName, run: &Arc<R>, requested: bool, reason: &ExitReason) {
        if let Some(slot) = self.lock().get_mut(agent) {
            if slot.holds(run) {
                slot.run = None;
                slot.state = if requested {
                    RunState::Stopped
                } else {
                    RunState::Crashed
                };
                slot.crash = (!requested).then(|| reason.clone());
            }
        }
    }

    /// The container is gone (destroyed): `stopped`, no crash shown.
    pub fn destroyed(&self, agent: &AgentName) {
        if let Some(slot) = self.lock().get_mut(agent) {
            slot.state = RunState::Stopped;
            slot.crash = None;
        }
    }

    /// Adds an agent, or changes its spec for its next start.
    pub fn set_spec(&self, agent: &AgentName, spec: AgentSpec) {
        let mut slots = self.lock();
        match slots.get_mut(agent) {
            Some(slot) => slot.spec = spec,
            None => {
                slots.insert(agent.clone(), Slot::new(agent, spec));
            }
        }
    }

    pub fn remove(&self, agent: &AgentName) {
        self.lock().remove(agent);
    }

    pub fn contains(&self, agent: &AgentName) -> bool {
        self.lock().contains_key(agent)
    }

    /// Every agent, sorted.
    pub fn names(&self) -> Vec<AgentName> {
        let mut names: Vec<AgentName> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// The agents with a running container.
    pub fn running_names(&self) -> Vec<AgentName> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.run.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn state(&self, agent: &AgentName) -> RunState {
        self.lock()
            .get(agent)
            .map(|s| s.state)
            .unwrap_or(RunState::Unknown)
    }

    /// The status row's runtime half: container, uid range, and leader and
    /// host veth while it runs.
    pub fn view(&self, agent: &AgentName) -> AgentView {
        let slots = self.lock();
        let Some(slot) = slots.get(agent) else {
            return AgentView::of_state(RunState::Unknown);
        };
        let mut v = AgentView::of_state(slot.state);
        v.container = Some(slot.container.clone());
        v.uid_range = slot.uid_base.map(|base| UidRange {
            base,
            count: UID_RANGE_SIZE,
        });
        if let Some(run) = slot
            .run
            .as_ref()
            .filter(|_| slot.state != RunState::Crashed)
        {
            v.leader_pid = Some(run.leader_pid());
            v.host_veth = Some(format!("ve-{}", slot.container));
        }
        v.crash = slot.crash.clone();
        v
    }

    /// The agent's uid base, allocated in the store on first use (the same
    /// agent always gets the same range, no two agents one range).
    pub async fn uid_base(
        &self,
        store: &Store,
        pool: UidPool,
        agent: &AgentName,
    ) -> Result<u32, RuntimeError> {
        let name = agent.clone();
        let base = store
            .write(move |tx| tx.uid_range(&name, pool))
            .await
            .map_err(|e| RuntimeError::from_store(agent, e))?;
        if let Some(slot) = self.lock().get_mut(agent) {
            slot.uid_base = Some(base);
        }
        Ok(base)
    }

    /// Reads the ranges already allocated, so rows show them even for
    /// agents that are not running.
    pub async fn load_uid_bases(&self, store: &Store) {
        for name in self.names() {
            let n = name.clone();
            if let Ok(Some(base)) = store.read(move |r| r.uid_range(&n)).await {
                if let Some(slot) = self.lock().get_mut(&name) {
                    slot.uid_base = Some(base);
                }
            }
        }
    }
}
