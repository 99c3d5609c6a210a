//! The custom Matrix events nodes exchange, and the checks a receiver applies to their content.
//!
//! - `axp.route.v1` (state): the handler address a room carries and the two nodes in it.
//! - `axp.intent.v1`: new intents, initiator's node to handler's node, with their first events.
//! - `axp.lifecycle.v1`: events the owner appended, handler's node to initiator's node.
//! - `axp.control.v1`: requests of the initiator (cancel, resume) for the owner to sequence.
//! - `axp.transfer.v1`: an intent whose handler moved to another node, initiator's node to the
//!   new handler's node, with its whole log; the receiver becomes the owner and goes on at the
//!   next seq. The initiator's node sends it because it is the one node that always knows
//!   where an intent's owner is (the old owner tells it with `intent.transfer`).
//!
//! Each message event carries `items`, so that several intents or events bound for the same
//! room can share one Matrix event under load, either as plain JSON or compressed (the two
//! forms are specified in `batch`). Every event is end-to-end encrypted on the wire.

use serde::{Deserialize, Serialize};

use crate::intent::{IntentRecord, LifecycleEvent};

pub const ROUTE_EVENT: &str = "axp.route.v1";
pub const INTENT_EVENT: &str = "axp.intent.v1";
pub const LIFECYCLE_EVENT: &str = "axp.lifecycle.v1";
pub const CONTROL_EVENT: &str = "axp.control.v1";
pub const TRANSFER_EVENT: &str = "axp.transfer.v1";

/// Matrix refuses events over 64 KiB; stay well below with room for encryption overhead
/// (base64 of the ciphertext grows it by a third).
pub const MAX_EVENT_CONTENT_BYTES: usize = 40 * 1024;

/// State of a route room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteState {
    /// The handler address the room carries intents for.
    pub address: String,
    /// The initiator's node: (org, node id).
    pub initiator: NodeRef,
    pub handler: NodeRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRef {
    pub org: String,
    pub node: String,
}

/// One intent handed to its handler's node: the record as the initiator's node created it and
/// the events it recorded (seq 1 and 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentItem {
    pub record: IntentRecord,
    pub events: Vec<LifecycleEvent>,
}

/// An intent handed to the node of its new handler: the record and the whole log, which ends
/// with the `intent.transfer` that named the new handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferItem {
    pub record: IntentRecord,
    pub events: Vec<LifecycleEvent>,
}

/// Events the owner appended to one intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleItem {
    pub intent_id: String,
    pub events: Vec<LifecycleEvent>,
}

/// A request the initiator's side makes of the intent's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlItem {
    /// Unique per request: the owner applies each request once, however often it arrives.
    pub request_id: String,
    pub intent_id: String,
    /// The initiator-side address (or key) that asked.
    pub actor: String,
    #[serde(flatten)]
    pub action: ControlAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ControlAction {
    Cancel {
        reason: String,
    },
    Resume {
        approve: bool,
        details: serde_json::Value,
    },
    /// The replica missed events: send again every event after `after_seq`.
    Resend {
        after_seq: u64,
    },
}

impl ControlItem {
    /// The actor as the owner records it: the initiator's node speaks only for its own org.
    pub fn actor_for(&self, peer: &NodeRef) -> String {
        let prefix = format!("agent://{}/", peer.org);
        if self.actor.starts_with(&prefix) { self.actor.clone() } else { format!("node:{}", peer.node) }
    }
}

/// The items of a message event. Senders build the content with `batch::pack`, which may
/// compress it; receivers read either form (`batch::EncodedItems`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "super::batch::EncodedItems", bound(deserialize = "T: serde::de::DeserializeOwned"))]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// Why a received intent is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentRefusal {
    #[error("from_agent {from_agent} is not an address of the sending org {sender_org}")]
    ForeignInitiator { from_agent: String, sender_org: String },
    #[error("to_agent {to_agent} is not the address this room carries ({room_address})")]
    WrongRoom { to_agent: String, room_address: String },
    #[error("the intent arrives with {count} events in status {status}; expected seq 1-2 ending SUBMITTED")]
    NotFresh { count: usize, status: String },
    #[error("the intent's human_task is not valid: {message}")]
    BadHumanTask { message: String },
    #[error("the handler {handler} is not the address this room carries ({room_address})")]
    WrongHandler { handler: String, room_address: String },
    #[error("the log is not seq 1 to {seq} ending with the intent.transfer to this room's address")]
    BrokenLog { seq: u64 },
}

/// The org part of an agent address.
fn org_of(address: &str) -> Option<&str> {
    address.strip_prefix("agent://").and_then(|rest| rest.split('/').next())
}

/// Only the initiator's node speaks for an intent's initiator.
fn check_initiator(record: &IntentRecord, sender_org: &str) -> Result<(), IntentRefusal> {
    if org_of(&record.from_agent) == Some(sender_org) {
        return Ok(());
    }
    Err(IntentRefusal::ForeignInitiator { from_agent: record.from_agent.clone(), sender_org: sender_org.to_owned() })
}

impl IntentItem {
    /// Checks what a handler's node must know before it adopts an intent: the sender speaks
    /// for its own org only, the intent belongs in this room, and it arrives as just submitted.
    pub fn check(&self, sender_org: &str, room_address: &str) -> Result<(), IntentRefusal> {
        let record = &self.record;
        check_initiator(record, sender_org)?;
        if record.to_agent != room_address {
            return Err(IntentRefusal::WrongRoom {
                to_agent: record.to_agent.clone(),
                room_address: room_address.to_owned(),
            });
        }
        let seqs: Vec<u64> = self.events.iter().map(|event| event.seq).collect();
        if record.seq() != 2 || seqs != [1, 2] || record.status() != crate::intent::Status::Submitted {
            return Err(IntentRefusal::NotFresh { count: self.events.len(), status: record.status().to_string() });
        }
        // This node starts the task, so it checks it as its own API would at create.
        if let Some(task) = record.options.get("human_task") {
            crate::intent::HumanTask::parse(task)
                .map_err(|error| IntentRefusal::BadHumanTask { message: error.to_string() })?;
        }
        Ok(())
    }
}

impl TransferItem {
    /// Checks what the new handler's node must know before it takes an intent over: the
    /// sender is the initiator's node, the new handler is this room's address, and the log is
    /// complete and ends with the transfer to it.
    pub fn check(&self, sender_org: &str, room_address: &str) -> Result<(), IntentRefusal> {
        let record = &self.record;
        check_initiator(record, sender_org)?;
        if record.handler() != room_address {
            return Err(IntentRefusal::WrongHandler {
                handler: record.handler().to_owned(),
                room_address: room_address.to_owned(),
            });
        }
        let complete = self.events.iter().enumerate().all(|(index, event)| event.seq == index as u64 + 1);
        let ends_in_transfer = self.events.last().is_some_and(|last| {
            last.event_type == crate::intent::EventType::Transfer && last.handler.as_deref() == Some(room_address)
        });
        if !complete || !ends_in_transfer || self.events.len() as u64 != record.seq() {
            return Err(IntentRefusal::BrokenLog { seq: record.seq() });
        }
        Ok(())
    }

    /// Whether the item fits in one Matrix event.
    pub fn fits_one_event(&self) -> bool {
        serde_json::to_vec(self).is_ok_and(|bytes| bytes.len() + 32 <= MAX_EVENT_CONTENT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::intent::NewIntent;

    fn item(from: &str, to: &str) -> IntentItem {
        let new = NewIntent {
            intent_type: "intent.t.v1".into(),
            correlation_id: "c".into(),
            from_agent: from.into(),
            to_agent: to.into(),
            reply_to: None,
            payload: json!({}),
            options: Map::new(),
        };
        let (record, events) = IntentRecord::submit(new, "id".into(), from, "t");
        IntentItem { record, events }
    }

    #[test]
    fn a_fresh_intent_from_the_senders_org_for_this_room_is_accepted() {
        assert_eq!(item("agent://acme/a", "agent://globex/b").check("acme", "agent://globex/b"), Ok(()));
    }

    #[test]
    fn senders_cannot_speak_for_other_orgs_or_misroute_or_replay_history() {
        let foreign = item("agent://initech/a", "agent://globex/b");
        assert!(matches!(foreign.check("acme", "agent://globex/b"), Err(IntentRefusal::ForeignInitiator { .. })));
        let misrouted = item("agent://acme/a", "agent://globex/other");
        assert!(matches!(misrouted.check("acme", "agent://globex/b"), Err(IntentRefusal::WrongRoom { .. })));
        let mut advanced = item("agent://acme/a", "agent://globex/b");
        advanced.events.pop();
        assert!(matches!(advanced.check("acme", "agent://globex/b"), Err(IntentRefusal::NotFresh { .. })));
    }

    #[test]
    fn a_human_task_the_handlers_node_would_refuse_at_create_is_refused() {
        let mut with_task = item("agent://acme/a", "agent://globex/b");
        with_task.record.options.insert("human_task".into(), json!({"title": "Ship?", "task_type": "approval"}));
        assert_eq!(with_task.check("acme", "agent://globex/b"), Ok(()));
        with_task.record.options.insert("human_task".into(), json!({"title": "Ship?", "task_type": "dance"}));
        let refused = with_task.check("acme", "agent://globex/b");
        assert!(matches!(refused, Err(IntentRefusal::BadHumanTask { .. })), "{refused:?}");
    }

    #[test]
    fn a_transfer_carries_the_whole_log_ending_with_the_move_to_this_room() {
        let IntentItem { mut record, mut events } = item("agent://acme/a", "agent://globex/b");
        events.push(record.transfer("agent://initech/c", None, Some("agent://globex/b"), "t").unwrap());
        let transfer = TransferItem { record, events };
        assert_eq!(transfer.check("acme", "agent://initech/c"), Ok(()));
        assert!(transfer.fits_one_event());
        assert!(matches!(transfer.check("globex", "agent://initech/c"), Err(IntentRefusal::ForeignInitiator { .. })));
        assert!(matches!(transfer.check("acme", "agent://initech/x"), Err(IntentRefusal::WrongHandler { .. })));
        let mut truncated = transfer.clone();
        truncated.events.remove(1);
        assert!(matches!(truncated.check("acme", "agent://initech/c"), Err(IntentRefusal::BrokenLog { seq: 3 })));
        let mut untransferred = item("agent://acme/a", "agent://initech/c");
        untransferred.events.pop();
        let fresh = TransferItem { record: untransferred.record, events: untransferred.events };
        assert!(matches!(fresh.check("acme", "agent://initech/c"), Err(IntentRefusal::BrokenLog { .. })));
    }

    #[test]
    fn control_actors_outside_the_peers_org_become_the_peer_node() {
        let peer = NodeRef { org: "acme".into(), node: "acme-node-1".into() };
        let control = |actor: &str| ControlItem {
            request_id: "q".into(),
            intent_id: "i".into(),
            actor: actor.into(),
            action: ControlAction::Cancel { reason: "r".into() },
        };
        assert_eq!(control("agent://acme/ops/a").actor_for(&peer), "agent://acme/ops/a");
        assert_eq!(control("agent://globex/ops/a").actor_for(&peer), "node:acme-node-1");
        let resend = ControlItem { action: ControlAction::Resend { after_seq: 4 }, ..control("node:x") };
        let wire = serde_json::to_value(&resend).unwrap();
        assert_eq!(wire["action"], "resend");
        assert_eq!(serde_json::from_value::<ControlItem>(wire).unwrap(), resend);
        let wire = serde_json::to_value(control("x")).unwrap();
        assert_eq!(wire, json!({"request_id": "q", "intent_id": "i", "actor": "x", "action": "cancel", "reason": "r"}));
    }
}
