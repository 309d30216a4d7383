//! `GET /login`, `POST /login` (form field `token`) and `POST /logout`.
//!
//! A correct token starts a session: a fresh random id in an `HttpOnly;
//! SameSite=Strict` cookie (`Secure` when the browser came over TLS). A
//! wrong one gets the login page again with a 401 and is logged with the
//! peer's address, never the token.
//!
//! This module must never put the token anywhere but through
//! `TokenSet::verify`, and never redirect anywhere but this site.

use axum::extract::{ConnectInfo, State};
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;

use crate::app::AppState;
use crate::auth::{clear_cookie_header, session_cookie_header, CheckedForm, Identity, LoginForm};
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

/// `POST /login`.
pub async fn submit(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    form: LoginForm,
) -> Response {
    let presented = form.fields.get("token").unwrap_or("").trim();
    match state.tokens.verify(presented) {
        Some(login) => {
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
            tracing::warn!(peer = ?peer.map(|p| p.0 .0), "login with a token that is not on the list");
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
