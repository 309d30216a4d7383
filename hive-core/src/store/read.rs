//! [`Reader`]: every query the store answers, and the decoding of rows into
//! `hive-proto` view types. A row that does not decode is reported as
//! [`StoreError::Corrupt`], never unwrapped.

use hive_proto::event::{Event, EventRecord};
use hive_proto::view::{AuditEntry, ItemKind, Message, Question, QuestionState, Reminder};
use hive_proto::{AgentName, Principal};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::audit::{self, AuditReport};
use super::{sql_int, StoreError};

/// An agent's stored row, before the live parts (connections) are added.
#[derive(Clone, Debug)]
pub struct AgentRow {
    pub name: AgentName,
    pub status: Option<String>,
    pub status_at: Option<i64>,
    pub deployed_sha: Option<String>,
    pub unread: u64,
    pub open_questions: u64,
}

/// Read access to the store, on a reader connection or inside a write.
pub struct Reader<'a> {
    pub(super) conn: &'a Connection,
}

const MESSAGE_COLS: &str = "id, kind, sender, recipient, body, in_reply_to, question_id, options, multi, sent_at, acked_at";
const QUESTION_COLS: &str = "id, asker, addressee, question, options, multi, asked_at, expires_at, state, answer, answered_by, answered_at";

impl<'a> Reader<'a> {
    pub(super) fn new(conn: &'a Connection) -> Self {
        Self { conn }
    }

    /// The connection, for the store's other modules.
    pub(super) fn conn(&self) -> &'a Connection {
        self.conn
    }

    pub fn unacked(
        &self,
        who: &Principal,
        after: u64,
        max: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLS} FROM messages
             WHERE recipient = ?1 AND acked_at IS NULL AND id > ?2 ORDER BY id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![who.to_string(), sql_int(after), max], raw_message)?;
        rows.map(|r| r?.decode()).collect()
    }

    /// Message `id` if it was addressed to `who`.
    pub fn message_to(&self, who: &Principal, id: u64) -> Result<Option<Message>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1 AND recipient = ?2"),
                params![sql_int(id), who.to_string()],
                raw_message,
            )
            .optional()?;
        raw.map(RawMessage::decode).transpose()
    }

    /// A mailbox's traffic (sent to it or by it), newest first, at most
    /// `limit`, while `admit` accepts them (it stops at the first it
    /// refuses).
    pub fn messages(
        &self,
        mailbox: &Principal,
        before: Option<u64>,
        limit: u32,
        admit: &mut dyn FnMut(&Message) -> bool,
    ) -> Result<Vec<Message>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLS} FROM messages
             WHERE (recipient = ?1 OR sender = ?1) AND id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?;
        let before = before.map(sql_int).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![mailbox.to_string(), before, limit], raw_message)?;
        take_while_admitted(rows.map(|r| r?.decode()), admit)
    }

    pub fn question(&self, id: u64) -> Result<Option<Question>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {QUESTION_COLS} FROM questions WHERE id = ?1"),
                params![sql_int(id)],
                raw_question,
            )
            .optional()?;
        raw.map(RawQuestion::decode).transpose()
    }

    /// Open questions addressed to `to`, oldest first, while `admit`
    /// accepts them.
    pub fn open_questions_to(
        &self,
        to: &Principal,
        admit: &mut dyn FnMut(&Question) -> bool,
    ) -> Result<Vec<Question>, StoreError> {
        self.questions_where("addressee = ?1 AND state = 'open'", &to.to_string(), admit)
    }

    /// Open questions asked by `asker`, oldest first, while `admit` accepts
    /// them.
    pub fn open_questions_by(
        &self,
        asker: &Principal,
        admit: &mut dyn FnMut(&Question) -> bool,
    ) -> Result<Vec<Question>, StoreError> {
        self.questions_where("asker = ?1 AND state = 'open'", &asker.to_string(), admit)
    }

    /// How many questions `asker` has open.
    pub fn count_open_questions_by(&self, asker: &Principal) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM questions WHERE asker = ?1 AND state = 'open'",
            &asker.to_string(),
        )
    }

    fn count(&self, sql: &str, arg: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(sql, params![arg], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    fn questions_where(
        &self,
        cond: &str,
        arg: &str,
        admit: &mut dyn FnMut(&Question) -> bool,
    ) -> Result<Vec<Question>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {QUESTION_COLS} FROM questions WHERE {cond} ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![arg], raw_question)?;
        take_while_admitted(rows.map(|r| r?.decode()), admit)
    }

    /// Open questions whose TTL has passed.
    pub fn expired_questions(&self, now: i64) -> Result<Vec<Question>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {QUESTION_COLS} FROM questions
             WHERE state = 'open' AND expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![now], raw_question)?;
        rows.map(|r| r?.decode()).collect()
    }

    /// A pending reminder by id, with its owner.
    pub fn pending_reminder(&self, id: u64) -> Result<Option<Reminder>, StoreError> {
        let raw = self
            .conn
            .query_row(
                "SELECT id, agent, body, due_at FROM reminders WHERE id = ?1 AND state = 'pending'",
                params![sql_int(id)],
                raw_reminder,
            )
            .optional()?;
        raw.map(decode_reminder).transpose()
    }

    /// `agent`'s pending reminders, soonest first, while `admit` accepts
    /// them.
    pub fn pending_reminders(
        &self,
        agent: &AgentName,
        admit: &mut dyn FnMut(&Reminder) -> bool,
    ) -> Result<Vec<Reminder>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, agent, body, due_at FROM reminders
             WHERE agent = ?1 AND state = 'pending' ORDER BY due_at, id",
        )?;
        let rows = stmt.query_map(params![agent.as_str()], raw_reminder)?;
        take_while_admitted(rows.map(|r| decode_reminder(r?)), admit)
    }

    /// How many reminders `agent` has pending.
    pub fn count_pending_reminders(&self, agent: &AgentName) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM reminders WHERE agent = ?1 AND state = 'pending'",
            agent.as_str(),
        )
    }

    pub fn due_reminders(&self, now: i64) -> Result<Vec<Reminder>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, agent, body, due_at FROM reminders
             WHERE state = 'pending' AND due_at <= ?1 ORDER BY due_at, id",
        )?;
        let rows = stmt.query_map(params![now], raw_reminder)?;
        rows.map(|r| decode_reminder(r?)).collect()
    }

    /// The earliest question expiry or reminder due time, if any.
    pub fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MIN(t) FROM (
                SELECT MIN(expires_at) AS t FROM questions WHERE state = 'open'
                UNION ALL
                SELECT MIN(due_at) AS t FROM reminders WHERE state = 'pending')",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.name, a.status, a.status_at, a.deployed_sha,
                (SELECT COUNT(*) FROM messages m WHERE m.recipient = a.name AND m.acked_at IS NULL),
                (SELECT COUNT(*) FROM questions q WHERE q.addressee = a.name AND q.state = 'open')
             FROM agents a ORDER BY a.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        rows.map(|r| {
            let (name, status, status_at, deployed_sha, unread, open) = r?;
            Ok(AgentRow {
                name: AgentName::new(&name).map_err(|e| StoreError::Corrupt {
                    table: "agents",
                    id: 0,
                    what: e.to_string(),
                })?,
                status,
                status_at,
                deployed_sha,
                unread: unread as u64,
                open_questions: open as u64,
            })
        })
        .collect()
    }

    pub fn events_since(&self, since: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, at, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![sql_int(since), limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        rows.map(|r| {
            let (seq, at, body) = r?;
            let event: Event = postcard::from_bytes(&body).map_err(|e| StoreError::Corrupt {
                table: "events",
                id: seq,
                what: e.to_string(),
            })?;
            Ok(EventRecord {
                seq: seq as u64,
                at,
                event,
            })
        })
        .collect()
    }

    /// The oldest event still kept, if any. A subscriber resuming from
    /// before it has missed events and must reload (`ServerFrame::Lagged`).
    pub fn first_event_seq(&self) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))?;
        Ok(seq.map(|s| s as u64))
    }

    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
        Ok(seq.unwrap_or(0) as u64)
    }

    pub fn audit_since(&self, since: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, at, actor, action, detail, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![sql_int(since), limit], |r| {
            Ok(AuditEntry {
                seq: r.get::<_, i64>(0)? as u64,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: r.get(4)?,
                hash: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        audit::verify(self.conn)
    }

    /// Verifies the chain, then checks it against `recorded` (the newest
    /// head written outside the database), so a missing tail or a
    /// recomputed chain is reported too.
    pub fn verify_audit_against(
        &self,
        recorded: Option<&audit::Head>,
    ) -> Result<AuditReport, StoreError> {
        let report = audit::verify(self.conn)?;
        let (AuditReport::Intact { rows, .. }, Some(head)) = (&report, recorded) else {
            return Ok(report);
        };
        Ok(match audit::check_head(self.conn, *rows, head)? {
            None => report,
            Some(reason) => AuditReport::Broken {
                seq: head.seq.min(rows + 1),
                reason,
            },
        })
    }
}

pub(super) fn question_state_str(s: QuestionState) -> &'static str {
    match s {
        QuestionState::Open => "open",
        QuestionState::Answered => "answered",
        QuestionState::Expired => "expired",
        QuestionState::Cancelled => "cancelled",
    }
}

fn parse_question_state(s: &str) -> Option<QuestionState> {
    Some(match s {
        "open" => QuestionState::Open,
        "answered" => QuestionState::Answered,
        "expired" => QuestionState::Expired,
        "cancelled" => QuestionState::Cancelled,
        _ => return None,
    })
}

struct RawMessage {
    id: i64,
    kind: String,
    sender: String,
    recipient: String,
    body: String,
    in_reply_to: Option<i64>,
    question_id: Option<i64>,
    options: String,
    multi: bool,
    sent_at: i64,
    acked_at: Option<i64>,
}

fn raw_message(r: &Row<'_>) -> rusqlite::Result<RawMessage> {
    Ok(RawMessage {
        id: r.get(0)?,
        kind: r.get(1)?,
        sender: r.get(2)?,
        recipient: r.get(3)?,
        body: r.get(4)?,
        in_reply_to: r.get(5)?,
        question_id: r.get(6)?,
        options: r.get(7)?,
        multi: r.get(8)?,
        sent_at: r.get(9)?,
        acked_at: r.get(10)?,
    })
}

fn corrupt(table: &'static str, id: i64) -> impl Fn(String) -> StoreError {
    move |what| StoreError::Corrupt { table, id, what }
}

impl RawMessage {
    fn decode(self) -> Result<Message, StoreError> {
        let bad = corrupt("messages", self.id);
        Ok(Message {
            id: self.id as u64,
            kind: ItemKind::parse(&self.kind)
                .ok_or_else(|| bad(format!("kind {:?}", self.kind)))?,
            from: Principal::parse(&self.sender).map_err(|e| bad(e.to_string()))?,
            to: Principal::parse(&self.recipient).map_err(|e| bad(e.to_string()))?,
            body: self.body,
            in_reply_to: self.in_reply_to.map(|v| v as u64),
            question_id: self.question_id.map(|v| v as u64),
            options: serde_json::from_str(&self.options).map_err(|e| bad(e.to_string()))?,
            multi: self.multi,
            sent_at: self.sent_at,
            acked_at: self.acked_at,
        })
    }
}

struct RawQuestion {
    id: i64,
    asker: String,
    addressee: String,
    question: String,
    options: String,
    multi: bool,
    asked_at: i64,
    expires_at: Option<i64>,
    state: String,
    answer: Option<String>,
    answered_by: Option<String>,
    answered_at: Option<i64>,
}

fn raw_question(r: &Row<'_>) -> rusqlite::Result<RawQuestion> {
    Ok(RawQuestion {
        id: r.get(0)?,
        asker: r.get(1)?,
        addressee: r.get(2)?,
        question: r.get(3)?,
        options: r.get(4)?,
        multi: r.get(5)?,
        asked_at: r.get(6)?,
        expires_at: r.get(7)?,
        state: r.get(8)?,
        answer: r.get(9)?,
        answered_by: r.get(10)?,
        answered_at: r.get(11)?,
    })
}

impl RawQuestion {
    fn decode(self) -> Result<Question, StoreError> {
        let bad = corrupt("questions", self.id);
        Ok(Question {
            id: self.id as u64,
            asker: Principal::parse(&self.asker).map_err(|e| bad(e.to_string()))?,
            to: Principal::parse(&self.addressee).map_err(|e| bad(e.to_string()))?,
            question: self.question,
            options: serde_json::from_str(&self.options).map_err(|e| bad(e.to_string()))?,
            multi: self.multi,
            asked_at: self.asked_at,
            expires_at: self.expires_at,
            state: parse_question_state(&self.state)
                .ok_or_else(|| bad(format!("state {:?}", self.state)))?,
            answer: self.answer,
            answered_by: self
                .answered_by
                .map(|s| Principal::parse(&s))
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            answered_at: self.answered_at,
        })
    }
}

type RawReminder = (i64, String, String, i64);

fn raw_reminder(r: &Row<'_>) -> rusqlite::Result<RawReminder> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode_reminder((id, agent, body, due_at): RawReminder) -> Result<Reminder, StoreError> {
    Ok(Reminder {
        id: id as u64,
        agent: AgentName::new(&agent).map_err(|e| corrupt("reminders", id)(e.to_string()))?,
        body,
        due_at,
    })
}

/// Collects rows until `admit` refuses one; the rest are never decoded.
fn take_while_admitted<T>(
    rows: impl Iterator<Item = Result<T, StoreError>>,
    admit: &mut dyn FnMut(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        if !admit(&row) {
            break;
        }
        out.push(row);
    }
    Ok(out)
}
