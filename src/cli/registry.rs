//! `axp registry ...`: operator commands for the shared registry.
//!
//! Owns the files: secret-key files (created 0600, never overwritten, refused when others may
//! read them), record files (rewritten atomically), the optional serial-memory file of `verify`,
//! and what operators read. Every decision (what verifies, where an address goes) is
//! `axp::registry`'s. Exit status: 0 when everything verified (and resolved), 1 when the registry
//! or the address was refused, 2 on usage or I/O errors.

use anyhow::{Context, bail};
use chrono::{Duration, Utc};
use serde_json::json;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axp::registry::{
    AcceptedSet, AgentAddress, DropReason, InMemorySerials, LoadReport, ORGS_DIR, PublicKey, ROOT_FILE, RecordDocument,
    RecordError, Resolution, RouteMatch, SigningKey, Timestamp, TrustRoot, draft_record, endorse, load_dir,
};

const DEFAULT_DIR: &str = "registry-records";

/// How long a record drafted by `endorse` stays valid.
const DRAFT_VALIDITY_DAYS: i64 = 365;

/// How long the demo records stay valid: long enough that a checked-in demo keeps verifying.
const DEMO_VALIDITY_DAYS: i64 = 10 * 365;

#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Generate an Ed25519 key; write its secret-key file (mode 0600) and print its public key.
    Keygen {
        /// Secret-key file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Endorse an org's signing key with a root key.
    ///
    /// With --dir, the endorsement is written into DIR/orgs/ORG.json (created as an unsigned
    /// draft if missing); the record must then be signed again. Without --dir it is printed.
    Endorse {
        /// The root's secret-key file.
        #[arg(long)]
        root_key: PathBuf,
        #[arg(long)]
        org: String,
        /// The org key's public key, as printed by `axp registry keygen`.
        #[arg(long)]
        org_public_key: String,
        /// Registry directory holding the org's record.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Make the endorsement expire at this RFC 3339 instant.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Sign an org record with the org key, increasing its serial by one; rewrites the file.
    Sign {
        /// The org's secret-key file.
        #[arg(long)]
        org_key: PathBuf,
        /// The record file, normally DIR/orgs/<org>.json.
        #[arg(long)]
        record: PathBuf,
    },
    /// Verify a registry directory; exit 0 only when every file verifies.
    Verify {
        #[arg(default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// JSON file remembering the highest serial accepted per org (rollback protection
        /// across runs); read if present, updated with the accepted serials.
        #[arg(long)]
        serials: Option<PathBuf>,
    },
    /// Show which node an agent address resolves to.
    Resolve {
        address: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// This node's own org: its addresses are local.
        #[arg(long)]
        local_org: Option<String>,
    },
    /// Print the digest of the accepted records, to compare nodes.
    Digest {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Create a demo registry: a root key, the chosen demo orgs (acme, globex, initech) with
    /// their keys, placeholder node device keys, and signed records.
    InitDemo {
        /// Registry directory to write root.json and orgs/ into.
        #[arg(long)]
        dir: PathBuf,
        /// Directory for the secret-key files (root.key and one ORG.key per org).
        #[arg(long)]
        keys_dir: PathBuf,
        /// The demo orgs to create, comma-separated: acme, globex, initech.
        #[arg(long, value_delimiter = ',', default_values = ["acme", "globex"])]
        orgs: Vec<String>,
    },
}

pub fn run(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::Keygen { out } => keygen(&out),
        RegistryCommand::Endorse { root_key, org, org_public_key, dir, expires_at } => {
            endorse_org_key(&root_key, &org, &org_public_key, dir.as_deref(), expires_at.as_deref())
        }
        RegistryCommand::Sign { org_key, record } => sign(&org_key, &record),
        RegistryCommand::Verify { dir, serials } => verify(&dir, serials.as_deref()),
        RegistryCommand::Resolve { address, dir, local_org } => resolve(&address, &dir, local_org.as_deref()),
        RegistryCommand::Digest { dir } => digest(&dir),
        RegistryCommand::InitDemo { dir, keys_dir, orgs } => init_demo(&dir, &keys_dir, &orgs),
    }
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let key = SigningKey::generate();
    write_secret_key(out, &key)?;
    let public_key = key.public_key();
    println!("key_id: {}", public_key.key_id());
    println!("public_key: {public_key}");
    eprintln!("wrote the secret key to {} (mode 0600); keep it private", out.display());
    Ok(ExitCode::SUCCESS)
}

fn endorse_org_key(
    root_key_file: &Path,
    org: &str,
    org_public_key: &str,
    dir: Option<&Path>,
    expires_at: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let root_key = read_secret_key(root_key_file)?;
    let org_key =
        PublicKey::from_base64(org_public_key).with_context(|| format!("--org-public-key `{org_public_key}`"))?;
    let expires_at = expires_at.map(parse_timestamp).transpose()?;
    let endorsement = endorse(&root_key, org, &org_key, expires_at.as_ref()).map_err(|e| refused("--org", &e))?;
    let Some(dir) = dir else {
        println!("{:#}", endorsement.to_json());
        return Ok(ExitCode::SUCCESS);
    };
    let path = dir.join(ORGS_DIR).join(format!("{org}.json"));
    let mut document = if path.exists() {
        let document = read_record(&path)?;
        if document.record().org != org {
            bail!("{}: the record is for `{}`, not `{org}`", path.display(), document.record().org);
        }
        document
    } else {
        let expires = Timestamp::from(Utc::now() + Duration::days(DRAFT_VALIDITY_DAYS));
        eprintln!("{} does not exist: creating an unsigned draft for `{org}` expiring {expires}", path.display());
        draft_record(org, &org_key, &expires).map_err(|e| refused("--org", &e))?
    };
    let previous_key = &document.record().org_key.public_key;
    if *previous_key != org_key.to_base64() && !document.record().org_key.endorsements.is_empty() {
        eprintln!("the record's org key was {previous_key}: it is replaced and its endorsements dropped");
    }
    document.put_endorsement(&org_key, &endorsement).map_err(|e| refused(&path.display().to_string(), &e))?;
    fs::create_dir_all(path.parent().unwrap_or(dir))?;
    write_atomically(&path, &document.to_pretty_json())?;
    println!("{}: org key {} endorsed by root key {}", path.display(), org_key.key_id(), endorsement.root_key_id);
    eprintln!(
        "the record is unsigned now: complete it (nodes, routes, default_node) if needed, then run \
         `axp registry sign --org-key <{org} key file> --record {}`",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn sign(org_key_file: &Path, record_file: &Path) -> anyhow::Result<ExitCode> {
    let org_key = read_secret_key(org_key_file)?;
    let mut document = read_record(record_file)?;
    let serial = document.sign(&org_key).map_err(|e| refused(&record_file.display().to_string(), &e))?;
    write_atomically(record_file, &document.to_pretty_json())?;
    println!(
        "{}: signed `{}` serial {serial} with org key {}",
        record_file.display(),
        document.record().org,
        org_key.public_key().key_id()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path, serials_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut memory = match serials_file {
        Some(path) if path.exists() => serde_json::from_slice(&fs::read(path)?)
            .with_context(|| format!("{}: not a serials file", path.display()))?,
        _ => InMemorySerials::new(),
    };
    let (set, report) = load_dir(dir, &AcceptedSet::new(), &memory, Utc::now());
    for accepted in &report.accepted {
        let record = set.get(&accepted.org);
        let expires = record.map(|r| r.expires_at.to_string()).unwrap_or_default();
        println!(
            "ok       {}: `{}` serial {} expires {expires}",
            accepted.file.display(),
            accepted.org,
            accepted.serial
        );
    }
    print_problems(&report);
    if let Some(path) = serials_file {
        for record in set.records() {
            memory.remember(&record.org, record.serial);
        }
        write_atomically(path, &serde_json::to_string_pretty(&memory)?)?;
    }
    println!("digest   {}", set.digest());
    Ok(verdict(dir, &report))
}

fn resolve(address: &str, dir: &Path, local_org: Option<&str>) -> anyhow::Result<ExitCode> {
    let address = AgentAddress::parse(address).with_context(|| format!("cannot resolve `{address}`"))?;
    let (set, report) = load_dir(dir, &AcceptedSet::new(), &InMemorySerials::new(), Utc::now());
    print_problems(&report);
    let resolved = match set.resolve(&address, local_org) {
        Resolution::Local => {
            println!("resolution: local");
            println!("org: {}", address.org());
            true
        }
        Resolution::Remote { org, node, matched } => {
            println!("resolution: remote");
            println!("org: {org}");
            println!("node: {}", node.id);
            match matched {
                RouteMatch::Prefix(prefix) => println!("matched: route {prefix}"),
                RouteMatch::DefaultNode => println!("matched: default node"),
            }
            println!("matrix_user_id: {}", node.matrix_user_id);
            println!("device_id: {}", node.device_id);
            println!("device_ed25519_key: {}", node.device_ed25519_key);
            println!("homeserver_url: {}", node.homeserver_url);
            if let Some(http_url) = &node.http_url {
                println!("http_url: {http_url}");
            }
            true
        }
        Resolution::Unroutable { org, reason } => {
            eprintln!("unroutable: {address}: org `{org}`: {reason} [{}]", reason.code());
            false
        }
    };
    let registry_clean = verdict(dir, &report) == ExitCode::SUCCESS;
    Ok(if resolved && registry_clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn digest(dir: &Path) -> anyhow::Result<ExitCode> {
    let (set, report) = load_dir(dir, &AcceptedSet::new(), &InMemorySerials::new(), Utc::now());
    print_problems(&report);
    println!("{}", set.digest());
    Ok(verdict(dir, &report))
}

/// Parameters of one demo org, matching the federation kit's loopback homeservers (default ports).
struct DemoOrg {
    org: &'static str,
    server_name: &'static str,
    client_port: u16,
    node_port: u16,
    route: &'static str,
}

const DEMO_ORGS: [DemoOrg; 3] = [
    DemoOrg {
        org: "acme",
        server_name: "localhost:8481",
        client_port: 8008,
        node_port: 7401,
        route: "agent://acme/ops",
    },
    DemoOrg {
        org: "globex",
        server_name: "localhost:8482",
        client_port: 8009,
        node_port: 7402,
        route: "agent://globex/sales",
    },
    DemoOrg {
        org: "initech",
        server_name: "localhost:8483",
        client_port: 8010,
        node_port: 7403,
        route: "agent://initech/support",
    },
];

/// The demo orgs named by `--orgs`, each once, in DEMO_ORGS order.
fn chosen_demo_orgs(names: &[String]) -> anyhow::Result<Vec<&'static DemoOrg>> {
    let known = || DEMO_ORGS.iter().map(|demo| demo.org).collect::<Vec<_>>().join(", ");
    for (index, name) in names.iter().enumerate() {
        if !DEMO_ORGS.iter().any(|demo| demo.org == name) {
            bail!("--orgs: `{name}` is not a demo org (known: {})", known());
        }
        if names[..index].contains(name) {
            bail!("--orgs: `{name}` is named twice");
        }
    }
    if names.is_empty() {
        bail!("--orgs: name at least one demo org ({})", known());
    }
    Ok(DEMO_ORGS.iter().filter(|demo| names.iter().any(|name| name == demo.org)).collect())
}

fn init_demo(dir: &Path, keys_dir: &Path, orgs: &[String]) -> anyhow::Result<ExitCode> {
    let demos = chosen_demo_orgs(orgs)?;
    // Checked up front so a refusal leaves nothing half-written.
    let mut targets = vec![keys_dir.join("root.key"), dir.join(ROOT_FILE)];
    for demo in &demos {
        targets.push(keys_dir.join(format!("{}.key", demo.org)));
        targets.push(dir.join(ORGS_DIR).join(format!("{}.json", demo.org)));
    }
    if let Some(existing) = targets.iter().find(|target| target.exists()) {
        bail!("{} already exists: init-demo never overwrites keys or records", existing.display());
    }
    fs::create_dir_all(dir.join(ORGS_DIR))?;
    // Only directories created here get 0700; an existing one keeps its mode.
    fs::DirBuilder::new().recursive(true).mode(0o700).create(keys_dir)?;
    let root_key = SigningKey::generate();
    write_secret_key(&keys_dir.join("root.key"), &root_key)?;
    let root = TrustRoot::new(1, &[root_key.public_key()]).map_err(|e| refused(ROOT_FILE, &e))?;
    write_new(&dir.join(ROOT_FILE), &root.to_pretty_json())?;
    let expires_at = Timestamp::from(Utc::now() + Duration::days(DEMO_VALIDITY_DAYS));
    for demo in demos {
        let org_key = SigningKey::generate();
        write_secret_key(&keys_dir.join(format!("{}.key", demo.org)), &org_key)?;
        let path = dir.join(ORGS_DIR).join(format!("{}.json", demo.org));
        let document = demo_record(demo, &root_key, &org_key, &expires_at)
            .map_err(|e| refused(&path.display().to_string(), &e))?;
        write_new(&path, &document.to_pretty_json())?;
        println!("wrote {} (serial 1)", path.display());
    }
    println!("wrote {} and the secret keys in {}", dir.join(ROOT_FILE).display(), keys_dir.display());
    println!("check it with: axp registry verify {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The signed record of a demo org. Its node's device key is a placeholder: the federation kit
/// replaces it with the real Matrix device key and re-signs.
fn demo_record(
    demo: &DemoOrg,
    root_key: &SigningKey,
    org_key: &SigningKey,
    expires_at: &Timestamp,
) -> Result<RecordDocument, RecordError> {
    let org = demo.org;
    let org_public_key = org_key.public_key();
    let endorsement = endorse(root_key, org, &org_public_key, None)?;
    let mut document = draft_record(org, &org_public_key, expires_at)?;
    document.put_endorsement(&org_public_key, &endorsement)?;
    let node_id = format!("{org}-node-1");
    let placeholder_device_key = SigningKey::generate().public_key().to_base64();
    document.edit(|value| {
        value["nodes"] = json!([{
            "id": node_id,
            "matrix_user_id": format!("@axp-{org}:{}", demo.server_name),
            "device_id": "AXPNODE1",
            "device_ed25519_key": placeholder_device_key,
            "homeserver_url": format!("http://127.0.0.1:{}", demo.client_port),
            "http_url": format!("http://127.0.0.1:{}", demo.node_port),
        }]);
        value["routes"] = json!([{"prefix": demo.route, "node": node_id}]);
        value["default_node"] = node_id.clone().into();
    })?;
    document.sign(org_key)?;
    Ok(document)
}

/// Prints every refusal and drop with what to do about it, on stderr.
fn print_problems(report: &LoadReport) {
    for refusal in report.fatal.iter().chain(&report.refused) {
        eprintln!("refused  {refusal}");
        eprintln!("         fix: {}", refusal.error.hint());
        if let Some(serial) = refusal.kept_serial {
            eprintln!("         still using the previously accepted serial {serial}");
        }
    }
    for dropped in &report.dropped {
        let why = match &dropped.reason {
            DropReason::FileRemoved => "its file is gone".to_owned(),
            DropReason::NoLongerValid(error) => format!("{error} [{}]", error.code()),
        };
        eprintln!("dropped  `{}` serial {}: {why}", dropped.org, dropped.serial);
    }
}

/// Exit status of a load, with a closing line an operator can read at a glance.
fn verdict(dir: &Path, report: &LoadReport) -> ExitCode {
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        let refused = report.refused.len() + usize::from(report.fatal.is_some());
        eprintln!("registry {} NOT OK: {refused} file(s) refused, see above", dir.display());
        ExitCode::FAILURE
    }
}

/// A refused record or argument as an error naming where it came from.
fn refused(source: &str, error: &RecordError) -> anyhow::Error {
    anyhow::anyhow!("{source}: {error} [{}]\n  fix: {}", error.code(), error.hint())
}

fn parse_timestamp(text: &str) -> anyhow::Result<Timestamp> {
    Timestamp::parse(text).with_context(|| format!("`{text}` is not an RFC 3339 timestamp"))
}

fn read_record(path: &Path) -> anyhow::Result<RecordDocument> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    RecordDocument::parse(&bytes).map_err(|e| refused(&path.display().to_string(), &e))
}

/// Reads a secret-key file, refusing one that others may read, as ssh does.
fn read_secret_key(path: &Path) -> anyhow::Result<SigningKey> {
    let mode =
        fs::metadata(path).with_context(|| format!("cannot read key file {}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{}: secret-key file has mode {:o}, readable by others; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let text = fs::read_to_string(path)?;
    SigningKey::from_key_file(&text).with_context(|| format!("{}", path.display()))
}

fn write_secret_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (an existing key is never overwritten)", path.display()))?;
    file.write_all(key.to_key_file().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Creates `path`, refusing to replace an existing file.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (existing files are not replaced)", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Replaces `path` so that readers (a node reloading the registry) never see half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, text).with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
