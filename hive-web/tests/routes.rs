//! Route tests: the whole router driven with tower's `oneshot` against the
//! in-memory core of `common::fake` — pages, forms, the JSON API, the event
//! stream, health, metrics, limits and the core-down behaviour.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use hive_proto::event::{Event, EventRecord};
use hive_proto::operator::{LifecycleAction, WebRequest as Req};
use hive_proto::view::QuestionState;
use hive_web::app::{CSP, MAX_BODY_BYTES};
use hive_web::session::{MAX_STREAMS_PER_SESSION, SESSION_IDLE_TIMEOUT};
use http_body_util::BodyExt;

use common::fake::name;
use common::oneshot::{req, TestApp, LOOPBACK, ORIGIN, TOKEN};

#[tokio::test]
async fn healthz_answers_without_login() {
    let app = TestApp::new();
    let r = app.send(req(Method::GET, "/healthz").build()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "ok\n");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::new();
    let b = app.login().await;
    let too_big = "x".repeat(MAX_BODY_BYTES + 1);
    let requests = vec![
        req(Method::GET, "/").cookie(&b.cookie).build(),
        req(Method::GET, "/login").build(),
        req(Method::GET, "/").build(),
        req(Method::GET, "/healthz").build(),
        req(Method::GET, "/no/such/page").cookie(&b.cookie).build(),
        req(Method::GET, "/static/app.js").build(),
        req(Method::GET, "/api/agents").build(),
        req(Method::POST, "/login")
            .same_origin()
            .header("content-type", "application/x-www-form-urlencoded")
            .body(too_big)
            .build(),
    ];
    for r in requests {
        let path = r.uri().to_string();
        let resp = app.send(r).await;
        assert_eq!(resp.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(
            resp.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            resp.header("referrer-policy"),
            Some("same-origin"),
            "{path}"
        );
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert!(!CSP.contains("unsafe-inline"));
    }
}

#[tokio::test]
async fn login_sets_a_strict_httponly_cookie_and_redirects_home() {
    let app = TestApp::new();
    let r = app
        .send(
            req(Method::POST, "/login")
                .same_origin()
                .form(&[("token", TOKEN)])
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with("hive_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // Plain HTTP from a local browser: not Secure (the browser would drop it).
    assert!(!cookie.contains("Secure"), "{cookie}");
    // 32 random bytes, base64url without padding.
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("hive_session=");
    assert_eq!(id.len(), 43);
}

#[tokio::test]
async fn behind_tls_on_loopback_the_cookie_is_secure_and_elsewhere_the_header_is_ignored() {
    let app = TestApp::new();
    let via_proxy = app
        .send(
            req(Method::POST, "/login")
                .same_origin()
                .header("x-forwarded-proto", "https")
                .form(&[("token", TOKEN)])
                .build(),
        )
        .await;
    assert!(via_proxy.header("set-cookie").unwrap().contains("; Secure"));
    let remote = app
        .send(
            req(Method::POST, "/login")
                .peer(common::oneshot::REMOTE)
                .same_origin()
                .header("x-forwarded-proto", "https")
                .form(&[("token", TOKEN)])
                .build(),
        )
        .await;
    assert!(!remote.header("set-cookie").unwrap().contains("Secure"));
}

#[tokio::test]
async fn behind_tls_the_cookie_carries_the_host_prefix_and_only_it_counts() {
    let app = TestApp::new();
    let tls = |r: common::oneshot::ReqBuilder| r.header("x-forwarded-proto", "https");
    let r = app
        .send(
            tls(req(Method::POST, "/login"))
                .same_origin()
                .form(&[("token", TOKEN)])
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let set = r.header("set-cookie").unwrap().to_owned();
    // What the __Host- prefix demands: Secure, Path=/, no Domain.
    assert!(set.starts_with("__Host-hive_session="), "{set}");
    assert!(
        set.contains("; Secure") && set.contains("; Path=/"),
        "{set}"
    );
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = app
        .send(tls(req(Method::GET, "/")).cookie(&cookie).build())
        .await;
    assert_eq!(page.status, StatusCode::OK);
    // The same id under the plain name (as a plain-HTTP page or a sibling
    // subdomain could plant it) is not a session behind TLS.
    let planted = cookie.replace("__Host-hive_session=", "hive_session=");
    let page = app
        .send(tls(req(Method::GET, "/")).cookie(&planted).build())
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), Some("/login"));
}

#[tokio::test]
async fn login_backoff_refuses_the_next_attempt_from_that_address_even_with_the_right_token() {
    let app = TestApp::new();
    let attempt = |peer: &str, token: &str| {
        req(Method::POST, "/login")
            .peer(peer)
            .same_origin()
            .form(&[("token", token)])
            .build()
    };
    let wrong = "not-the-token-at-all-0123456789abcdef";
    let r = app.send(attempt(LOOPBACK, wrong)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Inside the window, even the right token is refused without being
    // looked at, and the answer says when to come back.
    for _ in 0..20 {
        let r = app.send(attempt(LOOPBACK, TOKEN)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert!(r.header("set-cookie").is_none());
        let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(secs, 1, "the first window is one second");
    }
    assert_eq!(app.state.sessions.len(), 0);
    // Another address is not held back.
    let r = app.send(attempt("127.0.0.2:40001", TOKEN)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    // Once the window has passed the right token works, and clears the count.
    let ok = common::poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let r = app.send(attempt(LOOPBACK, TOKEN)).await;
            (r.status == StatusCode::SEE_OTHER).then_some(())
        },
    )
    .await;
    assert!(ok.is_some(), "the window never passed");
    assert!(app.state.login_limiter.is_empty());
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_no_cookie() {
    let app = TestApp::new();
    let r = app
        .send(
            req(Method::POST, "/login")
                .same_origin()
                .form(&[("token", "not-the-token-at-all-1234")])
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("set-cookie").is_none());
    assert!(r.body.contains("That token is not valid."));
}

#[tokio::test]
async fn the_dashboard_shows_agents_questions_approvals_and_recent_events() {
    let app = TestApp::new();
    app.hub.reset(40);
    app.hub.publish(EventRecord {
        seq: 41,
        at: 1_700_000_000_000,
        event: Event::AgentStatus {
            agent: name("carol"),
            text: "reading the docs".into(),
        },
    });
    let b = app.login().await;
    let r = app.get(&b, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    for needle in [
        "href=\"/agent/alice/\"",
        "href=\"/agent/bob/\"",
        "href=\"/agent/carol/\"",
        "data-status-of=\"alice\">thinking about lunch</span>",
        "0123456789ab",
        "Ship the demo build?",
        "action=\"/answer-question/7\"",
        "type=\"radio\" name=\"choice\" value=\"yes\"",
        "give bob more memory",
        "<span class=\"add\">+memory = 2</span>",
        "action=\"/approval/3/approve\"",
        "carol set status: reading the docs",
        "data-since=\"41\"",
        "<script src=\"/static/app.js\" defer></script>",
    ] {
        assert!(r.body.contains(needle), "missing {needle:?} in\n{}", r.body);
    }
    assert!(!r.body.contains("core unreachable —") || r.body.contains("hidden>core unreachable"));
    // The operator's name travels with every call.
    assert!(app.core.calls().iter().all(|c| c.operator == "operator"));
}

#[tokio::test]
async fn the_dashboard_says_in_one_sentence_why_network_isolation_is_not_enforced() {
    let app = TestApp::new();
    let b = app.login().await;
    let r = app.get(&b, "/").await;
    assert!(!r.body.contains("network-banner"), "{}", r.body);
    let why = "network isolation is not enforced (could not run nft -f -: No such file or directory (os error 2)), so no agent container runs";
    app.core.state.lock().unwrap().network =
        hive_proto::operator::NetworkIsolation::Failed { reason: why.into() };
    let r = app.get(&b, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains(&format!(
            "<p id=\"network-banner\" class=\"banner down\">{why}</p>"
        )),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn an_agent_page_shows_status_controls_loose_ends_messages_files_journal_and_config() {
    let app = TestApp::new();
    let b = app.login().await;
    let r = app.get(&b, "/agent/alice/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for needle in [
        "<h1>alice</h1>",
        "thinking about lunch",
        "value=\"start\"",
        "value=\"destroy\"",
        "data-confirm=\"destroy alice?\"",
        "Ship the demo build?",
        "action=\"/answer-question/7\"",
        "name=\"back\" value=\"/agent/alice/\"",
        "hello alice",
        "action=\"/agent/alice/message\"",
        "href=\"/agent/alice/state/notes/\"",
        "alice started",
        // The fake holds no config for alice: the core's answer for an
        // agent that never ran.
        "not deployed",
    ] {
        assert!(r.body.contains(needle), "missing {needle:?} in\n{}", r.body);
    }
    // The trailing-slash-less address redirects to the page.
    let r = app.get(&b, "/agent/alice").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.location(), Some("/agent/alice/"));
    // An unknown agent is a 404.
    assert_eq!(
        app.get(&b, "/agent/zed/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_agent_page_lists_the_names_of_its_own_secrets_only() {
    let app = TestApp::new();
    {
        let mut st = app.core.state.lock().unwrap();
        let secret = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        st.secrets.insert(
            "alice".into(),
            secret(&[
                ("anthropic", "sk-alice-VALUE-1"),
                ("gh_token", "ghp-alice-VALUE-2"),
            ]),
        );
        st.secrets
            .insert("bob".into(), secret(&[("bobs-key", "sk-bob-VALUE-3")]));
    }
    let b = app.login().await;
    let r = app.get(&b, "/agent/alice/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let section = r
        .body
        .split("<section id=\"secrets\">")
        .nth(1)
        .and_then(|rest| rest.split("</section>").next())
        .unwrap_or_else(|| panic!("no secrets section in\n{}", r.body));
    assert!(section.contains("<h2>Secrets</h2>"), "{section}");
    assert!(
        section.contains("<li><code>anthropic</code></li>"),
        "{section}"
    );
    assert!(
        section.contains("<li><code>gh_token</code></li>"),
        "{section}"
    );
    // Another agent's names are not on this page, and no value is anywhere.
    assert!(!r.body.contains("bobs-key"), "{}", r.body);
    assert!(!r.body.contains("VALUE"), "{}", r.body);
    // The page asked for alice's names, and for no one else's.
    let asked: Vec<_> = app
        .core
        .calls()
        .into_iter()
        .filter_map(|c| match c.req {
            Req::SecretNames { agent } => Some(agent),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![name("alice")]);

    // An agent with none says so and how to set one.
    let r = app.get(&b, "/agent/carol/").await;
    assert!(r.body.contains("No secrets."), "{}", r.body);
    assert!(
        r.body.contains("hivectl secret set carol KEY"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("anthropic"), "{}", r.body);

    // Reading the page changed nothing.
    assert!(app.core.mutations().is_empty());
}

#[tokio::test]
async fn an_agent_page_shows_its_short_container_name_uid_range_and_leader() {
    let app = TestApp::new();
    {
        let mut st = app.core.state.lock().unwrap();
        let alice = st
            .agents
            .iter_mut()
            .find(|a| a.name.as_str() == "alice")
            .unwrap();
        // What the core reports for a 31-character agent's container.
        alice.container = Some("h-nx-l6kba5".into());
        alice.uid_range = Some(hive_proto::view::UidRange {
            base: 1_048_576,
            count: 65_536,
        });
        alice.leader_pid = Some(4242);
    }
    let b = app.login().await;
    let r = app.get(&b, "/agent/alice/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for want in [
        "id=\"container\">h-nx-l6kba5</dd>",
        "id=\"uid-range\">1048576–1114111</dd>",
        "id=\"leader-pid\">4242</dd>",
    ] {
        assert!(r.body.contains(want), "{want} not in\n{}", r.body);
    }
    // Without a container runtime the rows say so.
    let r = app.get(&b, "/agent/bob/").await;
    assert!(r.body.contains("id=\"container\">—</dd>"), "{}", r.body);
}

#[tokio::test]
async fn an_agent_page_shows_the_config_at_both_revisions_escaped_with_needs_update() {
    use hive_proto::operator::ConfigRev;
    let app = TestApp::new();
    let (deployed, main) = ("d".repeat(40), "e".repeat(40));
    {
        let mut st = app.core.state.lock().unwrap();
        let alice = st
            .agents
            .iter_mut()
            .find(|a| a.name.as_str() == "alice")
            .unwrap();
        alice.deployed_sha = Some(deployed.clone());
        alice.main_sha = Some(main.clone());
        alice.needs_update = true;
        let toml = |mode: &str| format!("command = [\"/bin/sh\"]\nenv = {{ MODE = \"{mode}\" }}\n");
        st.configs = vec![
            (
                "alice".into(),
                ConfigRev::Deployed,
                (
                    Some(deployed.clone()),
                    vec![
                        ("agent.nix".into(), "{ }\n".into()),
                        ("agent.toml".into(), toml("slow")),
                    ],
                ),
            ),
            (
                "alice".into(),
                ConfigRev::Main,
                (
                    Some(main.clone()),
                    vec![
                        ("agent.nix".into(), "{ }\n".into()),
                        // Agent-proposed text: markup must arrive as text.
                        ("agent.toml".into(), toml("<script>alert(1)</script>")),
                    ],
                ),
            ),
        ];
    }
    let b = app.login().await;
    let r = app.get(&b, "/agent/alice/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    let section = |id: &str| {
        let start = r
            .body
            .find(&format!("<div id=\"config-{id}\">"))
            .unwrap_or_else(|| panic!("no config-{id} in\n{}", r.body));
        let end = r.body[start..].find("</div>").unwrap() + start;
        r.body[start..end].to_owned()
    };
    let (dep, mn) = (section("deployed"), section("main"));
    assert!(
        dep.contains(&format!("<p class=\"sha\">{deployed}</p>")),
        "{dep}"
    );
    assert!(dep.contains("MODE = &#34;slow&#34;"), "{dep}");
    assert!(mn.contains(&format!("<p class=\"sha\">{main}</p>")), "{mn}");
    assert!(
        mn.contains("MODE = &#34;&#60;script&#62;alert(1)&#60;/script&#62;&#34;"),
        "{mn}"
    );
    assert!(
        !r.body.contains("<script>alert"),
        "agent text reached the page as markup"
    );
    // Only agent.toml differs, and it is marked on both sides.
    for side in [&dep, &mn] {
        assert!(
            side.contains("<h4>agent.toml <span class=\"badge\">differs</span></h4>"),
            "{side}"
        );
        assert!(side.contains("<h4>agent.nix</h4>"), "{side}");
    }
    // The summary names both commits and says it needs an update.
    assert!(
        r.body
            .contains("id=\"deployed-sha\">dddddddddddd <span class=\"badge\">needs update</span>"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("id=\"main-sha\">eeeeeeeeeeee</dd>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("id=\"config-needs-update\""), "{}", r.body);
    // Both revisions were asked for, for alice.
    let asked: Vec<ConfigRev> = app
        .core
        .calls()
        .into_iter()
        .filter_map(|c| match c.req {
            Req::AgentConfig { agent, rev } if agent.as_str() == "alice" => Some(rev),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [ConfigRev::Deployed, ConfigRev::Main]);

    // Once it runs main, nothing says it needs an update.
    {
        let mut st = app.core.state.lock().unwrap();
        let alice = st
            .agents
            .iter_mut()
            .find(|a| a.name.as_str() == "alice")
            .unwrap();
        alice.deployed_sha = Some(main.clone());
        alice.needs_update = false;
        let main_files = st.configs[1].2.clone();
        st.configs[0].2 = main_files;
    }
    let r = app.get(&b, "/agent/alice/").await;
    assert!(!r.body.contains("needs update"), "{}", r.body);
    assert!(!r.body.contains("config-needs-update"), "{}", r.body);
    assert!(!r.body.contains("differs"), "{}", r.body);
}

#[tokio::test]
async fn an_approve_that_conflicts_with_main_stays_pending_and_the_card_shows_why() {
    let app = TestApp::new();
    let why = "conflicts with main in agents/bob/agent.toml";
    app.core
        .state
        .lock()
        .unwrap()
        .conflicts_on_approve
        .insert(3, why.into());
    let b = app.login().await;
    let page = app.get(&b, "/").await;
    assert!(!page.body.contains("class=\"conflict\""), "{}", page.body);

    let r = app
        .post(&b, "/approval/3/approve", &[("back", "/agent/bob/")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/agent/bob/"));
    // The flash carries the core's sentence; the card stays, with the reason.
    let page = app.get(&b, "/agent/bob/").await;
    assert!(
        page.body
            .contains(&format!("approval 3 {why}; it stays pending")),
        "{}",
        page.body
    );
    for body in [page.body, app.get(&b, "/").await.body] {
        assert!(body.contains("id=\"approval-3\""), "{body}");
        assert!(
            body.contains(&format!("<p class=\"conflict\">Not merged: {why}.")),
            "{body}"
        );
        assert!(body.contains("action=\"/approval/3/approve\""), "{body}");
    }
}

#[tokio::test]
async fn the_state_browser_lists_directories_and_shows_files() {
    let app = TestApp::new();
    let b = app.login().await;
    let dir = app.get(&b, "/agent/alice/state/notes/").await;
    assert_eq!(dir.status, StatusCode::OK);
    assert!(
        dir.body
            .contains("href=\"/agent/alice/state/notes/today.md\""),
        "{}",
        dir.body
    );
    let file = app.get(&b, "/agent/alice/state/notes/today.md").await;
    assert_eq!(file.status, StatusCode::OK);
    assert!(
        file.body.contains("<pre class=\"file\"># today\n</pre>"),
        "{}",
        file.body
    );
    let missing = app.get(&b, "/agent/alice/state/nope.txt").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn answering_inline_forwards_answer_question_and_redirects_back() {
    let app = TestApp::new();
    let b = app.login().await;
    let r = app
        .post(
            &b,
            "/answer-question/7",
            &[("answer", "yes, ship it"), ("back", "/agent/alice/")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/agent/alice/"));
    let q = &app.core.snapshot().questions[0];
    assert_eq!(q.state, QuestionState::Answered);
    assert_eq!(q.answer.as_deref(), Some("yes, ship it"));
    // The flash says so, once.
    let page = app.get(&b, "/agent/alice/").await;
    assert!(page.body.contains("question #7 answered"));
    let again = app.get(&b, "/agent/alice/").await;
    assert!(!again.body.contains("question #7 answered"));
}

#[tokio::test]
async fn a_choice_answers_when_no_text_is_given() {
    let app = TestApp::new();
    let b = app.login().await;
    app.post(
        &b,
        "/answer-question/7",
        &[("choice", "no"), ("answer", "")],
    )
    .await;
    let m = app.core.mutations();
    assert!(
        matches!(&m[0].req, Req::AnswerQuestion { id: 7, answer } if answer == "no"),
        "{m:?}"
    );
}

#[tokio::test]
async fn a_refused_answer_is_shown_as_the_cores_sentence() {
    let app = TestApp::new();
    let b = app.login().await;
    app.post(&b, "/answer-question/7", &[("answer", "yes")])
        .await;
    let r = app
        .post(&b, "/answer-question/7", &[("answer", "again")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = app.get(&b, "/").await;
    assert!(
        page.body.contains("that question is closed"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn messaging_an_agent_forwards_send_message() {
    let app = TestApp::new();
    let b = app.login().await;
    let r = app
        .post(&b, "/agent/bob/message", &[("body", "please review #3")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/agent/bob/"));
    let m = app.core.mutations();
    assert!(
        matches!(&m[0].req, Req::SendMessage { to, body } if to.as_str() == "bob" && body == "please review #3")
    );
    let page = app.get(&b, "/agent/bob/").await;
    assert!(page.body.contains("message #101 sent to bob"));
    assert!(page.body.contains("please review #3"));
}

#[tokio::test]
async fn a_destructive_action_asks_once_and_an_unsupported_one_says_so() {
    let app = TestApp::new();
    let b = app.login().await;
    let ask = app
        .post(&b, "/agent/alice/lifecycle", &[("action", "destroy")])
        .await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(
        ask.body.contains("name=\"confirm\" value=\"yes\""),
        "{}",
        ask.body
    );
    assert!(
        app.core.mutations().is_empty(),
        "nothing is sent before the confirmation"
    );
    let done = app
        .post(
            &b,
            "/agent/alice/lifecycle",
            &[("action", "destroy"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert!(matches!(
        app.core.mutations()[0].req,
        Req::Lifecycle {
            action: LifecycleAction::Destroy,
            ..
        }
    ));
    let page = app.get(&b, "/agent/alice/").await;
    assert!(page
        .body
        .contains("lifecycle actions are not supported by this runtime"));
    // A harmless action goes straight through.
    let start = app
        .post(&b, "/agent/alice/lifecycle", &[("action", "start")])
        .await;
    assert_eq!(start.status, StatusCode::SEE_OTHER);
    assert_eq!(app.core.mutations().len(), 2);
    let bad = app
        .post(&b, "/agent/alice/lifecycle", &[("action", "explode")])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn approve_and_deny_are_forwarded() {
    let app = TestApp::new();
    let b = app.login().await;
    let r = app
        .post(&b, "/approval/3/deny", &[("reason", "not now")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        matches!(&app.core.mutations()[0].req, Req::Deny { id: 3, reason } if reason == "not now")
    );
    let r = app.post(&b, "/approval/3/approve", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let page = app.get(&b, "/").await;
    assert!(page.body.contains("no such approval"), "{}", page.body);
}

#[tokio::test]
async fn the_json_api_takes_a_bearer_token() {
    let app = TestApp::new();
    let auth = format!("Bearer {TOKEN}");
    let r = app
        .send(
            req(Method::GET, "/api/agents")
                .header("authorization", &auth)
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v[0]["name"], "alice");
    for path in ["/api/agents/alice", "/api/approvals", "/api/questions"] {
        let r = app
            .send(
                req(Method::GET, path)
                    .header("authorization", &auth)
                    .build(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap();
    }
    let r = app
        .send(
            req(Method::GET, "/api/agents/zed")
                .header("authorization", &auth)
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("\"error\""));
    // A bearer token does not open the HTML pages.
    let r = app
        .send(req(Method::GET, "/").header("authorization", &auth).build())
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn when_the_core_is_down_pages_say_so_and_actions_and_readiness_are_503() {
    let app = TestApp::new();
    app.set_core_down(false);
    let b = app.login().await;
    let ready = app.send(req(Method::GET, "/readyz").build()).await;
    assert_eq!(ready.status, StatusCode::OK);
    app.set_core_down(true);
    for path in ["/", "/agent/alice/"] {
        let r = app.get(&b, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(r.body.contains("core unreachable"), "{path}: {}", r.body);
        assert!(r.body.contains("data-core-down=\"1\""), "{path}");
    }
    for (path, fields) in [
        ("/answer-question/7", vec![("answer", "yes")]),
        ("/agent/alice/message", vec![("body", "hi")]),
        ("/agent/alice/lifecycle", vec![("action", "start")]),
        ("/approval/3/approve", vec![]),
    ] {
        let r = app.post(&b, path, &fields).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(r.body.contains("core unreachable"), "{path}");
    }
    let ready = app.send(req(Method::GET, "/readyz").build()).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let api = app
        .send(
            req(Method::GET, "/api/agents")
                .header("authorization", &format!("Bearer {TOKEN}"))
                .build(),
        )
        .await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
    app.set_core_down(false);
    let ready = app.send(req(Method::GET, "/readyz").build()).await;
    assert_eq!(ready.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_under_a_flood_asks_the_core_at_most_once_a_second() {
    let app = TestApp::new();
    app.set_core_down(false);
    let health_calls = || {
        app.core
            .calls()
            .iter()
            .filter(|c| matches!(c.req, Req::Health))
            .count()
    };
    let started = tokio::time::Instant::now();
    let flood = (0..500).map(|_| app.send(req(Method::GET, "/readyz").build()));
    let answers = futures::future::join_all(flood).await;
    assert!(answers.iter().all(|r| r.status == StatusCode::OK));
    // One probe per started second of the flood (it takes well under one
    // on any machine; the bound holds however long it took).
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!(
        health_calls() <= seconds,
        "{} Health calls for 500 probes in {seconds} s",
        health_calls()
    );
    // Meanwhile the operator's own calls go through as usual.
    let b = app.login().await;
    assert_eq!(app.get(&b, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_body_is_413_and_a_non_form_post_is_415() {
    let app = TestApp::new();
    let b = app.login().await;
    let big = format!("csrf={}&body={}", b.csrf, "x".repeat(MAX_BODY_BYTES));
    let r = app
        .send(
            req(Method::POST, "/agent/alice/message")
                .cookie(&b.cookie)
                .same_origin()
                .header("content-type", "application/x-www-form-urlencoded")
                .body(big)
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = app
        .send(
            req(Method::POST, "/agent/alice/message")
                .cookie(&b.cookie)
                .same_origin()
                .header("content-type", "application/json")
                .body(format!("{{\"csrf\":\"{}\"}}", b.csrf))
                .build(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(app.core.mutations().is_empty());
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = TestApp::new();
    let b = app.login().await;
    let r = app.post(&b, "/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/login"));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = app.get(&b, "/").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location(), Some("/login"));
}

#[tokio::test]
async fn metrics_count_requests_core_round_trips_and_followers() {
    let app = TestApp::new();
    let b = app.login().await;
    app.get(&b, "/agent/alice/").await;
    // A refused call: no such agent.
    app.get(&b, "/agent/zed/").await;
    let r = app.send(req(Method::GET, "/metrics").build()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for needle in [
        "hive_web_requests_total{route=\"/agent/{name}/\",status=\"200\"} 1",
        "hive_web_requests_total{route=\"/login\",status=\"303\"} 1",
        "hive_web_request_duration_seconds_count{route=\"/\"} 1",
        "hive_web_core_calls_total{verb=\"agent_detail\",outcome=\"ok\"} 1",
        "hive_web_core_calls_total{verb=\"agent_config\",outcome=\"ok\"} 2",
        "hive_web_core_calls_total{verb=\"agent_detail\",outcome=\"refused\"} 1",
        "hive_web_core_call_duration_seconds_bucket{verb=\"list_agents\",le=\"+Inf\"} 1",
        "hive_web_sse_clients 0",
    ] {
        assert!(r.body.contains(needle), "missing {needle:?} in\n{}", r.body);
    }
    // No agent name appears as a label.
    assert!(!r.body.contains("alice"));
}

/// Reads SSE frames from a response body until `want` frames arrived.
async fn read_frames(body: axum::body::Body, want: usize) -> Vec<String> {
    let mut body = body;
    let mut text = String::new();
    let frames = |t: &str| {
        t.split("\n\n")
            .filter(|f| !f.trim().is_empty() && !f.starts_with(':'))
            .count()
    };
    while frames(&text) < want {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10s")
            .expect("the stream is open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty() && !f.starts_with(':'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_event_stream_resumes_from_last_event_id_and_tells_stale_pages_to_reload() {
    let app = TestApp::new();
    let b = app.login().await;
    app.hub.reset(10);
    app.hub.set_core_up(true);
    for seq in 11..=13 {
        app.hub.publish(EventRecord {
            seq,
            at: 0,
            event: Event::AgentStatus {
                agent: name("alice"),
                text: format!("step {seq}"),
            },
        });
    }
    let resp = app
        .send_raw(
            req(Method::GET, "/api/events")
                .cookie(&b.cookie)
                .header("last-event-id", "11")
                .build(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let body = resp.into_body();
    // core state, then 12 and 13 replayed, then a live one.
    let publisher = {
        let hub = app.hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            hub.publish(EventRecord {
                seq: 14,
                at: 0,
                event: Event::AgentStatus {
                    agent: name("alice"),
                    text: "<b>live</b>".into(),
                },
            });
        })
    };
    let frames = read_frames(body, 4).await;
    publisher.await.unwrap();
    assert!(
        frames[0].contains("event: core") && frames[0].contains("{\"up\":true}"),
        "{frames:?}"
    );
    assert!(
        frames[1].contains("id: 12") && frames[1].contains("step 12"),
        "{frames:?}"
    );
    assert!(frames[2].contains("id: 13"), "{frames:?}");
    assert!(
        frames[3].contains("id: 14") && frames[3].contains("<b>live</b>"),
        "{frames:?}"
    );
    assert!(frames[3].contains("event: hive"));

    // A page from before what the hub keeps is told to reload.
    let stale = app
        .send_raw(
            req(Method::GET, "/api/events?since=3")
                .cookie(&b.cookie)
                .build(),
        )
        .await;
    let frames = read_frames(stale.into_body(), 2).await;
    assert!(frames[1].contains("event: reload"), "{frames:?}");

    // Without a session or token: 401.
    let r = app.send(req(Method::GET, "/api/events").build()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// Reads `body` until it ends, skipping keep-alive comments; false if it
/// was still open after `frames` frames or `within` (tokio time) of silence.
async fn ends(body: &mut axum::body::Body, frames: usize, within: Duration) -> bool {
    for _ in 0..frames {
        match tokio::time::timeout(within, body.frame()).await {
            Err(_) => return false,
            Ok(None) => return true,
            Ok(Some(_)) => {}
        }
    }
    false
}

async fn open_events(app: &TestApp, cookie: &str) -> axum::response::Response {
    app.send_raw(req(Method::GET, "/api/events").cookie(cookie).build())
        .await
}

#[tokio::test]
async fn logging_out_ends_that_sessions_event_streams_and_no_other() {
    let app = TestApp::new();
    let (b1, b2) = (app.login().await, app.login().await);
    let mut mine = Vec::new();
    for _ in 0..2 {
        let r = open_events(&app, &b1.cookie).await;
        assert_eq!(r.status(), StatusCode::OK);
        let mut body = r.into_body();
        assert!(body.frame().await.is_some(), "the first (core) event");
        mine.push(body);
    }
    let other = open_events(&app, &b2.cookie).await;
    let mut other = other.into_body();
    assert!(other.frame().await.is_some());

    let r = app.post(&b1, "/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    for body in &mut mine {
        assert!(
            ends(body, 10, Duration::from_secs(10)).await,
            "the logged-out session's stream is still open"
        );
    }
    // The other session's stream still carries events.
    app.hub.reset(1);
    app.hub.publish(EventRecord {
        seq: 2,
        at: 0,
        event: Event::AgentStatus {
            agent: name("alice"),
            text: "still here".into(),
        },
    });
    let frames = read_frames(other, 2).await;
    assert!(
        frames.iter().any(|f| f.contains("still here")),
        "{frames:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expiring_session_ends_its_event_streams() {
    let app = TestApp::new();
    let b = app.login().await;
    let started = tokio::time::Instant::now();
    let mut body = open_events(&app, &b.cookie).await.into_body();
    // Paused time: the runtime jumps from timer to timer (keep-alives every
    // 15 s) while nothing else happens, so twelve idle hours pass at once.
    assert!(
        ends(&mut body, 10_000, SESSION_IDLE_TIMEOUT * 2).await,
        "the stream outlived its session"
    );
    assert!(
        started.elapsed() >= SESSION_IDLE_TIMEOUT,
        "it ended after {:?}, before the session expired",
        started.elapsed()
    );
    let r = app.get(&b, "/").await;
    assert_eq!(r.location(), Some("/login"), "the session is gone");
}

#[tokio::test]
async fn a_session_may_hold_at_most_a_few_event_streams() {
    let app = TestApp::new();
    let b = app.login().await;
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_SESSION {
        let r = open_events(&app, &b.cookie).await;
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let r = open_events(&app, &b.cookie).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Another session, and a bearer caller, are not counted against it.
    let other = app.login().await;
    assert_eq!(
        open_events(&app, &other.cookie).await.status(),
        StatusCode::OK
    );
    let bearer = app
        .send_raw(
            req(Method::GET, "/api/events")
                .header("authorization", &format!("Bearer {TOKEN}"))
                .build(),
        )
        .await;
    assert_eq!(bearer.status(), StatusCode::OK);
    // A closed stream frees its slot.
    open.pop();
    assert_eq!(open_events(&app, &b.cookie).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_script_and_stylesheet_are_served_with_exact_types() {
    let app = TestApp::new();
    let js = app.send(req(Method::GET, "/static/app.js").build()).await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.body.contains("EventSource"));
    assert!(
        !js.body.contains("innerHTML"),
        "the script never writes HTML"
    );
    let css = app
        .send(req(Method::GET, "/static/style.css").build())
        .await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let _ = ORIGIN;
}
