//! The hive's event stream: one enum, one monotonically increasing sequence
//! number assigned by the store when the event commits. The gateway follows
//! it with `Subscribe { since }` and maps `seq` to SSE `Last-Event-ID`.

use serde::{Deserialize, Serialize};

use crate::name::AgentName;
use crate::view::{Principal, RunState};
use crate::UnixMillis;

/// An event as stored and streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Strictly increasing, never reused; resume with `since = seq`.
    pub seq: u64,
    pub at: UnixMillis,
    pub event: Event,
}

/// Something the operator's screens want to know happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// An agent set its status text.
    AgentStatus {
        agent: AgentName,
        text: String,
    },
    /// The runtime reported a new state for an agent.
    AgentRunState {
        agent: AgentName,
        state: RunState,
    },
    /// A message was committed to a mailbox.
    MessageSent {
        id: u64,
        from: Principal,
        to: Principal,
    },
    /// A mailbox's owner acknowledged a message.
    MessageAcked {
        id: u64,
        by: Principal,
    },
    QuestionAsked {
        id: u64,
        asker: Principal,
        to: Principal,
    },
    QuestionAnswered {
        id: u64,
        by: Principal,
    },
    QuestionExpired {
        id: u64,
    },
    QuestionCancelled {
        id: u64,
    },
    ReminderSet {
        id: u64,
        agent: AgentName,
        due_at: UnixMillis,
    },
    ReminderFired {
        id: u64,
        agent: AgentName,
    },
    ReminderCancelled {
        id: u64,
        agent: AgentName,
    },
    /// An approval was decided by an operator.
    ApprovalDecided {
        id: u64,
        approved: bool,
    },
    /// A proposal (config change or spawn request) for `agent` is pending.
    ApprovalOpened {
        id: u64,
        agent: AgentName,
    },
    /// `agent` now runs the config at repo commit `sha`.
    AgentDeployed {
        agent: AgentName,
        sha: String,
    },
    /// An agent's container exited when it should not have. `reason` is a
    /// sentence (exit status, signal, OOM); `restart_in_ms` is when the
    /// supervisor starts it again, `None` when it stays down.
    AgentCrashed {
        agent: AgentName,
        reason: String,
        restart_in_ms: Option<u64>,
    },
}

impl Event {
    /// The agent an event concerns, if any: lets a page for one agent filter.
    pub fn agents(&self) -> Vec<&AgentName> {
        fn of(p: &Principal) -> Option<&AgentName> {
            p.agent()
        }
        match self {
            Event::AgentStatus { agent, .. }
            | Event::AgentRunState { agent, .. }
            | Event::ReminderSet { agent, .. }
            | Event::ReminderFired { agent, .. }
            | Event::ReminderCancelled { agent, .. }
            | Event::ApprovalOpened { agent, .. }
            | Event::AgentDeployed { agent, .. }
            | Event::AgentCrashed { agent, .. } => vec![agent],
            Event::MessageSent { from, to, .. } => of(from).into_iter().chain(of(to)).collect(),
            Event::QuestionAsked { asker, to, .. } => of(asker).into_iter().chain(of(to)).collect(),
            Event::MessageAcked { by, .. } | Event::QuestionAnswered { by, .. } => {
                of(by).into_iter().collect()
            }
            Event::QuestionExpired { .. }
            | Event::QuestionCancelled { .. }
            | Event::ApprovalDecided { .. } => vec![],
        }
    }
}
