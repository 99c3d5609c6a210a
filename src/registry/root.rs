//! The trust root, `root.json`: the registry's root public keys and how many of them must endorse
//! an org key.
//!
//! Owns the root file's format and its own consistency checks. It is trusted as distributed (it is
//! not signed); it does not check endorsements (see `verify`) and does no I/O.

use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

use super::error::RecordError;
use super::keys::PublicKey;
use super::record::json_error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFile {
    threshold: usize,
    keys: Vec<RootKeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootKeyEntry {
    key_id: String,
    public_key: String,
}

/// A checked trust root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    threshold: usize,
    keys_by_id: BTreeMap<String, PublicKey>,
}

impl TrustRoot {
    /// Parses `root.json`, refusing malformed keys, key ids that do not match their key, repeated
    /// keys and a threshold outside 1..=number of keys.
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let file: RootFile = serde_json::from_slice(bytes).map_err(json_error)?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for (index, entry) in file.keys.iter().enumerate() {
            let public_key = PublicKey::from_base64(&entry.public_key)
                .map_err(|source| RecordError::InvalidKey { field: format!("keys[{index}].public_key"), source })?;
            let derived = public_key.key_id();
            if derived != entry.key_id {
                return Err(RecordError::KeyIdMismatch {
                    field: format!("keys[{index}].key_id"),
                    stated: entry.key_id.clone(),
                    derived,
                });
            }
            keys.push(public_key);
        }
        Self::new(file.threshold, &keys)
    }

    /// A trust root of `keys`, `threshold` of which must endorse an org key.
    pub fn new(threshold: usize, keys: &[PublicKey]) -> Result<Self, RecordError> {
        let mut keys_by_id = BTreeMap::new();
        for (index, key) in keys.iter().enumerate() {
            if keys_by_id.insert(key.key_id(), *key).is_some() {
                return Err(RecordError::DuplicateRootKey { field: format!("keys[{index}]"), key_id: key.key_id() });
            }
        }
        if threshold == 0 || threshold > keys_by_id.len() {
            return Err(RecordError::BadThreshold { threshold, keys: keys_by_id.len() });
        }
        Ok(Self { threshold, keys_by_id })
    }

    /// How many distinct root keys must endorse an org key.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn key(&self, key_id: &str) -> Option<&PublicKey> {
        self.keys_by_id.get(key_id)
    }

    /// The text of `root.json` for this root.
    pub fn to_pretty_json(&self) -> String {
        let keys: Vec<_> = self
            .keys_by_id
            .iter()
            .map(|(key_id, key)| json!({"key_id": key_id, "public_key": key.to_base64()}))
            .collect();
        format!("{:#}\n", json!({"threshold": self.threshold, "keys": keys}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::keys::SigningKey;

    fn entry(key: &PublicKey) -> serde_json::Value {
        json!({"key_id": key.key_id(), "public_key": key.to_base64()})
    }

    #[test]
    fn round_trips_through_its_file() {
        let keys = [SigningKey::generate().public_key(), SigningKey::generate().public_key()];
        let root = TrustRoot::new(2, &keys).unwrap();
        let parsed = TrustRoot::parse(root.to_pretty_json().as_bytes()).unwrap();
        assert_eq!(parsed, root);
        assert_eq!(parsed.threshold(), 2);
        assert_eq!(parsed.key(&keys[1].key_id()), Some(&keys[1]));
    }

    #[test]
    fn refuses_a_threshold_out_of_range() {
        let key = SigningKey::generate().public_key();
        for threshold in [0, 2] {
            let file = json!({"threshold": threshold, "keys": [entry(&key)]});
            let error = TrustRoot::parse(file.to_string().as_bytes()).unwrap_err();
            assert_eq!(error.code(), "bad_threshold");
        }
    }

    #[test]
    fn refuses_a_key_id_that_is_not_the_keys() {
        let key = SigningKey::generate().public_key();
        let mut wrong = entry(&key);
        wrong["key_id"] = "ed25519:0000000000000000".into();
        let file = json!({"threshold": 1, "keys": [wrong]});
        let error = TrustRoot::parse(file.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.code(), "key_id_mismatch");
        assert!(error.to_string().contains("keys[0].key_id"), "{error}");
    }

    #[test]
    fn refuses_repeated_and_invalid_keys() {
        let key = SigningKey::generate().public_key();
        let file = json!({"threshold": 1, "keys": [entry(&key), entry(&key)]});
        let error = TrustRoot::parse(file.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.code(), "duplicate_key");
        let file = json!({"threshold": 1, "keys": [{"key_id": "x", "public_key": "AAAA"}]});
        let error = TrustRoot::parse(file.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.code(), "invalid_key");
        assert!(error.to_string().contains("keys[0].public_key"), "{error}");
    }
}
