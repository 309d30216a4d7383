//! In-memory fan-out of what the store has just committed: each mailbox's new
//! messages and the hive's events. The store publishes here only *after* a
//! transaction commits, so anything a subscriber sees is durable. Subscribers
//! that fall behind get `Lagged` from tokio's broadcast channel and re-read
//! from the store; the hub never holds the only copy of anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hive_proto::event::EventRecord;
use hive_proto::view::Message;
use hive_proto::{AgentName, Principal};
use tokio::sync::broadcast;

/// How many messages a mailbox channel buffers per slow subscriber.
pub const INBOX_CHANNEL: usize = 1024;
/// How many events the event channel buffers per slow subscriber.
pub const EVENT_CHANNEL: usize = 4096;

/// The fan-out point shared by the store, the sockets and the scheduler.
#[derive(Debug)]
pub struct Hub {
    mailboxes: Mutex<HashMap<Principal, broadcast::Sender<Arc<Message>>>>,
    events: broadcast::Sender<EventRecord>,
    connections: Mutex<HashMap<AgentName, u32>>,
    /// When each agent last opened a connection or sent a line other than
    /// `recv` (Unix ms): the supervisor's idle clock.
    activity: Mutex<HashMap<AgentName, i64>>,
    /// When each agent last sent a request line of any kind, `recv`
    /// included (Unix ms): the status row's `last_activity_at`.
    requests: Mutex<HashMap<AgentName, i64>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            mailboxes: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_CHANNEL).0,
            connections: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
        }
    }

    fn mailbox(&self, who: &Principal) -> broadcast::Sender<Arc<Message>> {
        let mut map = self.mailboxes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(who.clone())
            .or_insert_with(|| broadcast::channel(INBOX_CHANNEL).0)
            .clone()
    }

    /// New messages committed to `who`'s mailbox from now on.
    pub fn subscribe_mailbox(&self, who: &Principal) -> broadcast::Receiver<Arc<Message>> {
        self.mailbox(who).subscribe()
    }

    /// Every event committed from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    /// Called by the store after commit.
    pub fn publish_message(&self, msg: Arc<Message>) {
        // No subscriber is fine: the message waits in the store.
        let _ = self.mailbox(&msg.to).send(msg);
    }

    /// Called by the store after commit.
    pub fn publish_event(&self, record: EventRecord) {
        let _ = self.events.send(record);
    }

    /// Counts an open connection on an agent's socket; the guard uncounts it.
    pub fn connection_opened(self: &Arc<Self>, agent: &AgentName) -> ConnectionGuard {
        self.touch(agent);
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(agent.clone()).or_default() += 1;
        ConnectionGuard {
            hub: Arc::clone(self),
            agent: agent.clone(),
        }
    }

    /// Records traffic on `agent`'s socket now.
    pub fn touch(&self, agent: &AgentName) {
        let mut map = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(agent.clone(), crate::now_ms());
    }

    /// When `agent`'s socket last saw traffic (Unix ms), if ever since the
    /// daemon started.
    pub fn last_activity(&self, agent: &AgentName) -> Option<i64> {
        let map = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        map.get(agent).copied()
    }

    /// Records a request line (any verb, `recv` included) on `agent`'s
    /// socket now.
    pub fn note_request(&self, agent: &AgentName) {
        let now = crate::now_ms();
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(agent) {
            Some(at) => *at = now,
            None => {
                map.insert(agent.clone(), now);
            }
        }
    }

    /// When `agent` last sent a request line (Unix ms), if ever since the
    /// daemon started.
    pub fn last_request(&self, agent: &AgentName) -> Option<i64> {
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        map.get(agent).copied()
    }

    /// How many of `agents` have at least one open connection (one lock,
    /// not one per agent: `Health` asks with every dashboard page).
    pub fn connected_among<'a>(&self, agents: impl IntoIterator<Item = &'a AgentName>) -> u32 {
        let map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        agents
            .into_iter()
            .filter(|a| map.get(*a).is_some_and(|n| *n > 0))
            .count() as u32
    }

    pub fn connections(&self, agent: &AgentName) -> u32 {
        let map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.get(agent).copied().unwrap_or(0)
    }
}

/// Keeps an agent's connection counted while it lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    hub: Arc<Hub>,
    agent: AgentName,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut map = self
            .hub
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
        }
    }
}
