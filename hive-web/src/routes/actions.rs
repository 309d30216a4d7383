//! The form POSTs that change the hive: lifecycle, messages, answers and
//! approval decisions. Each takes a [`CheckedForm`] (session, origin and
//! form token already checked), forwards one operator verb to the core and
//! redirects back with a flash saying what happened (POST, then 303).
//!
//! When the core is unreachable the action answers 503 and nothing is
//! retried: the operator decides whether to try again. These handlers must
//! never call a verb twice or act without a `CheckedForm`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use hive_proto::operator::{OperatorResponse as Resp, WebRequest as Req};

use crate::app::AppState;
use crate::auth::CheckedForm;
use crate::core_link::CoreError;
use crate::error::AppError;
use crate::routes::{back_target, chrome, parse_agent};
use crate::session::Flash;
use crate::views::{
    action_name, agent_href, is_destructive, parse_action, ConfirmPage, HtmlTemplate,
};

/// Longest answer or message body the gateway forwards; the core applies
/// its own (smaller or equal) limit.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// Longest reason for a denial.
pub const MAX_REASON_BYTES: usize = 4 * 1024;

/// `POST /agent/{name}/lifecycle` with `action` (and `confirm=yes` for a
/// destructive one).
pub async fn lifecycle(
    State(state): State<AppState>,
    Path(name): Path<String>,
    form: CheckedForm,
) -> Result<Response, AppError> {
    let name = parse_agent(&name)?;
    let action = form
        .fields
        .get("action")
        .and_then(parse_action)
        .ok_or_else(|| AppError::BadRequest("unknown lifecycle action".into()))?;
    if is_destructive(action) && form.fields.get("confirm") != Some("yes") {
        let page = ConfirmPage {
            chrome: chrome(
                &state,
                &form.identity,
                format!("{} {name}?", action_name(action)),
                false,
                None,
            ),
            agent_href: agent_href(&name),
            name: name.to_string(),
            action: action_name(action),
            label: action_name(action),
        };
        return Ok(HtmlTemplate(page).into_response());
    }
    let r = state
        .call(
            &form.identity.operator,
            Req::Lifecycle {
                name: name.clone(),
                action,
            },
        )
        .await;
    let done = format!("{}: {} requested", name, action_name(action));
    finish(&state, &form, r.map(|_| done), agent_href(&name))
}

/// `POST /agent/{name}/message` with `body`.
pub async fn message(
    State(state): State<AppState>,
    Path(name): Path<String>,
    form: CheckedForm,
) -> Result<Response, AppError> {
    let name = parse_agent(&name)?;
    let body = form.fields.get("body").unwrap_or("").trim_end();
    let back = agent_href(&name);
    if body.trim().is_empty() {
        return flash_back(&state, &form, false, "a message needs some text", back);
    }
    if body.len() > MAX_TEXT_BYTES {
        return Err(AppError::BadRequest(format!(
            "a message may be at most {MAX_TEXT_BYTES} bytes"
        )));
    }
    let r = state
        .call(
            &form.identity.operator,
            Req::SendMessage {
                to: name.clone(),
                body: body.to_owned(),
            },
        )
        .await;
    let r = r.map(|resp| match resp {
        Resp::MessageSent { id } => format!("message #{id} sent to {name}"),
        _ => format!("message sent to {name}"),
    });
    finish(&state, &form, r, back)
}

/// `POST /answer-question/{id}` with `answer` (free text) and/or one or
/// more `choice` fields; `back` says which page to return to.
pub async fn answer_question(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    form: CheckedForm,
) -> Result<Response, AppError> {
    let back = back_target(form.fields.get("back"));
    let text = form.fields.get("answer").unwrap_or("").trim();
    let answer = if text.is_empty() {
        form.fields.all("choice").join(", ")
    } else {
        text.to_owned()
    };
    if answer.is_empty() {
        return flash_back(
            &state,
            &form,
            false,
            "an answer needs some text or a choice",
            back,
        );
    }
    if answer.len() > MAX_TEXT_BYTES {
        return Err(AppError::BadRequest(format!(
            "an answer may be at most {MAX_TEXT_BYTES} bytes"
        )));
    }
    let r = state
        .call(&form.identity.operator, Req::AnswerQuestion { id, answer })
        .await;
    finish(
        &state,
        &form,
        r.map(|_| format!("question #{id} answered")),
        back,
    )
}

/// `POST /approval/{id}/approve`.
pub async fn approve(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    form: CheckedForm,
) -> Result<Response, AppError> {
    let back = back_target(form.fields.get("back"));
    let r = state
        .call(&form.identity.operator, Req::Approve { id })
        .await;
    finish(
        &state,
        &form,
        r.map(|_| format!("approval #{id} approved")),
        back,
    )
}

/// `POST /approval/{id}/deny` with an optional `reason`.
pub async fn deny(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    form: CheckedForm,
) -> Result<Response, AppError> {
    let back = back_target(form.fields.get("back"));
    let reason = form.fields.get("reason").unwrap_or("").trim().to_owned();
    if reason.len() > MAX_REASON_BYTES {
        return Err(AppError::BadRequest(format!(
            "a reason may be at most {MAX_REASON_BYTES} bytes"
        )));
    }
    let r = state
        .call(&form.identity.operator, Req::Deny { id, reason })
        .await;
    finish(
        &state,
        &form,
        r.map(|_| format!("approval #{id} denied")),
        back,
    )
}

/// Ends an action: an unreachable core is a 503 page; anything the core
/// said (done or refused) becomes the flash on the page we return to.
fn finish(
    state: &AppState,
    form: &CheckedForm,
    result: Result<String, CoreError>,
    back: String,
) -> Result<Response, AppError> {
    match result {
        Ok(done) => flash_back(state, form, true, &done, back),
        Err(e) if e.is_unreachable() => Err(AppError::Core(e)),
        Err(CoreError::Refused(r)) => flash_back(state, form, false, &r.message, back),
        Err(e) => Err(AppError::Core(e)),
    }
}

fn flash_back(
    state: &AppState,
    form: &CheckedForm,
    ok: bool,
    text: &str,
    back: String,
) -> Result<Response, AppError> {
    state.sessions.set_flash(
        &form.session.key,
        Flash {
            ok,
            text: text.to_owned(),
        },
    );
    Ok(Redirect::to(&back).into_response())
}
