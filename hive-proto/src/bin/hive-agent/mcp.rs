//! `hive-agent mcp`: a Model Context Protocol server on stdio that gives an
//! LLM agent (Claude Code, any MCP client) the agent protocol's verbs as
//! tools, built on the official Rust SDK (`rmcp`).
//!
//! One connection to `agent.sock`, kept by [`crate::conn::Connection`],
//! which reconnects with backoff whenever the core goes away. Every pushed inbox
//! item is remembered until it is acknowledged (so `recv` can return it) and
//! announced to the client once, as an MCP `notifications/message` whose
//! `data` is `{"event": "message", "message": {...}}`. After a reconnect the
//! core delivers every unacknowledged item again; it is readable again, but
//! not announced twice.
//!
//! This module must never claim an identity (the socket is the identity),
//! never write anything but MCP on stdout (diagnostics go to stderr), and
//! never turn a refusal by the core into a failed server: a refused call is
//! a tool result with `isError` and the core's code and message.

// MCP logging (`notifications/message`) is deprecated by SEP-2577 in the
// 2026-07-28 revision, but it is the one server-to-client notification
// that carries data and that every client of the handshake revisions
// (2024-11-05 ..= 2025-11-25, which Claude Code and the Python SDK's
// `initialize` negotiate) surfaces; see docs/agents.md.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use hive_proto::agent::{CancelKind, MAX_RECV, MAX_WAIT_MS};
use hive_proto::client::agent::{AgentClient, AskOptions, RemindAt};
use hive_proto::client::ClientError;
use hive_proto::codec::DecodeError;
use hive_proto::view::{ErrorCode, Message};
use hive_proto::{AgentName, Recipient, RelPath};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, LoggingLevel, LoggingMessageNotificationParam,
    ServerCapabilities, ServerConfig, SetLevelRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{
    tool, tool_handler, tool_router, ErrorData, Peer, RoleServer, ServerHandler, ServiceExt,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::conn::{Connection, Delivery, DELIVERY_QUEUE};
use crate::SeenIds;

/// How long a tool call made while the core is away waits for the
/// background task to reconnect before it fails with a clear message.
pub const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long a call waits for the core's reply (beyond a `recv`'s own wait)
/// before it is reported as unanswered.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The logger name on every announcement, so a client can tell them apart.
pub const NOTIFY_LOGGER: &str = "hive";

/// Serves MCP on stdin/stdout until the client closes stdin.
pub async fn serve(socket: PathBuf) -> Result<()> {
    let link = Arc::new(Link::new(socket));
    let tools = HiveTools::new(Arc::clone(&link));
    let running = tools.serve(rmcp::transport::stdio()).await?;
    let (tx, rx) = mpsc::channel(DELIVERY_QUEUE);
    let keeper = {
        let link = Arc::clone(&link);
        tokio::spawn(async move { link.conn.keep(tx).await })
    };
    let inbox = tokio::spawn(follow_inbox(Arc::clone(&link), running.peer().clone(), rx));
    let _ = running.waiting().await;
    keeper.abort();
    inbox.abort();
    Ok(())
}

/// The connection to the core, and the inbox items it delivered that are
/// not acknowledged yet.
struct Link {
    conn: Connection,
    /// Unacknowledged items delivered on the current connection, by id.
    inbox: Mutex<BTreeMap<u64, Message>>,
    /// Bumped whenever the inbox changes, to wake a waiting `recv`.
    changed: watch::Sender<u64>,
    /// The least level of announcement the client asked for
    /// (`logging/setLevel`); announcements are `notice`.
    min_level: Mutex<LoggingLevel>,
}

impl Link {
    fn new(socket: PathBuf) -> Self {
        Self {
            conn: Connection::new(socket, "hive-agent mcp"),
            inbox: Mutex::default(),
            changed: watch::Sender::new(0),
            min_level: Mutex::new(LoggingLevel::Debug),
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Message>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The live connection, waiting up to [`CONNECT_WAIT`] for one.
    async fn client(&self) -> Result<AgentClient, ToolError> {
        if let Some(c) = self.conn.wait_client(Some(CONNECT_WAIT)).await {
            return Ok(c);
        }
        let why = self.conn.last_error();
        Err(ToolError::new(
            ErrorCode::Unavailable,
            format!(
                "the hive core is not reachable on {} ({}); it may be restarting: \
                 try again in a few seconds",
                self.conn.socket().display(),
                why.as_deref().unwrap_or("not connected yet"),
            ),
        ))
    }

    /// Up to `max` unacknowledged items, oldest first, waiting up to
    /// `wait` for the first.
    async fn recv(&self, wait: Duration, max: usize) -> Result<Vec<Message>, ToolError> {
        self.client().await?;
        let mut changed = self.changed.subscribe();
        let take =
            |inbox: &BTreeMap<u64, Message>| inbox.values().take(max).cloned().collect::<Vec<_>>();
        let now = take(&self.inbox());
        if !now.is_empty() || wait.is_zero() {
            return Ok(now);
        }
        let _ = tokio::time::timeout(wait, async {
            while changed.changed().await.is_ok() {
                if !self.inbox().is_empty() {
                    return;
                }
            }
        })
        .await;
        Ok(take(&self.inbox()))
    }

    fn acked(&self, id: u64) {
        self.inbox().remove(&id);
    }

    fn wants(&self, level: LoggingLevel) -> bool {
        let min = *self.min_level.lock().unwrap_or_else(|p| p.into_inner());
        level_rank(level) >= level_rank(min)
    }
}

fn level_rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// Keeps the inbox in step with what the core delivers, and announces each
/// item once (a redelivery after a reconnect is readable again, not
/// announced again).
async fn follow_inbox(link: Arc<Link>, peer: Peer<RoleServer>, mut rx: mpsc::Receiver<Delivery>) {
    let mut announced = SeenIds::default();
    while let Some(d) = rx.recv().await {
        let fresh: Vec<Message> = match d {
            Delivery::Connected(first) => {
                let fresh = first
                    .iter()
                    .filter(|m| announced.insert(m.id))
                    .cloned()
                    .collect();
                *link.inbox() = first.into_iter().map(|m| (m.id, m)).collect();
                fresh
            }
            Delivery::Pushed(m) => {
                let fresh = announced.insert(m.id).then(|| m.clone());
                link.inbox().insert(m.id, m);
                fresh.into_iter().collect()
            }
            // What it delivered comes again on the next connection.
            Delivery::Lost => {
                link.inbox().clear();
                Vec::new()
            }
        };
        link.bump();
        for m in fresh {
            announce(&link, &peer, &m).await;
        }
    }
}

/// Tells the client an inbox item arrived. A client that is gone or takes
/// no notifications loses nothing: the item stays readable through `recv`.
async fn announce(link: &Link, peer: &Peer<RoleServer>, m: &Message) {
    if !link.wants(LoggingLevel::Notice) {
        return;
    }
    let note = LoggingMessageNotificationParam::new(
        LoggingLevel::Notice,
        json!({"event": "message", "message": m}),
    )
    .with_logger(NOTIFY_LOGGER);
    let _ = peer.notify_logging_message(note).await;
}

/// A failed tool call: the core's refusal, or why the core could not be
/// asked. Reported as a tool result with `isError`, never as a protocol
/// error, so the model reads it and the session goes on.
#[derive(Debug)]
struct ToolError {
    code: ErrorCode,
    message: String,
}

impl ToolError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn from_client(e: ClientError) -> Self {
        match e {
            ClientError::Rpc(e) => Self::new(e.code, e.message),
            ClientError::Encode(DecodeError::LineTooLong) => Self::new(
                ErrorCode::TooLarge,
                "the request is over the agent protocol's 128 KiB line limit; nothing was sent",
            ),
            e if e.is_connection_lost() => Self::new(
                ErrorCode::Unavailable,
                format!(
                    "the connection to the hive core was lost during this call ({e}); it may or \
                     may not have been applied: check (for example with loose_ends) before retrying"
                ),
            ),
            e => Self::new(ErrorCode::Internal, e.to_string()),
        }
    }

    fn into_result(self) -> CallToolResult {
        let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
            "{}: {}",
            self.code, self.message
        ))]);
        r.structured_content = Some(json!({
            "error": {"code": self.code, "message": self.message}
        }));
        r
    }
}

/// A successful result as structured content (and the same JSON as text,
/// for clients that read only text).
fn success(v: impl Serialize) -> CallToolResult {
    let v = serde_json::to_value(v).unwrap_or(Value::Null);
    let v = if v.is_object() {
        v
    } else {
        json!({ "result": v })
    };
    CallToolResult::structured(v)
}

fn finish<T: Serialize>(r: Result<T, ToolError>) -> CallToolResult {
    match r {
        Ok(v) => success(v),
        Err(e) => e.into_result(),
    }
}

fn recipient(to: &str) -> Result<Recipient, ToolError> {
    Recipient::parse(to).map_err(|e| {
        ToolError::new(
            ErrorCode::BadRequest,
            format!("{to:?} is not a recipient: {e} (use an agent name, \"operator\" or \"*\")"),
        )
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// An agent's name, "operator" (the human running the hive), or "*"
    /// (every agent you may message).
    pub to: String,
    /// The message text (at most 64 KiB).
    pub body: String,
    /// The id of the inbox item this message answers, if any.
    #[serde(default)]
    pub in_reply_to: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecvParams {
    /// Milliseconds to wait for a first item when the inbox is empty
    /// (default 0: answer at once; at most one hour).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Most items to return (default 100, at most 1000).
    #[serde(default)]
    pub max: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckParams {
    /// The id of the inbox item you have handled.
    pub msg_id: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskParams {
    /// An agent's name or "operator".
    pub to: String,
    /// The question (at most 64 KiB).
    pub question: String,
    /// Choices to offer; leave out for a free-text answer.
    #[serde(default)]
    pub options: Vec<String>,
    /// Whether several options may be chosen.
    #[serde(default)]
    pub multi: bool,
    /// Seconds until the question expires unanswered (you then get an item
    /// of kind question_expired).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerParams {
    /// The question_id of an inbox item of kind "question" addressed to you.
    pub question_id: u64,
    /// Your answer: free text, or one of the options offered.
    pub answer: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelWhat {
    Question,
    Reminder,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelParams {
    /// What to withdraw: "question" or "reminder".
    pub kind: CancelWhat,
    /// The question_id or reminder_id (see loose_ends).
    pub item_id: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// One line saying what you are doing (at most 1 KiB).
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemindParams {
    /// Seconds from now; give this or `at`.
    #[serde(default)]
    pub in_s: Option<u64>,
    /// A Unix time in milliseconds; give this or `in_s`.
    #[serde(default)]
    pub at: Option<i64>,
    /// What to remind you of (at most 64 KiB).
    pub body: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeConfigParams {
    /// The agent the files are for: yourself, or one your policy lets you
    /// propose for (can_propose_for).
    pub agent: String,
    /// Paths relative to the agent's directory in the config repo
    /// ("agent.toml", "agent.nix") mapped to their whole new content.
    pub files: BTreeMap<String, String>,
    /// Why: the commit message the operator reads when deciding.
    pub message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpawnParams {
    /// The new agent's name (lowercase letters, digits and '-'; not taken).
    pub name: String,
    /// Its files, at least "agent.toml", mapped to their content.
    pub files: BTreeMap<String, String>,
    /// Why it should exist, for the operator.
    #[serde(default)]
    pub message: String,
}

fn agent_name(s: &str) -> Result<AgentName, ToolError> {
    AgentName::new(s).map_err(|e| {
        ToolError::new(
            ErrorCode::BadRequest,
            format!("{s:?} is not an agent name: {e}"),
        )
    })
}

fn config_files(files: BTreeMap<String, String>) -> Result<BTreeMap<RelPath, String>, ToolError> {
    files
        .into_iter()
        .map(|(path, text)| {
            let rel = RelPath::new(&path).map_err(|e| {
                ToolError::new(
                    ErrorCode::BadRequest,
                    format!("{path:?} is not a path inside the agent's directory: {e}"),
                )
            })?;
            Ok((rel, text))
        })
        .collect()
}

/// The MCP server: one tool per agent verb, all on the shared [`Link`].
#[derive(Clone)]
pub struct HiveTools {
    link: Arc<Link>,
    tool_router: ToolRouter<Self>,
}

impl HiveTools {
    fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            tool_router: Self::tool_router(),
        }
    }

    /// One call on the live connection, bounded by [`CALL_TIMEOUT`] past
    /// `extra` (a `recv`'s own wait).
    async fn call<T, F, Fut>(&self, extra: Duration, f: F) -> Result<T, ToolError>
    where
        F: FnOnce(AgentClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let client = self.link.client().await?;
        match tokio::time::timeout(CALL_TIMEOUT + extra, f(client.clone())).await {
            Ok(r) => r.map_err(|e| {
                self.link.conn.forget(&client);
                ToolError::from_client(e)
            }),
            Err(_) => Err(ToolError::new(
                ErrorCode::Unavailable,
                format!(
                    "the hive core did not answer within {}s; the call may or may not have been \
                     applied",
                    (CALL_TIMEOUT + extra).as_secs()
                ),
            )),
        }
    }
}

#[tool_router]
impl HiveTools {
    #[tool(
        description = "Who the hive knows you as, and which recipients (agents, operator, *) you may message."
    )]
    async fn whoami(&self) -> CallToolResult {
        finish(
            self.call(Duration::ZERO, |c| async move { c.whoami().await })
                .await,
        )
    }

    #[tool(
        description = "Send a message to another agent, to \"operator\" (the human), or to \"*\" (every agent you may message); set in_reply_to to answer an inbox item."
    )]
    async fn send(&self, Parameters(p): Parameters<SendParams>) -> CallToolResult {
        let r = async {
            let to = recipient(&p.to)?;
            self.call(Duration::ZERO, |c| async move {
                c.send(to, p.body, p.in_reply_to).await
            })
            .await
        };
        finish(r.await)
    }

    #[tool(
        description = "Read your unacknowledged inbox items (messages, questions to you, answers to your questions, reminders), oldest first; ack each one once handled or it comes again."
    )]
    async fn recv(&self, Parameters(p): Parameters<RecvParams>) -> CallToolResult {
        let wait = Duration::from_millis(p.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
        let max = p.max.unwrap_or(100).clamp(1, MAX_RECV) as usize;
        let r = self.link.recv(wait, max).await;
        finish(r.map(|messages| json!({ "messages": messages })))
    }

    #[tool(description = "Mark an inbox item handled so it is not delivered again.")]
    async fn ack(&self, Parameters(p): Parameters<AckParams>) -> CallToolResult {
        let id = p.msg_id;
        let r = self
            .call(Duration::ZERO, |c| async move { c.ack(id).await })
            .await;
        if r.is_ok() {
            self.link.acked(id);
        }
        finish(r.map(|()| json!({})))
    }

    #[tool(
        description = "Ask an agent or \"operator\" a question, optionally with choices; the answer arrives later in your inbox as an item of kind \"answer\"."
    )]
    async fn ask(&self, Parameters(p): Parameters<AskParams>) -> CallToolResult {
        let r = async {
            let to = recipient(&p.to)?;
            let opts = AskOptions {
                options: p.options,
                multi: p.multi,
                ttl_s: p.ttl_s,
            };
            self.call(Duration::ZERO, |c| async move {
                c.ask(to, p.question, opts).await
            })
            .await
        };
        finish(r.await)
    }

    #[tool(
        description = "Answer a question asked of you (its question_id is on the inbox item of kind \"question\")."
    )]
    async fn answer(&self, Parameters(p): Parameters<AnswerParams>) -> CallToolResult {
        let r = self
            .call(Duration::ZERO, |c| async move {
                c.answer(p.question_id, p.answer).await
            })
            .await;
        finish(r.map(|()| json!({})))
    }

    #[tool(
        description = "List what is still open: questions you asked, questions asked of you, your pending proposals and reminders."
    )]
    async fn loose_ends(&self) -> CallToolResult {
        finish(
            self.call(Duration::ZERO, |c| async move { c.loose_ends().await })
                .await,
        )
    }

    #[tool(description = "Withdraw one of your own open questions or pending reminders.")]
    async fn cancel(&self, Parameters(p): Parameters<CancelParams>) -> CallToolResult {
        let kind = match p.kind {
            CancelWhat::Question => CancelKind::Question,
            CancelWhat::Reminder => CancelKind::Reminder,
        };
        let r = self
            .call(Duration::ZERO, |c| async move {
                c.cancel(kind, p.item_id).await
            })
            .await;
        finish(r.map(|()| json!({})))
    }

    #[tool(description = "Set the one-line status the operator sees for you on the dashboard.")]
    async fn set_status(&self, Parameters(p): Parameters<StatusParams>) -> CallToolResult {
        let r = self
            .call(Duration::ZERO, |c| async move { c.status(p.text).await })
            .await;
        finish(r.map(|()| json!({})))
    }

    #[tool(
        description = "Schedule a reminder to yourself in in_s seconds or at a Unix-millisecond time; it arrives in your inbox as an item of kind \"reminder\"."
    )]
    async fn remind(&self, Parameters(p): Parameters<RemindParams>) -> CallToolResult {
        let r = async {
            let when =
                match (p.in_s, p.at) {
                    (Some(s), None) => RemindAt::In(s),
                    (None, Some(t)) => RemindAt::At(t),
                    _ => return Err(ToolError::new(
                        ErrorCode::BadRequest,
                        "give exactly one of in_s (seconds from now) and at (Unix milliseconds)",
                    )),
                };
            self.call(
                Duration::ZERO,
                |c| async move { c.remind(when, p.body).await },
            )
            .await
        };
        finish(r.await)
    }

    #[tool(
        description = "Propose new config files for yourself or an agent you may propose for; nothing changes until the operator approves, and the decision arrives in your inbox as an item of kind \"approval_decided\"."
    )]
    async fn propose_config(
        &self,
        Parameters(p): Parameters<ProposeConfigParams>,
    ) -> CallToolResult {
        let r = async {
            let agent = agent_name(&p.agent)?;
            let files = config_files(p.files)?;
            self.call(Duration::ZERO, |c| async move {
                c.propose_config(agent, files, p.message).await
            })
            .await
        };
        finish(r.await)
    }

    #[tool(
        description = "Ask the operator for a new agent with these files (agent.toml, agent.nix; left out, or an agent.toml with no command, they come from the hive's template: a turn loop around Claude Code with these tools); it exists only once approved, and the decision arrives in your inbox as an item of kind \"approval_decided\"."
    )]
    async fn request_spawn(&self, Parameters(p): Parameters<RequestSpawnParams>) -> CallToolResult {
        let r = async {
            let name = agent_name(&p.name)?;
            let files = config_files(p.files)?;
            self.call(Duration::ZERO, |c| async move {
                c.request_spawn(name, files, p.message).await
            })
            .await
        };
        finish(r.await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for HiveTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("hive-agent", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "You are an agent in a hive. These tools speak for you on the hive's agent socket: \
             read your inbox with recv and ack what you handled, message others with send, ask \
             the operator with ask. New inbox items are also announced as log notifications \
             from the \"hive\" logger.",
        )
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self
            .link
            .min_level
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = request.level;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hive_proto::operator::RpcError;

    #[test]
    fn a_refusal_keeps_the_cores_code_and_a_lost_connection_is_unavailable() {
        let e = ToolError::from_client(ClientError::Rpc(RpcError::new(
            ErrorCode::Forbidden,
            "not yours",
        )));
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::Forbidden, "not yours")
        );
        let r = e.into_result();
        assert_eq!(r.is_error, Some(true));
        assert_eq!(
            r.structured_content,
            Some(json!({"error": {"code": "forbidden", "message": "not yours"}}))
        );
        let e = ToolError::from_client(ClientError::Disconnected);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(
            e.message.contains("may or may not have been applied"),
            "{}",
            e.message
        );
        let e = ToolError::from_client(ClientError::Encode(DecodeError::LineTooLong));
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn names_and_paths_are_checked_before_the_core_is_asked() {
        assert_eq!(recipient("../x").unwrap_err().code, ErrorCode::BadRequest);
        assert!(matches!(recipient("*"), Ok(Recipient::All)));
        assert_eq!(
            agent_name("Bad Name").unwrap_err().code,
            ErrorCode::BadRequest
        );
        let files = BTreeMap::from([("../bob/agent.toml".to_owned(), String::new())]);
        assert_eq!(config_files(files).unwrap_err().code, ErrorCode::BadRequest);
        let files = BTreeMap::from([("agent.toml".to_owned(), "x".to_owned())]);
        assert_eq!(config_files(files).unwrap().len(), 1);
    }

    #[test]
    fn a_result_that_is_not_an_object_is_wrapped_in_one() {
        let r = success(7);
        assert_eq!(r.structured_content, Some(json!({"result": 7})));
        let r = success(json!({"ids": [1]}));
        assert_eq!(r.structured_content, Some(json!({"ids": [1]})));
    }
}
