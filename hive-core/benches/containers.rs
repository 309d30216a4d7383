//! Container start benchmark (not a test): how much the core adds to
//! starting an agent in a `systemd-nspawn` container, against a bare
//! `systemd-nspawn` run of the same root and the same command.
//!
//! - **pairs**: the real release `hive-core run` (runtime `nspawn`, in a
//!   network namespace of its own) with one agent whose command is
//!   `hive-agent recv --follow`. Core side: from the `Start` call on
//!   `admin.sock` to the agent's first request on its socket, read from the
//!   status row's `last_activity_at`. Bare side: the very argv and
//!   environment the core gave `systemd-nspawn` (read from `/proc` after a
//!   warm-up start) with the machine name, uid range, state and socket dirs
//!   swapped for the bench's own, spawned by the bench, to the first request
//!   line on the bench's own listener at that socket dir's `agent.sock`.
//!   Interleaved (core, bare, then bare, core, ...); the figure is the
//!   median of the per-pair ratios core / bare.
//! - **many**: a hive of `HIVE_BENCH_AGENTS` (20) such agents: from the
//!   daemon's spawn to the last one's first request, then from 20
//!   concurrent `Start` calls (after stopping them all) to the same, and the
//!   daemon's `VmRSS` with all of them running and connected.
//!
//! Root and `systemd-nspawn` are needed, and `hive-agent` built next to
//! `hive-core`. The bench runs in a network namespace of its own (the bare
//! containers' veths go there). Run it under the lock the container tests
//! use, after building:
//!
//! ```text
//! cargo build --release -p hive-proto --bin hive-agent
//! cargo bench -p hive-core --bench containers --no-run
//! cargo bench -p hive-core --bench containers
//! ```
//!
//! Knobs: `HIVE_BENCH_PAIRS` (5), `HIVE_BENCH_AGENTS` (20). Prints figures
//! and a markdown section for `docs/perf.md`; asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hive_proto::operator::{LifecycleAction, OperatorRequest, OperatorResponse};
use hive_proto::view::{AgentSummary, RunState};
use hive_proto::AgentName;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixListener;

use common::{kill_containers_under, nspawn_available, sibling_bin, TestHive};

/// The bare containers' uid range: far above the ranges the core's default
/// pool hands out first, so no running agent shares it.
const BARE_UID_BASE: u32 = 1_048_576 + 4_000 * 65_536;
const BARE_MACHINE: &str = "h-bnbare";
/// Longest one start may take before the bench gives up.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How often the bench reads the status rows while it waits.
const POLL: Duration = Duration::from_millis(10);

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
        * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    if !nspawn_available() {
        eprintln!("the containers bench needs root and systemd-nspawn");
        std::process::exit(1);
    }
    let Some(hive_agent) = sibling_bin("hive-agent") else {
        eprintln!("build it first: cargo build --release -p hive-proto --bin hive-agent");
        std::process::exit(1);
    };
    // Before any thread exists: the bench's own network namespace, so the
    // bare containers' veths never appear on the host.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): the bench needs its own network namespace");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(hive_agent));
}

/// The `[agents.*]` tables of `names`, each running `hive-agent recv
/// --follow` and left down when it ends.
fn agents_config(hive_agent: &Path, names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[agents.{n}]\ncommand = [{:?}, \"recv\", \"--follow\"]\nrestart = \"never\"\n",
                hive_agent.display()
            )
        })
        .collect()
}

fn find<'a>(rows: &'a [AgentSummary], name: &str) -> &'a AgentSummary {
    rows.iter()
        .find(|r| r.name.as_str() == name)
        .unwrap_or_else(|| panic!("no agent {name}"))
}

/// Polls the status rows until every one of `names` has a request on its
/// socket later than `after` (Unix ms); returns those times.
async fn first_requests(hive: &TestHive, names: &[String], after: i64) -> Vec<i64> {
    let end = Instant::now() + START_LIMIT;
    loop {
        let rows = hive.agents().await;
        let seen: Vec<i64> = names
            .iter()
            .filter_map(|n| find(&rows, n).last_activity_at.filter(|t| *t > after))
            .collect();
        if seen.len() == names.len() {
            return seen;
        }
        assert!(
            Instant::now() < end,
            "not every agent made a request in time: {rows:?}\n{}",
            hive.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn lifecycle_all(hive: &TestHive, names: &[String], action: LifecycleAction) {
    join_all(names.iter().map(|n| hive.lifecycle(n, action))).await;
}

async fn wait_all(hive: &TestHive, names: &[String], what: &str, want: fn(&AgentSummary) -> bool) {
    for n in names {
        hive.wait_agent(n, what, want).await;
    }
}

fn stopped(r: &AgentSummary) -> bool {
    r.run_state == RunState::Stopped && r.leader_pid.is_none()
}

fn connected(r: &AgentSummary) -> bool {
    r.run_state == RunState::Running && r.connections == 1
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn proc_strings(pid: i32, file: &str) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{file}: {e}"));
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn parent_of(pid: u32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("the leader's stat");
    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
    let rest = &stat[stat.rfind(')').expect("stat has a comm") + 1..];
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("a ppid in stat")
}

/// The bare side: the core's own nspawn argv and environment with the
/// machine name, uid range and the two writable binds swapped.
struct Bare {
    nspawn: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    listener: UnixListener,
    dir: PathBuf,
}

impl Bare {
    fn from_core(leader: u32, dir: &Path) -> Self {
        let nspawn_pid = parent_of(leader);
        let mut argv = proc_strings(nspawn_pid, "cmdline");
        assert!(
            argv.first().is_some_and(|a| a.ends_with("systemd-nspawn")),
            "the leader's parent is not systemd-nspawn: {argv:?}"
        );
        let nspawn = argv.remove(0);
        let env = proc_strings(nspawn_pid, "environ")
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let root = dir.join("root");
        let state = dir.join("state");
        let sock = dir.join("run");
        let mut swapped = 0;
        let args = argv
            .into_iter()
            .map(|a| {
                let (new, hit) = if let Some(old_root) = a.strip_prefix("--directory=") {
                    copy_root(Path::new(old_root), &root);
                    (format!("--directory={}", root.display()), true)
                } else if a.starts_with("--machine=") {
                    (format!("--machine={BARE_MACHINE}"), true)
                } else if a.starts_with("--private-users=") && !a.contains("ownership") {
                    (format!("--private-users={BARE_UID_BASE}:65536"), true)
                } else if a.starts_with("--bind=") && a.ends_with(":/state") {
                    (format!("--bind={}:/state", state.display()), true)
                } else if a.starts_with("--bind=") && a.ends_with(":/run/hive") {
                    (format!("--bind={}:/run/hive", sock.display()), true)
                } else {
                    (a, false)
                };
                swapped += usize::from(hit);
                new
            })
            .collect();
        assert_eq!(swapped, 5, "the core's nspawn argv changed shape");
        for d in [&state, &sock] {
            fs::create_dir_all(d).unwrap();
            chown(d, Some(BARE_UID_BASE), Some(BARE_UID_BASE)).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        }
        let path = sock.join("agent.sock");
        let listener = UnixListener::bind(&path).expect("the bare side's agent.sock");
        chown(&path, Some(BARE_UID_BASE), Some(BARE_UID_BASE)).unwrap();
        Self {
            nspawn,
            args,
            env,
            listener,
            dir: dir.to_owned(),
        }
    }

    /// One bare start: ms from spawning nspawn to the first request line.
    async fn run(&self) -> f64 {
        let log = fs::File::create(self.dir.join("journal.log")).unwrap();
        let t0 = now_ms();
        let mut child = Command::new(&self.nspawn)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning systemd-nspawn");
        let first = tokio::time::timeout(START_LIMIT, async {
            let (conn, _) = self.listener.accept().await.expect("accept");
            let mut line = String::new();
            let mut reader = BufReader::new(conn);
            reader.read_line(&mut line).await.expect("the first line");
            (now_ms(), line, reader)
        })
        .await;
        let (end, line, conn) = match first {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the bare container made no request: {}",
                    fs::read_to_string(self.dir.join("journal.log")).unwrap_or_default()
                );
            }
        };
        assert!(line.contains("\"op\""), "not a request line: {line:?}");
        end_container(&mut child);
        drop(conn);
        end - t0
    }
}

fn copy_root(from: &Path, to: &Path) {
    if to.exists() {
        return;
    }
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copying {} failed", from.display());
}

/// SIGKILLs the container's init (nspawn then ends by itself), then waits
/// for nspawn, killing it too if it lingers.
fn end_container(child: &mut Child) {
    let pid = child.id();
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One core start: ms from the `Start` call to the agent's first request.
async fn core_start(hive: &TestHive, name: &str) -> f64 {
    let names = [name.to_owned()];
    let before = hive.agent(name).await.last_activity_at.unwrap_or(0);
    let admin = hive.admin().await;
    let t0 = now_ms();
    let req = OperatorRequest::Lifecycle {
        name: AgentName::new(name).unwrap(),
        action: LifecycleAction::Start,
    };
    match admin
        .call(hive_proto::operator::AdminRequest::Operator(req))
        .await
    {
        Ok(OperatorResponse::Done) => {}
        other => panic!("Start {name}: {other:?}\n{}", hive.log()),
    }
    let at = first_requests(hive, &names, before.max(t0 as i64 - 1)).await[0];
    // last_activity_at is whole ms: the request came within [at, at + 1).
    let took = at as f64 + 0.5 - t0;
    hive.lifecycle(name, LifecycleAction::Stop).await;
    hive.wait_agent(name, "stopped", stopped).await;
    took
}

async fn bench(hive_agent: PathBuf) {
    let pairs = env_num("HIVE_BENCH_PAIRS", 5).max(1);
    let many = env_num("HIVE_BENCH_AGENTS", 20).max(1);

    // Pairs: one agent, core against bare.
    let one = ["bnx".to_owned()];
    let mut hive = TestHive::with_runtime(
        "nspawn",
        "stop_timeout = 2",
        &agents_config(&hive_agent, &one),
    );
    hive.start();
    // Warm-up: the first start allocates the uid range and builds the root.
    let row = hive.wait_agent("bnx", "connected", connected).await;
    let rss_one = vm_rss_kib(hive.pid());
    let bare_dir = hive.dir.path().join("bare");
    fs::create_dir(&bare_dir).unwrap();
    let bare = Bare::from_core(row.leader_pid.expect("a leader"), &bare_dir);
    hive.lifecycle("bnx", LifecycleAction::Stop).await;
    hive.wait_agent("bnx", "stopped", stopped).await;
    let _ = bare.run().await;

    let mut core = Vec::new();
    let mut plain = Vec::new();
    for i in 0..pairs {
        let (c, b) = if i % 2 == 0 {
            let c = core_start(&hive, "bnx").await;
            (c, bare.run().await)
        } else {
            let b = bare.run().await;
            (core_start(&hive, "bnx").await, b)
        };
        println!(
            "pair {}: core {c:.1} ms, bare nspawn {b:.1} ms, ratio {:.3}",
            i + 1,
            c / b
        );
        core.push(c);
        plain.push(b);
    }
    let ratios: Vec<f64> = core.iter().zip(&plain).map(|(c, b)| c / b).collect();
    let ratio = median(&ratios);
    let status = hive.stop();
    assert!(status.success(), "hive-core exited badly:\n{}", hive.log());
    kill_containers_under(hive.dir.path());

    // Many: HIVE_BENCH_AGENTS agents.
    let names: Vec<String> = (1..=many).map(|i| format!("bn{i:02}")).collect();
    let mut hive = TestHive::with_runtime(
        "nspawn",
        "stop_timeout = 2",
        &agents_config(&hive_agent, &names),
    );
    let t_spawn = now_ms();
    hive.start();
    let cold = first_requests(&hive, &names, 0).await;
    let cold_ms = *cold.iter().max().unwrap() as f64 + 0.5 - t_spawn;
    wait_all(&hive, &names, "connected", connected).await;
    let rss_cold = vm_rss_kib(hive.pid());
    lifecycle_all(&hive, &names, LifecycleAction::Stop).await;
    wait_all(&hive, &names, "stopped", stopped).await;
    let t0 = now_ms();
    lifecycle_all(&hive, &names, LifecycleAction::Start).await;
    let warm = first_requests(&hive, &names, t0 as i64 - 1).await;
    let warm_ms = *warm.iter().max().unwrap() as f64 + 0.5 - t0;
    wait_all(&hive, &names, "connected", connected).await;
    let rss = vm_rss_kib(hive.pid());
    lifecycle_all(&hive, &names, LifecycleAction::Stop).await;
    wait_all(&hive, &names, "stopped", stopped).await;
    let status = hive.stop();
    assert!(status.success(), "hive-core exited badly:\n{}", hive.log());

    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let verdict = if ratio <= 1.2 { "met" } else { "NOT met" };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\n| figure | value |\n| --- | --- |\n\
         | `Start` → first socket request, core (median of {pairs}) | {:.1} ms ({}) |\n\
         | bare `systemd-nspawn` → first request (median of {pairs}) | {:.1} ms ({}) |\n\
         | ratio core / bare (median of the {pairs} pairs' ratios) | {ratio:.3} (target ≤ 1.2: {verdict}) |\n\
         | daemon spawn → all {many} agents' first requests | {cold_ms:.0} ms |\n\
         | {many} concurrent `Start`s → all first requests | {warm_ms:.0} ms |\n\
         | daemon `VmRSS`, 1 agent running | {:.1} MiB |\n\
         | daemon `VmRSS`, {many} agents running and connected | {:.1} MiB (after the daemon's start: {:.1} MiB) |\n\n\
         {cores} cores; load average at the end: {}.",
        median(&core),
        fmt(&core),
        median(&plain),
        fmt(&plain),
        rss_one as f64 / 1024.0,
        rss as f64 / 1024.0,
        rss_cold as f64 / 1024.0,
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
}
