//! `axp registry ...` driven as an operator would: the real binary over real files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// Runs `axp registry <args>`.
fn axp_registry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_axp")).arg("registry").args(args).output().expect("the axp binary runs")
}

/// Everything a failed assertion needs to be understood.
fn describe(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_success(output: &Output) {
    assert!(output.status.success(), "{}", describe(output));
}

fn assert_exit_code(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", describe(output));
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A demo registry in a temporary directory.
struct Demo {
    temp: TempDir,
    registry: PathBuf,
    keys: PathBuf,
}

impl Demo {
    fn new() -> Self {
        Self::init(&[])
    }

    /// `init-demo` with extra arguments (e.g. `--orgs`).
    fn init(extra: &[&str]) -> Self {
        let temp = TempDir::new().unwrap();
        let registry = temp.path().join("registry");
        let keys = temp.path().join("keys");
        let mut args = vec!["init-demo", "--dir", path(&registry), "--keys-dir", path(&keys)];
        args.extend_from_slice(extra);
        assert_success(&axp_registry(&args));
        Self { temp, registry, keys }
    }

    fn record(&self, org: &str) -> PathBuf {
        self.registry.join("orgs").join(format!("{org}.json"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.keys.join(format!("{name}.key"))
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let mut args = vec!["verify", path(&self.registry)];
        args.extend_from_slice(extra);
        axp_registry(&args)
    }

    fn sign(&self, org: &str) -> Output {
        let key = self.key(org);
        let record = self.record(org);
        axp_registry(&["sign", "--org-key", path(&key), "--record", path(&record)])
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_demo_verifies() {
    let demo = Demo::new();
    let output = demo.verify(&[]);
    assert_success(&output);
    assert!(stdout(&output).contains("`acme` serial 1"), "{}", describe(&output));
    assert!(stdout(&output).contains("`globex` serial 1"), "{}", describe(&output));
    for name in ["root", "acme", "globex"] {
        assert_eq!(mode(&demo.key(name)), 0o600, "{name}.key");
    }
    assert_eq!(mode(&demo.keys), 0o700);
}

#[test]
fn init_demo_orgs_chooses_the_demo_orgs() {
    let two = Demo::new();
    assert!(!two.record("initech").exists() && !two.key("initech").exists(), "the default stays acme and globex");

    let three = Demo::init(&["--orgs", "acme,globex,initech"]);
    let output = three.verify(&[]);
    assert_success(&output);
    for org in ["acme", "globex", "initech"] {
        assert!(stdout(&output).contains(&format!("`{org}` serial 1")), "{}", describe(&output));
        assert_eq!(mode(&three.key(org)), 0o600, "{org}.key");
    }
    let resolve = axp_registry(&["resolve", "agent://initech/support/desk", "--dir", path(&three.registry)]);
    assert_success(&resolve);
    // initech's demo ports are those of the federation kit's third org.
    for line in [
        "node: initech-node-1",
        "matched: route agent://initech/support",
        "matrix_user_id: @axp-initech:localhost:8483",
        "homeserver_url: http://127.0.0.1:8010",
        "http_url: http://127.0.0.1:7403",
    ] {
        assert!(stdout(&resolve).lines().any(|printed| printed == line), "{line}: {}", describe(&resolve));
    }

    let temp = TempDir::new().unwrap();
    let registry = temp.path().join("registry");
    let keys = temp.path().join("keys");
    for (orgs, complaint) in [("acme,umbrella", "`umbrella` is not a demo org"), ("acme,acme", "named twice")] {
        let output = axp_registry(&["init-demo", "--dir", path(&registry), "--keys-dir", path(&keys), "--orgs", orgs]);
        assert_exit_code(&output, 2);
        assert!(stderr(&output).contains(complaint), "{}", describe(&output));
        assert!(!registry.exists() && !keys.exists(), "a refused --orgs writes nothing");
    }
}

#[test]
fn init_demo_refuses_to_overwrite() {
    let demo = Demo::new();
    let output = axp_registry(&["init-demo", "--dir", path(&demo.registry), "--keys-dir", path(&demo.keys)]);
    assert_exit_code(&output, 2);
    assert!(stderr(&output).contains("never overwrites"), "{}", describe(&output));
}

#[test]
fn digest_matches_verify_and_changes_with_the_records() {
    let demo = Demo::new();
    let verify = demo.verify(&[]);
    let digest = axp_registry(&["digest", "--dir", path(&demo.registry)]);
    assert_success(&digest);
    let printed = stdout(&digest).trim().to_owned();
    assert_eq!(printed.len(), 64, "{}", describe(&digest));
    assert!(stdout(&verify).contains(&format!("digest   {printed}")));
    assert_success(&demo.sign("globex"));
    let after = axp_registry(&["digest", "--dir", path(&demo.registry)]);
    assert_ne!(stdout(&after).trim(), printed);
}

#[test]
fn a_tampered_byte_is_refused_naming_the_file() {
    let demo = Demo::new();
    let record = demo.record("acme");
    let mut bytes = fs::read(&record).unwrap();
    let at = bytes
        .windows(b"127.0.0.1".len())
        .position(|window| window == b"127.0.0.1")
        .expect("the demo record has a loopback URL");
    bytes[at + 2] = b'6'; // 127.0.0.1 -> 126.0.0.1
    fs::write(&record, bytes).unwrap();

    let output = demo.verify(&[]);
    assert_exit_code(&output, 1);
    let message = stderr(&output);
    assert!(message.contains(path(&record)), "{}", describe(&output));
    assert!(message.contains("field `signature`"), "{}", describe(&output));
    assert!(message.contains("[bad_signature]"), "{}", describe(&output));
    assert!(message.contains("fix: "), "{}", describe(&output));
    assert!(stdout(&output).contains("`globex` serial 1"), "the other org still verifies");
}

#[test]
fn restoring_an_older_serial_is_refused_as_rollback() {
    let demo = Demo::new();
    let serials = demo.temp.path().join("serials.json");
    let remember = ["--serials", path(&serials)];
    assert_success(&demo.verify(&remember));

    let record = demo.record("acme");
    let published = fs::read(&record).unwrap();
    let signed = demo.sign("acme");
    assert_success(&signed);
    assert!(stdout(&signed).contains("serial 2"), "{}", describe(&signed));
    assert_success(&demo.verify(&remember));

    fs::write(&record, published).unwrap();
    let output = demo.verify(&remember);
    assert_exit_code(&output, 1);
    let message = stderr(&output);
    assert!(message.contains(path(&record)), "{}", describe(&output));
    assert!(message.contains("[rollback]"), "{}", describe(&output));
    assert!(message.contains("serial 1 is lower than 2"), "{}", describe(&output));
    // Without the memory of serial 2 the old record is a valid record.
    assert_success(&demo.verify(&[]));
}

#[test]
fn keygen_writes_a_private_key_once() {
    let temp = TempDir::new().unwrap();
    let key = temp.path().join("org.key");
    let output = axp_registry(&["keygen", "--out", path(&key)]);
    assert_success(&output);
    assert_eq!(mode(&key), 0o600);
    let printed = stdout(&output);
    assert!(printed.contains("key_id: ed25519:"), "{}", describe(&output));
    let public_key = public_key_of(&output);
    assert!(fs::read_to_string(&key).unwrap().contains(&public_key));

    let before = fs::read(&key).unwrap();
    let again = axp_registry(&["keygen", "--out", path(&key)]);
    assert_exit_code(&again, 2);
    assert_eq!(fs::read(&key).unwrap(), before, "an existing key is never overwritten");
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let demo = Demo::new();
    let key = demo.key("acme");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let output = demo.sign("acme");
    assert_exit_code(&output, 2);
    assert!(stderr(&output).contains("chmod 600"), "{}", describe(&output));
}

#[test]
fn signing_with_another_orgs_key_is_refused() {
    let demo = Demo::new();
    let key = demo.key("globex");
    let record = demo.record("acme");
    let output = axp_registry(&["sign", "--org-key", path(&key), "--record", path(&record)]);
    assert_exit_code(&output, 2);
    assert!(stderr(&output).contains("[wrong_key]"), "{}", describe(&output));
    assert_success(&demo.verify(&[]));
}

#[test]
fn a_new_org_is_endorsed_then_signed() {
    let demo = Demo::new();
    let initech_key = demo.keys.join("initech.key");
    let keygen = axp_registry(&["keygen", "--out", path(&initech_key)]);
    assert_success(&keygen);
    let public_key = public_key_of(&keygen);
    let root_key = demo.key("root");

    let printed =
        axp_registry(&["endorse", "--root-key", path(&root_key), "--org", "initech", "--org-public-key", &public_key]);
    assert_success(&printed);
    assert!(stdout(&printed).contains("\"root_key_id\""), "{}", describe(&printed));

    let endorse = axp_registry(&[
        "endorse",
        "--root-key",
        path(&root_key),
        "--org",
        "initech",
        "--org-public-key",
        &public_key,
        "--dir",
        path(&demo.registry),
    ]);
    assert_success(&endorse);
    let unsigned = demo.verify(&[]);
    assert_exit_code(&unsigned, 1);
    assert!(stderr(&unsigned).contains("[unsigned]"), "{}", describe(&unsigned));

    assert_success(&demo.sign("initech"));
    assert_success(&demo.verify(&[]));
    let resolve = axp_registry(&["resolve", "agent://initech/x", "--dir", path(&demo.registry)]);
    assert_exit_code(&resolve, 1);
    assert!(stderr(&resolve).contains("[no_route]"), "{}", describe(&resolve));
}

#[test]
fn resolve_names_the_node_or_explains_why_not() {
    let demo = Demo::new();
    let dir = path(&demo.registry);
    let remote = axp_registry(&["resolve", "agent://globex/sales/bot", "--dir", dir]);
    assert_success(&remote);
    let text = stdout(&remote);
    assert!(text.contains("resolution: remote"), "{text}");
    assert!(text.contains("node: globex-node-1"), "{text}");
    assert!(text.contains("matched: route agent://globex/sales"), "{text}");
    assert!(text.contains("matrix_user_id: @axp-globex:localhost:8482"), "{text}");

    let fallback = axp_registry(&["resolve", "agent://globex/salesforce", "--dir", dir]);
    assert_success(&fallback);
    assert!(stdout(&fallback).contains("matched: default node"));

    let local = axp_registry(&["resolve", "agent://acme/ops/bot", "--dir", dir, "--local-org", "acme"]);
    assert_success(&local);
    assert!(stdout(&local).contains("resolution: local"));

    let unknown = axp_registry(&["resolve", "agent://initech/x", "--dir", dir]);
    assert_exit_code(&unknown, 1);
    assert!(stderr(&unknown).contains("[no_accepted_record]"), "{}", describe(&unknown));

    let malformed = axp_registry(&["resolve", "agent://globex", "--dir", dir]);
    assert_exit_code(&malformed, 2);
}

#[test]
fn the_example_registry_in_the_repository_verifies() {
    let registry = Path::new(env!("CARGO_MANIFEST_DIR")).join("registry-records");
    assert_success(&axp_registry(&["verify", path(&registry)]));
}

#[test]
fn a_missing_registry_is_reported_not_ok() {
    let temp = TempDir::new().unwrap();
    let output = axp_registry(&["verify", path(temp.path())]);
    assert_exit_code(&output, 1);
    assert!(stderr(&output).contains("[unreadable]"), "{}", describe(&output));
}

/// The public key printed by `keygen`.
fn public_key_of(keygen: &Output) -> String {
    stdout(keygen)
        .lines()
        .find_map(|line| line.strip_prefix("public_key: "))
        .expect("keygen prints the public key")
        .to_owned()
}
