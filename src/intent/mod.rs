//! The intent domain of AXP, free of I/O: statuses, waiting reasons, event types, the transition
//! table, the durable intent record and the lifecycle events it produces.
//!
//! Nothing outside this module writes an intent's status: every change goes through
//! [`IntentRecord::transition`], which asks [`check_transition`] whether it is legal. Storage,
//! delivery and the HTTP shapes live elsewhere.

mod event;
mod human_task;
mod lifecycle;
mod record;
mod status;
mod timers;

pub use event::{EventType, LifecycleEvent};
pub use human_task::{
    Answer, Decision, FieldKind, FormField, FormSchema, HumanTask, REJECTED, TASK_ACTOR, TaskError, TaskType, is_email,
};
pub use lifecycle::{LifecycleError, check_transition};
#[cfg(test)]
pub(crate) use record::sample;
pub use record::{IntentRecord, NewIntent, PolicyUpdate, ResolveOutcome, ResumeOutcome};
pub use status::{Status, UnknownName, WaitingReason};
pub use timers::{DEFAULT_MAX_REMINDERS, Fired, TIMER_ACTOR, Timer, TimerKind, TimerState, parse_ms};
