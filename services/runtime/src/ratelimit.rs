//! Token buckets keyed by principal (a thing's readings, a user's commands): in memory, per
//! process, so a limit never costs a database round trip.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

/// Keys tracked before idle buckets are forgotten (a forgotten key comes back with a full bucket,
/// which only errs on the generous side).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A sustained rate with a burst allowance, per key.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    /// `per_second` sustained (at least 1), `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(per_second.max(1)),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `n` units for `key`, or says how long until they would be there.
    pub fn take(&self, key: Uuid, n: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            let idle = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.duration_since(b.at) < idle);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        let wanted = f64::from(n);
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (wanted - bucket.tokens) / self.rate,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn burst_then_rate() {
        let limiter = RateLimiter::new(10, 5);
        let key = Uuid::new_v4();
        limiter.take(key, 5).unwrap();
        let wait = limiter.take(key, 1).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another key is untouched.
        limiter.take(Uuid::new_v4(), 5).unwrap();
        // More than the burst can never be taken at once; the wait says so.
        assert!(limiter.take(Uuid::new_v4(), 6).is_err());
    }
}
