//! Invocation and guest log records: each is written once as a JSON line
//! (through `tracing`, target `seal::invocation` or `seal::guest`) and kept
//! in a bounded in-memory ring that `GET /v1/functions/{fn}/logs` reads and
//! follows.
//!
//! The ring holds the last [`LogHub::capacity`] records of all functions;
//! older ones are dropped (the server's own log output, collected by the
//! operator, is the durable copy).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// Which version a record is about (shared by every record of it).
#[derive(Debug, Serialize)]
pub struct VersionTags {
    pub function: String,
    pub environment: String,
    pub version: u64,
    pub digest: String,
}

/// Text a log record keeps, inline up to 48 bytes (a hex correlation id,
/// most paths). The ring drops its oldest record on every push, long
/// after it was written: a record that points at nothing is dropped
/// without touching (and missing in the cache on) memory elsewhere.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RecordText(smallvec::SmallVec<[u8; 48]>);

impl RecordText {
    pub fn new(text: &str) -> Self {
        Self(smallvec::SmallVec::from_slice(text.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Only ever made from a `str`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for RecordText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for RecordText {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl std::fmt::Display for RecordText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RecordText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for RecordText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One log record. Kept as data: it is turned into its JSON line only
/// when read, so the request path pays no serialization.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub seq: u64,
    pub ts_ms: i64,
    pub tags: std::sync::Arc<VersionTags>,
    /// The invocation's status (`None` on guest lines: they are written
    /// before it is known).
    pub status: Option<u16>,
    pub payload: Payload,
}

#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "records live inline in the ring, each slot as large as the largest anyway"
)]
pub enum Payload {
    /// Both inline: a record holds nothing to free (one is written per
    /// request).
    Invocation(crate::invocation::InvocationFields),
    Guest(crate::invocation::GuestFields),
}

impl LogRecord {
    pub fn kind(&self) -> &'static str {
        match self.payload {
            Payload::Invocation(_) => "invocation",
            Payload::Guest(_) => "guest",
        }
    }

    /// The correlation id of the invocation it is about.
    pub fn request_id(&self) -> &str {
        match &self.payload {
            Payload::Invocation(f) => &f.request_id,
            Payload::Guest(f) => &f.request_id,
        }
    }

    /// The record as one JSON object (one line).
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a, T> {
            ts: String,
            seq: u64,
            kind: &'static str,
            #[serde(flatten)]
            tags: &'a VersionTags,
            #[serde(flatten)]
            fields: &'a T,
        }
        let (ts, seq, kind, tags) = (rfc3339_ms(self.ts_ms), self.seq, self.kind(), &*self.tags);
        let out = match &self.payload {
            Payload::Invocation(f) => serde_json::to_string(&Line {
                ts,
                seq,
                kind,
                tags,
                fields: f,
            }),
            Payload::Guest(f) => serde_json::to_string(&Line {
                ts,
                seq,
                kind,
                tags,
                fields: f,
            }),
        };
        out.unwrap_or_default()
    }
}

/// Which records a reader wants.
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    /// Only this function (`None`: every function, for a correlation id
    /// followed across functions).
    pub function: Option<String>,
    /// Only records of invocations with this correlation id.
    pub correlation: Option<String>,
    pub environment: Option<String>,
    pub version: Option<u64>,
    /// An exact status, or a class: 2 → 2xx, 5 → 5xx.
    pub status: Option<StatusFilter>,
    pub since_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u16),
}

impl StatusFilter {
    /// `200`, `5xx`, `4XX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(c) = s.strip_suffix("xx")
            && let Ok(c) = c.parse::<u16>()
            && (1..=5).contains(&c)
        {
            return Ok(StatusFilter::Class(c));
        }
        match s.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(StatusFilter::Exact(n)),
            _ => Err(format!(
                "invalid status filter {s:?}: use a status like 200 or a class like 5xx"
            )),
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            StatusFilter::Exact(n) => status == n,
            StatusFilter::Class(c) => status / 100 == c,
        }
    }
}

impl LogFilter {
    pub fn matches(&self, r: &LogRecord) -> bool {
        self.function.as_ref().is_none_or(|f| *f == r.tags.function)
            && self
                .correlation
                .as_ref()
                .is_none_or(|c| **c == *r.request_id())
            && self
                .environment
                .as_ref()
                .is_none_or(|e| *e == r.tags.environment)
            && self.version.is_none_or(|v| v == r.tags.version)
            && self.since_ms.is_none_or(|t| r.ts_ms >= t)
            && self
                .status
                .is_none_or(|f| r.status.is_some_and(|s| f.matches(s)))
    }
}

pub struct LogHub {
    /// The records themselves, not pointers to them: pushing one writes
    /// into the slot the oldest leaves.
    ring: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
    seq: AtomicU64,
    live: broadcast::Sender<std::sync::Arc<LogRecord>>,
}

impl LogHub {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            capacity: capacity.max(1),
            seq: AtomicU64::new(0),
            live: broadcast::channel(4096).0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a record (numbered and timestamped here).
    pub fn push(&self, tags: &std::sync::Arc<VersionTags>, status: Option<u16>, payload: Payload) {
        let record = LogRecord {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            ts_ms: now_ms(),
            tags: tags.clone(),
            status,
            payload,
        };
        let mut live = None;
        if let Ok(mut ring) = self.ring.lock() {
            // Under the ring's lock: a reader that subscribes, then reads
            // the ring, finds the record in one or the other.
            if self.live.receiver_count() > 0 {
                live = Some(std::sync::Arc::new(record.clone()));
            }
            if ring.len() >= self.capacity {
                ring.pop_front();
            }
            ring.push_back(record);
        }
        if let Some(record) = live {
            let _ = self.live.send(record);
        }
    }

    /// The newest `limit` records that match, oldest first. Copied out a
    /// few at a time, the lock let go in between, so a large read does
    /// not hold up the requests that push.
    pub fn query(&self, filter: &LogFilter, limit: usize) -> Vec<std::sync::Arc<LogRecord>> {
        const COPIES_PER_LOCK: usize = 256;
        let mut out = Vec::new();
        // Records older than this one are still to be read.
        let mut before = u64::MAX;
        while out.len() < limit {
            let Ok(ring) = self.ring.lock() else {
                break;
            };
            // The ring is in `seq` order.
            let mut end = ring.partition_point(|r| r.seq < before);
            let mut copied = 0;
            while end > 0 && out.len() < limit && copied < COPIES_PER_LOCK {
                end -= 1;
                let r = &ring[end];
                if filter.matches(r) {
                    out.push(std::sync::Arc::new(r.clone()));
                    copied += 1;
                }
            }
            if end == 0 {
                break;
            }
            before = ring[end].seq;
        }
        out.reverse();
        out
    }

    /// Records pushed from now on (a slow reader skips what it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<LogRecord>> {
        self.live.subscribe()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `2026-11-22T12:34:56.789Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // "…T12:34:56Z" → "…T12:34:56.789Z"
    format!("{}.{millis:03}Z", s.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hello@`version` in production.
    fn tags(version: u64) -> std::sync::Arc<VersionTags> {
        std::sync::Arc::new(VersionTags {
            function: "hello".into(),
            environment: "production".into(),
            version,
            digest: "sha256:x".into(),
        })
    }

    fn guest(message: &str) -> Payload {
        guest_of(message, "r")
    }

    fn guest_of(message: &str, request_id: &str) -> Payload {
        Payload::Guest(crate::invocation::GuestFields {
            request_id: request_id.into(),
            trace_id: [1; 16],
            stream: "stdout",
            message: message.into(),
        })
    }

    #[test]
    fn record_text_keeps_short_and_long_text() {
        let short = RecordText::new("4bf92f3577b34da6a3ce929d0e0e4736");
        let long_id = "x".repeat(200);
        let long = RecordText::new(&long_id);
        assert_eq!(short.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(long.as_str(), long_id);
        assert_eq!(RecordText::new("").as_str(), "");
        assert_eq!(
            serde_json::to_string(&RecordText::new("/a/\"é\"")).unwrap(),
            r#""/a/\"é\"""#
        );
        // A long correlation id (a caller's x-request-id) still matches.
        let hub = LogHub::new(2);
        let tags = tags(1);
        hub.push(&tags, None, guest_of("hi", &long_id));
        let found = hub.query(
            &LogFilter {
                correlation: Some(long_id.clone()),
                ..Default::default()
            },
            10,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].request_id(), long_id);
    }

    #[test]
    fn a_large_read_is_copied_out_in_parts_and_in_order() {
        let hub = LogHub::new(1000);
        let tags = tags(1);
        // 1,200 pushed into 1,000 places; every other one a 500.
        for i in 0..1200u64 {
            let status = if i % 2 == 0 { 200 } else { 500 };
            hub.push(&tags, Some(status), guest("hi"));
        }
        let all = hub.query(&LogFilter::default(), 10_000);
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (201..=1200).collect::<Vec<_>>());
        let errors = LogFilter {
            status: Some(StatusFilter::Exact(500)),
            ..Default::default()
        };
        // More than one part's worth (256 copies per lock), newest kept.
        let newest = hub.query(&errors, 300);
        let seqs: Vec<u64> = newest.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=300).map(|k| 600 + 2 * k).collect::<Vec<_>>());
    }

    #[test]
    fn ring_is_bounded_and_filters() {
        let hub = LogHub::new(3);
        for (v, status) in [(1, 200), (2, 500), (2, 200), (2, 503)] {
            hub.push(&tags(v), Some(status), guest("hi"));
        }
        let f = LogFilter {
            function: Some("hello".into()),
            ..Default::default()
        };
        // Capacity 3: the first record is gone.
        let all = hub.query(&f, 100);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3, 4]);
        let errors = LogFilter {
            status: Some(StatusFilter::parse("5xx").unwrap()),
            ..f.clone()
        };
        assert_eq!(hub.query(&errors, 100).len(), 2);
        let v1 = LogFilter {
            version: Some(1),
            ..f.clone()
        };
        assert!(hub.query(&v1, 100).is_empty());
        let other = LogFilter {
            function: Some("other".into()),
            ..f.clone()
        };
        assert!(hub.query(&other, 100).is_empty());
        // A correlation id matches across functions, and only its own.
        hub.push(&tags(3), Some(200), guest_of("elsewhere", "journey-1"));
        let journey = LogFilter {
            correlation: Some("journey-1".into()),
            ..Default::default()
        };
        assert_eq!(hub.query(&journey, 100).len(), 1);
        assert_eq!(
            hub.query(
                &LogFilter {
                    correlation: Some("r".into()),
                    ..Default::default()
                },
                100
            )
            .len(),
            2
        );
        assert!(
            hub.query(
                &LogFilter {
                    correlation: Some("journey-1".into()),
                    ..other
                },
                100
            )
            .is_empty()
        );
        assert_eq!(
            hub.query(
                &LogFilter {
                    correlation: Some("journey-1".into()),
                    ..f
                },
                100
            )
            .len(),
            1
        );
        let line: serde_json::Value = serde_json::from_str(&all[0].json()).unwrap();
        assert_eq!(line["seq"], 2);
        assert_eq!(line["kind"], "guest");
        assert_eq!(line["function"], "hello");
        assert_eq!(line["version"], 2);
        assert_eq!(line["trace_id"], "01010101010101010101010101010101");
        assert_eq!(line["message"], "hi");
        assert!(line["ts"].as_str().unwrap().ends_with('Z'));
        assert!(StatusFilter::parse("7xx").is_err());
        assert!(StatusFilter::parse("abc").is_err());
        assert_eq!(StatusFilter::parse("404"), Ok(StatusFilter::Exact(404)));
    }
}
