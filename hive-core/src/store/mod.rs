//! The SQLite store: WAL, one writer thread, a small pool of readers.
//!
//! Writes are closures over a [`Tx`] sent to the writer thread, which runs
//! every job waiting in its queue inside *one* transaction (group commit),
//! each job in its own savepoint so a refused job changes nothing and does
//! not spoil its neighbours. Only after `COMMIT` returns does the writer
//! publish the committed messages and events to the [`Hub`] and answer the
//! callers: anything acknowledged or pushed is already on disk
//! (`synchronous = FULL`).
//!
//! Checkpoints (copying the WAL back into the database file, which costs
//! two more syncs) stay off the commit path: the writer connection has
//! SQLite's automatic checkpoint raised to [`WAL_WRITER_CHECKPOINT_PAGES`],
//! a safety net for sustained load, and a checkpointer thread with its own
//! connection runs a `PASSIVE` checkpoint after every
//! [`CHECKPOINT_EVERY_COMMITS`] commits, and after a quiet second for
//! whatever commits came since. A
//! `PASSIVE` checkpoint never takes the write lock, so commits go on while
//! it runs.
//!
//! This module owns the schema and every SQL statement; it never decides
//! policy (who may do what is `crate::hive`'s business) and never talks to a
//! peer.

mod approvals;
mod audit;
mod read;
mod runtime_rows;
mod schema;
mod supervision;
mod tx;
mod usage;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hive_proto::view::{ErrorCode, Message};
use hive_proto::{AgentName, Principal};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::hub::Hub;
use crate::Error;

pub use approvals::{ApprovalRow, NewApproval};
pub use audit::{AuditReport, Head as AuditHead};
pub use read::Reader;
pub use supervision::{CrashRecord, CrashRow};
pub use tx::{NewMessage, NewQuestion, Tx};

/// Most jobs the writer folds into one transaction.
pub const MAX_BATCH: usize = 512;
/// Jobs that may wait for the writer before callers feel back-pressure.
pub const WRITE_QUEUE: usize = 8192;
/// Reader connections kept open for reuse.
pub const READERS: usize = 4;
/// Commits between two background checkpoints.
pub const CHECKPOINT_EVERY_COMMITS: u64 = 64;
/// WAL size, in pages, at which the writer checkpoints in its own commit
/// (SQLite's `wal_autocheckpoint`): reached only when writes never pause
/// long enough for the background checkpoint to let the WAL start over.
pub const WAL_WRITER_CHECKPOINT_PAGES: u32 = 16_384;
/// How long the checkpointer waits for commits before checkpointing
/// whatever the last ones left.
const CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation was refused for a reason the caller should hear.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the store is closed")]
    Closed,
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("row {table}#{id} does not decode: {what}")]
    Corrupt {
        table: &'static str,
        id: i64,
        what: String,
    },
    #[error("encoding: {0}")]
    Encode(String),
}

impl StoreError {
    /// Whether SQLite failed because the disk (or its quota) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            Self::Commit(msg) => msg.contains("disk is full"),
            _ => false,
        }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }
}

/// A `u64` from a peer (an id, a sequence number, a bound) as SQLite's
/// `INTEGER`, saturating instead of wrapping: `2^63` and above become
/// `i64::MAX`, which no row reaches, so `seq > x` finds nothing, `id = x`
/// finds nothing and `id < x` finds everything — what the caller meant.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

type Boxed = Box<dyn Any + Send>;
type WriteFn = Box<dyn FnOnce(&mut Tx<'_>) -> Result<Boxed, StoreError> + Send>;

struct Job {
    f: WriteFn,
    reply: oneshot::Sender<Result<Boxed, StoreError>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and starts the writer.
    pub fn open(path: &Path, hub: Arc<Hub>) -> Result<Self, Error> {
        let store_err = |source| Error::Store {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(store_err)?;
        schema::prepare_writer(&conn).map_err(store_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_WRITER_CHECKPOINT_PAGES)
            .map_err(store_err)?;
        let checkpoint_conn = Connection::open(path).map_err(store_err)?;
        let spawn_err = |what| {
            move |source| Error::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        let checkpointer = std::thread::Builder::new()
            .name("hive-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, nudged, counted))
            .map_err(spawn_err("starting the store checkpointer"))?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let heads = HeadRecorder::new(audit::head_path(path), &conn).map_err(store_err)?;
        let usage = usage::MailboxUsage::load(&conn).map_err(store_err)?;
        let writer = std::thread::Builder::new()
            .name("hive-store-writer".into())
            .spawn(move || {
                writer_loop(conn, rx, hub, nudge, commits, heads, usage);
                // The writer's sender is gone: the checkpointer finishes,
                // and the writer's connection closes last.
                let _ = checkpointer.join();
            })
            .map_err(spawn_err("starting the store writer"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` in the writer's next transaction and returns its result
    /// once that transaction has committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let jobs = self
            .inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let f: WriteFn = Box::new(move |tx| f(tx).map(|t| Box::new(t) as Boxed));
        jobs.send(Job { f, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        let boxed = rx.await.map_err(|_| StoreError::Closed)??;
        boxed
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| StoreError::Encode("writer returned the wrong type".into()))
    }

    /// Runs `f` on a reader connection (WAL: it sees the last commit and
    /// never blocks the writer).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = match inner
                .readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
            {
                Some(c) => c,
                None => open_reader(&inner.path)?,
            };
            let out = f(&Reader::new(&conn));
            let mut pool = inner.readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READERS {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Commit(format!("reader task: {e}")))?
    }

    /// Where the audit chain's head is recorded (`audit.head` beside the
    /// database).
    pub fn audit_head_path(&self) -> PathBuf {
        audit::head_path(&self.inner.path)
    }

    /// Registers agents that are configured but not yet in the store.
    pub async fn register_agents(&self, names: Vec<AgentName>) -> Result<(), StoreError> {
        self.write(move |tx| {
            for n in &names {
                tx.register_agent(n)?;
            }
            Ok(())
        })
        .await
    }

    /// Unacknowledged messages in `who`'s mailbox with `id > after`.
    pub async fn unacked(
        &self,
        who: Principal,
        after: u64,
        max: u32,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |r| r.unacked(&who, after, max)).await
    }

    /// Stored events with `seq > since`, oldest first.
    pub async fn events_since(
        &self,
        since: u64,
        limit: u32,
    ) -> Result<Vec<hive_proto::event::EventRecord>, StoreError> {
        self.read(move |r| r.events_since(since, limit)).await
    }

    /// Stops taking writes, lets the writer finish its queue, and joins it.
    pub async fn shutdown(&self) {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    schema::prepare_reader(&conn)?;
    Ok(conn)
}

/// Writes the audit chain's head outside the database (see
/// [`audit`]): after each commit that takes the chain past a multiple of
/// [`audit::HEAD_EVERY`], and at clean shutdown.
struct HeadRecorder {
    path: PathBuf,
    /// The last head recorded (or found at start).
    recorded: u64,
    /// The head file names a row past the chain's end (its tail is
    /// missing): the file is evidence and is never overwritten; heads go
    /// to the journal only.
    keep_file: bool,
}

impl HeadRecorder {
    fn new(path: PathBuf, conn: &Connection) -> Result<Self, rusqlite::Error> {
        let last = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| {
                r.get::<_, i64>(0)
            })?
            .max(0) as u64;
        let keep_file = match audit::Head::read(&path) {
            Ok(Some(head)) if head.seq > last => {
                tracing::error!(
                    recorded_seq = head.seq,
                    recorded_hash = %head.hash,
                    chain_ends_at = last,
                    "the audit log is missing rows the recorded head names; \
                     `hivectl audit verify` reports it, and the head file is kept as it is"
                );
                true
            }
            _ => false,
        };
        Ok(Self {
            path,
            recorded: last,
            keep_file,
        })
    }

    /// After a commit whose newest audit row is `head`.
    fn committed(&mut self, head: audit::Head) {
        if head.seq / audit::HEAD_EVERY > self.recorded / audit::HEAD_EVERY {
            self.record(&head, "every 1000 rows");
        }
    }

    fn record(&mut self, head: &audit::Head, why: &str) {
        if self.keep_file {
            tracing::info!(seq = head.seq, hash = %head.hash, why, "audit chain head");
            self.recorded = head.seq;
            return;
        }
        match head.record(&self.path, why) {
            Ok(()) => self.recorded = head.seq,
            Err(e) => tracing::error!(
                error = %e,
                path = %self.path.display(),
                seq = head.seq,
                hash = %head.hash,
                "could not write the audit head file (the head is in this log line)"
            ),
        }
    }

    /// At clean shutdown: the chain's newest row, whatever its number.
    fn shutdown(&mut self, conn: &Connection) {
        match audit::current_head(conn) {
            Ok(Some(head)) => self.record(&head, "clean shutdown"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading the audit head at shutdown"),
        }
    }
}

/// The writer thread: take every waiting job, run them in one transaction,
/// commit, then publish and reply.
fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    hub: Arc<Hub>,
    checkpoint: std::sync::mpsc::SyncSender<()>,
    commits: Arc<AtomicU64>,
    mut heads: HeadRecorder,
    mut usage: usage::MailboxUsage,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if run_batch(&mut conn, batch, &hub, &mut heads, &mut usage) {
            let n = commits.fetch_add(1, Ordering::AcqRel) + 1;
            if n.is_multiple_of(CHECKPOINT_EVERY_COMMITS) {
                // Full means a nudge is already waiting: nothing to add.
                let _ = checkpoint.try_send(());
            }
        }
    }
    heads.shutdown(&conn);
}

/// The checkpointer thread: a `PASSIVE` checkpoint on every nudge, and one
/// after a quiet [`CHECKPOINT_IDLE`] if any commit came since the last
/// checkpoint (`commits` is the writer's running count). Ends when the
/// writer drops its sender.
fn checkpoint_loop(
    conn: Connection,
    nudged: std::sync::mpsc::Receiver<()>,
    commits: Arc<AtomicU64>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut covered = 0u64;
    loop {
        match nudged.recv_timeout(CHECKPOINT_IDLE) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = commits.load(Ordering::Acquire);
        if now == covered {
            continue;
        }
        covered = now;
        let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match passive {
            Ok((log, done)) => tracing::trace!(log, done, "checkpoint"),
            Err(e) => tracing::warn!(
                error = %e,
                "background checkpoint failed; the writer's own will follow"
            ),
        }
    }
}

/// Runs one batch in one transaction; true if it committed.
fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    hub: &Hub,
    heads: &mut HeadRecorder,
    usage: &mut usage::MailboxUsage,
) -> bool {
    let now = crate::now_ms();
    let mut done = Vec::with_capacity(batch.len());
    let mut effects = tx::Effects::default();
    let outcome = (|| -> Result<(), rusqlite::Error> {
        let mut txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for job in batch {
            let mut sp = txn.savepoint()?;
            let mut job_effects = tx::Effects::default();
            let result = {
                let mut t = Tx::new(&sp, now, &mut job_effects, usage, &effects.usage);
                (job.f)(&mut t)
            };
            if result.is_ok() {
                sp.commit()?;
                effects.append(job_effects);
            } else {
                sp.rollback()?;
                sp.commit()?;
            }
            done.push((job.reply, result));
        }
        txn.commit()
    })();
    match outcome {
        Ok(()) => {
            if let Some(head) = effects.audit_head.take() {
                heads.committed(head);
            }
            usage.apply(std::mem::take(&mut effects.usage));
            effects.publish(hub);
            for (reply, result) in done {
                let _ = reply.send(result);
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "store transaction failed; nothing in it was kept");
            for (reply, _) in done {
                let _ = reply.send(Err(StoreError::Commit(e.to_string())));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the database file itself (not its WAL) holds `needle`.
    fn in_main_file(path: &Path, needle: &str) -> bool {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[tokio::test]
    async fn a_bound_over_i64_max_saturates_instead_of_wrapping() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hive.db"), Arc::new(Hub::new())).unwrap();
        let alice = AgentName::new("alice").unwrap();
        store
            .write(move |tx| {
                tx.event(hive_proto::event::Event::AgentStatus {
                    agent: alice,
                    text: "up".into(),
                })
            })
            .await
            .unwrap();
        assert_eq!(store.events_since(0, 10).await.unwrap().len(), 1);
        // Wrapped, 2^63 would be negative and every event would be "after" it.
        for since in [1u64 << 63, u64::MAX] {
            assert!(store.events_since(since, 10).await.unwrap().is_empty());
        }
        store.shutdown().await;
    }

    /// The backlog a quota check sees: committed writes and the job's own,
    /// never a refused job's (its savepoint rolled back), and counted again
    /// from `messages` when the store reopens.
    #[tokio::test]
    async fn a_mailbox_backlog_counts_committed_and_own_writes_never_refused_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hive.db");
        let bob = Principal::Agent(AgentName::new("bob").unwrap());
        let msg =
            |body: &str| tx::NewMessage::plain(Principal::Operator, bob.clone(), body.into(), None);
        let store = Store::open(&path, Arc::new(Hub::new())).unwrap();
        let (m1, m2) = (msg("one"), msg("three"));
        let b = bob.clone();
        let seen = store
            .write(move |tx| {
                let first = tx.insert_message(m1)?.id;
                let after_one = tx.mailbox_usage(&b);
                tx.insert_message(m2)?;
                Ok((first, after_one, tx.mailbox_usage(&b)))
            })
            .await
            .unwrap();
        assert_eq!((seen.1, seen.2), ((1, 3), (2, 8)));
        let (m3, b) = (msg("refused"), bob.clone());
        let refused = store
            .write(move |tx| {
                tx.insert_message(m3)?;
                assert_eq!(tx.mailbox_usage(&b), (3, 15));
                Err::<(), _>(StoreError::refused(ErrorCode::Limit, "no"))
            })
            .await;
        assert!(refused.is_err());
        let (b, first) = (bob.clone(), seen.0);
        let after_ack = store
            .write(move |tx| {
                assert_eq!(tx.mailbox_usage(&b), (2, 8), "the refused job left nothing");
                tx.ack(&b, first)?;
                Ok(tx.mailbox_usage(&b))
            })
            .await
            .unwrap();
        assert_eq!(after_ack, (1, 5));
        store.shutdown().await;
        let store = Store::open(&path, Arc::new(Hub::new())).unwrap();
        let b = bob.clone();
        let reopened = store
            .write(move |tx| Ok(tx.mailbox_usage(&b)))
            .await
            .unwrap();
        assert_eq!(reopened, (1, 5));
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_reach_the_database_file_by_background_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hive.db");
        let store = Store::open(&path, Arc::new(Hub::new())).unwrap();
        // One commit per write, each awaited: well past the writer's nudge
        // and far below the writer's own checkpoint threshold.
        for i in 0..CHECKPOINT_EVERY_COMMITS + 1 {
            let detail = format!("needle-{i:04}");
            store
                .write(move |tx| tx.audit("test", "write", &detail))
                .await
                .unwrap();
        }
        let first = "needle-0000";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !in_main_file(&path, first) {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing checkpointed the WAL into the database file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The last commit came after the last nudge: the idle checkpoint
        // carries it.
        let last = format!("needle-{:04}", CHECKPOINT_EVERY_COMMITS);
        while !in_main_file(&path, &last) {
            assert!(
                std::time::Instant::now() < deadline,
                "the commits after the last nudge were never checkpointed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.shutdown().await;
    }
}
