//! The agent protocol client for `agent.sock`: typed methods for every verb
//! of [`AgentRequest`], pipelined on one connection.
//!
//! Each call takes the next request id from a counter, is encoded to a JSON
//! line in the caller's task and queued for a writer task; a reader task
//! splits what the core sends into lines (up to [`MAX_SERVER_LINE`]), hands each response to the
//! caller whose id it echoes, and forwards every pushed line to [`Pushes`].
//! Thousands of calls may be in flight at once, which is what a benchmark
//! that floods `send` needs.
//!
//! Delivery is at least once: after a reconnect the core delivers every
//! unacknowledged message again, so a consumer drops repeats by
//! [`Message::id`](crate::view::Message::id).
//!
//! This module must never claim an identity: no request carries a sender,
//! the core knows who we are from the socket.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::codec::{AnyDelimiterCodec, FramedRead};

use super::{ClientError, Pending, SlotGuard};
use crate::agent::{
    AgentRequest, AskResult, CancelKind, ErrorBody, LooseEnds, ProposalResult, Push, RecvResult,
    RemindResult, RequestLine, SendResult, ServerLine, WhoamiResult,
};
use crate::codec::{DecodeError, MAX_LINE};
use crate::name::{AgentName, Recipient, RelPath};
use crate::operator::RpcError;
use crate::UnixMillis;

/// How many encoded requests may wait for the writer before a call waits
/// too. Large enough that a pipelining sender keeps the socket busy, small
/// enough that a stalled core stops it quickly.
pub const MAX_QUEUED_LINES: usize = 4096;

/// Most pushes this client holds that its [`Pushes`] consumer has not taken
/// (or that wait for a consumer that never called [`AgentClient::pushes`]).
/// One more and the client closes the connection, as the core does with a
/// slow consumer: on one connection a message is delivered once, so a push
/// dropped here would not come again until the next connection, and closing
/// makes that next connection happen. Nothing is lost: unacknowledged
/// messages are delivered again on it.
pub const MAX_QUEUED_PUSHES: usize = 4096;

/// Longest line this client accepts from the core, newline excluded.
///
/// [`MAX_LINE`] bounds what an agent may send; what the core sends back can
/// be longer: a `recv` or `loose_ends` reply up to [`MAX_RECV_REPLY_BYTES`].
/// This limit keeps a wide margin over that (a core of a later version may
/// send more), and a line over it closes the connection.
///
/// [`MAX_RECV_REPLY_BYTES`]: crate::agent::MAX_RECV_REPLY_BYTES
pub const MAX_SERVER_LINE: usize = 64 * 1024 * 1024;
const _: () = assert!(MAX_SERVER_LINE >= crate::agent::MAX_RECV_REPLY_BYTES);

/// What the core answered to one request: its `result`, or its `error`.
type Reply = Result<serde_json::Value, ErrorBody>;

/// A connection to an agent socket. Cloning is cheap and shares the
/// connection; it closes when the last clone is dropped.
#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("closed", &self.inner.pending.is_closed())
            .finish()
    }
}

struct Inner {
    next_id: AtomicU64,
    pending: Arc<Pending<Reply>>,
    out: mpsc::Sender<Bytes>,
    /// Handed out once by [`AgentClient::pushes`].
    pushes: Mutex<Option<mpsc::Receiver<Push>>>,
    tasks: [AbortHandle; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No handle is left, so nobody waits for a reply: close the socket.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// When a reminder is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemindAt {
    /// This many seconds from now.
    In(u64),
    /// At this time, in Unix milliseconds.
    At(UnixMillis),
}

/// The fields of an `ask` beyond whom and what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AskOptions {
    /// The choices offered; empty for a free-text answer.
    pub options: Vec<String>,
    /// Whether several options may be chosen.
    pub multi: bool,
    /// Seconds until the question expires unanswered.
    pub ttl_s: Option<u64>,
}

impl AgentClient {
    /// Connects to the agent socket at `path`. The agent protocol has no
    /// hello: the socket itself is the identity.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| ClientError::Connect {
                path: path.to_owned(),
                error,
            })?;
        let (rd, wr) = stream.into_split();
        let pending = Arc::new(Pending::new());
        let (out, queued) = mpsc::channel(MAX_QUEUED_LINES);
        let (push_tx, push_rx) = mpsc::channel(MAX_QUEUED_PUSHES);
        let writer = tokio::spawn(write_loop(queued, BufWriter::new(wr), pending.clone()));
        let reader = tokio::spawn(read_loop(
            FramedRead::new(rd, server_line_codec()),
            pending.clone(),
            push_tx,
            writer.abort_handle(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                pending,
                out,
                pushes: Mutex::new(Some(push_rx)),
                tasks: [writer.abort_handle(), reader.abort_handle()],
            }),
        })
    }

    /// The lines the core pushes on this connection (after its first
    /// `recv`). Returns `None` after the first call: there is one consumer.
    pub fn pushes(&self) -> Option<Pushes> {
        let mut slot = self.inner.pushes.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().map(|rx| Pushes { rx })
    }

    /// Whether the connection is known to be dead.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.is_closed()
    }

    /// Sends any request and returns its raw JSON result. The typed methods
    /// below are this plus decoding.
    pub async fn call(&self, req: AgentRequest) -> Result<serde_json::Value, ClientError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let line = encode_line(&RequestLine { id, req })?;
        let reply = inner.pending.insert(id).ok_or(ClientError::Disconnected)?;
        let _slot = SlotGuard {
            pending: &inner.pending,
            id,
        };
        inner
            .out
            .send(line)
            .await
            .map_err(|_| ClientError::Disconnected)?;
        match reply.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClientError::Rpc(RpcError::new(e.code, e.message))),
            Err(_) => Err(ClientError::Disconnected),
        }
    }

    async fn call_as<T: DeserializeOwned>(
        &self,
        op: &str,
        req: AgentRequest,
    ) -> Result<T, ClientError> {
        let v = self.call(req).await?;
        serde_json::from_value(v).map_err(|e| {
            ClientError::Unexpected(format!("the result of {op} does not decode: {e}"))
        })
    }

    /// Who the core thinks I am, and whom I may message.
    pub async fn whoami(&self) -> Result<WhoamiResult, ClientError> {
        self.call_as("whoami", AgentRequest::Whoami).await
    }

    /// Sends `body` to `to`; returns the committed message ids (several for
    /// `*`). Safe to call concurrently: each call is its own request.
    pub async fn send(
        &self,
        to: Recipient,
        body: impl Into<String>,
        in_reply_to: Option<u64>,
    ) -> Result<SendResult, ClientError> {
        let req = AgentRequest::Send {
            to,
            body: body.into(),
            in_reply_to,
        };
        self.call_as("send", req).await
    }

    /// Fetches up to `max` unacknowledged messages, waiting up to `wait_ms`
    /// for the first. From then on this connection also gets pushes.
    pub async fn recv(&self, wait_ms: u64, max: u32) -> Result<RecvResult, ClientError> {
        self.call_as("recv", AgentRequest::Recv { wait_ms, max })
            .await
    }

    /// Marks a message handled so it is not delivered again.
    pub async fn ack(&self, msg_id: u64) -> Result<(), ClientError> {
        self.call(AgentRequest::Ack { msg_id }).await.map(drop)
    }

    /// Asks `to` a question; the answer arrives as an inbox item of kind
    /// `answer` (or `question_expired`).
    pub async fn ask(
        &self,
        to: Recipient,
        question: impl Into<String>,
        opts: AskOptions,
    ) -> Result<AskResult, ClientError> {
        let req = AgentRequest::Ask {
            to,
            question: question.into(),
            options: opts.options,
            multi: opts.multi,
            ttl_s: opts.ttl_s,
        };
        self.call_as("ask", req).await
    }

    /// Answers a question addressed to me.
    pub async fn answer(
        &self,
        question_id: u64,
        answer: impl Into<String>,
    ) -> Result<(), ClientError> {
        let req = AgentRequest::Answer {
            question_id,
            answer: answer.into(),
        };
        self.call(req).await.map(drop)
    }

    /// My open questions (asked and to me), pending proposals and reminders.
    pub async fn loose_ends(&self) -> Result<LooseEnds, ClientError> {
        self.call_as("loose_ends", AgentRequest::LooseEnds).await
    }

    /// Withdraws one of my questions or reminders.
    pub async fn cancel(&self, kind: CancelKind, item_id: u64) -> Result<(), ClientError> {
        self.call(AgentRequest::Cancel { kind, item_id })
            .await
            .map(drop)
    }

    /// Sets my status line on the dashboard.
    pub async fn status(&self, text: impl Into<String>) -> Result<(), ClientError> {
        let req = AgentRequest::Status { text: text.into() };
        self.call(req).await.map(drop)
    }

    /// Sets a reminder; it arrives as an inbox item of kind `reminder`.
    pub async fn remind(
        &self,
        when: RemindAt,
        body: impl Into<String>,
    ) -> Result<RemindResult, ClientError> {
        let (in_s, at) = match when {
            RemindAt::In(s) => (Some(s), None),
            RemindAt::At(t) => (None, Some(t)),
        };
        let req = AgentRequest::Remind {
            in_s,
            at,
            body: body.into(),
        };
        self.call_as("remind", req).await
    }

    /// Proposes new config files for `agent` (myself or one my policy's
    /// `can_propose_for` names); paths are relative to the agent's
    /// directory in the config repo. Returns the approval it opened; the
    /// decision arrives later as an inbox item of kind `approval_decided`.
    pub async fn propose_config(
        &self,
        agent: AgentName,
        files: BTreeMap<RelPath, String>,
        message: impl Into<String>,
    ) -> Result<ProposalResult, ClientError> {
        let req = AgentRequest::ProposeConfig {
            agent,
            files,
            message: message.into(),
        };
        self.call_as("propose_config", req).await
    }

    /// Asks for a new agent `name` with these files (at least
    /// `agent.toml`). It exists only once the operator approves.
    pub async fn request_spawn(
        &self,
        name: AgentName,
        files: BTreeMap<RelPath, String>,
        message: impl Into<String>,
    ) -> Result<ProposalResult, ClientError> {
        let req = AgentRequest::RequestSpawn {
            name,
            files,
            message: message.into(),
        };
        self.call_as("request_spawn", req).await
    }
}

/// The pushed lines of one connection, in the order the core sent them. Ends
/// when the connection does.
pub struct Pushes {
    rx: mpsc::Receiver<Push>,
}

impl Pushes {
    /// The next push, or `None` once the connection is gone.
    pub async fn next_push(&mut self) -> Option<Push> {
        self.rx.recv().await
    }
}

impl Stream for Pushes {
    type Item = Push;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Push>> {
        self.rx.poll_recv(cx)
    }
}

/// Encodes one request line, newline included, refusing one the core would
/// close the connection for.
fn encode_line(req: &RequestLine) -> Result<Bytes, ClientError> {
    let mut line = serde_json::to_vec(req)
        .map_err(|e| ClientError::Unexpected(format!("cannot encode the request: {e}")))?;
    if line.len() > MAX_LINE {
        return Err(ClientError::Encode(DecodeError::LineTooLong));
    }
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// Writes queued lines, flushing only when the queue is empty so pipelined
/// requests share writes.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut queued: mpsc::Receiver<Bytes>,
    mut wr: W,
    pending: Arc<Pending<Reply>>,
) {
    'outer: while let Some(line) = queued.recv().await {
        if wr.write_all(&line).await.is_err() {
            break;
        }
        while let Ok(line) = queued.try_recv() {
            if wr.write_all(&line).await.is_err() {
                break 'outer;
            }
        }
        if wr.flush().await.is_err() {
            break;
        }
    }
    pending.close();
    let _ = wr.shutdown().await;
}

/// Routes responses by id and forwards pushes until the connection ends.
async fn read_loop(
    mut rd: FramedRead<OwnedReadHalf, AnyDelimiterCodec>,
    pending: Arc<Pending<Reply>>,
    pushes: mpsc::Sender<Push>,
    writer: AbortHandle,
) {
    while let Some(Ok(line)) = rd.next().await {
        match ServerLine::parse(&line) {
            Ok(ServerLine::Response(resp)) => {
                // A response without an id answers a line the core could not
                // read; we only send well-formed lines, so there is no caller
                // to give it to.
                let Some(id) = resp.id else { continue };
                let Some(waiter) = pending.take(id) else {
                    continue;
                };
                let reply = match (resp.ok, resp.error) {
                    (true, _) => Ok(resp.result.unwrap_or(serde_json::Value::Null)),
                    (false, Some(e)) => Err(e),
                    (false, None) => Err(ErrorBody::new(
                        crate::view::ErrorCode::Internal,
                        "the core refused the request without saying why",
                    )),
                };
                let _ = waiter.send(reply);
            }
            Ok(ServerLine::Push(push)) => match pushes.try_send(push) {
                Ok(()) => {}
                // The consumer is MAX_QUEUED_PUSHES behind: close, and let
                // the next connection deliver the unacknowledged again.
                Err(mpsc::error::TrySendError::Full(_)) => break,
                // The consumer dropped its `Pushes`: it wants none.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            // A push of a kind this client does not know (a newer core) is
            // skipped; anything else unreadable means the ends disagree about
            // the protocol, and going on could mismatch replies.
            Err(_) if is_push(&line) => {}
            Err(_) => break,
        }
    }
    pending.close();
    writer.abort();
}

fn server_line_codec() -> AnyDelimiterCodec {
    AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_SERVER_LINE)
}

fn is_push(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .map(|v| v.get("event").is_some() && v.get("id").is_none())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{parse_request, Done, ResponseLine};
    use crate::codec::LineCodec;
    use crate::view::{ErrorCode, ItemKind, Message, Principal};
    use crate::AgentName;
    use futures::SinkExt;
    use tokio::net::UnixListener;
    use tokio_util::codec::Framed;

    fn socket() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    fn message(id: u64, body: &str) -> Message {
        Message {
            id,
            kind: ItemKind::Message,
            from: Principal::Operator,
            to: Principal::Agent(AgentName::new("alice").unwrap()),
            body: body.into(),
            in_reply_to: None,
            question_id: None,
            options: vec![],
            multi: false,
            sent_at: 1,
            acked_at: None,
        }
    }

    /// A fake core for one connection: answers each request line as the
    /// protocol says, from a small script.
    async fn serve_one(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Framed::new(stream, LineCodec::default());
        let mut next_msg = 100;
        while let Some(Ok(line)) = conn.next().await {
            let req = match parse_request(&line) {
                Ok(r) => r,
                Err((id, e)) => {
                    conn.send(ResponseLine::err(id, e).to_line()).await.unwrap();
                    continue;
                }
            };
            let reply = match req.req {
                AgentRequest::Whoami => ResponseLine::ok(
                    req.id,
                    &WhoamiResult {
                        name: "alice".into(),
                        allowed_recipients: vec!["*".into()],
                    },
                ),
                AgentRequest::Send { body, .. } if body == "forbidden" => ResponseLine::err(
                    Some(req.id),
                    ErrorBody::new(ErrorCode::Forbidden, "bob is not an allowed recipient"),
                ),
                AgentRequest::Send { .. } => {
                    next_msg += 1;
                    ResponseLine::ok(
                        req.id,
                        &SendResult {
                            ids: vec![next_msg],
                        },
                    )
                }
                AgentRequest::Recv { .. } => {
                    // Reply, then push two messages as the core does after a
                    // connection's first recv.
                    let r = ResponseLine::ok(
                        req.id,
                        &RecvResult {
                            messages: vec![message(1, "waiting")],
                        },
                    );
                    conn.send(r.to_line()).await.unwrap();
                    for (id, body) in [(2, "pushed"), (3, "again")] {
                        let push = Push::Message {
                            message: message(id, body),
                        };
                        conn.send(push.to_line()).await.unwrap();
                    }
                    // A push kind from a newer core must be skipped.
                    conn.send(r#"{"event":"approval","id_of":3}"#)
                        .await
                        .unwrap();
                    continue;
                }
                AgentRequest::Remind { in_s, at, .. } => ResponseLine::ok(
                    req.id,
                    &RemindResult {
                        reminder_id: 9,
                        due_at: at.unwrap_or(in_s.unwrap_or(0) as i64 * 1000),
                    },
                ),
                _ => ResponseLine::ok(req.id, &Done {}),
            };
            conn.send(reply.to_line()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn thousands_of_pipelined_sends_each_get_their_own_reply() {
        let (_dir, path, listener) = socket();
        tokio::spawn(serve_one(listener));
        let client = AgentClient::connect(&path).await.unwrap();
        let sends = (0..2000).map(|n| {
            let client = client.clone();
            async move {
                client
                    .send(Recipient::parse("bob").unwrap(), format!("m{n}"), None)
                    .await
                    .unwrap()
                    .ids
            }
        });
        let mut ids: Vec<u64> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2000, "every send got a distinct committed id");
    }

    #[tokio::test]
    async fn typed_verbs_and_errors_come_back_typed() {
        let (_dir, path, listener) = socket();
        tokio::spawn(serve_one(listener));
        let client = AgentClient::connect(&path).await.unwrap();
        let me = client.whoami().await.unwrap();
        assert_eq!(me.name, "alice");
        let err = client
            .send(Recipient::parse("bob").unwrap(), "forbidden", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Rpc(e) if e.code == ErrorCode::Forbidden),
            "{err}"
        );
        client.cancel(CancelKind::Question, 4).await.unwrap();
        // The connection is still usable after refused requests.
        client.ack(5).await.unwrap();
        client.status("working").await.unwrap();
        let r = client.remind(RemindAt::In(3), "look").await.unwrap();
        assert_eq!((r.reminder_id, r.due_at), (9, 3000));
    }

    #[tokio::test]
    async fn pushes_arrive_on_their_own_stream_after_recv() {
        let (_dir, path, listener) = socket();
        tokio::spawn(serve_one(listener));
        let client = AgentClient::connect(&path).await.unwrap();
        let mut pushes = client.pushes().unwrap();
        assert!(client.pushes().is_none(), "pushes has one consumer");
        let first = client.recv(0, 10).await.unwrap();
        assert_eq!(first.messages[0].id, 1);
        let mut got = Vec::new();
        for _ in 0..2 {
            match pushes.next_push().await.unwrap() {
                Push::Message { message } => got.push(message.body),
            }
        }
        assert_eq!(got, vec!["pushed", "again"]);
        // The unknown push kind was skipped without closing the connection.
        client.status("still here").await.unwrap();
    }

    #[tokio::test]
    async fn a_line_over_the_limit_fails_only_its_own_call() {
        let (_dir, path, listener) = socket();
        tokio::spawn(serve_one(listener));
        let client = AgentClient::connect(&path).await.unwrap();
        let huge = "x".repeat(MAX_LINE + 1);
        let err = client.status(huge).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Encode(DecodeError::LineTooLong)),
            "{err}"
        );
        assert_eq!(client.whoami().await.unwrap().name, "alice");
    }

    #[tokio::test]
    async fn a_reply_longer_than_a_request_may_be_is_read_whole() {
        let (_dir, path, listener) = socket();
        let big = "y".repeat(MAX_LINE);
        let sent = big.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Framed::new(stream, LineCodec::default());
            let req = parse_request(&conn.next().await.unwrap().unwrap()).unwrap();
            let messages = vec![message(1, &sent), message(2, &sent)];
            let reply = ResponseLine::ok(req.id, &RecvResult { messages });
            conn.send(reply.to_line()).await.unwrap();
            let _ = conn.next().await;
        });
        let client = AgentClient::connect(&path).await.unwrap();
        let got = client.recv(0, 2).await.unwrap();
        assert_eq!(got.messages.len(), 2);
        assert_eq!(got.messages[1].body, big);
    }

    #[tokio::test]
    async fn when_the_core_goes_away_calls_fail_and_pushes_end() {
        let (_dir, path, listener) = socket();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Framed::new(stream, LineCodec::default());
            let _ = conn.next().await;
        });
        let client = AgentClient::connect(&path).await.unwrap();
        let mut pushes = client.pushes().unwrap();
        let err = client.whoami().await.unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err}");
        assert!(pushes.next_push().await.is_none());
        assert!(client.is_closed());
        assert!(matches!(
            client.ack(1).await,
            Err(ClientError::Disconnected)
        ));
    }

    #[tokio::test]
    async fn a_consumer_too_far_behind_on_pushes_loses_the_connection_not_messages() {
        let (_dir, path, listener) = socket();
        let total = MAX_QUEUED_PUSHES + 10;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Framed::new(stream, LineCodec::default());
            for id in 1..=total as u64 {
                let push = Push::Message {
                    message: message(id, "p"),
                };
                if conn.send(push.to_line()).await.is_err() {
                    return id;
                }
            }
            // Wait for the client to hang up.
            while let Some(Ok(_)) = conn.next().await {}
            total as u64
        });
        let client = AgentClient::connect(&path).await.unwrap();
        let mut pushes = client.pushes().unwrap();
        // Nobody reads until the connection is gone.
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while !client.is_closed() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the client closed the connection");
        let err = client.whoami().await.unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err:?}");
        // What was queued is still there, in order, and no more than that.
        let mut got = 0;
        while let Some(Push::Message { message }) = pushes.next_push().await {
            got += 1;
            assert_eq!(message.id, got);
        }
        assert_eq!(got as usize, MAX_QUEUED_PUSHES);
        server.await.unwrap();
    }
}
