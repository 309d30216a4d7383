//! The handlers, one module per kind of route: [`pages`] (HTML views),
//! [`actions`] (form POSTs), [`login`], [`api`] (JSON), [`sse`] (the event
//! stream), [`ops`] (health, readiness, metrics) and [`assets`] (the one
//! script and stylesheet). Helpers they share live here.
//!
//! Every name or path taken from a URL is parsed into `AgentName` /
//! `RelPath` here before anything else sees it; a bad name is a 404, a bad
//! path a 400. Handlers must never build an `WebRequest` from a raw
//! string.

pub mod actions;
pub mod api;
pub mod assets;
pub mod login;
pub mod ops;
pub mod pages;
pub mod sse;

use std::sync::Arc;

use hive_proto::operator::OperatorResponse;
use hive_proto::{AgentName, RelPath};

use crate::app::AppState;
use crate::auth::Identity;
use crate::core_link::CoreError;
use crate::error::{AppError, CORE_UNREACHABLE};
use crate::views::Chrome;

/// An agent name from a URL; anything that is not a valid name is simply
/// not a page here.
pub fn parse_agent(raw: &str) -> Result<AgentName, AppError> {
    AgentName::new(raw).map_err(|_| AppError::NotFound("no such agent".into()))
}

/// A state-file path from a URL.
pub fn parse_rel_path(raw: &str) -> Result<RelPath, AppError> {
    RelPath::new(raw).map_err(|e| AppError::BadRequest(format!("bad path: {e}")))
}

/// The frame of a page for `identity`, taking the session's flash.
pub fn chrome(
    state: &AppState,
    identity: &Identity,
    title: impl Into<String>,
    core_down: bool,
    since: Option<u64>,
) -> Chrome {
    let (csrf, flash) = match &identity.session {
        Some(s) => (s.csrf.clone(), state.sessions.take_flash(&s.key)),
        None => (String::new(), None),
    };
    Chrome {
        title: title.into(),
        operator: Some(identity.operator.clone()),
        csrf,
        flash,
        core_down,
        unsandboxed: state.hub.unsandboxed(),
        since,
    }
}

/// The sentence a page section shows when the core did not fill it.
pub fn section_error(e: &CoreError) -> String {
    match e {
        CoreError::Unreachable(_) | CoreError::Timeout(_) => CORE_UNREACHABLE.into(),
        CoreError::Refused(r) => r.message.clone(),
        CoreError::Unexpected(_) => "unexpected answer from the core".into(),
    }
}

/// The name of a response variant, for "unexpected answer" errors.
pub fn response_name(r: &OperatorResponse) -> &'static str {
    match r {
        OperatorResponse::Done => "Done",
        OperatorResponse::Agents(_) => "Agents",
        OperatorResponse::Agent(_) => "Agent",
        OperatorResponse::Approvals(_) => "Approvals",
        OperatorResponse::Questions(_) => "Questions",
        OperatorResponse::Messages(_) => "Messages",
        OperatorResponse::MessageSent { .. } => "MessageSent",
        OperatorResponse::File { .. } => "File",
        OperatorResponse::Dir(_) => "Dir",
        OperatorResponse::Journal(_) => "Journal",
        OperatorResponse::Config { .. } => "Config",
        OperatorResponse::Diff(_) => "Diff",
        OperatorResponse::Audit(_) => "Audit",
        OperatorResponse::AuditVerified { .. } => "AuditVerified",
        OperatorResponse::Health(_) => "Health",
        OperatorResponse::Secrets(_) => "Secrets",
        OperatorResponse::Proposed(_) => "Proposed",
        OperatorResponse::ConfigLog(_) => "ConfigLog",
        OperatorResponse::Reverted { .. } => "Reverted",
        OperatorResponse::Doctor(_) => "Doctor",
    }
}

/// Takes the payload of the expected response variant, or says what came
/// instead: `expect!(result, OperatorResponse::Agents)`.
#[macro_export]
macro_rules! expect_response {
    ($result:expr, $variant:path) => {
        match $result {
            Ok($variant(v)) => Ok(v),
            Ok(other) => Err($crate::core_link::CoreError::Unexpected(format!(
                "{} where {} was expected",
                $crate::routes::response_name(&other),
                stringify!($variant)
            ))),
            Err(e) => Err(e),
        }
    };
}

/// Takes what a page needs from a shared answer, by reference; `pick`
/// returns `None` for a variant it did not expect.
pub fn shared<'a, T>(
    r: &'a Result<Arc<OperatorResponse>, CoreError>,
    expected: &'static str,
    pick: impl FnOnce(&'a OperatorResponse) -> Option<T>,
) -> Result<T, CoreError> {
    match r {
        Ok(resp) => pick(resp).ok_or_else(|| {
            CoreError::Unexpected(format!(
                "{} where {expected} was expected",
                response_name(resp)
            ))
        }),
        Err(e) => Err(e.clone()),
    }
}

/// Where a form goes back to: the dashboard, or an agent page — nothing
/// else, so a `back` field can never become an open redirect.
pub fn back_target(raw: Option<&str>) -> String {
    let Some(raw) = raw else {
        return "/".into();
    };
    if let Some(name) = raw
        .strip_prefix("/agent/")
        .and_then(|rest| rest.strip_suffix('/'))
    {
        if let Ok(name) = AgentName::new(name) {
            return crate::views::agent_href(&name);
        }
    }
    "/".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_targets_stay_on_this_site() {
        assert_eq!(back_target(Some("/agent/alice/")), "/agent/alice/");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/agent/../",
            "/agent/a/b/",
            "/agent/alice",
            "javascript:alert(1)",
        ] {
            assert_eq!(back_target(Some(bad)), "/", "{bad}");
        }
        assert_eq!(back_target(None), "/");
    }
}
