//! The operator RPC client: `hive-web` on `web.sock` (requests are
//! [`WebCall`](crate::operator::WebCall)s) and `hivectl` on `admin.sock`
//! ([`AdminRequest`](crate::operator::AdminRequest)s).
//!
//! [`OperatorClient::connect`] exchanges hellos and then hands the socket to
//! two background tasks: a writer that sends the frames callers queued, and a
//! reader that routes each [`ServerFrame::Reply`] to its caller by id. Any
//! number of [`OperatorClient::call`]s may be in flight at once on one
//! connection. [`subscribe`] opens a connection of its own that carries the
//! event stream and nothing else.
//!
//! This module must never retry a call by itself: a call that may have
//! reached the core is the caller's to retry or not (an `Approve` must not be
//! sent twice behind the operator's back).

use std::marker::PhantomData;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::codec::{Encoder, Framed, FramedRead};

use super::{ClientError, Pending, SlotGuard};
use crate::codec::FrameCodec;
use crate::event::EventRecord;
use crate::operator::{
    ClientFrame, Hello, HelloReply, OperatorResponse, RpcError, ServerFrame, Version,
};
use crate::PROTO_VERSION;

/// How long the core has to answer our hello before we give up.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How many encoded calls may wait for the writer before `call` waits too:
/// this is the backpressure that keeps a fast caller from queueing without
/// bound while the core is slow to read.
pub const MAX_QUEUED_FRAMES: usize = 1024;

/// What a client announces in its hello when the caller names none.
pub const DEFAULT_CLIENT_NAME: &str = concat!("hive-proto ", env!("CARGO_PKG_VERSION"));

/// What the core said back to one call.
type Reply = Result<OperatorResponse, RpcError>;

/// A multiplexed connection to an operator socket, carrying requests of type
/// `R`. Cloning is cheap and shares the connection; the connection closes
/// when the last clone is dropped.
pub struct OperatorClient<R> {
    inner: Arc<Inner>,
    _req: PhantomData<fn(R)>,
}

impl<R> Clone for OperatorClient<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _req: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for OperatorClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorClient")
            .field("peer", &self.inner.peer)
            .field("server_version", &self.inner.server_version)
            .field("closed", &self.inner.pending.is_closed())
            .finish()
    }
}

struct Inner {
    next_id: AtomicU64,
    pending: Arc<Pending<Reply>>,
    out: mpsc::Sender<Bytes>,
    peer: String,
    server_version: Version,
    tasks: [AbortHandle; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nobody can call any more, so nobody waits for a reply: stop both
        // tasks, which drops the socket and tells the core we are gone.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl<R: Serialize> OperatorClient<R> {
    /// Connects to the socket at `path` and exchanges hellos, announcing
    /// [`DEFAULT_CLIENT_NAME`].
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_as(path, DEFAULT_CLIENT_NAME).await
    }

    /// Connects and exchanges hellos, announcing `client` (free text for the
    /// core's log, e.g. `hivectl 0.1.0`).
    pub async fn connect_as(path: impl AsRef<Path>, client: &str) -> Result<Self, ClientError> {
        let stream = connect_unix(path.as_ref()).await?;
        let (rd, wr) = stream.into_split();
        // The read half only decodes, so its codec needs no request type; that
        // keeps `R` out of the background tasks.
        let mut rd = FramedRead::new(rd, FrameCodec::<ServerFrame, ()>::new());
        let mut wr = BufWriter::new(wr);
        let hello = encode(ClientFrame::<R>::Hello(Hello {
            version: PROTO_VERSION,
            client: client.to_owned(),
        }))?;
        let (server_version, peer) = tokio::time::timeout(HELLO_TIMEOUT, async {
            wr.write_all(&hello).await?;
            wr.flush().await?;
            read_hello(rd.next().await)
        })
        .await
        .map_err(|_| ClientError::Refused {
            reason: format!(
                "the core did not answer the hello within {}s",
                HELLO_TIMEOUT.as_secs()
            ),
        })??;

        let pending = Arc::new(Pending::new());
        let (out, queued) = mpsc::channel(MAX_QUEUED_FRAMES);
        let writer = tokio::spawn(write_loop(queued, wr, pending.clone()));
        let reader = tokio::spawn(read_loop(rd, pending.clone(), writer.abort_handle()));
        Ok(Self {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                pending,
                out,
                peer,
                server_version,
                tasks: [writer.abort_handle(), reader.abort_handle()],
            }),
            _req: PhantomData,
        })
    }

    /// Sends `req` and waits for the core's answer. Many calls may run at
    /// once on one connection; their replies are matched by id. Dropping the
    /// future forgets the call (the core may still carry it out).
    pub async fn call(&self, req: R) -> Result<OperatorResponse, ClientError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode(ClientFrame::Call { id, req })?;
        let reply = inner.pending.insert(id).ok_or(ClientError::Disconnected)?;
        let _slot = SlotGuard {
            pending: &inner.pending,
            id,
        };
        inner
            .out
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        match reply.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ClientError::Rpc(e)),
            Err(_) => Err(ClientError::Disconnected),
        }
    }
}

impl<R> OperatorClient<R> {
    /// Who the core believes is calling (from its hello reply).
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// The protocol version the core announced.
    pub fn server_version(&self) -> Version {
        self.inner.server_version
    }

    /// Whether the connection is known to be dead; every call would fail
    /// with [`ClientError::Disconnected`], so it is time to reconnect.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.is_closed()
    }
}

/// One item of an event stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Streamed {
    Event(EventRecord),
    /// Events this stream needed were pruned from the core's store (`since`
    /// is older than what it keeps, or this stream fell that far behind).
    /// The stream ends here: reload state, then subscribe again from
    /// `resume_from`.
    Lagged {
        resume_from: u64,
    },
}

/// The id our one `Subscribe` carries; a subscription has its own connection,
/// so any id would do.
const SUBSCRIBE_ID: u64 = 1;

/// Opens a connection of its own to the operator socket at `path` and
/// subscribes to every event with `seq > since`.
///
/// A `Subscribe` frame encodes the same whatever the socket's request type
/// (postcard writes the variant index and the two numbers), so this serves
/// `web.sock` and `admin.sock` alike.
pub async fn subscribe(path: impl AsRef<Path>, since: u64) -> Result<EventStream, ClientError> {
    subscribe_as(path, since, DEFAULT_CLIENT_NAME).await
}

/// [`subscribe`], announcing `client` in the hello.
pub async fn subscribe_as(
    path: impl AsRef<Path>,
    since: u64,
    client: &str,
) -> Result<EventStream, ClientError> {
    let stream = connect_unix(path.as_ref()).await?;
    let mut framed = Framed::new(stream, FrameCodec::<ServerFrame, SubscribeFrame>::new());
    tokio::time::timeout(HELLO_TIMEOUT, async {
        framed
            .send(ClientFrame::Hello(Hello {
                version: PROTO_VERSION,
                client: client.to_owned(),
            }))
            .await
            .map_err(ClientError::Encode)?;
        read_hello(framed.next().await)?;
        framed
            .send(ClientFrame::Subscribe {
                id: SUBSCRIBE_ID,
                since,
            })
            .await
            .map_err(ClientError::Encode)
    })
    .await
    .map_err(|_| ClientError::Refused {
        reason: format!(
            "the core did not answer the hello within {}s",
            HELLO_TIMEOUT.as_secs()
        ),
    })??;
    Ok(EventStream {
        framed,
        last_seq: since,
        done: false,
    })
}

/// The request type of a subscription connection: it never sends a call, so
/// no request type is needed (see [`subscribe`] for why the bytes match).
type SubscribeFrame = ClientFrame<()>;

/// The events of one subscription, oldest first. It yields
/// `Err(Disconnected)` once if the core goes away, ends after
/// [`Streamed::Lagged`], and after any error.
pub struct EventStream {
    framed: Framed<UnixStream, FrameCodec<ServerFrame, SubscribeFrame>>,
    last_seq: u64,
    done: bool,
}

impl EventStream {
    /// The `seq` of the last event yielded (or `since`): subscribe again from
    /// here after a disconnect.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The next item, or `None` once the stream has ended.
    pub async fn next_item(&mut self) -> Option<Result<Streamed, ClientError>> {
        StreamExt::next(self).await
    }

    fn on_frame(&mut self, frame: ServerFrame) -> Option<Result<Streamed, ClientError>> {
        match frame {
            ServerFrame::Event { id, record } if id == SUBSCRIBE_ID => {
                self.last_seq = self.last_seq.max(record.seq);
                Some(Ok(Streamed::Event(record)))
            }
            ServerFrame::Lagged { id, resume_from } if id == SUBSCRIBE_ID => {
                self.done = true;
                Some(Ok(Streamed::Lagged { resume_from }))
            }
            ServerFrame::Reply { id, result: Err(e) } if id == SUBSCRIBE_ID => {
                self.done = true;
                Some(Err(ClientError::Rpc(e)))
            }
            other => {
                self.done = true;
                Some(Err(ClientError::Unexpected(format!(
                    "{} on an event stream",
                    frame_name(&other)
                ))))
            }
        }
    }
}

impl Stream for EventStream {
    type Item = Result<Streamed, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.framed.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(this.on_frame(frame)),
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(ClientError::Decode(e))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Err(ClientError::Disconnected)))
            }
        }
    }
}

async fn connect_unix(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path)
        .await
        .map_err(|error| ClientError::Connect {
            path: path.to_owned(),
            error,
        })
}

/// Encodes one frame in the caller's task, so a request over the size limit
/// fails its own call and not the connection.
fn encode<R: Serialize>(frame: ClientFrame<R>) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    FrameCodec::<(), ClientFrame<R>>::new()
        .encode(frame, &mut buf)
        .map_err(ClientError::Encode)?;
    Ok(buf.freeze())
}

/// Checks the core's first frame: a welcome with our major version.
fn read_hello(
    frame: Option<Result<ServerFrame, crate::codec::DecodeError>>,
) -> Result<(Version, String), ClientError> {
    match frame {
        None => Err(ClientError::Disconnected),
        Some(Err(e)) => Err(ClientError::Decode(e)),
        Some(Ok(ServerFrame::Hello(HelloReply::Refused { reason }))) => {
            Err(ClientError::Refused { reason })
        }
        Some(Ok(ServerFrame::Hello(HelloReply::Welcome { version, peer }))) => {
            if version.major != PROTO_VERSION.major {
                return Err(ClientError::Refused {
                    reason: format!(
                        "the core speaks protocol {}.{} and this client {}.{}; \
                         upgrade the older one",
                        version.major, version.minor, PROTO_VERSION.major, PROTO_VERSION.minor
                    ),
                });
            }
            Ok((version, peer))
        }
        Some(Ok(other)) => Err(ClientError::Unexpected(format!(
            "{} instead of a hello",
            frame_name(&other)
        ))),
    }
}

fn frame_name(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Hello(_) => "a hello",
        ServerFrame::Reply { .. } => "a reply",
        ServerFrame::Event { .. } => "an event",
        ServerFrame::Lagged { .. } => "a lagged notice",
    }
}

/// Writes queued frames, flushing only when the queue is empty so that many
/// concurrent calls share a write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut queued: mpsc::Receiver<Bytes>,
    mut wr: W,
    pending: Arc<Pending<Reply>>,
) {
    while let Some(frame) = queued.recv().await {
        if wr.write_all(&frame).await.is_err() {
            break;
        }
        let mut failed = false;
        while let Ok(frame) = queued.try_recv() {
            if wr.write_all(&frame).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || wr.flush().await.is_err() {
            break;
        }
    }
    pending.close();
    let _ = wr.shutdown().await;
}

/// Routes replies to their callers until the connection ends, then fails
/// every call still waiting.
async fn read_loop(
    mut rd: FramedRead<OwnedReadHalf, FrameCodec<ServerFrame, ()>>,
    pending: Arc<Pending<Reply>>,
    writer: AbortHandle,
) {
    while let Some(Ok(frame)) = rd.next().await {
        match frame {
            ServerFrame::Reply { id, result } => {
                // No waiter means the caller gave up on this call.
                if let Some(waiter) = pending.take(id) {
                    let _ = waiter.send(result);
                }
            }
            // Only replies belong on a call connection; anything else means
            // the two ends disagree about the protocol, and guessing on would
            // risk handing a caller someone else's answer.
            _ => break,
        }
    }
    pending.close();
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::{AdminRequest, OperatorRequest, WebCall};
    use crate::view::ErrorCode;
    use tokio::net::UnixListener;

    type ServerConn = Framed<UnixStream, FrameCodec<ClientFrame<AdminRequest>, ServerFrame>>;

    fn welcome() -> ServerFrame {
        ServerFrame::Hello(HelloReply::Welcome {
            version: PROTO_VERSION,
            peer: "root".into(),
        })
    }

    /// Accepts one connection and checks the client's hello.
    async fn accept(listener: &UnixListener) -> ServerConn {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Framed::new(stream, FrameCodec::new());
        match conn.next().await.unwrap().unwrap() {
            ClientFrame::Hello(h) => assert_eq!(h.version, PROTO_VERSION),
            other => panic!("expected a hello, got {other:?}"),
        }
        conn
    }

    fn socket() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_replies_even_out_of_order() {
        let (_dir, path, listener) = socket();
        let server = tokio::spawn(async move {
            let mut conn = accept(&listener).await;
            conn.send(welcome()).await.unwrap();
            // Collect every call first, then answer them newest first, so
            // only routing by id can give each caller its own reply.
            let mut calls = Vec::new();
            while calls.len() < 50 {
                match conn.next().await.unwrap().unwrap() {
                    ClientFrame::Call {
                        id,
                        req: AdminRequest::Operator(OperatorRequest::Journal { lines, .. }),
                    } => calls.push((id, lines)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            for (id, lines) in calls.into_iter().rev() {
                let result = Ok(OperatorResponse::Journal(vec![lines.to_string()]));
                conn.send(ServerFrame::Reply { id, result }).await.unwrap();
            }
            conn
        });
        let client = OperatorClient::<AdminRequest>::connect(&path)
            .await
            .unwrap();
        assert_eq!(client.peer(), "root");
        let calls = (0..50u32).map(|n| {
            let client = client.clone();
            async move {
                let req = AdminRequest::Operator(OperatorRequest::Journal {
                    agent: "alice".parse().unwrap(),
                    lines: n,
                });
                (n, client.call(req).await.unwrap())
            }
        });
        for (n, resp) in futures::future::join_all(calls).await {
            assert_eq!(resp, OperatorResponse::Journal(vec![n.to_string()]));
        }
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn a_refused_call_is_an_rpc_error_and_the_connection_stays_usable() {
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let mut conn = accept(&listener).await;
            conn.send(welcome()).await.unwrap();
            while let Some(Ok(ClientFrame::Call { id, req })) = conn.next().await {
                let result = match req {
                    AdminRequest::AuditVerify => Err(RpcError::new(
                        ErrorCode::Conflict,
                        "audit row 3 does not match its hash",
                    )),
                    _ => Ok(OperatorResponse::Done),
                };
                conn.send(ServerFrame::Reply { id, result }).await.unwrap();
            }
        });
        let client = OperatorClient::<AdminRequest>::connect(&path)
            .await
            .unwrap();
        let err = client.call(AdminRequest::AuditVerify).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rpc(e) if e.code == ErrorCode::Conflict),
            "{err}"
        );
        let ok = client
            .call(AdminRequest::Operator(OperatorRequest::Health))
            .await
            .unwrap();
        assert_eq!(ok, OperatorResponse::Done);
    }

    #[tokio::test]
    async fn when_the_core_goes_away_pending_and_later_calls_fail_disconnected() {
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let mut conn = accept(&listener).await;
            conn.send(welcome()).await.unwrap();
            // Read one call, then drop the connection without answering.
            let _ = conn.next().await;
        });
        let client = OperatorClient::<AdminRequest>::connect(&path)
            .await
            .unwrap();
        let err = client
            .call(AdminRequest::Operator(OperatorRequest::ListAgents))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err}");
        assert!(client.is_closed());
        let err = client
            .call(AdminRequest::Operator(OperatorRequest::ListAgents))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err}");
    }

    #[tokio::test]
    async fn a_refused_hello_and_a_major_mismatch_are_refused_with_the_reason() {
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let mut conn = accept(&listener).await;
            conn.send(ServerFrame::Hello(HelloReply::Refused {
                reason: "peer uid 1000 is not hive-web".into(),
            }))
            .await
            .unwrap();
            let mut conn = accept(&listener).await;
            conn.send(ServerFrame::Hello(HelloReply::Welcome {
                version: Version {
                    major: PROTO_VERSION.major + 1,
                    minor: 0,
                },
                peer: "root".into(),
            }))
            .await
            .unwrap();
        });
        let err = OperatorClient::<AdminRequest>::connect(&path)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the core refused the connection: peer uid 1000 is not hive-web"
        );
        let err = OperatorClient::<AdminRequest>::connect(&path)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused { reason } if reason.contains("protocol 2.0")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = OperatorClient::<WebCall>::connect(&path).await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }));
        assert!(err.to_string().contains("nope.sock"), "{err}");
    }

    #[tokio::test]
    async fn subscribe_streams_events_then_ends_after_lagged() {
        use crate::event::Event;
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let mut conn = accept(&listener).await;
            conn.send(welcome()).await.unwrap();
            let since = match conn.next().await.unwrap().unwrap() {
                ClientFrame::Subscribe { since, .. } => since,
                other => panic!("expected subscribe, got {other:?}"),
            };
            for seq in since + 1..since + 3 {
                let record = EventRecord {
                    seq,
                    at: 0,
                    event: Event::QuestionExpired { id: seq },
                };
                conn.send(ServerFrame::Event { id: 1, record })
                    .await
                    .unwrap();
            }
            conn.send(ServerFrame::Lagged {
                id: 1,
                resume_from: 40,
            })
            .await
            .unwrap();
            // Keep the connection open: the stream must end on its own.
            let _ = conn.next().await;
        });
        let mut events = subscribe(&path, 7).await.unwrap();
        let mut seqs = Vec::new();
        let mut lagged = None;
        while let Some(item) = events.next_item().await {
            match item.unwrap() {
                Streamed::Event(r) => seqs.push(r.seq),
                Streamed::Lagged { resume_from } => lagged = Some(resume_from),
            }
        }
        assert_eq!(seqs, vec![8, 9]);
        assert_eq!(events.last_seq(), 9);
        assert_eq!(lagged, Some(40));
    }

    #[tokio::test]
    async fn a_subscription_says_disconnected_when_the_core_goes_away() {
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let mut conn = accept(&listener).await;
            conn.send(welcome()).await.unwrap();
            let _ = conn.next().await;
        });
        let mut events = subscribe(&path, 0).await.unwrap();
        assert!(matches!(
            events.next_item().await,
            Some(Err(ClientError::Disconnected))
        ));
        assert!(events.next_item().await.is_none());
    }

    #[test]
    fn a_subscribe_frame_encodes_the_same_for_every_socket() {
        let unit = encode(ClientFrame::<()>::Subscribe { id: 1, since: 300 }).unwrap();
        let web = encode(ClientFrame::<WebCall>::Subscribe { id: 1, since: 300 }).unwrap();
        let admin = encode(ClientFrame::<AdminRequest>::Subscribe { id: 1, since: 300 }).unwrap();
        assert_eq!(unit, web);
        assert_eq!(unit, admin);
    }
}
