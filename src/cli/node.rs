//! `axp node init|run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use axp::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Create a data dir with a working axp.toml and a first admin API key.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// The organisation this node serves (agent://<org>/... is local).
        #[arg(long, default_value = "local")]
        org: String,
    },
    /// Serve the node's API until SIGINT or SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run(command: NodeCommand, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    match command {
        NodeCommand::Init { data_dir, listen, org } => {
            let done = runtime.block_on(axp::node::init(&data_dir, listen, &org))?;
            println!("initialised node for org {org:?}");
            println!("  config:    {}", done.config_path.display());
            println!("  admin key: {} (mode 0600)", done.admin_key_path.display());
            println!();
            println!("admin API key (shown once; it is also in the file above):");
            println!("{}", done.admin_token);
            println!();
            println!("start it with: axp node run --config {}", done.config_path.display());
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Run { config } => {
            let config =
                Config::load(&config, |name| std::env::var(name).ok()).with_context(|| "cannot start the node")?;
            init_logging(log_format.unwrap_or(config.log.format), config.log.filter.as_deref());
            runtime.block_on(axp::node::run(config, shutdown_signal(), |addr| {
                tracing::info!(%addr, "node listening");
                println!("axp node listening on http://{addr}");
            }))?;
            tracing::info!("node stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

const DEFAULT_LOG_FILTER: &str = "info";

/// Log lines of matrix-sdk that report nothing wrong, by target prefix and a piece of their
/// message: the 404 for account data the node never set, the warning about room-key backups
/// (the node uses none) on every room-key change, and the push-rule context of a room whose
/// state is still loading (push rules mean nothing to a node). Left in, they bury the node's
/// own warnings; every other line of these targets stays, so real HTTP failures still show.
const EXPECTED_NOISE: [(&str, &str); 3] = [
    ("matrix_sdk::http_client", "Account data not found"),
    ("matrix_sdk_crypto::backups", "no backup key was found"),
    ("matrix_sdk::room", "Could not compute power levels for push conditions"),
];

/// Drops the [`EXPECTED_NOISE`] lines whatever the filter (`RUST_LOG`, the config's
/// `log.filter` or the default).
struct ExpectedNoise;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ExpectedNoise {
    fn event_enabled(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        !is_expected_noise(event)
    }
}

fn is_expected_noise(event: &tracing::Event<'_>) -> bool {
    let target = event.metadata().target();
    let mut wanted = EXPECTED_NOISE.iter().filter(|(prefix, _)| target.starts_with(prefix)).peekable();
    if wanted.peek().is_none() {
        return false;
    }
    let mut message = Message(String::new());
    event.record(&mut message);
    wanted.any(|(_, text)| message.0.contains(text))
}

/// The `message` field of an event, as text.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

fn init_logging(format: LogFormat, filter: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter.unwrap_or(DEFAULT_LOG_FILTER)));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Json => builder.json().finish().with(ExpectedNoise).init(),
        LogFormat::Text => builder.finish().with(ExpectedNoise).init(),
    }
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down: draining requests and flushing the store");
}

#[derive(Debug, clap::Subcommand)]
pub enum MatrixCommand {
    /// Log the node in once (creating its one device) and save the session in the data dir;
    /// run again, it restores the session. Prints the identity the registry must pin, as JSON.
    Login {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn matrix(command: MatrixCommand) -> anyhow::Result<ExitCode> {
    match command {
        MatrixCommand::Login { config } => {
            let config = Config::load(&config, |name| std::env::var(name).ok())?;
            let identity = super::runtime()?.block_on(axp::transport::matrix::login(&config))?;
            println!("{}", serde_json::to_string(&identity)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn expected_matrix_sdk_noise_is_dropped_and_real_problems_stay() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
            .with(ExpectedNoise);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "matrix_sdk_crypto::backups", "Trying to backup room keys but no backup key was found");
            tracing::error!(target: "matrix_sdk::http_client", "Error while sending request: Api(Server(ClientApi(Error {{ status_code: 404, body: Standard {{ message: \"Account data not found\" }} }})))");
            tracing::error!(target: "matrix_sdk::room", "Could not compute power levels for push conditions: Local cache doesn't contain all necessary data to perform the action.");
            tracing::error!(target: "matrix_sdk::http_client", "Error while sending request: connection refused");
            tracing::warn!(target: "matrix_sdk_crypto::backups", "backup upload failed");
            tracing::warn!(target: "axp::audit", "Account data not found, no backup key was found");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        for dropped in ["Trying to backup", "status_code: 404", "push conditions"] {
            assert!(!text.contains(dropped), "{dropped} in {text}");
        }
        for kept in ["connection refused", "backup upload failed", "axp::audit"] {
            assert!(text.contains(kept), "{kept} missing from {text}");
        }
    }
}
