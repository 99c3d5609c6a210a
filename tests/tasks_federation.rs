//! Human tasks on intents sent to another org: the handler's node (globex) adopts the intent,
//! starts its task and runs its timers; the task is answered there, and the initiator's node
//! (acme) keeps a replica with the same events and seqs. An escalation to a third org hands
//! the intent to that org's node.
//!
//! Real Synapse homeservers from `federation/up`; a missing kit fails the test.

mod common;

use std::time::Duration;

use common::kit::{Kit, ONE_KIT_AT_A_TIME};
use common::{Api, assert_gapless, eventually};
use serde_json::{Value, json};

const BUYER: &str = "agent://acme/ops/buyer";
const BOT: &str = "agent://globex/sales/bot";
const LIMIT: Duration = Duration::from_secs(60);

async fn submit(acme: &Api, options: Value) -> String {
    let mut body = common::intent_body(BUYER, BOT);
    for (name, value) in options.as_object().unwrap() {
        body[name] = value.clone();
    }
    let (status, body) = acme.post("/v1/intents", body).await;
    assert_eq!(status, 200, "{body}");
    body["intent_id"].as_str().unwrap().to_owned()
}

/// The node's API as a key that may act for `agents` only.
async fn key_for(node: &Api, agents: &[&str]) -> Api {
    let (status, body) = node.post("/v1/admin/keys", json!({"owner": "test", "agents": agents})).await;
    assert_eq!(status, 200, "{body}");
    Api { key: body["token"].as_str().unwrap().to_owned(), ..node.clone() }
}

fn types(log: &[Value]) -> Vec<&str> {
    log.iter().map(|event| event["event_type"].as_str().unwrap()).collect()
}

/// Waits until `replica` holds exactly `owner`'s log (`owner`'s read last), and returns it.
async fn same_log(owner: &Api, replica: &Api, id: &str) -> Vec<Value> {
    eventually("the replica to match the owner's log", LIMIT, async || {
        let log = owner.events(id).await;
        (replica.events(id).await == log).then_some(log)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_node_runs_the_human_task_of_an_intent_from_another_org() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up(18600);
    let acme = &kit.node("acme").api();
    let globex_admin = &kit.node("globex").api();
    let bot = &key_for(globex_admin, &[BOT]).await;

    let task = json!({"title": "Ship 10 crates?", "task_type": "approval", "required_comment": true});
    let id = submit(acme, json!({"human_task": task})).await;
    let listed = eventually("the task in globex's /v1/me/tasks", LIMIT, async || {
        let (status, body) = bot.get("/v1/me/tasks").await;
        assert_eq!(status, 200, "{body}");
        body["tasks"].as_array().unwrap().iter().find(|task| task["intent_id"] == id.as_str()).cloned()
    })
    .await;
    assert_eq!(
        (listed["status"].as_str(), listed["waiting_reason"].as_str()),
        (Some("WAITING"), Some("WAITING_FOR_HUMAN"))
    );
    assert_eq!(listed["human_task"]["title"], "Ship 10 crates?");
    assert!(listed["assigned_at"].is_string(), "{listed}");

    let started = same_log(bot, acme, &id).await;
    assert_gapless(&started);
    assert_eq!(types(&started)[2..4], ["intent.waiting", "intent.human_task_assigned"]);
    assert_eq!(started[2]["waiting_reason"], "WAITING_FOR_HUMAN");
    assert_eq!(acme.status(&id).await, "WAITING", "acme's replica follows");
    let (_, mine) = key_for(acme, &[BUYER]).await.get("/v1/me/tasks").await;
    assert_eq!(mine["tasks"], json!([]), "a replica lists no task: {mine}");

    // A rejection without the required comment is refused and changes nothing.
    let (status, body) = bot.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "reject"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("field_required")), "{body}");
    assert_eq!(bot.events(&id).await, started, "a refused answer changes nothing");

    let decision = json!({"decision": "approve", "comment": "go"});
    let (status, body) = bot.post(&format!("/v1/approvals/{id}/decision"), decision).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "IN_PROGRESS", "{body}");
    let log = same_log(bot, acme, &id).await;
    assert_gapless(&log);
    let resumed = log.last().unwrap();
    assert_eq!(
        (resumed["event_type"].as_str(), resumed["status"].as_str()),
        (Some("intent.in_progress"), Some("IN_PROGRESS"))
    );
    assert_eq!(resumed["details"]["task_result"]["outcome"], "approved");
    assert_eq!(resumed["details"]["task_result"]["comment"], "go");
    assert_eq!(resumed["details"]["decision"]["by"], BOT);
    let (_, open) = bot.get("/v1/me/tasks").await;
    assert_eq!(open["tasks"], json!([]), "an answered task is no longer listed: {open}");

    // The owner runs the timers the intent's options ask for: a reminder while it waits.
    let reminded =
        submit(acme, json!({"human_task": {"title": "Sign"}, "remind_after_seconds": 1, "max_reminders": 1})).await;
    let log = eventually("globex's reminder at acme", LIMIT, async || {
        let log = acme.events(&reminded).await;
        types(&log).contains(&"intent.reminder").then_some(log)
    })
    .await;
    assert_eq!(types(&log)[2..], ["intent.waiting", "intent.human_task_assigned", "intent.reminder"]);
    assert_eq!(
        (log[4]["actor"].as_str(), log[4]["details"]["notification"]["to"].as_str()),
        (Some("node:timer"), Some(BOT))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_to_a_third_org_hands_the_waiting_intent_to_that_orgs_node() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up_with(18650, &["acme", "globex", "initech"]);
    let acme = &kit.node("acme").api();
    let initech = &kit.node("initech").api();
    let support = "agent://initech/support/desk";
    // An agent assignee of initech finds the task there too, once it has moved.
    let second = "agent://initech/support/second";
    let options = json!({
        "human_task": {"title": "Refund?", "assignees": [second]},
        "remind_after_seconds": 1,
        "remind_interval_seconds": 1,
        "max_reminders": 1,
        "escalate_to": support,
    });
    let id = submit(acme, options).await;
    let desk = &key_for(initech, &[support]).await;
    eventually("the escalated task in initech's /v1/me/tasks", LIMIT, async || {
        let (status, body) = desk.get("/v1/me/tasks").await;
        assert_eq!(status, 200, "{body}");
        body["tasks"].as_array().unwrap().iter().any(|task| task["intent_id"] == id.as_str()).then_some(())
    })
    .await;
    let (status, body) = key_for(initech, &[second]).await.get("/v1/me/tasks").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["tasks"].as_array().unwrap().iter().any(|task| task["intent_id"] == id.as_str()), "{body}");
    let log = same_log(initech, acme, &id).await;
    assert_gapless(&log);
    assert_eq!(
        types(&log)[2..],
        ["intent.waiting", "intent.human_task_assigned", "intent.reminder", "intent.escalated", "intent.transfer"]
    );
    assert_eq!(log.last().unwrap()["handler"], support);
    let (status, body) = desk.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "approve"})).await;
    assert_eq!(status, 200, "{body}");
    let log = same_log(initech, acme, &id).await;
    assert_eq!(log.last().unwrap()["status"], "IN_PROGRESS");
    assert_eq!(log.last().unwrap()["details"]["decision"]["by"], support);
}
