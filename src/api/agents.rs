//! Node-level and agent endpoints: health, capabilities, the agent directory, `listen` and
//! the agent binding.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Fields, JsonBody};
use super::intents::query_number;
use super::streams::{self, StreamQuery};
use crate::address::AgentAddress;

const LISTEN_SUFFIX: &str = "/intents/stream";
const BINDING_SUFFIX: &str = "/binding";

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"ok": true, "status": "ok", "version": env!("CARGO_PKG_VERSION"), "org": state.config().node.org}))
}

pub async fn capabilities(_caller: Caller) -> Json<Value> {
    Json(json!({
        "ok": true,
        "capabilities": [
            "intents.create", "intents.get", "intents.events", "intents.events.stream", "intents.resolve",
            "intents.resume", "intents.controls", "intents.policy", "intents.transition", "intents.transfer", "intents.poll",
            "agents.listen", "agents.binding", "deliveries", "webhooks.subscriptions", "webhooks.events", "inbox",
            "idempotency"
        ],
        // Any intent type that follows the create grammar is accepted.
        "supported_intent_types": [],
        "accepts_any_intent_type": true,
    }))
}

#[derive(Deserialize)]
pub struct ListQuery {
    org_id: Option<String>,
    workspace_id: Option<String>,
    limit: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query_number("limit", query.limit.as_deref(), 100, 1000)?.max(1) as usize;
    let prefix = match (&query.org_id, &query.workspace_id) {
        (Some(org), Some(workspace)) => format!("agent://{org}/{workspace}/"),
        (Some(org), None) => format!("agent://{org}/"),
        (None, Some(_)) => return Err(ApiError::invalid("workspace_id", "needs org_id as well")),
        (None, None) => "agent://".to_owned(),
    };
    let agents = state
        .store()
        .agents(&prefix)?
        .into_iter()
        .filter(|agent| AgentAddress::parse(&agent.address).is_ok_and(|address| caller.may_act_for(&address)))
        .take(limit)
        .map(|agent| agent_view(&state, agent))
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(Json(json!({"ok": true, "agents": agents})))
}

/// An agent with its binding (`stream`, the default, when none was set).
fn agent_view(state: &AppState, agent: crate::store::AgentRecord) -> ApiResult<Value> {
    let binding = state.store().binding(&agent.address)?;
    let mut view = serde_json::to_value(agent).expect("agent records serialise");
    view["binding"] = binding.as_ref().map_or(json!({"delivery_mode": "stream"}), super::deliveries::binding_view);
    Ok(view)
}

/// `/v1/agents/{address...}`: the agent itself, or with `/intents/stream` its listen stream.
pub async fn get_or_listen(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Response> {
    if let Some(address) = path.strip_suffix(LISTEN_SUFFIX) {
        let agent = AgentAddress::parse_lenient(address).map_err(|error| ApiError::invalid("address", error))?;
        return Ok(streams::listen(state, caller, agent, query).await?.into_response());
    }
    let address = AgentAddress::parse_lenient(&path).map_err(|error| ApiError::invalid("address", error))?;
    caller.require("address", &address)?;
    let agent =
        state.store().agent(address.as_str())?.ok_or_else(|| ApiError::not_found(format_args!("agent {address}")))?;
    Ok(Json(json!({"ok": true, "agent": agent_view(&state, agent)?})).into_response())
}

/// `POST /v1/agents/{address...}/binding`: how the agent receives its intents.
pub async fn post_to_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    let address = path.strip_suffix(BINDING_SUFFIX).ok_or_else(|| ApiError::not_found("route"))?;
    let agent = AgentAddress::parse_lenient(address).map_err(|error| ApiError::invalid("address", error))?;
    Ok(Json(super::deliveries::bind(&state, &caller, agent, Fields::new(body)).await?))
}
