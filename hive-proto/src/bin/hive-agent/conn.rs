//! One connection to `agent.sock` that stays up: a background task connects,
//! starts delivery with a `recv`, forwards every delivered inbox item, and
//! reconnects with backoff whenever the core goes away. `mcp` and `run`
//! both sit on it.
//!
//! What it hands on is exactly what the core delivered: after a reconnect
//! every unacknowledged item comes again ([`Delivery::Connected`] carries
//! them), and dropping repeats by id is the consumer's business. This
//! module must never acknowledge anything itself.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hive_proto::agent::{Push, MAX_RECV};
use hive_proto::client::agent::AgentClient;
use hive_proto::client::ClientError;
use hive_proto::view::Message;
use tokio::sync::{mpsc, watch, Notify};

use crate::{one_line, Backoff};

/// Deliveries waiting for their consumer; when it falls this far behind the
/// keeper waits, the client's own bounded push queue fills and closes the
/// connection, and the next connection delivers again: nothing is lost.
pub const DELIVERY_QUEUE: usize = 4096;

/// What the keeper saw.
#[derive(Debug)]
pub enum Delivery {
    /// A new connection, with every unacknowledged item (its first `recv`).
    Connected(Vec<Message>),
    /// One item pushed on the current connection.
    Pushed(Message),
    /// The connection is gone, or could not be made
    /// ([`Connection::last_error`] says why).
    Lost,
}

/// The shared handle: the live client, if any, and a way to hurry the
/// keeper.
pub struct Connection {
    socket: PathBuf,
    current: watch::Sender<Option<AgentClient>>,
    last_error: Mutex<Option<String>>,
    retry_now: Notify,
    /// Prefix of the keeper's stderr lines (`hive-agent mcp`, `hive-agent run`).
    who: &'static str,
}

impl Connection {
    pub fn new(socket: PathBuf, who: &'static str) -> Self {
        Self {
            socket,
            current: watch::Sender::new(None),
            last_error: Mutex::new(None),
            retry_now: Notify::new(),
            who,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The live client, if connected.
    pub fn current(&self) -> Option<AgentClient> {
        self.current.borrow().clone().filter(|c| !c.is_closed())
    }

    /// Why the last attempt or connection failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live client, waiting for one (and asking the keeper to retry at
    /// once) up to `limit`, or forever with `None`.
    pub async fn wait_client(&self, limit: Option<Duration>) -> Option<AgentClient> {
        let mut rx = self.current.subscribe();
        if let Some(c) = self.current() {
            return Some(c);
        }
        self.retry_now.notify_one();
        let wait = async {
            loop {
                if let Some(c) = self.current() {
                    return c;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        match limit {
            Some(d) => tokio::time::timeout(d, wait).await.ok(),
            None => Some(wait.await),
        }
    }

    /// Marks the current client dead (a call on it found the connection
    /// gone before the keeper did).
    pub fn forget(&self, client: &AgentClient) {
        if client.is_closed() {
            self.current.send_if_modified(|c| {
                let dead = c.as_ref().is_some_and(AgentClient::is_closed);
                if dead {
                    *c = None;
                }
                dead
            });
        }
    }

    /// Runs forever: connect, deliver, reconnect.
    pub async fn keep(&self, out: mpsc::Sender<Delivery>) {
        let mut backoff = Backoff::default();
        let mut said: Option<String> = None;
        loop {
            let why = match self.session(&out, &mut backoff).await {
                Ok(()) => {
                    said = None;
                    ClientError::Disconnected.to_string()
                }
                Err(e) => e.to_string(),
            };
            self.current.send_replace(None);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            // Once per outage, not once per attempt.
            if said.as_deref() != Some(why.as_str()) {
                eprintln!("{}: {}; reconnecting", self.who, one_line(&why));
                said = Some(why.clone());
            }
            if out.send(Delivery::Lost).await.is_err() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.retry_now.notified() => {}
            }
        }
    }

    async fn session(
        &self,
        out: &mpsc::Sender<Delivery>,
        backoff: &mut Backoff,
    ) -> Result<(), ClientError> {
        let client = AgentClient::connect(&self.socket).await?;
        let mut pushes = crate::take_pushes(&client)?;
        let first = client.recv(0, MAX_RECV).await?;
        backoff.reset();
        eprintln!("{}: connected to {}", self.who, self.socket.display());
        if out.send(Delivery::Connected(first.messages)).await.is_err() {
            return Ok(());
        }
        // Published after the backlog, so a consumer sees the backlog before
        // it can act on the new connection.
        self.current.send_replace(Some(client));
        while let Some(Push::Message { message }) = pushes.next_push().await {
            if out.send(Delivery::Pushed(message)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}
