//! The HTML views: the dashboard, an agent's page, its state-file browser,
//! and the 404 page. Each page asks the core for everything it shows in
//! parallel and renders what came back; a section the core could not fill
//! says why, and a page rendered while the core is unreachable still renders
//! (with the "core unreachable" banner) so the operator sees what is wrong.
//!
//! These handlers must never change anything in the hive.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use hive_proto::operator::{ConfigRev, OperatorResponse as Resp, WebRequest as Req};
use hive_proto::view::{Message, QuestionState};
use hive_proto::{AgentName, Principal};

use crate::app::AppState;
use crate::auth::PageAuth;
use crate::core_link::CoreError;
use crate::error::AppError;
use crate::expect_response;
use crate::routes::{chrome, parse_agent, parse_rel_path, section_error, shared};
use crate::views::{
    agent_href, fmt_time, lifecycle_buttons, state_href, AgentPage, AgentRow, ApprovalView,
    ConfigAt, ConfigView, DashboardPage, EntryView, EventLine, FileView, HtmlTemplate, MessageView,
    QuestionView, ReminderView, Section, StatePage,
};

/// Events listed under "recent events" on the dashboard.
pub const RECENT_EVENTS: usize = 25;
/// Messages shown on an agent page.
pub const MESSAGES_SHOWN: u32 = 50;
/// Journal lines shown on an agent page.
pub const JOURNAL_LINES: u32 = 100;
/// The dashboard's size without agent rows, roughly, for its buffer.
const PAGE_BASE_BYTES: usize = 8 * 1024;
/// One agent row's size, roughly.
const ROW_BYTES: usize = 400;

/// `GET /`.
pub async fn dashboard(State(state): State<AppState>, PageAuth(id): PageAuth) -> Response {
    // Read the event position before the state: see `EventHub::last_seq`.
    let since = state.hub.last_seq();
    let op = id.operator.as_str();
    let (agents_answer, questions_answer, approvals_answer, health_answer) = tokio::join!(
        state.read(op, Req::ListAgents),
        state.read(op, Req::Questions),
        state.read(op, Req::Pending),
        state.read(op, Req::Health),
    );
    // DESIGN §1.6 failing closed: the one sentence saying why no agent
    // container runs.
    let network_failure = match health_answer.as_ref().map(|r| r.as_ref()) {
        Ok(Resp::Health(h)) => match &h.network {
            hive_proto::operator::NetworkIsolation::Failed { reason } => Some(reason.clone()),
            _ => None,
        },
        _ => None,
    };
    let core_down = [&agents_answer, &questions_answer, &approvals_answer]
        .iter()
        .any(|r| r.as_ref().err().is_some_and(CoreError::is_unreachable));
    let agents = shared(&agents_answer, "Agents", |r| match r {
        Resp::Agents(v) => Some(v.iter().map(AgentRow::from).collect()),
        _ => None,
    });
    let questions = shared(&questions_answer, "Questions", |r| match r {
        Resp::Questions(v) => Some(
            v.iter()
                .filter(|q| q.state == QuestionState::Open && q.to == Principal::Operator)
                .map(QuestionView::from)
                .collect(),
        ),
        _ => None,
    });
    let approvals = shared(&approvals_answer, "Approvals", |r| match r {
        Resp::Approvals(v) => Some(v.iter().map(ApprovalView::from).collect()),
        _ => None,
    });
    let rows = agents.as_ref().map(Vec::len).unwrap_or(0);
    let page = DashboardPage {
        chrome: chrome(&state, &id, "dashboard", core_down, Some(since)),
        back: "/".into(),
        network_failure,
        agents: agents.map_err(|e| section_error(&e)),
        questions: questions.map_err(|e| section_error(&e)),
        approvals: approvals.map_err(|e| section_error(&e)),
        events: state
            .hub
            .recent(RECENT_EVENTS)
            .iter()
            .map(|r| EventLine::from(r.as_ref()))
            .collect(),
    };
    // Size the buffer for the whole page up front: a 200-agent dashboard is
    // about 70 KiB, and growing a String to that by doubling costs copies.
    HtmlTemplate::with_capacity(page, PAGE_BASE_BYTES + rows * ROW_BYTES).into_response()
}

/// `GET /agent/{name}`: the page lives at the trailing-slash address.
pub async fn agent_slash(Path(name): Path<String>) -> Result<Redirect, AppError> {
    let name = parse_agent(&name)?;
    Ok(Redirect::permanent(&agent_href(&name)))
}

/// `GET /agent/{name}/`.
pub async fn agent(
    State(state): State<AppState>,
    PageAuth(id): PageAuth,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let name = parse_agent(&name)?;
    let since = state.hub.last_seq();
    let op = id.operator.as_str();
    let (detail, pending, inbox, to_operator, files, journal, secrets, deployed, main) = tokio::join!(
        state.call(op, Req::AgentDetail { name: name.clone() }),
        state.read(op, Req::Pending),
        state.call(
            op,
            Req::Messages {
                mailbox: Principal::Agent(name.clone()),
                before: None,
                limit: MESSAGES_SHOWN,
            }
        ),
        state.call(
            op,
            Req::Messages {
                mailbox: Principal::Operator,
                before: None,
                limit: MESSAGES_SHOWN,
            }
        ),
        state.call(
            op,
            Req::ListStateDir {
                agent: name.clone(),
                rel_path: None,
            }
        ),
        state.call(
            op,
            Req::Journal {
                agent: name.clone(),
                lines: JOURNAL_LINES,
            }
        ),
        state.call(
            op,
            Req::SecretNames {
                agent: name.clone()
            }
        ),
        state.call(
            op,
            Req::AgentConfig {
                agent: name.clone(),
                rev: ConfigRev::Deployed,
            }
        ),
        state.call(
            op,
            Req::AgentConfig {
                agent: name.clone(),
                rev: ConfigRev::Main,
            }
        ),
    );
    let detail = expect_response!(detail, Resp::Agent);
    if let Err(CoreError::Refused(e)) = &detail {
        if e.code == hive_proto::view::ErrorCode::NotFound {
            return Err(AppError::NotFound("no such agent".into()));
        }
    }
    let pending = shared(&pending, "Approvals", |r| match r {
        Resp::Approvals(v) => Some(
            v.iter()
                .filter(|a| a.agent == name)
                .map(ApprovalView::from)
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    let inbox = expect_response!(inbox, Resp::Messages);
    let to_operator = expect_response!(to_operator, Resp::Messages);
    let files = expect_response!(files, Resp::Dir);
    let journal = expect_response!(journal, Resp::Journal);
    let secrets = expect_response!(secrets, Resp::Secrets);
    let config = |r: Result<Resp, CoreError>| -> Section<ConfigAt> {
        match r {
            Ok(Resp::Config { sha, files }) => Ok((sha, files)),
            Ok(other) => Err(section_error(&CoreError::Unexpected(
                crate::routes::response_name(&other).into(),
            ))),
            Err(e) => Err(section_error(&e)),
        }
    };
    let core_down = any_unreachable(&[
        detail.as_ref().err(),
        pending.as_ref().err(),
        inbox.as_ref().err(),
    ]);

    let status_at = detail
        .as_ref()
        .ok()
        .and_then(|d| d.summary.status_at)
        .map(fmt_time)
        .unwrap_or_default();
    let (summary, allowed, loose_ends, reminders) = match &detail {
        Ok(d) => (
            Ok(AgentRow::from(&d.summary)),
            d.allowed_recipients.join(", "),
            d.questions
                .iter()
                .filter(|q| q.state == QuestionState::Open)
                .map(QuestionView::from)
                .collect(),
            d.reminders.iter().map(ReminderView::from).collect(),
        ),
        Err(e) => (Err(section_error(e)), String::new(), Vec::new(), Vec::new()),
    };
    let messages = merge_messages(&name, inbox, to_operator);

    let page = AgentPage {
        chrome: chrome(&state, &id, name.as_str(), core_down, Some(since)),
        back: agent_href(&name),
        name: name.to_string(),
        summary,
        status_at,
        allowed_recipients: allowed,
        loose_ends,
        reminders,
        lifecycle: lifecycle_buttons(),
        approvals: pending.map_err(|e| section_error(&e)),
        messages,
        files: files
            .map(|v| v.iter().map(|e| EntryView::new(&name, "", e)).collect())
            .map_err(|e| section_error(&e)),
        journal: journal.map_err(|e| section_error(&e)),
        secrets: secrets
            .map(|keys| keys.iter().map(|k| k.to_string()).collect())
            .map_err(|e| section_error(&e)),
        configs: ConfigView::pair(config(deployed), config(main)),
        needs_update: detail.as_ref().is_ok_and(|d| d.summary.needs_update),
    };
    Ok(HtmlTemplate(page).into_response())
}

/// The agent's history: its inbox, plus what it sent to the operator,
/// newest first.
fn merge_messages(
    name: &AgentName,
    inbox: Result<Vec<Message>, CoreError>,
    to_operator: Result<Vec<Message>, CoreError>,
) -> Result<Vec<MessageView>, String> {
    let mut all = inbox.map_err(|e| section_error(&e))?;
    if let Ok(sent) = to_operator {
        all.extend(sent.into_iter().filter(|m| m.from.agent() == Some(name)));
    }
    all.sort_by_key(|m| std::cmp::Reverse(m.id));
    all.dedup_by_key(|m| m.id);
    all.truncate(MESSAGES_SHOWN as usize);
    Ok(all.iter().map(MessageView::from).collect())
}

/// `GET /agent/{name}/state/`.
pub async fn state_root(
    State(state): State<AppState>,
    PageAuth(id): PageAuth,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let name = parse_agent(&name)?;
    state_view(state, id, name, String::new()).await
}

/// `GET /agent/{name}/state/{*path}`: a directory when the path ends in
/// `/`, a file otherwise.
pub async fn state_path(
    State(state): State<AppState>,
    PageAuth(id): PageAuth,
    Path((name, path)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let name = parse_agent(&name)?;
    state_view(state, id, name, path).await
}

async fn state_view(
    state: AppState,
    id: crate::auth::Identity,
    name: AgentName,
    path: String,
) -> Result<Response, AppError> {
    let is_dir = path.is_empty() || path.ends_with('/');
    let trimmed = path.trim_end_matches('/');
    let rel = if trimmed.is_empty() {
        None
    } else {
        Some(parse_rel_path(trimmed)?)
    };
    let op = id.operator.as_str();
    let mut crumbs = Vec::new();
    let mut so_far = String::new();
    for seg in trimmed.split('/').filter(|s| !s.is_empty()) {
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(seg);
        crumbs.push((state_href(&name, &so_far), seg.to_owned()));
    }
    if !is_dir {
        // The last crumb is the file itself.
        if let Some(last) = crumbs.last_mut() {
            last.0.pop();
        }
    }
    let (listing, file, core_down) = match rel {
        Some(rel) if !is_dir => {
            let r = state
                .call(
                    op,
                    Req::ReadStateFile {
                        agent: name.clone(),
                        rel_path: rel,
                    },
                )
                .await;
            let down = r.as_ref().err().is_some_and(CoreError::is_unreachable);
            let f = match r {
                Ok(Resp::File { bytes, truncated }) => Ok(FileView {
                    size: bytes.len(),
                    text: String::from_utf8(bytes).ok(),
                    truncated,
                }),
                Ok(other) => Err(section_error(&CoreError::Unexpected(
                    crate::routes::response_name(&other).into(),
                ))),
                Err(e) => Err(page_or_note(e)?),
            };
            (None, Some(f), down)
        }
        rel => {
            let r = state
                .call(
                    op,
                    Req::ListStateDir {
                        agent: name.clone(),
                        rel_path: rel,
                    },
                )
                .await;
            let r = expect_response!(r, Resp::Dir);
            let down = r.as_ref().err().is_some_and(CoreError::is_unreachable);
            let entries = match r {
                Ok(v) => Ok(v
                    .iter()
                    .map(|e| EntryView::new(&name, trimmed, e))
                    .collect()),
                Err(e) => Err(page_or_note(e)?),
            };
            (Some(entries), None, down)
        }
    };
    let page = StatePage {
        chrome: chrome(&state, &id, format!("{name} state"), core_down, None),
        agent_href: agent_href(&name),
        name: name.to_string(),
        crumbs,
        listing,
        file,
    };
    Ok(HtmlTemplate(page).into_response())
}

/// A missing or refused path is the whole page's answer (404 / 400); any
/// other failure is a note inside the section.
fn page_or_note(e: CoreError) -> Result<String, AppError> {
    use hive_proto::view::ErrorCode;
    match e {
        CoreError::Refused(r) if r.code == ErrorCode::NotFound => {
            Err(AppError::NotFound(r.message))
        }
        CoreError::Refused(r) if r.code == ErrorCode::BadRequest => {
            Err(AppError::BadRequest(r.message))
        }
        other => Ok(section_error(&other)),
    }
}

/// The fallback: nothing lives here.
pub async fn not_found() -> AppError {
    AppError::NotFound("nothing here".into())
}

/// Whether any of the errors means the core is unreachable.
fn any_unreachable(errors: &[Option<&CoreError>]) -> bool {
    errors.iter().flatten().any(|e| e.is_unreachable())
}
