//! The config repo end to end on the `process` runtime: an agent proposes,
//! the operator approves on `admin.sock`, the agent restarts with the new
//! value; deny, conflict, forbidden and invalid proposals; spawn; revert;
//! `kill -9` right after an approval.

use std::process::Command;

use hive_proto::operator::{
    AdminRequest, ConfigRev, OperatorRequest as Req, OperatorResponse as Resp,
};
use hive_proto::view::{AgentSummary, Approval, ApprovalState};
use hive_proto::AgentName;
use serde_json::{json, Value};

use crate::common::{error_code, git, poll_until, skip_or_fail, LineConn, TestHive};

/// An agent that appends `$MODE` to `modes` in its state dir at each start.
fn agent_table(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[agents.{name}]\ncommand = {}\nenv = {{ MODE = \"{mode}\" }}\n{extra}\n",
        command_toml()
    )
}

fn command_toml() -> &'static str {
    r#"["/bin/sh", "-c", "echo \"$MODE\" >> modes; trap 'exit 0' TERM; while true; do sleep 0.05; done"]"#
}

fn agent_toml(mode: &str, extra: &str) -> String {
    format!(
        "command = {}\nenv = {{ MODE = \"{mode}\" }}\n{extra}\n",
        command_toml()
    )
}

fn started_hive(agents: &str) -> TestHive {
    let mut hive = TestHive::with_runtime("process", "allow_unsandboxed = true", agents);
    hive.start();
    hive
}

fn modes(hive: &TestHive, agent: &str) -> Vec<String> {
    std::fs::read_to_string(
        hive.dir
            .path()
            .join(format!("lib/agents/{agent}/state/modes")),
    )
    .unwrap_or_default()
    .lines()
    .map(str::to_owned)
    .collect()
}

async fn pending(hive: &TestHive) -> Vec<Approval> {
    match hive.operator(Req::Pending).await {
        Resp::Approvals(a) => a,
        other => panic!("{other:?}"),
    }
}

async fn summary(hive: &TestHive, agent: &str) -> AgentSummary {
    match hive.operator(Req::ListAgents).await {
        Resp::Agents(list) => list
            .into_iter()
            .find(|a| a.name.as_str() == agent)
            .expect("agent row"),
        other => panic!("{other:?}"),
    }
}

async fn approve(hive: &TestHive, id: u64) -> Result<Resp, hive_proto::client::ClientError> {
    hive.admin()
        .await
        .call(AdminRequest::Operator(Req::Approve { id }))
        .await
}

/// Waits until the agent runs `main` (deployed_sha == main_sha).
async fn wait_deployed(hive: &TestHive, agent: &str) -> AgentSummary {
    for _ in 0..500 {
        let s = summary(hive, agent).await;
        if s.deployed_sha.is_some() && s.deployed_sha == s.main_sha && !s.needs_update {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "{agent} never ran main: {:?}\n{}",
        summary(hive, agent).await,
        hive.log()
    );
}

async fn propose(conn: &mut LineConn, agent: &str, toml: &str, message: &str) -> Value {
    conn.request(
        "propose_config",
        json!({"agent": agent, "files": {"agent.toml": toml}, "message": message}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_change_proposed_by_the_agent_is_deployed_on_approval_and_reverted() {
    let hive = started_hive(&agent_table("alice", "slow", ""));
    assert!(
        poll_until(|| modes(&hive, "alice") == ["slow"]).await,
        "{}",
        hive.log()
    );
    wait_deployed(&hive, "alice").await;

    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    alice.request("recv", json!({"wait_ms": 0})).await;
    let reply = propose(&mut alice, "alice", &agent_toml("fast", ""), "run fast").await;
    assert_eq!(error_code(&reply), None, "{reply}");
    let id = reply["result"]["approval_id"].as_u64().unwrap();
    assert_eq!(reply["result"]["branch"], json!(format!("proposals/{id}")));

    // Pending, with the diff; nothing changed yet.
    let list = pending(&hive).await;
    assert_eq!(list.len(), 1);
    assert!(
        list[0].diff.contains("+env = { MODE = \"fast\" }"),
        "{}",
        list[0].diff
    );
    let ends = alice.request("loose_ends", json!({})).await;
    assert_eq!(ends["result"]["proposals"][0]["id"], json!(id));
    assert_eq!(modes(&hive, "alice"), ["slow"]);

    assert_eq!(approve(&hive, id).await.unwrap(), Resp::Done);
    let push = alice.next_push().await;
    assert_eq!(push["message"]["kind"], json!("approval_decided"), "{push}");
    assert!(push["message"]["body"]
        .as_str()
        .unwrap()
        .contains("approved by operator:"));
    assert!(poll_until(|| modes(&hive, "alice").last().map(String::as_str) == Some("fast")).await);
    let after = wait_deployed(&hive, "alice").await;
    assert!(pending(&hive).await.is_empty());
    // A second approve is refused: decided once.
    assert!(approve(&hive, id).await.is_err());

    // Both revisions are readable; the log names proposer and approver.
    let Resp::Config { files, .. } = hive
        .operator(Req::AgentConfig {
            agent: AgentName::new("alice").unwrap(),
            rev: ConfigRev::Deployed,
        })
        .await
    else {
        panic!()
    };
    assert!(files
        .iter()
        .any(|(p, t)| p == "agent.toml" && t.contains("fast")));
    let log = git(&hive.meta_dir(), &["log", "--oneline"]);
    assert!(log.contains("(proposed by agent:alice)"), "{log}");
    assert!(
        log.contains(&format!("approve #{id} by operator:")),
        "{log}"
    );
    nix_parses(&hive.meta_dir().join("flake.nix"));

    // Revert the approval: alice runs slow again.
    let main = after.main_sha.unwrap();
    let r = hive
        .admin()
        .await
        .call(AdminRequest::ConfigRevert { rev: main })
        .await
        .unwrap();
    assert!(matches!(r, Resp::Reverted { .. }), "{r:?}");
    assert!(poll_until(|| modes(&hive, "alice").last().map(String::as_str) == Some("slow")).await);
    wait_deployed(&hive, "alice").await;
    assert_eq!(modes(&hive, "alice"), ["slow", "fast", "slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_invalid_denied_and_conflicting_proposals() {
    let agents = agent_table("alice", "slow", "") + &agent_table("bob", "slow", "");
    let hive = started_hive(&agents);
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    alice.request("recv", json!({"wait_ms": 0})).await;

    let r = propose(&mut bob, "alice", &agent_toml("x", ""), "mine now").await;
    assert_eq!(error_code(&r).as_deref(), Some("forbidden"), "{r}");
    let r = propose(&mut alice, "alice", "restart = \"always\"", "broken").await;
    assert_eq!(error_code(&r).as_deref(), Some("bad_request"), "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart \"always\""),
        "{r}"
    );
    let r = alice
        .request(
            "propose_config",
            json!({"agent": "alice", "files": {"../bob/agent.toml": "x"}, "message": "m"}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("bad_request"), "{r}");
    let big = "#".repeat(hive_proto::agent::MAX_PROPOSAL_FILE + 1);
    let r = alice
        .request(
            "propose_config",
            json!({"agent": "alice", "files": {"agent.nix": big}, "message": "m"}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("too_large"), "{r}");
    assert!(
        pending(&hive).await.is_empty(),
        "an invalid proposal opened an approval"
    );
    let branches = git(&hive.meta_dir(), &["branch", "--list"]);
    assert!(!branches.contains("proposals/"), "{branches}");

    // Deny: the proposer hears the reason.
    let r = propose(&mut alice, "alice", &agent_toml("fast", ""), "fast").await;
    let id = r["result"]["approval_id"].as_u64().unwrap();
    let denied = hive
        .admin()
        .await
        .call(AdminRequest::Operator(Req::Deny {
            id,
            reason: "not today".into(),
        }))
        .await
        .unwrap();
    assert_eq!(denied, Resp::Done);
    let push = alice.next_push().await;
    assert!(
        push["message"]["body"]
            .as_str()
            .unwrap()
            .contains("denied by operator:"),
        "{push}"
    );
    assert!(
        push["message"]["body"]
            .as_str()
            .unwrap()
            .ends_with("not today"),
        "{push}"
    );

    // Two proposals on the same line: the second conflicts and stays pending.
    let one = propose(&mut alice, "alice", &agent_toml("one", ""), "one").await["result"]
        ["approval_id"]
        .as_u64()
        .unwrap();
    let two = propose(&mut alice, "alice", &agent_toml("two", ""), "two").await["result"]
        ["approval_id"]
        .as_u64()
        .unwrap();
    approve(&hive, one).await.unwrap();
    let err = approve(&hive, two).await.unwrap_err().to_string();
    assert!(
        err.contains("conflicts with main in agents/alice/agent.toml"),
        "{err}"
    );
    let list = pending(&hive).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, two);
    assert_eq!(list[0].state, ApprovalState::Pending);
    assert!(
        list[0]
            .conflict
            .as_deref()
            .unwrap_or("")
            .contains("agent.toml"),
        "{:?}",
        list[0]
    );
}

/// `nix-instantiate --parse FILE` succeeds (skipped off CI without Nix).
fn nix_parses(file: &std::path::Path) {
    match Command::new("nix-instantiate")
        .arg("--parse")
        .arg(file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => skip_or_fail("nix-instantiate is not installed (Debian nix-bin)"),
    }
}

/// A started hive with alice (mode slow) and a connection on her socket.
async fn alice_hive() -> (TestHive, LineConn) {
    let hive = started_hive(&agent_table("alice", "slow", ""));
    let alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    (hive, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_exists_only_after_approval_and_then_answers_whoami() {
    let (hive, mut alice) = alice_hive().await;
    let r = alice
        .request(
            "request_spawn",
            json!({"name": "scout", "files": {"agent.toml": agent_toml("scouting", "")}, "message": "a scout"}),
        )
        .await;
    assert_eq!(error_code(&r), None, "{r}");
    let id = r["result"]["approval_id"].as_u64().unwrap();
    assert!(!hive.agent_socket("scout").exists());
    let r = alice
        .request("send", json!({"to": "scout", "body": "hi"}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("not_found"), "{r}");

    approve(&hive, id).await.unwrap();
    assert!(
        poll_until(|| modes(&hive, "scout") == ["scouting"]).await,
        "{}",
        hive.log()
    );
    wait_deployed(&hive, "scout").await;
    let mut scout = LineConn::connect(&hive.agent_socket("scout"))
        .await
        .unwrap();
    let who = scout.request("whoami", json!({})).await;
    assert_eq!(who["result"]["name"], json!("scout"), "{who}");
    // A spawn of a taken name is refused.
    let r = alice
        .request(
            "request_spawn",
            json!({"name": "scout", "files": {"agent.toml": agent_toml("x", "")}}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("conflict"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_that_names_no_command_proposes_the_template_turn_loop_with_hive_agent_mcp() {
    let (hive, mut alice) = alice_hive().await;
    let r = alice
        .request(
            "request_spawn",
            json!({"name": "scout", "files": {"agent.toml": "idle_timeout = 60\n"}, "message": "a claude"}),
        )
        .await;
    assert_eq!(error_code(&r), None, "{r}");
    let branch = r["result"]["branch"].as_str().unwrap().to_owned();
    let show = |path: &str| git(&hive.meta_dir(), &["show", &format!("{branch}:{path}")]);
    // The proposal carries the template: agent.toml's command is the turn
    // loop around `claude -p` with the MCP config, the proposer's key kept.
    let toml_text = show("agents/scout/agent.toml");
    let raw: toml::Table = toml::from_str(&toml_text).unwrap();
    let command: Vec<&str> = raw["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let cli = command.iter().position(|a| *a == "--").unwrap();
    assert_eq!(&command[..2], ["hive-agent", "run"], "{toml_text}");
    assert!(
        command[..cli].contains(&"ANTHROPIC_API_KEY=anthropic"),
        "{toml_text}"
    );
    assert_eq!(
        &command[cli + 1..],
        [
            "claude",
            "-p",
            "--mcp-config",
            "/etc/hive/mcp.json",
            "--strict-mcp-config",
            "--allowedTools",
            "mcp__hive"
        ]
    );
    assert_eq!(raw["idle_timeout"].as_integer(), Some(60), "{toml_text}");
    // agent.nix registers `hive-agent mcp` at that path, and parses.
    let nix_text = show("agents/scout/agent.nix");
    assert!(
        nix_text.contains("environment.etc.\"hive/mcp.json\".text"),
        "{nix_text}"
    );
    assert!(nix_text.contains("command = \"hive-agent\";"), "{nix_text}");
    assert!(nix_text.contains("args = [ \"mcp\" ];"), "{nix_text}");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("agent.nix", nix_text), ("flake.nix", show("flake.nix"))] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        nix_parses(&file);
    }
    // The operator sees the same in the approval's diff.
    let diff = &pending(&hive).await[0].diff;
    assert!(
        diff.contains("+command = [\"hive-agent\", \"run\""),
        "{diff}"
    );
    assert!(diff.contains("hive-agent mcp"), "{diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_an_approval_deploys_it_once_and_shows_it_decided() {
    let mut hive = started_hive(&agent_table("alice", "slow", ""));
    assert!(poll_until(|| modes(&hive, "alice") == ["slow"]).await);
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    let id = propose(&mut alice, "alice", &agent_toml("fast", ""), "fast").await["result"]
        ["approval_id"]
        .as_u64()
        .unwrap();
    approve(&hive, id).await.unwrap();
    hive.kill9();
    hive.start();
    let s = wait_deployed(&hive, "alice").await;
    assert!(
        poll_until(|| modes(&hive, "alice").last().map(String::as_str) == Some("fast")).await,
        "{:?}",
        modes(&hive, "alice")
    );
    // Deployed exactly once: the restarted core does not start it twice
    // with the new value (it may or may not have started before the kill).
    let fast = modes(&hive, "alice")
        .iter()
        .filter(|m| *m == "fast")
        .count();
    assert!(fast <= 2, "{:?}", modes(&hive, "alice"));
    let Resp::Audit(rows) = hive
        .operator(Req::Audit {
            since: 0,
            limit: 1000,
        })
        .await
    else {
        panic!()
    };
    let approvals = rows
        .iter()
        .filter(|r| r.action == "approve" && r.detail.contains(&format!("approval={id} ")))
        .count();
    assert_eq!(approvals, 1, "{rows:?}");
    assert!(!s.needs_update);
    assert!(
        pending(&hive).await.is_empty(),
        "the approval is shown decided"
    );
    assert!(
        approve(&hive, id).await.is_err(),
        "and cannot be approved twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_seeding_the_repo_wins_over_a_changed_daemon_config_and_the_log_says_so() {
    let mut hive = started_hive(&agent_table("alice", "slow", ""));
    assert!(poll_until(|| modes(&hive, "alice") == ["slow"]).await);
    assert!(hive.stop().success());
    // The operator edits the daemon config by hand: alice's env, and a new
    // agent bob. Neither reaches the hive without a proposal.
    let config = std::fs::read_to_string(&hive.config_path).unwrap();
    let edited =
        config.replace("MODE = \"slow\"", "MODE = \"fast\"") + &agent_table("bob", "slow", "");
    std::fs::write(&hive.config_path, edited).unwrap();
    hive.start();
    assert!(
        poll_until(|| modes(&hive, "alice") == ["slow", "slow"]).await,
        "{:?}\n{}",
        modes(&hive, "alice"),
        hive.log()
    );
    let log = hive.log();
    assert!(
        log.contains("differs from agents/alice/agent.toml") && log.contains("the repo wins"),
        "{log}"
    );
    assert!(log.contains("not in the config repo"), "{log}");
    assert!(!hive.agent_socket("bob").exists());
    let Resp::Agents(list) = hive.operator(Req::ListAgents).await else {
        panic!()
    };
    assert!(list.iter().all(|a| a.name.as_str() != "bob"), "{list:?}");
}
