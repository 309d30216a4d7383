//! End to end in headless Chromium (Debian `chromium` + `chromium-driver`,
//! driven with fantoccini over plain HTTP to chromedriver on loopback),
//! against `hive-core dev` with its three demo agents:
//!
//! log in with the dev token → see alice, bob and carol → answer alice's
//! question inline on `/agent/alice/` and see alice receive it on her socket
//! (she reports it in her status) → message bob and see him react → watch a
//! status change appear without a reload. Screenshots of `/` and of an
//! agent page go to the artifacts dir (`$HIVE_ARTIFACTS`, default
//! `target/artifacts`).
//!
//! Needs `chromium` and `chromedriver` on PATH: skips without them off CI,
//! fails under `CI=true`.

mod common;

/// Why these tests need root: `hive-web` refuses to serve while any
/// capability set is non-empty, and only root (or a supervisor such as
/// systemd) can empty the bounding set an ordinary process inherits.
const NEEDS_ROOT: &str =
    "needs root: the dev hive's hive-web must start as root to drop its capability bounding set";

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hive_proto::client::agent::AgentClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use common::dev::{artifacts_dir, free_port, DevHive, DevOpts};

/// Chromium's flags: headless, no sandbox (we run as root in CI), and
/// nothing that reaches the network on its own.
const CHROME_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
];

/// How long any one thing may take to show up in the page.
const SHOW_UP: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
    let url = format!("http://127.0.0.1:{}", driver.port);
    let client = common::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let (caps, url) = (caps.clone(), url.clone());
        async move {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    client.expect("a WebDriver session with headless Chromium")
}

/// The text of the first element matching `css`, or "" if none.
async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the first element matching `css` has text containing
/// `needle`, without reloading the page.
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let found = common::poll(SHOW_UP, Duration::from_millis(100), || async move {
        let t = text_of(c, css).await;
        t.contains(needle).then_some(t)
    })
    .await;
    match found {
        Some(t) => t,
        None => panic!(
            "{css} never showed {needle:?}; it shows {:?}",
            text_of(c, css).await
        ),
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// Marks the current document; the mark survives only if the page is never
/// reloaded or replaced.
async fn mark(c: &Client) {
    c.execute("window.__hiveMark = 'kept'; return true;", vec![])
        .await
        .unwrap();
}

async fn still_marked(c: &Client) -> bool {
    c.execute("return window.__hiveMark === 'kept';", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_logs_in_answers_inline_messages_and_sees_live_status_in_chromium() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let tools = common::have_tool("chromium") && common::have_tool("chromedriver");
    if !common::skip_unless(tools, "needs chromium and chromedriver on PATH") {
        return;
    }
    let hive = DevHive::start(DevOpts::default());
    hive.wait_ready(Duration::from_secs(60)).await;
    let base = hive.base();
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = connect(&driver, profile.path()).await;

    let result = run(&c, &hive, &base).await;
    if result.is_err() {
        screenshot(&c, "failure.png").await;
    }
    let _ = c.close().await;
    if let Err(e) = result {
        panic!("{e}\ncore log:\n{}", hive.log());
    }
}

async fn run(c: &Client, hive: &DevHive, base: &str) -> Result<(), String> {
    // Log in with the dev token.
    c.goto(&format!("{base}/"))
        .await
        .map_err(|e| e.to_string())?;
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    assert_eq!(
        url.path(),
        "/login",
        "no session sends the browser to /login"
    );
    c.find(Locator::Css("input#token"))
        .await
        .map_err(|e| e.to_string())?
        .send_keys(&hive.token())
        .await
        .map_err(|e| e.to_string())?;
    c.find(Locator::Css("form[action='/login'] button"))
        .await
        .map_err(|e| e.to_string())?
        .click()
        .await
        .map_err(|e| e.to_string())?;

    // The three demo agents, each with the status it set.
    for agent in ["alice", "bob", "carol"] {
        wait_text(c, &format!("a[href='/agent/{agent}/']"), agent).await;
        wait_text(c, &format!("[data-status-of='{agent}']"), "demo:").await;
    }
    wait_text(c, "#questions", "Ship the demo build?").await;
    screenshot(c, "dashboard.png").await;

    // Answer alice's question inline on her page.
    c.goto(&format!("{base}/agent/alice/"))
        .await
        .map_err(|e| e.to_string())?;
    wait_text(c, "#loose-ends", "Ship the demo build?").await;
    c.find(Locator::Css("#loose-ends form.answer input[value='yes']"))
        .await
        .map_err(|e| e.to_string())?
        .click()
        .await
        .map_err(|e| e.to_string())?;
    c.find(Locator::Css(
        "#loose-ends form.answer button[type='submit']",
    ))
    .await
    .map_err(|e| e.to_string())?
    .click()
    .await
    .map_err(|e| e.to_string())?;
    wait_text(c, ".flash.ok", "answered").await;
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    assert_eq!(
        url.path(),
        "/agent/alice/",
        "the form returns to the agent page"
    );
    // alice got the answer on her socket: the demo says so in her status,
    // and her thanks arrive.
    wait_text(c, "[data-status-of='alice']", "operator said yes").await;
    screenshot(c, "agent-alice.png").await;

    // A status change appears without a reload: set alice's status from a
    // second connection on her own socket while the page stays open.
    mark(c).await;
    let alice = AgentClient::connect(hive.agent_sock("alice"))
        .await
        .map_err(|e| e.to_string())?;
    alice
        .status("e2e: this arrived without a reload")
        .await
        .map_err(|e| e.to_string())?;
    wait_text(c, "[data-status-of='alice']", "without a reload").await;
    assert!(still_marked(c).await, "the page was reloaded");

    // Message bob; he reacts by reporting it in his status, which the open
    // page shows without a reload.
    c.goto(&format!("{base}/agent/bob/"))
        .await
        .map_err(|e| e.to_string())?;
    c.find(Locator::Css("form.message textarea[name='body']"))
        .await
        .map_err(|e| e.to_string())?
        .send_keys("hello bob, from the e2e test")
        .await
        .map_err(|e| e.to_string())?;
    c.find(Locator::Css("form.message button[type='submit']"))
        .await
        .map_err(|e| e.to_string())?
        .click()
        .await
        .map_err(|e| e.to_string())?;
    wait_text(c, ".flash.ok", "sent to bob").await;
    mark(c).await;
    wait_text(c, "[data-status-of='bob']", "hello bob, from the e2e test").await;
    wait_text(c, "#message-list", "hello bob, from the e2e test").await;
    assert!(
        still_marked(c).await,
        "bob's reaction arrived without a reload"
    );
    screenshot(c, "agent-bob.png").await;

    // Back on the dashboard: alice's answered question is gone, and a live
    // status change shows there too.
    c.goto(&format!("{base}/"))
        .await
        .map_err(|e| e.to_string())?;
    mark(c).await;
    alice
        .status("e2e: the dashboard sees this live")
        .await
        .map_err(|e| e.to_string())?;
    wait_text(c, "[data-status-of='alice']", "dashboard sees this live").await;
    assert!(still_marked(c).await, "the dashboard was reloaded");
    Ok(())
}
