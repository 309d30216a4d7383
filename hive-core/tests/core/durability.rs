//! Durable before acknowledged (DESIGN invariant 8), and at-least-once
//! delivery across a crash.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::common::{error_code, LineConn, TestHive};

/// Messages the sender pipelines before waiting for replies.
const WINDOW: usize = 32;
const MESSAGES: u64 = 1000;

/// What the receiver has seen: every (message id, sequence number).
#[derive(Default)]
struct Received {
    ids: BTreeSet<u64>,
    seqs: BTreeSet<u64>,
    duplicates: u64,
}

/// bob's side: a listener that reconnects whenever the core goes away,
/// records every message, and acknowledges what it recorded.
async fn receive_forever(socket: std::path::PathBuf, seen: Arc<Mutex<Received>>) {
    loop {
        let Ok(stream) = UnixStream::connect(&socket).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        if w.write_all(b"{\"id\":1,\"op\":\"recv\",\"wait_ms\":0,\"max\":1000}\n")
            .await
            .is_err()
        {
            continue;
        }
        let mut next_id = 2u64;
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
            let msgs: Vec<serde_json::Value> = if v.get("event").is_some() {
                vec![v["message"].clone()]
            } else if v["id"] == json!(1) {
                v["result"]["messages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            } else {
                continue; // an ack's reply
            };
            let mut acks = Vec::new();
            {
                let mut seen = seen.lock().unwrap();
                for m in msgs {
                    let id = m["id"].as_u64().expect("message id");
                    let seq: u64 = m["body"]
                        .as_str()
                        .and_then(|b| b.strip_prefix("seq "))
                        .and_then(|s| s.parse().ok())
                        .expect("body carries a sequence number");
                    if !seen.ids.insert(id) {
                        seen.duplicates += 1;
                    }
                    seen.seqs.insert(seq);
                    acks.extend(
                        format!("{{\"id\":{next_id},\"op\":\"ack\",\"msg_id\":{id}}}\n")
                            .into_bytes(),
                    );
                    next_id += 1;
                }
            }
            if w.write_all(&acks).await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_kill_9() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let seen = Arc::new(Mutex::new(Received::default()));
    let receiver = tokio::spawn(receive_forever(hive.agent_socket("bob"), Arc::clone(&seen)));

    let mut todo: VecDeque<u64> = (0..MESSAGES).collect();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut killed = false;
    let mut reconnects = 0;
    while acked.len() < MESSAGES as usize {
        let mut alice = match LineConn::connect(&hive.agent_socket("alice")).await {
            Ok(c) => c,
            Err(e) => panic!("alice's socket after restart: {e}"),
        };
        // request id -> sequence number, for requests without a reply yet.
        let mut in_flight: HashMap<u64, u64> = HashMap::new();
        let mut next_req = 1u64;
        let broke = 'conn: loop {
            while in_flight.len() < WINDOW {
                let Some(seq) = todo.pop_front() else { break };
                let req = json!({"id": next_req, "op": "send", "to": "bob", "body": format!("seq {seq}")});
                if alice.write_json(&req).await.is_err() {
                    todo.push_front(seq);
                    break 'conn true;
                }
                in_flight.insert(next_req, seq);
                next_req += 1;
            }
            if in_flight.is_empty() {
                break false;
            }
            let Some(reply) = alice.next_line().await else {
                break true;
            };
            let id = reply["id"].as_u64().expect("reply id");
            let seq = in_flight.remove(&id).expect("reply to a request in flight");
            match error_code(&reply) {
                None => {
                    acked.insert(seq);
                }
                Some(code) => panic!("send {seq} refused: {code}: {reply}"),
            }
            if !killed && acked.len() >= MESSAGES as usize / 2 {
                // Halfway, with a full window in flight: no goodbye.
                hive.kill9();
                killed = true;
            }
        };
        // Whatever had no `ok` may or may not have committed: send it again
        // (the receiver tells repeats apart by message id, and we only
        // require what was acknowledged).
        todo.extend(in_flight.into_values());
        if broke {
            reconnects += 1;
            assert!(
                reconnects < 5,
                "alice's connection keeps breaking:\n{}",
                hive.log()
            );
            hive.start();
        }
    }
    assert!(killed);

    // Every acknowledged message arrives, however long the receiver needs
    // to reconnect and drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<u64> = {
            let seen = seen.lock().unwrap();
            acked.difference(&seen.seqs).copied().collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acknowledged messages never arrived, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.abort();
    let seen = seen.lock().unwrap();
    assert!(
        seen.seqs.iter().all(|s| *s < MESSAGES),
        "a message nobody sent"
    );
    eprintln!(
        "{} acknowledged, {} distinct messages received, {} redelivered",
        acked.len(),
        seen.ids.len(),
        seen.duplicates
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_delivered_again_after_a_reconnect() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..3 {
        let r = alice
            .request("send", json!({"to": "bob", "body": format!("m{i}")}))
            .await;
        assert_eq!(error_code(&r), None, "{r}");
    }
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let got = bob.request("recv", json!({"wait_ms": 0, "max": 10})).await;
    let msgs = got["result"]["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 3);
    // Acknowledge only the first; the other two come again on a new
    // connection, and only they.
    let first = msgs[0]["id"].as_u64().unwrap();
    assert_eq!(
        error_code(&bob.request("ack", json!({"msg_id": first})).await),
        None
    );
    drop(bob);
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let again = bob.request("recv", json!({"wait_ms": 0, "max": 10})).await;
    let bodies: Vec<&str> = again["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_gets_new_messages_pushed_without_asking() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    // An empty recv that waits: the first message answers it...
    bob.write_json(&json!({"id": 1, "op": "recv", "wait_ms": 60000}))
        .await
        .unwrap();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    alice
        .request("send", json!({"to": "bob", "body": "first"}))
        .await;
    let r = bob.reply_to(1).await;
    assert_eq!(r["result"]["messages"][0]["body"], "first");
    // ...and from then on, every new one is a push line with no id.
    for body in ["second", "third"] {
        alice
            .request("send", json!({"to": "bob", "body": body}))
            .await;
        let push = bob.next_push().await;
        assert_eq!(push["event"], "message");
        assert_eq!(push["message"]["body"], body);
        assert!(push.get("id").is_none());
    }
    // A second recv on a listening connection returns nothing old.
    let r = bob.request("recv", json!({"wait_ms": 0})).await;
    assert_eq!(r["result"]["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recv_page_larger_than_max_continues_as_pushes_in_order() {
    let mut hive = TestHive::new(&["alice", "bob"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..25 {
        alice
            .request("send", json!({"to": "bob", "body": format!("{i}")}))
            .await;
    }
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let r = bob.request("recv", json!({"wait_ms": 0, "max": 10})).await;
    let mut bodies: Vec<String> = r["result"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.len(), 10);
    while bodies.len() < 25 {
        let p = bob.next_push().await;
        bodies.push(p["message"]["body"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    assert_eq!(bodies, want);
}

/// A raw agent connection that also reports each line's length in bytes.
struct SizedLines {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl SizedLines {
    async fn connect(path: &std::path::Path) -> Self {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn write(&mut self, v: serde_json::Value) {
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).await.unwrap();
    }

    /// The next line and its length (newline excluded).
    async fn next(&mut self) -> (usize, serde_json::Value) {
        let mut line = String::new();
        let n = tokio::time::timeout(
            crate::common::REPLY_TIMEOUT,
            self.reader.read_line(&mut line),
        )
        .await
        .expect("a line in time")
        .expect("read");
        assert!(n > 0, "the core closed the connection");
        let line = line.trim_end_matches('\n');
        (line.len(), serde_json::from_str(line).expect("json line"))
    }

    /// Sends `recv` as request `id`, then reads lines until `want` messages
    /// have arrived (the reply's, then pushes). Returns the reply's size and
    /// message count, and every message id and body in arrival order.
    async fn recv_all(
        &mut self,
        id: u64,
        wait_ms: u64,
        want: usize,
        before_reply: impl std::future::Future,
    ) -> (usize, usize, Vec<(u64, String)>) {
        self.write(json!({"id": id, "op": "recv", "wait_ms": wait_ms, "max": 1000}))
            .await;
        before_reply.await;
        let (len, reply) = self.next().await;
        assert_eq!(reply["id"], json!(id), "the reply comes first: {reply}");
        let page = reply["result"]["messages"].as_array().expect("messages");
        let in_reply = page.len();
        let mut got: Vec<(u64, String)> = page.iter().map(id_body).collect();
        while got.len() < want {
            let (_, push) = self.next().await;
            assert_eq!(push["event"], "message", "{push}");
            got.push(id_body(&push["message"]));
        }
        (len, in_reply, got)
    }
}

fn id_body(m: &serde_json::Value) -> (u64, String) {
    (
        m["id"].as_u64().expect("id"),
        m["body"].as_str().expect("body").to_owned(),
    )
}

/// A body of `MAX_BODY` bytes starting with `i`: every third one made of
/// control characters, which JSON writes six bytes each (~390 KiB), the
/// others plain (64 KiB).
fn big_body(i: usize) -> String {
    let fill = if i.is_multiple_of(3) { "\u{1}" } else { "x" };
    let head = format!("{i:03}:");
    let tail = fill.repeat(hive_proto::agent::MAX_BODY - head.len());
    head + &tail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recv_reply_stays_under_its_byte_cap_and_the_rest_follow_in_order_once() {
    use hive_proto::agent::MAX_RECV_REPLY_BYTES;
    use hive_proto::operator::{AdminRequest, OperatorRequest};
    use hive_proto::AgentName;

    const N: usize = 36;
    let mut hive = TestHive::new(&["bob"]);
    hive.start();
    let admin = hive.admin().await;
    let bob_name = AgentName::new("bob").unwrap();
    let send = |i: usize| {
        let admin = admin.clone();
        let to = bob_name.clone();
        async move {
            admin
                .call(AdminRequest::Operator(OperatorRequest::SendMessage {
                    to,
                    body: big_body(i),
                }))
                .await
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
        }
    };
    for i in 0..N {
        send(i).await;
    }
    let sent: Vec<String> = (0..N).map(big_body).collect();
    // About 8 MiB in all: without the cap, one reply line.
    let total: usize = sent
        .iter()
        .map(|b| serde_json::to_string(b).unwrap().len())
        .sum();
    assert!(total > 4 * MAX_RECV_REPLY_BYTES, "{total}");

    // Each connection gets every unacknowledged message exactly once, in
    // order: the reply holds what fits, pushes carry the rest.
    for _ in 0..2 {
        let mut bob = SizedLines::connect(&hive.agent_socket("bob")).await;
        let (len, in_reply, got) = bob.recv_all(1, 0, N, async {}).await;
        assert!(len <= MAX_RECV_REPLY_BYTES, "a {len}-byte recv reply");
        assert!(
            (1..N).contains(&in_reply),
            "{in_reply} messages in the reply"
        );
        let bodies: Vec<&String> = got.iter().map(|(_, b)| b).collect();
        assert_eq!(bodies, sent.iter().collect::<Vec<_>>(), "in order, once");
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    }

    // A recv that waits is answered from the live inbox, under the same cap:
    // acknowledge everything, wait, and let a burst of sends arrive at once.
    let mut bob = SizedLines::connect(&hive.agent_socket("bob")).await;
    let (_, _, old) = bob.recv_all(1, 0, N, async {}).await;
    for (k, (id, _)) in old.iter().enumerate() {
        bob.write(json!({"id": 100 + k, "op": "ack", "msg_id": id}))
            .await;
        let (_, r) = bob.next().await;
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    drop(bob);
    let mut bob = SizedLines::connect(&hive.agent_socket("bob")).await;
    let burst = futures::future::join_all((N..2 * N).map(send));
    let (len, in_reply, got) = bob.recv_all(1, 60_000, N, burst).await;
    assert!(len <= MAX_RECV_REPLY_BYTES, "a {len}-byte recv reply");
    eprintln!("the waiting recv's reply held {in_reply} of the burst's {N} messages ({len} bytes)");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let mut bodies: Vec<String> = got.into_iter().map(|(_, b)| b).collect();
    bodies.sort();
    let want: Vec<String> = (N..2 * N).map(big_body).collect();
    assert_eq!(bodies, want, "every message of the burst, once");
}
