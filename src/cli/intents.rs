//! `axp intents send|get|events|watch|resolve|transition|transfer` against a running node.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Remote, print_json};

#[derive(Debug, clap::Args)]
pub struct IntentsArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: IntentsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IntentsCommand {
    /// Submit an intent; prints its id.
    Send {
        /// The handler's address, agent://org/.../name.
        #[arg(long)]
        to: String,
        /// Intent type, e.g. intent.demo.v1.
        #[arg(long = "type")]
        intent_type: String,
        /// Payload as JSON, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The sending address (default: the key's own).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        reply_to: Option<String>,
        /// Groups related intents; a new UUID by default.
        #[arg(long)]
        correlation_id: Option<String>,
        /// Makes a retried send return the first answer instead of a second intent.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show an intent's current state.
    Get { intent_id: String },
    /// Print an intent's lifecycle events.
    Events {
        intent_id: String,
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Follow an intent's events live; exits when it reaches a terminal status
    /// (0 for COMPLETED, 1 for FAILED, CANCELED or TIMED_OUT).
    Watch {
        intent_id: String,
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// End an intent: COMPLETED (with --result), FAILED (with --error) or CANCELED (with --reason).
    Resolve {
        intent_id: String,
        #[arg(long)]
        status: String,
        /// JSON result for COMPLETED (default {}).
        #[arg(long)]
        result: Option<String>,
        /// JSON error (or a plain message) for FAILED.
        #[arg(long)]
        error: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Report progress as the handler: ACKNOWLEDGED, IN_PROGRESS, or WAITING with --waiting-reason.
    Transition {
        intent_id: String,
        status: String,
        #[arg(long)]
        waiting_reason: Option<String>,
    },
    /// Hand the intent to another handler, on this node or another org's, as its handler.
    Transfer {
        intent_id: String,
        /// The address that takes the intent over.
        #[arg(long)]
        to: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(args: IntentsArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client();
    let json_output = args.remote.json;
    match args.command {
        IntentsCommand::Send { to, intent_type, payload, from, reply_to, correlation_id, idempotency_key } => {
            let mut body = json!({
                "intent_type": intent_type,
                "to_agent": to,
                "payload": read_json("--payload", &payload)?,
                "correlation_id": correlation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            });
            if let Some(from) = from {
                body["from_agent"] = json!(from);
            }
            if let Some(reply_to) = reply_to {
                body["reply_to"] = json!(reply_to);
            }
            let answer = client.post("/v1/intents", &body, idempotency_key.as_deref()).await?;
            if json_output {
                print_json(&answer);
            } else {
                println!("{}", answer["intent_id"].as_str().unwrap_or_default());
            }
        }
        IntentsCommand::Get { intent_id } => {
            let answer = client.get(&format!("/v1/intents/{intent_id}")).await?;
            if json_output {
                print_json(&answer);
            } else {
                print_intent(&answer["intent"]);
            }
        }
        IntentsCommand::Events { intent_id, since } => {
            let answer = client.get(&format!("/v1/intents/{intent_id}/events?since={since}")).await?;
            if json_output {
                print_json(&answer);
            } else {
                answer["events"].as_array().into_iter().flatten().for_each(print_event);
            }
        }
        IntentsCommand::Watch { intent_id, since } => return watch(&client, &intent_id, since, json_output).await,
        IntentsCommand::Resolve { intent_id, status, result, error, reason } => {
            let mut body = json!({"status": status.to_ascii_uppercase()});
            match body["status"].as_str() {
                Some("COMPLETED") => body["result"] = read_json("--result", result.as_deref().unwrap_or("{}"))?,
                Some("FAILED") => {
                    let error = error.context("--error is required with --status FAILED")?;
                    body["error"] = serde_json::from_str(&error).unwrap_or(Value::String(error));
                }
                _ => {}
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let answer = client.post(&format!("/v1/intents/{intent_id}/resolve"), &body, None).await?;
            print_change(&answer, json_output);
        }
        IntentsCommand::Transition { intent_id, status, waiting_reason } => {
            let mut body = json!({"status": status.to_ascii_uppercase()});
            if let Some(reason) = waiting_reason {
                body["waiting_reason"] = json!(reason.to_ascii_uppercase());
            }
            let answer = client.post(&format!("/v1/intents/{intent_id}/transition"), &body, None).await?;
            print_change(&answer, json_output);
        }
        IntentsCommand::Transfer { intent_id, to, reason } => {
            let mut body = json!({"to_agent": to});
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            let answer = client.post(&format!("/v1/intents/{intent_id}/transfer"), &body, None).await?;
            print_change(&answer, json_output);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_json(flag: &str, raw: &str) -> anyhow::Result<Value> {
    let text = match raw.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}"))?,
        None => raw.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{flag} is not valid JSON"))
}

async fn watch(
    client: &axp::client::Client,
    intent_id: &str,
    since: u64,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let mut next = since;
    loop {
        let mut terminal: Option<String> = None;
        client
            .stream(&format!("/v1/intents/{intent_id}/events/stream?since={next}&wait_seconds=30"), |frame| {
                if !frame.event.starts_with("intent.") {
                    return true;
                }
                let Ok(event) = serde_json::from_str::<Value>(&frame.data) else { return true };
                next = next.max(event["seq"].as_u64().unwrap_or(next));
                if json_output {
                    println!("{event}");
                } else {
                    print_event(&event);
                }
                let status = event["status"].as_str().unwrap_or_default();
                if matches!(status, "COMPLETED" | "FAILED" | "CANCELED" | "TIMED_OUT") {
                    terminal = Some(status.to_owned());
                    return false;
                }
                true
            })
            .await?;
        match terminal.as_deref() {
            Some("COMPLETED") => return Ok(ExitCode::SUCCESS),
            Some(_) => return Ok(ExitCode::from(1)),
            None => {}
        }
        // The stream closed without a terminal event: was it already over before `since`?
        let intent = client.get(&format!("/v1/intents/{intent_id}")).await?;
        match intent["intent"]["status"].as_str() {
            Some("COMPLETED") => return Ok(ExitCode::SUCCESS),
            Some("FAILED" | "CANCELED" | "TIMED_OUT") => return Ok(ExitCode::from(1)),
            Some(_) => {}
            None => bail!("the node's answer has no intent status"),
        }
    }
}

fn print_intent(intent: &Value) {
    let text = |name: &str| intent[name].as_str().unwrap_or("-").to_owned();
    println!("intent   {}", text("intent_id"));
    println!("type     {}", text("intent_type"));
    println!("from     {}", text("from_agent"));
    println!("to       {}", text("to_agent"));
    if intent["handler"] != intent["to_agent"] {
        println!("handler  {}", text("handler"));
    }
    let waiting = intent["waiting_reason"].as_str().map(|reason| format!(" ({reason})")).unwrap_or_default();
    println!("status   {}{waiting}  seq {}", text("status"), intent["seq"]);
    println!("updated  {}", text("updated_at"));
    for field in ["result", "error"] {
        if !intent[field].is_null() {
            println!("{field:<8} {}", intent[field]);
        }
    }
}

fn print_event(event: &Value) {
    let waiting = event["waiting_reason"].as_str().map(|reason| format!(" ({reason})")).unwrap_or_default();
    println!(
        "{:>4}  {:<28} {:<13} {}  {}{waiting}",
        event["seq"],
        event["event_type"].as_str().unwrap_or("?"),
        event["status"].as_str().unwrap_or("?"),
        event["at"].as_str().unwrap_or("?"),
        event["actor"].as_str().unwrap_or("")
    );
}

fn print_change(answer: &Value, json_output: bool) {
    if json_output {
        print_json(answer);
    } else {
        print_event(&answer["event"]);
    }
}
