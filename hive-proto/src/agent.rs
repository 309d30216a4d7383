//! The agent protocol spoken on `agent.sock`: JSON lines, one object per
//! line, so a harness in any language (or `socat`) can speak it.
//!
//! A request is `{"id": N, "op": "...", ...fields}`. A response echoes the id
//! with `"ok": true` and a `result`, or `"ok": false` and an `error {code,
//! message}`. Pushed lines carry `"event"` and no `id`.
//!
//! **Architecture invariant:** [`AgentRequest`] has no operator verb: no
//! approve, deny, lifecycle, or answering for someone else. The sender of a
//! request is never a field: the core knows it from the socket the line came
//! in on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::name::{AgentName, Recipient, RelPath};
use crate::view::{Approval, ErrorCode, Message, Question, Reminder};
use crate::UnixMillis;

/// Longest message body, question, answer or reminder text, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest status text, in bytes.
pub const MAX_STATUS: usize = 1024;
/// Most options a question may offer.
pub const MAX_OPTIONS: usize = 32;
/// Most messages one `recv` returns.
pub const MAX_RECV: u32 = 1000;
/// Most bytes of one `recv` reply line (newline excluded). The core stops
/// filling a reply before the message that would take it over this limit
/// and sends the messages that did not fit right after it as pushes, in
/// order, as it does with those beyond `max`. A reply always carries at
/// least one message; the largest one the core accepts (a [`MAX_BODY`] body
/// and [`MAX_OPTIONS`] options of 1 KiB, every byte escaped as `\u00XX`)
/// is under 600 KiB of JSON, so it fits with room to spare.
pub const MAX_RECV_REPLY_BYTES: usize = 1024 * 1024;
/// Most bytes the core holds queued for one agent connection (lines it has
/// not yet written to the socket, each counted with its newline). A line
/// that finds no room waits for the peer to read; a peer that does not make
/// room in time is a slow consumer and its connection is closed. Nothing is
/// lost by that: what was pushed but not acknowledged stays in the inbox and
/// is delivered again on the agent's next connection. Every reply is at
/// most [`MAX_RECV_REPLY_BYTES`], so at least one always fits.
pub const MAX_PENDING_OUT_BYTES: usize = 8 * 1024 * 1024;
// A maximal recv reply and its newline fit.
const _: () = assert!(MAX_PENDING_OUT_BYTES > MAX_RECV_REPLY_BYTES);
/// Longest a `recv` may wait, in milliseconds.
pub const MAX_WAIT_MS: u64 = 60 * 60 * 1000;
/// Most files one `propose_config` or `request_spawn` may carry.
pub const MAX_PROPOSAL_FILES: usize = 16;
/// Longest file in a proposal, in bytes (UTF-8 text: config files are text).
pub const MAX_PROPOSAL_FILE: usize = 64 * 1024;
/// Most bytes of all files of one proposal together. The request line
/// itself is bounded by [`crate::codec::MAX_LINE`] (128 KiB) too, which a
/// proposal of this size fits with room for JSON escaping of plain text.
pub const MAX_PROPOSAL_BYTES: usize = 96 * 1024;
/// Longest commit message of a proposal, in bytes.
pub const MAX_PROPOSAL_MESSAGE: usize = 4 * 1024;

/// One request line. `id` is chosen by the client and echoed in the reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestLine {
    pub id: u64,
    #[serde(flatten)]
    pub req: AgentRequest,
}

/// Everything an agent may ask of the core, and nothing more.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentRequest {
    /// Who does the core think I am?
    Whoami,
    /// Send a message to an agent, the operator, or `*` (every agent my
    /// policy allows, except me).
    Send {
        to: Recipient,
        body: String,
        #[serde(default)]
        in_reply_to: Option<u64>,
    },
    /// Fetch up to `max` unacknowledged messages, waiting up to `wait_ms` for
    /// the first. After its first `recv` a connection is a listener: new
    /// messages are pushed to it as they are committed.
    Recv {
        #[serde(default)]
        wait_ms: u64,
        #[serde(default = "default_recv_max")]
        max: u32,
    },
    /// I have handled this message; do not deliver it again.
    Ack { msg_id: u64 },
    /// Ask an agent or the operator a question.
    Ask {
        to: Recipient,
        question: String,
        #[serde(default)]
        options: Vec<String>,
        #[serde(default)]
        multi: bool,
        /// Seconds until it expires unanswered (and I hear so).
        #[serde(default)]
        ttl_s: Option<u64>,
    },
    /// Answer a question addressed to me (and only to me).
    Answer { question_id: u64, answer: String },
    /// My open questions (asked by me or to me), pending proposals, reminders.
    LooseEnds,
    /// Withdraw something of my own. The field is `item_id`, not `id`,
    /// because `id` is already the request line's own.
    Cancel { kind: CancelKind, item_id: u64 },
    /// Set my status line on the dashboard.
    Status { text: String },
    /// Remind me of `body` in `in_s` seconds or at `at` (Unix milliseconds).
    Remind {
        #[serde(default)]
        in_s: Option<u64>,
        #[serde(default)]
        at: Option<UnixMillis>,
        body: String,
    },
    /// Propose new config files for `agent` (myself, or an agent my
    /// policy's `can_propose_for` names). `files` maps paths relative to
    /// the agent's directory in the config repo (`agent.toml`,
    /// `agent.nix`) to their whole new content. The core validates the
    /// files, commits them on `proposals/<id>` authored as me and opens an
    /// approval; nothing changes until the operator approves it, and the
    /// decision arrives in my inbox as an [`ItemKind::ApprovalDecided`]
    /// item.
    ///
    /// [`ItemKind::ApprovalDecided`]: crate::view::ItemKind::ApprovalDecided
    ProposeConfig {
        agent: AgentName,
        files: BTreeMap<RelPath, String>,
        message: String,
    },
    /// Ask for a new agent `name` with these files, as for
    /// `propose_config`; an `agent.toml` that names no `command` (or none at
    /// all) gets the template's (`hive-agent run` around `claude -p` with
    /// `hive-agent mcp`), and a missing `agent.nix` the template's. The agent exists only once the operator
    /// approves; `name` must be free. `config` is accepted for `files`.
    RequestSpawn {
        name: AgentName,
        #[serde(alias = "config")]
        files: BTreeMap<RelPath, String>,
        #[serde(default)]
        message: String,
    },
}

fn default_recv_max() -> u32 {
    100
}

/// What `cancel` can withdraw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelKind {
    Question,
    Reminder,
}

/// The error object of a refused request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One response line. `id` is `null` only when the request line was too
/// broken to carry one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseLine {
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl ResponseLine {
    pub fn ok(id: u64, result: &impl Serialize) -> Self {
        match serde_json::to_value(result) {
            Ok(v) => Self {
                id: Some(id),
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Self::err(
                Some(id),
                ErrorBody::new(ErrorCode::Internal, format!("encoding reply: {e}")),
            ),
        }
    }

    pub fn err(id: Option<u64>, error: ErrorBody) -> Self {
        Self {
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }

    /// The line as sent, without its newline.
    pub fn to_line(&self) -> String {
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"id":null,"ok":false,"error":{"code":"internal","message":"encoding"}}"#.into()
        })
    }
}

/// A line the core pushes without being asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Push {
    /// A new inbox item was committed for me.
    Message { message: Message },
}

impl Push {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Any line the core sends: a push (has `event`) or a response.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerLine {
    Push(Push),
    Response(ResponseLine),
}

impl ServerLine {
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        if v.get("event").is_some() {
            Ok(Self::Push(serde_json::from_value(v)?))
        } else {
            Ok(Self::Response(serde_json::from_value(v)?))
        }
    }
}

/// Parses one request line as the core does: bytes → UTF-8 → JSON → request.
/// On failure it returns the id if one could be read, and the error to send.
pub fn parse_request(line: &[u8]) -> Result<RequestLine, (Option<u64>, ErrorBody)> {
    let text = std::str::from_utf8(line).map_err(|_| {
        (
            None,
            ErrorBody::new(ErrorCode::BadRequest, "line is not UTF-8"),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ErrorBody::new(ErrorCode::BadRequest, format!("line is not JSON: {e}")),
        )
    })?;
    let id = value.get("id").and_then(|v| v.as_u64());
    let Some(obj) = value.as_object() else {
        return Err((
            None,
            ErrorBody::new(ErrorCode::BadRequest, "request must be a JSON object"),
        ));
    };
    if id.is_none() {
        return Err((
            None,
            ErrorBody::new(ErrorCode::BadRequest, "request needs a numeric \"id\""),
        ));
    }
    match obj.get("op").and_then(|v| v.as_str()) {
        None => {
            return Err((
                id,
                ErrorBody::new(ErrorCode::BadRequest, "request needs an \"op\""),
            ))
        }
        Some(op) if !KNOWN_OPS.contains(&op) => {
            return Err((
                id,
                ErrorBody::new(ErrorCode::UnknownOp, format!("unknown op {op:?}")),
            ))
        }
        Some(_) => {}
    }
    serde_json::from_value(value)
        .map_err(|e| (id, ErrorBody::new(ErrorCode::BadRequest, e.to_string())))
}

/// The `op` values this protocol version serves.
pub const KNOWN_OPS: &[&str] = &[
    "whoami",
    "send",
    "recv",
    "ack",
    "ask",
    "answer",
    "loose_ends",
    "cancel",
    "status",
    "remind",
    "propose_config",
    "request_spawn",
];

/// Result of `whoami`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhoamiResult {
    pub name: String,
    pub allowed_recipients: Vec<String>,
}

/// Result of `send`: the id of each committed message (several for `*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendResult {
    pub ids: Vec<u64>,
}

/// Result of `recv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecvResult {
    pub messages: Vec<Message>,
}

/// Result of `ask`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AskResult {
    pub question_id: u64,
    pub expires_at: Option<UnixMillis>,
}

/// Result of `remind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemindResult {
    pub reminder_id: u64,
    pub due_at: UnixMillis,
}

/// Result of `loose_ends`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LooseEnds {
    /// Open questions I asked.
    pub asked: Vec<Question>,
    /// Open questions addressed to me.
    pub to_me: Vec<Question>,
    /// My config proposals and spawn requests still pending, without their
    /// diff (`diff` is empty here; the decision comes as an inbox item).
    pub proposals: Vec<Approval>,
    pub reminders: Vec<Reminder>,
    /// Whether the lists were cut short to keep the reply under
    /// `MAX_RECV_REPLY_BYTES` (each list is a prefix, filled in the order
    /// above; cancel or answer some and ask again for the rest).
    #[serde(default)]
    pub truncated: bool,
}

/// Result of `propose_config` and `request_spawn`: the approval the
/// operator will decide, and the proposal commit on `proposals/<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProposalResult {
    pub approval_id: u64,
    /// `proposals/<approval_id>`.
    pub branch: String,
    /// The proposal commit (hex), whose parent is `main` as it was.
    pub commit: String,
}

/// Result of verbs that only say "done": `ack`, `answer`, `cancel`, `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Done {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::AgentName;
    use expect_test::{expect, Expect};
    use proptest::prelude::*;

    fn check(input: &str, expect: Expect) {
        let got = match parse_request(input.as_bytes()) {
            Ok(r) => format!("ok {:?}", r),
            Err((id, e)) => format!("err id={id:?} {} {}", e.code, e.message),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn parse_requests() {
        check(
            r#"{"id":1,"op":"send","to":"bob","body":"hi"}"#,
            expect![[
                r#"ok RequestLine { id: 1, req: Send { to: Agent("bob"), body: "hi", in_reply_to: None } }"#
            ]],
        );
        check(
            r#"{"id":2,"op":"recv"}"#,
            expect![[r#"ok RequestLine { id: 2, req: Recv { wait_ms: 0, max: 100 } }"#]],
        );
        check(
            r#"{"id":3,"op":"approve","approval":1}"#,
            expect![[r#"err id=Some(3) unknown_op unknown op "approve""#]],
        );
        check(
            r#"{"id":4,"op":"send","to":"../x","body":"hi"}"#,
            expect![[
                r#"err id=Some(4) bad_request agent name must start with a lowercase letter"#
            ]],
        );
        check(
            r#"{"id":5,"op":"send","to":"bob","body":"hi","from":"operator"}"#,
            expect![[
                r#"err id=Some(5) bad_request unknown field `from`, expected one of `to`, `body`, `in_reply_to`"#
            ]],
        );
        check(
            "not json",
            expect![[
                r#"err id=None bad_request line is not JSON: expected ident at line 1 column 2"#
            ]],
        );
        check(
            "[1]",
            expect![[r#"err id=None bad_request request must be a JSON object"#]],
        );
        check(
            r#"{"op":"whoami"}"#,
            expect![[r#"err id=None bad_request request needs a numeric "id""#]],
        );
    }

    #[test]
    fn proposals_parse_with_checked_paths() {
        check(
            r#"{"id":1,"op":"propose_config","agent":"alice","files":{"agent.toml":"x"},"message":"m"}"#,
            expect![[
                r#"ok RequestLine { id: 1, req: ProposeConfig { agent: "alice", files: {"agent.toml": "x"}, message: "m" } }"#
            ]],
        );
        check(
            r#"{"id":2,"op":"request_spawn","name":"scout","config":{"agent.toml":""}}"#,
            expect![[
                r#"ok RequestLine { id: 2, req: RequestSpawn { name: "scout", files: {"agent.toml": ""}, message: "" } }"#
            ]],
        );
        check(
            r#"{"id":3,"op":"propose_config","agent":"alice","files":{"../bob/agent.toml":"x"},"message":"m"}"#,
            expect![[r#"err id=Some(3) bad_request path may not contain '..'"#]],
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let (id, e) = parse_request(b"{\"id\":1,\"op\":\"\xff\"}").unwrap_err();
        assert_eq!((id, e.code), (None, ErrorCode::BadRequest));
    }

    #[test]
    fn server_lines_round_trip() {
        let push = Push::Message {
            message: Message {
                id: 7,
                kind: crate::view::ItemKind::Message,
                from: crate::view::Principal::Operator,
                to: crate::view::Principal::Agent(AgentName::new("bob").unwrap()),
                body: "<b>".into(),
                in_reply_to: None,
                question_id: None,
                options: vec![],
                multi: false,
                sent_at: 1,
                acked_at: None,
            },
        };
        let line = push.to_line();
        assert_eq!(
            ServerLine::parse(line.as_bytes()).unwrap(),
            ServerLine::Push(push)
        );
        let resp = ResponseLine::ok(3, &SendResult { ids: vec![1, 2] });
        assert_eq!(
            resp.to_line(),
            r#"{"id":3,"ok":true,"result":{"ids":[1,2]}}"#
        );
        assert_eq!(
            ServerLine::parse(resp.to_line().as_bytes()).unwrap(),
            ServerLine::Response(resp)
        );
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn parse_request_never_panics_on_jsonish(s in "\\{\"id\":[0-9]{1,3},\"op\":\"(send|recv|ask|remind|cancel)\"[ -~]{0,40}\\}") {
            let _ = parse_request(s.as_bytes());
        }
    }
}
