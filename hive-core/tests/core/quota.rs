//! Per-agent quotas: an agent flooding `send` and `status` is refused with
//! `quota_exceeded` (naming the limit) and coalesced, while another agent's
//! messages keep flowing and the event stream stays bounded; what is stored
//! for an agent is capped in count and bytes. Counts, never wall-clock
//! assertions.

use std::time::{Duration, Instant};

use hive_proto::client::operator::{subscribe, Streamed};
use hive_proto::event::Event;
use hive_proto::operator::{OperatorRequest, OperatorResponse};
use hive_proto::AgentName;
use serde_json::{json, Value};

use crate::common::{error_code, LineConn, TestHive};

/// alice's quotas in the flood test: small, so the flood is well past them.
const SEND_RATE: u64 = 20;
const STATUS_RATE: u64 = 2;
const FLOOD: u64 = 400;
/// carol's ordinary traffic to dave while alice floods.
const NORMAL: u64 = 50;

async fn replies(conn: &mut LineConn, n: u64) -> Vec<Value> {
    let mut out = Vec::new();
    while (out.len() as u64) < n {
        let line = conn.next_line().await.expect("a reply line");
        if line.get("id").is_some() {
            out.push(line);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flooding_send_and_status_is_refused_and_coalesced_while_others_flow() {
    let mut hive = TestHive::with_config(
        "",
        &format!(
            "[agents.alice]\nsend_rate = {SEND_RATE}\nsend_burst = {SEND_RATE}\n\
             status_rate = {STATUS_RATE}\n[agents.bob]\n[agents.carol]\n[agents.dave]\n"
        ),
    );
    hive.start();
    let mut events = subscribe(hive.admin_socket(), 0).await.unwrap();
    let mut dave = LineConn::connect(&hive.agent_socket("dave")).await.unwrap();
    let r = dave.request("recv", json!({"wait_ms": 0})).await;
    assert_eq!(r["ok"], json!(true), "{r}");

    // alice pipelines a flood of sends and statuses on one connection...
    let started = Instant::now();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..FLOOD {
        alice
            .write_json(&json!({"id": 2 * i + 1, "op": "send", "to": "bob", "body": "spam"}))
            .await
            .unwrap();
        alice
            .write_json(&json!({"id": 2 * i + 2, "op": "status", "text": format!("s{i}")}))
            .await
            .unwrap();
    }
    // ...while carol talks to dave, one message at a time.
    let mut carol = LineConn::connect(&hive.agent_socket("carol"))
        .await
        .unwrap();
    for i in 0..NORMAL {
        let r = carol
            .request("send", json!({"to": "dave", "body": format!("c{i}")}))
            .await;
        assert_eq!(r["ok"], json!(true), "carol's send {i} was refused: {r}");
        let push = dave.next_push().await;
        assert_eq!(push["message"]["body"], json!(format!("c{i}")));
    }

    let all = replies(&mut alice, 2 * FLOOD).await;
    let (mut sent, mut refused) = (0u64, 0u64);
    for r in &all {
        let id = r["id"].as_u64().unwrap();
        if id % 2 == 1 {
            if r["ok"] == json!(true) {
                sent += 1;
            } else {
                assert_eq!(error_code(r).as_deref(), Some("quota_exceeded"), "{r}");
                let msg = r["error"]["message"].as_str().unwrap();
                assert!(msg.starts_with("send_rate:"), "names the limit: {msg}");
                refused += 1;
            }
        } else {
            // A status over the rate is coalesced, not refused.
            assert_eq!(r["ok"], json!(true), "{r}");
        }
    }
    let elapsed = started.elapsed().as_secs() + 1;
    assert!(refused > 0, "no send was refused ({sent} sent)");
    // The bucket lets through its burst plus its rate over the time taken.
    assert!(
        sent <= SEND_RATE * (elapsed + 1),
        "{sent} sends in about {elapsed} s"
    );

    // The newest status wins: the last one is written in the end.
    let last = format!("s{}", FLOOD - 1);
    let mut statuses = 0u64;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), events.next_item())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        let Streamed::Event(rec) = item else { continue };
        if let Event::AgentStatus { agent, text } = rec.event {
            if agent.as_str() == "alice" {
                statuses += 1;
                if text == last {
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs() + 1;
    // Bounded by the rate, nowhere near one event per status sent.
    assert!(
        statuses <= STATUS_RATE * (elapsed + 1),
        "{statuses} status events for {FLOOD} statuses in about {elapsed} s"
    );
    assert!(statuses < FLOOD / 4, "{statuses} status events");
    let detail = hive
        .operator(OperatorRequest::AgentDetail {
            name: AgentName::new("alice").unwrap(),
        })
        .await;
    let OperatorResponse::Agent(d) = detail else {
        panic!("{detail:?}")
    };
    assert_eq!(d.summary.status.as_deref(), Some(last.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_stored_for_an_agent_is_capped_in_count_and_bytes() {
    let mut hive = TestHive::with_config(
        "",
        "[agents.alice]\nsend_rate = 100000\nsend_burst = 100000\n\
         [agents.bob]\nmax_unacked = 5\n\
         [agents.carol]\nmax_unacked_bytes = 100000\n",
    );
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..5 {
        let r = alice
            .request("send", json!({"to": "bob", "body": format!("m{i}")}))
            .await;
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    let r = alice
        .request("send", json!({"to": "bob", "body": "one more"}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("quota_exceeded"), "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("max_unacked:"), "{msg}");
    // A send to * that would overfill one mailbox is refused whole.
    let r = alice
        .request("send", json!({"to": "*", "body": "all"}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("quota_exceeded"), "{r}");

    // bob catches up by one: there is room for one more.
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let got = bob.request("recv", json!({"wait_ms": 0, "max": 1})).await;
    let id = got["result"]["messages"][0]["id"].as_u64().unwrap();
    let r = bob.request("ack", json!({"msg_id": id})).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let r = alice
        .request("send", json!({"to": "bob", "body": "now"}))
        .await;
    assert_eq!(r["ok"], json!(true), "{r}");

    // Bytes: two 40,000-byte bodies fit in carol's 100,000, a third does not.
    let big = "x".repeat(40_000);
    for _ in 0..2 {
        let r = alice
            .request("send", json!({"to": "carol", "body": big}))
            .await;
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    let r = alice
        .request("send", json!({"to": "carol", "body": big}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("quota_exceeded"), "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("max_unacked_bytes:"));
    // The count survives a restart (it is recomputed from the messages).
    hive.stop();
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    let r = alice
        .request("send", json!({"to": "bob", "body": "again"}))
        .await;
    assert_eq!(error_code(&r).as_deref(), Some("quota_exceeded"), "{r}");
}
