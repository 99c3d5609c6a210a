//! The `http` binding against a real receiver on 127.0.0.1: signed deliveries, retries with
//! growing delays on every kind of failure, dead letters and replay, refused private targets,
//! and a retry schedule that survives a SIGKILL.

mod common;

use std::time::Duration;

use axp::delivery::{SignatureError, verify};
use common::receiver::{Received, Receiver, Reply};
use common::{Api, TestNode, eventually};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/ops/buyer";
const AGENT: &str = "agent://acme/hooks/bot";
const SECRET: &str = "a-test-secret-of-some-length";
const LIMIT: Duration = Duration::from_secs(30);

/// A node that may deliver to loopback, with quick retries.
fn node(retry_base_ms: u64, max_attempts: u32) -> TestNode {
    TestNode::start_with(|config| {
        let mut document: toml::Table = config.parse().unwrap();
        let delivery = document["delivery"].as_table_mut().unwrap();
        delivery.insert("allow_private_targets".into(), true.into());
        delivery.insert("retry_base_ms".into(), (retry_base_ms as i64).into());
        delivery.insert("timeout_seconds".into(), 1.into());
        delivery.insert("max_attempts".into(), i64::from(max_attempts).into());
        *config = toml::to_string(&document).unwrap();
    })
}

async fn bind(api: &Api, url: &str) -> Value {
    let (status, body) = api
        .post(
            &format!("/v1/agents/{AGENT}/binding"),
            json!({"delivery_mode": "http", "callback_url": url, "secret": SECRET}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn check_signature(request: &Received) {
    let timestamp: u64 = request.headers["x-axp-timestamp"].parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signature = &request.headers["x-axp-signature"];
    assert_eq!(verify(SECRET.as_bytes(), timestamp, &request.body, signature, now, Duration::from_secs(300)), Ok(()));
    let mut tampered = request.body.clone();
    tampered[10] ^= 1;
    let refused = verify(SECRET.as_bytes(), timestamp, &tampered, signature, now, Duration::from_secs(300));
    assert_eq!(refused, Err(SignatureError::Mismatch));
}

async fn events_of(api: &Api, id: &str, kind: &str) -> Vec<Value> {
    api.events(id).await.into_iter().filter(|event| event["event_type"] == kind).collect()
}

#[tokio::test]
async fn a_signed_delivery_marks_the_intent_delivered() {
    let receiver = Receiver::start().await;
    let node = node(100, 4);
    let api = node.admin();
    bind(&api, &receiver.url).await;
    let (status, agent) = api.get(&format!("/v1/agents/{AGENT}")).await;
    assert_eq!(status, 200);
    assert_eq!(agent["agent"]["binding"]["delivery_mode"], "http");
    assert!(agent["agent"]["binding"].get("secret").is_none(), "the secret is never shown again: {agent}");
    let (_, listed) = api.get("/v1/agents").await;
    let listed = listed["agents"].as_array().unwrap().iter().find(|agent| agent["address"] == AGENT).cloned();
    assert_eq!(listed.unwrap()["binding"]["callback_url"], receiver.url.as_str(), "GET /v1/agents lists bindings");

    let id = api.send(FROM, AGENT).await;
    let request = receiver.wait_for(1, LIMIT).await.remove(0);
    check_signature(&request);
    assert_eq!(request.headers["x-axp-intent-id"], id);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!((body["type"].as_str(), body["attempt"].as_u64()), (Some("intent.delivery"), Some(1)));
    assert_eq!(body["intent"]["intent_id"], id.as_str());
    assert_eq!(body["intent"]["payload"], json!({"n": 1}));
    assert_eq!(body["delivery_id"].as_str(), Some(request.headers["x-axp-delivery-id"].as_str()));
    eventually("DELIVERED", LIMIT, async || (api.status(&id).await == "DELIVERED").then_some(())).await;
    let delivered = events_of(&api, &id, "intent.delivered").await;
    assert_eq!(delivered[0]["details"]["binding"], "http");
    let (_, listed) = api.get(&format!("/v1/deliveries?agent={AGENT}&status=delivered")).await;
    assert_eq!(listed["deliveries"][0]["intent_id"], id.as_str(), "{listed}");
}

#[tokio::test]
async fn failures_are_retried_with_growing_delays_then_dead_lettered_and_replayed() {
    let receiver = Receiver::start().await;
    let mut node = node(200, 4);
    let api = node.admin();
    bind(&api, &receiver.url).await;
    receiver.script(&[Reply::Status(500), Reply::Close, Reply::Redirect, Reply::Hang]);
    let id = api.send(FROM, AGENT).await;

    let received = receiver.wait_for(4, LIMIT).await;
    eventually("the intent to fail", LIMIT, async || (api.status(&id).await == "FAILED").then_some(())).await;
    assert_eq!(receiver.received().len(), 4, "no attempt after the limit");
    assert!(received.iter().all(|request| request.path == "/hook"), "redirects are not followed");
    received.iter().for_each(check_signature);
    let gaps: Vec<Duration> = received.windows(2).map(|pair| pair[1].at - pair[0].at).collect();
    // Backoff 200 ms doubling, jittered into the upper half: 100–200, 200–400, 400–800 ms.
    assert!(gaps[0] >= Duration::from_millis(100) && gaps[0] < gaps[2], "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(400), "{gaps:?}");

    let failures = events_of(&api, &id, "intent.delivery_failed").await;
    let errors: Vec<&str> = failures.iter().map(|event| event["details"]["error"].as_str().unwrap()).collect();
    assert_eq!(errors.len(), 4, "{failures:#?}");
    assert_eq!(errors[0], "HTTP 500");
    assert!(errors[2].contains("302") && errors[2].contains("redirects are not followed"), "{errors:?}");
    assert!(errors[3].contains("no answer within"), "{errors:?}");
    assert!(failures[3]["details"]["next_attempt_at_ms"].is_null());
    let (_, intent) = api.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(intent["intent"]["error"]["code"], "delivery_failed", "{intent}");

    let (_, dead) = api.get(&format!("/v1/deliveries?status=dead_lettered&agent={AGENT}")).await;
    let dead = dead["deliveries"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0]["attempts"].as_u64(), dead[0]["last_error"].as_str().map(|e| e.contains("no answer"))),
        (Some(4), Some(true))
    );
    let delivery_id = dead[0]["delivery_id"].as_str().unwrap();

    // Dead letters are on disk: a SIGKILL and restart keeps them, and replay still works.
    node.restart();
    let api = node.admin();
    let (_, after) = api.get(&format!("/v1/deliveries?status=dead_lettered&agent={AGENT}")).await;
    assert_eq!(after["deliveries"][0]["delivery_id"].as_str(), Some(delivery_id), "{after}");

    let (status, replayed) = api.post(&format!("/v1/deliveries/{delivery_id}/replay"), json!({})).await;
    assert_eq!(status, 200, "{replayed}");
    let again = receiver.wait_for(5, LIMIT).await.remove(4);
    check_signature(&again);
    assert_eq!(serde_json::from_slice::<Value>(&again.body).unwrap()["intent"]["status"], "FAILED");
    eventually("the replay delivered", LIMIT, async || {
        let (_, delivery) = api.get(&format!("/v1/deliveries/{delivery_id}")).await;
        (delivery["delivery"]["status"] == "delivered").then_some(())
    })
    .await;
    let (_, dead) = api.get(&format!("/v1/deliveries?status=dead_lettered&agent={AGENT}")).await;
    assert_eq!(dead["deliveries"], json!([]));
    let (status, body) = api.post(&format!("/v1/deliveries/{}/replay", uuid::Uuid::now_v7()), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
}

#[tokio::test]
async fn private_targets_are_refused_by_default_and_bad_bindings_say_why() {
    let receiver = Receiver::start().await;
    let node = TestNode::start();
    let api = node.admin();
    let path = format!("/v1/agents/{AGENT}/binding");
    let refusals = [
        (json!({"delivery_mode": "http", "callback_url": receiver.url}), "target_not_allowed"),
        (json!({"delivery_mode": "http", "callback_url": "http://10.0.0.8/hook"}), "target_not_allowed"),
        (json!({"delivery_mode": "http", "callback_url": "http://[::1]:9/hook"}), "target_not_allowed"),
        (json!({"delivery_mode": "http", "callback_url": "ftp://example.com/x"}), "unsupported_scheme"),
        (json!({"delivery_mode": "http"}), "invalid_field"),
        (json!({"delivery_mode": "http", "callback_url": "https://example.com/h", "secret": "short"}), "invalid_field"),
        (json!({"delivery_mode": "carrier_pigeon"}), "invalid_field"),
        (json!({"delivery_mode": "poll", "callback_url": "https://example.com/h"}), "invalid_field"),
    ];
    for (body, code) in refusals {
        let (status, answer) = api.post(&path, body.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (422, Some(code)), "{body}: {answer}");
    }
    let unicode = json!({"delivery_mode": "http", "callback_url": "https://hooks.example.com/h", "secret": "ключ-подписи-вебхука"});
    let (status, body) = api.post(&path, unicode).await;
    assert_eq!((status, body["binding"]["secret_hint"].as_str()), (200, Some("…хука")), "{body}");
    let scoped = node.api(&node.key_for(&["agent://acme/other/*"]).await);
    let (status, _) = scoped.post(&path, json!({"delivery_mode": "poll"})).await;
    assert_eq!(status, 403);

    // A host name that resolves to loopback passes the bind-time check and is refused when
    // the delivery resolves it; with one attempt allowed, the intent fails at once.
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (status, body) = api.post(&path, json!({"delivery_mode": "http", "callback_url": by_name})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["binding"]["secret"].as_str().unwrap().starts_with("whsec_"), "a generated secret is shown once");
    let mut intent = common::intent_body(FROM, AGENT);
    intent["max_delivery_attempts"] = json!(1);
    let (status, created) = api.post("/v1/intents", intent).await;
    assert_eq!(status, 200);
    let id = created["intent_id"].as_str().unwrap();
    eventually("the intent to fail", LIMIT, async || (api.status(id).await == "FAILED").then_some(())).await;
    let failures = events_of(&api, id, "intent.delivery_failed").await;
    assert!(failures[0]["details"]["error"].as_str().unwrap().contains("non-public"), "{failures:#?}");
    assert!(receiver.received().is_empty(), "nothing reached the loopback receiver");
}

#[tokio::test]
async fn a_retry_schedule_survives_a_sigkill_and_fires_once_when_due() {
    let receiver = Receiver::start().await;
    let mut node = node(3000, 5);
    let api = node.admin();
    bind(&api, &receiver.url).await;
    receiver.script(&[Reply::Status(503)]);
    let id = api.send(FROM, AGENT).await;
    let failure = eventually("the first failure on disk", LIMIT, async || {
        events_of(&api, &id, "intent.delivery_failed").await.into_iter().next()
    })
    .await;
    let due_ms = failure["details"]["next_attempt_at_ms"].as_u64().unwrap();

    node.restart();
    let api = node.admin();
    let received = receiver.wait_for(2, LIMIT).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let waited = Duration::from_millis(now_ms.saturating_sub(due_ms));
    assert!(waited < Duration::from_secs(5), "the retry came {waited:?} after it was due");
    assert!(received[1].at - received[0].at >= Duration::from_millis(1400), "not before it was due");
    eventually("DELIVERED", LIMIT, async || (api.status(&id).await == "DELIVERED").then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "the retry fired exactly once");
}

#[tokio::test]
async fn the_cli_binds_an_agent_and_lists_its_deliveries() {
    let receiver = Receiver::start().await;
    let node = node(100, 2);
    let axp = |args: &[&str]| {
        let output = std::process::Command::new(common::AXP)
            .args(args)
            .env("AXP_URL", &node.url)
            .env("AXP_API_KEY", &node.admin_key)
            .output()
            .unwrap();
        assert!(output.status.success(), "axp {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let bound = axp(&["agents", "bind", AGENT, "--http", &receiver.url]);
    assert!(
        bound.contains("http -> http://127.0.0.1") && bound.contains("signing secret (shown once): whsec_"),
        "{bound}"
    );
    let shown = axp(&["agents", "show", AGENT]);
    assert!(shown.contains("http") && !shown.contains("whsec_"), "{shown}");
    receiver.script(&[Reply::Status(500), Reply::Status(500)]);
    let api = node.admin();
    let id = api.send(FROM, AGENT).await;
    eventually("the dead letter", LIMIT, async || (api.status(&id).await == "FAILED").then_some(())).await;
    let listed = axp(&["deliveries", "list", "--status", "dead_lettered", "--agent", AGENT]);
    let delivery_id = listed.split_whitespace().next().unwrap().to_owned();
    assert!(listed.contains("dead_lettered") && listed.contains("HTTP 500"), "{listed}");
    let replayed = axp(&["deliveries", "replay", &delivery_id]);
    assert!(replayed.contains("pending"), "{replayed}");
    receiver.wait_for(3, LIMIT).await;
    let rebound = axp(&["agents", "bind", AGENT, "--poll"]);
    assert!(rebound.contains("poll"), "{rebound}");
}

#[tokio::test]
async fn published_events_reach_matching_subscriptions_signed_with_counters_and_replay() {
    let receiver = Receiver::start().await;
    let node = node(100, 2);
    let owner = "agent://acme/ops/owner";
    let api = node.api(&node.key_for(&[owner]).await);
    let other = node.api(&node.key_for(&["agent://acme/ops/someone"]).await);

    let subscription = json!({"callback_url": receiver.url, "event_types": ["inbox.thread_created"], "secret": SECRET});
    let (status, created) = api.post("/v1/webhooks/subscriptions", subscription.clone()).await;
    assert_eq!(status, 200, "{created}");
    let subscription_id = created["subscription"]["subscription_id"].as_str().unwrap().to_owned();
    assert_eq!(created["subscription"]["owner_agent"], owner);
    assert!(created["subscription"].get("secret").is_none(), "a given secret is not echoed");
    let mut updated = subscription.clone();
    updated["event_types"] = json!(["inbox.thread_created", "inbox.reply_received"]);
    let (_, again) = api.post("/v1/webhooks/subscriptions", updated).await;
    assert_eq!(again["subscription"]["subscription_id"], subscription_id.as_str(), "upsert by callback URL");

    let bad = [
        (json!({"callback_url": receiver.url, "event_types": ["intent.nope"]}), "invalid_field"),
        (json!({"callback_url": receiver.url, "event_types": []}), "invalid_field"),
        (
            json!({"callback_url": receiver.url, "event_types": ["inbox.thread_created"], "secret": "short"}),
            "invalid_field",
        ),
        (json!({"event_types": ["inbox.thread_created"]}), "invalid_field"),
    ];
    for (body, code) in bad {
        let (status, answer) = api.post("/v1/webhooks/subscriptions", body.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (422, Some(code)), "{body}: {answer}");
    }

    let event = json!({"event_type": "inbox.reply_received", "source": "tests", "payload": {"thread_id": "t-1"}});
    let (status, published) = api.post("/v1/webhooks/events", event).await;
    assert_eq!(status, 200, "{published}");
    assert_eq!((published["queued_deliveries"].as_u64(), published["pending"].as_u64()), (Some(1), Some(1)));
    let event_id = published["event_id"].as_str().unwrap().to_owned();
    let request = receiver.wait_for(1, LIMIT).await.remove(0);
    check_signature(&request);
    assert_eq!(request.headers["x-axp-event-id"], event_id);
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["payload"]["thread_id"].as_str()),
        (Some("inbox.reply_received"), Some("t-1"))
    );
    let counters = eventually("the delivery counted", LIMIT, async || {
        let (_, counters) = api.get(&format!("/v1/webhooks/events/{event_id}")).await;
        (counters["delivered"] == 1).then_some(counters)
    })
    .await;
    assert_eq!((counters["pending"].as_u64(), counters["processed_deliveries"].as_u64()), (Some(0), Some(1)));

    // An event type nobody subscribed to goes nowhere; another owner sees none of it.
    let (_, unmatched) = api
        .post("/v1/webhooks/events", json!({"event_type": "invite.accepted", "source": "tests", "payload": {}}))
        .await;
    assert_eq!(unmatched["queued_deliveries"], 0);
    let (status, _) = other.get(&format!("/v1/webhooks/events/{event_id}")).await;
    assert_eq!(status, 404);
    let (_, listed) = other.get("/v1/webhooks/subscriptions").await;
    assert_eq!(listed["subscriptions"], json!([]));

    // A failing receiver dead-letters the event's delivery; replay delivers it again.
    receiver.script(&[Reply::Status(500), Reply::Status(500)]);
    let (status, replayed) = api.post(&format!("/v1/webhooks/events/{event_id}/replay"), json!({})).await;
    assert_eq!((status, replayed["queued_deliveries"].as_u64()), (200, Some(2)), "{replayed}");
    let counters = eventually("the dead letter", LIMIT, async || {
        let (_, counters) = api.get(&format!("/v1/webhooks/events/{event_id}")).await;
        (counters["dead_lettered"] == 1).then_some(counters)
    })
    .await;
    assert!(counters["replayed_at"].is_string());
    let (_, replayed) = api.post(&format!("/v1/webhooks/events/{event_id}/replay"), json!({})).await;
    assert_eq!(replayed["queued_deliveries"], 3);
    receiver.wait_for(4, LIMIT).await;

    let (status, deleted) = api.delete(&format!("/v1/webhooks/subscriptions/{subscription_id}")).await;
    assert_eq!(status, 200, "{deleted}");
    let (_, listed) = api.get("/v1/webhooks/subscriptions").await;
    assert_eq!(listed["subscriptions"], json!([]));
    let (_, all) = api.get("/v1/webhooks/subscriptions?include_inactive=true").await;
    assert!(all["subscriptions"][0]["revoked_at"].is_string(), "{all}");
}

#[tokio::test]
async fn a_transfer_ends_the_old_handlers_pending_delivery() {
    let receiver = Receiver::start().await;
    let node = node(1500, 5);
    let api = node.admin();
    bind(&api, &receiver.url).await;
    receiver.script(&[Reply::Status(500)]);
    let id = api.send(FROM, AGENT).await;
    receiver.wait_for(1, LIMIT).await;
    eventually("the first failure", LIMIT, async || events_of(&api, &id, "intent.delivery_failed").await.pop()).await;
    let (status, body) =
        api.post(&format!("/v1/intents/{id}/transfer"), json!({"to_agent": "agent://acme/hooks/other"})).await;
    assert_eq!(status, 200, "{body}");
    let delivery = eventually("the delivery to end", LIMIT, async || {
        let (_, listed) = api.get(&format!("/v1/deliveries?agent={AGENT}")).await;
        let delivery = listed["deliveries"][0].clone();
        (delivery["status"] == "obsolete").then_some(delivery)
    })
    .await;
    assert!(delivery["last_error"].as_str().unwrap().contains("transferred"), "{delivery}");
    assert_eq!(receiver.received().len(), 1, "no attempt after the transfer");
    assert_eq!(events_of(&api, &id, "intent.delivery_failed").await.len(), 1);
}

#[tokio::test]
async fn inbox_changes_are_published_to_the_owners_subscriptions() {
    let receiver = Receiver::start().await;
    let node = node(100, 2);
    let owner = "agent://acme/ops/owner";
    let api = node.admin();
    let owned = node.api(&node.key_for(&[owner]).await);
    let kinds = ["inbox.thread_created", "inbox.thread_updated", "inbox.reply_received"];
    let (status, body) = owned
        .post(
            "/v1/webhooks/subscriptions",
            json!({"callback_url": receiver.url, "event_types": kinds, "secret": SECRET}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let mut intent = common::intent_body(owner, AGENT);
    intent["reply_to"] = json!(owner);
    let (status, created) = owned.post("/v1/intents", intent).await;
    assert_eq!(status, 200, "{created}");
    let id = created["intent_id"].as_str().unwrap().to_owned();
    let (status, _) =
        api.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "COMPLETED", "result": {}})).await;
    assert_eq!(status, 200);
    let (status, _) = owned.post(&format!("/v1/inbox/{id}/reply"), json!({"message": "thanks"})).await;
    assert_eq!(status, 200);

    let received = eventually("the three kinds of inbox webhooks", LIMIT, async || {
        let received = receiver.received();
        let types: Vec<String> = received
            .iter()
            .map(|request| serde_json::from_slice::<Value>(&request.body).unwrap()["type"].as_str().unwrap().to_owned())
            .collect();
        kinds.iter().all(|kind| types.iter().any(|seen| seen == kind)).then_some(received)
    })
    .await;
    for request in &received {
        check_signature(request);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            (body["owner_agent"].as_str(), body["payload"]["thread_id"].as_str()),
            (Some(owner), Some(id.as_str()))
        );
    }
}

#[tokio::test]
async fn an_http_handler_is_pushed_the_intent_once_its_human_task_is_answered() {
    let receiver = Receiver::start().await;
    let node = node(100, 4);
    let api = node.admin();
    bind(&api, &receiver.url).await;
    let mut body = common::intent_body(FROM, AGENT);
    body["human_task"] = json!({"title": "Approve the purchase"});
    let (status, created) = api.post("/v1/intents", body).await;
    assert_eq!((status, created["status"].as_str()), (200, Some("WAITING")), "{created}");
    let id = created["intent_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty(), "nothing is pushed while a person has not answered");

    let (status, answer) =
        api.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "approve", "comment": "ok"})).await;
    assert_eq!(status, 200, "{answer}");
    let request = receiver.wait_for(1, LIMIT).await.remove(0);
    check_signature(&request);
    let pushed: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(pushed["intent"]["intent_id"], id.as_str());
    assert_eq!(pushed["intent"]["status"], "IN_PROGRESS", "{pushed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "pushed once");
}
