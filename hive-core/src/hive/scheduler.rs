//! The scheduler: expires questions at their TTL and fires reminders when
//! due. Deadlines live only in the store, so a restart loses none; the task
//! sleeps until the earliest one or until a new deadline wakes it. Firing is
//! one write job, so an expiry and the notice to the asker commit together.

use std::time::Duration;

use hive_proto::view::{ErrorCode, ItemKind, QuestionState};
use hive_proto::Principal;

use super::Hive;
use crate::store::{NewMessage, StoreError};

/// Longest the scheduler sleeps without re-reading the store, as a guard
/// against a missed wake-up or a clock jump.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How often the scheduler prunes old events.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Hive {
    /// Runs until `shutdown` resolves.
    pub async fn run_scheduler(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            if let Err(e) = self.fire_due().await {
                tracing::error!(error = %e, "scheduler could not fire due items");
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                let keep = self.config().event_retention;
                match self.store().write(move |tx| tx.prune_events(keep)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "pruned old events"),
                    Err(e) => tracing::error!(error = %e, "could not prune events"),
                }
                match self.prune_old_messages(crate::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "pruned old acknowledged messages"),
                    Err(e) => tracing::error!(error = %e, "could not prune messages"),
                }
            }
            let sleep = match self.store().read(|r| r.next_deadline()).await {
                Ok(Some(at)) => {
                    let ms = (at - crate::now_ms()).max(0) as u64;
                    Duration::from_millis(ms).min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler could not read deadlines");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.scheduler_wake.notified() => {}
            }
        }
    }

    /// Expires every overdue question and fires every due reminder.
    /// Prunes acknowledged messages past their retention as of `now`:
    /// agents' mailboxes by `message_retention`, the operator's by
    /// `operator_message_retention`. The audit log is never pruned.
    pub async fn prune_old_messages(&self, now: i64) -> Result<usize, StoreError> {
        let cutoff = |d: Option<Duration>| d.map(|d| now.saturating_sub(d.as_millis() as i64));
        let agents = cutoff(self.config().message_retention);
        let operator = cutoff(self.config().operator_message_retention);
        self.store()
            .write(move |tx| {
                let mut n = 0;
                if let Some(before) = agents {
                    n += tx.prune_acked_messages(before, false)?;
                }
                if let Some(before) = operator {
                    n += tx.prune_acked_messages(before, true)?;
                }
                Ok(n)
            })
            .await
    }

    pub async fn fire_due(&self) -> Result<(), StoreError> {
        self.store()
            .write(|tx| {
                let now = tx.now();
                for q in tx.reader().expired_questions(now)? {
                    match tx.close_question(q.id, QuestionState::Expired, None) {
                        Err(StoreError::Refused {
                            code: ErrorCode::Conflict,
                            ..
                        }) => continue,
                        other => other?,
                    }
                    if let Principal::Agent(_) = q.asker {
                        tx.insert_message(NewMessage::about_question(
                            ItemKind::QuestionExpired,
                            Principal::Hive,
                            q.asker.clone(),
                            format!("your question {} expired unanswered", q.id),
                            &q,
                        ))?;
                    }
                    tx.audit("hive", "expire", &format!("question={}", q.id))?;
                }
                for r in tx.reader().due_reminders(now)? {
                    tx.close_reminder(r.id, &r.agent, true)?;
                    tx.insert_message(NewMessage {
                        kind: ItemKind::Reminder,
                        from: Principal::Hive,
                        to: Principal::Agent(r.agent.clone()),
                        body: r.body.clone(),
                        in_reply_to: None,
                        question_id: None,
                        options: Vec::new(),
                        multi: false,
                    })?;
                    tx.audit(
                        "hive",
                        "remind",
                        &format!("reminder={} agent={}", r.id, r.agent),
                    )?;
                }
                Ok(())
            })
            .await
    }
}
