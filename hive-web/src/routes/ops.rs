//! Operations endpoints, all without login: `GET /healthz` (200 while the
//! process serves), `GET /readyz` (200 only while the core answers a
//! `Health` call), `GET /metrics` (Prometheus text). None of them reveals
//! anything an agent wrote or any agent's name.
//!
//! `/readyz` answers from the link's last known state ([`Readiness`]): the
//! result of the last `Health` probe, refreshed at most once per
//! [`READY_REFRESH`] (or at once when the link goes up or down), so a flood
//! of probes costs the core one call a second and cannot crowd out the
//! operator's. This module must never send the core more than that.

use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hive_proto::operator::{OperatorResponse, WebRequest};
use tokio::time::Instant;

use crate::app::AppState;
use crate::core_link::SYSTEM_OPERATOR;

/// How long readiness waits for the core's answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How old the last probe may be before `/readyz` asks the core again.
pub const READY_REFRESH: Duration = Duration::from_secs(1);

/// The last readiness probe, and the one in flight.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<Probe>>,
    /// Held by the one request probing; the others answer from `last`.
    probing: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    at: Instant,
    /// What the link said (up or down) when the probe was made: a change
    /// makes the probe stale at once.
    link_up: bool,
    ready: bool,
}

impl Readiness {
    fn fresh(&self, link_up: bool) -> Option<bool> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|p| p.link_up == link_up && p.at.elapsed() < READY_REFRESH)
            .map(|p| p.ready)
    }

    fn known(&self) -> Option<bool> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|p| p.ready)
    }

    fn record(&self, link_up: bool, ready: bool) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Probe {
            at: Instant::now(),
            link_up,
            ready,
        });
    }
}

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = &state.readiness;
    let link_up = state.hub.core_up();
    let ready = match readiness.fresh(link_up) {
        Some(ready) => ready,
        None => match readiness.probing.try_lock() {
            // Someone else is asking the core right now: answer from what
            // was last known (the link's own state before any probe).
            Err(_) => readiness.known().unwrap_or(link_up),
            Ok(_guard) => match readiness.fresh(link_up) {
                Some(ready) => ready,
                None => {
                    let probe = state.call(SYSTEM_OPERATOR, WebRequest::Health);
                    let ready = matches!(
                        tokio::time::timeout(READY_TIMEOUT, probe).await,
                        Ok(Ok(OperatorResponse::Health(_)))
                    );
                    readiness.record(link_up, ready);
                    ready
                }
            },
        },
    };
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "core unreachable\n")
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
