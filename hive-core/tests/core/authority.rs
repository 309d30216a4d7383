//! Identity is the socket (DESIGN invariant 1) and operator authority has no
//! agent entry point (invariant 2). Where that is enforced: the agent
//! protocol type `hive_proto::agent::AgentRequest` has no operator verb
//! (so `parse_request` answers `unknown_op`), `hive_core::agent_socket`
//! passes the listener's agent name and nothing from the line, and
//! `Hive::agent_call` lets an agent answer only questions addressed to it.

use hive_proto::operator::{OperatorRequest, OperatorResponse};
use hive_proto::view::{Principal, QuestionState};
use serde_json::json;

use crate::common::{error_code, LineConn, TestHive};

async fn audit_len(hive: &TestHive) -> usize {
    match hive
        .operator(OperatorRequest::Audit {
            since: 0,
            limit: 1000,
        })
        .await
    {
        OperatorResponse::Audit(rows) => rows.len(),
        other => panic!("audit: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_answer_for_operator() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let asked = alice
        .request(
            "ask",
            json!({"to": "operator", "question": "deploy?", "options": ["yes", "no"]}),
        )
        .await;
    let qid = asked["result"]["question_id"]
        .as_u64()
        .expect("question id");
    let before = audit_len(&hive).await;

    // Neither another agent nor the asker itself may answer as the operator.
    for conn in [&mut bob, &mut alice] {
        let r = conn
            .request("answer", json!({"question_id": qid, "answer": "yes"}))
            .await;
        assert_eq!(error_code(&r).as_deref(), Some("forbidden"), "{r}");
    }

    // Nothing changed: the question is still open for the operator, and the
    // audit log did not grow.
    let OperatorResponse::Questions(qs) = hive.operator(OperatorRequest::Questions).await else {
        panic!("questions");
    };
    let q = qs
        .iter()
        .find(|q| q.id == qid)
        .expect("question still listed");
    assert_eq!(q.state, QuestionState::Open);
    assert_eq!(q.answer, None);
    assert_eq!(q.to, Principal::Operator);
    assert_eq!(audit_len(&hive).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_answer_for_another_agent() {
    let mut hive = TestHive::new(&["alice", "bob", "carol"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    let mut carol = LineConn::connect(&hive.agent_socket("carol"))
        .await
        .unwrap();
    let asked = alice
        .request("ask", json!({"to": "bob", "question": "lunch?"}))
        .await;
    let qid = asked["result"]["question_id"]
        .as_u64()
        .expect("question id");
    let before = audit_len(&hive).await;

    let r = carol
        .request("answer", json!({"question_id": qid, "answer": "no"}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("forbidden"), "{r}");

    // Still open from both ends.
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let ends = bob.request("loose_ends", json!({})).await;
    let to_me = ends["result"]["to_me"].as_array().unwrap();
    assert!(
        to_me
            .iter()
            .any(|q| q["id"] == json!(qid) && q["state"] == "open"),
        "{ends}"
    );
    let ends = alice.request("loose_ends", json!({})).await;
    assert!(ends["result"]["asked"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["id"] == json!(qid)));
    assert_eq!(audit_len(&hive).await, before);

    // The addressee may.
    let r = bob
        .request("answer", json!({"question_id": qid, "answer": "yes"}))
        .await;
    assert_eq!(error_code(&r), None, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_verbs_are_unknown_ops_on_an_agent_socket() {
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for op in [
        "approve",
        "deny",
        "lifecycle",
        "answer_question",
        "audit_verify",
        "send_message",
    ] {
        let r = alice.request(op, json!({"id_": 1})).await;
        assert_eq!(error_code(&r).as_deref(), Some("unknown_op"), "{op}: {r}");
    }
    // A request cannot claim a sender either.
    let r = alice
        .request(
            "send",
            json!({"to": "alice", "body": "x", "from": "operator"}),
        )
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("bad_request"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_the_socket_the_connection_arrived_on() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    for name in ["alice", "bob"] {
        let mut c = LineConn::connect(&hive.agent_socket(name)).await.unwrap();
        let r = c.request("whoami", json!({})).await;
        assert_eq!(r["result"]["name"], name);
    }
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    alice
        .request("send", json!({"to": "bob", "body": "hi"}))
        .await;
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let r = bob.request("recv", json!({})).await;
    assert_eq!(r["result"]["messages"][0]["from"], "alice");
}
