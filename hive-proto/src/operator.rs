//! The operator RPC spoken on `web.sock` (by `hive-web`) and `admin.sock` (by
//! `hivectl`): postcard frames behind a u32 length (see [`crate::codec`]).
//!
//! The first frame each way is a hello: the client's [`Hello`], the core's
//! [`HelloReply`]. After that the client sends [`ClientFrame::Call`]s, each
//! with its own id so one connection multiplexes calls, or one
//! [`ClientFrame::Subscribe`] that turns the connection into an event stream.
//!
//! The sockets are split by capability: `web.sock` carries [`WebCall`]s, whose
//! verbs ([`WebRequest`]) are exactly the ones the gateway's pages and API
//! call (`hive-web`'s `every_web_request_variant_has_a_caller_in_the_gateway`
//! fails when one has none); `admin.sock` carries [`AdminRequest`]s: every
//! [`OperatorRequest`] (the web verbs plus the audit log and approval diffs)
//! and what only a shell operator needs (audit verification, purge). A
//! compromised gateway cannot express an admin verb.
//!
//! **Architecture invariant:** every verb of operator authority lives here
//! and nowhere in [`crate::agent`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::agent::ProposalResult;
use crate::event::EventRecord;
use crate::name::{AgentName, RelPath, SecretKey};
pub use crate::view::Approval;
use crate::view::{AgentDetail, AgentSummary, AuditEntry, ErrorCode, Message, Principal, Question};

/// Protocol version. Clients and core refuse a different `major`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: Version,
    /// Free text for the core's log, e.g. `hivectl 0.1.0`. Never trusted.
    pub client: String,
}

/// The core's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Accepted; `peer` is who the core believes is calling (from
    /// SO_PEERCRED on `admin.sock`, the gateway on `web.sock`).
    Welcome { version: Version, peer: String },
    /// Refused, with one sentence saying why (version mismatch, ...).
    Refused { reason: String },
}

/// A frame from client to core. `R` is the socket's request type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame<R> {
    Hello(Hello),
    /// Call `req`; the reply carries the same `id`.
    Call {
        id: u64,
        req: R,
    },
    /// Stream every event with `seq > since`, then each new one, as
    /// [`ServerFrame::Event`] frames carrying this `id`.
    Subscribe {
        id: u64,
        since: u64,
    },
}

/// A frame from core to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    Hello(HelloReply),
    Reply {
        id: u64,
        result: Result<OperatorResponse, RpcError>,
    },
    Event {
        id: u64,
        record: EventRecord,
    },
    /// Events this stream still had to send were pruned from the store:
    /// `since` is older than what the store keeps, or the client read so
    /// slowly that pruning overtook it. `resume_from` is the oldest kept
    /// `seq` minus one. This is the subscription's last frame: reload state,
    /// then subscribe again from `resume_from`.
    Lagged {
        id: u64,
        resume_from: u64,
    },
}

/// A call on `web.sock`: the gateway relays the operator it authenticated, and
/// that login name is what the audit log records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebCall {
    pub operator: String,
    pub req: WebRequest,
}

/// The verbs `web.sock` serves: what the dashboard's pages and JSON API call,
/// and nothing else (no audit log, no approval diff on its own — `Pending`
/// carries each diff). Each is the [`OperatorRequest`] of the same name, into
/// which it converts for the core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WebRequest {
    ListAgents,
    AgentDetail {
        name: AgentName,
    },
    Lifecycle {
        name: AgentName,
        action: LifecycleAction,
    },
    /// Pending approvals, each with its diff.
    Pending,
    Approve {
        id: u64,
    },
    Deny {
        id: u64,
        reason: String,
    },
    /// Open questions addressed to the operator.
    Questions,
    /// Answer a question addressed to the operator.
    AnswerQuestion {
        id: u64,
        answer: String,
    },
    SendMessage {
        to: AgentName,
        body: String,
    },
    /// A mailbox's messages, newest first (an agent's page shows its own
    /// and what it sent the operator).
    Messages {
        mailbox: Principal,
        before: Option<u64>,
        limit: u32,
    },
    ReadStateFile {
        agent: AgentName,
        rel_path: RelPath,
    },
    ListStateDir {
        agent: AgentName,
        rel_path: Option<RelPath>,
    },
    Journal {
        agent: AgentName,
        lines: u32,
    },
    AgentConfig {
        agent: AgentName,
        rev: ConfigRev,
    },
    /// The names of the agent's secrets, never their values (the agent
    /// page lists them; setting one stays on `admin.sock`).
    SecretNames {
        agent: AgentName,
    },
    Health,
}

impl WebRequest {
    /// The verb's name, for metrics and logs (the same as
    /// [`OperatorRequest::verb`]).
    pub fn verb(&self) -> &'static str {
        match self {
            Self::ListAgents => "list_agents",
            Self::AgentDetail { .. } => "agent_detail",
            Self::Lifecycle { .. } => "lifecycle",
            Self::Pending => "pending",
            Self::Approve { .. } => "approve",
            Self::Deny { .. } => "deny",
            Self::Questions => "questions",
            Self::AnswerQuestion { .. } => "answer_question",
            Self::SendMessage { .. } => "send_message",
            Self::Messages { .. } => "messages",
            Self::ReadStateFile { .. } => "read_state_file",
            Self::ListStateDir { .. } => "list_state_dir",
            Self::Journal { .. } => "journal",
            Self::AgentConfig { .. } => "agent_config",
            Self::SecretNames { .. } => "secret_names",
            Self::Health => "health",
        }
    }
}

impl From<WebRequest> for OperatorRequest {
    fn from(r: WebRequest) -> Self {
        use WebRequest as W;
        match r {
            W::ListAgents => Self::ListAgents,
            W::AgentDetail { name } => Self::AgentDetail { name },
            W::Lifecycle { name, action } => Self::Lifecycle { name, action },
            W::Pending => Self::Pending,
            W::Approve { id } => Self::Approve { id },
            W::Deny { id, reason } => Self::Deny { id, reason },
            W::Questions => Self::Questions,
            W::AnswerQuestion { id, answer } => Self::AnswerQuestion { id, answer },
            W::SendMessage { to, body } => Self::SendMessage { to, body },
            W::Messages {
                mailbox,
                before,
                limit,
            } => Self::Messages {
                mailbox,
                before,
                limit,
            },
            W::ReadStateFile { agent, rel_path } => Self::ReadStateFile { agent, rel_path },
            W::ListStateDir { agent, rel_path } => Self::ListStateDir { agent, rel_path },
            W::Journal { agent, lines } => Self::Journal { agent, lines },
            W::AgentConfig { agent, rev } => Self::AgentConfig { agent, rev },
            W::SecretNames { agent } => Self::SecretNames { agent },
            W::Health => Self::Health,
        }
    }
}

/// A call on `admin.sock`. The operator is whoever SO_PEERCRED names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Anything the dashboard can do.
    Operator(OperatorRequest),
    /// Recompute the audit log's hash chain and report the first bad row.
    AuditVerify,
    /// Destroy the agent's container and remove that agent's own dirs
    /// (state, socket dir), refusing any path that resolves outside them.
    /// Admin only: the dashboard never deletes an agent's files.
    Purge { name: AgentName },
    /// Store (or replace) the agent's secret `key`. Admin only, so the
    /// value never passes through the gateway; the audit log records the
    /// agent, the key and who, never the value.
    SecretSet {
        agent: AgentName,
        key: SecretKey,
        value: SecretValue,
    },
    /// Remove the agent's secret `key`.
    SecretRemove { agent: AgentName, key: SecretKey },
    /// Audit rows with `seq > since`, oldest first, at most `limit` (the
    /// core clamps it to `MAX_LIST`), for `hivectl audit export`, which
    /// pages on from the last `seq` and prints JSON lines. Admin only: the
    /// gateway cannot reach the audit log.
    AuditExport { since: u64, limit: u32 },
    /// Propose config files for `agent` as this operator (a spawn when
    /// `agent` is not in `main`); it becomes a pending approval like an
    /// agent's proposal. Paths are relative to `agents/<agent>/`.
    ConfigPropose {
        agent: AgentName,
        files: BTreeMap<RelPath, String>,
        message: String,
    },
    /// Commit the revert of `rev` on `main` and redeploy what it changes.
    ConfigRevert { rev: String },
    /// `main`'s history, newest first; with `agent`, only its commits.
    ConfigLog {
        agent: Option<AgentName>,
        limit: u32,
    },
    /// The agent's files at any revision (`main`, a sha, `main~1`).
    ConfigShow { agent: AgentName, rev: String },
    /// The diff of the agent's files from what runs to `main`.
    ConfigDiff { agent: AgentName },
    /// Check the live host (`hivectl doctor`): socket modes and owners, the
    /// gateway's uid and capabilities, the hive's nftables table, and a
    /// probe from inside each running agent's network namespace. Admin
    /// only: the probes need root and the containers' namespaces.
    Doctor,
}

/// One commit of the config repo, as `hivectl config log` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigCommit {
    pub sha: String,
    pub summary: String,
    pub author: String,
    pub committer: String,
    /// Seconds since the epoch.
    pub time: i64,
}

/// Most bytes of one secret's value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A secret's value on the wire. Its `Debug` shows only its length, so a
/// request that is logged never logs the value; there is no `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub Vec<u8>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({} bytes, redacted)", self.0.len())
    }
}

/// A lifecycle action on an agent's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifecycleAction {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
    Rebuild,
    Destroy,
}

/// Which revision of an agent's config to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigRev {
    Deployed,
    Main,
}

/// The operator's verbs: what `hivectl` may ask on `admin.sock` (the
/// dashboard's [`WebRequest`]s are a subset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OperatorRequest {
    ListAgents,
    AgentDetail {
        name: AgentName,
    },
    Lifecycle {
        name: AgentName,
        action: LifecycleAction,
    },
    /// Pending approvals.
    Pending,
    Approve {
        id: u64,
    },
    Deny {
        id: u64,
        reason: String,
    },
    /// Open questions addressed to the operator.
    Questions,
    /// Answer a question addressed to the operator.
    AnswerQuestion {
        id: u64,
        answer: String,
    },
    SendMessage {
        to: AgentName,
        body: String,
    },
    /// A mailbox's messages, newest first: `agent` is `operator` or an
    /// agent name; `before` pages back by id.
    Messages {
        mailbox: Principal,
        before: Option<u64>,
        limit: u32,
    },
    ReadStateFile {
        agent: AgentName,
        rel_path: RelPath,
    },
    ListStateDir {
        agent: AgentName,
        rel_path: Option<RelPath>,
    },
    Journal {
        agent: AgentName,
        lines: u32,
    },
    AgentConfig {
        agent: AgentName,
        rev: ConfigRev,
    },
    /// The names of the agent's secrets, sorted, never their values.
    SecretNames {
        agent: AgentName,
    },
    Health,
    // The web verbs above, in `WebRequest`'s order; the ones only
    // `admin.sock` serves below, so no admin-only verb has a web verb's
    // postcard index (`a_web_frame_is_not_an_admin_frame`).
    ApprovalDiff {
        id: u64,
    },
    /// Audit rows with `seq > since`, oldest first, at most `limit`.
    Audit {
        since: u64,
        limit: u32,
    },
}

impl OperatorRequest {
    /// The verb's name, for metrics and logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::ListAgents => "list_agents",
            Self::AgentDetail { .. } => "agent_detail",
            Self::Lifecycle { .. } => "lifecycle",
            Self::Pending => "pending",
            Self::Approve { .. } => "approve",
            Self::Deny { .. } => "deny",
            Self::Questions => "questions",
            Self::AnswerQuestion { .. } => "answer_question",
            Self::SendMessage { .. } => "send_message",
            Self::Messages { .. } => "messages",
            Self::ReadStateFile { .. } => "read_state_file",
            Self::ListStateDir { .. } => "list_state_dir",
            Self::Journal { .. } => "journal",
            Self::AgentConfig { .. } => "agent_config",
            Self::SecretNames { .. } => "secret_names",
            Self::Health => "health",
            Self::ApprovalDiff { .. } => "approval_diff",
            Self::Audit { .. } => "audit",
        }
    }
}

/// One entry of a state-dir listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// What `Health` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub runtime: String,
    pub uptime_ms: u64,
    pub agents: u32,
    pub connected_agents: u32,
    pub last_event_seq: u64,
    /// Whether containers are kept off the host and each other.
    pub network: NetworkIsolation,
    /// Agents run with no isolation at all (the `process` runtime without
    /// bubblewrap, allowed by `allow_unsandboxed`): every page says so.
    pub unsandboxed: bool,
}

/// The state of the hive's nftables table (DESIGN §1.6), as `Health`
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkIsolation {
    /// The runtime gives agents no network namespace of their own
    /// (`process`, `detached`): there is no table to keep.
    NotUsed,
    /// `table inet hyperhive` is installed and verified; `repairs` counts
    /// the times the reconcile loop had to restore it.
    Enforced { repairs: u64 },
    /// Not enforced, so no agent container runs. One sentence saying why.
    Failed { reason: String },
}

impl NetworkIsolation {
    /// One line for `hivectl health` and the dashboard.
    pub fn sentence(&self) -> String {
        match self {
            Self::NotUsed => "network isolation: not used by this runtime".into(),
            Self::Enforced { repairs: 0 } => "network isolation: enforced".into(),
            Self::Enforced { repairs } => {
                format!("network isolation: enforced (restored {repairs} times after tampering)")
            }
            Self::Failed { reason } => reason.clone(),
        }
    }
}

/// The core's answer to a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OperatorResponse {
    Done,
    Agents(Vec<AgentSummary>),
    /// Boxed: a detail is many times the size of the other answers.
    Agent(Box<AgentDetail>),
    Approvals(Vec<Approval>),
    Questions(Vec<Question>),
    Messages(Vec<Message>),
    MessageSent {
        id: u64,
    },
    File {
        bytes: Vec<u8>,
        /// Whether the file was longer than what was sent.
        truncated: bool,
    },
    Dir(Vec<DirEntry>),
    Journal(Vec<String>),
    Config {
        sha: Option<String>,
        files: Vec<(String, String)>,
    },
    Diff(String),
    Audit(Vec<AuditEntry>),
    /// The chain holds: `rows` checked, ending in `head`.
    AuditVerified {
        rows: u64,
        head: String,
    },
    Health(Health),
    /// The names of an agent's secrets, sorted.
    Secrets(Vec<SecretKey>),
    /// A proposal was opened (`ConfigPropose`).
    Proposed(ProposalResult),
    ConfigLog(Vec<ConfigCommit>),
    /// `main` after a `ConfigRevert`.
    Reverted {
        main: String,
    },
    /// What `Doctor` found, one check per line.
    Doctor(crate::doctor::DoctorReport),
}

/// A refused call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_frame, FrameCodec};
    use bytes::BytesMut;
    use proptest::prelude::*;
    use tokio_util::codec::Encoder;

    #[test]
    fn frames_round_trip() {
        let frame = ClientFrame::Call {
            id: 9,
            req: WebCall {
                operator: "ops".into(),
                req: WebRequest::AnswerQuestion {
                    id: 3,
                    answer: "yes".into(),
                },
            },
        };
        let mut buf = BytesMut::new();
        FrameCodec::<(), ClientFrame<WebCall>>::new()
            .encode(frame.clone(), &mut buf)
            .unwrap();
        assert_eq!(
            decode_frame::<ClientFrame<WebCall>>(&buf).unwrap(),
            Some(frame)
        );
    }

    fn variant_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        crate::variants::variant_names::<T>().expect("an enum")
    }

    /// `WebCall` as it was before `web.sock` got its own request type: the
    /// shape a client would use to put an operator verb on the web socket.
    #[derive(Serialize)]
    struct OperatorOnWeb {
        operator: String,
        req: OperatorRequest,
    }

    fn framed<T: Serialize>(value: &T, padding: usize) -> Vec<u8> {
        let mut body = postcard::to_stdvec(value).unwrap();
        body.extend(std::iter::repeat_n(0u8, padding));
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn a_web_frame_is_not_an_admin_frame() {
        // The web socket's request type has no admin-only verb...
        let web = variant_names::<WebRequest>();
        for admin_only in ["ApprovalDiff", "Audit", "AuditVerify", "Purge"] {
            assert!(!web.contains(&admin_only), "{admin_only} is on web.sock");
        }
        for admin in variant_names::<AdminRequest>() {
            assert!(!web.contains(admin), "{admin} is on web.sock");
        }
        // Postcard names a variant by its index, so the frame below is
        // refused for its verb only if no web verb has the audit verb's
        // index: the web verbs come first in `OperatorRequest`, in the same
        // order, and the admin-only ones after them. A web verb added after
        // `ApprovalDiff` would give `Audit`'s index a web meaning (decoded
        // as that verb's fields) and this test would no longer be about the
        // verb.
        let operator = variant_names::<OperatorRequest>();
        assert_eq!(
            &operator[..web.len()],
            web,
            "web verbs must lead OperatorRequest in WebRequest's order"
        );
        let audit_index = operator.iter().position(|v| *v == "Audit").unwrap();
        assert!(
            audit_index >= web.len(),
            "Audit shares an index with a web verb"
        );
        // ...and the audit verb, framed exactly where a web call's request
        // goes, with every byte its arguments need and more to spare, is
        // refused because web.sock has no such verb — not because the frame
        // ran out of bytes (an earlier version of this test passed only so).
        let audit = framed(
            &ClientFrame::Call {
                id: 1,
                req: OperatorOnWeb {
                    operator: "ops".into(),
                    req: OperatorRequest::Audit {
                        since: 0,
                        limit: 10,
                    },
                },
            },
            64,
        );
        match decode_frame::<ClientFrame<WebCall>>(&audit) {
            Err(crate::codec::DecodeError::Postcard(postcard::Error::SerdeDeCustom)) => {}
            other => panic!("expected an unknown-verb refusal, got {other:?}"),
        }
        // The same frame with a verb the web socket has decodes, so the
        // refusal above is about the verb and nothing else.
        let list = framed(
            &ClientFrame::Call {
                id: 1,
                req: OperatorOnWeb {
                    operator: "ops".into(),
                    req: OperatorRequest::ListAgents,
                },
            },
            0,
        );
        assert_eq!(
            decode_frame::<ClientFrame<WebCall>>(&list).unwrap(),
            Some(ClientFrame::Call {
                id: 1,
                req: WebCall {
                    operator: "ops".into(),
                    req: WebRequest::ListAgents
                }
            })
        );
    }

    #[test]
    fn every_web_verb_is_the_operator_verb_of_the_same_name() {
        let web = variant_names::<WebRequest>();
        let op = variant_names::<OperatorRequest>();
        assert!(web.iter().all(|v| op.contains(v)), "{web:?} ⊄ {op:?}");
        let samples = [
            WebRequest::ListAgents,
            WebRequest::Pending,
            WebRequest::Questions,
            WebRequest::Health,
            WebRequest::Approve { id: 3 },
            WebRequest::Deny {
                id: 3,
                reason: "no".into(),
            },
        ];
        for w in samples {
            assert_eq!(w.verb(), OperatorRequest::from(w.clone()).verb());
        }
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<ClientFrame<WebCall>>(&bytes);
            let _ = decode_frame::<ClientFrame<AdminRequest>>(&bytes);
            let _ = decode_frame::<ServerFrame>(&bytes);
        }
    }
}
