//! The transactional outbox of messages to other nodes, and the route rooms they travel in.
//!
//! An entry is written in the same batch as the change that causes it and deleted only after
//! the transport sent it, so a crash between the two sends it again (receivers dedupe).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Store, StoreError, Txn, decode};
use crate::transport::wire::{NodeRef, RouteState};

const OUTBOX_COUNTER: &[u8] = b"m/outbox";

/// What kind of Matrix event an entry becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxKind {
    Intent,
    Lifecycle,
    Control,
    Transfer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The node the entry goes to.
    pub peer: NodeRef,
    /// The handler address whose route room carries it.
    pub address: String,
    /// The room, when this node did not create it (the handler's side answers in the room the
    /// intent came from).
    pub room_id: Option<String>,
    pub kind: OutboxKind,
    pub item: Value,
}

fn control_key(request_id: &str) -> Vec<u8> {
    [b"C/".as_slice(), request_id.as_bytes()].concat()
}

fn entry_key(seq: u64) -> Vec<u8> {
    [b"x/".as_slice(), &seq.to_be_bytes()].concat()
}

fn room_key(address: &str, peer: &NodeRef) -> Vec<u8> {
    [b"R/".as_slice(), address.as_bytes(), &[0], peer.org.as_bytes(), &[0], peer.node.as_bytes()].concat()
}

fn route_key(room_id: &str) -> Vec<u8> {
    [b"Q/".as_slice(), room_id.as_bytes()].concat()
}

impl Txn<'_> {
    pub fn enqueue(&mut self, entry: &OutboxEntry) -> Result<(), StoreError> {
        let seq = self.next_counter(OUTBOX_COUNTER)?;
        self.put_json(entry_key(seq), entry);
        self.notify_outbox();
        Ok(())
    }

    pub fn dequeue(&mut self, seq: u64) {
        self.remove(entry_key(seq));
    }

    /// Records that a peer's control request was handled; false if it already was.
    pub fn first_sight_of_control(&mut self, request_id: &str) -> Result<bool, StoreError> {
        let key = control_key(request_id);
        if self.get(&key)?.is_some() {
            return Ok(false);
        }
        self.put(key, Vec::new());
        Ok(true)
    }

    /// Remembers a route room in both directions: by (address, peer) and by room id.
    pub fn remember_room(&mut self, room_id: &str, route: &RouteState, peer: &NodeRef) {
        self.put(room_key(&route.address, peer), room_id.as_bytes().to_vec());
        self.put_json(route_key(room_id), route);
    }
}

impl Store {
    /// Outbox entries in order, at most `limit`.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        self.tree
            .scan_prefix(b"x/")
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let seq =
                    u64::from_be_bytes(key[2..].try_into().map_err(|_| StoreError::Corrupt("outbox key".into()))?);
                Ok((seq, decode(&value)?))
            })
            .collect()
    }

    pub fn room_for(&self, address: &str, peer: &NodeRef) -> Result<Option<String>, StoreError> {
        Ok(self.tree.get(room_key(address, peer))?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub fn route_of_room(&self, room_id: &str) -> Result<Option<RouteState>, StoreError> {
        self.get_json(&route_key(room_id))
    }
}
