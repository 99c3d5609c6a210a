//! The Matrix transport over matrix-sdk: one account and one device per node, restored on every
//! start; our own sync loop over `sync_once`; one encrypted room per (handler address, node
//! pair); the outbox drained into `axp.*` events; and the checks on everything received.
//!
//! Trust: a received `axp.*` event counts only if it was encrypted, sent by the node the
//! registry pins for the room's other side, from the pinned device with the pinned Ed25519 key.
//! Room keys go only to devices marked trusted, and the node marks exactly the pinned devices.
//! Anything else is dropped and written to the audit log.
//!
//! Sending waits until the peer's node has joined the route room: an event sent earlier would
//! never reach the peer's homeserver (see [`peer_joined`]).
//!
//! Late room keys: an event whose Megolm key has not arrived yet (federation delivers the room
//! event and the to-device key separately) reaches the handlers undecryptable. It is kept in
//! memory (`super::undecryptable`) and decrypted again when room keys for its room arrive, or
//! on a growing timer; once decrypted it is handled like any other event. If the node stops
//! meanwhile, the back-fill after the next start's first sync handles it instead.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::encryption::LocalTrust;
use matrix_sdk::event_handler::Ctx;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::{MembershipState, StrippedRoomMemberEvent};
use matrix_sdk::ruma::events::{
    AnyInitialStateEvent, AnySyncTimelineEvent, EmptyStateKey, InitialStateEvent, StateEventType,
};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedTransactionId, OwnedUserId, RoomId, UserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, Room};
use matrix_sdk_base::crypto::CollectStrategy;
use serde::Serialize;
use serde_json::{Value, json};

use super::batch;
use super::undecryptable::{Pending, Remembered, Undecrypted};
use super::wire::{
    CONTROL_EVENT, ControlAction, ControlItem, INTENT_EVENT, IntentItem, Items, LIFECYCLE_EVENT, LifecycleItem,
    NodeRef, ROUTE_EVENT, RouteState, TRANSFER_EVENT, TransferItem,
};
use crate::config::{Config, MatrixSection};
use crate::intent::{EventType, LifecycleError, ResolveOutcome};
use crate::registry::NodeRecord;
use crate::routing::{Route, Routing};
use crate::store::{
    HandlerHome, LinkRole, OutboxEntry, OutboxKind, RemoteLink, Store, StoreError, StoredIntent, TaskStartError, Txn,
};

const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries after failed syncs and sends back off up to this: after a homeserver outage the node
/// must notice the recovery within seconds, not after another outage's length.
const MAX_BACKOFF: Duration = Duration::from_secs(3);
const SESSION_FILE: &str = "session.json";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the node has no [matrix] section in its config")]
    NotConfigured,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no saved Matrix session in {path}: run `axp matrix login --config ...` once first")]
    NotLoggedIn { path: PathBuf },
    #[error("the registry names no node of org {org} with Matrix account {user_id}; add it to the org's record")]
    NotInRegistry { org: String, user_id: String },
    #[error("Matrix: {0}")]
    Matrix(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn matrix_error(error: impl std::fmt::Display) -> TransportError {
    TransportError::Matrix(error.to_string())
}

/// The node's Matrix identity, as the registry must pin it.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub user_id: String,
    pub device_id: String,
    pub ed25519_key: String,
}

fn matrix_dir(config: &Config) -> PathBuf {
    config.node.data_dir.join("matrix")
}

fn read_secret(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| TransportError::Read { path: path.to_owned(), source })
}

async fn build_client(matrix: &MatrixSection, dir: &Path) -> Result<Client, TransportError> {
    let passphrase = read_secret(&matrix.store_passphrase_file)?;
    Client::builder()
        .homeserver_url(matrix.homeserver_url.as_str())
        .sqlite_store(dir.join("store"), Some(&passphrase))
        // Room keys go only to devices this node marked trusted: the registry-pinned ones.
        .with_room_key_recipient_strategy(CollectStrategy::OnlyTrustedDevices)
        .build()
        .await
        .map_err(matrix_error)
}

/// Logs the node in once (creating its one device) and saves the session; later calls restore
/// it. Returns the identity the registry must pin.
pub async fn login(config: &Config) -> Result<Identity, TransportError> {
    let matrix = config.matrix.as_ref().ok_or(TransportError::NotConfigured)?;
    let dir = matrix_dir(config);
    std::fs::create_dir_all(&dir).map_err(|source| TransportError::Write { path: dir.clone(), source })?;
    let client = build_client(matrix, &dir).await?;
    let session_path = dir.join(SESSION_FILE);
    if session_path.exists() {
        restore(&client, &session_path).await?;
    } else {
        let password = read_secret(&matrix.password_file)?;
        client
            .matrix_auth()
            .login_username(&matrix.user_id, &password)
            .initial_device_display_name("axp node")
            .send()
            .await
            .map_err(matrix_error)?;
        let session = client.matrix_auth().session().ok_or_else(|| matrix_error("login returned no session"))?;
        let text = serde_json::to_vec(&session).expect("sessions serialise");
        crate::node::write_private(&session_path, &text).map_err(|error| TransportError::Write {
            path: session_path.clone(),
            source: std::io::Error::other(error.to_string()),
        })?;
    }
    // One sync uploads the device keys, so that peers can find them.
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.map_err(matrix_error)?;
    client.encryption().wait_for_e2ee_initialization_tasks().await;
    identity(&client).await
}

async fn restore(client: &Client, path: &Path) -> Result<(), TransportError> {
    let text = std::fs::read(path).map_err(|source| TransportError::Read { path: path.to_owned(), source })?;
    let session: MatrixSession = serde_json::from_slice(&text).map_err(matrix_error)?;
    client.matrix_auth().restore_session(session, RoomLoadSettings::default()).await.map_err(matrix_error)
}

async fn identity(client: &Client) -> Result<Identity, TransportError> {
    let user_id = client.user_id().ok_or_else(|| matrix_error("not logged in"))?.to_string();
    let device_id = client.device_id().ok_or_else(|| matrix_error("no device"))?.to_string();
    let ed25519_key = client.encryption().ed25519_key().await.ok_or_else(|| matrix_error("no device keys yet"))?;
    Ok(Identity { user_id, device_id, ed25519_key })
}

/// What the event handlers, the sync loop and the sender share.
struct Shared {
    store: Store,
    routing: Arc<Routing>,
    local: NodeRef,
    /// Peers whose pinned device this process has marked trusted.
    trusted: Mutex<HashSet<String>>,
    /// Received events whose room key has not arrived yet.
    undecryptable: Mutex<Pending<Raw<OriginalSyncRoomEncryptedEvent>>>,
    /// Wakes [`retry_undecryptable`] when an event joins `undecryptable`.
    undecryptable_added: tokio::sync::Notify,
    /// Route rooms by whether their peer has joined (see [`peer_joined`]): `true` once seen
    /// joined, which is then not looked up again; `false` while nothing may be sent there.
    peer_joins: Mutex<HashMap<String, bool>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the transport: restores the session, then runs the sync loop and the outbox sender
/// until the returned tasks are aborted.
pub async fn start(
    config: &Config,
    store: Store,
    routing: Arc<Routing>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, TransportError> {
    let matrix = config.matrix.as_ref().ok_or(TransportError::NotConfigured)?;
    let dir = matrix_dir(config);
    let session_path = dir.join(SESSION_FILE);
    if !session_path.exists() {
        return Err(TransportError::NotLoggedIn { path: session_path });
    }
    let client = build_client(matrix, &dir).await?;
    restore(&client, &session_path).await?;
    let local = local_node(&routing, &config.node.org, &matrix.user_id)?;
    let shared = Arc::new(Shared {
        store,
        routing,
        local,
        trusted: Mutex::new(HashSet::new()),
        undecryptable: Mutex::new(Pending::default()),
        undecryptable_added: tokio::sync::Notify::new(),
        peer_joins: Mutex::new(HashMap::new()),
    });
    client.add_event_handler_context(shared.clone());
    client.add_event_handler(on_invite);
    client.add_event_handler(on_timeline_event);
    tracing::info!(user_id = %matrix.user_id, device_id = ?client.device_id(), "Matrix transport started");
    Ok(vec![
        tokio::spawn(sync_loop(client.clone(), shared.clone())),
        tokio::spawn(retry_undecryptable(client.clone(), shared.clone())),
        tokio::spawn(send_loop(client, shared)),
    ])
}

fn local_node(routing: &Routing, org: &str, user_id: &str) -> Result<NodeRef, TransportError> {
    let not_listed = || TransportError::NotInRegistry { org: org.to_owned(), user_id: user_id.to_owned() };
    let loaded = routing.snapshot().ok_or_else(not_listed)?;
    let record = loaded.set.get(org).ok_or_else(not_listed)?;
    let node = record.nodes.iter().find(|node| node.matrix_user_id == user_id).ok_or_else(not_listed)?;
    Ok(NodeRef { org: org.to_owned(), node: node.id.clone() })
}

/// The registry's node for a Matrix account, with its org.
fn pinned_node(routing: &Routing, user_id: &str) -> Option<(String, NodeRecord)> {
    let loaded = routing.snapshot()?;
    loaded.set.records().find_map(|record| {
        record.nodes.iter().find(|node| node.matrix_user_id == user_id).map(|node| (record.org.clone(), node.clone()))
    })
}

fn node_record(routing: &Routing, node: &NodeRef) -> Option<NodeRecord> {
    let loaded = routing.snapshot()?;
    loaded.set.get(&node.org)?.nodes.iter().find(|candidate| candidate.id == node.node).cloned()
}

fn audit_drop(reason: &str, room: &RoomId, sender: &str, detail: &str) {
    tracing::warn!(target: "axp::audit", decision = "dropped", reason, room_id = %room, sender, detail, "Matrix event refused");
}

/// Our own loop over `sync_once`: the SDK's `sync()` waits up to a second between requests.
/// After the first sync of a run, and for every room whose timeline came back limited, the
/// room's recent history is handled again (see [`backfill`]).
async fn sync_loop(client: Client, shared: Arc<Shared>) {
    let settings = SyncSettings::default().timeout(SYNC_TIMEOUT);
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    loop {
        match client.sync_once(settings.clone()).await {
            Ok(response) => {
                backoff = Duration::from_millis(200);
                let rooms: Vec<Room> = if first {
                    client.joined_rooms()
                } else {
                    response
                        .rooms
                        .joined
                        .iter()
                        .filter(|(_, update)| update.timeline.limited)
                        .filter_map(|(room_id, _)| client.get_room(room_id))
                        .collect()
                };
                first = false;
                for room in rooms {
                    backfill(&client, &shared, &room).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "Matrix sync failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Joins rooms that a registry node invites this node's account to, for an address this node
/// hosts; refuses the rest. The route is read from the invite's stripped state (homeservers
/// share `axp.route.v1` with invitees when configured to, as the federation kit does) or, if
/// absent there, right after joining, leaving again if it does not fit.
async fn on_invite(event: StrippedRoomMemberEvent, room: Room, client: Client, shared: Ctx<Arc<Shared>>) {
    if client.user_id().is_none_or(|own| own != event.state_key) {
        return;
    }
    let inviter = event.sender.to_string();
    let Some((org, node)) = pinned_node(&shared.routing, &inviter) else {
        refuse(&room, "inviter_not_in_registry", &inviter).await;
        return;
    };
    let inviter_node = NodeRef { org, node: node.id };
    if let Some(route) = room_route(&room, &shared).await
        && let Err(reason) = acceptable(&route, &inviter_node, &shared)
    {
        refuse(&room, reason, &inviter).await;
        return;
    }
    let shared = shared.0.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        for _ in 0..8 {
            match room.join().await {
                Ok(()) => {
                    // Without the route in the invite, check it now that the state is readable.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let verdict = match room_route(&room, &shared).await {
                        Some(route) => acceptable(&route, &inviter_node, &shared),
                        None => Err("no_route_state"),
                    };
                    if let Err(reason) = verdict {
                        refuse(&room, reason, &inviter).await;
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, room_id = %room.room_id(), "joining a route room failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    });
}

/// Whether a route room offered by `inviter` is one this node should be in.
fn acceptable(route: &RouteState, inviter: &NodeRef, shared: &Shared) -> Result<(), &'static str> {
    if route.handler != shared.local || route.initiator != *inviter {
        return Err("route_names_other_nodes");
    }
    let hosted =
        crate::address::AgentAddress::parse(&route.address).is_ok_and(|address| shared.routing.is_local(&address));
    if !hosted {
        return Err("address_not_hosted");
    }
    Ok(())
}

async fn refuse(room: &Room, reason: &str, inviter: &str) {
    audit_drop(reason, room.room_id(), inviter, "room refused");
    if let Err(error) = room.leave().await {
        tracing::warn!(%error, room_id = %room.room_id(), "could not leave a refused room");
    }
}

/// The route a room carries: as remembered in the store (rooms this node created, or where it
/// adopted an intent), else as the room's `axp.route.v1` state says (right after joining; the
/// first adopted intent then remembers it). Callers check it against the registry and the
/// sender ([`acceptable`], [`verified_peer`]).
async fn room_route(room: &Room, shared: &Shared) -> Option<RouteState> {
    if let Ok(Some(route)) = shared.store.route_of_room(room.room_id().as_str()) {
        return Some(route);
    }
    let raw = room.get_state_event(StateEventType::from(ROUTE_EVENT), "").await.ok()??;
    let content: Value = match raw {
        matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Sync(raw) => raw.get_field("content").ok()??,
        matrix_sdk::deserialized_responses::RawAnySyncOrStrippedState::Stripped(raw) => {
            raw.get_field("content").ok()??
        }
    };
    let route: RouteState = serde_json::from_value(content).ok()?;
    Some(route)
}

/// Drops and audits anything not sent, encrypted, by the pinned device of the room's other node.
async fn verified_peer(
    client: &Client,
    room: &Room,
    shared: &Shared,
    encryption: Option<&EncryptionInfo>,
    sender: &str,
) -> Option<(RouteState, NodeRef)> {
    let Some(encryption) = encryption else {
        audit_drop("unencrypted", room.room_id(), sender, "axp events must be end-to-end encrypted");
        return None;
    };
    let Some((org, pinned)) = pinned_node(&shared.routing, encryption.sender.as_str()) else {
        audit_drop("sender_not_in_registry", room.room_id(), sender, "");
        return None;
    };
    let device = encryption.sender_device.as_ref().map(|device| device.to_string());
    if device.as_deref() != Some(pinned.device_id.as_str()) {
        audit_drop(
            "unpinned_device",
            room.room_id(),
            sender,
            &format!("device {device:?}, pinned {}", pinned.device_id),
        );
        return None;
    }
    let key = device_key(client, &encryption.sender, encryption.sender_device.as_deref()?).await;
    if key.as_deref() != Some(pinned.device_ed25519_key.as_str()) {
        audit_drop("unpinned_key", room.room_id(), sender, "the device's Ed25519 key is not the pinned one");
        return None;
    }
    let peer = NodeRef { org, node: pinned.id.clone() };
    let Some(route) = room_route(room, shared).await else {
        audit_drop("no_route_state", room.room_id(), sender, "the room has no readable axp.route.v1 state");
        return None;
    };
    let (expected_peer, us) = if route.handler == shared.local {
        (&route.initiator, &route.handler)
    } else {
        (&route.handler, &route.initiator)
    };
    if *expected_peer != peer || *us != shared.local {
        audit_drop("not_this_rooms_peer", room.room_id(), sender, "the room's route names other nodes");
        return None;
    }
    Some((route, peer))
}

/// The Ed25519 key of a device as published by its owner, querying the homeserver when this
/// node has not seen the device yet.
async fn device_key(client: &Client, user: &UserId, device: &matrix_sdk::ruma::DeviceId) -> Option<String> {
    let lookup = async || client.encryption().get_device(user, device).await.ok().flatten();
    // A query can fail while the homeserver is busy; an event must not be dropped for that.
    let mut delay = Duration::from_millis(250);
    for _ in 0..4 {
        if let Some(device) = lookup().await {
            return device.ed25519_key().map(|key| key.to_base64());
        }
        if client.encryption().request_user_identity(user).await.is_ok()
            && let Some(device) = lookup().await
        {
            return device.ed25519_key().map(|key| key.to_base64());
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    None
}

async fn on_timeline_event(
    raw: Raw<AnySyncTimelineEvent>,
    room: Room,
    client: Client,
    encryption: Option<EncryptionInfo>,
    shared: Ctx<Arc<Shared>>,
) {
    handle_event(&client, &room, &shared, &raw, encryption.as_ref()).await;
}

/// Handles one timeline event, live, back-filled or decrypted late. Handling is idempotent
/// (intents are adopted once, events applied by seq), so an event seen twice changes nothing.
/// An event matrix-sdk could not decrypt still has the type `m.room.encrypted` here: it is kept
/// to be decrypted again (see [`retry_undecryptable`]); the one raw handler sees it live and in
/// a back-fill alike, which a typed `OriginalSyncRoomEncryptedEvent` handler would not.
async fn handle_event(
    client: &Client,
    room: &Room,
    shared: &Shared,
    raw: &Raw<AnySyncTimelineEvent>,
    encryption: Option<&EncryptionInfo>,
) {
    let Ok(Some(kind)) = raw.get_field::<String>("type") else { return };
    let sender = raw.get_field::<String>("sender").ok().flatten().unwrap_or_default();
    if client.user_id().is_some_and(|own| own.as_str() == sender) {
        return;
    }
    if kind == UNDECRYPTABLE {
        remember_undecryptable(room, shared, raw);
        return;
    }
    if !kind.starts_with("axp.") || kind == ROUTE_EVENT {
        return;
    }
    let Some((route, peer)) = verified_peer(client, room, shared, encryption, &sender).await else { return };
    let content: Value = raw.get_field("content").ok().flatten().unwrap_or(Value::Null);
    let outcome = match kind.as_str() {
        INTENT_EVENT if route.handler == shared.local => {
            adopt::<IntentItem>(shared, room, &route, &peer, content).await
        }
        TRANSFER_EVENT if route.handler == shared.local => {
            adopt::<TransferItem>(shared, room, &route, &peer, content).await
        }
        LIFECYCLE_EVENT if route.initiator == shared.local => apply_lifecycle(shared, &peer, content).await,
        CONTROL_EVENT if route.handler == shared.local => apply_controls(shared, &peer, content).await,
        other => {
            audit_drop("unexpected_event", room.room_id(), &sender, other);
            return;
        }
    };
    if let Err(error) = outcome {
        tracing::error!(%error, room_id = %room.room_id(), kind, "could not persist a received Matrix event");
    }
}

/// The type an event still has when matrix-sdk could not decrypt it.
const UNDECRYPTABLE: &str = "m.room.encrypted";

/// Keeps an event that could not be decrypted (its room key is late), live or back-filled, for
/// [`retry_undecryptable`].
fn remember_undecryptable(room: &Room, shared: &Shared, raw: &Raw<AnySyncTimelineEvent>) {
    let Ok(Some(event_id)) = raw.get_field::<String>("event_id") else { return };
    let room_id = room.room_id().to_string();
    let undecrypted = Undecrypted { room_id, event_id, event: raw.clone().cast_unchecked() };
    let (event_id, room_id) = (undecrypted.event_id.clone(), room.room_id());
    match lock(&shared.undecryptable).remember(undecrypted, Instant::now()) {
        Remembered::New => {
            tracing::info!(%room_id, %event_id, "an event could not be decrypted yet (its room key is late); will try again");
            shared.undecryptable_added.notify_one();
        }
        Remembered::AlreadyPending => {}
        Remembered::Full => {
            tracing::warn!(%room_id, %event_id, "too many undecryptable events pending; this one is not tried again");
        }
    }
}

/// Decrypts the events of [`Shared::undecryptable`] again: those of a room as soon as room keys
/// for it arrive, and each on its timer (`undecryptable::RETRY_DELAYS`) in case the key came
/// some other way. A decrypted event is handled like a live one; one still undecryptable after
/// the last timed attempt is given up with a warning.
async fn retry_undecryptable(client: Client, shared: Arc<Shared>) {
    use futures_util::StreamExt;
    let mut keys = match client.encryption().room_keys_received_stream().await {
        Some(stream) => stream.boxed(),
        None => {
            tracing::warn!("no room-key stream (no crypto machine); undecryptable events are retried on a timer only");
            futures_util::stream::pending().boxed()
        }
    };
    loop {
        let next_due = lock(&shared.undecryptable).next_due();
        let sleep =
            tokio::time::sleep_until(next_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into());
        tokio::select! {
            update = keys.next() => {
                let pending = match update {
                    Some(Ok(infos)) => {
                        let rooms: Vec<String> = infos.iter().map(|info| info.room_id.to_string()).collect();
                        lock(&shared.undecryptable).in_rooms(&rooms)
                    }
                    // Missed notices (lagged): any room may have new keys.
                    Some(Err(_)) => lock(&shared.undecryptable).all(),
                    None => {
                        keys = futures_util::stream::pending().boxed();
                        continue;
                    }
                };
                decrypt_again(&client, &shared, pending, false).await;
            }
            () = sleep => {
                let due = lock(&shared.undecryptable).due(Instant::now());
                decrypt_again(&client, &shared, due, true).await;
            }
            () = shared.undecryptable_added.notified() => {}
        }
    }
}

/// Tries to decrypt `pending` events, in order, and handles those that now decrypt. `timed`
/// says whether this was a timed attempt, which counts against the event's budget.
async fn decrypt_again(
    client: &Client,
    shared: &Shared,
    pending: Vec<Undecrypted<Raw<OriginalSyncRoomEncryptedEvent>>>,
    timed: bool,
) {
    for Undecrypted { room_id, event_id, event } in pending {
        let room = RoomId::parse(&room_id).ok().and_then(|id| client.get_room(&id));
        let decrypted = match &room {
            Some(room) => room.decrypt_event(&event, None).await.ok().filter(|event| event.encryption_info().is_some()),
            None => None,
        };
        let now = Instant::now();
        if let (Some(room), Some(decrypted)) = (room, decrypted) {
            let waited = lock(&shared.undecryptable).resolved(&room_id, &event_id, now);
            tracing::info!(%room_id, %event_id, ?waited, "a late room key arrived; handling the event now");
            let encryption = decrypted.encryption_info().map(|info| (**info).clone());
            handle_event(client, &room, shared, decrypted.raw(), encryption.as_ref()).await;
            continue;
        }
        if !timed {
            continue;
        }
        if let Some(gave_up) = lock(&shared.undecryptable).failed(&room_id, &event_id, now) {
            tracing::warn!(
                room_id = %gave_up.room_id, event_id = %gave_up.event_id, attempts = gave_up.attempts, waited = ?gave_up.waited,
                "an event stayed undecryptable (its room key never arrived); given up until the next restart's back-fill"
            );
        }
    }
}

/// How many recent events of a route room are handled again after a restart or a gap.
const BACKFILL_EVENTS: u32 = 200;

/// Handles the recent history of `room` again. matrix-sdk stores the sync token before it
/// runs event handlers, so a node killed in between would otherwise never see those events;
/// a limited (gappy) sync timeline skips events the same way.
async fn backfill(client: &Client, shared: &Shared, room: &Room) {
    let mut options = matrix_sdk::room::MessagesOptions::backward();
    options.limit = BACKFILL_EVENTS.into();
    match room.messages(options).await {
        Ok(messages) => {
            for event in messages.chunk.iter().rev() {
                let encryption = event.encryption_info().map(|info| (**info).clone());
                handle_event(client, room, shared, event.raw(), encryption.as_ref()).await;
            }
        }
        Err(error) => tracing::warn!(%error, room_id = %room.room_id(), "back-fill of a route room failed"),
    }
}

/// An item of an `axp.intent.v1` or `axp.transfer.v1` event: checked, then taken over.
trait Handover: serde::de::DeserializeOwned + Send + 'static {
    const EVENT: &'static str;
    fn check(&self, sender_org: &str, room_address: &str) -> Result<(), super::wire::IntentRefusal>;
    /// Stores the item under `link`; a repeat changes nothing.
    fn take_over(self, txn: &mut Txn, link: &RemoteLink) -> Result<(), StoreError>;
}

impl Handover for IntentItem {
    const EVENT: &'static str = INTENT_EVENT;
    fn check(&self, sender_org: &str, room_address: &str) -> Result<(), super::wire::IntentRefusal> {
        IntentItem::check(self, sender_org, room_address)
    }
    /// A new intent with a `human_task` starts its task here, in the same write: this node
    /// sequences it now, as the initiator's node would have for a local handler. The events
    /// the task adds go to the initiator's replica like any other; the timers its options ask
    /// for (deadline, reminders, escalation) are scheduled with the save.
    fn take_over(self, txn: &mut Txn, link: &RemoteLink) -> Result<(), StoreError> {
        let Ok(id) = uuid::Uuid::parse_str(&self.record.intent_id) else { return Ok(()) };
        if txn.intent(id)?.is_some() {
            return Ok(());
        }
        let (mut record, mut events) = (self.record, self.events);
        let started = if record.options.contains_key("human_task") {
            match txn.start_human_task(&mut record, &crate::clock::now_rfc3339()) {
                Ok(started) => started,
                Err(TaskStartError::Store(error)) => return Err(error),
                // `IntentItem::check` let only fresh SUBMITTED intents through, which may wait.
                Err(TaskStartError::Lifecycle(error)) => {
                    tracing::error!(%error, intent_id = %record.intent_id, "the human task of an adopted intent could not start");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        events.extend(started.iter().cloned());
        let stored = txn.insert_intent(record, &events, Some(link.clone()))?;
        if !started.is_empty() {
            txn.send_events_to_initiator(&stored, &started)?;
        }
        Ok(())
    }
}

impl Handover for TransferItem {
    const EVENT: &'static str = TRANSFER_EVENT;
    fn check(&self, sender_org: &str, room_address: &str) -> Result<(), super::wire::IntentRefusal> {
        TransferItem::check(self, sender_org, room_address)
    }
    fn take_over(self, txn: &mut Txn, link: &RemoteLink) -> Result<(), StoreError> {
        let (intent_id, handler) = (self.record.intent_id.clone(), self.record.handler().to_owned());
        if txn.adopt_transfer(self, link.clone())? {
            tracing::info!(%intent_id, %handler, "took over a transferred intent");
        }
        Ok(())
    }
}

/// Takes over what another node hands to a handler this node hosts: new intents, and intents
/// transferred here (this node then owns them and reports to the initiator's node). Items that
/// fail their checks, and events for addresses this node does not host, are dropped and audited.
async fn adopt<T: Handover>(
    shared: &Shared,
    room: &Room,
    route: &RouteState,
    peer: &NodeRef,
    content: Value,
) -> Result<(), StoreError> {
    let Ok(Items { items }) = serde_json::from_value::<Items<T>>(content) else {
        audit_drop("malformed", room.room_id(), &peer.node, T::EVENT);
        return Ok(());
    };
    let hosted =
        crate::address::AgentAddress::parse(&route.address).is_ok_and(|address| shared.routing.is_local(&address));
    if !hosted {
        audit_drop("address_not_hosted", room.room_id(), &peer.node, &route.address);
        return Ok(());
    }
    let mut accepted = Vec::new();
    for item in items {
        match item.check(&peer.org, &route.address) {
            Ok(()) => accepted.push(item),
            Err(refusal) => audit_drop("item_refused", room.room_id(), &peer.node, &format!("{}: {refusal}", T::EVENT)),
        }
    }
    let link = RemoteLink { role: LinkRole::Handler, peer: peer.clone(), room_id: Some(room.room_id().to_string()) };
    let (room_id, route, peer) = (room.room_id().to_string(), route.clone(), peer.clone());
    shared
        .store
        .write(move |txn| -> Result<(), StoreError> {
            txn.remember_room(&room_id, &route, &peer);
            for item in accepted {
                item.take_over(txn, &link)?;
            }
            Ok(())
        })
        .await
}

/// Parses `content` as items of a peer's event and, in one write, hands each item whose intent
/// this node links to `peer` in one of `roles` to `apply`. Anything else is dropped and audited.
async fn for_linked_intents<T>(
    shared: &Shared,
    peer: &NodeRef,
    roles: &'static [LinkRole],
    what: &'static str,
    content: Value,
    apply: impl Fn(&mut Txn, &mut StoredIntent, T) -> Result<(), StoreError> + Send + 'static,
) -> Result<(), StoreError>
where
    T: ForIntent + serde::de::DeserializeOwned + Send + 'static,
{
    let Ok(Items { items }) = serde_json::from_value::<Items<T>>(content) else {
        tracing::warn!(target: "axp::audit", decision = "dropped", reason = "malformed", peer = %peer.node, what);
        return Ok(());
    };
    let peer = peer.clone();
    shared
        .store
        .write(move |txn| -> Result<(), StoreError> {
            for item in items {
                let Ok(id) = uuid::Uuid::parse_str(item.intent_id()) else { continue };
                let Some(mut stored) = txn.intent(id)? else { continue };
                if stored.link.as_ref().is_none_or(|link| !roles.contains(&link.role) || link.peer != peer) {
                    tracing::warn!(target: "axp::audit", decision = "dropped", reason = "not_linked_to_sender", intent_id = %id, peer = %peer.node, what);
                    continue;
                }
                apply(txn, &mut stored, item)?;
            }
            Ok(())
        })
        .await
}

/// The intent an item of a peer's event is about.
trait ForIntent {
    fn intent_id(&self) -> &str;
}

impl ForIntent for LifecycleItem {
    fn intent_id(&self) -> &str {
        &self.intent_id
    }
}

impl ForIntent for ControlItem {
    fn intent_id(&self) -> &str {
        &self.intent_id
    }
}

/// Applies events the owner appended to this node's replicas, in order, once.
/// Events out of order (some were lost on the way) make the replica ask the owner to send
/// everything after its last event again. After an `intent.transfer` to a handler on another
/// node, this node (the initiator's) hands the intent to that node, or takes it over itself.
async fn apply_lifecycle(shared: &Shared, peer: &NodeRef, content: Value) -> Result<(), StoreError> {
    let local = shared.local.clone();
    let routing = shared.routing.clone();
    for_linked_intents(shared, peer, &[LinkRole::Initiator], LIFECYCLE_EVENT, content, move |txn, stored, item: LifecycleItem| {
        let mut applied = Vec::new();
        for event in item.events {
            match stored.record.apply_remote(&event) {
                Ok(true) => applied.push(event),
                Ok(false) => {}
                Err(LifecycleError::Gap { have, got }) => {
                    tracing::warn!(intent_id = %stored.record.intent_id, have, got, "events missing from the owner; asking for them again");
                    let link = stored.link.as_ref().expect("a linked intent has a link");
                    let request = ControlItem {
                        request_id: uuid::Uuid::now_v7().to_string(),
                        intent_id: stored.record.intent_id.clone(),
                        actor: format!("node:{}", local.node),
                        action: ControlAction::Resend { after_seq: have },
                    };
                    txn.enqueue(&OutboxEntry {
                        peer: link.peer.clone(),
                        address: stored.record.handler().to_owned(),
                        room_id: None,
                        kind: OutboxKind::Control,
                        item: serde_json::to_value(request).expect("controls serialise"),
                    })?;
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, intent_id = %stored.record.intent_id, seq = event.seq, "owner's event not applied");
                    break;
                }
            }
        }
        if applied.is_empty() {
            return Ok(());
        }
        txn.update_intent(stored, &applied)?;
        let Some(transfer) = applied.iter().rev().find(|event| event.event_type == EventType::Transfer) else {
            return Ok(());
        };
        match handler_home(&routing, stored.record.handler()) {
            Some(home) => txn.follow_transfer(stored, transfer, home),
            None => {
                tracing::error!(target: "axp::audit", intent_id = %stored.record.intent_id, handler = stored.record.handler(), "intent transferred to a handler this node cannot route to; it stays with its former owner");
                Ok(())
            }
        }
    })
    .await
}

/// Where the registry routes a handler address, if anywhere.
fn handler_home(routing: &Routing, handler: &str) -> Option<HandlerHome> {
    let address = crate::address::AgentAddress::parse(handler).ok()?;
    match routing.route(&address) {
        Route::Local => Some(HandlerHome::Local),
        Route::Remote { org, node } => Some(HandlerHome::Remote(NodeRef { org, node: node.id })),
        Route::Unroutable { .. } => None,
    }
}

/// Sequences the initiator's requests (cancel, resume) on intents this node owns for it, each
/// once; the resulting events go back like any other. A request the lifecycle refuses changes
/// nothing. A replica that missed events gets them again, also from a node that has since
/// transferred the intent away (the initiator may have missed that very transfer).
async fn apply_controls(shared: &Shared, peer: &NodeRef, content: Value) -> Result<(), StoreError> {
    let initiator = peer.clone();
    let apply = move |txn: &mut Txn, stored: &mut StoredIntent, item: ControlItem| {
        if !txn.first_sight_of_control(&item.request_id)? {
            return Ok(());
        }
        let actor = item.actor_for(&initiator);
        let at = crate::clock::now_rfc3339();
        let outcome = match item.action {
            ControlAction::Resend { after_seq } => {
                let events = txn.events_after(stored, after_seq)?;
                return if events.is_empty() { Ok(()) } else { txn.send_events_to_initiator(stored, &events) };
            }
            _ if stored.is_transferred_away() => {
                tracing::warn!(intent_id = %stored.record.intent_id, handler = stored.record.handler(), "initiator's request for an intent transferred away; not applied");
                return Ok(());
            }
            ControlAction::Cancel { reason } => {
                stored.record.resolve(ResolveOutcome::Canceled { reason }, Some(&actor), &at)
            }
            ControlAction::Resume { approve, details } => {
                stored.record.resume(approve, details, Some(&actor), &at).map(|outcome| outcome.events)
            }
        };
        match outcome {
            // Saved even without events: a resume may have been kept for the next wait.
            Ok(events) => txn.update_intent(stored, &events),
            Err(error) => {
                tracing::info!(%error, intent_id = %stored.record.intent_id, "initiator's request not applied");
                Ok(())
            }
        }
    };
    let roles = &[LinkRole::Handler, LinkRole::TransferredAway];
    for_linked_intents(shared, peer, roles, CONTROL_EVENT, content, apply).await
}

/// How long a batch holding nothing but news of intents whose handler is at work
/// (`batch::holdable`, e.g. `delivered`) may wait for what follows: an agent that answers at
/// once then has its `completed` in the same Matrix event, one send and one federation
/// transaction instead of two in a row.
const HOLD: Duration = Duration::from_millis(20);

/// What one pass over the outbox did.
enum Pass {
    /// The outbox is empty.
    Empty,
    /// Entries went out; there may be more.
    Sent,
    /// Everything waiting may wait until then (see [`HOLD`]).
    HeldUntil(Instant),
}

/// Drains the outbox: groups entries bound for the same room into as few events as fit (see
/// `batch`), sends each with a transaction id derived from the entries (a retry after a crash
/// does not duplicate it), and deletes the entries once the homeserver accepted the event.
async fn send_loop(client: Client, shared: Arc<Shared>) {
    let mut notices = shared.store.subscribe();
    let mut backoff = Duration::from_millis(200);
    let mut hold_since = None;
    loop {
        let wake_at = match send_pending(&client, &shared, &mut hold_since).await {
            Ok(Pass::Sent) => {
                backoff = Duration::from_millis(200);
                continue;
            }
            // A periodic wake-up covers lost notices.
            Ok(Pass::Empty) => Instant::now() + Duration::from_secs(1),
            Ok(Pass::HeldUntil(deadline)) => deadline,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "sending to a peer node failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        // Wait for new entries, or the deadline.
        let wait = async {
            loop {
                match notices.recv().await {
                    Ok(notice) if notice.outbox => return,
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout_at(wake_at.into(), wait).await;
    }
}

/// Sends what the outbox holds now, unless all of it may be held a little longer.
async fn send_pending(
    client: &Client,
    shared: &Shared,
    hold_since: &mut Option<Instant>,
) -> Result<Pass, TransportError> {
    let entries = shared.store.outbox(512)?;
    if entries.is_empty() {
        *hold_since = None;
        return Ok(Pass::Empty);
    }
    if entries.iter().all(|(_, entry)| entry.kind == OutboxKind::Lifecycle && batch::holdable(&entry.item)) {
        let since = *hold_since.get_or_insert_with(Instant::now);
        if since.elapsed() < HOLD {
            return Ok(Pass::HeldUntil(since + HOLD));
        }
    }
    *hold_since = None;
    // Rooms whose peer has not joined yet: all their entries wait, in order, for a later pass.
    let mut not_joined: HashSet<String> = HashSet::new();
    let mut sent = false;
    // Consecutive entries for the same room and kind travel together.
    let mut start = 0;
    while start < entries.len() {
        let first = &entries[start].1;
        let end = entries[start..]
            .iter()
            .position(|(_, entry)| {
                entry.kind != first.kind
                    || entry.address != first.address
                    || entry.peer != first.peer
                    || entry.room_id != first.room_id
            })
            .map_or(entries.len(), |offset| start + offset);
        let run = &entries[start..end];
        let room = route_room(client, shared, first).await?;
        if not_joined.contains(room.room_id().as_str()) || !peer_joined(shared, &room, &first.peer).await? {
            not_joined.insert(room.room_id().to_string());
            start = end;
            continue;
        }
        ensure_trusted(client, shared, &first.peer).await?;
        let items: Vec<Value> = run.iter().map(|(_, entry)| entry.item.clone()).collect();
        let items = if first.kind == OutboxKind::Lifecycle { batch::merge_lifecycle(items) } else { items };
        let packed = batch::pack(items);
        for item in packed.oversize {
            tracing::error!(intent = ?item.get("intent_id"), "an outbox item is larger than a Matrix event; dropped");
        }
        let event_type = match first.kind {
            OutboxKind::Intent => INTENT_EVENT,
            OutboxKind::Lifecycle => LIFECYCLE_EVENT,
            OutboxKind::Control => CONTROL_EVENT,
            OutboxKind::Transfer => TRANSFER_EVENT,
        };
        let first_seq = run[0].0;
        for (index, (content, items)) in packed.events.into_iter().enumerate() {
            // The run (its first seq and length) fixes the items and `batch::pack` is
            // deterministic, so a retry after a crash yields the same events and ids. "p2" keeps
            // these ids apart from those of the earlier, uncompressed grouping.
            let txn_id: OwnedTransactionId =
                format!("axp-{}-{first_seq}-{}-p2-{index}", shared.local.node, run.len()).into();
            room.send_raw(event_type, content).with_transaction_id(&txn_id).await.map_err(matrix_error)?;
            tracing::debug!(event_type, items, entries = run.len(), room_id = %room.room_id(), "sent to peer node");
        }
        let seqs: Vec<u64> = run.iter().map(|(seq, _)| *seq).collect();
        shared
            .store
            .write(move |txn| -> Result<(), StoreError> {
                for seq in seqs {
                    txn.dequeue(seq);
                }
                Ok(())
            })
            .await?;
        sent = true;
        start = end;
    }
    Ok(if sent || not_joined.is_empty() { Pass::Sent } else { Pass::HeldUntil(Instant::now() + JOIN_POLL) })
}

/// How often the sender looks again whether the peer joined a new route room.
const JOIN_POLL: Duration = Duration::from_millis(100);

/// Whether the peer's node has joined `room`, as this node's sync saw it. Nothing may be sent
/// before: a homeserver sends an event only to the servers in the room at that event, so an
/// event created while the peer's join is still on its way never reaches the peer's homeserver
/// (the peer would learn of it only when a later event names it as a predecessor). That lost
/// the first intent of a new room now and then, while its room key, a to-device message,
/// arrived.
async fn peer_joined(shared: &Shared, room: &Room, peer: &NodeRef) -> Result<bool, TransportError> {
    let room_id = room.room_id().to_string();
    if lock(&shared.peer_joins).get(&room_id) == Some(&true) {
        return Ok(true);
    }
    let record = node_record(&shared.routing, peer)
        .ok_or_else(|| matrix_error(format!("node {} is not in the registry", peer.node)))?;
    let user = UserId::parse(&record.matrix_user_id).map_err(matrix_error)?;
    let member = room.get_member_no_sync(&user).await.map_err(matrix_error)?;
    let joined = member.is_some_and(|member| *member.membership() == MembershipState::Join);
    if lock(&shared.peer_joins).insert(room_id, joined).is_none() && !joined {
        tracing::info!(room_id = %room.room_id(), peer = %peer.node, "waiting for the peer node to join the route room before sending");
    }
    Ok(joined)
}

/// The room for an outbox entry: named in the entry, remembered, or created now.
async fn route_room(client: &Client, shared: &Shared, entry: &OutboxEntry) -> Result<Room, TransportError> {
    let known = match &entry.room_id {
        Some(room_id) => Some(room_id.clone()),
        None => shared.store.room_for(&entry.address, &entry.peer)?,
    };
    if let Some(room_id) = known {
        let room_id = RoomId::parse(&room_id).map_err(matrix_error)?;
        return client
            .get_room(&room_id)
            .ok_or_else(|| matrix_error(format!("room {room_id} is not known to the client yet")));
    }
    let peer = node_record(&shared.routing, &entry.peer).ok_or_else(|| {
        matrix_error(format!("node {} of org {} is not in the registry", entry.peer.node, entry.peer.org))
    })?;
    let peer_user: OwnedUserId = UserId::parse(&peer.matrix_user_id).map_err(matrix_error)?;
    let route =
        RouteState { address: entry.address.clone(), initiator: shared.local.clone(), handler: entry.peer.clone() };
    let route_state: Raw<AnyInitialStateEvent> = Raw::from_json(
        serde_json::value::to_raw_value(&json!({"type": ROUTE_EVENT, "state_key": "", "content": route}))
            .map_err(matrix_error)?,
    );
    let encryption =
        InitialStateEvent::new(EmptyStateKey, RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any();
    let mut request = CreateRoom::new();
    request.invite = vec![peer_user];
    request.preset = Some(RoomPreset::PrivateChat);
    request.initial_state = vec![encryption, route_state];
    request.name = Some(format!("axp route {}", entry.address));
    let room = client.create_room(request).await.map_err(matrix_error)?;
    let room_id = room.room_id().to_string();
    let peer_ref = entry.peer.clone();
    shared
        .store
        .write(move |txn| -> Result<(), StoreError> {
            txn.remember_room(&room_id, &route, &peer_ref);
            Ok(())
        })
        .await?;
    tracing::info!(room_id = %room.room_id(), address = %entry.address, peer = %entry.peer.node, "route room created");
    Ok(room)
}

/// Marks the peer's pinned device trusted (and only it), so that room keys reach it.
async fn ensure_trusted(client: &Client, shared: &Shared, peer: &NodeRef) -> Result<(), TransportError> {
    if lock(&shared.trusted).contains(&peer.node) {
        return Ok(());
    }
    let record = node_record(&shared.routing, peer)
        .ok_or_else(|| matrix_error(format!("node {} is not in the registry", peer.node)))?;
    let user = UserId::parse(&record.matrix_user_id).map_err(matrix_error)?;
    let device_id: matrix_sdk::ruma::OwnedDeviceId = record.device_id.clone().into();
    let key = device_key(client, &user, &device_id).await;
    if key.as_deref() != Some(record.device_ed25519_key.as_str()) {
        tracing::error!(target: "axp::audit", peer = %peer.node, "the peer's device key differs from the registry's pin; not sharing room keys");
        return Err(matrix_error(format!("device key of {} does not match the registry", peer.node)));
    }
    let device = client.encryption().get_device(&user, &device_id).await.map_err(matrix_error)?.ok_or_else(|| {
        matrix_error(format!("device {} of {} not published yet", record.device_id, record.matrix_user_id))
    })?;
    device.set_local_trust(LocalTrust::Verified).await.map_err(matrix_error)?;
    lock(&shared.trusted).insert(peer.node.clone());
    Ok(())
}
