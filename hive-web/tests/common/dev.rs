//! Starts the real `hive-core dev` for integration tests.
//!
//! Where the binaries come from (the decision `docs/web.md` records):
//! `hive-web` is this package's own binary (`CARGO_BIN_EXE_hive-web`).
//! `hive-core` and `hive-agent` belong to other packages, which cargo does
//! not build for this package's tests, so the harness runs `cargo build -p
//! hive-core --bin hive-core -p hive-proto --bin hive-agent` once per test
//! process, into the same target directory and profile as the test binary
//! (a no-op when they are fresh; cargo releases its lock before running
//! tests, so this cannot deadlock). `HIVE_CORE_BIN` and `HIVE_AGENT_BIN`
//! override the build, e.g. to test installed binaries.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::http::Http;

/// The binaries the dev hive needs.
#[derive(Clone, Debug)]
pub struct Bins {
    pub core: PathBuf,
    pub agent: PathBuf,
    pub web: PathBuf,
}

/// `target/<profile>` of the running test binary.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_owned()
}

/// Where tests save screenshots and reports: `$HIVE_ARTIFACTS`, or
/// `target/artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("HIVE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            profile_dir()
                .parent()
                .map(|t| t.join("artifacts"))
                .unwrap_or_else(|| PathBuf::from("artifacts"))
        });
    fs::create_dir_all(&dir).expect("create the artifacts dir");
    dir
}

/// Builds (or finds) `hive-core` and `hive-agent`; once per process.
pub fn bins() -> Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let web = PathBuf::from(env!("CARGO_BIN_EXE_hive-web"));
        let profile = profile_dir();
        let core_env = std::env::var_os("HIVE_CORE_BIN").map(PathBuf::from);
        let agent_env = std::env::var_os("HIVE_AGENT_BIN").map(PathBuf::from);
        if let (Some(core), Some(agent)) = (core_env.clone(), agent_env.clone()) {
            return Bins { core, agent, web };
        }
        let target = profile.parent().expect("target dir").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "hive-core",
            "--bin",
            "hive-core",
            "-p",
            "hive-proto",
            "--bin",
            "hive-agent",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for hive-core");
        assert!(
            status.success(),
            "cargo build of hive-core/hive-agent failed"
        );
        Bins {
            core: core_env.unwrap_or_else(|| profile.join("hive-core")),
            agent: agent_env.unwrap_or_else(|| profile.join("hive-agent")),
            web,
        }
    })
    .clone()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How a dev hive is started.
#[derive(Clone, Debug, Default)]
pub struct DevOpts {
    /// `--agents`; `None` keeps dev's default (alice, bob, carol).
    pub agents: Option<String>,
    /// `--no-demo`: sockets only, no agent process.
    pub no_demo: bool,
    /// `--no-web`: the test starts its own gateway.
    pub no_web: bool,
    /// `--allow-unsandboxed`.
    pub allow_unsandboxed: bool,
    /// `PATH` for the core (and so for the bubblewrap it looks for).
    pub path: Option<String>,
    /// `--harness 'CMD ARGS'`: agents run `hive-agent run` turns of this
    /// shell command instead of the scripted demo.
    pub harness: Option<String>,
}

/// A running `hive-core dev`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct DevHive {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub port: u16,
    pub opts: DevOpts,
    child: Option<Child>,
    log: PathBuf,
}

impl DevHive {
    /// Starts a dev hive in a fresh directory.
    pub fn start(opts: DevOpts) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("hive-web-test-")
            .tempdir()
            .expect("a temp dir");
        let dir = tmp.path().to_owned();
        let mut hive = Self {
            dir,
            _tmp: Some(tmp),
            port: free_port(),
            opts,
            child: None,
            log: PathBuf::new(),
        };
        hive.spawn();
        hive
    }

    /// (Re)starts the core in the same directory and on the same port.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bins = bins();
        let n = fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0);
        self.log = self.dir.join(format!("core-{n}.log"));
        let log = fs::File::create(&self.log).expect("core log file");
        let mut cmd = Command::new(&bins.core);
        // The process runtime, named: as root the default would be nspawn,
        // whose table must not land in the machine's network namespace.
        cmd.arg("dev")
            .args(["--runtime", "process"])
            .arg("--state-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--web-bin")
            .arg(&bins.web)
            .arg("--agent-bin")
            .arg(&bins.agent);
        if let Some(a) = &self.opts.agents {
            cmd.arg("--agents").arg(a);
        }
        if self.opts.no_demo {
            cmd.arg("--no-demo");
        }
        if self.opts.no_web {
            cmd.arg("--no-web");
        }
        if self.opts.allow_unsandboxed {
            cmd.arg("--allow-unsandboxed");
        }
        if let Some(script) = &self.opts.harness {
            cmd.arg("--harness").arg(script);
        }
        if let Some(path) = &self.opts.path {
            cmd.env("PATH", path);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start hive-core dev"));
    }

    /// The core's log so far (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn http(&self) -> Http {
        Http::new(&self.base())
    }

    pub fn web_sock(&self) -> PathBuf {
        self.dir.join("run").join("web.sock")
    }

    pub fn agent_sock(&self, name: &str) -> PathBuf {
        self.dir
            .join("run")
            .join("agents")
            .join(name)
            .join("agent.sock")
    }

    /// The token file the gateway should read: dev's copy for `nobody`
    /// when root, the original otherwise.
    pub fn web_tokens_file(&self) -> PathBuf {
        let copy = self.dir.join("web").join("operator-token");
        if copy.exists() {
            copy
        } else {
            self.dir.join("operator-token")
        }
    }

    /// The operator token dev wrote.
    pub fn token(&self) -> String {
        let text = fs::read_to_string(self.dir.join("operator-token")).expect("operator-token");
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .expect("a token line")
            .to_owned()
    }

    /// Waits until the core's web socket exists (the core is up).
    pub fn wait_for_socket(&self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if self.web_sock().exists() && self.dir.join("operator-token").exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until the gateway answers `/readyz` with 200.
    pub async fn wait_ready(&self, deadline: Duration) {
        let http = self.http();
        let ok = super::poll(deadline, Duration::from_millis(50), || {
            let http = http.clone();
            async move {
                match http.get("/readyz", &[]).await {
                    Ok(r) if r.status == 200 => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        assert!(
            ok.is_some(),
            "the dev hive did not become ready within {deadline:?}; core log:\n{}",
            self.log()
        );
    }

    /// Stops the core (and with it, unless `--no-web`, the gateway it
    /// started): SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits up to `deadline` for the core to exit by itself; its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the core at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DevHive {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An IPv4 address of this machine that is not loopback, for tests that
/// need a TCP peer the gateway must not trust: the source address of the
/// default route, else the first global address `ip` lists, else (as root,
/// on a machine with no network at all) [`FALLBACK_ADDR`] added to `lo`
/// for as long as the returned value lives.
pub fn non_loopback_ipv4() -> Option<NonLoopback> {
    use std::net::{IpAddr, UdpSocket};
    // connect() on UDP only picks a route and a source address; nothing is
    // sent.
    let routed = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("198.51.100.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .ok()
        .and_then(|a| match a.ip() {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(v4),
            _ => None,
        });
    let listed = || {
        let out = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "scope", "global"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?
            .split('/')
            .next()?
            .parse()
            .ok()
    };
    if let Some(ip) = routed.or_else(listed) {
        return Some(NonLoopback { ip, added: false });
    }
    let added = Command::new("ip")
        .args(["addr", "add", &format!("{FALLBACK_ADDR}/32"), "dev", "lo"])
        .status()
        .is_ok_and(|s| s.success());
    added.then_some(NonLoopback {
        ip: FALLBACK_ADDR,
        added: true,
    })
}

/// What [`non_loopback_ipv4`] adds to `lo` when the machine has no other
/// address (TEST-NET-2, never routed).
pub const FALLBACK_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 77);

/// A non-loopback address of this machine; one the test added is removed
/// on drop.
pub struct NonLoopback {
    pub ip: std::net::Ipv4Addr,
    added: bool,
}

impl Drop for NonLoopback {
    fn drop(&mut self) {
        if self.added {
            let _ = Command::new("ip")
                .args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"])
                .status();
        }
    }
}

/// A `hive-web` the test started itself (for `--no-web` hives), stopped on
/// drop.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts `hive-web` for `hive`'s core on `127.0.0.1`, as `nobody`
    /// when root.
    pub fn start(hive: &DevHive, extra: &[&str]) -> Self {
        Self::start_on(hive, "127.0.0.1", extra)
    }

    /// Starts `hive-web` for `hive`'s core listening on `ip` (a free port),
    /// as `nobody` when root.
    pub fn start_on(hive: &DevHive, ip: &str, extra: &[&str]) -> Self {
        Self::for_core(
            &hive.web_sock(),
            &hive.web_tokens_file(),
            &hive.dir,
            ip,
            extra,
        )
    }

    /// Starts `hive-web` on `web_sock` with `tokens_file`, listening on
    /// `ip` (a free port), as `nobody` when root; its log goes to
    /// `log_dir/web-<port>.log`.
    pub fn for_core(
        web_sock: &Path,
        tokens_file: &Path,
        log_dir: &Path,
        ip: &str,
        extra: &[&str],
    ) -> Self {
        let port = free_port();
        let log = log_dir.join(format!("web-{port}.log"));
        let file = fs::File::create(&log).expect("web log");
        let mut cmd = Command::new(bins().web);
        cmd.arg("--core-socket")
            .arg(web_sock)
            .arg("--listen")
            .arg(format!("{ip}:{port}"))
            .arg("--tokens-file")
            .arg(tokens_file)
            .args(extra);
        if super::is_root() {
            cmd.args(["--user", "nobody"]);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        Self {
            child: cmd.spawn().expect("start hive-web"),
            port,
            log,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn http(&self) -> Http {
        Http::new(&self.base())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/healthz` answers (the gateway is serving).
    pub async fn wait_serving(&self, deadline: Duration) {
        let http = self.http();
        let ok = super::poll(deadline, Duration::from_millis(20), || {
            let http = http.clone();
            async move { http.get("/healthz", &[]).await.ok().map(|_| ()) }
        })
        .await;
        assert!(ok.is_some(), "hive-web did not serve; log:\n{}", self.log());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
