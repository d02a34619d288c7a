//! Fetch options, counters, and the wait between attempts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a [`RangeFetcher`](super::RangeFetcher) talks to servers.
///
/// A read fails after at most `(retries + 1) × timeout + retries × backoff_cap` (plus waiting for a
/// free connection when more than `connections` requests are in flight).
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Per request attempt: connecting, headers and the whole body.
    pub timeout: Duration,
    /// Attempts after the first for retryable failures (5xx, 429, 408, resets, timeouts, short bodies).
    pub retries: u32,
    /// Base of the exponential backoff; each wait is jittered between half and all of it.
    pub backoff: Duration,
    /// The longest wait between attempts, also the cap on a server's `Retry-After`.
    pub backoff_cap: Duration,
    /// Requests in flight at once, and idle keep-alive connections kept per host.
    pub connections: usize,
    /// Ranges of one [`read_ranges`](super::HttpBlob::read_ranges) call at most this far apart
    /// are fetched by one request (the gap is downloaded and dropped).
    pub coalesce_gap: u64,
    /// Accept any TLS certificate (`--insecure`).
    pub accept_invalid_certs: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            timeout: Duration::from_secs(30),
            retries: 5,
            backoff: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(5),
            connections: 8,
            coalesce_gap: 64 << 10,
            accept_invalid_certs: false,
        }
    }
}

impl FetchOptions {
    /// The wait before retry number `retry` (1-based), jittered, or the server's `Retry-After`.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.backoff_cap);
        }
        let exp = self
            .backoff
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20));
        let full = exp.min(self.backoff_cap);
        // "Equal jitter": at least half the wait, so retries never hammer, spread so that
        // many readers failing together do not retry together.
        let half = full / 2;
        half + half.mul_f64(jitter())
    }
}

/// A number in [0, 1): xorshift over the clock and a counter; spreading retries needs no more.
fn jitter() -> f64 {
    static SEQ: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ nanos;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A snapshot of a fetcher's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// HTTP requests sent (HEADs, redirect hops and retries included).
    pub requests: u64,
    /// Body bytes received (including bytes dropped from coalescing gaps or ignored ranges).
    pub bytes: u64,
    /// Attempts repeated after a retryable failure.
    pub retries: u64,
    /// Fetches that failed for good.
    pub failures: u64,
}

/// The live counters behind [`FetchStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> FetchStats {
        FetchStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_capped() {
        let opts = FetchOptions {
            backoff: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            ..FetchOptions::default()
        };
        for _ in 0..100 {
            let d1 = opts.delay(1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = opts.delay(3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(opts.delay(30, None) <= Duration::from_secs(1));
        }
        assert_eq!(
            opts.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }
}
