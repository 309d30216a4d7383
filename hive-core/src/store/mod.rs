//! The SQLite store (WAL, one writer task).
use std::path::Path;
use std::sync::Arc;

use hive_proto::event::EventRecord;
use hive_proto::view::{ErrorCode, Message};
use hive_proto::{AgentName, Principal};

use crate::hub::Hub;
use crate::Error;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the store is closed")]
    Closed,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub struct Store {}

impl Store {
    pub fn open(path: &Path, hub: Arc<Hub>) -> Result<Self, Error> {
        let _ = (path, hub);
        todo!()
    }
    pub async fn register_agents(&self, names: Vec<AgentName>) -> Result<(), StoreError> {
        let _ = names;
        todo!()
    }
    pub async fn unacked(
        &self,
        who: Principal,
        after: u64,
        max: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let _ = (who, after, max);
        todo!()
    }
    pub async fn events_since(
        &self,
        since: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let _ = (since, limit);
        todo!()
    }
    pub async fn shutdown(&self) {}
}
