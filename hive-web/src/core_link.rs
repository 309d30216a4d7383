//! The gateway's only way to the daemon: `web.sock`.
//!
//! [`CoreLink`] is the small seam the handlers call through. The binary
//! always uses [`SocketLink`], which keeps one multiplexed call connection
//! (`hive_proto::client::operator::OperatorClient<WebCall>`) and one event
//! subscription open, reconnecting each by itself with a short capped
//! backoff, and reports up/down into the [`EventHub`]. Unit tests substitute
//! an in-memory link; nothing else does.
//!
//! This module must never retry a call on its own (an `Approve` must not run
//! twice behind the operator's back), never open any path but the core
//! socket, and never frame bytes itself: the protocol client does that.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use hive_proto::client::operator::{subscribe_as, OperatorClient, Streamed};
use hive_proto::client::ClientError;
use hive_proto::operator::{OperatorResponse, RpcError, WebCall, WebRequest};
use tokio::sync::Notify;

use crate::hub::EventHub;

/// What the gateway announces in its hello (free text for the core's log).
pub const CLIENT_NAME: &str = concat!("hive-web ", env!("CARGO_PKG_VERSION"));

/// The operator name on calls the gateway makes for itself (the readiness
/// probe, the event stream's starting point), never on an operator's behalf.
pub const SYSTEM_OPERATOR: &str = "hive-web";

/// First wait after a failed connect; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between connect attempts. Kept short because a refused
/// connect to a missing unix socket costs next to nothing, and the gateway
/// must be back within a second of the core.
pub const BACKOFF_MAX: Duration = Duration::from_millis(400);
/// How often a connected link checks that its connection is still alive
/// (a failed call also wakes it at once).
pub const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Why a call to the core did not produce an answer. `Clone` so one
/// collapsed read can hand the same failure to all its callers.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CoreError {
    /// There is no live connection to the core (it is down or restarting).
    #[error("core unreachable: {0}")]
    Unreachable(String),
    /// The core took longer than the gateway waits.
    #[error("the core did not answer within {0:?}")]
    Timeout(Duration),
    /// The core refused the call and said why.
    #[error("{0}")]
    Refused(RpcError),
    /// The core answered with a response this call does not produce.
    #[error("unexpected answer from the core: {0}")]
    Unexpected(String),
}

impl CoreError {
    /// Whether this means the core is not there (as opposed to an answer).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_))
    }
}

/// A call in flight.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<OperatorResponse, CoreError>> + Send>>;

/// The seam between the handlers and the core.
pub trait CoreLink: Send + Sync + 'static {
    /// Sends one call. Never retried here.
    fn call(&self, call: WebCall) -> CallFuture;
}

/// The real link over `web.sock`.
pub struct SocketLink {
    path: PathBuf,
    client: RwLock<Option<OperatorClient<WebCall>>>,
    /// Wakes the supervisor when a call saw the connection die.
    wake: Arc<Notify>,
}

impl SocketLink {
    /// Creates the link and starts its two background tasks: one keeps the
    /// call connection up, one keeps the event subscription up and feeds
    /// `hub`. Both end when the returned link is dropped.
    pub fn start(path: &Path, hub: Arc<EventHub>) -> Arc<Self> {
        let link = Arc::new(Self {
            path: path.to_owned(),
            client: RwLock::new(None),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(keep_connected(Arc::downgrade(&link), hub.clone()));
        tokio::spawn(follow_events(Arc::downgrade(&link), hub));
        link
    }

    fn current(&self) -> Option<OperatorClient<WebCall>> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, client: Option<OperatorClient<WebCall>>) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = client;
    }
}

impl CoreLink for SocketLink {
    fn call(&self, call: WebCall) -> CallFuture {
        let client = self.current();
        let wake = self.wake.clone();
        Box::pin(async move {
            let Some(client) = client else {
                return Err(CoreError::Unreachable("not connected".into()));
            };
            match client.call(call).await {
                Ok(resp) => Ok(resp),
                Err(ClientError::Rpc(e)) => Err(CoreError::Refused(e)),
                Err(e) if e.is_connection_lost() => {
                    wake.notify_one();
                    Err(CoreError::Unreachable(e.to_string()))
                }
                Err(e) => Err(CoreError::Unexpected(e.to_string())),
            }
        })
    }
}

/// Doubling wait between attempts, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(BACKOFF_MIN)
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
}

/// Keeps the call connection up until the link is dropped.
async fn keep_connected(link: Weak<SocketLink>, hub: Arc<EventHub>) {
    let mut backoff = Backoff::new();
    // Log a failure once per outage, not once per attempt.
    let mut reported = false;
    loop {
        let Some((path, wake)) = link.upgrade().map(|l| (l.path.clone(), l.wake.clone())) else {
            return;
        };
        match OperatorClient::<WebCall>::connect_as(&path, CLIENT_NAME).await {
            Ok(client) => {
                let Some(l) = link.upgrade() else { return };
                l.set(Some(client.clone()));
                drop(l);
                backoff.reset();
                reported = false;
                hub.set_core_up(true);
                tracing::info!(socket = %path.display(), peer = client.peer(), "connected to the core");
                while !client.is_closed() {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(LINK_CHECK_INTERVAL) => {}
                    }
                    if link.strong_count() == 0 {
                        return;
                    }
                }
                if let Some(l) = link.upgrade() {
                    l.set(None);
                }
                hub.set_core_up(false);
                tracing::warn!("lost the connection to the core; reconnecting");
            }
            Err(e) => {
                if !reported {
                    match &e {
                        ClientError::Refused { .. } => {
                            tracing::error!(error = %e, "the core refused the gateway")
                        }
                        _ => tracing::warn!(error = %e, "core unreachable; retrying"),
                    }
                    reported = true;
                }
                hub.set_core_up(false);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Keeps one event subscription up and feeds the hub, resuming from the
/// last event seen so nothing is lost across a core restart.
async fn follow_events(link: Weak<SocketLink>, hub: Arc<EventHub>) {
    let mut backoff = Backoff::new();
    loop {
        let Some(l) = link.upgrade() else { return };
        let path = l.path.clone();
        let health = l.call(WebCall {
            operator: SYSTEM_OPERATOR.into(),
            req: WebRequest::Health,
        });
        drop(l);
        // Ask where the core's stream stands first: on first contact we start
        // there rather than replaying its whole history, and a head behind
        // ours means the store was replaced and pages must reload.
        let head = match health.await {
            Ok(OperatorResponse::Health(h)) => {
                hub.set_unsandboxed(h.unsandboxed);
                h.last_event_seq
            }
            _ => {
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        let since = if !hub.synced() || head < hub.last_seq() {
            hub.reset(head);
            head
        } else {
            hub.last_seq()
        };
        match subscribe_as(&path, since, CLIENT_NAME).await {
            Ok(mut stream) => {
                backoff.reset();
                while let Some(item) = stream.next_item().await {
                    match item {
                        Ok(Streamed::Event(record)) => hub.publish(record),
                        Ok(Streamed::Lagged { resume_from }) => {
                            tracing::warn!(
                                resume_from,
                                "the event stream lagged; pages will reload"
                            );
                            hub.reset(resume_from);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "event stream ended");
                            break;
                        }
                    }
                    if link.strong_count() == 0 {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to events yet");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..6).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [50, 100, 200, 400, 400, 400]);
        b.reset();
        assert_eq!(b.next(), BACKOFF_MIN);
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(EventHub::new());
        let link = SocketLink::start(&dir.path().join("web.sock"), hub.clone());
        let err = link
            .call(WebCall {
                operator: "ops".into(),
                req: WebRequest::Health,
            })
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(!hub.core_up());
    }
}
