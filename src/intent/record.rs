//! The durable intent record and the operations that append to its log.
//!
//! Every operation returns the events it appended; the caller persists the record and the
//! events together. Status, seq and waiting reason are private so that they change only here.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::lifecycle::check_waiting_reason;
use super::timers::TimerState;
use super::{EventType, LifecycleError, LifecycleEvent, Status, WaitingReason, check_transition};

/// What a caller asks for when creating an intent, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntent {
    pub intent_type: String,
    pub correlation_id: String,
    pub from_agent: String,
    pub to_agent: String,
    pub reply_to: Option<String>,
    pub payload: Value,
    /// Durability and human-task options (`deadline_at`, `remind_*`, `human_task`, ...), kept
    /// verbatim for the runtime.
    pub options: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentRecord {
    pub intent_id: String,
    pub intent_type: String,
    pub correlation_id: String,
    pub from_agent: String,
    pub to_agent: String,
    pub reply_to: Option<String>,
    pub payload: Value,
    pub options: Map<String, Value>,
    pub created_at: String,
    updated_at: String,
    status: Status,
    waiting_reason: Option<WaitingReason>,
    seq: u64,
    handler: String,
    result: Option<Value>,
    error: Option<Value>,
    policy_generation: u64,
    controls: Map<String, Value>,
    grants: Map<String, Value>,
    envelope: Map<String, Value>,
    /// Set by a transfer until the new handler acts: the intent is offered to it again.
    #[serde(default)]
    handed_over: bool,
    /// The current IN_PROGRESS began with an approving resume: a second resume is a repeat of
    /// that one, not a wake-up for a wait still to come.
    #[serde(default)]
    pub(super) resumed: bool,
    /// What the timers remember (`crate::intent::timers`), folded from the events.
    #[serde(default, skip_serializing_if = "TimerState::is_empty")]
    pub(super) timer_state: TimerState,
}

/// The terminal outcome a resolve asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveOutcome {
    Completed { result: Value },
    Failed { error: Value },
    Canceled { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResumeOutcome {
    pub applied: bool,
    /// Why nothing was applied, as a stable code.
    pub reason: Option<&'static str>,
    pub events: Vec<LifecycleEvent>,
}

/// Result of a compare-and-set update of the intent's control policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyUpdate {
    pub applied: bool,
    pub policy_generation: u64,
}

impl IntentRecord {
    /// Creates the record of an accepted intent with its first two events, `intent.created`
    /// (seq 1) and `intent.submitted` (seq 2).
    pub fn submit(new: NewIntent, intent_id: String, actor: &str, at: &str) -> (IntentRecord, Vec<LifecycleEvent>) {
        let mut record = IntentRecord {
            intent_id,
            handler: new.to_agent.clone(),
            intent_type: new.intent_type,
            correlation_id: new.correlation_id,
            from_agent: new.from_agent,
            to_agent: new.to_agent,
            reply_to: new.reply_to,
            payload: new.payload,
            options: new.options,
            created_at: at.to_owned(),
            updated_at: at.to_owned(),
            status: Status::Created,
            waiting_reason: None,
            seq: 1,
            result: None,
            error: None,
            policy_generation: 0,
            controls: Map::new(),
            grants: Map::new(),
            envelope: Map::new(),
            handed_over: false,
            resumed: false,
            timer_state: TimerState::default(),
        };
        let created = record.event(EventType::Created, Some(actor), at, json!({}));
        let submitted = record
            .transition(Status::Submitted, None, Some(actor), json!({}), at)
            .expect("CREATED -> SUBMITTED is always legal");
        (record, vec![created, submitted])
    }

    pub fn status(&self) -> Status {
        self.status
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn waiting_reason(&self) -> Option<WaitingReason> {
        self.waiting_reason
    }
    pub fn handler(&self) -> &str {
        &self.handler
    }
    pub fn updated_at(&self) -> &str {
        &self.updated_at
    }
    pub fn result(&self) -> Option<&Value> {
        self.result.as_ref()
    }
    pub fn error(&self) -> Option<&Value> {
        self.error.as_ref()
    }
    pub fn policy_generation(&self) -> u64 {
        self.policy_generation
    }
    pub fn controls(&self) -> &Map<String, Value> {
        &self.controls
    }
    pub fn grants(&self) -> &Map<String, Value> {
        &self.grants
    }
    pub fn envelope(&self) -> &Map<String, Value> {
        &self.envelope
    }

    /// Moves the intent to `to`, if the transition table allows it, and returns the event.
    pub fn transition(
        &mut self,
        to: Status,
        waiting_reason: Option<WaitingReason>,
        actor: Option<&str>,
        details: Value,
        at: &str,
    ) -> Result<LifecycleEvent, LifecycleError> {
        check_transition(self.status, to)?;
        check_waiting_reason(to, waiting_reason)?;
        self.status = to;
        self.waiting_reason = waiting_reason;
        self.handed_over = false;
        self.resumed = false;
        self.seq += 1;
        self.updated_at = at.to_owned();
        Ok(self.observed(self.event(EventType::entering(to), actor, at, details)))
    }

    /// Records an event that does not change the status (`intent.delivery_failed`,
    /// `intent.reminder`, ...).
    pub fn note(
        &mut self,
        event_type: EventType,
        actor: Option<&str>,
        details: Value,
        at: &str,
    ) -> Result<LifecycleEvent, LifecycleError> {
        if self.status.is_terminal() {
            return Err(LifecycleError::Terminal { status: self.status });
        }
        self.seq += 1;
        self.updated_at = at.to_owned();
        Ok(self.observed(self.event(event_type, actor, at, details)))
    }

    /// Hands the intent to another handler (`intent.transfer`). The status stays; the new
    /// handler is offered the intent as if it had just arrived, until it acts on it.
    pub fn transfer(
        &mut self,
        to_handler: &str,
        reason: Option<&str>,
        actor: Option<&str>,
        at: &str,
    ) -> Result<LifecycleEvent, LifecycleError> {
        if self.status.is_terminal() {
            return Err(LifecycleError::Terminal { status: self.status });
        }
        if self.handler == to_handler {
            return Err(LifecycleError::SameHandler { handler: self.handler.clone() });
        }
        let details = json!({"from_handler": self.handler, "to_handler": to_handler, "reason": reason});
        self.handler = to_handler.to_owned();
        self.handed_over = true;
        self.seq += 1;
        self.updated_at = at.to_owned();
        Ok(self.observed(self.event(EventType::Transfer, actor, at, details)))
    }

    /// Ends the intent. COMPLETED is legal only from IN_PROGRESS, so a resolve from an earlier
    /// status first records the `intent.in_progress` the handler skipped: the log stays a legal
    /// path through the table and the caller gets the terminal event last.
    pub fn resolve(
        &mut self,
        outcome: ResolveOutcome,
        actor: Option<&str>,
        at: &str,
    ) -> Result<Vec<LifecycleEvent>, LifecycleError> {
        if self.status.is_terminal() {
            return Err(LifecycleError::Terminal { status: self.status });
        }
        let mut events = Vec::with_capacity(2);
        match outcome {
            ResolveOutcome::Completed { result } => {
                if self.status != Status::InProgress {
                    let skipped = json!({"synthesized": true, "cause": "resolve"});
                    events.push(self.transition(Status::InProgress, None, actor, skipped, at)?);
                }
                events.push(self.transition(Status::Completed, None, actor, json!({"result": result}), at)?);
                self.result = Some(result);
            }
            ResolveOutcome::Failed { error } => {
                events.push(self.transition(Status::Failed, None, actor, json!({"error": error}), at)?);
                self.error = Some(error);
            }
            ResolveOutcome::Canceled { reason } => {
                events.push(self.transition(Status::Canceled, None, actor, json!({"reason": reason}), at)?);
            }
        }
        Ok(events)
    }

    /// Continues the current step: approval moves the intent to IN_PROGRESS; a refusal cancels it.
    pub fn resume(
        &mut self,
        approve: bool,
        details: Value,
        actor: Option<&str>,
        at: &str,
    ) -> Result<ResumeOutcome, LifecycleError> {
        if self.status.is_terminal() {
            return Err(LifecycleError::Terminal { status: self.status });
        }
        if !approve {
            let event = self.transition(Status::Canceled, None, actor, details, at)?;
            return Ok(ResumeOutcome { applied: true, reason: None, events: vec![event] });
        }
        if self.status == Status::InProgress {
            // Meant for a wait that has not started yet: kept, and applied when it starts. A
            // repeat of the resume that began this IN_PROGRESS is not.
            let kept = !self.resumed && self.timer_state.keep_wake_up(details);
            let reason = if kept { "wake_up_kept" } else { "already_in_progress" };
            return Ok(ResumeOutcome { applied: false, reason: Some(reason), events: vec![] });
        }
        let event = self.transition(Status::InProgress, None, actor, details, at)?;
        self.resumed = true;
        Ok(ResumeOutcome { applied: true, reason: None, events: vec![event] })
    }

    /// Applies JSON merge patches to the control policy if `expected_generation` (when given)
    /// is current, bumping the generation once.
    pub fn update_policy(
        &mut self,
        expected_generation: Option<u64>,
        controls: Option<&Map<String, Value>>,
        grants: Option<&Map<String, Value>>,
        envelope: Option<&Map<String, Value>>,
        at: &str,
    ) -> Result<PolicyUpdate, LifecycleError> {
        if self.status.is_terminal() {
            return Err(LifecycleError::Terminal { status: self.status });
        }
        if expected_generation.is_some_and(|expected| expected != self.policy_generation) {
            return Ok(PolicyUpdate { applied: false, policy_generation: self.policy_generation });
        }
        for (target, patch) in
            [(&mut self.controls, controls), (&mut self.grants, grants), (&mut self.envelope, envelope)]
        {
            if let Some(patch) = patch {
                merge_patch(target, patch);
            }
        }
        self.policy_generation += 1;
        self.updated_at = at.to_owned();
        Ok(PolicyUpdate { applied: true, policy_generation: self.policy_generation })
    }

    /// Applies an event the intent's owner (another node) appended, to this node's replica.
    /// Returns false for an event already applied (at-least-once delivery repeats them). The
    /// owner obeys the same transition table; an event that breaks it is refused, not applied.
    pub fn apply_remote(&mut self, event: &LifecycleEvent) -> Result<bool, LifecycleError> {
        if event.intent_id != self.intent_id {
            return Err(LifecycleError::OtherIntent { expected: self.intent_id.clone(), got: event.intent_id.clone() });
        }
        if event.seq <= self.seq {
            return Ok(false);
        }
        if event.seq != self.seq + 1 {
            return Err(LifecycleError::Gap { have: self.seq, got: event.seq });
        }
        if event.status != self.status {
            check_transition(self.status, event.status)?;
        }
        check_waiting_reason(event.status, event.waiting_reason)?;
        self.status = event.status;
        self.waiting_reason = event.waiting_reason;
        if event.event_type == EventType::Transfer {
            self.handed_over = true;
        } else if event.event_type == EventType::entering(event.status) {
            self.handed_over = false;
            self.resumed =
                event.status == Status::InProgress && event.details.get("resumed") == Some(&Value::Bool(true));
        }
        self.seq = event.seq;
        self.updated_at = event.at.clone();
        if let Some(handler) = &event.handler {
            self.handler = handler.clone();
        }
        self.timer_state.observe(event);
        match event.status {
            Status::Completed => self.result = event.details.get("result").cloned(),
            Status::Failed => self.error = event.details.get("error").cloned(),
            _ => {}
        }
        Ok(true)
    }

    /// Whether the intent still expects its handler to pick it up: nobody acknowledged it yet,
    /// or it was transferred and the new handler has not acted on it.
    pub fn awaits_pickup(&self) -> bool {
        self.handed_over || matches!(self.status, Status::Submitted | Status::Delivered)
    }

    /// Offers the intent to its handler again, as if it had just arrived (after a human task
    /// that came before the handler's work).
    pub(super) fn offer_again(&mut self) {
        self.handed_over = true;
    }

    /// Lets the timer state see an event this record just appended.
    fn observed(&mut self, event: LifecycleEvent) -> LifecycleEvent {
        self.timer_state.observe(&event);
        event
    }

    fn event(&self, event_type: EventType, actor: Option<&str>, at: &str, details: Value) -> LifecycleEvent {
        LifecycleEvent {
            intent_id: self.intent_id.clone(),
            seq: self.seq,
            event_type,
            status: self.status,
            waiting_reason: self.waiting_reason,
            handler: Some(self.handler.clone()),
            actor: actor.map(str::to_owned),
            at: at.to_owned(),
            details,
        }
    }
}

/// RFC 7396 JSON merge patch: `null` removes a key, objects merge recursively.
fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    merge_patch(slot, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// A submitted intent from `agent://acme/a` to `agent://acme/b`, for unit tests.
#[cfg(test)]
pub(crate) fn sample(id: &str, options: Map<String, Value>, at: &str) -> (IntentRecord, Vec<LifecycleEvent>) {
    let new = NewIntent {
        intent_type: "intent.demo.v1".into(),
        correlation_id: "c".into(),
        from_agent: "agent://acme/a".into(),
        to_agent: "agent://acme/b".into(),
        reply_to: None,
        payload: json!({"x": 1}),
        options,
    };
    IntentRecord::submit(new, id.to_owned(), "agent://acme/a", at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-11-26T12:00:00.000000Z";

    fn submitted() -> IntentRecord {
        let (record, events) = sample("id-1", Map::new(), AT);
        assert_eq!(
            events.iter().map(|e| (e.seq, e.status)).collect::<Vec<_>>(),
            [(1, Status::Created), (2, Status::Submitted)]
        );
        record
    }

    #[test]
    fn seq_grows_by_one_per_event_and_illegal_moves_change_nothing() {
        let mut record = submitted();
        let delivered = record.transition(Status::Delivered, None, None, json!({}), AT).unwrap();
        assert_eq!((delivered.seq, delivered.event_type.as_str()), (3, "intent.delivered"));
        let before = record.clone();
        assert!(record.transition(Status::Completed, None, None, json!({}), AT).is_err());
        assert!(record.transition(Status::Waiting, None, None, json!({}), AT).is_err());
        assert_eq!(record, before);
        let waiting =
            record.transition(Status::Waiting, Some(WaitingReason::WaitingForTool), None, json!({}), AT).unwrap();
        assert_eq!((waiting.seq, waiting.waiting_reason), (4, Some(WaitingReason::WaitingForTool)));
        let back = record.transition(Status::InProgress, None, None, json!({}), AT).unwrap();
        assert_eq!((back.seq, back.waiting_reason, record.waiting_reason()), (5, None, None));
    }

    #[test]
    fn resolve_completed_records_the_skipped_in_progress() {
        let mut record = submitted();
        let events = record.resolve(ResolveOutcome::Completed { result: json!({"ok": 1}) }, Some("x"), AT).unwrap();
        let kinds: Vec<_> = events.iter().map(|e| (e.seq, e.event_type.as_str().to_owned())).collect();
        assert_eq!(kinds, [(3, "intent.in_progress".to_owned()), (4, "intent.completed".to_owned())]);
        assert_eq!(record.result(), Some(&json!({"ok": 1})));
        let again = record.resolve(ResolveOutcome::Failed { error: json!({}) }, None, AT);
        assert_eq!(again, Err(LifecycleError::Terminal { status: Status::Completed }));
        assert_eq!(record.seq(), 4);
    }

    #[test]
    fn resume_moves_to_in_progress_once_and_refusal_cancels() {
        let mut record = submitted();
        record.transition(Status::Waiting, Some(WaitingReason::WaitingForHuman), None, json!({}), AT).unwrap();
        let first = record.resume(true, json!({}), None, AT).unwrap();
        assert!(first.applied);
        assert_eq!(record.status(), Status::InProgress);
        let second = record.resume(true, json!({}), None, AT).unwrap();
        assert_eq!((second.applied, second.reason), (false, Some("already_in_progress")), "a repeated resume");
        record.transition(Status::Waiting, Some(WaitingReason::WaitingForTool), None, json!({}), AT).unwrap();
        record.transition(Status::InProgress, None, Some("tool"), json!({}), AT).unwrap();
        let early = record.resume(true, json!({}), None, AT).unwrap();
        assert_eq!((early.applied, early.reason), (false, Some("wake_up_kept")), "for a wait still to come");
        let again = record.resume(true, json!({}), None, AT).unwrap();
        assert_eq!((again.applied, again.reason), (false, Some("already_in_progress")), "one is kept at a time");
        let refused = record.resume(false, json!({}), None, AT).unwrap();
        assert_eq!(refused.events[0].status, Status::Canceled);
    }

    #[test]
    fn a_replica_follows_the_owners_events_once_and_in_order() {
        let mut owner = submitted();
        let mut replica = owner.clone();
        let mut events = vec![owner.transition(Status::InProgress, None, Some("h"), json!({}), AT).unwrap()];
        events.extend(owner.resolve(ResolveOutcome::Completed { result: json!({"r": 1}) }, Some("h"), AT).unwrap());
        assert_eq!(replica.apply_remote(&events[1]), Err(LifecycleError::Gap { have: 2, got: 4 }));
        for event in &events {
            assert_eq!(replica.apply_remote(event), Ok(true));
        }
        assert_eq!(replica, owner, "the replica ends identical to the owner's record");
        assert_eq!(replica.apply_remote(&events[0]), Ok(false), "a repeat is ignored");
        let mut forged = events[1].clone();
        forged.seq = 5;
        forged.status = Status::InProgress;
        assert_eq!(replica.apply_remote(&forged), Err(LifecycleError::Terminal { status: Status::Completed }));
    }

    #[test]
    fn a_transfer_changes_the_handler_not_the_status_and_waits_for_the_new_one() {
        let mut record = submitted();
        record.transition(Status::InProgress, None, Some("agent://acme/b"), json!({}), AT).unwrap();
        assert!(!record.awaits_pickup());
        let mut replica = record.clone();
        let event = record.transfer("agent://acme/c", Some("wrong desk"), Some("agent://acme/b"), AT).unwrap();
        assert_eq!((event.seq, event.event_type.as_str(), event.status), (4, "intent.transfer", Status::InProgress));
        assert_eq!(event.handler.as_deref(), Some("agent://acme/c"));
        assert_eq!(event.details["from_handler"], "agent://acme/b");
        assert_eq!((record.handler(), record.awaits_pickup()), ("agent://acme/c", true));
        assert_eq!(replica.apply_remote(&event), Ok(true));
        assert_eq!(replica, record, "a replica follows the transfer");
        let same = record.transfer("agent://acme/c", None, None, AT);
        assert_eq!(same, Err(LifecycleError::SameHandler { handler: "agent://acme/c".into() }));
        let waiting = record.transition(Status::Waiting, Some(WaitingReason::WaitingForTool), None, json!({}), AT);
        assert!(waiting.is_ok());
        assert!(!record.awaits_pickup(), "the new handler acted");
        record.resolve(ResolveOutcome::Canceled { reason: "x".into() }, None, AT).unwrap();
        let late = record.transfer("agent://acme/d", None, None, AT);
        assert_eq!(late, Err(LifecycleError::Terminal { status: Status::Canceled }));
        assert_eq!(record.seq(), 6);
    }

    #[test]
    fn policy_updates_are_compare_and_set() {
        let mut record = submitted();
        let patch = json!({"retry": {"n": 1}, "gone": null}).as_object().cloned().unwrap();
        let applied = record.update_policy(Some(0), Some(&patch), None, None, AT).unwrap();
        assert_eq!(applied, PolicyUpdate { applied: true, policy_generation: 1 });
        let stale = record.update_policy(Some(0), Some(&patch), None, None, AT).unwrap();
        assert_eq!(stale, PolicyUpdate { applied: false, policy_generation: 1 });
        let nested = json!({"retry": {"m": 2}}).as_object().cloned().unwrap();
        record.update_policy(None, Some(&nested), None, None, AT).unwrap();
        assert_eq!(Value::Object(record.controls().clone()), json!({"retry": {"n": 1, "m": 2}}));
    }
}
