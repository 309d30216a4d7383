//! Messaging benchmark: the real `hive-core` daemon, two agents on their
//! sockets, durable sends (`synchronous = FULL`) measured from the sender's
//! write to the receiver's push.
//!
//! - latency: alice sends one message at a time; bob is a listener; the
//!   time from alice's write to bob reading the push line, p50/p99/max;
//! - throughput: alice pipelines `send`s with up to [`WINDOW`] in flight;
//!   the clock stops when every send is acknowledged `ok` *and* bob has
//!   received every message as a push.
//!
//! Run: `cargo bench -p hive-core --bench messaging`. Prints figures only;
//! no assertion on time (that is docs/perf.md's job).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use common::{LineConn, TestHive};

/// Sequential round trips measured for latency (after [`WARMUP`]).
const LATENCY_SAMPLES: usize = 5000;
const WARMUP: usize = 500;
/// Messages sent for throughput.
const MESSAGES: usize = 20_000;
/// Sends in flight on the sender's one connection.
const WINDOW: usize = 256;
/// The four agents, with quotas above what the bench sends (the defaults
/// are 100 sends a second and 10,000 unacknowledged messages).
const BENCH_AGENTS: &str = "\
[agents.alice]\nsend_rate = 10000000\nsend_burst = 10000000\n\
[agents.bob]\nmax_unacked = 10000000\n\
[agents.carol]\nsend_rate = 10000000\nsend_burst = 10000000\n\
[agents.dave]\nmax_unacked = 10000000\n";

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    // alice -> bob for latency, carol -> dave for throughput: the second run
    // starts with an empty inbox.
    // The senders' quotas are raised past what the bench sends, so every
    // quota is still checked on every send but none refuses one.
    let mut hive = TestHive::with_config("", BENCH_AGENTS);
    hive.start();
    let body = "x".repeat(100);

    let (p50, p99, max) = latency(&hive, &body).await;
    println!(
        "send->push latency ({LATENCY_SAMPLES} sequential sends, 100-byte bodies): \
         p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );

    let (elapsed, acked_at) = throughput(&hive, &body).await;
    println!(
        "durable throughput ({MESSAGES} pipelined sends, window {WINDOW}): \
         {:.0} msgs/s acked and pushed ({:.0} msgs/s acked), {:.3} s",
        MESSAGES as f64 / elapsed.as_secs_f64(),
        MESSAGES as f64 / acked_at.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let status = hive.stop();
    assert!(status.success(), "hive-core exited badly:\n{}", hive.log());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn latency(hive: &TestHive, body: &str) -> (Duration, Duration, Duration) {
    let mut bob = LineConn::connect(&hive.agent_socket("bob")).await.unwrap();
    let r = bob.request("recv", json!({"wait_ms": 0})).await;
    assert_eq!(r["ok"], json!(true));
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..WARMUP + LATENCY_SAMPLES {
        let req = json!({"id": i + 1, "op": "send", "to": "bob", "body": body});
        let start = Instant::now();
        alice.write_json(&req).await.unwrap();
        let push = bob.next_push().await;
        let took = start.elapsed();
        assert_eq!(push["message"]["body"], json!(body));
        let reply = alice.reply_to(i as u64 + 1).await;
        assert_eq!(reply["ok"], json!(true), "{reply}");
        if i >= WARMUP {
            samples.push(took);
        }
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "send->push latency distribution: p90 {:.3} ms, p99.9 {:.3} ms",
        ms(at(0.90)),
        ms(at(0.999))
    );
    (at(0.50), at(0.99), *samples.last().unwrap())
}

/// Returns (time until all acked and pushed, time until all acked).
async fn throughput(hive: &TestHive, body: &str) -> (Duration, Duration) {
    // dave: a listener counting pushes.
    let dave = UnixStream::connect(hive.agent_socket("dave"))
        .await
        .unwrap();
    let (r, mut w) = dave.into_split();
    w.write_all(b"{\"id\":1,\"op\":\"recv\",\"wait_ms\":0}\n")
        .await
        .unwrap();
    let mut dave_lines = BufReader::new(r).lines();
    let first = dave_lines.next_line().await.unwrap().unwrap();
    assert!(first.contains("\"messages\":[]"), "{first}");
    let counter = tokio::spawn(async move {
        let mut got = 0usize;
        while got < MESSAGES {
            let line = dave_lines.next_line().await.unwrap().expect("dave's line");
            if line.starts_with("{\"event\"") {
                got += 1;
            }
        }
        drop(w);
        Instant::now()
    });

    let carol = UnixStream::connect(hive.agent_socket("carol"))
        .await
        .unwrap();
    let (r, mut w) = carol.into_split();
    let mut replies = BufReader::new(r).lines();
    let line = |i: usize| {
        let mut l = serde_json::to_vec(&json!({"id": i, "op": "send", "to": "dave", "body": body}))
            .unwrap();
        l.push(b'\n');
        l
    };
    let start = Instant::now();
    let mut sent = 0usize;
    let mut acked = 0usize;
    let mut batch = Vec::new();
    while acked < MESSAGES {
        // Top the window up in one write.
        batch.clear();
        while sent < MESSAGES && sent - acked < WINDOW {
            batch.extend(line(sent + 1));
            sent += 1;
        }
        if !batch.is_empty() {
            w.write_all(&batch).await.unwrap();
        }
        let reply = replies.next_line().await.unwrap().expect("carol's reply");
        assert!(reply.contains("\"ok\":true"), "{reply}");
        acked += 1;
    }
    let acked_at = start.elapsed();
    let pushed_at = counter.await.unwrap();
    (pushed_at.duration_since(start).max(acked_at), acked_at)
}
