//! API keys and what a caller may do: issuing keys, checking a presented token, and address
//! authority. Pure: storage of key records is `crate::store`'s, HTTP extraction `crate::api`'s.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::address::{AddressPattern, AgentAddress};

const TOKEN_PREFIX: &str = "axp_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub key_id: String,
    /// Who holds the key (a service, a team, a person): a label for audit and listings.
    pub owner: String,
    /// The addresses this key may act for.
    pub agents: Vec<AddressPattern>,
    /// Admin keys may act for every address and manage keys.
    pub admin: bool,
    secret_sha256: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A freshly issued key: the token is shown once and never stored.
pub struct IssuedKey {
    pub token: String,
    pub record: ApiKeyRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key: send it as the x-api-key header (or Authorization: Bearer <key>)")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key was revoked")]
    Revoked,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Invalid => "invalid_api_key",
            AuthError::Revoked => "revoked_api_key",
        }
    }
}

pub fn issue_key(owner: &str, agents: Vec<AddressPattern>, admin: bool, at: &str) -> IssuedKey {
    let mut id_bytes = [0u8; 6];
    let mut secret_bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut id_bytes);
    rand::thread_rng().fill_bytes(&mut secret_bytes);
    let key_id = hex::encode(id_bytes);
    let secret = hex::encode(secret_bytes);
    IssuedKey {
        token: format!("{TOKEN_PREFIX}{key_id}_{secret}"),
        record: ApiKeyRecord {
            key_id,
            owner: owner.to_owned(),
            agents,
            admin,
            secret_sha256: sha256_hex(&secret),
            created_at: at.to_owned(),
            revoked_at: None,
        },
    }
}

/// Splits a presented token into its key id and secret.
pub fn parse_token(token: &str) -> Result<(&str, &str), AuthError> {
    let rest = token.trim().strip_prefix(TOKEN_PREFIX).ok_or(AuthError::Invalid)?;
    let (key_id, secret) = rest.split_once('_').ok_or(AuthError::Invalid)?;
    if key_id.is_empty() || secret.is_empty() {
        return Err(AuthError::Invalid);
    }
    Ok((key_id, secret))
}

impl ApiKeyRecord {
    /// Checks the secret half of a token against this record.
    pub fn verify(&self, secret: &str) -> Result<(), AuthError> {
        if !constant_time_eq(sha256_hex(secret).as_bytes(), self.secret_sha256.as_bytes()) {
            return Err(AuthError::Invalid);
        }
        if self.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(())
    }

    pub fn may_act_for(&self, address: &AgentAddress) -> bool {
        self.admin || self.agents.iter().any(|pattern| pattern.matches(address))
    }

    /// The address this key speaks as when a request names none: its first exact grant.
    pub fn default_agent(&self) -> Option<AgentAddress> {
        self.agents.iter().find_map(AddressPattern::exact)
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(raw: &str) -> AddressPattern {
        AddressPattern::parse(raw).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_tampered_ones_do_not() {
        let issued = issue_key("svc", vec![pattern("agent://acme/a")], false, "t");
        let (key_id, secret) = parse_token(&issued.token).unwrap();
        assert_eq!(key_id, issued.record.key_id);
        assert!(issued.record.verify(secret).is_ok());
        let mut tampered = secret.to_owned();
        tampered.replace_range(0..1, if tampered.starts_with('0') { "1" } else { "0" });
        assert_eq!(issued.record.verify(&tampered), Err(AuthError::Invalid));
        assert!(!format!("{:?}", issued.record).contains(secret), "the record never holds the secret");
    }

    #[test]
    fn revoked_keys_are_refused_and_malformed_tokens_are_invalid() {
        let mut issued = issue_key("svc", vec![], false, "t");
        let secret = parse_token(&issued.token).unwrap().1.to_owned();
        issued.record.revoked_at = Some("later".into());
        assert_eq!(issued.record.verify(&secret), Err(AuthError::Revoked));
        for bad in ["", "axp_", "axp_abc", "key_abc_def", "axp__x"] {
            assert_eq!(parse_token(bad), Err(AuthError::Invalid), "{bad}");
        }
    }

    #[test]
    fn authority_follows_grants() {
        let issued = issue_key("svc", vec![pattern("agent://acme/ops/*"), pattern("agent://acme/a")], false, "t");
        let admin = issue_key("admin", vec![], true, "t");
        let inside = AgentAddress::parse("agent://acme/ops/bot").unwrap();
        let outside = AgentAddress::parse("agent://globex/ops/bot").unwrap();
        assert!(issued.record.may_act_for(&inside));
        assert!(!issued.record.may_act_for(&outside));
        assert!(admin.record.may_act_for(&outside));
        assert_eq!(issued.record.default_agent().unwrap().as_str(), "agent://acme/a");
    }
}
