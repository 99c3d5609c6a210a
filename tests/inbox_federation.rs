//! `reply_to` across orgs: the handler's node (globex) ends the intent, and the outcome lands
//! in the inbox on the initiator's node (acme), which hosts `reply_to`, written when the
//! terminal event reaches acme's replica. An approval from acme's inbox is forwarded to the
//! owner and the thread follows the resulting events.
//!
//! Real Synapse homeservers from `federation/up`; a missing kit fails the test.

mod common;

use std::time::Duration;

use common::eventually;
use common::kit::{Kit, ONE_KIT_AT_A_TIME};
use serde_json::{Value, json};

const HANDLER: &str = "agent://globex/sales/bot";
const OWNER: &str = "agent://acme/ops/inbox";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_of_a_remote_handler_lands_in_the_initiators_inbox() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let kit = Kit::up(18500);
    let acme = &kit.node("acme").api();
    let globex = &kit.node("globex").api();
    let send = async || {
        let mut body = common::intent_body("agent://acme/ops/buyer", HANDLER);
        body["reply_to"] = json!(OWNER);
        let (status, answer) = acme.post("/v1/intents", body).await;
        assert_eq!(status, 200, "{answer}");
        answer["intent_id"].as_str().unwrap().to_owned()
    };
    let thread = async |id: &str| -> Value {
        let (status, body) = acme.get(&format!("/v1/inbox/{id}?owner_agent={OWNER}")).await;
        assert_eq!(status, 200, "{body}");
        body["thread"].clone()
    };
    let at_globex = async |id: &str| {
        eventually("the intent at globex", Duration::from_secs(60), async || {
            (globex.get(&format!("/v1/intents/{id}")).await.0 == 200).then_some(())
        })
        .await
    };

    // A reply_to of another org is refused: its inbox is not on this node.
    let mut foreign = common::intent_body("agent://acme/ops/buyer", HANDLER);
    foreign["reply_to"] = json!("agent://globex/sales/desk");
    let (status, body) = acme.post("/v1/intents", foreign).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("reply_to_not_local")), "{body}");

    let completed = send().await;
    assert_eq!(thread(&completed).await["status"], "active");
    at_globex(&completed).await;
    let outcome = json!({"status": "COMPLETED", "result": {"deal": true}});
    let (status, resolved) = globex.post(&format!("/v1/intents/{completed}/resolve"), outcome).await;
    assert_eq!(status, 200, "{resolved}");
    let delivery = &resolved["completion_delivery"];
    assert_eq!((delivery["delivered"].as_bool(), delivery["queued"].as_bool()), (Some(false), Some(true)));
    assert_eq!(globex.get(&format!("/v1/inbox/{completed}")).await.0, 404, "the handler's node keeps no thread");
    let done = eventually("the outcome in acme's inbox", Duration::from_secs(30), async || {
        let thread = thread(&completed).await;
        (thread["status"] == "done").then_some(thread)
    })
    .await;
    assert_eq!(done["result"], json!({"deal": true}));
    assert_eq!(done["completion"]["status"], "COMPLETED");
    assert_eq!(done["messages"][0]["kind"], "completion");

    // Approving a WAITING replica from acme's inbox is forwarded to globex, which sequences it.
    let waiting = send().await;
    at_globex(&waiting).await;
    let body = json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_HUMAN"});
    assert_eq!(globex.post(&format!("/v1/intents/{waiting}/transition"), body).await.0, 200);
    eventually("the thread to be pending", Duration::from_secs(30), async || {
        (thread(&waiting).await["status"] == "pending").then_some(())
    })
    .await;
    let (status, answer) =
        acme.post(&format!("/v1/inbox/{waiting}/approve?owner_agent={OWNER}"), json!({"comment": "ok"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["applied"].as_bool(), answer["forwarded"].as_bool()), (Some(false), Some(true)), "{answer}");
    eventually("globex to resume the intent", Duration::from_secs(30), async || {
        (globex.status(&waiting).await == "IN_PROGRESS").then_some(())
    })
    .await;
    let resumed = eventually("acme's thread to follow", Duration::from_secs(30), async || {
        let thread = thread(&waiting).await;
        (thread["status"] == "active").then_some(thread)
    })
    .await;
    let types: Vec<&str> =
        resumed["timeline"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types[types.len() - 2..], ["thread.approved", "intent.in_progress"]);
}
