//! `hive-core dev --harness` seen in headless Chromium: an agent whose
//! turns are a real shell script run by `hive-agent run`, and the agent
//! page showing the turn's status while it runs and the script's reply in
//! the message history once it is done — both without a reload.
//!
//! The script holds its turn until the test creates a file in the agent's
//! state dir (`$HOME` inside the sandbox), so the "turn is running" state
//! is observed for as long as the test needs, not raced against a sleep.
//! Screenshots go to the artifacts dir as `harness-*.png`.
//!
//! Needs root (the dev hive's `hive-web` drops its bounding set) and
//! `chromium` + `chromedriver` on PATH: skips without them off CI, fails
//! under `CI=true`.

mod common;

use std::time::Duration;

use fantoccini::Client;

use common::browser::{
    click, connect, fill, login, mark, screenshot, still_marked, text_of, wait_text, Driver,
};
use common::dev::{DevHive, DevOpts};

const NEEDS_ROOT: &str =
    "needs root: the dev hive's hive-web must start as root to drop its capability bounding set";

/// The turn command: reads the prompt, counts the lines that carry the
/// operator's words, waits for `release-<turn>` in its state dir, replies.
const SCRIPT: &str = "n=$(grep -c 'ping from the browser'); \
     while [ ! -e \"$HOME/release-$HIVE_TURN\" ]; do sleep 0.05; done; \
     echo \"harness reply to turn $HIVE_TURN: the prompt held the ping $n time(s)\"";

const PING: &str = "ping from the browser";
const REPLY: &str = "harness reply to turn 1: the prompt held the ping 1 time(s)";

#[tokio::test(flavor = "multi_thread")]
async fn a_harness_turn_shows_its_status_while_it_runs_and_its_reply_in_the_history_after() {
    if !common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    if !common::browser::available() {
        return;
    }
    let hive = DevHive::start(DevOpts {
        agents: Some("alice".into()),
        harness: Some(SCRIPT.into()),
        ..DevOpts::default()
    });
    hive.wait_ready(Duration::from_secs(60)).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = connect(&driver, profile.path()).await;

    let result = run(&c, &hive).await;
    if result.is_err() {
        screenshot(&c, "harness-failure.png").await;
    }
    let _ = c.close().await;
    if let Err(e) = result {
        panic!("{e}\ncore log:\n{}", hive.log());
    }
}

async fn run(c: &Client, hive: &DevHive) -> Result<(), String> {
    let base = hive.base();
    login(c, &base, &hive.token()).await?;
    c.goto(&format!("{base}/agent/alice/"))
        .await
        .map_err(|e| e.to_string())?;
    // alice's `hive-agent run` has been started (a message sent before it
    // connects waits in her inbox all the same).
    wait_text(c, "[data-state-of='alice']", "running").await;

    // Message alice from her page.
    fill(c, "form.message textarea[name='body']", PING).await?;
    click(c, "form.message button[type='submit']").await?;
    wait_text(c, ".flash.ok", "sent to alice").await;
    mark(c).await;

    // The turn runs, held by the script: its status shows live, and no
    // reply exists yet.
    let status = wait_text(c, "[data-status-of='alice']", "turn 1:").await;
    if status != "turn 1: 1 message from operator" {
        return Err(format!("the running turn's status is {status:?}"));
    }
    let history = wait_text(c, "#message-list", PING).await;
    if history.contains("harness reply") {
        return Err(format!("a reply before the turn was released: {history:?}"));
    }
    screenshot(c, "harness-turn-running.png").await;

    // Release the turn: the script's stdout comes back as alice's reply.
    let release = hive.dir.join("lib/agents/alice/state/release-1");
    std::fs::write(&release, b"").map_err(|e| format!("{}: {e}", release.display()))?;
    wait_text(c, "#message-list", REPLY).await;
    wait_text(
        c,
        "[data-status-of='alice']",
        "idle after turn 1 (replied to operator)",
    )
    .await;
    if !still_marked(c).await {
        return Err("the page was reloaded: the status and reply must arrive live".into());
    }
    // The reply shows once, from alice to the operator, above the ping.
    let history = text_of(c, "#message-list").await;
    if history.matches(REPLY).count() != 1 {
        return Err(format!("the reply is not there exactly once: {history:?}"));
    }
    let (reply_at, ping_at) = (history.find(REPLY), history.find(PING));
    if !matches!((reply_at, ping_at), (Some(r), Some(p)) if r < p) {
        return Err(format!("the reply is not the newest message: {history:?}"));
    }
    let reply_meta = text_of(c, "#message-list li.msg:first-child .meta").await;
    if !reply_meta.contains("alice → operator") {
        return Err(format!(
            "the newest message is not alice's reply: {reply_meta:?}"
        ));
    }
    screenshot(c, "harness-replied.png").await;
    Ok(())
}
