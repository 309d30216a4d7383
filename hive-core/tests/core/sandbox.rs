//! The `process` runtime fails closed: with bubblewrap made unusable (a
//! `bwrap` on `PATH` that always fails) no agent starts and the refusal is
//! one sentence naming the package; with `allow_unsandboxed = true` the
//! agents run and `Health` says they are not isolated (the gateway turns
//! that into the banner, tested in hive-web's `dev_hive`).

use hive_proto::operator::{LifecycleAction, OperatorRequest, OperatorResponse};
use hive_proto::view::RunState;
use hive_proto::AgentName;

use crate::common::TestHive;

const AGENT: &str = "[agents.alice]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.05; done\"]\n";

/// A `PATH` whose first `bwrap` fails; the directory must outlive the test.
fn broken_bwrap(hive: &TestHive) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = hive.dir.path().join("fake-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("bwrap");
    std::fs::write(&fake, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:/usr/local/bin:/usr/bin:/bin", dir.display())
}

async fn health_unsandboxed(hive: &TestHive) -> bool {
    match hive.operator(OperatorRequest::Health).await {
        OperatorResponse::Health(h) => h.unsandboxed,
        other => panic!("Health answered {other:?}"),
    }
}

async fn state(hive: &TestHive) -> RunState {
    let name = AgentName::new("alice").unwrap();
    match hive.operator(OperatorRequest::AgentDetail { name }).await {
        OperatorResponse::Agent(d) => d.summary.run_state,
        other => panic!("AgentDetail answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_working_bubblewrap_no_agent_starts_and_the_refusal_names_the_package() {
    let mut hive = TestHive::with_runtime("process", "", AGENT);
    let path = broken_bwrap(&hive);
    hive.spawn_with_env(&[("PATH", std::ffi::OsStr::new(&path))]);
    hive.wait_for_admin_socket();
    assert_eq!(state(&hive).await, RunState::Stopped, "{}", hive.log());
    let err = hive
        .try_lifecycle("alice", LifecycleAction::Start)
        .await
        .expect_err("start must be refused");
    let text = err.to_string();
    assert!(
        text.contains("bubblewrap is missing or does not work here")
            && text.contains("install the package bubblewrap")
            && text.contains("allow_unsandboxed = true"),
        "{text}"
    );
    assert_eq!(state(&hive).await, RunState::Stopped);
    assert!(!health_unsandboxed(&hive).await);
    assert!(hive.log().contains("install the package bubblewrap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_unsandboxed_runs_the_agents_and_health_says_they_are_not_isolated() {
    let mut hive = TestHive::with_runtime("process", "allow_unsandboxed = true", AGENT);
    let path = broken_bwrap(&hive);
    hive.spawn_with_env(&[("PATH", std::ffi::OsStr::new(&path))]);
    hive.wait_for_admin_socket();
    let mut running = false;
    for _ in 0..500 {
        if state(&hive).await == RunState::Running {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(running, "{}", hive.log());
    assert!(health_unsandboxed(&hive).await);
}
