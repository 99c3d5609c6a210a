//! `/v1/registry`: the accepted registry set as this node sees it, and address resolution, so
//! operators can compare nodes (same digest, same answers).

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use crate::address::AgentAddress;
use crate::routing::Route;

pub async fn show(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let routing = state.routing();
    let Some(loaded) = routing.snapshot() else {
        return Json(json!({"ok": true, "configured": false, "local_org": routing.local_org(), "orgs": []}));
    };
    let orgs: Vec<Value> = loaded
        .set
        .records()
        .map(|record| {
            json!({
                "org": record.org,
                "serial": record.serial,
                "expires_at": record.expires_at,
                "nodes": record.nodes,
                "routes": record.routes.iter().map(|route| json!({"prefix": route.prefix, "node": route.node})).collect::<Vec<_>>(),
                "default_node": record.default_node,
            })
        })
        .collect();
    let refused: Vec<Value> = loaded
        .report
        .refused
        .iter()
        .chain(&loaded.report.fatal)
        .map(|refusal| json!({"file": refusal.file, "code": refusal.error.code(), "message": refusal.to_string(), "hint": refusal.error.hint()}))
        .collect();
    Json(json!({
        "ok": true,
        "configured": true,
        "local_org": routing.local_org(),
        "digest": loaded.set.digest(),
        "loaded_at": loaded.loaded_at,
        "orgs": orgs,
        "refused": refused,
    }))
}

#[derive(Deserialize)]
pub struct ResolveQuery {
    address: Option<String>,
}

pub async fn resolve(
    State(state): State<AppState>,
    _caller: Caller,
    Query(query): Query<ResolveQuery>,
) -> ApiResult<Json<Value>> {
    let raw = query.address.ok_or_else(|| ApiError::invalid("address", "is required"))?;
    let address = AgentAddress::parse_lenient(&raw).map_err(|error| ApiError::invalid("address", error))?;
    let answer = match state.routing().route(&address) {
        Route::Local => json!({"resolution": "local", "org": address.org()}),
        Route::Remote { org, node } => json!({"resolution": "remote", "org": org, "node": node}),
        Route::Unroutable { org, reason } => {
            json!({"resolution": "unroutable", "org": org, "reason": reason.code(), "message": reason.to_string()})
        }
    };
    let mut answer = answer;
    answer["ok"] = json!(true);
    answer["address"] = json!(address);
    Ok(Json(answer))
}
