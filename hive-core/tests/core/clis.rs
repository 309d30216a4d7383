//! The two command-line clients against the real daemon: `hive-agent` on an
//! agent socket and `hivectl` on `admin.sock`, run as real processes, each
//! with a timeout. The CLIs belong to hive-proto, so cargo gives these tests
//! no `CARGO_BIN_EXE_*` for them; they are found next to the `hive-core`
//! binary, where `cargo build --workspace --all-targets` (CI's first step)
//! and `cargo test --workspace` put them.
//!
//! Assertions are on content (names, ids, bodies, exit codes), not on
//! column widths or timestamp formats.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::common::{describe, sibling_bin, TestHive, REPLY_TIMEOUT};

/// Longest any one CLI run (or one awaited line of a following one) may take.
const CLI_TIMEOUT: Duration = REPLY_TIMEOUT;

/// A started hive and the two CLIs built beside its daemon.
pub(crate) struct Clis {
    pub(crate) hive: TestHive,
    hivectl: PathBuf,
    hive_agent: PathBuf,
}

impl Clis {
    /// Starts a hive with `agents`; `None` (after `skip_or_fail`) if the CLIs
    /// were not built next to `hive-core`.
    pub(crate) fn start(agents: &[&str]) -> Option<Self> {
        Self::start_hive(TestHive::new(agents))
    }

    /// Starts `hive` (not yet started); `None` as for [`Clis::start`].
    pub(crate) fn start_hive(mut hive: TestHive) -> Option<Self> {
        let hivectl = sibling_bin("hivectl")?;
        let hive_agent = sibling_bin("hive-agent")?;
        hive.start();
        Some(Self {
            hive,
            hivectl,
            hive_agent,
        })
    }

    /// `hive-agent --socket <agent's socket> args…` (no `HIVE_SOCKET`).
    pub(crate) fn agent(&self, agent: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.hive_agent);
        cmd.env_remove("HIVE_SOCKET")
            .arg("--socket")
            .arg(self.hive.agent_socket(agent))
            .args(args);
        cmd
    }

    /// `HIVE_SOCKET=<agent's socket> hive-agent args…` (no `--socket`).
    pub(crate) fn agent_env(&self, agent: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.hive_agent);
        cmd.env("HIVE_SOCKET", self.hive.agent_socket(agent))
            .args(args);
        cmd
    }

    /// `hivectl --socket <admin.sock> args…`.
    pub(crate) fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.hivectl);
        cmd.arg("--socket").arg(self.hive.admin_socket()).args(args);
        cmd
    }

    /// Runs `cmd` to completion within [`CLI_TIMEOUT`].
    pub(crate) async fn run(&self, mut cmd: Command) -> Ran {
        let what = format!("{:?}", cmd.as_std());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let out = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within {CLI_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Ran {
            what,
            status: out.status,
            stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
            core_log: self.hive.log(),
        }
    }

    /// Starts `cmd` in the background with its stdout read line by line.
    fn follow(&self, mut cmd: Command) -> Following {
        let what = format!("{:?}", cmd.as_std());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Following { what, child, lines }
    }
}

/// How one CLI run ended.
pub(crate) struct Ran {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    core_log: String,
}

impl Ran {
    /// Asserts exit 0 and returns stdout.
    pub(crate) fn ok(self) -> String {
        assert!(
            self.status.success(),
            "{} failed ({}): stderr {:?}, stdout {:?}\ncore log:\n{}",
            self.what,
            describe(self.status),
            self.stderr,
            self.stdout,
            self.core_log
        );
        self.stdout
    }

    /// Asserts exit 0 and parses stdout as one JSON document.
    pub(crate) fn json(self) -> Value {
        let what = self.what.clone();
        let out = self.ok();
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{what} printed non-JSON {out:?}: {e}"))
    }

    /// Asserts exit 0 and parses each stdout line as JSON.
    pub(crate) fn json_lines(self) -> Vec<Value> {
        let what = self.what.clone();
        self.ok()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{what} printed {l:?}: {e}"))
            })
            .collect()
    }

    /// Asserts the documented failure: exit code 1, nothing on stdout, one
    /// line on stderr; returns that line.
    pub(crate) fn failed(self) -> String {
        assert_eq!(
            self.status.code(),
            Some(1),
            "{} should fail with exit 1, got {}: stderr {:?}, stdout {:?}",
            self.what,
            describe(self.status),
            self.stderr,
            self.stdout
        );
        assert!(
            self.stdout.is_empty(),
            "{} printed {:?}",
            self.what,
            self.stdout
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{} should say why on one line: {:?}",
            self.what,
            self.stderr
        );
        lines[0].to_owned()
    }
}

/// A CLI running in the background (`--follow`).
struct Following {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Following {
    /// The next stdout line; panics at EOF or after [`CLI_TIMEOUT`].
    async fn next_line(&mut self) -> String {
        match tokio::time::timeout(CLI_TIMEOUT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let err = self.stderr().await;
                panic!("{} ended its output early: {err}", self.what)
            }
            Ok(Err(e)) => panic!("{}: reading stdout: {e}", self.what),
            Err(_) => panic!("{} printed nothing within {CLI_TIMEOUT:?}", self.what),
        }
    }

    /// Reads lines until one contains `needle`; returns it.
    async fn line_containing(&mut self, needle: &str) -> String {
        loop {
            let line = self.next_line().await;
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// SIGTERM, then the exit status and whatever stdout was left.
    async fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("still running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let status = tokio::time::timeout(CLI_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} ignored SIGTERM", self.what))
            .expect("wait");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            rest.push(line);
        }
        (status, rest)
    }

    async fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut err)).await;
        }
        err
    }
}

/// The `ids` a `hive-agent send` printed (one, for a single recipient).
fn sent_id(v: &Value) -> u64 {
    let ids = v["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {v}"));
    assert_eq!(ids.len(), 1, "{v}");
    ids[0].as_u64().expect("id")
}

/// The table line whose first column is `first`.
pub(crate) fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_finds_its_socket_by_flag_or_hive_socket_and_whoami_names_the_agent() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let me = c.run(c.agent("alice", &["whoami"])).await.json();
    assert_eq!(me["name"], "alice", "{me}");
    assert!(me["allowed_recipients"].is_array(), "{me}");

    let me = c.run(c.agent_env("bob", &["whoami"])).await.json();
    assert_eq!(me["name"], "bob", "{me}");

    // The flag wins over the environment.
    let mut both = c.agent_env("bob", &[]);
    both.arg("--socket")
        .arg(c.hive.agent_socket("alice"))
        .arg("whoami");
    let me = c.run(both).await.json();
    assert_eq!(me["name"], "alice", "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_send_recv_and_ack_deliver_a_message_once_acknowledged() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let id = sent_id(
        &c.run(c.agent("alice", &["send", "bob", "hello bob"]))
            .await
            .json(),
    );

    // Delivered at least once: until acknowledged, every recv shows it.
    for _ in 0..2 {
        let got = c.run(c.agent_env("bob", &["recv"])).await.json_lines();
        assert_eq!(got.len(), 1, "{got:?}");
        let m = &got[0];
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(m["kind"], "message", "{m}");
        assert_eq!(m["from"], "alice", "{m}");
        assert_eq!(m["to"], "bob", "{m}");
        assert_eq!(m["body"], "hello bob", "{m}");
    }
    let acked = c
        .run(c.agent_env("bob", &["ack", &id.to_string()]))
        .await
        .json();
    assert_eq!(acked, serde_json::json!({}));
    assert_eq!(c.run(c.agent_env("bob", &["recv"])).await.ok(), "");

    // The operator sees it acknowledged in bob's mailbox.
    let mailbox = c.run(c.ctl(&["messages", "bob", "--json"])).await.json();
    let m = &mailbox.as_array().expect("array")[0];
    assert_eq!(m["id"], id, "{mailbox}");
    assert!(!m["acked_at"].is_null(), "{mailbox}");

    // Not a message of bob's: the core's refusal, on one line.
    let err = c.run(c.agent_env("bob", &["ack", "999999"])).await.failed();
    assert!(err.contains("not_found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_status_shows_in_hivectl_status_and_agents_as_text_and_json() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let done = c
        .run(c.agent("alice", &["status", "compiling the widget"]))
        .await
        .json();
    assert_eq!(done, serde_json::json!({}));

    let detail = c.run(c.ctl(&["status", "alice"])).await.ok();
    assert!(detail.contains("alice"), "{detail}");
    assert!(detail.contains("compiling the widget"), "{detail}");
    let detail = c.run(c.ctl(&["status", "alice", "--json"])).await.json();
    assert_eq!(detail["summary"]["name"], "alice", "{detail}");
    assert_eq!(
        detail["summary"]["status"], "compiling the widget",
        "{detail}"
    );

    let table = c.run(c.ctl(&["agents"])).await.ok();
    assert!(
        row(&table, "alice").ends_with("compiling the widget"),
        "{table}"
    );
    assert!(!row(&table, "bob").contains("compiling"), "{table}");
    let list = c.run(c.ctl(&["--json", "agents"])).await.json();
    let alice = list
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["name"] == "alice")
        .unwrap_or_else(|| panic!("no alice in {list}"));
    assert_eq!(alice["status"], "compiling the widget", "{list}");

    // Agent text is data: a newline and an escape in a status stay on the
    // agent's one row, shown as escapes.
    c.run(c.agent("alice", &["status", "two\nlines \u{1b}[2J"]))
        .await
        .ok();
    let table = c.run(c.ctl(&["agents"])).await.ok();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(row(&table, "alice").contains("two\\nlines"), "{table}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_activity_is_the_last_request_on_the_agents_socket_recv_included() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let activity = |list: &Value, name: &str| {
        list.as_array()
            .expect("array")
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))["last_activity_at"]
            .clone()
    };
    let list = c.run(c.ctl(&["--json", "agents"])).await.json();
    assert!(activity(&list, "alice").is_null(), "{list}");

    // A bare `recv` (no traffic for the idle clock) is still activity.
    let before = now_ms();
    assert_eq!(c.run(c.agent_env("alice", &["recv"])).await.ok(), "");
    let after = now_ms();
    let list = c.run(c.ctl(&["--json", "agents"])).await.json();
    let at = activity(&list, "alice")
        .as_i64()
        .unwrap_or_else(|| panic!("alice's recv left no last_activity_at: {list}"));
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
    assert!(activity(&list, "bob").is_null(), "bob sent nothing: {list}");

    // A later request moves it on; `hivectl status` shows it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.run(c.agent("alice", &["status", "busy"])).await.ok();
    let detail = c.run(c.ctl(&["status", "alice", "--json"])).await.json();
    let later = detail["summary"]["last_activity_at"].as_i64().unwrap();
    assert!(later > at, "{later} after {at}: {detail}");
    let text = c.run(c.ctl(&["status", "alice"])).await.ok();
    assert!(!row(&text, "last").ends_with('-'), "{text}");
    let text = c.run(c.ctl(&["status", "bob"])).await.ok();
    assert!(row(&text, "last").ends_with('-'), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_and_hivectl_carry_a_question_to_the_operator_and_back() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let asked = c
        .run(c.agent(
            "alice",
            &[
                "ask",
                "operator",
                "Ship the build?",
                "--option",
                "yes",
                "--option",
                "no",
                "--ttl",
                "600",
            ],
        ))
        .await
        .json();
    let qid = asked["question_id"].as_u64().expect("question_id");
    assert!(asked["expires_at"].is_u64(), "{asked}");

    let table = c.run(c.ctl(&["questions"])).await.ok();
    let line = row(&table, &qid.to_string());
    assert!(line.contains("alice"), "{table}");
    assert!(line.ends_with("Ship the build?"), "{table}");
    let open = c.run(c.ctl(&["questions", "--json"])).await.json();
    let q = &open.as_array().expect("array")[0];
    assert_eq!(q["id"], qid, "{open}");
    assert_eq!(q["asker"], "alice", "{open}");
    assert_eq!(q["to"], "operator", "{open}");
    assert_eq!(q["question"], "Ship the build?", "{open}");
    assert_eq!(q["options"], serde_json::json!(["yes", "no"]), "{open}");
    assert_eq!(q["state"], "open", "{open}");

    let said = c
        .run(c.ctl(&["answer", &qid.to_string(), "yes, ship it"]))
        .await
        .ok();
    assert!(said.contains(&qid.to_string()), "{said}");

    let inbox = c.run(c.agent_env("alice", &["recv"])).await.json_lines();
    let answer = inbox
        .iter()
        .find(|m| m["kind"] == "answer")
        .unwrap_or_else(|| panic!("no answer in {inbox:?}"));
    assert_eq!(answer["question_id"], qid, "{answer}");
    assert_eq!(answer["from"], "operator", "{answer}");
    assert_eq!(answer["body"], "yes, ship it", "{answer}");

    // Answered, so no longer open; answering again is refused.
    let open = c.run(c.ctl(&["questions", "--json"])).await.json();
    assert_eq!(open, serde_json::json!([]));
    let err = c
        .run(c.ctl(&["answer", &qid.to_string(), "no"]))
        .await
        .failed();
    assert!(err.starts_with("hivectl: "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_answer_on_the_operators_question_is_forbidden() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let asked = c
        .run(c.agent("alice", &["ask", "operator", "May I deploy?"]))
        .await
        .json();
    let qid = asked["question_id"]
        .as_u64()
        .expect("question_id")
        .to_string();

    // Neither another agent nor the asker may answer for the operator.
    for agent in ["bob", "alice"] {
        let err = c
            .run(c.agent(agent, &["answer", &qid, "yes"]))
            .await
            .failed();
        assert!(err.contains("forbidden"), "{agent}: {err}");
    }
    let open = c.run(c.ctl(&["questions", "--json"])).await.json();
    assert_eq!(open[0]["id"].to_string(), qid, "{open}");
    assert_eq!(open[0]["state"], "open", "{open}");
    assert!(open[0]["answer"].is_null(), "{open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_remind_delivers_a_reminder_when_due() {
    let Some(c) = Clis::start(&["alice"]) else {
        return;
    };
    let later = c
        .run(c.agent("alice", &["remind", "3600", "renew the cert"]))
        .await
        .json();
    assert!(later["reminder_id"].is_u64(), "{later}");
    let soon = c
        .run(c.agent("alice", &["remind", "1", "check the build"]))
        .await
        .json();
    let soon_id = soon["reminder_id"].as_u64().expect("reminder_id");
    assert!(soon["due_at"].is_u64(), "{soon}");

    // The pending one shows on the operator's view of alice.
    let detail = c.run(c.ctl(&["status", "alice", "--json"])).await.json();
    let reminders = detail["reminders"].as_array().expect("reminders");
    assert!(
        reminders.iter().any(|r| r["body"] == "renew the cert"),
        "{detail}"
    );

    // `recv --wait-ms` returns once the due one fires, about a second on.
    let got = c
        .run(c.agent("alice", &["recv", "--wait-ms", "20000"]))
        .await
        .json_lines();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["kind"], "reminder", "{got:?}");
    assert_eq!(got[0]["from"], "hive", "{got:?}");
    assert_eq!(got[0]["body"], "check the build", "{got:?}");
    let audit = c.run(c.ctl(&["audit", "--json"])).await.json();
    assert!(
        audit
            .as_array()
            .expect("array")
            .iter()
            .any(|r| r["actor"] == "hive"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("reminder={soon_id}")))),
        "the firing is audited: {audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_recv_follow_prints_messages_sent_after_it_started_once_each() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let first = sent_id(
        &c.run(c.agent("alice", &["send", "bob", "before follow"]))
            .await
            .json(),
    );
    let mut follow = c.follow(c.agent_env("bob", &["recv", "--follow", "--ack"]));
    // Printing the waiting message means its first recv is answered, so
    // the connection now gets pushes.
    let line: Value = serde_json::from_str(&follow.next_line().await).expect("JSON line");
    assert_eq!(line["id"], first, "{line}");

    let from_op = c
        .run(c.ctl(&["--json", "send", "bob", "from the operator"]))
        .await
        .json()["id"]
        .as_u64()
        .expect("id");
    let from_alice = sent_id(
        &c.run(c.agent("alice", &["send", "bob", "after follow"]))
            .await
            .json(),
    );
    for (id, from, body) in [
        (from_op, "operator", "from the operator"),
        (from_alice, "alice", "after follow"),
    ] {
        let line: Value = serde_json::from_str(&follow.next_line().await).expect("JSON line");
        assert_eq!(line["id"], id, "{line}");
        assert_eq!(line["from"], from, "{line}");
        assert_eq!(line["body"], body, "{line}");
    }

    // `--ack` acknowledged each printed message.
    let deadline = tokio::time::Instant::now() + CLI_TIMEOUT;
    loop {
        let mailbox = c.run(c.ctl(&["messages", "bob", "--json"])).await.json();
        let list = mailbox.as_array().expect("array");
        assert_eq!(list.len(), 3, "{mailbox}");
        if list.iter().all(|m| !m["acked_at"].is_null()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all acknowledged: {mailbox}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, rest) = follow.terminate().await;
    assert!(
        status.success(),
        "recv --follow on SIGTERM: {}",
        describe(status)
    );
    assert!(rest.is_empty(), "printed again: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_send_reaches_an_agent_and_messages_operator_shows_what_agents_sent() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let said = c.run(c.ctl(&["send", "alice", "please rebase"])).await.ok();
    assert!(said.contains("alice"), "{said}");
    let got = c.run(c.agent("alice", &["recv"])).await.json_lines();
    assert_eq!(got.len(), 1, "{got:?}");
    let op_msg = got[0]["id"].as_u64().expect("id");
    assert!(said.contains(&op_msg.to_string()), "{said}");
    assert_eq!(got[0]["from"], "operator", "{got:?}");
    assert_eq!(got[0]["to"], "alice", "{got:?}");
    assert_eq!(got[0]["body"], "please rebase", "{got:?}");

    let reply = sent_id(
        &c.run(c.agent(
            "alice",
            &[
                "send",
                "operator",
                "rebased onto main",
                "--reply-to",
                &op_msg.to_string(),
            ],
        ))
        .await
        .json(),
    );
    let table = c.run(c.ctl(&["messages", "operator"])).await.ok();
    let line = row(&table, &reply.to_string());
    assert!(line.contains("alice"), "{table}");
    assert!(line.ends_with("rebased onto main"), "{table}");
    let mailbox = c
        .run(c.ctl(&["messages", "operator", "--json"]))
        .await
        .json();
    let m = mailbox
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["id"] == reply)
        .unwrap_or_else(|| panic!("no {reply} in {mailbox}"));
    assert_eq!(m["from"], "alice", "{m}");
    assert_eq!(m["to"], "operator", "{m}");
    assert_eq!(m["body"], "rebased onto main", "{m}");
    assert_eq!(m["in_reply_to"], op_msg, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_events_follow_prints_a_status_change_made_after_it_started() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    c.run(c.agent("alice", &["status", "before the stream"]))
        .await
        .ok();
    let mut follow = c.follow(c.ctl(&["events", "--follow"]));
    // The backlog reached the newest event; the core subscribed to live
    // events before reading it, so nothing later can be missed.
    follow.line_containing("before the stream").await;
    c.run(c.agent("bob", &["status", "after the stream began"]))
        .await
        .ok();
    let line = follow.line_containing("after the stream began").await;
    assert!(line.contains("bob"), "{line}");
    follow.terminate().await;

    // Without --follow: everything so far, then exit by itself.
    let all = c.run(c.ctl(&["events"])).await.ok();
    let before = all.find("before the stream").expect("first status");
    let after = all.find("after the stream began").expect("second status");
    assert!(before < after, "{all}");
    let records = c.run(c.ctl(&["events", "--json"])).await.json_lines();
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let last = records.last().expect("events");
    assert_eq!(
        last["event"]["AgentStatus"]["text"], "after the stream began",
        "{last}"
    );
    // --since skips what came before.
    let since = seqs[seqs.len() - 2].to_string();
    let tail = c
        .run(c.ctl(&["events", "--json", "--since", &since]))
        .await
        .json_lines();
    assert_eq!(tail, std::slice::from_ref(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_audit_lists_exports_and_verifies_an_intact_log() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    c.run(c.agent("alice", &["send", "bob", "audited"]))
        .await
        .ok();
    c.run(c.agent("bob", &["status", "reading"])).await.ok();
    c.run(c.ctl(&["send", "bob", "from the shell"])).await.ok();

    let table = c.run(c.ctl(&["audit"])).await.ok();
    assert!(row(&table, "1").contains("agent:alice"), "{table}");
    assert!(row(&table, "1").contains("send"), "{table}");
    assert!(row(&table, "2").contains("agent:bob"), "{table}");
    assert!(row(&table, "3").contains("operator:"), "{table}");
    let rows = c.run(c.ctl(&["audit", "--json"])).await.json();
    let rows = rows.as_array().expect("array").clone();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let limited = c
        .run(c.ctl(&["audit", "--since", "1", "--limit", "1", "--json"]))
        .await
        .json();
    assert_eq!(limited, serde_json::json!([rows[1]]));

    let verified = c.run(c.ctl(&["audit", "verify"])).await.ok();
    assert!(verified.contains("intact"), "{verified}");
    let verified = c.run(c.ctl(&["audit", "verify", "--json"])).await.json();
    assert_eq!(verified["rows"], 3, "{verified}");
    assert_eq!(verified["head"], rows[2]["hash"], "{verified}");

    // `audit export --since` streams the same rows as JSON lines.
    let exported = c
        .run(c.ctl(&["audit", "export", "--since", "1"]))
        .await
        .json_lines();
    assert_eq!(exported, rows[1..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_health_says_whether_network_isolation_is_in_use() {
    let Some(c) = Clis::start(&["alice"]) else {
        return;
    };
    let text = c.run(c.ctl(&["health"])).await.ok();
    assert!(text.contains("1 agents"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "network isolation: not used by this runtime"),
        "{text}"
    );
    let json = c.run(c.ctl(&["health", "--json"])).await.json();
    assert_eq!(json["network"], "NotUsed", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clis_fail_with_one_line_and_exit_1_on_a_bad_name_an_unknown_agent_or_a_missing_socket()
{
    let Some(c) = Clis::start(&["alice"]) else {
        return;
    };
    // Refused before anything is sent.
    let err = c.run(c.ctl(&["status", "../x"])).await.failed();
    assert!(
        err.starts_with("hivectl: ") && err.contains("../x"),
        "{err}"
    );
    let err = c.run(c.ctl(&["send", "Alice", "hi"])).await.failed();
    assert!(err.contains("Alice"), "{err}");
    let err = c
        .run(c.agent("alice", &["send", "../x", "hi"]))
        .await
        .failed();
    assert!(
        err.starts_with("hive-agent: ") && err.contains("../x"),
        "{err}"
    );
    let err = c
        .run(c.agent("alice", &["remind", "soon", "x"]))
        .await
        .failed();
    assert!(
        err.starts_with("hive-agent: ") && err.contains("soon"),
        "{err}"
    );
    // Refused by the core.
    let err = c.run(c.ctl(&["status", "carol"])).await.failed();
    assert!(err.contains("not_found") && err.contains("carol"), "{err}");
    let err = c
        .run(c.agent("alice", &["send", "carol", "hi"]))
        .await
        .failed();
    assert!(err.starts_with("hive-agent: "), "{err}");

    // No core behind the path.
    let missing = c.hive.dir.path().join("no-such.sock");
    let mut cmd = Command::new(&c.hivectl);
    cmd.arg("--socket").arg(&missing).arg("agents");
    let err = c.run(cmd).await.failed();
    assert!(
        err.starts_with("hivectl: ") && err.contains("no-such.sock"),
        "{err}"
    );
    let mut cmd = Command::new(&c.hive_agent);
    cmd.env("HIVE_SOCKET", &missing).arg("whoami");
    let err = c.run(cmd).await.failed();
    assert!(
        err.starts_with("hive-agent: ") && err.contains("no-such.sock"),
        "{err}"
    );
}

/// `hivectl status NAME --json`'s `run_state`.
async fn run_state(clis: &Clis, name: &str) -> String {
    let v = clis.run(clis.ctl(&["--json", "status", name])).await.json();
    v["summary"]["run_state"].as_str().unwrap_or("?").to_owned()
}

/// Polls `run_state` until it is `want`.
async fn wait_state(clis: &Clis, name: &str, want: &str) {
    let end = std::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let got = run_state(clis, name).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{name} stayed {got}, never {want}\ncore log:\n{}",
            clis.hive.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_stop_start_pause_resume_and_restart_drive_a_real_agent() {
    // The agent writes its pid into its state dir at every start, so a
    // restart shows as a new pid.
    let agents = r#"
        [agents.alice]
        command = ["/bin/sh", "-c", "echo $$ >> pids; trap 'exit 0' TERM; while true; do sleep 0.05; done"]
    "#;
    let hive = TestHive::with_runtime("process", "allow_unsandboxed = true", agents);
    let Some(clis) = Clis::start_hive(hive) else {
        return;
    };
    let pids = clis.hive.dir.path().join("lib/agents/alice/state/pids");
    let starts = || {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_state(&clis, "alice", "running").await;

    let out = clis.run(clis.ctl(&["stop", "alice"])).await.ok();
    assert_eq!(out.trim(), "stopped alice");
    assert_eq!(run_state(&clis, "alice").await, "stopped");
    let v = clis
        .run(clis.ctl(&["--json", "start", "alice"]))
        .await
        .json();
    assert_eq!(v, serde_json::json!({"agent": "alice", "action": "start"}));
    wait_state(&clis, "alice", "running").await;
    // Starting what runs is refused, in one line.
    let err = clis.run(clis.ctl(&["start", "alice"])).await.failed();
    assert!(err.contains("alice is already running"), "{err}");

    assert_eq!(
        clis.run(clis.ctl(&["pause", "alice"])).await.ok().trim(),
        "paused alice"
    );
    assert_eq!(run_state(&clis, "alice").await, "paused");
    assert_eq!(
        clis.run(clis.ctl(&["resume", "alice"])).await.ok().trim(),
        "resumed alice"
    );
    wait_state(&clis, "alice", "running").await;

    let before = starts();
    assert_eq!(
        clis.run(clis.ctl(&["restart", "alice"])).await.ok().trim(),
        "restarted alice"
    );
    wait_state(&clis, "alice", "running").await;
    assert!(
        crate::common::poll_until(|| starts() == before + 1).await,
        "restart did not start it again: {} starts (had {before})\ncore log:\n{}",
        starts(),
        clis.hive.log()
    );

    // Every action is in the audit log under the operator's name.
    let audit = clis.run(clis.ctl(&["--json", "audit"])).await.json();
    let actions: Vec<&str> = audit
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["action"] == "lifecycle")
        .filter_map(|r| r["detail"].as_str())
        .collect();
    for a in ["Stop", "Start", "Pause", "Resume", "Restart"] {
        assert!(
            actions.iter().any(|d| d.ends_with(&format!("action={a}"))),
            "{a} not audited: {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_lifecycle_says_in_one_line_what_the_runtime_cannot_do() {
    let Some(clis) = Clis::start(&["alice"]) else {
        return;
    };
    // The detached runtime starts nothing, so every action is refused.
    for args in [
        &["start", "alice"][..],
        &["rebuild", "alice"],
        &["destroy", "alice"],
        &["destroy", "--purge", "alice"],
    ] {
        let err = clis.run(clis.ctl(args)).await.failed();
        assert!(
            err.contains("not supported by the detached runtime"),
            "{args:?}: {err}"
        );
    }
    let err = clis.run(clis.ctl(&["stop", "zed"])).await.failed();
    assert!(err.contains("no agent zed"), "{err}");
    let err = clis
        .run(clis.ctl(&["destroy", "--purge", "zed"]))
        .await
        .failed();
    assert!(err.contains("no agent zed"), "{err}");
}
