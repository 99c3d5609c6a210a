//! Server-sent event streams: an intent's lifecycle (`observe`) and an agent's deliveries
//! (`listen`). Both replay from `since`, hold for `wait_seconds`, then send `stream.timeout`
//! and close, as the SDK expects; both wake on commit notices, never on uncommitted data.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use super::intents::{deliver, parse_statuses, query_number};
use super::views;
use crate::address::AgentAddress;
use crate::intent::Status;
use crate::store::{CommitNotice, Feed, Store, StoredIntent};

const DEFAULT_WAIT_SECONDS: u64 = 15;
const MAX_WAIT_SECONDS: u64 = 60;
const PAGE: usize = 256;

type SseStream = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

#[derive(Deserialize)]
pub struct StreamQuery {
    since: Option<String>,
    wait_seconds: Option<String>,
    status: Option<String>,
}

impl StreamQuery {
    fn since(&self) -> ApiResult<u64> {
        query_number("since", self.since.as_deref(), 0, u64::MAX)
    }

    /// `wait_seconds` within 1..=60 (0 is read as 1: the SDK clamps it to its time left).
    fn wait(&self) -> ApiResult<Duration> {
        let seconds =
            query_number("wait_seconds", self.wait_seconds.as_deref(), DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS)?;
        Ok(Duration::from_secs(seconds.max(1)))
    }
}

fn sse(frames: mpsc::Receiver<Result<Event, Infallible>>) -> SseStream {
    Sse::new(ReceiverStream::new(frames)).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

fn timeout_frame(next_seq: u64) -> Event {
    Event::default().event("stream.timeout").data(json!({"ok": true, "next_seq": next_seq}).to_string())
}

/// What a stream waits on between batches of frames.
struct Waiting {
    notices: broadcast::Receiver<Arc<CommitNotice>>,
    stopping: watch::Receiver<bool>,
    deadline: Instant,
}

impl Waiting {
    /// Subscribes before the stream reads its backlog, so nothing committed in between is missed.
    fn new(state: &AppState, hold: Duration) -> Self {
        Waiting { notices: state.store().subscribe(), stopping: state.stopping(), deadline: Instant::now() + hold }
    }

    /// Waits until a notice that `relevant` accepts arrives (or notices were lost). Returns false
    /// at the deadline, when the node begins to stop, or when the store closed.
    async fn for_news(&mut self, relevant: impl Fn(&CommitNotice) -> bool) -> bool {
        self.for_news_or(relevant, self.deadline).await == Woken::News
    }

    /// [`Waiting::for_news`], or `Woken::Timer` at `timer` if that comes first.
    async fn for_news_or(&mut self, relevant: impl Fn(&CommitNotice) -> bool, timer: Instant) -> Woken {
        loop {
            if *self.stopping.borrow() {
                return Woken::Done;
            }
            tokio::select! {
                _ = sleep_until(self.deadline) => return Woken::Done,
                _ = sleep_until(timer), if timer < self.deadline => return Woken::Timer,
                _ = self.stopping.changed() => return Woken::Done,
                received = self.notices.recv() => match received {
                    Ok(notice) if relevant(&notice) => return Woken::News,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Woken::News,
                    Err(broadcast::error::RecvError::Closed) => return Woken::Done,
                },
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woken {
    News,
    Timer,
    Done,
}

pub async fn intent_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<StreamQuery>,
) -> ApiResult<SseStream> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_request("invalid_intent_id", format!("{id:?} is not an intent id (a UUID)")))?;
    let since = query.since()?;
    let wait = query.wait()?;
    match state.store().intent(id)? {
        Some(stored) if caller.can_see(&stored.record) => {}
        _ => return Err(ApiError::not_found(format_args!("intent {id}"))),
    }
    let (frames, receiver) = mpsc::channel(64);
    let waiting = Waiting::new(&state, wait);
    let store = state.store().clone();
    tokio::spawn(async move {
        if let Err(error) = pump_intent_events(&store, id, since, waiting, &frames).await {
            tracing::warn!(%error, intent_id = %id, "intent event stream ended early");
        }
    });
    Ok(sse(receiver))
}

async fn pump_intent_events(
    store: &Store,
    id: Uuid,
    since: u64,
    mut waiting: Waiting,
    frames: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), crate::store::StoreError> {
    let key = id.to_string();
    let mut last = since;
    loop {
        let events = store.events(id, last, PAGE)?;
        let mut terminal = false;
        for event in &events {
            last = event.seq;
            terminal |= event.is_terminal();
            let frame = Event::default()
                .id(event.seq.to_string())
                .event(event.event_type.as_str())
                .data(views::event(event).to_string());
            if frames.send(Ok(frame)).await.is_err() {
                return Ok(());
            }
        }
        if events.len() == PAGE {
            continue;
        }
        let finished = terminal
            || store
                .intent(id)?
                .is_some_and(|stored| stored.record.status().is_terminal() && stored.record.seq() <= last);
        if finished || !waiting.for_news(|notice| notice.intents.contains(&key)).await {
            break;
        }
    }
    let _ = frames.send(Ok(timeout_frame(last))).await;
    Ok(())
}

/// Intents of the agent at or before `cursor` that wait for pickup and whose hand-out lease ran
/// out.
fn expired_hand_outs(state: &AppState, agent: &AgentAddress, cursor: u64) -> ApiResult<Vec<(u64, StoredIntent)>> {
    let now_ms = crate::clock::now_unix_ms();
    let mut expired = Vec::new();
    let mut after = 0;
    loop {
        let entries = state.store().feed(Feed::Open, agent.as_str(), after, PAGE)?;
        for entry in &entries {
            after = entry.cursor;
            if entry.cursor > cursor {
                return Ok(expired);
            }
            if state.store().lease(entry.intent_id)?.is_some_and(|until| until <= now_ms)
                && let Some(stored) = state.store().intent(entry.intent_id)?
                && stored.record.awaits_pickup()
            {
                expired.push((entry.cursor, stored));
            }
        }
        if entries.len() < PAGE {
            return Ok(expired);
        }
    }
}

/// Records the hand-out of the intents in `page` that wait for pickup (one write: the first
/// one's `intent.delivered`, and a lease for each), then sends every frame. False when the
/// client went away.
async fn hand_out(
    state: &AppState,
    page: &mut [(u64, StoredIntent)],
    frames: &mpsc::Sender<Result<Event, Infallible>>,
) -> ApiResult<bool> {
    let waiting: Vec<Uuid> = page
        .iter()
        .filter(|(_, stored)| stored.record.awaits_pickup())
        .filter_map(|(_, stored)| Uuid::parse_str(&stored.record.intent_id).ok())
        .collect();
    if !waiting.is_empty() {
        let mut handed = deliver(state, waiting, "stream").await?.into_iter();
        for (_, stored) in page.iter_mut().filter(|(_, stored)| stored.record.awaits_pickup()) {
            if let Some(now) = handed.next() {
                *stored = now;
            }
        }
    }
    for (cursor, stored) in page.iter() {
        let frame = Event::default()
            .id(cursor.to_string())
            .event(views::frame_name(stored.record.status()))
            .data(views::delivery(stored).to_string());
        if frames.send(Ok(frame)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn listen(state: AppState, caller: Caller, agent: AgentAddress, query: StreamQuery) -> ApiResult<SseStream> {
    caller.require("address", &agent)?;
    let since = query.since()?;
    let wait = query.wait()?;
    let statuses = parse_statuses(query.status.as_deref())?;
    let (frames, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(error) = pump_listen(&state, &agent, since, wait, statuses, &frames).await {
            tracing::warn!(error = ?error.code(), %agent, "listen stream ended early");
        }
    });
    Ok(sse(receiver))
}

async fn pump_listen(
    state: &AppState,
    agent: &AgentAddress,
    since: u64,
    wait: Duration,
    statuses: Option<Vec<Status>>,
    frames: &mpsc::Sender<Result<Event, Infallible>>,
) -> ApiResult<()> {
    let mut waiting = Waiting::new(state, wait);
    let wants = |status: Status| statuses.as_ref().map_or(!status.is_terminal(), |wanted| wanted.contains(&status));
    // Terminal intents leave the open feed, so a filter that asks for them reads the full one.
    let feed = if statuses.as_ref().is_some_and(|wanted| wanted.iter().any(|s| s.is_terminal())) {
        Feed::Received
    } else {
        Feed::Open
    };
    let visibility = Duration::from_secs(state.config().limits.poll_lease_seconds);
    let mut last = since;
    let mut next_recheck = Instant::now();
    loop {
        let entries = state.store().feed(feed, agent.as_str(), last, PAGE)?;
        let mut page = Vec::with_capacity(entries.len());
        for entry in &entries {
            last = entry.cursor;
            if let Some(stored) = state.store().intent(entry.intent_id)?
                && wants(stored.record.status())
            {
                page.push((entry.cursor, stored));
            }
        }
        if Instant::now() >= next_recheck {
            // Hand-outs nobody acknowledged within the visibility timeout are offered again,
            // here or to whichever stream of the agent looks first.
            page.extend(expired_hand_outs(state, agent, last)?);
            next_recheck = Instant::now() + visibility / 2;
        }
        if !hand_out(state, &mut page, frames).await? {
            return Ok(());
        }
        if entries.len() == PAGE {
            continue;
        }
        let relevant = |notice: &CommitNotice| notice.agents.contains(agent.as_str());
        if waiting.for_news_or(relevant, next_recheck).await == Woken::Done {
            break;
        }
    }
    let _ = frames.send(Ok(timeout_frame(last))).await;
    Ok(())
}
