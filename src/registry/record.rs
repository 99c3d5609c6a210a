//! The org record format: one signed JSON file per org, `orgs/<org>.json`.
//!
//! Owns the typed form of a record, the rules a record's content must follow on its own (valid
//! names, keys, addresses; routes inside the org; no duplicate routes or nodes; every referenced
//! node declared) and [`RecordDocument`], the parsed file kept together with its exact JSON value,
//! which is what signatures cover. It does not check signatures, endorsements, expiry or serials
//! (see `verify`), and it does no I/O.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

use super::canonical::to_canonical_json;
use super::error::RecordError;
use super::keys::PublicKey;
use crate::address::{AgentAddress, is_valid_org};

/// An org record as written in `orgs/<org>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgRecord {
    pub org: String,
    /// Increases with every signed version; nodes refuse a serial lower than one they accepted.
    pub serial: u64,
    pub expires_at: Timestamp,
    pub org_key: OrgKey,
    pub nodes: Vec<NodeRecord>,
    pub routes: Vec<RouteRecord>,
    /// The node for addresses of the org that no route covers.
    #[serde(default)]
    pub default_node: Option<String>,
    /// The org key's signature over the canonical JSON of the record without this field.
    #[serde(default)]
    pub signature: Option<String>,
}

/// The org's signing key and the root keys' endorsements of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgKey {
    pub public_key: String,
    pub endorsements: Vec<Endorsement>,
}

/// A root key's signature over [`endorsement_message`] for this org and org key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    pub root_key_id: String,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    pub signature: String,
}

/// One node of an org: where it is reached and the keys that pin it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub id: String,
    pub matrix_user_id: String,
    pub device_id: String,
    /// The node's Matrix device Ed25519 key, unpadded base64.
    pub device_ed25519_key: String,
    pub homeserver_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
}

/// Addresses under `prefix` (on segment boundaries) are served by `node`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRecord {
    pub prefix: String,
    pub node: String,
}

/// An RFC 3339 instant that remembers the text it was written as, because signatures cover the
/// text: `2036-01-01T00:00:00Z` and `2036-01-01T00:00:00+00:00` are the same instant but not the
/// same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
    at: DateTime<Utc>,
}

impl Timestamp {
    pub fn parse(text: &str) -> Result<Self, chrono::ParseError> {
        let at = DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc);
        Ok(Self { text: text.to_owned(), at })
    }

    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Whole seconds, UTC, `Z` suffix: the form the CLI writes.
impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        let at = at.trunc_subsecs(0);
        let text = at.to_rfc3339_opts(SecondsFormat::Secs, true);
        Self { text, at }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(|e| serde::de::Error::custom(format!("`{text}` is not an RFC 3339 timestamp: {e}")))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// The `purpose` tag inside every endorsement message. It keeps an endorsement signature from
/// ever being mistaken for a signature over something else.
pub const ENDORSEMENT_PURPOSE: &str = "axp.registry.endorsement.v1";

/// The bytes a root key signs to endorse `org_key` for `org`: the canonical JSON of
/// `{"purpose", "org", "org_key", "expires_at"?}`.
pub fn endorsement_message(org: &str, org_key: &str, expires_at: Option<&Timestamp>) -> Vec<u8> {
    let mut message = serde_json::Map::new();
    message.insert("purpose".into(), ENDORSEMENT_PURPOSE.into());
    message.insert("org".into(), org.into());
    message.insert("org_key".into(), org_key.into());
    if let Some(expires_at) = expires_at {
        message.insert("expires_at".into(), expires_at.as_str().into());
    }
    // Only strings: canonicalisation cannot fail.
    to_canonical_json(&Value::Object(message)).unwrap_or_default().into_bytes()
}

/// A route with its prefix parsed and its node looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedRoute {
    pub(crate) prefix: AgentAddress,
    pub(crate) node: NodeRecord,
}

/// Where a record sends each of its org's addresses, checked and ready for resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routing {
    pub(crate) routes: Vec<ParsedRoute>,
    pub(crate) default_node: Option<NodeRecord>,
}

/// An org record file parsed twice over: as the exact JSON value it holds (what signatures and
/// the digest cover) and as the typed [`OrgRecord`].
#[derive(Debug, Clone)]
pub struct RecordDocument {
    value: Value,
    record: OrgRecord,
}

impl RecordDocument {
    /// Parses a record file. Refuses invalid JSON and anything the format does not know
    /// (unknown or duplicate fields, wrong types, bad timestamps).
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let value = serde_json::from_slice(bytes).map_err(json_error)?;
        // Parsed from the bytes rather than from `value` so errors carry a line and column.
        let record = serde_json::from_slice(bytes).map_err(json_error)?;
        Ok(Self { value, record })
    }

    /// Wraps a record built in memory.
    pub fn from_value(value: Value) -> Result<Self, RecordError> {
        let record = serde_json::from_value(value.clone()).map_err(json_error)?;
        Ok(Self { value, record })
    }

    pub fn record(&self) -> &OrgRecord {
        &self.record
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The exact bytes the org key signs: canonical JSON of the record without `signature`.
    pub fn signed_message(&self) -> Result<Vec<u8>, RecordError> {
        let mut unsigned = self.value.clone();
        if let Value::Object(members) = &mut unsigned {
            members.remove("signature");
        }
        Ok(to_canonical_json(&unsigned)?.into_bytes())
    }

    /// The canonical JSON of the whole file, signature included: what the digest covers.
    pub fn canonical(&self) -> Result<String, RecordError> {
        Ok(to_canonical_json(&self.value)?)
    }

    /// The record as a human-friendly JSON file (indented, trailing newline).
    pub fn to_pretty_json(&self) -> String {
        format!("{:#}\n", self.value)
    }

    /// Changes the JSON value and re-reads the typed record from it, so the two never disagree.
    /// Refuses (leaving the document unchanged) a change that breaks the format.
    pub fn edit(&mut self, change: impl FnOnce(&mut Value)) -> Result<(), RecordError> {
        let mut value = self.value.clone();
        change(&mut value);
        *self = Self::from_value(value)?;
        Ok(())
    }

    /// Checks the content rules a record must follow on its own and returns its routing.
    pub(crate) fn check_content(&self) -> Result<Routing, RecordError> {
        check_content(&self.record)
    }
}

/// Maps a serde_json error to the refusal an operator can act on.
pub(crate) fn json_error(error: serde_json::Error) -> RecordError {
    let detail = error.to_string();
    match error.classify() {
        serde_json::error::Category::Data => RecordError::Schema { detail },
        _ => RecordError::Malformed { detail },
    }
}

fn check_content(record: &OrgRecord) -> Result<Routing, RecordError> {
    if !is_valid_org(&record.org) {
        return Err(RecordError::InvalidOrgName { field: "org", value: record.org.clone() });
    }
    PublicKey::from_base64(&record.org_key.public_key)
        .map_err(|source| RecordError::InvalidKey { field: "org_key.public_key".into(), source })?;
    let nodes_by_id = check_nodes(&record.nodes)?;
    let routes = check_routes(record, &nodes_by_id)?;
    let default_node = match &record.default_node {
        None => None,
        Some(id) => Some(declared_node(&nodes_by_id, id, "default_node".into())?),
    };
    Ok(Routing { routes, default_node })
}

fn declared_node(
    nodes_by_id: &BTreeMap<&str, &NodeRecord>,
    id: &str,
    field: String,
) -> Result<NodeRecord, RecordError> {
    match nodes_by_id.get(id) {
        Some(node) => Ok((*node).clone()),
        None => Err(RecordError::UnknownNode { field, node: id.to_owned() }),
    }
}

fn check_nodes(nodes: &[NodeRecord]) -> Result<BTreeMap<&str, &NodeRecord>, RecordError> {
    let mut nodes_by_id = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let field = |name: &str| format!("nodes[{index}].{name}");
        let invalid =
            |name: &str, detail: &str| RecordError::InvalidNode { field: field(name), detail: detail.to_owned() };
        if !is_valid_node_id(&node.id) {
            return Err(invalid("id", "a node id is 1 to 64 characters of letters, digits, '.', '_' or '-'"));
        }
        if nodes_by_id.insert(node.id.as_str(), node).is_some() {
            return Err(RecordError::DuplicateNode { field: field("id"), node: node.id.clone() });
        }
        if !is_valid_matrix_user_id(&node.matrix_user_id) {
            return Err(invalid("matrix_user_id", "a Matrix user id looks like @localpart:server.name"));
        }
        if node.device_id.is_empty() || node.device_id.chars().any(char::is_whitespace) {
            return Err(invalid("device_id", "a device id is non-empty and has no whitespace"));
        }
        PublicKey::from_base64(&node.device_ed25519_key)
            .map_err(|source| RecordError::InvalidKey { field: field("device_ed25519_key"), source })?;
        if !is_http_url(&node.homeserver_url) {
            return Err(invalid("homeserver_url", "expected an http:// or https:// URL"));
        }
        if node.http_url.as_deref().is_some_and(|url| !is_http_url(url)) {
            return Err(invalid("http_url", "expected an http:// or https:// URL"));
        }
    }
    Ok(nodes_by_id)
}

fn check_routes(
    record: &OrgRecord,
    nodes_by_id: &BTreeMap<&str, &NodeRecord>,
) -> Result<Vec<ParsedRoute>, RecordError> {
    let mut first_field_by_prefix: BTreeMap<&str, String> = BTreeMap::new();
    let mut routes = Vec::with_capacity(record.routes.len());
    for (index, route) in record.routes.iter().enumerate() {
        let prefix_field = format!("routes[{index}].prefix");
        let prefix = AgentAddress::parse(&route.prefix)
            .map_err(|source| RecordError::InvalidAddress { field: prefix_field.clone(), source })?;
        if prefix.org() != record.org {
            return Err(RecordError::RouteOutsideOrg {
                field: prefix_field,
                prefix: route.prefix.clone(),
                org: record.org.clone(),
            });
        }
        if let Some(first_field) = first_field_by_prefix.get(route.prefix.as_str()) {
            return Err(RecordError::DuplicateRoute {
                field: prefix_field,
                prefix: route.prefix.clone(),
                first_field: first_field.clone(),
            });
        }
        let node = declared_node(nodes_by_id, &route.node, format!("routes[{index}].node"))?;
        first_field_by_prefix.insert(&route.prefix, prefix_field);
        routes.push(ParsedRoute { prefix, node });
    }
    Ok(routes)
}

fn is_valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_valid_matrix_user_id(user_id: &str) -> bool {
    let Some((localpart, server)) = user_id.strip_prefix('@').and_then(|rest| rest.split_once(':')) else {
        return false;
    };
    !localpart.is_empty() && !server.is_empty() && !user_id.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_http_url(url: &str) -> bool {
    let host_and_path = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    host_and_path
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.chars().any(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{Fixture, node_json};
    use serde_json::json;

    fn content_error(change: impl FnOnce(&mut Value)) -> RecordError {
        let fixture = Fixture::new();
        let mut document = fixture.draft("globex");
        document.edit(change).unwrap();
        document.check_content().unwrap_err()
    }

    #[test]
    fn fixture_draft_passes_content_checks() {
        let fixture = Fixture::new();
        let routing = fixture.draft("globex").check_content().unwrap();
        assert_eq!(routing.routes.len(), 2);
        assert_eq!(routing.routes[0].prefix.as_str(), "agent://globex/sales");
        assert_eq!(routing.routes[0].node.id, "globex-node-1");
        assert_eq!(routing.default_node.unwrap().id, "globex-node-1");
    }

    #[test]
    fn refuses_route_outside_the_org() {
        let error = content_error(|v| v["routes"][1]["prefix"] = "agent://acme/ops".into());
        assert_eq!(error.code(), "route_outside_org");
        assert!(error.to_string().contains("routes[1].prefix"), "{error}");
    }

    #[test]
    fn refuses_duplicate_route_prefixes() {
        let error = content_error(|v| {
            v["routes"][1]["prefix"] = v["routes"][0]["prefix"].clone();
        });
        assert_eq!(error.code(), "duplicate_route");
        assert!(error.to_string().contains("routes[1].prefix"), "{error}");
        assert!(error.to_string().contains("routes[0].prefix"), "{error}");
    }

    #[test]
    fn refuses_routes_to_undeclared_nodes() {
        let error = content_error(|v| v["routes"][0]["node"] = "ghost".into());
        assert_eq!(error.code(), "unknown_node");
        assert!(error.to_string().contains("routes[0].node"), "{error}");
        let error = content_error(|v| v["default_node"] = "ghost".into());
        assert_eq!(error.code(), "unknown_node");
        assert!(error.to_string().contains("default_node"), "{error}");
    }

    #[test]
    fn refuses_invalid_route_prefixes() {
        let error = content_error(|v| v["routes"][0]["prefix"] = "agent://globex/".into());
        assert_eq!(error.code(), "invalid_address");
        assert!(error.to_string().contains("routes[0].prefix"), "{error}");
    }

    #[test]
    fn refuses_invalid_nodes() {
        let duplicate = content_error(|v| {
            let first = v["nodes"][0].clone();
            v["nodes"].as_array_mut().unwrap().push(first);
        });
        assert_eq!(duplicate.code(), "duplicate_node");
        let bad_user = content_error(|v| v["nodes"][0]["matrix_user_id"] = "axp".into());
        assert_eq!(bad_user.code(), "invalid_node");
        assert!(bad_user.to_string().contains("nodes[0].matrix_user_id"));
        let bad_key = content_error(|v| v["nodes"][0]["device_ed25519_key"] = "AAAA".into());
        assert_eq!(bad_key.code(), "invalid_key");
        assert!(bad_key.to_string().contains("nodes[0].device_ed25519_key"));
        let bad_url = content_error(|v| v["nodes"][0]["homeserver_url"] = "ftp://x".into());
        assert!(bad_url.to_string().contains("nodes[0].homeserver_url"));
        let bad_id = content_error(|v| v["nodes"][0]["id"] = "has space".into());
        assert!(bad_id.to_string().contains("nodes[0].id"));
    }

    #[test]
    fn refuses_invalid_org_names() {
        let error = content_error(|v| v["org"] = "Globex".into());
        assert_eq!(error.code(), "invalid_org");
    }

    #[test]
    fn parse_distinguishes_syntax_from_format_errors() {
        let malformed = RecordDocument::parse(b"{\"org\": ").unwrap_err();
        assert_eq!(malformed.code(), "malformed");
        let fixture = Fixture::new();
        let mut value = fixture.draft("globex").value().clone();
        value["colour"] = "blue".into();
        let unknown = RecordDocument::parse(value.to_string().as_bytes()).unwrap_err();
        assert_eq!(unknown.code(), "schema");
        assert!(unknown.to_string().contains("colour"), "{unknown}");
        value = fixture.draft("globex").value().clone();
        value["expires_at"] = "next tuesday".into();
        let bad_date = RecordDocument::parse(value.to_string().as_bytes()).unwrap_err();
        assert_eq!(bad_date.code(), "schema");
        assert!(bad_date.to_string().contains("next tuesday"), "{bad_date}");
    }

    #[test]
    fn refuses_duplicate_json_fields() {
        let text = r#"{"org": "globex", "org": "acme"}"#;
        assert_eq!(RecordDocument::parse(text.as_bytes()).unwrap_err().code(), "schema");
    }

    #[test]
    fn timestamps_keep_their_text() {
        let a = Timestamp::parse("2036-01-01T00:00:00Z").unwrap();
        let b = Timestamp::parse("2036-01-01T01:00:00+01:00").unwrap();
        assert_eq!(a.at(), b.at());
        assert_eq!(b.as_str(), "2036-01-01T01:00:00+01:00");
        assert_eq!(Timestamp::from(b.at()).as_str(), "2036-01-01T00:00:00Z");
    }

    #[test]
    fn endorsement_message_is_canonical_and_purpose_tagged() {
        let expires = Timestamp::parse("2030-01-01T00:00:00Z").unwrap();
        let message = endorsement_message("acme", "KEY", Some(&expires));
        assert_eq!(
            String::from_utf8(message).unwrap(),
            r#"{"expires_at":"2030-01-01T00:00:00Z","org":"acme","org_key":"KEY","purpose":"axp.registry.endorsement.v1"}"#
        );
        let without = endorsement_message("acme", "KEY", None);
        assert!(!String::from_utf8(without).unwrap().contains("expires_at"));
    }

    #[test]
    fn node_records_serialise_for_callers() {
        let node: NodeRecord = serde_json::from_value(node_json("n1", "globex")).unwrap();
        let back = serde_json::to_value(&node).unwrap();
        assert_eq!(back["id"], json!("n1"));
        assert!(back.get("http_url").is_some());
    }
}
