//! Headless Chromium for the browser tests: chromedriver on a free loopback
//! port (killed on drop), a WebDriver session through fantoccini over plain
//! HTTP, and the few page helpers the tests share — log in, click, type,
//! wait for text without reloading, mark a document to prove it was never
//! reloaded, save a screenshot to the artifacts dir.
//!
//! It must never start Chromium with anything that reaches the network on
//! its own, nor drive any page but the gateway's on loopback.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::dev::{artifacts_dir, free_port};

/// Chromium's flags: headless, no sandbox (we run as root in CI), and
/// nothing that reaches the network on its own.
pub const CHROME_ARGS: &[&str] = &[
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
pub const SHOW_UP: Duration = Duration::from_secs(30);

/// Whether `chromium` and `chromedriver` are on `PATH`; skips (or fails
/// under `CI=true`) without them.
pub fn available() -> bool {
    let tools = super::have_tool("chromium") && super::have_tool("chromedriver");
    super::skip_unless(tools, "needs chromium and chromedriver on PATH")
}

/// chromedriver on a free loopback port, killed on drop.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    pub fn start() -> Self {
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

/// A WebDriver session with headless Chromium using `profile` as its
/// fresh user-data dir.
pub async fn connect(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
    let url = format!("http://127.0.0.1:{}", driver.port);
    let client = super::poll(Duration::from_secs(30), Duration::from_millis(100), || {
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

/// Opens `base/`, checks that no session lands on `/login`, and logs in
/// with `token` through the form.
pub async fn login(c: &Client, base: &str, token: &str) -> Result<(), String> {
    c.goto(&format!("{base}/"))
        .await
        .map_err(|e| e.to_string())?;
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    if url.path() != "/login" {
        return Err(format!(
            "no session should send the browser to /login, not {url}"
        ));
    }
    fill(c, "input#token", token).await?;
    click(c, "form[action='/login'] button").await
}

/// Clicks the first element matching `css`.
pub async fn click(c: &Client, css: &str) -> Result<(), String> {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?
        .click()
        .await
        .map_err(|e| format!("click {css}: {e}"))
}

/// Types `text` into the first element matching `css`.
pub async fn fill(c: &Client, css: &str, text: &str) -> Result<(), String> {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("{css}: {e}"))?
        .send_keys(text)
        .await
        .map_err(|e| format!("type into {css}: {e}"))
}

/// The text of the first element matching `css`, or "" if none.
pub async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the first element matching `css` has text containing
/// `needle`, without reloading the page.
pub async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let found = super::poll(SHOW_UP, Duration::from_millis(100), || async move {
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

/// Saves a screenshot of the page as `name` in the artifacts dir.
pub async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

/// Marks the current document; the mark survives only if the page is never
/// reloaded or replaced.
pub async fn mark(c: &Client) {
    c.execute("window.__hiveMark = 'kept'; return true;", vec![])
        .await
        .unwrap();
}

/// Whether the mark [`mark`] set is still there.
pub async fn still_marked(c: &Client) -> bool {
    c.execute("return window.__hiveMark === 'kept';", vec![])
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(false)
}
