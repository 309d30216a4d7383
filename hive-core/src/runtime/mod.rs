//! Container runtimes: how an agent is started, stopped and observed.
//!
//! [`Runtime`] is shaped for the three backends of DESIGN §5 — every
//! lifecycle verb of the operator protocol is one method, each answering
//! `unsupported` by default, so `nspawn` and `nixos-container` can fill in
//! exactly what they support. Only [`process::ProcessRuntime`] (child
//! processes, development only) and [`DetachedRuntime`] (nothing is
//! started; agents attach to their sockets by hand) exist today.
//!
//! [`Control`] adapts a runtime to [`crate::hive::RuntimeControl`], the
//! narrow interface the operator verbs call. This module must never touch
//! the store or the sockets: it runs agents, nothing else.

pub mod container_name;
pub mod process;

use std::sync::Arc;

use futures::future::BoxFuture;
use hive_proto::operator::LifecycleAction;
use hive_proto::view::{ErrorCode, RunState};
use hive_proto::AgentName;

use crate::hive::{Refusal, RuntimeControl};

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
}

impl RuntimeError {
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
            RuntimeError::Spawn { .. } | RuntimeError::Signal { .. } => {
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

    /// Remove the agent's container (its state dir stays).
    fn destroy<'a>(&'a self, agent: &'a AgentName) -> Res<'a> {
        let _ = agent;
        Box::pin(async move { Err(RuntimeError::unsupported(self.name(), "destroy")) })
    }

    /// What the runtime last saw of the agent; cheap, never blocks.
    fn state(&self, agent: &AgentName) -> RunState;

    /// The last `lines` lines the agent wrote to its stdout and stderr.
    fn journal(&self, agent: &AgentName, lines: u32) -> Result<Vec<String>, RuntimeError> {
        let _ = (agent, lines);
        Err(RuntimeError::unsupported(self.name(), "journal"))
    }

    /// Agents this runtime starts when the daemon starts.
    fn autostart(&self) -> Vec<AgentName> {
        Vec::new()
    }

    /// Stops every agent it started, for the daemon's exit.
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
        LifecycleAction::Destroy => rt.destroy(agent).await,
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
}

/// Starts nothing: each agent's socket exists and whatever connects to it
/// is that agent. For tests, and for harnesses started by hand.
#[derive(Debug, Default)]
pub struct DetachedRuntime;

impl Runtime for DetachedRuntime {
    fn name(&self) -> &'static str {
        "detached"
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
        let rt = DetachedRuntime;
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
