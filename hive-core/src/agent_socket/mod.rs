//! The agent sockets: one `agent.sock` per configured agent, at
//! `<runtime_dir>/agents/<name>/agent.sock`, each with its own accept loop.
//!
//! **Identity = the listener.** The accept loop for agent X hands X to every
//! connection it accepts; nothing a peer sends ever names the sender. This
//! module owns binding, the connection caps and the accept loops;
//! [`conn`] owns one connection's reading, pipelining, delivery and writing.
//! It must never apply policy (that is [`crate::hive`]'s) and never let one
//! connection's behaviour stall another's.

mod conn;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hive_proto::agent::{ErrorBody, ResponseLine};
use hive_proto::view::ErrorCode;
use hive_proto::AgentName;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hive::{Hive, Refusal};
use crate::unix_socket::{self, SocketSetupError};

/// Requests one connection may have in flight before the core stops reading
/// from it (back-pressure, not an error): enough to keep the store's group
/// commit full for a pipelining client.
pub const MAX_IN_FLIGHT: usize = 256;
/// Connections open at once across every agent socket; each costs a file
/// descriptor and a task.
pub const MAX_AGENT_CONNECTIONS_TOTAL: usize = 4096;
/// Lines queued for one connection's writer before the connection waits for
/// the peer to read; [`hive_proto::agent::MAX_PENDING_OUT_BYTES`] bounds
/// the same queue in bytes.
pub const WRITE_QUEUE: usize = 1024;
/// Longest a line waits for room in a full write queue (in lines or in
/// bytes) before the connection is closed as a slow consumer. A peer that
/// reads at all frees room far sooner; one that has stopped reading is
/// dropped, and what it was pushed but did not acknowledge is delivered
/// again on its next connection.
pub const SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages read from the store per page when a listener catches up (after a
/// full `recv` page or after its push channel lagged).
pub const CATCH_UP_PAGE: u32 = 512;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// `<runtime_dir>/agents/`: root only, so no host user reaches any agent's
/// socket; each agent reaches its own through the bind mount of its leaf.
pub const AGENTS_DIR_MODE: u32 = 0o700;
/// `<runtime_dir>/agents/<name>/`: open enough for the container's
/// (user-namespaced) uid, which sees only this directory, through its bind
/// mount (DESIGN §2).
pub const AGENT_DIR_MODE: u32 = 0o755;
/// `agent.sock` itself is world-connectable *inside its directory*: the
/// gate is the 0700 `agents/` parent on the host and the bind mount in the
/// container, not the socket's mode. A stricter mode would only break agents
/// whose uid is remapped by their user namespace.
pub const AGENT_SOCKET_MODE: u32 = 0o666;

/// A bound, not yet served, agent socket.
pub struct BoundAgentSocket {
    pub agent: AgentName,
    pub path: PathBuf,
    listener: UnixListener,
    max_connections: usize,
}

/// `<runtime_dir>/agents/.staging/`: where agent sockets are bound before
/// they are renamed into their agent's directory. Root only, inside the
/// root-only `agents/`, and not an agent name (those never start with `.`).
pub const STAGING_DIR: &str = ".staging";

/// Creates `<runtime_dir>/agents/` (and its staging directory) and one
/// directory and socket per configured agent. The runtime dir itself must
/// already exist. An agent whose directory or socket path holds something
/// that is not ours (a planted link, a FIFO, a file) is refused alone, with
/// an error in the log naming it; the others are bound and start.
pub fn bind_all(config: &Config) -> Result<Vec<BoundAgentSocket>, SocketSetupError> {
    let agents_dir = config.runtime_dir.join("agents");
    unix_socket::ensure_dir(&agents_dir, AGENTS_DIR_MODE, None)?;
    let staging = agents_dir.join(STAGING_DIR);
    unix_socket::ensure_dir(&staging, AGENTS_DIR_MODE, None)?;
    let mut out = Vec::with_capacity(config.agents.len());
    for (agent, policy) in &config.agents {
        let path = config.agent_socket(agent);
        let bound = unix_socket::ensure_dir(&config.agent_socket_dir(agent), AGENT_DIR_MODE, None)
            .and_then(|()| unix_socket::bind(&staging, &path, AGENT_SOCKET_MODE, None));
        match bound {
            Ok(listener) => out.push(BoundAgentSocket {
                agent: agent.clone(),
                path,
                listener,
                max_connections: policy.max_connections as usize,
            }),
            Err(e) => tracing::error!(
                agent = %agent,
                error = %e,
                "this agent's socket was not set up (the others start); \
                 remove what is in the way and restart the core"
            ),
        }
    }
    Ok(out)
}

/// Binds one agent's directory and socket (a spawned agent's, at run time).
pub fn bind_one(
    config: &Config,
    agent: &AgentName,
    max_connections: u32,
) -> Result<BoundAgentSocket, SocketSetupError> {
    let agents_dir = config.runtime_dir.join("agents");
    unix_socket::ensure_dir(&agents_dir, AGENTS_DIR_MODE, None)?;
    let staging = agents_dir.join(STAGING_DIR);
    unix_socket::ensure_dir(&staging, AGENTS_DIR_MODE, None)?;
    unix_socket::ensure_dir(&config.agent_socket_dir(agent), AGENT_DIR_MODE, None)?;
    let path = config.agent_socket(agent);
    let listener = unix_socket::bind(&staging, &path, AGENT_SOCKET_MODE, None)?;
    Ok(BoundAgentSocket {
        agent: agent.clone(),
        path,
        listener,
        max_connections: max_connections as usize,
    })
}

/// The serving agent sockets: adds a spawned agent's at run time, under the
/// same global connection cap, shutdown and tracker as the others.
pub struct LiveSockets {
    global: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl crate::hive::AgentSockets for LiveSockets {
    fn add(&self, hive: &Hive, agent: &AgentName, max_connections: u32) -> Result<(), Refusal> {
        let socket = bind_one(hive.config(), agent, max_connections).map_err(|e| {
            tracing::error!(agent = %agent, error = %e, "binding a spawned agent's socket");
            Refusal::new(
                ErrorCode::Internal,
                format!("binding {agent}'s socket failed"),
            )
        })?;
        serve_one(socket, hive, &self.global, &self.shutdown, &self.tracker);
        Ok(())
    }
}

/// Starts one accept loop per socket. Every task is tracked by `tracker` and
/// ends once `shutdown` is cancelled and its in-flight requests are answered.
pub fn serve_all(
    sockets: Vec<BoundAgentSocket>,
    hive: &Hive,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> LiveSockets {
    let global = Arc::new(Semaphore::new(MAX_AGENT_CONNECTIONS_TOTAL));
    for socket in sockets {
        serve_one(socket, hive, &global, shutdown, tracker);
    }
    LiveSockets {
        global,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    }
}

fn serve_one(
    socket: BoundAgentSocket,
    hive: &Hive,
    global: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    {
        let server = AgentServer {
            agent: socket.agent,
            listener: socket.listener,
            per_agent: Arc::new(Semaphore::new(socket.max_connections)),
            global: Arc::clone(global),
            hive: hive.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(server.accept_loop());
    }
}

struct AgentServer {
    agent: AgentName,
    listener: UnixListener,
    per_agent: Arc<Semaphore>,
    global: Arc<Semaphore>,
    hive: Hive,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl AgentServer {
    async fn accept_loop(self) {
        tracing::debug!(agent = %self.agent, "agent socket serving");
        loop {
            let stream = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(agent = %self.agent, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            match self.admit() {
                Ok(permits) => {
                    let conn = conn::Connection::new(
                        self.agent.clone(),
                        self.hive.clone(),
                        self.shutdown.clone(),
                    );
                    self.tracker.spawn(async move {
                        conn.serve(stream).await;
                        drop(permits);
                    });
                }
                Err(why) => refuse(&self.agent, stream, why),
            }
        }
    }

    /// Takes a per-agent and a global permit, or says which cap is full.
    fn admit(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), &'static str> {
        let local = Arc::clone(&self.per_agent)
            .try_acquire_owned()
            .map_err(|_| "this agent has its maximum number of connections open")?;
        let global = Arc::clone(&self.global)
            .try_acquire_owned()
            .map_err(|_| "the core has its maximum number of agent connections open")?;
        Ok((local, global))
    }
}

/// Answers a connection over a cap with one `limit` line and closes it.
/// The write is non-blocking: a fresh socket's send buffer always takes one
/// short line, and a peer that is not reading must not stall the accept loop.
fn refuse(agent: &AgentName, stream: UnixStream, why: &'static str) {
    tracing::warn!(agent = %agent, reason = why, "connection refused");
    let mut line = ResponseLine::err(None, ErrorBody::new(ErrorCode::Limit, why)).to_line();
    line.push('\n');
    let _ = stream.try_write(line.as_bytes());
}
