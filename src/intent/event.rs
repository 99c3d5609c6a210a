//! Lifecycle events: one entry of an intent's ordered log.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Status, WaitingReason};

/// The `intent.*` event types of the AXP spec. Types this node does not know are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum EventType {
    Created,
    Submitted,
    Delivered,
    Acknowledged,
    InProgress,
    Waiting,
    Completed,
    Failed,
    Canceled,
    TimedOut,
    Transfer,
    Timeout,
    Reminder,
    Escalated,
    DeliveryFailed,
    HumanTaskAssigned,
    Other(String),
}

const NAMED: [(EventType, &str); 16] = [
    (EventType::Created, "intent.created"),
    (EventType::Submitted, "intent.submitted"),
    (EventType::Delivered, "intent.delivered"),
    (EventType::Acknowledged, "intent.acknowledged"),
    (EventType::InProgress, "intent.in_progress"),
    (EventType::Waiting, "intent.waiting"),
    (EventType::Completed, "intent.completed"),
    (EventType::Failed, "intent.failed"),
    (EventType::Canceled, "intent.canceled"),
    (EventType::TimedOut, "intent.timed_out"),
    (EventType::Transfer, "intent.transfer"),
    (EventType::Timeout, "intent.timeout"),
    (EventType::Reminder, "intent.reminder"),
    (EventType::Escalated, "intent.escalated"),
    (EventType::DeliveryFailed, "intent.delivery_failed"),
    (EventType::HumanTaskAssigned, "intent.human_task_assigned"),
];

impl EventType {
    /// The event that records a move into `status`.
    pub fn entering(status: Status) -> EventType {
        match status {
            Status::Created => EventType::Created,
            Status::Submitted => EventType::Submitted,
            Status::Delivered => EventType::Delivered,
            Status::Acknowledged => EventType::Acknowledged,
            Status::InProgress => EventType::InProgress,
            Status::Waiting => EventType::Waiting,
            Status::Completed => EventType::Completed,
            Status::Failed => EventType::Failed,
            Status::Canceled => EventType::Canceled,
            Status::TimedOut => EventType::TimedOut,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            EventType::Other(name) => name,
            known => NAMED.iter().find(|(event, _)| event == known).map(|(_, name)| *name).unwrap_or_default(),
        }
    }
}

impl From<String> for EventType {
    fn from(name: String) -> Self {
        NAMED.iter().find(|(_, known)| *known == name).map(|(event, _)| event.clone()).unwrap_or(EventType::Other(name))
    }
}

impl From<EventType> for String {
    fn from(event: EventType) -> Self {
        event.as_str().to_owned()
    }
}

/// One entry of an intent's log. `status` is the status after the event; for events that do
/// not change the status it repeats the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub intent_id: String,
    pub seq: u64,
    pub event_type: EventType,
    pub status: Status,
    pub waiting_reason: Option<WaitingReason>,
    pub handler: Option<String>,
    pub actor: Option<String>,
    pub at: String,
    pub details: Value,
}

impl LifecycleEvent {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_event_types_round_trip() {
        for (event, name) in NAMED {
            assert_eq!(event.as_str(), name);
            assert_eq!(EventType::from(name.to_owned()), event);
        }
        let future = EventType::from("intent.something_new".to_owned());
        assert_eq!(future, EventType::Other("intent.something_new".into()));
        assert_eq!(serde_json::to_string(&future).unwrap(), "\"intent.something_new\"");
    }

    #[test]
    fn every_status_has_an_entering_event_named_after_it() {
        for status in Status::ALL {
            let name = EventType::entering(status).as_str().to_owned();
            assert_eq!(name, format!("intent.{}", status.as_str().to_ascii_lowercase()));
        }
    }
}
