//! The node's configuration: one TOML file (`axp.toml`) plus `AXP_*` environment overrides.
//!
//! Owns parsing, defaults and validation. It does not open anything the config names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CONFIG_FILE: &str = "axp.toml";
/// The idempotency window may not be shorter than this (AXP spec §3.2).
const MIN_IDEMPOTENCY_TTL_HOURS: u64 = 24;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub web: WebSection,
    /// The SMTP server for task emails; without it no email is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSection>,
    /// The shared registry; without it the node is standalone and every address is local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySection>,
    /// The node's Matrix account; with a registry, intents for other orgs travel over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixSection>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSection {
    pub homeserver_url: url::Url,
    /// The node's account, `@name:server`.
    pub user_id: String,
    /// The account's password, read only for the first login (later starts restore the session).
    pub password_file: PathBuf,
    /// The passphrase that encrypts matrix-sdk's SQLite stores in the data dir.
    pub store_passphrase_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// The registry directory (`root.json`, `orgs/`); relative paths are relative to the config file.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The organisation this node serves: `agent://<org>/...` addresses are local.
    pub org: String,
    /// Where the HTTP API listens. Loopback unless the operator says otherwise.
    pub listen: SocketAddr,
    /// The data dir; relative paths are relative to the config file.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted intent `payload`, in bytes of JSON.
    pub max_payload_bytes: usize,
    pub idempotency_ttl_hours: u64,
    /// Requests per second per API key; 0 turns rate limiting off.
    pub rate_limit_per_second: u32,
    /// How long an intent handed out by a poll stays leased to that poller.
    pub poll_lease_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 128 * 1024,
            idempotency_ttl_hours: 72,
            rate_limit_per_second: 0,
            poll_lease_seconds: 30,
        }
    }
}

/// Push deliveries to `http`-bound agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Time limit of one attempt, unless the binding sets its own.
    pub timeout_seconds: u64,
    /// Attempts before a delivery is dead-lettered and its intent fails, unless the intent sets
    /// `max_delivery_attempts`.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles with each further failure.
    pub retry_base_ms: u64,
    pub retry_max_seconds: u64,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Deliver to loopback, private and link-local addresses (refused by default: a callback
    /// URL must not reach inside the node's network).
    pub allow_private_targets: bool,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            timeout_seconds: 10,
            max_attempts: 8,
            retry_base_ms: 1000,
            retry_max_seconds: 3600,
            concurrency: 64,
            allow_private_targets: false,
        }
    }
}

/// The pages people answer tasks on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Where people reach this node, for the links in emails (`https://tasks.acme.example`).
    /// Unset: `http://` and the address the node listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<url::Url>,
    /// How long a sign-in to the task list lasts.
    pub session_hours: u64,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection { public_url: None, session_hours: 12 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the same host).
    None,
    /// STARTTLS on the submission port, required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSection {
    pub smtp_host: String,
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The SMTP password, in a file of its own (never in this file or the logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The From header, `Name <address>` or an address.
    pub from: String,
    /// How long a magic link in a task email stays valid.
    #[serde(default = "default_link_ttl")]
    pub link_ttl_seconds: u64,
    /// Attempts before a mail is given up.
    #[serde(default = "default_mail_attempts")]
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles with each further failure.
    #[serde(default = "default_mail_retry_ms")]
    pub retry_base_ms: u64,
    /// Emails of agent addresses, for escalations to an agent that people stand behind.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub contacts: std::collections::BTreeMap<String, String>,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_link_ttl() -> u64 {
    72 * 3600
}

fn default_mail_attempts() -> u32 {
    8
}

fn default_mail_retry_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `axp=debug`.
    pub filter: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Config {
    /// A working configuration for a new data dir.
    pub fn new(org: &str, listen: SocketAddr) -> Config {
        Config {
            node: NodeSection { org: org.to_owned(), listen, data_dir: PathBuf::from(".") },
            limits: Limits::default(),
            log: LogSection::default(),
            delivery: DeliverySection::default(),
            web: WebSection::default(),
            email: None,
            registry: None,
            matrix: None,
        }
    }

    /// Reads `path`, applies `AXP_*` overrides from `env`, resolves the data dir and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|error| ConfigError::Parse { path: path.to_owned(), message: error.to_string() })?;
        config.apply_env(env)?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if config.node.data_dir.is_relative() {
            config.node.data_dir = base.join(&config.node.data_dir);
        }
        if let Some(registry) = config.registry.as_mut().filter(|registry| registry.dir.is_relative()) {
            registry.dir = base.join(&registry.dir);
        }
        if let Some(file) = config.email.as_mut().and_then(|email| email.password_file.as_mut())
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if let Some(matrix) = config.matrix.as_mut() {
            for file in [&mut matrix.password_file, &mut matrix.store_passphrase_file] {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = env("AXP_LISTEN") {
            self.node.listen = listen.parse().map_err(|_| ConfigError::Invalid {
                field: "AXP_LISTEN",
                message: format!("{listen:?} is not host:port"),
            })?;
        }
        if let Some(dir) = env("AXP_DATA_DIR") {
            self.node.data_dir = PathBuf::from(dir);
        }
        if let Some(dir) = env("AXP_REGISTRY_DIR") {
            self.registry = Some(RegistrySection { dir: PathBuf::from(dir) });
        }
        if let Some(format) = env("AXP_LOG_FORMAT") {
            self.log.format = match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Invalid {
                        field: "AXP_LOG_FORMAT",
                        message: format!("{other:?} is neither text nor json"),
                    });
                }
            };
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::address::AgentAddress::parse(&format!("agent://{}/x", self.node.org))
            .map_err(|error| ConfigError::Invalid { field: "node.org", message: error.to_string() })?;
        if self.matrix.is_some() && self.registry.is_none() {
            return Err(ConfigError::Invalid {
                field: "matrix",
                message:
                    "a Matrix transport needs [registry] too: the registry names the peer nodes and pins their devices"
                        .into(),
            });
        }
        if self.limits.idempotency_ttl_hours < MIN_IDEMPOTENCY_TTL_HOURS {
            return Err(ConfigError::Invalid {
                field: "limits.idempotency_ttl_hours",
                message: format!("must be at least {MIN_IDEMPOTENCY_TTL_HOURS}"),
            });
        }
        if self.limits.max_payload_bytes == 0 || self.limits.poll_lease_seconds == 0 {
            return Err(ConfigError::Invalid {
                field: "limits",
                message: "max_payload_bytes and poll_lease_seconds must be positive".into(),
            });
        }
        let delivery = &self.delivery;
        if delivery.timeout_seconds == 0 || delivery.max_attempts == 0 || delivery.concurrency == 0 {
            return Err(ConfigError::Invalid {
                field: "delivery",
                message: "timeout_seconds, max_attempts and concurrency must be positive".into(),
            });
        }
        if let Some(email) = &self.email {
            if email.link_ttl_seconds == 0 || email.max_attempts == 0 {
                return Err(ConfigError::Invalid {
                    field: "email",
                    message: "link_ttl_seconds and max_attempts must be positive".into(),
                });
            }
            if email.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(ConfigError::Invalid {
                    field: "email.from",
                    message: format!(
                        "{:?} is not an address (use `Name <tasks@example.com>` or an address)",
                        email.from
                    ),
                });
            }
            if let Some((address, email)) = email.contacts.iter().find(|(_, email)| !crate::intent::is_email(email)) {
                return Err(ConfigError::Invalid {
                    field: "email.contacts",
                    message: format!("{email:?} (for {address}) is not an email address"),
                });
            }
        }
        if self.web.session_hours == 0 {
            return Err(ConfigError::Invalid { field: "web.session_hours", message: "must be positive".into() });
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn round_trips_and_resolves_the_data_dir_next_to_the_file() {
        let config = Config::new("acme", "127.0.0.1:7400".parse().unwrap());
        let (dir, path) = write(&config.to_toml());
        let loaded = Config::load(&path, |_| None).unwrap();
        assert_eq!(loaded.node.data_dir, dir.path().join("."));
        assert_eq!(loaded.limits.max_payload_bytes, 128 * 1024);
    }

    #[test]
    fn env_overrides_win_and_bad_values_are_named() {
        let (_dir, path) = write(&Config::new("acme", "127.0.0.1:7400".parse().unwrap()).to_toml());
        let loaded = Config::load(&path, |name| (name == "AXP_LISTEN").then(|| "127.0.0.1:9".to_owned())).unwrap();
        assert_eq!(loaded.node.listen.port(), 9);
        let error = Config::load(&path, |name| (name == "AXP_LISTEN").then(|| "nowhere".to_owned())).unwrap_err();
        assert!(error.to_string().contains("AXP_LISTEN"), "{error}");
    }

    #[test]
    fn unknown_fields_and_bad_orgs_are_refused() {
        let (_dir, path) = write("[node]\norg = \"acme\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \".\"\ntypo = 1\n");
        assert!(matches!(Config::load(&path, |_| None), Err(ConfigError::Parse { .. })));
        let (_dir, path) = write("[node]\norg = \"Not Valid\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \".\"\n");
        assert!(matches!(Config::load(&path, |_| None), Err(ConfigError::Invalid { field: "node.org", .. })));
        let (_dir, path) = write(
            "[node]\norg = \"acme\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \".\"\n[limits]\nidempotency_ttl_hours = 1\n",
        );
        assert!(matches!(
            Config::load(&path, |_| None),
            Err(ConfigError::Invalid { field: "limits.idempotency_ttl_hours", .. })
        ));
    }
}
