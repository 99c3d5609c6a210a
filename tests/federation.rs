//! Two orgs, two real Synapse homeservers federating over loopback, two real nodes: an intent
//! submitted at acme for a globex agent travels encrypted to globex's node, is delivered to
//! the agent, and its whole lifecycle flows back to acme, event for event.
//!
//! The homeservers come from `federation/up` (the kit the README's test command sets up); a
//! missing kit fails these tests, it never skips them.

mod common;

use std::time::Duration;

use common::eventually;
use common::kit::{Kit, ONE_KIT_AT_A_TIME};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_org_lifecycle_is_identical_on_both_nodes() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up(18100);
    let acme = &kit.node("acme").api();
    let globex = &kit.node("globex").api();
    let handler = "agent://globex/sales/bot";

    let (status, body) = acme.post("/v1/intents", common::intent_body("agent://acme/ops/buyer", handler)).await;
    assert_eq!(status, 200, "{body}");
    let id = body["intent_id"].as_str().unwrap().to_owned();

    // A payload that cannot travel in one Matrix event is refused at submit, naming the limit.
    let mut too_big = common::intent_body("agent://acme/ops/buyer", handler);
    too_big["payload"] = json!({"blob": "x".repeat(40_000)});
    let (status, body) = acme.post("/v1/intents", too_big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("Matrix event"), "{body}");

    // globex's agent listens as usual; the intent arrives over Matrix.
    let delivery = eventually("the delivery at globex", Duration::from_secs(60), async || {
        let frames = globex.frames("/v1/agents/globex/sales/bot/intents/stream?since=0&wait_seconds=1").await;
        frames.into_iter().map(|(_, data)| data).find(|data| data["intent_id"] == id.as_str())
    })
    .await;
    assert_eq!(delivery["from_agent"], "agent://acme/ops/buyer");
    assert_eq!(delivery["payload"], json!({"n": 1}));

    let (status, body) = globex.post(&format!("/v1/intents/{id}/transition"), json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = globex
        .post(&format!("/v1/intents/{id}/resolve"), json!({"status": "COMPLETED", "result": {"deal": true}}))
        .await;
    assert_eq!(status, 200, "{body}");

    let owner_log = globex.events(&id).await;
    assert_eq!(owner_log.len(), 5, "{owner_log:#?}");
    let replica_log = eventually("acme's replica to catch up", Duration::from_secs(30), async || {
        let log = acme.events(&id).await;
        (log.len() == owner_log.len()).then_some(log)
    })
    .await;
    assert_eq!(replica_log, owner_log, "acme's replica is identical, event for event");
    assert_eq!(acme.status(&id).await, "COMPLETED");
    let (_, intent) = acme.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(intent["intent"]["result"], json!({"deal": true}));

    // acme's SSE shows the same events with the same seqs.
    let frames = acme.frames(&format!("/v1/intents/{id}/events/stream?since=0&wait_seconds=5")).await;
    let streamed: Vec<Value> =
        frames.into_iter().filter(|(name, _)| name.starts_with("intent.")).map(|(_, data)| data).collect();
    assert_eq!(streamed, owner_log);

    // The replica is not a second owner: acme cannot report the handler's progress, and a
    // terminal intent stays terminal.
    let (status, body) = acme.post(&format!("/v1/intents/{id}/transition"), json!({"status": "IN_PROGRESS"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("owned_by_remote_node")), "{body}");
    let (status, body) =
        acme.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "CANCELED", "reason": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("intent_terminal")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initiator_resumes_and_cancels_through_the_owner() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up(18150);
    let acme = &kit.node("acme").api();
    let globex = &kit.node("globex").api();
    let send = async || {
        let (status, body) =
            acme.post("/v1/intents", common::intent_body("agent://acme/ops/buyer", "agent://globex/sales/bot")).await;
        assert_eq!(status, 200, "{body}");
        body["intent_id"].as_str().unwrap().to_owned()
    };
    let waiting = send().await;
    let doomed = send().await;
    for id in [&waiting, &doomed] {
        eventually("the intent at globex", Duration::from_secs(60), async || {
            (globex.get(&format!("/v1/intents/{id}")).await.0 == 200).then_some(())
        })
        .await;
    }
    let (status, _) = globex
        .post(
            &format!("/v1/intents/{waiting}/transition"),
            json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_HUMAN"}),
        )
        .await;
    assert_eq!(status, 200);
    eventually("WAITING at acme", Duration::from_secs(30), async || {
        (acme.status(&waiting).await == "WAITING").then_some(())
    })
    .await;

    // A person at acme approves: the request travels to globex, which sequences it.
    let (status, body) =
        acme.post(&format!("/v1/intents/{waiting}/resume"), json!({"reason": "approved by finance"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["forwarded"].as_bool(), body["applied"].as_bool()), (Some(true), Some(false)));
    eventually("IN_PROGRESS at globex", Duration::from_secs(30), async || {
        (globex.status(&waiting).await == "IN_PROGRESS").then_some(())
    })
    .await;
    let (status, body) = acme
        .post(&format!("/v1/intents/{doomed}/resolve"), json!({"status": "CANCELED", "reason": "no longer needed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("CANCELED at globex", Duration::from_secs(30), async || {
        (globex.status(&doomed).await == "CANCELED").then_some(())
    })
    .await;

    for id in [&waiting, &doomed] {
        let owner_log = globex.events(id).await;
        let replica = eventually("acme's replica", Duration::from_secs(30), async || {
            let log = acme.events(id).await;
            (log == owner_log).then_some(log)
        })
        .await;
        assert!(
            replica.iter().any(|event| event["actor"] == "agent://acme/ops/buyer"
                || event["actor"].as_str().unwrap_or("").starts_with("key:")),
            "{replica:#?}"
        );
    }
    let resumed = globex.events(&waiting).await;
    assert_eq!(resumed.last().unwrap()["details"]["reason"], "approved by finance");
    let canceled = globex.events(&doomed).await;
    assert_eq!(canceled.last().unwrap()["details"]["reason"], "no longer needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_from_another_org_is_pushed_to_an_http_bound_agent() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up(18200);
    let globex_node = kit.node("globex");
    globex_node.kill();
    let mut config: toml::Table = std::fs::read_to_string(&globex_node.config).unwrap().parse().unwrap();
    config["delivery"].as_table_mut().unwrap().insert("allow_private_targets".into(), true.into());
    std::fs::write(&globex_node.config, toml::to_string(&config).unwrap()).unwrap();
    globex_node.start();
    let acme = &kit.node("acme").api();
    let globex = &globex_node.api();
    let receiver = common::receiver::Receiver::start().await;
    let handler = "agent://globex/sales/hook";
    let binding =
        json!({"delivery_mode": "http", "callback_url": receiver.url, "secret": "a-secret-for-the-federation-test"});
    let (status, body) = globex.post(&format!("/v1/agents/{handler}/binding"), binding).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = acme.post("/v1/intents", common::intent_body("agent://acme/ops/buyer", handler)).await;
    assert_eq!(status, 200, "{body}");
    let id = body["intent_id"].as_str().unwrap().to_owned();
    let request = receiver.wait_for(1, Duration::from_secs(60)).await.remove(0);
    assert_eq!(request.headers["x-axp-intent-id"], id);
    let pushed: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(pushed["intent"]["from_agent"], "agent://acme/ops/buyer");
    eventually("DELIVERED at acme", Duration::from_secs(30), async || {
        (acme.status(&id).await == "DELIVERED").then_some(())
    })
    .await;
    let delivered = acme.events(&id).await.pop().unwrap();
    assert_eq!(
        (delivered["event_type"].as_str(), delivered["details"]["binding"].as_str()),
        (Some("intent.delivered"), Some("http"))
    );
}
