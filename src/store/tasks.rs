//! Starting human tasks, and the human-task index: the open tasks an address is asked to
//! answer without being the intent's handler (assignees that are agent addresses,
//! `escalate_to`). Tasks of a handler are found through its open-intent feed instead.
//!
//! Owns the `ht/` keys and [`Txn::start_human_task`], the one way a node that sequences an
//! intent starts its task: at API create when the handler is local, and when the node adopts an
//! intent another org's node sent to one of its handlers. [`Txn::index_open_task`] runs in
//! every save of an intent this node sequences and keeps the entries in step with the task:
//! present while it is open — also after the intent moved here with its task open, by transfer
//! or escalation — and gone in the write that answers, cancels or times it out. The task rules
//! are `crate::intent::human_task`'s.

use uuid::Uuid;

use super::timers::owns;
use super::{Store, StoreError, StoredIntent, Txn};
use crate::address::AgentAddress;
use crate::intent::{HumanTask, IntentRecord, LifecycleError, LifecycleEvent, TASK_ACTOR};

/// Why a human task could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TaskStartError {
    /// The intent is in no state to wait for a person.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TaskStartError {
    /// The stable code of the underlying error.
    pub fn code(&self) -> &'static str {
        match self {
            TaskStartError::Lifecycle(error) => error.code(),
            TaskStartError::Store(error) => error.code(),
        }
    }
}

/// The answerers of the intent's task other than its handler: whom the `ht/` index lists it for.
fn others(task: &HumanTask, record: &IntentRecord) -> Vec<AgentAddress> {
    task.answerers(record).into_iter().filter(|address| address.as_str() != record.handler()).collect()
}

fn task_key(address: &str, id: Uuid) -> Vec<u8> {
    [b"ht/".as_slice(), address.as_bytes(), &[0], id.as_bytes()].concat()
}

impl Txn<'_> {
    /// Starts the task of an intent this node sequences, in the write that creates or adopts
    /// it: WAITING with WAITING_FOR_HUMAN and `intent.human_task_assigned` (the events returned,
    /// for the caller to save with the intent), and the index entries of the answerers who are
    /// not its handler. Audited.
    pub fn start_human_task(
        &mut self,
        record: &mut IntentRecord,
        at: &str,
    ) -> Result<Vec<LifecycleEvent>, TaskStartError> {
        let events = record.assign_human_task(TASK_ACTOR, at)?;
        if let Some(task) = HumanTask::of(record) {
            for address in others(&task, record) {
                self.register_agent(address.as_str(), at)?;
            }
        }
        tracing::info!(
            target: "axp::audit", decision = "human_task_assigned", intent_id = %record.intent_id,
            handler = %record.handler(), at, "human task assigned"
        );
        Ok(events)
    }

    /// Keeps what hangs on the intent's human task in step with it, in every save: the `ht/`
    /// entries of its answerers other than the handler and, through [`Txn::notify_people`],
    /// the people's task lists and the mails the change owes them. The task counts as open
    /// only where this node sequences the intent; elsewhere its entries go.
    pub(super) fn follow_human_task(
        &mut self,
        stored: &StoredIntent,
        events: &[LifecycleEvent],
    ) -> Result<(), StoreError> {
        let Some(task) = HumanTask::of(&stored.record) else { return Ok(()) };
        let id = super::intents::parse_id(&stored.record)?;
        let open = owns(stored) && stored.record.waits_for_human();
        for address in others(&task, &stored.record) {
            if open { self.index_task(address.as_str(), id) } else { self.unindex_task(address.as_str(), id) }
        }
        self.notify_people(&task, id, open, events);
        Ok(())
    }

    /// Notes that `address` is asked to answer the task of intent `id`.
    pub fn index_task(&mut self, address: &str, id: Uuid) {
        self.put(task_key(address, id), Vec::new());
    }

    pub fn unindex_task(&mut self, address: &str, id: Uuid) {
        self.remove(task_key(address, id));
    }
}

/// Open intents read from a handler's feed at a time.
const FEED_PAGE: usize = 500;

impl Store {
    /// Intents that may hold a task for `address`: its open intents as handler, and the tasks
    /// it answers otherwise (`ht/` index). Readers check that each task is open.
    pub fn task_candidates(&self, address: &str) -> Result<Vec<Uuid>, StoreError> {
        let mut ids = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self.feed(super::Feed::Open, address, cursor, FEED_PAGE)?;
            ids.extend(page.iter().map(|entry| entry.intent_id));
            cursor = page.last().map_or(cursor, |entry| entry.cursor);
            if page.len() < FEED_PAGE {
                break;
            }
        }
        ids.extend(self.tasks_of(address)?);
        Ok(ids)
    }

    /// Intents whose task `address` is asked to answer, oldest id first (may include tasks
    /// already over).
    pub fn tasks_of(&self, address: &str) -> Result<Vec<Uuid>, StoreError> {
        self.ids_after_prefix(&[b"ht/".as_slice(), address.as_bytes(), &[0]].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_finds_its_tasks_until_they_leave_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(dir.path()).unwrap();
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        store
            .write(move |txn| -> Result<(), StoreError> {
                txn.index_task("agent://acme/ann", first);
                txn.index_task("agent://acme/ann", second);
                txn.index_task("agent://acme/anna", first);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.tasks_of("agent://acme/ann").unwrap(), [first, second], "a longer address is not a match");
        store
            .write(move |txn| -> Result<(), StoreError> {
                txn.unindex_task("agent://acme/ann", first);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.tasks_of("agent://acme/ann").unwrap(), [second]);
        assert_eq!(store.tasks_of("agent://acme/anna").unwrap(), [first]);
    }
}
