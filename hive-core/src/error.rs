//! The daemon's error type for everything that is not a refusal of a
//! request: opening the store, binding sockets, reading config. Refusals that
//! go back to a peer are [`crate::hive::Refusal`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("store {path}: {source}")]
    Store {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    StoreOp(#[from] crate::store::StoreError),
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}
