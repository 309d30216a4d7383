//! One connection on an agent's socket: read lines, answer them, push new
//! messages.
//!
//! The connection task reads request lines while earlier requests are still
//! in flight (up to [`MAX_IN_FLIGHT`]), so a client that pipelines its sends
//! keeps the store's group commit full. Each request's future is first
//! polled before the next line is read (the in-flight arm comes first in a
//! `biased` select), so the hive sees one connection's requests in the order
//! they arrived; replies carry the request's id and are written as they
//! complete. Every byte to the peer goes through one writer task fed by a
//! bounded queue, so replies and pushes never interleave inside a line.
//!
//! The queue is bounded in lines ([`WRITE_QUEUE`]) and in bytes
//! ([`MAX_PENDING_OUT_BYTES`]): each queued line holds one semaphore permit
//! per byte (its newline included) until the writer has written it. A line
//! that finds no room waits, which stops this connection reading requests
//! and pulling messages; if no room comes within [`SLOW_CONSUMER_TIMEOUT`]
//! the peer is a slow consumer and the connection is closed at once. That
//! loses nothing: delivery is at least once, so the next connection gets
//! every unacknowledged message again from the store. Other connections,
//! including the sender of the messages, never wait on this one: the hub's
//! channel does not block its publisher.
//!
//! `recv` is the one transport-specific verb and lives here, as the
//! [`Delivery`] state: subscribe to the inbox first, then read the backlog
//! from the store, and from the first `recv` on push every newly committed
//! message the moment the hub publishes it. The rule that keeps delivery
//! gap-free: the inbox channel is only polled while no store read is in
//! flight and the backlog is fully read; the channel buffers meanwhile, and
//! anything it drops (lag) is read back from the store.
//!
//! This module must never decide who the agent is (the listener told it)
//! and never apply policy (that is [`Hive::agent_call`]'s).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use hive_proto::agent::{
    self, AgentRequest, ErrorBody, Push, RecvResult, RequestLine, ResponseLine,
    MAX_PENDING_OUT_BYTES, MAX_RECV, MAX_RECV_REPLY_BYTES, MAX_WAIT_MS,
};
use hive_proto::codec::{DecodeError, LineCodec};
use hive_proto::view::{ErrorCode, Message};
use hive_proto::AgentName;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::{CATCH_UP_PAGE, MAX_IN_FLIGHT, SLOW_CONSUMER_TIMEOUT, WRITE_QUEUE};
use crate::hive::{Hive, Refusal};

/// How long a closing connection waits for its peer to read the last
/// replies before the writer is dropped.
pub const WRITER_DRAIN: Duration = Duration::from_secs(5);
/// Most messages taken from the inbox channel in one go, so one burst
/// becomes one `recv` reply or one batch of pushes without starving reads.
const INBOX_BATCH: usize = 256;
/// Bytes the writer feeds before it flushes: a burst of small replies costs
/// one syscall, and a large line's bytes are released soon after the socket
/// takes them.
const FLUSH_BATCH: usize = 64 * 1024;
// A line takes at most this many byte permits, and they are counted in u32.
const _: () = assert!(MAX_PENDING_OUT_BYTES <= u32::MAX as usize);

/// A line on its way to the peer and the queue bytes it holds.
struct Queued {
    line: String,
    bytes: OwnedSemaphorePermit,
}

/// A connection, before it is served.
pub(super) struct Connection {
    agent: AgentName,
    hive: Hive,
    shutdown: CancellationToken,
}

impl Connection {
    pub(super) fn new(agent: AgentName, hive: Hive, shutdown: CancellationToken) -> Self {
        Self {
            agent,
            hive,
            shutdown,
        }
    }

    /// Serves the connection until the peer leaves, a fatal line arrives, or
    /// the daemon shuts down (then in-flight requests are still answered).
    pub(super) async fn serve(self, stream: UnixStream) {
        let _counted = self.hive.connection_opened(&self.agent);
        let (rd, wr) = stream.into_split();
        let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
        let out_bytes = Arc::new(Semaphore::new(MAX_PENDING_OUT_BYTES));
        let mut writer = tokio::spawn(write_lines(
            FramedWrite::new(wr, LineCodec::default()),
            out_rx,
        ));
        let mut state = State {
            agent: self.agent,
            hive: self.hive,
            shutdown: self.shutdown,
            out,
            out_bytes,
            in_flight: FuturesUnordered::new(),
            phase: Phase::Reading,
            delivery: Delivery::default(),
        };
        let ended = state.run(FramedRead::new(rd, LineCodec::default())).await;
        // Dropping the state drops the queue's sender: the writer flushes what
        // is queued and ends, unless the peer stopped reading.
        drop(state);
        if ended == Gone::SlowConsumer {
            // It stopped reading: nothing queued would get through. Close now.
            writer.abort();
            let _ = writer.await;
        } else if tokio::time::timeout(WRITER_DRAIN, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}

/// The one writer: takes lines off the queue, writes as many as are ready
/// (up to [`FLUSH_BATCH`] bytes), then flushes once, so a burst of replies
/// costs one syscall, not one each. A line's queue bytes are released once
/// the flush after it has handed it to the socket.
async fn write_lines(
    mut sink: FramedWrite<OwnedWriteHalf, LineCodec>,
    mut queue: mpsc::Receiver<Queued>,
) {
    let mut unflushed = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut next = first;
        let mut fed = 0;
        loop {
            let Queued { line, bytes } = next;
            fed += line.len() + 1;
            if sink.feed(line).await.is_err() {
                return;
            }
            unflushed.push(bytes);
            if fed >= FLUSH_BATCH {
                break;
            }
            match queue.try_recv() {
                Ok(q) => next = q,
                Err(_) => break,
            }
        }
        if SinkExt::<String>::flush(&mut sink).await.is_err() {
            return;
        }
        // Written: give their bytes back to the queue.
        unflushed.clear();
    }
    let _ = SinkExt::<String>::close(&mut sink).await;
}

/// A `recv` that has not been answered yet.
#[derive(Clone, Copy, Debug)]
struct PendingRecv {
    id: u64,
    max: u32,
    wait_ms: u64,
}

type Read = BoxFuture<'static, Result<Vec<Message>, Refusal>>;

/// Where the connection is in its life. Each state says what the loop
/// still does: read requests, answer what is in flight, answer a pending
/// `recv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading requests (up to [`MAX_IN_FLIGHT`] in flight).
    Reading,
    /// The peer has sent its last line (EOF): answer what is in flight and
    /// a pending `recv`, then end.
    PeerDone,
    /// A fatal line, a read error or shutdown: answer what is in flight and
    /// end, without waiting for a pending `recv`.
    Closing,
}

/// Whether new messages are pushed on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// No `recv` has been answered yet: messages wait in the store for the
    /// first one.
    Quiet,
    /// A `recv` was answered: every new message is pushed the moment it
    /// commits.
    Pushing,
}

/// How this connection's view of the inbox stands against the store.
enum Backlog {
    /// Everything the store held when the channel was subscribed (or last
    /// lagged) has been read: new messages come from the channel.
    Current,
    /// The store may hold messages not delivered yet (a full page, or the
    /// channel lagged): read the next page.
    Behind,
    /// A page of at most `page` messages is being read.
    Reading { read: Read, page: u32 },
}

/// A `recv` that has not been answered yet.
#[derive(Clone, Copy, Debug)]
struct Asked {
    p: PendingRecv,
    /// `None` while the store read started for it is in flight; then, if it
    /// found nothing, when the wait for the first new message ends.
    until: Option<Instant>,
}

/// What this connection has delivered and what it is waiting for.
struct Delivery {
    /// The agent's inbox channel, subscribed at the first `recv`.
    inbox: Option<broadcast::Receiver<Arc<Message>>>,
    /// Highest message id sent to this connection. A new connection starts
    /// at 0, so whatever is unacknowledged is delivered again: at least once.
    last_delivered: u64,
    feed: Feed,
    backlog: Backlog,
    /// The one `recv` being answered, if any.
    recv: Option<Asked>,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            inbox: None,
            last_delivered: 0,
            feed: Feed::Quiet,
            backlog: Backlog::Current,
            recv: None,
        }
    }
}

impl Delivery {
    /// Whether the inbox channel may be polled: only while no store read is
    /// in flight and the backlog is read, and only for someone who asked.
    /// This is the rule that keeps delivery gap-free.
    fn takes_inbox(&self) -> bool {
        self.inbox.is_some()
            && matches!(self.backlog, Backlog::Current)
            && (self.feed == Feed::Pushing || self.recv.is_some())
    }

    /// When a `recv` waiting for its first message gives up.
    fn deadline(&self) -> Option<Instant> {
        self.recv.and_then(|a| a.until)
    }

    /// Keeps the messages this connection has not seen and records them as
    /// delivered.
    fn take_new(&mut self, msgs: Vec<Message>) -> Vec<Message> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            if m.id > self.last_delivered {
                self.last_delivered = m.id;
                out.push(m);
            }
        }
        out
    }
}

struct State {
    agent: AgentName,
    hive: Hive,
    shutdown: CancellationToken,
    out: mpsc::Sender<Queued>,
    /// Room left in the write queue, one permit per byte.
    out_bytes: Arc<Semaphore>,
    in_flight: FuturesUnordered<BoxFuture<'static, String>>,
    phase: Phase,
    delivery: Delivery,
}

/// Why serving stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    /// The peer, the writer or a catch-up read is gone: end normally, and
    /// let the writer drain what is queued.
    Closed,
    /// The peer let a line wait [`SLOW_CONSUMER_TIMEOUT`] for room: nothing
    /// queued would get through, so the writer is dropped at once.
    SlowConsumer,
}

impl State {
    /// Serves until the phase says there is nothing left to do, or a step
    /// finds the connection gone; returns how it ended.
    async fn run(&mut self, mut lines: FramedRead<OwnedReadHalf, LineCodec>) -> Gone {
        loop {
            let finished = match self.phase {
                Phase::Reading => false,
                Phase::PeerDone => self.in_flight.is_empty() && self.delivery.recv.is_none(),
                Phase::Closing => self.in_flight.is_empty(),
            };
            if finished {
                return Gone::Closed;
            }
            if matches!(self.delivery.backlog, Backlog::Behind) {
                self.start_read(CATCH_UP_PAGE);
            }
            let reading = self.phase == Phase::Reading;
            let can_read = reading && self.in_flight.len() < MAX_IN_FLIGHT;
            let take_inbox = self.delivery.takes_inbox();
            let deadline = self.delivery.deadline();
            let store_read = matches!(self.delivery.backlog, Backlog::Reading { .. });
            let step = tokio::select! {
                biased;
                _ = self.shutdown.cancelled(), if reading => {
                    self.phase = Phase::Closing;
                    Ok(())
                }
                _ = self.out.closed() => Err(Gone::Closed),
                Some(line) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.send(line).await
                }
                read = poll_read(&mut self.delivery.backlog), if store_read => {
                    self.read_done(read).await
                }
                got = recv_inbox(&mut self.delivery.inbox), if take_inbox => {
                    self.inbox_item(got).await
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.recv_timed_out().await
                }
                frame = lines.next(), if can_read => self.frame(frame).await,
            };
            if let Err(gone) = step {
                return gone;
            }
        }
    }

    /// Queues `line` for the writer, waiting for room in lines and bytes.
    /// A line longer than [`MAX_PENDING_OUT_BYTES`] takes all of it and goes
    /// alone. No room within [`SLOW_CONSUMER_TIMEOUT`]: the peer is not
    /// reading, and the connection ends.
    // `&mut self`, not `&self`: the state is `Send` but not `Sync`.
    async fn send(&mut self, line: String) -> Result<(), Gone> {
        let bytes = (line.len() + 1).min(MAX_PENDING_OUT_BYTES) as u32;
        let (out, out_bytes) = (&self.out, &self.out_bytes);
        let queued = tokio::time::timeout(SLOW_CONSUMER_TIMEOUT, async move {
            let bytes = Arc::clone(out_bytes)
                .acquire_many_owned(bytes)
                .await
                .map_err(|_| Gone::Closed)?;
            out.send(Queued { line, bytes })
                .await
                .map_err(|_| Gone::Closed)
        })
        .await;
        match queued {
            Ok(sent) => sent,
            Err(_) => {
                tracing::warn!(
                    agent = %self.agent,
                    queued_bytes = MAX_PENDING_OUT_BYTES - self.out_bytes.available_permits(),
                    queued_lines = WRITE_QUEUE - self.out.capacity(),
                    waited = ?SLOW_CONSUMER_TIMEOUT,
                    "slow consumer: the peer is not reading what is queued for it; \
                     closing the connection (its unacknowledged messages come again \
                     on its next connection)"
                );
                Err(Gone::SlowConsumer)
            }
        }
    }

    async fn frame(&mut self, frame: Option<Result<Bytes, DecodeError>>) -> Result<(), Gone> {
        match frame {
            Some(Ok(line)) => self.line(&line).await,
            Some(Err(DecodeError::LineTooLong)) => {
                // We cannot know where the next request starts: say why, close.
                self.phase = Phase::Closing;
                let err = ErrorBody::new(
                    ErrorCode::TooLarge,
                    format!(
                        "line is over the {}-byte limit; closing",
                        hive_proto::codec::MAX_LINE
                    ),
                );
                self.send(ResponseLine::err(None, err).to_line()).await
            }
            Some(Err(e)) => {
                tracing::debug!(agent = %self.agent, error = %e, "agent connection read failed");
                self.phase = Phase::Closing;
                Ok(())
            }
            None => {
                self.phase = Phase::PeerDone;
                Ok(())
            }
        }
    }

    async fn line(&mut self, line: &[u8]) -> Result<(), Gone> {
        // Every line but `recv` is traffic and restarts the idle clock
        // (the supervisor's): waiting for mail is not work, so an agent
        // parked in `recv` can still be stopped as idle. Every line, `recv`
        // included, is the status row's last activity.
        self.hive.hub().note_request(&self.agent);
        match agent::parse_request(line) {
            Err((id, err)) => {
                self.hive.hub().touch(&self.agent);
                self.send(ResponseLine::err(id, err).to_line()).await
            }
            Ok(RequestLine {
                id,
                req: AgentRequest::Recv { wait_ms, max },
            }) => self.recv(PendingRecv { id, max, wait_ms }).await,
            Ok(RequestLine { id, req }) => {
                self.hive.hub().touch(&self.agent);
                let hive = self.hive.clone();
                let agent = self.agent.clone();
                self.in_flight.push(Box::pin(async move {
                    let reply = match hive.agent_call(&agent, req).await {
                        Ok(result) => ResponseLine::ok(id, &result),
                        Err(refusal) => ResponseLine::err(Some(id), refusal.into()),
                    };
                    reply.to_line()
                }));
                Ok(())
            }
        }
    }

    /// `recv {wait_ms, max}`: backlog first, else wait for the first push.
    async fn recv(&mut self, p: PendingRecv) -> Result<(), Gone> {
        let bad = if p.max == 0 || p.max > MAX_RECV {
            Some(format!("max must be between 1 and {MAX_RECV}"))
        } else if p.wait_ms > MAX_WAIT_MS {
            Some(format!("wait_ms must be at most {MAX_WAIT_MS}"))
        } else if self.delivery.recv.is_some() {
            None
        } else {
            return self.start_recv(p).await;
        };
        let err = match bad {
            Some(msg) => ErrorBody::new(ErrorCode::BadRequest, msg),
            None => ErrorBody::new(
                ErrorCode::Conflict,
                "a recv is already waiting on this connection",
            ),
        };
        self.send(ResponseLine::err(Some(p.id), err).to_line())
            .await
    }

    async fn start_recv(&mut self, p: PendingRecv) -> Result<(), Gone> {
        let d = &mut self.delivery;
        if d.inbox.is_none() {
            // Subscribe before reading the backlog, so a message committed
            // between the two is in the channel, not lost.
            d.inbox = Some(self.hive.subscribe_inbox(&self.agent));
        }
        if matches!(d.backlog, Backlog::Current) {
            d.recv = Some(Asked { p, until: None });
            self.start_read(p.max);
        } else {
            // A catch-up read is under way; its messages answer this recv.
            d.recv = Some(Asked {
                p,
                until: Some(deadline_after(p.wait_ms)),
            });
        }
        Ok(())
    }

    fn start_read(&mut self, page: u32) {
        let hive = self.hive.clone();
        let agent = self.agent.clone();
        let after = self.delivery.last_delivered;
        let read: Read = Box::pin(async move { hive.unacked(&agent, after, page).await });
        self.delivery.backlog = Backlog::Reading { read, page };
    }

    async fn read_done(
        &mut self,
        (result, page): (Result<Vec<Message>, Refusal>, u32),
    ) -> Result<(), Gone> {
        // The read that just finished was started for the pending recv if
        // that recv has no deadline yet; otherwise it was a catch-up page.
        let for_recv = self.delivery.recv.filter(|a| a.until.is_none());
        let msgs = match result {
            Ok(msgs) => msgs,
            Err(refusal) => {
                tracing::warn!(agent = %self.agent, error = %refusal, "reading the inbox failed");
                self.delivery.backlog = Backlog::Current;
                return match for_recv {
                    Some(a) => {
                        self.delivery.recv = None;
                        self.send(ResponseLine::err(Some(a.p.id), refusal.into()).to_line())
                            .await
                    }
                    // A listener that cannot catch up would silently miss
                    // messages; closing makes its client reconnect and get
                    // them again.
                    None => Err(Gone::Closed),
                };
            }
        };
        self.delivery.backlog = if msgs.len() as u32 >= page {
            Backlog::Behind
        } else {
            Backlog::Current
        };
        match for_recv {
            Some(Asked { p, .. }) if msgs.is_empty() && p.wait_ms > 0 => {
                self.delivery.recv = Some(Asked {
                    p,
                    until: Some(deadline_after(p.wait_ms)),
                });
                Ok(())
            }
            Some(Asked { p, .. }) => {
                self.delivery.recv = None;
                let messages = self.delivery.take_new(msgs);
                self.delivery.feed = Feed::Pushing;
                self.answer_recv(p, messages).await
            }
            None => self.deliver(msgs).await,
        }
    }

    async fn inbox_item(
        &mut self,
        got: Result<Arc<Message>, broadcast::error::RecvError>,
    ) -> Result<(), Gone> {
        use broadcast::error::{RecvError, TryRecvError};
        let first = match got {
            Ok(m) => m,
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(agent = %self.agent, skipped = n, "inbox lagged; re-reading the store");
                self.delivery.backlog = Backlog::Behind;
                return Ok(());
            }
            Err(RecvError::Closed) => {
                self.delivery.inbox = None;
                return Ok(());
            }
        };
        let mut batch = vec![Message::clone(&first)];
        if let Some(rx) = self.delivery.inbox.as_mut() {
            while batch.len() < INBOX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(Message::clone(&m)),
                    Err(TryRecvError::Lagged(_)) => {
                        self.delivery.backlog = Backlog::Behind;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        self.deliver(batch).await
    }

    /// Sends messages this connection has not seen: as the answer to a
    /// waiting `recv`, the rest as pushes.
    async fn deliver(&mut self, msgs: Vec<Message>) -> Result<(), Gone> {
        let d = &mut self.delivery;
        if d.feed == Feed::Quiet && d.recv.is_none() {
            // Nobody asked yet; leave them undelivered for the first recv.
            return Ok(());
        }
        let msgs = d.take_new(msgs);
        if msgs.is_empty() {
            return Ok(());
        }
        if let Some(Asked { p, .. }) = d.recv.take() {
            d.feed = Feed::Pushing;
            return self.answer_recv(p, msgs).await;
        }
        self.push(msgs).await
    }

    /// Answers `p` with as many of `msgs` as fit its `max` and
    /// [`MAX_RECV_REPLY_BYTES`], then pushes the rest, in order. `msgs` are
    /// already recorded as delivered, so every one must go out here.
    async fn answer_recv(&mut self, p: PendingRecv, msgs: Vec<Message>) -> Result<(), Gone> {
        let (reply, rest) = recv_reply(p.id, msgs, p.max);
        self.send(reply).await?;
        self.push(rest).await
    }

    async fn push(&mut self, msgs: Vec<Message>) -> Result<(), Gone> {
        for message in msgs {
            self.send(Push::Message { message }.to_line()).await?;
        }
        Ok(())
    }

    async fn recv_timed_out(&mut self) -> Result<(), Gone> {
        let Some(Asked { p, .. }) = self.delivery.recv.take() else {
            return Ok(());
        };
        self.delivery.feed = Feed::Pushing;
        let empty = RecvResult {
            messages: Vec::new(),
        };
        self.send(ResponseLine::ok(p.id, &empty).to_line()).await
    }
}

/// The reply line to `recv` request `id`: the first of `msgs`, then as many
/// more as keep it within `max` messages and [`MAX_RECV_REPLY_BYTES`]
/// bytes. Returns the line and the messages left out, in order.
fn recv_reply(id: u64, mut msgs: Vec<Message>, max: u32) -> (String, Vec<Message>) {
    let empty = RecvResult {
        messages: Vec::new(),
    };
    let empty = ResponseLine::ok(id, &empty).to_line();
    let mut len = empty.len();
    let mut fit = 0;
    for m in msgs.iter().take(max as usize) {
        // Every message after the first adds its JSON and a comma.
        let add = json_len(m) + usize::from(fit > 0);
        if fit > 0 && len + add > MAX_RECV_REPLY_BYTES {
            break;
        }
        len += add;
        fit += 1;
    }
    let rest = msgs.split_off(fit);
    let line = ResponseLine::ok(id, &RecvResult { messages: msgs }).to_line();
    debug_assert!(fit <= 1 || line.len() <= MAX_RECV_REPLY_BYTES);
    debug_assert_eq!(line.len(), len);
    (line, rest)
}

/// How many bytes `m` takes in a JSON line (key order does not change it).
fn json_len(m: &Message) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, m) {
        Ok(()) => count.0,
        // Cannot happen (strings and numbers); count it as filling a reply.
        Err(_) => MAX_RECV_REPLY_BYTES,
    }
}

fn deadline_after(wait_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(wait_ms)
}

async fn poll_read(backlog: &mut Backlog) -> (Result<Vec<Message>, Refusal>, u32) {
    match backlog {
        Backlog::Reading { read, page } => (read.await, *page),
        _ => std::future::pending().await,
    }
}

async fn recv_inbox(
    inbox: &mut Option<broadcast::Receiver<Arc<Message>>>,
) -> Result<Arc<Message>, broadcast::error::RecvError> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use hive_proto::agent::{MAX_BODY, MAX_OPTIONS};
    use hive_proto::view::ItemKind;
    use hive_proto::Principal;

    use super::*;
    use crate::hive::MAX_OPTION;

    fn message(id: u64, body: String) -> Message {
        Message {
            id,
            kind: ItemKind::Message,
            from: Principal::Operator,
            to: Principal::Agent(AgentName::new("bob").unwrap()),
            body,
            in_reply_to: None,
            question_id: None,
            options: Vec::new(),
            multi: false,
            sent_at: 1,
            acked_at: None,
        }
    }

    fn ids(msgs: &[Message]) -> Vec<u64> {
        msgs.iter().map(|m| m.id).collect()
    }

    #[test]
    fn the_largest_message_the_core_accepts_fits_in_one_recv_reply() {
        // Every byte a control character, so JSON writes each as `\u0001`.
        let worst = |n: usize| "\u{1}".repeat(n);
        let longest_name = AgentName::new(&"a".repeat(31)).unwrap();
        let m = Message {
            id: u64::MAX,
            kind: ItemKind::QuestionCancelled,
            from: Principal::Agent(longest_name.clone()),
            to: Principal::Agent(longest_name),
            body: worst(MAX_BODY),
            in_reply_to: Some(u64::MAX),
            question_id: Some(u64::MAX),
            options: vec![worst(MAX_OPTION); MAX_OPTIONS],
            multi: true,
            sent_at: i64::MIN,
            acked_at: Some(i64::MIN),
        };
        let (line, rest) = recv_reply(u64::MAX, vec![m.clone(), m], MAX_RECV);
        assert!(
            line.len() <= MAX_RECV_REPLY_BYTES,
            "{} bytes for one message",
            line.len()
        );
        assert_eq!(rest.len(), 1, "two of them do not fit");
    }

    #[test]
    fn a_recv_reply_stops_before_its_byte_cap_and_keeps_order() {
        // About 400 KiB of JSON each: two fit in a reply, three do not.
        let big = |id| message(id, "\u{1}".repeat(MAX_BODY));
        let msgs: Vec<Message> = (1..=5).map(big).collect();
        let (line, rest) = recv_reply(9, msgs, MAX_RECV);
        assert!(line.len() <= MAX_RECV_REPLY_BYTES, "{}", line.len());
        let reply: ResponseLine = serde_json::from_str(&line).unwrap();
        let got: RecvResult = serde_json::from_value(reply.result.unwrap()).unwrap();
        assert_eq!(ids(&got.messages), [1, 2]);
        assert_eq!(ids(&rest), [3, 4, 5]);

        // `max` still counts when the bytes would allow more.
        let small: Vec<Message> = (1..=5).map(|id| message(id, "hi".into())).collect();
        let (_, rest) = recv_reply(9, small, 3);
        assert_eq!(ids(&rest), [4, 5]);
    }

    #[test]
    fn a_recv_reply_carries_one_message_even_when_it_alone_is_over_the_cap() {
        let huge = message(1, "x".repeat(MAX_RECV_REPLY_BYTES + 1));
        let (line, rest) = recv_reply(9, vec![huge, message(2, "hi".into())], MAX_RECV);
        assert!(line.len() > MAX_RECV_REPLY_BYTES);
        assert!(
            line.contains("\"id\":1,"),
            "the first message is in the reply"
        );
        assert_eq!(ids(&rest), [2]);
        // And an empty page is an empty reply.
        let (line, rest) = recv_reply(9, Vec::new(), MAX_RECV);
        assert_eq!(line, r#"{"id":9,"ok":true,"result":{"messages":[]}}"#);
        assert!(rest.is_empty());
    }
}
