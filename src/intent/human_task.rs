//! Human tasks (`human_task` on create), as pure functions: parsing and checking the task when
//! the intent is created, validating a person's answer against it, and the lifecycle events the
//! task produces ([`IntentRecord::assign_human_task`], [`IntentRecord::answer_human_task`]).
//!
//! Owns the task semantics. It does not store anything, read a clock, authenticate anybody or
//! send notifications: the API decides who may answer and passes in who, when and via which
//! channel; email and web forms come later.
//!
//! Semantics (documented in `docs/api.md`, "Human tasks"):
//! - A task is open while the intent is WAITING with WAITING_FOR_HUMAN and has a `human_task`.
//! - Task types: the eight of the AXME README (`approval`, `form`, `review`, `override`,
//!   `confirmation`, `assignment`, `clarification`, `manual_action`) with their own rules, plus
//!   the other values of the spec's enum (`provide_data`, `attach_file`, ...), which get only
//!   the generic rules. Without `task_type` a task is an `approval`.
//! - The answer is a `task_result` `{outcome, comment, data{...}}`; fields other than these
//!   three are form fields flattened to the top level (as the AXME CLI sends them) and count as
//!   `data`. Without an outcome, the type's default applies (`approved`, `submitted`, ...).
//! - Outcomes: `allowed_outcomes` when given, otherwise the type's own list (any outcome for
//!   `form` and the generic types). `rejected` declines the task: only `required_comment` and
//!   the outcome list apply to it, and the intent ends CANCELED (the spec's human-in-loop
//!   branch "reject → CANCELED"). Every other outcome resumes the intent to IN_PROGRESS with the
//!   answer in the event's details, and the handler is offered the intent again.
//! - Per type (besides `required_comment`, `evidence_required` and `form_schema`, which apply
//!   to every type): `form` needs a `form_schema` at create; `review` needs a comment for
//!   `changes_requested`; `override` needs a justification (`comment` or `data.justification`);
//!   `assignment` with `assigned` needs `data.assignee`; `clarification` needs a comment;
//!   `manual_action` with `completed` needs `data.evidence` (text, or a file reference
//!   `{name, size, sha256}`, or a list of them), with `failed` a comment.
//! - `form_schema` is the JSON-schema subset [`FormSchema`] supports; anything else is refused
//!   at create, so that no form goes unvalidated.

use serde_json::{Map, Value, json};

use super::{EventType, IntentRecord, LifecycleError, LifecycleEvent, Status, WaitingReason};
use crate::address::AgentAddress;

/// The actor of the events the node appends when it starts a task.
pub const TASK_ACTOR: &str = "node:tasks";

/// Why a `human_task` or an answer to it was refused. `field` is the JSON path of the culprit
/// (`human_task.form_schema.properties.amount.type`, `task_result.data.amount`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("{field}: is required{why}")]
    Missing { field: String, why: &'static str },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field}: {outcome:?} is not an allowed outcome of this task; use one of {allowed}")]
    OutcomeNotAllowed { field: String, outcome: String, allowed: String },
    #[error("{field}: {message}")]
    FormField { field: String, message: String },
    #[error(
        "{field}: {message} (supported: type object with properties of type string, number, integer or boolean, enum, required, minLength, maxLength, minimum, maximum, additionalProperties false)"
    )]
    UnsupportedSchema { field: String, message: String },
    #[error("this intent has no open human task (it is {status}{reason})")]
    NotOpen { status: Status, reason: String },
}

impl TaskError {
    pub fn code(&self) -> &'static str {
        match self {
            TaskError::Missing { .. } => "field_required",
            TaskError::Invalid { .. } => "invalid_field",
            TaskError::OutcomeNotAllowed { .. } => "outcome_not_allowed",
            TaskError::FormField { .. } => "form_field_invalid",
            TaskError::UnsupportedSchema { .. } => "unsupported_form_schema",
            TaskError::NotOpen { .. } => "no_open_human_task",
        }
    }

    /// The JSON path of the field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            TaskError::Missing { field, .. }
            | TaskError::Invalid { field, .. }
            | TaskError::OutcomeNotAllowed { field, .. }
            | TaskError::FormField { field, .. }
            | TaskError::UnsupportedSchema { field, .. } => Some(field),
            TaskError::NotOpen { .. } => None,
        }
    }

    /// Whether the task is in the wrong state rather than the input wrong (409, not 422).
    pub fn is_conflict(&self) -> bool {
        matches!(self, TaskError::NotOpen { .. })
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> TaskError {
    TaskError::Invalid { field: field.into(), message: message.into() }
}

/// The outcome that declines a task and cancels the intent.
pub const REJECTED: &str = "rejected";

/// Task types with rules of their own; the rest of the spec's enum is `Generic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskType {
    Approval,
    Form,
    Review,
    Override,
    Confirmation,
    Assignment,
    Clarification,
    ManualAction,
    Generic(&'static str),
}

const GENERIC_TYPES: [&str; 9] = [
    "provide_data",
    "attach_file",
    "validate_real_world",
    "validate_output",
    "delegation",
    "reroute",
    "escalate",
    "delegate",
    "notification",
];

impl TaskType {
    pub fn parse(raw: &str) -> Option<TaskType> {
        Some(match raw {
            "approval" => TaskType::Approval,
            "form" => TaskType::Form,
            "review" => TaskType::Review,
            "override" => TaskType::Override,
            "confirmation" => TaskType::Confirmation,
            "assignment" => TaskType::Assignment,
            "clarification" => TaskType::Clarification,
            "manual_action" => TaskType::ManualAction,
            other => TaskType::Generic(GENERIC_TYPES.iter().find(|name| **name == other)?),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Approval => "approval",
            TaskType::Form => "form",
            TaskType::Review => "review",
            TaskType::Override => "override",
            TaskType::Confirmation => "confirmation",
            TaskType::Assignment => "assignment",
            TaskType::Clarification => "clarification",
            TaskType::ManualAction => "manual_action",
            TaskType::Generic(name) => name,
        }
    }

    /// The outcomes the type knows, when `allowed_outcomes` does not say; `None` is any.
    pub fn outcomes(self) -> Option<&'static [&'static str]> {
        Some(match self {
            TaskType::Approval => &["approved", REJECTED],
            TaskType::Review => &["approved", "changes_requested", REJECTED],
            TaskType::Override => &["override_approved", REJECTED],
            TaskType::Confirmation => &["confirmed", REJECTED],
            TaskType::Assignment => &["assigned", "declined", REJECTED],
            TaskType::Clarification => &["provided", REJECTED],
            TaskType::ManualAction => &["completed", "failed", REJECTED],
            TaskType::Form | TaskType::Generic(_) => return None,
        })
    }

    /// The outcome of an answer that names none (what `approve`/`submit` mean for the type).
    pub fn default_outcome(self) -> &'static str {
        match self {
            TaskType::Approval | TaskType::Review => "approved",
            TaskType::Override => "override_approved",
            TaskType::Confirmation => "confirmed",
            TaskType::Assignment => "assigned",
            TaskType::Clarification => "provided",
            TaskType::ManualAction => "completed",
            TaskType::Form | TaskType::Generic(_) => "submitted",
        }
    }
}

/// A checked `human_task`. The record keeps the original object; this is its reading.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanTask {
    pub title: String,
    pub description: Option<String>,
    pub task_type: TaskType,
    pub allowed_outcomes: Option<Vec<String>>,
    pub required_comment: bool,
    pub evidence_required: bool,
    pub assignees: Vec<String>,
    pub form_schema: Option<FormSchema>,
    /// Who gets the task by email (a magic link), besides assignees that are email addresses.
    pub notify_email: Option<String>,
}

const TASK_FIELDS: [&str; 9] = [
    "title",
    "description",
    "task_type",
    "allowed_outcomes",
    "required_comment",
    "assignees",
    "evidence_required",
    "form_schema",
    "notify_email",
];

fn string_of<'a>(object: &'a Map<String, Value>, path: &str, name: &str) -> Result<Option<&'a str>, TaskError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(format!("{path}.{name}"), "must be a string")),
    }
}

fn bool_of(object: &Map<String, Value>, path: &str, name: &str) -> Result<bool, TaskError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(invalid(format!("{path}.{name}"), "must be true or false")),
    }
}

/// A list of 1..=`max_items` non-empty strings of at most `max_len` characters.
fn strings_of(
    object: &Map<String, Value>,
    path: &str,
    name: &str,
    max_items: usize,
    max_len: usize,
) -> Result<Option<Vec<String>>, TaskError> {
    let field = format!("{path}.{name}");
    let items = match object.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if (1..=max_items).contains(&items.len()) => items,
        Some(_) => return Err(invalid(field, format!("must be a list of 1 to {max_items} strings"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item.as_str() {
            Some(text) if !text.is_empty() && text.chars().count() <= max_len => Ok(text.to_owned()),
            _ => Err(invalid(format!("{field}[{index}]"), format!("must be a string of 1 to {max_len} characters"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl HumanTask {
    /// Reads and checks the `human_task` of a create request; errors name `human_task.<field>`.
    pub fn parse(value: &Value) -> Result<HumanTask, TaskError> {
        const PATH: &str = "human_task";
        let object = value.as_object().ok_or_else(|| invalid(PATH, "must be a JSON object"))?;
        if let Some(unknown) = object.keys().find(|key| !TASK_FIELDS.contains(&key.as_str())) {
            return Err(invalid(format!("{PATH}.{unknown}"), "is not a field of a human task"));
        }
        let title = string_of(object, PATH, "title")?
            .filter(|title| !title.trim().is_empty())
            .ok_or(TaskError::Missing { field: format!("{PATH}.title"), why: " (a non-empty string)" })?;
        if title.chars().count() > 255 {
            return Err(invalid(format!("{PATH}.title"), "must be at most 255 characters"));
        }
        let description = string_of(object, PATH, "description")?.map(str::to_owned);
        if description.as_ref().is_some_and(|text| text.chars().count() > 2000) {
            return Err(invalid(format!("{PATH}.description"), "must be at most 2000 characters"));
        }
        let notify_email = string_of(object, PATH, "notify_email")?.map(str::to_owned);
        if let Some(email) = notify_email.as_deref().filter(|email| !is_email(email)) {
            return Err(invalid(format!("{PATH}.notify_email"), format!("{email:?} is not an email address")));
        }
        let task_type = match string_of(object, PATH, "task_type")? {
            None => TaskType::Approval,
            Some(raw) => TaskType::parse(raw).ok_or_else(|| {
                invalid(
                    format!("{PATH}.task_type"),
                    format!("{raw:?} is not a task type; use approval, form, review, override, confirmation, assignment, clarification, manual_action or {}", GENERIC_TYPES.join(", ")),
                )
            })?,
        };
        let form_schema = match object.get("form_schema").filter(|schema| !schema.is_null()) {
            Some(schema) => Some(FormSchema::parse(schema, &format!("{PATH}.form_schema"))?),
            None if task_type == TaskType::Form => {
                return Err(TaskError::Missing {
                    field: format!("{PATH}.form_schema"),
                    why: " for a form task (the fields the person fills in)",
                });
            }
            None => None,
        };
        Ok(HumanTask {
            title: title.to_owned(),
            description,
            task_type,
            allowed_outcomes: strings_of(object, PATH, "allowed_outcomes", 20, 64)?,
            required_comment: bool_of(object, PATH, "required_comment")?,
            evidence_required: bool_of(object, PATH, "evidence_required")?,
            assignees: strings_of(object, PATH, "assignees", 20, 383)?.unwrap_or_default(),
            form_schema,
            notify_email,
        })
    }

    /// The people who answer by email: `notify_email` and the assignees that are email
    /// addresses, lower-cased, each once.
    pub fn emails(&self) -> Vec<String> {
        let mut emails: Vec<String> = Vec::new();
        for email in self.notify_email.iter().chain(&self.assignees).filter(|raw| is_email(raw)) {
            let email = email.to_ascii_lowercase();
            if !emails.contains(&email) {
                emails.push(email);
            }
        }
        emails
    }

    /// The task of an intent, if it has one (its options were checked at create).
    pub fn of(record: &IntentRecord) -> Option<HumanTask> {
        record.options.get("human_task").and_then(|value| HumanTask::parse(value).ok())
    }

    /// The addresses that may answer the task of `record`: its handler, `escalate_to`, and the
    /// assignees that are agent addresses (emails and role names match no key).
    pub fn answerers(&self, record: &IntentRecord) -> Vec<AgentAddress> {
        let escalate_to = record.options.get("escalate_to").and_then(Value::as_str);
        [record.handler()]
            .into_iter()
            .chain(escalate_to)
            .chain(self.assignees.iter().map(String::as_str))
            .filter_map(|raw| AgentAddress::parse(raw).ok())
            .collect()
    }

    /// The outcomes a person may pick, in order; `None` is any.
    pub fn outcomes(&self) -> Option<Vec<&str>> {
        match &self.allowed_outcomes {
            Some(list) => Some(list.iter().map(String::as_str).collect()),
            None => self.task_type.outcomes().map(|list| list.to_vec()),
        }
    }

    /// Checks a person's `task_result` against the task and returns it in its normal form
    /// `{outcome, comment, data}` (flattened form fields moved into `data`).
    pub fn validate(&self, task_result: &Map<String, Value>) -> Result<Answer, TaskError> {
        const PATH: &str = "task_result";
        let outcome = string_of(task_result, PATH, "outcome")?
            .map(str::to_owned)
            .unwrap_or_else(|| self.task_type.default_outcome().to_owned());
        if let Some(allowed) = self.outcomes()
            && !allowed.contains(&outcome.as_str())
        {
            return Err(TaskError::OutcomeNotAllowed {
                field: format!("{PATH}.outcome"),
                outcome,
                allowed: allowed.join(", "),
            });
        }
        let comment = string_of(task_result, PATH, "comment")?.map(str::trim).filter(|text| !text.is_empty());
        if comment.is_some_and(|text| text.chars().count() > 1000) {
            return Err(invalid(format!("{PATH}.comment"), "must be at most 1000 characters"));
        }
        let mut data = match task_result.get("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(data)) => data.clone(),
            Some(_) => return Err(invalid(format!("{PATH}.data"), "must be a JSON object")),
        };
        for (name, value) in task_result {
            if !matches!(name.as_str(), "outcome" | "comment" | "data") {
                data.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
        let needs_comment = |why: &'static str| match comment {
            Some(_) => Ok(()),
            None => Err(TaskError::Missing { field: format!("{PATH}.comment"), why }),
        };
        if self.required_comment {
            needs_comment(" by this task (required_comment)")?;
        }
        let declined = outcome == REJECTED;
        if !declined {
            match (self.task_type, outcome.as_str()) {
                (TaskType::Review, "changes_requested") => needs_comment(" to request changes")?,
                (TaskType::Override, _) if !has_text(&data, "justification") => {
                    needs_comment(" as the justification of an override (or data.justification)")?
                }
                (TaskType::Assignment, "assigned") if !has_text(&data, "assignee") => {
                    return Err(TaskError::Missing {
                        field: format!("{PATH}.data.assignee"),
                        why: " (who takes the work) for outcome assigned",
                    });
                }
                (TaskType::Clarification, _) => needs_comment(" (the clarification asked for)")?,
                (TaskType::ManualAction, "completed") => check_evidence(&data, " of the action done")?,
                (TaskType::ManualAction, "failed") => needs_comment(" saying why the action failed")?,
                _ => {}
            }
            if self.evidence_required {
                check_evidence(&data, " by this task (evidence_required)")?;
            }
            if let Some(schema) = &self.form_schema {
                schema.validate(&data, &format!("{PATH}.data"))?;
            }
        }
        Ok(Answer { outcome, comment: comment.map(str::to_owned), data })
    }
}

/// An email address as a task names its people: one `@` between a non-empty local part and a
/// dotted domain, no spaces or angle brackets (the address goes into mail headers).
pub fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else { return false };
    !local.is_empty()
        && text.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"'))
}

fn has_text(data: &Map<String, Value>, name: &str) -> bool {
    data.get(name).and_then(Value::as_str).is_some_and(|text| !text.trim().is_empty())
}

/// Evidence is non-empty text, a file reference `{name, size, sha256}` or a list of those.
fn check_evidence(data: &Map<String, Value>, why: &'static str) -> Result<(), TaskError> {
    let field = "task_result.data.evidence";
    let is_file = |item: &Value| {
        item.get("name").and_then(Value::as_str).is_some_and(|name| !name.is_empty())
            && item.get("sha256").and_then(Value::as_str).is_some_and(|hash| hash.len() == 64)
    };
    match data.get("evidence") {
        None | Some(Value::Null) => Err(TaskError::Missing { field: field.into(), why }),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(()),
        Some(file @ Value::Object(_)) if is_file(file) => Ok(()),
        Some(Value::Array(items))
            if !items.is_empty()
                && items.iter().all(|item| is_file(item) || item.as_str().is_some_and(|t| !t.trim().is_empty())) =>
        {
            Ok(())
        }
        Some(_) => {
            Err(invalid(field, "must be non-empty text, a file reference {name, size, sha256} or a list of them"))
        }
    }
}

/// A validated answer in normal form.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub outcome: String,
    pub comment: Option<String>,
    pub data: Map<String, Value>,
}

impl Answer {
    pub fn declines(&self) -> bool {
        self.outcome == REJECTED
    }

    pub fn to_value(&self) -> Value {
        json!({"outcome": self.outcome, "comment": self.comment, "data": self.data})
    }
}

/// Who answered, when, and through which channel (`api`, `cli`, `approvals`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub by: String,
    pub at: String,
    pub via: String,
}

/// One form field's rules.
#[derive(Debug, Clone, PartialEq)]
struct FieldRule {
    kind: FieldKind,
    title: Option<String>,
    description: Option<String>,
    choices: Option<Vec<Value>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Number,
    Integer,
    Boolean,
}

/// The JSON-schema subset forms use: `type: object`, `properties` of type string, number,
/// integer or boolean with `enum`, `minLength`/`maxLength`, `minimum`/`maximum`; `required`;
/// `additionalProperties: false`. Annotations (`title`, `description`, `default`, `format`,
/// `$schema`, `examples`) are accepted and ignored; any other keyword is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct FormSchema {
    fields: Vec<(String, FieldRule)>,
    required: Vec<String>,
    closed: bool,
}

const ANNOTATIONS: [&str; 6] = ["title", "description", "default", "format", "$schema", "examples"];

fn unsupported(field: String, message: impl Into<String>) -> TaskError {
    TaskError::UnsupportedSchema { field, message: message.into() }
}

fn number_keyword(rule: &Map<String, Value>, path: &str, name: &str) -> Result<Option<f64>, TaskError> {
    rule.get(name)
        .map(|value| value.as_f64().ok_or_else(|| invalid(format!("{path}.{name}"), "must be a number")))
        .transpose()
}

fn length_keyword(rule: &Map<String, Value>, path: &str, name: &str) -> Result<Option<u64>, TaskError> {
    rule.get(name)
        .map(|value| value.as_u64().ok_or_else(|| invalid(format!("{path}.{name}"), "must be a non-negative integer")))
        .transpose()
}

impl FormSchema {
    pub fn parse(value: &Value, path: &str) -> Result<FormSchema, TaskError> {
        let object = value.as_object().ok_or_else(|| invalid(path, "must be a JSON object (a JSON schema)"))?;
        let mut schema = FormSchema { fields: Vec::new(), required: Vec::new(), closed: false };
        for (keyword, value) in object {
            let field = format!("{path}.{keyword}");
            match keyword.as_str() {
                "type" if value == "object" => {}
                "type" => return Err(unsupported(field, "a form is an object: type must be \"object\"")),
                "properties" => {
                    let properties = value.as_object().ok_or_else(|| invalid(&field, "must be a JSON object"))?;
                    for (name, rule) in properties {
                        schema.fields.push((name.clone(), FieldRule::parse(rule, &format!("{field}.{name}"))?));
                    }
                }
                "required" => {
                    let names = value.as_array().ok_or_else(|| invalid(&field, "must be a list of field names"))?;
                    for (index, name) in names.iter().enumerate() {
                        let name =
                            name.as_str().ok_or_else(|| invalid(format!("{field}[{index}]"), "must be a string"))?;
                        schema.required.push(name.to_owned());
                    }
                }
                "additionalProperties" => {
                    schema.closed = match value {
                        Value::Bool(open) => !open,
                        _ => return Err(unsupported(field, "only true or false is supported")),
                    }
                }
                name if ANNOTATIONS.contains(&name) => {}
                _ => return Err(unsupported(field, "this keyword is not supported")),
            }
        }
        Ok(schema)
    }

    /// The fields in schema order, as a page shows them.
    pub fn fields(&self) -> impl Iterator<Item = FormField<'_>> {
        self.fields.iter().map(|(name, rule)| FormField {
            name,
            kind: rule.kind,
            title: rule.title.as_deref(),
            description: rule.description.as_deref(),
            choices: rule.choices.as_deref(),
            required: self.required.contains(name),
        })
    }

    /// Validates form data; errors name `<path>.<field>`.
    pub fn validate(&self, data: &Map<String, Value>, path: &str) -> Result<(), TaskError> {
        for name in &self.required {
            if data.get(name).is_none_or(Value::is_null) {
                return Err(TaskError::Missing { field: format!("{path}.{name}"), why: " by the task's form" });
            }
        }
        for (name, value) in data {
            let field = format!("{path}.{name}");
            match self.fields.iter().find(|(known, _)| known == name) {
                Some((_, rule)) if !value.is_null() => rule.check(value, field)?,
                Some(_) => {}
                None if self.closed => {
                    return Err(TaskError::FormField { field, message: "is not a field of this form".into() });
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// A form field as a page shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FormField<'a> {
    pub name: &'a str,
    pub kind: FieldKind,
    pub title: Option<&'a str>,
    pub description: Option<&'a str>,
    pub choices: Option<&'a [Value]>,
    pub required: bool,
}

impl FieldRule {
    fn parse(value: &Value, path: &str) -> Result<FieldRule, TaskError> {
        let rule = value.as_object().ok_or_else(|| invalid(path, "must be a JSON object"))?;
        let kind = match rule.get("type").and_then(Value::as_str) {
            Some("string") => FieldKind::String,
            Some("number") => FieldKind::Number,
            Some("integer") => FieldKind::Integer,
            Some("boolean") => FieldKind::Boolean,
            _ => {
                return Err(unsupported(
                    format!("{path}.type"),
                    "a form field must be of type string, number, integer or boolean",
                ));
            }
        };
        if let Some(keyword) = rule.keys().find(|keyword| {
            !matches!(keyword.as_str(), "type" | "enum" | "minLength" | "maxLength" | "minimum" | "maximum")
                && !ANNOTATIONS.contains(&keyword.as_str())
        }) {
            return Err(unsupported(format!("{path}.{keyword}"), "this keyword is not supported"));
        }
        let choices = match rule.get("enum") {
            None => None,
            Some(Value::Array(items)) if !items.is_empty() => Some(items.clone()),
            Some(_) => return Err(invalid(format!("{path}.enum"), "must be a non-empty list")),
        };
        let annotation = |name: &str| rule.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(FieldRule {
            kind,
            title: annotation("title"),
            description: annotation("description"),
            choices,
            min_length: length_keyword(rule, path, "minLength")?,
            max_length: length_keyword(rule, path, "maxLength")?,
            minimum: number_keyword(rule, path, "minimum")?,
            maximum: number_keyword(rule, path, "maximum")?,
        })
    }

    fn check(&self, value: &Value, field: String) -> Result<(), TaskError> {
        let fail = |message: String| Err(TaskError::FormField { field: field.clone(), message });
        let type_ok = match self.kind {
            FieldKind::String => value.is_string(),
            FieldKind::Number => value.is_number(),
            FieldKind::Integer => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.fract() == 0.0),
            FieldKind::Boolean => value.is_boolean(),
        };
        if !type_ok {
            return fail(format!("must be of type {}", format!("{:?}", self.kind).to_ascii_lowercase()));
        }
        if let Some(choices) = &self.choices
            && !choices.contains(value)
        {
            let listed: Vec<String> = choices.iter().map(Value::to_string).collect();
            return fail(format!("must be one of {}", listed.join(", ")));
        }
        if let Some(text) = value.as_str() {
            let length = text.chars().count() as u64;
            if self.min_length.is_some_and(|min| length < min) {
                return fail(format!("must be at least {} characters", self.min_length.unwrap_or_default()));
            }
            if self.max_length.is_some_and(|max| length > max) {
                return fail(format!("must be at most {} characters", self.max_length.unwrap_or_default()));
            }
        }
        if let Some(number) = value.as_f64().filter(|_| value.is_number()) {
            if self.minimum.is_some_and(|min| number < min) {
                return fail(format!("must be at least {}", self.minimum.unwrap_or_default()));
            }
            if self.maximum.is_some_and(|max| number > max) {
                return fail(format!("must be at most {}", self.maximum.unwrap_or_default()));
            }
        }
        Ok(())
    }
}

impl IntentRecord {
    /// The intent's task, if one is open now: WAITING for a human with a `human_task`.
    pub fn open_human_task(&self) -> Option<HumanTask> {
        self.waits_for_human().then(|| HumanTask::of(self)).flatten()
    }

    /// Whether the intent is WAITING with WAITING_FOR_HUMAN (its task, if it has one, is open).
    pub fn waits_for_human(&self) -> bool {
        self.status() == Status::Waiting && self.waiting_reason() == Some(WaitingReason::WaitingForHuman)
    }

    /// Starts the intent's human task: WAITING with WAITING_FOR_HUMAN (`intent.waiting`), then
    /// `intent.human_task_assigned` with the task and its assignees.
    pub fn assign_human_task(&mut self, actor: &str, at: &str) -> Result<Vec<LifecycleEvent>, LifecycleError> {
        let task = self.options.get("human_task").cloned().unwrap_or(Value::Null);
        let assignees = HumanTask::of(self).map(|task| task.assignees).unwrap_or_default();
        let details = json!({"human_task": task});
        let waiting =
            self.transition(Status::Waiting, Some(WaitingReason::WaitingForHuman), Some(actor), details, at)?;
        let details =
            json!({"human_task": task, "assignees": assignees, "assigned_at": at, "pending_with": self.handler()});
        let assigned = self.note(EventType::HumanTaskAssigned, Some(actor), details, at)?;
        Ok(vec![waiting, assigned])
    }

    /// Applies a person's answer to the open task. A declining answer cancels the intent; any
    /// other resumes it to IN_PROGRESS and offers it to the handler again. The event's details
    /// carry the normalised `task_result` and the `decision` (who, when, via which channel).
    /// An invalid answer changes nothing.
    pub fn answer_human_task(
        &mut self,
        task_result: &Map<String, Value>,
        decision: &Decision,
    ) -> Result<(Answer, Vec<LifecycleEvent>), TaskError> {
        let task = self.open_human_task().ok_or_else(|| TaskError::NotOpen {
            status: self.status(),
            reason: self.waiting_reason().map(|reason| format!(", {}", reason.as_str())).unwrap_or_default(),
        })?;
        let answer = task.validate(task_result)?;
        let decision_value = json!({"by": decision.by, "at": decision.at, "via": decision.via});
        let mut details = json!({
            "task_type": task.task_type.as_str(),
            "task_result": answer.to_value(),
            "decision": decision_value,
        });
        let (status, actor, at) = (self.status(), Some(decision.by.as_str()), decision.at.as_str());
        let illegal = |error: LifecycleError| TaskError::NotOpen { status, reason: format!(": {error}") };
        let event = if answer.declines() {
            details["reason"] = json!(format!("human task {:?} rejected", task.title));
            self.transition(Status::Canceled, None, actor, details, at).map_err(illegal)?
        } else {
            details["resumed"] = json!(true);
            details["approved"] = json!(true);
            let event = self.transition(Status::InProgress, None, actor, details, at).map_err(illegal)?;
            self.resumed = true;
            self.offer_again();
            event
        };
        Ok((answer, vec![event]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::sample;

    const AT: &str = "2026-11-26T12:00:00.000000Z";

    fn task(spec: Value) -> HumanTask {
        HumanTask::parse(&spec).unwrap()
    }

    fn answer(task: &HumanTask, result: Value) -> Result<Answer, TaskError> {
        task.validate(result.as_object().unwrap())
    }

    fn refused(task: &HumanTask, result: Value) -> (String, &'static str) {
        let error = answer(task, result).unwrap_err();
        (error.field().unwrap_or_default().to_owned(), error.code())
    }

    fn form() -> Value {
        json!({"type": "object", "required": ["amount", "reason"], "additionalProperties": false, "properties": {
            "amount": {"type": "integer", "minimum": 1, "maximum": 1000},
            "reason": {"type": "string", "minLength": 3, "maxLength": 20},
            "currency": {"type": "string", "enum": ["EUR", "USD"]},
            "urgent": {"type": "boolean"},
            "rate": {"type": "number", "maximum": 1.5}
        }})
    }

    #[test]
    fn a_bad_task_names_its_field_at_create() {
        let cases = [
            (json!({}), "human_task.title", "field_required"),
            (json!({"title": "t", "task_type": "dance"}), "human_task.task_type", "invalid_field"),
            (json!({"title": "t", "task_type": "form"}), "human_task.form_schema", "field_required"),
            (json!({"title": "t", "allowed_outcomes": []}), "human_task.allowed_outcomes", "invalid_field"),
            (json!({"title": "t", "allowed_outcomes": ["ok", ""]}), "human_task.allowed_outcomes[1]", "invalid_field"),
            (json!({"title": "t", "required_comment": "yes"}), "human_task.required_comment", "invalid_field"),
            (json!({"title": "t", "colour": 1}), "human_task.colour", "invalid_field"),
            (
                json!({"title": "t", "form_schema": {"type": "object", "properties": {"x": {"type": "array"}}}}),
                "human_task.form_schema.properties.x.type",
                "unsupported_form_schema",
            ),
            (
                json!({"title": "t", "form_schema": {"oneOf": []}}),
                "human_task.form_schema.oneOf",
                "unsupported_form_schema",
            ),
        ];
        for (spec, field, code) in cases {
            let error = HumanTask::parse(&spec).unwrap_err();
            assert_eq!((error.field(), error.code()), (Some(field), code), "{spec}");
        }
        let parsed = task(json!({"title": "Pay", "task_type": "provide_data", "assignees": ["agent://acme/ann"]}));
        assert_eq!((parsed.task_type, parsed.assignees.len()), (TaskType::Generic("provide_data"), 1));
        assert_eq!(task(json!({"title": "Pay"})).task_type, TaskType::Approval, "approval by default");
    }

    #[test]
    fn approval_takes_approved_or_rejected_and_required_comment() {
        let approval = task(json!({"title": "Ship?", "task_type": "approval"}));
        assert_eq!(answer(&approval, json!({})).unwrap().outcome, "approved");
        assert!(answer(&approval, json!({"outcome": "rejected"})).unwrap().declines());
        assert_eq!(
            refused(&approval, json!({"outcome": "maybe"})),
            ("task_result.outcome".into(), "outcome_not_allowed")
        );
        assert_eq!(refused(&approval, json!({"comment": 5})), ("task_result.comment".into(), "invalid_field"));
        let strict = task(json!({"title": "Ship?", "required_comment": true, "allowed_outcomes": ["go", "rejected"]}));
        assert_eq!(refused(&strict, json!({"outcome": "go"})), ("task_result.comment".into(), "field_required"));
        assert_eq!(refused(&strict, json!({"outcome": "rejected", "comment": "  "})).0, "task_result.comment");
        assert_eq!(refused(&strict, json!({"comment": "ok"})).1, "outcome_not_allowed", "the default is not listed");
        assert_eq!(
            answer(&strict, json!({"outcome": "go", "comment": "fine"})).unwrap().comment.as_deref(),
            Some("fine")
        );
    }

    #[test]
    fn form_fields_follow_the_schema() {
        let form = task(json!({"title": "Expense", "task_type": "form", "form_schema": form()}));
        let ok = answer(&form, json!({"data": {"amount": 10, "currency": "EUR"}, "reason": "taxi", "urgent": true}));
        assert_eq!(
            ok.unwrap().data,
            *json!({"amount": 10, "currency": "EUR", "reason": "taxi", "urgent": true}).as_object().unwrap()
        );
        let field = |name: &str| format!("task_result.data.{name}");
        let cases = [
            (json!({"data": {"reason": "taxi"}}), field("amount"), "field_required"),
            (json!({"amount": "10", "reason": "taxi"}), field("amount"), "form_field_invalid"),
            (json!({"amount": 1.5, "reason": "taxi"}), field("amount"), "form_field_invalid"),
            (json!({"amount": 0, "reason": "taxi"}), field("amount"), "form_field_invalid"),
            (json!({"amount": 1001, "reason": "taxi"}), field("amount"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "ab"}), field("reason"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "a".repeat(21)}), field("reason"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "taxi", "currency": "GBP"}), field("currency"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "taxi", "urgent": "yes"}), field("urgent"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "taxi", "rate": 2}), field("rate"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "taxi", "colour": "red"}), field("colour"), "form_field_invalid"),
            (json!({"amount": 5, "reason": "taxi", "data": 3}), "task_result.data".into(), "invalid_field"),
        ];
        for (result, field, code) in cases {
            assert_eq!(refused(&form, result.clone()), (field, code), "{result}");
        }
        assert!(answer(&form, json!({"outcome": "rejected"})).is_ok(), "declining needs no form");
    }

    #[test]
    fn review_needs_a_comment_to_request_changes() {
        let review = task(json!({"title": "PR", "task_type": "review"}));
        assert_eq!(answer(&review, json!({"outcome": "approved"})).unwrap().outcome, "approved");
        assert_eq!(
            refused(&review, json!({"outcome": "changes_requested"})),
            ("task_result.comment".into(), "field_required")
        );
        assert!(answer(&review, json!({"outcome": "changes_requested", "comment": "rename x"})).is_ok());
        assert_eq!(refused(&review, json!({"outcome": "merged"})).1, "outcome_not_allowed");
    }

    #[test]
    fn override_needs_a_justification() {
        let over = task(json!({"title": "Bypass", "task_type": "override"}));
        assert_eq!(refused(&over, json!({})), ("task_result.comment".into(), "field_required"));
        assert!(answer(&over, json!({"comment": "prod down"})).is_ok());
        assert!(answer(&over, json!({"data": {"justification": "prod down"}})).is_ok());
        assert!(answer(&over, json!({"outcome": "rejected"})).is_ok());
        assert_eq!(refused(&over, json!({"outcome": "approved", "comment": "x"})).1, "outcome_not_allowed");
    }

    #[test]
    fn confirmation_confirms_or_denies() {
        let confirm = task(json!({"title": "Door locked?", "task_type": "confirmation"}));
        assert_eq!(answer(&confirm, json!({})).unwrap().outcome, "confirmed");
        assert!(answer(&confirm, json!({"outcome": "rejected"})).unwrap().declines());
        assert_eq!(refused(&confirm, json!({"outcome": "approved"})).1, "outcome_not_allowed");
        assert_eq!(refused(&confirm, json!({"outcome": 1})), ("task_result.outcome".into(), "invalid_field"));
    }

    #[test]
    fn assignment_names_the_assignee() {
        let assign = task(json!({"title": "Who?", "task_type": "assignment"}));
        assert_eq!(refused(&assign, json!({})), ("task_result.data.assignee".into(), "field_required"));
        assert_eq!(refused(&assign, json!({"assignee": ""})).0, "task_result.data.assignee");
        assert!(answer(&assign, json!({"assignee": "ann@example.com"})).is_ok());
        assert!(answer(&assign, json!({"outcome": "declined"})).is_ok());
    }

    #[test]
    fn clarification_needs_a_comment() {
        let clarify = task(json!({"title": "Which env?", "task_type": "clarification"}));
        assert_eq!(
            refused(&clarify, json!({"data": {"env": "prod"}})),
            ("task_result.comment".into(), "field_required")
        );
        assert!(answer(&clarify, json!({"comment": "prod"})).is_ok());
        assert!(answer(&clarify, json!({"outcome": "rejected"})).is_ok());
    }

    #[test]
    fn manual_action_needs_evidence_or_a_reason_for_failing() {
        let manual = task(json!({"title": "Swap disk", "task_type": "manual_action"}));
        let evidence = "task_result.data.evidence";
        assert_eq!(refused(&manual, json!({})), (evidence.into(), "field_required"));
        assert_eq!(refused(&manual, json!({"evidence": " "})), (evidence.into(), "invalid_field"));
        assert_eq!(refused(&manual, json!({"evidence": {"name": "a.jpg"}})), (evidence.into(), "invalid_field"));
        assert!(answer(&manual, json!({"evidence": "serial 42 installed"})).is_ok());
        let file = json!({"name": "a.jpg", "size": 3, "sha256": "a".repeat(64)});
        assert!(answer(&manual, json!({"data": {"evidence": [file]}})).is_ok());
        assert_eq!(refused(&manual, json!({"outcome": "failed"})), ("task_result.comment".into(), "field_required"));
        assert!(answer(&manual, json!({"outcome": "failed", "comment": "no disk"})).is_ok());
        let generic = task(json!({"title": "Attach", "task_type": "attach_file", "evidence_required": true}));
        assert_eq!(refused(&generic, json!({})), (evidence.into(), "field_required"));
        assert_eq!(answer(&generic, json!({"evidence": "x"})).unwrap().outcome, "submitted");
    }

    #[test]
    fn the_record_waits_for_the_human_and_resumes_with_the_answer() {
        let options = json!({"human_task": {"title": "Ship?", "assignees": ["agent://acme/ann"]}});
        let (mut record, _) = sample("id-1", options.as_object().cloned().unwrap(), AT);
        let events = record.assign_human_task("node:tasks", AT).unwrap();
        let kinds: Vec<_> =
            events.iter().map(|e| (e.seq, e.event_type.as_str().to_owned(), e.waiting_reason)).collect();
        assert_eq!(kinds[0], (3, "intent.waiting".to_owned(), Some(WaitingReason::WaitingForHuman)));
        assert_eq!(kinds[1], (4, "intent.human_task_assigned".to_owned(), Some(WaitingReason::WaitingForHuman)));
        assert_eq!(events[1].details["assignees"], json!(["agent://acme/ann"]));
        assert!(!record.awaits_pickup());
        let before = record.clone();
        let decision = Decision { by: "agent://acme/ann".into(), at: AT.into(), via: "cli".into() };
        let bad = record.answer_human_task(json!({"outcome": "nope"}).as_object().unwrap(), &decision);
        assert_eq!(bad.unwrap_err().code(), "outcome_not_allowed");
        assert_eq!(record, before, "an invalid answer changes nothing");
        let (answer, events) = record.answer_human_task(&Map::new(), &decision).unwrap();
        assert_eq!((answer.outcome.as_str(), events[0].status), ("approved", Status::InProgress));
        assert_eq!(events[0].details["decision"], json!({"by": "agent://acme/ann", "at": AT, "via": "cli"}));
        assert_eq!(events[0].details["task_result"]["outcome"], "approved");
        assert!(record.awaits_pickup(), "the handler is offered the intent again");
        let again = record.answer_human_task(&Map::new(), &decision).unwrap_err();
        assert_eq!(again.code(), "no_open_human_task");
    }

    #[test]
    fn a_rejection_cancels_the_intent() {
        let options = json!({"human_task": {"title": "Ship?"}});
        let (mut record, _) = sample("id-2", options.as_object().cloned().unwrap(), AT);
        record.assign_human_task("node:tasks", AT).unwrap();
        let decision = Decision { by: "agent://acme/b".into(), at: AT.into(), via: "approvals".into() };
        let (_, events) =
            record.answer_human_task(json!({"outcome": "rejected"}).as_object().unwrap(), &decision).unwrap();
        assert_eq!((events[0].status, record.status()), (Status::Canceled, Status::Canceled));
        assert_eq!(events[0].details["task_result"]["outcome"], "rejected");
    }
}
