//! The accepted set: the org records this node currently trusts, one per org.
//!
//! Owns read access to the accepted records and the set's digest. Only `load` builds a set, so
//! every record in it has passed verification. Resolution over the set is in `resolve`.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use super::record::OrgRecord;
use super::verify::VerifiedRecord;

/// The verified org records in use, keyed by org. Cheap to clone; replace it as a whole on
/// reload.
#[derive(Debug, Clone, Default)]
pub struct AcceptedSet {
    by_org: BTreeMap<String, VerifiedRecord>,
}

impl AcceptedSet {
    /// The empty set: every remote org is unroutable.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, org: &str) -> Option<&OrgRecord> {
        self.by_org.get(org).map(|verified| verified.document.record())
    }

    /// The records, ordered by org.
    pub fn records(&self) -> impl Iterator<Item = &OrgRecord> {
        self.by_org.values().map(|verified| verified.document.record())
    }

    pub fn len(&self) -> usize {
        self.by_org.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_org.is_empty()
    }

    /// SHA-256, in lowercase hex, of the canonical JSON array of the accepted records (each the
    /// whole file, signature included) ordered by org. Two nodes with the same digest resolve
    /// every address the same way.
    pub fn digest(&self) -> String {
        // Joining the records' canonical forms in org order is the canonical JSON of that array.
        let mut hasher = Sha256::new();
        hasher.update(b"[");
        for (index, verified) in self.by_org.values().enumerate() {
            if index > 0 {
                hasher.update(b",");
            }
            hasher.update(verified.canonical.as_bytes());
        }
        hasher.update(b"]");
        hex::encode(hasher.finalize())
    }

    /// The first instant at which a record of the set stops verifying (its own expiry or its
    /// endorsements'). Reload by then so expiry takes effect.
    pub fn earliest_expiry(&self) -> Option<DateTime<Utc>> {
        self.by_org.values().map(|v| v.valid_until).min()
    }

    pub(crate) fn verified(&self, org: &str) -> Option<&VerifiedRecord> {
        self.by_org.get(org)
    }

    pub(crate) fn insert(&mut self, verified: VerifiedRecord) {
        let org = verified.document.record().org.clone();
        self.by_org.insert(org, verified);
    }
}

#[cfg(test)]
mod tests {
    use crate::address::AgentAddress;
    use crate::registry::load::{RegistrySources, load};
    use crate::registry::record::RecordDocument;
    use crate::registry::resolve::Resolution;
    use crate::registry::set::AcceptedSet;
    use crate::registry::testing::Fixture;
    use crate::registry::verify::InMemorySerials;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use serde_json::{Value, json};

    const ORGS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
    const SEGMENTS: [&str; 4] = ["sales", "ops", "emea", "bot"];

    fn random_path(rng: &mut StdRng, org: &str, max_segments: usize) -> String {
        let count = rng.gen_range(1..=max_segments);
        let segments: Vec<&str> = (0..count).map(|_| SEGMENTS[rng.gen_range(0..SEGMENTS.len())]).collect();
        format!("agent://{org}/{}", segments.join("/"))
    }

    /// A signed record of `org` with random routes over two nodes and maybe a default node.
    fn random_record(fixture: &Fixture, rng: &mut StdRng, org: &str) -> RecordDocument {
        let mut document = fixture.draft(org);
        let mut prefixes: Vec<String> = (0..rng.gen_range(0..6)).map(|_| random_path(rng, org, 3)).collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes.shuffle(rng);
        let nodes = [format!("{org}-node-1"), format!("{org}-node-2")];
        let routes: Vec<Value> =
            prefixes.iter().map(|prefix| json!({"prefix": prefix, "node": nodes[rng.gen_range(0..2)]})).collect();
        let default_node = rng.gen_bool(0.5).then(|| nodes[rng.gen_range(0..2)].clone());
        document
            .edit(|v| {
                v["routes"] = Value::Array(routes);
                match default_node {
                    Some(node) => v["default_node"] = node.into(),
                    None => {
                        v.as_object_mut().unwrap().remove("default_node");
                    }
                }
            })
            .unwrap();
        fixture.sign_unchecked(&mut document);
        document
    }

    fn load_all(fixture: &Fixture, sources: RegistrySources) -> AcceptedSet {
        let (set, report) = load(sources, &AcceptedSet::new(), &InMemorySerials::new(), fixture.now);
        assert!(report.is_clean(), "{report:?}");
        set
    }

    fn resolve_all(set: &AcceptedSet, addresses: &[AgentAddress]) -> Vec<Resolution> {
        addresses.iter().map(|a| set.resolve(a, Some("acme"))).collect()
    }

    #[test]
    fn shuffled_record_sets_give_identical_digests_and_resolutions() {
        let fixture = Fixture::with_orgs(&ORGS);
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for _ in 0..40 {
            let orgs: Vec<&str> = ORGS.iter().copied().filter(|_| rng.gen_bool(0.7)).collect();
            let documents: Vec<RecordDocument> =
                orgs.iter().map(|org| random_record(&fixture, &mut rng, org)).collect();
            let addresses: Vec<AgentAddress> = (0..30)
                .map(|_| {
                    let org = ORGS[rng.gen_range(0..ORGS.len())];
                    AgentAddress::parse(&random_path(&mut rng, org, 4)).unwrap()
                })
                .collect();
            let mut order: Vec<&RecordDocument> = documents.iter().collect();
            let reference = load_all(&fixture, fixture.sources(&order));
            let expected_digest = reference.digest();
            let expected_resolutions = resolve_all(&reference, &addresses);
            for _ in 0..5 {
                order.shuffle(&mut rng);
                let set = load_all(&fixture, fixture.sources(&order));
                assert_eq!(set.digest(), expected_digest);
                assert_eq!(resolve_all(&set, &addresses), expected_resolutions);
            }
        }
    }

    #[test]
    fn digest_ignores_formatting_but_not_content() {
        let fixture = Fixture::new();
        let acme = fixture.signed("acme");
        let pretty = load_all(&fixture, fixture.sources(&[&acme]));
        let mut compact_sources = fixture.sources(&[]);
        let mut compact_file = crate::registry::testing::org_file(&acme);
        compact_file.contents = Ok(acme.value().to_string().into_bytes());
        compact_sources.orgs.push(compact_file);
        let compact = load_all(&fixture, compact_sources);
        assert_eq!(pretty.digest(), compact.digest());

        let mut resigned = acme.clone();
        resigned.edit(|v| v["serial"] = 2.into()).unwrap();
        fixture.sign_unchecked(&mut resigned);
        let other = load_all(&fixture, fixture.sources(&[&resigned]));
        assert_ne!(other.digest(), pretty.digest());
    }

    #[test]
    fn digest_of_the_empty_set_is_the_hash_of_an_empty_array() {
        assert_eq!(AcceptedSet::new().digest(), "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945");
    }

    #[test]
    fn earliest_expiry_is_the_soonest_record() {
        let fixture = Fixture::new();
        let mut acme = fixture.draft("acme");
        acme.edit(|v| v["expires_at"] = "2030-01-01T00:00:00Z".into()).unwrap();
        fixture.sign_unchecked(&mut acme);
        let globex = fixture.signed("globex");
        let set = load_all(&fixture, fixture.sources(&[&acme, &globex]));
        assert_eq!(set.earliest_expiry(), Some(crate::registry::testing::at("2030-01-01T00:00:00Z")));
        assert_eq!(AcceptedSet::new().earliest_expiry(), None);
    }
}
