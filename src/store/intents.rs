//! Intents, their event logs and the per-agent feeds that index them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::outbox::{OutboxEntry, OutboxKind};
use super::{Store, StoreError, Txn, decode};
use crate::intent::{IntentRecord, LifecycleEvent};
use crate::transport::wire::{IntentItem, LifecycleItem, NodeRef, TransferItem};

const FEED_COUNTER: &[u8] = b"m/feed_cursor";

/// An intent as stored: the domain record plus where it sits in the agent feeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredIntent {
    /// Position in the handler's feed; increases across intents (the `listen` cursor).
    pub cursor: u64,
    pub record: IntentRecord,
    /// Set when the intent crosses to another org's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<RemoteLink>,
}

/// How an intent is tied to another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteLink {
    pub role: LinkRole,
    /// The other node: the handler's for `Initiator`, the initiator's for `Handler`.
    pub peer: NodeRef,
    /// The route room, once known on this side.
    pub room_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkRole {
    /// This node sent the intent and keeps a replica; the handler's node owns its log.
    Initiator,
    /// This node handles an intent another node sent, and reports its events back.
    Handler,
    /// This node handled the intent for `peer` (the initiator's node) and transferred it to a
    /// handler on another node; its copy ends with the `intent.transfer` event.
    TransferredAway,
}

/// Where an intent's handler lives, as this node's registry routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerHome {
    Local,
    Remote(NodeRef),
}

impl StoredIntent {
    /// Whether another node sequences this intent's events.
    pub fn is_replica(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.role == LinkRole::Initiator)
    }

    /// Whether this node transferred the intent away and no longer follows it.
    pub fn is_transferred_away(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.role == LinkRole::TransferredAway)
    }
}

/// One intent in an agent feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedEntry {
    pub cursor: u64,
    pub intent_id: Uuid,
}

/// Which index of an agent's intents to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Every intent ever addressed to the agent.
    Received,
    /// Intents addressed to the agent that are not terminal yet.
    Open,
    /// Intents the agent sent.
    Sent,
}

impl Feed {
    fn prefix(self) -> &'static [u8] {
        match self {
            Feed::Received => b"f/",
            Feed::Open => b"o/",
            Feed::Sent => b"s/",
        }
    }
}

fn intent_key(id: Uuid) -> Vec<u8> {
    [b"i/".as_slice(), id.as_bytes()].concat()
}

fn event_key(id: Uuid, seq: u64) -> Vec<u8> {
    [b"e/".as_slice(), id.as_bytes(), &seq.to_be_bytes()].concat()
}

fn lease_key(id: Uuid) -> Vec<u8> {
    [b"l/".as_slice(), id.as_bytes()].concat()
}

fn feed_prefix(feed: Feed, agent: &str) -> Vec<u8> {
    [feed.prefix(), agent.as_bytes(), &[0]].concat()
}

fn feed_key(feed: Feed, agent: &str, cursor: u64) -> Vec<u8> {
    [feed_prefix(feed, agent).as_slice(), &cursor.to_be_bytes()].concat()
}

pub(super) fn parse_id(record: &IntentRecord) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&record.intent_id)
        .map_err(|_| StoreError::Corrupt(format!("intent id {:?} is not a UUID", record.intent_id)))
}

impl Txn<'_> {
    pub fn intent(&self, id: Uuid) -> Result<Option<StoredIntent>, StoreError> {
        self.get_json(&intent_key(id))
    }

    /// Stores a new intent with its first events and indexes it in the agents' feeds. An
    /// intent for another node's handler is queued for it in the same batch; this node keeps
    /// only a replica, so no local agent is offered it.
    pub fn insert_intent(
        &mut self,
        record: IntentRecord,
        events: &[LifecycleEvent],
        link: Option<RemoteLink>,
    ) -> Result<StoredIntent, StoreError> {
        let id = parse_id(&record)?;
        let cursor = self.next_counter(FEED_COUNTER)?;
        let value = id.as_bytes().to_vec();
        self.put(feed_key(Feed::Sent, &record.from_agent, cursor), value.clone());
        let stored = StoredIntent { cursor, record, link };
        if let Some(link) = stored.link.as_ref().filter(|link| link.role == LinkRole::Initiator) {
            let item = IntentItem { record: stored.record.clone(), events: events.to_vec() };
            self.enqueue(&OutboxEntry {
                peer: link.peer.clone(),
                address: stored.record.to_agent.clone(),
                room_id: None,
                kind: OutboxKind::Intent,
                item: serde_json::to_value(item).expect("intents serialise"),
            })?;
        } else {
            self.index_for_handler(&stored, cursor)?;
        }
        self.save_intent(&stored, events)?;
        Ok(stored)
    }

    /// Puts the intent in its handler's feeds at `cursor`, so the handler is offered it.
    fn index_for_handler(&mut self, stored: &StoredIntent, cursor: u64) -> Result<(), StoreError> {
        let record = &stored.record;
        let handler = record.handler();
        let value = parse_id(record)?.as_bytes().to_vec();
        self.put(feed_key(Feed::Received, handler, cursor), value.clone());
        if !record.status().is_terminal() {
            self.put(feed_key(Feed::Open, handler, cursor), value);
        }
        self.notify_agent(handler);
        self.register_agent(handler, record.updated_at())?;
        self.deliver_if_bound(stored, crate::clock::now_unix_ms(), record.updated_at())
    }

    /// Takes the intent out of the open feed of `handler` and drops its lease.
    fn unindex_open(&mut self, stored: &StoredIntent, handler: &str) -> Result<(), StoreError> {
        self.remove(feed_key(Feed::Open, handler, stored.cursor));
        self.remove(lease_key(parse_id(&stored.record)?));
        Ok(())
    }

    /// Moves an intent whose handler just changed (its `transfer` event is saved) to where the
    /// new handler lives. This node either keeps sequencing it (a local handler), hands the
    /// whole log to the new handler's node (when this node is the initiator's), or, as a former
    /// owner working for another initiator, stops: that initiator's node learns of the transfer
    /// from the event and hands the intent over itself.
    pub fn follow_transfer(
        &mut self,
        stored: &mut StoredIntent,
        transfer: &LifecycleEvent,
        home: HandlerHome,
    ) -> Result<(), StoreError> {
        let previous_handler = transfer.details["from_handler"].as_str().unwrap_or_default();
        let role = stored.link.as_ref().map(|link| link.role);
        match (role, home) {
            (Some(LinkRole::TransferredAway), _) => return Ok(()),
            (Some(LinkRole::Initiator), HandlerHome::Remote(peer))
                if stored.link.as_ref().is_some_and(|link| link.peer == peer) =>
            {
                return Ok(());
            }
            (None | Some(LinkRole::Handler | LinkRole::Initiator), HandlerHome::Local) => {
                self.unindex_open(stored, previous_handler)?;
                if role == Some(LinkRole::Initiator) {
                    stored.link = None;
                }
                stored.cursor = self.next_counter(FEED_COUNTER)?;
                self.index_for_handler(stored, stored.cursor)?;
            }
            (Some(LinkRole::Handler), HandlerHome::Remote(_)) => {
                self.unindex_open(stored, previous_handler)?;
                if let Some(link) = stored.link.as_mut() {
                    link.role = LinkRole::TransferredAway;
                }
            }
            (None | Some(LinkRole::Initiator), HandlerHome::Remote(peer)) => {
                self.unindex_open(stored, previous_handler)?;
                let events = self.events_after(stored, 0)?;
                let item = TransferItem { record: stored.record.clone(), events };
                self.enqueue(&OutboxEntry {
                    peer: peer.clone(),
                    address: stored.record.handler().to_owned(),
                    room_id: None,
                    kind: OutboxKind::Transfer,
                    item: serde_json::to_value(item).expect("transfers serialise"),
                })?;
                stored.link = Some(RemoteLink { role: LinkRole::Initiator, peer, room_id: None });
            }
        }
        self.save_intent(stored, &[])
    }

    /// Takes over an intent the initiator's node handed to this node's handler: a new intent
    /// here, or one this node had transferred away before and now gets back, longer.
    pub fn adopt_transfer(&mut self, item: TransferItem, link: RemoteLink) -> Result<bool, StoreError> {
        let id = parse_id(&item.record)?;
        let cursor = self.next_counter(FEED_COUNTER)?;
        let known = self.intent(id)?;
        let since = match &known {
            None => 0,
            Some(stored) if stored.is_transferred_away() && stored.record.seq() < item.record.seq() => {
                stored.record.seq()
            }
            Some(_) => return Ok(false),
        };
        let stored = StoredIntent { cursor, record: item.record, link: Some(link) };
        self.index_for_handler(&stored, cursor)?;
        let fresh: Vec<LifecycleEvent> = item.events.into_iter().filter(|event| event.seq > since).collect();
        self.save_intent(&stored, &fresh)?;
        Ok(true)
    }

    /// Stores a changed intent and the events the change appended. When this node handles the
    /// intent for another node, the events are queued for it in the same batch.
    pub fn update_intent(&mut self, stored: &StoredIntent, events: &[LifecycleEvent]) -> Result<(), StoreError> {
        if stored.link.as_ref().is_some_and(|link| link.role == LinkRole::Handler) && !events.is_empty() {
            self.send_events_to_initiator(stored, events)?;
        }
        self.save_intent(stored, events)
    }

    /// Queues events of an intent this node handles for the initiator's node.
    pub fn send_events_to_initiator(
        &mut self,
        stored: &StoredIntent,
        events: &[LifecycleEvent],
    ) -> Result<(), StoreError> {
        let Some(link) = stored.link.as_ref() else { return Ok(()) };
        let item = LifecycleItem { intent_id: stored.record.intent_id.clone(), events: events.to_vec() };
        self.enqueue(&OutboxEntry {
            peer: link.peer.clone(),
            address: stored.record.handler().to_owned(),
            room_id: link.room_id.clone(),
            kind: OutboxKind::Lifecycle,
            item: serde_json::to_value(item).expect("events serialise"),
        })
    }

    /// Events of an intent with `seq > since`, in order, including those written earlier in
    /// this batch (read key by key up to the record's seq, so nothing uncommitted is missed).
    pub fn events_after(&self, stored: &StoredIntent, since: u64) -> Result<Vec<LifecycleEvent>, StoreError> {
        let id = parse_id(&stored.record)?;
        (since.saturating_add(1)..=stored.record.seq())
            .map(|seq| {
                self.get_json(&event_key(id, seq))?
                    .ok_or_else(|| StoreError::Corrupt(format!("event {seq} of intent {id} is missing")))
            })
            .collect()
    }

    fn save_intent(&mut self, stored: &StoredIntent, events: &[LifecycleEvent]) -> Result<(), StoreError> {
        let id = parse_id(&stored.record)?;
        for event in events {
            self.put_json(event_key(id, event.seq), event);
        }
        if stored.record.status().is_terminal() {
            self.remove(feed_key(Feed::Open, stored.record.handler(), stored.cursor));
            self.remove(lease_key(id));
        }
        self.put_json(intent_key(id), stored);
        self.notify_intent(&stored.record.intent_id);
        self.schedule_timers(id, stored)?;
        self.follow_human_task(stored, events)?;
        self.deliver_to_inbox(stored, events)
    }

    pub fn set_lease(&mut self, id: Uuid, until_ms: u64) {
        self.put(lease_key(id), until_ms.to_be_bytes().to_vec());
    }

    pub fn lease(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        self.get(&lease_key(id))?.map(|bytes| decode_u64(&bytes)).transpose()
    }
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    bytes.try_into().map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt("expected 8 bytes".into()))
}

impl Store {
    pub fn intent(&self, id: Uuid) -> Result<Option<StoredIntent>, StoreError> {
        self.get_json(&intent_key(id))
    }

    /// Events with `seq > since`, in order, at most `limit`.
    pub fn events(&self, id: Uuid, since: u64, limit: usize) -> Result<Vec<LifecycleEvent>, StoreError> {
        let start = event_key(id, since.saturating_add(1));
        let end = event_key(id, u64::MAX);
        self.tree.range(start..=end).take(limit).map(|item| decode(&item?.1)).collect()
    }

    /// Entries of an agent feed with `cursor > after`, oldest first, at most `limit`.
    pub fn feed(&self, feed: Feed, agent: &str, after: u64, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        let start = feed_key(feed, agent, after.saturating_add(1));
        let end = feed_key(feed, agent, u64::MAX);
        self.tree
            .range(start..=end)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let cursor = decode_u64(&key[key.len() - 8..])?;
                let intent_id = Uuid::from_slice(&value)
                    .map_err(|_| StoreError::Corrupt("feed entry is not an intent id".into()))?;
                Ok(FeedEntry { cursor, intent_id })
            })
            .collect()
    }

    /// The highest cursor in an agent feed, 0 when empty.
    pub fn feed_head(&self, feed: Feed, agent: &str) -> Result<u64, StoreError> {
        let prefix = feed_prefix(feed, agent);
        match self.tree.scan_prefix(&prefix).next_back() {
            Some(item) => decode_u64(&item?.0[prefix.len()..]),
            None => Ok(0),
        }
    }

    pub fn lease(&self, id: Uuid) -> Result<Option<u64>, StoreError> {
        self.tree.get(lease_key(id))?.map(|bytes| decode_u64(&bytes)).transpose()
    }
}
