//! Task emails and pages over real HTTP and real SMTP: a node mails a single-use magic link
//! to a task's people through an SMTP server on loopback; the link's page takes the answer
//! once; altered, cut, expired, spent and closed links get a clear page and change nothing;
//! reminders and escalations are mailed too; a person signs in by an emailed link and answers
//! from their task list. (Headless Chromium drives the same pages in tests/python/test_web_tasks.py.)

mod common;

use std::time::Duration;

use common::smtp::Sink;
use common::{TestNode, intent_body};
use serde_json::{Value, json};

const FROM: &str = "agent://acme/test/initiator";
const HANDLER: &str = "agent://acme/test/desk";
const ANN: &str = "ann@example.com";

fn node(sink: &Sink, extra: &str) -> TestNode {
    node_mailing_to(sink.port, extra)
}

fn node_mailing_to(port: u16, extra: &str) -> TestNode {
    let extra = extra.to_owned();
    TestNode::start_with(move |text| {
        text.push_str(&format!(
            "\n[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\nfrom = \"axp tasks <tasks@acme.test>\"\nretry_base_ms = 200\n{extra}"
        ));
    })
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn create(node: &TestNode, mut options: Value) -> String {
    let mut body = intent_body(FROM, HANDLER);
    body["human_task"] = options["human_task"].take();
    if let Some(extra) = options.as_object() {
        for (name, value) in extra {
            if name != "human_task" {
                body[name] = value.clone();
            }
        }
    }
    let (status, answer) = node.admin().post("/v1/intents", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["intent_id"].as_str().unwrap().to_owned()
}

async fn page(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post_form(client: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, String) {
    let response = client.post(url).form(form).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Signs `email` in through the emailed link (its `nth` mail) and answers the session cookie.
async fn sign_in(node: &TestNode, sink: &Sink, client: &reqwest::Client, email: &str, nth: usize) -> String {
    let (status, _) = post_form(client, &format!("{}/tasks/sign-in", node.url), &[("email", email)]).await;
    assert_eq!(status, 200);
    let link = local(node, &sink.wait_for(email, nth).await.link("/tasks/sign-in/"));
    let response = client.post(&link).send().await.unwrap();
    assert_eq!(response.status(), 303);
    response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

/// The link as the node would be reached now (a restarted test node listens on a new port).
fn local(node: &TestNode, link: &str) -> String {
    let path = &link[link.find("/tasks/").unwrap()..];
    format!("{}{path}", node.url)
}

#[tokio::test]
async fn a_mailed_link_answers_the_task_once() {
    let sink = Sink::start().await;
    let node = node(&sink, "");
    let id = create(
        &node,
        json!({"human_task": {"title": "Approve the offsite", "description": "Budget 2,400 EUR", "notify_email": ANN}}),
    )
    .await;
    let mail = sink.wait_for(ANN, 1).await;
    assert_eq!(mail.subject(), "Your approval is needed: Approve the offsite");
    assert!(mail.body().contains("Budget 2,400 EUR"), "{}", mail.body());
    let link = local(&node, &mail.link("/tasks/link/"));
    let client = browser();

    let (status, html) = page(&client, &link).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Approve the offsite") && html.contains("value=\"approved\""), "{html}");
    assert_eq!(node.admin().status(&id).await, "WAITING", "opening the link decides nothing");

    let (status, html) = post_form(&client, &link, &[("outcome", "approved"), ("comment", "fine")]).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("your answer is recorded"), "{html}");
    let events = node.admin().events(&id).await;
    let resumed = events.last().unwrap();
    assert_eq!(resumed["status"], "IN_PROGRESS");
    assert_eq!(resumed["details"]["decision"]["by"], ANN);
    assert_eq!(resumed["details"]["decision"]["via"], "email_link");
    assert_eq!(resumed["details"]["task_result"]["comment"], "fine");

    for (status, html) in [page(&client, &link).await, post_form(&client, &link, &[("outcome", "rejected")]).await] {
        assert_eq!(status, 410, "{html}");
        assert!(html.contains("already used"), "{html}");
    }
    assert_eq!(node.admin().events(&id).await.len(), events.len(), "a spent link changes nothing");
}

#[tokio::test]
async fn a_queued_mail_survives_sigkill_and_goes_out_once() {
    // Nobody listens on the SMTP port yet: the mail waits in the queue, retried.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut node = node_mailing_to(port, "");
    let id = create(&node, json!({"human_task": {"title": "Sign the lease", "notify_email": ANN}})).await;
    node.kill();
    let sink = Sink::start_on(port).await;
    node.restart();
    let mail = sink.wait_for(ANN, 1).await;
    assert_eq!(mail.subject(), "Your approval is needed: Sign the lease");
    // The link was signed with the key the node keeps across restarts.
    let link = local(&node, &mail.link("/tasks/link/"));
    let (status, html) = page(&browser(), &link).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&id), "{html}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.mails().len(), 1, "sent once");
}

#[tokio::test]
async fn bad_links_and_bad_answers_get_clear_pages_and_change_nothing() {
    let sink = Sink::start().await;
    let node = node(&sink, "link_ttl_seconds = 2\n");
    let task = json!({"human_task": {"title": "Check the contract", "task_type": "review", "required_comment": true, "notify_email": ANN}});
    let id = create(&node, task.clone()).await;
    let link = local(&node, &sink.wait_for(ANN, 1).await.link("/tasks/link/"));
    let client = browser();

    // Altered: one character of the signed part changed; cut: the end missing.
    let token_at = link.rfind('/').unwrap() + 1;
    let mut altered = link.clone().into_bytes();
    altered[token_at + 5] = if altered[token_at + 5] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [altered.as_str(), &link[..link.len() - 4]] {
        let (status, html) = page(&client, bad).await;
        assert_eq!(status, 400, "{bad}: {html}");
        assert!(html.contains("This link is not valid"), "{html}");
        let (status, _) = post_form(&client, bad, &[("outcome", "approved"), ("comment", "x")]).await;
        assert_eq!(status, 400);
    }

    // An answer the task refuses: the form again, the field named, nothing spent or changed.
    let before = node.admin().events(&id).await.len();
    let (status, html) = post_form(&client, &link, &[("outcome", "approved")]).await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("role=\"alert\"") && html.contains("Comment: is required"), "{html}");
    assert!(html.contains("id=\"comment\"") && html.contains("aria-invalid=\"true\""), "{html}");
    let (status, html) = post_form(&client, &link, &[("outcome", "shrug"), ("comment", "x")]).await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("not an allowed outcome"), "{html}");
    assert_eq!(node.admin().events(&id).await.len(), before);

    // Expired: the same link after its two seconds.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, html) = page(&client, &link).await;
    assert_eq!(status, 410, "{html}");
    assert!(html.contains("expired"), "{html}");

    // Closed: the task was answered another way before the link was used.
    let id = create(&node, task).await;
    let link = local(&node, &sink.wait_for(ANN, 2).await.link("/tasks/link/"));
    let (status, body) = node
        .admin()
        .post(&format!("/v1/approvals/{id}/decision"), json!({"decision": "approve", "comment": "ok"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, html) = post_form(&client, &link, &[("outcome", "rejected"), ("comment", "no")]).await;
    assert_eq!(status, 409, "{html}");
    assert!(html.contains("no longer open"), "{html}");
    assert_eq!(node.admin().status(&id).await, "IN_PROGRESS");
}

#[tokio::test]
async fn reminders_and_escalations_are_mailed() {
    let sink = Sink::start().await;
    let node = node(&sink, "[email.contacts]\n\"agent://acme/ops/lead\" = \"lead@example.com\"\n");
    let lead_key = node.key_for(&["agent://acme/ops/lead"]).await;
    let id = create(
        &node,
        json!({
            "human_task": {"title": "Sign the waiver", "task_type": "confirmation", "assignees": [ANN, "bob@example.com"]},
            "remind_after_seconds": 1, "remind_interval_seconds": 1, "max_reminders": 1,
            "escalate_to": "agent://acme/ops/lead",
        }),
    )
    .await;
    let reminder = sink.wait_for(ANN, 2).await;
    assert_eq!(reminder.subject(), "Reminder 1: Sign the waiver");
    assert_eq!(sink.wait_for("bob@example.com", 2).await.subject(), "Reminder 1: Sign the waiver");
    assert_eq!(sink.wait_for(ANN, 3).await.subject(), "Escalated: Sign the waiver");
    let lead = sink.wait_for("lead@example.com", 1).await;
    assert_eq!(lead.subject(), "Escalated: Sign the waiver");
    let events = node.admin().events(&id).await;
    let reminder_event = events.iter().find(|event| event["event_type"] == "intent.reminder").unwrap();
    assert_eq!(reminder_event["details"]["notification"]["email"], json!([ANN, "bob@example.com"]));

    // The escalation target's person finds the task in their list once signed in...
    let client = browser();
    let cookie = sign_in(&node, &sink, &client, "lead@example.com", 2).await;
    let html = client.get(format!("{}/tasks", node.url)).header("cookie", &cookie).send().await.unwrap();
    let html = html.text().await.unwrap();
    assert!(html.contains("Sign the waiver") && html.contains(&format!("/tasks/{id}")), "{html}");
    // ...and answers from the link in their mail.
    let link = local(&node, &lead.link("/tasks/link/"));
    let (status, html) = post_form(&client, &link, &[("outcome", "confirmed")]).await;
    assert_eq!(status, 200, "{html}");
    let last = node.api(&lead_key).events(&id).await.pop().unwrap();
    assert_eq!(last["details"]["decision"]["by"], "lead@example.com");
}

#[tokio::test]
async fn a_signed_in_person_answers_from_their_task_list() {
    let sink = Sink::start().await;
    let node = node(&sink, "");
    let form = json!({"type": "object", "required": ["amount"], "properties": {
        "amount": {"type": "number", "title": "Amount (EUR)", "minimum": 1},
        "urgent": {"type": "boolean"}}});
    let id = create(&node, json!({"human_task": {"title": "Price the order", "task_type": "form", "form_schema": form, "assignees": [ANN]}})).await;
    sink.wait_for(ANN, 1).await;
    let client = browser();
    let url = |path: &str| format!("{}{path}", node.url);

    let (status, html) = page(&client, &url("/tasks")).await;
    assert_eq!(status, 200);
    assert!(html.contains("Email address"), "{html}");
    // Unknown addresses get the same answer and no mail.
    let (status, html) = post_form(&client, &url("/tasks/sign-in"), &[("email", "nobody@example.com")]).await;
    assert_eq!(status, 200);
    assert!(html.contains("If nobody@example.com has tasks"), "{html}");
    let (status, _) = post_form(&client, &url("/tasks/sign-in"), &[("email", "not an address")]).await;
    assert_eq!(status, 422);
    let (status, _) = post_form(&client, &url("/tasks/sign-in"), &[("email", "Ann@Example.com")]).await;
    assert_eq!(status, 200);
    let mail = sink.wait_for(ANN, 2).await;
    assert_eq!(mail.subject(), "Sign in to your tasks");
    let sign_in = local(&node, &mail.link("/tasks/sign-in/"));
    let (status, html) = page(&client, &sign_in).await;
    assert_eq!(status, 200);
    assert!(html.contains(ANN), "{html}");
    let response = client.post(&sign_in).send().await.unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    assert!(response.headers()["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    assert_eq!(client.post(&sign_in).send().await.unwrap().status(), 410, "a sign-in link works once");
    assert!(sink.mails().iter().all(|mail| !mail.to.contains(&"nobody@example.com".to_owned())));

    let signed_in = |path: &str| client.get(url(path)).header("cookie", &cookie);
    let html = signed_in("/tasks").send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Price the order") && html.contains(&format!("/tasks/{id}")), "{html}");
    let html = signed_in(&format!("/tasks/{id}")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Amount (EUR)"), "{html}");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();

    let answer = |form: Vec<(&'static str, String)>| {
        client.post(url(&format!("/tasks/{id}"))).header("cookie", &cookie).form(&form).send()
    };
    let status = answer(vec![("field.amount", "12".into())]).await.unwrap().status();
    assert_eq!(status, 403, "no CSRF token");
    let response = answer(vec![("csrf", csrf.clone()), ("field.amount", "twelve".into())]).await.unwrap();
    assert_eq!(response.status(), 422);
    assert!(response.text().await.unwrap().contains("must be a number"));
    let response = answer(vec![("csrf", csrf.clone()), ("field.amount", "0.5".into())]).await.unwrap();
    assert_eq!(response.status(), 422, "below the minimum");
    let response =
        answer(vec![("csrf", csrf), ("field.amount", "12.5".into()), ("field.urgent", "on".into())]).await.unwrap();
    assert_eq!(response.status(), 200);
    let last = node.admin().events(&id).await.pop().unwrap();
    assert_eq!(last["details"]["task_result"]["data"], json!({"amount": 12.5, "urgent": true}));
    assert_eq!(last["details"]["decision"]["via"], "web");
    let html = signed_in("/tasks").send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Nothing is waiting for you"), "{html}");

    // Signing out ends the session on the node, not only in the browser.
    let response = client.post(url("/tasks/sign-out")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let html = signed_in("/tasks").send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Email address"), "{html}");
    assert_eq!(signed_in(&format!("/tasks/{id}")).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn admins_see_what_was_mailed_and_why_not() {
    // No [email] section: mails are recorded as skipped, with the reason.
    let node = TestNode::start();
    let id = create(&node, json!({"human_task": {"title": "Renew the cert", "notify_email": ANN}})).await;
    let mails = common::eventually("the mail record", Duration::from_secs(10), async || {
        let (status, body) = node.admin().get(&format!("/v1/admin/mails?intent_id={id}")).await;
        assert_eq!(status, 200, "{body}");
        let mails = body["mails"].as_array().cloned().unwrap_or_default();
        (mails.first().is_some_and(|mail| mail["status"]["state"] == "skipped")).then_some(mails)
    })
    .await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["to"], json!({"kind": "email", "value": ANN}));
    assert!(mails[0]["status"]["reason"].as_str().unwrap().contains("no SMTP server"), "{}", mails[0]);

    let (status, body) = node.admin().get("/v1/admin/mails?status=lost").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_field")), "{body}");
    let key = node.key_for(&[HANDLER]).await;
    let (status, body) = node.api(&key).get("/v1/admin/mails").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("admin_required")), "{body}");

    let output = std::process::Command::new(common::AXP)
        .args(["tasks", "mails", "--status", "skipped"])
        .env("AXP_URL", &node.url)
        .env("AXP_API_KEY", &node.admin_key)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && printed.contains(ANN) && printed.contains(&id), "{printed}");
}
