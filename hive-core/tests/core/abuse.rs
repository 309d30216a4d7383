//! Nothing an agent sends can crash or stall the core (DESIGN §3).

use std::time::Duration;

use hive_proto::codec::MAX_LINE;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::common::{error_code, LineConn, TestHive};

/// Connections the flood test opens on one agent socket.
const FLOOD: usize = 1000;
/// The per-agent cap the flood test configures.
const CAP: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_invalid_utf8_get_error_lines_and_the_connection_stays_usable() {
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let mut c = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    let cases: &[(&[u8], Option<u64>)] = &[
        (b"hello\n", None),
        (b"\xff\xfe\x00garbage\n", None),
        (b"{\"id\":1,\"op\":\"\xff\"}\n", None),
        (b"[1,2,3]\n", None),
        (b"{}\n", None),
        (b"\n", None),
        (b"{\"id\":7}\n", Some(7)),
        (
            b"{\"id\":8,\"op\":\"send\",\"to\":\"../etc\",\"body\":\"x\"}\n",
            Some(8),
        ),
        (b"{\"id\":9,\"op\":\"recv\",\"max\":0}\n", Some(9)),
        (
            b"{\"id\":10,\"op\":\"send\",\"to\":\"nobody-here\",\"body\":\"x\"}\n",
            Some(10),
        ),
        (
            b"{\"id\":18446744073709551615,\"op\":\"status\",\"text\":1}\n",
            Some(u64::MAX),
        ),
    ];
    for (bytes, id) in cases {
        c.write_raw(bytes).await.unwrap();
        let line = c.next_line().await.expect("an error line, not a close");
        assert_eq!(
            line["ok"],
            json!(false),
            "{}: {line}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(line["id"], json!(id), "{line}");
        assert!(line["error"]["code"].is_string(), "{line}");
    }
    let r = c.request("whoami", json!({})).await;
    assert_eq!(r["result"]["name"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_limit_gets_too_large_and_a_close() {
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let stream = UnixStream::connect(hive.agent_socket("alice"))
        .await
        .unwrap();
    let (r, mut w) = stream.into_split();
    // The core may close before we finish writing: that is its right.
    let writer = tokio::spawn(async move {
        let big = vec![b'x'; MAX_LINE + 1024];
        let _ = w.write_all(&big).await;
        let _ = w.write_all(b"\n{\"id\":1,\"op\":\"whoami\"}\n").await;
    });
    let mut lines = BufReader::new(r).lines();
    let first = lines.next_line().await.unwrap().expect("one error line");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(error_code(&v).as_deref(), Some("too_large"), "{v}");
    // Then the connection is closed; the whoami after it is never answered.
    let rest = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    assert!(matches!(rest, Ok(Ok(None)) | Ok(Err(_))), "{rest:?}");
    let _ = writer.await;
    // The socket still serves.
    let mut c = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    assert_eq!(c.request("whoami", json!({})).await["ok"], json!(true));
}

/// How one flood connection ended.
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Outcome {
    Served,
    LimitLine,
    Closed,
    ConnectFailed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_on_one_socket_leave_other_agents_served() {
    raise_nofile();
    let agents = format!("[agents.alice]\nmax_connections = {CAP}\n[agents.bob]\n[agents.carol]\n");
    let mut hive = TestHive::with_config("", &agents);
    hive.start();
    // carol listens before the flood.
    let mut carol = LineConn::connect(&hive.agent_socket("carol"))
        .await
        .unwrap();
    carol.request("recv", json!({"wait_ms": 0})).await;
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();

    // Open every connection and send a request on each; keep them open.
    let path = hive.agent_socket("alice");
    let mut opening = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let path = path.clone();
        opening.push(tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.ok()?;
            let _ = s.write_all(b"{\"id\":1,\"op\":\"whoami\"}\n").await;
            Some(s)
        }));
    }
    // A round trip between two other agents while the flood is arriving...
    round_trip(&mut bob, &mut carol, "during").await;
    let mut conns = Vec::with_capacity(FLOOD);
    for h in opening {
        conns.push(h.await.unwrap());
    }
    // ...and while all of it is held open.
    round_trip(&mut bob, &mut carol, "held").await;

    // Each reader keeps its connection open until every one has an outcome:
    // a served connection closed early would free a slot for a later one.
    let mut outcomes = std::collections::HashMap::<Outcome, usize>::new();
    let mut readers = Vec::new();
    for s in conns {
        readers.push(tokio::spawn(async move {
            let Some(s) = s else {
                return (Outcome::ConnectFailed, None);
            };
            let mut lines = BufReader::new(s).lines();
            let outcome =
                match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
                    Ok(Ok(Some(line))) => {
                        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
                        match error_code(&v).as_deref() {
                            None => Outcome::Served,
                            Some("limit") => Outcome::LimitLine,
                            Some(other) => panic!("unexpected error {other}: {v}"),
                        }
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => Outcome::Closed,
                    Err(_) => panic!("a flood connection got neither a line nor a close"),
                };
            (outcome, Some(lines))
        }));
    }
    let mut held = Vec::with_capacity(FLOOD);
    for r in readers {
        let (outcome, conn) = r.await.unwrap();
        *outcomes.entry(outcome).or_default() += 1;
        held.push(conn);
    }
    eprintln!("flood outcomes: {outcomes:?}");
    let served = outcomes.get(&Outcome::Served).copied().unwrap_or(0);
    assert!((1..=CAP).contains(&served), "served {served}, cap {CAP}");
    assert_eq!(outcomes.values().sum::<usize>(), FLOOD);
    assert_eq!(outcomes.get(&Outcome::ConnectFailed), None, "{outcomes:?}");

    drop(held);
    // Once the flood is gone (the core notices each close on its own
    // schedule), alice is served again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = LineConn::connect(&hive.agent_socket("alice"))
            .await
            .unwrap();
        c.write_json(&json!({"id": 1, "op": "whoami"}))
            .await
            .unwrap();
        match c.next_line().await {
            Some(v) if error_code(&v).is_none() => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "alice is not served after the flood: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn round_trip(bob: &mut LineConn, carol: &mut LineConn, tag: &str) {
    let r = bob
        .request("send", json!({"to": "carol", "body": tag}))
        .await;
    assert_eq!(error_code(&r), None, "{r}");
    let push = tokio::time::timeout(Duration::from_secs(10), carol.next_push())
        .await
        .expect("carol hears bob during the flood");
    assert_eq!(push["message"]["body"], tag);
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (4 * FLOOD as u64).min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

/// A message body of `MAX_BODY` bytes that starts with its number.
fn numbered_body(i: usize) -> String {
    let head = format!("{i:04}:");
    let tail = "x".repeat(hive_proto::agent::MAX_BODY - head.len());
    head + &tail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_read_is_closed_and_loses_nothing() {
    use hive_core::agent_socket::SLOW_CONSUMER_TIMEOUT;
    use hive_proto::agent::{MAX_BODY, MAX_PENDING_OUT_BYTES};
    use tokio::io::AsyncReadExt;

    use crate::common::REPLY_TIMEOUT;

    // Twice the queue's byte cap: more than it and any socket buffer hold.
    let n = 2 * MAX_PENDING_OUT_BYTES / MAX_BODY;
    let sent: Vec<String> = (0..n).map(numbered_body).collect();
    let mut hive = TestHive::new(&["alice", "bob", "carol"]);
    hive.start();
    let mut carol = LineConn::connect(&hive.agent_socket("carol"))
        .await
        .unwrap();
    carol.request("recv", json!({"wait_ms": 0})).await;
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();

    // bob listens (an empty recv, answered at once), then never reads again.
    let (r, mut stalled_w) = UnixStream::connect(hive.agent_socket("bob"))
        .await
        .unwrap()
        .into_split();
    let mut stalled = BufReader::new(r);
    stalled_w
        .write_all(b"{\"id\":1,\"op\":\"recv\",\"wait_ms\":0}\n")
        .await
        .unwrap();
    let mut line = String::new();
    tokio::time::timeout(REPLY_TIMEOUT, stalled.read_line(&mut line))
        .await
        .expect("bob's recv is answered")
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["result"]["messages"], json!([]), "{reply}");

    // alice pipelines every send: each is `ok` once committed, however full
    // bob's connection is.
    for (i, body) in sent.iter().enumerate() {
        alice
            .write_json(&json!({"id": i, "op": "send", "to": "bob", "body": body}))
            .await
            .unwrap();
    }
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..n {
        let r = alice
            .next_line()
            .await
            .expect("alice's connection stays open");
        assert_eq!(error_code(&r), None, "{r}");
        answered.insert(r["id"].as_u64().expect("an id"));
    }
    assert_eq!(
        answered,
        (0..n as u64).collect(),
        "every send answered once"
    );
    round_trip(&mut alice, &mut carol, "while bob stalls").await;

    // The core gives up on bob's connection once a line has waited
    // SLOW_CONSUMER_TIMEOUT for room, and says so; bob has not read a byte.
    let deadline = tokio::time::Instant::now() + SLOW_CONSUMER_TIMEOUT + Duration::from_secs(15);
    while !hive
        .log()
        .lines()
        .any(|l| l.contains("slow consumer") && l.contains("bob"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's stalled connection is still open:\n{}",
            hive.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the socket still held, then EOF. The last line may be cut short.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled connection ends in EOF");
    let complete = rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let early: Vec<String> = rest[..complete]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let push: serde_json::Value = serde_json::from_slice(l).expect("a push line");
            push["message"]["body"]
                .as_str()
                .expect("a message")
                .to_owned()
        })
        .collect();
    eprintln!(
        "the stalled connection got {} of {n} messages before it was closed",
        early.len()
    );
    assert!(early.len() < n, "the stalled connection got only a few");
    assert!(
        early[..] == sent[..early.len()],
        "what it got came in order"
    );

    // A new connection gets every message, in order, once.
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let r = bob
        .request("recv", json!({"wait_ms": 0, "max": 1000}))
        .await;
    let mut got: Vec<(u64, String)> = r["result"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    while got.len() < n {
        let p = bob.next_push().await;
        let m = &p["message"];
        got.push((
            m["id"].as_u64().unwrap(),
            m["body"].as_str().unwrap().to_owned(),
        ));
    }
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    let bodies: Vec<&String> = got.iter().map(|(_, b)| b).collect();
    assert!(
        bodies == sent.iter().collect::<Vec<_>>(),
        "every message, in order, once"
    );
    round_trip(&mut alice, &mut carol, "after").await;
    assert_eq!(
        bob.request("whoami", json!({})).await["result"]["name"],
        "bob",
        "bob's new connection is served"
    );
}
