//! What the pages show: askama templates (in `templates/`) and the plain
//! view structs they render, built from `hive-proto`'s shapes.
//!
//! Every string an agent wrote (status, messages, questions, answers, file
//! names and contents, diffs, journal lines) is a plain `String` here and is
//! escaped by askama when rendered. This module must never mark anything
//! `|safe` or build HTML by hand, and every URL it builds starts with `/`
//! and percent-encodes what an agent named.

use std::fmt::Write;

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use hive_proto::event::{Event, EventRecord};
use hive_proto::operator::{Approval, DirEntry, LifecycleAction};
pub use hive_proto::time::utc as fmt_time;
use hive_proto::view::{
    AgentSummary, ItemKind, Message, Question, QuestionState, Reminder, RunState,
};
use hive_proto::{AgentName, Principal};

use crate::session::Flash;

/// Renders an askama template as an HTML response; a render failure is
/// logged and answered with a generic 500.
pub struct HtmlTemplate<T>(pub T);

impl<T: Template> HtmlTemplate<T> {
    /// The same, rendered into a buffer of `bytes` up front (for pages
    /// known to be large, so the buffer is not regrown by doubling).
    pub fn with_capacity(t: T, bytes: usize) -> SizedHtml<T> {
        SizedHtml(t, bytes)
    }
}

/// A template with the buffer size to render it into; see
/// [`HtmlTemplate::with_capacity`].
pub struct SizedHtml<T>(T, usize);

impl<T: Template> IntoResponse for HtmlTemplate<T> {
    fn into_response(self) -> Response {
        render(self.0, T::SIZE_HINT)
    }
}

impl<T: Template> IntoResponse for SizedHtml<T> {
    fn into_response(self) -> Response {
        render(self.0, self.1)
    }
}

fn render<T: Template>(t: T, capacity: usize) -> Response {
    let mut html = String::with_capacity(capacity);
    match t.render_into(&mut html) {
        Ok(()) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// What every page's frame needs.
#[derive(Clone, Debug, Default)]
pub struct Chrome {
    pub title: String,
    /// The operator shown in the header; `None` on the login and error pages.
    pub operator: Option<String>,
    /// The session's form token, put into every form.
    pub csrf: String,
    pub flash: Option<Flash>,
    /// The core could not be reached while rendering.
    pub core_down: bool,
    /// The core runs its agents without isolation (`allow_unsandboxed`).
    pub unsandboxed: bool,
    /// The event sequence this page's state is at least as new as; the
    /// script follows `/api/events` from here. `None` disables the script.
    pub since: Option<u64>,
}

/// A section that the core may have failed to fill: `Err` holds the
/// sentence shown instead.
pub type Section<T> = Result<T, String>;

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub status: u16,
    pub reason: String,
    pub message: String,
}

impl ErrorPage {
    pub fn new(status: StatusCode, message: String) -> Self {
        Self {
            chrome: Chrome {
                title: status.canonical_reason().unwrap_or("error").to_owned(),
                core_down: message == crate::error::CORE_UNREACHABLE,
                ..Chrome::default()
            },
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("error").to_owned(),
            message,
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage<'a> {
    pub chrome: Chrome,
    /// Where forms on this page return to.
    pub back: String,
    /// Why network isolation is not enforced (and so no container runs).
    pub network_failure: Option<String>,
    pub agents: Section<Vec<AgentRow<'a>>>,
    pub questions: Section<Vec<QuestionView>>,
    pub approvals: Section<Vec<ApprovalView>>,
    pub events: Vec<EventLine>,
}

#[derive(Template)]
#[template(path = "agent.html")]
pub struct AgentPage<'a> {
    pub chrome: Chrome,
    pub back: String,
    pub name: String,
    pub summary: Section<AgentRow<'a>>,
    /// When the status was set, formatted; empty if never.
    pub status_at: String,
    pub allowed_recipients: String,
    pub loose_ends: Vec<QuestionView>,
    pub reminders: Vec<ReminderView>,
    pub lifecycle: Vec<LifecycleButton>,
    pub approvals: Section<Vec<ApprovalView>>,
    pub messages: Section<Vec<MessageView>>,
    pub files: Section<Vec<EntryView>>,
    pub journal: Section<Vec<String>>,
    /// The names of the agent's secrets (the core never sends a value to
    /// the gateway), sorted.
    pub secrets: Section<Vec<String>>,
    /// The config at the deployed revision, then at `main`.
    pub configs: [ConfigSide; 2],
    /// The core says this agent's files at `main` differ from what runs:
    /// the reconciler will rebuild it.
    pub needs_update: bool,
}

#[derive(Template)]
#[template(path = "state.html")]
pub struct StatePage {
    pub chrome: Chrome,
    pub name: String,
    pub agent_href: String,
    /// `(href, label)` from the state dir's root down to here.
    pub crumbs: Vec<(String, String)>,
    pub listing: Option<Section<Vec<EntryView>>>,
    pub file: Option<Section<FileView>>,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    pub chrome: Chrome,
    pub name: String,
    pub agent_href: String,
    pub action: &'static str,
    pub label: &'static str,
}

/// One agent's row. It borrows from the core's answer rather than copying
/// it: the dashboard builds 200 of these per page.
#[derive(Clone, Debug)]
pub struct AgentRow<'a> {
    /// A validated name (`[a-z][a-z0-9-]*`), so `/agent/{{ name }}/` needs
    /// no encoding.
    pub name: &'a str,
    pub run_state: &'static str,
    pub connections: u32,
    pub status: &'a str,
    pub unread: u64,
    pub open_questions: u64,
    pub deployed_sha: &'a str,
    /// The config repo's `main`, shortened like `deployed_sha`.
    pub main_sha: &'a str,
    pub needs_update: bool,
    /// Its container (`h-<name>`, shortened stably past 8 characters), or
    /// "—" under a runtime without containers.
    pub container: &'a str,
    /// The host uids its user namespace maps onto, `base–last`, or "—".
    pub uid_range: String,
    /// Its container's init on the host while it runs, or "—".
    pub leader_pid: String,
}

impl<'a> From<&'a AgentSummary> for AgentRow<'a> {
    fn from(a: &'a AgentSummary) -> Self {
        Self {
            name: a.name.as_str(),
            run_state: run_state(a.run_state),
            connections: a.connections,
            status: a.status.as_deref().unwrap_or_default(),
            unread: a.unread,
            open_questions: a.open_questions,
            deployed_sha: short_sha(a.deployed_sha.as_deref()),
            main_sha: short_sha(a.main_sha.as_deref()),
            needs_update: a.needs_update,
            container: a.container.as_deref().unwrap_or("—"),
            uid_range: a.uid_range.map_or("—".into(), |r| {
                format!("{}–{}", r.base, r.base + (r.count - 1))
            }),
            leader_pid: a.leader_pid.map_or("—".into(), |p| p.to_string()),
        }
    }
}

/// The first 12 hex digits of a commit, or "—" when there is none.
fn short_sha(sha: Option<&str>) -> &str {
    sha.map(|s| s.get(..12).unwrap_or(s)).unwrap_or("—")
}

/// A question with, when the operator may answer it, an inline answer box.
#[derive(Clone, Debug)]
pub struct QuestionView {
    pub id: u64,
    pub asker: String,
    pub to: String,
    pub question: String,
    pub options: Vec<String>,
    pub multi: bool,
    pub asked_at: String,
    pub expires_at: String,
    pub state: &'static str,
    pub answer: String,
    pub answered_by: String,
    pub answerable: bool,
}

impl From<&Question> for QuestionView {
    fn from(q: &Question) -> Self {
        Self {
            id: q.id,
            asker: q.asker.to_string(),
            to: q.to.to_string(),
            question: q.question.clone(),
            options: q.options.clone(),
            multi: q.multi,
            asked_at: fmt_time(q.asked_at),
            expires_at: q.expires_at.map(fmt_time).unwrap_or_default(),
            state: match q.state {
                QuestionState::Open => "open",
                QuestionState::Answered => "answered",
                QuestionState::Expired => "expired",
                QuestionState::Cancelled => "cancelled",
            },
            answer: q.answer.clone().unwrap_or_default(),
            answered_by: q
                .answered_by
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            // The operator answers questions addressed to the operator
            // (`WebRequest::AnswerQuestion`); others are the
            // addressee's to answer.
            answerable: q.state == QuestionState::Open && q.to == Principal::Operator,
        }
    }
}

/// One line of a diff, classed for colour.
#[derive(Clone, Debug)]
pub struct DiffLine {
    pub class: &'static str,
    pub text: String,
}

#[derive(Clone, Debug)]
pub struct ApprovalView {
    pub id: u64,
    pub agent: String,
    pub agent_href: String,
    pub proposer: String,
    pub message: String,
    pub diff: Vec<DiffLine>,
    pub created_at: String,
    /// Why the last approve could not merge into `main` (empty if it did
    /// not conflict): the approval stays pending and the card says so.
    pub conflict: String,
}

impl From<&Approval> for ApprovalView {
    fn from(a: &Approval) -> Self {
        Self {
            id: a.id,
            agent: a.agent.to_string(),
            agent_href: agent_href(&a.agent),
            proposer: a.proposer.to_string(),
            message: a.message.clone(),
            diff: a
                .diff
                .lines()
                .map(|l| DiffLine {
                    class: if l.starts_with("+++") || l.starts_with("---") {
                        "file"
                    } else if l.starts_with('+') {
                        "add"
                    } else if l.starts_with('-') {
                        "del"
                    } else if l.starts_with("@@") {
                        "hunk"
                    } else {
                        "ctx"
                    },
                    text: l.to_owned(),
                })
                .collect(),
            created_at: fmt_time(a.created_at),
            conflict: a.conflict.clone().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MessageView {
    pub id: u64,
    pub kind: &'static str,
    pub from: String,
    pub to: String,
    pub body: String,
    pub sent_at: String,
    pub read: bool,
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        Self {
            id: m.id,
            kind: match m.kind {
                ItemKind::Message => "message",
                other => other.as_str(),
            },
            from: m.from.to_string(),
            to: m.to.to_string(),
            body: m.body.clone(),
            sent_at: fmt_time(m.sent_at),
            read: m.acked_at.is_some(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReminderView {
    pub id: u64,
    pub body: String,
    pub due_at: String,
}

impl From<&Reminder> for ReminderView {
    fn from(r: &Reminder) -> Self {
        Self {
            id: r.id,
            body: r.body.clone(),
            due_at: fmt_time(r.due_at),
        }
    }
}

/// An entry of a state-dir listing, linked to its own page.
#[derive(Clone, Debug)]
pub struct EntryView {
    pub name: String,
    pub href: String,
    pub is_dir: bool,
    pub size: u64,
}

impl EntryView {
    /// `dir` is the listed directory relative to the state dir ("" for the
    /// root).
    pub fn new(agent: &AgentName, dir: &str, e: &DirEntry) -> Self {
        let mut href = state_href(agent, dir);
        href.push_str(&encode_segment(&e.name));
        if e.is_dir {
            href.push('/');
        }
        Self {
            name: e.name.clone(),
            href,
            is_dir: e.is_dir,
            size: e.size,
        }
    }
}

/// A state file's contents.
#[derive(Clone, Debug)]
pub struct FileView {
    /// The text, or `None` when the bytes are not UTF-8.
    pub text: Option<String>,
    pub size: usize,
    pub truncated: bool,
}

/// An agent's config files at one revision (deployed or `main`).
#[derive(Clone, Debug)]
pub struct ConfigView {
    /// The full commit, or a sentence when there is none ("not deployed").
    pub sha: String,
    pub files: Vec<ConfigFile>,
}

/// One column of the config section: its label and what the core sent.
#[derive(Clone, Debug)]
pub struct ConfigSide {
    /// `deployed` or `main` (also the element's id suffix).
    pub label: &'static str,
    pub view: Section<ConfigView>,
}

/// One file of an agent's config at one revision.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    pub path: String,
    /// Repo text an agent may have proposed: always escaped.
    pub text: String,
    /// The other revision lacks this file or holds different text.
    pub changed: bool,
}

/// What `AgentConfig` answers: the commit (if any) and `(path, text)`.
pub type ConfigAt = (Option<String>, Vec<(String, String)>);

impl ConfigView {
    /// Both revisions, each file marked where the other one differs.
    /// When either side is a section error, nothing is marked.
    pub fn pair(deployed: Section<ConfigAt>, main: Section<ConfigAt>) -> [ConfigSide; 2] {
        let files = |side: &Section<ConfigAt>| side.as_ref().ok().map(|(_, f)| f.clone());
        let (of_deployed, of_main) = (files(&deployed), files(&main));
        [
            ConfigSide {
                label: "deployed",
                view: Self::marked(deployed, of_main.as_deref(), "not deployed"),
            },
            ConfigSide {
                label: "main",
                view: Self::marked(main, of_deployed.as_deref(), "not in main"),
            },
        ]
    }

    fn marked(
        side: Section<ConfigAt>,
        other: Option<&[(String, String)]>,
        none: &str,
    ) -> Section<Self> {
        side.map(|(sha, files)| Self {
            sha: sha.unwrap_or_else(|| none.to_owned()),
            files: files
                .into_iter()
                .map(|(path, text)| ConfigFile {
                    changed: other
                        .is_some_and(|o| !o.iter().any(|(p, t)| *p == path && *t == text)),
                    path,
                    text,
                })
                .collect(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct EventLine {
    pub seq: u64,
    pub at: String,
    pub text: String,
}

impl From<&EventRecord> for EventLine {
    fn from(r: &EventRecord) -> Self {
        Self {
            seq: r.seq,
            at: fmt_time(r.at),
            text: describe(&r.event),
        }
    }
}

/// A lifecycle button on an agent page.
#[derive(Clone, Debug)]
pub struct LifecycleButton {
    pub action: &'static str,
    pub label: &'static str,
    /// Destructive: the first POST asks for confirmation.
    pub confirm: bool,
}

/// Every lifecycle action, in the order the page shows them.
pub const LIFECYCLE: [LifecycleAction; 7] = [
    LifecycleAction::Start,
    LifecycleAction::Stop,
    LifecycleAction::Restart,
    LifecycleAction::Pause,
    LifecycleAction::Resume,
    LifecycleAction::Rebuild,
    LifecycleAction::Destroy,
];

/// The form value of a lifecycle action.
pub fn action_name(a: LifecycleAction) -> &'static str {
    match a {
        LifecycleAction::Start => "start",
        LifecycleAction::Stop => "stop",
        LifecycleAction::Restart => "restart",
        LifecycleAction::Pause => "pause",
        LifecycleAction::Resume => "resume",
        LifecycleAction::Rebuild => "rebuild",
        LifecycleAction::Destroy => "destroy",
    }
}

/// Parses a lifecycle form value.
pub fn parse_action(s: &str) -> Option<LifecycleAction> {
    LIFECYCLE.into_iter().find(|a| action_name(*a) == s)
}

/// Whether an action loses work or state, and so asks once: stopping,
/// restarting or rebuilding kills what the agent is doing; destroying
/// removes its container.
pub fn is_destructive(a: LifecycleAction) -> bool {
    matches!(
        a,
        LifecycleAction::Stop
            | LifecycleAction::Restart
            | LifecycleAction::Rebuild
            | LifecycleAction::Destroy
    )
}

pub fn lifecycle_buttons() -> Vec<LifecycleButton> {
    LIFECYCLE
        .into_iter()
        .map(|a| LifecycleButton {
            action: action_name(a),
            label: action_name(a),
            confirm: is_destructive(a),
        })
        .collect()
}

/// `/agent/<name>/`.
pub fn agent_href(name: &AgentName) -> String {
    // A validated name is `[a-z][a-z0-9-]*`: nothing to encode.
    let mut href = String::with_capacity(8 + name.as_str().len());
    href.push_str("/agent/");
    href.push_str(name.as_str());
    href.push('/');
    href
}

/// `/agent/<name>/state/<dir>/` with each segment of `dir` encoded.
pub fn state_href(name: &AgentName, dir: &str) -> String {
    let mut href = format!("/agent/{name}/state/");
    for seg in dir.split('/').filter(|s| !s.is_empty()) {
        href.push_str(&encode_segment(seg));
        href.push('/');
    }
    href
}

/// Percent-encodes everything in a path segment but RFC 3986's unreserved
/// characters, so an agent's file name can never break out of its segment.
pub fn encode_segment(s: &str) -> String {
    // A segment of only dots would be resolved by the browser as "here" or
    // "up"; encoded, it reaches the server as a name (and is refused there).
    if s == "." || s == ".." {
        return s.replace('.', "%2E");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pub fn run_state(s: RunState) -> &'static str {
    match s {
        RunState::Unknown => "unknown",
        RunState::Stopped => "stopped",
        RunState::Starting => "starting",
        RunState::Running => "running",
        RunState::Stopping => "stopping",
        RunState::Paused => "paused",
        RunState::Idle => "idle",
        RunState::Crashed => "crashed",
    }
}

/// One line describing an event, for the dashboard's recent events.
pub fn describe(e: &Event) -> String {
    match e {
        Event::AgentStatus { agent, text } => format!("{agent} set status: {text}"),
        Event::AgentRunState { agent, state } => format!("{agent} is {}", run_state(*state)),
        Event::MessageSent { id, from, to } => format!("message #{id} from {from} to {to}"),
        Event::MessageAcked { id, by } => format!("{by} read message #{id}"),
        Event::QuestionAsked { id, asker, to } => format!("{asker} asked {to} question #{id}"),
        Event::QuestionAnswered { id, by } => format!("{by} answered question #{id}"),
        Event::QuestionExpired { id } => format!("question #{id} expired"),
        Event::QuestionCancelled { id } => format!("question #{id} was cancelled"),
        Event::ReminderSet { id, agent, due_at } => {
            format!("{agent} set reminder #{id} for {}", fmt_time(*due_at))
        }
        Event::ReminderFired { id, agent } => format!("reminder #{id} of {agent} fired"),
        Event::ReminderCancelled { id, agent } => format!("{agent} cancelled reminder #{id}"),
        Event::ApprovalDecided { id, approved } => format!(
            "approval #{id} was {}",
            if *approved { "approved" } else { "denied" }
        ),
        Event::ApprovalOpened { id, agent } => format!("approval #{id} for {agent} is pending"),
        Event::AgentDeployed { agent, sha } => {
            format!("{agent} now runs config {}", sha.get(..12).unwrap_or(sha))
        }
        Event::AgentCrashed {
            agent,
            reason,
            restart_in_ms,
        } => match restart_in_ms {
            Some(ms) => format!("{agent} crashed ({reason}); restarting in {ms} ms"),
            None => format!("{agent} crashed ({reason}); it stays down"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_escape() {
        assert_eq!(
            encode_segment("a b/../c?d#e\"<"),
            "a%20b%2F..%2Fc%3Fd%23e%22%3C"
        );
        let alice = AgentName::new("alice").unwrap();
        assert_eq!(state_href(&alice, "x y/z"), "/agent/alice/state/x%20y/z/");
        let e = EntryView::new(
            &alice,
            "",
            &DirEntry {
                name: "..".into(),
                is_dir: true,
                size: 0,
            },
        );
        assert_eq!(e.href, "/agent/alice/state/%2E%2E/");
    }

    #[test]
    fn actions_round_trip_and_destructive_ones_ask() {
        for a in LIFECYCLE {
            assert_eq!(parse_action(action_name(a)), Some(a));
        }
        assert_eq!(parse_action("explode"), None);
        assert!(is_destructive(LifecycleAction::Destroy));
        assert!(!is_destructive(LifecycleAction::Start));
    }
}
