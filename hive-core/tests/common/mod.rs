//! Shared helpers for hive-core's integration tests and its benchmark:
//! start the real `hive-core` binary on temporary directories, wait for its
//! sockets, speak raw JSON lines to an agent socket, kill it with SIGKILL,
//! restart it, and skip-or-fail for tests that need root or a tool.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod daemon;
pub mod leftovers;
pub mod netns;
pub mod notify;

pub use leftovers::kill_containers_under;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hive_proto::client::operator::OperatorClient;
use hive_proto::operator::{AdminRequest, OperatorRequest, OperatorResponse};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The daemon under test.
pub const CORE_BIN: &str = env!("CARGO_BIN_EXE_hive-core");
/// Longest the daemon may take to bind its sockets.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a test waits for one reply line.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this run must not skip anything (`CI=true`, `CI=1`, ...): the
/// one definition in [`hive_proto::ci`], shared with hive-web's tests.
pub fn on_ci() -> bool {
    hive_proto::ci::on_ci()
}

/// For a test that cannot run here: panics under `CI=true`, otherwise
/// prints why and lets the caller return.
pub fn skip_or_fail(why: &str) {
    if on_ci() {
        panic!("this test cannot run here, and CI=true forbids skipping: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Polls `check` every 20 ms until it holds or [`REPLY_TIMEOUT`] passes;
/// says whether it held. Tests wait for a state, never assert a time.
pub async fn poll_until(mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + REPLY_TIMEOUT;
    while Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Whether the test runs as root (needed to switch uids).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A temporary hive: its directories, config file and daemon process.
pub struct TestHive {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Run the daemon in a network namespace of its own, made at its first
    /// start and kept for every restart (a restarted daemon must see the
    /// veths of the containers it adopts): container runtimes install the
    /// hive's nftables table, which is per namespace, so parallel test
    /// hives do not fight over one table.
    pub own_netns: bool,
    /// Or run it in this network namespace (a file such as
    /// `/run/netns/NAME`, entered with `nsenter --net`, which leaves `/sys`
    /// alone so nspawn works there).
    pub netns: Option<String>,
    /// The namespace `own_netns` made (deleted after the daemon on drop).
    own_ns: Option<netns::Netns>,
    child: Option<Child>,
}

impl TestHive {
    /// A hive with `agents` (default policies) and the `detached` runtime,
    /// so nothing but the test talks on the agent sockets.
    pub fn new(agents: &[&str]) -> Self {
        let tables: String = agents.iter().map(|a| format!("[agents.{a}]\n")).collect();
        Self::with_config("", &tables)
    }

    /// A hive whose config has `top` (top-level keys) and `agents` (the
    /// `[agents.*]` tables) added to the temporary directories.
    pub fn with_config(top: &str, agents: &str) -> Self {
        Self::with_runtime("detached", top, agents)
    }

    /// Like [`TestHive::with_config`], with `runtime = "<runtime>"`.
    pub fn with_runtime(runtime: &str, top: &str, agents: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hive-core-test")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("hive.toml");
        let config = format!(
            "state_dir = {:?}\nruntime_dir = {:?}\nruntime = {runtime:?}\n{top}\n{agents}",
            dir.path().join("lib"),
            dir.path().join("run"),
        );
        fs::write(&config_path, config).expect("writing config");
        Self {
            dir,
            config_path,
            own_netns: matches!(runtime, "nspawn" | "nixos-container"),
            netns: None,
            own_ns: None,
            child: None,
        }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn agent_socket(&self, agent: &str) -> PathBuf {
        self.runtime_dir()
            .join("agents")
            .join(agent)
            .join("agent.sock")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.runtime_dir().join("admin.sock")
    }

    pub fn web_socket(&self) -> PathBuf {
        self.runtime_dir().join("web.sock")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("lib").join("hive.db")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("core.log")
    }

    /// The config repo (`<state_dir>/meta`).
    pub fn meta_dir(&self) -> PathBuf {
        self.dir.path().join("lib").join("meta")
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the daemon and waits until `admin.sock` (bound last) accepts.
    pub fn start(&mut self) {
        self.spawn_with_env(&[]);
        self.wait_for_admin_socket();
    }

    /// Starts the daemon with extra environment and returns at once.
    pub fn spawn_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.child.is_none(), "daemon already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        if self.netns.is_none() && self.own_netns && self.own_ns.is_none() {
            static HIVES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = HIVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.own_ns = Some(netns::Netns::new(&format!("th{n}")));
        }
        let ns = self
            .netns
            .as_ref()
            .or(self.own_ns.as_ref().map(|ns| &ns.path));
        let mut cmd = if let Some(ns) = ns {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg("--").arg(CORE_BIN);
            c
        } else {
            Command::new(CORE_BIN)
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning hive-core");
        self.child = Some(child);
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not running").id()
    }

    /// Waits for the daemon to exit by itself (bounded by [`START_TIMEOUT`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hive-core did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_admin_socket(&mut self) {
        let (sock, log) = (self.admin_socket(), self.log_path());
        daemon::wait_until_accepting(&mut self.child, &sock, START_TIMEOUT, &log);
    }

    /// SIGKILL: no shutdown, no flush, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit()
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// An operator client on `admin.sock` (as root, or whoever runs this).
    pub async fn admin(&self) -> OperatorClient<AdminRequest> {
        OperatorClient::connect(self.admin_socket())
            .await
            .unwrap_or_else(|e| panic!("admin.sock: {e}\n{}", self.log()))
    }

    /// One operator call on a fresh admin connection.
    pub async fn operator(&self, req: OperatorRequest) -> OperatorResponse {
        self.admin()
            .await
            .call(AdminRequest::Operator(req))
            .await
            .unwrap_or_else(|e| panic!("operator call: {e}"))
    }
}

impl Drop for TestHive {
    fn drop(&mut self) {
        self.kill9();
        // Containers outlive the daemon by design; a test's must not.
        kill_containers_under(self.dir.path());
    }
}

impl TestHive {
    /// Every agent's status row, from `ListAgents`.
    pub async fn agents(&self) -> Vec<hive_proto::view::AgentSummary> {
        match self.operator(OperatorRequest::ListAgents).await {
            OperatorResponse::Agents(rows) => rows,
            other => panic!("ListAgents answered {other:?}"),
        }
    }

    /// One agent's status row.
    pub async fn agent(&self, name: &str) -> hive_proto::view::AgentSummary {
        self.agents()
            .await
            .into_iter()
            .find(|a| a.name.as_str() == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// Waits (up to [`REPLY_TIMEOUT`]) until `name` has a row (an approved
    /// spawn gets one once its deploy registers it) that satisfies `want`;
    /// returns it, or panics with the last row and the daemon's log.
    pub async fn wait_agent(
        &self,
        name: &str,
        what: &str,
        mut want: impl FnMut(&hive_proto::view::AgentSummary) -> bool,
    ) -> hive_proto::view::AgentSummary {
        let end = Instant::now() + REPLY_TIMEOUT;
        loop {
            let row = self
                .agents()
                .await
                .into_iter()
                .find(|a| a.name.as_str() == name);
            match row {
                Some(row) if want(&row) => return row,
                Some(row) if Instant::now() > end => {
                    panic!("{name} never {what}: {row:?}\n{}", self.log())
                }
                None if Instant::now() > end => {
                    panic!("{name} never had a row ({what})\n{}", self.log())
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A lifecycle action through `admin.sock`, which must succeed.
    pub async fn lifecycle(&self, name: &str, action: hive_proto::operator::LifecycleAction) {
        match self.try_lifecycle(name, action).await {
            Ok(OperatorResponse::Done) => {}
            other => panic!("{action:?} {name}: {other:?}\n{}", self.log()),
        }
    }

    /// A lifecycle action through `admin.sock`; the answer or the refusal.
    pub async fn try_lifecycle(
        &self,
        name: &str,
        action: hive_proto::operator::LifecycleAction,
    ) -> Result<OperatorResponse, hive_proto::client::ClientError> {
        let name = hive_proto::AgentName::new(name).expect("agent name");
        self.admin()
            .await
            .call(AdminRequest::Operator(OperatorRequest::Lifecycle {
                name,
                action,
            }))
            .await
    }
}

/// Whether `systemd-nspawn` containers can run here (root and the tool);
/// otherwise [`skip_or_fail`] and `false`.
pub fn nspawn_available() -> bool {
    if !is_root() {
        skip_or_fail("nspawn containers need root");
        return false;
    }
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("systemd-nspawn").is_file());
    if !found {
        skip_or_fail("systemd-nspawn is not installed (apt-get install systemd-container)");
    }
    found
}

/// A raw JSON-lines connection to an agent socket: the test writes exact
/// bytes and reads exact lines. Pushed lines (`"event"`) that arrive while
/// waiting for a reply are kept in `pushes`.
pub struct LineConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    pub pushes: std::collections::VecDeque<Value>,
    next_id: u64,
}

impl LineConn {
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(path).await?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
            pushes: Default::default(),
            next_id: 1,
        })
    }

    /// Writes `bytes` as they are (add the newline yourself).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Writes one JSON object and a newline.
    pub async fn write_json(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(v).expect("json");
        line.push(b'\n');
        self.writer.write_all(&line).await
    }

    /// The next line, parsed; `None` at EOF or on a reset connection.
    pub async fn next_line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut line)).await {
            Err(_) => panic!("no line within {REPLY_TIMEOUT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(_)) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("core sent a non-JSON line {line:?}: {e}")),
            ),
        }
    }

    /// Sends `{"id": <next>, "op": op, ...fields}` and returns the reply
    /// with that id.
    pub async fn request(&mut self, op: &str, fields: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"id": id, "op": op});
        if let (Some(obj), Some(extra)) = (req.as_object_mut(), fields.as_object()) {
            obj.extend(extra.clone());
        }
        self.write_json(&req).await.expect("write");
        self.reply_to(id).await
    }

    /// Reads lines until the reply for `id`, keeping pushes.
    pub async fn reply_to(&mut self, id: u64) -> Value {
        loop {
            let line = self
                .next_line()
                .await
                .expect("connection closed before the reply");
            if line.get("event").is_some() {
                self.pushes.push_back(line);
            } else if line["id"] == json!(id) {
                return line;
            } else {
                panic!("unexpected line while waiting for {id}: {line}");
            }
        }
    }

    /// The next pushed line (from the queue or the socket).
    pub async fn next_push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        loop {
            let line = self.next_line().await.expect("connection closed");
            if line.get("event").is_some() {
                return line;
            }
        }
    }
}

/// The error code of a reply line, or `None` if it is `ok`.
pub fn error_code(reply: &Value) -> Option<String> {
    if reply["ok"] == json!(true) {
        None
    } else {
        Some(reply["error"]["code"].as_str().unwrap_or("?").to_owned())
    }
}

/// Runs `program args` as `uid:gid` (no supplementary groups) with `stdin`
/// as its input; returns its exit status, stdout and stderr.
pub fn run_as(
    uid: u32,
    gid: u32,
    program: &str,
    args: &[&str],
    stdin: &[u8],
) -> (ExitStatus, Vec<u8>, String) {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        // std drops supplementary groups when root changes the uid.
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    // The program may close the connection (and exit) before reading all of
    // its input — a refused peer does exactly that — so a broken pipe here
    // is an answer, not a test failure.
    match input.write_all(stdin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing stdin of {program}: {e}"),
    }
    drop(input);
    let output = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status, output.stdout, err)
}

/// Plain `git -C repo args…` (the operator's view of the config repo);
/// panics unless it succeeds, returns its stdout.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A human description of how a process ended.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

/// A binary of the workspace built next to `hive-core` (`hivectl`,
/// `hive-agent`: they belong to hive-proto, so cargo gives hive-core's tests
/// no `CARGO_BIN_EXE_*` for them). `None`, after [`skip_or_fail`], if it is
/// not built: `cargo build --workspace --all-targets` builds it.
pub fn sibling_bin(name: &str) -> Option<PathBuf> {
    let dir = Path::new(CORE_BIN)
        .parent()
        .expect("hive-core has a directory");
    let bin = dir.join(name);
    if bin.is_file() {
        Some(bin)
    } else {
        skip_or_fail(&format!(
            "{name} is not built in {}: run cargo build -p hive-proto \
             (or cargo build --workspace --all-targets)",
            dir.display()
        ));
        None
    }
}

/// The Python of the virtual environment holding the official MCP Python
/// SDK, which `scripts/test-all.sh` creates: `$HIVE_MCP_PYTHON`, else
/// `target/mcp-venv/bin/python` in the workspace. `None`, after
/// [`skip_or_fail`], if it is missing or has no `mcp` package.
pub fn mcp_python() -> Option<PathBuf> {
    let python = std::env::var_os("HIVE_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/python")
        });
    let has_sdk = Command::new(&python)
        .args(["-c", "import mcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_sdk {
        Some(python)
    } else {
        skip_or_fail(&format!(
            "no Python with the MCP SDK at {} (scripts/test-all.sh creates it; or set \
             HIVE_MCP_PYTHON)",
            python.display()
        ));
        None
    }
}
