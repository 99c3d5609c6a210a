//! Verification of one org record: is it the org's, endorsed by the trust root, signed by the org
//! key, unexpired, not a rollback, and well-formed?
//!
//! Owns the order of the checks and rollback protection's contract ([`SerialMemory`]). Pure: the
//! clock and the remembered serials are arguments. Loading many files and keeping the last
//! accepted record on refusal is `load`'s job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::error::RecordError;
use super::keys::PublicKey;
use super::record::{OrgKey, RecordDocument, Routing, endorsement_message};
use super::root::TrustRoot;

/// The highest serial this node has accepted per org, kept across restarts by the caller (over
/// sled in the node). Verification refuses a record whose serial is lower.
pub trait SerialMemory {
    fn highest_serial(&self, org: &str) -> Option<u64>;
}

/// A [`SerialMemory`] in a map; serialises as `{"<org>": <serial>, ...}` so the CLI can keep it
/// in a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InMemorySerials(BTreeMap<String, u64>);

impl InMemorySerials {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `serial` was accepted for `org`; a lower serial never replaces a higher one.
    pub fn remember(&mut self, org: &str, serial: u64) {
        let highest = self.0.entry(org.to_owned()).or_insert(serial);
        *highest = (*highest).max(serial);
    }
}

impl SerialMemory for InMemorySerials {
    fn highest_serial(&self, org: &str) -> Option<u64> {
        self.0.get(org).copied()
    }
}

/// A record that passed every check, with what resolution and the digest need from it.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedRecord {
    pub(crate) document: RecordDocument,
    pub(crate) routing: Routing,
    /// Canonical JSON of the whole file, signature included.
    pub(crate) canonical: String,
    /// When the record stops verifying: its own expiry or the expiry of its endorsements.
    pub(crate) valid_until: DateTime<Utc>,
}

/// Verifies the record in `document`, read from the file named for `file_org`.
pub(crate) fn verify_record(
    file_org: &str,
    document: RecordDocument,
    root: &TrustRoot,
    highest_serial: Option<u64>,
    now: DateTime<Utc>,
) -> Result<VerifiedRecord, RecordError> {
    let record = document.record();
    if record.org != file_org {
        return Err(RecordError::OrgMismatch { org: record.org.clone(), file_org: file_org.to_owned() });
    }
    let canonical = document.canonical()?;
    let org_key = PublicKey::from_base64(&record.org_key.public_key)
        .map_err(|source| RecordError::InvalidKey { field: "org_key.public_key".into(), source })?;
    let endorsed_until = check_endorsements(&record.org, &record.org_key, root, now)?;
    let signature = record.signature.as_deref().ok_or(RecordError::Unsigned)?;
    org_key
        .verify(&document.signed_message()?, signature)
        .map_err(|source| RecordError::BadSignature { field: "signature".into(), source })?;
    if record.expires_at.at() <= now {
        return Err(RecordError::Expired { field: "expires_at".into(), expires_at: record.expires_at.to_string() });
    }
    if let Some(highest) = highest_serial.filter(|highest| record.serial < *highest) {
        return Err(RecordError::Rollback { serial: record.serial, highest });
    }
    let routing = document.check_content()?;
    let valid_until = record.expires_at.at().min(endorsed_until);
    Ok(VerifiedRecord { document, routing, canonical, valid_until })
}

/// Counts the distinct root keys that validly endorse the org key now, refusing when fewer than
/// the threshold do. Returns when the endorsement stops holding, as endorsements expire.
fn check_endorsements(
    org: &str,
    org_key: &OrgKey,
    root: &TrustRoot,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, RecordError> {
    let mut counted = BTreeSet::new();
    let mut expiries = Vec::new();
    let mut problems = Vec::new();
    for (index, endorsement) in org_key.endorsements.iter().enumerate() {
        let id = &endorsement.root_key_id;
        let problem = match root.key(id) {
            None => Some(format!("endorsements[{index}]: `{id}` is not a root key")),
            Some(_) if counted.contains(id) => Some(format!("endorsements[{index}]: `{id}` endorses more than once")),
            Some(_) if endorsement.expires_at.as_ref().is_some_and(|t| t.at() <= now) => {
                Some(format!("endorsements[{index}]: expired"))
            }
            Some(root_key) => {
                let message = endorsement_message(org, &org_key.public_key, endorsement.expires_at.as_ref());
                root_key.verify(&message, &endorsement.signature).err().map(|e| format!("endorsements[{index}]: {e}"))
            }
        };
        match problem {
            Some(problem) => problems.push(problem),
            None => {
                counted.insert(id.clone());
                expiries.push(endorsement.expires_at.as_ref().map_or(DateTime::<Utc>::MAX_UTC, |t| t.at()));
            }
        }
    }
    if counted.len() < root.threshold() {
        return Err(RecordError::NotEndorsed { valid: counted.len(), threshold: root.threshold(), problems });
    }
    // The record stays endorsed until fewer than `threshold` endorsements remain unexpired.
    expiries.sort_unstable_by(|a, b| b.cmp(a));
    Ok(expiries[root.threshold() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::keys::SigningKey;
    use crate::registry::record::Timestamp;
    use crate::registry::sign::endorse;
    use crate::registry::testing::{Fixture, at};
    use serde_json::Value;

    /// Verifies `document` as the file `<org>.json` at the fixture's "now".
    fn verify(fixture: &Fixture, document: RecordDocument) -> Result<VerifiedRecord, RecordError> {
        let org = document.record().org.clone();
        verify_record(&org, document, &fixture.root, None, fixture.now)
    }

    /// A signed fixture record after `change`, re-signed by the org key so only `change` is wrong.
    fn signed_after(fixture: &Fixture, org: &str, change: impl FnOnce(&mut Value)) -> RecordDocument {
        let mut document = fixture.draft(org);
        document.edit(change).unwrap();
        fixture.sign_unchecked(&mut document);
        document
    }

    #[test]
    fn accepts_a_signed_endorsed_record() {
        let fixture = Fixture::new();
        let verified = verify(&fixture, fixture.signed("acme")).unwrap();
        assert_eq!(verified.document.record().org, "acme");
        assert_eq!(verified.valid_until, at("2036-01-01T00:00:00Z"));
        assert!(verified.canonical.contains("\"signature\":"));
    }

    #[test]
    fn refuses_a_tampered_record() {
        let fixture = Fixture::new();
        let mut document = fixture.signed("acme");
        document.edit(|v| v["nodes"][0]["homeserver_url"] = "https://evil.example".into()).unwrap();
        let error = verify(&fixture, document).unwrap_err();
        assert_eq!(error.code(), "bad_signature");
        assert!(error.to_string().contains("`signature`"), "{error}");
    }

    #[test]
    fn refuses_a_record_signed_by_another_key() {
        let fixture = Fixture::new();
        let mut document = fixture.draft("acme");
        document.edit(|v| v["signature"] = SigningKey::generate().sign(b"x").into()).unwrap();
        assert_eq!(verify(&fixture, document).unwrap_err().code(), "bad_signature");
    }

    #[test]
    fn refuses_an_unsigned_record() {
        let fixture = Fixture::new();
        assert_eq!(verify(&fixture, fixture.draft("acme")).unwrap_err().code(), "unsigned");
    }

    #[test]
    fn refuses_an_org_key_without_endorsement() {
        let fixture = Fixture::new();
        let document = signed_after(&fixture, "acme", |v| v["org_key"]["endorsements"] = Value::Array(vec![]));
        let error = verify(&fixture, document).unwrap_err();
        assert_eq!(error.code(), "not_endorsed");
        assert!(error.to_string().contains("org_key.endorsements"), "{error}");
    }

    #[test]
    fn refuses_endorsements_by_unknown_keys_or_for_other_orgs() {
        let fixture = Fixture::new();
        let stranger = SigningKey::generate();
        let acme_key = fixture.org_key("acme").public_key();
        let by_stranger = endorse(&stranger, "acme", &acme_key, None).unwrap();
        let document = signed_after(&fixture, "acme", |v| {
            v["org_key"]["endorsements"] = Value::Array(vec![by_stranger.to_json()]);
        });
        let error = verify(&fixture, document).unwrap_err();
        assert_eq!(error.code(), "not_endorsed");
        assert!(error.to_string().contains("is not a root key"), "{error}");

        // A genuine root endorsement of acme's key, replayed for globex, does not count.
        let for_acme = endorse(fixture.root_key(), "acme", &acme_key, None).unwrap();
        let mut document = fixture.draft("globex");
        document
            .edit(|v| {
                v["org_key"]["public_key"] = acme_key.to_base64().into();
                v["org_key"]["endorsements"] = Value::Array(vec![for_acme.to_json()]);
            })
            .unwrap();
        document.attach_signature(fixture.org_key("acme")).unwrap();
        let error = verify(&fixture, document).unwrap_err();
        assert_eq!(error.code(), "not_endorsed");
        assert!(error.to_string().contains("does not match"), "{error}");
    }

    #[test]
    fn counts_each_root_key_once_against_the_threshold() {
        let fixture = Fixture::with_roots(2, 2);
        let org_key = fixture.org_key("acme").public_key();
        let once = endorse(&fixture.root_keys[0], "acme", &org_key, None).unwrap();
        let document = signed_after(&fixture, "acme", |v| {
            v["org_key"]["endorsements"] = Value::Array(vec![once.to_json(), once.to_json()]);
        });
        let error = verify(&fixture, document).unwrap_err();
        assert_eq!(
            error,
            RecordError::NotEndorsed {
                valid: 1,
                threshold: 2,
                problems: vec![format!(
                    "endorsements[1]: `{}` endorses more than once",
                    fixture.root_keys[0].public_key().key_id()
                )],
            }
        );
        assert!(verify(&fixture, fixture.signed("acme")).is_ok());
    }

    #[test]
    fn refuses_an_expired_endorsement_and_bounds_validity_by_endorsements() {
        let fixture = Fixture::new();
        let org_key = fixture.org_key("acme").public_key();
        let until = Timestamp::parse("2031-06-01T00:00:00Z").unwrap();
        let endorsement = endorse(fixture.root_key(), "acme", &org_key, Some(&until)).unwrap();
        let document = signed_after(&fixture, "acme", |v| {
            v["org_key"]["endorsements"] = Value::Array(vec![endorsement.to_json()]);
        });
        let verified = verify(&fixture, document.clone()).unwrap();
        assert_eq!(verified.valid_until, until.at());
        let later = at("2031-06-01T00:00:00Z");
        let error = verify_record("acme", document, &fixture.root, None, later).unwrap_err();
        assert_eq!(error.code(), "not_endorsed");
        assert!(error.to_string().contains("expired"), "{error}");
    }

    #[test]
    fn refuses_an_expired_record() {
        let fixture = Fixture::new();
        let document = signed_after(&fixture, "acme", |v| v["expires_at"] = "2020-01-01T00:00:00Z".into());
        let error = verify(&fixture, document).unwrap_err();
        assert_eq!(error.code(), "expired");
        assert!(error.to_string().contains("`expires_at`"), "{error}");
    }

    #[test]
    fn refuses_a_serial_lower_than_the_highest_accepted() {
        let fixture = Fixture::new();
        let document = fixture.signed("acme");
        let serial = document.record().serial;
        let error = verify_record("acme", document.clone(), &fixture.root, Some(serial + 1), fixture.now).unwrap_err();
        assert_eq!(error, RecordError::Rollback { serial, highest: serial + 1 });
        assert!(error.to_string().contains("`serial`"));
        // The same serial is accepted again: reloading an unchanged registry must work.
        assert!(verify_record("acme", document, &fixture.root, Some(serial), fixture.now).is_ok());
    }

    #[test]
    fn refuses_a_record_in_another_orgs_file() {
        let fixture = Fixture::new();
        let error = verify_record("globex", fixture.signed("acme"), &fixture.root, None, fixture.now).unwrap_err();
        assert_eq!(error.code(), "org_mismatch");
        assert!(error.to_string().contains("`org`"), "{error}");
    }

    #[test]
    fn refuses_signed_content_errors() {
        let fixture = Fixture::new();
        let outside = signed_after(&fixture, "globex", |v| v["routes"][0]["prefix"] = "agent://acme/x".into());
        assert_eq!(verify(&fixture, outside).unwrap_err().code(), "route_outside_org");
        let duplicate = signed_after(&fixture, "globex", |v| {
            v["routes"][1]["prefix"] = v["routes"][0]["prefix"].clone();
        });
        assert_eq!(verify(&fixture, duplicate).unwrap_err().code(), "duplicate_route");
        let unknown = signed_after(&fixture, "globex", |v| v["routes"][1]["node"] = "ghost".into());
        assert_eq!(verify(&fixture, unknown).unwrap_err().code(), "unknown_node");
    }

    #[test]
    fn refuses_serials_that_cannot_be_signed_canonically() {
        let fixture = Fixture::new();
        let mut document = fixture.signed("acme");
        document.edit(|v| v["serial"] = (crate::registry::canonical::MAX_SAFE_INTEGER + 1).into()).unwrap();
        assert_eq!(verify(&fixture, document).unwrap_err().code(), "not_canonical");
    }

    #[test]
    fn serial_memory_keeps_the_highest() {
        let mut memory = InMemorySerials::new();
        assert_eq!(memory.highest_serial("acme"), None);
        memory.remember("acme", 5);
        memory.remember("acme", 3);
        assert_eq!(memory.highest_serial("acme"), Some(5));
        let text = serde_json::to_string(&memory).unwrap();
        assert_eq!(text, r#"{"acme":5}"#);
    }
}
