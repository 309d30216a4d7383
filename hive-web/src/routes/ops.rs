//! Operations endpoints, all without login: `GET /healthz` (200 while the
//! process serves), `GET /readyz` (200 only while the core answers a
//! `Health` call), `GET /metrics` (Prometheus text). None of them reveals
//! anything an agent wrote or any agent's name.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hive_proto::operator::{OperatorRequest, OperatorResponse};

use crate::app::AppState;
use crate::core_link::SYSTEM_OPERATOR;

/// How long readiness waits for the core's answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let probe = state.call(SYSTEM_OPERATOR, OperatorRequest::Health);
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(OperatorResponse::Health(_))) => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "core unreachable\n"),
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.render(
        state.hub.followers(),
        state.sessions.len(),
        state.hub.core_up(),
    );
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}
