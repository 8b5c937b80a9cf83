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

/// A histogram over `AtomicU64`s in the log-linear layout above, with the
/// sum of recorded values (for OpenMetrics' `_sum`).
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// Counts folded onto coarser upper bounds (same unit as the values),
    /// non-cumulative, the last bound being +Inf; a fine bucket goes to the
    /// first bound at or above its highest value.
    pub fn fold(&self, bounds: &[u64]) -> Vec<u64> {
        let mut out = vec![0; bounds.len() + 1];
        for (i, c) in self.buckets.iter().enumerate() {
            let c = c.load(Ordering::Relaxed);
            if c == 0 {
                continue;
            }
            let high = bucket_high(i);
            let slot = bounds.partition_point(|b| *b < high);
            out[slot] += c;
        }
        out
    }
}

/// Why an invocation failed, for the per-kind error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The guest answered with a 5xx status.
    Status5xx,
    Trap,
    Timeout,
    Memory,
    NoResponse,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Status5xx,
        ErrorKind::Trap,
        ErrorKind::Timeout,
        ErrorKind::Memory,
        ErrorKind::NoResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Status5xx => "status_5xx",
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::NoResponse => "no_response",
        }
    }

    /// The kind of an invocation's ending, if it is the function's failure.
    pub fn of(report: &seal_runtime::InvocationReport) -> Option<ErrorKind> {
        use seal_runtime::InvokeError as E;
        match &report.outcome {
            Err(E::Trap(_)) => Some(ErrorKind::Trap),
            Err(E::Timeout(_)) => Some(ErrorKind::Timeout),
            Err(E::OutOfMemory { .. }) => Some(ErrorKind::Memory),
            Err(E::NoResponse(_)) => Some(ErrorKind::NoResponse),
            Err(E::Overloaded(_) | E::Throttled { .. } | E::ClientClosed(_) | E::Internal(_)) => {
                None
            }
            Ok(()) => report
                .status
                .filter(|s| *s >= 500)
                .map(|_| ErrorKind::Status5xx),
        }
    }
}

/// The last cold start of a version, in microseconds per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ColdStart {
    /// Compile-cache load (read, verify, deserialize, link), paid when the
    /// version was loaded; `load_from_cache` says whether it was a cache
    /// hit or a compile.
    pub load_us: u64,
    pub load_from_cache: bool,
    /// The first request's instantiation.
    pub instantiate_us: u64,
    /// The first request's call into the handler until its response head.
    pub first_call_us: u64,
}

/// Live counters of one version in one environment. Held by the gateway's
/// registry for the life of the process, so they only grow (OpenMetrics
/// counters) and a deployment step does not reset them.
pub struct VersionStats {
    /// Requests the gates judge: routed by weight (or sticky key), or
    /// pinned with the deployment's preview token.
    requests: AtomicU64,
    /// Their 5xx answers, traps, timeouts and out-of-memory.
    errors: AtomicU64,
    /// Their time to the response head (µs).
    latency: AtomicHistogram,
    /// Requests that pinned this version without the preview token: they
    /// are served and counted, never judged.
    unjudged_requests: AtomicU64,
    unjudged_errors: AtomicU64,
    /// Invocations whose caller hung up before the answer was complete.
    client_closed: AtomicU64,
    /// Invocations the runtime reported (one per request that reached the
    /// guest's task).
    invocations: AtomicU64,
    errors_by_kind: [AtomicU64; 5],
    /// Refused for lack of an instance slot: the server's failure.
    overloaded: AtomicU64,
    cold_starts: AtomicU64,
    last_cold: std::sync::Mutex<Option<ColdStart>>,
    /// Instantiation time per invocation (µs).
    instantiate: AtomicHistogram,
    /// Peak linear memory per invocation (KiB).
    memory_kib: AtomicHistogram,
    /// Memory limit × billed duration, in MiB·µs.
    cost_mib_us: AtomicU64,
}

impl Default for VersionStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: AtomicHistogram::default(),
            unjudged_requests: AtomicU64::new(0),
            unjudged_errors: AtomicU64::new(0),
            client_closed: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            errors_by_kind: Default::default(),
            overloaded: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            last_cold: std::sync::Mutex::new(None),
            instantiate: AtomicHistogram::default(),
            memory_kib: AtomicHistogram::default(),
            cost_mib_us: AtomicU64::new(0),
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

/// MiB·µs in one GB-second (memory in GiB, as serverless platforms bill).
pub const MIB_US_PER_GB_SECOND: f64 = 1024.0 * 1_000_000.0;

impl VersionStats {
    /// One finished request: its latency (to the response head), whether
    /// it failed, and whether the gates judge it ([`Traffic`]).
    pub fn record(&self, latency: Duration, error: bool, traffic: Traffic) {
        let (requests, errors) = match traffic {
            Traffic::Judged => {
                self.latency
                    .record(latency.as_micros().min(u64::MAX as u128) as u64);
                (&self.requests, &self.errors)
            }
            Traffic::Unjudged => (&self.unjudged_requests, &self.unjudged_errors),
        };
        requests.fetch_add(1, Ordering::Relaxed);
        if error {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A failure discovered after the request was counted (the body broke
    /// after the head went out).
    pub fn record_late_error(&self, traffic: Traffic) {
        match traffic {
            Traffic::Judged => &self.errors,
            Traffic::Unjudged => &self.unjudged_errors,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused for lack of capacity: the server's answer, so
    /// neither a request of the version nor its error.
    pub fn record_overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// What the runtime reported about one invocation; `memory_limit` is
    /// the version's limit in bytes (the billed memory). Returns the
    /// invocation's cost in GB-seconds.
    pub fn record_invocation(
        &self,
        report: &seal_runtime::InvocationReport,
        memory_limit: u64,
        load: seal_runtime::LoadTimings,
    ) -> f64 {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        match ErrorKind::of(report) {
            Some(kind) => {
                let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
                self.errors_by_kind[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if matches!(
                    report.outcome,
                    Err(seal_runtime::InvokeError::ClientClosed(_))
                ) {
                    self.client_closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let instantiate_us = report.instantiate.as_micros() as u64;
        self.instantiate.record(instantiate_us);
        self.memory_kib.record(report.peak_memory_bytes >> 10);
        let mib_us = (memory_limit >> 20).saturating_mul(report.total.as_micros() as u64);
        self.cost_mib_us.fetch_add(mib_us, Ordering::Relaxed);
        if report.cold {
            self.cold_starts.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_cold.lock() {
                *last = Some(ColdStart {
                    load_us: load.load.as_micros() as u64,
                    load_from_cache: load.from_cache,
                    instantiate_us,
                    first_call_us: report.call_to_head.map_or(0, |d| d.as_micros() as u64),
                });
            }
        }
        mib_us as f64 / MIB_US_PER_GB_SECOND
    }

    /// Every request served, judged or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed) + self.unjudged_requests.load(Ordering::Relaxed)
    }

    /// Every request's failure, judged or not.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed) + self.unjudged_errors.load(Ordering::Relaxed)
    }

    /// Requests that pinned this version without the preview token.
    pub fn unjudged_requests(&self) -> u64 {
        self.unjudged_requests.load(Ordering::Relaxed)
    }

    pub fn client_closed(&self) -> u64 {
        self.client_closed.load(Ordering::Relaxed)
    }

    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        let i = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors_by_kind[i].load(Ordering::Relaxed)
    }

    pub fn overloaded(&self) -> u64 {
        self.overloaded.load(Ordering::Relaxed)
    }

    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }

    pub fn last_cold_start(&self) -> Option<ColdStart> {
        self.last_cold.lock().ok().and_then(|c| *c)
    }

    pub fn latency(&self) -> &AtomicHistogram {
        &self.latency
    }

    pub fn instantiation(&self) -> &AtomicHistogram {
        &self.instantiate
    }

    pub fn memory_kib(&self) -> &AtomicHistogram {
        &self.memory_kib
    }

    /// Total cost so far in GB-seconds.
    pub fn gb_seconds(&self) -> f64 {
        self.cost_mib_us.load(Ordering::Relaxed) as f64 / MIB_US_PER_GB_SECOND
    }

    /// The cumulative counters the gates judge, as they are now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            overloaded: self.overloaded(),
            cold_starts: self.cold_starts(),
            latency: self.latency.counts(),
        }
    }
}

/// Whether a request counts in the rollout gates of its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Routed by the route's weights (or sticky key), or pinned to a
    /// version with the deployment's preview token.
    Judged,
    /// Pinned to a version (`seal-version`, the preview host) without the
    /// token: served, counted in the version's totals, never judged.
    Unjudged,
}

/// Counters at one moment, or (after [`Snapshot::since`]) over a window.
/// Its JSON form (what a node reports to the others) lists only the
/// latency buckets that have counts, as `[bucket, count]` pairs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub requests: u64,
    pub errors: u64,
    /// Requests refused for lack of capacity (not in `requests`).
    pub overloaded: u64,
    pub cold_starts: u64,
    /// Count per latency bucket (see [`bucket_low`]).
    #[serde(with = "sparse")]
    pub latency: Vec<u64>,
}

/// A dense bucket vector as `[[index, count], …]` of its non-zero buckets.
mod sparse {
    use super::BUCKETS;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            v.iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i, *c)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let pairs = Vec::<(usize, u64)>::deserialize(d)?;
        let mut v = vec![0u64; BUCKETS];
        for (i, c) in pairs {
            let slot: &mut u64 = v
                .get_mut(i)
                .ok_or_else(|| serde::de::Error::custom(format!("no latency bucket {i}")))?;
            *slot = slot.saturating_add(c);
        }
        Ok(v)
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            overloaded: 0,
            cold_starts: 0,
            latency: vec![0; BUCKETS],
        }
    }
}

impl Snapshot {
    /// Adds `other`'s counts to these (the same version on another node).
    pub fn add(&mut self, other: &Snapshot) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.overloaded += other.overloaded;
        self.cold_starts += other.cold_starts;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors).min(
                // A late error may land after its request was snapshotted.
                self.requests.saturating_sub(earlier.requests),
            ),
            overloaded: self.overloaded.saturating_sub(earlier.overloaded),
            cold_starts: self.cold_starts.saturating_sub(earlier.cold_starts),
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
    fn a_snapshot_travels_as_sparse_json_and_sums_across_nodes() {
        let a = VersionStats::default();
        a.record(Duration::from_millis(3), false, Traffic::Judged);
        a.record(Duration::from_millis(40), true, Traffic::Judged);
        let snap = a.snapshot();
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["latency"].as_array().unwrap().len(), 2, "{json}");
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snap);
        let mut sum = back.clone();
        sum.add(&snap);
        assert_eq!((sum.requests, sum.errors, sum.samples()), (4, 2, 4));
        assert_eq!(sum.quantile_us(0.99), snap.quantile_us(0.99));
        let bad = serde_json::json!({"requests": 1, "errors": 0, "overloaded": 0,
            "cold_starts": 0, "latency": [[BUCKETS, 1]]});
        assert!(serde_json::from_value::<Snapshot>(bad).is_err());
    }

    #[test]
    fn windows_and_quantiles() {
        let s = VersionStats::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), ms > 98, Traffic::Judged);
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
            s.record(Duration::from_micros(300), true, Traffic::Judged);
        }
        let w = s.snapshot().since(&before);
        assert_eq!((w.requests, w.errors, w.samples()), (10, 10, 10));
        assert_eq!(w.error_rate(), 1.0);
        assert!(w.quantile_us(0.99).unwrap() < 320);
        assert_eq!(Snapshot::default().quantile_us(0.5), None);
    }

    #[test]
    fn unjudged_traffic_and_refusals_stay_out_of_the_judged_window() {
        let s = VersionStats::default();
        let before = s.snapshot();
        s.record(Duration::from_millis(1), false, Traffic::Judged);
        // Pinned without the token: slow and failing, counted, not judged.
        for _ in 0..5 {
            s.record(Duration::from_secs(3), true, Traffic::Unjudged);
        }
        s.record_late_error(Traffic::Unjudged);
        s.record_overloaded();
        s.record_overloaded();
        let w = s.snapshot().since(&before);
        assert_eq!((w.requests, w.errors, w.samples()), (1, 0, 1));
        assert_eq!(w.overloaded, 2);
        assert!(w.quantile_us(1.0).unwrap() < 1_100);
        // The totals count everything served.
        assert_eq!((s.requests(), s.errors(), s.unjudged_requests()), (6, 6, 5));
        assert_eq!(s.overloaded(), 2);
        s.record_late_error(Traffic::Judged);
        assert_eq!(s.snapshot().since(&before).errors, 1);
    }

    #[test]
    fn folding_onto_coarse_bounds_keeps_every_count() {
        let h = AtomicHistogram::default();
        for v in [1, 900, 1_000, 1_100, 50_000, 10_000_000] {
            h.record(v);
        }
        // ≤1 ms, ≤100 ms, +Inf. 1000 µs shares a bucket reaching 1023 µs,
        // so it lands in the second bound: folding rounds up, never down.
        let folded = h.fold(&[1_000, 100_000]);
        assert_eq!(folded, vec![2, 3, 1]);
        assert_eq!(folded.iter().sum::<u64>(), 6);
        assert_eq!(h.sum(), 1 + 900 + 1_000 + 1_100 + 50_000 + 10_000_000);
    }
}
