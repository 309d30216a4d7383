//! The daemon: wires the [`Hive`] (store, policy, scheduler), the agent
//! sockets, the operator sockets and the runtime together, and takes them
//! down in order.
//!
//! Start: resolve the configured users and groups (fail before touching
//! anything), create the runtime and state directories, open the store,
//! install the runtime, bind every socket (`admin.sock` last, so its
//! existence means the daemon is ready), start the accept loops and the
//! scheduler, tell systemd `READY=1` (under [`run`], see the READINESS HOOK
//! in [`Daemon::start`]), then let the runtime adopt what still runs and the
//! [`Supervisor`] start the rest — a
//! container that is slow to boot is reconciling, not the daemon being
//! unready, and must not run into systemd's start timeout. Units ordered
//! after `hive-core.service` start against a daemon that answers.
//!
//! Shutdown, mini-redis style: cancel the one [`CancellationToken`] (accept
//! loops stop, connections stop reading and answer what is in flight, event
//! streams end), stop the agents, wait for every tracked task (bounded by
//! [`SHUTDOWN_GRACE`]), then close the store, so every reply a peer saw was
//! committed first. This module must never serve a request itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hive_proto::AgentName;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, RuntimeKind};
use crate::hive::Hive;
use crate::isolation::{Isolation, IsolationError};
use crate::operator_socket::{self, AdminEndpoint, WebEndpoint, OPERATOR_SOCKET_MODE};
use crate::peer::{self, PeerError};
use crate::runtime::nixos_container::{NixosContainerRuntime, NixosContainerSettings};
use crate::runtime::nspawn::{NspawnRuntime, NspawnSettings, NspawnUnavailable};
use crate::runtime::process::{ProcessRuntime, ProcessSettings, STOP_GRACE};
use crate::runtime::{AgentSpec, DetachedRuntime, Runtime, RuntimeError};
use crate::secrets::SecretStore;
use crate::store::Store;
use crate::supervision::Supervisor;
use crate::unix_socket::{self, SocketSetupError};
use crate::{agent_socket, Error};

/// Longest the daemon waits for its connections to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// `/run/hyperhive`: others may traverse (to reach `web.sock` and
/// `admin.sock`, which their own modes guard) but not list it.
pub const RUNTIME_DIR_MODE: u32 = 0o751;
/// `/var/lib/hyperhive`: root only.
pub const STATE_DIR_MODE: u32 = 0o700;
/// File descriptors the daemon asks for: every agent connection costs one.
pub const WANT_NOFILE: u64 = 65536;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Hive(#[from] Error),
    #[error(transparent)]
    Socket(#[from] SocketSetupError),
    #[error("admin_group {group:?}: {source}")]
    AdminGroup { group: String, source: PeerError },
    #[error("web_user {user:?}: {source}")]
    WebUser { user: String, source: PeerError },
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    #[error("agent {agent}: the {runtime} runtime needs a `command` to run it")]
    NoCommand {
        runtime: &'static str,
        agent: String,
    },
    #[error(transparent)]
    Nspawn(#[from] NspawnUnavailable),
}

/// What the caller may decide instead of the config.
#[derive(Default)]
pub struct Options {
    /// Use this runtime instead of the one the config names (`dev` builds
    /// its own).
    pub runtime: Option<Arc<dyn Runtime>>,
    /// Extra host paths the process runtime's sandbox hides.
    pub hide: Vec<PathBuf>,
    /// Send systemd `READY=1` once ready ([`run`] sets it; `dev` does not).
    pub notify_systemd: bool,
    /// The programs isolation runs (`nft`, `ip`, `nsenter`).
    pub tools: crate::isolation::Tools,
    /// Stop containers when the daemon exits (`dev`) instead of leaving
    /// them for the next daemon to adopt.
    pub stop_containers_on_exit: bool,
}

/// A started daemon.
pub struct Daemon {
    hive: Hive,
    runtime: Arc<dyn Runtime>,
    isolation: Option<Isolation>,
    supervisor: Supervisor,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    sockets: Vec<PathBuf>,
}

impl Daemon {
    /// Starts everything; returns once every socket accepts connections.
    pub async fn start(config: Config, opts: Options) -> Result<Self, DaemonError> {
        raise_nofile_limit();
        let admin_group = match &config.admin_group {
            Some(group) => Some((
                group.clone(),
                peer::lookup_group_gid(group).map_err(|source| DaemonError::AdminGroup {
                    group: group.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let web_user = match &config.web_user {
            Some(user) => Some(
                peer::lookup_user(user).map_err(|source| DaemonError::WebUser {
                    user: user.clone(),
                    source,
                })?,
            ),
            None => None,
        };

        unix_socket::ensure_dir(&config.runtime_dir, RUNTIME_DIR_MODE, None)?;
        unix_socket::ensure_dir(&config.state_dir, STATE_DIR_MODE, None)?;

        // The repo is the truth for the agent set: open it (seeding it on
        // first start) before the runtime and isolation are built from it.
        let hive = Hive::open(config).await?;
        let config = hive.config().clone();
        let isolation = if config.runtime.private_network() {
            Some(start_isolation(&config, &hive, opts.tools.clone()).await?)
        } else {
            None
        };
        let runtime = match opts.runtime {
            Some(rt) => rt,
            None => runtime_from_config(
                &config,
                opts.hide,
                hive.store(),
                opts.stop_containers_on_exit,
                isolation.clone(),
            )?,
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // The supervisor subscribes to the runtime's exits before anything
        // starts, and is what the operator verbs reach the runtime through.
        let supervisor = Supervisor::new(
            hive.clone(),
            Arc::clone(&runtime),
            shutdown.clone(),
            tracker.clone(),
        );
        hive.set_runtime(Arc::new(supervisor.clone()));
        let mut sockets = Vec::new();

        let agents = agent_socket::bind_all(&config)?;
        sockets.extend(agents.iter().map(|s| s.path.clone()));
        let live = agent_socket::serve_all(agents, &hive, &shutdown, &tracker);
        hive.set_agent_sockets(Arc::new(live));

        // The runtime dir is root's alone: it is its own staging dir.
        let web = unix_socket::bind(
            &config.runtime_dir,
            &config.web_socket(),
            OPERATOR_SOCKET_MODE,
            web_user.as_ref().map(|u| u.gid),
        )?;
        sockets.push(config.web_socket());
        let web_ep = WebEndpoint::new(
            web_user.map(|u| (u.name, u.uid)),
            hive.gateway_peers().clone(),
        );
        operator_socket::serve(web_ep, web, &hive, &shutdown, &tracker);

        let admin = unix_socket::bind(
            &config.runtime_dir,
            &config.admin_socket(),
            OPERATOR_SOCKET_MODE,
            admin_group.as_ref().map(|(_, gid)| *gid),
        )?;
        sockets.push(config.admin_socket());
        operator_socket::serve(
            AdminEndpoint::new(admin_group),
            admin,
            &hive,
            &shutdown,
            &tracker,
        );

        let scheduler_hive = hive.clone();
        let scheduler_stop = shutdown.clone().cancelled_owned();
        tracker.spawn(async move { scheduler_hive.run_scheduler(scheduler_stop).await });

        if let Some(isolation) = &isolation {
            let isolation = isolation.clone();
            let stop = shutdown.clone();
            let rt = Arc::clone(&runtime);
            let iso = isolation.clone();
            tracker.spawn(async move {
                isolation
                    .run_reconcile(stop, |reason| {
                        let rt = Arc::clone(&rt);
                        // The agents now, including those added at run time.
                        let agents = iso.agent_names();
                        async move { stop_every_agent(rt.as_ref(), &agents, &reason).await }
                    })
                    .await
            });
        }

        // Adopted containers run already; reconcile (below) starts the rest.
        let adopted = runtime.adopt().await;
        if !adopted.is_empty() {
            tracing::info!(agents = ?adopted, "adopted running containers");
        }
        // READINESS HOOK: everything `READY=1` promises is done by here — the
        // store is open, every socket accepts and the isolation table is in
        // (`start_isolation` above). Whatever else must hold before a unit
        // ordered after hive-core starts goes above this line too, so that
        // no agent starts and no READY=1 is sent before it.
        if opts.notify_systemd {
            notify_ready().await;
        }

        supervisor.reconcile().await;
        if let Err(e) = hive.reconcile_config(&adopted).await {
            tracing::error!(error = %e, "config reconcile failed");
        }
        tracing::info!(
            runtime_dir = %config.runtime_dir.display(),
            state_dir = %config.state_dir.display(),
            runtime = runtime.name(),
            agents = config.agents.len(),
            "hive-core ready"
        );
        Ok(Self {
            hive,
            runtime,
            isolation,
            supervisor,
            shutdown,
            tracker,
            sockets,
        })
    }

    pub fn hive(&self) -> &Hive {
        &self.hive
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Applies config changes at run time ([`Supervisor::set_agent`]).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Stops accepting, stops the agents, waits for every handler (bounded
    /// by [`SHUTDOWN_GRACE`]), then closes the store and removes the sockets.
    pub async fn shutdown(self) {
        tracing::info!("hive-core shutting down");
        self.shutdown.cancel();
        self.tracker.close();
        let drained = async {
            if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "some connections did not finish within {}s; closing anyway",
                    SHUTDOWN_GRACE.as_secs()
                );
            }
        };
        tokio::join!(self.runtime.shutdown(), drained);
        if let Some(isolation) = &self.isolation {
            let still: Vec<AgentName> = isolation
                .agent_names()
                .into_iter()
                .filter(|a| container_may_run(self.runtime.state(a)))
                .collect();
            if still.is_empty() {
                // The containers are gone; so goes the table guarding them.
                if let Err(e) = isolation.remove().await {
                    tracing::warn!(error = %e, "could not remove the hive's nftables table");
                }
            } else {
                // They run on for the next daemon to adopt: the table stays
                // to guard them, and that daemon replaces it atomically.
                isolation.leave_in_place().await;
                tracing::info!(
                    table = crate::isolation::TABLE,
                    agents = ?still,
                    "leaving the hive's nftables table for the containers still running"
                );
            }
        }
        self.hive.shutdown().await;
        for path in &self.sockets {
            if let Err(e) = unix_socket::remove_stale_socket(path) {
                tracing::warn!(error = %e, "leaving a socket behind");
            }
        }
        tracing::info!("hive-core stopped");
    }
}

/// Runs the daemon until `signal` resolves, then shuts it down.
pub async fn run(
    config: Config,
    opts: Options,
    signal: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let opts = Options {
        notify_systemd: true,
        ..opts
    };
    let daemon = Daemon::start(config, opts).await?;
    signal.await;
    notify_systemd(NotifyState::Stopping).await;
    daemon.shutdown().await;
    Ok(())
}

/// Tells systemd the daemon is ready (`READY=1` on `NOTIFY_SOCKET`; nothing
/// without one). Called only at the READINESS HOOK: the store is open and
/// every socket accepts.
async fn notify_ready() {
    notify_systemd(NotifyState::Ready).await;
}

/// Sends one state to systemd. The send is a blocking datagram write, so it
/// runs off the async workers; a failure is logged, not fatal (systemd then
/// times the unit out by itself). The variable stays set: the units say
/// `NotifyAccess=main`, so a child that inherits it cannot speak for us.
async fn notify_systemd(state: NotifyState<'static>) {
    let what = state.to_string();
    match tokio::task::spawn_blocking(move || sd_notify::notify(false, &[state])).await {
        Ok(Ok(())) => tracing::debug!(state = %what, "told systemd"),
        Ok(Err(e)) => tracing::warn!(state = %what, error = %e, "could not notify systemd"),
        Err(e) => tracing::warn!(state = %what, error = %e, "notifying systemd failed"),
    }
}

/// The runtime the config names. Under `process` and `nspawn`, every agent
/// needs a `command`; under `nixos-container` the container's flake config
/// runs the agent, so none is needed.
pub fn runtime_from_config(
    config: &Config,
    hide: Vec<PathBuf>,
    store: &Store,
    stop_containers_on_exit: bool,
    isolation: Option<Isolation>,
) -> Result<Arc<dyn Runtime>, DaemonError> {
    let specs = || -> Result<BTreeMap<AgentName, AgentSpec>, DaemonError> {
        let mut agents = BTreeMap::new();
        for (name, policy) in &config.agents {
            let spec = AgentSpec::from_config(config, name, policy).ok_or_else(|| {
                DaemonError::NoCommand {
                    runtime: config.runtime.name(),
                    agent: name.to_string(),
                }
            })?;
            agents.insert(name.clone(), spec);
        }
        Ok(agents)
    };
    match config.runtime {
        RuntimeKind::Detached => Ok(Arc::new(DetachedRuntime::default())),
        RuntimeKind::Nspawn => Ok(Arc::new(NspawnRuntime::new(
            NspawnSettings {
                agents: specs()?,
                state_dir: config.state_dir.clone(),
                stop_timeout: config.stop_timeout,
                uid_pool: config.uid_pool,
                keep_running: !stop_containers_on_exit,
                isolation,
            },
            store.clone(),
        )?)),
        RuntimeKind::NixosContainer => {
            let agents = config
                .agents
                .iter()
                .map(|(name, policy)| {
                    let spec = AgentSpec::from_config(config, name, policy).unwrap_or(AgentSpec {
                        command: Vec::new(),
                        env: policy.env.clone(),
                        limits: policy.limits,
                        ro_binds: Vec::new(),
                        socket_dir: config.agent_socket_dir(name),
                        state_dir: config.agent_state_dir(name),
                    });
                    (name.clone(), spec)
                })
                .collect();
            Ok(Arc::new(NixosContainerRuntime::new(
                NixosContainerSettings {
                    agents,
                    state_dir: config.state_dir.clone(),
                    stop_timeout: config.stop_timeout,
                    uid_pool: config.uid_pool,
                    tools: config.nixos_container.clone(),
                    isolation,
                },
                store.clone(),
            )))
        }
        RuntimeKind::Process => {
            // Process agents share the host's network: nothing to attach.
            let _ = isolation;
            let agents = specs()?;
            let mut hide = hide;
            hide.extend([config.runtime_dir.clone(), config.state_dir.clone()]);
            Ok(Arc::new(ProcessRuntime::new(ProcessSettings {
                agents,
                hide,
                stop_grace: STOP_GRACE,
                sandbox: true,
                allow_unsandboxed: config.allow_unsandboxed,
                secrets: Some(SecretStore::new(&config.state_dir)),
            })))
        }
    }
}

/// Allocates the agents' addresses and installs the hive's table. A table
/// that cannot be installed does not stop the daemon: it stays up, says why
/// in `Health`, refuses every container start and keeps trying.
async fn start_isolation(
    config: &Config,
    hive: &Hive,
    tools: crate::isolation::Tools,
) -> Result<Isolation, DaemonError> {
    let isolation =
        Isolation::new(config.network.clone(), tools, hive.store(), &config.agents).await?;
    match isolation.apply().await {
        Ok(()) => tracing::info!(
            table = crate::isolation::TABLE,
            "network isolation enforced"
        ),
        Err(e) => {
            tracing::error!(error = %e, "network isolation is not enforced; no agent container will start")
        }
    }
    hive.set_isolation(isolation.clone());
    Ok(isolation)
}

/// Whether a container may still run in `state` (anything but known gone).
fn container_may_run(state: hive_proto::view::RunState) -> bool {
    use hive_proto::view::RunState as S;
    !matches!(state, S::Stopped | S::Crashed | S::Idle)
}

/// Fail closed: the table is lost, so every container goes.
async fn stop_every_agent(rt: &dyn Runtime, agents: &[hive_proto::AgentName], reason: &str) {
    for agent in agents {
        match rt.stop(agent).await {
            Ok(()) => tracing::warn!(agent = %agent, reason, "stopped: network isolation lost"),
            Err(RuntimeError::NotRunning(_) | RuntimeError::Unsupported { .. }) => {}
            Err(e) => tracing::error!(agent = %agent, error = %e, "could not stop agent"),
        }
    }
}

/// Raises the soft open-files limit towards [`WANT_NOFILE`] (capped by the
/// hard limit): the agent sockets' connection caps assume the descriptors
/// exist.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = WANT_NOFILE.min(hard);
    if soft < want {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            tracing::warn!(error = %e, soft, "could not raise the open-files limit");
        }
    }
}
