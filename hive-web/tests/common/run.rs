//! Starts the real `hive-core run` with a config file of the test's own
//! (any runtime, any `[agents.*]` tables), for tests that need more than
//! `hive-core dev`'s fixed demo agents: the hive's directories, a fresh
//! operator token (root's, 0600, where only `hive-web` reads it before it
//! drops to `nobody`), `admin.sock` for the test's operator calls, and a
//! real `hive-web` on the core's `web.sock`.
//!
//! A container runtime's daemon runs in a network namespace of its own
//! (`unshare --net`, loopback up), so the hive's nftables table and the
//! containers' veths never land in the machine's namespace. On drop the
//! daemon is stopped and every container under the hive's directory is
//! killed — also when the test failed halfway. It must never touch a
//! container or a namespace it did not start.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hive_proto::client::operator::OperatorClient;
use hive_proto::operator::{AdminRequest, OperatorRequest, OperatorResponse};
use hive_proto::view::AgentSummary;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::daemon::wait_until_accepting;
use super::dev::{bins, Gateway};
use super::leftovers::kill_containers_under;

/// Longest the daemon may take to bind `admin.sock`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `hive-core run`; stopped, and its containers killed, on drop.
pub struct RunHive {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl RunHive {
    /// Writes `hive.toml` (`runtime`, the top-level keys `top`, the
    /// `[agents.*]` tables `agents`) and starts the daemon on it; returns
    /// once `admin.sock` accepts.
    pub fn start(runtime: &str, top: &str, agents: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("hive-web-run-")
            .tempdir()
            .expect("a temp dir");
        let dir = tmp.path().to_owned();
        // hive-web runs as nobody: it must reach run/web.sock.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).unwrap();
        let web_user = if super::is_root() {
            "web_user = \"nobody\"\n"
        } else {
            ""
        };
        let config = format!(
            "state_dir = {:?}\nruntime_dir = {:?}\nruntime = {runtime:?}\n{web_user}{top}\n{agents}",
            dir.join("lib"),
            dir.join("run"),
        );
        fs::write(dir.join("hive.toml"), config).unwrap();
        write_token(&dir.join("operator-token"));
        let mut hive = Self {
            log: dir.join("core.log"),
            dir,
            _tmp: tmp,
            child: None,
        };
        hive.spawn(runtime != "process" && runtime != "detached");
        hive
    }

    fn spawn(&mut self, own_netns: bool) {
        let log = fs::File::create(&self.log).expect("core log");
        let core = bins().core;
        let mut cmd = if own_netns {
            let mut c = Command::new("unshare");
            c.args([
                "--net",
                "--",
                "sh",
                "-ec",
                "ip link set lo up; exec \"$0\" \"$@\"",
            ])
            .arg(core);
            c
        } else {
            Command::new(core)
        };
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join("hive.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start hive-core run"));
        let sock = self.admin_sock();
        wait_until_accepting(&mut self.child, &sock, START_TIMEOUT, &self.log);
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn admin_sock(&self) -> PathBuf {
        self.dir.join("run/admin.sock")
    }

    pub fn agent_sock(&self, name: &str) -> PathBuf {
        self.dir.join("run/agents").join(name).join("agent.sock")
    }

    /// `name`'s state dir on the host (`/state` inside its container).
    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.join("lib/agents").join(name).join("state")
    }

    /// The config repo (`<state_dir>/meta`).
    pub fn meta(&self) -> PathBuf {
        self.dir.join("lib/meta")
    }

    /// The operator token the gateway accepts.
    pub fn token(&self) -> String {
        fs::read_to_string(self.dir.join("operator-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A real `hive-web` on this core's `web.sock` (as `nobody` when root).
    pub fn gateway(&self) -> Gateway {
        Gateway::for_core(
            &self.dir.join("run/web.sock"),
            &self.dir.join("operator-token"),
            &self.dir,
            "127.0.0.1",
            &[],
        )
    }

    /// One operator call on a fresh `admin.sock` connection.
    pub async fn operator(&self, req: OperatorRequest) -> OperatorResponse {
        let admin = OperatorClient::<AdminRequest>::connect(self.admin_sock())
            .await
            .unwrap_or_else(|e| panic!("admin.sock: {e}\n{}", self.log()));
        admin
            .call(AdminRequest::Operator(req))
            .await
            .unwrap_or_else(|e| panic!("operator call: {e}\n{}", self.log()))
    }

    /// `name`'s row from `ListAgents`.
    pub async fn agent(&self, name: &str) -> AgentSummary {
        match self.operator(OperatorRequest::ListAgents).await {
            OperatorResponse::Agents(rows) => rows
                .into_iter()
                .find(|a| a.name.as_str() == name)
                .unwrap_or_else(|| panic!("no agent {name}")),
            other => panic!("ListAgents answered {other:?}"),
        }
    }

    /// Polls `name`'s row until `want` holds; the row, or a panic naming
    /// `what` with the last row and the daemon's log.
    pub async fn wait_agent(
        &self,
        name: &str,
        what: &str,
        want: impl Fn(&AgentSummary) -> bool,
    ) -> AgentSummary {
        let found = super::poll(START_TIMEOUT, Duration::from_millis(50), || async {
            let row = self.agent(name).await;
            want(&row).then_some(row)
        })
        .await;
        match found {
            Some(row) => row,
            None => panic!(
                "{name} never {what}: {:?}\n{}",
                self.agent(name).await,
                self.log()
            ),
        }
    }
}

impl Drop for RunHive {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < end && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Containers outlive the daemon by design; a test's must not.
        kill_containers_under(&self.dir);
    }
}

/// A fresh 64-hex-digit token in `path`, mode 0600.
fn write_token(path: &Path) {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("random bytes");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(path, format!("{hex}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}
