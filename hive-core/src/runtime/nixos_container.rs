//! The `nixos-container` runtime, production on NixOS: each agent is an
//! imperative NixOS container built from the config repo's flake
//! (`nixosConfigurations.<agent>`), run by NixOS's own
//! `container@<c>.service` (systemd-nspawn under systemd, registered with
//! machined). The core drives it only through two programs:
//!
//! - `nixos-container create <c> --flake <state_dir>/meta#<agent>
//!   [--host-address H --local-address L]` when `<conf_dir>/<c>.conf` is
//!   missing (the addresses are the agent's own from the isolation layer);
//!   then, at every start, the core rewrites two lines of that conf:
//!   `PRIVATE_USERS=<BASE>` (the agent's uid range, allocated in the store
//!   exactly as for `nspawn`) and `EXTRA_NSPAWN_FLAGS` with
//!   `--private-users-ownership=auto`, the state dir bound at `/state`, the
//!   socket dir at `/run/hive` and the agent's secrets read-only (id-mapped)
//!   at `/run/secrets/<KEY>`; `nixos-container start <c>`;
//! - `machinectl show <c> --property=Leader --value` for the container's
//!   init, which is believed only if its cgroup is below
//!   `container@<c>.service` and its `uid_map` is the agent's range; it is
//!   then pinned with a pidfd, which is how a crash is seen at once;
//! - `nixos-container stop <c>` (bounded by `stop_timeout`, then SIGKILL of
//!   the init through its pidfd), `nixos-container update <c> --flake …`
//!   (rebuild, and the next start after a changed spec), `nixos-container
//!   destroy <c>`.
//!
//! `pause` freezes the cgroup the init is in (v2 `cgroup.freeze` or the v1
//! freezer). Containers are systemd's units, so they outlive the daemon;
//! the next daemon adopts each one whose conf exists and whose leader
//! passes the same checks. Every tool call and its output is appended to
//! the agent's `harness/journal.log`.
//!
//! This module must never pass agent-controlled text to a tool or into the
//! conf (container names come from
//! [`container_name`](super::container_name::container_name), paths are checked
//! to hold no character the conf's shell word-splitting would act on),
//! never signal a pid it has not pinned, and never touch another agent's
//! container, conf or dirs.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hive_proto::view::RunState;
use hive_proto::AgentName;
use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{broadcast, watch};

use super::agent_dirs::{self, own_dir};
use super::cgroup::AgentCgroup;
use super::journal;
use super::nspawn::{CONTAINER_SOCKET_DIR, CONTAINER_STATE_DIR};
use super::pidfd::{self, PidFd, ProcIdentity};
use super::slots::{Run, Slots};
use super::{
    AgentSpec, AgentView, ExitFeed, ExitReason, Runtime, RuntimeError, RuntimeExit, EXIT_TAIL_LINES,
};
use crate::config::{NixosContainerConfig, UidPool, UID_RANGE_SIZE};
use crate::secrets::SecretStore;
use crate::store::Store;

/// The container side of the veth: NixOS's container init renames
/// nspawn's `host0` to `eth0`.
pub const CONTAINER_IF: &str = "eth0";
/// Longest the container's leader may take to show in `machinectl` after
/// `nixos-container start` returned.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped container's init gets to be gone after
/// `nixos-container stop` returned, before it is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);
/// `PATH` for the tools when the daemon has none.
const DEFAULT_PATH: &str = "/run/current-system/sw/bin:/usr/bin:/bin";

/// The nixos-container runtime's settings.
#[derive(Clone)]
pub struct NixosContainerSettings {
    /// The agents it starts with; more come with [`Runtime::set_agent`].
    /// Their `command` is not used: the container's flake config runs the
    /// agent.
    pub agents: BTreeMap<AgentName, AgentSpec>,
    /// The hive's state dir: lib dirs are `<state_dir>/agents/<name>/`, the
    /// config repo (the flake) `<state_dir>/meta`.
    pub state_dir: PathBuf,
    pub stop_timeout: Duration,
    pub uid_pool: UidPool,
    pub tools: NixosContainerConfig,
    /// The hive's nftables guard (`None`: tests of the runtime alone).
    pub isolation: Option<crate::isolation::Isolation>,
}

/// Agents as NixOS containers.
pub struct NixosContainerRuntime {
    shared: Arc<Shared>,
}

struct Shared {
    settings: NixosContainerSettings,
    store: Store,
    slots: Slots<Running>,
    /// Agents whose spec changed since their container was last built:
    /// their next start runs `update` first.
    stale: Mutex<HashSet<AgentName>>,
    exits: ExitFeed,
    /// `PATH` the tools run with (the daemon's own).
    path: OsString,
}

/// One running container, as the core knows it.
struct Running {
    leader: PidFd,
    identity: ProcIdentity,
    cgroup: AgentCgroup,
    oom_baseline: u64,
    stopping: AtomicBool,
    paused: AtomicBool,
    ended: watch::Sender<bool>,
}

impl Run for Running {
    fn leader_pid(&self) -> u32 {
        self.identity.pid as u32
    }

    fn cgroup(&self) -> &AgentCgroup {
        &self.cgroup
    }

    fn paused(&self) -> &AtomicBool {
        &self.paused
    }
}

impl NixosContainerRuntime {
    pub fn new(settings: NixosContainerSettings, store: Store) -> Self {
        let slots = Slots::new(&settings.agents);
        Self {
            shared: Arc::new(Shared {
                settings,
                store,
                slots,
                stale: Mutex::new(HashSet::new()),
                exits: ExitFeed::default(),
                path: std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            }),
        }
    }
}

/// The argv (after the program) of each tool call, one place for all.
pub mod argv {
    use std::path::Path;

    use hive_proto::AgentName;

    /// `<state_dir>/meta#<agent>`: the config repo's flake attribute.
    pub fn flake(state_dir: &Path, agent: &AgentName) -> String {
        format!("{}#{agent}", state_dir.join("meta").display())
    }

    pub fn create(
        container: &str,
        flake: &str,
        addresses: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    ) -> Vec<String> {
        let mut v = vec![
            "create".to_owned(),
            container.to_owned(),
            "--flake".to_owned(),
            flake.to_owned(),
        ];
        if let Some((host, local)) = addresses {
            v.extend([
                "--host-address".to_owned(),
                host.to_string(),
                "--local-address".to_owned(),
                local.to_string(),
            ]);
        }
        v
    }

    pub fn update(container: &str, flake: &str) -> Vec<String> {
        vec![
            "update".to_owned(),
            container.to_owned(),
            "--flake".to_owned(),
            flake.to_owned(),
        ]
    }

    /// `start`, `stop`, `destroy`.
    pub fn verb(verb: &str, container: &str) -> Vec<String> {
        vec![verb.to_owned(), container.to_owned()]
    }

    pub fn leader(container: &str) -> Vec<String> {
        vec![
            "show".to_owned(),
            container.to_owned(),
            "--property=Leader".to_owned(),
            "--value".to_owned(),
        ]
    }
}

/// Whether `path` may go into the conf's `EXTRA_NSPAWN_FLAGS`: absolute,
/// and only characters that neither the conf's quoting, the shell's word
/// splitting nor nspawn's `SRC:DST` syntax act on.
fn conf_safe(path: &Path) -> bool {
    path.is_absolute()
        && path.to_str().is_some_and(|s| {
            s.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')
            })
        })
}

/// Where the directory holding `hive-agent` is bound read-only inside the
/// container; the generated flake's `hive-agent` service puts it first on
/// `PATH` (`repo::render::flake_nix`).
pub const CONTAINER_AGENT_BIN_DIR: &str = "/run/hive-agent/bin";

/// The conf with its `PRIVATE_USERS` and `EXTRA_NSPAWN_FLAGS` lines
/// replaced by the agent's; every other line (what `create` wrote) kept.
/// `agent_bin_dir` (the host directory of `hive-agent`, when there is one)
/// is bound at [`CONTAINER_AGENT_BIN_DIR`].
fn render_conf(
    existing: &str,
    base: u32,
    spec: &AgentSpec,
    agent_bin_dir: Option<&Path>,
) -> Result<String, PathBuf> {
    let mut flags = vec!["--private-users-ownership=auto".to_owned()];
    let mut bind = |ro: bool, host: &Path, inside: &Path, idmap: bool| {
        for p in [host, inside] {
            if !conf_safe(p) {
                return Err(p.to_owned());
            }
        }
        flags.push(format!(
            "--bind{}={}:{}{}",
            if ro { "-ro" } else { "" },
            host.display(),
            inside.display(),
            if idmap { ":idmap" } else { "" }
        ));
        Ok(())
    };
    bind(
        false,
        &spec.state_dir,
        Path::new(CONTAINER_STATE_DIR),
        false,
    )?;
    bind(
        false,
        &spec.socket_dir,
        Path::new(CONTAINER_SOCKET_DIR),
        false,
    )?;
    if let Some(dir) = agent_bin_dir {
        bind(true, dir, Path::new(CONTAINER_AGENT_BIN_DIR), false)?;
    }
    for b in &spec.ro_binds {
        bind(true, &b.host, &b.inside, b.idmap)?;
    }
    let mut out: String = existing
        .lines()
        .filter(|l| !l.starts_with("PRIVATE_USERS=") && !l.starts_with("EXTRA_NSPAWN_FLAGS="))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("PRIVATE_USERS={base}\n"));
    out.push_str(&format!("EXTRA_NSPAWN_FLAGS=\"{}\"\n", flags.join(" ")));
    Ok(out)
}

/// Whether `proc_cgroup` (a `/proc/<pid>/cgroup`) puts the process below
/// `container@<container>.service` in the v2 (or named systemd) hierarchy.
fn in_container_unit(proc_cgroup: &str, container: &str) -> bool {
    let unit = format!("container@{container}.service");
    proc_cgroup.lines().any(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        matches!(ctrls, Some("") | Some("name=systemd"))
            && path.is_some_and(|p| p.split('/').any(|c| c == unit))
    })
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

    fn conf_path(&self, container: &str) -> PathBuf {
        self.settings
            .tools
            .conf_dir
            .join(format!("{container}.conf"))
    }

    fn flake(&self, agent: &AgentName) -> String {
        argv::flake(&self.settings.state_dir, agent)
    }

    /// Runs `program args` with the daemon's `PATH` and nothing else of its
    /// environment, appends the call and its output to the agent's
    /// journal, and returns its stdout; a failure names the call and its
    /// last line of output.
    async fn tool(
        &self,
        agent: &AgentName,
        program: &Path,
        args: &[String],
    ) -> Result<String, RuntimeError> {
        let command = std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let fail = |status: String, detail: String| RuntimeError::Tool {
            agent: agent.clone(),
            command: command.clone(),
            status,
            detail,
        };
        let out = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", &self.path)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| fail("not run".into(), e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.log(agent, &format!("-- hive-core: {command}\n{stdout}{stderr}"));
        if !out.status.success() {
            let last = stderr
                .lines()
                .chain(stdout.lines())
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("it said nothing")
                .to_owned();
            return Err(fail(out.status.to_string(), last));
        }
        Ok(stdout)
    }

    /// Appends to the agent's journal (best effort: a journal that cannot
    /// be written must not stop a lifecycle verb).
    fn log(&self, agent: &AgentName, text: &str) {
        let path = self.journal_path(agent);
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        match written {
            Ok(()) => {
                if let Err(e) = journal::trim_file(&path) {
                    tracing::warn!(agent = %agent, error = %e, "trimming the journal");
                }
            }
            Err(e) => tracing::warn!(agent = %agent, error = %e, "writing the journal"),
        }
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
        let secrets = SecretStore::new(&self.settings.state_dir);
        let launched = match spec.with_secrets(&secrets, agent) {
            Ok(spec) => self.launch(agent, &spec, &container).await,
            Err(e) => Err(e),
        };
        match launched {
            Ok((run, base)) => {
                self.slots
                    .started(agent, Arc::clone(&run), base, RunState::Running);
                tracing::info!(agent = %agent, container, leader = run.identity.pid, uid_base = base, "nixos container started");
                tokio::spawn(Arc::clone(self).watch(agent.clone(), run));
                Ok(())
            }
            Err(e) => {
                self.slots.start_failed(agent);
                Err(e)
            }
        }
    }

    /// Prepares the dirs, creates the container if it has no conf (or
    /// updates it when its spec changed), writes the conf's range and
    /// binds, starts it and pins its leader.
    async fn launch(
        &self,
        agent: &AgentName,
        spec: &AgentSpec,
        container: &str,
    ) -> Result<(Arc<Running>, u32), RuntimeError> {
        let base = self
            .slots
            .uid_base(&self.store, self.settings.uid_pool, agent)
            .await?;
        let lib = self.lib_dir(agent);
        let agents_dir = self.agents_dir();
        let spec_c = spec.clone();
        let agent_c = agent.clone();
        tokio::task::spawn_blocking(move || {
            agent_dirs::prepare(&agents_dir, &lib, &spec_c, base, &agent_c)
        })
        .await
        .map_err(|e| RuntimeError::Io {
            agent: agent.clone(),
            what: "preparing",
            path: self.lib_dir(agent),
            source: io::Error::other(e),
        })??;
        let tools = &self.settings.tools;
        let conf = self.conf_path(container);
        let exists = fs::symlink_metadata(&conf).is_ok();
        let stale = self
            .stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(agent);
        if !exists {
            let addresses = self
                .settings
                .isolation
                .as_ref()
                .and_then(|iso| iso.addresses(agent))
                .map(|a| (a.host4, a.agent4));
            let args = argv::create(container, &self.flake(agent), addresses);
            self.tool(agent, &tools.nixos_container, &args).await?;
        } else if stale {
            let args = argv::update(container, &self.flake(agent));
            self.tool(agent, &tools.nixos_container, &args).await?;
        }
        self.write_conf(agent, &conf, base, spec)?;
        self.tool(
            agent,
            &tools.nixos_container,
            &argv::verb("start", container),
        )
        .await?;
        match self.pin(agent, container, base, spec).await {
            Ok(run) => Ok((run, base)),
            Err(e) => {
                // Started but not ours to run: do not leave it running.
                let stop = argv::verb("stop", container);
                if let Err(stop_err) = self.tool(agent, &tools.nixos_container, &stop).await {
                    tracing::error!(agent = %agent, error = %stop_err, "could not stop a container that failed its checks");
                }
                Err(e)
            }
        }
    }

    fn write_conf(
        &self,
        agent: &AgentName,
        conf: &Path,
        base: u32,
        spec: &AgentSpec,
    ) -> Result<(), RuntimeError> {
        let err = |what| RuntimeError::io(agent, what, conf);
        let existing = fs::read_to_string(conf).map_err(err("reading its container conf"))?;
        let bin = super::nspawn::hive_agent_bin();
        let bin_dir = bin.as_deref().and_then(Path::parent).filter(|d| {
            let safe = conf_safe(d);
            if !safe {
                tracing::warn!(agent = %agent, dir = %d.display(), "hive-agent's directory cannot go into a container conf; not binding it");
            }
            safe
        });
        let text = render_conf(&existing, base, spec, bin_dir).map_err(|bad| RuntimeError::Io {
            agent: agent.clone(),
            what: "writing its container conf",
            path: conf.to_owned(),
            source: io::Error::other(format!(
                "{} must be absolute and hold only [A-Za-z0-9/._+@-]",
                bad.display()
            )),
        })?;
        if text == existing {
            return Ok(());
        }
        let tmp = conf.with_extension("conf.hive-tmp");
        let _ = fs::remove_file(&tmp);
        fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(err("writing its container conf"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .map_err(err("writing its container conf"))?;
        fs::rename(&tmp, conf).map_err(err("writing its container conf"))
    }

    /// The container's leader as `machinectl` names it, checked (its cgroup
    /// is `container@<c>.service`'s, its uid map the agent's range) and
    /// pinned with a pidfd. `wait`: keep asking for [`LEADER_TIMEOUT`].
    async fn leader(
        &self,
        agent: &AgentName,
        container: &str,
        base: u32,
        wait: bool,
    ) -> Result<(ProcIdentity, PidFd), RuntimeError> {
        let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
        let machinectl = &self.settings.tools.machinectl;
        let refuse = |detail: String| RuntimeError::Tool {
            agent: agent.clone(),
            command: format!(
                "{} {}",
                machinectl.display(),
                argv::leader(container).join(" ")
            ),
            status: "refused".into(),
            detail,
        };
        loop {
            let found = self.tool(agent, machinectl, &argv::leader(container)).await;
            let pid = match found {
                Ok(out) => out
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 1)
                    .ok_or_else(|| refuse(format!("no leader pid in {:?}", out.trim())))?,
                Err(e) if wait && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(agent = %agent, error = %e, "no leader yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let identity =
                ProcIdentity::of(pid).ok_or_else(|| refuse(format!("leader {pid} is gone")))?;
            let fd = identity
                .open()
                .ok_or_else(|| refuse(format!("leader {pid} is gone")))?;
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if !in_container_unit(&cgroup, container) {
                return Err(refuse(format!(
                    "leader {pid} is not in the cgroup of container@{container}.service"
                )));
            }
            if pidfd::uid_map(pid) != Some((0, base, UID_RANGE_SIZE)) {
                return Err(refuse(format!(
                    "leader {pid}'s uid map is not the agent's range {base}:{UID_RANGE_SIZE}"
                )));
            }
            return Ok((identity, fd));
        }
    }

    /// Finds, checks and pins the leader of a just-started container, sets
    /// its limits and attaches its veth.
    async fn pin(
        &self,
        agent: &AgentName,
        container: &str,
        base: u32,
        spec: &AgentSpec,
    ) -> Result<Arc<Running>, RuntimeError> {
        let (identity, leader) = self.leader(agent, container, base, true).await?;
        let cgroup = AgentCgroup::of_process(identity.pid).map_err(RuntimeError::io(
            agent,
            "finding its cgroup",
            Path::new("/proc/self/cgroup"),
        ))?;
        if spec.limits.memory_bytes.is_some() || spec.limits.cpu_millicores.is_some() {
            cgroup.apply_limits(&spec.limits).map_err(RuntimeError::io(
                agent,
                "setting its limits",
                cgroup
                    .dirs
                    .first()
                    .map_or(Path::new("cgroup"), |d| d.as_path()),
            ))?;
        }
        if let Some(iso) = &self.settings.isolation {
            let veth = format!("ve-{container}");
            iso.attach_as(agent, &veth, identity.pid as u32, CONTAINER_IF)
                .await
                .map_err(|source| RuntimeError::Isolation {
                    agent: agent.clone(),
                    source,
                })?;
        }
        let oom_baseline = cgroup.oom_kills();
        let (ended, _) = watch::channel(false);
        Ok(Arc::new(Running {
            leader,
            identity,
            cgroup,
            oom_baseline,
            stopping: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            ended,
        }))
    }

    /// Waits for the container's init to end, then says why and publishes
    /// the exit. The init is not our child: its status is unknowable, so a
    /// crash is `OOM` (the cgroup's count rose) or "exit status unknown".
    async fn watch(self: Arc<Self>, agent: AgentName, run: Arc<Running>) {
        run.leader.exited().await;
        let requested = run.stopping.load(Ordering::SeqCst);
        if !requested {
            self.slots.mark_crashed(&agent, &run);
        }
        let reason = if run.cgroup.oom_kills() > run.oom_baseline {
            ExitReason::OutOfMemory
        } else {
            ExitReason::Vanished
        };
        let tail =
            journal::tail_file(&self.journal_path(&agent), EXIT_TAIL_LINES).unwrap_or_default();
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

    /// `nixos-container stop` (systemd shuts the container down), bounded
    /// by `stop_timeout`; then SIGKILL of the init if it is still there.
    async fn stop(&self, agent: &AgentName) -> Result<(), RuntimeError> {
        let Some(run) = self.slots.running(agent)? else {
            return Ok(());
        };
        let (_, container) = self.slots.spec(agent)?;
        run.stopping.store(true, Ordering::SeqCst);
        self.slots.set_running_state(agent, RunState::Stopping);
        let mut ended = run.ended.subscribe();
        if run.paused.swap(false, Ordering::SeqCst) {
            // A frozen container cannot shut down.
            if let Err(e) = run.cgroup.set_frozen(false).await {
                tracing::warn!(agent = %agent, error = %e, "could not thaw before stopping");
            }
        }
        let args = argv::verb("stop", &container);
        let stop = self.tool(agent, &self.settings.tools.nixos_container, &args);
        match tokio::time::timeout(self.settings.stop_timeout, stop).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(agent = %agent, error = %e, "stop failed; killing the container's init")
            }
            Err(_) => {
                tracing::warn!(agent = %agent, "container did not stop in {:?}; killing its init", self.settings.stop_timeout)
            }
        }
        if tokio::time::timeout(EXIT_GRACE, ended.wait_for(|e| *e))
            .await
            .is_err()
        {
            let _ = run.leader.signal(Signal::SIGKILL);
            let _ = tokio::time::timeout(EXIT_GRACE, ended.wait_for(|e| *e)).await;
        }
        Ok(())
    }

    /// Stops it, rebuilds it from the flake (`update`; `create` at the next
    /// start when it has no conf), and starts it.
    async fn rebuild(self: &Arc<Self>, agent: &AgentName) -> Result<(), RuntimeError> {
        self.stop(agent).await?;
        let (_, container) = self.slots.spec(agent)?;
        if fs::symlink_metadata(self.conf_path(&container)).is_ok() {
            let args = argv::update(&container, &self.flake(agent));
            self.tool(agent, &self.settings.tools.nixos_container, &args)
                .await?;
            self.stale
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(agent);
        }
        self.start(agent).await
    }

    /// `nixos-container destroy` (its root, profile and conf), then the
    /// agent's own dirs when `purge`; the state dir otherwise stays.
    async fn destroy(&self, agent: &AgentName, purge: bool) -> Result<(), RuntimeError> {
        self.stop(agent).await?;
        let (spec, container) = self.slots.spec(agent)?;
        self.tool(
            agent,
            &self.settings.tools.nixos_container,
            &argv::verb("destroy", &container),
        )
        .await?;
        let agents_dir = self.agents_dir();
        agent_dirs::destroy(agent, agents_dir, spec.state_dir, purge, None).await?;
        self.slots.destroyed(agent);
        tracing::info!(agent = %agent, container, purge, "nixos container destroyed");
        Ok(())
    }

    /// Takes over every container of ours that still runs: its conf exists
    /// and `machinectl` names a leader that passes the start's checks.
    async fn adopt(self: &Arc<Self>) -> Vec<AgentName> {
        self.slots.load_uid_bases(&self.store).await;
        let mut adopted = Vec::new();
        for agent in self.slots.names() {
            let Ok((spec, container)) = self.slots.spec(&agent) else {
                continue;
            };
            let base = self.slots.view(&agent).uid_range.map(|r| r.base);
            let (Some(base), true) = (base, self.conf_path(&container).exists()) else {
                continue;
            };
            if self.slots.running(&agent).is_ok_and(|r| r.is_some()) {
                continue;
            }
            let (identity, leader) = match self.leader(&agent, &container, base, false).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::info!(agent = %agent, error = %e, "not adopting: its container does not run (or is not ours)");
                    continue;
                }
            };
            let cgroup = match AgentCgroup::of_process(identity.pid) {
                Ok(cg) => cg,
                Err(e) => {
                    tracing::warn!(agent = %agent, error = %e, "not adopting: its cgroup");
                    continue;
                }
            };
            if let Err(e) = own_dir(&spec.socket_dir, base) {
                tracing::warn!(agent = %agent, error = %e, "not adopting: its socket dir");
                continue;
            }
            if let Some(iso) = &self.settings.isolation {
                // The veth is configured already; this records it with the
                // new daemon's table. Gone (its network namespace went with
                // a daemon of a test), there is nothing to wait for.
                let veth = format!("ve-{container}");
                let attached = if interface_exists(&veth) {
                    iso.attach_as(&agent, &veth, identity.pid as u32, CONTAINER_IF)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                } else {
                    Err(format!("{veth} does not exist"))
                };
                if let Err(e) = attached {
                    tracing::warn!(agent = %agent, error = %e, "adopted container: network attach failed");
                }
            }
            let frozen = cgroup.is_frozen();
            let (ended, _) = watch::channel(false);
            let run = Arc::new(Running {
                leader,
                identity,
                oom_baseline: cgroup.oom_kills(),
                cgroup,
                stopping: AtomicBool::new(false),
                paused: AtomicBool::new(frozen),
                ended,
            });
            let state = if frozen {
                RunState::Paused
            } else {
                RunState::Running
            };
            self.slots.started(&agent, Arc::clone(&run), base, state);
            tracing::info!(agent = %agent, leader = identity.pid, "adopted a running nixos container");
            tokio::spawn(Arc::clone(self).watch(agent.clone(), run));
            adopted.push(agent);
        }
        adopted
    }
}

/// Whether the daemon's network namespace has an interface `name`.
fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which
    // only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

impl Runtime for NixosContainerRuntime {
    fn name(&self) -> &'static str {
        "nixos-container"
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
        Box::pin(self.shared.rebuild(agent))
    }

    fn destroy<'a>(
        &'a self,
        agent: &'a AgentName,
        purge: bool,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.destroy(agent, purge))
    }

    /// A new spec (an approved config) takes effect at the next start,
    /// which rebuilds the container from the flake first.
    fn set_agent<'a>(
        &'a self,
        agent: &'a AgentName,
        spec: AgentSpec,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.shared.slots.set_spec(agent, spec);
            self.shared
                .stale
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(agent.clone());
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
        Box::pin(self.shared.adopt())
    }

    /// The tool calls and their output (the container's own output is in
    /// the host's journal, `journalctl -u container@<c>`).
    fn journal(&self, agent: &AgentName, lines: u32) -> Result<Vec<String>, RuntimeError> {
        if !self.shared.slots.contains(agent) {
            return Err(RuntimeError::UnknownAgent(agent.clone()));
        }
        let path = self.shared.journal_path(agent);
        match journal::tail_file(&path, lines as usize) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other.map_err(RuntimeError::io(agent, "reading its journal", &path)),
        }
    }

    fn autostart(&self) -> Vec<AgentName> {
        self.shared.slots.names()
    }

    /// Containers are systemd's units: they keep running for the next
    /// daemon to adopt.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running = self.shared.slots.running_names();
            if !running.is_empty() {
                tracing::info!(
                    containers = running.len(),
                    "leaving the nixos containers running for the next daemon to adopt"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RoBind;

    fn spec() -> AgentSpec {
        AgentSpec {
            command: Vec::new(),
            env: BTreeMap::new(),
            limits: Default::default(),
            ro_binds: vec![RoBind {
                host: "/var/lib/hh/secrets/a/anthropic".into(),
                inside: "/run/secrets/anthropic".into(),
                idmap: true,
            }],
            socket_dir: "/run/hh/agents/a".into(),
            state_dir: "/var/lib/hh/agents/a/state".into(),
        }
    }

    #[test]
    fn the_conf_gets_the_range_and_the_binds_and_keeps_what_create_wrote() {
        let created = "PRIVATE_NETWORK=1\nHOST_ADDRESS=10.0.0.1\nLOCAL_ADDRESS=10.0.0.2\nFLAKE=/x/meta\nPRIVATE_USERS=5\nEXTRA_NSPAWN_FLAGS=\"--old\"\n";
        let bin = Path::new("/nix/store/x-hyperhive/bin");
        let conf = render_conf(created, 1048576, &spec(), Some(bin)).unwrap();
        expect_test::expect![[r#"
            PRIVATE_NETWORK=1
            HOST_ADDRESS=10.0.0.1
            LOCAL_ADDRESS=10.0.0.2
            FLAKE=/x/meta
            PRIVATE_USERS=1048576
            EXTRA_NSPAWN_FLAGS="--private-users-ownership=auto --bind=/var/lib/hh/agents/a/state:/state --bind=/run/hh/agents/a:/run/hive --bind-ro=/nix/store/x-hyperhive/bin:/run/hive-agent/bin --bind-ro=/var/lib/hh/secrets/a/anthropic:/run/secrets/anthropic:idmap"
        "#]]
        .assert_eq(&conf);
        // Rewriting is stable.
        assert_eq!(
            render_conf(&conf, 1048576, &spec(), Some(bin)).unwrap(),
            conf
        );
        // Without a hive-agent beside the core, no such bind.
        let bare = render_conf(created, 1048576, &spec(), None).unwrap();
        assert!(!bare.contains("/run/hive-agent/bin"), "{bare}");
    }

    #[test]
    fn a_path_the_conf_would_split_or_misparse_is_refused() {
        for bad in [
            "/var/lib/a b",
            "/var/lib/a:b",
            "/var/lib/$x",
            "relative",
            "/a\"b",
        ] {
            let mut s = spec();
            s.state_dir = bad.into();
            assert_eq!(
                render_conf("", 1, &s, None).unwrap_err(),
                PathBuf::from(bad)
            );
            let dir = Path::new(bad);
            assert_eq!(
                render_conf("", 1, &spec(), Some(dir)).unwrap_err(),
                PathBuf::from(bad)
            );
        }
    }

    #[test]
    fn the_leader_must_be_below_its_container_unit() {
        let c = "h-abcdgbxcr";
        assert!(in_container_unit(
            "0::/machine.slice/container@h-abcdgbxcr.service/payload\n",
            c
        ));
        assert!(in_container_unit(
            "1:name=systemd:/machine.slice/container@h-abcdgbxcr.service\n0::/\n",
            c
        ));
        assert!(!in_container_unit(
            "0::/machine.slice/container@h-abcdgbxcrx.service\n",
            c
        ));
        assert!(!in_container_unit(
            "0::/system.slice/hive-core.service\n",
            c
        ));
        assert!(!in_container_unit(
            "4:memory:/machine.slice/container@h-abcdgbxcr.service\n",
            c
        ));
    }

    #[test]
    fn every_argv_is_fixed_by_the_container_and_flake() {
        let a = AgentName::new("alice").unwrap();
        let flake = argv::flake(Path::new("/var/lib/hyperhive"), &a);
        assert_eq!(flake, "/var/lib/hyperhive/meta#alice");
        assert_eq!(
            argv::create(
                "h-alice",
                &flake,
                Some(("10.1.0.1".parse().unwrap(), "10.1.0.2".parse().unwrap()))
            )
            .join(" "),
            "create h-alice --flake /var/lib/hyperhive/meta#alice --host-address 10.1.0.1 --local-address 10.1.0.2"
        );
        assert_eq!(
            argv::update("h-alice", &flake).join(" "),
            "update h-alice --flake /var/lib/hyperhive/meta#alice"
        );
        assert_eq!(
            argv::leader("h-alice").join(" "),
            "show h-alice --property=Leader --value"
        );
    }
}
