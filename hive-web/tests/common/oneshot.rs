//! The app around a [`FakeCore`], driven with tower's `oneshot`: no socket,
//! no port. Requests carry a `ConnectInfo` peer (loopback unless a test says
//! otherwise) and a `Host`, as the real server would give them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use hive_web::auth::AccessPolicy;
use hive_web::hub::EventHub;
use hive_web::sock_diag::PeerSocket;
use hive_web::tokens::TokenSet;
use hive_web::{app, AppState};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::fake::FakeCore;

/// The operator token the test app accepts (bare line: login `operator`).
pub const TOKEN: &str = "test-token-0123456789abcdef0123456789";
/// A second token, naming the operator `ops2`.
pub const TOKEN2: &str = "other-token-0123456789abcdef0123456789";
pub const HOST: &str = "127.0.0.1:8080";
pub const ORIGIN: &str = "http://127.0.0.1:8080";
pub const LOOPBACK: &str = "127.0.0.1:40000";
pub const REMOTE: &str = "192.0.2.10:40000";
/// The uid the kernel names, in these tests, as the owner of a connection
/// that is not `tailscaled`'s: some local user.
pub const LOCAL_USER_UID: u32 = 1000;

pub struct TestApp {
    pub core: Arc<FakeCore>,
    pub hub: Arc<EventHub>,
    pub state: AppState,
    pub router: Router,
}

/// A logged-in browser: its cookie header and its form token.
#[derive(Clone, Debug)]
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }
}

impl TestApp {
    pub fn new() -> Self {
        Self::with_tailscale(&[])
    }

    pub fn with_tailscale(trusted: &[&str]) -> Self {
        let core = Arc::new(FakeCore::demo());
        let hub = Arc::new(EventHub::new());
        let tokens = TokenSet::parse(&format!("# test\n{TOKEN}\nops2:{TOKEN2}\n")).unwrap();
        let mut access = AccessPolicy::for_listen(HOST.parse().unwrap());
        access.trusted_tailscale = trusted.iter().map(|s| s.to_string()).collect();
        let state = AppState::new(core.clone(), hub.clone(), tokens, access);
        let router = app(state.clone());
        Self {
            core,
            hub,
            state,
            router,
        }
    }

    /// Takes the core away (or brings it back) as the real link would see
    /// it: calls fail, and the link reports the core down to the hub.
    pub fn set_core_down(&self, down: bool) {
        self.core.set_down(down);
        self.hub.set_core_up(!down);
    }

    /// Sends one request and reads the whole response.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Sends one request and returns the response without reading the
    /// body (for the event stream).
    pub async fn send_raw(&self, req: Request<Body>) -> axum::response::Response {
        self.router.clone().oneshot(req).await.unwrap()
    }

    /// Logs in with `token` and returns the browser's cookie and form token.
    pub async fn login_with(&self, token: &str) -> Browser {
        let resp = self
            .send(
                req(Method::POST, "/login")
                    .form(&[("token", token)])
                    .same_origin()
                    .build(),
            )
            .await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.body);
        let set = resp
            .header("set-cookie")
            .expect("a session cookie")
            .to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        let page = self
            .send(req(Method::GET, "/").cookie(&cookie).build())
            .await;
        assert_eq!(page.status, StatusCode::OK);
        Browser {
            csrf: csrf_of(&page.body).expect("a form token on the dashboard"),
            cookie,
        }
    }

    pub async fn login(&self) -> Browser {
        self.login_with(TOKEN).await
    }

    /// A same-origin form POST from `browser`.
    pub async fn post(&self, browser: &Browser, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut all = vec![("csrf", browser.csrf.as_str())];
        all.extend_from_slice(fields);
        self.send(
            req(Method::POST, path)
                .cookie(&browser.cookie)
                .same_origin()
                .form(&all)
                .build(),
        )
        .await
    }

    pub async fn get(&self, browser: &Browser, path: &str) -> Resp {
        self.send(req(Method::GET, path).cookie(&browser.cookie).build())
            .await
    }
}

impl Default for TestApp {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of the first `name="csrf"` hidden field in a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")?;
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// A request under construction.
pub struct ReqBuilder {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Body,
    peer: SocketAddr,
    /// Who the kernel would say opened the connection.
    conn_uid: u32,
}

pub fn req(method: Method, path: &str) -> ReqBuilder {
    ReqBuilder {
        method,
        path: path.to_owned(),
        headers: vec![("host".into(), HOST.into())],
        body: Body::empty(),
        peer: LOOPBACK.parse().unwrap(),
        conn_uid: LOCAL_USER_UID,
    }
}

impl ReqBuilder {
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Replaces the `Host` header.
    pub fn host(mut self, host: &str) -> Self {
        self.headers.retain(|(k, _)| k != "host");
        self.header("host", host)
    }

    pub fn cookie(self, cookie: &str) -> Self {
        self.header("cookie", cookie)
    }

    /// What a browser sends on a same-origin form POST.
    pub fn same_origin(self) -> Self {
        self.header("origin", ORIGIN)
            .header("sec-fetch-site", "same-origin")
    }

    /// The connection is `tailscaled`'s (uid 0), as `tailscale serve`'s is.
    pub fn via_tailscaled(mut self) -> Self {
        self.conn_uid = 0;
        self
    }

    /// The connection belongs to `uid`.
    pub fn conn_uid(mut self, uid: u32) -> Self {
        self.conn_uid = uid;
        self
    }

    /// What a browser sends when the operator loads a page at the top level.
    pub fn navigation(self) -> Self {
        self.header("sec-fetch-dest", "document")
            .header("sec-fetch-site", "none")
    }

    pub fn peer(mut self, addr: &str) -> Self {
        self.peer = addr.parse().unwrap();
        self
    }

    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.headers.push((
            header::CONTENT_TYPE.to_string(),
            "application/x-www-form-urlencoded".into(),
        ));
        self.body = Body::from(body);
        self
    }

    pub fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    pub fn build(self) -> Request<Body> {
        let mut b = Request::builder().method(self.method).uri(&self.path);
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        let mut r = b.body(self.body).unwrap();
        r.extensions_mut().insert(ConnectInfo(self.peer));
        r.extensions_mut().insert(PeerSocket::known(
            HOST.parse().unwrap(),
            self.peer,
            self.conn_uid,
        ));
        r
    }
}
