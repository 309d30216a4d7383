//! Supervision and reconcile: what the config says should run, runs. The
//! [`Supervisor`] sits between the operator verbs and the container
//! runtime (it is the [`RuntimeControl`] the daemon installs) and keeps,
//! per agent, what the operator and the config *want* (run or stay
//! stopped), the restart budget and the idle clock. It works the same over
//! every backend, because all it needs is the [`Runtime`] trait and its exit
//! stream.
//!
//! - **Reconcile**: at start every agent the config runs is started unless
//!   the runtime already runs it (adopted); [`Supervisor::set_agent`] and
//!   [`Supervisor::remove_agent`] apply a changed config at run time.
//! - **Crashes**: an exit the runtime did not ask for is recorded in the
//!   store (reason, last journal lines), raised as `Event::AgentCrashed`
//!   and sent to every agent flagged `manager` as an `agent_crashed` item —
//!   one write, so all three happen together. The runtime shows it
//!   `crashed` until it runs again.
//! - **Restart policy**: `never` leaves it crashed; `on-failure` starts it
//!   again after `backoff · 2^n` (capped at `backoff_max`), where `n` counts
//!   the restarts in the last `window`; after `max` of them it stays
//!   crashed until an operator starts it (which clears the count). Any
//!   unasked-for exit counts as a failure, `exit 0` included: an agent is a
//!   service, not a job.
//! - **Idle stop**: an agent with an `idle_timeout` whose socket saw no
//!   traffic for that long and whose inbox holds nothing unacknowledged is
//!   stopped and shown `idle`.
//! - **Wake on demand**: anything committed to an idle agent's mailbox (a
//!   message, an answer, a due reminder) starts it again; the item waits in
//!   the store and is delivered when the agent connects, exactly as for any
//!   agent that was offline.
//!
//! Every action on one agent (operator verb, restart, idle stop, wake) runs
//! under that agent's own async lock, so an idle stop and a wake, or a
//! restart and an operator's stop, never interleave. This module must never
//! run a process itself (the runtime does) and never decide who is asking
//! (the socket did).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hive_proto::event::Event;
use hive_proto::operator::LifecycleAction;
use hive_proto::view::RunState;
use hive_proto::{AgentName, Principal};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentPolicy, RestartPolicy, RestartSettings};
use crate::hive::{Hive, Refusal, RuntimeControl};
use crate::runtime::{AgentSpec, AgentView, Runtime, RuntimeError, RuntimeExit};
use crate::store::CrashRecord;

/// How often idle clocks are checked. An agent is stopped at most this
/// long after its `idle_timeout` passed.
pub const IDLE_TICK: Duration = Duration::from_millis(250);

/// What the operator and the config want of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Run,
    Stop,
}

/// The supervisor's part of an agent's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Policy {
    restart: RestartPolicy,
    idle_timeout: Option<Duration>,
    manager: bool,
}

impl From<&AgentPolicy> for Policy {
    fn from(p: &AgentPolicy) -> Self {
        Self {
            restart: p.restart,
            idle_timeout: p.idle_timeout,
            manager: p.manager,
        }
    }
}

/// One agent as the supervisor tracks it.
#[derive(Debug)]
struct Watch {
    policy: Policy,
    want: Want,
    /// Stopped for idleness: shown `idle`, woken by its mailbox.
    idle: bool,
    /// When each restart of the current window was scheduled.
    restarts: VecDeque<Instant>,
    /// Bumped by every decision about the agent; a scheduled restart
    /// fires only if nothing was decided since.
    generation: u64,
    /// When it was last up after a start or resume (Unix ms): the idle
    /// clock starts here if the agent never speaks. Set when the runtime's
    /// start *returns*, not when it is called: a container can take longer
    /// to come up than a short `idle_timeout`, and a clock started before
    /// would stop it the moment it is up.
    since_ms: i64,
    /// What was decided about its last crash (`restarting in …`, or why it
    /// stays down), shown after the reason on its `crashed` row.
    note: Option<String>,
}

impl Watch {
    fn new(policy: Policy, want: Want) -> Self {
        Self {
            policy,
            want,
            idle: false,
            restarts: VecDeque::new(),
            generation: 0,
            since_ms: crate::now_ms(),
            note: None,
        }
    }
}

/// The supervisor; cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    hive: Hive,
    runtime: Arc<dyn Runtime>,
    settings: RestartSettings,
    watches: Mutex<HashMap<AgentName, Watch>>,
    /// One async lock per agent, serialising every action on it.
    ops: Mutex<HashMap<AgentName, Arc<tokio::sync::Mutex<()>>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Supervisor {
    /// Supervises `runtime`'s agents with the policies of `hive`'s config.
    /// Every agent the runtime starts by default ([`Runtime::autostart`])
    /// is wanted running; nothing is started until [`Supervisor::reconcile`].
    /// Its tasks stop when `shutdown` is cancelled and are tracked by
    /// `tracker`.
    pub fn new(
        hive: Hive,
        runtime: Arc<dyn Runtime>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let autostart = runtime.autostart();
        let mut watches = HashMap::new();
        for (name, policy) in &hive.config().agents {
            let want = if autostart.contains(name) {
                Want::Run
            } else {
                Want::Stop
            };
            watches.insert(name.clone(), Watch::new(Policy::from(policy), want));
        }
        let sup = Self {
            inner: Arc::new(Inner {
                settings: hive.config().restart,
                hive,
                runtime,
                watches: Mutex::new(watches),
                ops: Mutex::new(HashMap::new()),
                shutdown,
                tracker,
            }),
        };
        // Subscribe now, before anything starts, so no exit is missed.
        let exits = sup.inner.runtime.exits();
        let this = sup.clone();
        sup.inner
            .tracker
            .spawn(async move { this.watch_exits(exits).await });
        let this = sup.clone();
        sup.inner
            .tracker
            .spawn(async move { this.idle_clock().await });
        let names: Vec<AgentName> = sup.lock().keys().cloned().collect();
        for name in names {
            sup.watch_mailbox(name);
        }
        sup
    }

    /// Starts every agent that is wanted running and does not run.
    pub async fn reconcile(&self) {
        let wanted: Vec<AgentName> = self
            .lock()
            .iter()
            .filter(|(_, w)| w.want == Want::Run && !w.idle)
            .map(|(n, _)| n.clone())
            .collect();
        for agent in wanted {
            let _op = self.op_lock(&agent).await;
            if !needs_start(self.inner.runtime.state(&agent)) {
                continue;
            }
            self.mark_started(&agent);
            let started = self.inner.runtime.start(&agent).await;
            if let Err(e) = self.up(&agent, started) {
                tracing::error!(agent = %agent, error = %e, "could not start agent");
            }
        }
    }

    /// Adds an agent, or applies its changed config: the runtime gets the
    /// new spec, the supervisor the new policy, and the agent is started
    /// (restarted if it ran, so it runs what the config now says).
    pub async fn set_agent(
        &self,
        agent: &AgentName,
        spec: AgentSpec,
        policy: &AgentPolicy,
    ) -> Result<(), RuntimeError> {
        let _op = self.op_lock(agent).await;
        if let Some(iso) = self.inner.hive.isolation() {
            // Its rules are in the table before its container can start.
            iso.set_agent(agent, policy)
                .await
                .map_err(|source| RuntimeError::Isolation {
                    agent: agent.clone(),
                    source,
                })?;
        }
        self.inner.runtime.set_agent(agent, spec).await?;
        let new = {
            let mut watches = self.lock();
            let new = !watches.contains_key(agent);
            let w = watches
                .entry(agent.clone())
                .or_insert_with(|| Watch::new(Policy::from(policy), Want::Run));
            w.policy = Policy::from(policy);
            w.want = Want::Run;
            w.idle = false;
            w.generation += 1;
            new
        };
        if new {
            self.watch_mailbox(agent.clone());
        }
        self.mark_started(agent);
        // A `crashed` agent is restarted, not started: its container may
        // still be ending (the init is gone, nspawn not yet), and a start
        // then would be refused as "already running" — as after a core
        // killed mid-rebuild, whose successor adopted the dying container.
        // A backend's stop of an ended or ending container waits for it.
        let started = match self.inner.runtime.state(agent) {
            RunState::Stopped | RunState::Idle | RunState::Unknown => {
                self.inner.runtime.start(agent).await
            }
            _ => self.inner.runtime.restart(agent).await,
        };
        self.up(agent, started)
    }

    /// Stops and forgets an agent the config no longer has.
    pub async fn remove_agent(&self, agent: &AgentName) -> Result<(), RuntimeError> {
        let _op = self.op_lock(agent).await;
        if let Some(w) = self.lock().get_mut(agent) {
            w.want = Want::Stop;
            w.generation += 1;
        }
        self.inner.runtime.remove_agent(agent).await?;
        self.lock().remove(agent);
        if let Some(iso) = self.inner.hive.isolation() {
            iso.remove_agent(agent)
                .await
                .map_err(|source| RuntimeError::Isolation {
                    agent: agent.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentName, Watch>> {
        self.inner.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn op_lock(&self, agent: &AgentName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut ops = self.inner.ops.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(ops.entry(agent.clone()).or_default())
        };
        lock.lock_owned().await
    }

    /// Forgets idleness and the last crash's note: it is being started.
    fn mark_started(&self, agent: &AgentName) {
        if let Some(w) = self.lock().get_mut(agent) {
            w.idle = false;
            w.note = None;
            w.since_ms = crate::now_ms();
        }
    }

    /// Passes on the runtime's answer to a start (or restart, resume) of
    /// `agent`, starting its idle clock now if it is up: only now, once
    /// the runtime returned, does the agent run (a container start takes
    /// its time), so only now may its `idle_timeout` begin.
    fn up(&self, agent: &AgentName, started: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
        if started.is_ok() {
            if let Some(w) = self.lock().get_mut(agent) {
                w.since_ms = crate::now_ms();
            }
        }
        started
    }

    /// An operator's lifecycle verb, which also says what is wanted from
    /// now on: `stop` and `destroy` keep it down (no restart, no wake),
    /// `start`, `restart` and `rebuild` want it running and clear the
    /// restart budget.
    async fn operate(
        &self,
        agent: &AgentName,
        action: LifecycleAction,
    ) -> Result<(), RuntimeError> {
        let _op = self.op_lock(agent).await;
        let rt = &self.inner.runtime;
        let want = match action {
            LifecycleAction::Start | LifecycleAction::Restart | LifecycleAction::Rebuild => {
                Some(Want::Run)
            }
            LifecycleAction::Stop | LifecycleAction::Destroy => Some(Want::Stop),
            LifecycleAction::Pause | LifecycleAction::Resume => None,
        };
        if let Some(want) = want {
            if let Some(w) = self.lock().get_mut(agent) {
                w.want = want;
                w.idle = false;
                w.restarts.clear();
                w.generation += 1;
                w.note = None;
                w.since_ms = crate::now_ms();
            }
        }
        match action {
            LifecycleAction::Start => self.up(agent, rt.start(agent).await),
            LifecycleAction::Stop => rt.stop(agent).await,
            LifecycleAction::Restart => self.up(agent, rt.restart(agent).await),
            LifecycleAction::Pause => rt.pause(agent).await,
            LifecycleAction::Resume => {
                let resumed = rt.resume(agent).await;
                if resumed.is_ok() {
                    self.mark_started(agent);
                }
                resumed
            }
            LifecycleAction::Rebuild => self.up(agent, rt.rebuild(agent).await),
            LifecycleAction::Destroy => rt.destroy(agent, false).await,
        }
    }

    async fn purge_agent(&self, agent: &AgentName) -> Result<(), RuntimeError> {
        let _op = self.op_lock(agent).await;
        if let Some(w) = self.lock().get_mut(agent) {
            w.want = Want::Stop;
            w.idle = false;
            w.generation += 1;
        }
        self.inner.runtime.destroy(agent, true).await
    }

    // ------------------------------------------------------------ crashes --

    async fn watch_exits(&self, mut exits: tokio::sync::broadcast::Receiver<RuntimeExit>) {
        loop {
            let exit = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                r = exits.recv() => r,
            };
            match exit {
                Ok(exit) if exit.requested => {}
                Ok(exit) => self.crashed(exit).await,
                Err(RecvError::Lagged(n)) => {
                    // Exits were dropped: their records are lost, but what
                    // should run still runs.
                    tracing::error!(missed = n, "supervisor fell behind the runtime's exits");
                    self.reconcile().await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Decides what happens after an unasked-for exit, records it and tells
    /// the managers, then schedules the restart, if any.
    async fn crashed(&self, exit: RuntimeExit) {
        let agent = exit.agent.clone();
        let s = self.inner.settings;
        let (delay, note, generation, managers) = {
            let mut watches = self.lock();
            let managers: Vec<AgentName> = watches
                .iter()
                .filter(|(n, w)| w.policy.manager && **n != agent)
                .map(|(n, _)| n.clone())
                .collect();
            let Some(w) = watches.get_mut(&agent) else {
                return;
            };
            w.generation += 1;
            let now = Instant::now();
            while w
                .restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > s.window)
            {
                w.restarts.pop_front();
            }
            let (delay, note) = match (w.want, w.policy.restart) {
                (Want::Stop, _) => (None, "it was not meant to run; it stays down".to_string()),
                (Want::Run, RestartPolicy::Never) => (
                    None,
                    "restart = \"never\": it stays down until an operator starts it".to_string(),
                ),
                (Want::Run, RestartPolicy::OnFailure) if w.restarts.len() as u32 >= s.max => (
                    None,
                    format!(
                        "it was restarted {} in {} s, the most [restart] max allows: \
                         it stays down until an operator starts it",
                        times(s.max),
                        s.window.as_secs()
                    ),
                ),
                (Want::Run, RestartPolicy::OnFailure) => {
                    let n = w.restarts.len() as u32;
                    let delay = s
                        .backoff
                        .checked_mul(1u32 << n.min(20))
                        .unwrap_or(s.backoff_max)
                        .min(s.backoff_max);
                    w.restarts.push_back(now);
                    let note = format!(
                        "restarting in {} ms (restart {} of {} in {} s)",
                        delay.as_millis(),
                        n + 1,
                        s.max,
                        s.window.as_secs()
                    );
                    (Some(delay), note)
                }
            };
            w.note = Some(note.clone());
            (delay, note, w.generation, managers)
        };
        let record = CrashRecord {
            agent: agent.clone(),
            reason: exit.reason.to_string(),
            journal_tail: exit.journal_tail,
            restart_in_ms: delay.map(|d| d.as_millis() as u64),
            restart_note: note,
            managers,
        };
        if let Err(e) = self
            .inner
            .hive
            .store()
            .write(move |tx| tx.record_crash(&record))
            .await
        {
            tracing::error!(agent = %agent, error = %e, "could not record a crash");
        }
        if let Some(delay) = delay {
            let this = self.clone();
            self.inner.tracker.spawn(async move {
                tokio::select! {
                    _ = this.inner.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => this.restart_after_crash(&agent, generation).await,
                }
            });
        }
    }

    async fn restart_after_crash(&self, agent: &AgentName, generation: u64) {
        let _op = self.op_lock(agent).await;
        let current = self
            .lock()
            .get(agent)
            .is_some_and(|w| w.generation == generation && w.want == Want::Run);
        if !current || !needs_start(self.inner.runtime.state(agent)) {
            return; // someone decided otherwise meanwhile
        }
        self.mark_started(agent);
        let started = self.inner.runtime.start(agent).await;
        match self.up(agent, started) {
            Ok(()) => tracing::info!(agent = %agent, "restarted after a crash"),
            Err(e) => tracing::error!(agent = %agent, error = %e, "restart after a crash failed"),
        }
    }

    // --------------------------------------------------------- idle, wake --

    async fn idle_clock(&self) {
        let mut tick = tokio::time::interval(IDLE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = crate::now_ms();
            let hub = self.inner.hive.hub();
            let due: Vec<AgentName> = self
                .lock()
                .iter()
                .filter(|(name, w)| {
                    let Some(timeout) = w.policy.idle_timeout else {
                        return false;
                    };
                    let last = hub.last_activity(name).unwrap_or(0).max(w.since_ms);
                    w.want == Want::Run
                        && !w.idle
                        && now.saturating_sub(last) >= timeout.as_millis() as i64
                })
                .map(|(n, _)| n.clone())
                .collect();
            for agent in due {
                self.idle_stop(&agent, now).await;
            }
        }
    }

    /// Stops `agent` as idle if it still is once its lock is held: running
    /// (not paused), silent, and with nothing unacknowledged.
    async fn idle_stop(&self, agent: &AgentName, now: i64) {
        let _op = self.op_lock(agent).await;
        if self.inner.runtime.state(agent) != RunState::Running {
            return;
        }
        {
            let mut watches = self.lock();
            let Some(w) = watches.get_mut(agent) else {
                return;
            };
            let Some(timeout) = w.policy.idle_timeout else {
                return;
            };
            let last = self
                .inner
                .hive
                .hub()
                .last_activity(agent)
                .unwrap_or(0)
                .max(w.since_ms);
            if w.want != Want::Run
                || w.idle
                || now.saturating_sub(last) < timeout.as_millis() as i64
            {
                return;
            }
            // Set before the inbox is read: a message committed after the
            // read finds the flag and wakes it (after this lock is free).
            w.idle = true;
            w.generation += 1;
        }
        let who = Principal::Agent(agent.clone());
        let queued = self
            .inner
            .hive
            .store()
            .read(move |r| r.unacked(&who, 0, 1))
            .await;
        match queued {
            Ok(q) if q.is_empty() => {}
            other => {
                if let Err(e) = other {
                    tracing::error!(agent = %agent, error = %e, "idle check could not read the inbox");
                }
                self.mark_started(agent);
                return;
            }
        }
        tracing::info!(agent = %agent, "stopping an idle agent");
        match self.inner.runtime.stop(agent).await {
            Ok(()) => self.announce(agent, RunState::Idle).await,
            Err(e) => {
                tracing::error!(agent = %agent, error = %e, "idle stop failed");
                self.mark_started(agent);
            }
        }
    }

    /// Wakes `agent` whenever something is committed to its mailbox while
    /// it is idle.
    fn watch_mailbox(&self, agent: AgentName) {
        let mut inbox = self.inner.hive.subscribe_inbox(&agent);
        let this = self.clone();
        self.inner.tracker.spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = this.inner.shutdown.cancelled() => return,
                    r = inbox.recv() => r,
                };
                match got {
                    Ok(_) | Err(RecvError::Lagged(_)) => this.wake(&agent).await,
                    Err(RecvError::Closed) => return,
                }
                if !this.lock().contains_key(&agent) {
                    return; // removed from the hive
                }
            }
        });
    }

    async fn wake(&self, agent: &AgentName) {
        if !self.lock().get(agent).is_some_and(|w| w.idle) {
            return;
        }
        let _op = self.op_lock(agent).await;
        {
            let mut watches = self.lock();
            let Some(w) = watches.get_mut(agent) else {
                return;
            };
            if !w.idle || w.want != Want::Run {
                return;
            }
            w.idle = false;
            w.generation += 1;
        }
        tracing::info!(agent = %agent, "waking an idle agent: something arrived for it");
        let started = self.inner.runtime.start(agent).await;
        if let Err(e) = self.up(agent, started) {
            tracing::error!(agent = %agent, error = %e, "could not wake agent");
        }
    }

    async fn announce(&self, agent: &AgentName, state: RunState) {
        let event = Event::AgentRunState {
            agent: agent.clone(),
            state,
        };
        if let Err(e) = self
            .inner
            .hive
            .store()
            .write(move |tx| tx.event(event))
            .await
        {
            tracing::error!(agent = %agent, error = %e, "could not record a run state");
        }
    }

    fn state_of(&self, agent: &AgentName, runtime: RunState) -> RunState {
        let idle = self.lock().get(agent).is_some_and(|w| w.idle);
        match runtime {
            RunState::Stopped if idle => RunState::Idle,
            other => other,
        }
    }

    /// Agents the supervisor tracks and what is wanted of each (for tests
    /// and `hivectl`-style listings).
    pub fn wanted(&self) -> BTreeMap<AgentName, bool> {
        self.lock()
            .iter()
            .map(|(n, w)| (n.clone(), w.want == Want::Run))
            .collect()
    }
}

/// "once", "twice", "3 times".
fn times(n: u32) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

/// Whether an agent in this state has to be started to run.
fn needs_start(state: RunState) -> bool {
    matches!(
        state,
        RunState::Stopped | RunState::Crashed | RunState::Idle | RunState::Unknown
    )
}

impl RuntimeControl for Supervisor {
    fn name(&self) -> &'static str {
        self.inner.runtime.name()
    }

    fn lifecycle<'a>(
        &'a self,
        agent: &'a AgentName,
        action: LifecycleAction,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { Ok(self.operate(agent, action).await?) })
    }

    fn purge<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { Ok(self.purge_agent(agent).await?) })
    }

    fn journal<'a>(
        &'a self,
        agent: &'a AgentName,
        lines: u32,
    ) -> BoxFuture<'a, Result<Vec<String>, Refusal>> {
        Box::pin(async move { Ok(self.inner.runtime.journal(agent, lines)?) })
    }

    fn run_state(&self, agent: &AgentName) -> RunState {
        self.state_of(agent, self.inner.runtime.state(agent))
    }

    fn deploy<'a>(
        &'a self,
        agent: &'a AgentName,
        spec: AgentSpec,
        policy: &'a AgentPolicy,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            match self.set_agent(agent, spec, policy).await {
                // Nothing runs under this runtime: the policy is all there is.
                Err(RuntimeError::Unsupported { .. }) => Ok(()),
                other => Ok(other?),
            }
        })
    }

    fn unsandboxed(&self) -> bool {
        self.inner.runtime.unsandboxed()
    }

    fn agent_view(&self, agent: &AgentName) -> AgentView {
        let mut view = self.inner.runtime.view(agent);
        view.state = self.state_of(agent, view.state);
        if view.state == RunState::Crashed {
            view.crash_note = self.lock().get(agent).and_then(|w| w.note.clone());
        }
        view
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor over a stand-in runtime (a mock, so only here): what
    //! the real runtimes cannot show on demand, like a slow start.

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::config::{Config, RawConfig};
    use crate::runtime::ExitFeed;

    /// One agent whose start takes `start_takes`, as a container that is
    /// slow to come up; records when its start returned and when it was
    /// stopped.
    struct SlowRuntime {
        agent: AgentName,
        start_takes: Duration,
        state: Mutex<RunState>,
        up_at: Mutex<Option<Instant>>,
        stopped_at: Mutex<Option<Instant>>,
        stops: AtomicU32,
        exits: ExitFeed,
    }

    impl Runtime for SlowRuntime {
        fn name(&self) -> &'static str {
            "slow"
        }

        fn start<'a>(&'a self, _: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
            Box::pin(async move {
                *self.state.lock().unwrap() = RunState::Starting;
                tokio::time::sleep(self.start_takes).await;
                *self.state.lock().unwrap() = RunState::Running;
                *self.up_at.lock().unwrap() = Some(Instant::now());
                Ok(())
            })
        }

        fn stop<'a>(&'a self, _: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
            Box::pin(async move {
                *self.state.lock().unwrap() = RunState::Stopped;
                *self.stopped_at.lock().unwrap() = Some(Instant::now());
                self.stops.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }

        fn exits(&self) -> tokio::sync::broadcast::Receiver<RuntimeExit> {
            self.exits.subscribe()
        }

        fn state(&self, _: &AgentName) -> RunState {
            *self.state.lock().unwrap()
        }

        fn autostart(&self) -> Vec<AgentName> {
            vec![self.agent.clone()]
        }
    }

    /// An agent whose container was seen ending (`crashed`) but has not
    /// ended yet: a start is refused as "already running" until it has, a
    /// stop waits for that, as the container runtimes do.
    struct EndingRuntime {
        agent: AgentName,
        ends_at: Instant,
        starts: AtomicU32,
        exits: ExitFeed,
    }

    impl Runtime for EndingRuntime {
        fn name(&self) -> &'static str {
            "ending"
        }

        fn start<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
            Box::pin(async move {
                if Instant::now() < self.ends_at {
                    return Err(RuntimeError::AlreadyRunning(agent.clone()));
                }
                self.starts.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }

        fn stop<'a>(&'a self, _: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
            Box::pin(async move {
                tokio::time::sleep_until(self.ends_at.into()).await;
                Ok(())
            })
        }

        fn set_agent<'a>(
            &'a self,
            _: &'a AgentName,
            _: AgentSpec,
        ) -> BoxFuture<'a, Result<(), RuntimeError>> {
            Box::pin(async { Ok(()) })
        }

        fn exits(&self) -> tokio::sync::broadcast::Receiver<RuntimeExit> {
            self.exits.subscribe()
        }

        fn state(&self, _: &AgentName) -> RunState {
            if self.starts.load(Ordering::SeqCst) > 0 {
                RunState::Running
            } else {
                RunState::Crashed
            }
        }

        fn autostart(&self) -> Vec<AgentName> {
            vec![self.agent.clone()]
        }
    }

    /// A config deploy that finds the agent's old container still ending
    /// (a core killed mid-rebuild, its successor having adopted the dying
    /// container) waits for it and starts the new spec, instead of failing
    /// "already running" and leaving the agent on the old config.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deploy_onto_a_container_still_ending_waits_for_it_instead_of_failing_as_already_running(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let raw: RawConfig = toml::from_str(&format!(
            "state_dir = {:?}\nruntime_dir = {:?}\n[agents.ending]\ncommand = [\"true\"]\n",
            dir.path(),
            dir.path()
        ))
        .unwrap();
        let config = Config::from_raw(raw).unwrap();
        let agent = AgentName::new("ending").unwrap();
        let policy = config.agents[&agent].clone();
        let spec = AgentSpec::from_config(&config, &agent, &policy).unwrap();
        let hive = Hive::open(config).await.unwrap();
        let rt = Arc::new(EndingRuntime {
            agent: agent.clone(),
            ends_at: Instant::now() + Duration::from_millis(300),
            starts: AtomicU32::new(0),
            exits: ExitFeed::default(),
        });
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(hive, rt.clone(), shutdown.clone(), TaskTracker::new());
        sup.set_agent(&agent, spec, &policy)
            .await
            .expect("the deploy waits for the old container, then starts");
        assert_eq!(rt.starts.load(Ordering::SeqCst), 1);
        assert_eq!(sup.run_state(&agent), RunState::Running);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_idle_clock_starts_when_a_slow_start_has_returned_not_when_it_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let raw: RawConfig = toml::from_str(&format!(
            "state_dir = {:?}\nruntime_dir = {:?}\n[agents.slow]\nidle_timeout = 1\n",
            dir.path(),
            dir.path()
        ))
        .unwrap();
        let hive = Hive::open(Config::from_raw(raw).unwrap()).await.unwrap();
        let agent = AgentName::new("slow").unwrap();
        let rt = Arc::new(SlowRuntime {
            agent: agent.clone(),
            // Longer than idle_timeout: a clock started when the start was
            // asked for has run out by the time the agent is up.
            start_takes: Duration::from_millis(1500),
            state: Mutex::new(RunState::Stopped),
            up_at: Mutex::new(None),
            stopped_at: Mutex::new(None),
            stops: AtomicU32::new(0),
            exits: ExitFeed::default(),
        });
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(hive, rt.clone(), shutdown.clone(), TaskTracker::new());
        sup.reconcile().await;
        let end = Instant::now() + Duration::from_secs(30);
        while rt.stops.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < end, "never stopped as idle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sup.run_state(&agent), RunState::Idle);
        // A lower bound the supervisor must keep, not a speed: it had its
        // whole idle_timeout once it was up.
        let up = rt.up_at.lock().unwrap().expect("started");
        let stopped = rt.stopped_at.lock().unwrap().expect("stopped");
        assert!(
            stopped.duration_since(up) >= Duration::from_millis(990),
            "stopped {:?} after it was up, before its idle_timeout (1 s)",
            stopped.duration_since(up)
        );
        assert_eq!(rt.stops.load(Ordering::SeqCst), 1);
        shutdown.cancel();
    }
}
