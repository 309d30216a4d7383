//! An in-memory core for route tests. It answers the operator verbs the
//! way the real core does (the same response variants and error codes), and
//! records every call so a test can assert that nothing changed.
//!
//! Unit tests only: the binary and the integration tests always use the
//! real `web.sock`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hive_proto::operator::{
    Approval, ConfigRev, DirEntry, Health, NetworkIsolation, OperatorResponse as Resp, RpcError,
    WebCall, WebRequest as Req,
};
use hive_proto::view::{
    AgentDetail, AgentSummary, ApprovalKind, ApprovalState, ErrorCode, ItemKind, Message, Question,
    QuestionState, RunState,
};
use hive_proto::{AgentName, Principal, SecretKey};
use hive_web::core_link::{CallFuture, CoreError, CoreLink};
use hive_web::views::ConfigAt;

/// What the fake hive holds.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeState {
    pub agents: Vec<AgentSummary>,
    pub questions: Vec<Question>,
    pub approvals: Vec<Approval>,
    pub messages: Vec<Message>,
    /// `(agent, path)` → contents.
    pub files: BTreeMap<(String, String), Vec<u8>>,
    pub journal: Vec<String>,
    pub next_id: u64,
    /// What `Health` reports about the nftables table.
    pub network: NetworkIsolation,
    /// `(agent, rev, answer)`: what `AgentConfig` answers (the commit and
    /// `(path, text)`); a missing entry is answered as the core does for
    /// an agent that never ran (no commit, no files).
    pub configs: Vec<(String, ConfigRev, ConfigAt)>,
    /// Approvals whose approve conflicts with `main`, with the core's
    /// sentence: approving one records it and leaves it pending.
    pub conflicts_on_approve: BTreeMap<u64, String>,
    /// `agent` → `key` → value, as the core's secret store holds them:
    /// `SecretNames` answers one agent's keys, sorted, and never a value.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// The fake core.
pub struct FakeCore {
    pub state: Mutex<FakeState>,
    calls: Mutex<Vec<WebCall>>,
    down: AtomicBool,
}

/// The verbs that change the hive.
pub const MUTATING: [&str; 5] = [
    "lifecycle",
    "approve",
    "deny",
    "answer_question",
    "send_message",
];

pub fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

pub fn summary(n: &str, status: &str) -> AgentSummary {
    AgentSummary {
        name: name(n),
        run_state: RunState::Running,
        connections: 1,
        status: Some(status.to_owned()),
        status_at: Some(1_700_000_000_000),
        unread: 2,
        open_questions: 0,
        deployed_sha: Some("0123456789abcdef0123".into()),
        main_sha: Some("0123456789abcdef0123".into()),
        needs_update: false,
        manager: false,
        container: None,
        uid_range: None,
        leader_pid: None,
        crash_reason: None,
        last_activity_at: None,
    }
}

pub fn question(id: u64, asker: &str, to: Principal, text: &str, options: &[&str]) -> Question {
    Question {
        id,
        asker: Principal::Agent(name(asker)),
        to,
        question: text.to_owned(),
        options: options.iter().map(|s| s.to_string()).collect(),
        multi: false,
        asked_at: 1_700_000_000_000,
        expires_at: None,
        state: QuestionState::Open,
        answer: None,
        answered_by: None,
        answered_at: None,
    }
}

impl FakeCore {
    /// Three agents, one question for the operator from alice, one pending
    /// approval for bob, one message, a state file and a journal.
    pub fn demo() -> Self {
        let state = FakeState {
            agents: vec![
                summary("alice", "thinking about lunch"),
                summary("bob", "idle"),
                summary("carol", "reading the docs"),
            ],
            questions: vec![question(
                7,
                "alice",
                Principal::Operator,
                "Ship the demo build?",
                &["yes", "no"],
            )],
            approvals: vec![Approval {
                id: 3,
                agent: name("bob"),
                proposer: Principal::Agent(name("carol")),
                message: "give bob more memory".into(),
                diff: "--- a/agent.toml\n+++ b/agent.toml\n@@ -1 +1 @@\n-memory = 1\n+memory = 2\n"
                    .into(),
                created_at: 1_700_000_000_000,
                kind: ApprovalKind::Config,
                commit: "89abcdef0123456789abcdef0123456789abcdef".into(),
                state: ApprovalState::Pending,
                conflict: None,
                decided_by: None,
                decided_at: None,
                reason: None,
                merged_sha: None,
            }],
            messages: vec![Message {
                id: 11,
                kind: ItemKind::Message,
                from: Principal::Agent(name("bob")),
                to: Principal::Agent(name("alice")),
                body: "hello alice".into(),
                in_reply_to: None,
                question_id: None,
                options: vec![],
                multi: false,
                sent_at: 1_700_000_000_000,
                acked_at: None,
            }],
            files: [(
                ("alice".to_string(), "notes/today.md".to_string()),
                b"# today\n".to_vec(),
            )]
            .into_iter()
            .collect(),
            journal: vec!["alice started".into()],
            next_id: 100,
            network: NetworkIsolation::Enforced { repairs: 0 },
            configs: Vec::new(),
            conflicts_on_approve: BTreeMap::new(),
            secrets: BTreeMap::new(),
        };
        Self {
            state: Mutex::new(state),
            calls: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
        }
    }

    /// Makes every later call fail as if the core were gone (or back).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<WebCall> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls that would change the hive.
    pub fn mutations(&self) -> Vec<WebCall> {
        self.calls()
            .into_iter()
            .filter(|c| MUTATING.contains(&c.req.verb()))
            .collect()
    }

    pub fn snapshot(&self) -> FakeState {
        self.state.lock().unwrap().clone()
    }

    fn apply(&self, req: Req) -> Result<Resp, RpcError> {
        let mut st = self.state.lock().unwrap();
        let known = |st: &FakeState, n: &AgentName| {
            if st.agents.iter().any(|a| &a.name == n) {
                Ok(())
            } else {
                Err(RpcError::new(
                    ErrorCode::NotFound,
                    format!("no agent named {n}"),
                ))
            }
        };
        match req {
            Req::ListAgents => Ok(Resp::Agents(st.agents.clone())),
            Req::AgentDetail { name } => {
                known(&st, &name)?;
                let summary = st.agents.iter().find(|a| a.name == name).unwrap().clone();
                let me = Principal::Agent(name);
                Ok(Resp::Agent(Box::new(AgentDetail {
                    summary,
                    allowed_recipients: vec!["*".into()],
                    questions: st
                        .questions
                        .iter()
                        .filter(|q| q.asker == me || q.to == me)
                        .cloned()
                        .collect(),
                    reminders: vec![],
                })))
            }
            Req::Lifecycle { name, .. } => {
                known(&st, &name)?;
                Err(RpcError::new(
                    ErrorCode::Unsupported,
                    "lifecycle actions are not supported by this runtime",
                ))
            }
            Req::Pending => Ok(Resp::Approvals(st.approvals.clone())),
            Req::Approve { id } if st.conflicts_on_approve.contains_key(&id) => {
                let why = st.conflicts_on_approve[&id].clone();
                let a = st
                    .approvals
                    .iter_mut()
                    .find(|a| a.id == id)
                    .ok_or_else(|| RpcError::new(ErrorCode::NotFound, "no such approval"))?;
                a.conflict = Some(why.clone());
                Err(RpcError::new(
                    ErrorCode::Conflict,
                    format!("approval {id} {why}; it stays pending"),
                ))
            }
            Req::Approve { id } | Req::Deny { id, .. } => {
                let before = st.approvals.len();
                st.approvals.retain(|a| a.id != id);
                if st.approvals.len() == before {
                    return Err(RpcError::new(ErrorCode::NotFound, "no such approval"));
                }
                Ok(Resp::Done)
            }
            Req::Questions => Ok(Resp::Questions(
                st.questions
                    .iter()
                    .filter(|q| q.to == Principal::Operator && q.state == QuestionState::Open)
                    .cloned()
                    .collect(),
            )),
            Req::AnswerQuestion { id, answer } => {
                let q = st
                    .questions
                    .iter_mut()
                    .find(|q| q.id == id)
                    .ok_or_else(|| RpcError::new(ErrorCode::NotFound, "no such question"))?;
                if q.state != QuestionState::Open || q.to != Principal::Operator {
                    return Err(RpcError::new(
                        ErrorCode::Conflict,
                        "that question is closed",
                    ));
                }
                q.state = QuestionState::Answered;
                q.answer = Some(answer);
                q.answered_by = Some(Principal::Operator);
                Ok(Resp::Done)
            }
            Req::SendMessage { to, body } => {
                known(&st, &to)?;
                st.next_id += 1;
                let id = st.next_id;
                st.messages.push(Message {
                    id,
                    kind: ItemKind::Message,
                    from: Principal::Operator,
                    to: Principal::Agent(to),
                    body,
                    in_reply_to: None,
                    question_id: None,
                    options: vec![],
                    multi: false,
                    sent_at: 1_700_000_000_000,
                    acked_at: None,
                });
                Ok(Resp::MessageSent { id })
            }
            Req::Messages { mailbox, .. } => {
                if let Principal::Agent(a) = &mailbox {
                    known(&st, a)?;
                }
                let mut v: Vec<Message> = st
                    .messages
                    .iter()
                    .filter(|m| m.to == mailbox)
                    .cloned()
                    .collect();
                v.reverse();
                Ok(Resp::Messages(v))
            }
            Req::ReadStateFile { agent, rel_path } => {
                known(&st, &agent)?;
                st.files
                    .get(&(agent.to_string(), rel_path.to_string()))
                    .map(|b| Resp::File {
                        bytes: b.clone(),
                        truncated: false,
                    })
                    .ok_or_else(|| RpcError::new(ErrorCode::NotFound, "no such file"))
            }
            Req::ListStateDir { agent, rel_path } => {
                known(&st, &agent)?;
                let prefix = rel_path.map(|p| format!("{p}/")).unwrap_or_default();
                let mut entries: Vec<DirEntry> = Vec::new();
                for ((a, path), bytes) in &st.files {
                    if a != agent.as_str() {
                        continue;
                    }
                    let Some(rest) = path.strip_prefix(&prefix) else {
                        continue;
                    };
                    let (first, is_dir) = match rest.split_once('/') {
                        Some((d, _)) => (d, true),
                        None => (rest, false),
                    };
                    if !entries.iter().any(|e| e.name == first) {
                        entries.push(DirEntry {
                            name: first.to_owned(),
                            is_dir,
                            size: if is_dir { 0 } else { bytes.len() as u64 },
                        });
                    }
                }
                if entries.is_empty() && !prefix.is_empty() {
                    return Err(RpcError::new(ErrorCode::NotFound, "no such directory"));
                }
                Ok(Resp::Dir(entries))
            }
            Req::Journal { agent, .. } => {
                known(&st, &agent)?;
                Ok(Resp::Journal(st.journal.clone()))
            }
            Req::AgentConfig { agent, rev } => {
                known(&st, &agent)?;
                let (sha, files) = st
                    .configs
                    .iter()
                    .find(|(a, r, _)| a == agent.as_str() && *r == rev)
                    .map(|(_, _, at)| at.clone())
                    .unwrap_or_default();
                Ok(Resp::Config { sha, files })
            }
            Req::SecretNames { agent } => {
                known(&st, &agent)?;
                let keys = st
                    .secrets
                    .get(agent.as_str())
                    .map(|m| m.keys().map(|k| SecretKey::new(k).unwrap()).collect())
                    .unwrap_or_default();
                Ok(Resp::Secrets(keys))
            }
            Req::Health => Ok(Resp::Health(Health {
                version: "fake".into(),
                runtime: "fake".into(),
                uptime_ms: 1,
                agents: st.agents.len() as u32,
                connected_agents: 0,
                last_event_seq: 0,
                network: st.network.clone(),
                unsandboxed: false,
            })),
        }
    }
}

impl CoreLink for FakeCore {
    fn call(&self, call: WebCall) -> CallFuture {
        self.calls.lock().unwrap().push(call.clone());
        let result = if self.down.load(Ordering::SeqCst) {
            Err(CoreError::Unreachable("fake core is down".into()))
        } else {
            self.apply(call.req).map_err(CoreError::Refused)
        };
        Box::pin(async move { result })
    }
}
