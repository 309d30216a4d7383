//! Unit tests of the domain layer on a real store in a temp dir: policy
//! checks, who may answer what, expiry and reminders, and that a refused
//! request changes nothing.

use hive_proto::agent::{AgentRequest, CancelKind};
use hive_proto::operator::{OperatorRequest, OperatorResponse};
use hive_proto::view::{ErrorCode, ItemKind, QuestionState};
use hive_proto::{AgentName, Principal, Recipient};
use serde_json::json;

use super::{Hive, OperatorId};
use crate::config::{Config, RawConfig};

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

async fn hive(dir: &std::path::Path, extra: &str) -> Hive {
    let raw: RawConfig = toml::from_str(&format!(
        "state_dir = {:?}\nruntime_dir = {:?}\n[agents.alice]\n[agents.bob]\n[agents.carol]\nallowed_recipients = [\"alice\"]\nmax_reminders = 2\n{extra}",
        dir, dir
    ))
    .unwrap();
    Hive::open(Config::from_raw(raw).unwrap()).await.unwrap()
}

fn op() -> OperatorId {
    OperatorId::Shell {
        user: "root".into(),
        uid: 0,
    }
}

async fn call(
    h: &Hive,
    who: &str,
    req: serde_json::Value,
) -> Result<serde_json::Value, super::Refusal> {
    let req: AgentRequest = serde_json::from_value(req).unwrap();
    h.agent_call(&name(who), req).await
}

#[tokio::test]
async fn sends_are_committed_then_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let mut inbox = h.subscribe_inbox(&name("bob"));
    let r = call(&h, "alice", json!({"op":"send","to":"bob","body":"hi"}))
        .await
        .unwrap();
    let id = r["ids"][0].as_u64().unwrap();
    let pushed = inbox.recv().await.unwrap();
    assert_eq!((pushed.id, pushed.body.as_str()), (id, "hi"));
    assert_eq!(pushed.from, Principal::Agent(name("alice")));
    // It is in the store, unacked, until bob acks it.
    assert_eq!(h.unacked(&name("bob"), 0, 10).await.unwrap().len(), 1);
    call(&h, "bob", json!({"op":"ack","msg_id":id}))
        .await
        .unwrap();
    assert!(h.unacked(&name("bob"), 0, 10).await.unwrap().is_empty());
    // Alice cannot ack bob's message.
    let e = call(&h, "alice", json!({"op":"ack","msg_id":id}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn recipient_policy_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let e = call(&h, "carol", json!({"op":"send","to":"bob","body":"x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = call(&h, "carol", json!({"op":"send","to":"operator","body":"x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let e = call(&h, "alice", json!({"op":"send","to":"zed","body":"x"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    // `*` means everyone carol may reach: only alice.
    let r = call(&h, "carol", json!({"op":"send","to":"*","body":"x"}))
        .await
        .unwrap();
    assert_eq!(r["ids"].as_array().unwrap().len(), 1);
    assert!(h.unacked(&name("bob"), 0, 10).await.unwrap().is_empty());
    // Alice's `*` reaches bob and carol, not herself.
    let r = call(&h, "alice", json!({"op":"send","to":"*","body":"y"}))
        .await
        .unwrap();
    assert_eq!(r["ids"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn only_the_addressee_may_answer() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let q_op = call(
        &h,
        "alice",
        json!({"op":"ask","to":"operator","question":"ship?","options":["yes","no"]}),
    )
    .await
    .unwrap()["question_id"]
        .as_u64()
        .unwrap();
    let q_bob = call(
        &h,
        "alice",
        json!({"op":"ask","to":"bob","question":"lunch?"}),
    )
    .await
    .unwrap()["question_id"]
        .as_u64()
        .unwrap();
    let audit_before = h
        .store()
        .read(|r| r.audit_since(0, 1000))
        .await
        .unwrap()
        .len();
    for (who, q) in [
        ("bob", q_op),
        ("alice", q_op),
        ("carol", q_bob),
        ("alice", q_bob),
    ] {
        let e = call(
            &h,
            who,
            json!({"op":"answer","question_id":q,"answer":"yes"}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{who} answering {q}");
    }
    // Nothing changed: both questions open, no new audit rows.
    for q in [q_op, q_bob] {
        let st = h
            .store()
            .read(move |r| r.question(q))
            .await
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(st, QuestionState::Open);
    }
    let audit_after = h
        .store()
        .read(|r| r.audit_since(0, 1000))
        .await
        .unwrap()
        .len();
    assert_eq!(audit_before, audit_after);

    // The operator may answer its own question, and not bob's.
    let e = h
        .operator_call(
            &op(),
            OperatorRequest::AnswerQuestion {
                id: q_bob,
                answer: "x".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    let mut alice = h.subscribe_inbox(&name("alice"));
    h.operator_call(
        &op(),
        OperatorRequest::AnswerQuestion {
            id: q_op,
            answer: "yes".into(),
        },
    )
    .await
    .unwrap();
    let m = alice.recv().await.unwrap();
    assert_eq!(
        (m.kind, m.question_id, m.body.as_str()),
        (ItemKind::Answer, Some(q_op), "yes")
    );
    assert_eq!(m.from, Principal::Operator);
    // Answering twice is a conflict.
    let e = h
        .operator_call(
            &op(),
            OperatorRequest::AnswerQuestion {
                id: q_op,
                answer: "no".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    // Bob answers his own.
    call(
        &h,
        "bob",
        json!({"op":"answer","question_id":q_bob,"answer":"sure"}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn questions_expire_and_the_asker_hears() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let q = call(
        &h,
        "alice",
        json!({"op":"ask","to":"operator","question":"q","ttl_s":1}),
    )
    .await
    .unwrap()["question_id"]
        .as_u64()
        .unwrap();
    // Move the deadline into the past instead of sleeping.
    let path = h.config().store_path();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "UPDATE questions SET expires_at = 1 WHERE id = ?1",
        [q as i64],
    )
    .unwrap();
    h.fire_due().await.unwrap();
    let m = h.unacked(&name("alice"), 0, 10).await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].kind, m[0].question_id),
        (ItemKind::QuestionExpired, Some(q))
    );
    let e = h
        .operator_call(
            &op(),
            OperatorRequest::AnswerQuestion {
                id: q,
                answer: "late".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
}

#[tokio::test]
async fn reminders_are_bounded_cancellable_and_fire() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let r1 = call(&h, "carol", json!({"op":"remind","in_s":3600,"body":"a"}))
        .await
        .unwrap();
    call(&h, "carol", json!({"op":"remind","at":1,"body":"due now"}))
        .await
        .unwrap();
    let e = call(&h, "carol", json!({"op":"remind","in_s":1,"body":"c"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Limit);
    let e = call(&h, "carol", json!({"op":"remind","body":"c"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    let id = r1["reminder_id"].as_u64().unwrap();
    let e = call(
        &h,
        "alice",
        json!({"op":"cancel","kind":"reminder","item_id":id}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    call(
        &h,
        "carol",
        json!({"op":"cancel","kind":"reminder","item_id":id}),
    )
    .await
    .unwrap();
    h.fire_due().await.unwrap();
    let m = h.unacked(&name("carol"), 0, 10).await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].kind, m[0].body.as_str()),
        (ItemKind::Reminder, "due now")
    );
    let ends = call(&h, "carol", json!({"op":"loose_ends"})).await.unwrap();
    assert!(ends["reminders"].as_array().unwrap().is_empty());
    let _ = CancelKind::Question;
}

#[tokio::test]
async fn only_the_asker_may_cancel_a_question() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let q = call(&h, "alice", json!({"op":"ask","to":"bob","question":"q"}))
        .await
        .unwrap()["question_id"]
        .as_u64()
        .unwrap();
    let e = call(
        &h,
        "bob",
        json!({"op":"cancel","kind":"question","item_id":q}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Forbidden);
    call(
        &h,
        "alice",
        json!({"op":"cancel","kind":"question","item_id":q}),
    )
    .await
    .unwrap();
    let kinds: Vec<_> = h
        .unacked(&name("bob"), 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(kinds, [ItemKind::Question, ItemKind::QuestionCancelled]);
}

#[tokio::test]
async fn every_change_is_audited_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    call(&h, "alice", json!({"op":"status","text":"<b>busy</b>"}))
        .await
        .unwrap();
    call(
        &h,
        "alice",
        json!({"op":"send","to":"operator","body":"hello"}),
    )
    .await
    .unwrap();
    h.operator_call(
        &op(),
        OperatorRequest::SendMessage {
            to: name("bob"),
            body: "hi".into(),
        },
    )
    .await
    .unwrap();
    let rows = h.store().read(|r| r.audit_since(0, 100)).await.unwrap();
    let actions: Vec<_> = rows
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("agent:alice", "status"),
            ("agent:alice", "send"),
            ("operator:root", "send")
        ]
    );
    match h.audit_verify(&op()).await.unwrap() {
        OperatorResponse::AuditVerified { rows, .. } => assert_eq!(rows, 3),
        other => panic!("{other:?}"),
    }
    // The operator's mailbox holds alice's message.
    let OperatorResponse::Messages(msgs) = h
        .operator_call(
            &op(),
            OperatorRequest::Messages {
                mailbox: Principal::Operator,
                before: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    // Newest first: the operator's own message to bob, then alice's to it.
    let bodies: Vec<_> = msgs.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["hi", "hello"]);
    let _ = Recipient::All;
}

#[tokio::test]
async fn concurrent_writes_commit_in_groups_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    let mut tasks = Vec::new();
    for i in 0..500 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &h,
                "alice",
                json!({"op":"send","to":"bob","body":format!("m{i}")}),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(h.unacked(&name("bob"), 0, 1000).await.unwrap().len(), 500);
    assert!(matches!(
        h.audit_verify(&op()).await.unwrap(),
        OperatorResponse::AuditVerified { rows: 500, .. }
    ));
}

#[tokio::test]
async fn old_events_are_pruned_newest_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Ten statuses, each written (within carol's status_rate), each an event.
    let h = hive(dir.path(), "status_rate = 10\n").await;
    for i in 0..10 {
        call(&h, "carol", json!({"op":"status","text":format!("s{i}")}))
            .await
            .unwrap();
    }
    let last = h.store().read(|r| r.last_event_seq()).await.unwrap();
    let pruned = h.store().write(|tx| tx.prune_events(3)).await.unwrap();
    assert_eq!(pruned as u64, last - 3);
    assert_eq!(h.first_event_seq().await.unwrap(), Some(last - 2));
    assert_eq!(h.events_since(0, 100).await.unwrap().len(), 3);
}

#[tokio::test]
async fn open_questions_per_asker_are_bounded_and_a_refused_ask_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "max_open_questions = 2\n").await;
    let mut ids = Vec::new();
    for q in ["first?", "second?"] {
        let r = call(&h, "carol", json!({"op":"ask","to":"alice","question":q}))
            .await
            .unwrap();
        ids.push(r["question_id"].as_u64().unwrap());
    }
    let audit_before = h
        .store()
        .read(|r| r.audit_since(0, 1000))
        .await
        .unwrap()
        .len();
    let e = call(
        &h,
        "carol",
        json!({"op":"ask","to":"alice","question":"third?"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Limit, "{e:?}");
    assert!(e.message.contains("limit is 2"), "{}", e.message);
    assert_eq!(
        h.store()
            .read(|r| r.audit_since(0, 1000))
            .await
            .unwrap()
            .len(),
        audit_before,
        "a refused ask is not audited"
    );
    let ends = call(&h, "carol", json!({"op":"loose_ends"})).await.unwrap();
    assert_eq!(ends["asked"].as_array().unwrap().len(), 2);
    assert_eq!(ends["truncated"], false);
    // Another agent's questions do not count against carol.
    call(
        &h,
        "alice",
        json!({"op":"ask","to":"carol","question":"yours?"}),
    )
    .await
    .unwrap();
    // Cancelling one makes room again.
    call(
        &h,
        "carol",
        json!({"op":"cancel","kind":"question","item_id":ids[0]}),
    )
    .await
    .unwrap();
    call(
        &h,
        "carol",
        json!({"op":"ask","to":"alice","question":"third?"}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn lists_an_agent_can_grow_stay_under_the_reply_limits_as_prefixes() {
    use crate::hive::reply_budget::{AGENT_LISTS, OPERATOR_LISTS};
    let dir = tempfile::tempdir().unwrap();
    let h = hive(dir.path(), "").await;
    // 30 questions of 60 KiB each to the operator: 1.8 MB, over both the
    // 1 MiB frame and the 1 MiB agent reply.
    let body = "q".repeat(60 * 1024);
    let mut ids = Vec::new();
    for i in 0..30 {
        let r = call(
            &h,
            "alice",
            json!({"op":"ask","to":"operator","question":format!("{i} {body}")}),
        )
        .await
        .unwrap();
        ids.push(r["question_id"].as_u64().unwrap());
    }
    let OperatorResponse::Questions(qs) = h
        .operator_call(&op(), OperatorRequest::Questions)
        .await
        .unwrap()
    else {
        panic!("not questions")
    };
    assert!(qs.len() > 1 && qs.len() < 30, "{}", qs.len());
    let got: Vec<u64> = qs.iter().map(|q| q.id).collect();
    assert_eq!(got, ids[..qs.len()], "the oldest, in order, without gaps");
    let size = postcard::to_stdvec(&qs).unwrap().len();
    assert!(size <= OPERATOR_LISTS, "{size}");

    let ends = call(&h, "alice", json!({"op":"loose_ends"})).await.unwrap();
    assert_eq!(ends["truncated"], true);
    let asked: Vec<u64> = ends["asked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_u64().unwrap())
        .collect();
    assert!(!asked.is_empty() && asked.len() < 30);
    assert_eq!(asked, ids[..asked.len()]);
    let size = serde_json::to_vec(&ends["asked"]).unwrap().len();
    assert!(size <= AGENT_LISTS, "{size}");

    // Messages page newest first; a short page loses nothing: paging on
    // from the oldest id received reaches every message once.
    for i in 0..30 {
        call(
            &h,
            "alice",
            json!({"op":"send","to":"operator","body":format!("{i} {body}")}),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let OperatorResponse::Messages(page) = h
            .operator_call(
                &op(),
                OperatorRequest::Messages {
                    mailbox: Principal::Operator,
                    before,
                    limit: 1000,
                },
            )
            .await
            .unwrap()
        else {
            panic!("not messages")
        };
        let Some(last) = page.last() else { break };
        assert!(postcard::to_stdvec(&page).unwrap().len() <= OPERATOR_LISTS);
        before = Some(last.id);
        seen.extend(
            page.iter()
                .filter(|m| m.kind == ItemKind::Message)
                .map(|m| m.id),
        );
    }
    assert_eq!(seen.len(), 30, "every message, once");
}

#[tokio::test]
async fn acknowledged_messages_past_retention_are_pruned_and_the_audit_log_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let raw: RawConfig = toml::from_str(&format!(
        "state_dir = {:?}\nruntime_dir = {:?}\nmessage_retention_days = 1\n\
         operator_message_retention_days = 7\n[agents.alice]\n[agents.bob]\n",
        dir.path(),
        dir.path()
    ))
    .unwrap();
    let h = Hive::open(Config::from_raw(raw).unwrap()).await.unwrap();
    let mut ids = Vec::new();
    for to in ["bob", "bob", "operator"] {
        let r = call(&h, "alice", json!({"op":"send","to":to,"body":"x"}))
            .await
            .unwrap();
        ids.push(r["ids"][0].as_u64().unwrap());
    }
    // bob acks the first; the operator acks its one.
    call(&h, "bob", json!({"op":"ack","msg_id":ids[0]}))
        .await
        .unwrap();
    let op_msg = ids[2];
    h.store()
        .write(move |tx| tx.ack(&Principal::Operator, op_msg))
        .await
        .unwrap();
    let rows_before = h
        .store()
        .read(|r| r.audit_since(0, 1000))
        .await
        .unwrap()
        .len();
    let day = 24 * 3600 * 1000;
    let now = crate::now_ms();
    // A day on: bob's acked message goes; the unacked one and the
    // operator's (kept 7 days) stay.
    assert_eq!(h.prune_old_messages(now + day + 1000).await.unwrap(), 1);
    let bob = Principal::Agent(name("bob"));
    let left = h
        .store()
        .read(move |r| r.message_to(&bob, ids[0]))
        .await
        .unwrap();
    assert!(left.is_none());
    assert_eq!(h.unacked(&name("bob"), 0, 10).await.unwrap().len(), 1);
    assert_eq!(h.prune_old_messages(now + 8 * day).await.unwrap(), 1);
    assert_eq!(h.unacked(&name("bob"), 0, 10).await.unwrap().len(), 1);
    // The audit log is append-only: pruning removed none of it.
    let rows_after = h
        .store()
        .read(|r| r.audit_since(0, 1000))
        .await
        .unwrap()
        .len();
    assert_eq!(rows_after, rows_before);
    assert!(matches!(
        h.audit_verify(&op()).await.unwrap(),
        OperatorResponse::AuditVerified { .. }
    ));
}
