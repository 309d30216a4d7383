//! Secrets end to end: `hivectl secret set|list|rm` on `admin.sock`
//! against the real core, the store on disk, the audit log, and `hive-agent
//! run --secret-env` handing a secret to its command and to no other
//! process, and the nspawn runtime mounting it at `/run/secrets/KEY` in
//! its agent's container alone (agents `se*`). Each test uses a fresh random value and looks for it, byte for
//! byte, everywhere it must not be.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use hive_proto::client::operator::OperatorClient;
use hive_proto::operator::{OperatorResponse, WebCall, WebRequest};
use hive_proto::{AgentName, SecretKey};

use crate::common::{
    is_root, poll_until, sibling_bin, skip_or_fail, LineConn, TestHive, REPLY_TIMEOUT,
};

fn fresh_value() -> String {
    format!(
        "sk-test-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// `hivectl --socket admin.sock args…` with `stdin`; (success, stdout, stderr).
async fn hivectl(hive: &TestHive, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let bin = sibling_bin("hivectl").expect("hivectl is built");
    let mut child = Command::new(bin)
        .arg("--socket")
        .arg(hive.admin_socket())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hivectl");
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin).await;
    drop(input);
    let out = tokio::time::timeout(REPLY_TIMEOUT, child.wait_with_output())
        .await
        .expect("hivectl in time")
        .expect("hivectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file under `dir`, recursively, that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            hits.extend(files_holding(&p, needle));
        } else if ft.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// The pids whose environment or command line holds `needle`.
fn processes_holding(needle: &[u8]) -> Vec<(i32, &'static str)> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        for what in ["environ", "cmdline"] {
            if let Ok(bytes) = std::fs::read(e.path().join(what)) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push((pid, what));
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hivectl_secret_set_list_rm_keep_the_value_in_its_one_root_only_file() {
    let (Some(_), Some(_)) = (sibling_bin("hivectl"), sibling_bin("hive-agent")) else {
        return;
    };
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let value = fresh_value();

    let (ok, out, err) = hivectl(
        &hive,
        &["secret", "set", "alice", "anthropic"],
        value.as_bytes(),
    )
    .await;
    assert!(ok, "{out} {err}");
    assert_eq!(out.trim(), "set secret anthropic of alice");

    // One file, 0400 in 0700 directories, under the state dir.
    let store = hive.dir.path().join("lib/secrets");
    let file = store.join("alice/anthropic");
    assert_eq!(std::fs::read(&file).unwrap(), value.as_bytes());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode(&store), mode(&store.join("alice")), mode(&file)),
        (0o700, 0o700, 0o400)
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().uid(),
        nix::unistd::geteuid().as_raw()
    );

    // Names only, and only for the agent they belong to.
    let (ok, out, _) = hivectl(&hive, &["secret", "list", "alice"], b"").await;
    assert!(ok);
    assert_eq!(out.trim(), "anthropic");
    let (ok, out, _) = hivectl(&hive, &["--json", "secret", "list", "alice"], b"").await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!(["anthropic"])
    );
    let (ok, out, _) = hivectl(&hive, &["secret", "list", "bob"], b"").await;
    assert!(ok);
    assert_eq!(out.trim(), "");
    // The gateway may ask for the names too (the agent page lists them),
    // one agent at a time; the answer holds no value.
    if is_root() {
        let web = OperatorClient::<WebCall>::connect(hive.web_socket())
            .await
            .unwrap();
        for (agent, want) in [("alice", vec!["anthropic"]), ("bob", vec![])] {
            let got = web
                .call(WebCall {
                    operator: "ops".into(),
                    req: WebRequest::SecretNames {
                        agent: AgentName::new(agent).unwrap(),
                    },
                })
                .await
                .unwrap();
            let want = want.iter().map(|k| SecretKey::new(k).unwrap()).collect();
            assert_eq!(got, OperatorResponse::Secrets(want), "{agent}");
        }
    } else {
        skip_or_fail("web.sock admits only root and the gateway user");
    }

    // The audit log names the key and who, never the value.
    let (ok, audit, _) = hivectl(&hive, &["--json", "audit"], b"").await;
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "secret_set")
        .unwrap_or_else(|| panic!("no secret_set row: {audit}"));
    assert_eq!(row["detail"], "agent=alice key=anthropic", "{row}");
    assert!(
        row["actor"].as_str().is_some_and(|a| !a.is_empty()),
        "{row}"
    );
    assert!(!audit.contains(&value));

    // Refusals change nothing.
    let too_big = vec![b'x'; hive_proto::operator::MAX_SECRET_BYTES + 1];
    let (ok, _, err) = hivectl(&hive, &["secret", "set", "alice", "big"], &too_big).await;
    assert!(!ok && err.contains("over"), "{err}");
    let (ok, _, err) = hivectl(&hive, &["secret", "set", "nobody", "k"], b"v").await;
    assert!(!ok && err.contains("no agent nobody"), "{err}");
    let (ok, _, err) = hivectl(&hive, &["secret", "set", "alice", "../x"], b"v").await;
    assert!(!ok && err.contains("secret name"), "{err}");
    let (ok, out, _) = hivectl(&hive, &["secret", "list", "alice"], b"").await;
    assert!(ok);
    assert_eq!(out.trim(), "anthropic");

    // Nowhere else under the hive's dirs: not the store, not the log.
    hive.stop();
    let hits = files_holding(hive.dir.path(), value.as_bytes());
    assert_eq!(hits, std::slice::from_ref(&file), "the value leaked");

    hive.start();
    let (ok, out, _) = hivectl(&hive, &["secret", "rm", "alice", "anthropic"], b"").await;
    assert!(ok, "{out}");
    assert!(!file.exists());
    let (ok, _, err) = hivectl(&hive, &["secret", "rm", "alice", "anthropic"], b"").await;
    assert!(!ok && err.contains("no secret anthropic"), "{err}");
    let (_, audit, _) = hivectl(&hive, &["--json", "audit"], b"").await;
    assert!(audit.contains("secret_remove"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_env_reaches_the_command_and_no_other_process() {
    let (Some(_), Some(hive_agent)) = (sibling_bin("hivectl"), sibling_bin("hive-agent")) else {
        return;
    };
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let value = fresh_value();
    let (ok, _, err) = hivectl(
        &hive,
        &["secret", "set", "alice", "anthropic"],
        value.as_bytes(),
    )
    .await;
    assert!(ok, "{err}");

    let marks = hive.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // The command proves it has the value (by a hash, so the value itself is
    // written nowhere) and waits while the test looks at every process.
    let script = r#"
printf %s "$ANTHROPIC_API_KEY" | sha256sum | cut -d' ' -f1 > "$MARKS/seen"
echo $$ > "$MARKS/pid"
while [ ! -e "$MARKS/go" ]; do sleep 0.05; done
echo "done"
"#;
    // The secrets dir is what the runtime mounts at /run/secrets.
    let secrets = hive.dir.path().join("lib/secrets/alice");
    let mut runner = Command::new(&hive_agent)
        .arg("--socket")
        .arg(hive.agent_socket("alice"))
        .args([
            "run",
            "--secret-env",
            "ANTHROPIC_API_KEY=anthropic",
            "--secrets-dir",
        ])
        .arg(&secrets)
        .args(["--", "/bin/sh", "-c", script])
        .env("MARKS", &marks)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    bob.request("send", json!({"to": "alice", "body": "use your key"}))
        .await;
    let pid_file = marks.join("pid");
    assert!(poll_until(|| pid_file.exists() && marks.join("seen").exists()).await);
    let cmd_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(value.as_bytes()));
    assert_eq!(
        std::fs::read_to_string(marks.join("seen")).unwrap().trim(),
        want
    );

    // Only the command's environment holds it: not hive-agent's (environ or
    // argv), not the core's, not any other process's.
    let mut hits = processes_holding(value.as_bytes());
    // The command's children (`sleep`) inherit its environment: they are
    // the command too.
    hits.retain(|(pid, _)| *pid != cmd_pid && !is_descendant(*pid, cmd_pid));
    assert!(hits.is_empty(), "the value is in {hits:?}");
    assert!(
        processes_holding(value.as_bytes()).contains(&(cmd_pid, "environ")),
        "the command lost it"
    );

    std::fs::write(marks.join("go"), b"").unwrap();
    let reply = bob.request("recv", json!({"wait_ms": 30_000})).await;
    assert_eq!(reply["result"]["messages"][0]["body"], "done", "{reply}");
    let _ = runner.start_kill();
    let out = runner.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&value), "hive-agent logged it: {stderr}");
    hive.stop();
    let hits = files_holding(hive.dir.path(), value.as_bytes());
    assert_eq!(hits, [secrets.join("anthropic")], "the value leaked");
}

/// Whether `pid`'s chain of parents reaches `ancestor`.
fn is_descendant(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The parent is the second field after the parenthesised name.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

/// The turn an nspawn agent runs: it proves it holds the secret, from the
/// file and from `--secret-env`, by hashes (so the value itself is written
/// nowhere), says how the file looks inside, and waits while the test looks
/// at every process.
const IN_CONTAINER_TURN: &str = r#"
h() { sha256sum | cut -d' ' -f1; }
h < /run/secrets/anthropic > /state/seen-file
printf %s "$ANTHROPIC_API_KEY" | h > /state/seen-env
stat -c %u:%g:%a /run/secrets/anthropic > /state/secret-stat
{ echo x > /run/secrets/anthropic; } 2>/dev/null || echo read-only > /state/secret-ro
touch /state/up
while [ ! -e /state/go ]; do sleep 0.05; done
echo turn-done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_readable_at_run_secrets_in_its_agents_container_and_nowhere_else() {
    let (Some(_), Some(ha)) = (sibling_bin("hivectl"), sibling_bin("hive-agent")) else {
        return;
    };
    if !crate::common::nspawn_available() {
        return;
    }
    use hive_proto::operator::{LifecycleAction, OperatorRequest, OperatorResponse};
    // `sea` runs the turn loop, exporting the secret to its command only;
    // `seb` is another agent's container, holding no secret.
    let run = [
        ha.to_str().unwrap(),
        "run",
        "--secret-env",
        "ANTHROPIC_API_KEY=anthropic",
        "--",
        "/bin/sh",
        "-c",
        IN_CONTAINER_TURN,
        "se-turn",
    ];
    let idle = [
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; while :; do sleep 0.1; done",
    ];
    let tables = format!(
        "[agents.sea]\ncommand = {}\n[agents.seb]\ncommand = {}\n",
        toml_array(&run),
        toml_array(&idle)
    );
    let mut hive = crate::common::TestHive::with_runtime("nspawn", "stop_timeout = 5", &tables);
    hive.start();
    let running = |r: &hive_proto::view::AgentSummary| {
        r.run_state == hive_proto::view::RunState::Running && r.leader_pid.is_some()
    };
    hive.wait_agent("seb", "ran", running).await;
    let value = fresh_value();
    let (ok, _, err) = hivectl(
        &hive,
        &["secret", "set", "sea", "anthropic"],
        value.as_bytes(),
    )
    .await;
    assert!(ok, "{err}");
    // Read at each start: the one running before the set has none.
    hive.lifecycle("sea", LifecycleAction::Restart).await;
    let sea = hive.wait_agent("sea", "restarted", running).await;
    hive.wait_agent("sea", "connected", |r| r.connections == 1)
        .await;
    let sent = OperatorRequest::SendMessage {
        to: hive_proto::AgentName::new("sea").unwrap(),
        body: "use your key".into(),
    };
    assert!(matches!(
        hive.operator(sent).await,
        OperatorResponse::MessageSent { .. }
    ));

    let state = hive.dir.path().join("lib/agents/sea/state");
    assert!(
        poll_until(|| state.join("up").exists()).await,
        "the turn never ran\n{}",
        hive.log()
    );
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(value.as_bytes()));
    let read = |f: &str| {
        std::fs::read_to_string(state.join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read("seen-file"), want, "the file inside holds the value");
    assert_eq!(read("seen-env"), want, "--secret-env exported it");
    assert_eq!(
        read("secret-stat"),
        "0:0:400",
        "the container's root's, 0400"
    );
    assert_eq!(read("secret-ro"), "read-only");

    // The command (`sh -c … se-turn`, hive-agent's child) is the only
    // process whose environ or argv holds it.
    let cmd_pid = command_pid("se-turn").expect("the turn's command runs");
    let mut hits = processes_holding(value.as_bytes());
    assert!(hits.contains(&(cmd_pid, "environ")), "{hits:?}");
    hits.retain(|(pid, _)| *pid != cmd_pid && !is_descendant(*pid, cmd_pid));
    assert!(hits.is_empty(), "the value is in {hits:?}");

    // Not from another agent's container: no /run/secrets there, the
    // store's path is not in its root, and its root cannot read the file
    // on the host either.
    let seb = hive.agent("seb").await.leader_pid.unwrap().to_string();
    let store_file = hive.dir.path().join("lib/secrets/sea/anthropic");
    let inside_seb = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .args(["--target", &seb, "--mount", "--pid", "--"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = inside_seb(&["cat", "/run/secrets/anthropic"]);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    let out = inside_seb(&["test", "-e", store_file.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "the store is visible in seb: {out:?}"
    );
    let out = std::process::Command::new("nsenter")
        .args(["--target", &seb, "--user", "--", "cat"])
        .arg(&store_file)
        .output()
        .unwrap();
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    // Nor from sea's own container at the store's host path.
    let sea_leader = sea.leader_pid.unwrap().to_string();
    let out = std::process::Command::new("nsenter")
        .args([
            "--target",
            &sea_leader,
            "--mount",
            "--pid",
            "--",
            "test",
            "-e",
        ])
        .arg(&store_file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the store is visible in sea: {out:?}"
    );

    std::fs::write(state.join("go"), b"").unwrap();
    assert!(
        poll_until(|| command_pid("se-turn").is_none()).await,
        "the turn never ended"
    );
    for a in ["sea", "seb"] {
        hive.lifecycle(a, LifecycleAction::Stop).await;
    }
    hive.stop();
    // Not in the repo, the store (hive.db and its WAL), the audit log, the
    // agents' journals or the core's log: every file under the hive's dirs.
    let hits = files_holding(hive.dir.path(), value.as_bytes());
    assert_eq!(hits, [store_file], "the value leaked");
}

/// A TOML array of strings.
fn toml_array(items: &[&str]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The host pid of the `/bin/sh -c … NAME` whose `$0` is `name` (not
/// `hive-agent run`, whose argv holds the same words after its own path).
fn command_pid(name: &str) -> Option<i32> {
    let tail = format!("\0{name}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        let argv = std::fs::read(e.path().join("cmdline")).ok()?;
        let argv = String::from_utf8_lossy(&argv);
        (argv.starts_with("/bin/sh\0-c\0") && argv.ends_with(&tail)).then_some(pid)
    })
}
