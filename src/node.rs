//! Running a node: creating its data dir, opening the store, serving the API until shutdown,
//! and the upkeep tasks that keep stored state within its limits.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;

use crate::address::AddressPattern;
use crate::api::{self, AppState};
use crate::auth::issue_key;
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::config::{CONFIG_FILE, Config};
use crate::mail::Mailer;
use crate::routing::Routing;
use crate::store::{Store, StoreError, Txn};
use crate::web::link::LinkKey;

pub const ADMIN_KEY_FILE: &str = "admin.key";
pub const LINK_KEY_FILE: &str = "links.key";
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Records one sweep pass forgets in one write.
const SWEEP_BATCH: usize = 1000;
/// How long the record of a sent, failed or skipped mail is kept (`GET /v1/admin/mails`).
const MAIL_RETENTION_MS: u64 = 30 * 24 * 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Transport(#[from] crate::transport::matrix::TransportError),
    #[error("{path} already holds a node configuration; use it, or pick another --data-dir")]
    AlreadyInitialised { path: PathBuf },
    #[error("cannot listen on {addr}: {source} (is another process using this port?)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub struct Initialised {
    pub config_path: PathBuf,
    pub admin_key_path: PathBuf,
    pub admin_token: String,
}

/// Creates a data dir with a working `axp.toml`, an empty store and a first admin key.
pub async fn init(data_dir: &Path, listen: SocketAddr, org: &str) -> Result<Initialised, NodeError> {
    let config = Config::new(org, listen);
    config.validate()?;
    let config_path = data_dir.join(CONFIG_FILE);
    if config_path.exists() {
        return Err(NodeError::AlreadyInitialised { path: config_path });
    }
    std::fs::create_dir_all(data_dir).map_err(|source| NodeError::Write { path: data_dir.to_owned(), source })?;
    let (store, writer) = Store::open(data_dir)?;
    let issued = issue_key("admin", vec![AddressPattern::parse("*").expect("* is a pattern")], true, &now_rfc3339());
    let record = issued.record.clone();
    store
        .write(move |txn| -> Result<(), StoreError> {
            txn.put_api_key(&record);
            Ok(())
        })
        .await?;
    drop(store);
    writer.finished().await;
    let admin_key_path = data_dir.join(ADMIN_KEY_FILE);
    write_private(&admin_key_path, format!("{}\n", issued.token).as_bytes())?;
    // Written last: its presence marks a complete data dir.
    write_private(&config_path, config.to_toml().as_bytes())?;
    Ok(Initialised { config_path, admin_key_path, admin_token: issued.token })
}

/// Writes a new file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), NodeError> {
    let error = |source| NodeError::Write { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(error)?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(error)
}

/// Serves the node until `shutdown` resolves, then drains in-flight requests and flushes the
/// store. `on_ready` hears the bound address once the node accepts connections.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), NodeError> {
    let (store, writer) = Store::open(&config.node.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.node.listen)
        .await
        .map_err(|source| NodeError::Bind { addr: config.node.listen, source })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    let ttl_ms = config.limits.idempotency_ttl_hours * 3_600_000;
    let routing = Arc::new(match &config.registry {
        Some(registry) => Routing::with_registry(&config.node.org, registry.dir.clone(), &store).await?,
        None => Routing::standalone(&config.node.org),
    });
    let mut upkeep = vec![
        tokio::spawn(sweep(
            store.clone(),
            "expired idempotency records",
            move |store, now| store.idempotency_expired(now.saturating_sub(ttl_ms), SWEEP_BATCH),
            |txn, record| txn.idempotency_forget(record),
        )),
        tokio::spawn(sweep(
            store.clone(),
            "spent links, ended sessions and old mails",
            |store, now| store.people_expired(now, MAIL_RETENTION_MS, SWEEP_BATCH),
            |txn, key| {
                txn.remove(key);
                Ok(())
            },
        )),
        tokio::spawn(routing.clone().watch(store.clone())),
        tokio::spawn(crate::delivery::worker::run(store.clone(), config.delivery.clone())),
        tokio::spawn(crate::timers::run(store.clone(), routing.clone(), config.matrix.is_some())),
    ];
    if config.matrix.is_some() {
        upkeep.extend(crate::transport::matrix::start(&config, store.clone(), routing.clone()).await?);
    }
    let links = LinkKey::new(&link_secret(&config.node.data_dir)?);
    let public_url = match &config.web.public_url {
        Some(url) => url.clone(),
        None => url::Url::parse(&format!("http://{addr}/")).expect("a socket address makes a URL"),
    };
    let mailer = Mailer::new(config.email.as_ref(), links.clone(), public_url).map_err(NodeError::Mail)?;
    upkeep.push(tokio::spawn(crate::mail::run(store.clone(), Arc::new(mailer))));
    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    let router = api::router(AppState::new(store, config, routing, stopping, links));
    // Small SSE frames and answers must not wait for Nagle's algorithm (40 ms with delayed ACKs).
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    on_ready(addr);
    // Streams hold for up to a minute; at shutdown they end at once instead of holding it up.
    let shutdown = async move {
        shutdown.await;
        let _ = stop_streams.send(true);
    };
    let served = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
    for task in upkeep {
        task.abort();
        let _ = task.await;
    }
    // The router (and with it every store handle) is gone: the writer drains and flushes.
    writer.finished().await;
    served.map_err(NodeError::Serve)
}

/// The key that signs magic links and sessions: 32 random bytes in `links.key`, made on the
/// first start. Deleting the file voids every link and session.
fn link_secret(data_dir: &Path) -> Result<Vec<u8>, NodeError> {
    let path = data_dir.join(LINK_KEY_FILE);
    if !path.exists() {
        let secret: [u8; 32] = rand::random();
        write_private(&path, hex::encode(secret).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).map_err(|source| NodeError::Read { path: path.clone(), source })?;
    hex::decode(text.trim()).map_err(|_| NodeError::Read {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a hex key; delete it to make a new one"),
    })
}

/// Every `SWEEP_INTERVAL`, forgets what `expired` finds (given the time now), in batches
/// of at most `SWEEP_BATCH`, with `forget` in the store's writer. `what` names it in the logs.
async fn sweep<T: Send + 'static>(
    store: Store,
    what: &'static str,
    expired: impl Fn(&Store, u64) -> Result<Vec<T>, StoreError> + Send + 'static,
    forget: fn(&mut Txn, T) -> Result<(), StoreError>,
) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticks.tick().await;
        loop {
            let found = match expired(&store, now_unix_ms()) {
                Ok(found) if !found.is_empty() => found,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, what, "sweep could not read");
                    break;
                }
            };
            let count = found.len();
            let forgotten = store
                .write(move |txn| -> Result<(), StoreError> {
                    for item in found {
                        forget(txn, item)?;
                    }
                    Ok(())
                })
                .await;
            match forgotten {
                Ok(()) => tracing::debug!(count, what, "swept"),
                Err(error) => {
                    tracing::warn!(%error, what, "sweep could not write");
                    break;
                }
            }
        }
    }
}
