//! One `Subscribe { id, since }` stream: every stored event with
//! `seq > since`, then each new one as it commits.
//!
//! The live channel is subscribed *before* the backlog is read, so an event
//! that commits in between is in the channel; anything already sent is
//! skipped by `seq`. When the channel lags, the stream re-reads the gap from
//! the store instead of telling the client to reload: the store keeps every
//! event, the channel is only a shortcut. This module must never invent or
//! reorder events.

use hive_proto::event::EventRecord;
use hive_proto::operator::{RpcError, ServerFrame};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::hive::Hive;

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

    /// Sends every stored event after `last`, page by page.
    async fn backlog(&mut self) -> Result<(), Stop> {
        loop {
            let page = match self.hive.events_since(self.last, EVENT_PAGE).await {
                Ok(page) => page,
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
