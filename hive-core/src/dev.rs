//! `hive-core dev`: a whole local hive in one command, for development.
//!
//! Under `DIR`: `run/` (the runtime dir: `admin.sock`, `web.sock`,
//! `agents/<name>/agent.sock`), `lib/` (the state dir: store, agent state)
//! and `operator-token` (mode 0600, a fresh random token on every start,
//! one per line; it never appears in argv, the environment or a log). The
//! daemon runs in this process; `hive-web` is a child process, and the demo
//! agents (`hive-agent demo`, one per agent; with `--harness 'CMD ARGS'`,
//! `hive-agent run -- /bin/sh -c 'CMD ARGS'`) run through the `process`
//! runtime (children) or the `nspawn` runtime (root only), each in its own
//! `systemd-nspawn` container behind the hive's nftables table, as
//! `hive-core run` would run them. `--runtime auto`, the default, picks
//! nspawn as root where `systemd-nspawn` is installed and process
//! otherwise; the start-up line says which and why. Either way they are stopped on
//! exit (SIGTERM, then SIGKILL), containers included: a dev hive leaves
//! nothing for a later daemon to adopt.
//!
//! Run as root, `hive-web` is started with `--user nobody` and drops to it
//! before it opens anything, so the daemon makes what it needs reachable for
//! that uid and nothing more: `web.sock` gets nobody's group, `DIR` and
//! `DIR/run` get the search bit for others, and the token is copied to
//! `DIR/web/operator-token`, owned by nobody with mode 0400 inside a 0700
//! directory owned by nobody (the original stays root's, 0600). Production
//! runs `hive-web` as its own user with the token from a systemd
//! credential instead.
//!
//! This module must never put the token anywhere but those two files.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions, Permissions};
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hive_proto::AgentName;
use nix::unistd::{chown, Gid, Uid};
use rand::RngCore;
use tokio::process::Command;

use crate::config::{AgentPolicy, Config, RuntimeKind};
use crate::daemon::{self, Daemon, DaemonError, Options};
use crate::peer::{self, PeerError};
use crate::runtime::supervise::{Supervised, STOP_GRACE};
use crate::unix_socket::{self, SocketSetupError};

/// The agents `dev` runs when `--agents` is not given.
pub const DEFAULT_AGENTS: &[&str] = &["alice", "bob", "carol"];
/// Random bytes in the operator token (hex-encoded in the file).
pub const TOKEN_BYTES: usize = 32;
/// The unprivileged user `hive-web` drops to when `dev` runs as root.
pub const DEV_WEB_USER: &str = "nobody";

/// Which runtime `dev` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevRuntime {
    Process,
    Nspawn,
}

/// What `--runtime` asked for: a runtime, or `auto` (the default), which
/// picks `nspawn` where it can run (root, `systemd-nspawn` installed) and
/// `process` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevRuntimeChoice {
    Auto,
    Exactly(DevRuntime),
}

/// The runtime `choice` resolves to here, and why, for the start-up line.
pub fn resolve_runtime(
    choice: DevRuntimeChoice,
    as_root: bool,
    nspawn_installed: bool,
) -> (DevRuntime, &'static str) {
    match choice {
        DevRuntimeChoice::Exactly(DevRuntime::Nspawn) => (DevRuntime::Nspawn, "--runtime nspawn"),
        DevRuntimeChoice::Exactly(DevRuntime::Process) => {
            (DevRuntime::Process, "--runtime process")
        }
        DevRuntimeChoice::Auto if !as_root => (
            DevRuntime::Process,
            "not running as root, which systemd-nspawn containers need",
        ),
        DevRuntimeChoice::Auto if !nspawn_installed => (
            DevRuntime::Process,
            "systemd-nspawn is not installed (apt-get install systemd-container)",
        ),
        DevRuntimeChoice::Auto => (
            DevRuntime::Nspawn,
            "running as root with systemd-nspawn installed",
        ),
    }
}

/// `hive-core dev`'s flags, parsed.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub agents: Vec<AgentName>,
    /// Sockets only: no agent is started.
    pub no_demo: bool,
    /// Do not start `hive-web`.
    pub no_web: bool,
    pub runtime: DevRuntimeChoice,
    pub web_bin: Option<PathBuf>,
    pub agent_bin: Option<PathBuf>,
    /// `--harness 'CMD ARGS'`: agents run `hive-agent run -- /bin/sh -c
    /// 'CMD ARGS'` instead of `hive-agent demo`.
    pub harness: Option<String>,
    /// Run the demo agents even where nothing can isolate them (a banner on
    /// every page then says so).
    pub allow_unsandboxed: bool,
    /// `[network] reconcile_period_ms` for the dev hive.
    pub reconcile_period_ms: Option<u64>,
    /// `[network] doctor_targets` for the dev hive (`ADDR:PORT`).
    pub doctor_targets: Vec<String>,
}

/// Why `dev` could not start; each is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("--runtime nspawn runs agents in systemd-nspawn containers, which needs root; run it as root or use --runtime process")]
    NspawnNeedsRoot,
    #[error("--runtime nspawn needs systemd-nspawn (Debian/Ubuntu: apt-get install systemd-container); or use --runtime process")]
    NspawnMissing,
    #[error("no runtime can isolate agents here: install the package bubblewrap (or systemd-container, and run as root, for --runtime nspawn), or pass --allow-unsandboxed to run them without isolation")]
    NoIsolation,
    #[error("--agents names no agent")]
    NoAgents,
    #[error("{0}")]
    Network(String),
    #[error("state dir {path}: {why}")]
    StateDir { path: PathBuf, why: String },
    #[error("hive-web is not built (looked for {0}); run `cargo build -p hive-web`, pass --web-bin PATH, or add --no-web")]
    NoWebBin(PathBuf),
    #[error("hive-agent is not built (looked for {0}); run `cargo build -p hive-proto`, pass --agent-bin PATH, or add --no-demo")]
    NoAgentBin(PathBuf),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("giving {path} to {user}: {source}")]
    Chown {
        path: PathBuf,
        user: &'static str,
        source: nix::Error,
    },
    #[error("user {DEV_WEB_USER}: {0}")]
    WebUser(PeerError),
    #[error("the current user: {0}")]
    CurrentUser(String),
    #[error("starting hive-web: {0}")]
    WebSpawn(io::Error),
    #[error(transparent)]
    Setup(#[from] SocketSetupError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// Runs the local hive until `signal` resolves.
pub async fn run(opts: DevOptions, signal: impl Future<Output = ()>) -> Result<(), DevError> {
    if opts.agents.is_empty() {
        return Err(DevError::NoAgents);
    }
    // The same checks as the config file's `[network]` keys.
    let network = crate::config::validate_network(crate::config::RawNetwork {
        reconcile_period_ms: opts.reconcile_period_ms,
        doctor_targets: Some(opts.doctor_targets.clone()),
        ..Default::default()
    })
    .map_err(DevError::Network)?;
    let as_root = peer::running_as_root();
    let nspawn_installed = crate::runtime::nspawn::find_nspawn().is_some();
    let (runtime, why) = resolve_runtime(opts.runtime, as_root, nspawn_installed);
    if runtime == DevRuntime::Nspawn {
        if !as_root {
            return Err(DevError::NspawnNeedsRoot);
        }
        if !nspawn_installed {
            return Err(DevError::NspawnMissing);
        }
    }
    // Containers isolate by themselves; only the process runtime needs
    // bubblewrap.
    let sandbox_works = opts.no_demo
        || runtime == DevRuntime::Nspawn
        || crate::runtime::process::bubblewrap_works();
    if !sandbox_works && !opts.allow_unsandboxed {
        return Err(DevError::NoIsolation);
    }
    let web_bin = match opts.no_web {
        true => None,
        false => Some(find_bin(opts.web_bin.clone(), "hive-web").map_err(DevError::NoWebBin)?),
    };
    let agent_bin = match opts.no_demo {
        true => None,
        false => {
            Some(find_bin(opts.agent_bin.clone(), "hive-agent").map_err(DevError::NoAgentBin)?)
        }
    };
    let dir = prepare_state_dir(&opts.state_dir, as_root)?;
    let run_dir = dir.join("run");
    unix_socket::ensure_dir(&run_dir, daemon::RUNTIME_DIR_MODE, None)?;

    let token = fresh_token();
    let token_path = dir.join("operator-token");
    write_secret(&token_path, &token, None)?;
    // Run as root, hive-web is nobody and gets its own copy (see the header).
    let (web_user, tokens_file) = if as_root {
        let nobody = peer::lookup_user(DEV_WEB_USER).map_err(DevError::WebUser)?;
        let web_dir = dir.join("web");
        unix_socket::ensure_dir(&web_dir, 0o700, Some((Some(nobody.uid), Some(nobody.gid))))?;
        let copy = web_dir.join("operator-token");
        write_secret(&copy, &token, Some((nobody.uid, nobody.gid)))?;
        (nobody.name, copy)
    } else {
        let me = peer::lookup_uid(peer::own_uid())
            .map_err(|e| DevError::CurrentUser(e.to_string()))?
            .ok_or_else(|| DevError::CurrentUser("uid has no entry in the user database".into()))?;
        (me.name, token_path.clone())
    };
    drop(token);

    let mut agents = BTreeMap::new();
    for name in &opts.agents {
        let command = agent_bin.as_ref().map(|bin| {
            let bin = bin.to_string_lossy().into_owned();
            match &opts.harness {
                Some(cmd) => vec![
                    bin,
                    "run".into(),
                    "--".into(),
                    "/bin/sh".into(),
                    "-c".into(),
                    cmd.clone(),
                ],
                None => vec![bin, "demo".into()],
            }
        });
        agents.insert(
            name.clone(),
            AgentPolicy {
                command,
                ..AgentPolicy::default()
            },
        );
    }
    let config = Config {
        state_dir: dir.join("lib"),
        runtime_dir: run_dir.clone(),
        admin_group: None,
        web_user: Some(web_user.clone()),
        runtime: match (opts.no_demo, runtime) {
            (true, _) => RuntimeKind::Detached,
            (false, DevRuntime::Process) => RuntimeKind::Process,
            (false, DevRuntime::Nspawn) => RuntimeKind::Nspawn,
        },
        allow_unsandboxed: opts.allow_unsandboxed,
        event_retention: crate::config::DEFAULT_EVENT_RETENTION,
        network,
        restart: crate::config::RestartSettings::default(),
        stop_timeout: std::time::Duration::from_secs(crate::config::DEFAULT_STOP_TIMEOUT_S),
        uid_pool: Default::default(),
        nixos_container: Default::default(),
        message_retention: Some(std::time::Duration::from_secs(
            crate::config::DEFAULT_MESSAGE_RETENTION_DAYS * 24 * 3600,
        )),
        operator_message_retention: Some(std::time::Duration::from_secs(
            crate::config::DEFAULT_OPERATOR_MESSAGE_RETENTION_DAYS * 24 * 3600,
        )),
        agents,
    };
    let options = Options {
        runtime: None,
        hide: vec![dir.clone()],
        stop_containers_on_exit: true,
        // A local hive in a terminal; nobody waits for READY=1.
        notify_systemd: false,
        ..Options::default()
    };
    let daemon = Daemon::start(config.clone(), options).await?;
    match (opts.no_demo, runtime) {
        (true, _) => println!("runtime: none (--no-demo starts no agent)"),
        (false, DevRuntime::Nspawn) => {
            println!("runtime: nspawn, one systemd-nspawn container per agent ({why})")
        }
        (false, DevRuntime::Process) if sandbox_works => {
            println!("runtime: process, agents sandboxed by bubblewrap ({why})")
        }
        (false, DevRuntime::Process) => {
            println!("runtime: process, agents NOT isolated (--allow-unsandboxed; {why})")
        }
    }

    let web = match web_bin {
        None => {
            println!("hive-web not started (--no-web)");
            None
        }
        Some(bin) => {
            let mut cmd = Command::new(&bin);
            cmd.arg("--core-socket")
                .arg(config.web_socket())
                .arg("--listen")
                .arg(opts.listen.to_string())
                .arg("--tokens-file")
                .arg(&tokens_file);
            if as_root {
                cmd.arg("--user").arg(&web_user);
            }
            let on_exit = Box::new(|status: std::process::ExitStatus, stopping: bool| {
                if !stopping {
                    tracing::error!(%status, "hive-web exited; the dashboard is down");
                }
            });
            match Supervised::spawn(cmd, "hive-web", None, None, on_exit).await {
                Ok(child) => Some(child),
                Err(e) => {
                    daemon.shutdown().await;
                    return Err(DevError::WebSpawn(e));
                }
            }
        }
    };
    println!(
        "hyperhive dev hive: dashboard http://{}/ (log in with the token in {})",
        opts.listen,
        token_path.display()
    );
    println!(
        "operator shell: hivectl --socket {} agents",
        config.admin_socket().display()
    );

    signal.await;
    if let Some(web) = web {
        web.stop(STOP_GRACE).await;
    }
    daemon.shutdown().await;
    Ok(())
}

/// `explicit`, or `name` next to this executable.
fn find_bin(explicit: Option<PathBuf>, name: &str) -> Result<PathBuf, PathBuf> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(name)))
            .unwrap_or_else(|| PathBuf::from(name)),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(path)
    }
}

/// Creates `dir` if needed and checks it is a usable directory. As root it
/// also makes sure the unprivileged gateway can reach `dir/run/web.sock`:
/// `dir` gets the search bit for others, and every ancestor must have it.
fn prepare_state_dir(dir: &Path, as_root: bool) -> Result<PathBuf, DevError> {
    let bad = |why: String| DevError::StateDir {
        path: dir.to_owned(),
        why,
    };
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("exists and is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| bad(format!("cannot resolve it: {e}")))?;
    // A cheap writability probe that leaves nothing behind on success.
    let probe = dir.join(".hive-core-probe");
    fs::write(&probe, b"").map_err(|e| bad(format!("not writable: {e}")))?;
    let _ = fs::remove_file(&probe);
    if as_root {
        let mode = fs::metadata(&dir).map_err(|e| bad(e.to_string()))?.mode();
        fs::set_permissions(&dir, Permissions::from_mode((mode & 0o7777) | 0o001))
            .map_err(|e| bad(format!("cannot make it searchable: {e}")))?;
        for ancestor in dir.ancestors().skip(1) {
            let m = fs::metadata(ancestor).map_err(|e| bad(e.to_string()))?;
            if m.mode() & 0o001 == 0 {
                return Err(bad(format!(
                    "{} is not searchable by others, so hive-web (user {DEV_WEB_USER}) \
                     cannot reach the socket; choose a state dir elsewhere",
                    ancestor.display()
                )));
            }
        }
    }
    Ok(dir)
}

fn fresh_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Writes `token` and a newline to `path`, mode 0600 (0400 when `owner`
/// is given, then owned by it), replacing any old file atomically.
fn write_secret(path: &Path, token: &str, owner: Option<(u32, u32)>) -> Result<(), DevError> {
    let err = |source| DevError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    if let Some((uid, gid)) = owner {
        chown(&tmp, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|source| {
            DevError::Chown {
                path: path.to_owned(),
                user: DEV_WEB_USER,
                source,
            }
        })?;
        fs::set_permissions(&tmp, Permissions::from_mode(0o400)).map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_private_and_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("operator-token");
        write_secret(&p, &fresh_token(), None).unwrap();
        let first = fs::read_to_string(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(first.trim().len(), TOKEN_BYTES * 2);
        write_secret(&p, &fresh_token(), None).unwrap();
        assert_ne!(first, fs::read_to_string(&p).unwrap());
    }

    #[test]
    fn auto_picks_nspawn_only_as_root_with_nspawn_installed_and_says_why() {
        use DevRuntime::*;
        let auto = DevRuntimeChoice::Auto;
        assert_eq!(resolve_runtime(auto, true, true).0, Nspawn);
        let (rt, why) = resolve_runtime(auto, false, true);
        assert_eq!((rt, why.contains("root")), (Process, true));
        let (rt, why) = resolve_runtime(auto, true, false);
        assert_eq!((rt, why.contains("systemd-container")), (Process, true));
        // An explicit choice is kept; dev refuses nspawn where it cannot run.
        let explicit = DevRuntimeChoice::Exactly(Nspawn);
        assert_eq!(resolve_runtime(explicit, false, false).0, Nspawn);
        let explicit = DevRuntimeChoice::Exactly(Process);
        assert_eq!(resolve_runtime(explicit, true, true).0, Process);
    }

    #[test]
    fn a_file_is_not_a_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "").unwrap();
        let err = prepare_state_dir(&f, false).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
