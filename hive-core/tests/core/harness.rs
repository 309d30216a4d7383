//! `hive-agent run -- CMD`, the turn loop, with real shell scripts as CMD
//! against the real core: one reply per batch, exactly once; a failing or
//! hanging script gets its batch again after backoff and loses nothing;
//! pause holds turns back; a `kill -9` of the core in the middle of a turn
//! costs neither the reply nor a second run.
//!
//! The scripts leave marks (files) in a directory the test reads, and wait
//! for a `go` file where the test must act in the middle of a turn.
//! Statuses are read back from the event stream, so no transient state has
//! to be caught by polling.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use hive_proto::client::operator::{subscribe, Streamed};
use hive_proto::event::Event;
use hive_proto::operator::{LifecycleAction, OperatorRequest, OperatorResponse};
use hive_proto::view::{Message, Principal, RunState};
use hive_proto::AgentName;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::common::{poll_until, sibling_bin, LineConn, TestHive, REPLY_TIMEOUT};

/// A hive with alice and bob, and `hive-agent run` speaking for alice.
struct Turns {
    hive: TestHive,
    marks: PathBuf,
    runner: Option<Child>,
}

impl Turns {
    /// Detached runtime; the test starts `hive-agent --socket alice run
    /// ARGS -- sh -c SCRIPT` itself, with `$MARKS` set.
    fn start(script: &str, args: &[&str]) -> Option<Self> {
        let hive_agent = sibling_bin("hive-agent")?;
        let mut hive = TestHive::new(&["alice", "bob"]);
        hive.start();
        let marks = hive.dir.path().join("marks");
        std::fs::create_dir(&marks).expect("marks dir");
        let runner = Command::new(hive_agent)
            .arg("--socket")
            .arg(hive.agent_socket("alice"))
            .arg("run")
            .args(args)
            .args(["--", "/bin/sh", "-c", script])
            .env("MARKS", &marks)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning hive-agent run");
        Some(Self {
            hive,
            marks,
            runner: Some(runner),
        })
    }

    fn mark(&self, name: &str) -> PathBuf {
        self.marks.join(name)
    }

    async fn wait_mark(&self, name: &str) {
        let path = self.mark(name);
        assert!(
            poll_until(|| path.exists()).await,
            "no mark {name}\n{}",
            self.hive.log()
        );
    }

    async fn wait_status(&self, want: &str) {
        let end = std::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let now = status_of(&self.hive, "alice").await;
            if now.as_deref() == Some(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "status {now:?}, not {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn touch(&self, name: &str) {
        std::fs::write(self.mark(name), b"").expect("touch");
    }

    fn json_mark(&self, name: &str) -> Value {
        let text =
            std::fs::read_to_string(self.mark(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
    }
}

/// bob's side: sends to alice, reads what comes back.
struct Bob {
    conn: LineConn,
    listening: bool,
}

impl Bob {
    async fn connect(hive: &TestHive) -> Self {
        let conn = LineConn::connect(&hive.agent_socket("bob"))
            .await
            .expect("bob");
        Self {
            conn,
            listening: false,
        }
    }

    async fn send(&mut self, body: &str) -> u64 {
        let r = self
            .conn
            .request("send", json!({"to": "alice", "body": body}))
            .await;
        r["result"]["ids"][0]
            .as_u64()
            .unwrap_or_else(|| panic!("{r}"))
    }

    /// The next message in bob's inbox (acknowledged).
    async fn next(&mut self) -> Value {
        let m = if self.listening {
            self.conn.next_push().await["message"].clone()
        } else {
            self.listening = true;
            let r = self
                .conn
                .request(
                    "recv",
                    json!({"wait_ms": REPLY_TIMEOUT.as_millis() as u64, "max": 1}),
                )
                .await;
            match r["result"]["messages"][0].clone() {
                Value::Null => self.conn.next_push().await["message"].clone(),
                m => m,
            }
        };
        let ack = self.conn.request("ack", json!({"msg_id": m["id"]})).await;
        assert_eq!(ack["ok"], true, "{ack}");
        m
    }
}

fn name(n: &str) -> AgentName {
    AgentName::new(n).unwrap()
}

async fn mailbox(hive: &TestHive, agent: &str) -> Vec<Message> {
    match hive
        .operator(OperatorRequest::Messages {
            mailbox: Principal::Agent(name(agent)),
            before: None,
            limit: 1000,
        })
        .await
    {
        OperatorResponse::Messages(m) => m,
        other => panic!("{other:?}"),
    }
}

/// Waits until every item in alice's mailbox is acknowledged.
async fn all_acked(hive: &TestHive) {
    let end = std::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let m = mailbox(hive, "alice").await;
        if m.iter().all(|m| m.acked_at.is_some()) {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "alice did not acknowledge her inbox: {m:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// alice's replies in bob's mailbox, oldest first.
async fn replies_to_bob(hive: &TestHive) -> Vec<Message> {
    let mut m: Vec<Message> = mailbox(hive, "bob")
        .await
        .into_iter()
        .filter(|m| m.from == Principal::Agent(name("alice")))
        .collect();
    m.sort_by_key(|m| m.id);
    m
}

/// alice's status texts from the event stream, oldest first, read until
/// `done` holds for them.
async fn statuses_until(hive: &TestHive, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut stream = subscribe(hive.admin_socket(), 0).await.expect("subscribe");
    let mut texts = Vec::new();
    let end = tokio::time::Instant::now() + REPLY_TIMEOUT;
    while !done(&texts) {
        let item = tokio::time::timeout_at(end, stream.next_item())
            .await
            .unwrap_or_else(|_| panic!("statuses so far: {texts:?}"));
        match item {
            Some(Ok(Streamed::Event(r))) => {
                if let Event::AgentStatus { agent, text } = r.event {
                    if agent.as_str() == "alice" {
                        texts.push(text);
                    }
                }
            }
            other => panic!("event stream ended: {other:?}; statuses {texts:?}"),
        }
    }
    texts
}

async fn status_of(hive: &TestHive, agent: &str) -> Option<String> {
    match hive
        .operator(OperatorRequest::AgentDetail { name: name(agent) })
        .await
    {
        OperatorResponse::Agent(d) => d.summary.status,
        other => panic!("{other:?}"),
    }
}

/// Waits for `MARKS/go.$HIVE_TURN`, keeps the prompt and the turn file,
/// prints the reply.
const GATED: &str = r#"
touch "$MARKS/started.$HIVE_TURN"
while [ ! -e "$MARKS/go.$HIVE_TURN" ]; do sleep 0.05; done
cat > "$MARKS/prompt.$HIVE_TURN"
cp "$HIVE_TURN_FILE" "$MARKS/turn.$HIVE_TURN.json"
echo "reply to turn $HIVE_TURN"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_gets_the_scripts_stdout_as_one_reply_and_the_status_shows_the_turn() {
    let Some(t) = Turns::start(GATED, &[]) else {
        return;
    };
    let mut bob = Bob::connect(&t.hive).await;
    let first = bob.send("hello alice").await;
    t.wait_mark("started.1").await;
    // While the turn runs, the status says so (the core may coalesce a
    // burst of statuses, so this waits for it rather than reading once).
    t.wait_status("turn 1: 1 message from bob").await;
    t.touch("go.1");
    let reply = bob.next().await;
    assert_eq!(reply["from"], "alice", "{reply}");
    assert_eq!(reply["in_reply_to"], first, "{reply}");
    assert_eq!(reply["body"], "reply to turn 1", "{reply}");

    // The command saw the message in its prompt and its turn file.
    let prompt = std::fs::read_to_string(t.mark("prompt.1")).unwrap();
    assert!(prompt.contains("You are alice"), "{prompt}");
    assert!(
        prompt.contains(&format!("--- #{first} message from bob ---\nhello alice\n")),
        "{prompt}"
    );
    let file = t.json_mark("turn.1.json");
    assert_eq!(file["turn"], 1, "{file}");
    assert_eq!(file["agent"], "alice", "{file}");
    assert_eq!(file["reply_to"], json!(["bob"]), "{file}");
    assert_eq!(file["messages"][0]["id"], first, "{file}");
    assert_eq!(file["messages"][0]["body"], "hello alice", "{file}");

    // A second message is a second turn; the first is never replied again.
    let second = bob.send("again").await;
    t.wait_mark("started.2").await;
    t.wait_status("turn 2: 1 message from bob").await;
    t.touch("go.2");
    let reply = bob.next().await;
    assert_eq!(reply["in_reply_to"], second, "{reply}");
    all_acked(&t.hive).await;
    let replies = replies_to_bob(&t.hive).await;
    let answered: Vec<Option<u64>> = replies.iter().map(|m| m.in_reply_to).collect();
    assert_eq!(answered, [Some(first), Some(second)], "{replies:?}");
    assert!(!t.mark("started.3").exists(), "a third turn ran");

    let texts = statuses_until(&t.hive, |s| {
        s.iter().any(|s| s == "idle after turn 2 (replied to bob)")
    })
    .await;
    let idle: Vec<&String> = texts.iter().filter(|s| s.starts_with("idle")).collect();
    assert_eq!(
        idle,
        [
            "idle after turn 1 (replied to bob)",
            "idle after turn 2 (replied to bob)"
        ],
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_gets_the_batch_again_with_backoff_and_nothing_is_lost() {
    let script = r#"
n=$(cat "$MARKS/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$MARKS/count"
cp "$HIVE_TURN_FILE" "$MARKS/turn.$n.json"
if [ $n -lt 3 ]; then echo "attempt $n fails" >&2; exit 1; fi
echo "handled at last"
"#;
    let Some(t) = Turns::start(script, &[]) else {
        return;
    };
    let mut bob = Bob::connect(&t.hive).await;
    let first = bob.send("one").await;
    t.wait_mark("turn.1.json").await;
    // Sent while the batch is failing: it joins the batch.
    let second = bob.send("two").await;
    let reply = bob.next().await;
    assert_eq!(reply["body"], "handled at last", "{reply}");
    assert_eq!(reply["in_reply_to"], second, "{reply}");

    let ids = |f: &Value| -> Vec<u64> {
        f["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    let t1 = t.json_mark("turn.1.json");
    assert_eq!(ids(&t1), [first], "{t1}");
    assert_eq!(
        (t1["attempt"].clone(), t1["previous_failure"].clone()),
        (json!(1), Value::Null)
    );
    let t3 = t.json_mark("turn.3.json");
    assert_eq!(ids(&t3), [first, second], "{t3}");
    assert_eq!(t3["attempt"], 3, "{t3}");
    assert_eq!(t3["previous_failure"], "exit status 1", "{t3}");

    all_acked(&t.hive).await;
    assert_eq!(replies_to_bob(&t.hive).await.len(), 1);
    let texts = statuses_until(&t.hive, |s| {
        s.iter().any(|s| s.starts_with("idle after turn 3"))
    })
    .await;
    assert!(
        texts.contains(&"turn 1 failed (exit status 1); retrying in 1s".to_owned()),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"turn 2 failed (exit status 1); retrying in 2s".to_owned()),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_hangs_past_max_turn_seconds_is_killed_and_retried() {
    let script = r#"
n=$(cat "$MARKS/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$MARKS/count"
if [ $n -eq 1 ]; then echo $$ > "$MARKS/hung.pid"; exec sleep 600; fi
echo "second try"
"#;
    let Some(t) = Turns::start(script, &["--max-turn-seconds", "1"]) else {
        return;
    };
    let mut bob = Bob::connect(&t.hive).await;
    let id = bob.send("do it").await;
    let reply = bob.next().await;
    assert_eq!(reply["body"], "second try", "{reply}");
    assert_eq!(reply["in_reply_to"], id, "{reply}");
    // The hung command is gone, not left behind.
    let pid: i32 = std::fs::read_to_string(t.mark("hung.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone =
        poll_until(|| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()).await;
    assert!(gone, "the hung turn {pid} is still running");
    let texts = statuses_until(&t.hive, |s| {
        s.iter().any(|s| s.starts_with("idle after turn 2"))
    })
    .await;
    assert!(
        texts.contains(&"turn 1 failed (it ran over 1s and was killed); retrying in 1s".to_owned()),
        "{texts:?}"
    );
    all_acked(&t.hive).await;
    assert_eq!(replies_to_bob(&t.hive).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_killed_mid_turn_gets_the_reply_once_after_it_restarts() {
    let Some(mut t) = Turns::start(GATED, &[]) else {
        return;
    };
    let mut bob = Bob::connect(&t.hive).await;
    let first = bob.send("survive this").await;
    t.wait_mark("started.1").await;
    t.hive.kill9();
    t.hive.start();
    t.touch("go.1");
    let mut bob = Bob::connect(&t.hive).await;
    let reply = bob.next().await;
    assert_eq!(reply["in_reply_to"], first, "{reply}");
    assert_eq!(reply["body"], "reply to turn 1", "{reply}");
    all_acked(&t.hive).await;

    // The redelivery after the reconnect did not run the batch again: the
    // next message is turn 2, and bob has one reply per message.
    let second = bob.send("and this").await;
    t.wait_mark("started.2").await;
    t.touch("go.2");
    let reply = bob.next().await;
    assert_eq!(reply["in_reply_to"], second, "{reply}");
    assert_eq!(reply["body"], "reply to turn 2", "{reply}");
    all_acked(&t.hive).await;
    let answered: Vec<Option<u64>> = replies_to_bob(&t.hive)
        .await
        .iter()
        .map(|m| m.in_reply_to)
        .collect();
    assert_eq!(answered, [Some(first), Some(second)]);
    assert!(!t.mark("started.3").exists(), "a third turn ran");
    let _ = t.runner.take();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_runs_no_turn_until_it_is_resumed() {
    let Some(hive_agent) = sibling_bin("hive-agent") else {
        return;
    };
    // The process runtime starts `hive-agent run` itself; the script keeps
    // its marks in the agent's state dir (its working directory, sandboxed
    // or not).
    let agents = format!(
        "[agents.alice]\ncommand = [{:?}, \"run\", \"--\", \"/bin/sh\", \"-c\", \
         \"echo $HIVE_TURN >> turns.log; echo turn $HIVE_TURN\"]\n[agents.bob]\ncommand = \
         [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
        hive_agent.to_str().unwrap()
    );
    let mut hive = TestHive::with_runtime("process", "allow_unsandboxed = true", &agents);
    hive.start();
    let turns = hive.dir.path().join("lib/agents/alice/state/turns.log");
    let count = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut bob = Bob::connect(&hive).await;
    bob.send("first").await;
    assert_eq!(bob.next().await["body"], "turn 1");

    let lifecycle = |action| OperatorRequest::Lifecycle {
        name: name("alice"),
        action,
    };
    assert!(matches!(
        hive.operator(lifecycle(LifecycleAction::Pause)).await,
        OperatorResponse::Done
    ));
    let paused = match hive
        .operator(OperatorRequest::AgentDetail {
            name: name("alice"),
        })
        .await
    {
        OperatorResponse::Agent(d) => d.summary.run_state,
        other => panic!("{other:?}"),
    };
    assert_eq!(paused, RunState::Paused);
    let id = bob.send("while paused").await;
    // Long enough for a turn to have run many times over if pause let it.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(count(&turns), 1, "a turn ran while paused");
    let unread = mailbox(&hive, "alice").await;
    assert!(
        unread.iter().any(|m| m.id == id && m.acked_at.is_none()),
        "{unread:?}"
    );

    assert!(matches!(
        hive.operator(lifecycle(LifecycleAction::Resume)).await,
        OperatorResponse::Done
    ));
    let reply = bob.next().await;
    assert_eq!(reply["body"], "turn 2", "{reply}");
    assert_eq!(reply["in_reply_to"], id, "{reply}");
    assert_eq!(count(&turns), 2);
}
