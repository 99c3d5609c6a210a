//! Webhook subscriptions and events (`/v1/webhooks/...`), owner-scoped like the inbox: an
//! owner subscribes callback URLs to event types; a published event is delivered, signed, to
//! each matching subscription by the same machinery as intents (`crate::delivery`), with the
//! same retries and dead letters.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Fields, JsonBody};
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::store::{DeliveryStatus, Store, StoreError, Subscription, WebhookEvent};

/// The event types of the AXME webhook API.
pub const EVENT_TYPES: [&str; 5] =
    ["inbox.thread_created", "inbox.thread_updated", "inbox.reply_received", "invite.accepted", "auth.session_revoked"];

#[derive(Deserialize)]
struct OwnerQuery {
    owner_agent: Option<String>,
    include_inactive: Option<String>,
}

/// The owner a request speaks for: `owner_agent` (query or `x-owner-agent`), or the key's own
/// address; it must be an agent address the key may act for.
pub struct Owner {
    address: String,
    include_inactive: bool,
}

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Query(query) = Query::<OwnerQuery>::from_request_parts(parts, state)
            .await
            .map_err(|error| ApiError::bad_request("invalid_query", error.body_text()))?;
        let address = caller.owner_or_own(&parts.headers, query.owner_agent.as_deref())?.to_string();
        let include_inactive = matches!(query.include_inactive.as_deref(), Some("true" | "1"));
        Ok(Owner { address, include_inactive })
    }
}

fn subscription_view(subscription: &Subscription) -> Value {
    json!({
        "subscription_id": subscription.subscription_id,
        "owner_agent": subscription.owner_agent,
        "callback_url": subscription.callback_url,
        "event_types": subscription.event_types,
        "active": subscription.active,
        "description": subscription.description,
        "created_at": subscription.created_at,
        "updated_at": subscription.updated_at,
        "revoked_at": subscription.revoked_at,
        "secret_hint": super::deliveries::secret_hint(&subscription.secret),
    })
}

/// `POST /v1/webhooks/subscriptions`: creates a subscription, or updates the owner's active one
/// for the same callback URL.
pub async fn upsert_subscription(
    State(state): State<AppState>,
    Owner { address: owner, .. }: Owner,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let mut fields = Fields::new(body);
    let callback_url = fields.required_string("callback_url")?;
    if !(8..=2048).contains(&callback_url.len()) {
        return Err(ApiError::invalid("callback_url", "must be 8 to 2048 characters"));
    }
    let url = super::deliveries::callback_target(&state, &callback_url)?;
    let event_types = match fields.value("event_types") {
        Some(Value::Array(types)) if (1..=32).contains(&types.len()) => types
            .into_iter()
            .map(|kind| match kind.as_str() {
                Some(kind) if EVENT_TYPES.contains(&kind) => Ok(kind.to_owned()),
                _ => Err(ApiError::invalid("event_types", format!("{kind} is not one of {}", EVENT_TYPES.join(", ")))),
            })
            .collect::<ApiResult<Vec<String>>>()?,
        _ => return Err(ApiError::invalid("event_types", "is required: a list of 1 to 32 event types")),
    };
    let secret = fields.string("secret")?;
    if secret.as_ref().is_some_and(|secret| !(16..=128).contains(&secret.chars().count())) {
        return Err(ApiError::invalid("secret", "must be 16 to 128 characters"));
    }
    let active = fields.boolean("active")?.unwrap_or(true);
    let description = fields.string("description")?;
    fields.finish()?;
    let existing = state
        .store()
        .subscriptions(&owner)?
        .into_iter()
        .find(|subscription| subscription.callback_url == url.as_str() && subscription.revoked_at.is_none());
    let at = now_rfc3339();
    let generated = secret.is_none() && existing.is_none();
    let subscription = Subscription {
        subscription_id: existing
            .as_ref()
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), |s| s.subscription_id.clone()),
        owner_agent: owner,
        callback_url: url.to_string(),
        event_types,
        secret: secret
            .or_else(|| existing.as_ref().map(|s| s.secret.clone()))
            .unwrap_or_else(|| format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>()))),
        active,
        description,
        created_at: existing.as_ref().map_or_else(|| at.clone(), |s| s.created_at.clone()),
        updated_at: at,
        revoked_at: None,
    };
    let stored = subscription.clone();
    state.store().write(move |txn| txn.put_subscription(&stored)).await?;
    let mut view = subscription_view(&subscription);
    if generated {
        view["secret"] = json!(subscription.secret);
    }
    Ok(Json(json!({"ok": true, "subscription": view})))
}

pub async fn list_subscriptions(
    State(state): State<AppState>,
    Owner { address: owner, include_inactive }: Owner,
) -> ApiResult<Json<Value>> {
    let subscriptions: Vec<Value> = state
        .store()
        .subscriptions(&owner)?
        .iter()
        .filter(|subscription| include_inactive || (subscription.active && subscription.revoked_at.is_none()))
        .map(subscription_view)
        .collect();
    Ok(Json(json!({"ok": true, "subscriptions": subscriptions})))
}

pub async fn delete_subscription(
    State(state): State<AppState>,
    Owner { address: owner, .. }: Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    uuid::Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("invalid_subscription_id", "not a UUID"))?;
    let revoked = state
        .store()
        .write(move |txn| -> ApiResult<Value> {
            let mut subscription = txn
                .subscription(&id)?
                .filter(|subscription| subscription.owner_agent == owner)
                .ok_or_else(|| ApiError::not_found(format_args!("subscription {id}")))?;
            let at = now_rfc3339();
            subscription.revoked_at.get_or_insert(at.clone());
            subscription.active = false;
            subscription.updated_at = at;
            txn.put_subscription(&subscription)?;
            Ok(json!({"ok": true, "subscription_id": id, "revoked_at": subscription.revoked_at}))
        })
        .await?;
    Ok(Json(revoked))
}

/// How an event's deliveries stand.
fn counters(store: &Store, event: &WebhookEvent) -> Result<Value, StoreError> {
    let mut by_status = std::collections::HashMap::new();
    for id in &event.delivery_ids {
        if let Some(delivery) = store.delivery(id)? {
            *by_status.entry(delivery.status).or_insert(0u64) += 1;
        }
    }
    let count = |status| by_status.get(&status).copied().unwrap_or(0);
    let pending = count(DeliveryStatus::Pending);
    Ok(json!({
        "ok": true,
        "event_id": event.event_id,
        "owner_agent": event.owner_agent,
        "event_type": event.event_type,
        "source": event.source,
        "accepted_at": event.accepted_at,
        "replayed_at": event.replayed_at,
        "queued_deliveries": event.delivery_ids.len(),
        "processed_deliveries": event.delivery_ids.len() as u64 - pending,
        "delivered": count(DeliveryStatus::Delivered),
        "pending": pending,
        "dead_lettered": count(DeliveryStatus::DeadLettered),
    }))
}

/// `POST /v1/webhooks/events`: publishes an event of the owner to its subscriptions.
pub async fn publish(
    State(state): State<AppState>,
    Owner { address: owner, .. }: Owner,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let mut fields = Fields::new(body);
    let event_type = fields.required_string("event_type")?;
    if !EVENT_TYPES.contains(&event_type.as_str()) {
        return Err(ApiError::invalid(
            "event_type",
            format!("{event_type:?} is not one of {}", EVENT_TYPES.join(", ")),
        ));
    }
    let source = fields.required_string("source")?;
    if !(2..=100).contains(&source.chars().count()) {
        return Err(ApiError::invalid("source", "must be 2 to 100 characters"));
    }
    let payload =
        fields.object("payload")?.ok_or_else(|| ApiError::invalid("payload", "is required (a JSON object)"))?;
    fields.finish()?;
    let subscriptions = state.store().subscriptions(&owner)?;
    let mut event = WebhookEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        owner_agent: owner,
        event_type,
        source,
        payload: Value::Object(payload),
        accepted_at: now_rfc3339(),
        delivery_ids: Vec::new(),
        replayed_at: None,
    };
    let event = state
        .store()
        .write(move |txn| -> Result<WebhookEvent, StoreError> {
            let at = event.accepted_at.clone();
            txn.fan_out(&mut event, &subscriptions, now_unix_ms(), &at)?;
            Ok(event)
        })
        .await?;
    Ok(Json(counters(state.store(), &event)?))
}

fn owned_event(state: &AppState, id: &str, owner: &str) -> ApiResult<WebhookEvent> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::bad_request("invalid_event_id", "not a UUID"))?;
    state
        .store()
        .webhook_event(id)?
        .filter(|event| event.owner_agent == owner)
        .ok_or_else(|| ApiError::not_found(format_args!("event {id}")))
}

pub async fn get_event(
    State(state): State<AppState>,
    Owner { address: owner, .. }: Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let event = owned_event(&state, &id, &owner)?;
    Ok(Json(counters(state.store(), &event)?))
}

/// `POST /v1/webhooks/events/{id}/replay`: delivers the event again to the owner's current
/// matching subscriptions.
pub async fn replay(
    State(state): State<AppState>,
    Owner { address: owner, .. }: Owner,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    owned_event(&state, &id, &owner)?;
    let subscriptions = state.store().subscriptions(&owner)?;
    let event = state
        .store()
        .write(move |txn| -> ApiResult<WebhookEvent> {
            let mut event = txn.webhook_event(&id)?.ok_or_else(|| ApiError::not_found(format_args!("event {id}")))?;
            let at = now_rfc3339();
            event.replayed_at = Some(at.clone());
            txn.fan_out(&mut event, &subscriptions, now_unix_ms(), &at)?;
            Ok(event)
        })
        .await?;
    Ok(Json(counters(state.store(), &event)?))
}
