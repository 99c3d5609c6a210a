//! Handler transfer across real nodes and homeservers: the sequencer moves with the handler,
//! and the initiator's node keeps a replica identical, event for event, to the new owner's log.
//!
//! - on the handler's node, to another of its agents;
//! - from an intent local to acme, to a globex agent (acme hands the log over);
//! - from globex back to an agent of acme, the initiator's node (acme takes over);
//! - to a third org's node (acme, told by globex's `intent.transfer`, hands the log to initech).

mod common;

use std::time::Duration;

use common::kit::{Kit, ONE_KIT_AT_A_TIME};
use common::{Api, assert_gapless, eventually};
use serde_json::{Value, json};

const BUYER: &str = "agent://acme/ops/buyer";
const LIMIT: Duration = Duration::from_secs(60);

async fn send(api: &Api, to: &str) -> String {
    let (status, body) = api.post("/v1/intents", common::intent_body(BUYER, to)).await;
    assert_eq!(status, 200, "{body}");
    body["intent_id"].as_str().unwrap().to_owned()
}

/// Polls as `agent` until the intent is handed out to it.
async fn picked_up(api: &Api, agent: &str, id: &str) {
    eventually(&format!("{id} offered to {agent}"), LIMIT, async || {
        let (status, body) = api.get(&format!("/v1/intents?status=pending&to_agent={agent}")).await;
        assert_eq!(status, 200, "{body}");
        body["intents"].as_array().unwrap().iter().any(|intent| intent["intent_id"] == id).then_some(())
    })
    .await;
}

async fn transfer(api: &Api, id: &str, to: &str) -> Value {
    let (status, body) = api.post(&format!("/v1/intents/{id}/transfer"), json!({"to_agent": to})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["event_type"], "intent.transfer");
    body
}

async fn complete(api: &Api, id: &str) {
    let (status, body) =
        api.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "COMPLETED", "result": {"by": "new"}})).await;
    assert_eq!(status, 200, "{body}");
}

/// Waits until `replica` holds exactly `owner`'s log for the intent, and returns it.
async fn same_log(owner: &Api, replica: &Api, id: &str) -> Vec<Value> {
    let log = owner.events(id).await;
    assert_gapless(&log);
    eventually("the replica to match the owner's log", LIMIT, async || (replica.events(id).await == log).then_some(()))
        .await;
    log
}

fn kinds_and_handlers(log: &[Value]) -> Vec<(String, String)> {
    log.iter()
        .map(|event| {
            let text = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
            (text("event_type"), text("handler"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_between_two_orgs_move_the_sequencer_with_the_handler() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up(18000);
    let acme = &kit.node("acme").api();
    let globex = &kit.node("globex").api();
    let bot = "agent://globex/sales/bot";
    let closer = "agent://globex/sales/closer";
    let triage = "agent://acme/desk/triage";

    // 1. On globex, from one of its agents to another: globex stays the owner.
    let on_globex = send(acme, bot).await;
    picked_up(globex, bot, &on_globex).await;
    transfer(globex, &on_globex, closer).await;
    picked_up(globex, closer, &on_globex).await;
    complete(globex, &on_globex).await;
    let log = same_log(globex, acme, &on_globex).await;
    let expected: Vec<(String, String)> = [
        ("intent.created", bot),
        ("intent.submitted", bot),
        ("intent.delivered", bot),
        ("intent.transfer", closer),
        ("intent.in_progress", closer),
        ("intent.completed", closer),
    ]
    .iter()
    .map(|(kind, handler)| (kind.to_string(), handler.to_string()))
    .collect();
    assert_eq!(kinds_and_handlers(&log), expected);

    // 2. An intent local to acme goes to globex: acme hands its whole log over and keeps a replica.
    let outbound = send(acme, triage).await;
    picked_up(acme, triage, &outbound).await;
    let (status, _) = acme.post(&format!("/v1/intents/{outbound}/transition"), json!({"status": "ACKNOWLEDGED"})).await;
    assert_eq!(status, 200);
    transfer(acme, &outbound, bot).await;
    let (status, body) =
        acme.post(&format!("/v1/intents/{outbound}/transition"), json!({"status": "IN_PROGRESS"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("owned_by_remote_node")), "{body}");
    picked_up(globex, bot, &outbound).await;
    complete(globex, &outbound).await;
    let log = same_log(globex, acme, &outbound).await;
    assert_eq!(log.len(), 7, "{log:#?}");
    assert_eq!(log[4]["event_type"], "intent.transfer");
    assert_eq!(log[5]["handler"], bot);
    assert_eq!(acme.status(&outbound).await, "COMPLETED");

    // 3. globex hands an intent back to an agent of acme, the initiator's node: acme takes over
    //    and globex's copy ends with the transfer.
    let homeward = send(acme, bot).await;
    picked_up(globex, bot, &homeward).await;
    let (status, _) =
        globex.post(&format!("/v1/intents/{homeward}/transition"), json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200);
    transfer(globex, &homeward, triage).await;
    picked_up(acme, triage, &homeward).await;
    let (status, body) =
        globex.post(&format!("/v1/intents/{homeward}/resolve"), json!({"status": "COMPLETED", "result": {}})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("transferred_away")), "{body}");
    complete(acme, &homeward).await;
    let at_acme = acme.events(&homeward).await;
    assert_gapless(&at_acme);
    assert_eq!(at_acme.len(), 6, "{at_acme:#?}");
    let at_globex = globex.events(&homeward).await;
    assert_eq!(at_globex[..], at_acme[..5], "globex's copy is acme's log up to the transfer");
    assert_eq!(acme.status(&homeward).await, "COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_third_org_hands_the_intent_over_through_the_initiators_node() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up_with(18050, &["acme", "globex", "initech"]);
    let acme = &kit.node("acme").api();
    let globex = &kit.node("globex").api();
    let initech = &kit.node("initech").api();
    let bot = "agent://globex/sales/bot";
    let support = "agent://initech/support/desk";

    let id = send(acme, bot).await;
    picked_up(globex, bot, &id).await;
    transfer(globex, &id, support).await;
    picked_up(initech, support, &id).await;

    // initech now owns the intent: the initiator's requests reach it, and its events reach acme.
    let (status, body) = initech
        .post(
            &format!("/v1/intents/{id}/transition"),
            json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_HUMAN"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("WAITING at acme", LIMIT, async || (acme.status(&id).await == "WAITING").then_some(())).await;
    let (status, body) = acme.post(&format!("/v1/intents/{id}/resume"), json!({"reason": "go ahead"})).await;
    assert_eq!((status, body["forwarded"].as_bool()), (200, Some(true)), "{body}");
    eventually("IN_PROGRESS at initech", LIMIT, async || (initech.status(&id).await == "IN_PROGRESS").then_some(()))
        .await;
    complete(initech, &id).await;

    let log = same_log(initech, acme, &id).await;
    let kinds: Vec<String> = kinds_and_handlers(&log).into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(
        kinds,
        [
            "intent.created",
            "intent.submitted",
            "intent.delivered",
            "intent.transfer",
            "intent.waiting",
            "intent.in_progress",
            "intent.completed"
        ]
        .map(String::from)
    );
    assert_eq!(log[5]["details"]["reason"], "go ahead");
    let at_globex = globex.events(&id).await;
    assert_eq!(at_globex[..], log[..4], "globex's copy ends with its transfer");
    let (status, body) =
        globex.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "FAILED", "error": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("transferred_away")), "{body}");
}
