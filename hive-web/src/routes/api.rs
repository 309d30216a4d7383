//! The JSON API for scripts: `GET /api/agents`, `/api/agents/{name}`,
//! `/api/approvals`, `/api/questions`, with `Authorization: Bearer <token>`
//! (a browser session works too). The bodies are `hive-proto`'s view types
//! as JSON. Read-only: this module must never forward a verb that changes
//! anything, because it has no form-token check.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use hive_proto::operator::{Approval, OperatorResponse as Resp, WebRequest as Req};
use hive_proto::view::{AgentDetail, AgentSummary, ErrorCode, Question};

use crate::app::AppState;
use crate::auth::ApiAuth;
use crate::core_link::CoreError;
use crate::error::{ApiError, AppError};
use crate::expect_response;
use crate::routes::parse_agent;

/// `GET /api/agents`.
pub async fn agents(
    State(state): State<AppState>,
    ApiAuth(id): ApiAuth,
) -> Result<Json<Vec<AgentSummary>>, ApiError> {
    let r = state
        .read(&id.operator, Req::ListAgents)
        .await
        .map(Arc::unwrap_or_clone);
    Ok(Json(expect_response!(r, Resp::Agents)?))
}

/// `GET /api/agents/{name}`.
pub async fn agent(
    State(state): State<AppState>,
    ApiAuth(id): ApiAuth,
    Path(name): Path<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    let name = parse_agent(&name)?;
    let r = state.call(&id.operator, Req::AgentDetail { name }).await;
    match expect_response!(r, Resp::Agent) {
        Ok(d) => Ok(Json(*d)),
        Err(CoreError::Refused(e)) if e.code == ErrorCode::NotFound => {
            Err(AppError::NotFound("no such agent".into()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /api/approvals`: pending approvals.
pub async fn approvals(
    State(state): State<AppState>,
    ApiAuth(id): ApiAuth,
) -> Result<Json<Vec<Approval>>, ApiError> {
    let r = state
        .read(&id.operator, Req::Pending)
        .await
        .map(Arc::unwrap_or_clone);
    Ok(Json(expect_response!(r, Resp::Approvals)?))
}

/// `GET /api/questions`: open questions addressed to the operator.
pub async fn questions(
    State(state): State<AppState>,
    ApiAuth(id): ApiAuth,
) -> Result<Json<Vec<Question>>, ApiError> {
    let r = state
        .read(&id.operator, Req::Questions)
        .await
        .map(Arc::unwrap_or_clone);
    Ok(Json(expect_response!(r, Resp::Questions)?))
}
