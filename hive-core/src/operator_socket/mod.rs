//! The operator sockets, `admin.sock` (for `hivectl`) and `web.sock` (for
//! `hive-web`): one generic server, parameterised by an [`Endpoint`] that
//! names the socket's request type and its peer policy.
//!
//! A connection goes: `SO_PEERCRED` → the endpoint admits the peer or not →
//! `Hello` exchange (a refused peer or a different major version gets
//! `Hello(Refused { reason })` and the connection closes) → calls, each
//! handled concurrently and answered by id through one writer, and event
//! subscriptions ([`events`]).
//!
//! This module must never take the operator's identity from anything but
//! the kernel (admin) or the authenticated gateway (web), and never apply
//! policy beyond "may this peer use this socket at all".

mod admin;
mod events;
mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use hive_proto::codec::{FrameCodec, MAX_FRAME};
use hive_proto::operator::{ClientFrame, HelloReply, OperatorResponse, RpcError, ServerFrame};
use hive_proto::view::ErrorCode;
use hive_proto::PROTO_VERSION;
use serde::de::DeserializeOwned;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admin::AdminEndpoint;
pub use web::{validate_login, GatewayPeers, WebCaller, WebEndpoint, MAX_LOGIN};

use crate::hive::Hive;
use crate::peer::{self, PeerCred};

/// How long a new connection has to send its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls one connection may have in flight before the core stops reading
/// from it (back-pressure).
pub const MAX_CALLS_IN_FLIGHT: usize = 64;
/// Event subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 8;
/// Connections open at once on one operator socket.
pub const MAX_OPERATOR_CONNECTIONS: usize = 256;
/// Frames queued for one connection's writer.
pub const OUT_QUEUE: usize = 1024;
/// How long a closing connection waits for its peer to read what is queued.
pub const WRITER_DRAIN: Duration = Duration::from_secs(5);
/// Pause after a failed `accept`.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Mode of both operator sockets: owner root, group the admin group (admin)
/// or the gateway's group (web), nobody else.
pub const OPERATOR_SOCKET_MODE: u32 = 0o660;

/// One operator socket's request type and peer policy.
pub trait Endpoint: Send + Sync + 'static {
    /// What a `ClientFrame::Call` carries on this socket.
    type Request: DeserializeOwned + Send + 'static;
    /// What admitting the peer established; every call of the connection
    /// is made with it.
    type Caller: Clone + Send + Sync + 'static;

    /// The socket's name, for logs.
    const SOCKET: &'static str;

    /// Decides from the kernel-reported credentials whether this peer may
    /// use the socket; `Err` is the sentence the refused peer reads.
    fn admit(&self, cred: PeerCred) -> impl Future<Output = Result<Self::Caller, String>> + Send;

    /// Who the core believes is calling, for the `Welcome` frame and logs.
    fn describe(caller: &Self::Caller) -> String;

    /// Applies one call.
    fn call(
        hive: Hive,
        caller: Self::Caller,
        req: Self::Request,
    ) -> impl Future<Output = Result<OperatorResponse, RpcError>> + Send + 'static;
}

/// Serves `listener` with `endpoint` until `shutdown` is cancelled.
pub fn serve<E: Endpoint>(
    endpoint: E,
    listener: UnixListener,
    hive: &Hive,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let server = Arc::new(Server {
        endpoint,
        hive: hive.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        connections: Arc::new(Semaphore::new(MAX_OPERATOR_CONNECTIONS)),
    });
    tracker.spawn(server.accept_loop(listener));
}

struct Server<E> {
    endpoint: E,
    hive: Hive,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    connections: Arc<Semaphore>,
}

type FrameWriter = FramedWrite<tokio::net::unix::OwnedWriteHalf, FrameCodec<(), ServerFrame>>;

impl<E: Endpoint> Server<E> {
    async fn accept_loop(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(socket = E::SOCKET, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                tracing::warn!(socket = E::SOCKET, "connection refused: too many open");
                continue;
            };
            let server = Arc::clone(&self);
            self.tracker.spawn(async move {
                server.connection(stream).await;
                drop(permit);
            });
        }
    }

    async fn connection(&self, stream: UnixStream) {
        let cred = match peer::peer_cred(&stream) {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(socket = E::SOCKET, error = %e, "no peer credentials; closing");
                return;
            }
        };
        let (rd, wr) = stream.into_split();
        let mut reader = FramedRead::new(rd, frame_reader());
        let mut writer: FrameWriter = FramedWrite::new(wr, FrameCodec::new());

        let caller = match self.handshake(cred, &mut reader).await {
            Ok(caller) => caller,
            Err(reason) => {
                tracing::warn!(socket = E::SOCKET, uid = cred.uid, pid = cred.pid, %reason, "operator connection refused");
                let _ = writer
                    .send(ServerFrame::Hello(HelloReply::Refused { reason }))
                    .await;
                return;
            }
        };
        let peer_desc = E::describe(&caller);
        tracing::info!(socket = E::SOCKET, peer = %peer_desc, uid = cred.uid, "operator connected");
        let welcome = ServerFrame::Hello(HelloReply::Welcome {
            version: PROTO_VERSION,
            peer: peer_desc,
        });
        if writer.send(welcome).await.is_err() {
            return;
        }

        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let mut writer_task = tokio::spawn(write_frames(writer, out_rx));
        let conn_cancel = self.shutdown.child_token();
        let tasks = TaskTracker::new();
        self.serve_calls(caller, &mut reader, &out, &conn_cancel, &tasks)
            .await;
        // Subscriptions end with the connection; calls already made finish
        // and their replies are still sent.
        conn_cancel.cancel();
        tasks.close();
        tasks.wait().await;
        drop(out);
        if tokio::time::timeout(WRITER_DRAIN, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
        }
    }

    /// Reads the client's `Hello` and decides; `Err` is the refusal reason.
    async fn handshake(
        &self,
        cred: PeerCred,
        reader: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    ) -> Result<E::Caller, String> {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return Err("the core is shutting down".into()),
            first = tokio::time::timeout(HELLO_TIMEOUT, reader.next()) => first,
        };
        let hello = match first {
            Err(_) => return Err(format!("no Hello within {}s", HELLO_TIMEOUT.as_secs())),
            Ok(None) => return Err("connection closed before Hello".into()),
            Ok(Some(Err(e))) => return Err(format!("unreadable first frame: {e}")),
            Ok(Some(Ok(bytes))) => match postcard::from_bytes::<ClientFrame<E::Request>>(&bytes) {
                Ok(ClientFrame::Hello(hello)) => hello,
                Ok(_) => return Err("the first frame must be Hello".into()),
                Err(e) => return Err(format!("the first frame does not decode: {e}")),
            },
        };
        // The peer check comes first: a refused peer learns nothing else.
        let caller = self.endpoint.admit(cred).await?;
        if hello.version.major != PROTO_VERSION.major {
            return Err(format!(
                "client speaks protocol {}.{}, this core speaks {}.{}; use a matching client",
                hello.version.major, hello.version.minor, PROTO_VERSION.major, PROTO_VERSION.minor
            ));
        }
        Ok(caller)
    }

    /// Reads frames until the peer leaves, breaks the protocol, or the
    /// daemon shuts down; spawns one task per call and per subscription.
    async fn serve_calls(
        &self,
        caller: E::Caller,
        reader: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
        out: &mpsc::Sender<ServerFrame>,
        conn_cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let calls = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
        let subscriptions = Arc::new(Semaphore::new(MAX_SUBSCRIPTIONS));
        loop {
            // Take a call slot before reading: a client over the limit is
            // simply not read from until a call finishes.
            let permit = tokio::select! {
                _ = conn_cancel.cancelled() => return,
                _ = out.closed() => return,
                permit = Arc::clone(&calls).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let frame = tokio::select! {
                _ = conn_cancel.cancelled() => return,
                _ = out.closed() => return,
                frame = reader.next() => frame,
            };
            let bytes = match frame {
                None => return,
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    tracing::debug!(socket = E::SOCKET, error = %e, "operator connection read failed");
                    return;
                }
            };
            match postcard::from_bytes::<ClientFrame<E::Request>>(&bytes) {
                Ok(ClientFrame::Call { id, req }) => {
                    let hive = self.hive.clone();
                    let caller = caller.clone();
                    let out = out.clone();
                    tasks.spawn(async move {
                        let result = E::call(hive, caller, req).await;
                        let _ = out
                            .send(fit_in_frame(ServerFrame::Reply { id, result }))
                            .await;
                        drop(permit);
                    });
                }
                Ok(ClientFrame::Subscribe { id, since }) => {
                    drop(permit);
                    match Arc::clone(&subscriptions).try_acquire_owned() {
                        Ok(sub_permit) => {
                            let stream =
                                events::EventStream::new(self.hive.clone(), id, out.clone());
                            let cancel = conn_cancel.clone();
                            tasks.spawn(async move {
                                stream.run(since, cancel).await;
                                drop(sub_permit);
                            });
                        }
                        Err(_) => {
                            let err = RpcError::new(
                                ErrorCode::Limit,
                                format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
                            );
                            let reply = ServerFrame::Reply {
                                id,
                                result: Err(err),
                            };
                            if out.send(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(ClientFrame::Hello(_)) => {
                    tracing::debug!(socket = E::SOCKET, "ignoring a second Hello");
                }
                Err(e) => match frame_call_id(&bytes) {
                    // The framing is intact, so one bad call need not end the
                    // connection: answer it by its id if it has one.
                    Some(id) => {
                        let err = RpcError::new(
                            ErrorCode::UnknownOp,
                            format!("request does not decode on {}: {e}", E::SOCKET),
                        );
                        let reply = ServerFrame::Reply {
                            id,
                            result: Err(err),
                        };
                        if out.send(reply).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        tracing::debug!(socket = E::SOCKET, error = %e, "undecodable frame; closing");
                        return;
                    }
                },
            }
        }
    }
}

/// A reply too large for one frame would make the writer fail and end the
/// whole connection (every other call on it too); it becomes a `too_large`
/// error for that one call instead. The lists an agent can grow are kept
/// under the limit by `hive::reply_budget`; this is the net under anything
/// else (a long journal, a future verb).
fn fit_in_frame(frame: ServerFrame) -> ServerFrame {
    let size = postcard::serialize_with_flavor(&frame, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX);
    if size <= MAX_FRAME {
        return frame;
    }
    match frame {
        ServerFrame::Reply { id, .. } => {
            tracing::warn!(id, size, "a reply over the frame limit became an error");
            ServerFrame::Reply {
                id,
                result: Err(RpcError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the reply would be {size} bytes, over the {MAX_FRAME}-byte frame limit; \
                         ask for less"
                    ),
                )),
            }
        }
        other => other,
    }
}

/// The reading half of [`FrameCodec`]: raw frame bodies, so that a body that
/// does not decode can still be answered by its call id.
fn frame_reader() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// The id of a `ClientFrame::Call` or `Subscribe` whose request did not
/// decode: postcard writes the variant index, then the id, as varints.
fn frame_call_id(body: &BytesMut) -> Option<u64> {
    let (variant, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
    // 1 = Call, 2 = Subscribe (see `ClientFrame`'s variant order).
    if variant != 1 && variant != 2 {
        return None;
    }
    postcard::take_from_bytes::<u64>(rest)
        .ok()
        .map(|(id, _)| id)
}

/// The one writer of a connection: writes what is ready, flushes once.
async fn write_frames(mut sink: FrameWriter, mut queue: mpsc::Receiver<ServerFrame>) {
    while let Some(frame) = queue.recv().await {
        if sink.feed(frame).await.is_err() {
            return;
        }
        while let Ok(frame) = queue.try_recv() {
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hive_proto::operator::{AdminRequest, WebCall};
    use tokio_util::codec::Encoder;

    fn body<T: serde::Serialize>(frame: T) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::<(), T>::new().encode(frame, &mut buf).unwrap();
        buf.split_off(4)
    }

    #[test]
    fn an_undecodable_call_still_yields_its_id() {
        // An admin verb sent to the web socket does not decode as a web call,
        // but its id is still readable, so the caller hears why.
        let b = body(ClientFrame::Call {
            id: 300,
            req: AdminRequest::AuditVerify,
        });
        assert!(postcard::from_bytes::<ClientFrame<WebCall>>(&b).is_err());
        assert_eq!(frame_call_id(&b), Some(300));
        let b = body(ClientFrame::<AdminRequest>::Subscribe { id: 7, since: 0 });
        assert_eq!(frame_call_id(&b), Some(7));
        assert_eq!(frame_call_id(&BytesMut::from(&b"\xff"[..])), None);
    }

    #[test]
    fn a_reply_over_the_frame_limit_becomes_a_too_large_error_for_that_call() {
        let small = ServerFrame::Reply {
            id: 3,
            result: Ok(OperatorResponse::Journal(vec!["ok".into()])),
        };
        assert_eq!(fit_in_frame(small.clone()), small);
        let huge = ServerFrame::Reply {
            id: 4,
            result: Ok(OperatorResponse::Journal(vec!["x".repeat(MAX_FRAME)])),
        };
        match fit_in_frame(huge) {
            ServerFrame::Reply {
                id: 4,
                result: Err(e),
            } => {
                assert_eq!(e.code, ErrorCode::TooLarge);
                assert!(e.message.contains("frame limit"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        // What it answers always encodes.
        let mut buf = BytesMut::new();
        let huge = ServerFrame::Reply {
            id: 5,
            result: Ok(OperatorResponse::Journal(vec!["x".repeat(MAX_FRAME)])),
        };
        FrameCodec::<(), ServerFrame>::new()
            .encode(fit_in_frame(huge), &mut buf)
            .unwrap();
    }
}
