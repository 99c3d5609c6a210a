//! Agent bindings (how each agent wants its intents) and the records of push deliveries to
//! `http`-bound agents: their state, the schedule of the next attempts keyed by due time, and
//! the dead-letter index.
//!
//! A delivery is created in the same batch as the intent reaches its handler, so no intent is
//! accepted without its delivery on disk; the schedule survives restarts, and an attempt that
//! was due while the node was down is due at once after start. What an attempt's outcome means
//! for the intent is decided by `crate::delivery::worker`; this module only keeps the records.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Store, StoreError, StoredIntent, Txn, decode};

/// How an agent receives its intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// The agent holds `listen` (SSE); also what an unbound agent gets, together with poll.
    #[default]
    Stream,
    Poll,
    /// The node POSTs each intent to the agent's callback URL, signed.
    Http,
    /// Intents wait in the owner's inbox for a person.
    Inbox,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentBinding {
    pub address: String,
    pub mode: DeliveryMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The HMAC key for `http`; never shown again after the answer that set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Per-attempt time limit for `http`; the node's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    Delivered,
    /// Gave up after the last attempt; can be replayed.
    DeadLettered,
    /// The intent ended before it could be delivered.
    Obsolete,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLettered => "dead_lettered",
            DeliveryStatus::Obsolete => "obsolete",
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::DeadLettered, DeliveryStatus::Obsolete]
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not one of pending, delivered, dead_lettered, obsolete"))
    }
}

/// What a delivery carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subject {
    /// An intent, to its `http`-bound handler.
    Intent { intent_id: String },
    /// A published webhook event, to one subscription.
    Event { event_id: String, subscription_id: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub delivery_id: String,
    #[serde(flatten)]
    pub subject: Subject,
    /// Whose delivery it is: the intent's handler, or the subscription's owner.
    pub agent: String,
    pub callback_url: String,
    pub status: DeliveryStatus,
    /// Attempts made so far (since the last replay).
    pub attempts: u32,
    /// How often an operator replayed it.
    #[serde(default)]
    pub replays: u32,
    /// The intent's `max_delivery_attempts`; the node's default when absent.
    pub max_attempts: Option<u32>,
    /// When the next attempt is due (unix ms), while pending.
    pub next_attempt_at_ms: Option<u64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn binding_key(address: &str) -> Vec<u8> {
    [b"ab/".as_slice(), address.as_bytes()].concat()
}

fn delivery_key(id: Uuid) -> Vec<u8> {
    [b"dv/".as_slice(), id.as_bytes()].concat()
}

fn due_key(due_ms: u64, id: Uuid) -> Vec<u8> {
    [b"dq/".as_slice(), &due_ms.to_be_bytes(), id.as_bytes()].concat()
}

fn dead_letter_key(id: Uuid) -> Vec<u8> {
    [b"dl/".as_slice(), id.as_bytes()].concat()
}

fn parse(id: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(id).map_err(|_| StoreError::Corrupt(format!("delivery id {id:?} is not a UUID")))
}

impl Txn<'_> {
    pub fn put_binding(&mut self, binding: &AgentBinding) {
        self.put_json(binding_key(&binding.address), binding);
    }

    pub fn binding(&self, address: &str) -> Result<Option<AgentBinding>, StoreError> {
        self.get_json(&binding_key(address))
    }

    /// Starts a push delivery of the intent if its handler is bound to `http` and the intent
    /// waits for the handler to pick it up (not, say, for a person first): due now.
    pub fn deliver_if_bound(&mut self, stored: &StoredIntent, now_ms: u64, at: &str) -> Result<(), StoreError> {
        let record = &stored.record;
        let Some(binding) = self.binding(record.handler())? else { return Ok(()) };
        let (DeliveryMode::Http, Some(callback_url)) = (binding.mode, binding.callback_url) else { return Ok(()) };
        if !record.awaits_pickup() {
            return Ok(());
        }
        let max_attempts = record.options.get("max_delivery_attempts").and_then(|value| value.as_u64());
        let subject = Subject::Intent { intent_id: record.intent_id.clone() };
        let max_attempts = max_attempts.map(|max| max.min(u64::from(u32::MAX)) as u32);
        self.start_delivery(subject, record.handler(), &callback_url, max_attempts, now_ms, at)?;
        Ok(())
    }

    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.get_json(&delivery_key(parse(id)?))
    }

    /// A new delivery of `subject` for `agent` to `callback_url`, due now.
    pub fn start_delivery(
        &mut self,
        subject: Subject,
        agent: &str,
        callback_url: &str,
        max_attempts: Option<u32>,
        now_ms: u64,
        at: &str,
    ) -> Result<String, StoreError> {
        let delivery_id = Uuid::now_v7().to_string();
        self.put_delivery(&Delivery {
            delivery_id: delivery_id.clone(),
            subject,
            agent: agent.to_owned(),
            callback_url: callback_url.to_owned(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            replays: 0,
            max_attempts,
            next_attempt_at_ms: Some(now_ms),
            last_error: None,
            created_at: at.to_owned(),
            updated_at: at.to_owned(),
        })?;
        Ok(delivery_id)
    }

    /// Stores a delivery and keeps its schedule and dead-letter entries in step with it.
    pub fn put_delivery(&mut self, delivery: &Delivery) -> Result<(), StoreError> {
        let id = parse(&delivery.delivery_id)?;
        if let Some(previous) = self.get_json::<Delivery>(&delivery_key(id))?
            && let Some(due) = previous.next_attempt_at_ms
        {
            self.remove(due_key(due, id));
        }
        match (delivery.status, delivery.next_attempt_at_ms) {
            (DeliveryStatus::Pending, Some(due)) => self.put(due_key(due, id), Vec::new()),
            (DeliveryStatus::Pending, None) => {
                return Err(StoreError::Corrupt("a pending delivery needs a due time".into()));
            }
            _ => {}
        }
        if delivery.status == DeliveryStatus::DeadLettered {
            self.put(dead_letter_key(id), Vec::new());
        } else {
            self.remove(dead_letter_key(id));
        }
        self.put_json(delivery_key(id), delivery);
        self.notify_deliveries();
        Ok(())
    }
}

impl Store {
    pub fn binding(&self, address: &str) -> Result<Option<AgentBinding>, StoreError> {
        self.get_json(&binding_key(address))
    }

    pub fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.get_json(&delivery_key(parse(id)?))
    }

    /// Ids of pending deliveries due at or before `now_ms`, earliest first.
    pub fn due_deliveries(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let start = [b"dq/".as_slice(), &0u64.to_be_bytes()].concat();
        let end = [b"dq/".as_slice(), &now_ms.to_be_bytes(), &[0xff; 16]].concat();
        self.tree
            .range(start..=end)
            .take(limit)
            .map(|item| {
                let key = item?.0;
                Uuid::from_slice(&key[key.len() - 16..])
                    .map(|id| id.to_string())
                    .map_err(|_| StoreError::Corrupt("bad delivery schedule key".into()))
            })
            .collect()
    }

    /// When the earliest pending delivery due after `after_ms` is due (unix ms).
    pub fn next_delivery_due_after(&self, after_ms: u64) -> Result<Option<u64>, StoreError> {
        let start = [b"dq/".as_slice(), &after_ms.saturating_add(1).to_be_bytes()].concat();
        match self.tree.range(start..).next().filter(|item| item.as_ref().is_ok_and(|(key, _)| key.starts_with(b"dq/")))
        {
            Some(item) => {
                let key = item?.0;
                let bytes: [u8; 8] =
                    key[3..11].try_into().map_err(|_| StoreError::Corrupt("bad schedule key".into()))?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    /// Deliveries, newest last, optionally only one status and one agent. Dead letters are
    /// read from their index; other statuses scan the records.
    pub fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let records: Box<dyn Iterator<Item = Result<Delivery, StoreError>>> = match status {
            Some(DeliveryStatus::DeadLettered) => Box::new(self.tree.scan_prefix(b"dl/").map(|item| {
                let key = item?.0;
                let id = Uuid::from_slice(&key[3..]).map_err(|_| StoreError::Corrupt("bad dead-letter key".into()))?;
                self.get_json(&delivery_key(id))?
                    .ok_or_else(|| StoreError::Corrupt(format!("dead letter {id} has no delivery")))
            })),
            _ => Box::new(self.tree.scan_prefix(b"dv/").map(|item| decode(&item?.1))),
        };
        let mut found = Vec::new();
        for delivery in records {
            let delivery = delivery?;
            if status.is_none_or(|wanted| wanted == delivery.status)
                && agent.is_none_or(|agent| agent == delivery.agent)
            {
                found.push(delivery);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }
}
