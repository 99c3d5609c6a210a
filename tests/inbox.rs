//! The inbox over real HTTP and a real sled store: `reply_to` threads that follow their intent
//! and carry its outcome, owner scoping, every thread operation's good and bad inputs, paging
//! of the change feed, and threads surviving SIGKILL.

mod common;

use common::{Api, TestNode, intent_body};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/inbox/initiator";
const HANDLER: &str = "agent://acme/inbox/handler";
const OWNER: &str = "agent://acme/inbox/owner";

/// Creates an intent from FROM to `to` whose outcome goes to `reply_to`; returns its id.
async fn send_replying(api: &Api, to: &str, reply_to: &str) -> String {
    let mut body = intent_body(FROM, to);
    body["reply_to"] = json!(reply_to);
    let (status, answer) = api.post("/v1/intents", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["intent_id"].as_str().unwrap().to_owned()
}

async fn thread(api: &Api, id: &str) -> Value {
    let (status, body) = api.get(&format!("/v1/inbox/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["thread"].clone()
}

fn event_types(thread: &Value) -> Vec<String> {
    thread["timeline"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap().to_owned()).collect()
}

fn assert_error(answer: (u16, Value), status: u16, code: &str, field: &str) {
    let (got, body) = answer;
    assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains(field), "the message names {field}: {body}");
}

/// A GET naming the owner in the `x-owner-agent` header.
async fn get_as_owner(api: &Api, path: &str, owner: &str) -> (u16, Value) {
    let request = api.http.get(format!("{}{path}", api.url)).header("x-api-key", &api.key);
    let response = request.header("x-owner-agent", owner).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_for_human(api: &Api, id: &str) {
    let body = json!({"status": "WAITING", "waiting_reason": "WAITING_FOR_HUMAN"});
    let (status, answer) = api.post(&format!("/v1/intents/{id}/transition"), body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_reply_to_thread_follows_its_intent_and_carries_the_outcome() {
    let node = TestNode::start();
    let admin = node.admin();
    let owner = node.api(&node.key_for(&[OWNER]).await);
    let handler = node.api(&node.key_for(&[HANDLER]).await);
    let id = send_replying(&admin, HANDLER, OWNER).await;

    let (status, inbox) = owner.get("/v1/inbox").await;
    assert_eq!(status, 200, "{inbox}");
    let threads = inbox["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 1);
    let opened = &threads[0];
    assert_eq!((opened["thread_id"].as_str(), opened["intent_id"].as_str()), (Some(id.as_str()), Some(id.as_str())));
    assert_eq!((opened["status"].as_str(), opened["owner_agent"].as_str()), (Some("active"), Some(OWNER)));
    assert_eq!((opened["from_agent"].as_str(), opened["to_agent"].as_str()), (Some(FROM), Some(HANDLER)));
    assert_eq!(event_types(opened), ["intent.created", "intent.submitted"]);

    let outcome = json!({"status": "COMPLETED", "result": {"answer": 42}});
    let (status, resolved) = handler.post(&format!("/v1/intents/{id}/resolve"), outcome).await;
    assert_eq!(status, 200, "{resolved}");
    let delivery = &resolved["completion_delivery"];
    assert_eq!(delivery["delivered"], true, "{resolved}");
    assert_eq!((delivery["reply_to"].as_str(), delivery["thread_id"].as_str()), (Some(OWNER), Some(id.as_str())));
    assert_eq!(delivery["completion"]["result"], json!({"answer": 42}));

    let done = thread(&owner, &id).await;
    assert_eq!((done["status"].as_str(), done["intent_status"].as_str()), (Some("done"), Some("COMPLETED")));
    assert_eq!(done["result"], json!({"answer": 42}));
    assert_eq!(
        event_types(&done),
        ["intent.created", "intent.submitted", "intent.in_progress", "intent.completed", "message.completion"]
    );
    let messages = done["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["message_id"], delivery["message_id"]);
    assert_eq!(messages[0]["kind"], "completion");

    // Failures carry their error; an intent without reply_to has no thread and no delivery.
    let failed = send_replying(&admin, HANDLER, OWNER).await;
    let outcome = json!({"status": "FAILED", "error": {"code": "boom"}});
    let (_, resolved) = handler.post(&format!("/v1/intents/{failed}/resolve"), outcome).await;
    assert_eq!(resolved["completion_delivery"]["completion"]["error"], json!({"code": "boom"}));
    assert_eq!(thread(&owner, &failed).await["error"], json!({"code": "boom"}));
    let plain = admin.send(FROM, HANDLER).await;
    let (_, resolved) =
        handler.post(&format!("/v1/intents/{plain}/resolve"), json!({"status": "CANCELED", "reason": "x"})).await;
    assert_eq!(resolved["completion_delivery"], Value::Null);
    assert_eq!(admin.get(&format!("/v1/inbox/{plain}")).await.0, 404);
}

#[tokio::test]
async fn threads_are_scoped_to_their_owner_and_bad_reads_name_the_field() {
    let node = TestNode::start();
    let admin = node.admin();
    let id = send_replying(&admin, HANDLER, OWNER).await;
    let stranger = node.api(&node.key_for(&["agent://acme/inbox/stranger"]).await);
    let both = node.api(&node.key_for(&[OWNER, "agent://acme/inbox/stranger"]).await);

    // Someone else's thread is the same 404 as a missing one, on every path.
    assert_error(stranger.get(&format!("/v1/inbox/{id}")).await, 404, "not_found", "thread");
    assert_error(stranger.get(&format!("/v1/inbox/{}", uuid::Uuid::new_v4())).await, 404, "not_found", "thread");
    for op in ["reply", "read"] {
        let body = if op == "reply" { json!({"message": "hi"}) } else { json!({}) };
        assert_error(stranger.post(&format!("/v1/inbox/{id}/{op}"), body).await, 404, "not_found", "thread");
    }
    let (_, listed) = stranger.get("/v1/inbox").await;
    assert_eq!(listed["threads"], json!([]));
    assert_error(
        stranger.get(&format!("/v1/inbox?owner_agent={OWNER}")).await,
        403,
        "address_not_granted",
        "owner_agent",
    );
    // Naming another of one's own addresses as the owner hides the thread too.
    let other = "agent://acme/inbox/stranger";
    assert_error(both.get(&format!("/v1/inbox/{id}?owner_agent={other}")).await, 404, "not_found", "thread");
    assert_eq!(both.get(&format!("/v1/inbox/{id}?owner_agent={OWNER}")).await.0, 200);
    // A key acting for many addresses must say whose inbox it reads.
    assert_error(admin.get("/v1/inbox").await, 422, "invalid_field", "owner_agent");
    let (status, _) = get_as_owner(&admin, &format!("/v1/inbox?owner_agent={OWNER}"), other).await;
    assert_eq!(status, 400, "header and query disagree");
    let (_, body) = get_as_owner(&admin, "/v1/inbox", OWNER).await;
    assert_eq!(body["threads"].as_array().unwrap().len(), 1, "x-owner-agent scopes like owner_agent");

    assert_error(admin.get("/v1/inbox/not-a-uuid").await, 400, "invalid_thread_id", "thread id");
    assert_error(admin.get("/v1/inbox?owner_agent=nope").await, 422, "invalid_field", "owner_agent");
    assert_error(
        admin.get(&format!("/v1/inbox?owner_agent={OWNER}&status=open")).await,
        422,
        "invalid_field",
        "status",
    );
    assert_error(
        admin.get(&format!("/v1/inbox/changes?owner_agent={OWNER}&cursor=x")).await,
        422,
        "invalid_field",
        "cursor",
    );
    assert_error(
        admin.get(&format!("/v1/inbox/changes?owner_agent={OWNER}&limit=0")).await,
        422,
        "invalid_field",
        "limit",
    );
    assert_error(
        admin.get(&format!("/v1/inbox/changes?owner_agent={OWNER}&limit=201")).await,
        422,
        "invalid_field",
        "limit",
    );
    // The status filter.
    for (filter, count) in [("active", 1), ("done", 0), ("pending,active", 1)] {
        let (status, body) = admin.get(&format!("/v1/inbox?owner_agent={OWNER}&status={filter}")).await;
        assert_eq!((status, body["threads"].as_array().unwrap().len()), (200, count), "{filter}: {body}");
    }
}

#[tokio::test]
async fn reply_delegate_read_and_delete_change_the_thread_and_refuse_bad_input() {
    let node = TestNode::start();
    let admin = node.admin();
    let owner = node.api(&node.key_for(&[OWNER]).await);
    let id = send_replying(&admin, HANDLER, OWNER).await;
    let path = |op: &str| format!("/v1/inbox/{id}/{op}");

    // reply
    let (status, replied) = owner.post(&path("reply"), json!({"message": "first"})).await;
    assert_eq!(status, 200, "{replied}");
    assert_eq!(
        (replied["message"]["kind"].as_str(), replied["message"]["from"].as_str()),
        (Some("reply"), Some(OWNER))
    );
    let again = owner.post_keyed(&path("reply"), json!({"message": "second"}), Some("reply-once")).await;
    let repeat = owner.post_keyed(&path("reply"), json!({"message": "second"}), Some("reply-once")).await;
    assert_eq!(again, repeat, "a keyed reply replays its answer");
    assert_error(owner.post(&path("reply"), json!({})).await, 422, "invalid_field", "message");
    assert_error(owner.post(&path("reply"), json!({"message": "  "})).await, 422, "invalid_field", "message");
    assert_error(
        owner.post(&path("reply"), json!({"message": "x".repeat(5001)})).await,
        422,
        "invalid_field",
        "message",
    );
    assert_error(owner.post(&path("reply"), json!({"message": 5})).await, 422, "invalid_field", "message");
    assert_error(owner.post(&path("reply"), json!({"message": "a", "to": "b"})).await, 422, "unknown_field", "to");
    assert_eq!(owner.post(&path("reply"), json!({"message": "x".repeat(5000)})).await.0, 200);
    let replies: Vec<String> = thread(&owner, &id).await["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replies.len(), 3, "the keyed retry added nothing");

    // read
    assert_eq!(thread(&owner, &id).await["unread"], true);
    let (status, read) = owner.post(&path("read"), json!({})).await;
    assert_eq!((status, read["thread"]["unread"].as_bool()), (200, Some(false)), "{read}");
    assert!(read["thread"]["read_at"].is_string());
    assert_error(owner.post(&path("read"), json!({"x": 1})).await, 422, "unknown_field", "x");

    // delete: bad input deletes nothing
    let delete_path = path("messages/delete");
    let delete = |body: Value| owner.post(&delete_path, body);
    assert_error(delete(json!({"limit": 1})).await, 422, "invalid_field", "mode");
    assert_error(delete(json!({"mode": "all", "limit": 1})).await, 422, "invalid_field", "mode");
    assert_error(delete(json!({"mode": "self"})).await, 422, "invalid_field", "message_ids");
    assert_error(
        delete(json!({"mode": "self", "limit": 1, "message_ids": [replies[0]]})).await,
        422,
        "invalid_field",
        "message_ids",
    );
    assert_error(delete(json!({"mode": "self", "limit": 101})).await, 422, "invalid_field", "limit");
    assert_error(delete(json!({"mode": "self", "message_ids": []})).await, 422, "invalid_field", "message_ids");
    let unknown = json!({"mode": "both", "message_ids": [replies[0], "not-a-message"]});
    assert_error(delete(unknown).await, 422, "unknown_message", "message_ids");
    assert_eq!(thread(&owner, &id).await["messages"].as_array().unwrap().len(), 3);
    // delete: self hides the latest, both removes by id
    let (status, hidden) = delete(json!({"mode": "self", "limit": 1})).await;
    assert_eq!(status, 200, "{hidden}");
    assert_eq!((hidden["mode"].as_str(), hidden["deleted_count"].as_u64()), (Some("self"), Some(1)));
    assert_eq!(hidden["message_ids"], json!([replies[2]]));
    let (_, removed) = delete(json!({"mode": "both", "message_ids": [replies[0]]})).await;
    assert_eq!(removed["message_ids"], json!([replies[0]]));
    let left = thread(&owner, &id).await;
    let left: Vec<&str> =
        left["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    assert_eq!(left, [replies[1].as_str()]);
    let lifecycle = json!({"mode": "both", "message_ids": [thread(&owner, &id).await["timeline"][0]["event_id"]]});
    assert_error(delete(lifecycle).await, 422, "unknown_message", "message_ids");

    // delegate
    let deputy = "agent://acme/inbox/deputy";
    assert_error(owner.post(&path("delegate"), json!({})).await, 422, "invalid_field", "delegate_to");
    assert_error(
        owner.post(&path("delegate"), json!({"delegate_to": "nobody"})).await,
        422,
        "invalid_agent_address",
        "delegate_to",
    );
    assert_error(
        owner.post(&path("delegate"), json!({"delegate_to": OWNER})).await,
        422,
        "already_owner",
        "delegate_to",
    );
    let long_note = json!({"delegate_to": deputy, "note": "n".repeat(2001)});
    assert_error(owner.post(&path("delegate"), long_note).await, 422, "invalid_field", "note");
    let (status, delegated) = owner.post(&path("delegate"), json!({"delegate_to": deputy, "note": "yours"})).await;
    assert_eq!((status, delegated["thread"]["owner_agent"].as_str()), (200, Some(deputy)), "{delegated}");
    assert_eq!(owner.get(&format!("/v1/inbox/{id}")).await.0, 404, "the former owner no longer sees it");
    let deputy_key = node.api(&node.key_for(&[deputy]).await);
    let moved = thread(&deputy_key, &id).await;
    assert_eq!(event_types(&moved).last().map(String::as_str), Some("thread.delegated"));
    assert_eq!(moved["unread"], true);
    let (_, listed) = deputy_key.get("/v1/inbox").await;
    assert_eq!(listed["threads"].as_array().unwrap().len(), 1);
    let (_, listed) = owner.get("/v1/inbox").await;
    assert_eq!(listed["threads"], json!([]));
    // The intent's outcome still reaches the thread, now in the deputy's inbox.
    let outcome = json!({"status": "COMPLETED", "result": {"n": 1}});
    let (_, resolved) = admin.post(&format!("/v1/intents/{id}/resolve"), outcome).await;
    assert_eq!(resolved["completion_delivery"]["owner_agent"].as_str(), Some(deputy), "{resolved}");
    assert_eq!(thread(&deputy_key, &id).await["status"], "done");
}

#[tokio::test]
async fn approve_resumes_and_reject_cancels_a_waiting_intent() {
    let node = TestNode::start();
    let admin = node.admin();
    let owner = node.api(&node.key_for(&[OWNER]).await);
    let approved = send_replying(&admin, HANDLER, OWNER).await;
    let rejected = send_replying(&admin, HANDLER, OWNER).await;

    assert_error(
        owner.post(&format!("/v1/inbox/{approved}/approve"), json!({})).await,
        409,
        "intent_not_waiting",
        "WAITING",
    );
    wait_for_human(&admin, &approved).await;
    wait_for_human(&admin, &rejected).await;
    let (_, pending) = owner.get("/v1/inbox?status=pending").await;
    assert_eq!(pending["threads"].as_array().unwrap().len(), 2, "{pending}");

    let long = json!({"comment": "c".repeat(2001)});
    assert_error(owner.post(&format!("/v1/inbox/{approved}/approve"), long).await, 422, "invalid_field", "comment");
    assert_error(
        owner.post(&format!("/v1/inbox/{approved}/approve"), json!({"comment": 1})).await,
        422,
        "invalid_field",
        "comment",
    );
    let (status, answer) = owner.post(&format!("/v1/inbox/{approved}/approve"), json!({"comment": "go"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["applied"].as_bool(), answer["intent"]["status"].as_str()), (Some(true), Some("IN_PROGRESS")));
    assert_eq!(answer["thread"]["status"], "active");
    let types = event_types(&answer["thread"]);
    assert_eq!(types[types.len() - 2..], ["thread.approved", "intent.in_progress"]);
    let events = admin.events(&approved).await;
    let last = events.last().unwrap();
    assert_eq!((last["event_type"].as_str(), last["actor"].as_str()), (Some("intent.in_progress"), Some(OWNER)));
    assert_eq!(last["details"]["reason"], "go");
    assert_error(
        owner.post(&format!("/v1/inbox/{approved}/approve"), json!({})).await,
        409,
        "intent_not_waiting",
        "IN_PROGRESS",
    );

    let (status, answer) = owner.post(&format!("/v1/inbox/{rejected}/reject"), json!({"comment": "no"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["intent"]["status"], "CANCELED");
    assert_eq!(
        (answer["thread"]["status"].as_str(), answer["thread"]["completion"]["status"].as_str()),
        (Some("done"), Some("CANCELED"))
    );
    assert_error(
        owner.post(&format!("/v1/inbox/{rejected}/reject"), json!({})).await,
        409,
        "intent_terminal",
        "terminal",
    );
    assert_eq!(admin.status(&rejected).await, "CANCELED");
}

#[tokio::test]
async fn the_change_feed_pages_through_every_thread_once() {
    let node = TestNode::start();
    let admin = node.admin();
    let owner = node.api(&node.key_for(&[OWNER]).await);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(send_replying(&admin, HANDLER, OWNER).await);
    }
    send_replying(&admin, HANDLER, "agent://acme/inbox/someone-else").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = owner.get(&format!("/v1/inbox/changes?limit=3{query}")).await;
        assert_eq!(status, 200, "{page}");
        let changes = page["changes"].as_array().unwrap();
        pages.push((changes.len(), page["has_more"].as_bool().unwrap()));
        for change in changes {
            assert!(change["cursor"].is_string(), "{change}");
            seen.push(change["thread"]["thread_id"].as_str().unwrap().to_owned());
        }
        if !page["has_more"].as_bool().unwrap() {
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            break;
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(pages, [(3, true), (3, true), (1, false)]);
    assert_eq!(seen, ids, "oldest change first, every thread once, nobody else's");
    let cursor = cursor.unwrap();
    let (_, empty) = owner.get(&format!("/v1/inbox/changes?cursor={cursor}")).await;
    assert_eq!((empty["changes"].as_array().unwrap().len(), empty["next_cursor"].clone()), (0, Value::Null));

    // A changed thread comes again, once, after the cursor; the others do not.
    owner.post(&format!("/v1/inbox/{}/reply", ids[2]), json!({"message": "news"})).await;
    let (_, later) = owner.get(&format!("/v1/inbox/changes?cursor={cursor}")).await;
    let changed: Vec<&str> =
        later["changes"].as_array().unwrap().iter().map(|c| c["thread"]["thread_id"].as_str().unwrap()).collect();
    assert_eq!(changed, [ids[2].as_str()]);
    assert!(later["next_cursor"].as_str().unwrap().parse::<u64>().unwrap() > cursor.parse::<u64>().unwrap());
    // The inbox lists the most recently changed thread first.
    let (_, listed) = owner.get("/v1/inbox").await;
    assert_eq!(listed["threads"][0]["thread_id"].as_str(), Some(ids[2].as_str()));
    assert_eq!(listed["threads"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn threads_survive_sigkill() {
    let mut node = TestNode::start();
    let admin = node.admin();
    let mut before = Vec::new();
    for n in 0..20 {
        let id = send_replying(&admin, HANDLER, OWNER).await;
        if n % 2 == 0 {
            let outcome = json!({"status": "COMPLETED", "result": {"n": n}});
            assert_eq!(admin.post(&format!("/v1/intents/{id}/resolve"), outcome).await.0, 200);
        }
        if n % 3 == 0 {
            let reply = json!({"message": format!("note {n}")});
            assert_eq!(admin.post(&format!("/v1/inbox/{id}/reply?owner_agent={OWNER}"), reply).await.0, 200);
        }
        before.push(id);
    }
    let mut snapshot = Vec::new();
    for id in &before {
        snapshot.push(thread(&admin, id).await);
    }
    node.kill();
    node.restart();
    let admin = node.admin();
    for (id, was) in before.iter().zip(&snapshot) {
        assert_eq!(&thread(&admin, id).await, was, "thread {id} changed across SIGKILL");
    }
    let (_, listed) = admin.get(&format!("/v1/inbox?owner_agent={OWNER}")).await;
    assert_eq!(listed["threads"].as_array().unwrap().len(), 20);
    let (_, changes) = admin.get(&format!("/v1/inbox/changes?owner_agent={OWNER}&limit=200")).await;
    assert_eq!(changes["changes"].as_array().unwrap().len(), 20);
    // The node goes on after the restart: a new outcome lands in the same inbox.
    let outcome = json!({"status": "FAILED", "error": {"code": "late"}});
    let (_, resolved) = admin.post(&format!("/v1/intents/{}/resolve", before[1]), outcome).await;
    assert_eq!(resolved["completion_delivery"]["delivered"], true, "{resolved}");
}
