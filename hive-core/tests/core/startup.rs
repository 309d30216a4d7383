//! What the daemon says about itself before it serves: `check-config`
//! (parse and validate, one line, touch nothing) and the `READY=1` a
//! `Type=notify` unit waits for, which must come only once the store is
//! open and every socket accepts.

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use hive_proto::operator::{OperatorRequest, OperatorResponse};

use crate::common::notify::NotifySocket;
use crate::common::{TestHive, CORE_BIN, START_TIMEOUT};

/// How long a test listens for a message that must not come.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn ready_is_sent_only_once_the_store_is_open_and_every_socket_accepts() {
    let mut notify = NotifySocket::hold();
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.spawn_with_env(&[("NOTIFY_SOCKET", notify.path().as_os_str())]);
    assert!(
        notify.wait_until_held(hive.pid(), START_TIMEOUT),
        "hive-core never tried to send READY=1:\n{}",
        hive.log()
    );

    // Held inside its send of READY=1: everything it promises holds now.
    for socket in [
        hive.agent_socket("alice"),
        hive.agent_socket("bob"),
        hive.web_socket(),
        hive.admin_socket(),
    ] {
        UnixStream::connect(&socket).unwrap_or_else(|e| {
            panic!(
                "{} does not accept while READY=1 is being sent: {e}",
                socket.display()
            )
        });
    }
    let OperatorResponse::Agents(agents) = hive.operator(OperatorRequest::ListAgents).await else {
        panic!("list_agents did not list agents");
    };
    let names: Vec<String> = agents.iter().map(|a| a.name.to_string()).collect();
    assert_eq!(names, ["alice", "bob"], "the store answers");

    assert_eq!(notify.release(START_TIMEOUT), "READY=1\n");
    assert_eq!(notify.next(QUIET), None, "READY=1 is sent once");

    assert!(hive.stop().success(), "{}", hive.log());
    assert_eq!(
        notify.queued(),
        ["STOPPING=1\n"],
        "SIGTERM tells systemd it is stopping"
    );
}

#[test]
fn a_daemon_that_cannot_start_never_says_ready() {
    let notify = NotifySocket::new();
    // The admin group does not exist: start fails before any socket.
    let mut hive = TestHive::with_config("admin_group = \"no-such-group-hyperhive\"", "");
    hive.spawn_with_env(&[("NOTIFY_SOCKET", notify.path().as_os_str())]);
    let status = hive.wait_exit();
    assert!(!status.success(), "{}", hive.log());
    assert!(
        hive.log().contains("no-such-group-hyperhive"),
        "{}",
        hive.log()
    );
    assert_eq!(notify.queued(), Vec::<String>::new());
}

#[test]
fn check_config_prints_one_line_and_starts_nothing() {
    let hive = TestHive::new(&["alice"]);
    let out = Command::new(CORE_BIN)
        .args(["check-config", "--config"])
        .arg(&hive.config_path)
        .output()
        .expect("running check-config");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(": ok (1 agents, runtime Detached)"),
        "{stdout}"
    );
    assert!(
        !hive.runtime_dir().exists() && !hive.db_path().exists(),
        "check-config created the hive's directories"
    );
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let hive = TestHive::with_config("stop_after = 3", "");
    let out = Command::new(CORE_BIN)
        .args(["check-config", "--config"])
        .arg(&hive.config_path)
        .output()
        .expect("running check-config");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("stop_after"), "{stderr}");
    assert!(out.stdout.is_empty());
}
