//! Webhook subscriptions (an owner's callback URL for some event types) and the events
//! published to them. Each published event becomes one push delivery per matching active
//! subscription, in the same batch (see `deliveries`); the delivering is `crate::delivery`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::deliveries::Subject;
use super::{Store, StoreError, Txn, decode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub subscription_id: String,
    pub owner_agent: String,
    pub callback_url: String,
    pub event_types: Vec<String>,
    /// The HMAC key; never shown after the answer that set it.
    pub secret: String,
    pub active: bool,
    pub description: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub revoked_at: Option<String>,
}

impl Subscription {
    pub fn wants(&self, event_type: &str) -> bool {
        self.active && self.revoked_at.is_none() && self.event_types.iter().any(|wanted| wanted == event_type)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub event_id: String,
    pub owner_agent: String,
    pub event_type: String,
    pub source: String,
    pub payload: Value,
    pub accepted_at: String,
    /// Every delivery ever started for it, replays included.
    pub delivery_ids: Vec<String>,
    pub replayed_at: Option<String>,
}

fn subscription_key(id: Uuid) -> Vec<u8> {
    [b"ws/".as_slice(), id.as_bytes()].concat()
}

fn owner_prefix(owner: &str) -> Vec<u8> {
    [b"wo/".as_slice(), owner.as_bytes(), &[0]].concat()
}

fn owner_key(owner: &str, id: Uuid) -> Vec<u8> {
    [owner_prefix(owner).as_slice(), id.as_bytes()].concat()
}

fn event_key(id: Uuid) -> Vec<u8> {
    [b"we/".as_slice(), id.as_bytes()].concat()
}

fn parse(id: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(id).map_err(|_| StoreError::Corrupt(format!("{id:?} is not a UUID")))
}

impl Txn<'_> {
    pub fn put_subscription(&mut self, subscription: &Subscription) -> Result<(), StoreError> {
        let id = parse(&subscription.subscription_id)?;
        self.put(owner_key(&subscription.owner_agent, id), Vec::new());
        self.put_json(subscription_key(id), subscription);
        Ok(())
    }

    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        self.get_json(&subscription_key(parse(id)?))
    }

    pub fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>, StoreError> {
        self.get_json(&event_key(parse(id)?))
    }

    /// Publishes an event the node itself raises (an inbox change) to the owner's subscriptions
    /// that want it, in this batch. Without such a subscription nothing is stored.
    pub fn publish_to_subscribers(
        &mut self,
        owner: &str,
        event_type: &str,
        payload: Value,
        now_ms: u64,
        at: &str,
    ) -> Result<(), StoreError> {
        let prefix = owner_prefix(owner);
        let mut subscriptions = Vec::new();
        for item in self.committed().scan_prefix(&prefix) {
            let key = item?.0;
            let id = Uuid::from_slice(&key[prefix.len()..])
                .map_err(|_| StoreError::Corrupt("bad subscription index key".into()))?;
            subscriptions.extend(self.get_json::<Subscription>(&subscription_key(id))?);
        }
        if !subscriptions.iter().any(|subscription| subscription.wants(event_type)) {
            return Ok(());
        }
        let mut event = WebhookEvent {
            event_id: Uuid::now_v7().to_string(),
            owner_agent: owner.to_owned(),
            event_type: event_type.to_owned(),
            source: "axp-node".to_owned(),
            payload,
            accepted_at: at.to_owned(),
            delivery_ids: Vec::new(),
            replayed_at: None,
        };
        self.fan_out(&mut event, &subscriptions, now_ms, at).map(|_| ())
    }

    /// Starts one delivery of the event per active subscription of its owner that wants its
    /// type, records them on the event and stores it. Returns how many were started.
    pub fn fan_out(
        &mut self,
        event: &mut WebhookEvent,
        subscriptions: &[Subscription],
        now_ms: u64,
        at: &str,
    ) -> Result<usize, StoreError> {
        let mut started = 0;
        for subscription in subscriptions.iter().filter(|subscription| subscription.wants(&event.event_type)) {
            let subject = Subject::Event {
                event_id: event.event_id.clone(),
                subscription_id: subscription.subscription_id.clone(),
            };
            let id = self.start_delivery(subject, &event.owner_agent, &subscription.callback_url, None, now_ms, at)?;
            event.delivery_ids.push(id);
            started += 1;
        }
        self.put_json(event_key(parse(&event.event_id)?), event);
        Ok(started)
    }
}

impl Store {
    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        self.get_json(&subscription_key(parse(id)?))
    }

    pub fn webhook_event(&self, id: &str) -> Result<Option<WebhookEvent>, StoreError> {
        self.get_json(&event_key(parse(id)?))
    }

    /// The owner's subscriptions, revoked ones included, oldest first.
    pub fn subscriptions(&self, owner: &str) -> Result<Vec<Subscription>, StoreError> {
        let prefix = owner_prefix(owner);
        self.tree
            .scan_prefix(&prefix)
            .map(|item| {
                let key = item?.0;
                let id = Uuid::from_slice(&key[prefix.len()..])
                    .map_err(|_| StoreError::Corrupt("bad subscription index key".into()))?;
                self.tree
                    .get(subscription_key(id))?
                    .map(|bytes| decode(&bytes))
                    .transpose()?
                    .ok_or_else(|| StoreError::Corrupt(format!("subscription {id} is indexed but missing")))
            })
            .collect()
    }
}
