//! Sends the mails people are owed: task assignments, reminders and escalations with a magic
//! link, and sign-in links of the task list.
//!
//! The I/O shell of the queue in `crate::store::people`: it reads due jobs in order, mints each
//! link (`crate::web::link`) at send time, sends through the configured SMTP server (lettre),
//! and records the outcome — sent, retried with backoff, failed after the last attempt, or
//! skipped (no SMTP server, the task closed first, no email known for an agent). A job's link
//! uses the job id as its nonce and the job's creation time for its expiry, so a retry sends
//! the same link. What a mail says is [`compose`], which does no I/O.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::clock::{now_rfc3339, now_unix_ms};
use crate::config::{EmailSection, SmtpTls};
use crate::intent::{HumanTask, IntentRecord};
use crate::store::{CommitNotice, MailAbout, MailJob, MailStatus, Recipient, Store, StoreError};
use crate::web::link::{Claims, LinkKey, Purpose};

/// Mails attempted per pass.
const BATCH: usize = 16;
const MAX_SLEEP: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// How long a sign-in link stays valid.
pub const SIGN_IN_TTL_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot read the SMTP password file {path}: {source}")]
    PasswordFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("email.from {from:?} is not an address: {message}")]
    From { from: String, message: String },
    #[error("the SMTP server {host} cannot be used: {message}")]
    Smtp { host: String, message: String },
}

/// What the worker needs besides the store.
pub struct Mailer {
    smtp: Option<Smtp>,
    key: LinkKey,
    public_url: url::Url,
}

impl Mailer {
    pub fn new(email: Option<&EmailSection>, key: LinkKey, public_url: url::Url) -> Result<Mailer, MailError> {
        let smtp = email.map(Smtp::new).transpose()?;
        Ok(Mailer { smtp, key, public_url })
    }
}

/// The configured SMTP server, ready to send.
struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    config: EmailSection,
}

impl Smtp {
    fn new(config: &EmailSection) -> Result<Smtp, MailError> {
        let from = config
            .from
            .parse()
            .map_err(|error| MailError::From { from: config.from.clone(), message: format!("{error}") })?;
        Ok(Smtp { transport: transport(config)?, from, config: config.clone() })
    }
}

fn transport(config: &EmailSection) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let host = config.smtp_host.as_str();
    let smtp_error =
        |error: lettre::transport::smtp::Error| MailError::Smtp { host: host.into(), message: error.to_string() };
    let builder = match config.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(smtp_error)?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(smtp_error)?,
    };
    let mut builder = builder.port(config.smtp_port).timeout(Some(Duration::from_secs(30)));
    if let Some(username) = &config.username {
        let password = match &config.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| MailError::PasswordFile { path: path.clone(), source })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(username.clone(), password));
    }
    Ok(builder.build())
}

/// A mail ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Composed {
    pub subject: String,
    pub body: String,
}

/// What a mail about a task says. `link` is where the person answers; `expires` when it stops
/// working. Payloads are not included: they may hold more than the person should read in a
/// mailbox.
pub fn compose(about: &MailAbout, record: Option<&IntentRecord>, link: &str, expires: &str) -> Composed {
    let task = record.and_then(HumanTask::of);
    let title = task.as_ref().map_or("a task", |task| task.title.as_str());
    let description = task.as_ref().and_then(|task| task.description.as_deref());
    let kind = task.as_ref().map_or("task", |task| task.task_type.as_str()).replace('_', " ");
    let (subject, opening) = match about {
        MailAbout::TaskAssigned { .. } => {
            (format!("Your {kind} is needed: {title}"), format!("A task is waiting for you: {kind}."))
        }
        MailAbout::Reminder { n, .. } => {
            (format!("Reminder {n}: {title}"), format!("Reminder {n}: this {kind} task is still waiting for you."))
        }
        MailAbout::Escalated { to, .. } => (
            format!("Escalated: {title}"),
            format!("This {kind} task was not answered in time and was escalated to {to}. It can still be answered."),
        ),
        MailAbout::SignIn => {
            let body = format!(
                "Someone (hopefully you) asked to sign in to the task list of this axp node.\n\n\
                 Sign in: {link}\n\nThe link works once, until {expires}. If you did not ask for it, ignore this mail.\n"
            );
            return Composed { subject: "Sign in to your tasks".into(), body };
        }
    };
    let mut body = format!("{opening}\n\n{title}\n");
    if let Some(description) = description {
        body.push_str(&format!("\n{description}\n"));
    }
    if let Some(record) = record {
        body.push_str(&format!(
            "\nFrom: {}\nIntent: {} ({})\n",
            record.from_agent, record.intent_id, record.intent_type
        ));
    }
    body.push_str(&format!(
        "\nAnswer here: {link}\n\nThe link works once, until {expires}. Opening it changes nothing; \
         the decision is made on the page.\n"
    ));
    Composed { subject, body }
}

/// Sends due mails until the task is aborted.
pub async fn run(store: Store, mailer: Arc<Mailer>) {
    if mailer.smtp.is_none() {
        tracing::info!("no [email] section in the config: task emails are recorded as skipped, not sent");
    }
    let mut notices = store.subscribe();
    loop {
        let now = now_unix_ms();
        let due = store.due_mails(now, BATCH).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the mail schedule");
            Vec::new()
        });
        for job in &due {
            let was_due = match job.status {
                MailStatus::Pending { due_ms } => due_ms,
                _ => continue,
            };
            let updated = attempt(&store, &mailer, job.clone()).await;
            if let Err(error) = store
                .write(move |txn| -> Result<(), StoreError> {
                    txn.update_mail(&updated, was_due);
                    Ok(())
                })
                .await
            {
                tracing::warn!(%error, "cannot record a mail attempt");
            }
        }
        if !due.is_empty() {
            continue;
        }
        let next = store.next_mail_due().ok().flatten();
        let sleep = next.map_or(MAX_SLEEP, |due| Duration::from_millis(due.saturating_sub(now)).min(MAX_SLEEP));
        tokio::select! {
            () = CommitNotice::next_where(&mut notices, |notice| notice.mail) => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn skipped(mut job: MailJob, reason: impl Into<String>) -> MailJob {
    let reason = reason.into();
    tracing::info!(mail_id = %job.id, %reason, "mail not sent");
    job.status = MailStatus::Skipped { reason };
    job
}

/// One attempt at a job; answers the job as it should be stored.
async fn attempt(store: &Store, mailer: &Mailer, mut job: MailJob) -> MailJob {
    let Some(Smtp { transport, from, config }) = &mailer.smtp else {
        return skipped(job, "no SMTP server configured ([email] in axp.toml)");
    };
    let email = match job.to.clone() {
        Recipient::Email(email) => email,
        Recipient::Agent(address) => match config.contacts.get(&address) {
            Some(email) => email.clone(),
            None => return skipped(job, format!("no email known for {address} ([email.contacts])")),
        },
    };
    let record = match job.about.intent_id() {
        Some(id) => match store.intent(id) {
            Ok(Some(stored)) if stored.record.open_human_task().is_some() => Some(stored.record),
            Ok(_) => return skipped(job, "the task is no longer open"),
            Err(error) => return retry(job, config, error.to_string()),
        },
        None => None,
    };
    let (purpose, ttl_ms, path) = match job.about.intent_id() {
        Some(intent_id) => (Purpose::Task { intent_id }, config.link_ttl_seconds.saturating_mul(1000), "tasks/link"),
        None => (Purpose::SignIn, SIGN_IN_TTL_MS, "tasks/sign-in"),
    };
    let exp = job.created_ms.saturating_add(ttl_ms);
    let token = mailer.key.sign(&Claims { purpose, email: email.clone(), exp, nonce: job.id });
    let link = mailer.public_url.join(&format!("{path}/{token}")).map(String::from).unwrap_or_default();
    let expires = chrono::DateTime::from_timestamp_millis(exp as i64)
        .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:%M UTC").to_string());
    let composed = compose(&job.about, record.as_ref(), &link, &expires);
    let message = match build_message(from, &email, composed) {
        Ok(message) => message,
        Err(reason) => return skipped(job, reason),
    };
    job.attempts += 1;
    match transport.send(message).await {
        Ok(_) => {
            tracing::info!(mail_id = %job.id, about = ?job.about, attempts = job.attempts, "mail sent");
            job.status = MailStatus::Sent { at: now_rfc3339() };
            job
        }
        Err(error) => retry(job, config, error.to_string()),
    }
}

fn build_message(from: &Mailbox, to: &str, composed: Composed) -> Result<Message, String> {
    let to: Mailbox = to.parse().map_err(|error| format!("{to:?} is not an address: {error}"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(composed.subject)
        .header(ContentType::TEXT_PLAIN)
        .body(composed.body)
        .map_err(|error| error.to_string())
}

fn retry(mut job: MailJob, config: &EmailSection, error: String) -> MailJob {
    if job.attempts >= config.max_attempts {
        tracing::error!(mail_id = %job.id, attempts = job.attempts, %error, "mail given up");
        job.status = MailStatus::Failed { error };
        return job;
    }
    let delay = crate::delivery::backoff(
        job.attempts.max(1),
        Duration::from_millis(config.retry_base_ms),
        MAX_RETRY,
        rand::random::<f64>(),
    );
    tracing::warn!(mail_id = %job.id, attempts = job.attempts, retry_in = ?delay, %error, "mail not sent; will retry");
    job.last_error = Some(error);
    job.status = MailStatus::Pending { due_ms: now_unix_ms().saturating_add(delay.as_millis() as u64) };
    job
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_task_mail_names_the_task_and_the_link_but_not_the_payload() {
        let options = serde_json::json!({"human_task": {"title": "Approve 120 EUR", "description": "Team lunch"}});
        let (mut record, _) =
            crate::intent::sample("id-1", options.as_object().cloned().unwrap(), "2026-11-26T00:00:00Z");
        record.payload = serde_json::json!({"secret": "s3cr3t"});
        let about = MailAbout::Reminder { intent_id: Uuid::now_v7(), n: 2 };
        let mail = compose(&about, Some(&record), "http://node/tasks/link/abc", "2026-11-29 12:00 UTC");
        assert_eq!(mail.subject, "Reminder 2: Approve 120 EUR");
        assert!(mail.body.contains("http://node/tasks/link/abc") && mail.body.contains("Team lunch"), "{}", mail.body);
        assert!(mail.body.contains("2026-11-29 12:00 UTC"));
        assert!(!mail.body.contains("s3cr3t"));
    }

    #[test]
    fn a_sign_in_mail_carries_only_the_sign_in_link() {
        let mail = compose(&MailAbout::SignIn, None, "http://node/tasks/sign-in/xyz", "soon");
        assert_eq!(mail.subject, "Sign in to your tasks");
        assert!(mail.body.contains("http://node/tasks/sign-in/xyz"));
    }
}
