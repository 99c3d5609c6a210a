//! `/v1/admin/keys`: issuing, listing and revoking API keys; `/v1/admin/mails`: what the node
//! mailed to people about their tasks, and how it went. Admin keys only.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, Fields, JsonBody};
use super::intents::query_number;
use crate::address::AddressPattern;
use crate::auth::{ApiKeyRecord, issue_key};
use crate::clock::now_rfc3339;
use crate::store::MailStatus;

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.key.admin {
        return Ok(());
    }
    tracing::warn!(target: "axp::audit", decision = "denied", key_id = %caller.key.key_id, "admin operation refused");
    Err(ApiError::forbidden("admin_required", "this operation needs an admin key"))
}

fn key_view(record: &ApiKeyRecord) -> Value {
    json!({
        "key_id": record.key_id,
        "owner": record.owner,
        "agents": record.agents,
        "admin": record.admin,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    })
}

pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let mut fields = Fields::new(body);
    let owner = fields.required_string("owner")?;
    let agents: Vec<AddressPattern> = match fields.value("agents") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().ok_or("must be strings").and_then(|raw| {
                    AddressPattern::parse(raw).map_err(|_| "must be addresses or prefixes like agent://org/team/*")
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|message| ApiError::invalid("agents", message))?,
        Some(_) => return Err(ApiError::invalid("agents", "must be a list of addresses")),
        None => Vec::new(),
    };
    let admin = fields.boolean("admin")?.unwrap_or(false);
    fields.finish()?;
    if agents.is_empty() && !admin {
        return Err(ApiError::invalid("agents", "a non-admin key needs at least one address it may act for"));
    }
    let at = now_rfc3339();
    let issued = issue_key(&owner, agents, admin, &at);
    let record = issued.record.clone();
    state
        .store()
        .write(move |txn| -> ApiResult<()> {
            txn.put_api_key(&record);
            for address in record.agents.iter().filter_map(AddressPattern::exact) {
                txn.register_agent(address.as_str(), &at)?;
            }
            Ok(())
        })
        .await?;
    tracing::info!(target: "axp::audit", key_id = %issued.record.key_id, by = %caller.key.key_id, "API key issued");
    Ok(Json(json!({"ok": true, "key": key_view(&issued.record), "token": issued.token})))
}

pub async fn list_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let keys: Vec<Value> = state.store().api_keys()?.iter().map(key_view).collect();
    Ok(Json(json!({"ok": true, "keys": keys})))
}

#[derive(serde::Deserialize)]
pub struct MailsQuery {
    status: Option<String>,
    intent_id: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/admin/mails?status=&intent_id=&limit=`: mail jobs, newest first. Links are not
/// stored, so none are shown.
pub async fn list_mails(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<MailsQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    if let Some(status) = query.status.as_deref().filter(|status| !MailStatus::NAMES.contains(status)) {
        return Err(ApiError::invalid("status", format!("{status:?} is not one of {}", MailStatus::NAMES.join(", "))));
    }
    let intent_id = match query.intent_id.as_deref() {
        Some(raw) => {
            Some(uuid::Uuid::parse_str(raw).map_err(|_| ApiError::invalid("intent_id", "must be an intent id"))?)
        }
        None => None,
    };
    let limit = query_number("limit", query.limit.as_deref(), 100, 1000)?.max(1) as usize;
    let mut mails = Vec::new();
    for job in state.store().mails() {
        let job = job?;
        let wanted = query.status.as_deref().is_none_or(|status| job.status.name() == status)
            && intent_id.is_none_or(|id| job.about.intent_id() == Some(id));
        if wanted {
            mails.push(serde_json::to_value(&job).expect("mail jobs serialise"));
            if mails.len() == limit {
                break;
            }
        }
    }
    Ok(Json(json!({"ok": true, "mails": mails})))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let active_admins = state.store().api_keys()?.iter().filter(|key| key.admin && key.revoked_at.is_none()).count();
    let revoked = state
        .store()
        .write(move |txn| {
            let mut record =
                txn.api_key(&key_id)?.ok_or_else(|| ApiError::not_found(format_args!("API key {key_id}")))?;
            if record.revoked_at.is_none() {
                if record.admin && active_admins <= 1 {
                    return Err(ApiError::conflict(
                        "last_admin_key",
                        "this is the last active admin key; issue another admin key before revoking it",
                    ));
                }
                record.revoked_at = Some(now_rfc3339());
                txn.put_api_key(&record);
            }
            Ok(record)
        })
        .await?;
    tracing::info!(target: "axp::audit", key_id = %revoked.key_id, by = %caller.key.key_id, "API key revoked");
    Ok(Json(json!({"ok": true, "key": key_view(&revoked)})))
}
