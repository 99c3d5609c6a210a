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

/// matrix-sdk logs expected 404s (absent account data) as errors and warns about key backups
/// the node does not use on every room key; the node logs the failures that matter itself.
const DEFAULT_LOG_FILTER: &str = "info,matrix_sdk::http_client=off,matrix_sdk_crypto::backups=error";

fn init_logging(format: LogFormat, filter: Option<&str>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter.unwrap_or(DEFAULT_LOG_FILTER)));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
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
