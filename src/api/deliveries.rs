//! Agent bindings (`POST /v1/agents/{address}/binding`) and push deliveries
//! (`/v1/deliveries`): listing, one delivery, and replay of dead letters.
//!
//! The delivering itself is `crate::delivery`; this module only reads and changes records.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Fields};
use super::intents::query_number;
use crate::address::AgentAddress;
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::store::{AgentBinding, Delivery, DeliveryMode, DeliveryStatus};

/// Shortest accepted signing secret, as for webhook subscriptions.
const MIN_SECRET_CHARS: usize = 16;

/// A signing secret as shown after it was set: its last four characters.
pub fn secret_hint(secret: &str) -> String {
    let tail: Vec<char> = secret.chars().rev().take(4).collect();
    format!("…{}", tail.into_iter().rev().collect::<String>())
}

/// The binding as shown: never the secret, only whether there is one and its last characters.
pub fn binding_view(binding: &AgentBinding) -> Value {
    let hint = binding.secret.as_deref().map(secret_hint);
    json!({
        "address": binding.address,
        "delivery_mode": binding.mode,
        "callback_url": binding.callback_url,
        "timeout_seconds": binding.timeout_seconds,
        "secret_hint": hint,
        "updated_at": binding.updated_at,
    })
}

/// A `callback_url` the node may deliver to: a URL, http(s), and not inside the node's network
/// unless the config allows it (422 naming the field otherwise).
pub fn callback_target(state: &AppState, raw: &str) -> ApiResult<url::Url> {
    let url = url::Url::parse(raw).map_err(|error| ApiError::invalid("callback_url", error))?;
    crate::delivery::check_target(&url, state.config().delivery.allow_private_targets).map_err(|refusal| {
        ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, refusal.code(), format!("callback_url: {refusal}"))
    })?;
    Ok(url)
}

/// Sets how `agent` receives intents: `delivery_mode` stream, poll, http (with `callback_url`,
/// optional `secret` — generated when absent and shown once — and `timeout_seconds`) or inbox.
pub async fn bind(state: &AppState, caller: &Caller, agent: AgentAddress, mut fields: Fields) -> ApiResult<Value> {
    caller.require("address", &agent)?;
    let mode: DeliveryMode = match fields.required_string("delivery_mode")?.as_str() {
        "stream" => DeliveryMode::Stream,
        "poll" => DeliveryMode::Poll,
        "http" => DeliveryMode::Http,
        "inbox" => DeliveryMode::Inbox,
        other => {
            return Err(ApiError::invalid(
                "delivery_mode",
                format!("{other:?} is not one of stream, poll, http, inbox"),
            ));
        }
    };
    let callback_url = fields.string("callback_url")?;
    let secret = fields.string("secret")?;
    let timeout_seconds = fields.positive_integer("timeout_seconds")?;
    fields.finish()?;
    let mut shown_secret = None;
    let binding = if mode == DeliveryMode::Http {
        let raw =
            callback_url.ok_or_else(|| ApiError::invalid("callback_url", "is required with delivery_mode http"))?;
        let url = callback_target(state, &raw)?;
        if timeout_seconds.is_some_and(|seconds| seconds > 300) {
            return Err(ApiError::invalid("timeout_seconds", "must be at most 300"));
        }
        let secret = match secret {
            Some(secret) if secret.chars().count() < MIN_SECRET_CHARS => {
                return Err(ApiError::invalid("secret", format!("must be at least {MIN_SECRET_CHARS} characters")));
            }
            Some(secret) => secret,
            None => {
                let generated = format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>()));
                shown_secret = Some(generated.clone());
                generated
            }
        };
        AgentBinding {
            address: agent.to_string(),
            mode,
            callback_url: Some(url.to_string()),
            secret: Some(secret),
            timeout_seconds,
            updated_at: now_rfc3339(),
        }
    } else {
        for (name, given) in [("callback_url", callback_url.is_some()), ("secret", secret.is_some())] {
            if given {
                return Err(ApiError::invalid(name, "is only for delivery_mode http"));
            }
        }
        AgentBinding {
            address: agent.to_string(),
            mode,
            callback_url: None,
            secret: None,
            timeout_seconds: None,
            updated_at: now_rfc3339(),
        }
    };
    let stored = binding.clone();
    state
        .store()
        .write(move |txn| -> ApiResult<()> {
            txn.register_agent(&stored.address, &stored.updated_at)?;
            txn.put_binding(&stored);
            Ok(())
        })
        .await?;
    let mut view = binding_view(&binding);
    if let Some(secret) = shown_secret {
        view["secret"] = json!(secret);
    }
    Ok(json!({"ok": true, "binding": view}))
}

fn delivery_view(delivery: &Delivery) -> Value {
    let mut view = serde_json::to_value(delivery).expect("deliveries serialise");
    view["status"] = json!(delivery.status.as_str());
    view
}

/// A delivery the caller may see: one for an agent it acts for. Others are 404 like missing ones.
fn visible(delivery: Option<Delivery>, caller: &Caller, id: &str) -> ApiResult<Delivery> {
    match delivery {
        Some(delivery) if AgentAddress::parse(&delivery.agent).is_ok_and(|agent| caller.may_act_for(&agent)) => {
            Ok(delivery)
        }
        _ => Err(ApiError::not_found(format_args!("delivery {id}"))),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    agent: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/deliveries?status=&agent=&limit=`: admin keys see every agent's, other keys name
/// an agent they act for.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query_number("limit", query.limit.as_deref(), 100, 1000)?.max(1) as usize;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<DeliveryStatus>)
        .transpose()
        .map_err(|error| ApiError::invalid("status", error))?;
    let agent = query
        .agent
        .as_deref()
        .map(|raw| AgentAddress::parse_lenient(raw).map_err(|error| ApiError::invalid("agent", error)))
        .transpose()?;
    match &agent {
        Some(agent) => caller.require("agent", agent)?,
        None if caller.key.admin => {}
        None => return Err(ApiError::invalid("agent", "is required unless the key is an admin key")),
    }
    let deliveries = state.store().deliveries(status, agent.as_ref().map(AgentAddress::as_str), limit)?;
    let views: Vec<Value> = deliveries.iter().map(delivery_view).collect();
    Ok(Json(json!({"ok": true, "deliveries": views})))
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let delivery = visible(state.store().delivery(&parse_id(&id)?)?, &caller, &id)?;
    Ok(Json(json!({"ok": true, "delivery": delivery_view(&delivery)})))
}

fn parse_id(raw: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::bad_request("invalid_delivery_id", format!("{raw:?} is not a delivery id (a UUID)")))
}

/// `POST /v1/deliveries/{id}/replay`: a dead-lettered (or delivered) delivery is attempted again
/// now, with a fresh attempt budget. A pending one is left as it is.
pub async fn replay(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let answer = state
        .store()
        .write(move |txn| -> ApiResult<Value> {
            let mut delivery = visible(txn.delivery(&id)?, &caller, &id)?;
            if delivery.status == DeliveryStatus::Pending {
                return Err(ApiError::conflict(
                    "delivery_pending",
                    format!("delivery {id} is still pending (attempt {} made); it needs no replay", delivery.attempts),
                ));
            }
            delivery.status = DeliveryStatus::Pending;
            delivery.attempts = 0;
            delivery.replays += 1;
            delivery.next_attempt_at_ms = Some(now_unix_ms());
            delivery.updated_at = now_rfc3339();
            txn.put_delivery(&delivery)?;
            tracing::info!(target: "axp::audit", decision = "replayed", delivery_id = %id, key_id = %caller.key.key_id, "delivery replayed");
            Ok(json!({"ok": true, "delivery": delivery_view(&delivery)}))
        })
        .await?;
    Ok(Json(answer))
}
