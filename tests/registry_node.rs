//! A running node with a registry: resolution over the API, refusal of unroutable and remote
//! handlers at submit, reloads on file changes and SIGHUP, and rollback protection that
//! survives a restart.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{AXP, Api, TestNode, intent_body};
use serde_json::{Value, json};

struct Federation {
    node: TestNode,
    registry: tempfile::TempDir,
    keys: tempfile::TempDir,
}

fn axp(args: &[&str]) -> std::process::Output {
    let output = Command::new(AXP).args(args).output().unwrap();
    assert!(output.status.success(), "axp {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn start() -> Federation {
    let registry = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let keys_dir = keys.path().join("keys");
    axp(&[
        "registry",
        "init-demo",
        "--dir",
        registry.path().to_str().unwrap(),
        "--keys-dir",
        keys_dir.to_str().unwrap(),
    ]);
    let dir = registry.path().display().to_string();
    let node = TestNode::start_with(|config| config.push_str(&format!("\n[registry]\ndir = \"{dir}\"\n")));
    Federation { node, registry, keys }
}

impl Federation {
    fn record(&self, org: &str) -> std::path::PathBuf {
        self.registry.path().join("orgs").join(format!("{org}.json"))
    }

    /// Edits an org's record and signs it again (serial + 1).
    fn resign(&self, org: &str, edit: impl FnOnce(&mut Value)) {
        let path = self.record(org);
        let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut record);
        std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
        let key = self.keys.path().join("keys").join(format!("{org}.key"));
        axp(&["registry", "sign", "--org-key", key.to_str().unwrap(), "--record", path.to_str().unwrap()]);
    }

    fn offline_digest(&self) -> String {
        let output = axp(&["registry", "digest", "--dir", self.registry.path().to_str().unwrap()]);
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

async fn resolution(api: &Api, address: &str) -> Value {
    let (status, body) = api.get(&format!("/v1/registry/resolve?address={address}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls until `check` holds for the node's registry view.
async fn eventually(api: &Api, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, registry) = api.get("/v1/registry").await;
        if check(&registry) {
            return registry;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {registry:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn serial_of(registry: &Value, org: &str) -> Option<u64> {
    registry["orgs"].as_array()?.iter().find(|record| record["org"] == org)?["serial"].as_u64()
}

#[tokio::test]
async fn the_node_resolves_like_the_cli_and_refuses_what_it_cannot_route() {
    let federation = start();
    let api = federation.node.admin();
    let (_, registry) = api.get("/v1/registry").await;
    assert_eq!(registry["configured"], true);
    assert_eq!(registry["digest"].as_str().unwrap(), federation.offline_digest(), "node and CLI agree");
    assert_eq!(registry["orgs"].as_array().unwrap().len(), 2);

    assert_eq!(resolution(&api, "agent://acme/ops/bot").await["resolution"], "local");
    let remote = resolution(&api, "agent://globex/sales/bot").await;
    assert_eq!((remote["resolution"].as_str(), remote["node"]["id"].as_str()), (Some("remote"), Some("globex-node-1")));
    let unknown = resolution(&api, "agent://initech/a/b").await;
    assert_eq!(
        (unknown["resolution"].as_str(), unknown["reason"].as_str()),
        (Some("unroutable"), Some("no_accepted_record"))
    );
    assert_eq!(api.get("/v1/registry/resolve?address=nonsense").await.0, 422);

    let from = "agent://acme/ops/sender";
    let (status, body) = api.post("/v1/intents", intent_body(from, "agent://initech/a/b")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("agent_not_found")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("initech"));
    let (status, body) = api.post("/v1/intents", intent_body(from, "agent://globex/sales/bot")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("federation_unavailable")), "{body}");
    let (status, body) = api.post("/v1/intents", intent_body("agent://globex/sales/x", "agent://acme/ops/bot")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("from_agent_not_local")), "{body}");
    let (status, body) = api.post("/v1/intents", intent_body(from, "agent://acme/ops/bot")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn records_swapped_under_a_running_node_are_reloaded_and_bad_ones_refused() {
    let mut federation = start();
    let api = federation.node.admin();
    let first_digest = api.get("/v1/registry").await.1["digest"].clone();

    // A new route, signed with serial 2: picked up from the file change alone.
    federation.resign("globex", |record| {
        record["routes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"prefix": "agent://globex/support", "node": "globex-node-1"}));
    });
    let reloaded = eventually(&api, "globex serial 2", |registry| serial_of(registry, "globex") == Some(2)).await;
    assert_ne!(reloaded["digest"], first_digest);
    assert_eq!(reloaded["digest"].as_str().unwrap(), federation.offline_digest());
    let support = resolution(&api, "agent://globex/support/desk").await;
    assert_eq!(support["resolution"], "remote");

    // One changed byte in acme's record, then SIGHUP: refused, and the accepted record stays.
    let path = federation.record("acme");
    let text = std::fs::read_to_string(&path).unwrap().replace("acme-node-1\"", "acme-node-2\"");
    std::fs::write(&path, text).unwrap();
    let status = Command::new("kill").args(["-HUP", &federation.node.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let refused =
        eventually(&api, "acme refused", |registry| !registry["refused"].as_array().unwrap().is_empty()).await;
    let refusal = &refused["refused"][0];
    assert!(refusal["file"].as_str().unwrap().ends_with("acme.json"), "{refusal}");
    assert_eq!(serial_of(&refused, "acme"), Some(1), "the last accepted acme record stays");
    assert_eq!(resolution(&api, "agent://acme/ops/bot").await["resolution"], "local");

    // Rollback: globex's serial 1 file comes back; after a restart the node still refuses it.
    federation.resign("globex", |_| {});
    eventually(&api, "globex serial 3", |registry| serial_of(registry, "globex") == Some(3)).await;
    federation.node.kill();
    rewrite_serial(&federation, "globex", 1);
    federation.node.restart();
    let api = federation.node.admin();
    let (_, registry) = api.get("/v1/registry").await;
    assert_eq!(serial_of(&registry, "globex"), None, "{registry:#}");
    let codes: Vec<&str> = registry["refused"].as_array().unwrap().iter().filter_map(|r| r["code"].as_str()).collect();
    assert!(codes.contains(&"rollback"), "{codes:?}");
    let unroutable = resolution(&api, "agent://globex/sales/bot").await;
    assert_eq!(unroutable["resolution"], "unroutable");
}

/// Rewrites an org's record as a validly signed older serial: sign from a copy whose serial
/// was set one below the target.
fn rewrite_serial(federation: &Federation, org: &str, serial: u64) {
    let path = federation.record(org);
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["serial"] = json!(serial - 1);
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let key = federation.keys.path().join("keys").join(format!("{org}.key"));
    axp(&["registry", "sign", "--org-key", key.to_str().unwrap(), "--record", path.to_str().unwrap()]);
    assert!(Path::new(&path).exists());
}

#[tokio::test]
async fn standalone_nodes_treat_every_address_as_local() {
    let node = TestNode::start();
    let api = node.admin();
    let (_, registry) = api.get("/v1/registry").await;
    assert_eq!(registry["configured"], false);
    assert_eq!(resolution(&api, "agent://globex/sales/bot").await["resolution"], "local");
    let (status, _) = api.post("/v1/intents", intent_body("agent://anyone/a", "agent://globex/sales/bot")).await;
    assert_eq!(status, 200);
}
