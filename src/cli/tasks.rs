//! `axp tasks list|show|approve|reject|submit`: a person's human tasks on a running node.
//!
//! Answers go to `POST /v1/intents/{id}/resume` with a `task_result` and `x-axp-channel: cli`.
//! Does not validate answers (the node does) and does not upload files: `--file` becomes an
//! evidence reference `{name, size, sha256}` computed here, and the file stays where it is.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Remote, print_json};

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TasksCommand {
    /// Open tasks this key may answer (`GET /v1/me/tasks`).
    #[command(alias = "ls")]
    List {
        /// Only the tasks of this address.
        #[arg(long)]
        owner_agent: Option<String>,
    },
    /// A task and the intent it belongs to.
    Show { intent_id: String },
    /// Answer with the task type's positive outcome (approved, confirmed, completed, ...).
    Approve {
        intent_id: String,
        #[arg(long, short)]
        comment: Option<String>,
    },
    /// Decline the task; the intent is canceled.
    Reject {
        intent_id: String,
        #[arg(long, short)]
        comment: Option<String>,
    },
    /// What the node mailed people about their tasks (admin key), newest first.
    Mails {
        /// pending, sent, failed or skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only the mails about this intent.
        #[arg(long)]
        intent: Option<String>,
    },
    /// Answer with form fields, evidence files and any outcome.
    Submit {
        intent_id: String,
        /// The outcome (default: the task type's positive one).
        #[arg(long, short)]
        outcome: Option<String>,
        #[arg(long, short)]
        comment: Option<String>,
        /// A form field, NAME=VALUE; typed by the task's form_schema (repeatable).
        #[arg(long = "field", value_name = "NAME=VALUE")]
        fields: Vec<String>,
        /// A file as evidence: its name, size and sha256 are sent, not its content (repeatable).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<std::path::PathBuf>,
    },
}

pub async fn run(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let client = args.remote.client().with_channel("cli");
    let json_output = args.remote.json;
    let (intent_id, task_result) = match args.command {
        TasksCommand::List { owner_agent } => {
            let query = owner_agent.map(|owner| format!("?owner_agent={owner}")).unwrap_or_default();
            let answer = client.get(&format!("/v1/me/tasks{query}")).await?;
            if json_output {
                print_json(&answer);
            } else {
                println!("{:<38} {:<15} {:<24} TITLE", "INTENT ID", "TYPE", "ASSIGNED");
                for task in answer["tasks"].as_array().into_iter().flatten() {
                    let text = |value: &Value| value.as_str().unwrap_or("-").to_owned();
                    println!(
                        "{:<38} {:<15} {:<24} {}",
                        text(&task["intent_id"]),
                        task["human_task"]["task_type"].as_str().unwrap_or("approval"),
                        text(&task["assigned_at"]),
                        text(&task["human_task"]["title"])
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        TasksCommand::Show { intent_id } => {
            let answer = client.get(&format!("/v1/intents/{intent_id}")).await?;
            if json_output {
                print_json(&answer);
            } else {
                let intent = &answer["intent"];
                let waiting = intent["waiting_reason"].as_str().unwrap_or("");
                println!("intent   {}", intent["intent_id"].as_str().unwrap_or("-"));
                println!("status   {} {waiting}", intent["status"].as_str().unwrap_or("-"));
                println!("task     {}", serde_json::to_string_pretty(&intent["human_task"])?);
                println!("payload  {}", intent["payload"]);
            }
            return Ok(ExitCode::SUCCESS);
        }
        TasksCommand::Mails { status, intent } => {
            let query: Vec<String> = [("status", status), ("intent_id", intent)]
                .into_iter()
                .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
                .collect();
            let answer = client.get(&format!("/v1/admin/mails?{}", query.join("&"))).await?;
            if json_output {
                print_json(&answer);
            } else {
                for mail in answer["mails"].as_array().into_iter().flatten() {
                    let status = &mail["status"];
                    let detail = [&status["at"], &status["reason"], &status["error"], &mail["last_error"]]
                        .into_iter()
                        .find_map(|value| value.as_str())
                        .unwrap_or("");
                    println!(
                        "{}  {:<8} {:<14} to={}  intent={}  attempts={}  {detail}",
                        mail["id"].as_str().unwrap_or("-"),
                        status["state"].as_str().unwrap_or("-"),
                        mail["about"]["about"].as_str().unwrap_or("-"),
                        mail["to"]["value"].as_str().unwrap_or("-"),
                        mail["about"]["intent_id"].as_str().unwrap_or("-"),
                        mail["attempts"]
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        TasksCommand::Approve { intent_id, comment } => (intent_id, answer_of(None, comment)),
        TasksCommand::Reject { intent_id, comment } => (intent_id, answer_of(Some("rejected".into()), comment)),
        TasksCommand::Submit { intent_id, outcome, comment, fields, files } => {
            let mut task_result = answer_of(outcome, comment);
            let schema = if fields.is_empty() {
                Value::Null
            } else {
                let intent = client.get(&format!("/v1/intents/{intent_id}")).await?;
                intent["intent"]["human_task"]["form_schema"]["properties"].clone()
            };
            let mut data = Map::new();
            for field in &fields {
                let (name, raw) =
                    field.split_once('=').with_context(|| format!("--field {field:?} is not NAME=VALUE"))?;
                data.insert(name.to_owned(), typed(raw, schema[name]["type"].as_str()));
            }
            if !files.is_empty() {
                let mut evidence: Vec<Value> = data.remove("evidence").into_iter().collect();
                for path in &files {
                    evidence.push(evidence_reference(path)?);
                }
                data.insert("evidence".into(), Value::Array(evidence));
            }
            task_result.insert("data".into(), Value::Object(data));
            (intent_id, task_result)
        }
    };
    let body = json!({"task_result": task_result});
    let answer = client.post(&format!("/v1/intents/{intent_id}/resume"), &body, None).await?;
    if json_output {
        print_json(&answer);
    } else {
        let intent = &answer["intent"];
        println!(
            "{} {}: intent {} is {}",
            answer["task_result"]["outcome"].as_str().unwrap_or("?"),
            intent_id,
            intent["intent_id"].as_str().unwrap_or("?"),
            intent["status"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn answer_of(outcome: Option<String>, comment: Option<String>) -> Map<String, Value> {
    let mut task_result = Map::new();
    if let Some(outcome) = outcome {
        task_result.insert("outcome".into(), json!(outcome));
    }
    if let Some(comment) = comment {
        task_result.insert("comment".into(), json!(comment));
    }
    task_result
}

/// A command-line value as the form field's declared type wants it; left a string when it
/// does not parse (the node then says what is wrong).
fn typed(raw: &str, kind: Option<&str>) -> Value {
    let parsed = match kind {
        Some("integer") => raw.parse::<i64>().ok().map(Value::from),
        Some("number") => raw.parse::<f64>().ok().and_then(|n| serde_json::Number::from_f64(n).map(Value::Number)),
        Some("boolean") => raw.parse::<bool>().ok().map(Value::Bool),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn evidence_reference(path: &std::path::Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("--file {}: cannot read it", path.display()))?;
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        bail!("--file {}: the file name is not UTF-8", path.display());
    };
    Ok(json!({"name": name, "size": bytes.len(), "sha256": hex::encode(Sha256::digest(&bytes))}))
}
