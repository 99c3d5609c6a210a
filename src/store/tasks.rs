//! The human-task index: the open tasks an address is asked to answer without being the
//! intent's handler (assignees that are agent addresses, `escalate_to`). Tasks of a handler are
//! found through its open-intent feed instead.
//!
//! Owns the `ht/` keys only. Entries are written when a task is assigned and removed when it is
//! answered; a task that ends another way (cancel, deadline) leaves its entry, which readers
//! drop by checking that the task is still open. It knows nothing of task rules.

use uuid::Uuid;

use super::{Store, StoreError, Txn};

fn task_key(address: &str, id: Uuid) -> Vec<u8> {
    [b"ht/".as_slice(), address.as_bytes(), &[0], id.as_bytes()].concat()
}

impl Txn<'_> {
    /// Notes that `address` is asked to answer the task of intent `id`.
    pub fn index_task(&mut self, address: &str, id: Uuid) {
        self.put(task_key(address, id), Vec::new());
    }

    pub fn unindex_task(&mut self, address: &str, id: Uuid) {
        self.remove(task_key(address, id));
    }
}

impl Store {
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
