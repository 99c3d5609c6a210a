//! Command tree of the `axp` binary and the dispatch to each family.

mod agents;
mod bench;
mod bench_webhooks;
mod intents;
mod keys;
mod node;
pub mod registry;
mod tasks;

use std::process::ExitCode;

use axp::client::Client;
use axp::config::LogFormat;

#[derive(Debug, clap::Parser)]
#[command(name = "axp", version, about = "A node for AXP, the Intent Protocol")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, env = "AXP_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create and run a node.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Manage API keys of a running node (needs an admin key).
    Keys(keys::KeysArgs),
    /// Send, inspect, follow and resolve intents.
    Intents(intents::IntentsArgs),
    /// Human tasks this key may answer: list, show, approve, reject, submit.
    Tasks(tasks::TasksArgs),
    /// Agents and how they receive intents (stream, poll, signed http push, inbox).
    Agents(agents::AgentsArgs),
    /// Push deliveries to http-bound agents: list, show, replay dead letters.
    Deliveries(agents::DeliveriesArgs),
    /// The node's Matrix account.
    #[command(subcommand)]
    Matrix(node::MatrixCommand),
    /// Shared registry: keys, endorsements, signed org records, resolution.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Where the node is and which key to use, for commands that talk to a running node.
#[derive(Debug, clap::Args)]
struct Remote {
    /// Base URL of the node's API.
    #[arg(long, env = "AXP_URL", default_value = "http://127.0.0.1:7400")]
    url: String,
    /// API key (prefer the AXP_API_KEY variable: flags show up in process listings).
    #[arg(long, env = "AXP_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Print the node's JSON answers instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
}

impl Remote {
    fn client(&self) -> Client {
        Client::new(&self.url, &self.api_key)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Node(command) => node::run(command, cli.log_format),
        Command::Keys(args) => runtime()?.block_on(keys::run(args)),
        Command::Intents(args) => runtime()?.block_on(intents::run(args)),
        Command::Tasks(args) => runtime()?.block_on(tasks::run(args)),
        Command::Agents(args) => runtime()?.block_on(agents::run_agents(args)),
        Command::Deliveries(args) => runtime()?.block_on(agents::run_deliveries(args)),
        Command::Matrix(command) => node::matrix(command),
        Command::Registry(command) => registry::run(command),
        Command::Bench(command) => bench::run(command),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON values print"));
}
