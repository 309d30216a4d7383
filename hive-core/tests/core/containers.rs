//! The `nspawn` runtime with real containers, as root: isolation (each
//! agent reaches only its own socket; root inside is its own uid range
//! outside), the lifecycle verbs, crash detection through the init's pidfd,
//! adoption by a restarted daemon, memory limits and `destroy --purge`.
//!
//! Agent names are unique per test: veth names and cgroups are host-wide,
//! and the tests of this file run in parallel.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hive_proto::operator::{AdminRequest, LifecycleAction, OperatorRequest, OperatorResponse};
use hive_proto::view::{AgentSummary, RunState};
use hive_proto::AgentName;

use crate::common::{nspawn_available, sibling_bin, TestHive};

/// A hive on the nspawn runtime whose agents run `script` (with `$HA`
/// naming `hive-agent`) under `/bin/sh`, plus extra `[agents.*]` keys.
pub(crate) fn nspawn_hive(agents: &[(&str, &str, &str)]) -> Option<(TestHive, PathBuf)> {
    nspawn_hive_with("", agents)
}

/// [`nspawn_hive`] with extra top-level config (`[restart]`, ...).
fn nspawn_hive_with(top: &str, agents: &[(&str, &str, &str)]) -> Option<(TestHive, PathBuf)> {
    if !nspawn_available() {
        return None;
    }
    let ha = sibling_bin("hive-agent")?;
    let tables: String = agents
        .iter()
        .map(|(name, script, extra)| {
            let script = format!("HA={}; {script}", ha.display());
            format!("[agents.{name}]\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\n{extra}\n")
        })
        .collect();
    let hive = TestHive::with_runtime("nspawn", &format!("stop_timeout = 5\n{top}"), &tables);
    Some((hive, ha))
}

pub(crate) fn state_dir(hive: &TestHive, agent: &str) -> PathBuf {
    hive.dir.path().join("lib/agents").join(agent).join("state")
}

fn lib_dir(hive: &TestHive, agent: &str) -> PathBuf {
    hive.dir.path().join("lib/agents").join(agent)
}

pub(crate) fn running(a: &AgentSummary) -> bool {
    a.run_state == RunState::Running && a.leader_pid.is_some()
}

pub(crate) async fn wait_file(hive: &TestHive, path: &Path) -> String {
    let end = Instant::now() + crate::common::REPLY_TIMEOUT;
    while Instant::now() < end {
        if let Ok(s) = fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared\n{}", path.display(), hive.log());
}

/// The demo's status once the operator's message reached it.
fn got(body: &str) -> String {
    format!("demo: the operator wrote: {body}")
}

async fn send(hive: &TestHive, to: &str, body: &str) {
    let req = OperatorRequest::SendMessage {
        to: AgentName::new(to).unwrap(),
        body: body.into(),
    };
    match hive.operator(req).await {
        OperatorResponse::MessageSent { .. } => {}
        other => panic!("send: {other:?}"),
    }
}

/// What the container saw of itself, written to /state before the demo.
const PROBE: &str = "$HA whoami > /state/whoami 2>&1; ls -a /run/hive > /state/run-hive; \
                     id -u > /state/uid; cat /proc/self/uid_map > /state/uid_map; \
                     echo mine > /state/mine; chmod 600 /state/mine; exec $HA demo";

#[tokio::test]
async fn two_agents_each_speak_only_to_their_own_socket_through_the_lifecycle() {
    let Some((mut hive, _)) = nspawn_hive(&[("cta", PROBE, ""), ("ctb", PROBE, "manager = true")])
    else {
        return;
    };
    hive.start();
    for a in ["cta", "ctb"] {
        hive.wait_agent(a, "ran", |r| running(r) && r.status.is_some())
            .await;
        let whoami = wait_file(&hive, &state_dir(&hive, a).join("whoami")).await;
        assert!(whoami.contains(&format!("\"{a}\"")), "{a}: {whoami}");
        // Its own socket and nothing else; the other's path does not exist.
        let listing = wait_file(&hive, &state_dir(&hive, a).join("run-hive")).await;
        let names: Vec<&str> = listing.lines().filter(|l| !l.starts_with('.')).collect();
        assert_eq!(names, ["agent.sock"], "{a}: {listing}");
        assert_eq!(
            fs::read_to_string(state_dir(&hive, a).join("uid"))
                .unwrap()
                .trim(),
            "0"
        );
    }
    let other_sock = hive.agent_socket("ctb");
    let cta = hive.agent("cta").await;
    assert_eq!(cta.container.as_deref(), Some("h-cta"));
    assert!(hive.agent("ctb").await.manager);
    // The other agent's socket is not reachable from inside cta's container.
    let leader = cta.leader_pid.unwrap();
    let probe = Command::new("nsenter")
        .args([
            "--target",
            &leader.to_string(),
            "--mount",
            "--pid",
            "--",
            "test",
            "-e",
        ])
        .arg(&other_sock)
        .status()
        .unwrap();
    assert!(
        !probe.success(),
        "{} is visible inside h-cta",
        other_sock.display()
    );

    // stop, start, restart: a new init each time.
    hive.lifecycle("cta", LifecycleAction::Stop).await;
    let row = hive.agent("cta").await;
    assert_eq!((row.run_state, row.leader_pid), (RunState::Stopped, None));
    assert!(row.crash_reason.is_none(), "{row:?}");
    hive.lifecycle("cta", LifecycleAction::Start).await;
    let first = hive
        .wait_agent("cta", "restarted", running)
        .await
        .leader_pid;
    hive.lifecycle("cta", LifecycleAction::Restart).await;
    let second = hive
        .wait_agent("cta", "restarted", running)
        .await
        .leader_pid;
    assert_ne!(first, second);

    // Pause: a message sent meanwhile reaches the agent only after resume.
    hive.wait_agent("cta", "reconnected", |r| r.connections == 1)
        .await;
    hive.lifecycle("cta", LifecycleAction::Pause).await;
    assert_eq!(hive.agent("cta").await.run_state, RunState::Paused);
    send(&hive, "cta", "while paused").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused = hive.agent("cta").await;
    assert_ne!(paused.status.as_deref(), Some(got("while paused").as_str()));
    assert!(paused.unread >= 1, "{paused:?}");
    hive.lifecycle("cta", LifecycleAction::Resume).await;
    hive.wait_agent("cta", "read the message after resume", |r| {
        r.status.as_deref() == Some(got("while paused").as_str())
    })
    .await;

    // destroy: the root goes, the state stays.
    hive.lifecycle("cta", LifecycleAction::Destroy).await;
    assert_eq!(hive.agent("cta").await.run_state, RunState::Stopped);
    assert!(!lib_dir(&hive, "cta").join("root").exists());
    assert!(state_dir(&hive, "cta").join("mine").exists());

    // destroy --purge: a planted symlink to the outside is removed as a
    // link, its target untouched; exactly cta's dirs go.
    let outside = hive.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), "keep").unwrap();
    symlink(&outside, state_dir(&hive, "cta").join("escape")).unwrap();
    let purge = |name: &str| {
        let name = AgentName::new(name).unwrap();
        async { hive.admin().await.call(AdminRequest::Purge { name }).await }
    };
    purge("cta").await.expect("purge");
    assert!(!lib_dir(&hive, "cta").exists());
    assert_eq!(
        fs::read_to_string(outside.join("precious")).unwrap(),
        "keep"
    );
    assert!(state_dir(&hive, "ctb").join("mine").exists());
    assert!(hive.agent("ctb").await.run_state == RunState::Running);

    // An agent dir replaced by a symlink pointing outside: refused, and
    // nothing on either side removed.
    hive.lifecycle("ctb", LifecycleAction::Stop).await;
    let ctb = lib_dir(&hive, "ctb");
    let moved = hive.dir.path().join("ctb-real");
    fs::rename(&ctb, &moved).unwrap();
    symlink(&outside, &ctb).unwrap();
    let err = purge("ctb").await.unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        fs::read_to_string(outside.join("precious")).unwrap(),
        "keep"
    );
    assert!(moved.join("state/mine").exists());
    hive.stop();
}

#[tokio::test]
async fn root_inside_is_the_agents_own_range_outside_and_its_files_are_unreadable_to_another() {
    let Some((mut hive, _)) = nspawn_hive(&[("cua", PROBE, ""), ("cub", PROBE, "")]) else {
        return;
    };
    hive.start();
    let mut ranges = Vec::new();
    for a in ["cua", "cub"] {
        let row = hive.wait_agent(a, "ran", running).await;
        let map = fs::read_to_string(format!("/proc/{}/uid_map", row.leader_pid.unwrap())).unwrap();
        let fields: Vec<u32> = map.split_whitespace().map(|n| n.parse().unwrap()).collect();
        let range = row.uid_range.expect("a uid range");
        assert_eq!(fields, [0, range.base, range.count], "{a}");
        assert_eq!(
            wait_file(&hive, &state_dir(&hive, a).join("uid_map")).await,
            map
        );
        let mine = state_dir(&hive, a).join("mine");
        wait_file(&hive, &mine).await;
        assert_eq!(
            fs::metadata(&mine).unwrap().uid(),
            range.base,
            "{a}: root's file is the range's"
        );
        assert_eq!(fs::metadata(state_dir(&hive, a)).unwrap().uid(), range.base);
        ranges.push((
            range.base,
            range.base + range.count,
            row.leader_pid.unwrap(),
        ));
    }
    let (a, b) = (ranges[0], ranges[1]);
    assert!(a.1 <= b.0 || b.1 <= a.0, "ranges overlap: {ranges:?}");
    // cub's root, in cub's user namespace, cannot read cua's file on the host.
    let read = Command::new("nsenter")
        .args(["--target", &b.2.to_string(), "--user", "--", "cat"])
        .arg(state_dir(&hive, "cua").join("mine"))
        .output()
        .unwrap();
    assert!(!read.status.success(), "cub read cua's file: {read:?}");
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "{read:?}"
    );
    // The same agent keeps its range across a restart.
    hive.lifecycle("cua", LifecycleAction::Restart).await;
    let again = hive.wait_agent("cua", "restarted", running).await;
    assert_eq!(again.uid_range.unwrap().base, a.0);
    hive.stop();
}

/// SIGKILLs `agent`'s container init (the status row's leader pid) and
/// waits for its row to show `crashed`; prints how long that took (a
/// figure for docs/perf.md, not an assertion: no test asserts time) and
/// returns the crashed row and the killed pid.
async fn kill_init(hive: &TestHive, agent: &str) -> (AgentSummary, u32) {
    let leader = hive.agent(agent).await.leader_pid.expect("a leader pid");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let row = hive
        .wait_agent(agent, "crashed", |r| r.run_state == RunState::Crashed)
        .await;
    println!(
        "crash of h-{agent} seen after {} ms",
        killed.elapsed().as_millis()
    );
    assert_eq!(row.leader_pid, None);
    (row, leader)
}

/// Waits until `agent`'s row says what supervision decided about its
/// crash (the reason, `; `, the decision) and returns that text.
async fn crash_text(hive: &TestHive, agent: &str) -> String {
    let row = hive
        .wait_agent(agent, "gave the reason and the decision", |r| {
            r.crash_reason.as_deref().is_some_and(|c| c.contains("; "))
        })
        .await;
    row.crash_reason.unwrap()
}

async fn journal(hive: &TestHive, agent: &str) -> Vec<String> {
    let req = OperatorRequest::Journal {
        agent: AgentName::new(agent).unwrap(),
        lines: 200,
    };
    match hive.operator(req).await {
        OperatorResponse::Journal(lines) => lines,
        other => panic!("{other:?}"),
    }
}

/// How many times the core started `agent`'s container (its start
/// markers in the journal file).
fn starts(hive: &TestHive, agent: &str) -> usize {
    fs::read_to_string(lib_dir(hive, agent).join("harness/journal.log"))
        .unwrap_or_default()
        .matches("hive-core: starting container")
        .count()
}

/// The `agent_crashed` items the manager's `hive-agent recv --follow`
/// printed inside its container, once it printed `n` of them.
async fn manager_heard(hive: &TestHive, manager: &str, n: usize) -> Vec<String> {
    let end = Instant::now() + crate::common::REPLY_TIMEOUT;
    loop {
        let heard: Vec<String> = journal(hive, manager)
            .await
            .into_iter()
            .filter(|l| l.contains("\"kind\":\"agent_crashed\""))
            .collect();
        if heard.len() >= n || Instant::now() > end {
            assert_eq!(heard.len(), n, "{heard:?}\n{}", hive.log());
            return heard;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_of_container_inits_is_seen_at_once_reported_to_the_manager_and_handled_per_restart_policy(
) {
    // One restart per window: svf's second crash hits the cap.
    let Some((mut hive, _)) = nspawn_hive_with(
        "[restart]\nbackoff_ms = 200\nmax = 1\nwindow_s = 600",
        &[
            ("svk", "exec $HA demo", "restart = \"never\""),
            ("svf", "exec $HA demo", "restart = \"on-failure\""),
            ("svm", "exec $HA recv --follow --ack", "manager = true"),
        ],
    ) else {
        return;
    };
    hive.start();
    for a in ["svk", "svf", "svm"] {
        hive.wait_agent(a, "connected", |r| running(r) && r.connections == 1)
            .await;
    }

    // never: crashed at once, the reason from nspawn, and it stays down.
    kill_init(&hive, "svk").await;
    let svk = crash_text(&hive, "svk").await;
    assert_eq!(
        svk,
        "killed by signal 9 (SIGKILL); restart = \"never\": it stays down until an operator starts it"
    );
    assert!(
        journal(&hive, "svk")
            .await
            .iter()
            .any(|l| l.contains("connected as svk")),
        "the journal verb shows the container's output"
    );

    // on-failure: crashed at once, then a new container whose hive-agent
    // speaks on its socket again.
    let (_, first) = kill_init(&hive, "svf").await;
    assert!(
        crash_text(&hive, "svf")
            .await
            .starts_with("killed by signal 9 (SIGKILL); restarting in 200 ms (restart 1 of 1"),
        "{}",
        hive.log()
    );
    let back = hive
        .wait_agent("svf", "came back", |r| running(r) && r.connections == 1)
        .await;
    assert_ne!(back.leader_pid, Some(first));
    assert!(back.crash_reason.is_none(), "{back:?}");
    send(&hive, "svf", "back again").await;
    hive.wait_agent("svf", "answered", |r| {
        r.status.as_deref() == Some(got("back again").as_str())
    })
    .await;
    assert_eq!(starts(&hive, "svf"), 2);

    // The cap: the next crash in the window leaves it down, and says why.
    kill_init(&hive, "svf").await;
    let capped = crash_text(&hive, "svf").await;
    assert_eq!(
        capped,
        "killed by signal 9 (SIGKILL); it was restarted once in 600 s, the most [restart] max \
         allows: it stays down until an operator starts it"
    );

    // The manager's hive-agent, in its own container, got all three, once.
    let heard = manager_heard(&hive, "svm", 3).await;
    assert!(
        heard[0].contains("agent svk crashed: killed by signal 9"),
        "{heard:?}"
    );
    assert!(heard[0].contains("it stays down"), "{heard:?}");
    assert!(
        heard[1].contains("agent svf crashed: killed by signal 9"),
        "{heard:?}"
    );
    assert!(heard[1].contains("restarting in 200 ms"), "{heard:?}");
    assert!(heard[2].contains("agent svf crashed"), "{heard:?}");
    assert!(heard[2].contains("it stays down"), "{heard:?}");

    // Both still down, never started again, long after svf's backoff.
    for (a, n) in [("svk", 1), ("svf", 2)] {
        let row = hive.agent(a).await;
        assert_eq!(
            (row.run_state, row.leader_pid),
            (RunState::Crashed, None),
            "{a}"
        );
        assert_eq!(starts(&hive, a), n, "{a}");
    }
    assert!(running(&hive.agent("svm").await));
    hive.stop();
}

#[tokio::test]
async fn an_idle_container_is_stopped_and_a_message_starts_it_and_is_delivered_once() {
    // Each start appends to /state/ups 0.3 s after the container is up,
    // before hive-agent connects (a connection is traffic): the idle
    // clock must start when the container is up, not when its start was
    // asked for, or a start slower than idle_timeout is stopped at once.
    let script = "sleep 0.3; echo up >> /state/ups; exec $HA recv --follow --ack";
    let Some((mut hive, _)) = nspawn_hive(&[("svi", script, "idle_timeout = 1")]) else {
        return;
    };
    hive.start();
    let mut leader = hive
        .wait_agent("svi", "connected", |r| running(r) && r.connections == 1)
        .await
        .leader_pid
        .unwrap();
    for (n, body) in [(1, "wake up"), (2, "and again")] {
        // Idle: stopped, its container gone.
        let idle = hive
            .wait_agent("svi", "went idle", |r| r.run_state == RunState::Idle)
            .await;
        assert_eq!(idle.leader_pid, None);
        assert!(
            !Path::new(&format!("/proc/{leader}")).exists(),
            "init {leader} lives on"
        );
        assert_eq!(starts(&hive, "svi"), n);
        // A message starts it; its hive-agent gets it once and acks it.
        send(&hive, "svi", body).await;
        let row = hive
            .wait_agent("svi", "woke", |r| running(r) && r.connections == 1)
            .await;
        assert_ne!(row.leader_pid, Some(leader));
        leader = row.leader_pid.unwrap();
        hive.wait_agent("svi", "acked", |r| r.unread == 0).await;
    }
    hive.wait_agent("svi", "went idle again", |r| r.run_state == RunState::Idle)
        .await;
    let lines = journal(&hive, "svi").await;
    for body in ["wake up", "and again"] {
        let got: Vec<&String> = lines.iter().filter(|l| l.contains(body)).collect();
        assert_eq!(got.len(), 1, "{body}: {lines:?}");
    }
    let ups = fs::read_to_string(state_dir(&hive, "svi").join("ups")).unwrap();
    assert_eq!(
        ups.lines().count(),
        3,
        "each start got its idle timeout: {ups:?}"
    );
    assert_eq!(starts(&hive, "svi"), 3);
    hive.stop();
}

#[tokio::test]
async fn a_restarted_daemon_adopts_the_running_containers() {
    let Some((mut hive, _)) =
        nspawn_hive(&[("cda", "exec $HA demo", ""), ("cdb", "exec $HA demo", "")])
    else {
        return;
    };
    hive.start();
    let mut leaders = Vec::new();
    for a in ["cda", "cdb"] {
        let row = hive
            .wait_agent(a, "connected", |r| running(r) && r.connections == 1)
            .await;
        leaders.push(row.leader_pid);
    }
    for how in ["SIGTERM", "kill -9"] {
        if how == "SIGTERM" {
            assert!(hive.stop().success());
        } else {
            hive.kill9();
        }
        hive.start();
        for (a, leader) in ["cda", "cdb"].iter().zip(&leaders) {
            // Same init, and its hive-agent connects again to the new socket.
            let row = hive
                .wait_agent(a, "reconnected", |r| running(r) && r.connections == 1)
                .await;
            assert_eq!(row.leader_pid, *leader, "{a} after {how}");
            send(&hive, a, how).await;
            hive.wait_agent(a, "got the message", |r| {
                r.status.as_deref() == Some(got(how).as_str())
            })
            .await;
        }
    }
    // Never a second start: one start marker per container in its journal.
    for a in ["cda", "cdb"] {
        let journal = fs::read_to_string(lib_dir(&hive, a).join("harness/journal.log")).unwrap();
        assert_eq!(
            journal.matches("hive-core: starting container").count(),
            1,
            "{journal}"
        );
    }
    let log = hive.log();
    assert_eq!(
        log.matches("adopted a running container").count(),
        4,
        "{log}"
    );
    // Each restarted daemon finds the veths of the containers it adopts
    // (they live in the hive's network namespace, not the daemon's).
    assert!(!log.contains("network attach failed"), "{log}");
    hive.stop();
}

/// Whether `pid` runs (exists and is not a zombie waiting for its reaper).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S …`: the state follows the last `)`.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|r| r.chars().next()), Some('Z' | 'X') | None)
    })
}

/// A container the hive lost track of — its core killed between spawning
/// nspawn and recording it, or adoption refused — is killed before the
/// agent starts again, so two never run on the same dirs. The lost track
/// is made by hand: the record deleted from the store while the daemon,
/// stopped with SIGTERM, left the container running.
#[tokio::test]
async fn a_container_left_running_without_a_record_is_killed_before_its_agent_starts_again() {
    let Some((mut hive, _)) = nspawn_hive(&[("cdu", "exec $HA demo", "")]) else {
        return;
    };
    hive.start();
    let old = hive
        .wait_agent("cdu", "connected", |r| running(r) && r.connections == 1)
        .await
        .leader_pid
        .expect("a leader");
    assert!(hive.stop().success());
    assert!(alive(old), "left running");
    let db = hive.db_path();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use std::sync::Arc;
            let store = hive_core::store::Store::open(&db, Arc::new(hive_core::hub::Hub::new()))
                .expect("store");
            let agent = AgentName::new("cdu").unwrap();
            store
                .write(move |tx| tx.clear_container_record(&agent))
                .await
                .expect("record cleared");
            store.shutdown().await;
        })
    })
    .join()
    .unwrap();

    hive.start();
    let row = hive
        .wait_agent("cdu", "running again", |r| {
            running(r) && r.connections == 1 && r.leader_pid != Some(old)
        })
        .await;
    assert!(
        !alive(old),
        "the untracked container's init {old} still runs beside {:?}\n{}",
        row.leader_pid,
        hive.log()
    );
    let log = hive.log();
    assert!(
        log.contains("killed an untracked container of this agent before starting it"),
        "{log}"
    );
    assert!(!log.contains("adopted a running container"), "{log}");
    send(&hive, "cdu", "one").await;
    hive.wait_agent("cdu", "got the message", |r| {
        r.status.as_deref() == Some(got("one").as_str())
    })
    .await;
    hive.stop();
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed_and_shown_crashed_while_another_agent_works() {
    // The shell itself holds 200 MB: the kernel kills it, the container ends.
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' x); sleep 30";
    let Some((mut hive, _)) = nspawn_hive(&[
        (
            "coh",
            hog,
            "restart = \"never\"\nlimits = { memory = \"48M\" }",
        ),
        ("cow", "exec $HA demo", ""),
    ]) else {
        return;
    };
    hive.start();
    let row = hive
        .wait_agent("coh", "was OOM-killed", |r| {
            r.run_state == RunState::Crashed
        })
        .await;
    let row = if row.crash_reason.is_some() {
        row
    } else {
        hive.wait_agent("coh", "gave the reason", |r| r.crash_reason.is_some())
            .await
    };
    assert!(
        row.crash_reason
            .as_deref()
            .is_some_and(|c| c.starts_with("killed by the kernel: out of memory (OOM)")),
        "{row:?}"
    );
    // The other agent never noticed.
    hive.wait_agent("cow", "ran", |r| running(r) && r.connections == 1)
        .await;
    send(&hive, "cow", "still there?").await;
    hive.wait_agent("cow", "answered", |r| {
        r.status.as_deref() == Some(got("still there?").as_str())
    })
    .await;
    // `hivectl agents --json` carries the whole row.
    let hivectl = sibling_bin("hivectl").unwrap();
    let out = Command::new(hivectl)
        .arg("--socket")
        .arg(hive.admin_socket())
        .args(["agents", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cow = json
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "cow")
        .unwrap();
    for key in [
        "container",
        "uid_range",
        "leader_pid",
        "manager",
        "crash_reason",
        "last_activity_at",
    ] {
        assert!(cow.get(key).is_some(), "{key} missing in {cow}");
    }
    assert_eq!(cow["container"], "h-cow");
    assert!(cow["leader_pid"].as_u64().is_some(), "{cow}");
    hive.stop();
}
