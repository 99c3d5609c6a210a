//! Why a registry file (root.json or an org record) was refused.
//!
//! Owns the refusal reasons, their stable machine codes and the operator hints. Every message
//! names the field it is about; the file is named by whoever holds the error (see
//! [`super::Refusal`]).

use super::canonical::CanonicalError;
use super::keys::KeyError;
use crate::address::AddressError;

/// A reason to refuse a registry file. Each variant has a stable [`RecordError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("cannot be read: {detail}")]
    Unreadable { detail: String },
    #[error("not valid JSON: {detail}")]
    Malformed { detail: String },
    #[error("does not follow the record format: {detail}")]
    Schema { detail: String },
    #[error(transparent)]
    NotCanonical(#[from] CanonicalError),
    #[error("field `{field}`: `{value}` is not a valid org name ([a-z0-9][a-z0-9-]{{0,62}})")]
    InvalidOrgName { field: &'static str, value: String },
    #[error("field `org`: the record is for `{org}` but the file is named for `{file_org}`")]
    OrgMismatch { org: String, file_org: String },
    #[error("field `org`: `{org}` already has a record in `{other_file}`")]
    DuplicateOrg { org: String, other_file: String },
    #[error("field `{field}`: {source}")]
    InvalidKey { field: String, source: KeyError },
    #[error("field `signature`: the record is not signed")]
    Unsigned,
    #[error("field `{field}`: {source}")]
    BadSignature { field: String, source: KeyError },
    #[error(
        "field `org_key.endorsements`: the org key has {valid} valid root endorsement(s), {threshold} required{}",
        problems_suffix(.problems)
    )]
    NotEndorsed { valid: usize, threshold: usize, problems: Vec<String> },
    #[error("field `{field}`: expired at {expires_at}")]
    Expired { field: String, expires_at: String },
    #[error("field `serial`: serial {serial} is lower than {highest}, the highest this node has accepted for the org")]
    Rollback { serial: u64, highest: u64 },
    #[error("field `{field}`: route `{prefix}` is outside the org's own space `agent://{org}/`")]
    RouteOutsideOrg { field: String, prefix: String, org: String },
    #[error("field `{field}`: prefix `{prefix}` is already routed by `{first_field}`")]
    DuplicateRoute { field: String, prefix: String, first_field: String },
    #[error("field `{field}`: node `{node}` is not declared in `nodes`")]
    UnknownNode { field: String, node: String },
    #[error("field `{field}`: node id `{node}` is declared more than once")]
    DuplicateNode { field: String, node: String },
    #[error("field `{field}`: {detail}")]
    InvalidNode { field: String, detail: String },
    #[error("field `{field}`: {source}")]
    InvalidAddress { field: String, source: AddressError },
    #[error("field `threshold`: {threshold} must be between 1 and the number of keys ({keys})")]
    BadThreshold { threshold: usize, keys: usize },
    #[error("field `{field}`: key id `{stated}` does not match the key; its id is `{derived}`")]
    KeyIdMismatch { field: String, stated: String, derived: String },
    #[error("field `{field}`: key `{key_id}` is listed more than once")]
    DuplicateRootKey { field: String, key_id: String },
    #[error(
        "field `org_key.public_key`: the record's org key is `{record_key_id}`, but the key given is `{signing_key_id}`"
    )]
    WrongSigningKey { record_key_id: String, signing_key_id: String },
}

fn problems_suffix(problems: &[String]) -> String {
    if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) }
}

impl RecordError {
    /// Stable machine code of the reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreadable { .. } => "unreadable",
            Self::Malformed { .. } => "malformed",
            Self::Schema { .. } => "schema",
            Self::NotCanonical(_) => "not_canonical",
            Self::InvalidOrgName { .. } => "invalid_org",
            Self::OrgMismatch { .. } => "org_mismatch",
            Self::DuplicateOrg { .. } => "duplicate_org",
            Self::InvalidKey { .. } => "invalid_key",
            Self::Unsigned => "unsigned",
            Self::BadSignature { .. } => "bad_signature",
            Self::NotEndorsed { .. } => "not_endorsed",
            Self::Expired { .. } => "expired",
            Self::Rollback { .. } => "rollback",
            Self::RouteOutsideOrg { .. } => "route_outside_org",
            Self::DuplicateRoute { .. } => "duplicate_route",
            Self::UnknownNode { .. } => "unknown_node",
            Self::DuplicateNode { .. } => "duplicate_node",
            Self::InvalidNode { .. } => "invalid_node",
            Self::InvalidAddress { .. } => "invalid_address",
            Self::BadThreshold { .. } => "bad_threshold",
            Self::KeyIdMismatch { .. } => "key_id_mismatch",
            Self::DuplicateRootKey { .. } => "duplicate_key",
            Self::WrongSigningKey { .. } => "wrong_key",
        }
    }

    /// What a registry operator can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Unreadable { .. } => "check that the file exists and the node may read it",
            Self::Malformed { .. } => "fix the JSON syntax at the line and column shown",
            Self::Schema { .. } => {
                "compare the file with the schema in registry-records/ (field names, types, RFC 3339 dates)"
            }
            Self::NotCanonical(_) => "write numbers as integers; floats cannot be signed",
            Self::InvalidOrgName { .. } => "use a lowercase org name of letters, digits and '-', at most 63 characters",
            Self::OrgMismatch { .. } => "name the file orgs/<org>.json after the record's `org`",
            Self::DuplicateOrg { .. } => "keep one record file per org",
            Self::InvalidKey { .. } => "use the unpadded base64 public key printed by `axp registry keygen`",
            Self::Unsigned => "sign it: `axp registry sign --org-key <key file> --record <file>`",
            Self::BadSignature { .. } => {
                "the file changed after it was signed, or another key signed it; restore the published file or re-sign it with `axp registry sign`"
            }
            Self::NotEndorsed { .. } => {
                "have root key holders endorse the org key with `axp registry endorse`, then re-sign the record"
            }
            Self::Expired { .. } => {
                "extend `expires_at` and re-sign the record (an expired endorsement needs a new `axp registry endorse`)"
            }
            Self::Rollback { .. } => {
                "an older copy of the record was published; publish the newest record, or sign one whose serial is not lower"
            }
            Self::RouteOutsideOrg { .. } => {
                "an org may only route addresses under agent://<its org>/; remove or correct the route"
            }
            Self::DuplicateRoute { .. } => "keep one route per prefix",
            Self::UnknownNode { .. } => "declare the node under `nodes` or correct the node id",
            Self::DuplicateNode { .. } => "give each node a distinct id",
            Self::InvalidNode { .. } => "correct the node entry",
            Self::InvalidAddress { .. } => {
                "write prefixes as agent://<org>/<segment>[/<segment>...] without a trailing '/'"
            }
            Self::BadThreshold { .. } => "set `threshold` to at least 1 and at most the number of keys",
            Self::KeyIdMismatch { .. } => "copy the key id printed by `axp registry keygen`",
            Self::DuplicateRootKey { .. } => "list each root key once",
            Self::WrongSigningKey { .. } => "sign with the org's own key file, or endorse the new org key first",
        }
    }
}
