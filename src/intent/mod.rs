//! The intent domain of AXP, free of I/O: statuses, waiting reasons, event types, the transition
//! table, the durable intent record and the lifecycle events it produces.
//!
//! Nothing outside this module writes an intent's status: every change goes through
//! [`IntentRecord::transition`], which asks [`check_transition`] whether it is legal. Storage,
//! delivery and the HTTP shapes live elsewhere.

mod event;
mod lifecycle;
mod record;
mod status;

pub use event::{EventType, LifecycleEvent};
pub use lifecycle::{LifecycleError, check_transition};
pub use record::{IntentRecord, NewIntent, PolicyUpdate, ResolveOutcome, ResumeOutcome};
pub use status::{Status, UnknownName, WaitingReason};
