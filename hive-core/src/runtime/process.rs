//! The `process` runtime (development only): each agent is a child process
//! of the daemon, sandboxed with bubblewrap when `bwrap` is installed and
//! works, otherwise run as is with a warning in the log.
//!
//! The sandbox gives the agent a read-only view of the host's top-level
//! directories, a private `/tmp` and `/run`, its own socket directory at
//! `/run/hive` and its own state directory at `/state`, with the hive's
//! runtime and state directories (every other agent's socket, the store,
//! the operator token) hidden under empty tmpfs mounts, and every capability
//! dropped. It is not a security boundary — there is no network or PID
//! isolation and the agent keeps the daemon's uid — that is what the
//! `nspawn` and `nixos-container` runtimes are for.
//!
//! Each agent runs through [`Supervised`] (it dies with the daemon) with its
//! output in a [`Journal`]; every exit is published on [`Runtime::exits`].
//! `limits` are not applied here (there is no cgroup of the agent's own).
//! This module must never touch the store or the sockets.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hive_proto::view::RunState;
use hive_proto::AgentName;
use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::broadcast;

use super::journal::Journal;
use super::supervise::{InnerPid, Supervised};
use super::{
    AgentSpec, AgentView, ExitFeed, ExitReason, Runtime, RuntimeError, RuntimeExit, EXIT_TAIL_LINES,
};
use crate::secrets::SecretStore;

pub use super::supervise::STOP_GRACE;

/// Where the agent's socket directory appears inside the sandbox.
pub const SANDBOX_SOCKET_DIR: &str = "/run/hive";
/// Where the agent's state directory appears inside the sandbox.
pub const SANDBOX_STATE_DIR: &str = "/state";
/// The fd bubblewrap reports the sandboxed process's pid on.
const INFO_FD: i32 = 3;
/// How long to wait for bubblewrap to report the sandboxed pid.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// `PATH` given to agents when the daemon has none.
const DEFAULT_PATH: &str = "/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin";

/// The process runtime's settings.
#[derive(Clone, Debug)]
pub struct ProcessSettings {
    /// The agents it starts with; more come with [`Runtime::set_agent`].
    pub agents: BTreeMap<AgentName, AgentSpec>,
    /// Host paths the sandbox hides (the hive's runtime and state dirs, the
    /// dev state dir holding the operator token).
    pub hide: Vec<PathBuf>,
    pub stop_grace: Duration,
    /// Try bubblewrap; `false` runs agents unsandboxed (with a warning).
    pub sandbox: bool,
    /// Where bubblewrap is wanted but missing or broken: run agents anyway
    /// (`allow_unsandboxed = true`) instead of refusing to start them.
    pub allow_unsandboxed: bool,
    /// The hive's secrets: each start binds the agent's own read-only at
    /// `/run/secrets/<KEY>` (`None`: tests of the runtime alone).
    pub secrets: Option<SecretStore>,
}

/// The sentence an agent start is refused with where bubblewrap cannot
/// sandbox it and the config does not allow running it unsandboxed.
pub const NO_SANDBOX: &str = "bubblewrap is missing or does not work here, so the process runtime \
     starts no agent: install the package bubblewrap, or set allow_unsandboxed = true to run \
     agents without isolation";

/// Agents as child processes.
pub struct ProcessRuntime {
    settings: ProcessSettings,
    /// The working `bwrap`, if any.
    bwrap: Option<PathBuf>,
    slots: Arc<Mutex<HashMap<AgentName, Slot>>>,
    exits: ExitFeed,
}

struct Slot {
    spec: AgentSpec,
    state: RunState,
    child: Option<Arc<Supervised>>,
    journal: Journal,
    /// Why it last ended on its own.
    crash: Option<ExitReason>,
}

impl Slot {
    fn new(spec: AgentSpec) -> Self {
        Self {
            spec,
            state: RunState::Stopped,
            child: None,
            journal: Journal::default(),
            crash: None,
        }
    }
}

impl ProcessRuntime {
    /// Prepares the runtime; finds and probes bubblewrap once.
    pub fn new(settings: ProcessSettings) -> Self {
        let bwrap = if settings.sandbox {
            find_working_bwrap()
        } else {
            None
        };
        if bwrap.is_none() && (settings.allow_unsandboxed || !settings.sandbox) {
            tracing::warn!(
                "process runtime: bubblewrap is not available; agents run UNSANDBOXED \
                 with the daemon's uid and can read everything it can"
            );
        } else if bwrap.is_none() {
            tracing::error!("{NO_SANDBOX}");
        }
        let slots = settings
            .agents
            .iter()
            .map(|(name, spec)| (name.clone(), Slot::new(spec.clone())))
            .collect();
        Self {
            settings,
            bwrap,
            slots: Arc::new(Mutex::new(slots)),
            exits: ExitFeed::default(),
        }
    }

    /// Whether agents run inside bubblewrap.
    pub fn sandboxed(&self) -> bool {
        self.bwrap.is_some()
    }

    /// Whether agents are started without a sandbox (allowed by the config).
    pub fn runs_unsandboxed(&self) -> bool {
        self.bwrap.is_none() && (self.settings.allow_unsandboxed || !self.settings.sandbox)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentName, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self, agent: &AgentName) -> Result<Option<Arc<Supervised>>, RuntimeError> {
        let slots = self.lock();
        let slot = slots
            .get(agent)
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        Ok(slot.child.clone().filter(|c| !c.has_exited()))
    }

    async fn start_agent(&self, agent: &AgentName) -> Result<(), RuntimeError> {
        let launch = self
            .lock()
            .get(agent)
            .map(|s| s.spec.clone())
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        let launch = match &self.settings.secrets {
            Some(store) => launch.with_secrets(store, agent)?,
            None => launch,
        };
        let launch = &launch;
        if self.running(agent)?.is_some() {
            return Err(RuntimeError::AlreadyRunning(agent.clone()));
        }
        let spawn_err = |what| {
            let agent = agent.clone();
            move |source| RuntimeError::Spawn {
                agent,
                what,
                source,
            }
        };
        create_state_dir(&launch.state_dir).map_err(spawn_err("creating its state dir"))?;
        let (cmd, info) = match &self.bwrap {
            Some(bwrap) => {
                let (cmd, info) = self
                    .sandboxed_command(bwrap, agent, launch)
                    .map_err(spawn_err("preparing bubblewrap"))?;
                (cmd, Some(info))
            }
            None if !self.runs_unsandboxed() => {
                return Err(RuntimeError::NoSandbox(agent.clone()));
            }
            None => {
                if !launch.ro_binds.is_empty() {
                    return Err(spawn_err("binding read-only paths")(io::Error::other(
                        "read-only binds need the bubblewrap sandbox, which is not available",
                    )));
                }
                (plain_command(agent, launch), None)
            }
        };
        let journal = self.lock().get(agent).map(|s| s.journal.clone());
        let slots = Arc::clone(&self.slots);
        let exits = self.exits.clone();
        let name = agent.clone();
        let on_exit = move |status: ExitStatus, stopping: bool| {
            let reason = ExitReason::from_status(status);
            let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
            let mut journal_tail = Vec::new();
            if let Some(slot) = slots.get_mut(&name) {
                slot.state = if stopping {
                    RunState::Stopped
                } else {
                    RunState::Crashed
                };
                slot.crash = (!stopping).then(|| reason.clone());
                journal_tail = slot.journal.tail(EXIT_TAIL_LINES);
            }
            drop(slots);
            exits.publish(RuntimeExit {
                agent: name,
                reason,
                requested: stopping,
                journal_tail,
                at_ms: crate::now_ms(),
            });
        };
        {
            let mut slots = self.lock();
            if let Some(slot) = slots.get_mut(agent) {
                slot.state = RunState::Starting;
                slot.crash = None;
            }
        }
        let info = info.map(|i| Box::new(i) as Box<dyn InnerPid>);
        let child = Supervised::spawn(cmd, agent.as_str(), journal, info, Box::new(on_exit))
            .await
            .map_err(spawn_err("spawning"));
        let mut slots = self.lock();
        let slot = slots
            .get_mut(agent)
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        match child {
            Ok(child) => {
                tracing::info!(agent = %agent, pid = child.pid(), sandboxed = self.bwrap.is_some(), "agent started");
                if !child.has_exited() {
                    slot.state = RunState::Running;
                }
                slot.child = Some(child);
                Ok(())
            }
            Err(e) => {
                slot.state = RunState::Crashed;
                Err(e)
            }
        }
    }

    async fn stop_agent(&self, agent: &AgentName) -> Result<(), RuntimeError> {
        let Some(child) = self.running(agent)? else {
            return Ok(());
        };
        if let Some(slot) = self.lock().get_mut(agent) {
            slot.state = RunState::Stopping;
        }
        child.stop(self.settings.stop_grace).await;
        Ok(())
    }

    fn signal_agent(
        &self,
        agent: &AgentName,
        signal: Signal,
        state: RunState,
    ) -> Result<(), RuntimeError> {
        let child = self
            .running(agent)?
            .ok_or_else(|| RuntimeError::NotRunning(agent.clone()))?;
        child
            .signal(signal)
            .map_err(|source| RuntimeError::Signal {
                agent: agent.clone(),
                source,
            })?;
        if let Some(slot) = self.lock().get_mut(agent) {
            slot.state = state;
        }
        Ok(())
    }

    /// The bubblewrap command line for one agent, and the read end of the
    /// pipe on which bubblewrap reports the sandboxed process's pid.
    fn sandboxed_command(
        &self,
        bwrap: &Path,
        agent: &AgentName,
        launch: &AgentSpec,
    ) -> io::Result<(Command, InfoPipe)> {
        let mut args: Vec<String> = vec![
            "--die-with-parent".into(),
            "--unshare-ipc".into(),
            "--unshare-uts".into(),
            "--unshare-cgroup-try".into(),
            "--hostname".into(),
            format!("h-{agent}"),
            "--info-fd".into(),
            INFO_FD.to_string(),
        ];
        // The host's top-level directories, read-only; symlinks (merged /usr)
        // recreated; /proc, /dev, /tmp and /run made fresh.
        for entry in std::fs::read_dir("/")? {
            let entry = entry?;
            let path = entry.path();
            let Some(p) = path.to_str() else { continue };
            if matches!(p, "/proc" | "/dev" | "/tmp" | "/run") {
                continue;
            }
            let ft = entry.file_type()?;
            if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                if let Some(t) = target.to_str() {
                    args.extend(["--symlink".into(), t.into(), p.into()]);
                }
            } else if ft.is_dir() {
                args.extend(["--ro-bind".into(), p.into(), p.into()]);
            }
        }
        args.extend(
            [
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
            ]
            .map(String::from),
        );
        // Hide the hive's own directories and root's home; blank the
        // password hashes.
        let mut hide: Vec<&Path> = self.settings.hide.iter().map(PathBuf::as_path).collect();
        hide.push(Path::new("/root"));
        for dir in hide {
            if !dir.is_dir() || dir.starts_with("/tmp") || dir.starts_with("/run") {
                continue; // already fresh, or nothing to hide
            }
            if let Some(d) = dir.to_str() {
                args.extend(["--tmpfs".into(), d.into()]);
            }
        }
        for secret in ["/etc/shadow", "/etc/gshadow"] {
            if Path::new(secret).exists() {
                args.extend(["--ro-bind".into(), "/dev/null".into(), secret.into()]);
            }
        }
        let utf8 = |p: &Path| {
            p.to_str()
                .map(String::from)
                .ok_or_else(|| io::Error::other(format!("path {} is not UTF-8", p.display())))
        };
        args.extend([
            "--bind".into(),
            utf8(&launch.socket_dir)?,
            SANDBOX_SOCKET_DIR.into(),
            "--bind".into(),
            utf8(&launch.state_dir)?,
            SANDBOX_STATE_DIR.into(),
        ]);
        for bind in &launch.ro_binds {
            args.extend(["--ro-bind".into(), utf8(&bind.host)?, utf8(&bind.inside)?]);
        }
        // The agent's binary stays reachable even if it lives under a hidden
        // or fresh directory.
        if launch.command[0].starts_with('/') {
            let bin = launch.command[0].clone();
            args.extend(["--ro-bind".into(), bin.clone(), bin]);
        }
        args.extend([
            "--chdir".into(),
            SANDBOX_STATE_DIR.into(),
            "--cap-drop".into(),
            "ALL".into(),
        ]);
        args.push("--".into());
        args.extend(launch.command.iter().cloned());

        let mut cmd = Command::new(bwrap);
        cmd.args(&args);
        agent_env(
            &mut cmd,
            agent,
            launch,
            &format!("{SANDBOX_SOCKET_DIR}/agent.sock"),
            SANDBOX_STATE_DIR,
        );
        let (info_read, info_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let write_fd = info_write.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (dup2, fcntl) on fds it owns.
        unsafe {
            cmd.pre_exec(move || {
                if write_fd == INFO_FD {
                    // Already in place: just let it survive exec.
                    if libc::fcntl(INFO_FD, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(write_fd, INFO_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((
            cmd,
            InfoPipe {
                read: info_read,
                write: info_write,
            },
        ))
    }
}

/// The pipe bubblewrap reports the sandboxed pid on. The write end is held
/// until the child is spawned and then closed here, so the read end sees EOF
/// if bubblewrap fails before reporting.
pub struct InfoPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl InnerPid for InfoPipe {
    fn after_spawn(self: Box<Self>) -> BoxFuture<'static, Option<i32>> {
        let InfoPipe { read, write } = *self;
        // Close our copy of the write end now that the child has its own.
        drop(write);
        Box::pin(read_child_pid(read))
    }
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.start_agent(agent))
    }

    fn stop<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.stop_agent(agent))
    }

    fn pause<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { self.signal_agent(agent, Signal::SIGSTOP, RunState::Paused) })
    }

    fn resume<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move { self.signal_agent(agent, Signal::SIGCONT, RunState::Running) })
    }

    fn rebuild<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let _ = agent;
        Box::pin(async {
            Err(RuntimeError::Unsupported {
                runtime: "process",
                action: "rebuild",
                hint: "; a process has no container to rebuild, use restart",
            })
        })
    }

    fn destroy<'a>(
        &'a self,
        agent: &'a AgentName,
        purge: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let _ = (agent, purge);
        Box::pin(async {
            Err(RuntimeError::Unsupported {
                runtime: "process",
                action: "destroy",
                hint: "; a process has no container to destroy, use stop",
            })
        })
    }

    fn set_agent<'a>(
        &'a self,
        agent: &'a AgentName,
        spec: AgentSpec,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut slots = self.lock();
            match slots.get_mut(agent) {
                Some(slot) => slot.spec = spec,
                None => {
                    slots.insert(agent.clone(), Slot::new(spec));
                }
            }
            Ok(())
        })
    }

    fn remove_agent<'a>(&'a self, agent: &'a AgentName) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.stop_agent(agent).await?;
            self.lock().remove(agent);
            Ok(())
        })
    }

    fn exits(&self) -> broadcast::Receiver<RuntimeExit> {
        self.exits.subscribe()
    }

    fn unsandboxed(&self) -> bool {
        self.runs_unsandboxed()
    }

    fn state(&self, agent: &AgentName) -> RunState {
        self.lock()
            .get(agent)
            .map(|s| s.state)
            .unwrap_or(RunState::Unknown)
    }

    fn view(&self, agent: &AgentName) -> AgentView {
        let slots = self.lock();
        let Some(slot) = slots.get(agent) else {
            return AgentView::of_state(RunState::Unknown);
        };
        let mut view = AgentView::of_state(slot.state);
        view.leader_pid = slot
            .child
            .as_ref()
            .filter(|c| !c.has_exited())
            .map(|c| c.pid());
        view.crash = slot.crash.clone();
        view
    }

    fn journal(&self, agent: &AgentName, lines: u32) -> Result<Vec<String>, RuntimeError> {
        let slots = self.lock();
        let slot = slots
            .get(agent)
            .ok_or_else(|| RuntimeError::UnknownAgent(agent.clone()))?;
        Ok(slot.journal.tail(lines as usize))
    }

    fn autostart(&self) -> Vec<AgentName> {
        let mut names: Vec<AgentName> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let children: Vec<Arc<Supervised>> = self
                .lock()
                .values()
                .filter_map(|s| s.child.clone())
                .collect();
            let grace = self.settings.stop_grace;
            futures::future::join_all(children.iter().map(|c| c.stop(grace))).await;
        })
    }
}

/// Reads bubblewrap's `--info-fd` report, `{"child-pid": N}`, stopping as
/// soon as the object is complete (the sandboxed program may inherit the
/// pipe, so EOF may never come while it runs).
async fn read_child_pid(fd: OwnedFd) -> Option<i32> {
    let read = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::from(fd);
        let mut got = Vec::new();
        let mut byte = [0u8; 256];
        loop {
            match file.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&byte[..n]);
                    if got.contains(&b'}') || got.len() > 4096 {
                        break;
                    }
                }
            }
        }
        got
    });
    let got = tokio::time::timeout(INFO_TIMEOUT, read).await.ok()?.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&got).ok()?;
    v.get("child-pid")?
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
}

fn plain_command(agent: &AgentName, launch: &AgentSpec) -> Command {
    let mut cmd = Command::new(&launch.command[0]);
    cmd.args(&launch.command[1..])
        .current_dir(&launch.state_dir);
    let socket = launch.socket_dir.join("agent.sock");
    agent_env(
        &mut cmd,
        agent,
        launch,
        &socket.to_string_lossy(),
        &launch.state_dir.to_string_lossy(),
    );
    cmd
}

/// A clean environment: nothing of the daemon's leaks to an agent except
/// `PATH` and the log filter; then the agent's own `env`, then the
/// runtime's `HIVE_*` (which `env` may not name).
fn agent_env(cmd: &mut Command, agent: &AgentName, spec: &AgentSpec, socket: &str, home: &str) {
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .envs(&spec.env)
        .env("HOME", home)
        .env("LANG", "C.UTF-8")
        .env("HIVE_AGENT", agent.as_str())
        .env("HIVE_SOCKET", socket);
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
}

fn create_state_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `bwrap` on `PATH`, if a minimal sandbox with the flags we use starts.
/// Whether a working bubblewrap is on `PATH` (what `hive-core dev` checks
/// before choosing to run agents unsandboxed).
pub fn bubblewrap_works() -> bool {
    find_working_bwrap().is_some()
}

fn find_working_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let bwrap = std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())?;
    let ok = std::process::Command::new(&bwrap)
        .args([
            "--die-with-parent",
            "--unshare-ipc",
            "--unshare-uts",
            "--ro-bind",
            "/",
            "/",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Some(bwrap)
    } else {
        tracing::warn!(bwrap = %bwrap.display(), "bubblewrap is installed but cannot create a sandbox here");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path, sandbox: bool, script: &str) -> (ProcessRuntime, AgentName) {
        let name = AgentName::new("alice").unwrap();
        let launch = AgentSpec {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: [("GREETING".to_owned(), "hi".to_owned())]
                .into_iter()
                .collect(),
            limits: Default::default(),
            ro_binds: Vec::new(),
            socket_dir: dir.join("sock"),
            state_dir: dir.join("state"),
        };
        std::fs::create_dir_all(&launch.socket_dir).unwrap();
        let settings = ProcessSettings {
            agents: [(name.clone(), launch)].into_iter().collect(),
            hide: vec![dir.to_owned()],
            stop_grace: Duration::from_secs(5),
            sandbox,
            allow_unsandboxed: false,
            secrets: Some(SecretStore::new(dir)),
        };
        (ProcessRuntime::new(settings), name)
    }

    async fn wait_for_line(rt: &ProcessRuntime, a: &AgentName, want: &str) -> Vec<String> {
        for _ in 0..500 {
            let lines = rt.journal(a, 100).unwrap();
            if lines.iter().any(|l| l.contains(want)) {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no line {want:?} in {:?}", rt.journal(a, 100).unwrap());
    }

    #[tokio::test]
    async fn a_child_is_started_journaled_paused_and_stopped_gracefully() {
        let dir = tempfile::tempdir().unwrap();
        // The script traps SIGTERM, so a graceful stop shows in its output.
        let (rt, a) = runtime(
            dir.path(),
            false,
            "trap 'echo got-term; exit 0' TERM; echo \"up $HIVE_SOCKET\"; while true; do sleep 0.05; done",
        );
        let mut exits = rt.exits();
        rt.start(&a).await.unwrap();
        assert_eq!(rt.state(&a), RunState::Running);
        assert!(rt.view(&a).leader_pid.is_some());
        let lines = wait_for_line(&rt, &a, "up ").await;
        assert!(lines[0].ends_with("sock/agent.sock"), "{lines:?}");
        assert!(matches!(
            rt.start(&a).await,
            Err(RuntimeError::AlreadyRunning(_))
        ));
        rt.pause(&a).await.unwrap();
        assert_eq!(rt.state(&a), RunState::Paused);
        rt.resume(&a).await.unwrap();
        rt.stop(&a).await.unwrap();
        assert_eq!(rt.state(&a), RunState::Stopped);
        wait_for_line(&rt, &a, "got-term").await;
        let exit = exits.recv().await.unwrap();
        assert!(exit.requested, "{exit:?}");
        assert_eq!(rt.view(&a).crash, None);
        assert!(rt
            .rebuild(&a)
            .await
            .unwrap_err()
            .to_string()
            .contains("use restart"));
    }

    #[tokio::test]
    async fn a_child_that_exits_on_its_own_is_crashed() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, a) = runtime(dir.path(), false, "echo \"last words $GREETING\"; exit 3");
        let mut exits = rt.exits();
        rt.start(&a).await.unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), exits.recv())
            .await
            .expect("an exit is published")
            .unwrap();
        assert_eq!(exit.agent, a);
        assert_eq!(exit.reason, ExitReason::Exited(3));
        assert!(!exit.requested);
        assert_eq!(exit.journal_tail, ["last words hi"]);
        let view = rt.view(&a);
        assert_eq!(view.state, RunState::Crashed);
        assert_eq!(view.crash, Some(ExitReason::Exited(3)));
        assert_eq!(view.leader_pid, None);
    }

    #[tokio::test]
    async fn agents_are_added_changed_and_removed_at_run_time() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, a) = runtime(dir.path(), false, "exit 0");
        let b = AgentName::new("bob").unwrap();
        assert!(matches!(
            rt.start(&b).await,
            Err(RuntimeError::UnknownAgent(_))
        ));
        let mut spec = rt.lock()[&a].spec.clone();
        spec.command = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo bob-$GREETING; sleep 30".into(),
        ];
        rt.set_agent(&b, spec.clone()).await.unwrap();
        assert_eq!(rt.autostart(), [a.clone(), b.clone()]);
        rt.start(&b).await.unwrap();
        wait_for_line(&rt, &b, "bob-hi").await;
        // A change applies from the next start.
        spec.env.insert("GREETING".into(), "again".into());
        rt.set_agent(&b, spec).await.unwrap();
        rt.restart(&b).await.unwrap();
        wait_for_line(&rt, &b, "bob-again").await;
        rt.remove_agent(&b).await.unwrap();
        assert_eq!(rt.state(&b), RunState::Unknown);
        assert_eq!(rt.autostart(), [a]);
    }

    #[tokio::test]
    async fn the_sandbox_shows_only_the_agents_own_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        let script = format!(
            "echo sock=$HIVE_SOCKET; test -e {} && echo LEAK || echo hidden; \
             touch /state/ok && echo state-writable; touch /usr/x 2>/dev/null || echo usr-ro; \
             trap 'exit 0' TERM; while true; do sleep 0.05; done",
            secret.display()
        );
        let (rt, a) = runtime(dir.path(), true, &script);
        if !rt.sandboxed() {
            crate::runtime::process::tests::skip_or_fail("bubblewrap cannot sandbox here");
            return;
        }
        rt.start(&a).await.unwrap();
        let lines = wait_for_line(&rt, &a, "usr-ro").await;
        assert!(
            lines.contains(&"sock=/run/hive/agent.sock".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"hidden".to_string()), "{lines:?}");
        assert!(lines.contains(&"state-writable".to_string()), "{lines:?}");
        assert!(dir.path().join("state/ok").exists());
        rt.shutdown().await;
        assert_eq!(rt.state(&a), RunState::Stopped);
    }

    #[tokio::test]
    async fn the_agents_own_secrets_are_read_only_files_at_run_secrets_from_its_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let script = "ls /run/secrets | tr '\\n' ' '; echo; wc -c < /run/secrets/k1; \
             echo x > /run/secrets/k1 2>/dev/null || echo secrets-ro; exit 0";
        let (rt, a) = runtime(dir.path(), true, script);
        if !rt.sandboxed() {
            skip_or_fail("bubblewrap cannot sandbox here");
            return;
        }
        let store = SecretStore::new(dir.path());
        store.set(&a, &"k1".parse().unwrap(), b"12345").unwrap();
        store
            .set(
                &AgentName::new("bob").unwrap(),
                &"theirs".parse().unwrap(),
                b"b",
            )
            .unwrap();
        rt.start(&a).await.unwrap();
        let lines = wait_for_line(&rt, &a, "secrets-ro").await;
        assert_eq!(lines[..2], ["k1 ", "5"], "{lines:?}");
        // One set after the start is there from the next start on.
        store.set(&a, &"k2".parse().unwrap(), b"z").unwrap();
        rt.restart(&a).await.unwrap();
        wait_for_line(&rt, &a, "k1 k2 ").await;
        rt.shutdown().await;
    }

    /// Skips off CI with a reason; under CI ([`hive_proto::ci`]) a skip is
    /// a failure.
    pub(crate) fn skip_or_fail(why: &str) {
        if hive_proto::ci::on_ci() {
            panic!("cannot run under CI: {why}");
        }
        eprintln!("skipped: {why}");
    }
}
