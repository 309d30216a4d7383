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

use std::time::Duration;

use fantoccini::Client;
use hive_proto::client::agent::AgentClient;

use common::browser::{
    click, connect, fill, login, mark, screenshot, still_marked, wait_text, Driver,
};
use common::dev::{DevHive, DevOpts};

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_logs_in_answers_inline_messages_and_sees_live_status_in_chromium() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    if !common::browser::available() {
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
    login(c, base, &hive.token()).await?;

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
    click(c, "#loose-ends form.answer input[value='yes']").await?;
    click(c, "#loose-ends form.answer button[type='submit']").await?;
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
    fill(
        c,
        "form.message textarea[name='body']",
        "hello bob, from the e2e test",
    )
    .await?;
    click(c, "form.message button[type='submit']").await?;
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
