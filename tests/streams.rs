//! Delivery and observation over real HTTP: SSE replay from any `since`, hold and close, the
//! per-agent listen cursor across intents, status filters, and leased polling.

mod common;

use std::time::{Duration, Instant};

use common::{TestNode, assert_gapless};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/test/initiator";
const WORKER: &str = "agent://acme/test/worker";

#[tokio::test]
async fn intent_stream_replays_from_any_since_then_closes_after_the_terminal_event() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, WORKER).await;
    for status in ["IN_PROGRESS", "ACKNOWLEDGED"] {
        api.post(&format!("/v1/intents/{id}/transition"), json!({"status": status})).await;
    }
    api.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "COMPLETED", "result": {}})).await;
    let log = api.events(&id).await;
    assert_eq!(log.len(), 4, "ACKNOWLEDGED after IN_PROGRESS was refused");
    for since in 0..=4u64 {
        let started = Instant::now();
        let frames = api.frames(&format!("/v1/intents/{id}/events/stream?since={since}&wait_seconds=30")).await;
        assert!(started.elapsed() < Duration::from_secs(5), "a terminal intent's stream does not hold");
        let (events, last) = frames.split_at(frames.len() - 1);
        let seqs: Vec<u64> = events.iter().map(|(_, data)| data["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (since + 1..=4).collect::<Vec<_>>(), "since={since}");
        for (name, data) in events {
            assert_eq!(name, data["event_type"].as_str().unwrap());
            assert_eq!(data, &log[data["seq"].as_u64().unwrap() as usize - 1], "SSE carries the events.list item");
        }
        assert_eq!(last[0].0, "stream.timeout");
        assert_eq!(last[0].1, json!({"ok": true, "next_seq": 4}));
    }
}

#[tokio::test]
async fn intent_stream_holds_for_wait_seconds_and_delivers_live_events() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, WORKER).await;

    let started = Instant::now();
    let frames = api.frames(&format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=1")).await;
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(900) && held < Duration::from_secs(5), "held {held:?}");
    assert_eq!(frames, vec![("stream.timeout".to_owned(), json!({"ok": true, "next_seq": 2}))]);

    let watcher = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(
            async move { api.frames(&format!("/v1/intents/{id}/events/stream?since=0&wait_seconds=20")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.post(&format!("/v1/intents/{id}/transition"), json!({"status": "IN_PROGRESS"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "FAILED", "error": "no"})).await;
    let frames = tokio::time::timeout(Duration::from_secs(10), watcher).await.expect("closes after terminal").unwrap();
    let names: Vec<&str> = frames.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["intent.created", "intent.submitted", "intent.in_progress", "intent.failed", "stream.timeout"]);
    assert_eq!(frames[3].1["details"]["error"], json!({"message": "no"}));
}

#[tokio::test]
async fn stream_parameters_are_validated() {
    let node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, WORKER).await;
    for query in ["wait_seconds=61", "wait_seconds=abc", "since=-3"] {
        let (status, body) = api.get(&format!("/v1/intents/{id}/events/stream?{query}")).await;
        assert_eq!(status, 422, "{query}: {body}");
    }
    let (status, body) = api.get("/v1/agents/acme/test/worker/intents/stream?status=DONE").await;
    assert_eq!(status, 422, "{body}");
}

/// Drains one listen segment and returns its delivery frames.
async fn listen(api: &common::Api, query: &str) -> Vec<Value> {
    let frames = api.frames(&format!("/v1/agents/acme/test/worker/intents/stream?{query}")).await;
    assert_eq!(frames.last().unwrap().0, "stream.timeout");
    frames[..frames.len() - 1].iter().map(|(_, data)| data.clone()).collect()
}

#[tokio::test]
async fn listen_cursor_grows_across_intents_and_resumes_without_loss_or_repeats() {
    let node = TestNode::start();
    let api = node.admin();
    let mut sent = Vec::new();
    for _ in 0..25 {
        sent.push(api.send(FROM, WORKER).await);
    }
    // Intents to other agents do not show up here.
    api.send(FROM, "agent://acme/test/other").await;

    let first = listen(&api, "since=0&wait_seconds=1").await;
    let ids: Vec<&str> = first.iter().map(|d| d["intent_id"].as_str().unwrap()).collect();
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    let cursors: Vec<u64> = first.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "{cursors:?}");
    for delivery in &first {
        assert_eq!(delivery["status"], "DELIVERED");
        assert_eq!(delivery["event_type"], "intent.delivered");
        assert_eq!(delivery["payload"], json!({"n": 1}));
        assert_eq!(delivery["to_agent"], WORKER);
    }
    // The first hand-out is recorded in the intent's log.
    let log = api.events(&sent[0]).await;
    assert_eq!(log[2]["event_type"], "intent.delivered");
    assert_eq!(log[2]["details"]["binding"], "stream");

    // Resume from the middle: exactly the rest, in order.
    let middle = cursors[9];
    let rest = listen(&api, &format!("since={middle}&wait_seconds=1")).await;
    let rest_ids: Vec<&str> = rest.iter().map(|d| d["intent_id"].as_str().unwrap()).collect();
    assert_eq!(rest_ids, ids[10..]);

    // Terminal intents leave the default listen; an explicit status filter finds them.
    api.post(&format!("/v1/intents/{}/resolve", sent[0]), json!({"status": "CANCELED", "reason": "x"})).await;
    let open = listen(&api, "since=0&wait_seconds=1").await;
    assert_eq!(open.len(), 24);
    assert!(open.iter().all(|d| d["intent_id"] != sent[0].as_str()));
    let canceled = listen(&api, "since=0&wait_seconds=1&status=CANCELED").await;
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0]["intent_id"], sent[0].as_str());
    assert_eq!(canceled[0]["seq"].as_u64(), Some(cursors[0]));
}

#[tokio::test]
async fn listen_holds_and_delivers_new_intents_live() {
    let node = TestNode::start();
    let api = node.admin();
    let head = listen(&api, "since=0&wait_seconds=1").await;
    assert!(head.is_empty());
    let listener = {
        let api = api.clone();
        tokio::spawn(async move { listen(&api, "since=0&wait_seconds=3").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let id = api.send(FROM, WORKER).await;
    let deliveries = listener.await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["intent_id"], id.as_str());
    assert!(started.elapsed() >= Duration::from_secs(1), "the stream held for wait_seconds after the delivery");
}

#[tokio::test]
async fn poll_leases_pending_intents_and_hands_them_out_again_after_the_lease() {
    let node =
        TestNode::start_with(|config| *config = config.replace("poll_lease_seconds = 30", "poll_lease_seconds = 1"));
    let api = node.admin();
    let first = api.send(FROM, WORKER).await;
    let second = api.send(FROM, WORKER).await;
    let poll = format!("/v1/intents?status=pending&to_agent={WORKER}&limit=1");

    let (status, page) = api.get(&poll).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["intents"][0]["intent_id"], first.as_str());
    assert_eq!(page["intents"][0]["status"], "DELIVERED");
    let (_, page) = api.get(&poll).await;
    assert_eq!(page["intents"][0]["intent_id"], second.as_str(), "the leased one is skipped");
    let (_, page) = api.get(&poll).await;
    assert_eq!(page["intents"], json!([]), "both are leased");

    // The first is acknowledged; only the second comes back after the lease.
    api.post(&format!("/v1/intents/{first}/transition"), json!({"status": "ACKNOWLEDGED"})).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, page) = api.get(&format!("/v1/intents?status=pending&to_agent={WORKER}")).await;
    let ids: Vec<&str> = page["intents"].as_array().unwrap().iter().map(|i| i["intent_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str()]);
    // A redelivery records no second intent.delivered.
    let log = api.events(&second).await;
    assert_gapless(&log);
    assert_eq!(log.iter().filter(|e| e["event_type"] == "intent.delivered").count(), 1);

    let (status, body) = api.get("/v1/intents?status=pending").await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn listing_by_agent_and_status() {
    let node = TestNode::start();
    let api = node.admin();
    let ids: Vec<String> = send_many(&api, 3).await;
    api.post(&format!("/v1/intents/{}/resolve", ids[1]), json!({"status": "CANCELED", "reason": "x"})).await;
    let (_, received) = api.get(&format!("/v1/intents?to_agent={WORKER}")).await;
    assert_eq!(received["intents"].as_array().unwrap().len(), 3);
    let (_, canceled) = api.get(&format!("/v1/intents?to_agent={WORKER}&status=CANCELED")).await;
    assert_eq!(canceled["intents"][0]["intent_id"], ids[1].as_str());
    let (_, sent) = api.get(&format!("/v1/intents?from_agent={FROM}&limit=2")).await;
    assert_eq!(sent["intents"].as_array().unwrap().len(), 2);
    let next = sent["next_cursor"].as_u64().unwrap();
    let (_, after) = api.get(&format!("/v1/intents?from_agent={FROM}&after={next}")).await;
    assert_eq!(after["intents"][0]["intent_id"], ids[2].as_str());
    let (_, agents) = api.get("/v1/agents?org_id=acme&workspace_id=test").await;
    assert_eq!(agents["agents"][0]["address"], WORKER);
    let (status, agent) = api.get("/v1/agents/acme/test/worker").await;
    assert_eq!((status, agent["agent"]["address"].as_str()), (200, Some(WORKER)));
    assert_eq!(api.get("/v1/agents/acme/test/nobody").await.0, 404);
}

async fn send_many(api: &common::Api, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(api.send(FROM, WORKER).await);
    }
    ids
}

#[tokio::test]
async fn listen_offers_an_unacknowledged_hand_out_again_after_the_visibility_timeout() {
    let node = TestNode::start_with(|config| {
        *config = config.replace("poll_lease_seconds = 30", "poll_lease_seconds = 1");
    });
    let api = node.admin();
    let ignored = api.send(FROM, WORKER).await;
    let acknowledged = api.send(FROM, WORKER).await;
    let listen = format!("/v1/agents/{WORKER}/intents/stream?since=0&wait_seconds=4");
    let reader = {
        let api = node.admin();
        let listen = listen.clone();
        tokio::spawn(async move { api.frames(&listen).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) =
        api.post(&format!("/v1/intents/{acknowledged}/transition"), json!({"status": "ACKNOWLEDGED"})).await;
    assert_eq!(status, 200);
    let frames = reader.await.unwrap();
    let offers = |id: &str| frames.iter().filter(|(_, data)| data["intent_id"] == id).count();
    assert!(offers(&ignored) >= 2, "the ignored intent is offered again: {frames:?}");
    assert_eq!(offers(&acknowledged), 1, "an acknowledged one is not: {frames:?}");

    // A new connection that starts after both cursors still gets the expired hand-out.
    let cursor = frames.iter().filter_map(|(_, data)| data["seq"].as_u64()).max().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = api.frames(&format!("/v1/agents/{WORKER}/intents/stream?since={cursor}&wait_seconds=1")).await;
    assert!(again.iter().any(|(_, data)| data["intent_id"] == ignored.as_str()), "{again:?}");
    assert!(!again.iter().any(|(_, data)| data["intent_id"] == acknowledged.as_str()), "{again:?}");
}

#[tokio::test]
async fn a_poll_lease_survives_a_sigkill() {
    let mut node =
        TestNode::start_with(|config| *config = config.replace("poll_lease_seconds = 30", "poll_lease_seconds = 5"));
    let api = node.admin();
    let id = api.send(FROM, WORKER).await;
    let poll = format!("/v1/intents?status=pending&to_agent={WORKER}");
    let (_, page) = api.get(&poll).await;
    assert_eq!(page["intents"][0]["intent_id"], id.as_str());
    let leased_at = Instant::now();

    node.restart();
    let api = node.admin();
    let (_, page) = api.get(&poll).await;
    assert_eq!(page["intents"], json!([]), "the lease was on disk: nobody else gets the intent yet");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(leased_at.elapsed()) + Duration::from_millis(200)).await;
    let (_, page) = api.get(&poll).await;
    assert_eq!(page["intents"][0]["intent_id"], id.as_str(), "after the lease it is handed out again");
}
