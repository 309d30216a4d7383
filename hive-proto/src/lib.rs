//! `hive-proto` owns everything that crosses a hyperhive socket: the wire
//! types of the operator RPC (`web.sock`, `admin.sock`) and of the agent
//! protocol (`agent.sock`), the codecs that turn bytes into those types, the
//! validated names and paths every request is built from, and the two
//! clients (`hivectl` for operators, `hive-agent` for agents).
//!
//! **Architecture invariant:** the type and codec modules (`name`, `codec`,
//! `operator`, `agent`, `event`) do no I/O and never panic on untrusted
//! bytes; only `client` touches sockets. Operator authority (approve, deny,
//! answer as operator, lifecycle) exists only in [`operator::OperatorRequest`];
//! [`agent::AgentRequest`] has no such variant, so an agent cannot even
//! express it.

pub mod agent;
pub mod ci;
pub mod client;
pub mod codec;
pub mod command_line;
pub mod doctor;
pub mod event;
pub mod name;
pub mod operator;
pub mod time;
pub mod variants;
pub mod view;

pub use name::{AgentName, NameError, Recipient, RelPath, SecretKey};
pub use view::Principal;

/// The version both ends of the operator RPC announce in their first frame.
/// A different `major` is refused; `minor` only grows by added variants at the
/// end of an enum, which postcard keeps compatible.
pub const PROTO_VERSION: operator::Version = operator::Version { major: 1, minor: 0 };

/// Milliseconds since the Unix epoch: the one timestamp unit on every wire.
pub type UnixMillis = i64;
