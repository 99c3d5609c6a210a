//! Intent lifecycles over real HTTP and a real sled store: every legal and illegal
//! transition, event logs, resolve/resume/controls/policy, idempotency and request errors.

mod common;

use common::{Api, TestNode, assert_gapless, intent_body};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/test/initiator";

/// The spec's transition table (AXP lifecycle v1 §1.3), written out independently of the node.
const LEGAL: &[(&str, &[&str])] = &[
    ("SUBMITTED", &["DELIVERED", "IN_PROGRESS", "WAITING", "FAILED", "CANCELED"]),
    ("DELIVERED", &["ACKNOWLEDGED", "IN_PROGRESS", "WAITING", "FAILED", "CANCELED"]),
    ("ACKNOWLEDGED", &["IN_PROGRESS", "WAITING", "FAILED", "CANCELED"]),
    ("IN_PROGRESS", &["WAITING", "COMPLETED", "FAILED", "CANCELED"]),
    ("WAITING", &["IN_PROGRESS", "FAILED", "CANCELED"]),
];
const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELED"];

fn legal(from: &str, to: &str) -> bool {
    LEGAL.iter().any(|(f, tos)| *f == from && tos.contains(&to))
}

async fn transition(api: &Api, id: &str, status: &str) -> (u16, Value) {
    let mut body = json!({"status": status});
    if status == "WAITING" {
        body["waiting_reason"] = json!("WAITING_FOR_TOOL");
    }
    api.post(&format!("/v1/intents/{id}/transition"), body).await
}

async fn resolve(api: &Api, id: &str, status: &str) -> (u16, Value) {
    let body = match status {
        "COMPLETED" => json!({"status": status, "result": {"done": true}}),
        "FAILED" => json!({"status": status, "error": {"code": "boom", "message": "it broke"}}),
        _ => json!({"status": status, "reason": "no longer needed"}),
    };
    api.post(&format!("/v1/intents/{id}/resolve"), body).await
}

/// Moves a new intent to `target` along a legal path; each handler has its own address so that
/// polling one does not lease another.
async fn intent_in(api: &Api, target: &str, handler: &str) -> String {
    let id = api.send(FROM, handler).await;
    let path: &[&str] = match target {
        "SUBMITTED" => &[],
        "DELIVERED" => &["poll"],
        "ACKNOWLEDGED" => &["poll", "ACKNOWLEDGED"],
        "IN_PROGRESS" => &["IN_PROGRESS"],
        "WAITING" => &["WAITING"],
        terminal => &["IN_PROGRESS", terminal],
    };
    for step in path {
        let (status, body) = match *step {
            "poll" => api.get(&format!("/v1/intents?status=pending&to_agent={handler}")).await,
            s if TERMINAL.contains(&s) => resolve(api, &id, s).await,
            s => transition(api, &id, s).await,
        };
        assert_eq!(status, 200, "step {step} towards {target}: {body}");
    }
    assert_eq!(api.status(&id).await, target);
    id
}

#[tokio::test]
async fn every_legal_transition_applies_and_every_illegal_one_is_refused_unchanged() {
    let node = TestNode::start();
    let api = node.admin();
    let froms = ["SUBMITTED", "DELIVERED", "ACKNOWLEDGED", "IN_PROGRESS", "WAITING", "COMPLETED", "FAILED", "CANCELED"];
    let targets = ["ACKNOWLEDGED", "IN_PROGRESS", "WAITING", "COMPLETED", "FAILED", "CANCELED"];
    let mut case = 0;
    for from in froms {
        for to in targets {
            case += 1;
            let handler = format!("agent://acme/test/h{case}");
            let id = intent_in(&api, from, &handler).await;
            let before = api.events(&id).await;
            let (status, body) =
                if TERMINAL.contains(&to) { resolve(&api, &id, to).await } else { transition(&api, &id, to).await };
            // Resolving COMPLETED from any open status is legal: the node records the skipped
            // IN_PROGRESS first, so the log stays a legal path.
            let expected = legal(from, to) || (to == "COMPLETED" && !TERMINAL.contains(&from));
            if from == "ACKNOWLEDGED" && to == "ACKNOWLEDGED" {
                // Not a transition: acknowledging again (a retried ack) is a harmless no-op.
                assert_eq!((status, body["applied"].as_bool()), (200, Some(false)), "{body}");
                assert_eq!(body["reason"], "already_acknowledged");
                assert_eq!(api.events(&id).await, before, "a repeated ack must not touch the log");
            } else if expected {
                assert_eq!(status, 200, "{from} -> {to}: {body}");
                assert_eq!(api.status(&id).await, to, "{from} -> {to}");
                let after = api.events(&id).await;
                assert_gapless(&after);
                assert_eq!(after.last().unwrap()["status"], to);
            } else {
                assert_eq!(status, 409, "{from} -> {to} must be refused: {body}");
                let code = body["error"]["code"].as_str().unwrap();
                let wanted = if TERMINAL.contains(&from) { "intent_terminal" } else { "illegal_transition" };
                assert_eq!(code, wanted, "{from} -> {to}");
                assert!(body["error"]["message"].as_str().unwrap().contains(from), "{body}");
                assert_eq!(api.status(&id).await, from);
                assert_eq!(api.events(&id).await, before, "a refused transition must not touch the log");
            }
        }
    }
}

#[tokio::test]
async fn create_records_created_and_submitted_and_resolve_synthesizes_in_progress() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/test/worker").await;
    let events = api.events(&id).await;
    assert_eq!(events.len(), 2);
    assert_gapless(&events);
    assert_eq!(events[1]["status"], "SUBMITTED");

    let (status, body) = resolve(&api, &id, "COMPLETED").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["event_type"], "intent.completed");
    assert_eq!(body["event"]["status"], "COMPLETED");
    assert_eq!(body["intent"]["result"], json!({"done": true}));
    let types: Vec<_> = api.events(&id).await.iter().map(|e| e["event_type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types, ["intent.created", "intent.submitted", "intent.in_progress", "intent.completed"]);

    let (_, got) = api.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(got["intent"]["lifecycle_status"], "COMPLETED");
    assert_eq!(got["intent"]["legacy_status"], "done");
    assert_eq!(got["intent"]["pending_with"], Value::Null);
}

#[tokio::test]
async fn waiting_needs_a_reason_and_returns_to_in_progress() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/test/worker").await;
    let path = format!("/v1/intents/{id}/transition");
    let (status, body) = api.post(&path, json!({"status": "WAITING"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("waiting_reason_required")));
    let (status, body) = api.post(&path, json!({"status": "IN_PROGRESS", "waiting_reason": "WAITING_FOR_TOOL"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("waiting_reason_not_allowed")));
    let (status, body) = api.post(&path, json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_NOBODY"})).await;
    assert_eq!(status, 422);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("waiting_reason"), "{body}");
    let (status, body) = api.post(&path, json!({"status": "DELIVERED"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("status_not_settable")));

    let (status, body) = api.post(&path, json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_HUMAN"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["intent"]["waiting_reason"], "WAITING_FOR_HUMAN");
    assert_eq!(body["intent"]["pending_with"]["type"], "human");
    let (status, body) = api.post(&format!("/v1/intents/{id}/resume"), json!({"reason": "approved"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["applied"].as_bool(), body["intent"]["status"].as_str()), (Some(true), Some("IN_PROGRESS")));
    assert_eq!(body["intent"]["waiting_reason"], Value::Null);
    let (_, again) = api.post(&format!("/v1/intents/{id}/resume"), json!({})).await;
    assert_eq!((again["applied"].as_bool(), again["reason"].as_str()), (Some(false), Some("already_in_progress")));
    let events = api.events(&id).await;
    assert_gapless(&events);
    assert_eq!(events[2]["waiting_reason"], "WAITING_FOR_HUMAN");
    assert_eq!(events[3]["details"]["reason"], "approved");
}

#[tokio::test]
async fn controls_and_policy_are_compare_and_set() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/test/worker").await;
    let controls = format!("/v1/intents/{id}/controls");
    let (status, body) = api.post(&controls, json!({"controls_patch": {"attempt": 1}, "reason": "retry"})).await;
    assert_eq!((status, body["applied"].as_bool(), body["policy_generation"].as_u64()), (200, Some(true), Some(1)));
    let (_, stale) =
        api.post(&controls, json!({"controls_patch": {"attempt": 2}, "expected_policy_generation": 0})).await;
    assert_eq!((stale["applied"].as_bool(), stale["policy_generation"].as_u64()), (Some(false), Some(1)));
    assert_eq!(stale["reason"], "stale_policy_generation");
    let (_, current) =
        api.post(&controls, json!({"controls_patch": {"attempt": 2}, "expected_policy_generation": 1})).await;
    assert_eq!(current["policy_generation"], 2);
    let (status, body) =
        api.post(&format!("/v1/intents/{id}/policy"), json!({"grants_patch": {"agent://acme/ops": ["resume"]}})).await;
    assert_eq!((status, body["policy_generation"].as_u64()), (200, Some(3)), "{body}");
    let (status, body) = api.post(&format!("/v1/intents/{id}/policy"), json!({})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api.post(&controls, json!({"controls_patch": 5})).await;
    assert_eq!(status, 422);
    let (_, got) = api.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(got["intent"]["controls"], json!({"attempt": 2}));
    assert_eq!(got["intent"]["grants"], json!({"agent://acme/ops": ["resume"]}));
    // Policy changes are not lifecycle events.
    assert_eq!(api.events(&id).await.len(), 2);
}

#[tokio::test]
async fn resolve_with_a_stale_generation_applies_nothing() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/test/worker").await;
    let body = json!({"status": "COMPLETED", "result": {}, "expected_policy_generation": 4});
    let (status, answer) = api.post(&format!("/v1/intents/{id}/resolve"), body).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"ok": true, "applied": false, "reason": "stale_policy_generation", "policy_generation": 0})
    );
    assert_eq!(api.status(&id).await, "SUBMITTED");
}

#[tokio::test]
async fn resolve_requires_the_outcome_field_of_its_status() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/test/worker").await;
    let path = format!("/v1/intents/{id}/resolve");
    for (body, field) in [
        (json!({"status": "COMPLETED"}), "result"),
        (json!({"status": "FAILED"}), "error"),
        (json!({"status": "CANCELED"}), "reason"),
        (json!({"status": "IN_PROGRESS"}), "status"),
        (json!({"status": "DONE"}), "status"),
        (json!({}), "status"),
    ] {
        let (status, answer) = api.post(&path, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().starts_with(field), "{body}: {answer}");
    }
    assert_eq!(api.events(&id).await.len(), 2, "refused resolves change nothing");
}

#[tokio::test]
async fn idempotent_create_replays_the_first_answer_and_refuses_another_body() {
    let node = TestNode::start();
    let api = node.admin();
    let body = intent_body(FROM, "agent://acme/test/worker");
    let (first_status, first) = api.post_keyed("/v1/intents", body.clone(), Some("retry-1")).await;
    let (again_status, again) = api.post_keyed("/v1/intents", body.clone(), Some("retry-1")).await;
    assert_eq!((first_status, again_status), (200, 200));
    assert_eq!(first, again, "a replay answers exactly what the first call answered");

    // Key order and whitespace do not make a body different.
    let reordered: Value = serde_json::from_str(&serde_json::to_string_pretty(&body).unwrap()).unwrap();
    let (_, replay) = api.post_keyed("/v1/intents", reordered, Some("retry-1")).await;
    assert_eq!(replay["intent_id"], first["intent_id"]);

    let mut changed = body.clone();
    changed["payload"] = json!({"n": 2});
    let (status, conflict) = api.post_keyed("/v1/intents", changed, Some("retry-1")).await;
    assert_eq!((status, conflict["error"]["code"].as_str()), (409, Some("idempotency_conflict")));

    let (_, other) = api.post_keyed("/v1/intents", body.clone(), Some("retry-2")).await;
    assert_ne!(other["intent_id"], first["intent_id"]);
    // Keys are scoped by caller: another API key with the same Idempotency-Key is a new request.
    let other_key = node.api(&node.key_for(&[FROM]).await);
    let (_, theirs) = other_key.post_keyed("/v1/intents", body, Some("retry-1")).await;
    assert_ne!(theirs["intent_id"], first["intent_id"]);

    // Idempotent resolve: a retried resolve answers 200 with the same event, not 409.
    let id = first["intent_id"].as_str().unwrap();
    let resolve = json!({"status": "CANCELED", "reason": "dup test"});
    let path = format!("/v1/intents/{id}/resolve");
    let (s1, r1) = api.post_keyed(&path, resolve.clone(), Some("resolve-1")).await;
    let (s2, r2) = api.post_keyed(&path, resolve, Some("resolve-1")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(r1, r2);
    assert_eq!(api.events(id).await.len(), 3);
}

#[tokio::test]
async fn malformed_and_invalid_requests_get_clear_errors() {
    let node = TestNode::start_with(|config| {
        *config = config.replace("max_payload_bytes = 131072", "max_payload_bytes = 1000")
    });
    let api = node.admin();
    let cases = [
        (json!({"correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {}}), 422, "intent_type"),
        (
            json!({"intent_type": "Bad Type", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {}}),
            422,
            "intent_type",
        ),
        (json!({"intent_type": "intent.t.v1", "to_agent": "agent://acme/a/b", "payload": {}}), 422, "correlation_id"),
        (
            json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://target", "payload": {}}),
            422,
            "to_agent",
        ),
        (json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b"}), 422, "payload"),
        (
            json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": []}),
            422,
            "payload",
        ),
        (
            json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {}, "from_agent": FROM, "colour": 1}),
            422,
            "colour",
        ),
        (
            json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {}, "from_agent": FROM, "deadline_at": "tomorrow"}),
            422,
            "deadline_at",
        ),
        (
            json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {}, "from_agent": FROM, "max_reminders": 0}),
            422,
            "max_reminders",
        ),
        (
            json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {"blob": "x".repeat(2000)}, "from_agent": FROM}),
            413,
            "payload",
        ),
    ];
    for (mut body, status, field) in cases {
        body.as_object_mut().unwrap().entry("from_agent").or_insert(json!(FROM));
        let (got, answer) = api.post("/v1/intents", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{field} not named in {message:?}");
        assert_eq!(answer["error"]["retryable"], false);
    }
    // The admin key acts for every address, so it must say which one is sending.
    let anonymous =
        json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {}});
    let (status, answer) = api.post("/v1/intents", anonymous).await;
    assert_eq!(status, 422);
    assert!(answer["error"]["message"].as_str().unwrap().starts_with("from_agent"), "{answer}");
    let (_, too_big) = api.post("/v1/intents", json!({"intent_type": "intent.t.v1", "correlation_id": "c", "to_agent": "agent://acme/a/b", "payload": {"blob": "x".repeat(2000)}, "from_agent": FROM})).await;
    assert!(too_big["error"]["message"].as_str().unwrap().contains("1000"), "the limit is named: {too_big}");

    // Not JSON at all, and JSON that is not an object: 400.
    let raw = |body: &'static str| {
        api.http
            .post(format!("{}/v1/intents", api.url))
            .header("x-api-key", &api.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in ["{\"intent_type\":", "[1,2]"] {
        let response = raw(body).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    // An empty body with a JSON content type is an empty object where none is needed.
    let id = api.send(FROM, "agent://acme/a/b").await;
    let response = api
        .http
        .post(format!("{}/v1/intents/{id}/resume", api.url))
        .header("x-api-key", &api.key)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = api.get("/v1/intents/not-a-uuid").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_intent_id")));
    let (status, _) = api.get(&format!("/v1/intents/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, 404);
    let (status, body) = api.get(&format!("/v1/intents/{id}/events?since=-1")).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api.get("/v1/nothing/here").await;
    assert_eq!(status, 404);
    assert_eq!(api.events(&id).await.len(), 3, "only the resume changed the intent");
}

#[tokio::test]
async fn trace_id_is_echoed_and_every_answer_has_a_request_id() {
    let node = TestNode::start();
    let api = node.admin();
    for (path, key) in [("/v1/capabilities", api.key.as_str()), ("/v1/capabilities", "wrong")] {
        let response = api
            .http
            .get(format!("{}{path}", api.url))
            .header("x-api-key", key)
            .header("X-Trace-Id", "trace-123")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-trace-id"], "trace-123");
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&request_id).is_ok());
    }
}

#[tokio::test]
async fn events_page_from_any_since() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/test/worker").await;
    transition(&api, &id, "IN_PROGRESS").await;
    transition(&api, &id, "WAITING").await;
    transition(&api, &id, "IN_PROGRESS").await;
    resolve(&api, &id, "COMPLETED").await;
    let all = api.events(&id).await;
    assert_eq!(all.len(), 6);
    for since in 0..=7u64 {
        let (_, page) = api.get(&format!("/v1/intents/{id}/events?since={since}")).await;
        let seqs: Vec<u64> = page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let expected: Vec<u64> = (since + 1..=6).collect();
        assert_eq!(seqs, expected, "since={since}");
        assert_eq!(page["next_since"].as_u64().unwrap(), since.max(*expected.last().unwrap_or(&since)));
    }
    let (_, limited) = api.get(&format!("/v1/intents/{id}/events?since=1&limit=2")).await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 2);
    assert_eq!(limited["next_since"], 3);
}

#[tokio::test]
async fn a_handler_transfers_an_intent_to_another_local_agent_which_takes_it_from_there() {
    let node = TestNode::start();
    let old = "agent://acme/desk/first";
    let new = "agent://acme/desk/second";
    let initiator = node.api(&node.key_for(&[FROM]).await);
    let first = node.api(&node.key_for(&[old]).await);
    let second = node.api(&node.key_for(&[new]).await);
    let id = initiator.send(FROM, old).await;
    assert_eq!(transition(&first, &id, "IN_PROGRESS").await.0, 200);
    let path = format!("/v1/intents/{id}/transfer");

    // Bad requests change nothing.
    let refusals = [
        (&initiator, json!({"to_agent": new}), 403, "not_handler"),
        (&first, json!({}), 422, "invalid_field"),
        (&first, json!({"to_agent": "not an address"}), 422, "invalid_agent_address"),
        (&first, json!({"to_agent": new, "extra": 1}), 422, "unknown_field"),
        (&first, json!({"to_agent": old}), 422, "same_handler"),
    ];
    for (api, body, status, code) in refusals {
        let (got, answer) = api.post(&path, body.clone()).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
    }
    assert_eq!(initiator.events(&id).await.len(), 3);

    let (status, answer) = first.post(&path, json!({"to_agent": new, "reason": "wrong desk"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["event"]["event_type"], "intent.transfer");
    assert_eq!(answer["intent"]["handler"], new);
    assert_eq!(answer["intent"]["status"], "IN_PROGRESS", "a transfer keeps the status");

    // The old handler is out; the new one is offered the intent by poll and stream.
    let (status, answer) = resolve(&first, &id, "COMPLETED").await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("not_handler")), "{answer}");
    let (status, polled) = second.get(&format!("/v1/intents?status=pending&to_agent={new}")).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = polled["intents"].as_array().unwrap().iter().filter_map(|i| i["intent_id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "{polled}");
    let (_, polled) = first.get(&format!("/v1/intents?status=pending&to_agent={old}")).await;
    assert_eq!(polled["intents"], json!([]), "the old handler is not offered it any more");
    let frames = second.frames(&format!("/v1/agents/{new}/intents/stream?wait_seconds=1")).await;
    assert!(frames.iter().any(|(_, data)| data["intent_id"] == id.as_str()), "{frames:?}");

    let (status, answer) = resolve(&second, &id, "COMPLETED").await;
    assert_eq!(status, 200, "{answer}");
    let events = initiator.events(&id).await;
    assert_gapless(&events);
    let kinds: Vec<(&str, &str)> =
        events.iter().map(|e| (e["event_type"].as_str().unwrap(), e["handler"].as_str().unwrap_or_default())).collect();
    assert_eq!(
        kinds,
        [
            ("intent.created", old),
            ("intent.submitted", old),
            ("intent.in_progress", old),
            ("intent.transfer", new),
            ("intent.completed", new)
        ]
    );
    assert_eq!(events[3]["details"]["reason"], "wrong desk");
    let (status, answer) = second.post(&path, json!({"to_agent": old})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("intent_terminal")), "{answer}");
}
