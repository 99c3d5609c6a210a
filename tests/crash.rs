//! Crash safety: a node killed with SIGKILL in the middle of many creates and resolves keeps
//! every change it answered 200 for, with gapless logs and nothing duplicated.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestNode, assert_gapless, intent_body};
use serde_json::json;

const FROM: &str = "agent://acme/crash/initiator";
const WORKERS: usize = 24;

#[derive(Default)]
struct Acknowledged {
    /// idempotency key -> intent id, for every create answered 200.
    created: HashMap<String, String>,
    /// intents whose resolve was answered 200.
    completed: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_no_acknowledged_change() {
    let mut node = TestNode::start();
    let api = node.admin();
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let api = api.clone();
        let acknowledged = acknowledged.clone();
        workers.push(tokio::spawn(async move {
            for round in 0.. {
                let key = format!("crash-{worker}-{round}");
                let to = format!("agent://acme/crash/handler{}", worker % 4);
                let Ok(response) = api
                    .http
                    .post(format!("{}/v1/intents", api.url))
                    .header("x-api-key", &api.key)
                    .header("idempotency-key", &key)
                    .json(&intent_body(FROM, &to))
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != 200 {
                    return;
                }
                let Ok(body) = response.json::<serde_json::Value>().await else { return };
                let id = body["intent_id"].as_str().unwrap().to_owned();
                acknowledged.lock().unwrap().created.insert(key, id.clone());
                if round % 2 == 0 {
                    let resolved = api
                        .http
                        .post(format!("{}/v1/intents/{id}/resolve", api.url))
                        .header("x-api-key", &api.key)
                        .json(&json!({"status": "COMPLETED", "result": {"round": round}}))
                        .send()
                        .await;
                    match resolved {
                        Ok(response) if response.status() == 200 => acknowledged.lock().unwrap().completed.push(id),
                        _ => return,
                    }
                }
            }
        }));
    }
    // Let the load build up, then pull the plug while requests are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill();
    for worker in workers {
        worker.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(acknowledged.created.len() > 100, "too little load to mean anything: {}", acknowledged.created.len());

    node.restart();
    let api = node.admin();
    for (key, id) in &acknowledged.created {
        let events = api.events(id).await;
        assert_gapless(&events);
        let completed = acknowledged.completed.contains(id);
        let status = api.status(id).await;
        if completed {
            assert_eq!(status, "COMPLETED", "{id} was answered COMPLETED before the crash");
            let types: Vec<_> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
            assert_eq!(types, ["intent.created", "intent.submitted", "intent.in_progress", "intent.completed"]);
        } else {
            assert!(matches!(status.as_str(), "SUBMITTED" | "COMPLETED"), "{id}: {status}");
        }
        // The idempotency record survived too: a retry gets the same intent, not a new one.
        let mut retry = intent_body(FROM, "x");
        retry["to_agent"] = events[0]["handler"].clone();
        let (status, body) = api.post_keyed("/v1/intents", retry, Some(key)).await;
        // The body differs in its correlation id, so the key's record answers with a conflict.
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("idempotency_conflict")), "{key}");
    }
    // No duplicates: every acknowledged intent is listed once in its handler's feed.
    let mut listed = Vec::new();
    for handler in 0..4 {
        let mut after = 0;
        loop {
            let (_, page) = api
                .get(&format!("/v1/intents?to_agent=agent://acme/crash/handler{handler}&limit=500&after={after}"))
                .await;
            let intents = page["intents"].as_array().unwrap();
            listed.extend(intents.iter().map(|i| i["intent_id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_u64() {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    let unique: std::collections::HashSet<_> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "an intent appears twice in a feed");
    for id in acknowledged.created.values() {
        assert!(unique.contains(id), "{id} missing from its handler's feed");
    }
}

#[tokio::test]
async fn sigterm_flushes_and_exits_zero_and_everything_is_there_after_restart() {
    let mut node = TestNode::start();
    let api = node.admin();
    let id = api.send(FROM, "agent://acme/crash/h").await;
    // Open streams that would hold for 30 s must not hold up the shutdown.
    let listener = {
        let api = api.clone();
        tokio::spawn(async move { api.frames("/v1/agents/acme/crash/h/intents/stream?wait_seconds=30").await })
    };
    let observer = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(
            async move { api.frames(&format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=30")).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let status = node.terminate();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    let listened = listener.await.unwrap();
    assert_eq!(listened.last().unwrap().0, "stream.timeout", "streams close with stream.timeout");
    assert_eq!(observer.await.unwrap().last().unwrap().0, "stream.timeout");
    assert!(status.success(), "{status:?}");
    node.restart();
    assert_eq!(node.admin().status(&id).await, "DELIVERED", "the listener's hand-out was recorded");
}
