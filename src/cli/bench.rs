//! `axp bench local|federation|webhooks`: measures nodes over real HTTP on loopback and prints
//! figures.
//!
//! The node runs as its own process (this binary, `node run`) on a new data dir, so the
//! figures include HTTP, JSON, the group-commit writer and sled's flush to disk.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axp::client::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const INITIATOR: &str = "agent://bench/local/initiator";
const AGENT: &str = "agent://bench/local/agent";
const SINK: &str = "agent://bench/local/sink";
const FEDERATED_INITIATOR: &str = "agent://acme/ops/bench";
const FEDERATED_AGENT: &str = "agent://globex/sales/bench";

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Durable creates/s and latency at two concurrencies, and the full local lifecycle latency.
    Local {
        /// Creates measured at concurrency 1.
        #[arg(long, default_value_t = 2_000)]
        serial_creates: usize,
        /// Creates measured at the high concurrency.
        #[arg(long, default_value_t = 40_000)]
        concurrent_creates: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Lifecycles measured (create, delivered on listen, resolved, seen by the initiator).
        #[arg(long, default_value_t = 1_000)]
        lifecycles: usize,
    },
    /// Against a running federation kit (`federation/up`): the bare matrix-sdk round trip
    /// between the two homeservers, the cross-org lifecycle latency, and sustained cross-org
    /// intents/s.
    Federation {
        /// The kit's directory (holds federation.json).
        #[arg(long, default_value = ".federation")]
        dir: PathBuf,
        #[arg(long, default_value_t = 50)]
        round_trips: usize,
        #[arg(long, default_value_t = 100)]
        lifecycles: usize,
        /// Intents sent for the throughput figure.
        #[arg(long, default_value_t = 2_000)]
        intents: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Push deliveries/s to a local receiver that answers at once, and the latency from the
    /// create's durable answer to the receipt at the receiver.
    Webhooks {
        /// Deliveries measured one at a time, for latency.
        #[arg(long, default_value_t = 500)]
        serial: usize,
        /// Deliveries sent in the burst, for throughput.
        #[arg(long, default_value_t = 5_000)]
        intents: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Local { serial_creates, concurrent_creates, concurrency, lifecycles } => {
            super::runtime()?.block_on(local(serial_creates, concurrent_creates, concurrency, lifecycles))
        }
        BenchCommand::Federation { dir, round_trips, lifecycles, intents, concurrency } => {
            super::runtime()?.block_on(federation(&dir, round_trips, lifecycles, intents, concurrency))
        }
        BenchCommand::Webhooks { serial, intents, concurrency } => {
            super::runtime()?.block_on(super::bench_webhooks::run(serial, intents, concurrency))
        }
    }
}

/// A node process on a temporary data dir, killed on drop.
pub(super) struct BenchNode {
    pub(super) child: Child,
    pub(super) url: String,
    pub(super) admin_key: String,
    _dir: tempfile::TempDir,
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node() -> anyhow::Result<BenchNode> {
    start_node_with(|_| {})
}

/// A node whose `axp.toml` `edit` may change before it starts.
pub(super) fn start_node_with(edit: impl FnOnce(&mut toml::Table)) -> anyhow::Result<BenchNode> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new().prefix("axp-bench-").tempdir_in(bench_tmp())?;
    let init = Command::new(&exe)
        .args(["node", "init", "--listen", "127.0.0.1:0", "--org", "bench", "--data-dir"])
        .arg(dir.path())
        .output()?;
    if !init.status.success() {
        bail!("node init failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let admin_key = std::fs::read_to_string(dir.path().join("admin.key"))?.trim().to_owned();
    let config_path = dir.path().join("axp.toml");
    let mut config: toml::Table = std::fs::read_to_string(&config_path)?.parse()?;
    edit(&mut config);
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    let mut child = Command::new(&exe)
        .args(["node", "run", "--config"])
        .arg(dir.path().join("axp.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let url = line.trim().strip_prefix("axp node listening on ").context("node did not start")?.to_owned();
    Ok(BenchNode { child, url, admin_key, _dir: dir })
}

/// Benchmarks write where the data dir would live: on disk, not on a RAM-backed /tmp.
fn bench_tmp() -> PathBuf {
    std::env::var_os("AXP_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

async fn local(serial: usize, concurrent: usize, concurrency: usize, lifecycles: usize) -> anyhow::Result<ExitCode> {
    let node = start_node()?;
    let client = Client::new(&node.url, &node.admin_key);
    print_machine(&node);

    let pid = node.child.id();
    let cpu = cpu_seconds(pid);
    let (rate, latencies) = creates(&client, serial, 1).await?;
    report(&format!("durable creates, concurrency 1, n={serial}"), rate, &latencies);
    let cpu = cpu_used(pid, cpu, serial);
    let (rate, latencies) = creates(&client, concurrent, concurrency).await?;
    report(&format!("durable creates, concurrency {concurrency}, n={concurrent}"), rate, &latencies);
    let cpu = cpu_used(pid, cpu, concurrent);
    let latencies = lifecycle(&client, &client, (INITIATOR, AGENT), lifecycles).await?;
    report(&format!("local lifecycle (create -> listen -> resolve -> observed), n={lifecycles}"), 0.0, &latencies);
    cpu_used(pid, cpu, lifecycles);
    println!("node peak RSS: {}", peak_rss(node.child.id()).unwrap_or_else(|| "unknown".into()));
    Ok(ExitCode::SUCCESS)
}

pub(super) fn print_machine(node: &BenchNode) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let build = if cfg!(debug_assertions) { "DEBUG build: figures are not representative" } else { "release build" };
    println!(
        "axp bench: {cpus} CPUs ({model}), {build}, node {} on a fresh data dir in {}",
        node.url,
        bench_tmp().display()
    );
}

fn create_body(index: usize) -> Value {
    json!({
        "intent_type": "intent.bench.v1",
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "from_agent": INITIATOR,
        "to_agent": SINK,
        "payload": {"index": index, "note": "a small payload of a typical size for a task description"},
    })
}

async fn creates(client: &Client, total: usize, concurrency: usize) -> anyhow::Result<(f64, Vec<Duration>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                client.post("/v1/intents", &create_body(index), None).await?;
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    Ok((rate, latencies))
}

/// One agent listens and resolves each delivery at once; the initiator creates an intent,
/// follows its event stream and stops the clock at the terminal event.
async fn lifecycle(
    client: &Client,
    agent: &Client,
    route: (&str, &str),
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (listen, resolve) = run_agent(agent, route.1);
    let mut latencies = Vec::with_capacity(count);
    for index in 0..count {
        latencies.push(one_lifecycle(client, route, index).await?);
    }
    listen.abort();
    resolve.abort();
    Ok(latencies)
}

/// Creates an intent from `route.0` to `route.1` and follows it until `intent.completed`.
async fn one_lifecycle(client: &Client, (from, to): (&str, &str), index: usize) -> anyhow::Result<Duration> {
    let mut body = create_body(index);
    body["from_agent"] = json!(from);
    body["to_agent"] = json!(to);
    let started = Instant::now();
    let created = client.post("/v1/intents", &body, None).await?;
    let id = created["intent_id"].as_str().context("intent_id")?.to_owned();
    follow_to_completion(client, &id).await?;
    Ok(started.elapsed())
}

/// Follows an intent's event stream until `intent.completed`.
async fn follow_to_completion(client: &Client, id: &str) -> anyhow::Result<()> {
    let mut done = false;
    while !done {
        client
            .stream(&format!("/v1/intents/{id}/events/stream?since=2&wait_seconds=30"), |frame| {
                done |= frame.event == "intent.completed";
                !done
            })
            .await?;
    }
    Ok(())
}

/// An agent that listens at `agent_address` and resolves every delivery COMPLETED at once.
fn run_agent(client: &Client, agent_address: &str) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let (deliveries, mut received) = mpsc::unbounded_channel::<String>();
    let listener = client.clone();
    let agent_path = agent_address.trim_start_matches("agent://").to_owned();
    let listen = tokio::spawn(async move {
        let mut since = 0u64;
        loop {
            let path = format!("/v1/agents/{agent_path}/intents/stream?since={since}&wait_seconds=30");
            let outcome = listener
                .stream(&path, |frame| {
                    if let Ok(data) = serde_json::from_str::<Value>(&frame.data)
                        && frame.event.starts_with("intent.")
                    {
                        since = since.max(data["seq"].as_u64().unwrap_or(0));
                        let _ = deliveries.send(data["intent_id"].as_str().unwrap_or_default().to_owned());
                    }
                    true
                })
                .await;
            if outcome.is_err() {
                return;
            }
        }
    });
    let resolver = client.clone();
    let resolve = tokio::spawn(async move {
        // Resolves concurrently, so that the agent keeps up under load.
        let permits = Arc::new(tokio::sync::Semaphore::new(32));
        while let Some(id) = received.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let resolver = resolver.clone();
            tokio::spawn(async move {
                let body = json!({"status": "COMPLETED", "result": {"ok": true}});
                let _ = resolver.post(&format!("/v1/intents/{id}/resolve"), &body, None).await;
                drop(permit);
            });
        }
    });
    (listen, resolve)
}

/// The figures of one federation kit: nodes' URLs and admin keys, and the homeservers'
/// observer accounts used for the bare matrix-sdk floor.
struct KitView {
    acme: Client,
    globex: Client,
    observers: [transport_floor::Account; 2],
}

use axp::transport::floor as transport_floor;

fn read_kit(dir: &std::path::Path) -> anyhow::Result<KitView> {
    let path = dir.join("federation.json");
    let text =
        std::fs::read(&path).with_context(|| format!("cannot read {} (run federation/up first)", path.display()))?;
    let kit: Value = serde_json::from_slice(&text)?;
    let node = |org: &str| -> anyhow::Result<Client> {
        let node = &kit["nodes"][org];
        Ok(Client::new(node["url"].as_str().context("node url")?, node["admin_key"].as_str().context("admin key")?))
    };
    let observer = |org: &str| -> anyhow::Result<transport_floor::Account> {
        let server = &kit["homeservers"][org];
        Ok(transport_floor::Account {
            homeserver_url: server["client_url"].as_str().context("client_url")?.to_owned(),
            user_id: server["observer"]["user_id"].as_str().context("observer")?.to_owned(),
            password: server["observer"]["password"].as_str().context("observer password")?.to_owned(),
        })
    };
    Ok(KitView { acme: node("acme")?, globex: node("globex")?, observers: [observer("acme")?, observer("globex")?] })
}

async fn federation(
    dir: &std::path::Path,
    round_trips: usize,
    lifecycles: usize,
    intents: usize,
    concurrency: usize,
) -> anyhow::Result<ExitCode> {
    let kit = read_kit(dir)?;
    let build = if cfg!(debug_assertions) { "DEBUG build: figures are not representative" } else { "release build" };
    println!("axp bench federation: two homeservers federating over loopback (kit {}), {build}", dir.display());
    let scratch = tempfile::tempdir()?;
    let mut floor_room = transport_floor::Floor::open(&kit.observers[0], &kit.observers[1], scratch.path()).await?;
    let first = floor_room.round_trip().await?;
    // Round trips and lifecycles alternate, so that both see the same load on the shared cores.
    let route = (FEDERATED_INITIATOR, FEDERATED_AGENT);
    let (listen, resolve) = run_agent(&kit.globex, route.1);
    let (mut floor, mut lifecycle_latencies) = (Vec::new(), Vec::new());
    for index in 0..round_trips.max(lifecycles) {
        if index < round_trips {
            floor.push(floor_room.round_trip().await?);
        }
        if index < lifecycles {
            lifecycle_latencies.push(one_lifecycle(&kit.acme, route, index).await?);
        }
    }
    listen.abort();
    resolve.abort();
    drop(floor_room);
    report(
        &format!("raw matrix-sdk encrypted round trip acme->globex->acme, n={round_trips} (first: {first:.0?})"),
        0.0,
        &floor,
    );
    report(
        &format!("cross-org lifecycle (submit at acme -> completed visible at acme), n={lifecycles}"),
        0.0,
        &lifecycle_latencies,
    );
    let ratio = median(&lifecycle_latencies).as_secs_f64() / median(&floor).as_secs_f64();
    println!("{:<72} {ratio:.2} (target <= 1.15)", "lifecycle p50 / raw round trip p50");

    let (listen, resolve) = run_agent(&kit.globex, FEDERATED_AGENT);
    let (rate, latencies) = sustained(&kit.acme, intents, concurrency).await?;
    report(
        &format!("sustained cross-org intents, {concurrency} submitters, n={intents} (submit -> completed at acme)"),
        rate,
        &latencies,
    );
    listen.abort();
    resolve.abort();
    Ok(ExitCode::SUCCESS)
}

/// `concurrency` submitters send `total` intents as fast as the node accepts them, without
/// waiting for outcomes; up to `concurrency` observers follow them until each is completed at
/// acme. Returns completed intents/s over the whole run and each intent's submit-to-completed
/// time.
async fn sustained(client: &Client, total: usize, concurrency: usize) -> anyhow::Result<(f64, Vec<Duration>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let observing = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..concurrency {
        let (client, next, observing) = (client.clone(), next.clone(), observing.clone());
        submitters.push(tokio::spawn(async move {
            let mut observers = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let mut body = create_body(index);
                body["from_agent"] = json!(FEDERATED_INITIATOR);
                body["to_agent"] = json!(FEDERATED_AGENT);
                let sent = Instant::now();
                let created = client.post("/v1/intents", &body, None).await?;
                let id = created["intent_id"].as_str().context("intent_id")?.to_owned();
                let (client, observing) = (client.clone(), observing.clone());
                observers.push(tokio::spawn(async move {
                    let _slot = observing.acquire_owned().await?;
                    follow_to_completion(&client, &id).await?;
                    Ok::<_, anyhow::Error>(sent.elapsed())
                }));
            }
            let mut latencies = Vec::with_capacity(observers.len());
            for observer in observers {
                latencies.push(observer.await??);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for submitter in submitters {
        latencies.extend(submitter.await??);
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), latencies))
}

fn median(latencies: &[Duration]) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

pub(super) fn report(what: &str, rate: f64, latencies: &[Duration]) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rate = if rate > 0.0 { format!("{rate:>9.0}/s  ") } else { String::new() };
    println!("{what:<72} {rate}p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms", ms(at(0.5)), ms(at(0.99)), ms(at(1.0)));
}

/// The node's CPU time so far (user + system), from /proc.
pub(super) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |both| both.iter().filter_map(|t| t.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// Prints the node's CPU time per operation since `before` and returns the new total.
pub(super) fn cpu_used(pid: u32, before: f64, operations: usize) -> f64 {
    let now = cpu_seconds(pid);
    println!(
        "{:<72} node CPU {:.2} s, {:.0} µs per operation",
        "",
        now - before,
        (now - before) * 1e6 / operations as f64
    );
    now
}

pub(super) fn peak_rss(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmHWM"))
        .map(|line| line.trim_start_matches("VmHWM:").trim().to_owned())
}
