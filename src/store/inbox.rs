//! Inbox threads and each owner's change feed, and the hook that delivers an intent's events
//! and outcome to its `reply_to` inbox in the same batch as the events themselves.
//!
//! What a thread holds and how it changes is `crate::inbox`'s; who may read it is `crate::api`'s.
//! The feed `u/` holds each thread once, at the cursor of its latest change, so reading it from
//! a cursor gives every thread changed since, and reading it backwards lists an inbox newest first.

use uuid::Uuid;

use super::intents::parse_id;
use super::{LinkRole, Store, StoreError, StoredIntent, Txn, decode};
use crate::inbox::Thread;
use crate::intent::LifecycleEvent;

const INBOX_COUNTER: &[u8] = b"m/inbox_cursor";

fn thread_key(id: Uuid) -> Vec<u8> {
    [b"t/".as_slice(), id.as_bytes()].concat()
}

fn change_prefix(owner: &str) -> Vec<u8> {
    [b"u/".as_slice(), owner.as_bytes(), &[0]].concat()
}

fn change_key(owner: &str, cursor: u64) -> Vec<u8> {
    [change_prefix(owner).as_slice(), &cursor.to_be_bytes()].concat()
}

fn parse_thread_id(thread: &Thread) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&thread.thread_id)
        .map_err(|_| StoreError::Corrupt(format!("thread id {:?} is not a UUID", thread.thread_id)))
}

impl Txn<'_> {
    pub fn thread(&self, id: Uuid) -> Result<Option<Thread>, StoreError> {
        self.get_json(&thread_key(id))
    }

    /// Stores a changed thread and moves it to the head of its owner's change feed (out of its
    /// former owner's feed, after a delegation). Sets `thread.cursor`.
    pub fn save_thread(&mut self, thread: &mut Thread) -> Result<(), StoreError> {
        let id = parse_thread_id(thread)?;
        let previous = self.thread(id)?;
        if let Some(previous) = &previous {
            self.remove(change_key(&previous.owner_agent, previous.cursor));
        }
        thread.cursor = self.next_counter(INBOX_COUNTER)?;
        self.put(change_key(&thread.owner_agent, thread.cursor), id.as_bytes().to_vec());
        self.put_json(thread_key(id), thread);
        // Owners who subscribed to inbox webhooks hear of it (a delegated thread is new to its
        // new owner).
        let created = previous.is_none_or(|previous| previous.owner_agent != thread.owner_agent);
        let event_type = if created { "inbox.thread_created" } else { "inbox.thread_updated" };
        self.publish_thread_event(thread, event_type)
    }

    /// Folds events just stored for an intent into its `reply_to` thread, opening the thread
    /// with the whole log the first time. Only the node that hosts `reply_to` keeps the thread:
    /// the initiator's, whose copy is local or a replica; a handler's copy for another node's
    /// initiator never writes one.
    pub(super) fn deliver_to_inbox(
        &mut self,
        stored: &StoredIntent,
        events: &[LifecycleEvent],
    ) -> Result<(), StoreError> {
        let Some(owner) = stored.record.reply_to.as_deref() else { return Ok(()) };
        let role = stored.link.as_ref().map(|link| link.role);
        if events.is_empty() || matches!(role, Some(LinkRole::Handler | LinkRole::TransferredAway)) {
            return Ok(());
        }
        let id = parse_id(&stored.record)?;
        let (mut thread, fresh) = match self.thread(id)? {
            Some(thread) => (thread, events.to_vec()),
            None => {
                let log = self.events_after(stored, 0).unwrap_or_else(|error| {
                    tracing::warn!(%error, intent_id = %id, "opening an inbox thread without the earlier events");
                    events.to_vec()
                });
                (Thread::open(&stored.record, owner), log)
            }
        };
        let mut new_id = || Uuid::now_v7().to_string();
        let mut changed = false;
        for event in &fresh {
            changed |= thread.fold(event, &mut new_id);
        }
        if changed {
            self.save_thread(&mut thread)?;
        }
        Ok(())
    }
}

impl Txn<'_> {
    /// Publishes `event_type` about `thread` to its owner's webhook subscriptions.
    pub fn publish_thread_event(&mut self, thread: &Thread, event_type: &str) -> Result<(), StoreError> {
        let payload = serde_json::json!({
            "thread_id": thread.thread_id,
            "intent_id": thread.intent_id,
            "status": thread.status().as_str(),
            "cursor": thread.cursor,
            "updated_at": thread.updated_at,
        });
        let at = crate::clock::now_rfc3339();
        self.publish_to_subscribers(&thread.owner_agent, event_type, payload, crate::clock::now_unix_ms(), &at)
    }
}

impl Store {
    pub fn thread(&self, id: Uuid) -> Result<Option<Thread>, StoreError> {
        self.get_json(&thread_key(id))
    }

    /// Threads of `owner` changed after `cursor`, oldest change first, at most `limit`.
    pub fn inbox_changes(&self, owner: &str, cursor: u64, limit: usize) -> Result<Vec<Thread>, StoreError> {
        let start = change_key(owner, cursor.saturating_add(1));
        let end = change_key(owner, u64::MAX);
        self.tree.range(start..=end).take(limit).map(|item| self.thread_at(&item?.1)).collect()
    }

    /// Threads of `owner`, most recently changed first.
    pub fn inbox(&self, owner: &str) -> impl Iterator<Item = Result<Thread, StoreError>> + '_ {
        self.tree.scan_prefix(change_prefix(owner)).rev().map(|item| self.thread_at(&item?.1))
    }

    fn thread_at(&self, id: &[u8]) -> Result<Thread, StoreError> {
        let id = Uuid::from_slice(id).map_err(|_| StoreError::Corrupt("inbox entry is not a thread id".into()))?;
        let bytes =
            self.tree.get(thread_key(id))?.ok_or_else(|| StoreError::Corrupt(format!("thread {id} is missing")))?;
        decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::intent::{IntentRecord, NewIntent, ResolveOutcome, Status};
    use crate::store::RemoteLink;
    use crate::transport::wire::NodeRef;

    const AT: &str = "2026-11-26T12:00:00.000000Z";

    fn record(id: Uuid) -> (IntentRecord, Vec<LifecycleEvent>) {
        let new = NewIntent {
            intent_type: "intent.demo.v1".into(),
            correlation_id: "c".into(),
            from_agent: "agent://acme/a".into(),
            to_agent: "agent://globex/b".into(),
            reply_to: Some("agent://acme/inbox".into()),
            payload: json!({}),
            options: Map::new(),
        };
        IntentRecord::submit(new, id.to_string(), "agent://acme/a", AT)
    }

    fn link(role: LinkRole) -> Option<RemoteLink> {
        Some(RemoteLink { role, peer: NodeRef { org: "globex".into(), node: "n1".into() }, room_id: None })
    }

    /// The initiator's replica gets the thread and the outcome when the owner's terminal event
    /// is applied; the handler's copy of the same intent never writes one.
    #[tokio::test]
    async fn only_the_reply_to_side_writes_threads_in_the_events_own_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(dir.path()).unwrap();
        for (role, expect_thread) in [(LinkRole::Initiator, true), (LinkRole::Handler, false)] {
            let id = Uuid::now_v7();
            let (record, events) = record(id);
            let mut owner_copy = record.clone();
            let mut done =
                owner_copy.resolve(ResolveOutcome::Completed { result: json!({"r": 1}) }, Some("h"), AT).unwrap();
            let terminal = done.pop().unwrap();
            let in_progress = done.pop().unwrap();
            store
                .write(move |txn| -> Result<(), StoreError> {
                    let mut stored = txn.insert_intent(record, &events, link(role))?;
                    for event in [in_progress, terminal] {
                        stored.record.apply_remote(&event).unwrap();
                        txn.update_intent(&stored, &[event])?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            let thread = store.thread(id).unwrap();
            assert_eq!(thread.is_some(), expect_thread, "{role:?}");
            if let Some(thread) = thread {
                let completion = thread.completion().unwrap();
                assert_eq!((completion.status, completion.result.clone()), (Status::Completed, Some(json!({"r": 1}))));
                assert_eq!(thread.visible().count(), 5, "created, submitted, in_progress, completed, the message");
            }
        }
        let owners: Vec<_> = store.inbox("agent://acme/inbox").collect::<Result<_, _>>().unwrap();
        assert_eq!(owners.len(), 1);
        drop(store);
        writer.finished().await;
    }
}
