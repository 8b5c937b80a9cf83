//! Live per-version telemetry: request and error counts and a latency
//! histogram, recorded on the request path with relaxed atomic adds only
//! (no lock, no allocation).
//!
//! Counters are cumulative. A window is the difference of two snapshots
//! ([`Snapshot::since`]), so the rollout controller can judge "since this
//! step began" or "the last 10 s" without the request path knowing about
//! windows at all.
//!
//! The histogram is HdrHistogram's log-linear layout (16 linear
//! sub-buckets per power of two, ~6% relative precision, 1 µs to ~4.7 h)
//! over `AtomicU64`s. It is written here because the `hdrhistogram` crate
//! records through `&mut self` (or per-thread recorders with a refresh
//! handshake), and the gateway records from many tasks at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Largest recorded value: 2^34 µs (~4.7 h); above that values are clamped.
const MAX_EXP: u32 = 34;
pub const BUCKETS: usize = (MAX_EXP - SUB_BITS + 1) as usize * SUB as usize;

/// Bucket of a value in microseconds.
pub fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let us = us.min((1u64 << MAX_EXP) - 1);
    let exp = 63 - us.leading_zeros(); // floor(log2), ≥ SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
}

/// Smallest value (µs) that falls in bucket `i`.
pub fn bucket_low(i: usize) -> u64 {
    let (block, sub) = ((i as u64) / SUB, (i as u64) % SUB);
    if block == 0 {
        return sub;
    }
    let exp = block as u32 + SUB_BITS - 1;
    (SUB + sub) << (exp - SUB_BITS)
}

/// Largest value (µs) that falls in bucket `i`.
pub fn bucket_high(i: usize) -> u64 {
    bucket_low(i + 1).saturating_sub(1)
}

/// Live counters of one version in one route. Shared across route-table
/// swaps so a deployment step does not reset them.
pub struct VersionStats {
    requests: AtomicU64,
    /// 5xx answers, traps, timeouts and out-of-memory.
    errors: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for VersionStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl std::fmt::Debug for VersionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionStats")
            .field("requests", &self.requests())
            .field("errors", &self.errors())
            .finish()
    }
}

impl VersionStats {
    /// One finished request: its latency (to the response head) and
    /// whether it failed.
    pub fn record(&self, latency: Duration, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let i = bucket_of(latency.as_micros().min(u64::MAX as u128) as u64);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A failure discovered after the request was counted (the body broke
    /// after the head went out).
    pub fn record_late_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The cumulative counters as they are now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests(),
            errors: self.errors(),
            latency: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl seal_runtime::LateFailure for VersionStats {
    fn late_failure(&self, error: &seal_runtime::InvokeError) {
        if error.is_function_error() {
            self.record_late_error();
        }
    }
}

/// Counters at one moment, or (after [`Snapshot::since`]) over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    /// Count per latency bucket (see [`bucket_low`]).
    pub latency: Vec<u64>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: vec![0; BUCKETS],
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors).min(
                // A late error may land after its request was snapshotted.
                self.requests.saturating_sub(earlier.requests),
            ),
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Requests with a recorded latency.
    pub fn samples(&self) -> u64 {
        self.latency.iter().sum()
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile (0..=1) in microseconds: the highest value of the
    /// bucket holding it (what HdrHistogram calls the highest equivalent
    /// value). `None` without samples.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.samples();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_high(i));
            }
        }
        None
    }

    /// Samples certainly slower than `us` (their whole bucket lies above it).
    pub fn slower_than_us(&self, us: u64) -> u64 {
        self.latency
            .iter()
            .enumerate()
            .filter(|(i, _)| bucket_low(*i) > us)
            .map(|(_, c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(15), 15);
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket_high(i) + 1, bucket_low(i + 1), "bucket {i}");
            assert_eq!(bucket_of(bucket_low(i)), i);
            assert_eq!(bucket_of(bucket_high(i)), i);
        }
        // ~6% precision: the bucket of 200 ms spans less than 1/16 of it.
        let i = bucket_of(200_000);
        assert!(bucket_high(i) - bucket_low(i) < 200_000 / 16 + 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn windows_and_quantiles() {
        let s = VersionStats::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), ms > 98);
        }
        let before = s.snapshot();
        assert_eq!(before.requests, 100);
        assert_eq!(before.errors, 2);
        let p50 = before.quantile_us(0.5).unwrap();
        assert!((48_000..=53_500).contains(&p50), "{p50}");
        let p99 = before.quantile_us(0.99).unwrap();
        assert!((99_000..=104_000).contains(&p99), "{p99}");
        // 95 ms shares a bucket with 96..=98 ms, so only 99 and 100 ms are
        // certainly slower.
        assert_eq!(before.slower_than_us(95_000), 2);
        for _ in 0..10 {
            s.record(Duration::from_micros(300), true);
        }
        let w = s.snapshot().since(&before);
        assert_eq!((w.requests, w.errors, w.samples()), (10, 10, 10));
        assert_eq!(w.error_rate(), 1.0);
        assert!(w.quantile_us(0.99).unwrap() < 320);
        assert_eq!(Snapshot::default().quantile_us(0.5), None);
    }
}
