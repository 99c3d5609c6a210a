#![recursion_limit = "256"] // matrix-sdk's sync futures need it to prove they are Send
//! axp: a node for AXP, the Intent Protocol.
//!
//! A tour of the crate:
//! - [`address`]: agent address syntax.
//! - [`intent`]: the lifecycle domain (statuses, transitions, events, the intent record), no I/O.
//! - [`inbox`]: inbox threads, the owner's view of an intent and its outcome, no I/O.
//! - [`auth`]: API keys and address authority, no I/O.
//! - [`registry`]: signed org records and route resolution, pure; [`routing`]: the node's
//!   copy of the registry and its reloads.
//! - [`store`]: sled, the group-commit writer, key layout, idempotency.
//! - [`api`]: the HTTP API (axum).
//! - [`transport`]: intents and their events between orgs' nodes over Matrix.
//! - [`node`]: starting and stopping a node; [`config`]: its configuration file.
//! - [`client`]: a small HTTP client for the CLI and the benchmark.
//! - [`web`]: the pages people answer human tasks on; [`mail`]: the emails that lead there.

pub mod address;
pub mod api;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod inbox;
pub mod intent;
pub mod mail;
pub mod node;
pub mod registry;
pub mod routing;
pub mod store;
pub mod timers;
pub mod transport;
pub mod web;
