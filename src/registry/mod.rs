//! The shared registry: signed org records, their verification, and deterministic resolution of
//! agent addresses to nodes.
//!
//! A registry directory holds `root.json` (the trust-root public keys and how many must endorse
//! an org key) and one record per org in `orgs/<org>.json`. `registry-records/README.md`
//! describes the format for operators.
//!
//! The module is pure except [`load_dir`], which reads the directory and hands the bytes to
//! [`load`]. A node keeps the [`AcceptedSet`] that `load` returns, passes it back as `previous`
//! on the next reload (a refused file never replaces an accepted record), remembers the accepted
//! serials through its own [`SerialMemory`] (rollback protection across restarts), and answers
//! [`AcceptedSet::resolve`] from memory. It does not watch files, persist serials or speak
//! Matrix: the node does.
//!
//! Map of the submodules:
//! - `canonical`: the canonical JSON that signatures and the digest cover.
//! - `keys`: Ed25519 keys, key ids, signatures, the secret-key file format.
//! - `record`, `root`: the two file formats and their self-contained rules.
//! - `sign`: endorsing org keys and signing records.
//! - `verify`: checking one record; `load`: building a set from many; `set`: the set and its
//!   digest; `resolve`: addresses to nodes; `dir`: reading a registry directory.
//! - `error`: refusal reasons with stable codes.

mod canonical;
mod dir;
mod error;
mod keys;
mod load;
mod record;
mod resolve;
mod root;
mod set;
mod sign;
mod verify;

#[cfg(test)]
mod testing;

pub use crate::address::{AddressError, AgentAddress};
pub use canonical::{CanonicalError, MAX_SAFE_INTEGER, to_canonical_json};
pub use dir::{ORGS_DIR, ROOT_FILE, load_dir};
pub use error::RecordError;
pub use keys::{KEY_FILE_FORMAT, KeyError, PublicKey, SigningKey};
pub use load::{Accepted, DropReason, Dropped, LoadReport, Refusal, RegistrySources, SourceFile, load};
pub use record::{
    ENDORSEMENT_PURPOSE, Endorsement, NodeRecord, OrgKey, OrgRecord, RecordDocument, RouteRecord, Timestamp,
    endorsement_message,
};
pub use resolve::{Resolution, RouteMatch, UnroutableReason};
pub use root::TrustRoot;
pub use set::AcceptedSet;
pub use sign::{draft_record, endorse};
pub use verify::{InMemorySerials, SerialMemory};
