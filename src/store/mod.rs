//! The sled store: one tree of prefixed keys, written only by the group-commit writer.
//!
//! Owns key layout, durability (a change is on disk before its caller hears about it) and the
//! commit notices that wake streams. It does not decide what a change means: callers bring
//! closures that use the domain in `crate::intent` and the typed helpers here.
//!
//! Key layout (all in one tree so that a batch is atomic):
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `i/` | intent id (16 bytes) | intent record |
//! | `e/` | intent id, seq (u64 BE) | lifecycle event |
//! | `f/` | handler address, 0, cursor (u64 BE) | intent id: every intent ever addressed to the agent |
//! | `o/` | handler address, 0, cursor | intent id: the same, while the intent is not terminal |
//! | `s/` | initiator address, 0, cursor | intent id: intents an agent sent |
//! | `l/` | intent id | poll lease expiry (unix ms) |
//! | `k/` | key id | API key record |
//! | `d/` | idempotency scope hash | idempotency entry |
//! | `D/` | created (unix ms BE), scope hash | nothing: expiry index of `d/` |
//! | `a/` | agent address | agent record |
//! | `r/` | org | highest accepted registry serial (u64 BE) |
//! | `x/` | outbox seq (u64 BE) | message for another node, until sent |
//! | `R/` | handler address, 0, peer org, 0, peer node | route room id |
//! | `Q/` | room id | the room's route |
//! | `C/` | control request id | nothing: the peer's request was applied |
//! | `t/` | thread id (16 bytes) | inbox thread (of the intent with that id) |
//! | `u/` | owner address, 0, change cursor (u64 BE) | thread id: the owner's inbox, each thread at its latest change |
//! | `m/` | name | node metadata and counters |
//! | `ab/` | agent address | the agent's delivery binding |
//! | `dv/` | delivery id | push delivery record |
//! | `dq/` | due (unix ms BE), delivery id | nothing: schedule of pending deliveries |
//! | `dl/` | delivery id | nothing: dead-letter index |
//! | `ws/` | subscription id | webhook subscription |
//! | `wo/` | owner address, 0, subscription id | nothing: an owner's subscriptions |
//! | `we/` | event id | published webhook event |
//! | `tq/` | due (unix ms BE), intent id, kind tag (u8), n (u32 BE) | nothing: schedule of intent timers |
//! | `ti/` | intent id | the intent's timers now in `tq/` |
//! | `ht/` | address, 0, intent id | nothing: open human tasks an address answers, not as handler |
//! | `mj/ mq/ pt/ lu/ hs/` | see `people` | task emails, people's task lists, spent links, web sessions |

mod agents;
mod deliveries;
mod idempotency;
mod inbox;
mod intents;
mod keys;
mod outbox;
mod people;
mod registry;
mod tasks;
mod timers;
mod txn;
mod webhooks;
mod writer;

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use agents::AgentRecord;
pub use deliveries::{AgentBinding, Delivery, DeliveryMode, DeliveryStatus, Subject};
pub use idempotency::{ExpiredRecord, IdempotencyCheck, IdempotencyScope, canonical_hash};
pub use intents::{Feed, FeedEntry, HandlerHome, LinkRole, RemoteLink, StoredIntent};
pub use outbox::{OutboxEntry, OutboxKind};
pub use people::{MailAbout, MailJob, MailStatus, Recipient, Session};
pub use tasks::TaskStartError;
pub use timers::DueTimer;
pub use txn::{CommitNotice, Txn};
pub use webhooks::{Subscription, WebhookEvent};
use writer::Job;

/// How many jobs one commit may carry. Bounds the latency of the first job in a batch.
const MAX_BATCH: usize = 1024;
/// Jobs waiting for the writer; beyond this callers are told to back off.
const QUEUE_DEPTH: usize = 16 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path} is in use by another running node (its store is locked)")]
    Locked { path: String },
    #[error("storage failure: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the writer queue is full; retry shortly")]
    Overloaded,
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Io(error.to_string())
    }
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Locked { .. } => "data_dir_locked",
            StoreError::Io(_) => "storage_error",
            StoreError::Corrupt(_) => "storage_corrupt",
            StoreError::ShuttingDown => "shutting_down",
            StoreError::Overloaded => "overloaded",
        }
    }
}

#[derive(Clone)]
pub struct Store {
    tree: sled::Tree,
    jobs: mpsc::Sender<Job>,
    commits: broadcast::Sender<Arc<CommitNotice>>,
}

/// Handle that ends the writer: dropping every [`Store`] clone and awaiting this flushes the
/// last batch.
pub struct WriterTask(tokio::task::JoinHandle<()>);

impl WriterTask {
    pub async fn finished(self) {
        let _ = self.0.await;
    }
}

impl Store {
    /// Opens (or creates) the store under `dir` and starts its writer on the current runtime.
    pub fn open(dir: &Path) -> Result<(Store, WriterTask), StoreError> {
        let path = dir.join("store");
        let db = sled::Config::new().path(&path).open().map_err(|error| match error {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                StoreError::Locked { path: dir.display().to_string() }
            }
            other => StoreError::from(other),
        })?;
        let tree = db.open_tree("axp")?;
        let (jobs, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (commits, _) = broadcast::channel(4096);
        let task = tokio::spawn(writer::run(db, tree.clone(), receiver, commits.clone()));
        Ok((Store { tree, jobs, commits }, WriterTask(task)))
    }

    /// Runs `change` in the writer, inside a batch shared with concurrent changes, and returns
    /// its outcome once the batch is on disk. A change that returns `Err` leaves no trace.
    pub async fn write<T, E, F>(&self, change: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Txn) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = writer::job(change, reply);
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
        })?;
        match answer.await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::ShuttingDown.into()),
        }
    }

    /// Notices of committed batches, for streams that wait for news.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommitNotice>> {
        self.commits.subscribe()
    }

    /// The ids that end the keys under `prefix` (index keys `prefix ++ id`), in key order.
    fn ids_after_prefix(&self, prefix: &[u8]) -> Result<Vec<uuid::Uuid>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|item| {
                let (key, _) = item?;
                uuid::Uuid::from_slice(&key[prefix.len()..]).map_err(|error| StoreError::Corrupt(error.to_string()))
            })
            .collect()
    }

    fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.tree.get(key)?.map(|bytes| decode(&bytes)).transpose()
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt(error.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise to JSON")
}
