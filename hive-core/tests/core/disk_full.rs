//! A store on a small filesystem that fills up: writes are refused with a
//! clear error, nothing committed is lost, and the core works again by
//! itself once space is freed.

use std::process::Command;

use serde_json::json;

use crate::common::{error_code, is_root, skip_or_fail, LineConn, TestHive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_and_the_core_recovers_when_space_returns() {
    if !is_root() {
        return skip_or_fail("mounting a small tmpfs needs root");
    }
    let mut hive = TestHive::with_config(
        "",
        "[agents.alice]\nsend_rate = 100000\nsend_burst = 100000\n\
         [agents.bob]\nmax_unacked = 100000\nmax_unacked_bytes = \"1G\"\n",
    );
    let lib = hive.dir.path().join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&lib)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(lib.clone());
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    // A filler the test can free later, then sends until the disk is full.
    std::fs::write(lib.join("filler"), vec![0u8; 1 << 20]).unwrap();
    let body = "x".repeat(32 * 1024);
    let mut committed = Vec::new();
    let mut refusal = None;
    for _ in 0..400 {
        let r = alice
            .request("send", json!({"to": "bob", "body": body}))
            .await;
        if r["ok"] == json!(true) {
            committed.push(r["result"]["ids"][0].as_u64().unwrap());
        } else {
            refusal = Some(r);
            break;
        }
    }
    let refusal = refusal.expect("the disk never filled");
    assert_eq!(
        error_code(&refusal).as_deref(),
        Some("unavailable"),
        "{refusal}"
    );
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{refusal}"
    );
    assert!(!committed.is_empty());
    // Space returns: the next send works, without a restart.
    std::fs::remove_file(lib.join("filler")).unwrap();
    let r = alice
        .request("send", json!({"to": "bob", "body": "after"}))
        .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    committed.push(r["result"]["ids"][0].as_u64().unwrap());
    // Nothing committed was lost, across a restart too.
    drop(alice);
    hive.stop();
    hive.start();
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let got = bob
        .request("recv", json!({"wait_ms": 0, "max": 1000}))
        .await;
    let mut ids: Vec<u64> = got["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    while ids.len() < committed.len() {
        let p = bob.next_push().await;
        ids.push(p["message"]["id"].as_u64().unwrap());
    }
    assert_eq!(ids, committed);
    hive.stop();
}
