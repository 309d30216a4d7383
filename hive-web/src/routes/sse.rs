//! `GET /api/events`: the hive's events as server-sent events, for the
//! dashboard script (session cookie) or a script (bearer token).
//!
//! A browser resumes with `Last-Event-ID` (sent by `EventSource` on
//! reconnect) or `?since=N` (the page's starting point); the hub replays
//! what it missed, or sends `reload` when it cannot. Three event types:
//! `hive` (data: the `EventRecord` as JSON, `id:` its sequence number),
//! `core` (`{"up": bool}`) and `reload`. At most `MAX_SSE_CLIENTS` follow at
//! once; each holds a permit for as long as its stream lives.
//!
//! This module must never send anything but these three shapes, and never
//! let a slow browser hold back the others (it is told to reload instead).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, OwnedSemaphorePermit};

use crate::app::AppState;
use crate::auth::ApiAuth;
use crate::error::{ApiError, AppError};
use crate::hub::HubMsg;

/// How often an idle stream sends a comment, so proxies keep it open and a
/// dead browser is noticed.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub struct SinceQuery {
    since: Option<u64>,
}

/// `GET /api/events`.
pub async fn events(
    State(state): State<AppState>,
    ApiAuth(_id): ApiAuth,
    headers: HeaderMap,
    Query(q): Query<SinceQuery>,
) -> Result<Response, ApiError> {
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.since)
        .unwrap_or_else(|| state.hub.last_seq());
    let permit = state
        .sse_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| AppError::Busy("too many event streams are open"))?;
    let follow = state.hub.follow(since);
    let mut first = VecDeque::new();
    first.push_back(core_event(state.hub.core_up()));
    if follow.reload {
        first.push_back(reload_event());
    }
    first.extend(follow.replay.iter().map(|r| record_event(r)));
    let stream = stream::unfold(
        Follower {
            first,
            rx: follow.rx,
            _permit: permit,
        },
        next_event,
    );
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
        .into_response();
    // Tell buffering proxies (nginx) to pass events through at once.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One browser's stream state; dropping it returns the permit.
struct Follower {
    first: VecDeque<SseEvent>,
    rx: broadcast::Receiver<HubMsg>,
    _permit: OwnedSemaphorePermit,
}

async fn next_event(mut f: Follower) -> Option<(Result<SseEvent, Infallible>, Follower)> {
    if let Some(e) = f.first.pop_front() {
        return Some((Ok(e), f));
    }
    let e = match f.rx.recv().await {
        Ok(HubMsg::Event(r)) => record_event(&r),
        Ok(HubMsg::Reload) | Err(RecvError::Lagged(_)) => reload_event(),
        Ok(HubMsg::Core { up }) => core_event(up),
        Err(RecvError::Closed) => return None,
    };
    Some((Ok(e), f))
}

fn record_event(r: &hive_proto::event::EventRecord) -> SseEvent {
    // serde_json escapes every control character, so the data is one line.
    let data = serde_json::to_string(r).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .event("hive")
        .id(r.seq.to_string())
        .data(data)
}

fn reload_event() -> SseEvent {
    SseEvent::default().event("reload").data("{}")
}

fn core_event(up: bool) -> SseEvent {
    SseEvent::default().event("core").data(if up {
        "{\"up\":true}"
    } else {
        "{\"up\":false}"
    })
}
