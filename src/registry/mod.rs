//! The shared registry: signed org records, verification and deterministic route resolution.
