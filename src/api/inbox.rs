//! `/v1/inbox`: an owner's threads (one per intent that names the owner as `reply_to`), their
//! change feed, and what the owner does with a thread: reply, delegate, approve, reject, delete
//! messages, mark read.
//!
//! Owns owner scoping, input validation and the JSON shape of threads. What a thread is and how
//! it changes is `crate::inbox`'s; threads are written by `crate::store` (also when the intent's
//! events are stored); approve and reject move the intent with `IntentRecord::resume`, as
//! `POST /v1/intents/{id}/resume` does.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Fields};
use super::intents::{Idempotency, IntentCall, OwnerQuery, forward_to_owner, once};
use super::views;
use crate::address::AgentAddress;
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::inbox::{DeleteMode, Entry, InboxError, Selection, Thread, ThreadStatus};
use crate::store::{LinkRole, StoredIntent, Txn};
use crate::transport::wire::{ControlAction, ControlItem};

const MAX_MESSAGE_CHARS: usize = 5000;
const MAX_COMMENT_CHARS: usize = 2000;
const MAX_ADDRESS_CHARS: usize = 255;
const MAX_DELETE: usize = 100;
const CHANGES_DEFAULT: u64 = 50;
const CHANGES_MAX: u64 = 200;
const LIST_DEFAULT: u64 = 200;
const LIST_MAX: u64 = 1000;

impl From<InboxError> for ApiError {
    fn from(error: InboxError) -> Self {
        let status = if error.is_conflict() { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// The thread object of list, thread and changes answers (the spec's Thread plus the intent's
/// outcome, the read marker and the messages).
pub fn view(thread: &Thread) -> Value {
    let completion = thread.completion();
    let timeline: Vec<&Entry> = thread.visible().collect();
    let messages: Vec<Value> = timeline.iter().filter(|entry| entry.is_message()).map(|entry| message(entry)).collect();
    json!({
        "thread_id": thread.thread_id,
        "intent_id": thread.intent_id,
        "status": thread.status(),
        "owner_agent": thread.owner_agent,
        "from_agent": thread.from_agent,
        "to_agent": thread.to_agent,
        "intent_type": thread.intent_type,
        "created_at": thread.created_at,
        "updated_at": thread.updated_at,
        "intent_status": thread.intent_status(),
        "waiting_reason": thread.waiting_reason(),
        "result": completion.and_then(|c| c.result.clone()),
        "error": completion.and_then(|c| c.error.clone()),
        "completion": completion,
        "read_at": thread.read_at(),
        "unread": thread.unread(),
        "timeline": timeline,
        "messages": messages,
    })
}

fn message(entry: &Entry) -> Value {
    json!({
        "message_id": entry.event_id,
        "kind": entry.event_type.trim_start_matches("message."),
        "from": entry.actor,
        "at": entry.at,
        "details": entry.details,
    })
}

/// What `resolve` reports about delivering the outcome to `reply_to`, read in the same write
/// that stored the terminal event (and, on this node, the thread).
pub(super) fn completion_delivery(txn: &Txn, stored: &StoredIntent) -> ApiResult<Value> {
    let Some(reply_to) = stored.record.reply_to.as_deref() else { return Ok(Value::Null) };
    let thread_id = &stored.record.intent_id;
    if let Some(link) = stored.link.as_ref().filter(|link| link.role == LinkRole::Handler) {
        let reason = format!(
            "{reply_to} is hosted by the initiator's node {}, which writes the thread when this terminal event reaches it",
            link.peer.node
        );
        return Ok(json!({
            "delivered": false, "queued": true, "reason": reason, "reply_to": reply_to,
            "thread_id": thread_id, "message_id": null, "completion": null,
        }));
    }
    let id = Uuid::parse_str(thread_id).map_err(|_| ApiError::bad_request("invalid_intent_id", "not a UUID"))?;
    let thread = txn.thread(id)?;
    Ok(match thread.as_ref().and_then(|thread| thread.completion().map(|completion| (thread, completion))) {
        Some((thread, completion)) => json!({
            "delivered": true, "reason": null, "reply_to": reply_to, "owner_agent": thread.owner_agent,
            "thread_id": thread_id, "message_id": completion.message_id, "completion": completion,
        }),
        None => json!({
            "delivered": false, "queued": false, "reason": "no inbox thread holds this intent's outcome",
            "reply_to": reply_to, "thread_id": thread_id, "message_id": null, "completion": null,
        }),
    })
}

#[derive(Deserialize)]
pub struct InboxQuery {
    owner_agent: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// A read of one owner's inbox: the query, and whose inbox it is (the named owner, else the
/// key's own address).
pub struct InboxRead {
    owner: AgentAddress,
    query: InboxQuery,
}

impl FromRequestParts<AppState> for InboxRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Query(query) = Query::<InboxQuery>::from_request_parts(parts, state)
            .await
            .map_err(|error| ApiError::bad_request("invalid_query", error.body_text()))?;
        let owner = caller.owner_or_own(&parts.headers, query.owner_agent.as_deref())?;
        Ok(InboxRead { owner, query })
    }
}

fn parse_thread_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request("invalid_thread_id", format!("{raw:?} is not a thread id (a UUID)")))
}

/// The thread, if it exists, belongs to an address the caller may act for and (when the caller
/// names one) to that owner. Every other case is the same 404.
fn visible_thread(
    thread: Option<Thread>,
    caller: &Caller,
    owner: Option<&AgentAddress>,
    id: Uuid,
) -> ApiResult<Thread> {
    match thread {
        Some(thread)
            if AgentAddress::parse(&thread.owner_agent).is_ok_and(|address| caller.may_act_for(&address))
                && owner.is_none_or(|owner| owner.as_str() == thread.owner_agent) =>
        {
            Ok(thread)
        }
        _ => Err(ApiError::not_found(format_args!("thread {id}"))),
    }
}

/// The `limit` query parameter: 1 to `max`, `default` when absent.
fn page_limit(raw: Option<&str>, default: u64, max: u64) -> ApiResult<usize> {
    match raw.map(|raw| raw.trim().parse::<u64>()) {
        None => Ok(default as usize),
        Some(Ok(limit)) if (1..=max).contains(&limit) => Ok(limit as usize),
        Some(_) => Err(ApiError::invalid("limit", format!("must be an integer from 1 to {max}"))),
    }
}

fn parse_statuses(raw: Option<&str>) -> ApiResult<Option<Vec<ThreadStatus>>> {
    raw.filter(|raw| !raw.trim().is_empty())
        .map(|raw| {
            raw.split(',').map(|name| name.parse().map_err(|error| ApiError::invalid("status", error))).collect()
        })
        .transpose()
}

/// `GET /v1/inbox`: the owner's threads, most recently changed first.
pub async fn list(State(state): State<AppState>, InboxRead { owner, query }: InboxRead) -> ApiResult<Json<Value>> {
    let statuses = parse_statuses(query.status.as_deref())?;
    let limit = page_limit(query.limit.as_deref(), LIST_DEFAULT, LIST_MAX)?;
    let mut threads = Vec::new();
    let mut has_more = false;
    for thread in state.store().inbox(owner.as_str()) {
        let thread = thread?;
        if statuses.as_ref().is_some_and(|wanted| !wanted.contains(&thread.status())) {
            continue;
        }
        if threads.len() == limit {
            has_more = true;
            break;
        }
        threads.push(view(&thread));
    }
    Ok(Json(json!({"ok": true, "owner_agent": owner, "threads": threads, "has_more": has_more})))
}

/// `GET /v1/inbox/changes`: threads changed after `cursor`, oldest change first. Each thread
/// appears once, at its latest change; `next_cursor` is the last change's cursor (null for an
/// empty page), to pass as `cursor` next time.
pub async fn changes(State(state): State<AppState>, InboxRead { owner, query }: InboxRead) -> ApiResult<Json<Value>> {
    let cursor = match query.cursor.as_deref().filter(|raw| !raw.is_empty()) {
        None => 0,
        Some(raw) => raw.trim().parse::<u64>().map_err(|_| {
            ApiError::invalid("cursor", format!("{raw:?} is not a cursor of this node (use a next_cursor it gave)"))
        })?,
    };
    let limit = page_limit(query.limit.as_deref(), CHANGES_DEFAULT, CHANGES_MAX)?;
    let mut page = state.store().inbox_changes(owner.as_str(), cursor, limit + 1)?;
    let has_more = page.len() > limit;
    page.truncate(limit);
    let changes: Vec<Value> =
        page.iter().map(|thread| json!({"cursor": thread.cursor.to_string(), "thread": view(thread)})).collect();
    let next_cursor = page.last().map(|thread| thread.cursor.to_string());
    Ok(Json(json!({"ok": true, "changes": changes, "next_cursor": next_cursor, "has_more": has_more})))
}

/// `GET /v1/inbox/{thread_id}`.
pub async fn thread(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<Json<Value>> {
    let owner = caller.owner(&headers, query.owner_agent.as_deref())?;
    let id = parse_thread_id(&id)?;
    let thread = visible_thread(state.store().thread(id)?, &caller, owner.as_ref(), id)?;
    Ok(Json(json!({"ok": true, "thread": view(&thread)})))
}

/// A POST on one thread, its body not yet read.
struct ThreadCall {
    caller: Caller,
    owner: Option<AgentAddress>,
    id: Uuid,
    idempotency: Option<Idempotency>,
}

fn thread_call(call: IntentCall) -> ApiResult<(ThreadCall, Fields)> {
    let IntentCall { caller, owner, id, idempotency, fields, .. } = call;
    let id = parse_thread_id(&id)?;
    Ok((ThreadCall { caller, owner, id, idempotency }, fields))
}

/// Loads the caller's thread inside one write and applies `change`, which stores what it
/// changed and returns the answer.
async fn on_thread(
    state: &AppState,
    call: ThreadCall,
    change: impl FnOnce(&mut Txn, &Caller, Thread) -> ApiResult<Value> + Send + 'static,
) -> ApiResult<Json<Value>> {
    let ThreadCall { caller, owner, id, idempotency } = call;
    let answer = state
        .store()
        .write(move |txn| {
            once(txn, idempotency, |txn| {
                let thread = visible_thread(txn.thread(id)?, &caller, owner.as_ref(), id)?;
                change(txn, &caller, thread)
            })
        })
        .await?;
    Ok(Json(answer))
}

/// Saves the thread and answers with it.
fn saved(txn: &mut Txn, mut thread: Thread) -> ApiResult<Value> {
    txn.save_thread(&mut thread)?;
    Ok(json!({"ok": true, "thread": view(&thread)}))
}

/// An optional text field of at most `max` characters.
fn bounded_text(fields: &mut Fields, name: &str, max: usize) -> ApiResult<Option<String>> {
    let text = fields.string(name)?;
    if text.as_ref().is_some_and(|text| text.chars().count() > max) {
        return Err(ApiError::invalid(name, format!("must be at most {max} characters")));
    }
    Ok(text)
}

/// `POST /v1/inbox/{thread_id}/reply` `{message}`: the owner writes in the thread.
pub async fn reply(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let (call, mut fields) = thread_call(call)?;
    let text = bounded_text(&mut fields, "message", MAX_MESSAGE_CHARS)?
        .filter(|text| !text.trim().is_empty())
        .ok_or_else(|| ApiError::invalid("message", format!("is required (1 to {MAX_MESSAGE_CHARS} characters)")))?;
    fields.finish()?;
    on_thread(&state, call, move |txn, _, mut thread| {
        let entry = message(thread.reply(Uuid::now_v7().to_string(), &text, &now_rfc3339()));
        let owner = thread.owner_agent.clone();
        let mut answer = saved(txn, thread)?;
        let payload = json!({"thread_id": answer["thread"]["thread_id"], "message": entry});
        txn.publish_to_subscribers(&owner, "inbox.reply_received", payload, now_unix_ms(), &now_rfc3339())?;
        answer["message"] = entry;
        Ok(answer)
    })
    .await
}

/// `POST /v1/inbox/{thread_id}/delegate` `{delegate_to, note}`: the thread moves to the
/// inbox of `delegate_to`, an address of this node.
pub async fn delegate(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let (call, mut fields) = thread_call(call)?;
    let delegate_to = fields
        .address("delegate_to")?
        .ok_or_else(|| ApiError::invalid("delegate_to", "is required: the agent address that takes the thread over"))?;
    if delegate_to.as_str().len() > MAX_ADDRESS_CHARS {
        return Err(ApiError::invalid("delegate_to", format!("must be at most {MAX_ADDRESS_CHARS} characters")));
    }
    if !state.routing().is_local(&delegate_to) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "delegate_not_local",
            format!("delegate_to: {delegate_to} is not served by this node, which keeps this thread"),
        ));
    }
    let note = bounded_text(&mut fields, "note", MAX_COMMENT_CHARS)?;
    fields.finish()?;
    on_thread(&state, call, move |txn, _, mut thread| {
        thread.delegate(delegate_to.as_str(), note.as_deref(), Uuid::now_v7().to_string(), &now_rfc3339())?;
        saved(txn, thread)
    })
    .await
}

/// `POST /v1/inbox/{thread_id}/approve` `{comment}`.
pub async fn approve(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    decide(state, call, true).await
}

/// `POST /v1/inbox/{thread_id}/reject` `{comment}`.
pub async fn reject(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    decide(state, call, false).await
}

/// The owner's decision on a WAITING intent: approval resumes it (IN_PROGRESS), rejection
/// cancels it, exactly as `resume` with `approve_current_step` true or false. On a replica the
/// request is forwarded to the owner's node and the thread follows when its events arrive.
async fn decide(state: AppState, call: IntentCall, approve: bool) -> ApiResult<Json<Value>> {
    let (call, mut fields) = thread_call(call)?;
    let comment = bounded_text(&mut fields, "comment", MAX_COMMENT_CHARS)?;
    fields.finish()?;
    let id = call.id;
    on_thread(&state, call, move |txn, caller, mut thread| {
        thread.check_decidable()?;
        let mut stored = txn.intent(id)?.ok_or_else(|| {
            ApiError::conflict("intent_missing", format!("intent {id} of this thread is not on this node"))
        })?;
        let at = now_rfc3339();
        let actor = thread.owner_agent.clone();
        let details = json!({
            "resumed": true, "approved": approve, "reason": comment, "input": {}, "via": "inbox", "thread_id": id,
        });
        let forwarded = stored.is_replica();
        thread.decide(approve, comment.as_deref(), forwarded, Uuid::now_v7().to_string(), &at)?;
        txn.save_thread(&mut thread)?;
        let mut answer = if forwarded {
            let control = ControlItem {
                request_id: Uuid::now_v7().to_string(),
                intent_id: id.to_string(),
                actor: actor.clone(),
                action: ControlAction::Resume { approve, details },
            };
            forward_to_owner(txn, &stored, control)?
        } else {
            // An open human task takes the decision as its answer: validated, checked against
            // its answerers and audited like any other answer.
            let task = stored.record.open_human_task().is_some();
            let (answer, events) = if task {
                let input = serde_json::Map::new();
                super::tasks::answer_decision(caller, &actor, &mut stored, approve, comment.as_deref(), input, "inbox")?
            } else {
                let outcome = stored.record.resume(approve, details, Some(&actor), &at)?;
                let answer = json!({"ok": true, "applied": outcome.applied, "reason": outcome.reason, "intent": views::intent(&stored)});
                (answer, outcome.events)
            };
            txn.update_intent(&stored, &events)?;
            if task {
                super::tasks::task_answered(txn, &stored)?;
            }
            answer
        };
        let thread = txn.thread(id)?.expect("the thread was saved in this write");
        answer["thread"] = view(&thread);
        Ok(answer)
    })
    .await
}

/// `POST /v1/inbox/{thread_id}/messages/delete` `{mode, message_ids | limit}`.
pub async fn delete_messages(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let (call, mut fields) = thread_call(call)?;
    let mode = match fields.required_string("mode")?.as_str() {
        "self" => DeleteMode::OwnerOnly,
        "both" => DeleteMode::Both,
        other => return Err(ApiError::invalid("mode", format!("{other:?} must be \"self\" or \"both\""))),
    };
    let mode_name = if mode == DeleteMode::Both { "both" } else { "self" };
    let selection = match (fields.value("message_ids"), fields.value("limit")) {
        (Some(ids), None) => Selection::Ids(message_ids(ids)?),
        (None, Some(limit)) => match limit.as_u64() {
            Some(count @ 1..=100) => Selection::Latest(count as usize),
            _ => return Err(ApiError::invalid("limit", format!("must be an integer from 1 to {MAX_DELETE}"))),
        },
        (Some(_), Some(_)) => return Err(ApiError::invalid("message_ids", "give message_ids or limit, not both")),
        (None, None) => return Err(ApiError::invalid("message_ids", "message_ids or limit is required")),
    };
    fields.finish()?;
    on_thread(&state, call, move |txn, _, mut thread| {
        let deleted = thread.delete_messages(&selection, mode)?;
        let mut answer = saved(txn, thread)?;
        answer["mode"] = json!(mode_name);
        answer["deleted_count"] = json!(deleted.len());
        answer["message_ids"] = json!(deleted);
        Ok(answer)
    })
    .await
}

fn message_ids(value: Value) -> ApiResult<Vec<String>> {
    let invalid = || ApiError::invalid("message_ids", format!("must be a list of 1 to {MAX_DELETE} message ids"));
    let Value::Array(items) = value else { return Err(invalid()) };
    if items.is_empty() || items.len() > MAX_DELETE {
        return Err(invalid());
    }
    items.into_iter().map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid)).collect()
}

/// `POST /v1/inbox/{thread_id}/read`: the owner has seen the thread as it is now.
pub async fn read(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let (call, fields) = thread_call(call)?;
    fields.finish()?;
    on_thread(&state, call, move |txn, _, mut thread| {
        thread.mark_read(&now_rfc3339());
        saved(txn, thread)
    })
    .await
}
