//! Per-key request rate limiting: a token bucket per API key, refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::error::{ApiError, ApiResult};

pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refreshed: Instant,
}

impl RateLimiter {
    /// `per_second == 0` allows everything.
    pub fn new(per_second: u32) -> Self {
        RateLimiter { per_second: f64::from(per_second), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn check(&self, key_id: &str) -> ApiResult<()> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        // A burst of one second's worth is allowed on top of the steady rate.
        let capacity = self.per_second;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(key_id.to_owned()).or_insert(Bucket { tokens: capacity, refreshed: now });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.refreshed).as_secs_f64() * self.per_second).min(capacity);
        bucket.refreshed = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0) as u64;
        Err(ApiError::too_many_requests(
            "rate_limited",
            format!("this API key is limited to {} requests per second; retry after {wait} s", self.per_second),
            wait,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_rate_is_refused_per_key() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let refused = limiter.check("a").unwrap_err();
        assert_eq!(refused.code(), "rate_limited");
        limiter.check("b").unwrap();
        assert!(RateLimiter::new(0).check("a").is_ok());
    }
}
