//! Failed token checks per client address (each costs the API server a TokenReview), refused with 429
//! beyond their bound — except for tokens that passed a check lately, so a client sharing an address with
//! an attacker is not locked out with it. (Blob streams per caller are counted with
//! [`gpuplane_serve::Slots`].)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per client address for failed authentications: `burst` failures at once, then one
/// every `1 / per_sec` seconds. At most `max_clients` addresses are tracked; beyond that the fullest
/// buckets are forgotten.
#[derive(Debug)]
pub struct Failures {
    burst: f64,
    per_sec: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Failures {
    /// A limiter allowing `burst` failures, refilled at `per_sec`.
    pub fn new(burst: u32, per_sec: f64, max_clients: usize) -> Self {
        Failures { burst: f64::from(burst.max(1)), per_sec, max_clients: max_clients.max(1), buckets: Mutex::default() }
    }

    fn level(&self, bucket: (f64, Instant), now: Instant) -> f64 {
        (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.per_sec).min(self.burst)
    }

    /// Whether `ip` may still have a token checked (it has failures left).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.get(&ip).is_none_or(|b| self.level(*b, Instant::now()) >= 1.0)
    }

    /// Records a failed check from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_clients && !buckets.contains_key(&ip) {
            // Full buckets are the same as forgotten ones.
            buckets.retain(|_, b| self.level(*b, now) < self.burst);
            if buckets.len() >= self.max_clients {
                buckets.clear();
            }
        }
        let level = buckets.get(&ip).map_or(self.burst, |b| self.level(*b, now));
        buckets.insert(ip, ((level - 1.0).max(0.0), now));
    }
}

/// Tokens (by SHA-256) that passed a check in the last ten minutes; at most 4,096 are kept.
#[derive(Debug, Default)]
pub struct RecentTokens(Mutex<HashMap<String, Instant>>);

const RECENT_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl RecentTokens {
    fn key(token: &str) -> String {
        let mut hash = crate::Sha256::default();
        hash.update(token.as_bytes());
        hash.hex()
    }

    /// Whether `token` passed a check lately.
    pub fn contains(&self, token: &str) -> bool {
        let recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(&Self::key(token)).is_some_and(|t| t.elapsed() < RECENT_FOR)
    }

    /// Records that `token` passed a check now.
    pub fn insert(&self, token: &str) {
        let mut recent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= 4096 {
            recent.retain(|_, t| t.elapsed() < RECENT_FOR);
            if recent.len() >= 4096 {
                recent.clear();
            }
        }
        recent.insert(Self::key(token), Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_address() {
        let failures = Failures::new(3, 0.0, 16);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(failures.allows(x));
            failures.failed(x);
        }
        assert!(!failures.allows(x), "x used its burst");
        assert!(failures.allows(y), "y is another client");
    }
}
