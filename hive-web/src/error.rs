//! The gateway's one error type at the HTTP boundary. [`AppError`] renders
//! an HTML page, [`ApiError`] the same error as JSON. A failure whose detail
//! is ours (a template, an unexpected core answer) is logged in full and
//! shown as a generic sentence; the core's own refusals are shown as the
//! core worded them, because they are meant for the operator ("not
//! supported by this runtime").
//!
//! This module must never put a token, a session id or a Rust error chain
//! into a response body.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use hive_proto::view::ErrorCode;

use crate::core_link::CoreError;
use crate::views::ErrorPage;

/// The sentence every page shows while the core cannot be reached.
pub const CORE_UNREACHABLE: &str = "core unreachable";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("log in first")]
    Unauthorized,
    /// The gateway itself is at a limit (e.g. open event streams).
    #[error("{0}")]
    Busy(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// The status code and the sentence the caller may see.
    pub fn public(&self) -> (StatusCode, String) {
        match self {
            Self::Core(CoreError::Unreachable(_) | CoreError::Timeout(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, CORE_UNREACHABLE.into())
            }
            Self::Core(CoreError::Refused(e)) => {
                let status = status_of(e.code);
                if status == StatusCode::INTERNAL_SERVER_ERROR {
                    (status, "the core failed to do this; see its log".into())
                } else {
                    (status, e.message.clone())
                }
            }
            Self::Core(CoreError::Unexpected(_)) => (
                StatusCode::BAD_GATEWAY,
                "the core answered something unexpected; see the gateway's log".into(),
            ),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, (*m).to_owned()),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "log in first".into()),
            Self::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, (*m).to_owned()),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the gateway's log".into(),
            ),
        }
    }

    fn log(&self, status: StatusCode) {
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
    }
}

/// How a core refusal maps onto HTTP.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::UnknownOp => StatusCode::BAD_REQUEST,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Limit | ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = self.public();
        self.log(status);
        let page = ErrorPage::new(status, message);
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "the error page failed to render");
                (status, "error").into_response()
            }
        }
    }
}

/// [`AppError`] for `/api/*`: `{"error": "..."}` with the same status.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        Self(AppError::Core(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.0.public();
        self.0.log(status);
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
