//! The HTTP API, compatible with the AXME public API as the official SDKs use it.
//!
//! Owns routing, extraction, authentication and the JSON shapes of answers. Lifecycle rules are
//! `crate::intent`'s, persistence is `crate::store`'s; handlers glue the two.

mod admin;
mod agents;
mod deliveries;
mod error;
mod extract;
mod inbox;
mod intents;
mod limit;
mod registry;
mod streams;
mod tasks;
pub(crate) mod views;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use tracing::Instrument;

pub use error::{ApiError, ApiResult};
pub use tasks::{record_answer, task_answered};

use crate::config::Config;
use crate::routing::Routing;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    store: Store,
    config: Config,
    routing: Arc<Routing>,
    limiter: limit::RateLimiter,
    /// Turns true when the node begins to shut down: open streams close at once.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Signs magic links and web sessions.
    links: crate::web::link::LinkKey,
    /// When each address was last sent a sign-in link (unix ms).
    sign_ins: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl AppState {
    pub fn new(
        store: Store,
        config: Config,
        routing: Arc<Routing>,
        stopping: tokio::sync::watch::Receiver<bool>,
        links: crate::web::link::LinkKey,
    ) -> Self {
        let limiter = limit::RateLimiter::new(config.limits.rate_limit_per_second);
        let sign_ins = Default::default();
        AppState(Arc::new(Inner { store, config, routing, limiter, stopping, links, sign_ins }))
    }

    pub fn links(&self) -> &crate::web::link::LinkKey {
        &self.0.links
    }

    pub fn public_url_is_https(&self) -> bool {
        self.0.config.web.public_url.as_ref().is_some_and(|url| url.scheme() == "https")
    }

    /// Whether `email` may be sent a sign-in link now (one per `interval_ms`); notes it if so.
    pub fn sign_in_allowed(&self, email: &str, interval_ms: u64) -> bool {
        let now = crate::clock::now_unix_ms();
        let mut last = self.0.sign_ins.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.retain(|_, at| now.saturating_sub(*at) < interval_ms);
        if last.contains_key(email) {
            return false;
        }
        last.insert(email.to_owned(), now);
        true
    }

    fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.stopping.clone()
    }

    pub fn routing(&self) -> &Routing {
        &self.0.routing
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    fn limiter(&self) -> &limit::RateLimiter {
        &self.0.limiter
    }

    /// Bodies may carry a payload of the configured size plus the envelope around it.
    fn body_limit(&self) -> usize {
        self.0.config.limits.max_payload_bytes.saturating_mul(2).saturating_add(64 * 1024)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(agents::health))
        .route("/v1/capabilities", get(agents::capabilities))
        .route("/v1/intents", post(intents::create).get(intents::list))
        .route("/v1/intents/{id}", get(intents::get))
        .route("/v1/intents/{id}/events", get(intents::events))
        .route("/v1/intents/{id}/events/stream", get(streams::intent_events))
        .route("/v1/intents/{id}/resolve", post(intents::resolve))
        .route("/v1/intents/{id}/resume", post(intents::resume))
        .route("/v1/intents/{id}/controls", post(intents::controls))
        .route("/v1/intents/{id}/policy", post(intents::policy))
        .route("/v1/intents/{id}/transition", post(intents::transition))
        .route("/v1/intents/{id}/transfer", post(intents::transfer))
        .route("/v1/inbox", get(inbox::list))
        .route("/v1/inbox/changes", get(inbox::changes))
        .route("/v1/inbox/{thread_id}", get(inbox::thread))
        .route("/v1/inbox/{thread_id}/reply", post(inbox::reply))
        .route("/v1/inbox/{thread_id}/delegate", post(inbox::delegate))
        .route("/v1/inbox/{thread_id}/approve", post(inbox::approve))
        .route("/v1/inbox/{thread_id}/reject", post(inbox::reject))
        .route("/v1/inbox/{thread_id}/messages/delete", post(inbox::delete_messages))
        .route("/v1/inbox/{thread_id}/read", post(inbox::read))
        .route("/v1/me/tasks", get(tasks::mine))
        .route("/v1/approvals/{id}/decision", post(tasks::decision))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{*address}", get(agents::get_or_listen).post(agents::post_to_agent))
        .route("/v1/deliveries", get(deliveries::list))
        .route("/v1/deliveries/{id}", get(deliveries::get))
        .route("/v1/deliveries/{id}/replay", post(deliveries::replay))
        .route("/v1/webhooks/subscriptions", post(webhooks::upsert_subscription).get(webhooks::list_subscriptions))
        .route("/v1/webhooks/subscriptions/{id}", delete(webhooks::delete_subscription))
        .route("/v1/webhooks/events", post(webhooks::publish))
        .route("/v1/webhooks/events/{id}", get(webhooks::get_event))
        .route("/v1/webhooks/events/{id}/replay", post(webhooks::replay))
        .route("/v1/registry", get(registry::show))
        .route("/v1/registry/resolve", get(registry::resolve))
        .route("/v1/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/v1/admin/keys/{key_id}/revoke", post(admin::revoke_key))
        .route("/v1/admin/mails", get(admin::list_mails))
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::not_found("route") })
        // Bodies are read by `JsonBody`, which applies the node's own limit and answers 413 in JSON.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(trace_headers))
        .with_state(state)
}

/// Echoes `X-Trace-Id` and gives every answer an `x-request-id`.
async fn trace_headers(request: Request, next: Next) -> Response {
    let trace_id = request.headers().get("x-trace-id").cloned();
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path(), %request_id);
    let mut response = next.run(request).instrument(span).await;
    let headers = response.headers_mut();
    if let Some(trace_id) = trace_id {
        headers.insert("x-trace-id", trace_id);
    }
    headers.insert("x-request-id", HeaderValue::from_str(&request_id).expect("a UUID is a valid header value"));
    response
}
