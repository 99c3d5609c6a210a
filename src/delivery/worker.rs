//! The I/O shell of push delivery: picks due deliveries from the store, POSTs them signed to
//! the agent's callback URL (or a webhook subscription's), and records each outcome in one write together with what it
//! means for the intent (`intent.delivered`, `intent.delivery_failed`, and after the last
//! attempt the dead letter and `intent.failed`).
//!
//! At-least-once: an attempt in flight when the node dies is made again after restart, since
//! its schedule entry stays until the outcome is on disk.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use super::{
    DELIVERY_ID_HEADER, EVENT_ID_HEADER, INTENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, backoff, check_ip,
    check_target, sign,
};
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::config::DeliverySection;
use crate::intent::{EventType, ResolveOutcome, Status};
use crate::store::{Delivery, DeliveryMode, DeliveryStatus, Store, StoreError, Subject};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Delivered {
        http_status: u16,
    },
    Failed {
        error: String,
    },
    /// The intent ended, or its agent is no longer bound to `http`: nothing to deliver.
    Obsolete {
        reason: String,
    },
}

/// Runs deliveries until the task is aborted.
pub async fn run(store: Store, config: DeliverySection) {
    let client = match client(&config) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client for deliveries; http bindings will not be served");
            return;
        }
    };
    let mut notices = store.subscribe();
    // Attempts in flight, by task and by delivery: their schedule entries stay until the
    // outcome is written, so each scan sees them again.
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut attempts = JoinSet::new();
    loop {
        let now = now_unix_ms();
        let mut saturated = false;
        match store.due_deliveries(now, config.concurrency * 2) {
            Ok(due) => {
                for id in due {
                    if busy.contains(&id) {
                        continue;
                    }
                    if in_flight.len() >= config.concurrency {
                        saturated = true;
                        break;
                    }
                    let task = attempts.spawn(attempt(store.clone(), client.clone(), config.clone(), id.clone()));
                    busy.insert(id.clone());
                    in_flight.insert(task.id(), id);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the delivery schedule"),
        }
        let next_due = store.next_delivery_due_after(now).ok().flatten();
        let sleep = next_due.map_or(Duration::from_secs(1), |due| Duration::from_millis(due - now));
        let sleep = if saturated { Duration::from_secs(1) } else { sleep.min(Duration::from_secs(1)) };
        tokio::select! {
            Some(done) = attempts.join_next_with_id(), if !attempts.is_empty() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(error) => error.id(),
                };
                if let Some(id) = in_flight.remove(&task) {
                    busy.remove(&id);
                }
            }
            () = crate::store::CommitNotice::next_where(&mut notices, |notice| notice.deliveries) => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn client(config: &DeliverySection) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PublicOnly { allow_private: config.allow_private_targets }))
        .user_agent(concat!("axp-node/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Resolves host names and drops addresses the node must not call, so that a name pointing
/// inside the network (now or after a DNS change) is refused like an IP literal would be.
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                resolved.iter().copied().filter(|addr| check_ip(addr.ip(), allow_private).is_ok()).collect();
            if allowed.is_empty() {
                let refused = resolved.first().map(|addr| addr.ip().to_string()).unwrap_or_default();
                return Err(format!(
                    "{host} resolves only to non-public addresses ({refused}); set [delivery] allow_private_targets = true to deliver there"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

async fn attempt(store: Store, client: reqwest::Client, config: DeliverySection, id: String) {
    let outcome = match call(&store, &client, &config, &id).await {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::warn!(%error, delivery_id = %id, "cannot read a delivery; trying later");
            return;
        }
    };
    if let Err(error) = record(&store, &config, id.clone(), outcome).await {
        tracing::warn!(%error, delivery_id = %id, "cannot record a delivery attempt; it will be made again");
    }
}

/// What an attempt sends, once the subject was found still worth delivering.
struct Request {
    body: serde_json::Value,
    secret: String,
    timeout: Duration,
    /// `X-AXP-Intent-Id` or `X-AXP-Event-Id`.
    subject_header: (&'static str, String),
}

/// Reads what to send for a delivery, or why there is nothing to send any more.
fn prepare(
    store: &Store,
    config: &DeliverySection,
    delivery: &Delivery,
) -> Result<Result<Request, Outcome>, StoreError> {
    let obsolete = |reason: String| Ok(Err(Outcome::Obsolete { reason }));
    let envelope =
        |kind: &str| json!({"type": kind, "delivery_id": delivery.delivery_id, "attempt": delivery.attempts + 1});
    match &delivery.subject {
        Subject::Intent { intent_id } => {
            let id = uuid::Uuid::parse_str(intent_id).map_err(|_| StoreError::Corrupt("intent id".into()))?;
            let Some(stored) = store.intent(id)? else { return obsolete("the intent is gone".into()) };
            // A replayed delivery goes out even for an intent that has ended (often because of it).
            if stored.record.status().is_terminal() && delivery.replays == 0 {
                return obsolete(format!("the intent is already {}", stored.record.status()));
            }
            if !handled_here_by(&stored, &delivery.agent) {
                return obsolete(format!("the intent was transferred to {}", stored.record.handler()));
            }
            let binding = store.binding(&delivery.agent)?.filter(|binding| binding.mode == DeliveryMode::Http);
            let Some(binding) = binding else {
                return obsolete(format!("{} is no longer bound to http", delivery.agent));
            };
            let mut body = envelope("intent.delivery");
            body["intent"] = crate::api::views::intent(&stored);
            Ok(Ok(Request {
                body,
                secret: binding.secret.unwrap_or_default(),
                timeout: Duration::from_secs(binding.timeout_seconds.unwrap_or(config.timeout_seconds)),
                subject_header: (INTENT_ID_HEADER, intent_id.clone()),
            }))
        }
        Subject::Event { event_id, subscription_id } => {
            let Some(event) = store.webhook_event(event_id)? else { return obsolete("the event is gone".into()) };
            let subscription =
                store.subscription(subscription_id)?.filter(|subscription| subscription.wants(&event.event_type));
            let Some(subscription) = subscription else {
                return obsolete(format!("subscription {subscription_id} no longer wants {}", event.event_type));
            };
            let mut body = envelope(&event.event_type);
            for (name, value) in [
                ("event_id", json!(event.event_id)),
                ("owner_agent", json!(event.owner_agent)),
                ("source", json!(event.source)),
                ("accepted_at", json!(event.accepted_at)),
                ("payload", event.payload),
            ] {
                body[name] = value;
            }
            Ok(Ok(Request {
                body,
                secret: subscription.secret,
                timeout: Duration::from_secs(config.timeout_seconds),
                subject_header: (EVENT_ID_HEADER, event_id.clone()),
            }))
        }
    }
}

/// Makes one attempt, if there is still something to deliver.
async fn call(
    store: &Store,
    client: &reqwest::Client,
    config: &DeliverySection,
    id: &str,
) -> Result<Outcome, StoreError> {
    let Some(delivery) = store.delivery(id)? else { return Ok(Outcome::Obsolete { reason: "gone".into() }) };
    let request = match prepare(store, config, &delivery)? {
        Ok(request) => request,
        Err(outcome) => return Ok(outcome),
    };
    let url = match url::Url::parse(&delivery.callback_url) {
        Ok(url) => url,
        Err(error) => return Ok(Outcome::Failed { error: format!("invalid callback URL: {error}") }),
    };
    if let Err(refusal) = check_target(&url, config.allow_private_targets) {
        return Ok(Outcome::Failed { error: refusal.to_string() });
    }
    let body = serde_json::to_vec(&request.body).expect("JSON values serialise");
    let timestamp = now_unix_ms() / 1000;
    let timeout = request.timeout;
    let sent = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(DELIVERY_ID_HEADER, &delivery.delivery_id)
        .header(request.subject_header.0, request.subject_header.1)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, sign(request.secret.as_bytes(), timestamp, &body))
        .body(body)
        .send()
        .await;
    Ok(match sent {
        Ok(response) if response.status().is_success() => {
            Outcome::Delivered { http_status: response.status().as_u16() }
        }
        Ok(response) if response.status().is_redirection() => {
            Outcome::Failed { error: format!("HTTP {} (redirects are not followed)", response.status().as_u16()) }
        }
        Ok(response) => Outcome::Failed { error: format!("HTTP {}", response.status().as_u16()) },
        Err(error) if error.is_timeout() => Outcome::Failed { error: format!("no answer within {timeout:?}") },
        Err(error) => Outcome::Failed { error: error_chain(&error) },
    })
}

/// The error with its causes: reqwest's own message alone says only "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stores the outcome of an attempt and what it means for the intent, in one write.
async fn record(store: &Store, config: &DeliverySection, id: String, outcome: Outcome) -> Result<(), StoreError> {
    let config = config.clone();
    store
        .write(move |txn| -> Result<(), StoreError> {
            let Some(mut delivery) = txn.delivery(&id)? else { return Ok(()) };
            if delivery.status != DeliveryStatus::Pending {
                return Ok(());
            }
            let at = now_rfc3339();
            delivery.updated_at = at.clone();
            let mut stored = match &delivery.subject {
                Subject::Intent { intent_id } => {
                    let id = uuid::Uuid::parse_str(intent_id).map_err(|_| StoreError::Corrupt("intent id".into()))?;
                    txn.intent(id)?.filter(|stored| handled_here_by(stored, &delivery.agent))
                }
                Subject::Event { .. } => None,
            };
            let actor = Some("node:http");
            let mut events = Vec::new();
            match outcome {
                Outcome::Obsolete { reason } => {
                    delivery.status = DeliveryStatus::Obsolete;
                    delivery.next_attempt_at_ms = None;
                    delivery.last_error = Some(reason);
                }
                Outcome::Delivered { http_status } => {
                    delivery.attempts += 1;
                    delivery.status = DeliveryStatus::Delivered;
                    delivery.next_attempt_at_ms = None;
                    if let Some(stored) = stored.as_mut().filter(|stored| stored.record.status() == Status::Submitted) {
                        let details = json!({"binding": "http", "delivery_id": delivery.delivery_id, "attempt": delivery.attempts, "http_status": http_status});
                        events.extend(stored.record.transition(Status::Delivered, None, actor, details, &at));
                    }
                }
                Outcome::Failed { error } => {
                    delivery.attempts += 1;
                    let limit = delivery.max_attempts.unwrap_or(config.max_attempts);
                    let last = delivery.attempts >= limit;
                    let retry_at = (!last).then(|| now_unix_ms() + retry_delay(&config, delivery.attempts));
                    if let Some(stored) = stored.as_mut().filter(|stored| !stored.record.status().is_terminal()) {
                        events.extend(failure_events(stored, &delivery, &error, retry_at, &at));
                    }
                    delivery.status = if last { DeliveryStatus::DeadLettered } else { DeliveryStatus::Pending };
                    delivery.next_attempt_at_ms = retry_at;
                    tracing::info!(delivery_id = %delivery.delivery_id, attempt = delivery.attempts, dead_lettered = last, %error, "delivery attempt failed");
                    delivery.last_error = Some(error);
                }
            }
            if let Some(stored) = stored.filter(|_| !events.is_empty()) {
                txn.update_intent(&stored, &events)?;
            }
            txn.put_delivery(&delivery)
        })
        .await
}

/// Whether this node still sequences the intent and `agent` still handles it: a transfer
/// makes the old handler's pending delivery pointless, and a replica is not this node's to change.
fn handled_here_by(stored: &crate::store::StoredIntent, agent: &str) -> bool {
    stored.record.handler() == agent && !stored.is_replica() && !stored.is_transferred_away()
}

fn retry_delay(config: &DeliverySection, attempts: u32) -> u64 {
    let base = Duration::from_millis(config.retry_base_ms);
    let max = Duration::from_secs(config.retry_max_seconds);
    backoff(attempts, base, max, rand::random::<f64>()).as_millis() as u64
}

/// `intent.delivery_failed` for the attempt and, after the last one, `intent.failed`.
fn failure_events(
    stored: &mut crate::store::StoredIntent,
    delivery: &Delivery,
    error: &str,
    retry_at: Option<u64>,
    at: &str,
) -> Vec<crate::intent::LifecycleEvent> {
    let details = json!({
        "binding": "http",
        "delivery_id": delivery.delivery_id,
        "attempt": delivery.attempts,
        "error": error,
        "next_attempt_at_ms": retry_at,
    });
    let record = &mut stored.record;
    let mut events: Vec<_> =
        record.note(EventType::DeliveryFailed, Some("node:http"), details, at).into_iter().collect();
    if retry_at.is_none() {
        let error = json!({
            "code": "delivery_failed",
            "message": format!("gave up delivering to {} after {} attempts; last error: {error}", delivery.callback_url, delivery.attempts),
            "delivery_id": delivery.delivery_id,
        });
        events.extend(record.resolve(ResolveOutcome::Failed { error }, Some("node:http"), at).unwrap_or_default());
    }
    events
}
