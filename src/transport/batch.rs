//! Packing outbox items into the content of `axp.*` Matrix events, and unpacking it (pure).
//!
//! Wire format of the content of `axp.intent.v1`, `axp.lifecycle.v1` and `axp.control.v1`, one of:
//!
//! - `{"items": [ITEM, ...]}`: the items as plain JSON (the original form);
//! - `{"items_deflate": "BASE64"}`: the JSON array `[ITEM, ...]` compressed with raw DEFLATE
//!   (RFC 1951, no zlib or gzip header), then standard base64 with padding.
//!
//! A receiver accepts both (see [`EncodedItems`]); a sender uses the compressed form only when it
//! is the smaller one, so anything that fits an event as plain JSON (what the 413 check at submit
//! guarantees) can still be sent. Items of one kind are highly repetitive JSON (same keys, same
//! addresses, same timestamps' prefixes), so DEFLATE carries 5-10 times as many items per event;
//! the homeserver's cost is mostly per event, not per byte.
//!
//! Several lifecycle items of one intent in one batch are merged into one item, and a batch that
//! holds only news of intents whose handler is still at work ([`holdable`]) may wait a little for
//! what follows, so that `delivered` and an immediate `completed` travel in one event.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::wire::{Items, LifecycleItem, MAX_EVENT_CONTENT_BYTES};
use crate::intent::{LifecycleEvent, Status};

/// The field of the compressed form.
pub const COMPRESSED_FIELD: &str = "items_deflate";

/// A peer's compressed items may expand to at most this much JSON: a bound on what a
/// decompression bomb can cost.
pub const MAX_DECODED_BYTES: u64 = 16 * 1024 * 1024;

/// Event content as received, in either form; turned into [`Items`] by `TryFrom`.
#[derive(Debug, Deserialize)]
pub struct EncodedItems {
    items: Option<Value>,
    items_deflate: Option<String>,
}

impl<T: DeserializeOwned> TryFrom<EncodedItems> for Items<T> {
    type Error = String;

    fn try_from(encoded: EncodedItems) -> Result<Self, String> {
        let items = match (encoded.items, encoded.items_deflate) {
            (Some(items), None) => items,
            (None, Some(compressed)) => inflate(&compressed)?,
            _ => return Err(format!("content needs exactly one of `items` and `{COMPRESSED_FIELD}`")),
        };
        serde_json::from_value(items).map(|items| Items { items }).map_err(|error| error.to_string())
    }
}

fn inflate(compressed: &str) -> Result<Value, String> {
    let bytes = STANDARD.decode(compressed).map_err(|error| error.to_string())?;
    let mut json = Vec::new();
    DeflateDecoder::new(bytes.as_slice())
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|error| error.to_string())?;
    if json.len() as u64 > MAX_DECODED_BYTES {
        return Err(format!("compressed items expand beyond {MAX_DECODED_BYTES} bytes"));
    }
    serde_json::from_slice(&json).map_err(|error| error.to_string())
}

fn deflate(json: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::with_capacity(json.len() / 4), Compression::default());
    encoder.write_all(json).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Room for the braces and the field name around the encoded items.
const CONTENT_OVERHEAD: usize = 32;

/// The content of one event carrying `items`, in whichever form is smaller, with its size.
fn encode(items: &[Value]) -> (Value, usize) {
    let json = serde_json::to_vec(items).expect("JSON values serialise");
    let compressed = STANDARD.encode(deflate(&json));
    if compressed.len() < json.len() {
        let size = compressed.len() + CONTENT_OVERHEAD;
        (json!({ COMPRESSED_FIELD: compressed }), size)
    } else {
        let size = json.len() + CONTENT_OVERHEAD;
        (json!({ "items": items }), size)
    }
}

/// Event contents for `items`, in order, each at most `MAX_EVENT_CONTENT_BYTES`.
#[derive(Debug, Default)]
pub struct Packed {
    /// Each event's content and how many items it carries.
    pub events: Vec<(Value, usize)>,
    /// Items that cannot fit an event even alone, in either form.
    pub oversize: Vec<Value>,
}

/// Packs `items` (in order) into as few events as it finds: the whole list if it fits, else
/// parts sized by the measured compression ratio, halved again while a part is too large.
pub fn pack(items: Vec<Value>) -> Packed {
    pack_within(items, MAX_EVENT_CONTENT_BYTES)
}

fn pack_within(items: Vec<Value>, limit: usize) -> Packed {
    let mut packed = Packed::default();
    if !items.is_empty() {
        pack_into(&items, limit, &mut packed);
    }
    packed
}

fn pack_into(items: &[Value], limit: usize, packed: &mut Packed) {
    let (content, size) = encode(items);
    if size <= limit {
        packed.events.push((content, items.len()));
        return;
    }
    if items.len() == 1 {
        packed.oversize.push(items[0].clone());
        return;
    }
    // Aim each part at 90% of the limit; parts compress about as well as the whole.
    let parts = size.div_ceil(limit * 9 / 10).clamp(2, items.len());
    let per_part = items.len().div_ceil(parts);
    for part in items.chunks(per_part) {
        pack_into(part, limit, packed);
    }
}

/// Merges lifecycle items of the same intent into one (at the place of its first), events in
/// seq order without repeats. Items that do not parse are kept as they are.
pub fn merge_lifecycle(items: Vec<Value>) -> Vec<Value> {
    enum Merged {
        Intent(String, BTreeMap<u64, LifecycleEvent>),
        Unreadable(Value),
    }
    let mut merged: Vec<Merged> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for item in items {
        let Ok(LifecycleItem { intent_id, events }) = serde_json::from_value::<LifecycleItem>(item.clone()) else {
            merged.push(Merged::Unreadable(item));
            continue;
        };
        let position = *index.entry(intent_id.clone()).or_insert_with(|| {
            merged.push(Merged::Intent(intent_id, BTreeMap::new()));
            merged.len() - 1
        });
        if let Merged::Intent(_, by_seq) = &mut merged[position] {
            for event in events {
                by_seq.entry(event.seq).or_insert(event);
            }
        }
    }
    merged
        .into_iter()
        .map(|entry| match entry {
            Merged::Intent(intent_id, by_seq) => {
                let item = LifecycleItem { intent_id, events: by_seq.into_values().collect() };
                serde_json::to_value(item).expect("events serialise")
            }
            Merged::Unreadable(item) => item,
        })
        .collect()
}

/// Whether a lifecycle item only reports that the handler has the intent and is at work on it
/// (delivered, acknowledged, in progress): its next event most likely follows from the same
/// handler soon, and the two may share an event. Anything else (a new status the initiator
/// must act on, a terminal one, something unreadable) is sent at once.
pub fn holdable(item: &Value) -> bool {
    serde_json::from_value::<LifecycleItem>(item.clone()).is_ok_and(|item| {
        item.events
            .last()
            .is_some_and(|event| matches!(event.status, Status::Delivered | Status::Acknowledged | Status::InProgress))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::intent::{IntentRecord, NewIntent, ResolveOutcome};
    use crate::transport::wire::IntentItem;

    fn intent(index: usize) -> IntentItem {
        let new = NewIntent {
            intent_type: "intent.bench.v1".into(),
            correlation_id: format!("c-{index}"),
            from_agent: "agent://acme/ops/bench".into(),
            to_agent: "agent://globex/sales/bench".into(),
            reply_to: None,
            payload: json!({"index": index, "note": "a small payload of a typical size for a task description"}),
            options: Map::new(),
        };
        let id = uuid::Uuid::now_v7().to_string();
        let (record, events) = IntentRecord::submit(new, id, "agent://acme/ops/bench", "2026-11-26T13:07:00.000Z");
        IntentItem { record, events }
    }

    fn decode(content: &Value) -> Vec<Value> {
        let encoded: EncodedItems = serde_json::from_value(content.clone()).unwrap();
        Items::<Value>::try_from(encoded).unwrap().items
    }

    #[test]
    fn packed_items_come_back_in_order_and_every_event_fits() {
        let items: Vec<Value> = (0..500).map(|index| serde_json::to_value(intent(index)).unwrap()).collect();
        let plain = serde_json::to_vec(&items).unwrap().len();
        let packed = pack(items.clone());
        assert!(packed.oversize.is_empty());
        let mut back = Vec::new();
        for (content, count) in &packed.events {
            assert!(serde_json::to_vec(content).unwrap().len() <= MAX_EVENT_CONTENT_BYTES);
            assert!(content.get(COMPRESSED_FIELD).is_some(), "repetitive items travel compressed");
            let items = decode(content);
            assert_eq!(items.len(), *count);
            back.extend(items);
        }
        assert_eq!(back, items);
        let plain_events = plain.div_ceil(MAX_EVENT_CONTENT_BYTES);
        assert!(packed.events.len() * 3 <= plain_events, "{} events, {plain_events} uncompressed", packed.events.len());
    }

    #[test]
    fn incompressible_items_stay_plain_and_what_fits_plain_always_fits() {
        let noise = "a repetitive note; ".repeat(2000);
        // Random text barely compresses; base64 of its deflate would be larger.
        let random = |length: usize| -> String {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            (0..length).map(|_| char::from(rng.gen_range(b'0'..=b'z'))).filter(char::is_ascii_alphanumeric).collect()
        };
        let item = json!({"payload": random(30_000)});
        let packed = pack(vec![item.clone()]);
        assert!(packed.oversize.is_empty());
        assert!(packed.events[0].0.get("items").is_some());
        assert_eq!(decode(&packed.events[0].0), vec![item]);
        let too_big = json!({"payload": "y".repeat(MAX_EVENT_CONTENT_BYTES)});
        let packed = pack(vec![json!({"n": noise}), too_big.clone()]);
        assert!(packed.oversize.is_empty(), "a repetitive item fits compressed");
        let huge_random = json!({"payload": random(80_000)});
        let packed = pack(vec![json!({"a": 1}), huge_random.clone(), json!({"b": 2})]);
        assert!(packed.oversize == vec![huge_random], "random text too large for an event is refused");
        assert_eq!(packed.events.iter().flat_map(|(content, _)| decode(content)).count(), 2);
    }

    #[test]
    fn a_small_limit_splits_into_many_events() {
        let items: Vec<Value> = (0..200).map(|index| serde_json::to_value(intent(index)).unwrap()).collect();
        let packed = pack_within(items.clone(), 2 * 1024);
        assert!(packed.events.len() > 4, "{} events", packed.events.len());
        assert!(packed.events.iter().all(|(content, _)| serde_json::to_vec(content).unwrap().len() <= 2 * 1024));
        let back: Vec<Value> = packed.events.iter().flat_map(|(content, _)| decode(content)).collect();
        assert_eq!(back, items);
    }

    #[test]
    fn receivers_refuse_ambiguous_broken_or_explosive_content() {
        let parse = |content: Value| {
            serde_json::from_value::<EncodedItems>(content)
                .map_err(|e| e.to_string())
                .and_then(Items::<Value>::try_from)
        };
        assert_eq!(parse(json!({"items": [1, 2]})).unwrap().items, vec![json!(1), json!(2)]);
        assert!(parse(json!({})).is_err());
        assert!(parse(json!({"items": [], COMPRESSED_FIELD: ""})).is_err());
        assert!(parse(json!({COMPRESSED_FIELD: "not base64!"})).is_err());
        assert!(parse(json!({COMPRESSED_FIELD: STANDARD.encode(b"not deflate")})).is_err());
        let bomb = STANDARD.encode(deflate(&vec![b' '; MAX_DECODED_BYTES as usize + 10]));
        assert!(bomb.len() < 64 * 1024);
        assert!(parse(json!({COMPRESSED_FIELD: bomb})).unwrap_err().contains("expand beyond"));
        // The typed form used by the event handlers reads both forms too.
        let content = pack(vec![json!({"intent_id": "i", "events": []})]).events.remove(0).0;
        let typed: Items<LifecycleItem> = serde_json::from_value(content).unwrap();
        assert_eq!(typed.items[0].intent_id, "i");
    }

    #[test]
    fn lifecycle_items_of_one_intent_merge_in_seq_order() {
        let IntentItem { mut record, .. } = intent(1);
        let delivered = vec![record.transition(Status::Delivered, None, Some("x"), json!({}), "t1").unwrap()];
        let completed =
            record.resolve(ResolveOutcome::Completed { result: json!({"ok": true}) }, Some("x"), "t2").unwrap();
        let other = json!({"intent_id": "other", "events": []});
        let item = |events: &[LifecycleEvent]| {
            serde_json::to_value(LifecycleItem { intent_id: record.intent_id.clone(), events: events.to_vec() })
                .unwrap()
        };
        let merged = merge_lifecycle(vec![
            item(&delivered),
            other.clone(),
            json!("unreadable"),
            item(&completed),
            item(&delivered),
        ]);
        let mut all = delivered.clone();
        all.extend(completed.clone());
        assert_eq!(merged, vec![item(&all), other, json!("unreadable")]);
        assert!(holdable(&item(&delivered)));
        assert!(!holdable(&item(&all)), "a terminal event goes at once");
        assert!(!holdable(&json!({"intent_id": "i", "events": []})));
    }
}
