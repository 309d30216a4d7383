//! `hive-web` is hyperhive's unprivileged gateway: it serves the operator's
//! dashboard, every `/agent/<name>/` page and a small JSON API on one origin,
//! and reaches the root daemon only through `web.sock`.
//!
//! Bird's-eye view of a request: [`server`] accepts the TCP connection and
//! hands it to the router built by [`app::app`]; the layers there add the
//! security headers, count the request in [`metrics`], enforce the body limit
//! and the timeout, and resolve who is asking ([`auth`], backed by
//! [`tokens`] and [`session`]). A handler in [`routes`] turns the request
//! into [`hive_proto::operator::WebRequest`]s, sends them through the
//! [`core_link::CoreLink`], and renders the answer with the askama templates
//! in [`views`]. Events reach browsers through [`hub`] and `/api/events`.
//!
//! **Architecture invariant:** this crate never holds a capability and never
//! reads the hive's files. Everything it shows arrived over `web.sock`;
//! [`privilege`] drops root before anything is bound or connected.
//!
//! **Architecture invariant:** every agent-written string reaches HTML only
//! through askama's escaping; no template uses `|safe`, and pages carry a CSP
//! that allows no inline script.

pub mod app;
pub mod auth;
pub mod coalesce;
pub mod config;
pub mod core_link;
pub mod error;
pub mod hub;
pub mod login_limit;
pub mod metrics;
pub mod privilege;
pub mod routes;
pub mod server;
pub mod session;
pub mod sock_diag;
pub mod tokens;
pub mod views;

pub use app::{app, AppState};
