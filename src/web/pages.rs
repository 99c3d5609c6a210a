//! The HTML of the task pages: plain server-rendered documents that work without JavaScript,
//! with a label for every input, errors tied to their inputs (`aria-describedby`) and listed
//! first in an alert. maud escapes every interpolated value. No I/O.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::form::{Inputs, as_words, input_of, outcome_label};
use crate::intent::{FieldKind, HumanTask, IntentRecord, TaskError};

const STYLE: &str = "
body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#1a1a1a;background:#f6f6f4}
main{max-width:42rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;border:1px solid #ccc;border-radius:6px}
h1{font-size:1.5rem;margin-top:0}
label{display:block;font-weight:600;margin-top:1rem}
.hint{color:#4a4a4a;font-weight:normal;font-size:.9rem}
input[type=text],input[type=number],input[type=email],textarea,select{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;border:1px solid #767676;border-radius:4px}
input[type=checkbox]{width:1.2rem;height:1.2rem;vertical-align:middle}
textarea{min-height:5rem}
.error{color:#b00020;font-weight:600}
[aria-invalid=true]{border:2px solid #b00020}
.alert{border:2px solid #b00020;padding:.75rem 1rem;border-radius:4px;margin-bottom:1rem}
.actions{margin-top:1.5rem;display:flex;gap:.75rem;flex-wrap:wrap}
button{font:inherit;padding:.6rem 1.2rem;border-radius:4px;border:1px solid #1a4d8f;background:#1a4d8f;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#1a4d8f}
button:focus,a:focus,input:focus,textarea:focus,select:focus{outline:3px solid #f5a623;outline-offset:2px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.5rem;border-bottom:1px solid #ddd}
";

/// A whole document.
pub fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · axp" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    }
}

/// A page that only tells something: a refused link, a recorded answer.
pub fn message(title: &str, text: &str, next: Option<(&str, &str)>) -> Markup {
    document(
        title,
        html! {
            h1 { (title) }
            p role="status" { (text) }
            @if let Some((href, label)) = next { p { a href=(href) { (label) } } }
        },
    )
}

/// What a task page needs besides the task.
pub struct TaskPage<'a> {
    pub record: &'a IntentRecord,
    pub task: &'a HumanTask,
    pub inputs: Inputs,
    /// Where the form posts.
    pub action: &'a str,
    /// The session's CSRF token (pages reached by a magic link carry none: the link is the
    /// capability).
    pub csrf: Option<&'a str>,
    pub error: Option<&'a TaskError>,
    /// Values of the refused submission, shown again.
    pub values: &'a [(String, String)],
    pub email: &'a str,
}

fn value_of<'a>(page: &'a TaskPage, name: &str) -> &'a str {
    page.values.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value.as_str())
}

fn needs_comment(task: &HumanTask) -> bool {
    use crate::intent::TaskType::*;
    task.required_comment || matches!(task.task_type, Clarification)
}

pub fn task(page: &TaskPage) -> Markup {
    let record = page.record;
    let task = page.task;
    let invalid = page.error.and_then(input_of);
    // People read the input's label where the API names a JSON path.
    let message = page.error.map(|error| {
        let text = error.to_string();
        match (error.field(), invalid.as_deref()) {
            (Some(path), Some(input)) => text.replacen(path, &label_of(task, input), 1),
            _ => text,
        }
    });
    let error_for =
        |name: &str| -> Option<String> { (invalid.as_deref() == Some(name)).then(|| message.clone()).flatten() };
    // One text input with its label, hint and error.
    let text_input = |name: &str, label: &str, hint: Option<&str>, required: bool, area: bool| {
        let error = error_for(name);
        let hint_id = format!("{name}-hint");
        let error_id = format!("{name}-error");
        let described = [hint.map(|_| hint_id.as_str()), error.as_ref().map(|_| error_id.as_str())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        html! {
            label for=(name) { (label) @if required { " (required)" } }
            @if let Some(hint) = hint { div id=(hint_id) class="hint" { (hint) } }
            @if let Some(error) = &error { div id=(error_id) class="error" { (error) } }
            @if area {
                textarea id=(name) name=(name) aria-describedby=[(!described.is_empty()).then_some(&described)]
                    aria-invalid=[error.as_ref().map(|_| "true")] { (value_of(page, name)) }
            } @else {
                input type="text" id=(name) name=(name) value=(value_of(page, name))
                    aria-describedby=[(!described.is_empty()).then_some(&described)]
                    aria-invalid=[error.as_ref().map(|_| "true")];
            }
        }
    };
    let body = html! {
        h1 { (task.title) }
        @if let Some(error) = &message {
            div class="alert" role="alert" {
                p { strong { "Nothing was recorded: please correct this and send again." } }
                p {
                    @match &invalid {
                        Some(input) => a href=(format!("#{input}")) { (error) },
                        None => (error),
                    }
                }
            }
        }
        @if let Some(description) = &task.description { p { (description) } }
        dl {
            dt { "Task" } dd { (task.task_type.as_str().replace('_', " ")) }
            dt { "Requested by" } dd { (record.from_agent) }
            dt { "Intent" } dd { (record.intent_type) " " span class="hint" { (record.intent_id) } }
            @if let Some(due) = record.options.get("deadline_at").and_then(Value::as_str) { dt { "Due" } dd { (due) } }
            dt { "Answering as" } dd { (page.email) }
        }
        form method="post" action=(page.action) enctype="multipart/form-data" {
            @if let Some(csrf) = page.csrf { input type="hidden" name="csrf" value=(csrf); }
            @if let Some(schema) = &task.form_schema {
                fieldset {
                    legend { "Details" }
                    @for field in schema.fields() {
                        @let name = format!("field.{}", field.name);
                        @let label = label_of(task, &name);
                        @let error = error_for(&name);
                        @let error_id = format!("{name}-error");
                        @match (field.kind, field.choices) {
                            (FieldKind::Boolean, _) => {
                                label for=(name) {
                                    input type="checkbox" id=(name) name=(name) value="on"
                                        checked[value_of(page, &name) == "on"]
                                        aria-invalid=[error.as_ref().map(|_| "true")]
                                        aria-describedby=[error.as_ref().map(|_| &error_id)];
                                    " " (label) @if field.required { " (required)" }
                                }
                                @if let Some(description) = field.description { div class="hint" { (description) } }
                                @if let Some(error) = &error { div id=(error_id) class="error" { (error) } }
                            }
                            (_, Some(choices)) => {
                                label for=(name) { (label) @if field.required { " (required)" } }
                                @if let Some(description) = field.description { div class="hint" { (description) } }
                                @if let Some(error) = &error { div id=(error_id) class="error" { (error) } }
                                select id=(name) name=(name) aria-required=[field.required.then_some("true")]
                                    aria-invalid=[error.as_ref().map(|_| "true")]
                                    aria-describedby=[error.as_ref().map(|_| &error_id)] {
                                    option value="" { "Choose…" }
                                    @for choice in choices {
                                        @let text = choice.as_str().map_or_else(|| choice.to_string(), str::to_owned);
                                        option value=(text) selected[value_of(page, &name) == text] { (text) }
                                    }
                                }
                            }
                            (kind, None) => {
                                label for=(name) { (label) @if field.required { " (required)" } }
                                @if let Some(description) = field.description { div class="hint" { (description) } }
                                @if let Some(error) = &error { div id=(error_id) class="error" { (error) } }
                                input type=(if kind == FieldKind::String { "text" } else { "number" })
                                    step=[(kind == FieldKind::Number).then_some("any")]
                                    id=(name) name=(name) value=(value_of(page, &name))
                                    aria-required=[field.required.then_some("true")]
                                    aria-invalid=[error.as_ref().map(|_| "true")]
                                    aria-describedby=[error.as_ref().map(|_| &error_id)];
                            }
                        }
                    }
                }
            }
            @if page.inputs.justification {
                (text_input("justification", "Justification", Some("Why the override is right; required to approve it."), true, true))
            }
            @if page.inputs.assignee {
                (text_input("assignee", "Assignee", Some("Who takes the work; required to assign."), false, false))
            }
            @if page.inputs.evidence {
                (text_input("evidence", "Evidence", Some("What was done, as text, or attach files below; required to mark it done."), false, true))
                label for="evidence_file" { "Evidence files" }
                input type="file" id="evidence_file" name="evidence_file" multiple;
            }
            (text_input("comment", "Comment", Some(comment_hint(task)), needs_comment(task), true))
            div class="actions" {
                @match task.outcomes() {
                    Some(outcomes) => {
                        @for (index, outcome) in outcomes.iter().enumerate() {
                            button type="submit" name="outcome" value=(outcome)
                                class=[(index > 0).then_some("secondary")] { (outcome_label(outcome)) }
                        }
                    }
                    None => button type="submit" { "Submit" },
                }
            }
        }
    };
    document(&task.title, body)
}

/// The label of a page input: a form field's `title`, else its name in words.
fn label_of(task: &HumanTask, input: &str) -> String {
    let Some(name) = input.strip_prefix("field.") else { return as_words(input) };
    let title = task.form_schema.as_ref().and_then(|schema| schema.fields().find(|field| field.name == name)?.title);
    title.map_or_else(|| as_words(name), str::to_owned)
}

fn comment_hint(task: &HumanTask) -> &'static str {
    use crate::intent::TaskType::*;
    match task.task_type {
        _ if task.required_comment => "This task asks for a comment with every answer.",
        Review => "Required when requesting changes.",
        Clarification => "The clarification asked for.",
        ManualAction => "Required when reporting that it failed.",
        Override => "Can serve as the justification.",
        _ => "Optional.",
    }
}

/// One row of a person's task list.
pub struct ListedTask {
    pub intent_id: String,
    pub title: String,
    pub task_type: String,
    pub from: String,
    pub due: Option<String>,
}

pub fn task_list(email: &str, tasks: &[ListedTask]) -> Markup {
    document(
        "Your tasks",
        html! {
            h1 { "Your tasks" }
            p { "Signed in as " strong { (email) } "." }
            @if tasks.is_empty() {
                p role="status" { "Nothing is waiting for you." }
            } @else {
                table {
                    caption class="hint" { (tasks.len()) " open " @if tasks.len() == 1 { "task" } @else { "tasks" } }
                    thead { tr { th scope="col" { "Task" } th scope="col" { "Type" } th scope="col" { "From" } th scope="col" { "Due" } } }
                    tbody {
                        @for task in tasks {
                            tr {
                                td { a href=(format!("/tasks/{}", task.intent_id)) { (task.title) } }
                                td { (task.task_type.replace('_', " ")) }
                                td { (task.from) }
                                td { (task.due.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
            form method="post" action="/tasks/sign-out" { button type="submit" class="secondary" { "Sign out" } }
        },
    )
}

pub fn sign_in(notice: Option<&str>, error: Option<&str>) -> Markup {
    document(
        "Sign in",
        html! {
            h1 { "Sign in to your tasks" }
            @if let Some(notice) = notice { p role="status" { (notice) } }
            @if let Some(error) = error { div class="alert" role="alert" { p { (error) } } }
            p { "Enter the email address your tasks are sent to. We will email you a sign-in link." }
            form method="post" action="/tasks/sign-in" {
                label for="email" { "Email address" }
                input type="email" id="email" name="email" autocomplete="email" required;
                div class="actions" { button type="submit" { "Email me a sign-in link" } }
            }
        },
    )
}

/// The page a sign-in link opens: signing in is a button, so that a mail scanner following
/// the link spends nothing.
pub fn confirm_sign_in(action: &str, email: &str) -> Markup {
    document(
        "Sign in",
        html! {
            h1 { "Sign in to your tasks" }
            p { "Sign in as " strong { (email) } "?" }
            form method="post" action=(action) { div class="actions" { button type="submit" { "Sign in" } } }
        },
    )
}
