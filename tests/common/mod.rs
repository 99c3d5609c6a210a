//! Test harness: real `axp` node processes on ephemeral ports with real sled data dirs, and a
//! raw HTTP helper that shows statuses, headers and JSON bodies.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod kit;
pub mod receiver;
pub mod smtp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub const AXP: &str = env!("CARGO_BIN_EXE_axp");

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin_key: String,
    child: Option<Child>,
    /// `RUST_LOG` of the node process, when a test reads more than warnings from `node.log`.
    log_filter: Option<String>,
}

impl TestNode {
    /// A fresh node of org `acme` with default limits.
    pub fn start() -> TestNode {
        Self::start_with(|_| {})
    }

    /// A fresh node whose `axp.toml` text `edit` may change before the first start.
    pub fn start_with(edit: impl FnOnce(&mut String)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(AXP)
            .args(["node", "init", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--org", "acme"])
            .output()
            .unwrap();
        assert!(output.status.success(), "init failed: {}", String::from_utf8_lossy(&output.stderr));
        let admin_key = std::fs::read_to_string(dir.path().join("admin.key")).unwrap().trim().to_owned();
        let config = dir.path().join("axp.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        edit(&mut text);
        std::fs::write(&config, text).unwrap();
        let mut node = TestNode { dir, url: String::new(), admin_key, child: None, log_filter: None };
        node.launch();
        node
    }

    /// Restarts the node logging with `filter` (e.g. `warn,axp::audit=info`).
    pub fn log_with(&mut self, filter: &str) {
        self.log_filter = Some(filter.to_owned());
        self.restart();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("axp.toml")
    }

    fn launch(&mut self) {
        let (child, url) = spawn_node_logging(&self.config_path(), self.log_filter.as_deref())
            .unwrap_or_else(|error| panic!("node did not start: {error}"));
        self.child = Some(child);
        self.url = url;
    }

    /// SIGKILL: no shutdown, no flush beyond what the node already did.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        signal(&child, "TERM");
        wait_timeout(&mut child, Duration::from_secs(20)).expect("node exits after SIGTERM")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn api(&self, key: &str) -> Api {
        Api { http: reqwest::Client::new(), url: self.url.clone(), key: key.to_owned() }
    }

    pub fn admin(&self) -> Api {
        self.api(&self.admin_key)
    }

    /// Issues an API key for `agents` and returns its token.
    pub async fn key_for(&self, agents: &[&str]) -> String {
        let (status, body) = self.admin().post("/v1/admin/keys", json!({"owner": "test", "agents": agents})).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `axp node run` and waits for its "listening" line. The node's log goes to
/// `node.log` beside its config, where a failing test can look.
pub fn spawn_node(config: &Path) -> Result<(Child, String), String> {
    spawn_node_logging(config, None)
}

/// `spawn_node` with `RUST_LOG` set to `filter` (default: `AXP_TEST_LOG`, else `warn`).
pub fn spawn_node_logging(config: &Path, filter: Option<&str>) -> Result<(Child, String), String> {
    let log_path = config.with_file_name("node.log");
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|error| error.to_string())?;
    let mut child = Command::new(AXP)
        .args(["node", "run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            filter.map(str::to_owned).or_else(|| std::env::var("AXP_TEST_LOG").ok()).unwrap_or_else(|| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|error| error.to_string())?;
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    match received.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => {
            let url =
                line.strip_prefix("axp node listening on ").ok_or_else(|| format!("unexpected first line {line:?}"))?;
            Ok((child, url.to_owned()))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::fs::read_to_string(&log_path).unwrap_or_default())
        }
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Raw HTTP against a node, as one API key.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub key: String,
}

impl Api {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response =
            self.http.get(format!("{}{path}", self.url)).header("x-api-key", &self.key).send().await.unwrap();
        decode(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        decode(self.http.delete(format!("{}{path}", self.url)).header("x-api-key", &self.key).send().await.unwrap())
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_keyed(path, body, None).await
    }

    pub async fn post_keyed(&self, path: &str, body: Value, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).header("x-api-key", &self.key).json(&body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        decode(request.send().await.unwrap()).await
    }

    /// Creates an intent and returns its id.
    pub async fn send(&self, from: &str, to: &str) -> String {
        let (status, body) = self.post("/v1/intents", intent_body(from, to)).await;
        assert_eq!(status, 200, "{body}");
        body["intent_id"].as_str().unwrap().to_owned()
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/intents/{id}/events")).await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().unwrap().clone()
    }

    pub async fn status(&self, id: &str) -> String {
        let (status, body) = self.get(&format!("/v1/intents/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["intent"]["status"].as_str().unwrap().to_owned()
    }

    /// Reads an SSE stream to its end and returns its frames as (event name, data).
    pub async fn frames(&self, path: &str) -> Vec<(String, Value)> {
        let client = axp::client::Client::new(&self.url, &self.key);
        let mut frames = Vec::new();
        client
            .stream(path, |frame| {
                frames.push((frame.event, serde_json::from_str(&frame.data).unwrap_or(Value::Null)));
                true
            })
            .await
            .unwrap();
        frames
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

pub fn intent_body(from: &str, to: &str) -> Value {
    json!({
        "intent_type": "intent.test.v1",
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "from_agent": from,
        "to_agent": to,
        "payload": {"n": 1},
    })
}

/// Asserts that an event log has seqs 1..=n in order, starting with created and submitted.
pub fn assert_gapless(events: &[Value]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["seq"].as_u64(), Some(index as u64 + 1), "seq gap or duplicate in {events:#?}");
    }
    assert_eq!(events[0]["event_type"], "intent.created");
    assert_eq!(events[1]["event_type"], "intent.submitted");
}

/// Polls `probe` until it gives a value; fails the test naming `what` after `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
