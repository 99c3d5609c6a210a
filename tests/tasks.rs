//! Human tasks over real HTTP on a real node: every task type waits for a human, a valid answer
//! resumes the intent with the answer in the event, an invalid one is a 422 naming the field and
//! changes nothing; approvals decisions, `/v1/me/tasks` scoping, and the `axp tasks` CLI.

mod common;

use common::{Api, TestNode, assert_gapless, intent_body};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/test/initiator";
const HANDLER: &str = "agent://acme/test/desk";
const ANN: &str = "agent://acme/people/ann";
const BOB: &str = "agent://acme/people/bob";

async fn create(api: &Api, task: Value) -> String {
    let mut body = intent_body(FROM, HANDLER);
    body["human_task"] = task;
    let (status, body) = api.post("/v1/intents", body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "WAITING", "{body}");
    body["intent_id"].as_str().unwrap().to_owned()
}

async fn resume(api: &Api, id: &str, task_result: Value) -> (u16, Value) {
    api.post(&format!("/v1/intents/{id}/resume"), json!({"task_result": task_result})).await
}

/// Each invalid answer is a 422 with `code` whose message starts with `field`, and the event
/// log stays as it was; then the valid answer resumes the intent with it in the details.
async fn check(api: &Api, task: Value, invalid: &[(Value, &str, &str)], valid: Value, outcome: &str) {
    let id = create(api, task).await;
    let before = api.events(&id).await;
    let types: Vec<&str> = before.iter().map(|event| event["event_type"].as_str().unwrap()).collect();
    assert_eq!(types[2..], ["intent.waiting", "intent.human_task_assigned"]);
    assert_eq!(before[3]["waiting_reason"], "WAITING_FOR_HUMAN");
    for (answer, field, code) in invalid {
        let (status, body) = resume(api, &id, answer.clone()).await;
        assert_eq!(status, 422, "{answer}: {body}");
        assert_eq!(body["error"]["code"], *code, "{answer}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{answer}: {message}");
        assert_eq!(api.events(&id).await, before, "a refused answer changes nothing");
    }
    let (status, body) = resume(api, &id, valid).await;
    assert_eq!(status, 200, "{body}");
    let events = api.events(&id).await;
    assert_gapless(&events);
    let last = events.last().unwrap();
    assert_eq!(
        (last["event_type"].as_str(), last["status"].as_str()),
        (Some("intent.in_progress"), Some("IN_PROGRESS"))
    );
    assert_eq!(last["details"]["task_result"]["outcome"], outcome);
    assert_eq!(last["details"]["decision"]["via"], "api");
    assert_eq!(last["details"]["decision"]["by"], HANDLER);
    let (status, body) = resume(api, &id, json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("no_open_human_task")), "{body}");
}

#[tokio::test]
async fn every_task_type_validates_its_answer_and_resumes_with_it() {
    let node = TestNode::start();
    let api = node.api(&node.key_for(&[FROM, HANDLER]).await);
    let c = "task_result.comment";
    check(
        &api,
        json!({"title": "Ship?", "task_type": "approval", "required_comment": true}),
        &[
            (json!({"outcome": "maybe", "comment": "x"}), "task_result.outcome", "outcome_not_allowed"),
            (json!({}), c, "field_required"),
        ],
        json!({"comment": "go"}),
        "approved",
    )
    .await;
    let schema = json!({"type": "object", "required": ["amount"], "properties": {
        "amount": {"type": "integer", "minimum": 1}, "currency": {"type": "string", "enum": ["EUR"]}}});
    check(
        &api,
        json!({"title": "Expense", "task_type": "form", "form_schema": schema}),
        &[
            (json!({"currency": "EUR"}), "task_result.data.amount", "field_required"),
            (json!({"amount": "ten"}), "task_result.data.amount", "form_field_invalid"),
            (json!({"amount": 0}), "task_result.data.amount", "form_field_invalid"),
            (json!({"amount": 5, "currency": "GBP"}), "task_result.data.currency", "form_field_invalid"),
        ],
        json!({"outcome": "submitted", "data": {"amount": 5}}),
        "submitted",
    )
    .await;
    check(
        &api,
        json!({"title": "PR", "task_type": "review"}),
        &[(json!({"outcome": "changes_requested"}), c, "field_required")],
        json!({"outcome": "changes_requested", "comment": "rename"}),
        "changes_requested",
    )
    .await;
    check(
        &api,
        json!({"title": "Bypass", "task_type": "override"}),
        &[(json!({}), c, "field_required")],
        json!({"comment": "prod is down"}),
        "override_approved",
    )
    .await;
    check(
        &api,
        json!({"title": "Locked?", "task_type": "confirmation"}),
        &[(json!({"outcome": "approved"}), "task_result.outcome", "outcome_not_allowed")],
        json!({}),
        "confirmed",
    )
    .await;
    check(
        &api,
        json!({"title": "Who?", "task_type": "assignment"}),
        &[(json!({"outcome": "assigned"}), "task_result.data.assignee", "field_required")],
        json!({"assignee": "ann@example.com"}),
        "assigned",
    )
    .await;
    check(
        &api,
        json!({"title": "Which env?", "task_type": "clarification"}),
        &[(json!({"data": {"env": "prod"}}), c, "field_required")],
        json!({"comment": "prod"}),
        "provided",
    )
    .await;
    let file = json!({"name": "photo.jpg", "size": 3, "sha256": "ab".repeat(32)});
    check(
        &api,
        json!({"title": "Swap disk", "task_type": "manual_action"}),
        &[
            (json!({}), "task_result.data.evidence", "field_required"),
            (json!({"evidence": {"name": "x"}}), "task_result.data.evidence", "invalid_field"),
            (json!({"outcome": "failed"}), c, "field_required"),
        ],
        json!({"data": {"evidence": [file]}}),
        "completed",
    )
    .await;
}

#[tokio::test]
async fn a_bad_task_is_refused_at_create_naming_the_field() {
    let node = TestNode::start();
    let api = node.api(&node.key_for(&[FROM, HANDLER]).await);
    for (task, field) in [
        (json!({"task_type": "approval"}), "human_task.title"),
        (json!({"title": "t", "task_type": "form"}), "human_task.form_schema"),
        (json!({"title": "t", "task_type": "juggle"}), "human_task.task_type"),
        (json!({"title": "t", "form_schema": {"type": "array"}}), "human_task.form_schema.type"),
    ] {
        let mut body = intent_body(FROM, HANDLER);
        body["human_task"] = task.clone();
        let (status, body) = api.post("/v1/intents", body).await;
        assert_eq!(status, 422, "{task}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(&format!("{field}:")), "{body}");
    }
}

#[tokio::test]
async fn approvals_decide_the_task_only_its_answerers_may_and_a_rejection_cancels() {
    let node = TestNode::start();
    let api = node.api(&node.key_for(&[FROM, HANDLER]).await);
    let ann = node.api(&node.key_for(&[ANN]).await);
    let bob = node.api(&node.key_for(&[BOB]).await);
    let initiator = node.api(&node.key_for(&[FROM]).await);
    let task = json!({"title": "Pay 100?", "assignees": [ANN, "ann@example.com"]});
    let id = create(&api, task.clone()).await;
    let (status, body) = bob.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "approve"})).await;
    assert_eq!(status, 404, "bob cannot even see the intent: {body}");
    let (status, body) = initiator.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "approve"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_assignee")), "{body}");
    let (status, body) = api.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "maybe"})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = ann.get(&format!("/v1/intents/{id}")).await;
    assert_eq!(status, 200, "an assignee sees the intent it is asked about: {body}");
    let (status, body) =
        ann.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "reject", "comment": "too much"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["approval"]["decision"], "reject");
    assert_eq!(body["approval"]["comment"], "too much");
    assert_eq!(body["status"], "CANCELED");
    let last = api.events(&id).await.pop().unwrap();
    assert_eq!(last["details"]["decision"], json!({"by": ANN, "at": last["at"], "via": "approvals"}));
    assert_eq!(last["details"]["task_result"]["outcome"], "rejected");
    let (status, _) = api.post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "approve"})).await;
    assert_eq!(status, 409, "already decided");
}

#[tokio::test]
async fn me_tasks_lists_the_open_tasks_of_the_callers_addresses() {
    let node = TestNode::start();
    let other_desk = "agent://acme/test/other";
    let api = node.api(&node.key_for(&[FROM, HANDLER, other_desk]).await);
    let desk = node.api(&node.key_for(&[HANDLER]).await);
    let other = node.api(&node.key_for(&[other_desk]).await);
    let mine = create(&api, json!({"title": "Mine", "task_type": "confirmation"})).await;
    let mut body = intent_body(FROM, other_desk);
    body["human_task"] = json!({"title": "Theirs"});
    let (status, theirs) = api.post("/v1/intents", body).await;
    assert_eq!(status, 200, "{theirs}");
    let plain = api.send(FROM, HANDLER).await;
    let ids = |body: &Value| -> Vec<String> {
        body["tasks"].as_array().unwrap().iter().map(|task| task["intent_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, body) = desk.get("/v1/me/tasks").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), std::slice::from_ref(&mine), "{body}");
    let task = &body["tasks"][0];
    assert_eq!((task["status"].as_str(), task["human_task"]["title"].as_str()), (Some("WAITING"), Some("Mine")));
    assert!(task["assigned_at"].is_string(), "{task}");
    let (_, body) = other.get("/v1/me/tasks").await;
    assert_eq!(ids(&body), [theirs["intent_id"].as_str().unwrap().to_owned()]);
    let (_, body) = api.get(&format!("/v1/me/tasks?owner_agent={HANDLER}")).await;
    assert_eq!(ids(&body), std::slice::from_ref(&mine), "owner_agent narrows to one address");
    let (status, _) = desk.get(&format!("/v1/me/tasks?owner_agent={other_desk}")).await;
    assert_eq!(status, 403, "an address the key may not act for");
    let ann = node.api(&node.key_for(&[ANN]).await);
    let (_, body) = ann.get("/v1/me/tasks").await;
    assert!(ids(&body).is_empty(), "{body}");
    let asked = create(&api, json!({"title": "Ann's", "assignees": [ANN, "ann@example.com"]})).await;
    let (_, body) = ann.get("/v1/me/tasks").await;
    assert_eq!(ids(&body), std::slice::from_ref(&asked), "an assignee that is not the handler: {body}");
    let (_, body) = ann.get(&format!("/v1/me/tasks?owner_agent={ANN}")).await;
    assert_eq!(ids(&body), std::slice::from_ref(&asked));
    let (status, body) = resume(&ann, &asked, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"]["by"], ANN);
    let (_, body) = ann.get("/v1/me/tasks").await;
    assert!(ids(&body).is_empty(), "an answered task is no longer listed: {body}");
    let (status, _) = resume(&desk, &mine, json!({})).await;
    assert_eq!(status, 200);
    let (_, body) = desk.get("/v1/me/tasks").await;
    assert!(ids(&body).is_empty(), "an answered task is no longer listed: {body}");
    assert!(!ids(&body).contains(&plain));
}

#[tokio::test]
async fn the_cli_lists_shows_and_answers_tasks() {
    let node = TestNode::start();
    let key = node.key_for(&[FROM, HANDLER]).await;
    let api = node.api(&key);
    let axp = |args: &[&str]| {
        let output = std::process::Command::new(common::AXP)
            .args(args)
            .env("AXP_URL", &node.url)
            .env("AXP_API_KEY", &key)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        )
    };
    let approval = create(&api, json!({"title": "Ship it?"})).await;
    let schema = json!({"type": "object", "required": ["amount", "urgent"], "properties": {
        "amount": {"type": "integer"}, "urgent": {"type": "boolean"}, "note": {"type": "string"}}});
    let form = create(&api, json!({"title": "Expense", "task_type": "form", "form_schema": schema})).await;
    let manual = create(&api, json!({"title": "Swap disk", "task_type": "manual_action"})).await;
    let rejected = create(&api, json!({"title": "Delete prod?"})).await;
    let (ok, listed) = axp(&["tasks", "list"]);
    assert!(ok && listed.contains(&approval) && listed.contains("Ship it?") && listed.contains("form"), "{listed}");
    let (ok, shown) = axp(&["tasks", "show", &form]);
    assert!(ok && shown.contains("WAITING_FOR_HUMAN") && shown.contains("Expense"), "{shown}");
    let (ok, out) = axp(&["tasks", "approve", &approval, "--comment", "lgtm"]);
    assert!(ok && out.contains("IN_PROGRESS"), "{out}");
    let (ok, out) = axp(&["tasks", "submit", &form, "--field", "amount=12"]);
    assert!(!ok && out.contains("task_result.data.urgent"), "a missing field is refused: {out}");
    let (ok, out) =
        axp(&["tasks", "submit", &form, "--field", "amount=12", "--field", "urgent=true", "--field", "note=7"]);
    assert!(ok && out.contains("submitted"), "{out}");
    let evidence = node.dir.path().join("photo.txt");
    std::fs::write(&evidence, b"abc").unwrap();
    let (ok, out) = axp(&["tasks", "submit", &manual, "--file", evidence.to_str().unwrap()]);
    assert!(ok && out.contains("completed"), "{out}");
    let (ok, out) = axp(&["tasks", "reject", &rejected, "-c", "no"]);
    assert!(ok && out.contains("CANCELED"), "{out}");
    let approved = api.events(&approval).await.pop().unwrap();
    assert_eq!(approved["details"]["decision"]["via"], "cli");
    assert_eq!(approved["details"]["task_result"]["comment"], "lgtm");
    let submitted = api.events(&form).await.pop().unwrap();
    assert_eq!(submitted["details"]["task_result"]["data"], json!({"amount": 12, "urgent": true, "note": "7"}));
    let done = api.events(&manual).await.pop().unwrap();
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(
        done["details"]["task_result"]["data"]["evidence"],
        json!([{"name": "photo.txt", "size": 3, "sha256": sha}])
    );
    let (ok, listed) = axp(&["tasks", "list"]);
    assert!(ok && !listed.contains(&approval) && !listed.contains(&rejected), "{listed}");
}

#[tokio::test]
async fn an_answered_task_goes_to_the_handler_a_bare_resume_is_an_answer_and_all_is_audited() {
    let mut node = TestNode::start();
    node.log_with("warn,axp::audit=info");
    let api = node.api(&node.key_for(&[FROM, HANDLER]).await);
    let poll = format!("/v1/intents?status=pending&to_agent={HANDLER}");
    let id = create(&api, json!({"title": "Refund?", "task_type": "approval"})).await;
    let (_, body) = api.get(&poll).await;
    assert!(body["intents"].as_array().unwrap().is_empty(), "not offered while the human decides: {body}");
    let (status, body) = api.post(&format!("/v1/intents/{id}/resume"), json!({"reason": "ok by me"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["task_result"], json!({"outcome": "approved", "comment": "ok by me", "data": {}}));
    let (_, body) = api.get(&poll).await;
    assert_eq!(body["intents"][0]["intent_id"], id, "offered to the handler after the answer: {body}");
    assert_eq!(body["intents"][0]["status"], "IN_PROGRESS");
    let (status, body) =
        api.post(&format!("/v1/intents/{id}/resolve"), json!({"status": "COMPLETED", "result": {"done": true}})).await;
    assert_eq!(status, 200, "{body}");

    let schema = json!({"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}});
    let form = create(&api, json!({"title": "How much?", "task_type": "form", "form_schema": schema})).await;
    let (status, body) = api.post(&format!("/v1/intents/{form}/resume"), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("field_required")), "{body}");
    let (status, body) = api.post(&format!("/v1/intents/{form}/resume"), json!({"amount": 9.5})).await;
    assert_eq!(status, 200, "{body}");
    let denied = create(&api, json!({"title": "Deny?"})).await;
    let (status, body) =
        api.post(&format!("/v1/intents/{denied}/resume"), json!({"approve_current_step": false})).await;
    assert_eq!((status, body["intent"]["status"].as_str()), (200, Some("CANCELED")), "{body}");

    let log = std::fs::read_to_string(node.dir.path().join("node.log")).unwrap();
    let audited =
        |what: &str, id: &str| log.lines().any(|l| l.contains("axp::audit") && l.contains(what) && l.contains(id));
    assert!(audited("human_task_assigned", &id) && audited("human_task_answered", &id), "{log}");
    assert!(audited("human_task_answered", &denied), "{log}");
}

#[tokio::test]
async fn an_inbox_approval_answers_the_open_task_under_its_rules() {
    let node = TestNode::start();
    let api = node.admin();
    let mut body = intent_body(FROM, HANDLER);
    body["reply_to"] = json!(FROM);
    body["human_task"] = json!({"task_type": "approval", "title": "Pay the invoice", "required_comment": true});
    let (status, created) = api.post("/v1/intents", body).await;
    assert_eq!((status, created["status"].as_str()), (200, Some("WAITING")), "{created}");
    let id = created["intent_id"].as_str().unwrap();
    let before = api.events(id).await;
    let approve = format!("/v1/inbox/{id}/approve?owner_agent={FROM}");
    let (status, refused) = api.post(&approve, json!({})).await;
    assert_eq!(status, 422, "the task demands a comment: {refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("comment"), "{refused}");
    assert_eq!(api.events(id).await, before, "a refused answer changes nothing");
    let (status, approved) = api.post(&approve, json!({"comment": "budget checked"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["intent"]["status"], "IN_PROGRESS");
    let last = api.events(id).await.pop().unwrap();
    assert_eq!(
        (last["details"]["decision"]["via"].as_str(), last["details"]["task_result"]["outcome"].as_str()),
        (Some("inbox"), Some("approved"))
    );
}
