//! The federation kit for tests: two real Synapse homeservers from `federation/up` on a port
//! block of the test's own, and the two nodes started, killed and restarted by the test. A
//! failing test keeps the homeserver and node logs under the target dir's tmp.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use super::{Api, spawn_node};

pub struct Node {
    pub org: String,
    pub config: PathBuf,
    pub url: String,
    pub admin_key: String,
    pub child: Mutex<Option<Child>>,
}

pub struct Kit {
    pub dir: tempfile::TempDir,
    pub description: Value,
    pub nodes: Vec<Node>,
}

impl Drop for Kit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The kit dir goes away with the test: keep its logs as evidence.
            let keep = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("federation_faults")
                .join(self.description["base_port"].as_u64().map_or_else(|| "kit".to_owned(), |port| port.to_string()));
            let _ = std::fs::create_dir_all(&keep);
            for org in ["acme", "globex"] {
                let homeserver =
                    PathBuf::from(self.description["homeservers"][org]["log"].as_str().unwrap_or_default());
                let _ = std::fs::copy(&homeserver, keep.join(format!("{org}-homeserver.log")));
            }
            for node in &self.nodes {
                let _ = std::fs::copy(node.log_path(), keep.join(format!("{}-node.log", node.org)));
            }
            eprintln!("--- logs kept in {}", keep.display());
            for node in &self.nodes {
                let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
                eprintln!(
                    "--- {} node log (last lines of {})\n{}",
                    node.org,
                    node.log_path().display(),
                    tail.join("\n")
                );
            }
        }
        for node in &self.nodes {
            node.kill();
        }
        let _ = Command::new(repo().join("federation/down")).arg("--dir").arg(self.dir.path()).output();
    }
}

/// Each test runs two homeservers and two nodes: they take turns even under a plain `cargo test`
/// (which runs a file's tests in parallel), so that timings stay those of one kit at a time.
pub static ONE_KIT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Node {
    pub fn log_path(&self) -> PathBuf {
        self.config.with_file_name("node.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush beyond what the node already did.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node on its config (same data dir, same port). Blocks until it listens.
    pub fn start(&self) {
        let (child, url) =
            spawn_node(&self.config).unwrap_or_else(|error| panic!("node {} did not start: {error}", self.org));
        assert_eq!(url, self.url, "the node came back on another address");
        *self.child.lock().unwrap() = Some(child);
    }

    /// The node's API as its admin key.
    pub fn api(&self) -> Api {
        Api { http: reqwest::Client::new(), url: self.url.clone(), key: self.admin_key.clone() }
    }
}

impl Kit {
    /// Brings up both homeservers on a port block of its own, provisions and starts both nodes.
    /// The tests' blocks start at 18100, 50 or more apart; `AXP_TEST_PORTS=N` moves them to
    /// N + (block - 18100) / 2 (each kit needs 22 ports), so that test runs in several
    /// worktrees on one machine do not collide.
    pub fn up(base_port: u16) -> Arc<Kit> {
        let base_port = match std::env::var("AXP_TEST_PORTS") {
            Ok(first) => first.parse::<u16>().expect("AXP_TEST_PORTS is a port") + (base_port - 18100) / 2,
            Err(_) => base_port,
        };
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(repo().join("federation/up"))
            .args(["--dir", dir.path().to_str().unwrap(), "--base-port", &base_port.to_string(), "--no-nodes"])
            .env("AXP_BIN", super::AXP)
            .output()
            .expect("federation/up runs (scripts/test sets up the kit)");
        assert!(
            output.status.success(),
            "federation/up failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let description: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("federation.json")).unwrap()).unwrap();
        let mut kit = Kit { dir, description, nodes: Vec::new() };
        for org in ["acme", "globex"] {
            let node = &kit.description["nodes"][org];
            let config = PathBuf::from(node["config"].as_str().unwrap());
            let (child, url) = spawn_node(&config).unwrap_or_else(|error| panic!("node {org} did not start: {error}"));
            kit.nodes.push(Node {
                org: org.to_owned(),
                config,
                url,
                admin_key: node["admin_key"].as_str().unwrap().to_owned(),
                child: Mutex::new(Some(child)),
            });
        }
        eprintln!("kit up on ports {base_port}.. in {:.1?} ({})", started.elapsed(), kit.dir.path().display());
        Arc::new(kit)
    }

    pub fn node(&self, org: &str) -> &Node {
        self.nodes.iter().find(|node| node.org == org).unwrap()
    }

    pub fn homeserver(&self, org: &str) -> &Value {
        &self.description["homeservers"][org]
    }

    /// A kit command on this kit's dir: `federation/<command> <org> --dir DIR`.
    pub fn command(&self, command: &str, org: &str) {
        let output = Command::new(repo().join("federation").join(command))
            .arg(org)
            .arg("--dir")
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "federation/{command} {org} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
