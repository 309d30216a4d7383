//! The config repo's round trip in headless Chromium, with a real
//! container: the real `hive-core run` on the `nspawn` runtime (in a network
//! namespace of its own) runs agent `cwa` in a systemd-nspawn container, and
//! the real `hive-web` serves its dashboard.
//!
//! Inside its container the agent proposes an env change for itself
//! (`MODE` slow → fast) with `hive-agent propose-config` on its socket → the
//! approval, with its diff, is pending → the operator logs in, sees the card
//! on the dashboard (screenshot `config-approval-card.png`) and clicks
//! approve → the container is restarted with the new value: the agent's
//! command, inside it, appends `$MODE` to `/state/modes` and reports it in
//! its status on its socket → `deployed_sha` is the new `main` → the agent
//! page shows it (screenshot `config-approval-agent-after.png`).
//!
//! Agents cannot read the config repo, so the test hands the agent its
//! current `agent.toml` (the operator's `AgentConfig` at `main`) as a file
//! in its `/state`; the agent edits `MODE` in it and proposes the result.
//!
//! A second test denies a proposal in the dashboard with a reason (an empty
//! one first, which is refused and changes nothing) and checks that the
//! proposer receives the reason on its socket and `main` did not move.
//!
//! Needs root, `systemd-nspawn` (the first test), `chromium` and
//! `chromedriver`: skips without them off CI, fails under `CI=true`.
//! Containers are killed when the hive is dropped, also when the test
//! fails.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use fantoccini::{Client, Locator};
use hive_proto::client::agent::AgentClient;
use hive_proto::operator::{ConfigRev, OperatorRequest as Req, OperatorResponse as Resp};
use hive_proto::view::{Approval, ApprovalState, ItemKind, Principal, RunState};
use hive_proto::{AgentName, RelPath};

use common::browser::{click, connect, fill, login, screenshot, wait_text, Driver, SHOW_UP};
use common::run::RunHive;

/// The agent; `cw` is this test file's container-name prefix.
const AGENT: &str = "cwa";

/// The agent's command (a `/bin/sh -c` script): at each start it records
/// `$MODE` in `/state/modes` and in its status; started with `MODE=slow`
/// it waits for `/state/current.toml`, sets `MODE = "fast"` in it and
/// proposes that as its own `agent.toml`.
const SCRIPT: &str = r#"echo "$MODE" >> /state/modes
hive-agent status "running with MODE=$MODE"
if [ "$MODE" = slow ]; then
  while [ ! -s /state/current.toml ]; do sleep 0.1; done
  sed 's/^MODE = .*/MODE = "fast"/' /state/current.toml > /state/next.toml
  hive-agent propose-config cwa --file agent.toml=/state/next.toml -m "cwa: run with MODE=fast" > /state/proposed 2>&1
fi
trap 'exit 0' TERM
while :; do sleep 0.1; done
"#;

fn agent_table() -> String {
    format!(
        "[agents.{AGENT}]\ncommand = [\"/bin/sh\", \"-c\", {}]\nenv = {{ MODE = \"slow\" }}\n",
        toml_string(SCRIPT)
    )
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn modes(hive: &RunHive) -> Vec<String> {
    std::fs::read_to_string(hive.state_dir(AGENT).join("modes"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_modes(hive: &RunHive, want: &[&str]) {
    let got = common::poll(SHOW_UP, Duration::from_millis(50), || async {
        (modes(hive) == want).then_some(())
    })
    .await;
    assert!(
        got.is_some(),
        "/state/modes is {:?}, not {want:?}\n{}",
        modes(hive),
        hive.log()
    );
}

async fn pending(hive: &RunHive) -> Vec<Approval> {
    match hive.operator(Req::Pending).await {
        Resp::Approvals(a) => a,
        other => panic!("Pending answered {other:?}"),
    }
}

/// The commit and `agent.toml` of `agent` at `rev`, as the operator reads
/// them.
async fn agent_toml_at(
    hive: &RunHive,
    agent: &AgentName,
    rev: ConfigRev,
) -> (Option<String>, String) {
    let req = Req::AgentConfig {
        agent: agent.clone(),
        rev,
    };
    match hive.operator(req).await {
        Resp::Config { sha, files } => {
            let toml = files
                .into_iter()
                .find(|(p, _)| p == "agent.toml")
                .map(|(_, t)| t)
                .unwrap_or_else(|| panic!("no agent.toml at {rev:?}"));
            (sha, toml)
        }
        other => panic!("AgentConfig answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_env_change_the_agent_proposes_is_approved_in_chromium_and_its_container_restarts_with_it(
) {
    if !common::skip_unless(common::is_root(), "nspawn containers need root")
        || !common::skip_unless(
            common::have_tool("systemd-nspawn"),
            "systemd-nspawn is not installed (apt-get install systemd-container)",
        )
        || !common::browser::available()
    {
        return;
    }
    let hive = RunHive::start("nspawn", "stop_timeout = 5", &agent_table());
    let agent = AgentName::new(AGENT).unwrap();

    // The container runs the seeded config: MODE=slow, deployed == main.
    wait_modes(&hive, &["slow"]).await;
    let before = hive
        .wait_agent(AGENT, "ran main in its container", |a| {
            a.run_state == RunState::Running
                && a.container.is_some()
                && a.deployed_sha.is_some()
                && a.deployed_sha == a.main_sha
        })
        .await;
    let (_, current) = agent_toml_at(&hive, &agent, ConfigRev::Main).await;
    assert!(current.contains("MODE = \"slow\""), "{current}");
    std::fs::write(hive.state_dir(AGENT).join("current.toml"), current).unwrap();

    // The agent's proposal is pending, with the diff; nothing changed yet.
    let found = common::poll(SHOW_UP, Duration::from_millis(50), || async {
        let list = pending(&hive).await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    let Some(list) = found else {
        panic!(
            "no approval; the agent's propose-config said {:?}\n{}",
            std::fs::read_to_string(hive.state_dir(AGENT).join("proposed")).unwrap_or_default(),
            hive.log()
        );
    };
    assert_eq!(list.len(), 1, "{list:?}");
    let approval = &list[0];
    assert_eq!(approval.agent, agent);
    assert_eq!(approval.proposer, Principal::Agent(agent.clone()));
    assert_eq!(approval.state, ApprovalState::Pending);
    assert!(
        approval.diff.contains("-MODE = \"slow\"") && approval.diff.contains("+MODE = \"fast\""),
        "{}",
        approval.diff
    );
    assert_eq!(modes(&hive), ["slow"]);
    assert_eq!(hive.agent(AGENT).await.main_sha, before.main_sha);

    let web = hive.gateway();
    web.wait_serving(Duration::from_secs(30)).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = connect(&driver, profile.path()).await;
    let result = in_the_browser(&c, &hive, &web.base(), approval.id).await;
    if result.is_err() {
        screenshot(&c, "config-approval-failure.png").await;
    }
    let _ = c.close().await;
    let after = match result {
        Ok(after) => after,
        Err(e) => panic!("{e}\ncore log:\n{}\nweb log:\n{}", hive.log(), web.log()),
    };

    // The container was restarted from the new main and runs MODE=fast.
    assert_ne!(after.main_sha, before.main_sha, "main did not move");
    assert_eq!(after.deployed_sha, after.main_sha);
    assert!(!after.needs_update);
    assert_ne!(
        after.leader_pid, before.leader_pid,
        "the container was not restarted"
    );
    assert_eq!(modes(&hive), ["slow", "fast"]);
    assert!(pending(&hive).await.is_empty());
    let (sha, deployed) = agent_toml_at(&hive, &agent, ConfigRev::Deployed).await;
    assert_eq!(sha, after.main_sha);
    assert!(deployed.contains("MODE = \"fast\""), "{deployed}");

    // Dropping the hive leaves no container behind.
    let dir = hive.dir.clone();
    drop(hive);
    assert_eq!(common::leftovers::containers_under(&dir), Vec::<i32>::new());
}

/// Logs in, screenshots the approval card, approves it, waits for the
/// restarted container to report `MODE=fast`, and screenshots the agent
/// page; returns the agent's row once it runs the new `main`.
async fn in_the_browser(
    c: &Client,
    hive: &RunHive,
    base: &str,
    id: u64,
) -> Result<hive_proto::view::AgentSummary, String> {
    login(c, base, &hive.token()).await?;
    let card = format!("#approval-{id}");
    wait_text(c, &format!("{card} .meta"), &format!("proposed by {AGENT}")).await;
    wait_text(c, &format!("{card} .diff"), "+MODE = \"fast\"").await;
    wait_text(c, &format!("{card} .diff"), "-MODE = \"slow\"").await;
    wait_text(c, &format!("[data-status-of='{AGENT}']"), "MODE=slow").await;
    let png = c
        .find(Locator::Css(&card))
        .await
        .map_err(|e| format!("{card}: {e}"))?
        .screenshot()
        .await
        .map_err(|e| format!("screenshot of {card}: {e}"))?;
    let path = common::dev::artifacts_dir().join("config-approval-card.png");
    std::fs::write(&path, png).map_err(|e| e.to_string())?;
    println!("screenshot: {}", path.display());

    click(c, &format!("{card} form[action$='/approve'] button")).await?;
    wait_text(c, ".flash.ok", &format!("approval #{id} approved")).await;

    // The restarted container reports the new value on its socket.
    wait_text(c, &format!("[data-status-of='{AGENT}']"), "MODE=fast").await;
    wait_modes(hive, &["slow", "fast"]).await;
    let after = hive
        .wait_agent(AGENT, "ran the new main", |a| {
            a.run_state == RunState::Running
                && a.deployed_sha.is_some()
                && a.deployed_sha == a.main_sha
                && !a.needs_update
        })
        .await;
    let main = after.main_sha.clone().unwrap_or_default();
    let short = &main[..main.len().min(12)];

    c.goto(&format!("{base}/agent/{AGENT}/"))
        .await
        .map_err(|e| e.to_string())?;
    wait_text(c, "#deployed-sha", short).await;
    wait_text(c, "#main-sha", short).await;
    wait_text(c, &format!("[data-status-of='{AGENT}']"), "MODE=fast").await;
    wait_text(c, "#config", "MODE = \"fast\"").await;
    if !common::browser::text_of(c, "#config-needs-update")
        .await
        .is_empty()
    {
        return Err("the agent page still says it needs an update".into());
    }
    screenshot(c, "config-approval-agent-after.png").await;
    Ok(after)
}

/// The proposer of [`a_deny_with_a_reason_in_the_dashboard_reaches_the_proposer_on_its_socket`]:
/// the test speaks on its socket (runtime `detached`: no process of the
/// core's own answers there).
const PROPOSER: &str = "cwb";

#[tokio::test(flavor = "multi_thread")]
async fn a_deny_with_a_reason_in_the_dashboard_reaches_the_proposer_on_its_socket() {
    if !common::skip_unless(
        common::is_root(),
        "needs root: hive-web must start as root to drop its capability bounding set",
    ) || !common::browser::available()
    {
        return;
    }
    let hive = RunHive::start("detached", "", &format!("[agents.{PROPOSER}]\n"));
    let name = AgentName::new(PROPOSER).unwrap();
    let me = AgentClient::connect(hive.agent_sock(PROPOSER))
        .await
        .expect("the proposer's socket");
    let files = BTreeMap::from([(
        RelPath::new("agent.toml").unwrap(),
        "env = { MODE = \"fast\" }\n".to_owned(),
    )]);
    let opened = me
        .propose_config(name.clone(), files, "cwb: run with MODE=fast")
        .await
        .expect("propose_config");
    let id = opened.approval_id;
    let main_before = hive.agent(PROPOSER).await.main_sha;

    let web = hive.gateway();
    web.wait_serving(Duration::from_secs(30)).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = connect(&driver, profile.path()).await;
    // Agent text in the reason is the operator's own; it must still come
    // back to the page as text.
    let reason = "not today: <b>keep</b> MODE & \"slow\"";
    let result = deny_in_the_browser(&c, &hive, &web.base(), id, reason).await;
    if result.is_err() {
        screenshot(&c, "config-deny-failure.png").await;
    }
    let _ = c.close().await;
    if let Err(e) = result {
        panic!("{e}\ncore log:\n{}\nweb log:\n{}", hive.log(), web.log());
    }

    // The proposer hears the decision, with the operator's reason, on its
    // socket; nothing was merged.
    let got = common::poll(SHOW_UP, Duration::from_millis(50), || async {
        let batch = me.recv(0, 100).await.ok()?;
        batch
            .messages
            .into_iter()
            .find(|m| m.kind == ItemKind::ApprovalDecided)
    })
    .await
    .unwrap_or_else(|| panic!("no approval_decided for {PROPOSER}\n{}", hive.log()));
    assert!(got.body.contains("denied"), "{}", got.body);
    assert!(got.body.contains(reason), "{}", got.body);
    assert_eq!(got.from, Principal::Operator);
    assert!(pending(&hive).await.is_empty());
    assert_eq!(hive.agent(PROPOSER).await.main_sha, main_before);
}

/// Denies approval `id` in the dashboard: an empty reason first (refused,
/// the card stays), then `reason`.
async fn deny_in_the_browser(
    c: &Client,
    hive: &RunHive,
    base: &str,
    id: u64,
    reason: &str,
) -> Result<(), String> {
    login(c, base, &hive.token()).await?;
    let card = format!("#approval-{id}");
    wait_text(c, &format!("{card} .diff"), "MODE = \"fast\"").await;
    click(c, &format!("{card} form[action$='/deny'] button")).await?;
    wait_text(c, ".flash.err", "reason").await;
    wait_text(
        c,
        &format!("{card} .meta"),
        &format!("proposed by {PROPOSER}"),
    )
    .await;
    if pending(hive).await.len() != 1 {
        return Err("a deny without a reason decided the approval".into());
    }
    fill(c, &format!("{card} input[name='reason']"), reason).await?;
    click(c, &format!("{card} form[action$='/deny'] button")).await?;
    wait_text(c, ".flash.ok", &format!("approval #{id} denied")).await;
    wait_text(c, "#approvals", "Nothing waits for approval.").await;
    screenshot(c, "config-deny-dashboard-after.png").await;
    Ok(())
}
