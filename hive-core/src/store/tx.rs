//! [`Tx`]: what a write job may do inside the writer's transaction. Each
//! method is one statement family with its event; the events and messages it
//! produces are collected as [`Effects`] and published only after commit.

use std::sync::Arc;

use hive_proto::event::{Event, EventRecord};
use hive_proto::view::{ErrorCode, ItemKind, Message, Question, QuestionState, Reminder};
use hive_proto::{AgentName, Principal};
use rusqlite::{params, Connection, OptionalExtension};

use super::read::{question_state_str, Reader};
use super::usage::{Delta, MailboxUsage};
use super::{audit, sql_int, StoreError};
use crate::hub::Hub;

/// What a committed transaction announces.
#[derive(Default)]
pub(super) struct Effects {
    messages: Vec<Arc<Message>>,
    events: Vec<EventRecord>,
    /// The audit chain's newest row after this transaction, if it grew.
    pub(super) audit_head: Option<audit::Head>,
    /// How the unacknowledged backlog of each mailbox changed.
    pub(super) usage: Delta,
}

impl Effects {
    pub(super) fn append(&mut self, other: Effects) {
        self.messages.extend(other.messages);
        self.events.extend(other.events);
        if other.audit_head.is_some() {
            self.audit_head = other.audit_head;
        }
        self.usage.append(other.usage);
    }

    pub(super) fn publish(self, hub: &Hub) {
        for m in self.messages {
            hub.publish_message(m);
        }
        for e in self.events {
            hub.publish_event(e);
        }
    }
}

/// A message about to be committed.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub kind: ItemKind,
    pub from: Principal,
    pub to: Principal,
    pub body: String,
    pub in_reply_to: Option<u64>,
    pub question_id: Option<u64>,
    pub options: Vec<String>,
    pub multi: bool,
}

impl NewMessage {
    /// A plain message.
    pub fn plain(from: Principal, to: Principal, body: String, in_reply_to: Option<u64>) -> Self {
        Self {
            kind: ItemKind::Message,
            from,
            to,
            body,
            in_reply_to,
            question_id: None,
            options: Vec::new(),
            multi: false,
        }
    }

    /// A notice about a question (asked, answered, expired, cancelled).
    pub fn about_question(
        kind: ItemKind,
        from: Principal,
        to: Principal,
        body: String,
        q: &Question,
    ) -> Self {
        Self {
            kind,
            from,
            to,
            body,
            in_reply_to: None,
            question_id: Some(q.id),
            options: q.options.clone(),
            multi: q.multi,
        }
    }
}

/// A question about to be committed.
#[derive(Clone, Debug)]
pub struct NewQuestion {
    pub asker: Principal,
    pub to: Principal,
    pub question: String,
    pub options: Vec<String>,
    pub multi: bool,
    pub expires_at: Option<i64>,
}

/// One write job's view of the transaction.
pub struct Tx<'a> {
    pub(super) conn: &'a Connection,
    now: i64,
    effects: &'a mut Effects,
    /// The committed backlogs, and what the batch's earlier jobs changed.
    usage: &'a MailboxUsage,
    batch_usage: &'a Delta,
}

impl<'a> Tx<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        now: i64,
        effects: &'a mut Effects,
        usage: &'a MailboxUsage,
        batch_usage: &'a Delta,
    ) -> Self {
        Self {
            conn,
            now,
            effects,
            usage,
            batch_usage,
        }
    }

    /// What `mailbox` holds unacknowledged, `(messages, body bytes)`, with
    /// this job's and this batch's writes counted: what the `max_unacked`
    /// quotas check. A lookup in memory (`store::usage`), no statement.
    pub fn mailbox_usage(&self, mailbox: &Principal) -> (u64, u64) {
        self.usage.with(
            &mailbox.to_string(),
            &[self.batch_usage, &self.effects.usage],
        )
    }

    /// The batch's timestamp, in Unix milliseconds.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The transaction's connection, for the store's other modules.
    pub(super) fn conn(&self) -> &Connection {
        self.conn
    }

    /// Reads inside the transaction (they see this job's own writes).
    pub fn reader(&self) -> Reader<'_> {
        Reader::new(self.conn)
    }

    pub fn register_agent(&mut self, name: &AgentName) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO agents (name, created_at) VALUES (?1, ?2)",
            params![name.as_str(), self.now],
        )?;
        Ok(())
    }

    /// The agent's slot in the network pools (`isolation`): the one it was
    /// given before, or else the lowest free one below `capacity`. A pool
    /// with no free slot, or a kept slot the (since shrunk) pool no longer
    /// holds, is refused with `limit`.
    pub fn isolation_slot(&mut self, agent: &AgentName, capacity: u64) -> Result<u64, StoreError> {
        let kept: Option<i64> = self
            .conn
            .query_row(
                "SELECT slot FROM isolation_slots WHERE agent = ?1",
                params![agent.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(slot) = kept {
            let slot = u64::try_from(slot).map_err(|_| StoreError::Corrupt {
                table: "isolation_slots",
                id: slot,
                what: "negative slot".into(),
            })?;
            if slot >= capacity {
                return Err(StoreError::refused(
                    ErrorCode::Limit,
                    format!(
                        "agent {agent} holds network slot {slot}, outside the configured pools ({capacity} slots); widen [network] pool4/pool6 again"
                    ),
                ));
            }
            return Ok(slot);
        }
        // The lowest slot not taken: the first gap in the sorted slots.
        let mut stmt = self
            .conn
            .prepare("SELECT slot FROM isolation_slots ORDER BY slot")?;
        let mut free = 0u64;
        for slot in stmt.query_map([], |r| r.get::<_, i64>(0))? {
            if slot? != sql_int(free) {
                break;
            }
            free += 1;
        }
        if free >= capacity {
            return Err(StoreError::refused(
                ErrorCode::Limit,
                format!(
                    "the network pools are full ({capacity} agents); widen [network] pool4/pool6"
                ),
            ));
        }
        self.conn.execute(
            "INSERT INTO isolation_slots (agent, slot, allocated_at) VALUES (?1, ?2, ?3)",
            params![agent.as_str(), sql_int(free), self.now],
        )?;
        Ok(free)
    }

    /// Appends an event; it is published after commit.
    pub fn event(&mut self, event: Event) -> Result<u64, StoreError> {
        let body = postcard::to_stdvec(&event).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.conn
            .prepare_cached("INSERT INTO events (at, body) VALUES (?1, ?2)")?
            .execute(params![self.now, body])?;
        let seq = self.conn.last_insert_rowid() as u64;
        self.effects.events.push(EventRecord {
            seq,
            at: self.now,
            event,
        });
        Ok(seq)
    }

    /// Drops all but the newest `keep` events; returns how many went.
    pub fn prune_events(&mut self, keep: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?1",
            params![sql_int(keep)],
        )?)
    }

    /// Deletes acknowledged messages acknowledged before `acked_before`
    /// (Unix ms): the operator's mailbox if `operator`, else every agent's.
    /// Unacknowledged messages are never pruned. Returns how many went.
    pub fn prune_acked_messages(
        &mut self,
        acked_before: i64,
        operator: bool,
    ) -> Result<usize, StoreError> {
        let op = Principal::Operator.to_string();
        let sql = if operator {
            "DELETE FROM messages WHERE acked_at IS NOT NULL AND acked_at < ?1 AND recipient = ?2"
        } else {
            "DELETE FROM messages WHERE acked_at IS NOT NULL AND acked_at < ?1 AND recipient != ?2"
        };
        Ok(self.conn.execute(sql, params![acked_before, op])?)
    }

    /// Appends an audit row, chained to the one before.
    pub fn audit(&mut self, actor: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        self.effects.audit_head = Some(audit::append(self.conn, self.now, actor, action, detail)?);
        Ok(())
    }

    /// Commits a message to its recipient's mailbox; it is pushed after commit.
    pub fn insert_message(&mut self, m: NewMessage) -> Result<Arc<Message>, StoreError> {
        let options =
            serde_json::to_string(&m.options).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO messages
                 (kind, sender, recipient, body, in_reply_to, question_id, options, multi, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                m.kind.as_str(),
                m.from.to_string(),
                m.to.to_string(),
                m.body,
                m.in_reply_to.map(sql_int),
                m.question_id.map(sql_int),
                options,
                m.multi,
                self.now,
            ])?;
        let id = self.conn.last_insert_rowid() as u64;
        self.effects
            .usage
            .add(m.to.to_string(), 1, m.body.len() as i64);
        let msg = Arc::new(Message {
            id,
            kind: m.kind,
            from: m.from,
            to: m.to,
            body: m.body,
            in_reply_to: m.in_reply_to,
            question_id: m.question_id,
            options: m.options,
            multi: m.multi,
            sent_at: self.now,
            acked_at: None,
        });
        self.event(Event::MessageSent {
            id,
            from: msg.from.clone(),
            to: msg.to.clone(),
        })?;
        self.effects.messages.push(Arc::clone(&msg));
        Ok(msg)
    }

    /// Acknowledges a message in `mailbox`. Acking twice is fine; acking a
    /// message that is not in `mailbox` is `not_found` (whether or not it
    /// exists elsewhere: a mailbox owner learns nothing about others).
    pub fn ack(&mut self, mailbox: &Principal, id: u64) -> Result<(), StoreError> {
        let acked_bytes: Option<i64> = self
            .conn
            .prepare_cached(
                "UPDATE messages SET acked_at = ?1
                 WHERE id = ?2 AND recipient = ?3 AND acked_at IS NULL
                 RETURNING octet_length(body)",
            )?
            .query_row(params![self.now, sql_int(id), mailbox.to_string()], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(bytes) = acked_bytes else {
            let exists: bool = self.conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM messages WHERE id = ?1 AND recipient = ?2)",
                params![sql_int(id), mailbox.to_string()],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(StoreError::refused(
                    ErrorCode::NotFound,
                    format!("no message {id} in your inbox"),
                ));
            }
            return Ok(());
        };
        self.effects.usage.add(mailbox.to_string(), -1, -bytes);
        self.event(Event::MessageAcked {
            id,
            by: mailbox.clone(),
        })?;
        Ok(())
    }

    pub fn set_status(&mut self, agent: &AgentName, text: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE agents SET status = ?1, status_at = ?2 WHERE name = ?3",
            params![text, self.now, agent.as_str()],
        )?;
        self.event(Event::AgentStatus {
            agent: agent.clone(),
            text: text.to_owned(),
        })?;
        Ok(())
    }

    pub fn insert_question(&mut self, q: NewQuestion) -> Result<Question, StoreError> {
        let options =
            serde_json::to_string(&q.options).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO questions
             (asker, addressee, question, options, multi, asked_at, expires_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open')",
            params![
                q.asker.to_string(),
                q.to.to_string(),
                q.question,
                options,
                q.multi,
                self.now,
                q.expires_at
            ],
        )?;
        let id = self.conn.last_insert_rowid() as u64;
        self.event(Event::QuestionAsked {
            id,
            asker: q.asker.clone(),
            to: q.to.clone(),
        })?;
        Ok(Question {
            id,
            asker: q.asker,
            to: q.to,
            question: q.question,
            options: q.options,
            multi: q.multi,
            asked_at: self.now,
            expires_at: q.expires_at,
            state: QuestionState::Open,
            answer: None,
            answered_by: None,
            answered_at: None,
        })
    }

    /// Moves an open question to `state`; `conflict` if it is not open.
    pub fn close_question(
        &mut self,
        id: u64,
        state: QuestionState,
        answer: Option<(&str, &Principal)>,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE questions SET state = ?1, answer = ?2, answered_by = ?3, answered_at = ?4
             WHERE id = ?5 AND state = 'open'",
            params![
                question_state_str(state),
                answer.map(|a| a.0),
                answer.map(|a| a.1.to_string()),
                answer.map(|_| self.now),
                sql_int(id)
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::refused(
                ErrorCode::Conflict,
                format!("question {id} is no longer open"),
            ));
        }
        let event = match (state, answer) {
            (QuestionState::Answered, Some((_, by))) => {
                Event::QuestionAnswered { id, by: by.clone() }
            }
            (QuestionState::Expired, _) => Event::QuestionExpired { id },
            _ => Event::QuestionCancelled { id },
        };
        self.event(event)?;
        Ok(())
    }

    pub fn insert_reminder(
        &mut self,
        agent: &AgentName,
        body: &str,
        due_at: i64,
    ) -> Result<Reminder, StoreError> {
        self.conn.execute(
            "INSERT INTO reminders (agent, body, due_at, state) VALUES (?1, ?2, ?3, 'pending')",
            params![agent.as_str(), body, due_at],
        )?;
        let id = self.conn.last_insert_rowid() as u64;
        self.event(Event::ReminderSet {
            id,
            agent: agent.clone(),
            due_at,
        })?;
        Ok(Reminder {
            id,
            agent: agent.clone(),
            body: body.to_owned(),
            due_at,
        })
    }

    /// Marks a pending reminder fired or cancelled; `conflict` if it is not
    /// pending.
    pub fn close_reminder(
        &mut self,
        id: u64,
        agent: &AgentName,
        fired: bool,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE reminders SET state = ?1 WHERE id = ?2 AND state = 'pending'",
            params![if fired { "fired" } else { "cancelled" }, sql_int(id)],
        )?;
        if changed == 0 {
            return Err(StoreError::refused(
                ErrorCode::Conflict,
                format!("reminder {id} is no longer pending"),
            ));
        }
        let agent = agent.clone();
        self.event(if fired {
            Event::ReminderFired { id, agent }
        } else {
            Event::ReminderCancelled { id, agent }
        })?;
        Ok(())
    }
}
