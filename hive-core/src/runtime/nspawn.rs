//! The `nspawn` runtime: each agent in its own `systemd-nspawn` container,
//! driven directly (`--register=no --keep-unit`, so no systemd as PID 1 and
//! no machined are needed; see docs/containers.md for why it does not
//! register a scope even where systemd runs).
//!
//! Per agent, under its lib dir `<state_dir>/agents/<name>/`:
//! - `root/`: a root the core builds — empty mount points, the host's
//!   `/usr` and `/lib*` (or `/nix/store` on NixOS) bound read-only, the
//!   agent's command bound read-only if it lives elsewhere;
//! - `state/`: bound read-write at `/state`, owned by the agent's range root;
//! - `harness/journal.log`: the container's stdout and stderr, written by
//!   the container itself (not through a pipe that would die with the
//!   daemon), kept under [`journal::JOURNAL_FILE_MAX`].
//!
//! The socket dir `<runtime_dir>/agents/<name>/` is bound at `/run/hive`.
//! Each container gets `--private-network --network-veth` (host side
//! `ve-<container>`) and `--private-users=BASE:65536`, BASE allocated once
//! per agent in the store. The container joins its own cgroup
//! ([`cgroup::AgentCgroup`]: limits, freezer, OOM count) before nspawn runs.
//!
//! nspawn runs in its own session with no parent-death signal, so the
//! container outlives a daemon killed with `kill -9`; its identity (nspawn
//! and init pids with their start times, uid base, cgroup) is recorded in
//! the store and the next daemon adopts it after checking all of them. The
//! container's init is watched through a pidfd: its end is seen at once,
//! adopted or not.
//!
//! Stop: nspawn's stub init treats SIGTERM as systemd does (it ignores it)
//! and SIGRTMIN+3 as an immediate power-off, so the polite SIGTERM goes to
//! the agent's command (the container's PID 2); after `stop_timeout` the
//! init gets SIGKILL, which takes the whole container down.
//!
//! This module must never touch another agent's dirs, cgroup or processes,
//! and never signal a pid it has not pinned with a pidfd.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hive_proto::view::RunState;
use hive_proto::AgentName;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};

use super::agent_dirs::{self, own_dir};
use super::cgroup::{AgentCgroup, Layout};
use super::journal;
use super::pidfd::{self, PidFd, ProcIdentity};
use super::slots::{Run, Slots};
use super::{
    AgentSpec, AgentView, ExitFeed, ExitReason, Runtime, RuntimeError, RuntimeExit, EXIT_TAIL_LINES,
};
use crate::config::{UidPool, UID_RANGE_SIZE};
use crate::secrets::SecretStore;
use crate::store::Store;

/// Where the socket dir appears inside the container.
pub const CONTAINER_SOCKET_DIR: &str = "/run/hive";
/// Where the state dir appears inside the container.
pub const CONTAINER_STATE_DIR: &str = "/state";
/// Longest nspawn may take to show the container's init.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long nspawn gets to clean up after its container's init is gone
/// before it is killed.
pub const NSPAWN_EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often the journal file's size is checked.
pub const JOURNAL_TRIM_EVERY: Duration = Duration::from_secs(1);
/// Line the core writes to the journal before each start; what nspawn
/// reports after it belongs to that run.
const START_MARKER: &str = "-- hive-core: starting container";
/// `PATH` inside a container on an FHS host.
const FHS_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `PATH` inside a container on NixOS.
const NIXOS_PATH: &str = "/run/current-system/sw/bin";

/// The nspawn runtime's settings.
#[derive(Clone)]
pub struct NspawnSettings {
    /// The agents it starts with; more come with [`Runtime::set_agent`].
    pub agents: BTreeMap<AgentName, AgentSpec>,
    /// The hive's state dir: lib dirs are `<state_dir>/agents/<name>/`.
    pub state_dir: PathBuf,
    pub stop_timeout: Duration,
    pub uid_pool: UidPool,
    /// On the daemon's exit, leave containers running for the next daemon
    /// to adopt (`true`, the daemon) or stop them (`false`, `dev`).
    pub keep_running: bool,
    /// The hive's nftables guard: every start waits for it to be enforced
    /// and hands it the container's veth and leader (`None`: tests of the
    /// runtime alone).
    pub isolation: Option<crate::isolation::Isolation>,
}

/// Why the nspawn runtime cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum NspawnUnavailable {
    #[error("the nspawn runtime needs root")]
    NotRoot,
    #[error("systemd-nspawn is not installed (Debian/Ubuntu: apt-get install systemd-container)")]
    NotInstalled,
    #[error("no usable cgroup hierarchy: {0}")]
    NoCgroups(io::Error),
    #[error("systemd-nspawn cannot run a container here: {0}")]
    Broken(String),
}

/// Agents as nspawn containers.
pub struct NspawnRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    settings: NspawnSettings,
    nspawn: PathBuf,
    layout: Layout,
    host: HostRoot,
    store: Store,
    slots: Slots<Running>,
    exits: ExitFeed,
}

/// What is kept in the store about a running container, to adopt it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    container: String,
    uid_base: u32,
    nspawn: ProcIdentity,
    leader: ProcIdentity,
    cgroup: AgentCgroup,
    oom_baseline: u64,
}

/// One running container.
struct Running {
    record: Record,
    leader: PidFd,
    stopping: AtomicBool,
    paused: AtomicBool,
    ended: watch::Sender<bool>,
}

impl Run for Running {
    fn leader_pid(&self) -> u32 {
        self.record.leader.pid as u32
    }

    fn cgroup(&self) -> &AgentCgroup {
        &self.record.cgroup
    }

    fn paused(&self) -> &AtomicBool {
        &self.paused
    }
}

/// What the host offers a container root.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRoot {
    /// `/usr` and `/lib*` (real dirs bound, symlinks copied).
    Fhs,
    /// `/nix/store` and `/run/current-system`.
    NixOs,
}

impl HostRoot {
    fn detect() -> Self {
        if Path::new("/etc/NIXOS").exists() {
            Self::NixOs
        } else {
            Self::Fhs
        }
    }

    fn path(&self) -> &'static str {
        match self {
            Self::Fhs => FHS_PATH,
            Self::NixOs => NIXOS_PATH,
        }
    }
}

/// `systemd-nspawn` on `PATH`.
pub fn find_nspawn() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("systemd-nspawn"))
        .find(|p| p.is_file())
}

/// Whether this host can run nspawn containers the way this runtime does:
/// root, `systemd-nspawn` installed, a cgroup hierarchy, and a throwaway
/// container (user namespace, private network) that runs `true`.
pub fn probe(uid_pool: UidPool) -> Result<(), NspawnUnavailable> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NspawnUnavailable::NotRoot);
    }
    let nspawn = find_nspawn().ok_or(NspawnUnavailable::NotInstalled)?;
    Layout::detect().map_err(NspawnUnavailable::NoCgroups)?;
    let dir = tempfile_dir().map_err(|e| NspawnUnavailable::Broken(e.to_string()))?;
    let root = dir.join("root");
    let binds = build_root(&root, &HostRoot::detect(), None)
        .map_err(|e| NspawnUnavailable::Broken(e.to_string()))?;
    let out = std::process::Command::new(nspawn)
        .args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            &format!("--machine=h-probe-{}", std::process::id()),
            "--private-network",
            &format!("--private-users={}:{UID_RANGE_SIZE}", uid_pool.base(0)),
            "--as-pid2",
            "--console=pipe",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ])
        .arg("-D")
        .arg(&root)
        .args(binds)
        .args(["/bin/sh", "-c", "exit 0"])
        .stdin(Stdio::null())
        .output();
    let _ = fs::remove_dir_all(&dir);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(NspawnUnavailable::Broken(
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find(|l| !l.contains("Attempted to remove disk file system"))
                .unwrap_or("it failed without saying why")
                .to_owned(),
        )),
        Err(e) => Err(NspawnUnavailable::Broken(e.to_string())),
    }
}

fn tempfile_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "hive-nspawn-probe-{}-{}",
        std::process::id(),
        crate::now_ms()
    ));
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

impl NspawnRuntime {
    /// Prepares the runtime: finds `systemd-nspawn` and the cgroup layout.
    pub fn new(settings: NspawnSettings, store: Store) -> Result<Self, NspawnUnavailable> {
        let nspawn = find_nspawn().ok_or(NspawnUnavailable::NotInstalled)?;
        let layout = Layout::detect().map_err(NspawnUnavailable::NoCgroups)?;
        let slots = Slots::new(&settings.agents);
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                nspawn,
                layout,
                host: HostRoot::detect(),
                store,
                slots,
                exits: ExitFeed::default(),
            }),
        })
    }

    /// The argv and binds for one container, for the benchmark's bare run
    /// of the same root: everything but the executable.
    pub fn container_args(
        root: &Path,
        container: &str,
        uid_base: u32,
        spec: &AgentSpec,
        agent: &AgentName,
    ) -> io::Result<Vec<String>> {
        let binds = build_root(
            root,
            &HostRoot::detect(),
            spec.command.first().map(String::as_str),
        )?;
        Ok(nspawn_args(
            root,
            container,
            uid_base,
            spec,
            agent,
            &HostRoot::detect(),
            binds,
        ))
    }
}

impl Shared {
    fn lib_dir(&self, agent: &AgentName) -> PathBuf {
        self.agents_dir().join(agent.as_str())
    }

    fn agents_dir(&self) -> PathBuf {
        self.settings.state_dir.join("agents")
    }

    fn journal_path(&self, agent: &AgentName) -> PathBuf {
        self.lib_dir(agent).join("harness").join("journal.log")
    }

    fn running(&self, agent: &AgentName) -> Result<Option<Arc<Running>>, RuntimeError> {
        self.slots.running(agent)
    }

    async fn uid_base(&self, agent: &AgentName) -> Result<u32, RuntimeError> {
        self.slots
            .uid_base(&self.store, self.settings.uid_pool, agent)
            .await
    }

    async fn start(self: &Arc<Self>, agent: &AgentName) -> Result<(), RuntimeError> {
        if let Some(iso) = &self.settings.isolation {
            iso.check_ready()
                .map_err(|source| RuntimeError::Isolation {
                    agent: agent.clone(),
                    source,
                })?;
        }
        let (spec, container) = self.slots.begin_start(agent)?;
        let store = SecretStore::new(&self.settings.state_dir);
        let launched = match spec.with_secrets(&store, agent) {
            Ok(spec) => self.launch(agent, &spec, &container).await,
            Err(e) => Err(e),
        };
        match launched {
            Ok((run, child)) => {
                self.slots.started(
                    agent,
                    Arc::clone(&run),
                    run.record.uid_base,
                    RunState::Running,
                );
                tracing::info!(agent = %agent, container, leader = run.record.leader.pid, uid_base = run.record.uid_base, "container started");
                tokio::spawn(Arc::clone(self).watch(agent.clone(), run, Some(child), None));
                Ok(())
            }
            Err(e) => {
                self.slots.start_failed(agent);
                Err(e)
            }
        }
    }

    /// Prepares the dirs and cgroup, spawns nspawn, finds the container's
    /// init and records it.
    async fn launch(
        &self,
        agent: &AgentName,
        spec: &AgentSpec,
        container: &str,
    ) -> Result<(Arc<Running>, Child), RuntimeError> {
        let base = self.uid_base(agent).await?;
        let lib = self.lib_dir(agent);
        let host = self.host.clone();
        let spec_c = spec.clone();
        let agent_c = agent.clone();
        let container_c = container.to_owned();
        let agents_dir = self.agents_dir();
        let (binds, log) = tokio::task::spawn_blocking(move || {
            prepare_dirs(
                &agents_dir,
                &lib,
                &spec_c,
                base,
                &host,
                &agent_c,
                &container_c,
            )
        })
        .await
        .map_err(|e| RuntimeError::Io {
            agent: agent.clone(),
            what: "preparing",
            path: self.lib_dir(agent),
            source: io::Error::other(e),
        })??;
        let cgroup = self
            .layout
            .create(container, &spec.limits)
            .map_err(RuntimeError::io(
                agent,
                "creating its cgroup",
                Path::new("/sys/fs/cgroup"),
            ))?;
        // Nothing of this agent runs that the runtime knows of (the start
        // was claimed), so anything in its cgroup is a container nobody
        // tracks: one a core killed before recording it left behind, or one
        // adoption refused. It goes before a second one starts on its dirs.
        match cgroup.kill_strays(NSPAWN_EXIT_GRACE).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(agent = %agent, processes = n, "killed an untracked container of this agent before starting it")
            }
            Err(e) => {
                let dir = cgroup
                    .dirs
                    .first()
                    .map_or(Path::new("/sys/fs/cgroup"), |d| d);
                return Err(RuntimeError::io(
                    agent,
                    "killing its untracked container",
                    dir,
                )(e));
            }
        }
        let oom_baseline = cgroup.oom_kills();
        let root = self.lib_dir(agent).join("root");
        let args = nspawn_args(&root, container, base, spec, agent, &self.host, binds);
        let mut cmd = Command::new(&self.nspawn);
        cmd.args(&args)
            .env_clear()
            .env("PATH", FHS_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(RuntimeError::io(
                agent,
                "opening its journal",
                &self.journal_path(agent),
            ))?))
            .stderr(Stdio::from(log))
            .kill_on_drop(false);
        let procs: Vec<std::ffi::CString> = cgroup
            .procs_files()
            .into_iter()
            .map(|p| {
                use std::os::unix::ffi::OsStrExt;
                std::ffi::CString::new(p.as_os_str().as_bytes()).expect("cgroup paths hold no NUL")
            })
            .collect();
        // SAFETY: runs in the forked child before exec and calls only
        // async-signal-safe functions (setsid, open, write, close) on memory
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session, and no parent-death signal: the container
                // must outlive the daemon.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                for file in &procs {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            agent: agent.clone(),
            what: "spawning systemd-nspawn",
            source,
        })?;
        let nspawn_pid = child.id().map(|p| p as i32).unwrap_or(0);
        let found = find_leader(&mut child, nspawn_pid, base).await;
        let (nspawn, leader, leader_fd) = match found {
            Ok(v) => v,
            Err(source) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                cgroup.remove();
                let tail = journal::tail_file(&self.journal_path(agent), 5).unwrap_or_default();
                return Err(RuntimeError::Spawn {
                    agent: agent.clone(),
                    what: "starting the container",
                    source: io::Error::new(
                        source.kind(),
                        format!("{source}; journal: {}", tail.join(" | ")),
                    ),
                });
            }
        };
        let record = Record {
            container: container.to_owned(),
            uid_base: base,
            nspawn,
            leader,
            cgroup,
            oom_baseline,
        };
        let json = serde_json::to_string(&record).expect("a record encodes");
        let name = agent.clone();
        if let Err(e) = self
            .store
            .write(move |tx| tx.set_container_record(&name, &json))
            .await
        {
            // Not adoptable, but running: keep it, say so.
            tracing::error!(agent = %agent, error = %e, "could not record the container; a daemon restart will not adopt it");
        }
        // nspawn finishes the container (network, mounts) before its init
        // forks the command: wait for that, or for the init to end.
        let payload_up = wait_payload(&leader_fd, leader.pid).await;
        if let Some(iso) = self.settings.isolation.as_ref().filter(|_| payload_up) {
            let veth = format!("ve-{container}");
            if let Err(source) = iso.attach(agent, &veth, leader.pid as u32).await {
                let _ = leader_fd.signal(Signal::SIGKILL);
                let _ = tokio::time::timeout(NSPAWN_EXIT_GRACE, child.wait()).await;
                record.cgroup.remove();
                let name = agent.clone();
                let _ = self
                    .store
                    .write(move |tx| tx.clear_container_record(&name))
                    .await;
                return Err(RuntimeError::Isolation {
                    agent: agent.clone(),
                    source,
                });
            }
        }
        let (ended, _) = watch::channel(false);
        Ok((
            Arc::new(Running {
                record,
                leader: leader_fd,
                stopping: AtomicBool::new(false),
                paused: AtomicBool::new(false),
                ended,
            }),
            child,
        ))
    }

    /// Waits for the container's init to end (trimming its journal
    /// meanwhile), then for nspawn, then says why and publishes the exit.
    async fn watch(
        self: Arc<Self>,
        agent: AgentName,
        run: Arc<Running>,
        child: Option<Child>,
        nspawn_fd: Option<PidFd>,
    ) {
        let journal_path = self.journal_path(&agent);
        let mut trim = tokio::time::interval(JOURNAL_TRIM_EVERY);
        loop {
            tokio::select! {
                _ = run.leader.exited() => break,
                _ = trim.tick() => {
                    let p = journal_path.clone();
                    let _ = tokio::task::spawn_blocking(move || journal::trim_file(&p)).await;
                }
            }
        }
        let requested = run.stopping.load(Ordering::SeqCst);
        if !requested {
            // Shown at once; the reason follows when nspawn has reported.
            self.slots.mark_crashed(&agent, &run);
        }
        let code = match child {
            Some(mut c) => match tokio::time::timeout(NSPAWN_EXIT_GRACE, c.wait()).await {
                Ok(Ok(status)) => status.code(),
                _ => {
                    let _ = c.start_kill();
                    let _ = c.wait().await;
                    None
                }
            },
            None => {
                if let Some(fd) = nspawn_fd {
                    if tokio::time::timeout(NSPAWN_EXIT_GRACE, fd.exited())
                        .await
                        .is_err()
                    {
                        let _ = fd.signal(Signal::SIGKILL);
                    }
                }
                None
            }
        };
        let tail = journal::tail_file(&journal_path, EXIT_TAIL_LINES).unwrap_or_default();
        let reason = if run.record.cgroup.oom_kills() > run.record.oom_baseline {
            ExitReason::OutOfMemory
        } else if let Some(sig) = nspawn_signal(&tail, &run.record.container) {
            ExitReason::Signaled(sig)
        } else {
            code.map_or(ExitReason::Vanished, ExitReason::Exited)
        };
        run.record.cgroup.remove();
        let name = agent.clone();
        if let Err(e) = self
            .store
            .write(move |tx| tx.clear_container_record(&name))
            .await
        {
            tracing::warn!(agent = %agent, error = %e, "could not clear the container record");
        }
        self.slots.finished(&agent, &run, requested, &reason);
        let _ = run.ended.send(true);
        self.exits.publish(RuntimeExit {
            agent,
            reason,
            requested,
            journal_tail: tail,
            at_ms: crate::now_ms(),
        });
    }

    async fn stop(&self, agent: &AgentName) -> Result<(), RuntimeError> {
        let Some(run) = self.running(agent)? else {
            return Ok(());
        };
        run.stopping.store(true, Ordering::SeqCst);
        self.slots.set_running_state(agent, RunState::Stopping);
        let mut ended = run.ended.subscribe();
        if run.paused.swap(false, Ordering::SeqCst) {
            // A frozen process cannot act on SIGTERM.
            if let Err(e) = run.record.cgroup.set_frozen(false).await {
                tracing::warn!(agent = %agent, error = %e, "could not thaw before stopping");
            }
        }
        let payload = pidfd::children(run.record.leader.pid)
            .into_iter()
            .find(|p| pidfd::innermost_pid(*p) == Some(2))
            .and_then(ProcIdentity::of)
            .and_then(|id| id.open());
        match payload {
            Some(fd) => fd.signal(Signal::SIGTERM),
            None => run.leader.signal(Signal::SIGKILL),
        }
        .map_err(|e| RuntimeError::Signal {
            agent: agent.clone(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        let timed_out = tokio::time::timeout(self.settings.stop_timeout, ended.wait_for(|e| *e))
            .await
            .is_err();
        if timed_out {
            tracing::warn!(agent = %agent, "container ignored SIGTERM for {:?}; killing it", self.settings.stop_timeout);
            let _ = run.leader.signal(Signal::SIGKILL);
            let _ = tokio::time::timeout(NSPAWN_EXIT_GRACE * 2, ended.wait_for(|e| *e)).await;
        }
        Ok(())
    }

    /// Removes the root (and with `purge` every dir of the agent's own).
    async fn destroy(&self, agent: &AgentName, purge: bool) -> Result<(), RuntimeError> {
        self.stop(agent).await?;
        let agents_dir = self.agents_dir();
        let state_dir = self.slots.spec(agent)?.0.state_dir;
        agent_dirs::destroy(agent, agents_dir, state_dir, purge, Some("root")).await?;
        self.slots.destroyed(agent);
        tracing::info!(agent = %agent, purge, "container destroyed");
        Ok(())
    }

    /// Takes over the containers a previous daemon recorded, after checking
    /// each is still the very process (pid + start time through a pidfd)
    /// with the agent's uid range.
    async fn adopt(self: &Arc<Self>) -> Vec<AgentName> {
        let records = match self.store.read(|r| r.container_records()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading container records");
                return Vec::new();
            }
        };
        let mut adopted = Vec::new();
        for (agent, json) in records {
            if self.slots.running(&agent).map_or(true, |r| r.is_some()) {
                tracing::warn!(agent = %agent, "a recorded container of an agent this hive does not run; leaving it alone");
                continue;
            }
            match self.adopt_one(&agent, &json).await {
                Ok(()) => adopted.push(agent),
                Err(why) => {
                    tracing::warn!(agent = %agent, why, "not adopting the recorded container");
                    let name = agent.clone();
                    let _ = self
                        .store
                        .write(move |tx| tx.clear_container_record(&name))
                        .await;
                }
            }
        }
        adopted
    }

    async fn adopt_one(self: &Arc<Self>, agent: &AgentName, json: &str) -> Result<(), String> {
        let record: Record = serde_json::from_str(json).map_err(|e| format!("record: {e}"))?;
        let name = agent.clone();
        let stored = self
            .store
            .read(move |r| r.uid_range(&name))
            .await
            .map_err(|e| e.to_string())?;
        if stored != Some(record.uid_base) {
            return Err(format!(
                "uid base {} is not the agent's ({stored:?})",
                record.uid_base
            ));
        }
        let leader = record
            .leader
            .open()
            .ok_or("its init is gone (or its pid is another process now)")?;
        if pidfd::uid_map(record.leader.pid) != Some((0, record.uid_base, UID_RANGE_SIZE)) {
            return Err("its init's uid map is not the agent's range".into());
        }
        let nspawn = record.nspawn.open().ok_or("its systemd-nspawn is gone")?;
        let socket_dir = self
            .slots
            .spec(agent)
            .map_err(|_| "no such agent")?
            .0
            .socket_dir;
        own_dir(&socket_dir, record.uid_base).map_err(|e| format!("socket dir: {e}"))?;
        if let Some(iso) = &self.settings.isolation {
            // The veth is configured already; this records it with the new
            // daemon's table (and says so if that fails).
            let veth = format!("ve-{}", record.container);
            if let Err(e) = iso.attach(agent, &veth, record.leader.pid as u32).await {
                tracing::warn!(agent = %agent, error = %e, "adopted container: network attach failed");
            }
        }
        let frozen = record.cgroup.is_frozen();
        let (ended, _) = watch::channel(false);
        let run = Arc::new(Running {
            record,
            leader,
            stopping: AtomicBool::new(false),
            paused: AtomicBool::new(frozen),
            ended,
        });
        self.slots.started(
            agent,
            Arc::clone(&run),
            run.record.uid_base,
            if frozen {
                RunState::Paused
            } else {
                RunState::Running
            },
        );
        tracing::info!(agent = %agent, leader = run.record.leader.pid, "adopted a running container");
        tokio::spawn(Arc::clone(self).watch(agent.clone(), run, None, Some(nspawn)));
        Ok(())
    }
}

/// `Container <c> terminated by signal KILL.`, as nspawn reports a killed
/// init, after the last start marker.
fn nspawn_signal(tail: &[String], container: &str) -> Option<i32> {
    let from = tail
        .iter()
        .rposition(|l| l.starts_with(START_MARKER))
        .map_or(0, |i| i + 1);
    let prefix = format!("Container {container} terminated by signal ");
    tail[from..].iter().rev().find_map(|l| {
        let name = l.strip_prefix(&prefix)?.trim_end_matches('.');
        name.parse::<Signal>()
            .or_else(|_| format!("SIG{name}").parse::<Signal>())
            .ok()
            .map(|s| s as i32)
    })
}

/// Waits for nspawn's child that is PID 1 of a new pid namespace with the
/// agent's uid range, and pins it and nspawn with pidfds.
async fn find_leader(
    child: &mut Child,
    nspawn_pid: i32,
    base: u32,
) -> io::Result<(ProcIdentity, ProcIdentity, PidFd)> {
    let nspawn = ProcIdentity::of(nspawn_pid)
        .ok_or_else(|| io::Error::other("systemd-nspawn exited at once"))?;
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "systemd-nspawn exited ({status}) before its container ran"
            )));
        }
        for pid in pidfd::children(nspawn_pid) {
            if pidfd::innermost_pid(pid) == Some(1)
                && pidfd::uid_map(pid) == Some((0, base, UID_RANGE_SIZE))
            {
                if let Some(id) = ProcIdentity::of(pid) {
                    if let Some(fd) = id.open() {
                        return Ok((nspawn, id, fd));
                    }
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the container's init did not appear",
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the container's init has forked the command (its PID 2):
/// `true`; `false` if the init ended first or [`LEADER_TIMEOUT`] passed.
async fn wait_payload(leader: &PidFd, pid: i32) -> bool {
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    loop {
        if pidfd::children(pid)
            .into_iter()
            .any(|c| pidfd::innermost_pid(c) == Some(2))
        {
            return true;
        }
        if leader.has_exited() || tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Creates the agent's dirs: lib dir and harness (root's, 0700), the root,
/// the state dir and socket dir (the range root's, 0700); opens the journal
/// and writes the start marker. Returns the root's host binds and the
/// journal file.
fn prepare_dirs(
    agents_dir: &Path,
    lib: &Path,
    spec: &AgentSpec,
    base: u32,
    host: &HostRoot,
    agent: &AgentName,
    container: &str,
) -> Result<(Vec<String>, fs::File), RuntimeError> {
    let err = |what, path: &Path| RuntimeError::io(agent, what, path);
    agent_dirs::prepare(agents_dir, lib, spec, base, agent)?;
    let binds = build_root(
        &lib.join("root"),
        host,
        spec.command.first().map(String::as_str),
    )
    .map_err(err("building the root", &lib.join("root")))?;
    let path = lib.join("harness").join("journal.log");
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err("opening its journal", &path))?;
    use std::io::Write as _;
    writeln!(log, "{START_MARKER} {container} at {}", crate::now_ms())
        .map_err(err("writing its journal", &path))?;
    Ok((binds, log))
}

/// Builds (or refreshes) a container root at `root`: mount points, a
/// minimal `/etc`, and the host's system dirs. Returns the `--bind-ro`
/// arguments for them (and for `command0`, when it lives elsewhere).
fn build_root(root: &Path, host: &HostRoot, command0: Option<&str>) -> io::Result<Vec<String>> {
    let hive_agent = hive_agent_bin();
    let bins: Vec<&str> = command0
        .into_iter()
        .chain(hive_agent.as_deref().and_then(Path::to_str))
        .collect();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(root)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    for d in [
        "etc", "proc", "sys", "dev", "run", "tmp", "var", "state", "usr",
    ] {
        let p = root.join(d);
        if fs::symlink_metadata(&p).is_err() {
            fs::DirBuilder::new().mode(0o755).create(&p)?;
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/state:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let mut binds = Vec::new();
    let mut bound: Vec<PathBuf> = Vec::new();
    match host {
        HostRoot::Fhs => {
            for d in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
                let h = Path::new("/").join(d);
                let r = root.join(d);
                let Ok(m) = fs::symlink_metadata(&h) else {
                    continue;
                };
                if m.file_type().is_symlink() {
                    let target = fs::read_link(&h)?;
                    match fs::read_link(&r) {
                        Ok(t) if t == target => {}
                        _ => {
                            let _ = fs::remove_dir(&r);
                            let _ = fs::remove_file(&r);
                            std::os::unix::fs::symlink(&target, &r)?;
                        }
                    }
                } else if m.is_dir() {
                    if fs::symlink_metadata(&r).is_err() {
                        fs::DirBuilder::new().mode(0o755).create(&r)?;
                    }
                    binds.push(format!("--bind-ro=/{d}"));
                    bound.push(h);
                }
            }
        }
        HostRoot::NixOs => {
            for d in ["nix/store", "run/current-system"] {
                binds.push(format!("--bind-ro=/{d}"));
                bound.push(Path::new("/").join(d));
            }
            for link in ["bin/sh", "usr/bin/env"] {
                if let Ok(target) = fs::canonicalize(Path::new("/").join(link)) {
                    let r = root.join(link);
                    if let Some(p) = r.parent() {
                        fs::create_dir_all(p)?;
                    }
                    let _ = fs::remove_file(&r);
                    std::os::unix::fs::symlink(target, r)?;
                }
            }
        }
    }
    for cmd in bins.into_iter().filter(|c| c.starts_with('/')) {
        let p = Path::new(cmd);
        let arg = format!("--bind-ro={cmd}:{cmd}");
        if !bound.iter().any(|b| p.starts_with(b)) && p.is_file() && !binds.contains(&arg) {
            binds.push(arg);
        }
    }
    Ok(binds)
}

/// `hive-agent` next to this executable, which every container can run at
/// the same path (bound read-only when it is not under a bound system dir).
pub fn hive_agent_bin() -> Option<PathBuf> {
    let bin = std::env::current_exe().ok()?.parent()?.join("hive-agent");
    bin.is_file().then_some(bin)
}

fn nspawn_args(
    root: &Path,
    container: &str,
    base: u32,
    spec: &AgentSpec,
    agent: &AgentName,
    host: &HostRoot,
    binds: Vec<String>,
) -> Vec<String> {
    let mut args = vec![
        "--register=no".to_owned(),
        "--keep-unit".to_owned(),
        format!("--machine={container}"),
        format!("--directory={}", root.display()),
        format!("--private-users={base}:{UID_RANGE_SIZE}"),
        "--private-users-ownership=off".to_owned(),
        "--private-network".to_owned(),
        "--network-veth".to_owned(),
        "--as-pid2".to_owned(),
        "--console=pipe".to_owned(),
        "--resolv-conf=off".to_owned(),
        "--timezone=off".to_owned(),
        "--link-journal=no".to_owned(),
        format!("--chdir={CONTAINER_STATE_DIR}"),
    ];
    args.extend(binds);
    args.push(format!(
        "--bind={}:{CONTAINER_STATE_DIR}",
        spec.state_dir.display()
    ));
    args.push(format!(
        "--bind={}:{CONTAINER_SOCKET_DIR}",
        spec.socket_dir.display()
    ));
    for b in &spec.ro_binds {
        let idmap = if b.idmap { ":idmap" } else { "" };
        args.push(format!(
            "--bind-ro={}:{}{idmap}",
            b.host.display(),
            b.inside.display()
        ));
    }
    // `hive-agent` is found on PATH wherever the daemon's lives.
    let path = match hive_agent_bin().as_deref().and_then(Path::parent) {
        Some(dir) => format!("{}:{}", host.path(), dir.display()),
        None => host.path().to_owned(),
    };
    let mut env: Vec<(String, String)> = vec![("PATH".into(), path)];
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend([
        ("HOME".into(), CONTAINER_STATE_DIR.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HIVE_AGENT".into(), agent.to_string()),
        (
            "HIVE_SOCKET".into(),
            format!("{CONTAINER_SOCKET_DIR}/agent.sock"),
        ),
    ]);
    if let Ok(filter) = std::env::var("RUST_LOG") {
        env.push(("RUST_LOG".into(), filter));
    }
    for (k, v) in env {
        args.push(format!("--setenv={k}={v}"));
    }
    args.push("--".to_owned());
    args.extend(spec.command.iter().cloned());
    args
}

impl Runtime for NspawnRuntime {
    fn name(&self) -> &'static str {
        "nspawn"
    }

    fn start<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.start(agent))
    }

    fn stop<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.stop(agent))
    }

    fn pause<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.slots.set_paused(agent, true))
    }

    fn resume<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.slots.set_paused(agent, false))
    }

    fn rebuild<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.shared.destroy(agent, false).await?;
            self.shared.start(agent).await
        })
    }

    fn destroy<'a>(
        &'a self,
        agent: &'a AgentName,
        purge: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.destroy(agent, purge))
    }

    fn set_agent<'a>(
        &'a self,
        agent: &'a AgentName,
        spec: AgentSpec,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.shared.slots.set_spec(agent, spec);
            Ok(())
        })
    }

    fn remove_agent<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.shared.stop(agent).await?;
            self.shared.slots.remove(agent);
            Ok(())
        })
    }

    fn exits(&self) -> broadcast::Receiver<RuntimeExit> {
        self.shared.exits.subscribe()
    }

    fn state(&self, agent: &AgentName) -> RunState {
        self.shared.slots.state(agent)
    }

    fn view(&self, agent: &AgentName) -> AgentView {
        self.shared.slots.view(agent)
    }

    fn adopt(&self) -> BoxFuture<'_, Vec<AgentName>> {
        Box::pin(async move {
            // Ranges are shown even for agents that are not running.
            self.shared.slots.load_uid_bases(&self.shared.store).await;
            self.shared.adopt().await
        })
    }

    fn journal(&self, agent: &AgentName, lines: u32) -> Result<Vec<String>, RuntimeError> {
        if !self.shared.slots.contains(agent) {
            return Err(RuntimeError::UnknownAgent(agent.clone()));
        }
        let path = self.shared.journal_path(agent);
        journal::tail_file(&path, lines as usize).map_err(RuntimeError::io(
            agent,
            "reading its journal",
            &path,
        ))
    }

    fn autostart(&self) -> Vec<AgentName> {
        self.shared.slots.names()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running = self.shared.slots.running_names();
            if self.shared.settings.keep_running {
                if !running.is_empty() {
                    tracing::info!(
                        containers = running.len(),
                        "leaving the containers running for the next daemon to adopt"
                    );
                }
                return;
            }
            let stops = running.iter().map(|a| self.shared.stop(a));
            for r in futures::future::join_all(stops).await {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "stopping a container at exit");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspawn_reports_of_a_killed_init_are_read_after_the_last_start() {
        let tail: Vec<String> = [
            "-- hive-core: starting container h-a at 1",
            "Container h-a terminated by signal KILL.",
            "-- hive-core: starting container h-a at 2",
            "up",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(nspawn_signal(&tail, "h-a"), None);
        let mut t2 = tail.clone();
        t2.push("Container h-a terminated by signal TERM.".into());
        assert_eq!(nspawn_signal(&t2, "h-a"), Some(libc::SIGTERM));
        assert_eq!(nspawn_signal(&t2, "h-b"), None);
    }

    #[test]
    fn the_argv_names_the_range_the_binds_and_the_environment() {
        let spec = AgentSpec {
            command: vec!["/opt/x/agent".into(), "run".into()],
            env: [("MODEL".to_owned(), "m".to_owned())].into_iter().collect(),
            limits: Default::default(),
            ro_binds: vec![
                super::super::RoBind {
                    host: "/opt/tools".into(),
                    inside: "/opt/tools".into(),
                    idmap: false,
                },
                super::super::RoBind {
                    host: "/var/lib/hh/secrets/a/anthropic".into(),
                    inside: "/run/secrets/anthropic".into(),
                    idmap: true,
                },
            ],
            socket_dir: "/run/hh/agents/a".into(),
            state_dir: "/var/lib/hh/agents/a/state".into(),
        };
        let a = AgentName::new("a").unwrap();
        let args = nspawn_args(
            Path::new("/r"),
            "h-a",
            1048576,
            &spec,
            &a,
            &HostRoot::Fhs,
            vec!["--bind-ro=/usr".into()],
        );
        let joined = args.join(" ");
        for want in [
            "--register=no --keep-unit --machine=h-a --directory=/r --private-users=1048576:65536",
            "--private-network --network-veth --as-pid2",
            "--bind-ro=/usr --bind=/var/lib/hh/agents/a/state:/state --bind=/run/hh/agents/a:/run/hive",
            "--bind-ro=/opt/tools:/opt/tools --bind-ro=/var/lib/hh/secrets/a/anthropic:/run/secrets/anthropic:idmap",
            "--setenv=MODEL=m",
            "--setenv=HIVE_AGENT=a --setenv=HIVE_SOCKET=/run/hive/agent.sock",
            "-- /opt/x/agent run",
        ] {
            assert!(joined.contains(want), "{want:?} not in {joined}");
        }
    }
}
