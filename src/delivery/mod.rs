//! Push delivery of intents to agents bound to an HTTP endpoint (the `http` binding).
//!
//! This module owns the rules: how a delivery is signed, which targets may be called, and when
//! a failed attempt is tried again. `worker` is the thin I/O shell that calls endpoints and
//! records outcomes through the store. Bindings, delivery records and their schedule live in
//! `crate::store::deliveries`; this module does not touch sled.
//!
//! Signature scheme (documented for receivers in the README): the node sends
//! `X-AXP-Timestamp: <unix seconds>` and `X-AXP-Signature: v1=<hex HMAC-SHA256(secret,
//! "<timestamp>.<raw body>")>`. A receiver recomputes the HMAC over the exact bytes it got,
//! compares in constant time, and refuses timestamps outside its tolerance (replays).

pub mod worker;

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-axp-signature";
pub const TIMESTAMP_HEADER: &str = "x-axp-timestamp";
pub const DELIVERY_ID_HEADER: &str = "x-axp-delivery-id";
pub const INTENT_ID_HEADER: &str = "x-axp-intent-id";
pub const EVENT_ID_HEADER: &str = "x-axp-event-id";

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header the way a receiver should: constant-time comparison, and a
/// timestamp no further than `tolerance` from `now`.
pub fn verify(
    secret: &[u8],
    timestamp: u64,
    body: &[u8],
    signature: &str,
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    let hex_part = signature.strip_prefix("v1=").ok_or(SignatureError::Malformed)?;
    let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| SignatureError::Mismatch)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp is outside the accepted window")]
    Stale,
    #[error("the signature header is not v1=<hex>")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// How long to wait before attempt `attempt + 1`, after `attempt` (1-based) failed:
/// `base * 2^(attempt-1)`, capped at `max`, then jittered into its upper half so that many
/// deliveries failing together do not retry together. `jitter` in [0, 1) comes from the caller.
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let full = base.saturating_mul(2u32.saturating_pow(exponent)).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Why a callback URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    #[error("only http and https callback URLs are delivered to, not {scheme}")]
    Scheme { scheme: String },
    #[error("the callback URL has no host")]
    NoHost,
    #[error(
        "{ip} is a loopback, private, link-local or otherwise non-public address; set [delivery] allow_private_targets = true to deliver there"
    )]
    Private { ip: IpAddr },
}

impl TargetRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            TargetRefusal::Scheme { .. } => "unsupported_scheme",
            TargetRefusal::NoHost => "invalid_callback_url",
            TargetRefusal::Private { .. } => "target_not_allowed",
        }
    }
}

/// Checks what can be checked without DNS: the scheme, and an IP literal host. Host names are
/// checked when they resolve, on every attempt (see `worker`), so a name that later points
/// inside the network is refused too.
pub fn check_target(url: &url::Url, allow_private: bool) -> Result<(), TargetRefusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetRefusal::Scheme { scheme: url.scheme().to_owned() });
    }
    match url.host().ok_or(TargetRefusal::NoHost)? {
        url::Host::Ipv4(ip) => check_ip(IpAddr::V4(ip), allow_private),
        url::Host::Ipv6(ip) => check_ip(IpAddr::V6(ip), allow_private),
        url::Host::Domain(_) => Ok(()),
    }
}

pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), TargetRefusal> {
    if allow_private || is_public(ip) { Ok(()) } else { Err(TargetRefusal::Private { ip }) }
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, fc00::/7),
/// link-local, shared (100.64/10), unspecified, broadcast, multicast or documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_the_same_secret_body_and_a_fresh_timestamp() {
        let signature = sign(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(signature.starts_with("v1=") && signature.len() == 3 + 64);
        let window = Duration::from_secs(300);
        assert_eq!(verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", &signature, 1_700_000_100, window), Ok(()));
        let tampered = verify(b"s3cret", 1_700_000_000, b"{\"a\":2}", &signature, 1_700_000_000, window);
        assert_eq!(tampered, Err(SignatureError::Mismatch));
        let other_secret = verify(b"other", 1_700_000_000, b"{\"a\":1}", &signature, 1_700_000_000, window);
        assert_eq!(other_secret, Err(SignatureError::Mismatch));
        let moved_timestamp = verify(b"s3cret", 1_700_000_001, b"{\"a\":1}", &signature, 1_700_000_001, window);
        assert_eq!(moved_timestamp, Err(SignatureError::Mismatch), "the timestamp is signed too");
        let replayed = verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", &signature, 1_700_001_000, window);
        assert_eq!(replayed, Err(SignatureError::Stale));
        assert_eq!(verify(b"s", 1, b"", "sha256=00", 1, window), Err(SignatureError::Malformed));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_within_the_upper_half() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8).map(|attempt| backoff(attempt, base, max, 0.999).as_millis() as u64).collect();
        assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]), "{delays:?}");
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_secs(2));
        assert!(backoff(30, base, max, 0.999) <= max);
        assert_eq!(backoff(30, base, max, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn non_public_targets_are_refused_unless_allowed() {
        let url = |text: &str| url::Url::parse(text).unwrap();
        for private in [
            "http://127.0.0.1:9/x",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.5.5/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let refusal = check_target(&url(private), false).unwrap_err();
            assert_eq!(refusal.code(), "target_not_allowed", "{private}");
            assert_eq!(check_target(&url(private), true), Ok(()), "{private}");
        }
        for public in ["https://8.8.8.8/hook", "http://[2606:4700::1]/", "https://hooks.example.com/x"] {
            assert_eq!(check_target(&url(public), false), Ok(()), "{public}");
        }
        assert_eq!(check_target(&url("ftp://example.com/"), true).unwrap_err().code(), "unsupported_scheme");
    }
}
