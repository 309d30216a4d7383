//! The browser boundary, through the whole router (tower `oneshot`, the
//! in-test core): every test makes a request that must be refused or
//! neutralised, and then asserts that nothing changed — no state-changing
//! verb reached the core and the core's state is what it was.
//!
//! The same properties are checked against the real core in
//! `dev_hive.rs`.

mod common;

use axum::http::{Method, StatusCode};
use hive_proto::view::{ItemKind, Message};
use hive_proto::Principal;

use common::fake::{name, question};
use common::oneshot::{req, Browser, TestApp, HOST, LOOPBACK, REMOTE, TOKEN};

/// Every state-changing form route with fields that would succeed.
fn actions() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        ("/answer-question/7", vec![("answer", "yes")]),
        ("/agent/alice/message", vec![("body", "hi")]),
        ("/agent/alice/lifecycle", vec![("action", "start")]),
        ("/approval/3/approve", vec![]),
        ("/approval/3/deny", vec![("reason", "no")]),
        ("/logout", vec![]),
    ]
}

fn assert_unchanged(app: &TestApp, before: &common::fake::FakeState) {
    assert!(
        app.core.mutations().is_empty(),
        "{:?}",
        app.core.mutations()
    );
    assert_eq!(&app.core.snapshot(), before, "the core's state changed");
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_login_and_the_api_is_401() {
    let app = TestApp::new();
    let before = app.core.snapshot();
    for path in [
        "/",
        "/agent/alice/",
        "/agent/alice/state/",
        "/agent/alice/state/notes/today.md",
    ] {
        let r = app.send(req(Method::GET, path).build()).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.location(), Some("/login"), "{path}");
    }
    for (path, fields) in actions() {
        let r = app
            .send(req(Method::POST, path).same_origin().form(&fields).build())
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.location(), Some("/login"), "{path}");
    }
    for path in [
        "/api/agents",
        "/api/agents/alice",
        "/api/approvals",
        "/api/questions",
        "/api/events",
    ] {
        let r = app.send(req(Method::GET, path).build()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"hyperhive\"")
        );
        // A wrong token and a token in the URL do not help.
        let r = app
            .send(
                req(Method::GET, path)
                    .header("authorization", "Bearer wrong-token-0123456789")
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        let r = app
            .send(req(Method::GET, &format!("{path}?token={TOKEN}")).build())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Not one call reached the core.
    assert!(app.core.calls().is_empty(), "{:?}", app.core.calls());
    assert_unchanged(&app, &before);
}

#[tokio::test]
async fn a_post_with_a_foreign_origin_is_403() {
    let app = TestApp::new();
    let b = app.login().await;
    let before = app.core.snapshot();
    for (path, fields) in actions() {
        let mut all = vec![("csrf", b.csrf.as_str())];
        all.extend_from_slice(&fields);
        for (origin, site) in [
            (Some("http://evil.example"), None),
            (Some("http://evil.example"), Some("cross-site")),
            (Some("null"), None),
            (Some("http://127.0.0.1:8080.evil.example"), None),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (None, None),
        ] {
            let mut r = req(Method::POST, path).cookie(&b.cookie).form(&all);
            if let Some(o) = origin {
                r = r.header("origin", o);
            }
            if let Some(s) = site {
                r = r.header("sec-fetch-site", s);
            }
            let resp = app.send(r.build()).await;
            assert_eq!(
                resp.status,
                StatusCode::FORBIDDEN,
                "{path} {origin:?} {site:?}"
            );
        }
    }
    // The login form is checked too: a foreign page cannot log a browser in.
    let r = app
        .send(
            req(Method::POST, "/login")
                .header("origin", "http://evil.example")
                .form(&[("token", TOKEN)])
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.header("set-cookie").is_none());
    assert_unchanged(&app, &before);
    // The session still works: the refusals did not end it.
    assert_eq!(app.get(&b, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_post_without_the_right_form_token_is_403() {
    let app = TestApp::new();
    let b = app.login().await;
    let other = app.login().await;
    assert_ne!(b.csrf, other.csrf, "each session has its own form token");
    let before = app.core.snapshot();
    for (path, fields) in actions() {
        for token in [None, Some(""), Some("x"), Some(other.csrf.as_str())] {
            let mut all = fields.clone();
            if let Some(t) = token {
                all.push(("csrf", t));
            }
            let r = app
                .send(
                    req(Method::POST, path)
                        .cookie(&b.cookie)
                        .same_origin()
                        .form(&all)
                        .build(),
                )
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} with {token:?}");
        }
    }
    assert_unchanged(&app, &before);
}

#[tokio::test]
async fn agent_written_script_renders_as_text() {
    const XSS: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'";
    let app = TestApp::new();
    {
        let mut st = app.core.state.lock().unwrap();
        st.agents[0].status = Some(format!("status {XSS}"));
        st.questions.push(question(
            8,
            "alice",
            Principal::Operator,
            &format!("question {XSS}"),
            &[XSS],
        ));
        st.messages.push(Message {
            id: 12,
            kind: ItemKind::Message,
            from: Principal::Agent(name("bob")),
            to: Principal::Agent(name("alice")),
            body: format!("message {XSS}"),
            in_reply_to: None,
            question_id: None,
            options: vec![],
            multi: false,
            sent_at: 0,
            acked_at: None,
        });
        st.journal.push(format!("journal {XSS}"));
        st.approvals[0].message = format!("approval {XSS}");
        st.approvals[0].diff = format!("+diff {XSS}\n");
        // A file name cannot hold '/', so its hostile name is a tag without one.
        st.files.insert(
            ("alice".into(), "<img src=x onerror=alert(3)>\"'.md".into()),
            format!("file {XSS}").into_bytes(),
        );
    }
    let b = app.login().await;
    let before = app.core.snapshot();
    let mut pages = vec![app.get(&b, "/").await, app.get(&b, "/agent/alice/").await];
    let listing = app.get(&b, "/agent/alice/state/").await;
    let href = listing
        .body
        .split("href=\"")
        .map(|s| &s[..s.find('"').unwrap_or(0)])
        .find(|h| h.contains("%3Cimg%20src"))
        .expect("the file's link, percent-encoded")
        .to_owned();
    pages.push(listing);
    pages.push(app.get(&b, &href).await);
    for p in &pages {
        assert_eq!(p.status, StatusCode::OK, "{}", p.body);
        assert!(
            !p.body.contains("<script>alert"),
            "unescaped script in\n{}",
            p.body
        );
        assert!(
            !p.body.contains("<img src=x"),
            "unescaped tag in\n{}",
            p.body
        );
        assert!(
            !p.body.contains("onerror=alert(2)>\""),
            "unescaped attribute in\n{}",
            p.body
        );
    }
    let all: String = pages.iter().map(|p| p.body.as_str()).collect();
    // askama escapes with numeric character references.
    for shown in [
        "status &#60;script&#62;alert(1)&#60;/script&#62;&#60;img src=x onerror=alert(2)&#62;&#34;&#39;",
        "question &#60;script&#62;",
        "message &#60;script&#62;",
        "journal &#60;script&#62;",
        "approval &#60;script&#62;",
        "+diff &#60;script&#62;",
        "file &#60;script&#62;",
        "value=\"&#60;script&#62;",
        "&#60;img src=x onerror=alert(3)&#62;&#34;&#39;.md</a>",
    ] {
        assert!(all.contains(shown), "missing escaped text {shown:?}");
    }
    // The only script on any page is the same-origin file.
    for p in &pages {
        assert_eq!(p.body.matches("<script").count(), 1);
        assert!(p
            .body
            .contains("<script src=\"/static/app.js\" defer></script>"));
        assert!(!p.body.contains(" style="), "no inline style");
        assert!(!p.body.contains(" onclick="), "no inline handler");
    }
    assert_unchanged(&app, &before);
}

#[tokio::test]
async fn names_and_paths_that_are_not_names_or_paths_are_404_or_400() {
    let app = TestApp::new();
    let b = app.login().await;
    let before = app.core.snapshot();
    let calls_before = app.core.calls().len();
    for path in [
        "/agent/../",
        "/agent/%2e%2e/",
        "/agent/%2E%2E/",
        "/agent/a/b/",
        "/agent/a%2Fb/",
        "/agent/Alice/",
        "/agent/operator/",
        "/agent/%00/",
        "/agent/..%2f..%2fetc/",
        "/agent/%2e%2e/state/",
        "/api/agents/..",
        "/api/agents/%2e%2e",
        "/api/agents/a%2Fb",
    ] {
        let r = app.get(&b, path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    for path in [
        "/agent/alice/state/%2e%2e/etc/passwd",
        "/agent/alice/state/notes/%2E%2E/%2E%2E/x",
        "/agent/alice/state/a/%00/b",
        "/agent/alice/state/%2e%2e/",
    ] {
        let r = app.get(&b, path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
    }
    // POSTs to such names change nothing either.
    for path in ["/agent/%2e%2e/message", "/agent/a%2Fb/lifecycle"] {
        let r = app
            .post(&b, path, &[("body", "x"), ("action", "start")])
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    // None of them reached the core: they were refused at the URL.
    assert_eq!(
        app.core.calls().len(),
        calls_before,
        "{:?}",
        app.core.calls()
    );
    assert_unchanged(&app, &before);
}

#[tokio::test]
async fn a_tailscale_login_counts_only_from_loopback_and_only_if_listed() {
    let app = TestApp::with_tailscale(&["alice@example.com"]);
    let before = app.core.snapshot();
    // Off the list, or from a non-loopback peer: ignored, as if absent.
    for (peer, login) in [
        (REMOTE, "alice@example.com"),
        (LOOPBACK, "mallory@example.com"),
        ("[::ffff:192.0.2.1]:4000", "alice@example.com"),
    ] {
        let r = app
            .send(
                req(Method::GET, "/")
                    .peer(peer)
                    .via_tailscaled()
                    .navigation()
                    .header("tailscale-user-login", login)
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{peer} {login}");
        assert!(r.header("set-cookie").is_none());
        let r = app
            .send(
                req(Method::GET, "/api/agents")
                    .peer(peer)
                    .via_tailscaled()
                    .header("tailscale-user-login", login)
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{peer} {login}");
        let r = app
            .send(
                req(Method::POST, "/answer-question/7")
                    .peer(peer)
                    .via_tailscaled()
                    .header("tailscale-user-login", login)
                    .same_origin()
                    .form(&[("answer", "yes")])
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{peer} {login}");
    }
    assert_unchanged(&app, &before);

    // Listed, on loopback, on tailscaled's connection: that operator, and a
    // page load gets a session of its own.
    let r = app
        .send(
            req(Method::GET, "/")
                .via_tailscaled()
                .navigation()
                .header("tailscale-user-login", "alice@example.com")
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("; Secure"),
        "tailscale serve means TLS: {cookie}"
    );
    assert!(r.body.contains("alice@example.com"));
    let b = Browser {
        cookie: cookie.split(';').next().unwrap().to_owned(),
        csrf: common::oneshot::csrf_of(&r.body).unwrap(),
    };
    let r = app
        .send(
            req(Method::POST, "/answer-question/7")
                .cookie(&b.cookie)
                .via_tailscaled()
                .header("tailscale-user-login", "alice@example.com")
                .same_origin()
                .form(&[("csrf", &b.csrf), ("answer", "yes")])
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let m = app.core.mutations();
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].operator, "alice@example.com",
        "the audit name is the tailnet login"
    );
}

#[tokio::test]
async fn a_tailscale_header_on_a_connection_tailscaled_did_not_open_is_an_ordinary_request() {
    // Loopback and a listed login, but the kernel says a local user (not
    // tailscaled's uid 0) opened the connection: no identity, no session.
    let app = TestApp::with_tailscale(&["alice@example.com"]);
    let before = app.core.snapshot();
    for uid in [common::oneshot::LOCAL_USER_UID, 65534] {
        let r = app
            .send(
                req(Method::GET, "/")
                    .conn_uid(uid)
                    .navigation()
                    .header("tailscale-user-login", "alice@example.com")
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "uid {uid}");
        assert_eq!(r.location(), Some("/login"));
        assert!(r.header("set-cookie").is_none(), "uid {uid}");
        let r = app
            .send(
                req(Method::GET, "/api/agents")
                    .conn_uid(uid)
                    .header("tailscale-user-login", "alice@example.com")
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "uid {uid}");
    }
    assert!(app.core.calls().is_empty(), "{:?}", app.core.calls());
    assert_eq!(app.state.sessions.len(), 0);
    assert_unchanged(&app, &before);
}

#[tokio::test]
async fn a_host_that_is_not_ours_gets_421_before_any_auth() {
    let app = TestApp::with_tailscale(&["alice@example.com"]);
    let b = app.login().await;
    let calls = app.core.calls().len();
    let before = app.core.snapshot();
    let foreign = [
        "attacker.example:8080",
        "attacker.example",
        "127.0.0.1.nip.io:8080",
    ];
    for host in foreign {
        for r in [
            req(Method::GET, "/").cookie(&b.cookie),
            req(Method::GET, "/api/agents").header("authorization", &format!("Bearer {TOKEN}")),
            req(Method::GET, "/")
                .via_tailscaled()
                .navigation()
                .header("tailscale-user-login", "alice@example.com"),
            req(Method::POST, "/login")
                .same_origin()
                .form(&[("token", TOKEN)]),
            req(Method::POST, "/agent/alice/message")
                .cookie(&b.cookie)
                .same_origin()
                .form(&[("csrf", &b.csrf), ("body", "rebound")]),
            req(Method::GET, "/healthz"),
        ] {
            let r = app.send(r.host(host).build()).await;
            assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
            assert!(r.header("set-cookie").is_none(), "{host}");
        }
    }
    // A loopback proxy's X-Forwarded-Host is checked the same way.
    let r = app
        .send(
            req(Method::GET, "/")
                .cookie(&b.cookie)
                .header("x-forwarded-host", "attacker.example")
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(app.core.calls().len(), calls, "no call reached the core");
    assert_unchanged(&app, &before);
    // Our own names still work: the listen address and localhost.
    for host in [HOST, "localhost:8080", "LOCALHOST"] {
        let r = app
            .send(req(Method::GET, "/").cookie(&b.cookie).host(host).build())
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn image_style_requests_mint_no_session() {
    let app = TestApp::with_tailscale(&["alice@example.com"]);
    // What a foreign page's <img>, <script>, <iframe> or fetch() make the
    // operator's browser send through tailscale serve.
    let embedded = [
        ("image", "cross-site"),
        ("script", "cross-site"),
        ("iframe", "cross-site"),
        ("document", "cross-site"),
        ("document", "same-site"),
        ("empty", "same-origin"),
    ];
    for _ in 0..50 {
        for (dest, site) in embedded {
            let r = app
                .send(
                    req(Method::GET, "/")
                        .via_tailscaled()
                        .header("sec-fetch-dest", dest)
                        .header("sec-fetch-site", site)
                        .header("tailscale-user-login", "alice@example.com")
                        .build(),
                )
                .await;
            assert!(r.header("set-cookie").is_none(), "{dest} {site}");
        }
        // Without any Sec-Fetch header (not a browser navigation) either.
        let r = app
            .send(
                req(Method::GET, "/")
                    .via_tailscaled()
                    .header("tailscale-user-login", "alice@example.com")
                    .build(),
            )
            .await;
        assert!(r.header("set-cookie").is_none());
    }
    assert_eq!(app.state.sessions.len(), 0, "no session was minted");
    // The operator typing the address, or following our own link, does.
    for site in ["none", "same-origin"] {
        let r = app
            .send(
                req(Method::GET, "/")
                    .via_tailscaled()
                    .header("sec-fetch-dest", "document")
                    .header("sec-fetch-site", site)
                    .header("tailscale-user-login", "alice@example.com")
                    .build(),
            )
            .await;
        assert!(r.header("set-cookie").is_some(), "{site}");
    }
    assert_eq!(app.state.sessions.len(), 2);
}

#[tokio::test]
async fn without_the_flag_a_tailscale_header_is_never_believed() {
    let app = TestApp::new();
    let r = app
        .send(
            req(Method::GET, "/")
                .via_tailscaled()
                .navigation()
                .header("tailscale-user-login", "alice@example.com")
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(app.core.calls().is_empty());
    let _ = HOST;
}
