//! Inbox threads: the owner's conversation view of one intent (the AXME API's Thread object).
//!
//! Owns what a thread holds and how it changes: lifecycle events folded into its timeline, the
//! completion message written when the intent ends, replies, delegation, decisions, the read
//! marker and message deletion, with the errors of those operations. Pure: it does not store
//! threads or index them (`crate::store`), decide who may see them or shape HTTP answers
//! (`crate::api`), or change the intent itself (`crate::intent`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::intent::{IntentRecord, LifecycleEvent, Status, UnknownName, WaitingReason};

/// Timeline entries whose `event_type` starts with this are messages: they carry a
/// `message_id` (their `event_id`) and may be deleted.
const MESSAGE_PREFIX: &str = "message.";
/// Who a lifecycle event without an actor is attributed to.
const NODE_ACTOR: &str = "node";

/// A thread's status as the Thread object spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadStatus {
    /// The intent waits (WAITING): the owner may approve or reject it.
    Pending,
    /// The intent is under way at its handler.
    Active,
    /// The intent ended; the thread holds its outcome.
    Done,
}

impl ThreadStatus {
    pub const ALL: [ThreadStatus; 3] = [ThreadStatus::Pending, ThreadStatus::Active, ThreadStatus::Done];

    pub fn of(status: Status) -> ThreadStatus {
        match status {
            Status::Waiting => ThreadStatus::Pending,
            status if status.is_terminal() => ThreadStatus::Done,
            _ => ThreadStatus::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ThreadStatus::Pending => "pending",
            ThreadStatus::Active => "active",
            ThreadStatus::Done => "done",
        }
    }
}

impl fmt::Display for ThreadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ThreadStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        ThreadStatus::ALL.into_iter().find(|status| status.as_str() == wanted).ok_or_else(|| UnknownName {
            kind: "thread status",
            value: s.to_owned(),
            expected: ThreadStatus::ALL.map(ThreadStatus::as_str).join(", "),
        })
    }
}

/// One entry of a thread's timeline: a lifecycle event of the intent, a message, or something
/// the owner did (`thread.delegated`, `thread.approved`, `thread.rejected`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub event_id: String,
    pub event_type: String,
    pub actor: String,
    pub at: String,
    pub details: Value,
    /// Deleted for the owner only (`mode: self`): kept, but no longer shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

impl Entry {
    pub fn is_message(&self) -> bool {
        self.event_type.starts_with(MESSAGE_PREFIX)
    }
}

/// The outcome of the intent, as the completion message carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub message_id: String,
    pub status: Status,
    pub seq: u64,
    pub at: String,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub reason: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thread {
    pub thread_id: String,
    pub intent_id: String,
    pub owner_agent: String,
    pub from_agent: String,
    pub to_agent: String,
    pub intent_type: String,
    pub created_at: String,
    pub updated_at: String,
    intent_status: Status,
    waiting_reason: Option<WaitingReason>,
    /// The seq of the last lifecycle event folded in: later repeats are ignored.
    intent_seq: u64,
    completion: Option<Completion>,
    timeline: Vec<Entry>,
    read_at: Option<String>,
    /// Something the owner did not do happened since the owner last marked the thread read.
    unread: bool,
    /// Position in the owner's change feed; the store sets it on every write.
    pub cursor: u64,
}

/// Which messages a deletion removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<String>),
    /// The most recent `n` messages still shown.
    Latest(usize),
}

/// `self` hides the messages from the owner's view and keeps them; `both` removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    OwnerOnly,
    Both,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InboxError {
    #[error("the intent is {status}, a terminal status; it can no longer be approved or rejected")]
    Terminal { status: Status },
    #[error("the intent is {status}, not WAITING; only a waiting intent can be approved or rejected")]
    NotWaiting { status: Status },
    #[error("delegate_to: {owner} already owns this thread")]
    SameOwner { owner: String },
    #[error("message_ids: {id} is not a message of this thread (or was deleted)")]
    UnknownMessage { id: String },
}

impl InboxError {
    /// Stable machine code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            InboxError::Terminal { .. } => "intent_terminal",
            InboxError::NotWaiting { .. } => "intent_not_waiting",
            InboxError::SameOwner { .. } => "already_owner",
            InboxError::UnknownMessage { .. } => "unknown_message",
        }
    }

    /// Whether the request conflicts with the thread's state (rather than being wrong itself).
    pub fn is_conflict(&self) -> bool {
        matches!(self, InboxError::Terminal { .. } | InboxError::NotWaiting { .. })
    }
}

impl Thread {
    /// An empty thread for `record`'s outcome in `owner`'s inbox; events are folded in next.
    pub fn open(record: &IntentRecord, owner: &str) -> Thread {
        Thread {
            thread_id: record.intent_id.clone(),
            intent_id: record.intent_id.clone(),
            owner_agent: owner.to_owned(),
            from_agent: record.from_agent.clone(),
            to_agent: record.to_agent.clone(),
            intent_type: record.intent_type.clone(),
            created_at: record.created_at.clone(),
            updated_at: record.created_at.clone(),
            intent_status: Status::Created,
            waiting_reason: None,
            intent_seq: 0,
            completion: None,
            timeline: Vec::new(),
            read_at: None,
            unread: true,
            cursor: 0,
        }
    }

    pub fn status(&self) -> ThreadStatus {
        ThreadStatus::of(self.intent_status)
    }
    pub fn intent_status(&self) -> Status {
        self.intent_status
    }
    pub fn waiting_reason(&self) -> Option<WaitingReason> {
        self.waiting_reason
    }
    pub fn completion(&self) -> Option<&Completion> {
        self.completion.as_ref()
    }
    pub fn read_at(&self) -> Option<&str> {
        self.read_at.as_deref()
    }
    pub fn unread(&self) -> bool {
        self.unread
    }

    /// The timeline as the owner sees it (without entries deleted for the owner).
    pub fn visible(&self) -> impl Iterator<Item = &Entry> {
        self.timeline.iter().filter(|entry| !entry.hidden)
    }

    /// Folds one lifecycle event of the intent into the thread; a terminal event also adds the
    /// completion message. `new_id` names new entries. Returns false for an event already
    /// folded in (events are delivered at least once).
    pub fn fold(&mut self, event: &LifecycleEvent, new_id: &mut impl FnMut() -> String) -> bool {
        if event.seq <= self.intent_seq {
            return false;
        }
        let actor = event.actor.clone().unwrap_or_else(|| NODE_ACTOR.to_owned());
        let details = json!({
            "seq": event.seq,
            "status": event.status,
            "waiting_reason": event.waiting_reason,
            "handler": event.handler,
            "details": event.details,
        });
        self.push(new_id(), event.event_type.as_str(), &actor, &event.at, details);
        self.intent_seq = event.seq;
        self.intent_status = event.status;
        self.waiting_reason = event.waiting_reason;
        if event.is_terminal() && self.completion.is_none() {
            let completion = Completion {
                message_id: new_id(),
                status: event.status,
                seq: event.seq,
                at: event.at.clone(),
                result: event.details.get("result").cloned(),
                error: event.details.get("error").cloned(),
                reason: event.details.get("reason").cloned(),
            };
            let details = serde_json::to_value(&completion).expect("completions serialise");
            self.push(completion.message_id.clone(), "message.completion", &actor, &event.at, details);
            self.completion = Some(completion);
        }
        self.unread = true;
        true
    }

    /// The owner writes in the thread. The text is checked by the caller (1..5000 characters).
    pub fn reply(&mut self, message_id: String, message: &str, at: &str) -> &Entry {
        let owner = self.owner_agent.clone();
        self.push(message_id, "message.reply", &owner, at, json!({"message": message}))
    }

    /// Hands the thread to another owner's inbox.
    pub fn delegate(&mut self, to: &str, note: Option<&str>, entry_id: String, at: &str) -> Result<(), InboxError> {
        if to == self.owner_agent {
            return Err(InboxError::SameOwner { owner: to.to_owned() });
        }
        let from = std::mem::replace(&mut self.owner_agent, to.to_owned());
        self.push(entry_id, "thread.delegated", &from, at, json!({"from": from, "to": to, "note": note}));
        self.unread = true;
        Ok(())
    }

    /// Whether the intent is in a state the owner can decide on (WAITING).
    pub fn check_decidable(&self) -> Result<(), InboxError> {
        match self.intent_status {
            status if status.is_terminal() => Err(InboxError::Terminal { status }),
            Status::Waiting => Ok(()),
            status => Err(InboxError::NotWaiting { status }),
        }
    }

    /// Records the owner's decision; the intent itself moves through `IntentRecord::resume`.
    pub fn decide(
        &mut self,
        approve: bool,
        comment: Option<&str>,
        forwarded: bool,
        entry_id: String,
        at: &str,
    ) -> Result<(), InboxError> {
        self.check_decidable()?;
        let event_type = if approve { "thread.approved" } else { "thread.rejected" };
        let owner = self.owner_agent.clone();
        let details = json!({"comment": comment, "forwarded_to_owner_node": forwarded});
        self.push(entry_id, event_type, &owner, at, details);
        Ok(())
    }

    pub fn mark_read(&mut self, at: &str) {
        self.read_at = Some(at.to_owned());
        self.unread = false;
    }

    /// Deletes messages (never lifecycle entries) and returns the ids deleted. With explicit
    /// ids, every one must be a message still shown, or nothing is deleted.
    pub fn delete_messages(&mut self, selection: &Selection, mode: DeleteMode) -> Result<Vec<String>, InboxError> {
        let shown: Vec<&str> =
            self.timeline.iter().filter(|e| e.is_message() && !e.hidden).map(|e| e.event_id.as_str()).collect();
        let chosen: Vec<String> = match selection {
            Selection::Ids(ids) => {
                if let Some(unknown) = ids.iter().find(|id| !shown.contains(&id.as_str())) {
                    return Err(InboxError::UnknownMessage { id: unknown.clone() });
                }
                let mut unique: Vec<String> = Vec::with_capacity(ids.len());
                for id in ids {
                    if !unique.contains(id) {
                        unique.push(id.clone());
                    }
                }
                unique
            }
            Selection::Latest(count) => shown.iter().rev().take(*count).map(|id| (*id).to_owned()).collect(),
        };
        match mode {
            DeleteMode::OwnerOnly => {
                for entry in self.timeline.iter_mut().filter(|entry| chosen.contains(&entry.event_id)) {
                    entry.hidden = true;
                }
            }
            DeleteMode::Both => self.timeline.retain(|entry| !chosen.contains(&entry.event_id)),
        }
        Ok(chosen)
    }

    fn push(&mut self, event_id: String, event_type: &str, actor: &str, at: &str, details: Value) -> &Entry {
        self.updated_at = at.to_owned();
        self.timeline.push(Entry {
            event_id,
            event_type: event_type.to_owned(),
            actor: actor.to_owned(),
            at: at.to_owned(),
            details,
            hidden: false,
        });
        self.timeline.last().expect("just pushed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{NewIntent, ResolveOutcome};
    use serde_json::Map;

    const AT: &str = "2026-11-26T12:00:00.000000Z";

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("id-{n}")
        }
    }

    fn intent() -> (IntentRecord, Vec<LifecycleEvent>) {
        let new = NewIntent {
            intent_type: "intent.demo.v1".into(),
            correlation_id: "c".into(),
            from_agent: "agent://acme/a".into(),
            to_agent: "agent://acme/b".into(),
            reply_to: Some("agent://acme/inbox".into()),
            payload: json!({}),
            options: Map::new(),
        };
        IntentRecord::submit(new, "intent-1".into(), "agent://acme/a", AT)
    }

    #[test]
    fn events_fold_in_once_and_the_outcome_becomes_a_message() {
        let (mut record, events) = intent();
        let mut thread = Thread::open(&record, "agent://acme/inbox");
        let mut next = ids();
        for event in &events {
            assert!(thread.fold(event, &mut next));
        }
        assert!(!thread.fold(&events[1], &mut next), "a repeat is ignored");
        assert_eq!(thread.status(), ThreadStatus::Active);
        let waiting =
            record.transition(Status::Waiting, Some(WaitingReason::WaitingForHuman), None, json!({}), AT).unwrap();
        thread.fold(&waiting, &mut next);
        assert_eq!((thread.status(), thread.check_decidable()), (ThreadStatus::Pending, Ok(())));
        let ended = record.resolve(ResolveOutcome::Failed { error: json!({"code": "x"}) }, Some("h"), AT).unwrap();
        thread.fold(&ended[0], &mut next);
        let completion = thread.completion().unwrap();
        assert_eq!((completion.status, completion.error.clone()), (Status::Failed, Some(json!({"code": "x"}))));
        assert_eq!(thread.status(), ThreadStatus::Done);
        let last = thread.visible().last().unwrap();
        assert_eq!((last.event_type.as_str(), last.event_id.as_str()), ("message.completion", "id-5"));
        assert_eq!(thread.check_decidable(), Err(InboxError::Terminal { status: Status::Failed }));
    }

    #[test]
    fn deleting_messages_leaves_lifecycle_entries_and_is_all_or_nothing() {
        let (record, events) = intent();
        let mut thread = Thread::open(&record, "agent://acme/inbox");
        let mut next = ids();
        events.iter().for_each(|event| {
            thread.fold(event, &mut next);
        });
        for n in 0..3 {
            thread.reply(format!("m{n}"), "hello", AT);
        }
        let before = thread.clone();
        let unknown = thread.delete_messages(&Selection::Ids(vec!["m0".into(), "id-1".into()]), DeleteMode::Both);
        assert_eq!(unknown, Err(InboxError::UnknownMessage { id: "id-1".into() }));
        assert_eq!(thread, before);
        let hidden = thread.delete_messages(&Selection::Latest(2), DeleteMode::OwnerOnly).unwrap();
        assert_eq!(hidden, ["m2", "m1"]);
        assert_eq!(thread.visible().count(), 3);
        let gone = thread.delete_messages(&Selection::Ids(vec!["m0".into()]), DeleteMode::Both).unwrap();
        assert_eq!(gone, ["m0"]);
        let shown: Vec<_> = thread.visible().map(|e| e.event_type.as_str()).collect();
        assert_eq!(shown, ["intent.created", "intent.submitted"]);
    }

    #[test]
    fn delegation_moves_the_thread_and_decisions_need_waiting() {
        let (record, events) = intent();
        let mut thread = Thread::open(&record, "agent://acme/inbox");
        let mut next = ids();
        thread.fold(&events[0], &mut next);
        thread.mark_read(AT);
        assert!(!thread.unread());
        thread.delegate("agent://acme/deputy", Some("yours"), "d".into(), AT).unwrap();
        assert_eq!((thread.owner_agent.as_str(), thread.unread()), ("agent://acme/deputy", true));
        let again = thread.delegate("agent://acme/deputy", None, "e".into(), AT);
        assert_eq!(again, Err(InboxError::SameOwner { owner: "agent://acme/deputy".into() }));
        let early = thread.decide(true, None, false, "f".into(), AT);
        assert_eq!(early, Err(InboxError::NotWaiting { status: Status::Created }));
        assert_eq!("DONE".parse::<ThreadStatus>(), Ok(ThreadStatus::Done));
        assert!("closed".parse::<ThreadStatus>().is_err());
    }
}
