//! The audit log is a hash chain: a row rewritten behind the daemon's back
//! is found by `audit verify`.

use hive_proto::client::ClientError;
use hive_proto::operator::{AdminRequest, OperatorResponse};
use hive_proto::view::ErrorCode;
use serde_json::json;

use crate::common::{describe, LineConn, TestHive};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_detects_a_row_changed_behind_the_daemons_back() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..3 {
        alice
            .request("send", json!({"to": "bob", "body": format!("m{i}")}))
            .await;
    }
    alice.request("status", json!({"text": "busy"})).await;
    drop(alice);
    let rows = match hive.admin().await.call(AdminRequest::AuditVerify).await {
        Ok(OperatorResponse::AuditVerified { rows, .. }) => rows,
        other => panic!("a fresh chain must verify: {other:?}"),
    };
    assert!(rows >= 4, "{rows} rows");

    let status = hive.stop();
    assert!(
        status.success(),
        "hive-core exited with {}",
        describe(status)
    );
    {
        // What someone with the file would do: drop the guard, rewrite.
        let db = rusqlite::Connection::open(hive.db_path()).unwrap();
        db.execute_batch("DROP TRIGGER IF EXISTS audit_no_update;")
            .unwrap();
        let changed = db
            .execute(
                "UPDATE audit SET detail = 'to=bob ids=[999] bytes=2' WHERE seq = 2",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    hive.start();
    match hive.admin().await.call(AdminRequest::AuditVerify).await {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.code, ErrorCode::Conflict);
            assert!(e.message.contains("row 2"), "{}", e.message);
        }
        other => panic!("the rewritten row went unnoticed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_10_audit_rows_behind_the_daemons_back_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..15 {
        let r = alice
            .request("send", json!({"to": "bob", "body": format!("m{i}")}))
            .await;
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    drop(alice);
    let status = hive.stop();
    assert!(status.success(), "{}", describe(status));
    // The clean shutdown recorded the head in the journal and the
    // root-only head file.
    let head_file = hive.db_path().with_file_name("audit.head");
    let recorded = std::fs::read_to_string(&head_file).unwrap();
    let meta = std::fs::metadata(&head_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let seq: u64 = recorded.split_whitespace().next().unwrap().parse().unwrap();
    assert!(seq >= 15, "{recorded}");
    assert!(
        hive.log()
            .lines()
            .any(|l| l.contains("audit chain head") && l.contains(&format!("seq={seq}"))),
        "{}",
        hive.log()
    );
    {
        // The tail goes; what is left is still a perfect chain.
        let db = rusqlite::Connection::open(hive.db_path()).unwrap();
        db.execute_batch("DROP TRIGGER IF EXISTS audit_no_delete;")
            .unwrap();
        let gone = db
            .execute(
                "DELETE FROM audit WHERE seq > (SELECT MAX(seq) FROM audit) - 10",
                [],
            )
            .unwrap();
        assert_eq!(gone, 10);
    }
    hive.start();
    match hive.admin().await.call(AdminRequest::AuditVerify).await {
        Err(ClientError::Rpc(e)) => {
            assert_eq!(e.code, ErrorCode::Conflict);
            assert!(e.message.contains("missing"), "{}", e.message);
            assert!(e.message.contains(&format!("row {seq}")), "{}", e.message);
        }
        other => panic!("the truncated tail went unnoticed: {other:?}"),
    }
    // A clean restart does not paper over it: the head file is evidence.
    let status = hive.stop();
    assert!(status.success(), "{}", describe(status));
    assert_eq!(std::fs::read_to_string(&head_file).unwrap(), recorded);
}
