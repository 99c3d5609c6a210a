//! The I/O shell of intent timers: reads the schedule (`crate::store::timers`) in due order,
//! fires what is due in one write per batch, and sleeps until the next due time or until a
//! commit changes the schedule.
//!
//! What a timer does is decided in `crate::intent::timers`; this module only adds what needs
//! the node: the clock, and where an escalation target lives (routing). Exactly once: a fired
//! timer leaves the schedule in the same batch as its events, so a timer due while the node was
//! down fires right after start, and one whose batch did not reach the disk fires again.

use std::sync::Arc;
use std::time::Duration;

use crate::address::AgentAddress;
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::intent::{EventType, Fired, TimerKind};
use crate::routing::{Route, Routing};
use crate::store::{CommitNotice, DueTimer, HandlerHome, Store, StoreError, StoredIntent, Txn};
use crate::transport::wire::{NodeRef, TransferItem};

/// Timers fired in one write.
const BATCH: usize = 256;
/// Longest sleep without looking at the schedule (a guard against a missed notice).
const MAX_SLEEP: Duration = Duration::from_secs(5);
/// Pause after a failed write before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Fires timers until the task is aborted. `federation` says whether this node can hand an
/// intent to another org's node (it has a Matrix transport).
pub async fn run(store: Store, routing: Arc<Routing>, federation: bool) {
    let mut notices = store.subscribe();
    loop {
        let now = now_unix_ms();
        let due = match store.due_timers(now, BATCH) {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read the timer schedule");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if !due.is_empty() {
            let count = due.len();
            let routing = routing.clone();
            let fired = store.write(move |txn| fire_all(txn, &routing, federation, due)).await;
            if let Err(error) = fired {
                tracing::warn!(%error, count, "cannot fire due timers; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            continue;
        }
        let next = store.next_timer_due_after(now).ok().flatten();
        let sleep = next.map_or(MAX_SLEEP, |due| Duration::from_millis(due.saturating_sub(now)).min(MAX_SLEEP));
        tokio::select! {
            () = CommitNotice::next_where(&mut notices, |notice| notice.timers) => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn fire_all(txn: &mut Txn, routing: &Routing, federation: bool, due: Vec<DueTimer>) -> Result<(), StoreError> {
    let at = now_rfc3339();
    let now = now_unix_ms();
    for timer in due {
        fire(txn, routing, federation, &timer, now, &at)?;
    }
    Ok(())
}

/// Fires one timer: its events and its removal from the schedule go into the same batch.
fn fire(
    txn: &mut Txn,
    routing: &Routing,
    federation: bool,
    due: &DueTimer,
    now_ms: u64,
    at: &str,
) -> Result<(), StoreError> {
    let Some(mut stored) = txn.intent(due.intent_id)? else { return txn.unschedule_timer(due) };
    let mut home = None;
    let reassign = if due.timer.kind == TimerKind::Escalation {
        escalation_home(txn, routing, federation, &stored).map(|found| home = Some(found))
    } else {
        Ok(())
    };
    let fired = stored.record.fire_timer(&due.timer, now_ms, at, reassign);
    let events = match fired {
        Ok(Fired::NotDue) => return Ok(()),
        Ok(Fired::Applied(events)) => events,
        Ok(Fired::Stale) => return txn.unschedule_timer(due),
        Err(error) => {
            tracing::warn!(%error, intent_id = %due.intent_id, timer = ?due.timer, "a due timer could not fire; dropped");
            return txn.unschedule_timer(due);
        }
    };
    tracing::info!(intent_id = %due.intent_id, timer = ?due.timer, events = events.len(), "timer fired");
    txn.update_intent(&stored, &events)?;
    txn.unschedule_timer(due)?;
    match (events.iter().find(|event| event.event_type == EventType::Transfer), home) {
        (Some(transfer), Some(home)) => txn.follow_transfer(&mut stored, transfer, home),
        _ => Ok(()),
    }
}

/// Where the intent's escalation target lives, or why it cannot take the intent.
fn escalation_home(
    txn: &Txn,
    routing: &Routing,
    federation: bool,
    stored: &StoredIntent,
) -> Result<HandlerHome, String> {
    let target = stored.record.options.get("escalate_to").and_then(|value| value.as_str()).unwrap_or_default();
    let address = AgentAddress::parse(target).map_err(|error| format!("escalate_to {target:?}: {error}"))?;
    match routing.route(&address) {
        Route::Local => Ok(HandlerHome::Local),
        Route::Remote { org, .. } if !federation => {
            Err(format!("{target} is served by org {org}'s node, and this node has no Matrix transport"))
        }
        Route::Remote { org, node } => {
            let events = txn.events_after(stored, 0).map_err(|error| error.to_string())?;
            let item = TransferItem { record: stored.record.clone(), events };
            if !item.fits_one_event() {
                return Err("the intent with its events is too large to move to another node".into());
            }
            Ok(HandlerHome::Remote(NodeRef { org, node: node.id }))
        }
        Route::Unroutable { reason, .. } => Err(format!("{target} cannot be routed: {reason}")),
    }
}
