//! `axp keys create|list|revoke` against a running node.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::{Remote, print_json};

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Issue a key; its token is printed once.
    Create {
        /// Who holds the key: a service, a team, a person.
        #[arg(long)]
        owner: String,
        /// An address (or prefix ending in /*) the key may act for; repeatable.
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// An admin key may act for every address and manage keys.
        #[arg(long)]
        admin: bool,
    },
    List,
    Revoke {
        key_id: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let answer = match args.command {
        KeysCommand::Create { owner, agents, admin } => {
            client.post("/v1/admin/keys", &json!({"owner": owner, "agents": agents, "admin": admin}), None).await?
        }
        KeysCommand::List => client.get("/v1/admin/keys").await?,
        KeysCommand::Revoke { key_id } => {
            client.post(&format!("/v1/admin/keys/{key_id}/revoke"), &json!({}), None).await?
        }
    };
    if args.remote.json {
        print_json(&answer);
    } else if let Some(token) = answer["token"].as_str() {
        print_key(&answer["key"]);
        println!("token (shown once): {token}");
    } else if let Some(keys) = answer["keys"].as_array() {
        keys.iter().for_each(print_key);
    } else {
        print_key(&answer["key"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_key(key: &Value) {
    let agents: Vec<&str> = key["agents"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let state = if key["revoked_at"].is_string() { "revoked" } else { "active" };
    let admin = if key["admin"] == true { " admin" } else { "" };
    println!(
        "{}  {state}{admin}  owner={}  agents={}",
        key["key_id"].as_str().unwrap_or("?"),
        key["owner"].as_str().unwrap_or("?"),
        agents.join(",")
    );
}
