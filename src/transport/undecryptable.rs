//! The events of route rooms this node could not decrypt yet, and when to try each again.
//!
//! Federation carries a room event (a PDU) and the to-device message with its Megolm key (an
//! EDU) separately, so an event can reach this node's sync before its key does. matrix-sdk then
//! hands it over as an undecryptable `m.room.encrypted` event and never dispatches it again once
//! the key arrives. `matrix` keeps such events here and tries them again when room keys for
//! their room arrive, and on a timer as a fallback ([`RETRY_DELAYS`]).
//!
//! Owns only the in-memory set and its schedule (pure: the caller passes the time in); the
//! decryption and the handling of the decrypted event are `matrix`'s. A node that stops while
//! an event is pending loses nothing: the back-fill after its first sync handles the room's
//! history again, decrypting what the keys received by then allow.

use std::time::{Duration, Instant};

/// Waits between timed attempts; after the last one fails the event is given up (about four
/// minutes after it was first seen). Attempts triggered by arriving room keys come on top.
pub const RETRY_DELAYS: [Duration; 8] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
    Duration::from_secs(64),
    Duration::from_secs(128),
];

/// At most this many events wait at once; more means something else is broken (the peer
/// shares no keys at all), and the rest is refused with a warning.
pub const MAX_PENDING: usize = 10_000;

/// An event that could not be decrypted: where it is, and the event itself (`E`).
#[derive(Debug, Clone, PartialEq)]
pub struct Undecrypted<E> {
    pub room_id: String,
    pub event_id: String,
    pub event: E,
}

#[derive(Debug)]
struct Entry<E> {
    undecrypted: Undecrypted<E>,
    first_seen: Instant,
    /// Timed attempts made so far.
    attempts: usize,
    next_at: Instant,
}

/// What [`Pending::remember`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    New,
    AlreadyPending,
    Full,
}

/// An event given up after every timed attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct GaveUp {
    pub room_id: String,
    pub event_id: String,
    pub attempts: usize,
    pub waited: Duration,
}

/// The pending events, oldest first: they are tried again in the order they arrived, so that
/// an intent is adopted before a request about it that came right after it.
#[derive(Debug)]
pub struct Pending<E> {
    entries: Vec<Entry<E>>,
}

impl<E> Default for Pending<E> {
    fn default() -> Self {
        Pending { entries: Vec::new() }
    }
}

impl<E: Clone> Pending<E> {
    pub fn remember(&mut self, undecrypted: Undecrypted<E>, now: Instant) -> Remembered {
        if self.position(&undecrypted.room_id, &undecrypted.event_id).is_some() {
            return Remembered::AlreadyPending;
        }
        if self.entries.len() >= MAX_PENDING {
            return Remembered::Full;
        }
        self.entries.push(Entry { undecrypted, first_seen: now, attempts: 0, next_at: now + RETRY_DELAYS[0] });
        Remembered::New
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pending events of the rooms `rooms` names, oldest first.
    pub fn in_rooms(&self, rooms: &[String]) -> Vec<Undecrypted<E>> {
        self.select(|entry| rooms.contains(&entry.undecrypted.room_id))
    }

    /// All pending events, oldest first.
    pub fn all(&self) -> Vec<Undecrypted<E>> {
        self.select(|_| true)
    }

    /// The events whose timed attempt is due at `now`, oldest first.
    pub fn due(&self, now: Instant) -> Vec<Undecrypted<E>> {
        self.select(|entry| entry.next_at <= now)
    }

    /// When the next timed attempt is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.iter().map(|entry| entry.next_at).min()
    }

    /// The event was decrypted (or is gone): it leaves the set. Returns how long it waited.
    pub fn resolved(&mut self, room_id: &str, event_id: &str, now: Instant) -> Option<Duration> {
        let index = self.position(room_id, event_id)?;
        Some(now.saturating_duration_since(self.entries.remove(index).first_seen))
    }

    /// A timed attempt failed: the next one is scheduled, or, after the last, the event is
    /// given up and returned.
    pub fn failed(&mut self, room_id: &str, event_id: &str, now: Instant) -> Option<GaveUp> {
        let index = self.position(room_id, event_id)?;
        let entry = &mut self.entries[index];
        entry.attempts += 1;
        if let Some(delay) = RETRY_DELAYS.get(entry.attempts) {
            entry.next_at = now + *delay;
            return None;
        }
        let entry = self.entries.remove(index);
        Some(GaveUp {
            room_id: entry.undecrypted.room_id,
            event_id: entry.undecrypted.event_id,
            attempts: entry.attempts,
            waited: now.saturating_duration_since(entry.first_seen),
        })
    }

    fn position(&self, room_id: &str, event_id: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|entry| entry.undecrypted.room_id == room_id && entry.undecrypted.event_id == event_id)
    }

    fn select(&self, wanted: impl Fn(&Entry<E>) -> bool) -> Vec<Undecrypted<E>> {
        self.entries.iter().filter(|entry| wanted(entry)).map(|entry| entry.undecrypted.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, id: &str) -> Undecrypted<u32> {
        Undecrypted { room_id: room.into(), event_id: id.into(), event: 0 }
    }

    #[test]
    fn events_are_tried_again_on_a_growing_schedule_then_given_up() {
        let start = Instant::now();
        let mut pending = Pending::default();
        assert_eq!(pending.remember(event("!r", "$1"), start), Remembered::New);
        assert_eq!(pending.remember(event("!r", "$1"), start), Remembered::AlreadyPending);
        assert!(pending.due(start).is_empty());
        let mut now = start;
        for delay in RETRY_DELAYS {
            assert_eq!(pending.next_due(), Some(now + delay));
            now += delay;
            assert_eq!(pending.due(now), [event("!r", "$1")]);
            let gave_up = pending.failed("!r", "$1", now);
            assert_eq!(gave_up.is_some(), delay == RETRY_DELAYS[RETRY_DELAYS.len() - 1]);
        }
        assert!(pending.is_empty(), "given up after the last delay");
        let total: Duration = RETRY_DELAYS.iter().sum();
        assert!(total > Duration::from_secs(120) && total < Duration::from_secs(600), "a few minutes: {total:?}");
    }

    #[test]
    fn events_come_back_oldest_first_by_room_and_leave_once_resolved() {
        let now = Instant::now();
        let mut pending = Pending::default();
        for (room, id) in [("!a", "$1"), ("!b", "$2"), ("!a", "$3")] {
            pending.remember(event(room, id), now);
        }
        assert_eq!(pending.in_rooms(&["!a".into()]), [event("!a", "$1"), event("!a", "$3")]);
        assert_eq!(pending.resolved("!a", "$1", now + Duration::from_secs(3)), Some(Duration::from_secs(3)));
        assert_eq!(pending.resolved("!a", "$1", now), None, "only once");
        assert_eq!(pending.all(), [event("!b", "$2"), event("!a", "$3")]);
        assert_eq!(pending.len(), 2);
    }
}
