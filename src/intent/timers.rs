//! Durable timers of an intent, as pure functions over its record: which timers the intent
//! needs now ([`IntentRecord::timers`]) and what firing one does ([`IntentRecord::fire_timer`]).
//!
//! Owns the timer semantics; it does not store or schedule anything (`crate::store::timers`
//! keeps the schedule, `crate::timers` is the worker that fires it) and never reads a clock:
//! `now` comes in as an argument.
//!
//! The state the timers depend on ([`TimerState`]) is a fold over the intent's own events
//! (`observe`), so a replica that applies the owner's events ends with the same state, and a
//! node that takes an intent over (transfer back) schedules what the previous owner would have.
//! The one exception is a kept wake-up, which only the owner sees.
//!
//! Semantics:
//! - **Deadline** (`deadline_at`): while the intent is not terminal, due at `deadline_at`; firing
//!   moves it to TIMED_OUT with `intent.timed_out`. A deadline already past is due at once.
//! - **Reminders** (`remind_after_seconds`, `remind_interval_seconds` (default: the same as
//!   `remind_after_seconds`), `max_reminders` (default 3)): only while WAITING with
//!   WAITING_FOR_HUMAN. The first is due `remind_after_seconds` after the wait began, each next
//!   one `remind_interval_seconds` after the previous one *fired* (so a node that was down sends
//!   one late reminder, not a burst). `max_reminders` is a budget for the whole intent. Each
//!   firing appends `intent.reminder` with `details.n`, `details.of`, `pending_with` and the
//!   `notification` (`notification.email` lists the people the node mails, see `crate::mail`).
//! - **Escalation** (`escalate_to`): once the reminder budget is spent, one more slot later
//!   (`remind_interval_seconds` after the last reminder), `intent.escalated`
//!   (`details.escalated_to`, `from_handler`, `reassigned`), followed, when the target can take
//!   the intent, by an ordinary `intent.transfer` to it. Escalation happens at most once.
//! - **Wake** (delay): WAITING with WAITING_FOR_TIME and `details.next_wakeup_at` on the
//!   `intent.waiting` event; at that time the intent resumes to IN_PROGRESS.
//! - **Kept wake-up**: an approving resume that arrives while the intent is IN_PROGRESS is kept on
//!   the record and applied when the next wait starts (due at the wait's start, so at once).
//!
//! Exactly once: every firing changes the state so that the fired timer is no longer wanted; a
//! timer that is no longer wanted when it comes due is stale and fires as a no-op.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{EventType, IntentRecord, LifecycleError, LifecycleEvent, Status, WaitingReason};

/// Default of `max_reminders` when reminders are asked for without a limit (the AXME wizard's).
pub const DEFAULT_MAX_REMINDERS: u64 = 3;
/// The actor of events the timers append.
pub const TIMER_ACTOR: &str = "node:timer";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimerKind {
    Deadline,
    /// Reminder number `n` (1-based, counted over the intent's life).
    Reminder {
        n: u32,
    },
    Escalation,
    /// The end of a WAITING_FOR_TIME delay.
    Wake,
    /// A resume that arrived before the wait, applied once the wait starts.
    KeptWakeUp,
}

impl TimerKind {
    /// Compact form for schedule keys: a tag and a number.
    pub fn code(self) -> (u8, u32) {
        match self {
            TimerKind::Deadline => (1, 0),
            TimerKind::Reminder { n } => (2, n),
            TimerKind::Escalation => (3, 0),
            TimerKind::Wake => (4, 0),
            TimerKind::KeptWakeUp => (5, 0),
        }
    }

    pub fn from_code(tag: u8, n: u32) -> Option<TimerKind> {
        Some(match tag {
            1 => TimerKind::Deadline,
            2 => TimerKind::Reminder { n },
            3 => TimerKind::Escalation,
            4 => TimerKind::Wake,
            5 => TimerKind::KeptWakeUp,
            _ => return None,
        })
    }
}

/// One timer: what fires, and when (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timer {
    pub due_ms: u64,
    #[serde(flatten)]
    pub kind: TimerKind,
}

/// What firing a timer came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// The timer is not wanted any more (the intent ended, the wait changed): drop it.
    Stale,
    /// Wanted, but not due yet at the given `now`: keep it.
    NotDue,
    /// The events appended, in order. An escalation that reassigns ends with `intent.transfer`.
    Applied(Vec<LifecycleEvent>),
}

/// What the timers remember of the intent's history. Part of the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimerState {
    /// When the current wait began (unix ms), while WAITING.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_since_ms: Option<u64>,
    /// When the current WAITING_FOR_TIME wait ends (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wake_at_ms: Option<u64>,
    /// When the last reminder of the current wait fired (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_reminder_ms: Option<u64>,
    /// Reminders over the intent's life (`remind_count`).
    #[serde(default)]
    reminders: u32,
    #[serde(default)]
    escalated: bool,
    /// Details of a resume that came before the wait it was meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept_wake_up: Option<Value>,
}

impl TimerState {
    /// Folds one event of the intent's log into the state.
    pub(super) fn observe(&mut self, event: &LifecycleEvent) {
        let at_ms = parse_ms(&event.at);
        if event.status != Status::Waiting {
            self.wait_since_ms = None;
            self.wake_at_ms = None;
            self.last_reminder_ms = None;
        }
        if event.status.is_terminal() {
            self.kept_wake_up = None;
        }
        match event.event_type {
            EventType::Waiting => {
                self.wait_since_ms = at_ms;
                self.last_reminder_ms = None;
                self.wake_at_ms = (event.waiting_reason == Some(WaitingReason::WaitingForTime))
                    .then(|| event.details.get("next_wakeup_at").and_then(Value::as_str).and_then(parse_ms))
                    .flatten();
            }
            EventType::Reminder => {
                self.reminders += 1;
                self.last_reminder_ms = at_ms;
            }
            EventType::Escalated => self.escalated = true,
            _ => {}
        }
    }

    pub(super) fn keep_wake_up(&mut self, details: Value) -> bool {
        if self.kept_wake_up.is_some() {
            return false;
        }
        self.kept_wake_up = Some(details);
        true
    }

    pub fn reminders(&self) -> u32 {
        self.reminders
    }

    pub(super) fn is_empty(&self) -> bool {
        *self == TimerState::default()
    }
}

/// Unix ms of an RFC 3339 date-time; instants before 1970 count as 0.
pub fn parse_ms(text: &str) -> Option<u64> {
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(u64::try_from(at.timestamp_millis()).unwrap_or(0))
}

fn option_u64(record: &IntentRecord, name: &str) -> Option<u64> {
    record.options.get(name).and_then(Value::as_u64)
}

/// The reminder and escalation settings of an intent, when it asks for reminders.
struct Reminding<'a> {
    after_ms: u64,
    interval_ms: u64,
    max: u64,
    escalate_to: Option<&'a str>,
}

impl<'a> Reminding<'a> {
    fn of(record: &'a IntentRecord) -> Option<Reminding<'a>> {
        let after = option_u64(record, "remind_after_seconds")?;
        Some(Reminding {
            after_ms: after.saturating_mul(1000),
            interval_ms: option_u64(record, "remind_interval_seconds").unwrap_or(after).saturating_mul(1000),
            max: option_u64(record, "max_reminders").unwrap_or(DEFAULT_MAX_REMINDERS),
            escalate_to: record.options.get("escalate_to").and_then(Value::as_str),
        })
    }
}

impl IntentRecord {
    /// The timers this intent needs in its current state, earliest first. Whether this node
    /// runs them (it owns the intent) is the caller's business.
    pub fn timers(&self) -> Vec<Timer> {
        let mut timers = Vec::new();
        if self.status().is_terminal() {
            return timers;
        }
        let state = &self.timer_state;
        if let Some(due_ms) = self.options.get("deadline_at").and_then(Value::as_str).and_then(parse_ms) {
            timers.push(Timer { due_ms, kind: TimerKind::Deadline });
        }
        if let (Status::Waiting, Some(since)) = (self.status(), state.wait_since_ms) {
            if state.kept_wake_up.is_some() {
                timers.push(Timer { due_ms: since, kind: TimerKind::KeptWakeUp });
            }
            if let Some(due_ms) = state.wake_at_ms {
                timers.push(Timer { due_ms, kind: TimerKind::Wake });
            }
            if let (Some(WaitingReason::WaitingForHuman), Some(reminding)) =
                (self.waiting_reason(), Reminding::of(self))
            {
                let slot = match state.last_reminder_ms {
                    Some(last) => last.saturating_add(reminding.interval_ms),
                    None => since.saturating_add(reminding.after_ms),
                };
                if u64::from(state.reminders) < reminding.max {
                    timers.push(Timer { due_ms: slot, kind: TimerKind::Reminder { n: state.reminders + 1 } });
                } else if reminding.escalate_to.is_some() && !state.escalated {
                    timers.push(Timer { due_ms: slot, kind: TimerKind::Escalation });
                }
            }
        }
        timers.sort();
        timers
    }

    /// When the intent next wakes from its current wait by itself, if it does (unix ms).
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.timers().into_iter().filter(|timer| timer.kind == TimerKind::Wake).map(|timer| timer.due_ms).next()
    }

    pub fn remind_count(&self) -> u32 {
        self.timer_state.reminders()
    }

    /// Fires `timer` at `now_ms` (`at` is the same instant as RFC 3339). `reassign` says
    /// whether the escalation target can take the intent over (only escalations read it): the
    /// caller routes the address, this function only records the outcome.
    pub fn fire_timer(
        &mut self,
        timer: &Timer,
        now_ms: u64,
        at: &str,
        reassign: Result<(), String>,
    ) -> Result<Fired, LifecycleError> {
        if !self.timers().contains(timer) {
            return Ok(Fired::Stale);
        }
        if timer.due_ms > now_ms {
            return Ok(Fired::NotDue);
        }
        let actor = Some(TIMER_ACTOR);
        let events = match timer.kind {
            TimerKind::Deadline => {
                let deadline = self.options.get("deadline_at").cloned().unwrap_or(Value::Null);
                let details = json!({"deadline_at": deadline, "reason": "deadline_at passed", "timer": "deadline"});
                vec![self.transition(Status::TimedOut, None, actor, details, at)?]
            }
            TimerKind::Reminder { n } => {
                let max = option_u64(self, "max_reminders").unwrap_or(DEFAULT_MAX_REMINDERS);
                let handler = self.handler().to_owned();
                let details = json!({
                    "n": n,
                    "of": max,
                    "remind_count": n,
                    "pending_with": {"type": "human", "ref": handler, "name": handler},
                    "notification": {"to": handler, "channels": ["events"], "email": self.task_emails()},
                    "timer": "reminder",
                });
                vec![self.note(EventType::Reminder, actor, details, at)?]
            }
            TimerKind::Escalation => self.escalate(reassign, at)?,
            TimerKind::Wake => {
                let wake_at = self.timer_state.wake_at_ms;
                let details = json!({"wake_up": "timer", "next_wakeup_at_ms": wake_at, "timer": "wake"});
                vec![self.transition(Status::InProgress, None, actor, details, at)?]
            }
            TimerKind::KeptWakeUp => {
                let mut details = self.timer_state.kept_wake_up.take().unwrap_or_else(|| json!({}));
                if let Value::Object(map) = &mut details {
                    map.insert("kept".into(), Value::Bool(true));
                    map.insert("timer".into(), json!("kept_wake_up"));
                }
                vec![self.transition(Status::InProgress, None, actor, details, at)?]
            }
        };
        Ok(Fired::Applied(events))
    }

    /// The people a reminder or an escalation is mailed to, besides the target's contact.
    fn task_emails(&self) -> Vec<String> {
        super::HumanTask::of(self).map(|task| task.emails()).unwrap_or_default()
    }

    fn escalate(&mut self, reassign: Result<(), String>, at: &str) -> Result<Vec<LifecycleEvent>, LifecycleError> {
        let target = self.options.get("escalate_to").and_then(Value::as_str).unwrap_or_default().to_owned();
        let from = self.handler().to_owned();
        let refusal = match reassign {
            Ok(()) if target == from => Some(format!("{target} already handles the intent")),
            Ok(()) => None,
            Err(reason) => Some(reason),
        };
        let details = json!({
            "escalated_to": target,
            "from_handler": from,
            "after_reminders": self.timer_state.reminders,
            "reassigned": refusal.is_none(),
            "reason": refusal,
            "notification": {"to": target, "channels": ["events"], "email": self.task_emails()},
            "timer": "escalation",
        });
        let mut events = vec![self.note(EventType::Escalated, Some(TIMER_ACTOR), details, at)?];
        if refusal.is_none() {
            let reason = format!("escalated after {} reminders", self.timer_state.reminders);
            events.push(self.transfer(&target, Some(&reason), Some(TIMER_ACTOR), at)?);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::ResolveOutcome;

    const T0: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> String {
        chrono::DateTime::from_timestamp_millis(ms as i64).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    fn record(options: Value) -> IntentRecord {
        crate::intent::sample("id-1", options.as_object().cloned().unwrap(), &at(T0)).0
    }

    fn wait(record: &mut IntentRecord, reason: WaitingReason, details: Value, ms: u64) -> LifecycleEvent {
        record.transition(Status::Waiting, Some(reason), None, details, &at(ms)).unwrap()
    }

    fn fire(record: &mut IntentRecord, timer: Timer, now: u64) -> Fired {
        record.fire_timer(&timer, now, &at(now), Ok(())).unwrap()
    }

    fn types(fired: &Fired) -> Vec<&str> {
        match fired {
            Fired::Applied(events) => events.iter().map(|event| event.event_type.as_str()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn a_deadline_times_the_intent_out_once() {
        let mut record = record(json!({"deadline_at": at(T0 + 5_000)}));
        let deadline = Timer { due_ms: T0 + 5_000, kind: TimerKind::Deadline };
        assert_eq!(record.timers(), [deadline]);
        assert_eq!(fire(&mut record, deadline, T0 + 4_999), Fired::NotDue);
        let fired = fire(&mut record, deadline, T0 + 6_000);
        assert_eq!(types(&fired), ["intent.timed_out"]);
        assert_eq!(record.status(), Status::TimedOut);
        assert!(record.timers().is_empty());
        assert_eq!(fire(&mut record, deadline, T0 + 7_000), Fired::Stale, "a second firing is a no-op");
    }

    #[test]
    fn a_deadline_is_stale_once_the_intent_ended_and_fires_from_waiting() {
        let mut ended = record(json!({"deadline_at": at(T0 + 5_000)}));
        ended.resolve(ResolveOutcome::Canceled { reason: "x".into() }, None, &at(T0)).unwrap();
        assert!(ended.timers().is_empty());
        let deadline = Timer { due_ms: T0 + 5_000, kind: TimerKind::Deadline };
        assert_eq!(fire(&mut ended, deadline, T0 + 9_000), Fired::Stale);
        let mut waiting = record(json!({"deadline_at": at(T0 - 1_000)}));
        wait(&mut waiting, WaitingReason::WaitingForTool, json!({}), T0);
        let past = Timer { due_ms: T0 - 1_000, kind: TimerKind::Deadline };
        assert_eq!(waiting.timers(), [past], "a past deadline is due at once");
        assert_eq!(types(&fire(&mut waiting, past, T0)), ["intent.timed_out"]);
    }

    #[test]
    fn reminders_count_up_from_each_firing_then_escalate_once() {
        let options = json!({"remind_after_seconds": 10, "remind_interval_seconds": 5, "max_reminders": 2, "escalate_to": "agent://acme/boss"});
        let mut record = record(options);
        assert!(record.timers().is_empty(), "reminders wait for a human wait");
        wait(&mut record, WaitingReason::WaitingForHuman, json!({}), T0);
        let first = Timer { due_ms: T0 + 10_000, kind: TimerKind::Reminder { n: 1 } };
        assert_eq!(record.timers(), [first]);
        // Fired late (the node was down): the next one counts from the late firing.
        let fired = fire(&mut record, first, T0 + 30_000);
        let Fired::Applied(events) = &fired else { panic!("{fired:?}") };
        assert_eq!((events[0].details["n"].as_u64(), events[0].details["of"].as_u64()), (Some(1), Some(2)));
        assert_eq!(events[0].status, Status::Waiting);
        assert_eq!(fire(&mut record, first, T0 + 31_000), Fired::Stale, "reminder 1 fires once");
        let second = Timer { due_ms: T0 + 35_000, kind: TimerKind::Reminder { n: 2 } };
        assert_eq!(record.timers(), [second]);
        assert_eq!(types(&fire(&mut record, second, T0 + 35_000)), ["intent.reminder"]);
        assert_eq!(record.remind_count(), 2);
        let escalation = Timer { due_ms: T0 + 40_000, kind: TimerKind::Escalation };
        assert_eq!(record.timers(), [escalation]);
        let fired = fire(&mut record, escalation, T0 + 40_000);
        assert_eq!(types(&fired), ["intent.escalated", "intent.transfer"]);
        let Fired::Applied(events) = &fired else { unreachable!() };
        assert_eq!(events[0].details["escalated_to"], "agent://acme/boss");
        assert_eq!(events[0].details["reassigned"], true);
        assert_eq!((record.handler(), record.status()), ("agent://acme/boss", Status::Waiting));
        assert!(record.timers().is_empty(), "budget spent and escalated: nothing more");
        assert_eq!(fire(&mut record, escalation, T0 + 50_000), Fired::Stale);
    }

    #[test]
    fn a_refused_escalation_is_recorded_without_a_transfer() {
        let mut record =
            record(json!({"remind_after_seconds": 1, "max_reminders": 1, "escalate_to": "agent://other/x"}));
        wait(&mut record, WaitingReason::WaitingForHuman, json!({}), T0);
        fire(&mut record, Timer { due_ms: T0 + 1_000, kind: TimerKind::Reminder { n: 1 } }, T0 + 1_000);
        let escalation = Timer { due_ms: T0 + 2_000, kind: TimerKind::Escalation };
        let fired = record.fire_timer(&escalation, T0 + 2_000, &at(T0 + 2_000), Err("unroutable".into())).unwrap();
        let Fired::Applied(events) = fired else { panic!() };
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].details["reassigned"].as_bool(), events[0].details["reason"].as_str()),
            (Some(false), Some("unroutable"))
        );
        assert_eq!(record.handler(), "agent://acme/b");
        assert!(record.timers().is_empty());
    }

    #[test]
    fn reminders_stop_when_the_wait_ends_and_restart_with_the_next_wait() {
        let mut record = record(json!({"remind_after_seconds": 10, "max_reminders": 3}));
        wait(&mut record, WaitingReason::WaitingForHuman, json!({}), T0);
        let first = Timer { due_ms: T0 + 10_000, kind: TimerKind::Reminder { n: 1 } };
        fire(&mut record, first, T0 + 10_000);
        record.resume(true, json!({}), None, &at(T0 + 12_000)).unwrap();
        assert!(record.timers().is_empty());
        let stale = Timer { due_ms: T0 + 20_000, kind: TimerKind::Reminder { n: 2 } };
        assert_eq!(fire(&mut record, stale, T0 + 20_000), Fired::Stale);
        wait(&mut record, WaitingReason::WaitingForTool, json!({}), T0 + 30_000);
        assert!(record.timers().is_empty(), "only human waits are reminded");
        record.transition(Status::InProgress, None, None, json!({}), &at(T0 + 31_000)).unwrap();
        wait(&mut record, WaitingReason::WaitingForHuman, json!({}), T0 + 40_000);
        assert_eq!(record.timers(), [Timer { due_ms: T0 + 50_000, kind: TimerKind::Reminder { n: 2 } }]);
    }

    #[test]
    fn a_delay_wakes_the_intent_at_next_wakeup_at() {
        let mut record = record(json!({}));
        wait(&mut record, WaitingReason::WaitingForTime, json!({"next_wakeup_at": at(T0 + 3_000)}), T0);
        let wake = Timer { due_ms: T0 + 3_000, kind: TimerKind::Wake };
        assert_eq!((record.timers(), record.next_wakeup_ms()), (vec![wake], Some(T0 + 3_000)));
        assert_eq!(fire(&mut record, wake, T0 + 2_000), Fired::NotDue);
        assert_eq!(types(&fire(&mut record, wake, T0 + 3_000)), ["intent.in_progress"]);
        assert_eq!(fire(&mut record, wake, T0 + 3_000), Fired::Stale);
        // A wait for time without a wake time waits for a resume or the deadline.
        wait(&mut record, WaitingReason::WaitingForTime, json!({}), T0 + 4_000);
        assert!(record.timers().is_empty());
    }

    #[test]
    fn a_wake_up_before_its_wait_is_kept_and_applied_when_the_wait_starts() {
        let mut record = record(json!({}));
        record.transition(Status::InProgress, None, None, json!({}), &at(T0)).unwrap();
        let early = record.resume(true, json!({"input": {"ok": 1}}), Some("agent://acme/a"), &at(T0 + 1)).unwrap();
        assert_eq!((early.applied, early.reason, early.events.len()), (false, Some("wake_up_kept"), 0));
        assert!(record.timers().is_empty(), "nothing to wake while not waiting");
        wait(&mut record, WaitingReason::WaitingForHuman, json!({}), T0 + 1_000);
        let kept = Timer { due_ms: T0 + 1_000, kind: TimerKind::KeptWakeUp };
        assert_eq!(record.timers(), [kept]);
        let fired = fire(&mut record, kept, T0 + 1_000);
        let Fired::Applied(events) = &fired else { panic!("{fired:?}") };
        assert_eq!((events[0].status, events[0].details["kept"].as_bool()), (Status::InProgress, Some(true)));
        assert_eq!(events[0].details["input"]["ok"], 1);
        wait(&mut record, WaitingReason::WaitingForHuman, json!({}), T0 + 2_000);
        assert!(record.timers().is_empty(), "a kept wake-up is used once");
    }

    #[test]
    fn a_replica_folds_the_same_timer_state_from_the_events() {
        let mut owner = record(json!({"remind_after_seconds": 1, "escalate_to": "agent://acme/c", "max_reminders": 1}));
        let mut replica = owner.clone();
        let mut events = vec![wait(&mut owner, WaitingReason::WaitingForHuman, json!({}), T0)];
        for timer in [
            Timer { due_ms: T0 + 1_000, kind: TimerKind::Reminder { n: 1 } },
            Timer { due_ms: T0 + 2_000, kind: TimerKind::Escalation },
        ] {
            let Fired::Applied(fired) = fire(&mut owner, timer, timer.due_ms) else { panic!() };
            events.extend(fired);
        }
        for event in &events {
            assert!(replica.apply_remote(event).unwrap());
        }
        assert_eq!(replica, owner);
    }

    #[test]
    fn timer_kinds_round_trip_through_their_codes() {
        for kind in [
            TimerKind::Deadline,
            TimerKind::Reminder { n: 7 },
            TimerKind::Escalation,
            TimerKind::Wake,
            TimerKind::KeptWakeUp,
        ] {
            let (tag, n) = kind.code();
            assert_eq!(TimerKind::from_code(tag, n), Some(kind));
        }
        assert_eq!(TimerKind::from_code(0, 0), None);
    }
}
