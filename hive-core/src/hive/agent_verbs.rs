//! The agent verbs of DESIGN §3, each applied for the agent whose socket the
//! request came in on (`me`). `recv` is not here: waiting and pushing belong
//! to the connection (`agent_socket`), which uses [`Hive::unacked`] and
//! [`Hive::subscribe_inbox`].
//!
//! Every check that depends on stored state (is this question addressed to
//! me? is it still open?) runs inside the write job, so it and the change it
//! guards commit atomically.

use hive_proto::agent::{
    AgentRequest, AskResult, CancelKind, Done, LooseEnds, RemindResult, SendResult, WhoamiResult,
    MAX_BODY, MAX_OPTIONS, MAX_STATUS,
};
use hive_proto::view::{ErrorCode, ItemKind, QuestionState};
use hive_proto::{AgentName, Principal, Recipient};
use serde::Serialize;

use super::quota::{StatusAdmit, StatusFlush};
use super::reply_budget::Budget;
use super::{Hive, Refusal};
use crate::config::Quotas;
use crate::store::{NewMessage, NewQuestion, StoreError};

/// Longest TTL a question may ask for: 30 days.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;
/// Furthest ahead a reminder may be set: 366 days.
pub const MAX_REMIND_MS: i64 = 366 * 24 * 3600 * 1000;
/// Longest option text of a question, in bytes.
pub const MAX_OPTION: usize = 1024;

fn json(v: impl Serialize) -> Result<serde_json::Value, Refusal> {
    serde_json::to_value(v).map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))
}

pub(super) fn check_len(what: &str, s: &str, max: usize) -> Result<(), Refusal> {
    if s.len() > max {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("{what} is {} bytes; the limit is {max}", s.len()),
        ));
    }
    Ok(())
}

fn actor(me: &AgentName) -> String {
    format!("agent:{me}")
}

impl Hive {
    /// Applies one agent request for `me` and returns its JSON result.
    pub async fn agent_call(
        &self,
        me: &AgentName,
        req: AgentRequest,
    ) -> Result<serde_json::Value, Refusal> {
        let policy = self
            .policy(me)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no agent {me}")))?;
        match req {
            AgentRequest::Whoami => json(WhoamiResult {
                name: me.to_string(),
                allowed_recipients: policy.allowed_recipients.to_strings(),
            }),
            AgentRequest::Send {
                to,
                body,
                in_reply_to,
            } => json(self.send(me, to, body, in_reply_to).await?),
            AgentRequest::Recv { .. } => Err(Refusal::new(
                ErrorCode::BadRequest,
                "recv is served by the connection, not here",
            )),
            AgentRequest::Ack { msg_id } => {
                let mailbox = Principal::Agent(me.clone());
                self.store()
                    .write(move |tx| tx.ack(&mailbox, msg_id))
                    .await?;
                json(Done {})
            }
            AgentRequest::Ask {
                to,
                question,
                options,
                multi,
                ttl_s,
            } => json(self.ask(me, to, question, options, multi, ttl_s).await?),
            AgentRequest::Answer {
                question_id,
                answer,
            } => {
                self.answer(Principal::Agent(me.clone()), actor(me), question_id, answer)
                    .await?;
                json(Done {})
            }
            AgentRequest::LooseEnds => {
                let who = Principal::Agent(me.clone());
                let name = me.clone();
                let ends = self
                    .store()
                    .read(move |r| {
                        let mut budget = Budget::agent();
                        let asked = r.open_questions_by(&who, &mut |q| budget.admit(q))?;
                        let to_me = r.open_questions_to(&who, &mut |q| budget.admit(q))?;
                        let proposals = r
                            .pending_approvals(Some(&who))?
                            .into_iter()
                            .take_while(|a| budget.admit(a))
                            .collect();
                        let reminders = r.pending_reminders(&name, &mut |m| budget.admit(m))?;
                        Ok(LooseEnds {
                            asked,
                            to_me,
                            proposals,
                            reminders,
                            truncated: budget.truncated(),
                        })
                    })
                    .await?;
                json(ends)
            }
            AgentRequest::Cancel { kind, item_id } => {
                self.cancel(me, kind, item_id).await?;
                json(Done {})
            }
            AgentRequest::Status { text } => {
                check_len("status", &text, MAX_STATUS)?;
                self.status(me, text).await?;
                json(Done {})
            }
            AgentRequest::Remind { in_s, at, body } => json(self.remind(me, in_s, at, body).await?),
            AgentRequest::ProposeConfig {
                agent,
                files,
                message,
            } => {
                if !policy.may_propose_for(me, &agent) {
                    return Err(Refusal::new(
                        ErrorCode::Forbidden,
                        format!("your policy does not let you propose config for {agent}"),
                    ));
                }
                let who = Principal::Agent(me.clone());
                json(
                    self.propose(who, actor(me), agent, files, message, false)
                        .await?,
                )
            }
            AgentRequest::RequestSpawn {
                name,
                files,
                message,
            } => {
                let who = Principal::Agent(me.clone());
                json(
                    self.propose(who, actor(me), name, files, message, true)
                        .await?,
                )
            }
        }
    }

    /// `status`: written now within `status_rate`; above it the newest
    /// status waits for the next token (the reply is `ok` at once) and the
    /// ones it replaced are never written, audited or announced.
    async fn status(&self, me: &AgentName, text: String) -> Result<(), Refusal> {
        let quotas = self.quotas_of(me)?;
        match self.inner.meters.status(me, &quotas, text.clone()) {
            StatusAdmit::WriteNow => self.write_status(me, text).await,
            StatusAdmit::Coalesced { start_flush } => {
                if start_flush {
                    let (hive, me) = (self.clone(), me.clone());
                    tokio::spawn(async move { hive.flush_status(me, quotas).await });
                }
                Ok(())
            }
        }
    }

    /// Writes `agent`'s newest pending status whenever its rate allows,
    /// until none is pending.
    async fn flush_status(&self, agent: AgentName, quotas: Quotas) {
        loop {
            match self.inner.meters.status_flush(&agent, &quotas) {
                StatusFlush::Done => return,
                StatusFlush::Wait(d) => tokio::time::sleep(d).await,
                StatusFlush::Write(text) => {
                    if let Err(e) = self.write_status(&agent, text).await {
                        tracing::warn!(agent = %agent, error = %e, "writing a coalesced status");
                    }
                }
            }
        }
    }

    /// Commits `text` as `agent`'s status, with its audit row and event.
    pub(super) async fn write_status(
        &self,
        agent: &AgentName,
        text: String,
    ) -> Result<(), Refusal> {
        let name = agent.clone();
        self.store()
            .write(move |tx| {
                tx.set_status(&name, &text)?;
                tx.audit(&actor(&name), "status", &text)
            })
            .await?;
        Ok(())
    }

    fn quotas_of(&self, agent: &AgentName) -> Result<Quotas, Refusal> {
        self.policy(agent)
            .map(|p| p.quotas)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no agent {agent}")))
    }

    async fn send(
        &self,
        me: &AgentName,
        to: Recipient,
        body: String,
        in_reply_to: Option<u64>,
    ) -> Result<SendResult, Refusal> {
        check_len("body", &body, MAX_BODY)?;
        let allowed = &self
            .policy(me)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no agent {me}")))?
            .allowed_recipients;
        let recipients: Vec<Principal> = match &to {
            Recipient::Operator if allowed.allows_operator() => vec![Principal::Operator],
            Recipient::Operator => {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "your policy does not let you message the operator",
                ))
            }
            Recipient::Agent(peer) => {
                if self.policy(peer).is_none() {
                    return Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("no agent {peer}"),
                    ));
                }
                if !allowed.allows_agent(peer) {
                    return Err(Refusal::new(
                        ErrorCode::Forbidden,
                        format!("your policy does not let you message {peer}"),
                    ));
                }
                vec![Principal::Agent(peer.clone())]
            }
            Recipient::All => self
                .agent_names()
                .into_iter()
                .filter(|a| a != me && allowed.allows_agent(a))
                .map(Principal::Agent)
                .collect(),
        };
        let quotas = self.quotas_of(me)?;
        let count = u32::try_from(recipients.len()).unwrap_or(u32::MAX);
        self.inner.meters.send(me, &quotas, count)?;
        // What each agent recipient may still store, checked in the job
        // against the store's own count, so check and insert are atomic.
        let recipients: Vec<(Principal, Option<Quotas>)> = recipients
            .into_iter()
            .map(|r| {
                let q = match &r {
                    Principal::Agent(a) => self.policy(a).map(|p| p.quotas),
                    _ => None,
                };
                (r, q)
            })
            .collect();
        let me = me.clone();
        let ids = self
            .store()
            .write(move |tx| {
                let from = Principal::Agent(me.clone());
                if let Some(orig) = in_reply_to {
                    check_reply_target(tx, &from, orig)?;
                }
                for (r, q) in &recipients {
                    if let Some(q) = q {
                        check_mailbox_room(tx, r, q, body.len())?;
                    }
                }
                let mut ids = Vec::with_capacity(recipients.len());
                for (r, _) in recipients {
                    let m = tx.insert_message(NewMessage::plain(
                        from.clone(),
                        r,
                        body.clone(),
                        in_reply_to,
                    ))?;
                    ids.push(m.id);
                }
                tx.audit(
                    &actor(&me),
                    "send",
                    &format!("to={to} ids={ids:?} bytes={}", body.len()),
                )?;
                Ok(ids)
            })
            .await?;
        Ok(SendResult { ids })
    }

    async fn ask(
        &self,
        me: &AgentName,
        to: Recipient,
        question: String,
        options: Vec<String>,
        multi: bool,
        ttl_s: Option<u64>,
    ) -> Result<AskResult, Refusal> {
        check_len("question", &question, MAX_BODY)?;
        if options.len() > MAX_OPTIONS {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("at most {MAX_OPTIONS} options"),
            ));
        }
        for o in &options {
            check_len("option", o, MAX_OPTION)?;
        }
        if let Some(t) = ttl_s {
            if t == 0 || t > MAX_TTL_S {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!("ttl_s must be between 1 and {MAX_TTL_S}"),
                ));
            }
        }
        let policy = self
            .policy(me)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no agent {me}")))?;
        let (allowed, max) = (&policy.allowed_recipients, policy.max_open_questions);
        let addressee = match to {
            Recipient::Operator if allowed.allows_operator() => Principal::Operator,
            Recipient::Agent(peer) if self.policy(&peer).is_none() => {
                return Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!("no agent {peer}"),
                ))
            }
            Recipient::Agent(peer) if allowed.allows_agent(&peer) && peer != *me => {
                Principal::Agent(peer)
            }
            Recipient::All => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "a question goes to one agent or to the operator, not to *",
                ))
            }
            other => {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    format!("you may not ask {other}"),
                ))
            }
        };
        let me = me.clone();
        let result = self
            .store()
            .write(move |tx| {
                let expires_at = ttl_s.map(|t| tx.now() + (t as i64) * 1000);
                let asker = Principal::Agent(me.clone());
                let open = tx.reader().count_open_questions_by(&asker)?;
                if open >= u64::from(max) {
                    return Err(StoreError::refused(
                        ErrorCode::Limit,
                        format!(
                            "you already have {open} open questions (the limit is {max}); \
                             cancel one or wait for an answer"
                        ),
                    ));
                }
                let q = tx.insert_question(NewQuestion {
                    asker: asker.clone(),
                    to: addressee.clone(),
                    question: question.clone(),
                    options,
                    multi,
                    expires_at,
                })?;
                if let Principal::Agent(_) = addressee {
                    tx.insert_message(NewMessage::about_question(
                        ItemKind::Question,
                        asker,
                        addressee.clone(),
                        question,
                        &q,
                    ))?;
                }
                tx.audit(
                    &actor(&me),
                    "ask",
                    &format!("question={} to={addressee}", q.id),
                )?;
                Ok(AskResult {
                    question_id: q.id,
                    expires_at,
                })
            })
            .await?;
        if result.expires_at.is_some() {
            self.wake_scheduler();
        }
        Ok(result)
    }

    /// Answers question `id` as `by`, who must be its addressee. Shared by
    /// the agent verb and the operator's `AnswerQuestion`.
    pub(super) async fn answer(
        &self,
        by: Principal,
        actor: String,
        id: u64,
        answer: String,
    ) -> Result<(), Refusal> {
        check_len("answer", &answer, MAX_BODY)?;
        self.store()
            .write(move |tx| {
                let q = tx.reader().question(id)?.ok_or_else(|| {
                    StoreError::refused(ErrorCode::NotFound, format!("no question {id}"))
                })?;
                if q.to != by {
                    return Err(StoreError::refused(
                        ErrorCode::Forbidden,
                        format!("question {id} is not addressed to you"),
                    ));
                }
                tx.close_question(id, QuestionState::Answered, Some((&answer, &by)))?;
                if let Principal::Agent(_) = q.asker {
                    tx.insert_message(NewMessage::about_question(
                        ItemKind::Answer,
                        by.clone(),
                        q.asker.clone(),
                        answer.clone(),
                        &q,
                    ))?;
                }
                tx.audit(
                    &actor,
                    "answer",
                    &format!("question={id} asker={}", q.asker),
                )
            })
            .await?;
        Ok(())
    }

    async fn cancel(&self, me: &AgentName, kind: CancelKind, id: u64) -> Result<(), Refusal> {
        let me = me.clone();
        self.store()
            .write(move |tx| {
                let mine = Principal::Agent(me.clone());
                match kind {
                    CancelKind::Question => {
                        let q = tx.reader().question(id)?.ok_or_else(|| {
                            StoreError::refused(ErrorCode::NotFound, format!("no question {id}"))
                        })?;
                        if q.asker != mine {
                            return Err(StoreError::refused(
                                ErrorCode::Forbidden,
                                format!("question {id} is not yours"),
                            ));
                        }
                        tx.close_question(id, QuestionState::Cancelled, None)?;
                        if let Principal::Agent(_) = q.to {
                            tx.insert_message(NewMessage::about_question(
                                ItemKind::QuestionCancelled,
                                mine,
                                q.to.clone(),
                                format!("question {id} was withdrawn"),
                                &q,
                            ))?;
                        }
                    }
                    CancelKind::Reminder => {
                        let r = tx.reader().pending_reminder(id)?.ok_or_else(|| {
                            StoreError::refused(
                                ErrorCode::NotFound,
                                format!("no pending reminder {id}"),
                            )
                        })?;
                        if r.agent != me {
                            return Err(StoreError::refused(
                                ErrorCode::Forbidden,
                                format!("reminder {id} is not yours"),
                            ));
                        }
                        tx.close_reminder(id, &me, false)?;
                    }
                }
                let what = match kind {
                    CancelKind::Question => "question",
                    CancelKind::Reminder => "reminder",
                };
                tx.audit(&actor(&me), "cancel", &format!("{what}={id}"))
            })
            .await?;
        Ok(())
    }

    async fn remind(
        &self,
        me: &AgentName,
        in_s: Option<u64>,
        at: Option<i64>,
        body: String,
    ) -> Result<RemindResult, Refusal> {
        check_len("body", &body, MAX_BODY)?;
        let max = self.policy(me).map(|p| p.max_reminders).unwrap_or(0);
        let when = match (in_s, at) {
            (Some(s), None) => When::In(s.min(i64::MAX as u64 / 1000) as i64 * 1000),
            (None, Some(at)) => When::At(at),
            _ => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "remind needs exactly one of in_s and at",
                ))
            }
        };
        let me = me.clone();
        let result = self
            .store()
            .write(move |tx| {
                let now = tx.now();
                let due_at = match when {
                    When::In(ms) => now.saturating_add(ms),
                    When::At(at) => at,
                };
                if due_at > now.saturating_add(MAX_REMIND_MS) {
                    return Err(StoreError::refused(
                        ErrorCode::BadRequest,
                        "a reminder may be set at most 366 days ahead",
                    ));
                }
                let pending = tx.reader().count_pending_reminders(&me)?;
                if pending >= u64::from(max) {
                    return Err(StoreError::refused(
                        ErrorCode::Limit,
                        format!(
                            "you already have {pending} pending reminders (the limit is {max})"
                        ),
                    ));
                }
                let r = tx.insert_reminder(&me, &body, due_at)?;
                tx.audit(
                    &actor(&me),
                    "remind",
                    &format!("reminder={} due_at={due_at}", r.id),
                )?;
                Ok(RemindResult {
                    reminder_id: r.id,
                    due_at,
                })
            })
            .await?;
        self.wake_scheduler();
        Ok(result)
    }
}

enum When {
    In(i64),
    At(i64),
}

/// A message of `bytes` more for `to` must stay within its `max_unacked`
/// and `max_unacked_bytes`; otherwise the send is refused whole.
fn check_mailbox_room(
    tx: &crate::store::Tx<'_>,
    to: &Principal,
    q: &Quotas,
    bytes: usize,
) -> Result<(), StoreError> {
    let (n, stored) = tx.mailbox_usage(to);
    if n >= q.max_unacked {
        return Err(StoreError::refused(
            ErrorCode::QuotaExceeded,
            format!(
                "max_unacked: {to} has {n} unacknowledged messages (its limit is {}); \
                 nothing was sent; retry when it has caught up",
                q.max_unacked
            ),
        ));
    }
    if stored.saturating_add(bytes as u64) > q.max_unacked_bytes {
        return Err(StoreError::refused(
            ErrorCode::QuotaExceeded,
            format!(
                "max_unacked_bytes: {to} holds {stored} bytes of unacknowledged messages and \
                 {bytes} more would pass its limit of {}; nothing was sent",
                q.max_unacked_bytes
            ),
        ));
    }
    Ok(())
}

/// `in_reply_to` must name a message in the sender's own mailbox: an agent
/// cannot thread onto (and so probe for) messages it never received.
fn check_reply_target(
    tx: &crate::store::Tx<'_>,
    me: &Principal,
    orig: u64,
) -> Result<(), StoreError> {
    if tx.reader().message_to(me, orig)?.is_none() {
        return Err(StoreError::refused(
            ErrorCode::NotFound,
            format!("no message {orig} in your inbox to reply to"),
        ));
    }
    Ok(())
}
