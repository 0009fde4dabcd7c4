//! A client-side rate limit for gpuplane's API client, the token bucket client-go gives kube-scheduler
//! (`clientConnection.qps` / `burst`): `burst` requests at once, then `qps` a second. Set to kube-scheduler's
//! values, the two schedulers make API calls under the same limit, so a throughput comparison is fair.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Requests per second and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second (> 0).
    pub qps: f64,
    /// Requests allowed at once (≥ 1).
    pub burst: u32,
}

/// The token bucket.
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token; how long the request must wait for it.
    fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.qps).min(f64::from(self.limit.burst)) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.limit.qps) }
    }
}

/// The layer to put on a kube-rs client (`ClientBuilder::with_layer`).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer(pub RateLimit);

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        let limit = RateLimit { qps: self.0.qps.max(f64::MIN_POSITIVE), burst: self.0.burst.max(1) };
        RateLimited {
            inner,
            bucket: Bucket { limit, tokens: f64::from(limit.burst), at: Instant::now() },
            wait: None,
            ready: false,
        }
    }
}

/// A service whose requests wait for a token. kube-rs drives it from one buffer task, one request at a time,
/// so the wait happens in `poll_ready`, before the request is handed over.
pub struct RateLimited<S> {
    inner: S,
    bucket: Bucket,
    wait: Option<Pin<Box<Sleep>>>,
    ready: bool,
}

impl<S, R> Service<R> for RateLimited<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.ready {
            if self.wait.is_none() {
                let now = Instant::now();
                let delay = self.bucket.reserve(now);
                if !delay.is_zero() {
                    self.wait = Some(Box::pin(tokio::time::sleep_until(now + delay)));
                }
            }
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            self.ready = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.ready = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_requests_are_spaced_by_the_rate() {
        let start = Instant::now();
        let mut b = Bucket { limit: RateLimit { qps: 10.0, burst: 3 }, tokens: 3.0, at: start };
        let waits: Vec<Duration> = (0..5).map(|_| b.reserve(start)).collect();
        assert_eq!(&waits[..3], &[Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(100));
        assert_eq!(waits[4], Duration::from_millis(200));
        // A second later the bucket has refilled to its burst, no further.
        let later = start + Duration::from_secs(5);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert!(b.tokens <= 2.0 + 1e-9);
    }
}
