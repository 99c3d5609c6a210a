//! The durable schedule of intent timers, keyed by due time.
//!
//! Owns two key families: `tq/` (due ms BE, intent id, kind tag, n BE) is the schedule the
//! worker reads in due order; `ti/` (intent id) lists what is scheduled for one intent, so a
//! change can replace exactly those entries. [`Txn::schedule_timers`] runs in every intent save,
//! so a timer is written in the same batch as the change that makes it needed and removed in the
//! same batch as the change that fires or obsoletes it. Only intents this node owns (no link, or
//! `LinkRole::Handler`) get timers; replicas follow the owner's events instead.
//!
//! What a timer does is `crate::intent::timers`; when it runs is `crate::timers`.

use uuid::Uuid;

use super::{LinkRole, Store, StoreError, StoredIntent, Txn};
use crate::intent::{Timer, TimerKind};

const SCHEDULE: &[u8] = b"tq/";
const PER_INTENT: &[u8] = b"ti/";

/// One entry of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueTimer {
    pub intent_id: Uuid,
    pub timer: Timer,
}

fn schedule_key(id: Uuid, timer: &Timer) -> Vec<u8> {
    let (tag, n) = timer.kind.code();
    [SCHEDULE, &timer.due_ms.to_be_bytes(), id.as_bytes(), &[tag], &n.to_be_bytes()].concat()
}

fn per_intent_key(id: Uuid) -> Vec<u8> {
    [PER_INTENT, id.as_bytes()].concat()
}

fn parse_schedule_key(key: &[u8]) -> Result<DueTimer, StoreError> {
    let corrupt = || StoreError::Corrupt("bad timer schedule key".into());
    let rest = key.strip_prefix(SCHEDULE).filter(|rest| rest.len() == 8 + 16 + 1 + 4).ok_or_else(corrupt)?;
    let due_ms = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
    let intent_id = Uuid::from_slice(&rest[8..24]).map_err(|_| corrupt())?;
    let n = u32::from_be_bytes(rest[25..29].try_into().map_err(|_| corrupt())?);
    let kind = TimerKind::from_code(rest[24], n).ok_or_else(corrupt)?;
    Ok(DueTimer { intent_id, timer: Timer { due_ms, kind } })
}

/// Whether this node runs the intent's timers: it sequences the intent's log.
pub(super) fn owns(stored: &StoredIntent) -> bool {
    stored.link.as_ref().is_none_or(|link| link.role == LinkRole::Handler)
}

impl Txn<'_> {
    /// Brings the schedule of one intent in line with what it needs now.
    pub(super) fn schedule_timers(&mut self, id: Uuid, stored: &StoredIntent) -> Result<(), StoreError> {
        let wanted = if owns(stored) { stored.record.timers() } else { Vec::new() };
        let scheduled: Vec<Timer> = self.get_json(&per_intent_key(id))?.unwrap_or_default();
        if scheduled == wanted {
            return Ok(());
        }
        for timer in scheduled.iter().filter(|timer| !wanted.contains(timer)) {
            self.remove(schedule_key(id, timer));
        }
        for timer in wanted.iter().filter(|timer| !scheduled.contains(timer)) {
            self.put(schedule_key(id, timer), Vec::new());
        }
        if wanted.is_empty() {
            self.remove(per_intent_key(id));
        } else {
            self.put_json(per_intent_key(id), &wanted);
        }
        self.notify_timers();
        Ok(())
    }

    /// Takes a timer off the schedule whatever the intent needs: it fired, or was stale.
    pub fn unschedule_timer(&mut self, due: &DueTimer) -> Result<(), StoreError> {
        self.remove(schedule_key(due.intent_id, &due.timer));
        let key = per_intent_key(due.intent_id);
        let scheduled: Option<Vec<Timer>> = self.get_json(&key)?;
        if let Some(mut scheduled) = scheduled.filter(|scheduled| scheduled.contains(&due.timer)) {
            scheduled.retain(|timer| *timer != due.timer);
            if scheduled.is_empty() {
                self.remove(key);
            } else {
                self.put_json(key, &scheduled);
            }
        }
        Ok(())
    }
}

impl Store {
    /// Timers due at or before `now_ms`, earliest first, at most `limit`.
    pub fn due_timers(&self, now_ms: u64, limit: usize) -> Result<Vec<DueTimer>, StoreError> {
        let start = SCHEDULE.to_vec();
        let end = [SCHEDULE, &now_ms.to_be_bytes(), &[0xff; 21]].concat();
        self.tree.range(start..=end).take(limit).map(|item| parse_schedule_key(&item?.0)).collect()
    }

    /// When the earliest timer due after `after_ms` is due (unix ms).
    pub fn next_timer_due_after(&self, after_ms: u64) -> Result<Option<u64>, StoreError> {
        let start = [SCHEDULE, &after_ms.saturating_add(1).to_be_bytes()].concat();
        let end = [SCHEDULE, &[0xff; 29]].concat();
        match self.tree.range(start..=end).next() {
            Some(item) => Ok(Some(parse_schedule_key(&item?.0)?.timer.due_ms)),
            None => Ok(None),
        }
    }

    /// What is scheduled for one intent.
    pub fn timers_of(&self, id: Uuid) -> Result<Vec<Timer>, StoreError> {
        Ok(self.get_json(&per_intent_key(id))?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::intent::{IntentRecord, ResolveOutcome, Status, WaitingReason};
    use crate::store::RemoteLink;
    use crate::transport::wire::NodeRef;

    fn new_intent(id: Uuid) -> IntentRecord {
        let options = json!({"deadline_at": "2030-01-01T00:00:00Z", "remind_after_seconds": 60});
        crate::intent::sample(&id.to_string(), options.as_object().cloned().unwrap(), "2029-01-01T00:00:00Z").0
    }

    #[tokio::test]
    async fn the_schedule_follows_each_save_and_empties_when_the_intent_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(dir.path()).unwrap();
        let (owned, replica) = (Uuid::now_v7(), Uuid::now_v7());
        store
            .write(move |txn| -> Result<(), StoreError> {
                txn.insert_intent(new_intent(owned), &[], None)?;
                let peer = NodeRef { org: "other".into(), node: "n".into() };
                let link = RemoteLink { role: LinkRole::Initiator, peer, room_id: None };
                txn.insert_intent(new_intent(replica), &[], Some(link))?;
                Ok(())
            })
            .await
            .unwrap();
        let deadline = parse_ms_or_panic("2030-01-01T00:00:00Z");
        assert_eq!(store.timers_of(owned).unwrap(), [Timer { due_ms: deadline, kind: TimerKind::Deadline }]);
        assert!(store.timers_of(replica).unwrap().is_empty(), "a replica runs no timers");
        store
            .write(move |txn| -> Result<(), StoreError> {
                let mut stored = txn.intent(owned)?.unwrap();
                let reason = Some(WaitingReason::WaitingForHuman);
                let event =
                    stored.record.transition(Status::Waiting, reason, None, json!({}), "2029-01-01T00:00:01Z").unwrap();
                txn.update_intent(&stored, &[event])
            })
            .await
            .unwrap();
        let wanted = store.intent(owned).unwrap().unwrap().record.timers();
        assert_eq!((wanted.len(), store.timers_of(owned).unwrap()), (2, wanted.clone()));
        let due: Vec<Timer> = store.due_timers(u64::MAX, 10).unwrap().into_iter().map(|due| due.timer).collect();
        assert_eq!(due, wanted, "the schedule is ordered by due time");
        assert_eq!(store.next_timer_due_after(0).unwrap(), Some(wanted[0].due_ms));
        store
            .write(move |txn| -> Result<(), StoreError> {
                let mut stored = txn.intent(owned)?.unwrap();
                let outcome = ResolveOutcome::Canceled { reason: "done".into() };
                let events = stored.record.resolve(outcome, None, "2029-01-01T00:00:02Z").unwrap();
                txn.update_intent(&stored, &events)
            })
            .await
            .unwrap();
        assert!(store.timers_of(owned).unwrap().is_empty());
        assert!(store.due_timers(u64::MAX, 10).unwrap().is_empty(), "nothing left behind");
    }

    fn parse_ms_or_panic(text: &str) -> u64 {
        crate::intent::parse_ms(text).unwrap()
    }

    #[test]
    fn schedule_keys_round_trip_and_sort_by_due_time() {
        let id = Uuid::now_v7();
        let early = Timer { due_ms: 5, kind: TimerKind::Reminder { n: 9 } };
        let late = Timer { due_ms: 256, kind: TimerKind::Deadline };
        assert!(schedule_key(id, &early) < schedule_key(id, &late));
        for timer in [early, late] {
            assert_eq!(parse_schedule_key(&schedule_key(id, &timer)).unwrap(), DueTimer { intent_id: id, timer });
        }
        assert!(parse_schedule_key(b"tq/short").is_err());
    }
}
