//! Durable timers over real HTTP on a real node: deadlines, reminders and escalation, delays,
//! a wake-up kept for a wait that starts later, and timers that come due while the node is
//! SIGKILLed, each fired exactly once after the restart.

mod common;

use std::time::Duration;

use common::{Api, TestNode, assert_gapless, eventually, intent_body};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/test/initiator";
const HANDLER: &str = "agent://acme/test/desk";
const BOSS: &str = "agent://acme/test/boss";
const LIMIT: Duration = Duration::from_secs(15);

/// RFC 3339 `ms` milliseconds from now (negative: in the past).
fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn create(api: &Api, options: Value) -> String {
    let mut body = intent_body(FROM, HANDLER);
    for (name, value) in options.as_object().unwrap() {
        body[name] = value.clone();
    }
    let (status, body) = api.post("/v1/intents", body).await;
    assert_eq!(status, 200, "{body}");
    body["intent_id"].as_str().unwrap().to_owned()
}

async fn wait(api: &Api, id: &str, reason: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"status": "WAITING", "waiting_reason": reason});
    for (name, value) in extra.as_object().unwrap() {
        body[name] = value.clone();
    }
    api.post(&format!("/v1/intents/{id}/transition"), body).await
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|event| event["event_type"].as_str().unwrap()).collect()
}

fn count(events: &[Value], event_type: &str) -> usize {
    events.iter().filter(|event| event["event_type"] == event_type).count()
}

/// The event log once it holds an event of `event_type`.
async fn log_with(api: &Api, id: &str, event_type: &str) -> Vec<Value> {
    eventually(event_type, LIMIT, async || {
        let events = api.events(id).await;
        (count(&events, event_type) > 0).then_some(events)
    })
    .await
}

fn at_ms(event: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(event["at"].as_str().unwrap()).unwrap().timestamp_millis()
}

#[tokio::test]
async fn a_deadline_times_the_intent_out_once_and_a_past_one_at_once() {
    let node = TestNode::start();
    let api = node.admin();
    let id = create(&api, json!({"deadline_at": in_ms(1200)})).await;
    let (_, body) = api.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(body["intent"]["status"], "SUBMITTED");
    let events = log_with(&api, &id, "intent.timed_out").await;
    assert_gapless(&events);
    assert_eq!(types(&events), ["intent.created", "intent.submitted", "intent.timed_out"]);
    let timed_out = &events[2];
    assert_eq!((timed_out["status"].as_str(), timed_out["actor"].as_str()), (Some("TIMED_OUT"), Some("node:timer")));
    assert!(at_ms(timed_out) >= at_ms(&events[0]) + 1000, "fired early: {events:#?}");
    assert_eq!(api.status(&id).await, "TIMED_OUT");
    let (status, body) = api.post(&format!("/v1/intents/{id}/resume"), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("intent_terminal")), "{body}");

    // Chosen: a deadline already past is accepted and times the intent out right away.
    let past = create(&api, json!({"deadline_at": in_ms(-60_000)})).await;
    let events = log_with(&api, &past, "intent.timed_out").await;
    assert_eq!(types(&events), ["intent.created", "intent.submitted", "intent.timed_out"]);

    // An intent that ends before its deadline is not touched by it.
    let done = create(&api, json!({"deadline_at": in_ms(800)})).await;
    let (status, body) =
        api.post(&format!("/v1/intents/{done}/resolve"), json!({"status": "COMPLETED", "result": {}})).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&api.events(&done).await, "intent.timed_out"), 0);
    assert_eq!(api.status(&done).await, "COMPLETED");

    let mut bad = intent_body(FROM, HANDLER);
    bad["deadline_at"] = json!("tomorrow");
    let (status, body) = api.post("/v1/intents", bad).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_field")), "{body}");
}

#[tokio::test]
async fn reminders_come_at_their_interval_up_to_the_limit_then_the_task_escalates() {
    let node = TestNode::start();
    let api = node.admin();
    let options =
        json!({"remind_after_seconds": 1, "remind_interval_seconds": 1, "max_reminders": 2, "escalate_to": BOSS});
    let id = create(&api, options).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(count(&api.events(&id).await, "intent.reminder"), 0, "no reminders before the human wait");
    let (status, body) = wait(&api, &id, "WAITING_FOR_HUMAN", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let events = log_with(&api, &id, "intent.transfer").await;
    assert_gapless(&events);
    assert_eq!(
        types(&events)[2..],
        ["intent.waiting", "intent.reminder", "intent.reminder", "intent.escalated", "intent.transfer"]
    );
    let (waiting, first, second, escalated) = (&events[2], &events[3], &events[4], &events[5]);
    assert_eq!((first["details"]["n"].as_u64(), first["details"]["of"].as_u64()), (Some(1), Some(2)));
    assert_eq!((second["details"]["n"].as_u64(), second["details"]["of"].as_u64()), (Some(2), Some(2)));
    assert_eq!(first["details"]["notification"]["to"], HANDLER);
    assert_eq!(
        (first["status"].as_str(), first["waiting_reason"].as_str()),
        (Some("WAITING"), Some("WAITING_FOR_HUMAN"))
    );
    for (earlier, later) in [(waiting, first), (first, second), (second, escalated)] {
        let gap = at_ms(later) - at_ms(earlier);
        assert!((950..5000).contains(&gap), "{gap} ms between {} and {}", earlier["seq"], later["seq"]);
    }
    assert_eq!(escalated["details"]["escalated_to"], BOSS);
    assert_eq!(
        (escalated["details"]["reassigned"].as_bool(), escalated["details"]["from_handler"].as_str()),
        (Some(true), Some(HANDLER))
    );
    assert_eq!(
        (events[6]["handler"].as_str(), events[6]["details"]["from_handler"].as_str()),
        (Some(BOSS), Some(HANDLER))
    );

    let (_, body) = api.get(&format!("/v1/intents/{id}")).await;
    let intent = &body["intent"];
    assert_eq!((intent["handler"].as_str(), intent["status"].as_str()), (Some(BOSS), Some("WAITING")));
    assert_eq!(intent["remind_count"], 2);
    let (_, listed) = api.get(&format!("/v1/intents?to_agent={BOSS}")).await;
    assert!(listed["intents"].as_array().unwrap().iter().any(|intent| intent["intent_id"] == id), "{listed}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(api.events(&id).await.len(), events.len(), "nothing after the escalation");
}

#[tokio::test]
async fn a_delay_wakes_the_intent_at_next_wakeup_at() {
    let node = TestNode::start();
    let api = node.admin();
    let id = create(&api, json!({})).await;
    let path = format!("/v1/intents/{id}/transition");
    let (status, body) = wait(&api, &id, "WAITING_FOR_TIME", json!({"next_wakeup_at": "soon"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_field")), "{body}");
    let (status, body) = wait(&api, &id, "WAITING_FOR_HUMAN", json!({"next_wakeup_at": in_ms(500)})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_field")), "{body}");
    let wake_at = in_ms(1000);
    let (status, body) = wait(&api, &id, "WAITING_FOR_TIME", json!({"next_wakeup_at": wake_at})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["details"]["next_wakeup_at"], wake_at.as_str());
    assert_eq!(body["intent"]["next_wakeup_at"], wake_at.as_str());
    let events = log_with(&api, &id, "intent.in_progress").await;
    assert_gapless(&events);
    assert_eq!(types(&events)[2..], ["intent.waiting", "intent.in_progress"]);
    assert_eq!(events[3]["actor"], "node:timer");
    assert!(at_ms(&events[3]) >= chrono::DateTime::parse_from_rfc3339(&wake_at).unwrap().timestamp_millis());
    let (_, body) = api.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(body["intent"]["next_wakeup_at"], Value::Null);

    // The same in `details`, and a wait that ends otherwise leaves its wake-up stale.
    let (status, body) = api
        .post(&path, json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_TIME", "details": {"next_wakeup_at": in_ms(800)}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.post(&format!("/v1/intents/{id}/resume"), json!({})).await;
    assert_eq!((status, body["applied"].as_bool()), (200, Some(true)), "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = api.events(&id).await;
    assert_eq!(types(&events)[2..], ["intent.waiting", "intent.in_progress", "intent.waiting", "intent.in_progress"]);
    assert_ne!(events[5]["actor"], "node:timer");
}

#[tokio::test]
async fn a_wake_up_that_comes_before_its_wait_is_kept_for_it() {
    let node = TestNode::start();
    let api = node.admin();
    let id = create(&api, json!({})).await;
    let (status, body) = api.post(&format!("/v1/intents/{id}/transition"), json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        api.post(&format!("/v1/intents/{id}/resume"), json!({"reason": "approved early", "decision": "yes"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["applied"].as_bool(), body["reason"].as_str()), (Some(false), Some("wake_up_kept")));
    let (status, body) = wait(&api, &id, "WAITING_FOR_HUMAN", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let events = eventually("the kept wake-up", LIMIT, async || {
        let events = api.events(&id).await;
        (events.len() == 5).then_some(events)
    })
    .await;
    assert_gapless(&events);
    assert_eq!(types(&events)[2..], ["intent.in_progress", "intent.waiting", "intent.in_progress"]);
    let woken = &events[4]["details"];
    assert_eq!((woken["kept"].as_bool(), woken["reason"].as_str()), (Some(true), Some("approved early")));
    assert_eq!(woken["input"]["decision"], "yes");
    // Used once: the next wait waits.
    wait(&api, &id, "WAITING_FOR_HUMAN", json!({})).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(api.status(&id).await, "WAITING");
}

#[tokio::test]
async fn timers_due_while_the_node_was_killed_fire_once_after_the_restart() {
    let mut node = TestNode::start();
    let api = node.admin();
    let deadline = create(&api, json!({"deadline_at": in_ms(1000)})).await;
    let far = create(&api, json!({"deadline_at": in_ms(120_000)})).await;
    let options =
        json!({"remind_after_seconds": 1, "remind_interval_seconds": 1, "max_reminders": 2, "escalate_to": BOSS});
    let reminded = create(&api, options).await;
    assert_eq!(wait(&api, &reminded, "WAITING_FOR_HUMAN", json!({})).await.0, 200);
    let delayed = create(&api, json!({})).await;
    assert_eq!(wait(&api, &delayed, "WAITING_FOR_TIME", json!({"next_wakeup_at": in_ms(1000)})).await.0, 200);
    node.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    node.restart();
    let api = node.admin();

    let check = async |api: &Api| {
        let events = api.events(&deadline).await;
        assert_gapless(&events);
        assert_eq!(types(&events), ["intent.created", "intent.submitted", "intent.timed_out"]);
        let events = api.events(&delayed).await;
        assert_gapless(&events);
        assert_eq!(types(&events)[2..], ["intent.waiting", "intent.in_progress"]);
        let events = api.events(&reminded).await;
        assert_gapless(&events);
        let expected = ["intent.waiting", "intent.reminder", "intent.reminder", "intent.escalated", "intent.transfer"];
        assert_eq!(types(&events)[2..], expected);
        // One late reminder at start, the next an interval after it: no burst.
        assert!(at_ms(&events[4]) - at_ms(&events[3]) >= 950, "{events:#?}");
        assert_eq!(types(&api.events(&far).await), ["intent.created", "intent.submitted"]);
    };
    log_with(&api, &deadline, "intent.timed_out").await;
    log_with(&api, &delayed, "intent.in_progress").await;
    log_with(&api, &reminded, "intent.transfer").await;
    check(&api).await;
    // Nothing fires twice across further crashes.
    node.restart();
    let api = node.admin();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    check(&api).await;
    let (_, body) = api.get(&format!("/v1/intents/{far}")).await;
    assert_eq!(body["intent"]["status"], "SUBMITTED");
}
