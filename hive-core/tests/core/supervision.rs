//! Supervision over the `process` runtime (real child processes, fast): a
//! killed agent is recorded, raised as an event and reported to the manager
//! agent, and restarted under `on-failure` with a capped backoff; `never`
//! leaves it down; an idle agent is stopped and a message wakes it and is
//! delivered once. The agents' commands write their pid into their state
//! dir at every start, so a test counts starts and kills the real process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hive_proto::client::operator::{subscribe, EventStream, Streamed};
use hive_proto::event::Event;
use hive_proto::operator::{OperatorRequest, OperatorResponse};
use hive_proto::view::RunState;
use hive_proto::AgentName;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::common::{poll_until, LineConn, TestHive, CORE_BIN, REPLY_TIMEOUT};

/// A command that records its pid at each start and then waits, leaving
/// quietly on SIGTERM.
const LOOPER: &str = "echo $$ >> pids; echo started; trap 'exit 0' TERM; \
                      while true; do sleep 0.05; done";

fn looper(name: &str, extra: &str) -> String {
    format!("[agents.{name}]\ncommand = [\"/bin/sh\", \"-c\", {LOOPER:?}]\n{extra}\n")
}

/// A started hive on the `process` runtime (bubblewrap where it works, and
/// unsandboxed where it does not: these tests are about supervision).
fn start_hive(top: &str, agents: &str) -> TestHive {
    let mut hive = TestHive::with_runtime(
        "process",
        &format!("allow_unsandboxed = true\n{top}"),
        agents,
    );
    hive.start();
    hive
}

fn state_dir(hive: &TestHive, agent: &str) -> PathBuf {
    hive.dir.path().join("lib/agents").join(agent).join("state")
}

/// The pids the agent's command recorded, one per start.
fn pids(hive: &TestHive, agent: &str) -> Vec<i32> {
    std::fs::read_to_string(state_dir(hive, agent).join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn run_state(hive: &TestHive, agent: &str) -> RunState {
    let name = AgentName::new(agent).unwrap();
    match hive.operator(OperatorRequest::AgentDetail { name }).await {
        OperatorResponse::Agent(d) => d.summary.run_state,
        other => panic!("AgentDetail answered {other:?}"),
    }
}

async fn wait_state(hive: &TestHive, agent: &str, want: RunState) {
    let end = Instant::now() + REPLY_TIMEOUT;
    loop {
        let got = run_state(hive, agent).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "{agent} stayed {got:?}, never {want:?}\ncore log:\n{}",
            hive.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `n` pids (starts) and returns the newest.
async fn nth_start(hive: &TestHive, agent: &str, n: usize) -> i32 {
    assert!(
        poll_until(|| pids(hive, agent).len() >= n).await,
        "{agent} started {} times, not {n}\ncore log:\n{}",
        pids(hive, agent).len(),
        hive.log()
    );
    pids(hive, agent)[n - 1]
}

/// The next `AgentCrashed` event on `events`: (agent, reason, restart_in_ms).
async fn next_crash(events: &mut EventStream) -> (AgentName, String, Option<u64>) {
    loop {
        let item = tokio::time::timeout(REPLY_TIMEOUT, events.next_item())
            .await
            .expect("no crash event in time")
            .expect("event stream ended")
            .expect("event stream failed");
        if let Streamed::Event(rec) = item {
            if let Event::AgentCrashed {
                agent,
                reason,
                restart_in_ms,
            } = rec.event
            {
                return (agent, reason, restart_in_ms);
            }
        }
    }
}

/// Whether an exit reason says SIGKILL: the signal itself, or 137 where
/// bubblewrap passed it on as an exit status.
fn sigkilled(reason: &str) -> bool {
    reason.contains("signal 9") || reason == "exited with status 137"
}

/// The agent's stored crashes, newest first: (reason, journal tail).
fn stored_crashes(db: &Path, agent: &str) -> Vec<(String, Vec<String>)> {
    let conn = rusqlite::Connection::open(db).expect("open the store");
    let mut stmt = conn
        .prepare(
            "SELECT reason, journal_tail FROM supervision_exits WHERE agent = ?1 ORDER BY id DESC",
        )
        .expect("supervision_exits exists");
    stmt.query_map([agent], |r| {
        let tail: String = r.get(1)?;
        Ok((r.get(0)?, serde_json::from_str(&tail).unwrap()))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_seen_recorded_reported_to_the_manager_and_restarted() {
    let agents = looper("boss", "manager = true") + &looper("worker", "");
    let hive = start_hive("[restart]\nbackoff_ms = 200", &agents);
    let mut events = subscribe(hive.admin_socket(), 0).await.expect("subscribe");
    let first = nth_start(&hive, "worker", 1).await;
    wait_state(&hive, "worker", RunState::Running).await;

    let killed = Instant::now();
    kill(Pid::from_raw(first), Signal::SIGKILL).expect("kill the worker");
    let (agent, reason, restart_in) = next_crash(&mut events).await;
    let seen = killed.elapsed();
    println!("crash seen {} ms after SIGKILL", seen.as_millis());
    assert_eq!(agent.as_str(), "worker");
    assert!(sigkilled(&reason), "{reason}");
    assert_eq!(restart_in, Some(200));

    // On record, with the journal's last lines.
    let crashes = stored_crashes(&hive.db_path(), "worker");
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    assert_eq!(crashes[0].0, reason, "{crashes:?}");
    assert!(crashes[0].1.iter().any(|l| l == "started"), "{crashes:?}");

    // The manager hears of it on its own socket; the worker does not.
    let mut boss = LineConn::connect(&hive.agent_socket("boss"))
        .await
        .expect("boss socket");
    let got = boss
        .request("recv", json!({"wait_ms": 5000, "max": 10}))
        .await;
    let msgs = got["result"]["messages"]
        .as_array()
        .expect("messages")
        .clone();
    assert_eq!(msgs.len(), 1, "{got}");
    assert_eq!(msgs[0]["kind"], "agent_crashed");
    let body = msgs[0]["body"].as_str().unwrap();
    assert!(
        body.starts_with(&format!("agent worker crashed: {reason}")),
        "{body}"
    );
    assert!(body.contains("restarting in 200 ms"), "{body}");

    // on-failure brings it back: a new process, running.
    let second = nth_start(&hive, "worker", 2).await;
    assert_ne!(first, second);
    wait_state(&hive, "worker", RunState::Running).await;
    // An operator's stop is not a crash: nothing more is recorded.
    let name = AgentName::new("worker").unwrap();
    hive.operator(OperatorRequest::Lifecycle {
        name,
        action: hive_proto::operator::LifecycleAction::Stop,
    })
    .await;
    wait_state(&hive, "worker", RunState::Stopped).await;
    assert_eq!(stored_crashes(&hive.db_path(), "worker").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_never_leaves_a_crashed_agent_down() {
    let hive = start_hive(
        "[restart]\nbackoff_ms = 50",
        &looper("worker", "restart = \"never\""),
    );
    let mut events = subscribe(hive.admin_socket(), 0).await.expect("subscribe");
    let pid = nth_start(&hive, "worker", 1).await;
    wait_state(&hive, "worker", RunState::Running).await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let (_, _, restart_in) = next_crash(&mut events).await;
    assert_eq!(restart_in, None);
    wait_state(&hive, "worker", RunState::Crashed).await;
    // Many backoffs later it is still down, started once.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(run_state(&hive, "worker").await, RunState::Crashed);
    assert_eq!(pids(&hive, "worker").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_gives_up_after_max_restarts_in_the_window() {
    // Exits at once, every time.
    let agents = "[agents.flaky]\ncommand = [\"/bin/sh\", \"-c\", \"echo $$ >> pids; exit 3\"]\n";
    let hive = start_hive(
        "[restart]\nbackoff_ms = 20\nmax = 2\nwindow_s = 600",
        agents,
    );
    let mut events = subscribe(hive.admin_socket(), 0).await.expect("subscribe");
    let mut delays = Vec::new();
    for _ in 0..3 {
        let (agent, reason, restart_in) = next_crash(&mut events).await;
        assert_eq!(agent.as_str(), "flaky");
        assert_eq!(reason, "exited with status 3");
        delays.push(restart_in);
    }
    // Backoff doubles; the third crash exhausts max = 2.
    assert_eq!(delays, [Some(20), Some(40), None]);
    wait_state(&hive, "flaky", RunState::Crashed).await;
    assert_eq!(pids(&hive, "flaky").len(), 3);
    // An operator's start clears the count: it runs (and crashes) again.
    hive.operator(OperatorRequest::Lifecycle {
        name: AgentName::new("flaky").unwrap(),
        action: hive_proto::operator::LifecycleAction::Start,
    })
    .await;
    let (_, _, restart_in) = next_crash(&mut events).await;
    assert_eq!(restart_in, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_is_stopped_and_a_message_wakes_it_and_is_delivered_once() {
    let hive_agent = Path::new(CORE_BIN).with_file_name("hive-agent");
    if !hive_agent.is_file() {
        crate::common::skip_or_fail("hive-agent is not built next to hive-core");
        return;
    }
    // `recv --follow --ack` prints each message once, as JSON, to the
    // journal; waiting in recv is not traffic, so it goes idle.
    let agents = format!(
        "[agents.sleepy]\ncommand = [{:?}, \"recv\", \"--follow\", \"--ack\"]\nidle_timeout = 1\n",
        hive_agent.display().to_string()
    );
    let hive = start_hive("", &agents);
    let name = AgentName::new("sleepy").unwrap();
    wait_state(&hive, "sleepy", RunState::Running).await;
    wait_state(&hive, "sleepy", RunState::Idle).await;

    let sent = match hive
        .operator(OperatorRequest::SendMessage {
            to: name.clone(),
            body: "wake up".into(),
        })
        .await
    {
        OperatorResponse::MessageSent { id } => id,
        other => panic!("SendMessage answered {other:?}"),
    };
    wait_state(&hive, "sleepy", RunState::Running).await;
    let journal = || async {
        match hive
            .operator(OperatorRequest::Journal {
                agent: name.clone(),
                lines: 100,
            })
            .await
        {
            OperatorResponse::Journal(lines) => lines,
            other => panic!("Journal answered {other:?}"),
        }
    };
    let end = Instant::now() + REPLY_TIMEOUT;
    let delivered = loop {
        let lines = journal().await;
        let hits: Vec<String> = lines
            .into_iter()
            .filter(|l| l.contains("wake up"))
            .collect();
        if !hits.is_empty() || Instant::now() > end {
            break hits;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        delivered.len(),
        1,
        "delivered {delivered:?}\n{}",
        hive.log()
    );
    assert!(
        delivered[0].contains(&format!("\"id\":{sent}")),
        "{delivered:?}"
    );
    // Acknowledged, so nothing is queued, and it goes idle again.
    wait_state(&hive, "sleepy", RunState::Idle).await;
    let lines = journal().await;
    assert_eq!(
        lines.iter().filter(|l| l.contains("wake up")).count(),
        1,
        "{lines:?}"
    );
}
