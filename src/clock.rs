//! Wall-clock timestamps in the two forms the node stores: RFC 3339 text and unix milliseconds.

use chrono::{SecondsFormat, Utc};

/// Now, as RFC 3339 with microseconds in UTC (`2026-11-26T12:00:00.123456Z`).
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn now_unix_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default()
}
