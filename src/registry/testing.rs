//! Test fixtures: a trust root, org keys and well-formed records to break one rule at a time.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::keys::SigningKey;
use super::load::{RegistrySources, SourceFile};
use super::record::{RecordDocument, Timestamp};
use super::root::TrustRoot;
use super::sign::{draft_record, endorse};

pub(crate) fn at(text: &str) -> DateTime<Utc> {
    Timestamp::parse(text).unwrap().at()
}

/// A node entry of `org` with a fresh device key.
pub(crate) fn node_json(id: &str, org: &str) -> Value {
    json!({
        "id": id,
        "matrix_user_id": format!("@axp:{org}.example"),
        "device_id": "AXPNODE",
        "device_ed25519_key": SigningKey::generate().public_key().to_base64(),
        "homeserver_url": format!("https://matrix.{org}.example"),
        "http_url": format!("https://axp.{org}.example"),
    })
}

/// Root keys, org keys and a fixed "now" before the records' expiry.
pub(crate) struct Fixture {
    pub(crate) root_keys: Vec<SigningKey>,
    pub(crate) root: TrustRoot,
    org_keys: BTreeMap<String, SigningKey>,
    pub(crate) now: DateTime<Utc>,
}

impl Fixture {
    /// One root key, threshold 1, orgs `acme` and `globex`.
    pub(crate) fn new() -> Self {
        Self::build(1, 1, &["acme", "globex"])
    }

    /// `count` root keys, `threshold` of them required, orgs `acme` and `globex`.
    pub(crate) fn with_roots(count: usize, threshold: usize) -> Self {
        Self::build(count, threshold, &["acme", "globex"])
    }

    pub(crate) fn with_orgs(orgs: &[&str]) -> Self {
        Self::build(1, 1, orgs)
    }

    fn build(count: usize, threshold: usize, orgs: &[&str]) -> Self {
        let root_keys: Vec<SigningKey> = (0..count).map(|_| SigningKey::generate()).collect();
        let public: Vec<_> = root_keys.iter().map(SigningKey::public_key).collect();
        let root = TrustRoot::new(threshold, &public).unwrap();
        let org_keys = orgs.iter().map(|org| (org.to_string(), SigningKey::generate())).collect();
        Self { root_keys, root, org_keys, now: at("2026-06-01T00:00:00Z") }
    }

    pub(crate) fn root_key(&self) -> &SigningKey {
        &self.root_keys[0]
    }

    pub(crate) fn org_key(&self, org: &str) -> &SigningKey {
        &self.org_keys[org]
    }

    /// An unsigned record of `org`, serial 1, expiring 2036-01-01, endorsed by every root key,
    /// with two nodes, routes `agent://<org>/sales` → node 1 and `agent://<org>/sales/emea` →
    /// node 2, and node 1 as default.
    pub(crate) fn draft(&self, org: &str) -> RecordDocument {
        let org_key = self.org_key(org).public_key();
        let expires_at = Timestamp::parse("2036-01-01T00:00:00Z").unwrap();
        let mut document = draft_record(org, &org_key, &expires_at).unwrap();
        for root_key in &self.root_keys {
            let endorsement = endorse(root_key, org, &org_key, None).unwrap();
            document.put_endorsement(&org_key, &endorsement).unwrap();
        }
        let node_1 = format!("{org}-node-1");
        let node_2 = format!("{org}-node-2");
        document
            .edit(|v| {
                v["serial"] = 1.into();
                v["nodes"] = json!([node_json(&node_1, org), node_json(&node_2, org)]);
                v["routes"] = json!([
                    {"prefix": format!("agent://{org}/sales"), "node": node_1},
                    {"prefix": format!("agent://{org}/sales/emea"), "node": node_2},
                ]);
                v["default_node"] = node_1.clone().into();
            })
            .unwrap();
        document
    }

    /// [`Fixture::draft`], signed by the org key.
    pub(crate) fn signed(&self, org: &str) -> RecordDocument {
        let mut document = self.draft(org);
        self.sign_unchecked(&mut document);
        document
    }

    /// Signs with the org key of the record's org, without content checks or a serial bump, so
    /// a test can produce a genuinely signed record that breaks a content rule.
    pub(crate) fn sign_unchecked(&self, document: &mut RecordDocument) {
        let org = document.record().org.clone();
        document.attach_signature(self.org_key(&org)).unwrap();
    }

    /// The files of a registry directory holding `documents`.
    pub(crate) fn sources(&self, documents: &[&RecordDocument]) -> RegistrySources {
        RegistrySources {
            root: SourceFile {
                path: PathBuf::from("registry/root.json"),
                contents: Ok(self.root.to_pretty_json().into_bytes()),
            },
            orgs: documents.iter().map(|d| org_file(d)).collect(),
        }
    }
}

/// The file `registry/orgs/<org>.json` holding `document`.
pub(crate) fn org_file(document: &RecordDocument) -> SourceFile {
    SourceFile {
        path: PathBuf::from(format!("registry/orgs/{}.json", document.record().org)),
        contents: Ok(document.to_pretty_json().into_bytes()),
    }
}
