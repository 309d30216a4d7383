//! The operator sockets: who may connect (SO_PEERCRED, on top of the socket
//! modes), who the audit log names, and event streams that resume.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use hive_proto::client::operator::{subscribe, OperatorClient, Streamed};
use hive_proto::codec::{decode_frame, FrameCodec};
use hive_proto::event::Event;
use hive_proto::operator::{
    AdminRequest, ClientFrame, Hello, HelloReply, OperatorRequest, OperatorResponse, ServerFrame,
    Version, WebCall, WebRequest,
};
use hive_proto::view::ErrorCode;
use hive_proto::{AgentName, PROTO_VERSION};
use serde_json::json;
use tokio_util::codec::{Encoder, Framed};

use crate::common::{is_root, run_as, skip_or_fail, LineConn, TestHive};

/// nobody:nogroup on Debian and NixOS.
const NOBODY: u32 = 65534;
/// `daemon` on Debian: a uid that is neither root, nobody nor the gateway.
const OTHER_UID: u32 = 1;

fn hello_bytes<R: serde::Serialize>(version: Version) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::<(), ClientFrame<R>>::new()
        .encode(
            ClientFrame::Hello(Hello {
                version,
                client: "test".into(),
            }),
            &mut buf,
        )
        .unwrap();
    buf.to_vec()
}

/// Connects to `socket` as `uid` with socat, sends a hello, returns the
/// core's first frame, or `Err(stderr)` if the connect itself failed.
fn hello_as<R: serde::Serialize>(uid: u32, socket: &Path) -> Result<HelloReply, String> {
    let target = format!("UNIX-CONNECT:{}", socket.display());
    let (status, out, err) = run_as(
        uid,
        uid,
        "socat",
        &["-t5", "-", &target],
        &hello_bytes::<R>(PROTO_VERSION),
    );
    if !status.success() && out.is_empty() {
        return Err(err);
    }
    match decode_frame::<ServerFrame>(&out) {
        Ok(Some(ServerFrame::Hello(reply))) => Ok(reply),
        other => panic!("uid {uid}: unexpected first frame {other:?} ({err})"),
    }
}

fn can_switch_uids() -> bool {
    if !is_root() {
        skip_or_fail("switching to another uid needs root");
        return false;
    }
    if std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_err()
    {
        skip_or_fail("socat is not installed");
        return false;
    }
    true
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sock_refuses_a_peer_that_is_not_root_or_admin_group() {
    if !can_switch_uids() {
        return;
    }
    let mut hive = TestHive::with_config("admin_group = \"root\"\n", "[agents.alice]\n");
    hive.start();
    let sock = hive.admin_socket();
    // The socket's mode (0660 root:root here) keeps nobody out...
    let err = hello_as::<AdminRequest>(NOBODY, &sock).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    // ...and were the mode opened by mistake, the kernel-reported uid still
    // is not root or in the admin group.
    chmod(&sock, 0o666);
    match hello_as::<AdminRequest>(NOBODY, &sock) {
        Ok(HelloReply::Refused { reason }) => {
            assert!(
                reason.contains("not root and not in group root"),
                "{reason}"
            )
        }
        other => panic!("nobody was not refused: {other:?}"),
    }
    // Root is welcome, named by the kernel.
    assert_eq!(hive.admin().await.peer(), "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sock_admits_only_the_gateway_user() {
    if !can_switch_uids() {
        return;
    }
    let mut hive = TestHive::with_config("web_user = \"nobody\"\n", "[agents.alice]\n");
    hive.start();
    let sock = hive.web_socket();
    match hello_as::<WebCall>(NOBODY, &sock) {
        Ok(HelloReply::Welcome { peer, .. }) => assert!(peer.contains("nobody"), "{peer}"),
        other => panic!("the gateway user was not welcome: {other:?}"),
    }
    let err = hello_as::<WebCall>(OTHER_UID, &sock).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    chmod(&sock, 0o666);
    match hello_as::<WebCall>(OTHER_UID, &sock) {
        Ok(HelloReply::Refused { reason }) => {
            assert!(reason.contains("not the gateway's user"), "{reason}")
        }
        other => panic!("uid {OTHER_UID} was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_major_version_is_refused_with_a_reason() {
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let stream = tokio::net::UnixStream::connect(hive.admin_socket())
        .await
        .unwrap();
    let mut framed = Framed::new(
        stream,
        FrameCodec::<ServerFrame, ClientFrame<AdminRequest>>::new(),
    );
    framed
        .send(ClientFrame::Hello(Hello {
            version: Version {
                major: 99,
                minor: 0,
            },
            client: "future".into(),
        }))
        .await
        .unwrap();
    match framed.next().await {
        Some(Ok(ServerFrame::Hello(HelloReply::Refused { reason }))) => {
            assert!(reason.contains("protocol 99.0"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

async fn last_audit_actor(hive: &TestHive) -> String {
    match hive
        .operator(OperatorRequest::Audit {
            since: 0,
            limit: 1000,
        })
        .await
    {
        OperatorResponse::Audit(rows) => rows.last().expect("a row").actor.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_the_kernel_user_or_the_gateways_login() {
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let alice = AgentName::new("alice").unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;

    hive.operator(OperatorRequest::SendMessage {
        to: alice.clone(),
        body: "from the shell".into(),
    })
    .await;
    assert_eq!(last_audit_actor(&hive).await, format!("operator:{me}"));

    // The web socket admits root (this test runs as root or as the daemon's
    // own user, which is root's equal here only if it is root).
    if !is_root() {
        skip_or_fail("web.sock admits only root and the gateway user");
        return;
    }
    let web = OperatorClient::<WebCall>::connect(hive.web_socket())
        .await
        .unwrap();
    web.call(WebCall {
        operator: "ops@example.com".into(),
        req: WebRequest::SendMessage {
            to: alice.clone(),
            body: "from the web".into(),
        },
    })
    .await
    .unwrap();
    assert_eq!(
        last_audit_actor(&hive).await,
        "operator:ops@example.com@web"
    );

    for bad in ["", "line\nbreak", &"x".repeat(65)] {
        let err = web
            .call(WebCall {
                operator: bad.into(),
                req: WebRequest::ListAgents,
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bad_request"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_verb_sent_to_web_sock_is_answered_unknown_op() {
    if !is_root() {
        skip_or_fail("web.sock admits only root and the gateway user");
        return;
    }
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let stream = tokio::net::UnixStream::connect(hive.web_socket())
        .await
        .unwrap();
    let mut framed = Framed::new(
        stream,
        FrameCodec::<ServerFrame, ClientFrame<AdminRequest>>::new(),
    );
    framed
        .send(ClientFrame::Hello(Hello {
            version: PROTO_VERSION,
            client: "test".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(
        framed.next().await,
        Some(Ok(ServerFrame::Hello(HelloReply::Welcome { .. })))
    ));
    framed
        .send(ClientFrame::Call {
            id: 42,
            req: AdminRequest::AuditVerify,
        })
        .await
        .unwrap();
    match framed.next().await {
        Some(Ok(ServerFrame::Reply {
            id: 42,
            result: Err(e),
        })) => {
            assert_eq!(e.code, ErrorCode::UnknownOp, "{e}")
        }
        other => panic!("{other:?}"),
    }
}

async fn next_status(stream: &mut hive_proto::client::operator::EventStream) -> (u64, String) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next_item())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        if let Streamed::Event(rec) = item {
            if let Event::AgentStatus { text, .. } = rec.event {
                return (rec.seq, text);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_replays_after_since_then_follows_live() {
    let mut hive = TestHive::new(&["alice"]);
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    alice.request("status", json!({"text": "one"})).await;
    alice.request("status", json!({"text": "two"})).await;

    let mut all = subscribe(hive.admin_socket(), 0).await.unwrap();
    let (seq_one, t) = next_status(&mut all).await;
    assert_eq!(t, "one");
    assert_eq!(next_status(&mut all).await.1, "two");
    alice.request("status", json!({"text": "three"})).await;
    assert_eq!(next_status(&mut all).await.1, "three");

    // Resuming after "one" replays "two" and "three", not "one".
    let mut resumed = subscribe(hive.admin_socket(), seq_one).await.unwrap();
    assert_eq!(next_status(&mut resumed).await.1, "two");
    assert_eq!(next_status(&mut resumed).await.1, "three");
}

async fn last_event_seq(hive: &TestHive) -> u64 {
    match hive.operator(OperatorRequest::Health).await {
        OperatorResponse::Health(h) => h.last_event_seq,
        other => panic!("{other:?}"),
    }
}

/// The next frame of a raw operator connection, in time.
async fn next_frame(
    framed: &mut Framed<tokio::net::UnixStream, FrameCodec<ServerFrame, ClientFrame<AdminRequest>>>,
) -> ServerFrame {
    tokio::time::timeout(Duration::from_secs(10), framed.next())
        .await
        .expect("a frame in time")
        .expect("connection open")
        .expect("a frame that decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_from_pruned_events_is_told_lagged_then_resumes_at_the_oldest_kept() {
    // The smallest retention a config may set, so the scheduler's own prune
    // (at start-up and every 10 minutes) drops the oldest events here.
    // Each send to the operator is one event; alice's send quota is
    // raised so all 1,010 go through.
    let mut hive = TestHive::with_config(
        "event_retention = 1000",
        "[agents.alice]\nsend_rate = 100000\nsend_burst = 100000\n",
    );
    hive.start();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    for i in 0..1010 {
        let r = alice
            .request("send", json!({"to": "operator", "body": format!("m{i}")}))
            .await;
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    drop(alice);
    let last = last_event_seq(&hive).await;
    assert!(last >= 1010, "{last}");
    let status = hive.stop();
    assert!(status.success(), "{status:?}");
    hive.start();
    // The prune runs as the scheduler starts; wait until it has.
    let first_kept = last - 999;
    let db = rusqlite::Connection::open(hive.db_path()).unwrap();
    let pruned = crate::common::poll_until(|| {
        let oldest: i64 = db
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .unwrap();
        oldest as u64 == first_kept
    })
    .await;
    assert!(pruned, "the scheduler kept 1,000 events:\n{}", hive.log());

    // From before the oldest kept event: Lagged, naming what is gone.
    let mut stream = subscribe(hive.admin_socket(), 0).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next_item())
        .await
        .expect("an item in time");
    assert_eq!(
        item.expect("an item").expect("no error"),
        Streamed::Lagged {
            resume_from: first_kept - 1
        }
    );

    // Resubscribing from there (as hive-web and hivectl do) is the three
    // kept events in order, with no second Lagged.
    let mut resumed = subscribe(hive.admin_socket(), first_kept - 1)
        .await
        .unwrap();
    for seq in first_kept..=last {
        let item = tokio::time::timeout(Duration::from_secs(10), resumed.next_item())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        let Streamed::Event(rec) = item else {
            panic!("no second Lagged: {item:?}")
        };
        assert_eq!(rec.seq, seq);
        assert!(matches!(rec.event, Event::MessageSent { .. }), "{rec:?}");
    }

    // On the wire, Lagged is the subscription's last frame: the core sends
    // nothing more under its id, even when new events commit.
    let stream = tokio::net::UnixStream::connect(hive.admin_socket())
        .await
        .unwrap();
    let mut framed = Framed::new(
        stream,
        FrameCodec::<ServerFrame, ClientFrame<AdminRequest>>::new(),
    );
    framed
        .send(ClientFrame::Hello(Hello {
            version: PROTO_VERSION,
            client: "test".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(
        next_frame(&mut framed).await,
        ServerFrame::Hello(HelloReply::Welcome { .. })
    ));
    framed
        .send(ClientFrame::Subscribe { id: 5, since: 1 })
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut framed).await,
        ServerFrame::Lagged {
            id: 5,
            resume_from: first_kept - 1
        }
    );
    // A second subscription on the same connection, from the newest event,
    // sees the next one; had the first carried on, it would have sent its
    // 1,000 kept events and that one too.
    framed
        .send(ClientFrame::Subscribe { id: 6, since: last })
        .await
        .unwrap();
    let mut alice = LineConn::connect(&hive.agent_socket("alice"))
        .await
        .unwrap();
    alice.request("status", json!({"text": "after"})).await;
    loop {
        match next_frame(&mut framed).await {
            ServerFrame::Event { id: 6, record } => {
                assert!(record.seq > last);
                if matches!(record.event, Event::AgentStatus { ref text, .. } if text == "after") {
                    break;
                }
            }
            other => panic!("after Lagged, only the second subscription speaks: {other:?}"),
        }
    }
}
