//! `hive-core` is hyperhive's root daemon. It owns the SQLite store, the
//! per-agent sockets, the operator sockets (`admin.sock`, `web.sock`), the
//! agents' runtimes and the scheduler of expiries and reminders.
//!
//! Layering (mini-redis style): sockets (`agent_socket`, `operator_socket`)
//! decode bytes into `hive-proto` requests and hand them, together with the
//! identity the *socket* established, to [`hive::Hive`], which applies policy
//! and commits through [`store::Store`]. Nothing below the sockets ever sees
//! a byte from a peer, and nothing above `hive` decides who may do what.
//!
//! **Architecture invariant:** the core has no TCP listener. Every channel
//! it serves is a unix socket with an explicit mode and a peer check.

pub mod agent_socket;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod doctor;
pub mod error;
pub mod hive;
pub mod hub;
pub mod isolation;
pub mod operator_socket;
pub mod peer;
pub mod repo;
pub mod runtime;
pub mod secrets;
pub mod store;
pub mod supervision;
pub mod unix_socket;

pub use error::Error;

/// Milliseconds since the Unix epoch, the core's one clock for stored times.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
