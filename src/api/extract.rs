//! Request extraction: the authenticated caller, JSON bodies (empty allowed), typed fields
//! with errors that name them, and the acting address.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::address::AgentAddress;
use crate::auth::{ApiKeyRecord, AuthError, parse_token};
use crate::intent::IntentRecord;

/// The authenticated caller of a request.
pub struct Caller {
    pub key: ApiKeyRecord,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let outcome = authenticate(&parts.headers, state);
        if let Err(error) = &outcome {
            tracing::warn!(target: "axp::audit", decision = "denied", path = %parts.uri.path(), code = error.code(), "request refused");
        }
        let caller = outcome?;
        state.limiter().check(&caller.key.key_id)?;
        Ok(caller)
    }
}

fn authenticate(headers: &HeaderMap, state: &AppState) -> ApiResult<Caller> {
    let token = presented_token(headers).ok_or(AuthError::Missing)?;
    let (key_id, secret) = parse_token(token)?;
    let key = state.store().api_key(key_id)?.ok_or(AuthError::Invalid)?;
    key.verify(secret)?;
    Ok(Caller { key })
}

/// `x-api-key`, or `Authorization: Bearer` when there is no `x-api-key` (with both, the bearer
/// value is a person's actor token, not the key).
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok();
    }
    let authorization = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

impl Caller {
    pub fn may_act_for(&self, address: &AgentAddress) -> bool {
        self.key.may_act_for(address)
    }

    pub fn require(&self, field: &str, address: &AgentAddress) -> ApiResult<()> {
        if self.may_act_for(address) {
            return Ok(());
        }
        tracing::warn!(target: "axp::audit", decision = "denied", key_id = %self.key.key_id, %address, "address not granted");
        Err(ApiError::forbidden("address_not_granted", format!("{field}: this API key may not act for {address}")))
    }

    /// Whether the intent is from, to, handled by or replying to an address this caller may
    /// act for.
    pub fn can_see(&self, intent: &IntentRecord) -> bool {
        [
            Some(intent.from_agent.as_str()),
            Some(intent.to_agent.as_str()),
            Some(intent.handler()),
            intent.reply_to.as_deref(),
        ]
        .into_iter()
        .flatten()
        .any(|address| AgentAddress::parse(address).is_ok_and(|address| self.may_act_for(&address)))
    }

    /// Whether the caller acts for the intent's current handler (after a transfer, not the
    /// original `to_agent`).
    pub fn is_handler_of(&self, intent: &IntentRecord) -> bool {
        AgentAddress::parse(intent.handler()).is_ok_and(|address| self.may_act_for(&address))
    }

    /// The address the caller names as the one it acts for (`owner_agent` query or
    /// `x-owner-agent` header; both must agree), checked against its grants; None if it names none.
    pub fn owner(&self, headers: &HeaderMap, query_owner: Option<&str>) -> ApiResult<Option<AgentAddress>> {
        let header_owner = headers.get("x-owner-agent").map(|value| value.to_str().unwrap_or_default());
        let owner = match (query_owner, header_owner) {
            (Some(query), Some(header)) if query != header => {
                return Err(ApiError::bad_request(
                    "owner_agent_mismatch",
                    "owner_agent query parameter and x-owner-agent header differ",
                ));
            }
            (query, header) => query.or(header),
        };
        let Some(raw) = owner else { return Ok(None) };
        let address = AgentAddress::parse(raw).map_err(|error| ApiError::invalid("owner_agent", error))?;
        self.require("owner_agent", &address)?;
        Ok(Some(address))
    }

    /// The owner a request speaks for: the one it names, else the key's own address. A key
    /// for several addresses must name one (422 naming `owner_agent`).
    pub fn owner_or_own(&self, headers: &HeaderMap, query_owner: Option<&str>) -> ApiResult<AgentAddress> {
        match self.owner(headers, query_owner)? {
            Some(owner) => Ok(owner),
            None => self.key.default_agent().ok_or_else(|| {
                ApiError::invalid(
                    "owner_agent",
                    "is required: this API key acts for several addresses, so name the owner (owner_agent query or x-owner-agent header)",
                )
            }),
        }
    }

    /// Who the caller acts as: the owner it names, else its default address, else its key id.
    pub fn actor(&self, owner: Option<&AgentAddress>) -> String {
        match owner {
            Some(address) => address.to_string(),
            None => {
                self.key.default_agent().map(|a| a.to_string()).unwrap_or_else(|| format!("key:{}", self.key.key_id))
            }
        }
    }
}

/// A JSON object body. An empty body (even with `Content-Type: application/json`) is an empty
/// object, since the SDK sends that header on body-less calls.
pub struct JsonBody(pub Map<String, Value>);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.body_limit();
        let bytes = axum::body::to_bytes(request.into_body(), limit).await.map_err(|_| {
            ApiError::too_large(format!("request body is larger than this node's limit of {limit} bytes"))
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Map::new()));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonBody(map)),
            Ok(_) => Err(ApiError::bad_request("invalid_body", "the request body must be a JSON object")),
            Err(error) => {
                Err(ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {error}")))
            }
        }
    }
}

/// Typed access to the fields of a JSON object; fields nobody asked for are refused at the end.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    pub fn new(map: Map<String, Value>) -> Self {
        Fields { map }
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|value| !value.is_null())
    }

    pub fn value(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    pub fn string(&mut self, name: &str) -> ApiResult<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }

    pub fn required_string(&mut self, name: &str) -> ApiResult<String> {
        match self.string(name)? {
            Some(text) if !text.trim().is_empty() => Ok(text),
            _ => Err(ApiError::invalid(name, "is required")),
        }
    }

    pub fn object(&mut self, name: &str) -> ApiResult<Option<Map<String, Value>>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(ApiError::invalid(name, "must be a JSON object")),
        }
    }

    pub fn positive_integer(&mut self, name: &str) -> ApiResult<Option<u64>> {
        self.integer(name, 1)
    }

    pub fn integer(&mut self, name: &str, minimum: u64) -> ApiResult<Option<u64>> {
        match self.take(name) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(number) if number >= minimum => Ok(Some(number)),
                _ => Err(ApiError::invalid(name, format!("must be an integer of at least {minimum}"))),
            },
        }
    }

    pub fn boolean(&mut self, name: &str) -> ApiResult<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(flag)),
            Some(_) => Err(ApiError::invalid(name, "must be true or false")),
        }
    }

    pub fn address(&mut self, name: &str) -> ApiResult<Option<AgentAddress>> {
        self.string(name)?
            .map(|raw| {
                AgentAddress::parse(&raw).map_err(|error| {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent_address", format!("{name}: {error}"))
                })
            })
            .transpose()
    }

    /// The fields nobody asked for, for endpoints that keep them as free-form input.
    pub fn into_rest(self) -> Map<String, Value> {
        self.map
    }

    /// Refuses fields the endpoint does not know, so that typos do not pass silently.
    pub fn finish(self) -> ApiResult<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_field",
                format!("{name}: this endpoint does not accept this field"),
            )),
        }
    }
}
