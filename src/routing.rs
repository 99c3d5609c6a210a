//! The node's routing: which addresses it serves itself, which belong to another org's node,
//! and which it must refuse. Without a registry (standalone mode) every address is local.
//!
//! Owns the node's copy of the accepted registry set, its reloads (at start, on SIGHUP, when
//! the files change, when a record expires) and the serials remembered in sled. Verification
//! and resolution themselves are `crate::registry`'s pure functions.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrono::Utc;

use crate::address::AgentAddress;
use crate::clock::now_rfc3339;
use crate::registry::{
    AcceptedSet, LoadReport, NodeRecord, ORGS_DIR, ROOT_FILE, Resolution, UnroutableReason, load_dir,
};
use crate::store::{Store, StoreError};

/// How often the registry files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Where an address goes, as far as this node is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote { org: String, node: NodeRecord },
    Unroutable { org: String, reason: UnroutableReason },
}

/// The accepted registry set and what its last load did.
pub struct Loaded {
    pub set: AcceptedSet,
    pub loaded_at: String,
    pub report: LoadReport,
}

pub struct Routing {
    local_org: String,
    registry: Option<Registry>,
}

struct Registry {
    dir: PathBuf,
    current: RwLock<Arc<Loaded>>,
}

impl Routing {
    /// Every address is local.
    pub fn standalone(local_org: &str) -> Routing {
        Routing { local_org: local_org.to_owned(), registry: None }
    }

    /// Routes by the registry in `dir`, loaded now.
    pub async fn with_registry(local_org: &str, dir: PathBuf, store: &Store) -> Result<Routing, StoreError> {
        let empty =
            Arc::new(Loaded { set: AcceptedSet::new(), loaded_at: String::new(), report: LoadReport::default() });
        let routing =
            Routing { local_org: local_org.to_owned(), registry: Some(Registry { dir, current: RwLock::new(empty) }) };
        routing.reload(store).await?;
        Ok(routing)
    }

    pub fn local_org(&self) -> &str {
        &self.local_org
    }

    pub fn is_local(&self, address: &AgentAddress) -> bool {
        matches!(self.route(address), Route::Local)
    }

    pub fn route(&self, address: &AgentAddress) -> Route {
        let Some(loaded) = self.snapshot() else { return Route::Local };
        match loaded.set.resolve(address, Some(&self.local_org)) {
            Resolution::Local => Route::Local,
            Resolution::Remote { org, node, .. } => Route::Remote { org, node },
            Resolution::Unroutable { org, reason } => Route::Unroutable { org, reason },
        }
    }

    /// The registry as last loaded; `None` in standalone mode.
    pub fn snapshot(&self) -> Option<Arc<Loaded>> {
        let registry = self.registry.as_ref()?;
        Some(registry.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    /// Loads the registry files over the current set, remembers the accepted serials and logs
    /// what was accepted and refused. A no-op in standalone mode.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let Some(registry) = &self.registry else { return Ok(()) };
        let previous = self.snapshot().expect("a registry is configured");
        let (set, report) = load_dir(&registry.dir, &previous.set, store, Utc::now());
        log_report(&registry.dir, &report, &set);
        let serials: Vec<(String, u64)> = set.records().map(|record| (record.org.clone(), record.serial)).collect();
        store
            .write(move |txn| -> Result<(), StoreError> {
                for (org, serial) in &serials {
                    txn.remember_serial(org, *serial)?;
                }
                Ok(())
            })
            .await?;
        let loaded = Arc::new(Loaded { set, loaded_at: now_rfc3339(), report });
        *registry.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(())
    }

    /// Reloads on SIGHUP, when the registry files change and when an accepted record expires.
    /// Runs until the task is dropped.
    pub async fn watch(self: Arc<Self>, store: Store) {
        let Some(registry) = &self.registry else { return };
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; registry reloads follow file changes only");
                None
            }
        };
        let mut seen = fingerprint(&registry.dir);
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                _ = hangup => "SIGHUP",
                _ = ticks.tick() => {
                    let now = fingerprint(&registry.dir);
                    let expired = self.snapshot().and_then(|loaded| loaded.set.earliest_expiry()).is_some_and(|at| at <= Utc::now());
                    if now != seen { "files changed" } else if expired { "a record expired" } else { continue }
                }
            };
            seen = fingerprint(&registry.dir);
            tracing::info!(reason = why, dir = %registry.dir.display(), "reloading the registry");
            if let Err(error) = self.reload(&store).await {
                tracing::error!(%error, "registry reload could not remember serials; keeping the previous set");
            }
        }
    }
}

/// Names, sizes and modification times of the registry files: enough to notice an edit.
fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = vec![dir.join(ROOT_FILE)];
    if let Ok(entries) = std::fs::read_dir(dir.join(ORGS_DIR)) {
        files.extend(entries.filter_map(|entry| entry.ok().map(|entry| entry.path())));
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |meta| meta.len());
            let modified = meta.and_then(|meta| meta.modified().ok());
            (path, len, modified)
        })
        .collect()
}

fn log_report(dir: &std::path::Path, report: &LoadReport, set: &AcceptedSet) {
    if let Some(fatal) = &report.fatal {
        tracing::error!(dir = %dir.display(), refusal = %fatal, hint = fatal.error.hint(), "registry refused as a whole; keeping the previous set");
    }
    for accepted in &report.accepted {
        tracing::info!(org = %accepted.org, serial = accepted.serial, file = %accepted.file.display(), "registry record accepted");
    }
    for refused in &report.refused {
        tracing::warn!(refusal = %refused, hint = refused.error.hint(), kept_serial = ?refused.kept_serial, "registry record refused");
    }
    for dropped in &report.dropped {
        tracing::warn!(org = %dropped.org, serial = dropped.serial, reason = ?dropped.reason, "registry record dropped");
    }
    tracing::info!(orgs = set.len(), digest = %set.digest(), "registry loaded");
}
