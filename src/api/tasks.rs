//! Human tasks over HTTP: answering a task (`POST /v1/intents/{id}/resume` with a `task_result`,
//! `POST /v1/approvals/{id}/decision`), listing a person's open tasks (`GET /v1/me/tasks`), and
//! the audit record of each decision. Tasks are started (and their assignment audited) by
//! `Txn::start_human_task`, at create or when another org's intent is adopted.
//!
//! The task rules (types, outcomes, forms, what an answer does to the intent) are
//! `crate::intent::human_task`'s; this module decides who may answer, reads the request and
//! writes the change through `intents::operate`. Email magic links and web pages are `crate::web`'s.
//!
//! Who may answer: a key that may act for the intent's handler, for its `escalate_to`, or for
//! one of the task's `assignees` that is an agent address. The approval id of
//! `/v1/approvals/{id}/decision` is the intent id.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use super::intents::{IntentCall, OwnerQuery, operate};
use super::views;
use crate::address::AgentAddress;
use crate::clock::now_rfc3339;
use crate::intent::{Answer, Decision, EventType, IntentRecord, LifecycleEvent, REJECTED, TaskError};
use crate::store::{StoredIntent, Txn};
use uuid::Uuid;

const MAX_TASKS: usize = 500;

impl From<TaskError> for ApiError {
    fn from(error: TaskError) -> Self {
        let status = if error.is_conflict() { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, error.code(), error.to_string())
    }
}

/// Whether the caller may answer the intent's open task (and so see the intent).
pub(super) fn may_answer(caller: &Caller, record: &IntentRecord) -> bool {
    record.open_human_task().is_some_and(|task| task.answerers(record).iter().any(|a| caller.may_act_for(a)))
}

/// A plain decision — approve or refuse, with an optional comment and form fields — given to
/// an intent whose human task is open, as that task's answer (see [`apply`]).
pub(super) fn answer_decision(
    caller: &Caller,
    actor: &str,
    stored: &mut StoredIntent,
    approve: bool,
    comment: Option<&str>,
    mut task_result: Map<String, Value>,
    via: &str,
) -> ApiResult<(Value, Vec<LifecycleEvent>)> {
    if !approve {
        task_result.insert("outcome".into(), json!(crate::intent::REJECTED));
    }
    if let Some(comment) = comment {
        task_result.entry("comment").or_insert_with(|| json!(comment));
    }
    apply(caller, actor, stored, &task_result, via)
}

/// Applies an answer inside `operate`'s change: checks who answers, validates, and records.
pub(super) fn apply(
    caller: &Caller,
    actor: &str,
    stored: &mut StoredIntent,
    task_result: &Map<String, Value>,
    via: &str,
) -> ApiResult<(Value, Vec<LifecycleEvent>)> {
    let record = &stored.record;
    let mut by = actor.to_owned();
    if let Some(task) = record.open_human_task() {
        let allowed = task.answerers(record);
        // Who answers: the acting address when it is an answerer, else the first answerer
        // the key acts for.
        if !allowed.iter().any(|address| address.as_str() == actor)
            && let Some(address) = allowed.iter().find(|address| caller.may_act_for(address))
        {
            by = address.to_string();
        }
        if !may_answer(caller, record) {
            tracing::warn!(target: "axp::audit", decision = "denied", key_id = %caller.key.key_id, intent_id = %record.intent_id, "not an answerer of the human task");
            let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            return Err(ApiError::forbidden(
                "not_assignee",
                format!("only a key acting for {} may answer this human task", names.join(", ")),
            ));
        }
    }
    let decision = Decision { by, at: now_rfc3339(), via: via.to_owned() };
    let (answer, events) = record_answer(stored, task_result, &decision, Some(&caller.key.key_id))?;
    let answer = json!({
        "ok": true,
        "applied": true,
        "reason": null,
        "policy_generation": stored.record.policy_generation(),
        "task_result": answer.to_value(),
        "decision": {"by": decision.by, "at": decision.at, "via": decision.via},
        "intent": views::intent(stored),
        "event": events.first().map(views::event),
    });
    Ok((answer, events))
}

/// Applies a person's answer to the intent's open task and writes its audit record: what every
/// channel (API, approvals, inbox, CLI, mail link, web page) does once it knows who answers.
/// `key_id` is the API key's, for answers that came with one.
pub fn record_answer(
    stored: &mut StoredIntent,
    task_result: &Map<String, Value>,
    decision: &Decision,
    key_id: Option<&str>,
) -> Result<(Answer, Vec<LifecycleEvent>), TaskError> {
    let (answer, events) = stored.record.answer_human_task(task_result, decision)?;
    tracing::info!(
        target: "axp::audit", decision = "human_task_answered", intent_id = %stored.record.intent_id,
        by = %decision.by, at = %decision.at, via = %decision.via, key_id = key_id.unwrap_or("-"),
        outcome = %answer.outcome, "human task answered"
    );
    Ok((answer, events))
}

/// After an answer: the task leaves the index, and the handler is told it is its turn again —
/// on its stream, by poll, or pushed anew when it is bound to `http`.
pub fn task_answered(txn: &mut Txn, stored: &StoredIntent) -> Result<(), crate::store::StoreError> {
    txn.notify_agent(stored.record.handler());
    txn.deliver_if_bound(stored, crate::clock::now_unix_ms(), &now_rfc3339())
}

fn wake_handler(txn: &mut Txn, stored: &mut StoredIntent, _: &[LifecycleEvent], _: &mut Value) -> ApiResult<()> {
    Ok(task_answered(txn, stored)?)
}

/// `POST /v1/intents/{id}/resume` on an intent with an open task, or with a `task_result`.
/// Refused on a replica: the owner validates answers, and forwarding them is not built yet.
pub(super) async fn answer(
    state: &AppState,
    call: IntentCall,
    task_result: Map<String, Value>,
) -> ApiResult<Json<Value>> {
    let IntentCall { caller, actor, id, idempotency, channel, .. } = call;
    let change =
        move |caller: &Caller, stored: &mut StoredIntent| apply(caller, &actor, stored, &task_result, &channel);
    operate(state, caller, &id, idempotency, None, change, wake_handler).await
}

/// `POST /v1/approvals/{approval_id}/decision` `{decision: approve|reject, comment}`: the
/// intent's task answered with outcome `approved`/`rejected` (or the task type's positive
/// outcome for approve). Answers 409 `no_open_human_task` once decided.
pub async fn decision(State(state): State<AppState>, call: IntentCall) -> ApiResult<Json<Value>> {
    let IntentCall { caller, actor, id, idempotency, mut fields, .. } = call;
    let decision = fields.required_string("decision")?;
    let approve = match decision.as_str() {
        "approve" | "approved" => true,
        "reject" | "rejected" => false,
        other => return Err(ApiError::invalid("decision", format!("{other:?} must be approve or reject"))),
    };
    let comment = fields.string("comment")?.or(fields.string("reason")?);
    if comment.as_ref().is_some_and(|text| text.chars().count() > 1000) {
        return Err(ApiError::invalid("comment", "must be at most 1000 characters"));
    }
    fields.finish()?;
    let change = move |caller: &Caller, stored: &mut StoredIntent| {
        let mut task_result = Map::new();
        if !approve {
            task_result.insert("outcome".into(), json!(REJECTED));
        }
        if let Some(comment) = comment {
            task_result.insert("comment".into(), json!(comment));
        }
        let (mut answer, events) = apply(caller, &actor, stored, &task_result, "approvals")?;
        let decided_at = answer["decision"]["at"].clone();
        answer["approval"] = json!({
            "approval_id": stored.record.intent_id,
            "decision": if approve { "approve" } else { "reject" },
            "comment": answer["task_result"]["comment"],
            "decided_at": decided_at,
        });
        answer["approval_id"] = json!(stored.record.intent_id);
        answer["status"] = json!(stored.record.status());
        answer["decided_at"] = decided_at;
        Ok((answer, events))
    };
    operate(&state, caller, &id, idempotency, None, change, wake_handler).await
}

/// `GET /v1/me/tasks`: open tasks the caller's addresses may answer (the one named by
/// `owner_agent`/`x-owner-agent`, else every known agent the key may act for), as handler or
/// as assignee / `escalate_to`.
pub async fn mine(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<Json<Value>> {
    let owner = caller.owner(&headers, query.owner_agent.as_deref())?;
    let addresses: Vec<AgentAddress> = match &owner {
        Some(owner) => vec![owner.clone()],
        None => state
            .store()
            .agents("")?
            .into_iter()
            .filter_map(|agent| AgentAddress::parse(&agent.address).ok())
            .filter(|address| caller.may_act_for(address))
            .collect(),
    };
    let mut seen = BTreeSet::new();
    let mut tasks = Vec::new();
    'addresses: for address in &addresses {
        for id in state.store().task_candidates(address.as_str())? {
            let Some(stored) = state.store().intent(id)? else { continue };
            let Some(task) = stored.record.open_human_task() else { continue };
            let allowed = task.answerers(&stored.record);
            let mine = match &owner {
                Some(_) => allowed.contains(address),
                None => allowed.iter().any(|answerer| caller.may_act_for(answerer)),
            };
            if mine && !stored.is_replica() && seen.insert(id) {
                tasks.push(task_item(&state, &stored)?);
                if tasks.len() == MAX_TASKS {
                    break 'addresses;
                }
            }
        }
    }
    Ok(Json(json!({"ok": true, "tasks": tasks})))
}

fn task_item(state: &AppState, stored: &StoredIntent) -> ApiResult<Value> {
    let record = &stored.record;
    let id = Uuid::parse_str(&record.intent_id).map_err(|_| ApiError::not_found("intent"))?;
    let since = record.seq().saturating_sub(50);
    let assigned_at = state
        .store()
        .events(id, since, 100)?
        .into_iter()
        .rev()
        .find(|event| event.event_type == EventType::HumanTaskAssigned)
        .map(|event| event.at);
    Ok(json!({
        "intent_id": record.intent_id,
        "intent_type": record.intent_type,
        "status": record.status(),
        "waiting_reason": record.waiting_reason(),
        "from_agent": record.from_agent,
        "to_agent": record.to_agent,
        "handler": record.handler(),
        "assigned_at": assigned_at,
        "due_at": record.options.get("deadline_at"),
        "human_task": record.options.get("human_task"),
        "payload": record.payload,
    }))
}
