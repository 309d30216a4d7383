//! `hive-agent mcp` against an independent client: the official MCP Python
//! SDK (`mcp` on PyPI, pinned and installed into a virtual environment by
//! `scripts/test-all.sh`) drives the real `hive-agent` binary over stdio,
//! and `hive-agent` speaks to the real core. `mcp_client.py` reports each
//! step as a JSON line; this test checks the reports and, independently,
//! what the core did (bob's socket, the operator's `hivectl`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::{mcp_python, sibling_bin, LineConn, TestHive, REPLY_TIMEOUT};

/// Every tool `hive-agent mcp` lists.
const TOOLS: &[&str] = &[
    "whoami",
    "send",
    "recv",
    "ack",
    "ask",
    "answer",
    "loose_ends",
    "cancel",
    "set_status",
    "remind",
    "propose_config",
    "request_spawn",
];

/// The Python client as a child: its reports in, the test's go-aheads out.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    fn spawn(python: &Path, hive_agent: &Path, socket: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/core/mcp_client.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(hive_agent)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning the MCP client");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next report; it must be `step`.
    async fn step(&mut self, step: &str) -> Value {
        let line = tokio::time::timeout(REPLY_TIMEOUT * 2, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no report {step:?} in time"))
            .expect("reading the client")
            .unwrap_or_else(|| panic!("the client ended before {step:?}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(v["step"], step, "{v}");
        v
    }

    async fn go_on(&mut self) {
        self.stdin
            .write_all(b"go\n")
            .await
            .expect("writing the client");
        self.stdin.flush().await.expect("flush");
    }
}

/// The error a tool result carries, as `(code, message)`.
fn tool_error(v: &Value) -> (String, String) {
    assert_eq!(v["is_error"], true, "not a tool error: {v}");
    let e = &v["structured"]["error"];
    let code = e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {v}"));
    let msg = e["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"));
    assert_eq!(v["text"], format!("{code}: {msg}"), "{v}");
    (code.to_owned(), msg.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_mcp_sdk_initializes_lists_tools_sends_asks_and_sees_refusals_as_tool_errors() {
    let (Some(hive_agent), Some(hivectl), Some(python)) = (
        sibling_bin("hive-agent"),
        sibling_bin("hivectl"),
        mcp_python(),
    ) else {
        return;
    };
    let mut hive = TestHive::with_config(
        "",
        "[agents.alice]\nallowed_recipients = [\"bob\", \"operator\"]\n[agents.bob]\n[agents.carol]\n",
    );
    hive.start();
    let mut d = Driver::spawn(&python, &hive_agent, &hive.agent_socket("alice"));

    // Initialize: the newest handshake revision the SDK speaks.
    let init = d.step("initialized").await;
    assert_eq!(init["protocol_version"], "2025-11-25", "{init}");
    assert_eq!(init["server"], "hive-agent", "{init}");
    assert_eq!(init["tools_capability"], true, "{init}");

    // Every verb is a tool with a one-line description and an object schema.
    let tools = d.step("tools").await;
    let listed = tools["tools"].as_array().expect("tools");
    let names: BTreeSet<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, TOOLS.iter().copied().collect(), "{tools}");
    for t in listed {
        let desc = t["description"].as_str().unwrap_or_default();
        assert!(!desc.is_empty() && !desc.contains('\n'), "{t}");
        assert_eq!(t["input_schema"]["type"], "object", "{t}");
    }
    let send = listed.iter().find(|t| t["name"] == "send").unwrap();
    let required: BTreeSet<&str> = send["input_schema"]["required"]
        .as_array()
        .expect("send has required fields")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, BTreeSet::from(["to", "body"]), "{send}");
    for field in ["to", "body", "in_reply_to"] {
        let p = &send["input_schema"]["properties"][field];
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{send}"
        );
    }

    let me = d.step("whoami").await;
    assert_eq!(me["is_error"], false, "{me}");
    assert_eq!(me["structured"]["name"], "alice", "{me}");

    // send → bob receives it on his own socket.
    let sent = d.step("sent").await;
    assert_eq!(sent["is_error"], false, "{sent}");
    let id = sent["structured"]["ids"][0].as_u64().expect("id");
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let got = bob.request("recv", json!({"wait_ms": 5000})).await;
    let m = &got["result"]["messages"][0];
    assert_eq!(m["id"], id, "{got}");
    assert_eq!(m["from"], "alice", "{got}");
    assert_eq!(m["body"], "hello bob, from MCP", "{got}");

    // The core refuses: a tool error with its code and message, and the
    // session goes on.
    let refused = d.step("refused").await;
    let (code, msg) = tool_error(&refused);
    assert_eq!(code, "forbidden", "{refused}");
    assert!(msg.contains("carol"), "{refused}");

    // ask the operator; the operator answers through hivectl.
    let asked = d.step("asked").await;
    assert_eq!(asked["is_error"], false, "{asked}");
    let qid = asked["structured"]["question_id"].as_u64().expect("qid");
    let out = Command::new(&hivectl)
        .arg("--socket")
        .arg(hive.admin_socket())
        .args(["answer", &qid.to_string(), "yes"])
        .output()
        .await
        .expect("hivectl");
    assert!(out.status.success(), "hivectl answer: {out:?}");
    d.go_on().await;
    let answer = d.step("answer").await;
    let note = &answer["notification"];
    assert_eq!(note["logger"], "hive", "{answer}");
    assert_eq!(note["data"]["event"], "message", "{answer}");
    assert_eq!(note["data"]["message"]["kind"], "answer", "{answer}");
    assert_eq!(note["data"]["message"]["from"], "operator", "{answer}");
    assert_eq!(note["data"]["message"]["body"], "yes", "{answer}");
    assert_eq!(answer["answer"]["body"], "yes", "{answer}");
    assert_eq!(d.step("acked").await["is_error"], false);
    let after = d.step("after_ack").await;
    assert_eq!(after["structured"]["messages"], json!([]), "{after}");

    // The core goes away: a clear tool error, not a dead server.
    d.step("stop_core").await;
    hive.kill9();
    d.go_on().await;
    let down = d.step("while_down").await;
    let (code, msg) = tool_error(&down);
    assert_eq!(code, "unavailable", "{down}");
    assert!(msg.contains("hive core"), "{down}");

    // It comes back: the server reconnected by itself.
    d.step("start_core").await;
    hive.start();
    d.go_on().await;
    let back = d.step("after_restart").await;
    assert_eq!(back["is_error"], false, "{back}\n{}", hive.log());
    assert_eq!(back["structured"]["name"], "alice", "{back}");

    // Arguments the schema forbids fail that call only.
    let bad = d.step("bad_arguments").await;
    assert!(
        bad["outcome"] == "error" || bad["is_error"] == true,
        "{bad}"
    );

    // The newest revision (no initialize handshake) is negotiated too.
    let modern = d.step("discovered").await;
    assert_eq!(modern["protocol_version"], "2026-07-28", "{modern}");
    assert!(
        modern["supported"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("2024-11-05"))),
        "{modern}"
    );
    assert_eq!(modern["whoami"]["structured"]["name"], "alice", "{modern}");

    d.step("done").await;
    let status = tokio::time::timeout(REPLY_TIMEOUT, d.child.wait())
        .await
        .expect("the client exits")
        .expect("wait");
    assert!(status.success(), "{status}");
}
