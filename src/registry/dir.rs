//! Reading a registry directory: `root.json` and `orgs/*.json`.
//!
//! The registry's only I/O. It reads files and hands their contents to the pure [`load`]; it
//! makes no decisions of its own beyond which directory entries are record files.

use chrono::{DateTime, Utc};
use std::fs;
use std::path::{Path, PathBuf};

use super::error::RecordError;
use super::load::{LoadReport, Refusal, RegistrySources, SourceFile, load};
use super::set::AcceptedSet;
use super::verify::SerialMemory;

/// The trust root's file name inside a registry directory.
pub const ROOT_FILE: &str = "root.json";

/// The directory of org records inside a registry directory.
pub const ORGS_DIR: &str = "orgs";

/// Loads the registry in `dir` over the `previous` set: see [`load`] for the rules. If the orgs
/// directory cannot be listed, the load is refused whole and `previous` is kept.
pub fn load_dir(
    dir: &Path,
    previous: &AcceptedSet,
    memory: &dyn SerialMemory,
    now: DateTime<Utc>,
) -> (AcceptedSet, LoadReport) {
    match read_sources(dir) {
        Ok(sources) => load(sources, previous, memory, now),
        Err(refusal) => (previous.clone(), LoadReport::fatal(refusal)),
    }
}

/// The files of the registry in `dir`. Record files are the `*.json` files directly in
/// `orgs/`; other entries (hidden files, subdirectories, notes) are ignored.
fn read_sources(dir: &Path) -> Result<RegistrySources, Refusal> {
    let orgs_dir = dir.join(ORGS_DIR);
    let unlistable = |error: std::io::Error| Refusal {
        file: orgs_dir.clone(),
        error: RecordError::Unreadable { detail: error.to_string() },
        kept_serial: None,
    };
    let mut orgs = Vec::new();
    for entry in fs::read_dir(&orgs_dir).map_err(unlistable)? {
        let path = entry.map_err(unlistable)?.path();
        if is_record_file(&path) {
            orgs.push(read_file(path));
        }
    }
    Ok(RegistrySources { root: read_file(dir.join(ROOT_FILE)), orgs })
}

fn is_record_file(path: &Path) -> bool {
    let visible = path.file_name().is_some_and(|name| !name.to_string_lossy().starts_with('.'));
    visible && path.extension().is_some_and(|ext| ext == "json") && path.is_file()
}

fn read_file(path: PathBuf) -> SourceFile {
    let contents = fs::read(&path).map_err(|error| error.to_string());
    SourceFile { path, contents }
}
