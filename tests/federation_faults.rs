//! Faults and privacy of the federation (issue 4), against two real Synapse homeservers and two
//! real nodes, each test with a kit of its own (`federation/up --no-nodes` on its own ports):
//!
//! a. nodes SIGKILLed at random points (seeded) while ~300 cross-org intents flow, then restarted:
//!    every accepted intent completes, identically on both nodes, with gapless logs and a bounded
//!    number of hand-outs to the agent;
//! b. a homeserver stopped for 30 s while intents flow (globex's, then acme's): what queued up is
//!    delivered and completes once it is back;
//! c. a third Matrix user forced into a route room reads only ciphertext, the homeservers'
//!    databases hold no payload, and a plaintext `axp.intent.v1` it forges is dropped and audited;
//! d. invites from outside the registry are refused and audited, and so are invites from a
//!    registry node for a room that is not a route to this node (DESIGN §7).
//!
//! Run them with `cargo test --test federation_faults -- --test-threads=1` (they take turns
//! anyway). Each test has its own port block: 18300, 18400, 18700, 18800, 18900 (tests/federation.rs
//! has 18100). A missing kit (Synapse venv, Python) fails them; nothing is skipped. Test a's fault
//! schedule comes from `AXP_FAULT_SEED` (default 20261126); `AXP_FAULT_INTENTS` (default 300).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kit::{Kit, Node, ONE_KIT_AT_A_TIME, repo};
use common::{assert_gapless, eventually};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const BUYER: &str = "agent://acme/ops/buyer";
const BOT: &str = "agent://globex/sales/bot";
/// The log of an intent the agent handled: what every node must show, in this order.
const HANDLED: [&str; 5] =
    ["intent.created", "intent.submitted", "intent.delivered", "intent.in_progress", "intent.completed"];

impl Node {
    fn admin(&self) -> Http {
        Http::new(&self.url, &self.admin_key)
    }
}

impl Kit {
    /// The Synapse admin of an org's homeserver.
    fn synapse_admin(&self, org: &str) -> Matrix {
        let homeserver = self.homeserver(org);
        Matrix::new(homeserver["client_url"].as_str().unwrap(), homeserver["admin"]["access_token"].as_str().unwrap())
    }

    /// Issues an API key on an org's node that may act only for `address`.
    async fn key_for(&self, org: &str, address: &str) -> Http {
        let node = self.node(org);
        let (status, body) =
            node.admin().post("/v1/admin/keys", &json!({"owner": address, "agents": [address]}), None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        Http::new(&node.url, body["token"].as_str().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: the node's API (errors returned, for nodes that may be down) and Matrix's client API.

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Http {
    fn new(url: &str, key: &str) -> Http {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Http { client, url: url.to_owned(), key: key.to_owned() }
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let response = self.client.get(format!("{}{path}", self.url)).header("x-api-key", &self.key).send().await?;
        decode(response).await
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.client.post(format!("{}{path}", self.url)).header("x-api-key", &self.key).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        decode(request.send().await?).await
    }

    /// An intent's status, or None when the node does not have it (404).
    async fn status(&self, id: &str) -> Option<String> {
        let (status, body) = self.get(&format!("/v1/intents/{id}")).await.expect("the node answers");
        match status {
            200 => Some(body["intent"]["status"].as_str().unwrap().to_owned()),
            404 => None,
            other => panic!("GET intent {id}: {other} {body}"),
        }
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/intents/{id}/events")).await.expect("the node answers");
        assert_eq!(status, 200, "events of {id}: {body}");
        body["events"].as_array().unwrap().clone()
    }

    /// Submits an intent to `BOT`, retrying (same idempotency key, same body) while the node is
    /// unreachable. Returns the intent id of the 200 answer.
    async fn submit(&self, key: &str, payload: Value, limit: Duration) -> String {
        let mut body = common::intent_body(BUYER, BOT);
        body["payload"] = payload;
        let deadline = Instant::now() + limit;
        loop {
            match self.post("/v1/intents", &body, Some(key)).await {
                Ok((200, answer)) => return answer["intent_id"].as_str().unwrap().to_owned(),
                Ok((status, answer)) if status < 500 => panic!("submit {key}: {status} {answer}"),
                Ok(_) | Err(_) => {}
            }
            assert!(Instant::now() < deadline, "submit {key}: no answer from acme's node within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn decode(response: reqwest::Response) -> Result<(u16, Value), reqwest::Error> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let body =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, body))
}

/// A Matrix client-server (or Synapse admin) API caller with one access token.
struct Matrix {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Matrix {
    fn new(base: &str, token: &str) -> Matrix {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Matrix { client, base: base.to_owned(), token: token.to_owned() }
    }

    /// Logs a user in with its password.
    async fn login(base: &str, user_id: &str, password: &str) -> Matrix {
        let anonymous = Matrix::new(base, "");
        let (status, body) = anonymous
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/login",
                Some(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user_id},
                    "password": password,
                })),
            )
            .await;
        assert_eq!(status, 200, "login of {user_id}: {body}");
        Matrix::new(base, body["access_token"].as_str().unwrap())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        decode(request.send().await.unwrap()).await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// The globex agent, written as a plain SDK user would: it listens (SSE; after a stream's normal
// end it goes on from its cursor, as the SDK does) and, when the stream breaks (its node died),
// starts over from `since=0`, so that intents still open are handed out again: at-least-once.
// Each hand-out is handled on its own: IN_PROGRESS, some work, COMPLETED, every call with an
// idempotency key of its own so that handling an intent twice, or retrying after a crash, is safe.

struct Agent {
    /// Hand-outs per intent id (one per `intent.*` frame on the listen stream), each with the
    /// listen session it came in (the agent starts a new session from `since=0` after an error).
    deliveries: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    /// Listen sessions so far (1 + restarts after errors).
    sessions: Arc<AtomicUsize>,
    /// Payloads as delivered, by intent id.
    payloads: Arc<Mutex<HashMap<String, Value>>>,
    /// Intents resolved (COMPLETED answered 200), repeats included.
    resolved: Arc<AtomicUsize>,
    /// What went wrong on the agent's side (an unexpected answer), for the final assertions.
    anomalies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Agent {
    /// `work`: the longest the agent works on an intent between IN_PROGRESS and COMPLETED.
    fn start(api: Http, work: Duration) -> Agent {
        let agent = Agent {
            deliveries: Arc::default(),
            payloads: Arc::default(),
            resolved: Arc::default(),
            anomalies: Arc::default(),
            stop: Arc::default(),
            sessions: Arc::new(AtomicUsize::new(1)),
        };
        let (deliveries, payloads, stop) = (agent.deliveries.clone(), agent.payloads.clone(), agent.stop.clone());
        let sessions = agent.sessions.clone();
        let (resolved, anomalies) = (agent.resolved.clone(), agent.anomalies.clone());
        tokio::spawn(async move {
            let client = axp::client::Client::new(&api.url, &api.key);
            let mut since = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = format!(
                    "/v1/agents/{}/intents/stream?since={since}&wait_seconds=5",
                    BOT.trim_start_matches("agent://")
                );
                let outcome = client
                    .stream(&path, |frame| {
                        if frame.event.starts_with("intent.")
                            && let Ok(data) = serde_json::from_str::<Value>(&frame.data)
                        {
                            since = since.max(data["seq"].as_u64().unwrap_or(0));
                            let id = data["intent_id"].as_str().unwrap_or_default().to_owned();
                            let session = sessions.load(Ordering::Relaxed) as u64;
                            deliveries.lock().unwrap().entry(id.clone()).or_default().push(session);
                            payloads.lock().unwrap().insert(id.clone(), data["payload"].clone());
                            tokio::spawn(handle(api.clone(), id, data, work, resolved.clone(), anomalies.clone()));
                        }
                        !stop.load(Ordering::Relaxed)
                    })
                    .await;
                if outcome.is_err() {
                    since = 0;
                    sessions.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        agent
    }

    fn delivered(&self) -> HashMap<String, Vec<u64>> {
        self.deliveries.lock().unwrap().clone()
    }
}

/// One hand-out: IN_PROGRESS, work (a duration derived from the id, up to `work`), COMPLETED.
async fn handle(
    api: Http,
    id: String,
    delivery: Value,
    work: Duration,
    resolved: Arc<AtomicUsize>,
    anomalies: Arc<Mutex<Vec<String>>>,
) {
    let progress = json!({"status": "IN_PROGRESS"});
    if let Err(problem) =
        retry_post(&api, &format!("/v1/intents/{id}/transition"), &progress, &format!("progress-{id}")).await
    {
        anomalies.lock().unwrap().push(format!("IN_PROGRESS {id}: {problem}"));
        return;
    }
    let spread = id.bytes().fold(0u64, |hash, byte| hash.wrapping_mul(31).wrapping_add(u64::from(byte)));
    tokio::time::sleep(Duration::from_millis(spread % (work.as_millis() as u64 + 1))).await;
    let done = json!({"status": "COMPLETED", "result": {"handled_by": "globex", "echo": delivery["payload"]}});
    match retry_post(&api, &format!("/v1/intents/{id}/resolve"), &done, &format!("resolve-{id}")).await {
        Ok(()) => {
            resolved.fetch_add(1, Ordering::Relaxed);
        }
        Err(problem) => anomalies.lock().unwrap().push(format!("COMPLETED {id}: {problem}")),
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// POSTs until the node answers 200 (retrying while it is unreachable or answers 5xx, for up to
/// two minutes); another answer is an error.
async fn retry_post(api: &Http, path: &str, body: &Value, key: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match api.post(path, body, Some(key)).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, answer)) if status < 500 => return Err(format!("{status} {answer}")),
            Ok(_) | Err(_) if Instant::now() > deadline => return Err("no 200 within 120 s".into()),
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until every intent is COMPLETED at acme (the replica, the last to know); on timeout,
/// fails with where the stragglers stand on both nodes.
async fn all_completed(acme: &Http, globex: &Http, ids: &[String], limit: Duration) -> Duration {
    let started = Instant::now();
    let mut open: Vec<String> = ids.to_vec();
    while !open.is_empty() {
        let mut still = Vec::new();
        for id in open {
            if acme.status(&id).await.as_deref() != Some("COMPLETED") {
                still.push(id);
            }
        }
        open = still;
        if open.is_empty() {
            break;
        }
        if started.elapsed() > limit {
            let mut report = Vec::new();
            for id in open.iter().take(5) {
                let at_acme: Vec<String> =
                    acme.events(id).await.iter().map(|e| format!("{}:{}", e["seq"], e["event_type"])).collect();
                let at_globex = globex.status(id).await;
                report.push(format!("{id}: acme log {at_acme:?}, globex status {at_globex:?}"));
            }
            panic!(
                "{} of {} intents not COMPLETED at acme after {limit:?}; first ones:\n{}",
                open.len(),
                ids.len(),
                report.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

/// Every intent: COMPLETED on both nodes with the same, gapless log of exactly the handled shape.
async fn assert_identical_logs(acme: &Http, globex: &Http, ids: &[String]) {
    for id in ids {
        let owner = globex.events(id).await;
        let replica = acme.events(id).await;
        assert_gapless(&owner);
        let types: Vec<&str> = owner.iter().map(|event| event["event_type"].as_str().unwrap_or("?")).collect();
        assert_eq!(types, HANDLED, "intent {id}: globex's log has missing or duplicated events: {owner:#?}");
        assert_eq!(replica, owner, "intent {id}: acme's replica differs from globex's log");
        assert_eq!(globex.status(id).await.as_deref(), Some("COMPLETED"), "intent {id} at globex");
    }
}

// ---------------------------------------------------------------------------------------------
// a. SIGKILL of either node during a run of cross-org intents.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_killed_at_random_points_lose_and_duplicate_nothing() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let started = Instant::now();
    let seed: u64 = std::env::var("AXP_FAULT_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(20_261_126);
    let count: usize = std::env::var("AXP_FAULT_INTENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    eprintln!("seed {seed} (AXP_FAULT_SEED), {count} intents (AXP_FAULT_INTENTS)");
    let mut rng = StdRng::seed_from_u64(seed);

    let kit = Kit::up(18300);
    let acme = kit.key_for("acme", BUYER).await;
    let globex = kit.key_for("globex", BOT).await;
    // The agent works up to 400 ms on each intent, so that a crash of globex's node finds intents
    // in every state: arriving, DELIVERED, IN_PROGRESS, COMPLETED but not yet sent back.
    let agent = Agent::start(globex.clone(), Duration::from_millis(400));

    // acme's service: `count` intents on four lanes, each lane about five a second (so that the
    // run lasts long enough for the faults to land in the middle of it), each intent retried with
    // its idempotency key until a 200 (a retry after a crash must not create a second intent).
    let accepted: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let mut submitters = Vec::new();
    for lane in 0..4 {
        let (acme, accepted) = (acme.clone(), accepted.clone());
        submitters.push(tokio::spawn(async move {
            for n in (lane..count).step_by(4) {
                let id = acme.submit(&format!("fault-a-{n}"), json!({"n": n}), Duration::from_secs(120)).await;
                accepted.lock().unwrap().push((n, id));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // The faults: eight SIGKILLs (four per node, in a seeded order) at seeded points of the run
    // (when so many intents have been accepted, plus up to 300 ms), each node down for a seeded
    // moment (up to 1.5 s) before it restarts on the same config and data dir.
    let mut targets = ["acme", "acme", "acme", "acme", "globex", "globex", "globex", "globex"];
    targets.shuffle(&mut rng);
    let mut points: Vec<usize> = (0..targets.len()).map(|_| rng.gen_range(count / 20..count * 39 / 40)).collect();
    points.sort_unstable();
    let progress = || accepted.lock().unwrap().len();
    let mut kills = Vec::new();
    for (target, point) in targets.iter().zip(&points) {
        let waited = Instant::now();
        while progress() < *point && waited.elapsed() < Duration::from_secs(180) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(progress() >= *point, "the run stalled at {} intents accepted (next kill at {point})", progress());
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        let down = Duration::from_millis(rng.gen_range(0..1500));
        let at = (progress(), agent.resolved.load(Ordering::Relaxed));
        let node = kit.clone();
        let target = target.to_string();
        let org = target.clone();
        let restarted = tokio::task::spawn_blocking(move || {
            node.node(&org).kill();
            std::thread::sleep(down);
            let begin = Instant::now();
            node.node(&org).start();
            begin.elapsed()
        })
        .await
        .unwrap();
        eprintln!(
            "[{:>6.1?}] SIGKILL {target} with {} accepted and {} resolved, down {down:?}, restarted in {restarted:.1?}",
            started.elapsed(),
            at.0,
            at.1
        );
        kills.push((target, at.0));
    }
    for submitter in submitters {
        submitter.await.expect("a submitter failed");
    }
    let accepted: Vec<(usize, String)> = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), count);
    let ids: Vec<String> = accepted.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), count, "two submissions answered with the same intent");

    let waited = all_completed(&acme, &globex, &ids, Duration::from_secs(300)).await;
    eprintln!("[{:>6.1?}] all {count} intents COMPLETED at acme ({waited:.1?} after the last kill)", started.elapsed());
    assert_identical_logs(&acme, &globex, &ids).await;

    // Hand-outs: every intent reached the agent, and nothing else did (an intent created twice by
    // a retried submit would show up here with its own id). Repeats come only from the agent
    // starting over after its node died: never twice in one listen session, and so at most once
    // per restart of globex's node.
    let delivered = agent.delivered();
    let accepted_ids: HashSet<&String> = ids.iter().collect();
    let strangers: Vec<&String> = delivered.keys().filter(|id| !accepted_ids.contains(id)).collect();
    assert!(strangers.is_empty(), "the agent was handed intents nobody submitted: {strangers:?}");
    let globex_kills = kills.iter().filter(|(org, _)| org == "globex").count();
    let mut histogram: HashMap<usize, usize> = HashMap::new();
    for id in &ids {
        let sessions = delivered.get(id).cloned().unwrap_or_default();
        *histogram.entry(sessions.len()).or_default() += 1;
        assert!(!sessions.is_empty(), "intent {id} was never handed to the agent");
        assert!(
            sessions.windows(2).all(|pair| pair[0] < pair[1]),
            "intent {id} was handed out twice in one listen session (sessions {sessions:?})"
        );
        assert!(
            sessions.len() <= 1 + globex_kills,
            "intent {id} was handed out {} times with {globex_kills} restarts of globex's node",
            sessions.len()
        );
    }
    let payloads = agent.payloads.lock().unwrap().clone();
    let numbers: HashSet<u64> = payloads.values().filter_map(|payload| payload["n"].as_u64()).collect();
    assert_eq!(numbers.len(), count, "payload numbers handed to the agent");
    let anomalies = agent.anomalies.lock().unwrap().clone();
    assert!(anomalies.is_empty(), "the agent got unexpected answers: {anomalies:#?}");
    eprintln!("kills {kills:?}; hand-outs per intent {histogram:?}; test took {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// b. A homeserver down for 30 s while intents flow.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_homeserver_down_for_30_s_delays_but_loses_nothing() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let started = Instant::now();
    let outage = Duration::from_secs(30);
    let kit = Kit::up(18400);
    let acme = kit.key_for("acme", BUYER).await;
    let globex = kit.key_for("globex", BOT).await;
    let _agent = Agent::start(globex.clone(), Duration::ZERO);

    // Warm-up: the route room exists and keys are shared before the first outage.
    let mut warm = Vec::new();
    for n in 0..3 {
        warm.push(acme.submit(&format!("warm-{n}"), json!({"n": n}), Duration::from_secs(10)).await);
    }
    all_completed(&acme, &globex, &warm, Duration::from_secs(60)).await;

    let mut every = warm.clone();
    for org in ["globex", "acme"] {
        // Some intents in flight at the moment the homeserver stops, more during the outage.
        let mut in_flight = Vec::new();
        for n in 0..5 {
            in_flight.push(
                acme.submit(&format!("{org}-burst-{n}"), json!({"n": n, "org": org}), Duration::from_secs(10)).await,
            );
        }
        let logged: Vec<usize> = kit.nodes.iter().map(|node| node.log().lines().count()).collect();
        kit.command("stop-homeserver", org);
        let stopped = Instant::now();
        eprintln!("[{:>6.1?}] {org}'s homeserver stopped", started.elapsed());
        let mut during = Vec::new();
        let mut n = 0;
        while stopped.elapsed() < outage {
            // acme's node accepts intents whatever its homeserver does: they wait in its outbox.
            during.push(
                acme.submit(&format!("{org}-during-{n}"), json!({"n": n, "outage": org}), Duration::from_secs(5)).await,
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        // The outage was real: nothing submitted while the homeserver was down came back.
        for id in &during {
            let status = acme.status(id).await;
            assert_eq!(status.as_deref(), Some("SUBMITTED"), "{id} progressed during {org}'s outage");
        }
        if org == "globex" {
            for id in &during {
                assert_eq!(globex.status(id).await, None, "{id} reached globex while its homeserver was down");
            }
        }
        kit.command("start-homeserver", org);
        eprintln!("[{:>6.1?}] {org}'s homeserver started after {:.1?}", started.elapsed(), stopped.elapsed());
        let queued: Vec<String> = in_flight.iter().chain(&during).cloned().collect();
        let recovered = all_completed(&acme, &globex, &queued, Duration::from_secs(180)).await;
        eprintln!(
            "[{:>6.1?}] all {} intents queued around {org}'s outage COMPLETED {recovered:.1?} after its restart",
            started.elapsed(),
            queued.len()
        );
        assert_identical_logs(&acme, &globex, &queued).await;
        // What the recovery waited for: the nodes' last back-off before the homeserver answered.
        for (node, skip) in kit.nodes.iter().zip(&logged) {
            let log = node.log();
            let retries: Vec<&str> = log.lines().skip(*skip).filter(|line| line.contains("retry_in")).collect();
            if let Some(last) = retries.last() {
                eprintln!("  {} node, last of {} retries during the outage: {last}", node.org, retries.len());
            }
        }
        every.extend(queued);
    }
    assert_identical_logs(&acme, &globex, &every).await;
    eprintln!("test took {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// c. Privacy: a third user in a route room, the homeservers' databases, a forged intent.

/// The route rooms acme's node created (Synapse admin API on acme's homeserver).
async fn route_rooms(kit: &Kit) -> Vec<String> {
    let creator = kit.description["nodes"]["acme"]["matrix_user_id"].as_str().unwrap().to_owned();
    let rooms = kit.synapse_admin("acme").get("/_synapse/admin/v1/rooms?limit=500").await;
    rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|room| room["creator"] == creator.as_str())
        .map(|room| room["room_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Forces a local user into a room with the Synapse admin API. The route room is invite-only,
/// so the admin first takes power in it (`make_room_admin`, which invites it) and joins.
async fn force_join(kit: &Kit, org: &str, room: &str, user: &str) {
    let admin = kit.synapse_admin(org);
    let path = format!("/_synapse/admin/v1/join/{}", encode(room));
    let (status, body) = admin.call(reqwest::Method::POST, &path, Some(json!({"user_id": user}))).await;
    if status == 200 {
        return;
    }
    assert_eq!(status, 403, "admin join: {body}");
    let (status, body) = admin
        .call(
            reqwest::Method::POST,
            &format!("/_synapse/admin/v1/rooms/{}/make_room_admin", encode(room)),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "make_room_admin: {body}");
    let (status, body) =
        admin.call(reqwest::Method::POST, &format!("/_matrix/client/v3/join/{}", encode(room)), Some(json!({}))).await;
    assert_eq!(status, 200, "the admin joins: {body}");
    let (status, body) = admin.call(reqwest::Method::POST, &path, Some(json!({"user_id": user}))).await;
    assert_eq!(status, 200, "admin join of {user}: {body}");
}

/// Counts rows of Synapse's `event_json` containing each needle (sqlite3 of the kit's venv).
fn event_json_counts(database: &Path, needles: &[&str]) -> HashMap<String, u64> {
    let venv =
        std::env::var("AXP_FEDERATION_VENV").map(PathBuf::from).unwrap_or_else(|_| repo().join(".federation-venv"));
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
count = "SELECT count(*) FROM event_json WHERE instr(json, ?) > 0"
print(json.dumps({needle: db.execute(count, (needle,)).fetchone()[0] for needle in sys.argv[2:]}))
"#;
    let output =
        Command::new(venv.join("bin/python")).arg("-c").arg(script).arg(database).args(needles).output().unwrap();
    assert!(output.status.success(), "sqlite scan failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Whether any of a homeserver's files (database, its WAL, logs) contains `needle`, byte for byte.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && (name.starts_with("homeserver.db") || name.ends_with(".log")) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|window| window == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_third_user_in_a_route_room_sees_only_ciphertext_and_cannot_inject() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let started = Instant::now();
    let kit = Kit::up(18700);
    let acme = kit.key_for("acme", BUYER).await;
    let globex = kit.key_for("globex", BOT).await;
    let agent = Agent::start(globex.clone(), Duration::ZERO);
    let marker = format!("privacy-marker-{}", uuid::Uuid::new_v4().simple());
    let before = acme.submit("privacy-1", json!({"secret": marker, "n": 1}), Duration::from_secs(10)).await;
    all_completed(&acme, &globex, std::slice::from_ref(&before), Duration::from_secs(60)).await;

    let rooms = route_rooms(&kit).await;
    assert_eq!(rooms.len(), 1, "one route room (agent://globex/sales/bot, acme-globex): {rooms:?}");
    let room = rooms[0].clone();
    let observer_account = &kit.homeserver("acme")["observer"];
    let observer_id = observer_account["user_id"].as_str().unwrap();
    force_join(&kit, "acme", &room, observer_id).await;
    let observer = Matrix::login(
        kit.homeserver("acme")["client_url"].as_str().unwrap(),
        observer_id,
        observer_account["password"].as_str().unwrap(),
    )
    .await;
    let members = kit.synapse_admin("acme").get(&format!("/_synapse/admin/v1/rooms/{}/members", encode(&room))).await;
    assert!(members["members"].as_array().unwrap().iter().any(|member| member == observer_id), "{members}");

    // One more intent while the observer is in the room: it must not get its keys either.
    let after = acme.submit("privacy-2", json!({"secret": marker, "n": 2}), Duration::from_secs(10)).await;
    all_completed(&acme, &globex, std::slice::from_ref(&after), Duration::from_secs(60)).await;

    let messages = observer.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000", encode(&room))).await;
    let chunk = messages["chunk"].as_array().unwrap();
    let message_types: Vec<&str> = chunk
        .iter()
        .filter(|event| event.get("state_key").is_none())
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    // 2 intents x (1 intent event + at least 1 lifecycle event), each m.room.encrypted.
    assert!(message_types.len() >= 4, "the observer should see the route's message events: {messages:#}");
    assert!(
        message_types.iter().all(|kind| *kind == "m.room.encrypted"),
        "plaintext message events: {message_types:?}"
    );
    let text = messages.to_string();
    for secret in [marker.as_str(), "axp.intent.v1", "axp.lifecycle.v1", "intent.test.v1", BUYER, &before, &after] {
        assert!(!text.contains(secret), "the observer reads {secret:?} in the route room");
    }

    // Neither homeserver stores the payload: not in event_json, not anywhere in its files.
    for org in ["acme", "globex"] {
        let data_dir = PathBuf::from(kit.homeserver(org)["data_dir"].as_str().unwrap());
        let counts = event_json_counts(&data_dir.join("homeserver.db"), &[&marker, "m.room.encrypted", &room, BUYER]);
        assert_eq!(counts[&marker], 0, "{org}'s event_json holds the payload marker");
        assert_eq!(counts[BUYER], 0, "{org}'s event_json holds the initiator's address");
        assert!(counts["m.room.encrypted"] >= 4 && counts[room.as_str()] > 0, "the scan reads the events: {counts:?}");
        assert_eq!(
            files_containing(&data_dir, &marker),
            Vec::<PathBuf>::new(),
            "{org}'s homeserver files hold the marker"
        );
        assert!(!files_containing(&data_dir, &room).is_empty(), "the byte scan of {org}'s files finds the room id");
    }

    // The observer forges an intent (plaintext) for globex's agent: dropped, audited, not adopted.
    let forged_id = uuid::Uuid::now_v7().to_string();
    let (_, template) = globex.get(&format!("/v1/intents/{before}")).await.unwrap();
    let mut record = template["intent"].clone();
    record["intent_id"] = json!(forged_id);
    record["payload"] = json!({"forged": true});
    let mut events = globex.events(&before).await;
    events.truncate(2);
    for event in &mut events {
        event["intent_id"] = json!(forged_id);
    }
    let (status, sent) = observer
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/send/axp.intent.v1/forged-{}", encode(&room), uuid::Uuid::new_v4()),
            Some(json!({"items": [{"record": record, "events": events}]})),
        )
        .await;
    assert_eq!(status, 200, "the observer sends into the room: {sent}");
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let globex_node = kit.node("globex");
    let audit = eventually("globex's audit line for the forged event", Duration::from_secs(60), async || {
        globex_node
            .log()
            .lines()
            .find(|line| line.contains("decision=\"dropped\"") && line.contains(observer_id) && line.contains(&room))
            .map(str::to_owned)
    })
    .await;
    eprintln!("audit: {audit}");
    assert!(audit.contains("axp::audit"), "{audit}");
    assert_eq!(globex.status(&forged_id).await, None, "globex adopted the forged intent");
    assert_eq!(acme.status(&forged_id).await, None);
    assert!(!agent.delivered().contains_key(&forged_id), "the forged intent was handed to the agent");
    // Still working afterwards, and the forged event did not disturb the room.
    let third = acme.submit("privacy-3", json!({"n": 3}), Duration::from_secs(10)).await;
    all_completed(&acme, &globex, std::slice::from_ref(&third), Duration::from_secs(60)).await;
    assert_identical_logs(&acme, &globex, &[before, after, third]).await;
    eprintln!("forged event {event_id} dropped; test took {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// d. Invites from outside the registry.

/// `user` creates a private room inviting globex's node; returns its id.
async fn invite_globex_node(kit: &Kit, org: &str, user: &Matrix, initial_state: Vec<Value>) -> String {
    let node_user = kit.description["nodes"]["globex"]["matrix_user_id"].as_str().unwrap();
    let (status, created) = user
        .call(
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({
                "preset": "private_chat",
                "invite": [node_user],
                "name": format!("invite test from {org}"),
                "initial_state": initial_state,
            })),
        )
        .await;
    assert_eq!(status, 200, "createRoom: {created}");
    created["room_id"].as_str().unwrap().to_owned()
}

/// Rooms globex's node account has joined, by globex's homeserver.
async fn globex_node_rooms(kit: &Kit) -> Vec<String> {
    let node_user = kit.description["nodes"]["globex"]["matrix_user_id"].as_str().unwrap();
    let joined =
        kit.synapse_admin("globex").get(&format!("/_synapse/admin/v1/users/{}/joined_rooms", encode(node_user))).await;
    joined["joined_rooms"].as_array().unwrap().iter().map(|room| room.as_str().unwrap().to_owned()).collect()
}

/// The membership of globex's node in a room, by the room's homeserver (`org`), or None.
async fn node_membership(kit: &Kit, org: &str, room: &str) -> Option<String> {
    let node_user = kit.description["nodes"]["globex"]["matrix_user_id"].as_str().unwrap();
    let state = kit.synapse_admin(org).get(&format!("/_synapse/admin/v1/rooms/{}/state", encode(room))).await;
    state["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == node_user)
        .and_then(|event| event["content"]["membership"].as_str().map(str::to_owned))
}

/// Waits for globex's audit line about `room`, then checks for a few seconds that its node never
/// joins it; returns the audit line.
async fn assert_refused(kit: &Kit, room_org: &str, room: &str) -> String {
    let globex_node = kit.node("globex");
    let audit = eventually(&format!("an audit line about the invite to {room}"), Duration::from_secs(60), async || {
        globex_node.log().lines().find(|line| line.contains("axp::audit") && line.contains(room)).map(str::to_owned)
    })
    .await;
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        assert!(!globex_node_rooms(kit).await.contains(&room.to_owned()), "globex's node joined {room}");
        let members =
            kit.synapse_admin(room_org).get(&format!("/_synapse/admin/v1/rooms/{}/members", encode(room))).await;
        let node_user = kit.description["nodes"]["globex"]["matrix_user_id"].as_str().unwrap();
        assert!(!members["members"].as_array().unwrap().iter().any(|member| member == node_user), "{members}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    audit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_invites_from_outside_the_registry_are_refused_and_audited() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let started = Instant::now();
    let kit = Kit::up(18800);
    let before = globex_node_rooms(&kit).await;

    // A user of globex's own homeserver.
    let local = &kit.homeserver("globex")["observer"];
    let local_user = Matrix::login(
        kit.homeserver("globex")["client_url"].as_str().unwrap(),
        local["user_id"].as_str().unwrap(),
        local["password"].as_str().unwrap(),
    )
    .await;
    let local_room = invite_globex_node(&kit, "globex", &local_user, vec![]).await;
    let audit = assert_refused(&kit, "globex", &local_room).await;
    assert!(audit.contains("decision=\"dropped\"") && audit.contains("inviter_not_in_registry"), "{audit}");
    assert_eq!(node_membership(&kit, "globex", &local_room).await.as_deref(), Some("leave"), "the invite is rejected");

    // A user of acme's homeserver (over federation), with a route state that looks genuine.
    let remote = &kit.homeserver("acme")["observer"];
    let remote_user = Matrix::login(
        kit.homeserver("acme")["client_url"].as_str().unwrap(),
        remote["user_id"].as_str().unwrap(),
        remote["password"].as_str().unwrap(),
    )
    .await;
    let route = json!({"type": "axp.route.v1", "state_key": "", "content": {
        "address": BOT,
        "initiator": {"org": "acme", "node": "acme-node-1"},
        "handler": {"org": "globex", "node": "globex-node-1"},
    }});
    let remote_room = invite_globex_node(&kit, "acme", &remote_user, vec![route]).await;
    let audit = assert_refused(&kit, "acme", &remote_room).await;
    assert!(audit.contains("decision=\"dropped\"") && audit.contains(remote["user_id"].as_str().unwrap()), "{audit}");

    assert_eq!(globex_node_rooms(&kit).await, before, "globex's node joined no room");
    eprintln!("test took {:.1?}", started.elapsed());
}

/// DESIGN §7: "The handler's node accepts an invite only from a registry node, only for an
/// address it hosts." Here the inviter is acme's registry node account (logged in on a second
/// device, as a misbehaving or compromised peer would), and the room's route names an address
/// of acme, which globex's node does not host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_an_invite_from_a_registry_node_for_an_address_not_hosted_is_refused() {
    let _turn = ONE_KIT_AT_A_TIME.lock().await;
    let started = Instant::now();
    let kit = Kit::up(18900);
    let before = globex_node_rooms(&kit).await;
    let node = &kit.description["nodes"]["acme"];
    let password = std::fs::read_to_string(node["matrix_password_file"].as_str().unwrap()).unwrap();
    let acme_account = Matrix::login(
        kit.homeserver("acme")["client_url"].as_str().unwrap(),
        node["matrix_user_id"].as_str().unwrap(),
        password.trim(),
    )
    .await;
    let route = json!({"type": "axp.route.v1", "state_key": "", "content": {
        "address": BUYER,
        "initiator": {"org": "acme", "node": "acme-node-1"},
        "handler": {"org": "globex", "node": "globex-node-1"},
    }});
    let room = invite_globex_node(&kit, "acme", &acme_account, vec![route]).await;
    // Whichever comes first: globex's node joins (the gap) or audits a refusal.
    let globex_node = kit.node("globex");
    let (joined, audit) = eventually("globex's node to join or refuse", Duration::from_secs(60), async || {
        let joined = globex_node_rooms(&kit).await.contains(&room);
        let audit = globex_node
            .log()
            .lines()
            .find(|line| line.contains("axp::audit") && line.contains(&room))
            .map(str::to_owned);
        (joined || audit.is_some()).then_some((joined, audit))
    })
    .await;
    assert!(
        !joined,
        "globex's node joined {room}, invited by acme's registry node account for {BUYER}, an address globex does not \
         host (membership on acme's homeserver: {:?}; audit: {audit:?})",
        node_membership(&kit, "acme", &room).await
    );
    let audit = assert_refused(&kit, "acme", &room).await;
    assert!(audit.contains("decision=\"dropped\""), "{audit}");

    // The same account's room without any route state: whatever the node does first, it must
    // end up outside the room, with an audit line.
    let bare = invite_globex_node(&kit, "acme", &acme_account, vec![]).await;
    let audit = eventually("globex's audit line about the room without a route", Duration::from_secs(60), async || {
        globex_node.log().lines().find(|line| line.contains("axp::audit") && line.contains(&bare)).map(str::to_owned)
    })
    .await;
    assert!(audit.contains("decision=\"dropped\""), "{audit}");
    eventually("globex's node to be outside the room without a route", Duration::from_secs(30), async || {
        (!globex_node_rooms(&kit).await.contains(&bare)).then_some(())
    })
    .await;
    assert_eq!(globex_node_rooms(&kit).await, before, "globex's node joined no room");
    eprintln!("test took {:.1?}", started.elapsed());
}
