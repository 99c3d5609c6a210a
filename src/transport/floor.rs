//! The floor the transport is measured against: the bare matrix-sdk round trip of a custom
//! encrypted event between two accounts on two federating homeservers, with no node, no store
//! and no lifecycle in between. Used by `axp bench federation` only.

use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::{AnySyncTimelineEvent, EmptyStateKey, InitialStateEvent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::json;
use tokio::sync::mpsc;

use super::matrix::TransportError;

const PING: &str = "axp.bench.ping";
const PONG: &str = "axp.bench.pong";

/// An account to measure with.
pub struct Account {
    pub homeserver_url: String,
    pub user_id: String,
    pub password: String,
}

fn error(error: impl std::fmt::Display) -> TransportError {
    TransportError::Matrix(error.to_string())
}

async fn client(account: &Account, store: &std::path::Path) -> Result<Client, TransportError> {
    let client = Client::builder()
        .homeserver_url(&account.homeserver_url)
        .sqlite_store(store, None)
        .build()
        .await
        .map_err(error)?;
    client.matrix_auth().login_username(&account.user_id, &account.password).send().await.map_err(error)?;
    Ok(client)
}

/// Spawns a tight `sync_once` loop, as the node runs its own.
fn keep_syncing(client: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let settings = SyncSettings::default().timeout(Duration::from_secs(30));
        loop {
            if client.sync_once(settings.clone()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

fn event_type(raw: &Raw<AnySyncTimelineEvent>) -> Option<String> {
    raw.get_field::<String>("type").ok().flatten()
}

/// An encrypted room between two fresh accounts, one of which answers every ping at once.
pub struct Floor {
    room: Room,
    pongs: mpsc::UnboundedReceiver<u64>,
    syncs: [tokio::task::JoinHandle<()>; 2],
    next: u64,
}

impl Drop for Floor {
    fn drop(&mut self) {
        for sync in &self.syncs {
            sync.abort();
        }
    }
}

impl Floor {
    /// Logs both accounts in (stores under `scratch`), creates the room and waits until the
    /// peer joined, so that the first ping is shared with its device.
    pub async fn open(a: &Account, b: &Account, scratch: &std::path::Path) -> Result<Floor, TransportError> {
        let alice = client(a, &scratch.join("a")).await?;
        let bob = client(b, &scratch.join("b")).await?;
        bob.add_event_handler(|raw: Raw<AnySyncTimelineEvent>, room: Room| async move {
            if event_type(&raw).as_deref() == Some(PING) {
                let content: serde_json::Value = raw.get_field("content").ok().flatten().unwrap_or_default();
                let _ = room.send_raw(PONG, content).await;
            }
        });
        bob.add_event_handler(
            |event: matrix_sdk::ruma::events::room::member::StrippedRoomMemberEvent, room: Room| async move {
                let _ = event;
                tokio::spawn(async move { room.join().await });
            },
        );
        let (pongs, received) = mpsc::unbounded_channel::<u64>();
        alice.add_event_handler(move |raw: Raw<AnySyncTimelineEvent>| {
            let pongs = pongs.clone();
            async move {
                if event_type(&raw).as_deref() == Some(PONG)
                    && let Ok(Some(content)) = raw.get_field::<serde_json::Value>("content")
                {
                    let _ = pongs.send(content["n"].as_u64().unwrap_or(u64::MAX));
                }
            }
        });
        alice.sync_once(SyncSettings::default()).await.map_err(error)?;
        bob.sync_once(SyncSettings::default()).await.map_err(error)?;
        let syncs = [keep_syncing(alice.clone()), keep_syncing(bob.clone())];

        let bob_id: OwnedUserId = UserId::parse(&b.user_id).map_err(error)?;
        let mut request = CreateRoom::new();
        request.invite = vec![bob_id.clone()];
        request.preset = Some(RoomPreset::PrivateChat);
        request.initial_state = vec![
            InitialStateEvent::new(EmptyStateKey, RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
        ];
        let room = alice.create_room(request).await.map_err(error)?;
        let joined = async {
            loop {
                if room
                    .members(matrix_sdk::RoomMemberships::JOIN)
                    .await
                    .is_ok_and(|members| members.iter().any(|m| m.user_id() == bob_id))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), joined)
            .await
            .map_err(|_| error("the peer never joined the bench room"))?;
        Ok(Floor { room, pongs: received, syncs, next: 0 })
    }

    /// Sends one encrypted ping and waits for its pong.
    pub async fn round_trip(&mut self) -> Result<Duration, TransportError> {
        let n = self.next;
        self.next += 1;
        let started = Instant::now();
        self.room.send_raw(PING, json!({"n": n})).await.map_err(error)?;
        loop {
            let answered = tokio::time::timeout(Duration::from_secs(30), self.pongs.recv())
                .await
                .map_err(|_| error("no pong within 30 s"))?;
            if answered == Some(n) {
                return Ok(started.elapsed());
            }
        }
    }
}
