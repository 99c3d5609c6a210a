//! Authoring records: root keys endorse org keys, org keys sign their records.
//!
//! Owns the producing side of what `verify` checks: endorsements, record drafts, and signing with
//! the serial bump. Pure; the CLI reads and writes the files.

use serde_json::{Value, json};

use super::error::RecordError;
use super::keys::{PublicKey, SigningKey};
use super::record::{Endorsement, RecordDocument, Timestamp, endorsement_message};
use crate::address::is_valid_org;

/// `root_key`'s endorsement of `org_key` as the signing key of `org`, optionally until
/// `expires_at`.
pub fn endorse(
    root_key: &SigningKey,
    org: &str,
    org_key: &PublicKey,
    expires_at: Option<&Timestamp>,
) -> Result<Endorsement, RecordError> {
    if !is_valid_org(org) {
        return Err(RecordError::InvalidOrgName { field: "org", value: org.to_owned() });
    }
    let message = endorsement_message(org, &org_key.to_base64(), expires_at);
    Ok(Endorsement {
        root_key_id: root_key.public_key().key_id(),
        expires_at: expires_at.cloned(),
        signature: root_key.sign(&message),
    })
}

impl Endorsement {
    /// The endorsement as it appears in `org_key.endorsements`.
    pub fn to_json(&self) -> Value {
        let mut value = json!({"root_key_id": self.root_key_id, "signature": self.signature});
        if let Some(expires_at) = &self.expires_at {
            value["expires_at"] = expires_at.as_str().into();
        }
        value
    }
}

/// A new, unsigned record of `org` with serial 0, no endorsements, nodes or routes yet: the
/// starting point for a new org.
pub fn draft_record(org: &str, org_key: &PublicKey, expires_at: &Timestamp) -> Result<RecordDocument, RecordError> {
    if !is_valid_org(org) {
        return Err(RecordError::InvalidOrgName { field: "org", value: org.to_owned() });
    }
    RecordDocument::from_value(json!({
        "org": org,
        "serial": 0,
        "expires_at": expires_at.as_str(),
        "org_key": {"public_key": org_key.to_base64(), "endorsements": []},
        "nodes": [],
        "routes": [],
    }))
}

impl RecordDocument {
    /// Adds `endorsement` of `org_key`, replacing an earlier one by the same root key. When
    /// `org_key` is a new org key, it replaces the old key and all its endorsements. The record
    /// signature is removed: it no longer covers the record, which must be signed again.
    pub fn put_endorsement(&mut self, org_key: &PublicKey, endorsement: &Endorsement) -> Result<(), RecordError> {
        let org_key_text = org_key.to_base64();
        let same_key = self.record().org_key.public_key == org_key_text;
        let mut endorsements: Vec<Value> = if same_key {
            let record_endorsements = &self.record().org_key.endorsements;
            record_endorsements
                .iter()
                .filter(|e| e.root_key_id != endorsement.root_key_id)
                .map(Endorsement::to_json)
                .collect()
        } else {
            Vec::new()
        };
        endorsements.push(endorsement.to_json());
        self.edit(|value| {
            value["org_key"] = json!({"public_key": org_key_text, "endorsements": endorsements});
            remove_signature(value);
        })
    }

    /// Signs the record with its org key: checks the content rules, increases `serial` by one
    /// and replaces `signature`. Returns the new serial.
    pub fn sign(&mut self, org_key: &SigningKey) -> Result<u64, RecordError> {
        let signing_key = org_key.public_key();
        let record_key = PublicKey::from_base64(&self.record().org_key.public_key)
            .map_err(|source| RecordError::InvalidKey { field: "org_key.public_key".into(), source })?;
        if record_key != signing_key {
            return Err(RecordError::WrongSigningKey {
                record_key_id: record_key.key_id(),
                signing_key_id: signing_key.key_id(),
            });
        }
        self.check_content()?;
        // Work on a copy so a refusal leaves the document as it was.
        let mut signed = self.clone();
        let serial = signed.record().serial.saturating_add(1);
        signed.edit(|value| value["serial"] = serial.into())?;
        signed.attach_signature(org_key)?;
        *self = signed;
        Ok(serial)
    }

    /// Replaces `signature` with `key`'s signature over the rest of the record, as it is.
    pub(crate) fn attach_signature(&mut self, key: &SigningKey) -> Result<(), RecordError> {
        self.edit(remove_signature)?;
        let signature = key.sign(&self.signed_message()?);
        self.edit(|value| value["signature"] = signature.into())
    }
}

fn remove_signature(value: &mut Value) {
    if let Value::Object(members) = value {
        members.remove("signature");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::Fixture;
    use crate::registry::verify::verify_record;

    #[test]
    fn signing_bumps_the_serial_and_verifies() {
        let fixture = Fixture::new();
        let mut document = fixture.draft("acme");
        assert_eq!(document.sign(fixture.org_key("acme")), Ok(2));
        assert_eq!(document.record().serial, 2);
        assert_eq!(document.sign(fixture.org_key("acme")), Ok(3));
        let verified = verify_record("acme", document, &fixture.root, None, fixture.now);
        assert!(verified.is_ok(), "{verified:?}");
    }

    #[test]
    fn signed_files_round_trip_through_their_text() {
        let fixture = Fixture::new();
        let mut document = fixture.draft("acme");
        document.sign(fixture.org_key("acme")).unwrap();
        let reparsed = RecordDocument::parse(document.to_pretty_json().as_bytes()).unwrap();
        let verified = verify_record("acme", reparsed, &fixture.root, None, fixture.now);
        assert!(verified.is_ok(), "{verified:?}");
    }

    #[test]
    fn refuses_to_sign_with_another_key() {
        let fixture = Fixture::new();
        let mut document = fixture.draft("acme");
        let error = document.sign(fixture.org_key("globex")).unwrap_err();
        assert_eq!(error.code(), "wrong_key");
        assert_eq!(document.record().serial, 1, "a refused signing changes nothing");
    }

    #[test]
    fn refuses_to_sign_invalid_content() {
        let fixture = Fixture::new();
        let mut document = fixture.draft("acme");
        document.edit(|v| v["routes"][0]["prefix"] = "agent://globex/x".into()).unwrap();
        let error = document.sign(fixture.org_key("acme")).unwrap_err();
        assert_eq!(error.code(), "route_outside_org");
    }

    #[test]
    fn endorsing_again_replaces_the_same_root_keys_endorsement() {
        let fixture = Fixture::new();
        let mut document = fixture.signed("acme");
        let org_key = fixture.org_key("acme").public_key();
        let renewed =
            endorse(fixture.root_key(), "acme", &org_key, Some(&Timestamp::parse("2035-01-01T00:00:00Z").unwrap()))
                .unwrap();
        document.put_endorsement(&org_key, &renewed).unwrap();
        assert_eq!(document.record().org_key.endorsements, vec![renewed]);
        assert_eq!(document.record().signature, None, "the old signature is stale");
    }

    #[test]
    fn endorsing_a_new_org_key_drops_the_old_keys_endorsements() {
        let fixture = Fixture::with_roots(2, 1);
        let mut document = fixture.draft("acme");
        assert_eq!(document.record().org_key.endorsements.len(), 2);
        let new_key = SigningKey::generate();
        let endorsement = endorse(fixture.root_key(), "acme", &new_key.public_key(), None).unwrap();
        document.put_endorsement(&new_key.public_key(), &endorsement).unwrap();
        assert_eq!(document.record().org_key.public_key, new_key.public_key().to_base64());
        assert_eq!(document.record().org_key.endorsements, vec![endorsement]);
        document.sign(&new_key).unwrap();
        let verified = verify_record("acme", document, &fixture.root, None, fixture.now);
        assert!(verified.is_ok(), "{verified:?}");
    }

    #[test]
    fn refuses_invalid_org_names() {
        let key = SigningKey::generate();
        let expires = Timestamp::parse("2036-01-01T00:00:00Z").unwrap();
        assert_eq!(endorse(&key, "Acme", &key.public_key(), None).unwrap_err().code(), "invalid_org");
        assert_eq!(draft_record("a b", &key.public_key(), &expires).unwrap_err().code(), "invalid_org");
    }
}
