//! API keys over real HTTP: presentation, revocation, owner scoping, handler-only operations,
//! admin-only key management, and per-key rate limits.

mod common;

use common::{TestNode, intent_body};
use serde_json::json;

const A: &str = "agent://acme/team/a";
const B: &str = "agent://acme/team/b";
const C: &str = "agent://acme/other/c";

#[tokio::test]
async fn requests_without_a_valid_key_get_401_with_a_code() {
    let node = TestNode::start();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/capabilities", node.url);
    let cases: [(Option<(&str, String)>, &str); 4] = [
        (None, "missing_api_key"),
        (Some(("x-api-key", "axp_nope_nope".into())), "invalid_api_key"),
        (Some(("x-api-key", "garbage".into())), "invalid_api_key"),
        (Some(("authorization", "Basic abc".into())), "missing_api_key"),
    ];
    for (header, code) in cases {
        let mut request = http.get(&url);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
    }
    // A wrong secret for a real key id is as invalid as a made-up key.
    let (key_id, _) = node.admin_key.trim_start_matches("axp_").split_once('_').unwrap();
    let forged = format!("axp_{key_id}_{}", "0".repeat(64));
    let response = http.get(&url).header("x-api-key", forged).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // /health is open.
    assert_eq!(http.get(format!("{}/health", node.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn bearer_is_the_key_only_without_x_api_key() {
    let node = TestNode::start();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/capabilities", node.url);
    let bearer = http.get(&url).bearer_auth(&node.admin_key).send().await.unwrap();
    assert_eq!(bearer.status(), 200);
    // With both, the bearer value is a person's actor token and the x-api-key decides.
    let both = http.get(&url).header("x-api-key", "axp_bad_key").bearer_auth(&node.admin_key).send().await.unwrap();
    assert_eq!(both.status(), 401);
}

#[tokio::test]
async fn a_key_sees_only_intents_of_its_addresses_and_404s_hide_the_rest() {
    let node = TestNode::start();
    let admin = node.admin();
    let a = node.api(&node.key_for(&[A]).await);
    let b_and_c = node.api(&node.key_for(&["agent://acme/team/b", "agent://acme/other/*"]).await);
    let between_b_and_c = admin.send(B, C).await;
    let from_a = a.send(A, B).await;

    for path in [
        format!("/v1/intents/{between_b_and_c}"),
        format!("/v1/intents/{between_b_and_c}/events"),
        format!("/v1/intents/{between_b_and_c}/events/stream?wait_seconds=1"),
    ] {
        let (status, body) = a.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for (path, body) in [
        (format!("/v1/intents/{between_b_and_c}/resolve"), json!({"status": "CANCELED", "reason": "x"})),
        (format!("/v1/intents/{between_b_and_c}/resume"), json!({})),
        (format!("/v1/intents/{between_b_and_c}/controls"), json!({"controls_patch": {}})),
    ] {
        let (status, answer) = a.post(&path, body).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    assert_eq!(admin.status(&between_b_and_c).await, "SUBMITTED", "nothing changed");
    assert_eq!(a.status(&from_a).await, "SUBMITTED");
    assert_eq!(b_and_c.status(&from_a).await, "SUBMITTED", "the handler sees it too");
    assert_eq!(b_and_c.status(&between_b_and_c).await, "SUBMITTED");

    // from_agent defaults to the key's address and cannot be someone else's.
    let (status, body) = a.post("/v1/intents", intent_body(C, B)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("address_not_granted")));
    let mut implicit = intent_body(A, B);
    implicit.as_object_mut().unwrap().remove("from_agent");
    let (status, body) = a.post("/v1/intents", implicit).await;
    assert_eq!(status, 200, "{body}");
    let (_, got) = a.get(&format!("/v1/intents/{}", body["intent_id"].as_str().unwrap())).await;
    assert_eq!(got["intent"]["from_agent"], A);
    // reply_to and owner_agent must be the caller's too.
    let mut foreign_reply = intent_body(A, B);
    foreign_reply["reply_to"] = json!(C);
    assert_eq!(a.post("/v1/intents", foreign_reply).await.0, 403);
    let (status, _) = a.post(&format!("/v1/intents/{from_a}/resume?owner_agent={C}"), json!({})).await;
    assert_eq!(status, 403);
    // Listening for another address is refused.
    let (status, _) = a.get("/v1/agents/acme/team/b/intents/stream?wait_seconds=1").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn only_the_handler_completes_while_either_side_may_cancel() {
    let node = TestNode::start();
    let initiator = node.api(&node.key_for(&[A]).await);
    let handler = node.api(&node.key_for(&[B]).await);
    let id = initiator.send(A, B).await;
    let path = format!("/v1/intents/{id}/resolve");
    let (status, body) = initiator.post(&path, json!({"status": "COMPLETED", "result": {}})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_handler")));
    let (status, _) = initiator.post(&format!("/v1/intents/{id}/transition"), json!({"status": "ACKNOWLEDGED"})).await;
    assert_eq!(status, 403);
    let (status, _) = handler.post(&format!("/v1/intents/{id}/transition"), json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(status, 200);
    let (status, body) = handler.post(&path, json!({"status": "COMPLETED", "result": {"ok": 1}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["actor"], B, "the handler's key speaks as its address");

    let second = initiator.send(A, B).await;
    let (status, body) = initiator
        .post(&format!("/v1/intents/{second}/resolve"), json!({"status": "CANCELED", "reason": "changed my mind"}))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn keys_are_managed_by_admins_and_revocation_takes_effect() {
    let node = TestNode::start();
    let admin = node.admin();
    let scoped = node.api(&node.key_for(&[A]).await);
    let (status, body) = scoped.post("/v1/admin/keys", json!({"owner": "x", "agents": [A]})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("admin_required")));
    assert_eq!(scoped.get("/v1/admin/keys").await.0, 403);
    let (status, body) = admin.post("/v1/admin/keys", json!({"owner": "x", "agents": ["not an address"]})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = admin.post("/v1/admin/keys", json!({"owner": "x"})).await;
    assert_eq!(status, 422, "a non-admin key needs addresses");

    let (_, listed) = admin.get("/v1/admin/keys").await;
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(!listed.to_string().contains(scoped.key.split('_').next_back().unwrap()), "secrets are never listed");
    let scoped_id = scoped.key.split('_').nth(1).unwrap();
    assert_eq!(scoped.get("/v1/capabilities").await.0, 200);
    let (status, body) = admin.post(&format!("/v1/admin/keys/{scoped_id}/revoke"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["key"]["revoked_at"].is_string());
    let (status, body) = scoped.get("/v1/capabilities").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("revoked_api_key")));
    let admin_id = node.admin_key.split('_').nth(1).unwrap();
    let (status, body) = admin.post(&format!("/v1/admin/keys/{admin_id}/revoke"), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("last_admin_key")));
    assert_eq!(admin.post("/v1/admin/keys/nosuchkey/revoke", json!({})).await.0, 404);
}

#[tokio::test]
async fn keys_cli_creates_lists_and_revokes() {
    let node = TestNode::start();
    let axp = |args: &[&str]| {
        std::process::Command::new(common::AXP)
            .args(["keys", "--url", &node.url])
            .args(args)
            .env("AXP_API_KEY", &node.admin_key)
            .output()
            .unwrap()
    };
    let created = axp(&["create", "--owner", "billing", "--agent", "agent://acme/billing/*", "--json"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key_id = created["key"]["key_id"].as_str().unwrap();
    let listed = String::from_utf8(axp(&["list"]).stdout).unwrap();
    assert!(
        listed.contains(key_id) && listed.contains("owner=billing") && listed.contains("agent://acme/billing/*"),
        "{listed}"
    );
    let revoked = axp(&["revoke", key_id]);
    assert!(revoked.status.success());
    assert!(String::from_utf8(revoked.stdout).unwrap().contains("revoked"));
    let refused = axp(&["create", "--owner", "x", "--agent", "nonsense"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("agents"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let node = TestNode::start_with(|config| {
        *config = config.replace("rate_limit_per_second = 0", "rate_limit_per_second = 5")
    });
    let http = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..20 {
        let response = http
            .get(format!("{}/v1/capabilities", node.url))
            .header("x-api-key", &node.admin_key)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("20 quick requests exceed 5 per second");
    assert!(response.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["retryable"].as_bool()),
        (Some("rate_limited"), Some(true))
    );
}
