//! The router and its shared state: [`app`] builds every route and layer,
//! [`AppState`] is what each handler gets. Layer order (outermost first):
//! security headers → metrics → body limit → `Host` check (421) → identity
//! → (timeout, for every route but the event stream) → handler.
//!
//! This module must never talk to the core except through
//! [`AppState::call`], so every round trip is timed out and counted.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{middleware, Router};
use hive_proto::operator::{OperatorResponse, WebCall, WebRequest};
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::auth::{AccessPolicy, LoggedPeers};
use crate::coalesce::{is_coalescible, Coalescer, SendFn};
use crate::core_link::{CoreError, CoreLink};
use crate::hub::EventHub;
use crate::login_limit::LoginLimiter;
use crate::metrics::Metrics;
use crate::routes::ops::Readiness;
use crate::routes::{actions, api, assets, login, ops, pages, sse};
use crate::session::SessionStore;
use crate::tokens::TokenSet;
use crate::{auth, metrics};

/// Largest request body. Forms are small; a message body is bounded by
/// the core's own limit, which is below this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request (other than the event stream) that takes longer is answered
/// 408, so a slow client cannot hold a handler forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one call to the core may take before the page gives up.
pub const CORE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most browsers following `/api/events` at once.
pub const MAX_SSE_CLIENTS: usize = 64;

/// The Content-Security-Policy on every response: same-origin script and
/// style files only, no inline anything, no framing, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What every handler shares. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

/// The shared parts, reached through `AppState`'s `Deref`.
pub struct Shared {
    pub core: Arc<dyn CoreLink>,
    pub hub: Arc<EventHub>,
    pub tokens: TokenSet,
    pub sessions: SessionStore,
    pub metrics: Metrics,
    /// Whom the gateway believes and which `Host`s it answers.
    pub access: AccessPolicy,
    /// Peers whose refused tailscale header was already logged.
    pub logged_peers: LoggedPeers,
    /// Per-address backoff for `POST /login`.
    pub login_limiter: LoginLimiter,
    /// `/readyz`'s last probe of the core.
    pub readiness: Readiness,
    /// One permit per browser following the event stream.
    pub sse_slots: Arc<Semaphore>,
    /// Collapses concurrent dashboard reads into rounds.
    pub coalescer: Arc<Coalescer>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

impl AppState {
    pub fn new(
        core: Arc<dyn CoreLink>,
        hub: Arc<EventHub>,
        tokens: TokenSet,
        access: AccessPolicy,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                core,
                hub,
                tokens,
                sessions: SessionStore::new(),
                metrics: Metrics::new(),
                access,
                logged_peers: LoggedPeers::default(),
                login_limiter: LoginLimiter::new(),
                readiness: Readiness::default(),
                sse_slots: Arc::new(Semaphore::new(MAX_SSE_CLIENTS)),
                coalescer: Arc::new(Coalescer::new()),
            }),
        }
    }

    /// A read for a page: the dashboard's argument-free reads are collapsed
    /// with concurrent identical ones ([`crate::coalesce`]); anything else
    /// is a plain [`AppState::call`].
    pub async fn read(
        &self,
        operator: &str,
        req: WebRequest,
    ) -> Result<Arc<OperatorResponse>, CoreError> {
        if !is_coalescible(&req) {
            return self.call(operator, req).await.map(Arc::new);
        }
        let me = self.clone();
        let send: SendFn = Arc::new(move |op: String, req: WebRequest| {
            let me = me.clone();
            Box::pin(async move { me.call(&op, req).await })
        });
        let verb = req.verb();
        let metrics = &self.metrics;
        self.coalescer
            .read(operator, req, send, |joined| {
                if joined {
                    metrics.coalesced(verb);
                }
            })
            .await
    }

    /// One call to the core for `operator`, timed out after
    /// [`CORE_CALL_TIMEOUT`] and counted in the metrics.
    pub async fn call(
        &self,
        operator: &str,
        req: WebRequest,
    ) -> Result<OperatorResponse, CoreError> {
        let verb = req.verb();
        let started = Instant::now();
        let call = self.core.call(WebCall {
            operator: operator.to_owned(),
            req,
        });
        let result = match tokio::time::timeout(CORE_CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(CoreError::Timeout(CORE_CALL_TIMEOUT)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CoreError::Refused(_)) => "refused",
            Err(CoreError::Unreachable(_)) => "unreachable",
            Err(CoreError::Timeout(_)) => "timeout",
            Err(CoreError::Unexpected(_)) => "unexpected",
        };
        self.metrics.core_call(verb, outcome, started.elapsed());
        result
    }
}

/// Builds the whole application.
pub fn app(state: AppState) -> Router {
    let bounded = Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/agent/{name}", get(pages::agent_slash))
        .route("/agent/{name}/", get(pages::agent))
        .route("/agent/{name}/state/", get(pages::state_root))
        .route("/agent/{name}/state/{*path}", get(pages::state_path))
        .route("/agent/{name}/lifecycle", post(actions::lifecycle))
        .route("/agent/{name}/message", post(actions::message))
        .route("/answer-question/{id}", post(actions::answer_question))
        .route("/approval/{id}/approve", post(actions::approve))
        .route("/approval/{id}/deny", post(actions::deny))
        .route("/api/agents", get(api::agents))
        .route("/api/agents/{name}", get(api::agent))
        .route("/api/approvals", get(api::approvals))
        .route("/api/questions", get(api::questions))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/static/app.js", get(assets::app_js))
        .route("/static/style.css", get(assets::style_css))
        .fallback(pages::not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    // The event stream lives as long as the browser keeps it open, so it
    // is the one route without the request timeout.
    let streams = Router::new().route("/api/events", get(sse::events));

    bounded
        .merge(streams)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::identify,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::check_host,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CSP))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "same-origin"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header_layer(
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ))
        .layer(header_layer(
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}
