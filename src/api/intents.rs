//! `/v1/intents`: create, read, the event log, and the operations that move an intent along.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Fields, JsonBody};
use super::inbox;
use super::views;
use crate::address::AgentAddress;
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::intent::{IntentRecord, LifecycleError, LifecycleEvent, NewIntent, ResolveOutcome, Status, WaitingReason};
use crate::routing::Route;
use crate::store::{
    Feed, HandlerHome, IdempotencyCheck, IdempotencyScope, LinkRole, OutboxEntry, OutboxKind, RemoteLink, StoredIntent,
    Txn, canonical_hash,
};
use crate::transport::wire::{ControlAction, ControlItem, MAX_EVENT_CONTENT_BYTES, NodeRef, TransferItem};

/// Most events one `GET .../events` returns; callers page on with `since`.
const MAX_EVENTS_PAGE: usize = 1000;
const MAX_LIST_PAGE: usize = 500;
/// Optional create fields kept for the runtime (timers, reminders, human tasks).
const INTENT_OPTIONS: [&str; 8] = [
    "deadline_at",
    "remind_after_seconds",
    "remind_interval_seconds",
    "max_reminders",
    "escalate_to",
    "max_delivery_attempts",
    "human_task",
    "metadata",
];

/// A keyed request's identity and body fingerprint, checked and recorded inside the write.
pub(super) struct Idempotency {
    scope: IdempotencyScope,
    body_hash: String,
    expired_before_ms: u64,
}

impl Idempotency {
    fn from_request(
        state: &AppState,
        caller: &Caller,
        headers: &HeaderMap,
        endpoint: &str,
        body: &Map<String, Value>,
    ) -> ApiResult<Option<Self>> {
        let Some(raw) = headers.get("idempotency-key") else { return Ok(None) };
        let key =
            raw.to_str().ok().map(str::trim).filter(|key| !key.is_empty() && key.len() <= 255).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        let ttl_ms = state.config().limits.idempotency_ttl_hours * 3_600_000;
        Ok(Some(Idempotency {
            scope: IdempotencyScope::new(&caller.key.key_id, endpoint, key),
            body_hash: canonical_hash(&Value::Object(body.clone())),
            expired_before_ms: now_unix_ms().saturating_sub(ttl_ms),
        }))
    }
}

/// Runs `change` unless the same keyed request was already answered, and records its answer.
pub(super) fn once(
    txn: &mut Txn,
    idempotency: Option<Idempotency>,
    change: impl FnOnce(&mut Txn) -> ApiResult<Value>,
) -> ApiResult<Value> {
    let Some(idempotency) = idempotency else { return change(txn) };
    match txn.idempotency_check(idempotency.scope, &idempotency.body_hash, idempotency.expired_before_ms)? {
        IdempotencyCheck::Replay(answer) => Ok(answer),
        IdempotencyCheck::Conflict => Err(ApiError::conflict(
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body; use a new key for a new request",
        )),
        IdempotencyCheck::Fresh => {
            let answer = change(txn)?;
            txn.idempotency_save(idempotency.scope, &idempotency.body_hash, &answer, now_unix_ms());
            Ok(answer)
        }
    }
}

fn parse_intent_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_intent_id", format!("{raw:?} is not an intent id (a UUID)")))
}

/// The intent, if it exists and the caller may see it. Both cases answer the same 404 so that
/// a key learns nothing about intents outside its addresses.
fn visible(stored: Option<StoredIntent>, caller: &Caller, id: Uuid) -> ApiResult<StoredIntent> {
    match stored {
        Some(stored) if caller.can_see(&stored.record) || super::tasks::may_answer(caller, &stored.record) => {
            Ok(stored)
        }
        _ => Err(ApiError::not_found(format_args!("intent {id}"))),
    }
}

/// The `after` of an operation that needs nothing beyond its change.
fn nothing_after(_: &mut Txn, _: &mut StoredIntent, _: &[LifecycleEvent], _: &mut Value) -> ApiResult<()> {
    Ok(())
}

fn transferred_away(stored: &StoredIntent) -> ApiError {
    ApiError::conflict(
        "transferred_away",
        format!(
            "intent {} was transferred to {}, which another node serves; this node's copy ends with that transfer",
            stored.record.intent_id,
            stored.record.handler()
        ),
    )
}

fn owned_elsewhere(stored: &StoredIntent) -> ApiError {
    let owner = stored.link.as_ref().map_or("another node", |link| link.peer.node.as_str());
    ApiError::conflict(
        "owned_by_remote_node",
        format!(
            "intent {} is sequenced by {owner}, its handler's node; changing it from here is not supported yet",
            stored.record.intent_id
        ),
    )
}

fn require_handler(caller: &Caller, stored: &StoredIntent, what: &str) -> ApiResult<()> {
    if caller.is_handler_of(&stored.record) {
        return Ok(());
    }
    Err(ApiError::forbidden("not_handler", format!("only the handler {} may {what}", stored.record.handler())))
}

fn is_valid_intent_type(intent_type: &str) -> bool {
    // `^[a-z0-9_]+(\.[a-z0-9_]+)+\.v[0-9]+$`, the create request's grammar.
    let segments: Vec<&str> = intent_type.split('.').collect();
    let Some((version, names)) = segments.split_last() else { return false };
    let version_ok = version
        .strip_prefix('v')
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()));
    let name_ok = |name: &&str| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    version_ok && names.len() >= 2 && names.iter().all(name_ok) && intent_type.len() <= 255
}

/// Room left in a Matrix event for the intent's other fields and its first two events.
const ENVELOPE_ALLOWANCE: usize = 8 * 1024;

fn parse_create(
    state: &AppState,
    caller: &Caller,
    body: Map<String, Value>,
) -> ApiResult<(NewIntent, Option<RemoteLink>)> {
    let mut fields = Fields::new(body);
    let intent_type = fields.required_string("intent_type")?;
    if !is_valid_intent_type(&intent_type) {
        return Err(ApiError::invalid(
            "intent_type",
            format!("{intent_type:?} must look like domain.action.v1 (lowercase, dot-separated, ending in .v<N>)"),
        ));
    }
    let correlation_id = fields.required_string("correlation_id")?;
    if correlation_id.len() > 255 {
        return Err(ApiError::invalid("correlation_id", "must be at most 255 characters"));
    }
    let to_agent = fields.address("to_agent")?.ok_or_else(|| ApiError::invalid("to_agent", "is required"))?;
    let link = check_route(state, &to_agent)?;
    let from_agent = match fields.address("from_agent")? {
        Some(address) => {
            caller.require("from_agent", &address)?;
            address
        }
        None => caller.key.default_agent().ok_or_else(|| {
            ApiError::invalid(
                "from_agent",
                "is required: this API key acts for several addresses, so name the one sending",
            )
        })?,
    };
    if !state.routing().is_local(&from_agent) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "from_agent_not_local",
            format!(
                "from_agent: {from_agent} is not an address of org {}, which this node serves",
                state.routing().local_org()
            ),
        ));
    }
    let reply_to = fields.address("reply_to")?;
    if let Some(reply_to) = &reply_to {
        caller.require("reply_to", reply_to)?;
        // The outcome goes to an inbox thread on this node, so the address must be one of its own.
        if !state.routing().is_local(reply_to) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reply_to_not_local",
                format!("reply_to: {reply_to} is not served by this node, which keeps the inbox the outcome goes to"),
            ));
        }
    }
    let payload =
        fields.object("payload")?.ok_or_else(|| ApiError::invalid("payload", "is required (a JSON object)"))?;
    let payload_size = serde_json::to_vec(&payload).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
    let limit = state.config().limits.max_payload_bytes;
    if payload_size > limit {
        return Err(ApiError::too_large(format!(
            "payload is {payload_size} bytes; this node accepts at most {limit} bytes (limits.max_payload_bytes)"
        )));
    }
    let remote_limit = MAX_EVENT_CONTENT_BYTES - ENVELOPE_ALLOWANCE;
    if link.is_some() && payload_size > remote_limit {
        return Err(ApiError::too_large(format!(
            "payload is {payload_size} bytes; an intent for another org travels in one Matrix event and may carry at most {remote_limit} bytes of payload"
        )));
    }
    let options = parse_options(&mut fields)?;
    fields.finish()?;
    let new = NewIntent {
        intent_type,
        correlation_id,
        from_agent: from_agent.to_string(),
        to_agent: to_agent.to_string(),
        reply_to: reply_to.map(|address| address.to_string()),
        payload: Value::Object(payload),
        options,
    };
    Ok((new, link))
}

/// Where a new intent goes: to a local handler, or to another org's node (the link). An
/// address this node cannot deliver to is refused now rather than dropped later.
fn check_route(state: &AppState, to_agent: &AgentAddress) -> ApiResult<Option<RemoteLink>> {
    match state.routing().route(to_agent) {
        Route::Local => Ok(None),
        Route::Remote { org, node } if state.config().matrix.is_some() => {
            Ok(Some(RemoteLink { role: LinkRole::Initiator, peer: NodeRef { org, node: node.id }, room_id: None }))
        }
        Route::Remote { org, node } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "federation_unavailable",
            format!(
                "to_agent: {to_agent} is served by org {org}'s node {} ({}), and this node has no Matrix transport to reach it",
                node.id, node.matrix_user_id
            ),
        )),
        Route::Unroutable { org, reason } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "agent_not_found",
            format!("to_agent: {to_agent} cannot be routed: {reason} (org {org}, code {})", reason.code()),
        )),
    }
}

fn parse_options(fields: &mut Fields) -> ApiResult<Map<String, Value>> {
    let mut options = Map::new();
    if let Some(deadline) = fields.string("deadline_at")? {
        chrono::DateTime::parse_from_rfc3339(&deadline)
            .map_err(|_| ApiError::invalid("deadline_at", "must be an RFC 3339 date-time"))?;
        options.insert("deadline_at".into(), Value::String(deadline));
    }
    for name in ["remind_after_seconds", "remind_interval_seconds", "max_reminders", "max_delivery_attempts"] {
        if let Some(number) = fields.positive_integer(name)? {
            options.insert(name.into(), Value::from(number));
        }
    }
    if let Some(escalate_to) = fields.string("escalate_to")? {
        if escalate_to.len() > 383 {
            return Err(ApiError::invalid("escalate_to", "must be at most 383 characters"));
        }
        options.insert("escalate_to".into(), Value::String(escalate_to));
    }
    for name in ["human_task", "metadata"] {
        if let Some(object) = fields.object(name)? {
            options.insert(name.into(), Value::Object(object));
        }
    }
    if let Some(task) = options.get("human_task") {
        crate::intent::HumanTask::parse(task)?;
    }
    debug_assert!(options.keys().all(|key| INTENT_OPTIONS.contains(&key.as_str())));
    Ok(options)
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let idempotency = Idempotency::from_request(&state, &caller, &headers, "POST /v1/intents", &body)?;
    let (new, link) = parse_create(&state, &caller, body)?;
    let actor = new.from_agent.clone();
    let answer = state
        .store()
        .write(move |txn| {
            once(txn, idempotency, |txn| {
                let id = Uuid::now_v7();
                let at = now_rfc3339();
                let (mut record, mut events) = IntentRecord::submit(new, id.to_string(), &actor, &at);
                // The handler's node runs the task: here when the handler is local, else when
                // that node adopts the intent (`transport::matrix`).
                if link.is_none() && record.options.contains_key("human_task") {
                    events.extend(txn.start_human_task(&mut record, &at)?);
                }
                let status = record.status();
                txn.insert_intent(record, &events, link)?;
                Ok(json!({"ok": true, "intent_id": id, "status": status, "created_at": at}))
            })
        })
        .await?;
    Ok(Json(answer))
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_intent_id(&id)?;
    let stored = visible(state.store().intent(id)?, &caller, id)?;
    Ok(Json(json!({"ok": true, "intent": views::intent(&stored)})))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    since: Option<String>,
    limit: Option<String>,
}

/// Parses a non-negative integer query parameter.
pub fn query_number(name: &str, raw: Option<&str>, default: u64, max: u64) -> ApiResult<u64> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().parse::<u64>() {
        Ok(number) if number <= max => Ok(number),
        _ => Err(ApiError::invalid(name, format!("{raw:?} must be an integer from 0 to {max}"))),
    }
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let id = parse_intent_id(&id)?;
    let since = query_number("since", query.since.as_deref(), 0, u64::MAX)?;
    let limit =
        query_number("limit", query.limit.as_deref(), MAX_EVENTS_PAGE as u64, MAX_EVENTS_PAGE as u64)?.max(1) as usize;
    visible(state.store().intent(id)?, &caller, id)?;
    let events = state.store().events(id, since, limit)?;
    let next_since = events.last().map_or(since, |event| event.seq);
    let events: Vec<Value> = events.iter().map(views::event).collect();
    Ok(Json(json!({"ok": true, "events": events, "next_since": next_since})))
}

/// `?owner_agent=`: the address a request acts as (also the `x-owner-agent` header).
#[derive(Deserialize)]
pub struct OwnerQuery {
    pub(super) owner_agent: Option<String>,
}

/// What every operation on one intent (`POST /v1/intents/{id}/<operation>`) or inbox thread
/// (`POST /v1/inbox/{thread_id}/<operation>`) reads first: the caller and the address it acts
/// as (`owner_agent` query or `x-owner-agent` header), the id, the body's fields, and the
/// idempotency key scoped to the operation.
pub struct IntentCall {
    pub(super) caller: Caller,
    pub(super) actor: String,
    /// The address named by `owner_agent` / `x-owner-agent`, if any (`actor` falls back to the
    /// key's default address).
    pub(super) owner: Option<AgentAddress>,
    pub(super) id: String,
    pub(super) idempotency: Option<Idempotency>,
    pub(super) fields: Fields,
    /// How the caller says it reached the node (`x-axp-channel`: `cli`, ...; default `api`),
    /// recorded with human-task decisions.
    pub(super) channel: String,
}

impl FromRequest<AppState> for IntentCall {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let caller = Caller::from_request_parts(&mut parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|error| ApiError::bad_request("invalid_path", error.body_text()))?;
        let Query(query) = Query::<OwnerQuery>::from_request_parts(&mut parts, state)
            .await
            .map_err(|error| ApiError::bad_request("invalid_query", error.body_text()))?;
        let owner = caller.owner(&parts.headers, query.owner_agent.as_deref())?;
        let actor = caller.actor(owner.as_ref());
        let endpoint = format!("POST {}", parts.uri.path());
        let headers = parts.headers.clone();
        let JsonBody(body) = JsonBody::from_request(Request::from_parts(parts, body), state).await?;
        let idempotency = Idempotency::from_request(state, &caller, &headers, &endpoint, &body)?;
        let channel = headers.get("x-axp-channel").and_then(|value| value.to_str().ok()).unwrap_or("api");
        if channel.is_empty() || channel.len() > 32 || !channel.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(ApiError::bad_request("invalid_channel", "x-axp-channel must be 1 to 32 of a-z and _"));
        }
        let channel = channel.to_owned();
        Ok(IntentCall { caller, actor, owner, id, idempotency, fields: Fields::new(body), channel })
    }
}

/// Common shape of the intent operations: load, authorise and change the intent inside one
/// write, persisting the events the change appended. `change` returns the answer and those events.
///
/// Then `after` runs in the same write, once the change and its events are stored; it may
/// add to the answer.
///
/// On a replica (the handler's node owns the log) nothing changes here: a request the owner
/// can sequence (`forward`) is queued for it as a control event, anything else is refused.
pub(super) async fn operate(
    state: &AppState,
    caller: Caller,
    id: &str,
    idempotency: Option<Idempotency>,
    forward: Option<ControlItem>,
    change: impl FnOnce(&Caller, &mut StoredIntent) -> ApiResult<(Value, Vec<LifecycleEvent>)> + Send + 'static,
    after: impl FnOnce(&mut Txn, &mut StoredIntent, &[LifecycleEvent], &mut Value) -> ApiResult<()> + Send + 'static,
) -> ApiResult<Json<Value>> {
    let id = parse_intent_id(id)?;
    let answer = state
        .store()
        .write(move |txn| {
            once(txn, idempotency, |txn| {
                let mut stored = visible(txn.intent(id)?, &caller, id)?;
                if stored.is_transferred_away() {
                    return Err(transferred_away(&stored));
                }
                if stored.is_replica() {
                    let Some(control) = forward else { return Err(owned_elsewhere(&stored)) };
                    return forward_to_owner(txn, &stored, control);
                }
                let (mut answer, events) = change(&caller, &mut stored)?;
                txn.update_intent(&stored, &events)?;
                after(txn, &mut stored, &events, &mut answer)?;
                Ok(answer)
            })
        })
        .await?;
    Ok(Json(answer))
}

/// Queues a request for a replica's owner (the handler's node), which sequences it; the
/// resulting events reach this node's replica later. Answers `{applied: false, forwarded: true}`.
pub(super) fn forward_to_owner(txn: &mut Txn, stored: &StoredIntent, mut control: ControlItem) -> ApiResult<Value> {
    if stored.record.status().is_terminal() {
        return Err(LifecycleError::Terminal { status: stored.record.status() }.into());
    }
    let link = stored.link.as_ref().expect("a replica has a link");
    control.intent_id = stored.record.intent_id.clone();
    txn.enqueue(&OutboxEntry {
        peer: link.peer.clone(),
        address: stored.record.handler().to_owned(),
        room_id: None,
        kind: OutboxKind::Control,
        item: serde_json::to_value(&control).expect("controls serialise"),
    })?;
    Ok(json!({
        "ok": true,
        "applied": false,
        "forwarded": true,
        "reason": "forwarded_to_owner",
        "owner": link.peer.node,
        "intent": views::intent(stored),
    }))
}

pub async fn resolve(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let IntentCall { caller, actor, id, idempotency, mut fields, .. } = call;
    let status: Status =
        fields.required_string("status")?.parse().map_err(|error| ApiError::invalid("status", error))?;
    let outcome = match status {
        Status::Completed => ResolveOutcome::Completed {
            result: fields
                .value("result")
                .ok_or_else(|| ApiError::invalid("result", "is required when status is COMPLETED"))?,
        },
        Status::Failed => ResolveOutcome::Failed {
            error: match fields.value("error") {
                Some(Value::String(message)) => json!({"message": message}),
                Some(error @ Value::Object(_)) => error,
                Some(_) => return Err(ApiError::invalid("error", "must be an object or a string")),
                None => return Err(ApiError::invalid("error", "is required when status is FAILED")),
            },
        },
        Status::Canceled => ResolveOutcome::Canceled {
            reason: fields
                .string("reason")?
                .ok_or_else(|| ApiError::invalid("reason", "is required when status is CANCELED"))?,
        },
        other => {
            return Err(ApiError::invalid(
                "status",
                format!("{other} is not a resolution; use COMPLETED, FAILED or CANCELED"),
            ));
        }
    };
    // Both are informational on resolve: the actor comes from the key, the reason from the outcome.
    fields.string("actor")?;
    fields.string("reason")?;
    let expected_generation = fields.integer("expected_policy_generation", 0)?;
    fields.finish()?;
    let forward = match &outcome {
        ResolveOutcome::Canceled { reason } => Some(ControlItem {
            request_id: Uuid::now_v7().to_string(),
            intent_id: id.clone(),
            actor: actor.clone(),
            action: ControlAction::Cancel { reason: reason.clone() },
        }),
        _ => None,
    };
    operate(
        &state,
        caller,
        &id,
        idempotency,
        forward,
        move |caller, stored| {
            if !matches!(outcome, ResolveOutcome::Canceled { .. }) {
                require_handler(caller, stored, "complete or fail this intent")?;
            }
            if let Some(expected) = expected_generation
                && expected != stored.record.policy_generation()
            {
                return Ok((stale(stored), vec![]));
            }
            let events = stored.record.resolve(outcome, Some(&actor), &now_rfc3339())?;
            let last = events.last().map(views::event).unwrap_or(Value::Null);
            let mut event = last;
            event["pending_with"] = Value::Null;
            let answer = json!({
                "ok": true,
                "applied": true,
                "intent": views::intent(stored),
                "event": event,
                "completion_delivery": null,
            });
            Ok((answer, events))
        },
        |txn, stored, _events, answer| {
            if answer["applied"] == true {
                answer["completion_delivery"] = inbox::completion_delivery(txn, stored)?;
            }
            Ok(())
        },
    )
    .await
}

fn stale(stored: &StoredIntent) -> Value {
    json!({"ok": true, "applied": false, "reason": "stale_policy_generation", "policy_generation": stored.record.policy_generation()})
}

pub async fn resume(State(state): State<AppState>, mut call: IntentCall) -> ApiResult<Json<Value>> {
    if let Some(task_result) = call.fields.object("task_result")? {
        call.fields.string("actor")?;
        call.fields.string("reason")?;
        std::mem::replace(&mut call.fields, Fields::new(Map::new())).finish()?;
        return super::tasks::answer(&state, call, task_result).await;
    }
    let IntentCall { caller, actor, id, idempotency, mut fields, channel, .. } = call;
    let approve = fields.boolean("approve_current_step")?.unwrap_or(true);
    let reason = fields.string("reason")?;
    let expected_generation = fields.integer("expected_policy_generation", 0)?;
    fields.string("actor")?;
    fields.boolean("internal_scheduler")?;
    // Whatever else the caller sends is the step's input (a task result, a callback payload):
    // agents put their result fields here, so it is kept rather than refused.
    let input = fields.into_rest();
    let details = json!({"resumed": true, "approved": approve, "reason": reason, "input": input});
    let forward = ControlItem {
        request_id: Uuid::now_v7().to_string(),
        intent_id: id.clone(),
        actor: actor.clone(),
        action: ControlAction::Resume { approve, details: details.clone() },
    };
    operate(
        &state,
        caller,
        &id,
        idempotency,
        Some(forward),
        move |caller, stored| {
            if let Some(expected) = expected_generation
                && expected != stored.record.policy_generation()
            {
                return Ok((stale(stored), vec![]));
            }
            if stored.record.open_human_task().is_some() {
                // A bare resume of a human task is an approve (or, refusing, a reject) with
                // the body's other fields as the form.
                let input = input.clone();
                return super::tasks::answer_decision(
                    caller,
                    &actor,
                    stored,
                    approve,
                    reason.as_deref(),
                    input,
                    &channel,
                );
            }
            let outcome = stored.record.resume(approve, details, Some(&actor), &now_rfc3339())?;
            let answer = json!({
                "ok": true,
                "applied": outcome.applied,
                "reason": outcome.reason,
                "policy_generation": stored.record.policy_generation(),
                "intent": views::intent(stored),
            });
            Ok((answer, outcome.events))
        },
        nothing_after,
    )
    .await
}

pub async fn controls(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    update_policy(&state, call, |fields| {
        let controls = fields.object("controls_patch")?;
        if controls.is_none() {
            return Err(ApiError::invalid("controls_patch", "is required (a JSON object)"));
        }
        Ok(Patches { controls, grants: None, envelope: None })
    })
    .await
}

pub async fn policy(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    update_policy(&state, call, |fields| {
        let grants = fields.object("grants_patch")?;
        let envelope = fields.object("envelope_patch")?;
        if grants.is_none() && envelope.is_none() {
            return Err(ApiError::invalid("grants_patch", "grants_patch or envelope_patch is required"));
        }
        Ok(Patches { controls: None, grants, envelope })
    })
    .await
}

/// The merge patches one policy request carries.
struct Patches {
    controls: Option<Map<String, Value>>,
    grants: Option<Map<String, Value>>,
    envelope: Option<Map<String, Value>>,
}

/// `controls` and `policy`: merge patches under compare-and-set on `policy_generation`.
async fn update_policy(
    state: &AppState,
    call: IntentCall,
    patches: impl FnOnce(&mut Fields) -> ApiResult<Patches>,
) -> ApiResult<Json<Value>> {
    let IntentCall { caller, id, idempotency, mut fields, .. } = call;
    let patches = patches(&mut fields)?;
    let expected_generation = fields.integer("expected_policy_generation", 0)?;
    fields.string("reason")?;
    fields.string("actor")?;
    fields.boolean("internal_scheduler")?;
    fields.finish()?;
    operate(
        state,
        caller,
        &id,
        idempotency,
        None,
        move |_caller, stored| {
            let Patches { controls, grants, envelope } = patches;
            let update = stored.record.update_policy(
                expected_generation,
                controls.as_ref(),
                grants.as_ref(),
                envelope.as_ref(),
                &now_rfc3339(),
            )?;
            Ok((policy_answer(update), vec![]))
        },
        nothing_after,
    )
    .await
}

fn policy_answer(update: crate::intent::PolicyUpdate) -> Value {
    let reason = (!update.applied).then_some("stale_policy_generation");
    json!({"ok": true, "applied": update.applied, "reason": reason, "policy_generation": update.policy_generation})
}

/// The handler reports progress: ACKNOWLEDGED, IN_PROGRESS, or WAITING with a reason.
/// Terminal outcomes go through `resolve`; DELIVERED is recorded by the node itself.
pub async fn transition(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let IntentCall { caller, actor, id, idempotency, mut fields, .. } = call;
    let status: Status =
        fields.required_string("status")?.parse().map_err(|error| ApiError::invalid("status", error))?;
    if !matches!(status, Status::Acknowledged | Status::InProgress | Status::Waiting) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "status_not_settable",
            format!(
                "status: {status} cannot be set here; use ACKNOWLEDGED, IN_PROGRESS or WAITING, and POST .../resolve for COMPLETED, FAILED or CANCELED"
            ),
        ));
    }
    let waiting_reason: Option<WaitingReason> = fields
        .string("waiting_reason")?
        .map(|raw| raw.parse())
        .transpose()
        .map_err(|error| ApiError::invalid("waiting_reason", error))?;
    let mut details = fields.object("details")?.map(Value::Object).unwrap_or_else(|| json!({}));
    wake_time(&mut fields, &mut details, waiting_reason)?;
    fields.finish()?;
    operate(
        &state,
        caller,
        &id,
        idempotency,
        None,
        move |caller, stored| {
            require_handler(caller, stored, "report progress on this intent")?;
            if status == Status::Acknowledged && stored.record.status() == Status::Acknowledged {
                // A retried acknowledgement (a poller that did not hear the answer) changes nothing.
                let answer = json!({"ok": true, "applied": false, "reason": "already_acknowledged", "intent": views::intent(stored)});
                return Ok((answer, vec![]));
            }
            let event = stored.record.transition(status, waiting_reason, Some(&actor), details, &now_rfc3339())?;
            let answer = json!({"ok": true, "intent": views::intent(stored), "event": views::event(&event)});
            Ok((answer, vec![event]))
        },
        nothing_after,
    )
    .await
}

/// A delay: `next_wakeup_at` (RFC 3339, top level or in `details`) with WAITING_FOR_TIME, kept
/// in the event's details where the timers read it.
fn wake_time(fields: &mut Fields, details: &mut Value, reason: Option<WaitingReason>) -> ApiResult<()> {
    let top = fields.string("next_wakeup_at")?;
    let Some(wake_at) = top.or_else(|| details.get("next_wakeup_at").and_then(Value::as_str).map(str::to_owned)) else {
        return Ok(());
    };
    if reason != Some(WaitingReason::WaitingForTime) {
        return Err(ApiError::invalid("next_wakeup_at", "goes only with status WAITING and WAITING_FOR_TIME"));
    }
    if crate::intent::parse_ms(&wake_at).is_none() {
        return Err(ApiError::invalid("next_wakeup_at", "must be an RFC 3339 date-time"));
    }
    details["next_wakeup_at"] = Value::String(wake_at);
    Ok(())
}

/// The handler hands the intent to another address: on this node, or on another org's node
/// (which then sequences the rest of the log). The status stays; the new handler is offered
/// the intent as if it had just arrived.
pub async fn transfer(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let IntentCall { caller, actor, id, idempotency, mut fields, .. } = call;
    let to_agent = fields
        .address("to_agent")?
        .ok_or_else(|| ApiError::invalid("to_agent", "is required: the agent address that takes the intent over"))?;
    let reason = fields.string("reason")?;
    fields.finish()?;
    let home = match check_route(&state, &to_agent)? {
        None => HandlerHome::Local,
        Some(link) => HandlerHome::Remote(link.peer),
    };
    let change = move |caller: &Caller, stored: &mut StoredIntent| {
        require_handler(caller, stored, "transfer this intent")?;
        let event = stored.record.transfer(to_agent.as_str(), reason.as_deref(), Some(&actor), &now_rfc3339())?;
        let answer =
            json!({"ok": true, "applied": true, "intent": views::intent(stored), "event": views::event(&event)});
        Ok((answer, vec![event]))
    };
    let after = move |txn: &mut Txn, stored: &mut StoredIntent, events: &[LifecycleEvent], _: &mut Value| {
        if matches!(home, HandlerHome::Remote(_)) {
            let item = TransferItem { record: stored.record.clone(), events: txn.events_after(stored, 0)? };
            if !item.fits_one_event() {
                return Err(ApiError::too_large(format!(
                    "intent {} with its {} events is larger than one Matrix event ({MAX_EVENT_CONTENT_BYTES} bytes) and cannot move to another node",
                    stored.record.intent_id,
                    item.events.len()
                )));
            }
        }
        Ok(txn.follow_transfer(stored, &events[0], home)?)
    };
    operate(&state, caller, &id, idempotency, None, change, after).await
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    to_agent: Option<String>,
    from_agent: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/intents`: with `status=pending&to_agent=`, the poll binding (leases what it returns);
/// otherwise a listing of an agent's received or sent intents, optionally by status.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query_number("limit", query.limit.as_deref(), 50, MAX_LIST_PAGE as u64)?.max(1) as usize;
    let parse = |name: &str, raw: &Option<String>| -> ApiResult<Option<AgentAddress>> {
        raw.as_deref()
            .map(|raw| AgentAddress::parse_lenient(raw).map_err(|error| ApiError::invalid(name, error)))
            .transpose()
    };
    let to_agent = parse("to_agent", &query.to_agent)?;
    let from_agent = parse("from_agent", &query.from_agent)?;
    if query.status.as_deref() == Some("pending") {
        let agent = to_agent
            .ok_or_else(|| ApiError::invalid("to_agent", "is required with status=pending (the agent that polls)"))?;
        caller.require("to_agent", &agent)?;
        return poll(&state, agent, limit).await;
    }
    let statuses = parse_statuses(query.status.as_deref())?;
    let (feed, agent, field) = match (to_agent, from_agent) {
        (Some(agent), None) => (Feed::Received, agent, "to_agent"),
        (None, Some(agent)) => (Feed::Sent, agent, "from_agent"),
        _ => return Err(ApiError::invalid("to_agent", "give exactly one of to_agent or from_agent")),
    };
    caller.require(field, &agent)?;
    let after = query_number("after", query.after.as_deref(), 0, u64::MAX)?;
    let mut intents = Vec::new();
    let mut cursor = after;
    'pages: loop {
        let page = state.store().feed(feed, agent.as_str(), cursor, MAX_LIST_PAGE)?;
        for entry in &page {
            cursor = entry.cursor;
            if let Some(stored) = state.store().intent(entry.intent_id)?
                && statuses.as_ref().is_none_or(|wanted| wanted.contains(&stored.record.status()))
            {
                intents.push(views::intent(&stored));
                if intents.len() == limit {
                    break 'pages;
                }
            }
        }
        if page.len() < MAX_LIST_PAGE {
            break;
        }
    }
    let next_cursor = (intents.len() == limit).then_some(cursor);
    Ok(Json(json!({"ok": true, "intents": intents, "next_cursor": next_cursor})))
}

/// Parses a comma-separated status filter.
pub fn parse_statuses(raw: Option<&str>) -> ApiResult<Option<Vec<Status>>> {
    raw.filter(|raw| !raw.trim().is_empty())
        .map(|raw| {
            raw.split(',')
                .map(|name| name.parse::<Status>().map_err(|error| ApiError::invalid("status", error)))
                .collect()
        })
        .transpose()
}

/// Hands out intents that wait for pickup and are not leased, leasing each for the configured
/// time and recording `intent.delivered` on first hand-out. An intent not acknowledged before
/// its lease ends is handed out again.
async fn poll(state: &AppState, agent: AgentAddress, limit: usize) -> ApiResult<Json<Value>> {
    let now_ms = now_unix_ms();
    let mut candidates = Vec::new();
    let mut cursor = 0;
    'scan: loop {
        let page = state.store().feed(Feed::Open, agent.as_str(), cursor, MAX_LIST_PAGE)?;
        for entry in &page {
            cursor = entry.cursor;
            let Some(stored) = state.store().intent(entry.intent_id)? else { continue };
            if stored.record.awaits_pickup()
                && state.store().lease(entry.intent_id)?.is_none_or(|until| until <= now_ms)
            {
                candidates.push(entry.intent_id);
                if candidates.len() == limit {
                    break 'scan;
                }
            }
        }
        if page.len() < MAX_LIST_PAGE {
            break;
        }
    }
    let lease_ms = state.config().limits.poll_lease_seconds * 1000;
    let leased = state
        .store()
        .write(move |txn| -> ApiResult<Vec<Value>> {
            let mut leased = Vec::with_capacity(candidates.len());
            for id in candidates {
                let Some(mut stored) = txn.intent(id)? else { continue };
                // Re-checked inside the write: another poller may have taken it meanwhile.
                if !stored.record.awaits_pickup() || txn.lease(id)?.is_some_and(|until| until > now_ms) {
                    continue;
                }
                txn.set_lease(id, now_ms + lease_ms);
                let events = record_delivery(&mut stored, "poll")?;
                txn.update_intent(&stored, &events)?;
                leased.push(views::intent(&stored));
            }
            Ok(leased)
        })
        .await?;
    Ok(Json(json!({"ok": true, "intents": leased, "lease_seconds": lease_ms / 1000})))
}

/// Records `intent.delivered` the first time an intent is handed to its handler.
fn record_delivery(stored: &mut StoredIntent, binding: &'static str) -> ApiResult<Vec<LifecycleEvent>> {
    if stored.record.status() != Status::Submitted {
        return Ok(Vec::new());
    }
    let actor = format!("node:{binding}");
    let event =
        stored.record.transition(Status::Delivered, None, Some(&actor), json!({"binding": binding}), &now_rfc3339())?;
    Ok(vec![event])
}

/// Records the hand-out of several intents through `binding` in one write, leasing each for
/// the visibility timeout, and returns them as they now stand, in the order given (an intent
/// that vanished is left out).
pub(super) async fn deliver(state: &AppState, ids: Vec<Uuid>, binding: &'static str) -> ApiResult<Vec<StoredIntent>> {
    let lease_until = now_unix_ms() + state.config().limits.poll_lease_seconds * 1000;
    state
        .store()
        .write(move |txn| {
            let mut delivered = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(mut stored) = txn.intent(id)? else { continue };
                txn.set_lease(id, lease_until);
                let events = record_delivery(&mut stored, binding)?;
                if !events.is_empty() {
                    txn.update_intent(&stored, &events)?;
                }
                delivered.push(stored);
            }
            Ok(delivered)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::is_valid_intent_type;

    #[test]
    fn intent_types_follow_the_create_grammar() {
        for good in ["intent.demo.v1", "intent.approval.demo.v1", "finance.approve_payment.v12"] {
            assert!(is_valid_intent_type(good), "{good}");
        }
        for bad in ["task.v1", "Intent.demo.v1", "intent.demo", "intent..demo.v1", "intent.demo.v", "intent.demo.vx"] {
            assert!(!is_valid_intent_type(bad), "{bad}");
        }
    }
}
