//! Paths the core creates cannot be redirected: something planted at an
//! agent's socket path (a symlink to a host file, a FIFO) is refused for
//! that agent alone, left as it was, and every other agent still starts.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use serde_json::json;

use crate::common::{LineConn, TestHive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_or_fifo_at_a_socket_path_is_refused_for_that_agent_only() {
    let mut hive = TestHive::new(&["alice", "bob", "carol"]);
    let agents = hive.runtime_dir().join("agents");
    for a in ["alice", "carol"] {
        fs::create_dir_all(agents.join(a)).unwrap();
    }
    let host_file = hive.dir.path().join("host-secret");
    fs::write(&host_file, b"root's").unwrap();
    fs::set_permissions(&host_file, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&host_file, hive.agent_socket("alice")).unwrap();
    nix::unistd::mkfifo(
        &hive.agent_socket("carol"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();

    hive.start();
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let r = bob.request("whoami", json!({})).await;
    assert_eq!(r["result"]["name"], json!("bob"), "{r}");

    // Left as planted: not followed, not chmod-ed, not replaced.
    let alice = fs::symlink_metadata(hive.agent_socket("alice")).unwrap();
    assert!(alice.file_type().is_symlink());
    assert_eq!(fs::read(&host_file).unwrap(), b"root's");
    assert_eq!(
        fs::metadata(&host_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let carol = fs::symlink_metadata(hive.agent_socket("carol")).unwrap();
    assert!(carol.file_type().is_fifo());
    let log = hive.log();
    for a in ["alice", "carol"] {
        assert!(
            log.lines()
                .any(|l| l.contains("socket was not set up") && l.contains(a)),
            "no refusal naming {a} in the log:\n{log}"
        );
    }
}
