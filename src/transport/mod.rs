//! Carrying intents between organisations' nodes.
//!
//! `wire` holds the content of the custom Matrix events (pure, unit-tested); `matrix` is the
//! I/O shell over matrix-sdk: login and session restore, the sync loop, rooms, the outbox
//! sender and the checks on everything received; `undecryptable` keeps the received events
//! whose room key has not arrived yet, to try them again; `floor` measures the bare matrix-sdk round
//! trip that `axp bench federation` compares the transport with. The store's outbox is written in the same
//! batch as the change that causes a send; this module only drains it.

pub mod batch;
pub mod floor;
pub mod matrix;
pub mod undecryptable;
pub mod wire;
