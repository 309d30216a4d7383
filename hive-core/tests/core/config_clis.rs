//! The config repo's command lines as real processes against the real
//! daemon (the `detached` runtime: these tests are about the CLIs, the
//! container side is `config_repo` and `config_repo_nspawn`):
//! `hive-agent propose-config` / `request-spawn` with `--file REL=LOCAL`,
//! and `hivectl approvals`, `approve`, `deny`, `config
//! propose|revert|log|show|diff`. Every refusal is one line and exit 1, and
//! a refused proposal leaves no approval and no `proposals/*` branch.

use std::path::{Path, PathBuf};

use hive_proto::agent::MAX_PROPOSAL_FILE;
use serde_json::Value;

use crate::clis::{row, Clis};
use crate::common::git;

/// Writes `text` to `name` in the hive's temp dir; returns the path.
fn local_file(c: &Clis, name: &str, text: &[u8]) -> PathBuf {
    let p = c.hive.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `REL=LOCAL` for `--file`.
fn file_arg(rel: &str, local: &Path) -> String {
    format!("{rel}={}", local.display())
}

/// `hivectl approvals --json`.
async fn pending(c: &Clis) -> Vec<Value> {
    let v = c.run(c.ctl(&["approvals", "--json"])).await.json();
    v.as_array().expect("an array").clone()
}

/// Branches of the config repo, as plain `git` lists them.
fn branches(c: &Clis) -> String {
    git(&c.hive.meta_dir(), &["branch", "--list"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_propose_config_then_hivectl_approve_log_show_diff_and_revert() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let fast = local_file(&c, "fast.toml", b"env = { MODE = \"fast\" }\n");
    let opened = c
        .run(c.agent(
            "alice",
            &[
                "propose-config",
                "alice",
                "--file",
                &file_arg("agent.toml", &fast),
                "-m",
                "run fast",
            ],
        ))
        .await
        .json();
    let id = opened["approval_id"].as_u64().expect("an approval id");
    assert_eq!(opened["branch"], format!("proposals/{id}"), "{opened}");
    let id_s = id.to_string();

    // Pending, with its diff, as a table, with --diff and as JSON.
    let table = c.run(c.ctl(&["approvals"])).await.ok();
    let line = row(&table, &id_s);
    for want in ["alice", "config", "run fast"] {
        assert!(line.contains(want), "{want} not in {line:?}");
    }
    let with_diff = c.run(c.ctl(&["approvals", "--diff"])).await.ok();
    assert!(
        with_diff.contains("+env = { MODE = \"fast\" }"),
        "{with_diff}"
    );
    let list = pending(&c).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["proposer"], "alice");
    assert_eq!(list[0]["state"], "pending");
    // main has not moved: what runs is main.
    let diff = c.run(c.ctl(&["config", "diff", "alice"])).await.ok();
    assert!(diff.starts_with("no difference"), "{diff}");

    assert_eq!(
        c.run(c.ctl(&["approve", &id_s])).await.ok().trim(),
        format!("approved #{id}")
    );
    assert!(pending(&c).await.is_empty());
    let again = c.run(c.ctl(&["approve", &id_s])).await.failed();
    assert!(again.starts_with("hivectl: "), "{again}");

    // The log names the proposer and the approver; show reads both sides.
    let log = c.run(c.ctl(&["config", "log", "alice"])).await.ok();
    let newest = log.lines().nth(1).expect("a commit");
    assert!(
        newest.contains(&format!("approve #{id} by operator:"))
            && newest.contains("(proposed by agent:alice)"),
        "{log}"
    );
    let log = c
        .run(c.ctl(&["config", "log", "--json", "--limit", "1"]))
        .await
        .json();
    let head = &log.as_array().expect("array")[0];
    assert!(
        head["author"].as_str().unwrap().starts_with("operator:"),
        "{head}"
    );
    let main = head["sha"].as_str().unwrap().to_owned();
    let shown = c.run(c.ctl(&["config", "show", "alice"])).await.ok();
    assert!(
        shown.contains("==> agent.toml <==") && shown.contains("MODE = \"fast\""),
        "{shown}"
    );
    let before = c
        .run(c.ctl(&["config", "show", "alice", "--rev", "main~1", "--json"]))
        .await
        .json();
    assert!(!before.to_string().contains("fast"), "{before}");

    // Revert the approval's merge: main holds the old file again.
    let reverted = c.run(c.ctl(&["config", "revert", &main])).await.ok();
    assert!(reverted.starts_with("reverted; main is now "), "{reverted}");
    let shown = c
        .run(c.ctl(&["config", "show", "alice", "--json"]))
        .await
        .json();
    assert!(!shown.to_string().contains("fast"), "{shown}");
    let log = git(&c.hive.meta_dir(), &["log", "--oneline", "-1"]);
    assert!(
        log.contains("revert ") && log.contains("by operator:"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proposals_fail_on_one_line_and_leave_no_approval_or_branch() {
    let Some(c) = Clis::start(&["alice", "bob"]) else {
        return;
    };
    let good = local_file(&c, "good.toml", b"env = { MODE = \"fast\" }\n");
    let broken = local_file(&c, "broken.toml", b"restart = \"always\"\n");
    let big = local_file(&c, "big.nix", &vec![b'#'; MAX_PROPOSAL_FILE + 1]);
    let missing = c.hive.dir.path().join("no-such.toml");
    let main = || git(&c.hive.meta_dir(), &["rev-parse", "main"]);
    let main_before = main();
    let propose = |rel: &str, local: &Path| {
        vec![
            "propose-config".to_owned(),
            "alice".to_owned(),
            "--file".to_owned(),
            file_arg(rel, local),
            "-m".to_owned(),
            "m".to_owned(),
        ]
    };
    let as_alice = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.agent("alice", &args)
    };
    let cases: [(Vec<String>, &str); 5] = [
        (propose("../bob/agent.toml", &good), "may not contain '..'"),
        (propose("agent.nix", &big), "over 65536 bytes"),
        (propose("agent.toml", &missing), "no-such.toml"),
        (propose("agent.toml", &broken), "restart \"always\""),
        (propose(".git/config", &good), ".git"),
    ];
    for (args, want) in cases {
        let what = format!("{args:?}");
        let err = c.run(as_alice(args)).await.failed();
        assert!(
            err.starts_with("hive-agent: ") && err.contains(want),
            "{what}: {err:?} lacks {want:?}"
        );
    }
    let mut for_bob = propose("agent.toml", &good);
    for_bob[1] = "bob".into();
    let err = c.run(as_alice(for_bob)).await.failed();
    assert!(err.contains("forbidden"), "{err}");
    let err = c
        .run(c.ctl(&[
            "config",
            "propose",
            "alice",
            "--file",
            &file_arg("agent.nix", &big),
            "-m",
            "m",
        ]))
        .await
        .failed();
    assert!(
        err.starts_with("hivectl: ") && err.contains("over 65536 bytes"),
        "{err}"
    );
    let err = c
        .run(c.ctl(&[
            "config",
            "propose",
            "alice",
            "--file",
            "agent.toml",
            "-m",
            "m",
        ]))
        .await
        .failed();
    assert!(err.contains("REL=LOCAL"), "{err}");
    assert!(
        pending(&c).await.is_empty(),
        "a refused proposal opened one"
    );
    let b = branches(&c);
    assert!(!b.contains("proposals/"), "{b}");

    // A config show of no such revision is the core's not_found.
    let err = c
        .run(c.ctl(&["config", "show", "alice", "--rev", "nosuch"]))
        .await
        .failed();
    assert!(err.contains("not_found") && err.contains("nosuch"), "{err}");

    // Denied: the proposer receives the reason in its inbox.
    let id = c.run(as_alice(propose("agent.toml", &good))).await.json()["approval_id"]
        .as_u64()
        .unwrap();
    let denied = c
        .run(c.ctl(&["deny", &id.to_string(), "not today"]))
        .await
        .ok();
    assert_eq!(denied.trim(), format!("denied #{id}"));
    let inbox = c.run(c.agent("alice", &["recv"])).await.json_lines();
    let decided = inbox
        .iter()
        .find(|m| m["kind"] == "approval_decided")
        .unwrap_or_else(|| panic!("no decision in {inbox:?}"));
    let body = decided["body"].as_str().unwrap();
    assert!(
        body.contains("denied by operator:") && body.ends_with("not today"),
        "{body}"
    );
    assert!(pending(&c).await.is_empty());
    // Only an approval moves main: neither the refusals, nor a proposal,
    // nor its denial did.
    assert_eq!(main(), main_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_agent_request_spawn_and_hivectl_config_propose_become_approvals() {
    let Some(c) = Clis::start(&["alice"]) else {
        return;
    };
    let toml = local_file(
        &c,
        "scout.toml",
        b"command = [\"/bin/true\"]\nallowed_recipients = [\"operator\"]\n",
    );
    let opened = c
        .run(c.agent(
            "alice",
            &[
                "request-spawn",
                "scout",
                "--file",
                &file_arg("agent.toml", &toml),
                "-m",
                "a scout",
            ],
        ))
        .await
        .json();
    let id = opened["approval_id"].as_u64().unwrap();
    let list = pending(&c).await;
    assert_eq!(list[0]["kind"], "spawn", "{list:?}");
    assert_eq!(list[0]["agent"], "scout", "{list:?}");
    let agents = c.run(c.ctl(&["agents"])).await.ok();
    assert!(!agents.contains("scout"), "{agents}");

    c.run(c.ctl(&["approve", &id.to_string()])).await.ok();
    // The approval is recorded before `ok`; the deploy that registers the
    // agent follows.
    c.hive
        .wait_agent("scout", "deployed", |r| r.deployed_sha.is_some())
        .await;
    let agents = c.run(c.ctl(&["agents"])).await.ok();
    row(&agents, "scout");
    let me = c.run(c.agent("scout", &["whoami"])).await.json();
    assert_eq!(me["name"], "scout", "{me}");
    assert_eq!(me["allowed_recipients"], serde_json::json!(["operator"]));

    // The operator proposes too; the approval names them.
    let opened = c
        .run(c.ctl(&[
            "--json",
            "config",
            "propose",
            "scout",
            "--file",
            &file_arg("agent.toml", &toml),
            "--file",
            &file_arg("notes.txt", &toml),
            "-m",
            "notes",
        ]))
        .await
        .json();
    let list = pending(&c).await;
    assert_eq!(list[0]["id"], opened["approval_id"], "{list:?}");
    assert_eq!(list[0]["proposer"], "operator", "{list:?}");
    // A taken name cannot be requested again.
    let err = c
        .run(c.agent(
            "alice",
            &[
                "request-spawn",
                "scout",
                "--file",
                &file_arg("agent.toml", &toml),
            ],
        ))
        .await
        .failed();
    assert!(err.contains("conflict"), "{err}");
}
