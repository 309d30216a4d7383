//! Container runtimes: how an agent is started, stopped and observed.
//!
//! [`Runtime`] is shaped for the three backends of DESIGN §5 — every
//! lifecycle verb of the operator protocol is one method, each answering
//! `unsupported` by default, so each backend fills in exactly what it
//! supports. What every backend shares lives beside them:
//!
//! - [`supervise`]: spawn a child, watch it, stop it (SIGTERM, grace,
//!   SIGKILL); also how `dev` runs `hive-web`.
//! - [`journal`]: the bounded journal of what an agent wrote.
//! - [`process`]: the `process` backend (bubblewrap, development only).
//! - [`nspawn`]: `systemd-nspawn` driven directly; [`nixos_container`]:
//!   NixOS's `nixos-container` (production on NixOS). What the two share:
//!   [`slots`] (the agent table and its transitions), [`agent_dirs`],
//!   [`cgroup`] (limits, freezer, OOM count), [`pidfd`] (crash watch),
//!   [`purge`], [`container_name`].
//! - [`DetachedRuntime`]: nothing is started; agents attach by hand.
//!
//! Agents come and go at run time ([`Runtime::set_agent`],
//! [`Runtime::remove_agent`]), each described by an [`AgentSpec`]; every
//! exit of an agent's program is published on [`Runtime::exits`] as a
//! [`RuntimeExit`] for the supervision layer, and [`Runtime::view`] gives
//! the status row's runtime half ([`AgentView`]).
//!
//! [`Control`] adapts a runtime to [`crate::hive::RuntimeControl`], the
//! narrow interface the operator verbs call. This module must never touch
//! the store or the sockets: it runs agents, nothing else, and never
//! decides whether a crashed agent is restarted (that is the supervision
//! layer's policy).

pub mod agent_dirs;
pub mod cgroup;
pub mod container_name;
pub mod journal;
pub mod nixos_container;
pub mod nspawn;
pub mod pidfd;
pub mod process;
pub mod purge;
pub mod slots;
pub mod supervise;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use hive_proto::operator::LifecycleAction;
use hive_proto::view::{ErrorCode, RunState};
use hive_proto::AgentName;
use tokio::sync::broadcast;

use crate::config::{AgentPolicy, Config, Limits};
use crate::hive::{Refusal, RuntimeControl};
use crate::secrets::{SecretError, SecretStore};

/// Journal lines carried by a [`RuntimeExit`].
pub const EXIT_TAIL_LINES: usize = 20;
/// Exits buffered for a slow subscriber of [`Runtime::exits`]; one that
/// falls further behind sees `Lagged` and should re-read [`Runtime::view`].
pub const EXIT_FEED_CAPACITY: usize = 256;

/// A host path bound read-only into the agent's container or sandbox
/// (secrets at `/run/secrets`, tools the command needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoBind {
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub inside: PathBuf,
    /// Shown inside with the host's owners mapped into the container's
    /// user namespace (the host's root is the container's root: nspawn's
    /// `--bind-ro=…:idmap`), so a root-only `0400` file (a secret) is
    /// readable by root inside and by no other uid. Without it, a
    /// root-owned file appears owned by `nobody`. The process runtime needs
    /// nothing of the kind: its agents keep the daemon's uid.
    pub idmap: bool,
}

/// Everything a runtime needs to run one agent; built from the agent's
/// validated config ([`AgentSpec::from_config`]) or handed over at run time
/// by the config repo for approvals and spawns.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// argv run inside the container; `command[0]` is looked up on `PATH`
    /// unless absolute.
    pub command: Vec<String>,
    /// Extra environment (never secrets: those are files under `ro_binds`).
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub ro_binds: Vec<RoBind>,
    /// Host path of `<runtime_dir>/agents/<name>/` (holds `agent.sock`),
    /// seen inside as `/run/hive`.
    pub socket_dir: PathBuf,
    /// Host path of the agent's state dir, seen inside as `/state`;
    /// created if missing.
    pub state_dir: PathBuf,
}

impl AgentSpec {
    /// The spec the daemon config gives `name`; `None` when it has no
    /// `command` (nothing to run).
    pub fn from_config(config: &Config, name: &AgentName, policy: &AgentPolicy) -> Option<Self> {
        Some(Self {
            command: policy.command.clone()?,
            env: policy.env.clone(),
            limits: policy.limits,
            ro_binds: Vec::new(),
            socket_dir: config.agent_socket_dir(name),
            state_dir: config.agent_state_dir(name),
        })
    }

    /// This spec with `agent`'s secrets from `store` appended to
    /// [`AgentSpec::ro_binds`] (at `/run/secrets/<KEY>`), read now: a
    /// runtime calls it at each start, so a secret set or removed is seen
    /// at the next start and the stored spec never holds them.
    pub fn with_secrets(
        mut self,
        store: &SecretStore,
        agent: &AgentName,
    ) -> Result<Self, RuntimeError> {
        let binds = store.binds(agent).map_err(|source| RuntimeError::Secrets {
            agent: agent.clone(),
            source,
        })?;
        self.ro_binds.extend(binds);
        Ok(self)
    }
}

/// Why an agent's program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// The kernel's OOM killer killed it for exceeding `limits.memory`.
    OutOfMemory,
    /// An adopted container's leader is gone and its status is unknowable
    /// (it was not our child).
    Vanished,
}

impl ExitReason {
    /// From a child's wait status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Exited(code),
            (None, Some(sig)) => Self::Signaled(sig),
            (None, None) => Self::Vanished,
        }
    }

    /// Whether this is a clean `exit 0`.
    pub fn is_success(&self) -> bool {
        *self == Self::Exited(0)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exited with status {code}"),
            Self::Signaled(sig) => match nix::sys::signal::Signal::try_from(*sig) {
                Ok(s) => write!(f, "killed by signal {sig} ({s})"),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            Self::OutOfMemory => f.write_str("killed by the kernel: out of memory (OOM)"),
            Self::Vanished => f.write_str("its init is gone (exit status unknown)"),
        }
    }
}

/// One exit of an agent's program, published on [`Runtime::exits`].
#[derive(Clone, Debug)]
pub struct RuntimeExit {
    pub agent: AgentName,
    pub reason: ExitReason,
    /// A stop was asked for (stop, restart, destroy, shutdown): not a crash.
    pub requested: bool,
    /// The last [`EXIT_TAIL_LINES`] lines of its journal, oldest first.
    pub journal_tail: Vec<String>,
    /// When the runtime saw it, ms since the epoch.
    pub at_ms: i64,
}

/// The sending half of [`Runtime::exits`], owned by a backend.
#[derive(Clone)]
pub struct ExitFeed(broadcast::Sender<RuntimeExit>);

impl Default for ExitFeed {
    fn default() -> Self {
        Self(broadcast::channel(EXIT_FEED_CAPACITY).0)
    }
}

impl ExitFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<RuntimeExit> {
        self.0.subscribe()
    }

    /// Publishes an exit (and logs it); nobody listening is fine.
    pub fn publish(&self, exit: RuntimeExit) {
        if exit.requested {
            tracing::info!(agent = %exit.agent, reason = %exit.reason, "agent stopped");
        } else {
            tracing::warn!(agent = %exit.agent, reason = %exit.reason, "agent exited unexpectedly");
        }
        let _ = self.0.send(exit);
    }
}

/// A range of host uids (and gids) an agent's user namespace maps onto:
/// root inside is `base` outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UidRange {
    pub base: u32,
    pub count: u32,
}

/// What a runtime knows of one agent, for its status row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView {
    pub state: RunState,
    /// `h-<name>`, shortened where a tool's limit needs it.
    pub container: Option<String>,
    pub uid_range: Option<UidRange>,
    /// The container's init (or the process) while it runs.
    pub leader_pid: Option<u32>,
    /// The host side of its veth, for the network layer.
    pub host_veth: Option<String>,
    /// Why it last ended, when that was not asked for.
    pub crash: Option<ExitReason>,
    /// What the supervision layer decided about that crash (`restarting in
    /// 200 ms …`, or why it stays down); set only by the supervisor, shown
    /// after the reason.
    pub crash_note: Option<String>,
}

impl AgentView {
    /// A view with only a state.
    pub fn of_state(state: RunState) -> Self {
        Self {
            state,
            container: None,
            uid_range: None,
            leader_pid: None,
            host_veth: None,
            crash: None,
            crash_note: None,
        }
    }
}

/// Why a runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{action} is not supported by the {runtime} runtime{hint}")]
    Unsupported {
        runtime: &'static str,
        action: &'static str,
        /// Empty, or a sentence (with a leading `; `) saying what to do instead.
        hint: &'static str,
    },
    #[error("agent {0} is not managed by this runtime")]
    UnknownAgent(AgentName),
    #[error("agent {0} is already running")]
    AlreadyRunning(AgentName),
    #[error("agent {0} is not running")]
    NotRunning(AgentName),
    #[error("agent {0} not started: {msg}", msg = process::NO_SANDBOX)]
    NoSandbox(AgentName),
    #[error("starting agent {agent}: {what}: {source}")]
    Spawn {
        agent: AgentName,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("signalling agent {agent}: {source}")]
    Signal {
        agent: AgentName,
        source: nix::Error,
    },
    #[error("agent {agent}: {what} {path}: {source}")]
    Io {
        agent: AgentName,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store refused (e.g. the uid pool is exhausted).
    #[error("agent {agent}: {message}")]
    Refused {
        agent: AgentName,
        code: ErrorCode,
        message: String,
    },
    /// The network isolation layer refused (not enforced, attach failed).
    #[error("agent {agent}: {source}")]
    Isolation {
        agent: AgentName,
        source: crate::isolation::IsolationError,
    },
    /// Its secrets could not be listed for the start (never a value).
    #[error("agent {agent}: reading its secrets: {source}")]
    Secrets {
        agent: AgentName,
        source: SecretError,
    },
    /// A container tool (`nixos-container`, `machinectl`) failed.
    #[error("agent {agent}: `{command}` failed ({status}): {detail}")]
    Tool {
        agent: AgentName,
        command: String,
        status: String,
        /// Its last line of output, or why it could not run.
        detail: String,
    },
    #[error("agent {agent}: refusing to purge {path}: {why}")]
    PurgeRefused {
        agent: AgentName,
        path: PathBuf,
        why: &'static str,
    },
}

impl RuntimeError {
    /// The store refused or failed while recording something for `agent`.
    pub fn from_store(agent: &AgentName, e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Refused { code, message } => Self::Refused {
                agent: agent.clone(),
                code,
                message,
            },
            other => Self::Io {
                agent: agent.clone(),
                what: "recording in the store",
                path: PathBuf::from("hive.db"),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }

    /// A purge of `agent`'s dirs refused or failed.
    pub fn from_purge(agent: &AgentName, e: purge::PurgeError) -> Self {
        use purge::PurgeError as P;
        let refused = |path, why| Self::PurgeRefused {
            agent: agent.clone(),
            path,
            why,
        };
        match e {
            P::Symlink { path } => refused(path, "it is a symlink"),
            P::MountPoint { path } => refused(path, "it is a mount point"),
            P::NotADirectory { path } => refused(path, "it is not a directory"),
            P::TooDeep { path } => refused(path, "it is nested too deep"),
            P::Io { path, source } => Self::Io {
                agent: agent.clone(),
                what: "purging",
                path,
                source,
            },
        }
    }

    /// An I/O failure of `what` on `path`, for `map_err`.
    pub fn io(
        agent: &AgentName,
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let agent = agent.clone();
        let path = path.to_owned();
        move |source| Self::Io {
            agent,
            what,
            path,
            source,
        }
    }

    fn unsupported(runtime: &'static str, action: &'static str) -> Self {
        Self::Unsupported {
            runtime,
            action,
            hint: "",
        }
    }
}

impl From<RuntimeError> for Refusal {
    fn from(e: RuntimeError) -> Self {
        let code = match &e {
            RuntimeError::Unsupported { .. } => ErrorCode::Unsupported,
            RuntimeError::UnknownAgent(_) => ErrorCode::NotFound,
            RuntimeError::AlreadyRunning(_) | RuntimeError::NotRunning(_) => ErrorCode::Conflict,
            RuntimeError::NoSandbox(_) => ErrorCode::Unavailable,
            RuntimeError::PurgeRefused { .. } => ErrorCode::Conflict,
            RuntimeError::Refused { code, .. } => *code,
            RuntimeError::Isolation { .. } => ErrorCode::Unavailable,
            RuntimeError::Spawn { .. }
            | RuntimeError::Tool { .. }
            | RuntimeError::Signal { .. }
            | RuntimeError::Io { .. }
            | RuntimeError::Secrets { .. } => {
                tracing::error!(error = %e, "runtime failure");
                ErrorCode::Internal
            }
        };
        Refusal::new(code, e.to_string())
    }
}

type Res<'a, T = ()> = BoxFuture<'a, Result<T, RuntimeError>>;

/// One container runtime. Every lifecycle method is per agent and answers
/// "not supported by this runtime" unless the backend overrides it.
pub trait Runtime: Send + Sync + 'static {
    /// `process`, `detached`, `nspawn`, `nixos-container`.
    fn name(&self) -> &'static str;

    fn start<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "start")) })
    }

    fn stop<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "stop")) })
    }

    /// Stop, then start. Backends with a native restart override it.
    fn restart<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        Box::pin(async move {
            self.stop(agent).await?;
            self.start(agent).await
        })
    }

    fn pause<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "pause")) })
    }

    fn resume<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "resume")) })
    }

    /// Rebuild the agent's container from its config (and restart it).
    fn rebuild<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "rebuild")) })
    }

    /// Removes the agent's container; its state dir stays unless `purge`,
    /// which removes that agent's own dirs and nothing else.
    fn destroy<'a>(&'a self, agent: &'a AgentName, purge: bool) -> Res<'a> {
        let _ = (agent, purge);
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "destroy")) })
    }

    /// Adds an agent, or changes how it runs from its next start (a running
    /// agent keeps running as it was until restarted or rebuilt).
    fn set_agent<'a>(&'a self, agent: &'a AgentName, spec: AgentSpec) -> Res<'a> {
        let _ = (agent, spec);
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "adding agents")) })
    }

    /// Stops the agent if it runs and forgets it; its dirs stay.
    fn remove_agent<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "removing agents")) })
    }

    /// Every exit of an agent's program from now on, asked for or not.
    fn exits(&self) -> broadcast::Receiver<RuntimeExit>;

    /// Whether agents run without any isolation (the `process` runtime
    /// without bubblewrap, allowed by `allow_unsandboxed`): every dashboard
    /// page then says so.
    fn unsandboxed(&self) -> bool {
        false
    }

    /// What the runtime last saw of the agent; cheap, never blocks.
    fn state(&self, agent: &AgentName) -> RunState;

    /// The runtime's half of the agent's status row; cheap, never blocks.
    fn view(&self, agent: &AgentName) -> AgentView {
        AgentView::of_state(self.state(agent))
    }

    /// Finds agents still running from a previous daemon and takes them
    /// over instead of starting them twice; returns the adopted ones.
    fn adopt(&self) -> BoxFuture<'_, Vec<AgentName>> {
        Box::pin(async { Vec::new() })
    }

    /// The last `lines` lines the agent wrote to its stdout and stderr.
    fn journal(&self, agent: &AgentName, lines: u32) -> Result<Vec<String>, RuntimeError> {
        let _ = (agent, lines);
        Err(RuntimeError::unsupported(self.name(), "journal"))
    }

    /// Agents this runtime starts when the daemon starts.
    fn autostart(&self) -> Vec<AgentName> {
        Vec::new()
    }

    /// The daemon is exiting: the `process` runtime stops its children;
    /// a container runtime may leave its containers running for the next
    /// daemon to [`adopt`](Runtime::adopt).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Dispatches an operator's lifecycle action to the runtime.
pub async fn apply(
    rt: &dyn Runtime,
    agent: &AgentName,
    action: LifecycleAction,
) -> Result<(), RuntimeError> {
    match action {
        LifecycleAction::Start => rt.start(agent).await,
        LifecycleAction::Stop => rt.stop(agent).await,
        LifecycleAction::Restart => rt.restart(agent).await,
        LifecycleAction::Pause => rt.pause(agent).await,
        LifecycleAction::Resume => rt.resume(agent).await,
        LifecycleAction::Rebuild => rt.rebuild(agent).await,
        LifecycleAction::Destroy => rt.destroy(agent, false).await,
    }
}

/// A runtime as the hive's operator verbs see it.
pub struct Control(pub Arc<dyn Runtime>);

impl RuntimeControl for Control {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn lifecycle<'a>(
        &'a self,
        agent: &'a AgentName,
        action: LifecycleAction,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { Ok(apply(self.0.as_ref(), agent, action).await?) })
    }

    fn purge<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { Ok(self.0.destroy(agent, true).await?) })
    }

    fn journal<'a>(
        &'a self,
        agent: &'a AgentName,
        lines: u32,
    ) -> BoxFuture<'a, Result<Vec<String>, Refusal>> {
        Box::pin(async move { Ok(self.0.journal(agent, lines)?) })
    }

    fn run_state(&self, agent: &AgentName) -> RunState {
        self.0.state(agent)
    }

    fn deploy<'a>(
        &'a self,
        agent: &'a AgentName,
        spec: AgentSpec,
        _policy: &'a AgentPolicy,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let rt = self.0.as_ref();
            match rt.set_agent(agent, spec).await {
                Err(RuntimeError::Unsupported { .. }) => return Ok(()),
                other => other?,
            }
            match rt.state(agent) {
                RunState::Stopped | RunState::Crashed | RunState::Idle | RunState::Unknown => {
                    Ok(rt.start(agent).await?)
                }
                _ => Ok(rt.restart(agent).await?),
            }
        })
    }

    fn agent_view(&self, agent: &AgentName) -> AgentView {
        self.0.view(agent)
    }

    fn unsandboxed(&self) -> bool {
        self.0.unsandboxed()
    }
}

/// Starts nothing: each agent's socket exists and whatever connects to it
/// is that agent. For tests, and for harnesses started by hand.
#[derive(Default)]
pub struct DetachedRuntime {
    /// Never sent on: nothing runs, so nothing exits.
    exits: ExitFeed,
}

impl Runtime for DetachedRuntime {
    fn name(&self) -> &'static str {
        "detached"
    }

    fn exits(&self) -> broadcast::Receiver<RuntimeExit> {
        self.exits.subscribe()
    }

    fn state(&self, _agent: &AgentName) -> RunState {
        RunState::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detached_refuses_every_lifecycle_action_clearly() {
        let rt = DetachedRuntime::default();
        let a = AgentName::new("alice").unwrap();
        for action in [
            LifecycleAction::Start,
            LifecycleAction::Stop,
            LifecycleAction::Restart,
            LifecycleAction::Pause,
            LifecycleAction::Resume,
            LifecycleAction::Rebuild,
            LifecycleAction::Destroy,
        ] {
            let err = apply(&rt, &a, action).await.unwrap_err();
            assert!(
                err.to_string()
                    .contains("not supported by the detached runtime"),
                "{err}"
            );
            assert_eq!(Refusal::from(err).code, ErrorCode::Unsupported);
        }
    }
}
