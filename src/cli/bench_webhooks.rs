//! `axp bench webhooks`: push deliveries to an `http`-bound agent whose receiver (in this
//! process, on loopback) answers 200 at once. Prints the latency from a create request to the
//! receipt one intent at a time (an upper bound of commit to receipt), then deliveries/s with 64 concurrent creators (whose
//! latencies then include the queue the burst builds).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axp::client::Client;
use serde_json::json;

use super::bench::{cpu_seconds, cpu_used, peak_rss, print_machine, report, start_node_with};

const INITIATOR: &str = "agent://bench/hooks/initiator";
const AGENT: &str = "agent://bench/hooks/receiver";

type Receipts = Arc<Mutex<HashMap<String, Instant>>>;

/// An HTTP server on 127.0.0.1 that notes when each intent arrived and answers 200.
async fn receiver() -> anyhow::Result<(String, Receipts)> {
    let receipts: Receipts = Arc::default();
    let noted = receipts.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let noted = noted.clone();
            async move {
                if let Some(id) = headers.get("x-axp-intent-id").and_then(|value| value.to_str().ok()) {
                    noted.lock().expect("not poisoned").entry(id.to_owned()).or_insert_with(Instant::now);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, receipts))
}

fn create_body() -> serde_json::Value {
    json!({
        "intent_type": "intent.bench.v1",
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "from_agent": INITIATOR,
        "to_agent": AGENT,
        "payload": {"note": "a small payload of a typical size for a task description"},
    })
}

pub async fn run(serial: usize, total: usize, concurrency: usize) -> anyhow::Result<ExitCode> {
    let node = start_node_with(|config| {
        if let Some(delivery) = config.get_mut("delivery").and_then(|section| section.as_table_mut()) {
            delivery.insert("allow_private_targets".into(), true.into());
            delivery.insert("concurrency".into(), (concurrency as i64).into());
        }
    })?;
    print_machine(&node);
    let client = Client::new(&node.url, &node.admin_key);
    let (url, receipts) = receiver().await?;
    let binding = json!({"delivery_mode": "http", "callback_url": url, "secret": "bench-secret-of-enough-length"});
    client.post(&format!("/v1/agents/{AGENT}/binding"), &binding, None).await?;

    let mut latencies = Vec::with_capacity(serial);
    for _ in 0..serial {
        // From the request, not its answer: the push often reaches the receiver before the
        // create's answer reaches this client.
        let sent = Instant::now();
        let created = client.post("/v1/intents", &create_body(), None).await?;
        let id = created["intent_id"].as_str().context("intent_id")?.to_owned();
        let receipt = loop {
            if let Some(receipt) = receipts.lock().expect("not poisoned").get(&id) {
                break *receipt;
            }
            tokio::task::yield_now().await;
        };
        latencies.push(receipt.saturating_duration_since(sent));
    }
    report(&format!("webhook delivery, one at a time (create sent -> receipt), n={serial}"), 0.0, &latencies);
    receipts.lock().expect("not poisoned").clear();

    let pid = node.child.id();
    let cpu = cpu_seconds(pid);
    let answered: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, answered) = (client.clone(), next.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let created = client.post("/v1/intents", &create_body(), None).await?;
                let id = created["intent_id"].as_str().context("intent_id")?.to_owned();
                answered.lock().expect("not poisoned").push((id, Instant::now()));
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while receipts.lock().expect("not poisoned").len() < total {
        if Instant::now() > deadline {
            bail!("only {} of {total} deliveries arrived within 120 s", receipts.lock().expect("not poisoned").len());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let receipts = receipts.lock().expect("not poisoned").clone();
    let last = receipts.values().max().copied().unwrap_or(started);
    let rate = total as f64 / (last - started).as_secs_f64();
    // The create answers once its change is durable, with the delivery scheduled in the same
    // batch; a receipt that beat the answer back to this client counts as zero.
    let latencies: Vec<Duration> = answered
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|(id, answered)| receipts.get(id).map(|receipt| receipt.saturating_duration_since(*answered)))
        .collect();
    report(
        &format!("webhook deliveries, burst of {concurrency} creators (answer -> receipt), n={total}"),
        rate,
        &latencies,
    );
    cpu_used(pid, cpu, total);
    println!("node peak RSS: {}", peak_rss(pid).unwrap_or_else(|| "unknown".into()));
    Ok(ExitCode::SUCCESS)
}
