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
