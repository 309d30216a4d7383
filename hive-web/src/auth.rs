//! Who is asking, and whether a state-changing request really comes from
//! our own page.
//!
//! [`check_host`] runs first: a `Host` that is not one of ours is a 421.
//! [`identify`] runs on every request. It resolves the operator from, in
//! order: a trusted `Tailscale-User-Login` (only when the TCP peer is
//! loopback, the kernel says `tailscaled`'s uid opened the connection, and
//! the login is on the allow-list; a top-level page load gets it a session
//! of its own), the session cookie, or — under `/api/` only —
//! `Authorization: Bearer`. It stores an [`Identity`] (or nothing) and the [`Transport`]
//! facts in the request's extensions; the extractors below turn a missing
//! identity into a 303 to `/login` (pages) or a 401 (API).
//!
//! [`CheckedForm`] is the only way a handler receives a POST body: it
//! demands a session, a same-origin `Origin`/`Sec-Fetch-Site`, a form
//! content type and the session's form token, in that order, before the
//! handler runs.
//!
//! This module must never accept a token in a URL, believe a forwarded
//! header from a non-loopback peer, believe the tailscale header on a
//! connection it has not asked the kernel about, or let a request change
//! anything without all three checks.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::{ApiError, AppError};
use crate::session::{cookie_name, SessionInfo};
use crate::sock_diag::PeerSocket;

/// The header `tailscale serve` sets to the tailnet login of the visitor.
pub const TAILSCALE_LOGIN_HEADER: &str = "tailscale-user-login";
/// The form field carrying the per-session form token.
pub const CSRF_FIELD: &str = "csrf";

/// How the operator was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthVia {
    Session,
    Bearer,
    Tailscale,
}

/// The operator a request acts for.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The login name the core records in its audit log.
    pub operator: String,
    /// The browser session, when there is one (never for bearer calls).
    pub session: Option<SessionInfo>,
    pub via: AuthVia,
}

/// Facts about how the request reached us.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transport {
    /// The TCP peer is a loopback address (e.g. `tailscale serve`).
    pub peer_loopback: bool,
    /// The browser reached us over TLS (as a loopback proxy says), so the
    /// session cookie is marked `Secure`.
    pub secure: bool,
}

/// Whom the gateway believes and which names it answers to, from the flags
/// (`config::Cli::validate` builds it).
#[derive(Clone, Debug)]
pub struct AccessPolicy {
    /// Exact `Tailscale-User-Login` values that identify an operator on a
    /// connection `tailscaled` opened. Empty: the header is never believed.
    pub trusted_tailscale: Vec<String>,
    /// The uid `tailscaled` runs as: only a loopback connection whose far
    /// end the kernel says this uid owns may carry a believed header.
    pub tailscale_uid: u32,
    /// Lower-case host names and IP addresses (no port) a request's `Host`
    /// may name; anything else is answered 421 before any auth.
    pub allowed_hosts: Vec<String>,
}

impl AccessPolicy {
    /// The defaults for a gateway listening on `listen`: no tailscale
    /// identity, and `Host` may be the listen address or `localhost` (and,
    /// for a loopback or wildcard bind, the loopback addresses).
    pub fn for_listen(listen: SocketAddr) -> Self {
        let mut hosts = Vec::new();
        let ip = listen.ip().to_canonical();
        if ip.is_unspecified() || ip.is_loopback() {
            for lo in ["127.0.0.1", "::1"] {
                if ip.is_unspecified() || ip.to_string() == lo {
                    hosts.push(lo.to_owned());
                }
            }
        } else {
            hosts.push(ip.to_string());
        }
        hosts.push("localhost".to_owned());
        Self {
            trusted_tailscale: Vec::new(),
            tailscale_uid: crate::config::DEFAULT_TAILSCALE_UID,
            allowed_hosts: hosts,
        }
    }

    /// Whether `Host` (or a loopback proxy's `X-Forwarded-Host`) names us.
    pub fn host_allowed(&self, raw: &str) -> bool {
        host_of(raw).is_some_and(|h| self.allowed_hosts.contains(&h))
    }
}

/// A `--public-host` entry as [`AccessPolicy::allowed_hosts`] keeps it: an
/// IP address, or a DNS name (letters, digits, `-`, `.`; one trailing dot
/// dropped), lower-cased. No port, no scheme.
pub fn public_host_name(raw: &str) -> Option<String> {
    if let Ok(ip) = raw.parse::<std::net::IpAddr>() {
        return Some(ip.to_canonical().to_string());
    }
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(name)
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]`,
/// `[v6]:port`), normalised like [`public_host_name`].
pub fn host_of(raw: &str) -> Option<String> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    public_host_name(host)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The most peers [`identify`] remembers having logged a refused
/// tailscale header for; past it the memory starts over.
pub const MAX_LOGGED_PEERS: usize = 1024;

/// Remembers which peers were already logged, so a refusal is logged once
/// per peer rather than once per request.
#[derive(Default)]
pub struct LoggedPeers {
    seen: std::sync::Mutex<std::collections::HashSet<(std::net::IpAddr, Option<u32>)>>,
}

impl LoggedPeers {
    /// True the first time `(ip, uid)` is seen.
    pub fn first(&self, ip: std::net::IpAddr, uid: Option<u32>) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_LOGGED_PEERS {
            seen.clear();
        }
        seen.insert((ip, uid))
    }
}

/// Middleware, before any auth: a request whose `Host` (or, from a
/// loopback peer, `X-Forwarded-Host`) is not one of ours is answered
/// `421 Misdirected Request`, so a page on a rebound DNS name cannot speak
/// to the gateway from the operator's browser.
pub async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if host_is_ours(&state.access, &req) {
        return next.run(req).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this gateway does not serve that host name\n",
    )
        .into_response()
}

fn host_is_ours(access: &AccessPolicy, req: &Request) -> bool {
    let peer_loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    let named = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().is_ok_and(|h| access.host_allowed(h)))
    };
    let host_ok = match named(HOST.as_str()) {
        Some(ok) => ok,
        // HTTP/1.1 absolute-form (`GET http://host/ HTTP/1.1`) names the
        // host in the target instead.
        None => req.uri().host().is_some_and(|h| access.host_allowed(h)),
    };
    let forwarded_ok = !peer_loopback || named("x-forwarded-host") != Some(false);
    host_ok && forwarded_ok
}

/// Whether the request is the browser loading a page at the top level, as
/// the operator typing the address or following one of our links does:
/// `Sec-Fetch-Dest: document` and `Sec-Fetch-Site` `none` or `same-origin`.
/// An image, script or frame a foreign page embeds is none of these.
pub fn is_top_level_navigation(headers: &HeaderMap) -> bool {
    header_is(headers, "sec-fetch-dest", "document")
        && (header_is(headers, "sec-fetch-site", "none")
            || header_is(headers, "sec-fetch-site", "same-origin"))
}

/// Middleware: resolves [`Identity`] and [`Transport`]; see the module
/// header for the order.
pub async fn identify(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // A request without peer information (a misconfigured server) is
    // treated as remote: fail closed.
    let peer_loopback = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
    let headers = req.headers();
    let secure = peer_loopback
        && (header_is(headers, "x-forwarded-proto", "https")
            || headers.contains_key(TAILSCALE_LOGIN_HEADER));
    let transport = Transport {
        peer_loopback,
        secure,
    };
    let path = req.uri().path();
    let is_api = path.starts_with("/api/");
    // Only a top-level page load mints a session for a tailscale visitor;
    // API calls, assets and whatever a foreign page embeds do not, so they
    // cannot churn the session store and evict the operator's sessions.
    let may_mint = req.method() == axum::http::Method::GET
        && !is_api
        && !path.starts_with("/static/")
        && is_top_level_navigation(headers);

    let from_cookie = session_cookie(headers, secure).and_then(|id| state.sessions.lookup(id));
    let tailscale = tailscale_login(&state, &req, peer);
    let headers = req.headers();

    let mut set_cookie = None;
    let identity = match (tailscale, from_cookie) {
        (Some(login), Some(s)) if s.operator == login => Some(Identity {
            operator: login,
            session: Some(s),
            via: AuthVia::Tailscale,
        }),
        (Some(login), _) => {
            let session = if may_mint {
                let (id, info) = state.sessions.create(&login);
                set_cookie = Some(session_cookie_header(&id, secure));
                Some(info)
            } else {
                None
            };
            Some(Identity {
                operator: login,
                session,
                via: AuthVia::Tailscale,
            })
        }
        (None, Some(s)) => Some(Identity {
            operator: s.operator.clone(),
            session: Some(s),
            via: AuthVia::Session,
        }),
        (None, None) if is_api => {
            bearer(headers)
                .and_then(|t| state.tokens.verify(t))
                .map(|login| Identity {
                    operator: login.to_owned(),
                    session: None,
                    via: AuthVia::Bearer,
                })
        }
        (None, None) => None,
    };

    req.extensions_mut().insert(transport);
    if let Some(identity) = identity {
        req.extensions_mut().insert(identity);
    }
    let mut resp = next.run(req).await;
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
    resp
}

/// The allow-listed login a `Tailscale-User-Login` header names, if the
/// header is to be believed: the TCP peer is loopback and the kernel says
/// the far end of this connection belongs to `tailscaled`'s uid
/// ([`crate::sock_diag`]). A header that is not believed makes the request
/// an ordinary unauthenticated one, and is logged once per peer.
fn tailscale_login(state: &AppState, req: &Request, peer: Option<SocketAddr>) -> Option<String> {
    let access = &state.access;
    if access.trusted_tailscale.is_empty() {
        return None;
    }
    let header = req.headers().get(TAILSCALE_LOGIN_HEADER)?;
    let conn = req.extensions().get::<PeerSocket>();
    let refused: Option<(Option<u32>, String)> = match (peer, conn) {
        (Some(p), Some(conn)) if p.ip().to_canonical().is_loopback() => match conn.owner() {
            Ok(o) if o.uid == access.tailscale_uid => None,
            Ok(o) => Some((
                Some(o.uid),
                format!(
                    "the connection belongs to uid {}, not tailscaled's uid {}",
                    o.uid, access.tailscale_uid
                ),
            )),
            Err(e) => Some((None, format!("the connection's owner is unknown: {e}"))),
        },
        (Some(p), _) if !p.ip().to_canonical().is_loopback() => {
            Some((None, "the peer is not loopback".to_owned()))
        }
        _ => Some((None, "the connection's ends are unknown".to_owned())),
    };
    if let Some((uid, why)) = refused {
        let ip = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        if state.logged_peers.first(ip, uid) {
            tracing::warn!(
                peer = ?peer,
                reason = %why,
                "ignored a Tailscale-User-Login header (logged once per peer)"
            );
        }
        return None;
    }
    let login = header.to_str().ok()?;
    access
        .trusted_tailscale
        .iter()
        .any(|t| t == login)
        .then(|| login.to_owned())
}

/// A page's operator; without one the browser is sent to `/login`.
pub struct PageAuth(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for PageAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .map(PageAuth)
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

/// An API caller's operator; without one the answer is 401.
pub struct ApiAuth(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for ApiAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        match parts.extensions.get::<Identity>() {
            Some(i) => Ok(ApiAuth(i.clone())),
            None => {
                let mut resp = ApiError(AppError::Unauthorized).into_response();
                resp.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"hyperhive\""),
                );
                Err(resp)
            }
        }
    }
}

/// A form POST that passed every check: session, origin, content type and
/// form token.
pub struct CheckedForm {
    pub identity: Identity,
    pub session: SessionInfo,
    pub transport: Transport,
    pub fields: Fields,
}

impl<S: Send + Sync> FromRequest<S> for CheckedForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let identity = req
            .extensions()
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| Redirect::to("/login").into_response())?;
        let session = identity
            .session
            .clone()
            .ok_or_else(|| AppError::Forbidden("a form needs a browser session").into_response())?;
        let transport = req
            .extensions()
            .get::<Transport>()
            .copied()
            .unwrap_or_default();
        check_same_origin(req.headers(), &transport)
            .map_err(|why| AppError::Forbidden(why).into_response())?;
        let fields = read_form(req, state).await?;
        let presented = fields.get(CSRF_FIELD).unwrap_or("");
        let ok: bool = presented.as_bytes().ct_eq(session.csrf.as_bytes()).into();
        if !ok {
            return Err(
                AppError::Forbidden("the form token is missing or stale; reload the page")
                    .into_response(),
            );
        }
        Ok(Self {
            identity,
            session,
            transport,
            fields,
        })
    }
}

/// The login form: same-origin and form content type are checked, there is
/// no session (and so no form token) yet.
pub struct LoginForm {
    pub transport: Transport,
    pub fields: Fields,
}

impl<S: Send + Sync> FromRequest<S> for LoginForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let transport = req
            .extensions()
            .get::<Transport>()
            .copied()
            .unwrap_or_default();
        check_same_origin(req.headers(), &transport)
            .map_err(|why| AppError::Forbidden(why).into_response())?;
        let fields = read_form(req, state).await?;
        Ok(Self { transport, fields })
    }
}

async fn read_form<S: Send + Sync>(req: Request, state: &S) -> Result<Fields, Response> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/x-www-form-urlencoded",
        )
            .into_response());
    }
    // Over-long bodies fail here with 413 (the body limit layer wraps them).
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Fields::parse(&bytes))
}

/// The fields of an `application/x-www-form-urlencoded` body, in order;
/// repeated names are kept (multi-choice answers).
#[derive(Clone, Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Whether a state-changing request comes from a page of this origin.
///
/// `Sec-Fetch-Site`, when the browser sends it, must be `same-origin`.
/// `Origin`, when sent, must name the host the request was addressed to
/// (`Host`, or `X-Forwarded-Host` when a loopback proxy such as `tailscale
/// serve` rewrote `Host`). At least one of the two must be present: every
/// browser this dashboard supports sends them on a form POST, and a request
/// with neither cannot show where it came from.
pub fn check_same_origin(headers: &HeaderMap, transport: &Transport) -> Result<(), &'static str> {
    let site = headers.get("sec-fetch-site");
    if let Some(site) = site {
        if site.as_bytes() != b"same-origin" {
            return Err("this request came from another site");
        }
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return if site.is_some() {
            Ok(())
        } else {
            Err("a state-changing request must carry Origin or Sec-Fetch-Site")
        };
    };
    let origin = origin
        .to_str()
        .map_err(|_| "the Origin header is malformed")?;
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or("this request came from another origin")?;
    let same = |h: Option<&HeaderValue>| {
        h.and_then(|v| v.to_str().ok())
            .is_some_and(|h| h.eq_ignore_ascii_case(authority))
    };
    if same(headers.get(HOST)) || (transport.peer_loopback && same(headers.get("x-forwarded-host")))
    {
        Ok(())
    } else {
        Err("this request came from another origin")
    }
}

/// The `Set-Cookie` value that starts a session: `__Host-hive_session`
/// with `Secure` behind TLS, `hive_session` over plain HTTP.
pub fn session_cookie_header(id: &str, secure: bool) -> HeaderValue {
    let name = cookie_name(secure);
    let secure = if secure { "; Secure" } else { "" };
    // The id is URL-safe base64, so the value is always a valid header.
    HeaderValue::from_str(&format!(
        "{name}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie_header(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "__Host-hive_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0",
        )
    } else {
        HeaderValue::from_static("hive_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// The session id from the `Cookie` header(s), if any: behind TLS only the
/// `__Host-` cookie counts (a plain one could have been planted).
fn session_cookie(headers: &HeaderMap, secure: bool) -> Option<&str> {
    let name = cookie_name(secure);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const LOCAL: Transport = Transport {
        peer_loopback: true,
        secure: false,
    };
    const REMOTE: Transport = Transport {
        peer_loopback: false,
        secure: false,
    };

    #[test]
    fn same_origin_rules() {
        let ok = [
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "https://box.tail.ts.net"),
                ("x-forwarded-host", "box.tail.ts.net"),
                ("sec-fetch-site", "same-origin"),
            ]),
        ];
        for h in &ok {
            assert_eq!(check_same_origin(h, &LOCAL), Ok(()), "{h:?}");
        }
        let bad = [
            headers(&[]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "cross-site"),
            ]),
        ];
        for h in &bad {
            assert!(check_same_origin(h, &LOCAL).is_err(), "{h:?}");
        }
        // X-Forwarded-Host is believed only from a loopback peer.
        let fwd = headers(&[
            ("host", "10.0.0.1:8080"),
            ("origin", "http://evil.example"),
            ("x-forwarded-host", "evil.example"),
        ]);
        assert!(check_same_origin(&fwd, &REMOTE).is_err());
    }

    #[test]
    fn cookie_and_bearer_parsing() {
        let h = headers(&[("cookie", "a=1; hive_session=abc; b=2")]);
        assert_eq!(session_cookie(&h, false), Some("abc"));
        assert_eq!(
            session_cookie(&h, true),
            None,
            "behind TLS only __Host- counts"
        );
        let h = headers(&[("cookie", "__Host-hive_session=def; hive_session=abc")]);
        assert_eq!(session_cookie(&h, true), Some("def"));
        assert_eq!(session_cookie(&headers(&[("cookie", "x=1")]), false), None);
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer tok")])),
            Some("tok")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic tok")])), None);
    }

    #[test]
    fn repeated_form_fields_are_kept() {
        let f = Fields::parse(b"choice=a&choice=b+c&csrf=x%2By");
        assert_eq!(f.all("choice"), ["a", "b c"]);
        assert_eq!(f.get("csrf"), Some("x+y"));
        assert_eq!(f.get("none"), None);
    }

    #[test]
    fn the_session_cookie_is_httponly_strict_and_host_prefixed_and_secure_on_tls() {
        let c = session_cookie_header("abc", true);
        assert_eq!(
            c.to_str().unwrap(),
            "__Host-hive_session=abc; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!session_cookie_header("abc", false)
            .to_str()
            .unwrap()
            .contains("Secure"));
    }
}
