//! `GET /login`, `POST /login` (form field `token`) and `POST /logout`.
//!
//! A correct token starts a session: a fresh random id in an `HttpOnly;
//! SameSite=Strict` cookie (`Secure` when the browser came over TLS). A
//! wrong one gets the login page again with a 401 and is logged with the
//! peer's address, never the token, and starts that address's backoff
//! window ([`crate::login_limit`]): until it passes, attempts are 429.
//!
//! This module must never put the token anywhere but through
//! `TokenSet::verify`, and never redirect anywhere but this site.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;

use crate::app::AppState;
use tokio::time::Instant;

use crate::auth::{clear_cookie_header, session_cookie_header, CheckedForm, Identity, LoginForm};
use crate::login_limit::Gate;
use crate::views::{Chrome, HtmlTemplate, LoginPage};

fn login_page(error: Option<String>) -> LoginPage {
    LoginPage {
        chrome: Chrome {
            title: "log in".into(),
            ..Chrome::default()
        },
        error,
    }
}

/// `GET /login`: the form, or the dashboard when already logged in.
pub async fn form(identity: Option<Extension<Identity>>) -> Response {
    if identity.is_some() {
        return Redirect::to("/").into_response();
    }
    HtmlTemplate(login_page(None)).into_response()
}

/// `POST /login`. An address inside its backoff window (after a wrong
/// token) is answered 429 before the token is looked at.
pub async fn submit(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    form: LoginForm,
) -> Response {
    // No peer (never so from our server): one shared bucket, fail closed.
    let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0 .0.ip().to_canonical());
    let now = Instant::now();
    if let Gate::Closed { retry_after, log } = state.login_limiter.check(ip, now) {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        if log {
            tracing::warn!(peer = %ip, retry_after_secs = secs, "login refused: too many wrong tokens from this address (logged once per backoff window)");
        }
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            HtmlTemplate(login_page(Some(format!(
                "Too many wrong tokens from your address; try again in {secs} s."
            )))),
        )
            .into_response();
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let presented = form.fields.get("token").unwrap_or("").trim();
    match state.tokens.verify(presented) {
        Some(login) => {
            state.login_limiter.succeeded(ip);
            let (id, _) = state.sessions.create(login);
            tracing::info!(operator = login, "operator logged in");
            let mut resp = Redirect::to("/").into_response();
            resp.headers_mut().append(
                SET_COOKIE,
                session_cookie_header(&id, form.transport.secure),
            );
            resp
        }
        None => {
            let window = state.login_limiter.failed(ip, now);
            tracing::warn!(peer = %ip, backoff_secs = window.as_secs(), "login with a token that is not on the list");
            (
                StatusCode::UNAUTHORIZED,
                HtmlTemplate(login_page(Some("That token is not valid.".into()))),
            )
                .into_response()
        }
    }
}

/// `POST /logout`: ends the session (form token required like any POST).
pub async fn logout(State(state): State<AppState>, form: CheckedForm) -> Response {
    state.sessions.remove(&form.session.key);
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut()
        .append(SET_COOKIE, clear_cookie_header(form.transport.secure));
    resp
}
