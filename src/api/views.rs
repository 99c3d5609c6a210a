//! JSON shapes of intents and events as the AXME API returns them.

use serde_json::{Value, json};

use crate::intent::{IntentRecord, LifecycleEvent, Status, WaitingReason};
use crate::store::StoredIntent;

/// The `intent` object of `GET /v1/intents/{id}` (AXP `api.intents.get.response.intent`, plus
/// the fields the spec allows a node to add: result, error, seq, handler, policy).
pub fn intent(stored: &StoredIntent) -> Value {
    let record = &stored.record;
    let mut view = json!({
        "intent_id": record.intent_id,
        "intent_type": record.intent_type,
        "correlation_id": record.correlation_id,
        "from_agent": record.from_agent,
        "to_agent": record.to_agent,
        "reply_to": record.reply_to,
        "payload": record.payload,
        "status": record.status(),
        "lifecycle_status": record.status(),
        "legacy_status": record.status().legacy(),
        "waiting_reason": record.waiting_reason(),
        "lifecycle_waiting_reason": record.waiting_reason(),
        "seq": record.seq(),
        "handler": record.handler(),
        "pending_with": pending_with(record),
        "created_at": record.created_at,
        "updated_at": record.updated_at(),
        "result": record.result(),
        "error": record.error(),
        "policy_generation": record.policy_generation(),
        "controls": record.controls(),
        "grants": record.grants(),
        "envelope": record.envelope(),
        "remind_count": record.remind_count(),
        "next_wakeup_at": record.next_wakeup_ms().and_then(rfc3339_of_ms),
    });
    if let Value::Object(map) = &mut view {
        for (name, value) in &record.options {
            map.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    view
}

/// Who holds the intent now; nobody once it is terminal.
fn pending_with(record: &IntentRecord) -> Value {
    if record.status().is_terminal() {
        return Value::Null;
    }
    let kind = match record.waiting_reason() {
        Some(WaitingReason::WaitingForHuman) => "human",
        Some(WaitingReason::WaitingForTime) => "internal",
        _ => "agent",
    };
    json!({"type": kind, "ref": record.handler(), "name": record.handler()})
}

pub fn event(event: &LifecycleEvent) -> Value {
    serde_json::to_value(event).expect("events serialise")
}

/// One delivery on an agent's listen stream: `seq` is the agent-feed cursor, which grows
/// across intents, while `intent_seq` is the intent's own position.
pub fn delivery(stored: &StoredIntent) -> Value {
    let record = &stored.record;
    json!({
        "intent_id": record.intent_id,
        "seq": stored.cursor,
        "intent_seq": record.seq(),
        "event_type": frame_name(record.status()),
        "status": record.status(),
        "waiting_reason": record.waiting_reason(),
        "at": record.updated_at(),
        "intent_type": record.intent_type,
        "correlation_id": record.correlation_id,
        "from_agent": record.from_agent,
        "to_agent": record.to_agent,
        "reply_to": record.reply_to,
        "payload": record.payload,
    })
}

/// The SSE event name of a delivery or event frame.
pub fn frame_name(status: Status) -> String {
    format!("intent.{}", status.as_str().to_ascii_lowercase())
}

/// RFC 3339 (UTC, milliseconds) of a unix ms instant.
fn rfc3339_of_ms(ms: u64) -> Option<String> {
    let at = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
