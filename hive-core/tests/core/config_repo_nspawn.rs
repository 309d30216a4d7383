//! The config repo on real `systemd-nspawn` containers (root), driven
//! through the real CLIs: an approved env change runs in the rebuilt
//! container and `hivectl config revert` brings the old value back; an
//! agent's `hive-agent request-spawn` from inside its container, approved
//! with `hivectl approve`, creates and starts the new container, whose
//! socket answers `whoami` with its name; the repo names proposer and
//! approver to plain `git`; `kill -9` of the core right after
//! `hivectl approve` answered, mid-rebuild, deploys the change once and
//! leaves the approval decided.
//!
//! Deny, conflict, forbidden and invalid proposals do not depend on the
//! runtime; `config_repo` and `config_clis` show them. Agent names start
//! with `cc`: container and veth names are host-wide.

use std::path::Path;

use hive_proto::operator::{OperatorRequest, OperatorResponse};
use hive_proto::view::AgentSummary;

use crate::clis::Clis;
use crate::common::{git, poll_until};
use crate::containers::{nspawn_hive, running, state_dir, wait_file};

/// Appends `$MODE` to `/state/modes` inside the container at each start,
/// then idles until SIGTERM.
const MODES: &str =
    "echo \"$MODE\" >> /state/modes; trap 'exit 0' TERM; while :; do sleep 0.1; done";

/// An `agent.toml` running `script` as [`nspawn_hive`] writes it (`$HA`
/// naming `hive-agent`), plus `extra` keys.
fn agent_toml(ha: &Path, script: &str, extra: &str) -> String {
    let script = format!("HA={}; {script}", ha.display());
    format!("command = [\"/bin/sh\", \"-c\", {script:?}]\n{extra}\n")
}

fn mode(m: &str) -> String {
    format!("env = {{ MODE = \"{m}\" }}")
}

/// What the container wrote to `/state/modes`, one line per start.
fn modes(c: &Clis, agent: &str) -> Vec<String> {
    std::fs::read_to_string(state_dir(&c.hive, agent).join("modes"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `agent` runs, with `main` deployed and nothing pending.
async fn wait_deployed(c: &Clis, agent: &str) -> AgentSummary {
    c.hive
        .wait_agent(agent, "running main", |r| {
            running(r)
                && r.deployed_sha.is_some()
                && r.deployed_sha == r.main_sha
                && !r.needs_update
        })
        .await
}

/// A started nspawn hive with `agents` (name, script, extra keys), and the
/// CLIs; `None` after a skip.
fn started(agents: &[(&str, &str, &str)]) -> Option<(Clis, std::path::PathBuf)> {
    let (hive, ha) = nspawn_hive(agents)?;
    Some((Clis::start_hive(hive)?, ha))
}

/// `hive-agent propose-config AGENT --file agent.toml=<toml> -m MESSAGE` on
/// AGENT's socket; returns the approval id.
async fn propose(c: &Clis, agent: &str, toml: &str, message: &str) -> u64 {
    let local = c.hive.dir.path().join(format!("{agent}-{message}.toml"));
    std::fs::write(&local, toml).unwrap();
    let file = format!("agent.toml={}", local.display());
    let args = ["propose-config", agent, "--file", &file, "-m", message];
    let opened = c.run(c.agent(agent, &args)).await.json();
    opened["approval_id"].as_u64().expect("an approval id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nspawn_an_approved_env_change_runs_in_the_container_and_config_revert_restores_it() {
    let slow = mode("slow");
    let Some((c, ha)) = started(&[("ccr", MODES, &slow)]) else {
        return;
    };
    wait_deployed(&c, "ccr").await;
    assert!(poll_until(|| modes(&c, "ccr") == ["slow"]).await);

    let id = propose(
        &c,
        "ccr",
        &agent_toml(&ha, MODES, &mode("fast")),
        "run fast",
    )
    .await;
    assert_eq!(
        modes(&c, "ccr"),
        ["slow"],
        "nothing changes before approval"
    );
    c.run(c.ctl(&["approve", &id.to_string()])).await.ok();
    let after = wait_deployed(&c, "ccr").await;
    assert!(
        poll_until(|| modes(&c, "ccr") == ["slow", "fast"]).await,
        "{:?}\n{}",
        modes(&c, "ccr"),
        c.hive.log()
    );
    assert_eq!(after.container.as_deref(), Some("h-ccr"));

    // Plain git names the proposer and the approver: the merge is the
    // approver's (author and committer), its second parent the proposer's.
    let meta = c.hive.meta_dir();
    let oneline = git(&meta, &["log", "--oneline", "-2"]);
    assert!(
        oneline.contains(&format!("approve #{id} by operator:"))
            && oneline.contains("(proposed by agent:ccr)"),
        "{oneline}"
    );
    let who = |rev: &str| git(&meta, &["log", "-1", "--format=%an|%cn", rev]);
    let merge = who("HEAD");
    assert!(merge.starts_with("operator:"), "{merge}");
    let (an, cn) = merge.trim().split_once('|').unwrap();
    assert_eq!(an, cn, "approver authored and committed the merge");
    assert_eq!(who("HEAD^2").trim(), "agent:ccr|agent:ccr");

    let main = after.main_sha.unwrap();
    c.run(c.ctl(&["config", "revert", &main])).await.ok();
    assert!(
        poll_until(|| modes(&c, "ccr") == ["slow", "fast", "slow"]).await,
        "{:?}\n{}",
        modes(&c, "ccr"),
        c.hive.log()
    );
    let reverted = wait_deployed(&c, "ccr").await;
    assert_ne!(reverted.main_sha.as_deref(), Some(main.as_str()));
    let head = git(&meta, &["log", "--oneline", "-1"]);
    assert!(
        head.contains("revert ") && head.contains("by operator:"),
        "{head}"
    );
    let shown = c
        .run(c.ctl(&["config", "show", "ccr", "--json"]))
        .await
        .json();
    assert!(shown.to_string().contains("slow"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nspawn_request_spawn_from_inside_a_container_then_approve_starts_the_new_agent() {
    // cca waits for its go, then asks for ccs from inside its container.
    let ask = "while [ ! -e /state/go ]; do sleep 0.05; done; \
               $HA request-spawn ccs --file agent.toml=/state/ccs.toml -m 'a scout' \
               > /state/spawned 2>&1; trap 'exit 0' TERM; while :; do sleep 0.1; done";
    let Some((c, ha)) = started(&[("cca", ask, "")]) else {
        return;
    };
    c.hive.wait_agent("cca", "ran", running).await;
    let scout = agent_toml(&ha, "$HA whoami > /state/whoami 2>&1; exec $HA demo", "");
    let cca_state = state_dir(&c.hive, "cca");
    std::fs::write(cca_state.join("ccs.toml"), scout).unwrap();
    std::fs::write(cca_state.join("go"), b"").unwrap();
    let spawned = wait_file(&c.hive, &cca_state.join("spawned")).await;
    let opened: serde_json::Value = serde_json::from_str(spawned.trim())
        .unwrap_or_else(|e| panic!("request-spawn printed {spawned:?}: {e}"));
    let id = opened["approval_id"].as_u64().unwrap();
    let pending = c.run(c.ctl(&["approvals", "--json"])).await.json();
    assert_eq!(pending[0]["kind"], "spawn", "{pending}");
    assert_eq!(pending[0]["proposer"], "cca", "{pending}");
    assert!(
        !c.hive.agent_socket("ccs").exists(),
        "exists only after approval"
    );

    c.run(c.ctl(&["approve", &id.to_string()])).await.ok();
    let row = c
        .hive
        .wait_agent("ccs", "connected", |r| running(r) && r.connections == 1)
        .await;
    assert_eq!(row.container.as_deref(), Some("h-ccs"));
    let inside = wait_file(&c.hive, &state_dir(&c.hive, "ccs").join("whoami")).await;
    assert!(inside.contains("\"name\":\"ccs\""), "{inside}");
    let me = c.run(c.agent("ccs", &["whoami"])).await.json();
    assert_eq!(me["name"], "ccs", "{me}");
    wait_deployed(&c, "ccs").await;
}

/// [`MODES`], but taking half a second to end after SIGTERM, as a real
/// agent finishing its turn would: a core killed right after `approve`
/// answered can die while its rebuild waits for the old container to end.
const MODES_SLOW_EXIT: &str =
    "echo \"$MODE\" >> /state/modes; trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.1; done";

/// The core is killed at several moments after `hivectl approve` answered —
/// at once (the rebuild stopping the old container, which the next core
/// adopts still ending), and later (the new one starting, or started but
/// not yet recorded as deployed) — and each time the next core deploys the
/// change: it runs, started at most twice (once more only if the killed
/// core had started it already), `deployed_sha` is `main`, and the
/// approval is decided once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nspawn_kill_9_right_after_hivectl_approve_deploys_the_change_once_and_shows_it_decided()
{
    let Some((mut c, ha)) = started(&[("cck", MODES_SLOW_EXIT, &mode("v0"))]) else {
        return;
    };
    wait_deployed(&c, "cck").await;
    assert!(poll_until(|| modes(&c, "cck") == ["v0"]).await);
    for (round, kill_after_ms) in [0u64, 200, 500, 900, 1500].into_iter().enumerate() {
        let value = format!("v{}", round + 1);
        let toml = agent_toml(&ha, MODES_SLOW_EXIT, &mode(&value));
        let id = propose(&c, "cck", &toml, &value).await;
        let before = modes(&c, "cck").len();

        c.run(c.ctl(&["approve", &id.to_string()])).await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(kill_after_ms)).await;
        c.hive.kill9();
        c.hive.start();

        let deployed = wait_deployed(&c, "cck").await;
        let what = |m: &[String]| format!("killed {kill_after_ms} ms after approve: {m:?}");
        assert!(
            poll_until(|| modes(&c, "cck").last() == Some(&value)).await,
            "{}\n{}",
            what(&modes(&c, "cck")),
            c.hive.log()
        );
        let settled = modes(&c, "cck");
        let added = &settled[before..];
        assert!(
            (1..=2).contains(&added.len()) && added.iter().all(|m| *m == value),
            "{}",
            what(&settled)
        );
        // It stays: no restart loop, nothing left to update.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        assert_eq!(
            modes(&c, "cck"),
            settled,
            "{}\n{}",
            what(&settled),
            c.hive.log()
        );
        let now = c.hive.agent("cck").await;
        assert!(running(&now), "{now:?}\n{}", c.hive.log());
        assert_eq!(now.deployed_sha, deployed.main_sha, "{now:?}");
        assert!(!now.needs_update, "{now:?}");

        // Decided once: not pending, one approve in the audit log, and a
        // second approve is refused.
        let pending = c.run(c.ctl(&["approvals", "--json"])).await.json();
        assert_eq!(pending, serde_json::json!([]), "{pending}");
        let OperatorResponse::Audit(rows) = c
            .hive
            .operator(OperatorRequest::Audit {
                since: 0,
                limit: 10_000,
            })
            .await
        else {
            panic!("audit")
        };
        let approves = rows
            .iter()
            .filter(|r| r.action == "approve" && r.detail.contains(&format!("approval={id} ")))
            .count();
        assert_eq!(approves, 1, "{rows:?}");
        c.run(c.ctl(&["approve", &id.to_string()])).await.failed();
    }
}
