//! Clients for the two protocols: [`operator`] speaks the postcard RPC of
//! `web.sock` / `admin.sock` (used by `hive-web` and `hivectl`), [`agent`]
//! speaks the JSON lines of `agent.sock` (used by `hive-agent`).
//!
//! Both are multiplexed: a handle is `Clone` and every method takes `&self`,
//! so many callers share one connection. A background task owns the socket
//! and routes each reply to its caller by request id. When the connection
//! dies, every pending and every later call fails with
//! [`ClientError::Disconnected`]; reconnecting is the caller's decision.
//!
//! This module must never decide anything on the core's behalf: it encodes
//! what the caller asked, decodes what the core said, and nothing else.

pub mod agent;
pub mod operator;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::codec::DecodeError;
use crate::operator::RpcError;

/// Why a client call failed. Each message already includes its cause, so
/// no variant reports a separate `source` (an error chain printed in full
/// would otherwise say everything twice).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("cannot connect to {path}: {error}")]
    Connect { path: PathBuf, error: io::Error },
    /// Reading or writing the socket failed.
    #[error("socket i/o: {0}")]
    Io(io::Error),
    /// The core sent bytes that do not decode.
    #[error("cannot decode what the core sent: {0}")]
    Decode(DecodeError),
    /// The request could not be encoded, or is over the protocol's size
    /// limit; nothing was sent and the connection is still usable.
    #[error("cannot send the request: {0}")]
    Encode(DecodeError),
    /// The core refused the connection at hello (version mismatch, ...).
    #[error("the core refused the connection: {reason}")]
    Refused { reason: String },
    /// The connection is gone; pending and later calls on it fail with this.
    #[error("the connection to the core is closed")]
    Disconnected,
    /// The core refused the call; `code` says why.
    #[error("the core refused the call: {0}")]
    Rpc(RpcError),
    /// The core answered something this client did not expect.
    #[error("unexpected reply from the core: {0}")]
    Unexpected(String),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

impl From<RpcError> for ClientError {
    fn from(e: RpcError) -> Self {
        Self::Rpc(e)
    }
}

impl ClientError {
    /// Whether reconnecting could help: the connection broke, as opposed to
    /// the core refusing a call or the hello.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Io(_) | Self::Disconnected | Self::Decode(_)
        )
    }
}

/// The table of calls waiting for their reply, shared by the callers and the
/// reader task. `None` once the connection is dead, so a caller that arrives
/// after that fails at once instead of waiting forever.
pub(crate) struct Pending<T> {
    slots: Mutex<Option<HashMap<u64, oneshot::Sender<T>>>>,
}

impl<T> Pending<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new(Some(HashMap::new())),
        }
    }

    /// Registers `id`; `None` when the connection is already dead.
    pub(crate) fn insert(&self, id: u64) -> Option<oneshot::Receiver<T>> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.lock();
        slots.as_mut()?.insert(id, tx);
        Some(rx)
    }

    /// Takes the waiter for `id`, if one is still waiting.
    pub(crate) fn take(&self, id: u64) -> Option<oneshot::Sender<T>> {
        self.lock().as_mut()?.remove(&id)
    }

    /// Forgets `id` (its caller went away before the reply came).
    pub(crate) fn remove(&self, id: u64) {
        if let Some(slots) = self.lock().as_mut() {
            slots.remove(&id);
        }
    }

    /// Marks the connection dead. Dropping every sender wakes every waiter
    /// with a closed channel, which the caller turns into `Disconnected`.
    pub(crate) fn close(&self) {
        self.lock().take();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().is_none()
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<T>>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so a poisoned lock
        // is still safe to use.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a caller's slot if its future is dropped before the reply came,
/// so a cancelled call does not leak an entry.
pub(crate) struct SlotGuard<'a, T> {
    pub(crate) pending: &'a Pending<T>,
    pub(crate) id: u64,
}

impl<T> Drop for SlotGuard<'_, T> {
    fn drop(&mut self) {
        self.pending.remove(self.id);
    }
}
