//! `web.sock` serves only what the gateway uses: every page, form and API
//! route is driven once through the router (the in-test core records every
//! call), and each `WebRequest` variant must have been called by at least
//! one of them. A variant nothing calls belongs on `admin.sock` only.

mod common;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use hive_proto::operator::WebRequest;
use hive_proto::variants::variant_names;

use common::oneshot::{req, TestApp, TOKEN};

/// The variant name of a call, from its serde form (`"Health"` or
/// `{"AgentDetail": {...}}`).
fn variant_of(r: &WebRequest) -> String {
    match serde_json::to_value(r).expect("a request serializes") {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
        other => panic!("unexpected serde form {other}"),
    }
}

#[tokio::test]
async fn every_web_request_variant_has_a_caller_in_the_gateway() {
    let app = TestApp::new();
    let b = app.login().await;
    let bearer = format!("Bearer {TOKEN}");
    for path in [
        "/",
        "/agent/alice/",
        "/agent/alice/state/",
        "/agent/alice/state/notes/",
        "/agent/alice/state/notes/today.md",
    ] {
        let r = app.get(&b, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    for path in [
        "/api/agents",
        "/api/agents/alice",
        "/api/approvals",
        "/api/questions",
        "/readyz",
    ] {
        let r = app
            .send(
                req(Method::GET, path)
                    .header("authorization", &bearer)
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    for (path, fields) in [
        ("/agent/alice/lifecycle", vec![("action", "start")]),
        ("/agent/alice/message", vec![("body", "hi")]),
        ("/answer-question/7", vec![("answer", "yes")]),
        ("/approval/3/approve", vec![]),
        ("/approval/3/deny", vec![("reason", "no")]),
    ] {
        let r = app.post(&b, path, &fields).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
    }

    let called: BTreeSet<String> = app
        .core
        .calls()
        .iter()
        .map(|c| variant_of(&c.req))
        .collect();
    let served = variant_names::<WebRequest>().expect("WebRequest is an enum");
    let uncalled: Vec<&str> = served
        .iter()
        .copied()
        .filter(|v| !called.contains(*v))
        .collect();
    assert!(
        uncalled.is_empty(),
        "web.sock serves {uncalled:?}, which no route of the gateway calls: \
         remove them from WebRequest (admin.sock keeps them) or drive the route that calls them here\n\
         called: {called:?}"
    );
}
