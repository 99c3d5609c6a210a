//! `axp agents list|show|bind` and `axp deliveries list|show|replay` against a running node.

use std::process::ExitCode;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Remote, print_json};

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: AgentsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AgentsCommand {
    /// Agents the key may act for.
    List,
    /// One agent with its binding.
    Show { address: String },
    /// Set how the agent receives intents: exactly one of --stream, --poll, --http URL, --inbox.
    Bind {
        address: String,
        #[arg(long, group = "mode")]
        stream: bool,
        #[arg(long, group = "mode")]
        poll: bool,
        /// The callback URL the node POSTs each intent to, signed.
        #[arg(long, group = "mode", value_name = "URL")]
        http: Option<String>,
        #[arg(long, group = "mode")]
        inbox: bool,
        /// The HMAC secret for --http (16+ characters); generated and printed once when absent.
        /// Prefer AXP_WEBHOOK_SECRET: flags show up in process listings.
        #[arg(long, env = "AXP_WEBHOOK_SECRET", hide_env_values = true, requires = "http")]
        secret: Option<String>,
        /// Time limit of one delivery attempt for --http.
        #[arg(long, requires = "http")]
        timeout_seconds: Option<u64>,
    },
}

#[derive(Debug, clap::Args)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: DeliveriesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DeliveriesCommand {
    /// Push deliveries, e.g. `--status dead_lettered`.
    List {
        #[arg(long)]
        status: Option<String>,
        /// Only this agent's (required unless the key is an admin key).
        #[arg(long)]
        agent: Option<String>,
    },
    Show {
        delivery_id: String,
    },
    /// Attempt a dead-lettered delivery again, with a fresh attempt budget.
    Replay {
        delivery_id: String,
    },
}

pub async fn run_agents(args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let answer = match args.command {
        AgentsCommand::List => client.get("/v1/agents").await?,
        AgentsCommand::Show { address } => client.get(&format!("/v1/agents/{address}")).await?,
        AgentsCommand::Bind { address, stream, poll, http, inbox, secret, timeout_seconds } => {
            let mode = match (stream, poll, &http, inbox) {
                (true, ..) => "stream",
                (_, true, ..) => "poll",
                (_, _, Some(_), _) => "http",
                (.., true) => "inbox",
                _ => bail!("give one of --stream, --poll, --http URL or --inbox"),
            };
            let mut body = json!({"delivery_mode": mode});
            for (name, value) in [("callback_url", http.map(Value::from)), ("secret", secret.map(Value::from))] {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            if let Some(seconds) = timeout_seconds {
                body["timeout_seconds"] = json!(seconds);
            }
            client.post(&format!("/v1/agents/{address}/binding"), &body, None).await?
        }
    };
    if args.remote.json {
        print_json(&answer);
    } else if let Some(agents) = answer["agents"].as_array() {
        agents.iter().for_each(|agent| println!("{}", agent["address"].as_str().unwrap_or("?")));
    } else {
        let binding = if answer["binding"].is_object() { &answer["binding"] } else { &answer["agent"]["binding"] };
        let target = binding["callback_url"].as_str().map(|url| format!(" -> {url}")).unwrap_or_default();
        println!(
            "{}  {}{target}",
            binding["address"].as_str().unwrap_or("?"),
            binding["delivery_mode"].as_str().unwrap_or("?")
        );
        if let Some(secret) = binding["secret"].as_str() {
            println!("signing secret (shown once): {secret}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_deliveries(args: DeliveriesArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let answer = match args.command {
        DeliveriesCommand::List { status, agent } => {
            let query: Vec<String> = [("status", status), ("agent", agent)]
                .into_iter()
                .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
                .collect();
            client.get(&format!("/v1/deliveries?{}", query.join("&"))).await?
        }
        DeliveriesCommand::Show { delivery_id } => client.get(&format!("/v1/deliveries/{delivery_id}")).await?,
        DeliveriesCommand::Replay { delivery_id } => {
            client.post(&format!("/v1/deliveries/{delivery_id}/replay"), &json!({}), None).await?
        }
    };
    if args.remote.json {
        print_json(&answer);
    } else if let Some(deliveries) = answer["deliveries"].as_array() {
        deliveries.iter().for_each(print_delivery);
    } else {
        print_delivery(&answer["delivery"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_delivery(delivery: &Value) {
    let text = |name: &str| delivery[name].as_str().unwrap_or("-").to_owned();
    println!(
        "{}  {:<13} attempts={}  intent={}  {}  {}",
        text("delivery_id"),
        text("status"),
        delivery["attempts"],
        text("intent_id"),
        text("callback_url"),
        text("last_error")
    );
}
