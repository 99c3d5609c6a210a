//! The `axp` binary as an operator and a person use it: `node init|run` and its failure
//! modes, and the `intents` commands against a running node.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::{AXP, TestNode, spawn_node};

fn axp(args: &[&str]) -> Output {
    Command::new(AXP).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn init_writes_private_files_prints_the_key_once_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let output = axp(&["node", "init", "--data-dir", data.to_str().unwrap(), "--org", "acme"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains(key.trim()));
    for file in ["admin.key", "axp.toml"] {
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let config = std::fs::read_to_string(data.join("axp.toml")).unwrap();
    assert!(config.contains("listen = \"127.0.0.1:7400\""), "loopback by default: {config}");
    assert!(!config.contains(key.trim()), "the key is not in the config");
    let again = axp(&["node", "init", "--data-dir", data.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a node configuration"), "{}", stderr(&again));
    let bad_org = axp(&["node", "init", "--data-dir", dir.path().join("other").to_str().unwrap(), "--org", "Bad Org"]);
    assert!(!bad_org.status.success());
}

#[test]
fn run_refuses_missing_and_invalid_configs_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let output = axp(&["node", "run", "--config", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nope.toml"), "{}", stderr(&output));

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[node]\norg = \"acme\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \".\"\nlisen = 1\n").unwrap();
    let output = axp(&["node", "run", "--config", typo.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("lisen"), "{}", stderr(&output));
}

#[test]
fn a_second_node_on_the_same_port_or_data_dir_fails_clearly() {
    let node = TestNode::start();
    // Same data dir on another port: the store is locked.
    let locked = Command::new(AXP)
        .args(["node", "run", "--config"])
        .arg(node.config_path())
        .env("AXP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!locked.status.success());
    assert!(stderr(&locked).contains("in use by another running node"), "{}", stderr(&locked));

    // Another data dir on the first node's port.
    let other = tempfile::tempdir().unwrap();
    let port = node.url.rsplit(':').next().unwrap();
    let init =
        axp(&["node", "init", "--data-dir", other.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
    assert!(init.status.success());
    let error = spawn_node(&other.path().join("axp.toml")).expect_err("the port is taken");
    assert!(error.contains("cannot listen"), "{error}");
}

#[tokio::test]
async fn intents_commands_send_follow_and_resolve() {
    let node = TestNode::start();
    let cli = |args: &[&str]| {
        let node_url = node.url.clone();
        let key = node.admin_key.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(AXP)
                    .arg("intents")
                    .args(&args)
                    .env("AXP_URL", node_url)
                    .env("AXP_API_KEY", key)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let sent = cli(&[
        "send",
        "--to",
        "agent://acme/cli/worker",
        "--from",
        "agent://acme/cli/me",
        "--type",
        "intent.cli.v1",
        "--payload",
        "{\"x\":1}",
    ])
    .await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let id = String::from_utf8(sent.stdout).unwrap().trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    let watcher = cli(&["watch", &id]);
    let watching = tokio::spawn(watcher);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let resolved = cli(&["resolve", &id, "--status", "completed", "--result", "{\"answer\":42}"]).await;
    assert!(resolved.status.success(), "{}", stderr(&resolved));
    assert!(String::from_utf8_lossy(&resolved.stdout).contains("intent.completed"));
    let watched = tokio::time::timeout(std::time::Duration::from_secs(15), watching).await.unwrap().unwrap();
    assert_eq!(watched.status.code(), Some(0), "watch exits 0 on COMPLETED: {}", stderr(&watched));
    let lines = String::from_utf8(watched.stdout).unwrap();
    for event in ["intent.created", "intent.submitted", "intent.in_progress", "intent.completed"] {
        assert!(lines.contains(event), "{event} missing from watch output:\n{lines}");
    }

    let got = cli(&["get", &id]).await;
    let text = String::from_utf8(got.stdout).unwrap();
    assert!(text.contains("COMPLETED") && text.contains("\"answer\":42"), "{text}");
    let events = cli(&["events", &id, "--json"]).await;
    let events: serde_json::Value = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 4);

    let canceled =
        cli(&["send", "--to", "agent://acme/cli/worker", "--from", "agent://acme/cli/me", "--type", "intent.cli.v1"])
            .await;
    let second = String::from_utf8(canceled.stdout).unwrap().trim().to_owned();
    cli(&["resolve", &second, "--status", "CANCELED", "--reason", "not needed"]).await;
    let watched = cli(&["watch", &second]).await;
    assert_eq!(watched.status.code(), Some(1), "watch exits 1 on CANCELED");

    let refused = cli(&["resolve", &second, "--status", "COMPLETED"]).await;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("intent_terminal"), "{}", stderr(&refused));
    let bad =
        cli(&["send", "--to", "agent://acme/cli/worker", "--type", "intent.cli.v1", "--payload", "{not json"]).await;
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--payload"), "{}", stderr(&bad));
}
