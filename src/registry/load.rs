//! Loading a registry: from the files' contents and the previously accepted set to a new set and a
//! report.
//!
//! Owns the replacement rules. A record that verifies replaces the org's previous one. A refused
//! record never does: the previous record stays if it still verifies (same root, same clock,
//! same serial memory), and is dropped otherwise. A previously accepted org whose file is gone
//! is dropped. If `root.json` is refused, nothing can be verified and the previous set is kept
//! whole. Pure: reading the directory is `dir`'s job.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::error::RecordError;
use super::record::RecordDocument;
use super::root::TrustRoot;
use super::set::AcceptedSet;
use super::verify::{SerialMemory, VerifiedRecord, verify_record};
use crate::address::is_valid_org;

/// One file's path and contents, or why it could not be read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub contents: Result<Vec<u8>, String>,
}

/// The files of a registry directory: `root.json` and the `orgs/<org>.json` records.
#[derive(Debug, Clone)]
pub struct RegistrySources {
    pub root: SourceFile,
    pub orgs: Vec<SourceFile>,
}

/// What a load did, file by file.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Set when nothing could be verified (root.json or the orgs directory refused): the
    /// previous set was kept whole.
    pub fatal: Option<Refusal>,
    pub accepted: Vec<Accepted>,
    pub refused: Vec<Refusal>,
    /// Previously accepted records no longer in the set.
    pub dropped: Vec<Dropped>,
}

impl LoadReport {
    /// A report of a load refused as a whole.
    pub fn fatal(refusal: Refusal) -> Self {
        Self { fatal: Some(refusal), ..Self::default() }
    }

    /// Whether every file verified.
    pub fn is_clean(&self) -> bool {
        self.fatal.is_none() && self.refused.is_empty()
    }
}

/// A record that verified and is now in the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub org: String,
    pub serial: u64,
    pub file: PathBuf,
}

/// A refused file and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub file: PathBuf,
    pub error: RecordError,
    /// The serial of the org's previous record, still in use because this file was refused.
    pub kept_serial: Option<u64>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.file.display(), self.error, self.error.code())
    }
}

/// A previously accepted record that left the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub org: String,
    pub serial: u64,
    pub reason: DropReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// The org's file is no longer in the registry.
    FileRemoved,
    /// The org's new file was refused and the previous record no longer verifies either.
    NoLongerValid(RecordError),
}

/// Verifies `sources` and builds the new accepted set from them and `previous`. `memory` holds
/// the highest serial accepted per org; the caller records the new set's serials into it.
pub fn load(
    sources: RegistrySources,
    previous: &AcceptedSet,
    memory: &dyn SerialMemory,
    now: DateTime<Utc>,
) -> (AcceptedSet, LoadReport) {
    let root = match contents(&sources.root).and_then(TrustRoot::parse) {
        Ok(root) => root,
        Err(error) => {
            let refusal = Refusal { file: sources.root.path, error, kept_serial: None };
            return (previous.clone(), LoadReport::fatal(refusal));
        }
    };
    let mut files = sources.orgs;
    // Sorted so the report reads the same whatever order the directory listed the files in.
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut set = AcceptedSet::new();
    let mut report = LoadReport::default();
    let mut file_by_org: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let org = match org_of_file(&file.path) {
            Ok(org) => org,
            Err(error) => {
                report.refused.push(Refusal { file: file.path, error, kept_serial: None });
                continue;
            }
        };
        if let Some(other_file) = file_by_org.get(&org) {
            let error = RecordError::DuplicateOrg { org, other_file: other_file.display().to_string() };
            report.refused.push(Refusal { file: file.path, error, kept_serial: None });
            continue;
        }
        file_by_org.insert(org.clone(), file.path.clone());
        let prior = previous.verified(&org);
        let prior_serial = prior.map(|prior| prior.document.record().serial);
        let highest = memory.highest_serial(&org).max(prior_serial);
        let outcome = contents(&file)
            .and_then(RecordDocument::parse)
            .and_then(|document| verify_record(&org, document, &root, highest, now));
        match outcome {
            Ok(verified) => {
                report.accepted.push(Accepted { org, serial: verified.document.record().serial, file: file.path });
                set.insert(verified);
            }
            Err(error) => {
                let kept_serial =
                    prior.and_then(|prior| keep_previous(prior, &org, &root, memory, now, &mut set, &mut report));
                report.refused.push(Refusal { file: file.path, error, kept_serial });
            }
        }
    }
    for gone in previous.records().filter(|record| !file_by_org.contains_key(&record.org)) {
        report.dropped.push(Dropped { org: gone.org.clone(), serial: gone.serial, reason: DropReason::FileRemoved });
    }
    (set, report)
}

/// Re-verifies the org's previously accepted record after its new file was refused, keeping it
/// in `set` if it still verifies. Returns its serial when kept.
fn keep_previous(
    prior: &VerifiedRecord,
    org: &str,
    root: &TrustRoot,
    memory: &dyn SerialMemory,
    now: DateTime<Utc>,
    set: &mut AcceptedSet,
    report: &mut LoadReport,
) -> Option<u64> {
    let serial = prior.document.record().serial;
    let highest = memory.highest_serial(org);
    match verify_record(org, prior.document.clone(), root, highest, now) {
        Ok(verified) => {
            set.insert(verified);
            Some(serial)
        }
        Err(error) => {
            report.dropped.push(Dropped { org: org.to_owned(), serial, reason: DropReason::NoLongerValid(error) });
            None
        }
    }
}

fn contents(file: &SourceFile) -> Result<&[u8], RecordError> {
    file.contents.as_deref().map_err(|detail| RecordError::Unreadable { detail: detail.clone() })
}

/// The org a record file is named for: `orgs/<org>.json`.
fn org_of_file(path: &Path) -> Result<String, RecordError> {
    let stem = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    if is_valid_org(&stem) { Ok(stem) } else { Err(RecordError::InvalidOrgName { field: "file name", value: stem }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::{Fixture, at, org_file};
    use crate::registry::verify::InMemorySerials;

    fn load_fresh(fixture: &Fixture, sources: RegistrySources) -> (AcceptedSet, LoadReport) {
        load(sources, &AcceptedSet::new(), &InMemorySerials::new(), fixture.now)
    }

    /// A demo record of `org` re-signed with `serial`.
    fn with_serial(fixture: &Fixture, org: &str, serial: u64) -> RecordDocument {
        let mut document = fixture.draft(org);
        document.edit(|v| v["serial"] = serial.into()).unwrap();
        fixture.sign_unchecked(&mut document);
        document
    }

    fn tampered(document: &RecordDocument) -> RecordDocument {
        let mut document = document.clone();
        document.edit(|v| v["routes"][0]["node"] = "globex-node-2".into()).unwrap();
        document
    }

    #[test]
    fn accepts_every_valid_record() {
        let fixture = Fixture::new();
        let (acme, globex) = (fixture.signed("acme"), fixture.signed("globex"));
        let (set, report) = load_fresh(&fixture, fixture.sources(&[&globex, &acme]));
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(set.len(), 2);
        let orgs: Vec<_> = report.accepted.iter().map(|a| a.org.as_str()).collect();
        assert_eq!(orgs, ["acme", "globex"], "reported in file order");
        assert_eq!(report.accepted[0].file, PathBuf::from("registry/orgs/acme.json"));
    }

    #[test]
    fn a_refusal_names_the_file_and_the_field() {
        let fixture = Fixture::new();
        let globex = tampered(&fixture.signed("globex"));
        let (set, report) = load_fresh(&fixture, fixture.sources(&[&globex]));
        assert!(set.is_empty());
        assert!(!report.is_clean());
        let message = report.refused[0].to_string();
        assert!(message.starts_with("registry/orgs/globex.json: "), "{message}");
        assert!(message.contains("field `signature`"), "{message}");
        assert!(message.ends_with("[bad_signature]"), "{message}");
    }

    #[test]
    fn a_refused_record_never_replaces_the_accepted_one() {
        let fixture = Fixture::new();
        let good = fixture.signed("globex");
        let (first, _) = load_fresh(&fixture, fixture.sources(&[&good]));
        let memory = InMemorySerials::new();
        let bad = tampered(&with_serial(&fixture, "globex", 7));
        let (second, report) = load(fixture.sources(&[&bad]), &first, &memory, fixture.now);
        assert_eq!(report.refused[0].error.code(), "bad_signature");
        assert_eq!(report.refused[0].kept_serial, Some(1));
        assert_eq!(second.get("globex"), first.get("globex"));
        assert_eq!(second.digest(), first.digest());
    }

    #[test]
    fn a_lower_serial_than_remembered_is_a_rollback() {
        let fixture = Fixture::new();
        let mut memory = InMemorySerials::new();
        memory.remember("globex", 5);
        let old = with_serial(&fixture, "globex", 4);
        let (set, report) = load(fixture.sources(&[&old]), &AcceptedSet::new(), &memory, fixture.now);
        assert!(set.is_empty());
        assert_eq!(report.refused[0].error, RecordError::Rollback { serial: 4, highest: 5 });
        let same = with_serial(&fixture, "globex", 5);
        let (set, report) = load(fixture.sources(&[&same]), &AcceptedSet::new(), &memory, fixture.now);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(set.get("globex").unwrap().serial, 5);
    }

    #[test]
    fn a_lower_serial_than_the_previous_set_is_a_rollback() {
        let fixture = Fixture::new();
        let memory = InMemorySerials::new();
        let newer = with_serial(&fixture, "globex", 3);
        let (first, _) = load(fixture.sources(&[&newer]), &AcceptedSet::new(), &memory, fixture.now);
        let older = with_serial(&fixture, "globex", 2);
        let (second, report) = load(fixture.sources(&[&older]), &first, &memory, fixture.now);
        assert_eq!(report.refused[0].error.code(), "rollback");
        assert_eq!(report.refused[0].kept_serial, Some(3));
        assert_eq!(second.get("globex").unwrap().serial, 3);
    }

    #[test]
    fn a_removed_file_drops_the_org() {
        let fixture = Fixture::new();
        let (acme, globex) = (fixture.signed("acme"), fixture.signed("globex"));
        let (first, _) = load_fresh(&fixture, fixture.sources(&[&acme, &globex]));
        let (second, report) = load(fixture.sources(&[&acme]), &first, &InMemorySerials::new(), fixture.now);
        assert!(report.is_clean());
        assert!(second.get("globex").is_none());
        assert_eq!(report.dropped, [Dropped { org: "globex".into(), serial: 1, reason: DropReason::FileRemoved }]);
    }

    #[test]
    fn an_expired_previous_record_is_not_kept() {
        let fixture = Fixture::new();
        let good = fixture.signed("globex");
        let (first, _) = load_fresh(&fixture, fixture.sources(&[&good]));
        let later = at("2037-01-01T00:00:00Z");
        let (second, report) = load(fixture.sources(&[&good]), &first, &InMemorySerials::new(), later);
        assert!(second.is_empty());
        assert_eq!(report.refused[0].error.code(), "expired");
        assert_eq!(report.refused[0].kept_serial, None);
        assert!(matches!(
            &report.dropped[0].reason,
            DropReason::NoLongerValid(error) if error.code() == "expired"
        ));
    }

    #[test]
    fn a_refused_root_keeps_the_previous_set_whole() {
        let fixture = Fixture::new();
        let good = fixture.signed("globex");
        let (first, _) = load_fresh(&fixture, fixture.sources(&[&good]));
        let mut sources = fixture.sources(&[]);
        sources.root.contents = Ok(br#"{"threshold": 1, "keys": []}"#.to_vec());
        let (second, report) = load(sources, &first, &InMemorySerials::new(), fixture.now);
        let fatal = report.fatal.as_ref().unwrap();
        assert_eq!(fatal.error.code(), "bad_threshold");
        assert!(fatal.to_string().starts_with("registry/root.json: "), "{fatal}");
        assert!(!report.is_clean());
        assert_eq!(second.digest(), first.digest());
    }

    #[test]
    fn an_unreadable_root_is_fatal() {
        let fixture = Fixture::new();
        let mut sources = fixture.sources(&[]);
        sources.root.contents = Err("No such file or directory".into());
        let (set, report) = load_fresh(&fixture, sources);
        assert!(set.is_empty());
        assert_eq!(report.fatal.unwrap().error.code(), "unreadable");
    }

    #[test]
    fn the_file_name_must_be_the_org() {
        let fixture = Fixture::new();
        let acme = fixture.signed("acme");
        let mut misnamed = org_file(&acme);
        misnamed.path = PathBuf::from("registry/orgs/globex.json");
        let mut invalid_name = org_file(&acme);
        invalid_name.path = PathBuf::from("registry/orgs/ACME.json");
        let mut sources = fixture.sources(&[]);
        sources.orgs = vec![misnamed, invalid_name];
        let (set, report) = load_fresh(&fixture, sources);
        assert!(set.is_empty());
        let codes: Vec<_> = report.refused.iter().map(|r| r.error.code()).collect();
        assert_eq!(codes, ["invalid_org", "org_mismatch"]);
        assert!(report.refused[1].to_string().contains("field `org`"));
    }

    #[test]
    fn one_record_per_org() {
        let fixture = Fixture::new();
        let acme = fixture.signed("acme");
        let mut sources = fixture.sources(&[&acme]);
        let mut twin = org_file(&acme);
        twin.path = PathBuf::from("registry/orgs/copy/acme.json");
        sources.orgs.push(twin);
        let (set, report) = load_fresh(&fixture, sources);
        assert_eq!(set.len(), 1);
        assert_eq!(report.refused[0].error.code(), "duplicate_org");
    }

    #[test]
    fn unreadable_and_malformed_records_are_refused() {
        let fixture = Fixture::new();
        let mut sources = fixture.sources(&[]);
        sources.orgs = vec![
            SourceFile { path: PathBuf::from("registry/orgs/acme.json"), contents: Err("permission denied".into()) },
            SourceFile {
                path: PathBuf::from("registry/orgs/globex.json"),
                contents: Ok(b"{\"org\": \"globex\",".to_vec()),
            },
        ];
        let (_, report) = load_fresh(&fixture, sources);
        let codes: Vec<_> = report.refused.iter().map(|r| r.error.code()).collect();
        assert_eq!(codes, ["unreadable", "malformed"]);
    }
}
