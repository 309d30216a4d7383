//! One `Subscribe { id, since }` stream: every stored event with
//! `seq > since`, then each new one as it commits.
//!
//! The live channel is subscribed *before* the backlog is read, so an event
//! that commits in between is in the channel; anything already sent is
//! skipped by `seq`. When the channel lags, the stream re-reads the gap from
//! the store instead of telling the client to reload: the channel is only a
//! shortcut. The store, though, keeps only the newest `event_retention`
//! events (the scheduler prunes the rest): when events the stream still owes
//! its client (after `since`, or after the last one it sent) have been
//! pruned, it sends `ServerFrame::Lagged { resume_from }`, the oldest kept
//! `seq` minus one, and ends. The client reloads its state and subscribes
//! again from `resume_from`, as `hive-web` and `hivectl` do. This module
//! must never invent, reorder or silently skip events.

use hive_proto::event::EventRecord;
use hive_proto::operator::{RpcError, ServerFrame};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::hive::{EventsAfter, Hive};

/// Events read from the store per page.
pub const EVENT_PAGE: u32 = 500;

pub(super) struct EventStream {
    hive: Hive,
    id: u64,
    out: mpsc::Sender<ServerFrame>,
    /// Highest `seq` sent on this stream.
    last: u64,
}

/// The client is gone or the stream failed; stop.
struct Stop;

impl EventStream {
    pub(super) fn new(hive: Hive, id: u64, out: mpsc::Sender<ServerFrame>) -> Self {
        Self {
            hive,
            id,
            out,
            last: 0,
        }
    }

    pub(super) async fn run(mut self, since: u64, cancel: CancellationToken) {
        self.last = since;
        let mut live = self.hive.subscribe_events();
        if self.backlog().await.is_err() {
            return;
        }
        loop {
            let got = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.out.closed() => return,
                got = live.recv() => got,
            };
            let step = match got {
                Ok(record) => self.send(record).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "event stream lagged; re-reading the store");
                    self.backlog().await
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Sends every stored event after `last`, page by page; if some of them
    /// were pruned, sends `Lagged` instead and stops the stream.
    async fn backlog(&mut self) -> Result<(), Stop> {
        loop {
            let page = match self.hive.events_after(self.last, EVENT_PAGE).await {
                Ok(EventsAfter::Events(page)) => page,
                Ok(EventsAfter::Pruned { resume_from }) => {
                    tracing::info!(
                        since = self.last,
                        resume_from,
                        "events a subscriber needs were pruned; sending lagged"
                    );
                    let _ = self
                        .out
                        .send(ServerFrame::Lagged {
                            id: self.id,
                            resume_from,
                        })
                        .await;
                    return Err(Stop);
                }
                Err(refusal) => {
                    let result = Err(RpcError::from(refusal));
                    let _ = self
                        .out
                        .send(ServerFrame::Reply {
                            id: self.id,
                            result,
                        })
                        .await;
                    return Err(Stop);
                }
            };
            let short = (page.len() as u32) < EVENT_PAGE;
            for record in page {
                self.send(record).await?;
            }
            if short {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, record: EventRecord) -> Result<(), Stop> {
        if record.seq <= self.last {
            return Ok(());
        }
        self.last = record.seq;
        let frame = ServerFrame::Event {
            id: self.id,
            record,
        };
        self.out.send(frame).await.map_err(|_| Stop)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use hive_proto::event::Event;
    use hive_proto::AgentName;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::{Config, RawConfig};
    use crate::hub::EVENT_CHANNEL;

    async fn hive(dir: &Path) -> Hive {
        let raw: RawConfig = toml::from_str(&format!(
            "state_dir = {dir:?}\nruntime_dir = {dir:?}\n[agents.alice]\n"
        ))
        .unwrap();
        Hive::open(Config::from_raw(raw).unwrap()).await.unwrap()
    }

    /// Commits `n` events in one transaction, so the hub publishes them in
    /// one burst; returns the last one's `seq`.
    async fn commit_events(h: &Hive, n: usize) -> u64 {
        h.store()
            .write(move |tx| {
                let alice = AgentName::new("alice").unwrap();
                let mut last = 0;
                for i in 0..n {
                    last = tx.event(Event::AgentStatus {
                        agent: alice.clone(),
                        text: format!("s{i}"),
                    })?;
                }
                Ok(last)
            })
            .await
            .unwrap()
    }

    async fn next_frame(rx: &mut mpsc::Receiver<ServerFrame>) -> Option<ServerFrame> {
        tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("a frame in time")
    }

    /// A stream from `since = 0` whose client has read the first event and
    /// then stops reading: the stream's output holds one frame, so the
    /// stream blocks on its second, and the live channel behind it overflows
    /// at the next burst.
    async fn stalled_stream(h: &Hive) -> (mpsc::Receiver<ServerFrame>, JoinHandle<()>) {
        let (out, mut rx) = mpsc::channel(1);
        let task =
            tokio::spawn(EventStream::new(h.clone(), 7, out).run(0, CancellationToken::new()));
        // The first event proves the stream has subscribed to the live channel.
        commit_events(h, 1).await;
        match next_frame(&mut rx).await {
            Some(ServerFrame::Event { id: 7, record }) => assert_eq!(record.seq, 1),
            other => panic!("{other:?}"),
        }
        (rx, task)
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_the_live_channel_rereads_the_store_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let h = hive(dir.path()).await;
        let (mut rx, task) = stalled_stream(&h).await;
        let last = commit_events(&h, EVENT_CHANNEL + 1000).await;
        assert_eq!(last, EVENT_CHANNEL as u64 + 1001);
        // Far more events than the live channel holds went by while the
        // stream was blocked; every one still arrives, once, in order.
        for want in 2..=last {
            match next_frame(&mut rx).await {
                Some(ServerFrame::Event { id: 7, record }) => assert_eq!(record.seq, want),
                other => panic!("wanted event {want}, got {other:?}"),
            }
        }
        commit_events(&h, 1).await;
        match next_frame(&mut rx).await {
            Some(ServerFrame::Event { record, .. }) => assert_eq!(record.seq, last + 1),
            other => panic!("the stream did not follow live again: {other:?}"),
        }
        task.abort();
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_past_pruned_events_says_lagged_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let h = hive(dir.path()).await;
        let (mut rx, task) = stalled_stream(&h).await;
        let last = commit_events(&h, EVENT_CHANNEL + 1000).await;
        // While the stream is blocked, all but the newest 10 are pruned: the
        // events it still owes are gone, from the channel and the store.
        h.store().write(|tx| tx.prune_events(10)).await.unwrap();
        let first_kept = last - 9;
        assert_eq!(h.first_event_seq().await.unwrap(), Some(first_kept));
        let mut next = 2;
        loop {
            match next_frame(&mut rx).await {
                Some(ServerFrame::Event { record, .. }) => {
                    // What it had read before the prune, without a gap.
                    assert_eq!(record.seq, next);
                    next += 1;
                }
                Some(ServerFrame::Lagged { id: 7, resume_from }) => {
                    assert_eq!(resume_from, first_kept - 1);
                    assert!(next <= first_kept, "sent {next} past the gap");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        // Lagged ends the subscription: nothing follows it.
        assert_eq!(next_frame(&mut rx).await, None);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_ahead_of_the_store_is_told_lagged_at_the_newest_instead_of_skipping() {
        let dir = tempfile::tempdir().unwrap();
        let h = hive(dir.path()).await;
        let newest = commit_events(&h, 5).await;
        // A gateway that counted to 1,000 in a store since replaced.
        let (out, mut rx) = mpsc::channel(16);
        let task =
            tokio::spawn(EventStream::new(h.clone(), 9, out).run(1000, CancellationToken::new()));
        match next_frame(&mut rx).await {
            Some(ServerFrame::Lagged { id: 9, resume_from }) => assert_eq!(resume_from, newest),
            other => panic!("{other:?}"),
        }
        assert_eq!(next_frame(&mut rx).await, None);
        task.await.unwrap();
        // At the newest itself, it simply follows.
        let (out, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(
            EventStream::new(h.clone(), 10, out).run(newest, CancellationToken::new()),
        );
        // Whether the event commits before or after the stream subscribes,
        // the backlog or the live channel brings it.
        commit_events(&h, 1).await;
        match next_frame(&mut rx).await {
            Some(ServerFrame::Event { id: 10, record }) => assert_eq!(record.seq, newest + 1),
            other => panic!("{other:?}"),
        }
        task.abort();
    }
}
