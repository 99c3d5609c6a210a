//! People who answer human tasks without an API key: the emails the node owes them, the task
//! list of each email address, spent magic links and open web sessions.
//!
//! Owns these keys:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `mj/` | mail id (16 bytes) | mail job (what to tell whom, and how sending went) |
//! | `mq/` | due (unix ms BE), mail id | nothing: schedule of mails to send |
//! | `pt/` | email, 0, intent id | nothing: an open task the person answers |
//! | `lu/` | link nonce | when the single-use link was spent, until the link expires |
//! | `hs/` | session nonce | the web session (email, expiry) until signed out |
//!
//! [`Txn::notify_people`] runs in every intent save (from `Txn::follow_human_task`): the mail about a new task, a reminder or
//! an escalation is queued in the same batch as the event, so it is owed exactly when the
//! event exists. [`Store::people_expired`] finds what is no longer needed (spent links and
//! sessions past their expiry, finished mails past their retention) for the node's sweep.
//! Composing and sending is `crate::mail`'s; checking links is `crate::web`'s.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Store, StoreError, Txn};
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::intent::{EventType, HumanTask, LifecycleEvent};

const JOBS: &[u8] = b"mj/";
const QUEUE: &[u8] = b"mq/";
const PERSON_TASKS: &[u8] = b"pt/";
const SPENT: &[u8] = b"lu/";
const SESSIONS: &[u8] = b"hs/";

/// Who a mail goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Recipient {
    Email(String),
    /// An agent address; the mail goes out if the node's config knows its email.
    Agent(String),
}

/// What a mail is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "about", rename_all = "snake_case")]
pub enum MailAbout {
    TaskAssigned { intent_id: Uuid },
    Reminder { intent_id: Uuid, n: u64 },
    Escalated { intent_id: Uuid, to: String },
    SignIn,
}

impl MailAbout {
    pub fn intent_id(&self) -> Option<Uuid> {
        match self {
            MailAbout::TaskAssigned { intent_id }
            | MailAbout::Reminder { intent_id, .. }
            | MailAbout::Escalated { intent_id, .. } => Some(*intent_id),
            MailAbout::SignIn => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MailStatus {
    Pending {
        due_ms: u64,
    },
    Sent {
        at: String,
    },
    /// Given up after the last attempt.
    Failed {
        error: String,
    },
    /// Not sent, and never will be: no SMTP server configured, the task closed first, ...
    Skipped {
        reason: String,
    },
}

impl MailStatus {
    /// The names of the states, as `state` in the JSON form.
    pub const NAMES: [&'static str; 4] = ["pending", "sent", "failed", "skipped"];

    pub fn name(&self) -> &'static str {
        match self {
            MailStatus::Pending { .. } => "pending",
            MailStatus::Sent { .. } => "sent",
            MailStatus::Failed { .. } => "failed",
            MailStatus::Skipped { .. } => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailJob {
    pub id: Uuid,
    pub to: Recipient,
    pub about: MailAbout,
    pub created_ms: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub status: MailStatus,
}

impl MailJob {
    pub fn new(to: Recipient, about: MailAbout) -> MailJob {
        let now = now_unix_ms();
        MailJob {
            id: Uuid::now_v7(),
            to,
            about,
            created_ms: now,
            attempts: 0,
            last_error: None,
            status: MailStatus::Pending { due_ms: now },
        }
    }
}

/// A spent single-use link; kept until the link would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Spent {
    at: String,
    until_ms: u64,
}

/// An open web session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub email: String,
    pub expires_ms: u64,
}

fn job_key(id: Uuid) -> Vec<u8> {
    [JOBS, id.as_bytes()].concat()
}

fn queue_key(due_ms: u64, id: Uuid) -> Vec<u8> {
    [QUEUE, &due_ms.to_be_bytes(), id.as_bytes()].concat()
}

fn person_prefix(email: &str) -> Vec<u8> {
    [PERSON_TASKS, email.as_bytes(), &[0]].concat()
}

impl Txn<'_> {
    /// Keeps each person's task list in step with the task (`open` only where this node
    /// sequences the intent) and, while it is open, queues the mails the change owes them: one
    /// per person, about its most pressing event (an intent adopted with its log brings old
    /// events along). Replicas stay quiet.
    pub(super) fn notify_people(&mut self, task: &HumanTask, id: Uuid, open: bool, events: &[LifecycleEvent]) {
        let emails = task.emails();
        for email in &emails {
            let key = [person_prefix(email), id.as_bytes().to_vec()].concat();
            if open { self.put(key, Vec::new()) } else { self.remove(key) }
        }
        if !open {
            return;
        }
        let pressing = events.iter().rev().max_by_key(|event| match event.event_type {
            EventType::Escalated => 3,
            EventType::Reminder => 2,
            EventType::HumanTaskAssigned => 1,
            _ => 0,
        });
        let about = match pressing {
            Some(event) if event.event_type == EventType::Escalated => MailAbout::Escalated {
                intent_id: id,
                to: event.details["escalated_to"].as_str().unwrap_or_default().to_owned(),
            },
            Some(event) if event.event_type == EventType::Reminder => {
                MailAbout::Reminder { intent_id: id, n: event.details["n"].as_u64().unwrap_or(1) }
            }
            Some(event) if event.event_type == EventType::HumanTaskAssigned => {
                MailAbout::TaskAssigned { intent_id: id }
            }
            _ => return,
        };
        let mut recipients: Vec<Recipient> = emails.into_iter().map(Recipient::Email).collect();
        if let MailAbout::Escalated { to, .. } = &about
            && !to.is_empty()
        {
            recipients.push(Recipient::Agent(to.clone()));
        }
        for to in recipients {
            self.queue_mail(&MailJob::new(to, about.clone()));
        }
    }

    pub fn queue_mail(&mut self, job: &MailJob) {
        if let MailStatus::Pending { due_ms } = job.status {
            self.put(queue_key(due_ms, job.id), Vec::new());
        }
        self.put_json(job_key(job.id), job);
        self.notify_mail();
    }

    /// Stores a job after an attempt: rescheduled while pending, off the schedule otherwise.
    pub fn update_mail(&mut self, job: &MailJob, was_due_ms: u64) {
        self.remove(queue_key(was_due_ms, job.id));
        self.queue_mail(job);
    }

    /// Spends a single-use link that expires at `until_ms`. Answers when it was spent before,
    /// and spends nothing then.
    pub fn spend_link(&mut self, nonce: Uuid, until_ms: u64) -> Result<Option<String>, StoreError> {
        let key = [SPENT, nonce.as_bytes()].concat();
        if let Some(spent) = self.get_json::<Spent>(&key)? {
            return Ok(Some(spent.at));
        }
        self.put_json(key, &Spent { at: now_rfc3339(), until_ms });
        Ok(None)
    }

    pub fn open_session(&mut self, nonce: Uuid, session: &Session) {
        self.put_json([SESSIONS, nonce.as_bytes()].concat(), session);
    }

    pub fn close_session(&mut self, nonce: Uuid) {
        self.remove([SESSIONS, nonce.as_bytes()].concat());
    }
}

impl Store {
    /// Mails due at or before `now_ms`, earliest first.
    pub fn due_mails(&self, now_ms: u64, limit: usize) -> Result<Vec<MailJob>, StoreError> {
        let end = [QUEUE, &now_ms.to_be_bytes(), &[0xff; 16]].concat();
        let mut jobs = Vec::new();
        for item in self.tree.range(QUEUE.to_vec()..=end).take(limit) {
            let (key, _) = item?;
            let id = Uuid::from_slice(&key[QUEUE.len() + 8..])
                .map_err(|_| StoreError::Corrupt("bad mail schedule key".into()))?;
            jobs.extend(self.get_json::<MailJob>(&job_key(id))?);
        }
        Ok(jobs)
    }

    /// When the next mail is due (unix ms), if any is scheduled.
    pub fn next_mail_due(&self) -> Result<Option<u64>, StoreError> {
        match self.tree.scan_prefix(QUEUE).next() {
            Some(item) => {
                let (key, _) = item?;
                let due = key[QUEUE.len()..QUEUE.len() + 8]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("bad mail schedule key".into()))?;
                Ok(Some(u64::from_be_bytes(due)))
            }
            None => Ok(None),
        }
    }

    pub fn mail(&self, id: Uuid) -> Result<Option<MailJob>, StoreError> {
        self.get_json(&job_key(id))
    }

    /// Every mail job, newest first (ids are time-ordered), for operators.
    pub fn mails(&self) -> impl Iterator<Item = Result<MailJob, StoreError>> + '_ {
        self.tree.scan_prefix(JOBS).rev().map(|item| super::decode(&item?.1))
    }

    /// The intents whose open task `email` answers (entries of tasks since closed another way
    /// may remain; readers check the task).
    pub fn person_tasks(&self, email: &str) -> Result<Vec<Uuid>, StoreError> {
        self.ids_after_prefix(&person_prefix(email))
    }

    pub fn link_spent(&self, nonce: Uuid) -> Result<Option<String>, StoreError> {
        Ok(self.get_json::<Spent>(&[SPENT, nonce.as_bytes()].concat())?.map(|spent| spent.at))
    }

    /// Keys of records no longer needed at `now_ms`, at most `limit`: spent links and sessions
    /// past their expiry (a link or cookie that old is refused by its signature check anyway),
    /// and mails no longer pending created more than `keep_mails_ms` ago.
    pub fn people_expired(&self, now_ms: u64, keep_mails_ms: u64, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for item in self.tree.scan_prefix(SPENT) {
            let (key, value) = item?;
            if super::decode::<Spent>(&value)?.until_ms <= now_ms {
                keys.push(key.to_vec());
            }
        }
        for item in self.tree.scan_prefix(SESSIONS) {
            let (key, value) = item?;
            if super::decode::<Session>(&value)?.expires_ms <= now_ms {
                keys.push(key.to_vec());
            }
        }
        let cutoff = now_ms.saturating_sub(keep_mails_ms);
        // Mail ids are time-ordered: the old ones come first.
        for item in self.tree.scan_prefix(JOBS) {
            let (key, value) = item?;
            let job: MailJob = super::decode(&value)?;
            if job.created_ms >= cutoff {
                break;
            }
            if !matches!(job.status, MailStatus::Pending { .. }) {
                keys.push(key.to_vec());
            }
        }
        keys.truncate(limit);
        Ok(keys)
    }

    pub fn session(&self, nonce: Uuid) -> Result<Option<Session>, StoreError> {
        self.get_json(&[SESSIONS, nonce.as_bytes()].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(created_ms: u64, status: MailStatus) -> MailJob {
        let mut job = MailJob::new(Recipient::Email("ann@example.com".into()), MailAbout::SignIn);
        job.id = Uuid::now_v7();
        job.created_ms = created_ms;
        job.status = status;
        job
    }

    #[tokio::test]
    async fn only_what_has_expired_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(dir.path()).unwrap();
        let now = 10_000_000;
        let (old_link, live_link, old_session, live_session) =
            (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let sent_long_ago = job(1_000, MailStatus::Sent { at: "then".into() });
        let pending_long_ago = job(2_000, MailStatus::Pending { due_ms: now });
        let sent_lately = job(now - 10, MailStatus::Skipped { reason: "no SMTP".into() });
        let jobs = [sent_long_ago.clone(), pending_long_ago, sent_lately];
        store
            .write(move |txn| -> Result<(), StoreError> {
                assert_eq!(txn.spend_link(old_link, now - 1)?, None);
                assert_eq!(txn.spend_link(live_link, now + 1)?, None);
                assert!(txn.spend_link(live_link, now + 1)?.is_some(), "a link is spent once");
                txn.open_session(old_session, &Session { email: "ann@example.com".into(), expires_ms: now });
                txn.open_session(live_session, &Session { email: "ann@example.com".into(), expires_ms: now + 1 });
                for job in &jobs {
                    txn.queue_mail(job);
                }
                Ok(())
            })
            .await
            .unwrap();
        let swept = store.people_expired(now, 1_000_000, 100).unwrap();
        let expected = vec![
            [SPENT, old_link.as_bytes()].concat(),
            [SESSIONS, old_session.as_bytes()].concat(),
            job_key(sent_long_ago.id),
        ];
        assert_eq!(swept, expected);
        assert_eq!(store.people_expired(now, 1_000_000, 2).unwrap().len(), 2, "at most the limit");
    }
}
