//! Helpers shared by `hive-web`'s tests (not a test crate of its own).
//!
//! - [`fake`]: an in-memory stand-in for the core link, for route tests
//!   driven with tower's `oneshot` (the only place a fake core is allowed).
//! - [`oneshot`]: builds the app around the fake and sends requests to it.
//! - [`dev`]: starts the real `hive-core dev` (and with it the real
//!   `hive-web`) for the integration, browser and fault tests.
//! - [`run`]: starts the real `hive-core run` on a config of the test's
//!   own (e.g. the `nspawn` runtime, in its own netns) and a real `hive-web`
//!   on its `web.sock`.
//! - [`browser`]: chromedriver and headless Chromium, and the page helpers
//!   the browser tests share.
//! - [`leftovers`]: kills the containers a test left behind, and
//!   [`daemon`]: waits for a started core's socket (hive-core's helpers,
//!   included by path).
//! - [`http`]: a minimal HTTP/1 client for talking to that real gateway.
//! - [`notify`]: a `NOTIFY_SOCKET` of the test's own that holds the
//!   daemon inside its `READY=1` send (hive-core's helper, included by path).
//! - [`skip_unless`]: the one rule for tests that need root or a tool.

#![allow(dead_code)]

pub mod browser;
#[path = "../../../hive-core/tests/common/daemon.rs"]
pub mod daemon;
pub mod dev;
pub mod fake;
pub mod http;
#[path = "../../../hive-core/tests/common/leftovers.rs"]
pub mod leftovers;
#[path = "../../../hive-core/tests/common/notify.rs"]
pub mod notify;
pub mod oneshot;
pub mod run;

/// Whether this run is CI (`CI=true`, `CI=1`, ...), where no test may
/// skip: the one definition in [`hive_proto::ci`], shared with hive-core's
/// tests.
pub fn on_ci() -> bool {
    hive_proto::ci::on_ci()
}

/// Returns `true` when the test can run. When `ok` is false it prints why
/// the test is skipped and returns `false` — or, under `CI=true`, fails the
/// test, so nothing passes on CI by not running.
pub fn skip_unless(ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    if on_ci() {
        panic!("required on CI but unavailable: {why}");
    }
    eprintln!("SKIPPED: {why} (this would fail under CI=true)");
    false
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `name` is an executable on `PATH`.
pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Polls `check` every `every` until it returns `Some` or `deadline`
/// passes. Deadlines are generous on purpose: tests never assert how fast
/// something happens, only that it does.
pub async fn poll<T, F, Fut>(
    deadline: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
