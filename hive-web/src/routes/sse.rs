//! `GET /api/events`: the hive's events as server-sent events, for the
//! dashboard script (session cookie) or a script (bearer token).
//!
//! A browser resumes with `Last-Event-ID` (sent by `EventSource` on
//! reconnect) or `?since=N` (the page's starting point); the hub replays
//! what it missed, or sends `reload` when it cannot. Three event types:
//! `hive` (data: the `EventRecord` as JSON, `id:` its sequence number),
//! `core` (`{"up": bool}`) and `reload`. At most `MAX_SSE_CLIENTS` follow at
//! once; each holds a permit for as long as its stream lives. A browser's
//! stream belongs to its session: at most `MAX_STREAMS_PER_SESSION` each,
//! and logging out or the session expiring ends them.
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
use crate::session::{SessionStream, StreamRefusal};

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
    ApiAuth(id): ApiAuth,
    headers: HeaderMap,
    Query(q): Query<SinceQuery>,
) -> Result<Response, ApiError> {
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.since)
        .unwrap_or_else(|| state.hub.last_seq());
    // A browser's stream belongs to its session: a few per session, and
    // they end with it. A bearer caller's stream has no session.
    let session = match &id.session {
        Some(s) => Some(SessionTie {
            stream: state.sessions.open_stream(&s.key).map_err(|r| match r {
                StreamRefusal::Gone => AppError::Unauthorized,
                StreamRefusal::TooMany => {
                    AppError::Busy("this session already has its most event streams open")
                }
            })?,
            key: s.key,
            state: state.clone(),
        }),
        None => None,
    };
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
            session,
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

/// One browser's stream state; dropping it returns the permits.
struct Follower {
    first: VecDeque<SseEvent>,
    rx: broadcast::Receiver<HubMsg>,
    session: Option<SessionTie>,
    _permit: OwnedSemaphorePermit,
}

/// The session a stream belongs to: the stream ends when it does.
struct SessionTie {
    key: [u8; 32],
    stream: SessionStream,
    state: AppState,
}

async fn next_event(mut f: Follower) -> Option<(Result<SseEvent, Infallible>, Follower)> {
    if let Some(e) = f.first.pop_front() {
        return Some((Ok(e), f));
    }
    let msg = loop {
        let Follower { rx, session, .. } = &mut f;
        let Some(tie) = session else {
            break rx.recv().await;
        };
        // Logout or eviction closes `ended`; expiry is noticed at the
        // session's deadline (which moves while the session is used).
        let deadline = tie.state.sessions.expires_at(&tie.key)?;
        tokio::select! {
            m = rx.recv() => break m,
            _ = tie.stream.ended.changed() => return None,
            _ = tokio::time::sleep_until(deadline + Duration::from_millis(1)) => continue,
        }
    };
    let e = match msg {
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
