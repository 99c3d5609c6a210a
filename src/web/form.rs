//! A submitted task page as a `task_result`: which inputs a task type shows, and how their
//! text becomes the JSON the task rules (`crate::intent::human_task`) validate. Pure.
//!
//! Inputs are named `outcome` (the pressed button), `comment`, `justification`, `assignee`,
//! `evidence` (text) and `evidence_file`, and `field.<name>` for the fields of the task's form.

use serde_json::{Map, Value, json};

use crate::intent::{FieldKind, HumanTask, TaskError, TaskType};

/// A file a person attached, as kept under the data dir (by its SHA-256).
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// What a page submission carried.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Submission {
    pub texts: Vec<(String, String)>,
    pub files: Vec<Attachment>,
}

impl Submission {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    fn filled(&self, name: &str) -> Option<&str> {
        self.text(name).map(str::trim).filter(|text| !text.is_empty())
    }
}

/// Which of the free inputs a task's page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    pub justification: bool,
    pub assignee: bool,
    pub evidence: bool,
}

pub fn inputs(task: &HumanTask) -> Inputs {
    Inputs {
        justification: task.task_type == TaskType::Override,
        assignee: task.task_type == TaskType::Assignment,
        evidence: task.task_type == TaskType::ManualAction || task.evidence_required,
    }
}

/// The button text of an outcome.
pub fn outcome_label(outcome: &str) -> String {
    match outcome {
        "approved" => "Approve".into(),
        "rejected" => "Reject".into(),
        "changes_requested" => "Request changes".into(),
        "override_approved" => "Approve the override".into(),
        "confirmed" => "Confirm".into(),
        "assigned" => "Assign".into(),
        "declined" => "Decline".into(),
        "provided" => "Send the clarification".into(),
        "completed" => "Mark as done".into(),
        "failed" => "Report it failed".into(),
        "submitted" => "Submit".into(),
        other => as_words(other),
    }
}

/// A machine name as people read it: `needs_info` → `Needs info`.
pub fn as_words(name: &str) -> String {
    let spaced = name.replace('_', " ");
    let mut chars = spaced.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// The `task_result` of a submission. A form field whose text is not of its type is refused
/// here, naming the field as the API would (`task_result.data.<name>`); everything else is
/// left to the task's own validation.
pub fn task_result(task: &HumanTask, submission: &Submission) -> Result<Map<String, Value>, TaskError> {
    let mut result = Map::new();
    if let Some(outcome) = submission.filled("outcome") {
        result.insert("outcome".into(), json!(outcome));
    }
    if let Some(comment) = submission.filled("comment") {
        result.insert("comment".into(), json!(comment));
    }
    let mut data = Map::new();
    let shown = inputs(task);
    for (shown, name) in [(shown.justification, "justification"), (shown.assignee, "assignee")] {
        if let Some(text) = submission.filled(name).filter(|_| shown) {
            data.insert(name.into(), json!(text));
        }
    }
    if shown.evidence {
        let mut evidence: Vec<Value> = submission
            .files
            .iter()
            .map(|file| json!({"name": file.name, "size": file.size, "sha256": file.sha256}))
            .collect();
        if let Some(text) = submission.filled("evidence") {
            evidence.insert(0, json!(text));
        }
        match evidence.len() {
            0 => {}
            1 => {
                data.insert("evidence".into(), evidence.remove(0));
            }
            _ => {
                data.insert("evidence".into(), Value::Array(evidence));
            }
        }
    }
    if let Some(schema) = &task.form_schema {
        for field in schema.fields() {
            let path = format!("task_result.data.{}", field.name);
            let raw = submission.text(&format!("field.{}", field.name));
            let value = match field.kind {
                // An unticked box sends nothing: it is false.
                FieldKind::Boolean => Some(json!(raw.is_some_and(|text| matches!(text, "on" | "true" | "yes")))),
                _ => match raw.map(str::trim).filter(|text| !text.is_empty()) {
                    None => None,
                    Some(text) => Some(typed(field.kind, text, &path)?),
                },
            };
            if let Some(value) = value {
                data.insert(field.name.to_owned(), value);
            }
        }
    }
    if !data.is_empty() {
        result.insert("data".into(), Value::Object(data));
    }
    Ok(result)
}

fn typed(kind: FieldKind, text: &str, path: &str) -> Result<Value, TaskError> {
    let refuse = |what: &str| TaskError::FormField { field: path.to_owned(), message: format!("must be {what}") };
    match kind {
        FieldKind::String | FieldKind::Boolean => Ok(json!(text)),
        FieldKind::Integer => text.parse::<i64>().map(|n| json!(n)).map_err(|_| refuse("a whole number")),
        FieldKind::Number => match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(json!(n)),
            _ => Err(refuse("a number")),
        },
    }
}

/// The id of the page input an error points at, for its message and `aria-invalid`.
pub fn input_of(error: &TaskError) -> Option<String> {
    let field = error.field()?;
    let name = field.strip_prefix("task_result.")?;
    Some(match name.strip_prefix("data.") {
        Some(name @ ("justification" | "assignee" | "evidence")) => name.to_owned(),
        Some(name) => format!("field.{name}"),
        None => name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(spec: Value) -> HumanTask {
        HumanTask::parse(&spec).unwrap()
    }

    fn submission(texts: &[(&str, &str)]) -> Submission {
        Submission {
            texts: texts.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
            files: Vec::new(),
        }
    }

    #[test]
    fn form_fields_take_their_types_and_an_unticked_box_is_false() {
        let task = task(json!({"title": "t", "task_type": "form", "form_schema": {"type": "object", "properties": {
            "amount": {"type": "number"}, "count": {"type": "integer"}, "ok": {"type": "boolean"}, "note": {"type": "string"}}}}));
        let result =
            task_result(&task, &submission(&[("field.amount", "12.5"), ("field.count", "3"), ("field.note", " ")]))
                .unwrap();
        assert_eq!(Value::Object(result), json!({"data": {"amount": 12.5, "count": 3, "ok": false}}));
        let error = task_result(&task, &submission(&[("field.count", "3.5")])).unwrap_err();
        assert_eq!(error.field(), Some("task_result.data.count"));
        assert_eq!(input_of(&error).as_deref(), Some("field.count"));
    }

    #[test]
    fn evidence_text_and_files_become_one_list_and_other_inputs_only_where_shown() {
        let task = task(json!({"title": "t", "task_type": "manual_action"}));
        let mut sent = submission(&[("outcome", "completed"), ("evidence", "done"), ("assignee", "bob")]);
        sent.files.push(Attachment { name: "photo.jpg".into(), size: 3, sha256: "a".repeat(64) });
        let result = task_result(&task, &sent).unwrap();
        assert_eq!(
            Value::Object(result),
            json!({"outcome": "completed", "data": {"evidence": ["done", {"name": "photo.jpg", "size": 3, "sha256": "a".repeat(64)}]}})
        );
        assert!(task.validate(&task_result(&task, &submission(&[("outcome", "completed")])).unwrap()).is_err());
    }

    #[test]
    fn errors_point_at_page_inputs() {
        let missing = TaskError::Missing { field: "task_result.comment".into(), why: "" };
        assert_eq!(input_of(&missing).as_deref(), Some("comment"));
        let evidence = TaskError::Missing { field: "task_result.data.evidence".into(), why: "" };
        assert_eq!(input_of(&evidence).as_deref(), Some("evidence"));
        assert_eq!(outcome_label("changes_requested"), "Request changes");
        assert_eq!(outcome_label("needs_info"), "Needs info");
    }
}
