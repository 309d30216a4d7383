//! The data shapes the core shows to both principals: who sent something,
//! messages, questions, reminders, agents. They are plain structs and enums so
//! they encode the same way in postcard (operator RPC) and JSON (agent
//! protocol); that is why no serde attribute here skips or flattens a field
//! (postcard is not self-describing and would misread it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::name::{AgentName, NameError};
use crate::UnixMillis;

/// Who said something: an agent, the operator, or the hive itself (expiries,
/// reminders). On the wire: `"operator"`, `"hive"` or the agent's name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Principal {
    Operator,
    Hive,
    Agent(AgentName),
}

impl Principal {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s {
            "operator" => Ok(Self::Operator),
            "hive" => Ok(Self::Hive),
            other => AgentName::new(other).map(Self::Agent),
        }
    }

    pub fn agent(&self) -> Option<&AgentName> {
        match self {
            Self::Agent(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator => f.write_str("operator"),
            Self::Hive => f.write_str("hive"),
            Self::Agent(n) => f.write_str(n.as_str()),
        }
    }
}

impl FromStr for Principal {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Principal::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Machine-readable reason for a refused request, shared by both protocols.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request did not parse, or a field is invalid.
    BadRequest,
    /// The `op` (or RPC verb) is not one this socket serves.
    UnknownOp,
    /// The caller may not do this (not its question, not an allowed recipient, ...).
    Forbidden,
    /// No such agent, message, question or reminder.
    NotFound,
    /// A field is over its size limit.
    TooLarge,
    /// A per-agent limit (pending reminders, in-flight requests) is reached.
    Limit,
    /// The thing is no longer in a state that allows this (already answered, expired).
    Conflict,
    /// The runtime or backend cannot do this (yet).
    Unsupported,
    /// The core could not do it now; retrying later may work.
    Unavailable,
    /// A bug or an I/O failure in the core; the detail is in its log.
    Internal,
    /// A per-agent quota (a rate, or what is stored for an agent) is used
    /// up; the message names the config key. Retrying later may work.
    /// Appended last: postcard encodes the variant index.
    QuotaExceeded,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("error"))
    }
}

/// What an inbox item is. Everything an agent must hear about goes through
/// its inbox (durable, pushed, acknowledged), not only plain messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A message from an agent or the operator.
    Message,
    /// A question addressed to this agent; answer it with `answer`.
    Question,
    /// The answer to a question this agent asked (`question_id` says which).
    Answer,
    /// A question this agent asked expired unanswered.
    QuestionExpired,
    /// A question addressed to this agent was cancelled by its asker.
    QuestionCancelled,
    /// A reminder this agent set is due.
    Reminder,
    /// A config proposal or spawn request of this agent's was decided
    /// (approved, or denied with the operator's reason). The body says
    /// which approval and how; `loose_ends` no longer lists it.
    ApprovalDecided,
    /// For a `manager` agent: another agent's container exited when it
    /// should not have (the body says which, why, and whether it restarts).
    AgentCrashed,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Question => "question",
            Self::Answer => "answer",
            Self::QuestionExpired => "question_expired",
            Self::QuestionCancelled => "question_cancelled",
            Self::Reminder => "reminder",
            Self::ApprovalDecided => "approval_decided",
            Self::AgentCrashed => "agent_crashed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "message" => Self::Message,
            "question" => Self::Question,
            "answer" => Self::Answer,
            "question_expired" => Self::QuestionExpired,
            "question_cancelled" => Self::QuestionCancelled,
            "reminder" => Self::Reminder,
            "approval_decided" => Self::ApprovalDecided,
            "agent_crashed" => Self::AgentCrashed,
            _ => return None,
        })
    }
}

/// One durable message in a mailbox (an agent's inbox or the operator's).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Message {
    /// Assigned by the core when it committed the message; a receiver drops
    /// repeats by this id (delivery is at least once).
    pub id: u64,
    pub kind: ItemKind,
    pub from: Principal,
    pub to: Principal,
    pub body: String,
    /// The message this one answers, if the sender said so.
    pub in_reply_to: Option<u64>,
    /// For `question`, `answer`, `question_expired`, `question_cancelled`.
    pub question_id: Option<u64>,
    /// For `question`: the choices offered, if any.
    pub options: Vec<String>,
    /// For `question`: whether several options may be chosen.
    pub multi: bool,
    pub sent_at: UnixMillis,
    /// When the recipient acknowledged it; `None` while it is unread.
    pub acked_at: Option<UnixMillis>,
}

/// Where a question stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionState {
    Open,
    Answered,
    Expired,
    Cancelled,
}

/// A question, as its asker, its addressee and the operator see it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Question {
    pub id: u64,
    pub asker: Principal,
    pub to: Principal,
    pub question: String,
    pub options: Vec<String>,
    pub multi: bool,
    pub asked_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
    pub state: QuestionState,
    pub answer: Option<String>,
    pub answered_by: Option<Principal>,
    pub answered_at: Option<UnixMillis>,
}

/// A pending reminder.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Reminder {
    pub id: u64,
    pub agent: AgentName,
    pub body: String,
    pub due_at: UnixMillis,
}

/// What the runtime says about an agent's process or container.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// The runtime has not reported on it (or nothing is attached).
    Unknown,
    Stopped,
    Starting,
    Running,
    /// Frozen (its cgroup, or SIGSTOP): nothing is delivered, messages queue.
    Paused,
    /// It exited when it should not have.
    Crashed,
    // Appended, not sorted in: postcard numbers variants by position.
    /// Asked to stop; SIGTERM sent, waiting for it to exit.
    Stopping,
    /// Stopped after its `idle_timeout` without traffic; a message for it
    /// starts it again.
    Idle,
}

/// One agent's row on the dashboard and in `hivectl agents`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AgentSummary {
    pub name: AgentName,
    pub run_state: RunState,
    /// How many connections are open on its `agent.sock` right now.
    pub connections: u32,
    /// The last `status` text it set: agent-written, so always escaped.
    pub status: Option<String>,
    pub status_at: Option<UnixMillis>,
    /// Messages in its inbox it has not acknowledged.
    pub unread: u64,
    /// Open questions addressed to it.
    pub open_questions: u64,
    /// The config repo commit its container runs (`None` before the first
    /// deploy).
    pub deployed_sha: Option<String>,
    /// The config repo's `main` (`None` while the agent is not in it).
    pub main_sha: Option<String>,
    /// Whether this agent's files at `main` differ from those at
    /// `deployed_sha`: the reconciler will rebuild it.
    pub needs_update: bool,
    // The runtime's half of the row (containers issue), kept together.
    /// It receives the other agents' crash and lifecycle events.
    pub manager: bool,
    /// Its container's name (`h-<name>`, shortened stably where a tool's
    /// limit needs it); `None` under a runtime without containers.
    pub container: Option<String>,
    /// The host uids its user namespace maps onto (root inside is `base`).
    pub uid_range: Option<UidRange>,
    /// Its container's init (or its process) on the host, while it runs.
    pub leader_pid: Option<u32>,
    /// Why it last ended when nobody asked it to (`exited with status 3`,
    /// `killed by the kernel: out of memory (OOM)`) and, after `; `, what
    /// supervision does about it (`restarting in 200 ms (restart 1 of 5 in
    /// 600 s)`, or why it stays down); set on `crashed` rows.
    pub crash_reason: Option<String>,
    /// When it last sent a request line on its socket (any verb, `recv`
    /// included), if it has since the daemon started.
    pub last_activity_at: Option<UnixMillis>,
}

/// A range of host uids (and the same gids): an agent's user namespace maps
/// `0..count` inside onto `base..base + count` outside.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UidRange {
    pub base: u32,
    pub count: u32,
}

/// Everything `/agent/<name>/` and `hivectl status NAME` show at once.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AgentDetail {
    pub summary: AgentSummary,
    /// Whom it may message: agent names, `operator`, or `*`.
    pub allowed_recipients: Vec<String>,
    /// Open questions it asked or that are addressed to it.
    pub questions: Vec<Question>,
    pub reminders: Vec<Reminder>,
}

/// What an approval would do when approved.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// Change an existing agent's config files.
    Config,
    /// Create (and start) a new agent.
    Spawn,
}

/// Where an approval stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for the operator (also after an approve that conflicted).
    Pending,
    /// Merged into `main`.
    Approved,
    /// Refused by the operator, with a reason.
    Denied,
}

/// A config proposal or spawn request, pending or decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: u64,
    /// The agent whose config it changes, or the one it would spawn.
    pub agent: AgentName,
    pub kind: ApprovalKind,
    pub proposer: Principal,
    /// The proposer's commit message: its own words, so always escaped.
    pub message: String,
    /// Unified diff of the proposal commit against its parent.
    pub diff: String,
    pub created_at: UnixMillis,
    /// The proposal commit on `proposals/<id>` (hex).
    pub commit: String,
    pub state: ApprovalState,
    /// Why the last approve could not merge into `main`; the approval stays
    /// pending while this is set.
    pub conflict: Option<String>,
    /// The operator who decided it (`operator:<login>`).
    pub decided_by: Option<String>,
    pub decided_at: Option<UnixMillis>,
    /// The operator's reason for denying.
    pub reason: Option<String>,
    /// The `main` commit the approval produced.
    pub merged_sha: Option<String>,
}

/// An entry of the append-only audit log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: UnixMillis,
    /// `operator:<login>` or `agent:<name>` or `hive`.
    pub actor: String,
    pub action: String,
    pub detail: String,
    /// Hex SHA-256 over the previous row's hash and this row's fields.
    pub hash: String,
}
