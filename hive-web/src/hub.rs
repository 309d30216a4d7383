//! The SSE hub: the gateway keeps one event subscription to the core (fed in
//! by [`crate::core_link`]) and fans it out to every browser following
//! `/api/events`. It keeps the last [`REPLAY_CAPACITY`] events so a browser
//! that reconnects with `Last-Event-ID` gets exactly what it missed; when
//! that is no longer possible (too old, or the core's stream was reset) the
//! browser is told to reload, which re-renders the page from fresh state.
//!
//! The hub also carries whether the core link is up, so an open page can say
//! "core unreachable" and reload itself when the core returns.
//!
//! This module must never call the core itself or decide what a page shows;
//! it only orders, keeps and forwards what the link handed it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hive_proto::event::EventRecord;
use tokio::sync::broadcast;

/// Events kept for replay to reconnecting browsers.
pub const REPLAY_CAPACITY: usize = 1024;
/// Messages a slow browser may fall behind before it is told to reload.
pub const BROADCAST_CAPACITY: usize = 256;

/// What the hub sends to each follower.
#[derive(Clone, Debug)]
pub enum HubMsg {
    Event(Arc<EventRecord>),
    /// What you have may be stale and cannot be patched: reload the page.
    Reload,
    /// The core link went up or down.
    Core {
        up: bool,
    },
}

/// Where a new follower starts.
pub struct Follow {
    /// Events after the follower's `since`, oldest first.
    pub replay: Vec<Arc<EventRecord>>,
    /// The follower's `since` is outside what the hub can replay.
    pub reload: bool,
    pub rx: broadcast::Receiver<HubMsg>,
}

/// The fan-out point. Cheap to share behind an `Arc`.
pub struct EventHub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<HubMsg>,
    core_up: AtomicBool,
    /// The core's last `Health` said its agents run without isolation.
    unsandboxed: AtomicBool,
}

/// Every event with `base < seq <= last` that the core sent is in `events`.
struct Ring {
    base: u64,
    last: u64,
    /// Whether the hub has ever learned where the core's stream stands.
    synced: bool,
    events: VecDeque<Arc<EventRecord>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            ring: Mutex::new(Ring {
                base: 0,
                last: 0,
                synced: false,
                events: VecDeque::with_capacity(REPLAY_CAPACITY),
            }),
            tx,
            core_up: AtomicBool::new(false),
            unsandboxed: AtomicBool::new(false),
        }
    }

    /// The newest sequence number the hub knows. A page reads it *before* it
    /// asks the core for state, so replaying from it can only repeat what the
    /// page already shows (harmless), never skip anything.
    pub fn last_seq(&self) -> u64 {
        self.lock().last
    }

    /// Whether the hub has synced with the core's stream at least once.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// Starts over at `seq`: forgets every kept event and tells every
    /// follower to reload. Used on first sync, after a lagged stream, and
    /// when the core's sequence went backwards (its store was replaced).
    pub fn reset(&self, seq: u64) {
        let mut ring = self.lock();
        ring.base = seq;
        ring.last = seq;
        ring.synced = true;
        ring.events.clear();
        // No follower is an error, not a problem.
        let _ = self.tx.send(HubMsg::Reload);
    }

    /// Adds an event from the core and forwards it. Repeats (a resubscribe
    /// replays from our `last_seq`) and anything older are dropped.
    pub fn publish(&self, record: EventRecord) {
        let mut ring = self.lock();
        if record.seq <= ring.last {
            return;
        }
        ring.last = record.seq;
        let record = Arc::new(record);
        if ring.events.len() == REPLAY_CAPACITY {
            if let Some(old) = ring.events.pop_front() {
                ring.base = old.seq;
            }
        }
        ring.events.push_back(record.clone());
        // Sending under the lock keeps `follow` gap-free: a follower either
        // sees an event in its replay or on its receiver, never neither.
        let _ = self.tx.send(HubMsg::Event(record));
    }

    /// Records whether the core link is up and tells followers when it
    /// changes.
    pub fn set_core_up(&self, up: bool) {
        if self.core_up.swap(up, Ordering::SeqCst) != up {
            let _ = self.tx.send(HubMsg::Core { up });
        }
    }

    /// Whether the core link is up right now.
    pub fn core_up(&self) -> bool {
        self.core_up.load(Ordering::SeqCst)
    }

    /// Records what the core's `Health` said about isolation.
    pub fn set_unsandboxed(&self, unsandboxed: bool) {
        self.unsandboxed.store(unsandboxed, Ordering::SeqCst);
    }

    /// Whether every page must say the agents are not isolated.
    pub fn unsandboxed(&self) -> bool {
        self.unsandboxed.load(Ordering::SeqCst)
    }

    /// Starts following after `since`.
    pub fn follow(&self, since: u64) -> Follow {
        let ring = self.lock();
        let rx = self.tx.subscribe();
        if since < ring.base || since > ring.last {
            return Follow {
                replay: Vec::new(),
                reload: true,
                rx,
            };
        }
        let replay = ring
            .events
            .iter()
            .filter(|r| r.seq > since)
            .cloned()
            .collect();
        Follow {
            replay,
            reload: false,
            rx,
        }
    }

    /// The newest `n` events, newest first (the dashboard's "recent events").
    pub fn recent(&self, n: usize) -> Vec<Arc<EventRecord>> {
        self.lock().events.iter().rev().take(n).cloned().collect()
    }

    /// How many browsers follow the stream right now.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Each critical section leaves the ring consistent before it could
        // panic, so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hive_proto::event::Event;

    fn rec(seq: u64) -> EventRecord {
        EventRecord {
            seq,
            at: 0,
            event: Event::QuestionExpired { id: seq },
        }
    }

    #[test]
    fn a_follower_gets_what_it_missed_then_new_events() {
        let hub = EventHub::new();
        hub.reset(10);
        for s in 11..=13 {
            hub.publish(rec(s));
        }
        let mut f = hub.follow(11);
        assert!(!f.reload);
        let seqs: Vec<u64> = f.replay.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [12, 13]);
        hub.publish(rec(14));
        hub.publish(rec(14)); // a repeat from a resubscribe is dropped
        match f.rx.try_recv().unwrap() {
            HubMsg::Event(r) => assert_eq!(r.seq, 14),
            other => panic!("{other:?}"),
        }
        assert!(f.rx.try_recv().is_err());
    }

    #[test]
    fn a_follower_from_before_the_ring_or_from_the_future_reloads() {
        let hub = EventHub::new();
        hub.reset(100);
        assert!(hub.follow(5).reload);
        assert!(hub.follow(101).reload);
        assert!(!hub.follow(100).reload);
        for s in 101..=(100 + REPLAY_CAPACITY as u64 + 5) {
            hub.publish(rec(s));
        }
        assert!(hub.follow(100).reload, "evicted events cannot be replayed");
        assert_eq!(hub.follow(hub.last_seq()).replay.len(), 0);
    }

    #[test]
    fn core_up_changes_are_broadcast_once() {
        let hub = EventHub::new();
        let mut f = hub.follow(0);
        hub.set_core_up(true);
        hub.set_core_up(true);
        hub.set_core_up(false);
        assert!(matches!(f.rx.try_recv(), Ok(HubMsg::Core { up: true })));
        assert!(matches!(f.rx.try_recv(), Ok(HubMsg::Core { up: false })));
        assert!(f.rx.try_recv().is_err());
    }
}
