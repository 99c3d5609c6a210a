//! A write transaction inside one group commit: read-your-writes over the tree, with a
//! savepoint per job so that a failing job leaves the batch as it found it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{StoreError, decode, encode};

/// What a committed batch changed, for the streams that wait on it.
#[derive(Debug, Default, Clone)]
pub struct CommitNotice {
    pub intents: BTreeSet<String>,
    pub agents: BTreeSet<String>,
    /// The outbox has new entries.
    pub outbox: bool,
    /// A push delivery was scheduled or changed.
    pub deliveries: bool,
    /// The timer schedule changed.
    pub timers: bool,
    /// A mail was queued or rescheduled.
    pub mail: bool,
}

impl CommitNotice {
    /// Waits for the next commit that `wanted` picks. A lagging receiver counts as one (a
    /// notice may have been missed); a closed channel never arrives.
    pub async fn next_where(
        notices: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<CommitNotice>>,
        wanted: impl Fn(&CommitNotice) -> bool,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match notices.recv().await {
                Ok(notice) if wanted(&notice) => return,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

pub struct Txn<'a> {
    tree: &'a sled::Tree,
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    job: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    notice: CommitNotice,
    job_notice: CommitNotice,
}

impl<'a> Txn<'a> {
    pub(super) fn new(tree: &'a sled::Tree) -> Self {
        Txn {
            tree,
            batch: BTreeMap::new(),
            job: BTreeMap::new(),
            notice: CommitNotice::default(),
            job_notice: CommitNotice::default(),
        }
    }

    /// The committed tree, for prefix scans of indexes that a batch does not change often
    /// (entries written earlier in the same batch are not seen).
    pub(super) fn committed(&self) -> &sled::Tree {
        self.tree
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.job.get(key).or_else(|| self.batch.get(key)) {
            return Ok(value.clone());
        }
        Ok(self.tree.get(key)?.map(|bytes| bytes.to_vec()))
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.get(key)?.map(|bytes| decode(&bytes)).transpose()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.job.insert(key, Some(value));
    }

    pub fn put_json<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        self.put(key, encode(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.job.insert(key, None);
    }

    /// Reads, increments and stores a counter; the first value handed out is 1.
    pub fn next_counter(&mut self, key: &[u8]) -> Result<u64, StoreError> {
        let current = match self.get(key)? {
            Some(bytes) => u64::from_be_bytes(
                bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt("counter is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        let next = current + 1;
        self.put(key.to_vec(), next.to_be_bytes().to_vec());
        Ok(next)
    }

    pub fn notify_intent(&mut self, intent_id: &str) {
        self.job_notice.intents.insert(intent_id.to_owned());
    }

    pub fn notify_outbox(&mut self) {
        self.job_notice.outbox = true;
    }

    pub fn notify_deliveries(&mut self) {
        self.job_notice.deliveries = true;
    }

    pub fn notify_timers(&mut self) {
        self.job_notice.timers = true;
    }

    pub fn notify_mail(&mut self) {
        self.job_notice.mail = true;
    }

    pub fn notify_agent(&mut self, address: &str) {
        self.job_notice.agents.insert(address.to_owned());
    }

    pub(super) fn keep_job(&mut self) {
        self.batch.append(&mut self.job);
        self.notice.intents.append(&mut self.job_notice.intents);
        self.notice.agents.append(&mut self.job_notice.agents);
        self.notice.outbox |= self.job_notice.outbox;
        self.notice.deliveries |= self.job_notice.deliveries;
        self.notice.timers |= self.job_notice.timers;
        self.notice.mail |= self.job_notice.mail;
    }

    pub(super) fn discard_job(&mut self) {
        self.job.clear();
        self.job_notice = CommitNotice::default();
    }

    pub(super) fn into_parts(self) -> (sled::Batch, CommitNotice, bool) {
        let mut batch = sled::Batch::default();
        let empty = self.batch.is_empty();
        for (key, value) in self.batch {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        (batch, self.notice, empty)
    }
}
