//! Collapses concurrent identical reads into rounds, so fifty browsers
//! loading the dashboard at once cost the core a few `ListAgents`, not
//! fifty.
//!
//! A read joins the *next* round for its key — the one that has not been
//! sent yet — never the one already in flight. A round is sent only after
//! every caller in it arrived, so each caller gets an answer at least as new
//! as its own request: a page that read the hub's `last_seq` before asking
//! can still rely on its state being that new (see `EventHub::last_seq`).
//! One runner task per key sends the rounds one after another and hands
//! each answer to everyone in it.
//!
//! Only reads that change nothing and take no argument are collapsed
//! ([`is_coalescible`]); this module must never be handed a verb with an
//! effect, which would then run once for many callers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use hive_proto::operator::{OperatorResponse, WebRequest};
use tokio::sync::watch;

use crate::core_link::CoreError;

/// What a round's callers receive: one shared answer, read by reference,
/// so a round's fifty callers do not copy 200 agent rows each.
type Answer = Result<Arc<OperatorResponse>, CoreError>;

/// Which `(verb, operator)` a round is for: the operator stays exact so the
/// core sees every read under the login that asked.
type Key = (&'static str, String);

/// Whether `req` may be collapsed: the dashboard's argument-free reads.
pub fn is_coalescible(req: &WebRequest) -> bool {
    matches!(
        req,
        WebRequest::ListAgents | WebRequest::Questions | WebRequest::Pending | WebRequest::Health
    )
}

#[derive(Default)]
struct Slot {
    /// The round callers join now; taken by the runner when it sends it.
    next: Option<watch::Sender<Option<Answer>>>,
    /// Whether a runner task is alive for this key.
    running: bool,
}

/// The rounds of every key.
#[derive(Default)]
pub struct Coalescer {
    slots: Mutex<HashMap<Key, Slot>>,
}

/// How a round is sent: the caller's own path to the core.
pub type SendFn = Arc<
    dyn Fn(String, WebRequest) -> BoxFuture<'static, Result<OperatorResponse, CoreError>>
        + Send
        + Sync,
>;

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the next round for `req` (which must be coalescible) and
    /// returns its answer. `joined` is told whether this caller rode on a
    /// round someone else opened.
    pub async fn read(
        self: &Arc<Self>,
        operator: &str,
        req: WebRequest,
        send: SendFn,
        joined: impl FnOnce(bool),
    ) -> Result<Arc<OperatorResponse>, CoreError> {
        debug_assert!(is_coalescible(&req));
        let key: Key = (req.verb(), operator.to_owned());
        let mut rx = {
            let mut slots = self.lock();
            let slot = slots.entry(key.clone()).or_default();
            let rx = match &slot.next {
                Some(tx) => {
                    joined(true);
                    tx.subscribe()
                }
                None => {
                    joined(false);
                    let (tx, rx) = watch::channel(None);
                    slot.next = Some(tx);
                    rx
                }
            };
            if !slot.running {
                slot.running = true;
                tokio::spawn(run(self.clone(), key, req, send));
            }
            rx
        };
        let answer: Option<Answer> = match rx.wait_for(Option::is_some).await {
            Ok(a) => a.clone(),
            Err(_) => None,
        };
        match answer {
            Some(a) => a,
            None => Err(CoreError::Unexpected(
                "a read round ended without an answer".into(),
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // Each critical section is a few field updates; a poisoned map is
        // still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends the rounds for one key until nobody is waiting.
async fn run(c: Arc<Coalescer>, key: Key, req: WebRequest, send: SendFn) {
    loop {
        let tx = {
            let mut slots = c.lock();
            let Some(slot) = slots.get_mut(&key) else {
                return;
            };
            match slot.next.take() {
                Some(tx) => tx,
                None => {
                    slots.remove(&key);
                    return;
                }
            }
        };
        // Everyone in this round arrived before this point.
        let answer = send(key.1.clone(), req.clone()).await;
        // Receivers that went away are no reason to stop.
        let _ = tx.send(Some(answer.map(Arc::new)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// A core whose every answer says how many calls it has served.
    fn counting(calls: Arc<AtomicU32>, delay: Duration) -> SendFn {
        Arc::new(move |_op, _req| {
            let calls = calls.clone();
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(OperatorResponse::Journal(vec![n.to_string()]))
            })
        })
    }

    fn seen(r: Result<Arc<OperatorResponse>, CoreError>) -> u32 {
        match r.as_deref() {
            Ok(OperatorResponse::Journal(v)) => v[0].parse().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_share_rounds() {
        let c = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicU32::new(0));
        let send = counting(calls.clone(), Duration::from_millis(10));
        let reads = (0..50).map(|_| {
            let (c, send) = (c.clone(), send.clone());
            async move { c.read("ops", WebRequest::ListAgents, send, |_| {}).await }
        });
        let answers = futures::future::join_all(reads).await;
        assert!(answers.into_iter().all(|r| r.is_ok()));
        assert!(
            calls.load(Ordering::SeqCst) <= 2,
            "50 reads, {} calls",
            calls.load(Ordering::SeqCst)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_arriving_during_a_round_gets_the_next_one() {
        let c = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicU32::new(0));
        let send = counting(calls.clone(), Duration::from_millis(10));
        let first = {
            let (c, send) = (c.clone(), send.clone());
            tokio::spawn(async move { c.read("ops", WebRequest::ListAgents, send, |_| {}).await })
        };
        // Let round 1 start, then arrive while it is in flight.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = c.read("ops", WebRequest::ListAgents, send, |_| {}).await;
        assert_eq!(seen(first.await.unwrap()), 1);
        assert_eq!(
            seen(second),
            2,
            "a round already sent may be older than the request"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn different_operators_and_verbs_do_not_share() {
        let c = Arc::new(Coalescer::new());
        let calls = Arc::new(AtomicU32::new(0));
        let send = counting(calls.clone(), Duration::from_millis(10));
        let (a, b, q) = tokio::join!(
            c.read("ops", WebRequest::ListAgents, send.clone(), |_| {}),
            c.read(
                "alice@example.com",
                WebRequest::ListAgents,
                send.clone(),
                |_| {}
            ),
            c.read("ops", WebRequest::Questions, send.clone(), |_| {}),
        );
        assert!(a.is_ok() && b.is_ok() && q.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(!is_coalescible(&WebRequest::Approve { id: 1 }));
        // Every dashboard page reads Health too (the network banner).
        assert!(is_coalescible(&WebRequest::Health));
    }
}
