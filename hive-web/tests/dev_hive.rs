//! Against the real thing: `hive-core dev` with its real `web.sock`, the
//! real `hive-web` binary, and agents speaking on their real sockets.
//!
//! - the security properties, each asserting through the core that nothing
//!   changed, including the `Tailscale-User-Login` header from a peer that
//!   is not loopback (the gateway listens on this machine's own address);
//! - the inline answer reaching a demo agent, over plain HTTP;
//! - the fault test: the core stops under page load, pages say "core
//!   unreachable" and actions get 503, the core returns and `/readyz` is
//!   200 again without restarting the gateway (the time is measured and
//!   printed, never asserted beyond a generous deadline).

mod common;

/// Why these tests need root: `hive-web` refuses to serve while any
/// capability set is non-empty, and only root (or a supervisor such as
/// systemd) can empty the bounding set an ordinary process inherits.
const NEEDS_ROOT: &str =
    "needs root: the dev hive's hive-web must start as root to drop its capability bounding set";

use std::time::{Duration, Instant};

use hive_proto::client::agent::{AgentClient, AskOptions};
use hive_proto::{Principal, Recipient};

use common::dev::{DevHive, DevOpts, Gateway};
use common::http::Http;
use common::oneshot::csrf_of;

const READY: Duration = Duration::from_secs(60);

/// Header or form pairs.
type Pairs<'a> = Vec<(&'a str, &'a str)>;

/// A dev hive with `agents` and no demo processes, its gateway ready.
async fn hive_without_demo(agents: &str) -> DevHive {
    let hive = DevHive::start(DevOpts {
        agents: Some(agents.into()),
        no_demo: true,
        ..DevOpts::default()
    });
    hive.wait_ready(READY).await;
    hive
}

/// Logs in and returns the cookie and the form token of `page`.
async fn browser(http: &Http, token: &str, page: &str) -> (String, String) {
    let cookie = http.login(token).await.expect("login");
    let r = http.get(page, &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let csrf = csrf_of(&r.body).expect("a form token");
    (cookie, csrf)
}

async fn open_questions(http: &Http, token: &str) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {token}");
    let r = http
        .get("/api/questions", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn against_the_real_core_refused_requests_change_nothing_and_agent_text_is_escaped() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    const XSS: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let hive = hive_without_demo("alice,bob").await;
    let token = hive.token();
    let http = hive.http();

    // alice, on her own socket, writes hostile text everywhere she can.
    let alice = AgentClient::connect(hive.agent_sock("alice"))
        .await
        .unwrap();
    alice.status(format!("status {XSS}")).await.unwrap();
    let asked = alice
        .ask(
            Recipient::Operator,
            format!("question {XSS}"),
            AskOptions::default(),
        )
        .await
        .unwrap();
    alice
        .send(Recipient::Operator, format!("message {XSS}"), None)
        .await
        .unwrap();
    let bob = AgentClient::connect(hive.agent_sock("bob")).await.unwrap();
    let bob_inbox_before = bob.recv(0, 100).await.unwrap().messages.len();

    let (cookie, csrf) = browser(&http, &token, "/agent/alice/").await;
    for page in ["/", "/agent/alice/"] {
        let r = http.get(page, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.body.contains("<script>alert"), "{page}:\n{}", r.body);
        assert!(!r.body.contains("<img src=x"), "{page}");
        assert!(
            r.body.contains("&#60;script&#62;alert(1)"),
            "{page}:\n{}",
            r.body
        );
    }
    let questions_before = open_questions(&http, &token).await;
    assert_eq!(questions_before.len(), 1);

    let origin = http.origin();
    let answer = format!("/answer-question/{}", asked.question_id);
    // A foreign origin, a missing form token, a wrong one, no session: all
    // refused, none reaches the core.
    let attempts: Vec<(Pairs, Pairs, u16)> = vec![
        (
            vec![("cookie", &cookie), ("origin", "http://evil.example")],
            vec![("csrf", &csrf), ("answer", "forged")],
            403,
        ),
        (
            vec![
                ("cookie", &cookie),
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![("answer", "forged")],
            403,
        ),
        (
            vec![("cookie", &cookie), ("origin", &origin)],
            vec![("csrf", "not-the-token"), ("answer", "forged")],
            403,
        ),
        (
            vec![("origin", &origin)],
            vec![("csrf", &csrf), ("answer", "forged")],
            303,
        ),
    ];
    for (headers, fields, want) in &attempts {
        for path in [answer.as_str(), "/agent/bob/message"] {
            let mut f = fields.clone();
            f.push(("body", "forged"));
            let r = http.post_form(path, headers, &f).await.unwrap();
            assert_eq!(r.status, *want, "{path} {headers:?}: {}", r.body);
        }
    }
    // Names that are not names never reach the core either.
    for (path, want) in [
        ("/agent/../", 404),
        ("/agent/%2e%2e/", 404),
        ("/agent/a/b/", 404),
        ("/agent/a%2Fb/", 404),
        ("/agent/alice/state/%2e%2e/%2e%2e/etc/passwd", 400),
    ] {
        let r = http.get(path, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.status, want, "{path}");
    }
    let r = http.get("/api/agents", &[]).await.unwrap();
    assert_eq!(r.status, 401);

    // Nothing changed: the question is still open and unanswered, bob got
    // no message from the operator.
    assert_eq!(open_questions(&http, &token).await, questions_before);
    let bob_inbox = bob.recv(0, 100).await.unwrap().messages;
    assert_eq!(bob_inbox.len(), bob_inbox_before, "{bob_inbox:?}");
    assert!(bob_inbox.iter().all(|m| m.from != Principal::Operator));
    let ends = alice.loose_ends().await.unwrap();
    assert!(ends
        .asked
        .iter()
        .any(|q| q.id == asked.question_id && q.answer.is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn against_the_real_core_a_tailscale_login_counts_only_from_loopback_and_only_if_listed() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let addr = common::dev::non_loopback_ipv4();
    if !common::skip_unless(
        addr.is_some(),
        "needs an IPv4 address that is not loopback (none found, none could be added to lo)",
    ) {
        return;
    }
    let addr = addr.unwrap();
    let ip = addr.ip;
    let hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        no_demo: true,
        no_web: true,
        ..DevOpts::default()
    });
    assert!(hive.wait_for_socket(READY), "core:\n{}", hive.log());
    let token = hive.token();
    // Listening on every address, so the same gateway is reached from
    // loopback and from this machine's own non-loopback address (the
    // kernel then reports that address as the TCP peer).
    let web = Gateway::start_on(
        &hive,
        "0.0.0.0",
        &[
            "--allow-wildcard-bind",
            "--trust-tailscale-identity",
            "alice@example.com",
            "--public-host",
            &ip.to_string(),
        ],
    );
    web.wait_serving(READY).await;
    let local = web.http();
    let remote = Http::new(&format!("http://{ip}:{}", web.port));
    let ready = common::poll(READY, Duration::from_millis(50), || {
        let local = local.clone();
        async move { (local.get("/readyz", &[]).await.ok()?.status == 200).then_some(()) }
    })
    .await;
    assert!(ready.is_some(), "gateway never ready:\n{}", web.log());

    let alice = AgentClient::connect(hive.agent_sock("alice"))
        .await
        .unwrap();
    let asked = alice
        .ask(
            Recipient::Operator,
            "ship it?".to_owned(),
            AskOptions::default(),
        )
        .await
        .unwrap();
    let answer = format!("/answer-question/{}", asked.question_id);
    let questions_before = open_questions(&local, &token).await;
    assert_eq!(questions_before.len(), 1);

    // A listed login from a peer that is not loopback, or an unlisted one
    // from loopback: ignored, exactly as if the header were absent.
    for (http, login) in [
        (&remote, "alice@example.com"),
        (&local, "mallory@example.com"),
    ] {
        let who = format!("{} {login}", http.base);
        let r = http
            .get("/", &[("tailscale-user-login", login)])
            .await
            .unwrap();
        assert_eq!(r.status, 303, "{who}: {}", r.body);
        assert!(r.header("set-cookie").is_none(), "{who}");
        let r = http
            .get("/api/agents", &[("tailscale-user-login", login)])
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{who}");
        let origin = http.origin();
        let r = http
            .post_form(
                &answer,
                &[
                    ("tailscale-user-login", login),
                    ("origin", &origin),
                    ("sec-fetch-site", "same-origin"),
                ],
                &[("answer", "forged")],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 303, "{who}: {}", r.body);
    }
    assert_eq!(open_questions(&local, &token).await, questions_before);

    // Listed, from loopback (where `tailscale serve` connects from), on a
    // connection this root test process opened (as root's tailscaled
    // would): that operator, with a session of its own, whose answer
    // reaches alice.
    let r = local
        .get(
            "/agent/alice/",
            &[
                ("tailscale-user-login", "alice@example.com"),
                ("sec-fetch-dest", "document"),
                ("sec-fetch-site", "none"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("alice@example.com"));
    let set_cookie = r.header("set-cookie").expect("a session cookie");
    assert!(set_cookie.contains("Secure"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&r.body).expect("a form token");
    let origin = local.origin();
    let r = local
        .post_form(
            &answer,
            &[
                ("cookie", &cookie),
                ("tailscale-user-login", "alice@example.com"),
                ("origin", &origin),
            ],
            &[("csrf", &csrf), ("answer", "yes")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    // alice hears the answer on her own socket, and only this one.
    let got = alice.recv(30_000, 100).await.unwrap().messages;
    let answers: Vec<_> = got
        .iter()
        .filter(|m| m.question_id == Some(asked.question_id))
        .collect();
    assert_eq!(answers.len(), 1, "{got:?}");
    assert_eq!(answers[0].from, Principal::Operator);
    assert!(answers[0].body.contains("yes"), "{:?}", answers[0]);
    assert!(!answers[0].body.contains("forged"));
    assert!(open_questions(&local, &token).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_root_process_on_loopback_sending_the_tailscale_header_gets_no_session_while_root_does(
) {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        no_demo: true,
        no_web: true,
        ..DevOpts::default()
    });
    assert!(hive.wait_for_socket(READY), "core:\n{}", hive.log());
    // tailscaled's uid is root's (the default); the gateway itself runs as
    // nobody, with no capability, and asks the kernel all the same.
    let web = Gateway::start(&hive, &["--trust-tailscale-identity", "alice@example.com"]);
    web.wait_serving(READY).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nTailscale-User-Login: alice@example.com\r\n\
         Sec-Fetch-Dest: document\r\nSec-Fetch-Site: none\r\nConnection: close\r\n\r\n",
        web.port
    );
    // The same client, byte for byte, from two uids: nobody (a local user,
    // an ssh -L tunnel, an agent under the process runtime) and root (the
    // stand-in for tailscaled).
    for attempt in 0..2 {
        let answer = common::http::raw_request_as(65534, 65534, web.port, &request);
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 303"),
            "nobody, attempt {attempt}:\n{head}"
        );
        assert!(head.contains("location: /login"), "{head}");
        assert!(
            !head.contains("set-cookie"),
            "nobody got a session:\n{head}"
        );
    }
    let answer = common::http::raw_request_as(0, 0, web.port, &request);
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "root:\n{head}\n{}",
        web.log()
    );
    assert!(
        head.contains("set-cookie: "),
        "root got no session:\n{head}"
    );
    assert!(
        answer.contains("alice@example.com"),
        "the page names the login"
    );
    // The refusal is logged once per peer, not once per request.
    let log = web.log();
    assert_eq!(
        log.matches("ignored a Tailscale-User-Login header").count(),
        1,
        "{log}"
    );
    assert!(log.contains("uid 65534"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_asking_many_large_questions_cannot_break_the_operators_pages() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let hive = hive_without_demo("alice").await;
    let token = hive.token();
    let http = hive.http();
    let alice = AgentClient::connect(hive.agent_sock("alice"))
        .await
        .unwrap();
    // 40 questions of 60 KiB and 40 messages of 60 KiB: 2.4 MB each, more
    // than a 1 MiB frame can carry in one reply.
    let filler = "z".repeat(60 * 1024);
    for i in 0..40 {
        alice
            .ask(
                Recipient::Operator,
                format!("question {i} {filler}"),
                AskOptions::default(),
            )
            .await
            .unwrap();
        alice
            .send(Recipient::Operator, format!("message {i} {filler}"), None)
            .await
            .unwrap();
    }
    let cookie = http.login(&token).await.unwrap();
    for page in ["/", "/agent/alice/"] {
        let r = http.get(page, &[("cookie", &cookie)]).await.unwrap();
        assert_eq!(r.status, 200, "{page}");
        assert!(
            !r.body.contains("data-core-down"),
            "{page}: core unreachable"
        );
        assert!(
            r.body.contains("question 0 "),
            "{page}: the oldest is shown"
        );
    }
    let questions = open_questions(&http, &token).await;
    assert!(!questions.is_empty() && questions.len() < 40);
    // The gateway's connection to the core was never dropped.
    let r = http.get("/readyz", &[]).await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inline_answer_reaches_the_demo_agent_on_its_socket() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        ..DevOpts::default()
    });
    hive.wait_ready(READY).await;
    let http = hive.http();
    let token = hive.token();
    // The demo agent asks its question once it is connected.
    let question = common::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let (http, token) = (http.clone(), token.clone());
        async move { open_questions(&http, &token).await.into_iter().next() }
    })
    .await
    .expect("the demo agent asks the operator a question");
    let id = question["id"].as_u64().unwrap();
    let (cookie, csrf) = browser(&http, &token, "/agent/alice/").await;
    let origin = http.origin();
    let r = http
        .post_form(
            &format!("/answer-question/{id}"),
            &[
                ("cookie", &cookie),
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
            ],
            &[
                ("csrf", &csrf),
                ("choice", "yes"),
                ("back", "/agent/alice/"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/agent/alice/"));
    // The agent got the answer on its socket: the demo says so in its status.
    let status = common::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let auth = format!("Bearer {token}");
            let r = http
                .get("/api/agents/alice", &[("authorization", &auth)])
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            let s = v["summary"]["status"].as_str()?.to_owned();
            s.contains("operator said yes").then_some(s)
        }
    })
    .await;
    assert!(
        status.is_some(),
        "alice never reported the answer; core log:\n{}",
        hive.log()
    );
    assert!(open_questions(&http, &token).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_lists_two_hundred_agents_with_their_status_lines() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    // A reply of this size (about 16 KiB) arrives in more than one read, so
    // this also proves the protocol client reassembles split frames.
    let names: Vec<String> = (1..=200).map(|i| format!("agent-{i:03}")).collect();
    let hive = hive_without_demo(&names.join(",")).await;
    for (i, n) in names.iter().enumerate() {
        let c = AgentClient::connect(hive.agent_sock(n)).await.unwrap();
        c.status(format!(
            "working on task {i}: reading, planning, writing the report"
        ))
        .await
        .unwrap();
    }
    let http = hive.http();
    let cookie = http.login(&hive.token()).await.unwrap();
    let page = http.get("/", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("data-core-down"),
        "the core answered every call"
    );
    assert_eq!(page.body.matches("data-agent=").count(), 200);
    assert!(page.body.contains("working on task 199: reading"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_and_approval_actions_reach_the_core_and_its_answer_is_shown() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        ..DevOpts::default()
    });
    hive.wait_ready(READY).await;
    let http = hive.http();
    let (cookie, csrf) = browser(&http, &hive.token(), "/agent/alice/").await;
    let origin = http.origin();
    let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    // (path, fields, what the page then says)
    let cases: Vec<(&str, Pairs, &str)> = vec![
        (
            "/agent/alice/lifecycle",
            vec![("action", "rebuild"), ("confirm", "yes")],
            "rebuild is not supported by the process runtime",
        ),
        (
            "/agent/alice/lifecycle",
            vec![("action", "start")],
            "agent alice is already running",
        ),
        (
            "/approval/1/approve",
            vec![("back", "/agent/alice/")],
            "no approval 1",
        ),
    ];
    for (path, fields, says) in cases {
        let mut f = vec![("csrf", csrf.as_str())];
        f.extend(fields);
        let r = http.post_form(path, &headers, &f).await.unwrap();
        assert_eq!(r.status, 303, "{path}: {}", r.body);
        assert_eq!(r.header("location"), Some("/agent/alice/"));
        let page = http
            .get("/agent/alice/", &[("cookie", &cookie)])
            .await
            .unwrap();
        assert!(
            page.body.contains("class=\"flash err\"") && page.body.contains(says),
            "{path}: the page should say {says:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_core_stops_pages_say_so_actions_are_503_and_the_gateway_comes_back_by_itself() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let mut hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        no_demo: true,
        no_web: true,
        ..DevOpts::default()
    });
    assert!(
        hive.wait_for_socket(READY),
        "core did not start:\n{}",
        hive.log()
    );
    let token = hive.token();
    let web = Gateway::start(&hive, &[]);
    web.wait_serving(READY).await;
    let http = web.http();
    let ready = common::poll(READY, Duration::from_millis(50), || {
        let http = http.clone();
        async move { (http.get("/readyz", &[]).await.ok()?.status == 200).then_some(()) }
    })
    .await;
    assert!(ready.is_some(), "gateway never ready:\n{}", web.log());
    let (cookie, csrf) = browser(&http, &token, "/agent/alice/").await;
    let gateway_pid = web.child.id();

    // Page loads keep running while the core goes away.
    let load = {
        let (http, cookie) = (http.clone(), cookie.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end {
                let r = http.get("/agent/alice/", &[("cookie", &cookie)]).await;
                statuses.push(r.map(|r| r.status.as_u16()).unwrap_or(0));
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    hive.kill();
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every page load was answered with a page: {statuses:?}"
    );

    // Down: pages render and say so, actions and readiness are 503.
    let down = common::poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let (http, cookie) = (http.clone(), cookie.clone());
        async move {
            let r = http
                .get("/agent/alice/", &[("cookie", &cookie)])
                .await
                .ok()?;
            (r.status == 200 && r.body.contains("data-core-down")).then_some(r.body)
        }
    })
    .await
    .expect("the page says the core is unreachable");
    assert!(down.contains("core unreachable"));
    let r = http.get("/", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("core unreachable"));
    let origin = http.origin();
    let r = http
        .post_form(
            "/agent/alice/message",
            &[("cookie", &cookie), ("origin", &origin)],
            &[("csrf", &csrf), ("body", "are you there?")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("core unreachable"));
    assert_eq!(http.get("/readyz", &[]).await.unwrap().status, 503);
    let api = http
        .get(
            "/api/agents",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .unwrap();
    assert_eq!(api.status, 503);

    // Back: the same gateway process reconnects by itself.
    hive.spawn();
    assert!(
        hive.wait_for_socket(READY),
        "core did not restart:\n{}",
        hive.log()
    );
    // Measure from the moment the core accepts on web.sock, so the core's
    // own start-up time is not charged to the gateway.
    let core_up = common::poll(READY, Duration::from_millis(5), || {
        let path = hive.web_sock();
        async move {
            hive_proto::client::operator::OperatorClient::<hive_proto::operator::WebCall>::connect(
                &path,
            )
            .await
            .ok()
            .map(|_| Instant::now())
        }
    })
    .await
    .expect("the restarted core accepts on web.sock");
    let back = common::poll(READY, Duration::from_millis(10), || {
        let http = http.clone();
        async move { (http.get("/readyz", &[]).await.ok()?.status == 200).then_some(Instant::now()) }
    })
    .await
    .expect("/readyz is 200 again");
    let took = back.saturating_duration_since(core_up);
    println!("hive-web: /readyz was 200 again {took:?} after the core accepted on web.sock");
    eprintln!("hive-web: /readyz was 200 again {took:?} after the core accepted on web.sock");
    assert_eq!(web.child.id(), gateway_pid, "no gateway restart");
    // The session survived (it lives in the gateway) and actions work again.
    let r = http
        .post_form(
            "/agent/alice/message",
            &[("cookie", &cookie), ("origin", &origin)],
            &[("csrf", &csrf), ("body", "welcome back")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let page = http
        .get("/agent/alice/", &[("cookie", &cookie)])
        .await
        .unwrap();
    assert!(!page.body.contains("data-core-down"));
    assert!(page.body.contains("welcome back"));
    std::fs::write(
        common::dev::artifacts_dir().join("fault-reconnect.txt"),
        format!(
            "readyz 200 again {} ms after the core accepted on web.sock\n",
            took.as_millis()
        ),
    )
    .unwrap();
}

/// A directory holding a `bwrap` that always fails, and a `PATH` that
/// finds it first: bubblewrap made unusable.
fn broken_bwrap_path() -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("bwrap");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'bwrap: broken on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", dir.path().display());
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bubblewrap_dev_refuses_in_one_sentence_and_allow_unsandboxed_puts_a_banner_on_every_page(
) {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let (_fake, path) = broken_bwrap_path();
    let mut refused = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        path: Some(path.clone()),
        ..DevOpts::default()
    });
    let t = Instant::now();
    let status = refused
        .wait_exit(READY)
        .expect("dev should refuse and exit");
    println!("refused after {:?}", t.elapsed());
    assert!(!status.success());
    let log = refused.log();
    let line = log
        .lines()
        .find(|l| l.contains("no runtime can isolate agents here"))
        .unwrap_or_else(|| panic!("no refusal sentence in:\n{log}"));
    assert!(line.contains("install the package bubblewrap"), "{line}");
    assert!(line.contains("--allow-unsandboxed"), "{line}");

    let hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        path: Some(path),
        allow_unsandboxed: true,
        ..DevOpts::default()
    });
    hive.wait_ready(READY).await;
    let http = hive.http();
    let cookie = http.login(&hive.token()).await.expect("login");
    const BANNER: &str = "agents are not isolated";
    for page in ["/", "/agent/alice/", "/agent/alice/state/"] {
        // The gateway learns it from the core's Health on its first contact.
        let body = common::poll(READY, Duration::from_millis(100), || {
            let (http, cookie) = (http.clone(), cookie.clone());
            async move {
                let r = http.get(page, &[("cookie", &cookie)]).await.ok()?;
                (r.status == 200 && r.body.contains(BANNER)).then_some(r.body)
            }
        })
        .await;
        assert!(
            body.is_some(),
            "{page} has no banner; core log:\n{}",
            hive.log()
        );
        println!("{page} bannered after {:?}", t.elapsed());
    }
}
