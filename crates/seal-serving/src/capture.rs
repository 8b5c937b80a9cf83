//! Traffic capture: a sample of a route's real requests — method, path
//! and query, headers without credentials, the body up to a cap — with
//! the response's status and the SHA-256 of its body, for replaying
//! against a candidate later. Kept off the request path: the request body
//! is copied as the guest reads it and the response digested as the
//! caller receives it, and the record is handed to a bounded channel when
//! the response ends; a full channel drops it and counts, never waits.
//! With no capture running, a request pays one atomic load.

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Records waiting to be persisted at most (about 64 MiB at the default
/// body cap): past it a sampled request is dropped and counted.
pub const CHANNEL: usize = 1024;

/// Headers never captured, whatever the capture says: credentials.
pub const ALWAYS_DROPPED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "seal-preview-token",
];

/// What a running capture keeps, as the control plane set it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRule {
    pub environment: String,
    pub function: String,
    /// Share of requests kept, in (0, 1].
    pub rate: f64,
    /// Body bytes kept per request; a longer body is cut (and said so).
    pub body_limit: usize,
    /// Header names removed besides [`ALWAYS_DROPPED`] (lowercase).
    pub drop_headers: Vec<String>,
    /// Requests it may still keep (its maximum less those kept).
    pub remaining: u64,
}

/// One captured request and what answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    pub environment: String,
    pub function: String,
    pub version: u64,
    /// When it arrived (ms since the epoch).
    pub at: i64,
    pub method: String,
    /// Path and query as the function saw them.
    pub path: String,
    /// Headers in order, credentials and the capture's dropped ones
    /// removed; a value that is not UTF-8 is kept lossily.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than the capture's cap.
    pub body_truncated: bool,
    pub status: u16,
    /// `sha256:<hex>` of the response body as the caller received it.
    pub response_digest: String,
    pub response_bytes: u64,
    pub duration_ms: u64,
}

/// A running capture of one route.
#[derive(Debug)]
pub struct Tap {
    rule: CaptureRule,
    /// Sampled when a uniform u64 is below this.
    threshold: u64,
    drop: Vec<HeaderName>,
    remaining: AtomicI64,
}

/// Every running capture of this process, and the channel their records
/// go to.
pub struct Captures {
    /// By environment, then function (looked up without allocating).
    taps: ArcSwap<HashMap<String, HashMap<String, Arc<Tap>>>>,
    tx: mpsc::Sender<Captured>,
    rx: Mutex<Option<mpsc::Receiver<Captured>>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Captures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captures")
            .field("running", &self.rules().len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Default for Captures {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        Self {
            taps: ArcSwap::from_pointee(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Captures {
    /// Replaces the running captures.
    pub fn set(&self, rules: Vec<CaptureRule>) {
        let mut taps: HashMap<String, HashMap<String, Arc<Tap>>> = HashMap::new();
        for (key, tap) in rules.into_iter().map(|rule| {
            let threshold = if rule.rate >= 1.0 {
                u64::MAX
            } else {
                (rule.rate.max(0.0) * u64::MAX as f64) as u64
            };
            let mut drop: Vec<HeaderName> = ALWAYS_DROPPED
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect();
            drop.extend(
                rule.drop_headers
                    .iter()
                    .filter_map(|h| HeaderName::try_from(h.as_str()).ok()),
            );
            let key = (rule.environment.clone(), rule.function.clone());
            let remaining = AtomicI64::new(rule.remaining.min(i64::MAX as u64) as i64);
            (
                key,
                Arc::new(Tap {
                    rule,
                    threshold,
                    drop,
                    remaining,
                }),
            )
        }) {
            taps.entry(key.0).or_default().insert(key.1, tap);
        }
        self.taps.store(Arc::new(taps));
    }

    /// The captures running now.
    pub fn rules(&self) -> Vec<CaptureRule> {
        self.taps
            .load()
            .values()
            .flat_map(|by_fn| by_fn.values())
            .map(|t| t.rule.clone())
            .collect()
    }

    /// Whether this request of `environment`/`function` is kept: the
    /// route's capture, if one runs, samples it at its rate.
    pub fn sample(&self, environment: &str, function: &str) -> Option<Arc<Tap>> {
        let taps = self.taps.load();
        if taps.is_empty() {
            return None;
        }
        let tap = taps.get(environment)?.get(function)?;
        if tap.threshold != u64::MAX && rand::random::<u64>() >= tap.threshold {
            return None;
        }
        // Counted down before the request runs, so a burst cannot keep
        // more than the capture's maximum.
        if tap.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return None;
        }
        Some(tap.clone())
    }

    /// The records' receiving end, for the one task that persists them.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Captured>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Gives the receiving end back (the writer stopping while requests
    /// still drain): what arrives meanwhile waits for a last flush.
    pub fn put_back_receiver(&self, rx: mpsc::Receiver<Captured>) {
        *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    }

    /// Sampled requests dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, c: Captured) {
        if self.tx.try_send(c).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A sampled request between its arrival and the end of its response.
pub struct Pending {
    captures: Arc<Captures>,
    record: Captured,
    started: std::time::Instant,
    body: Arc<Mutex<(Vec<u8>, bool, bool)>>,
}

impl Tap {
    /// Starts capturing `req` (served by `version`): its head is read now,
    /// its body copied as it is read.
    pub fn begin<B: Body>(
        &self,
        captures: Arc<Captures>,
        version: u64,
        req: http::Request<B>,
    ) -> (http::Request<TeeBody<B>>, Pending) {
        let ended = req.body().is_end_stream();
        let pending = self.pending(captures, version, &req, (Vec::new(), false, ended));
        let limit = self.rule.body_limit;
        let copy = pending.body.clone();
        (req.map(|inner| TeeBody { inner, limit, copy }), pending)
    }

    /// Starts capturing a request whose body is whole in memory (an event
    /// from a queue): the body is kept as it is, up to the cap, whether
    /// or not the guest reads it.
    pub fn begin_whole(
        &self,
        captures: Arc<Captures>,
        version: u64,
        req: &http::Request<Bytes>,
    ) -> Pending {
        let body = req.body();
        let take = body.len().min(self.rule.body_limit);
        let kept = (body[..take].to_vec(), take < body.len(), true);
        self.pending(captures, version, req, kept)
    }

    fn pending<B>(
        &self,
        captures: Arc<Captures>,
        version: u64,
        req: &http::Request<B>,
        body: (Vec<u8>, bool, bool),
    ) -> Pending {
        let headers = req
            .headers()
            .iter()
            .filter(|(name, _)| !self.drop.contains(name))
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let record = Captured {
            environment: self.rule.environment.clone(),
            function: self.rule.function.clone(),
            version,
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            method: req.method().as_str().to_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            headers,
            body: Vec::new(),
            body_truncated: false,
            status: 0,
            response_digest: String::new(),
            response_bytes: 0,
            duration_ms: 0,
        };
        Pending {
            captures,
            record,
            started: std::time::Instant::now(),
            body: Arc::new(Mutex::new(body)),
        }
    }
}

impl Pending {
    /// Digests the response as it is sent; the record goes to the channel
    /// when its body ends (or is dropped unfinished).
    pub fn finish<B>(self, resp: http::Response<B>) -> http::Response<DigestBody<B>> {
        let status = resp.status().as_u16();
        resp.map(|inner| DigestBody {
            inner,
            hasher: Some(Sha256::new()),
            bytes: 0,
            pending: Some((self, status)),
        })
    }

    fn send(mut self, status: u16, digest: String, bytes: u64) {
        let (body, cut, ended) =
            std::mem::take(&mut *self.body.lock().unwrap_or_else(|p| p.into_inner()));
        self.record.body = body;
        // Cut at the cap, or never read to its end by the guest: either
        // way not the whole body.
        self.record.body_truncated = cut || !ended;
        self.record.status = status;
        self.record.response_digest = digest;
        self.record.response_bytes = bytes;
        self.record.duration_ms = self.started.elapsed().as_millis() as u64;
        let captures = self.captures.clone();
        captures.send(self.record);
    }
}

/// A request body that copies what the guest reads, up to a cap.
pub struct TeeBody<B> {
    inner: B,
    limit: usize,
    copy: Arc<Mutex<(Vec<u8>, bool, bool)>>,
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = &polled {
            this.copy.lock().unwrap_or_else(|p| p.into_inner()).2 = true;
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let mut copy = this.copy.lock().unwrap_or_else(|p| p.into_inner());
            let room = this.limit.saturating_sub(copy.0.len());
            if data.len() > room {
                copy.1 = true;
            }
            let take = data.len().min(room);
            copy.0.extend_from_slice(&data[..take]);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that digests what it sends; the capture's record is
/// sent when it ends.
pub struct DigestBody<B> {
    inner: B,
    hasher: Option<Sha256>,
    bytes: u64,
    pending: Option<(Pending, u16)>,
}

impl<B> DigestBody<B> {
    fn done(&mut self) {
        if let (Some(hasher), Some((pending, status))) = (self.hasher.take(), self.pending.take()) {
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            pending.send(status, digest, self.bytes);
        }
    }
}

impl<B> Drop for DigestBody<B> {
    fn drop(&mut self) {
        // A caller that hung up still leaves a record, its digest of what
        // was sent until then.
        self.done();
    }
}

impl<B> Body for DigestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(h)) = (frame.data_ref(), this.hasher.as_mut()) {
                    h.update(data);
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn rule(rate: f64, remaining: u64) -> CaptureRule {
        CaptureRule {
            environment: "production".into(),
            function: "hello".into(),
            rate,
            body_limit: 4,
            drop_headers: vec!["x-api-key".into()],
            remaining,
        }
    }

    #[tokio::test]
    async fn a_sampled_request_keeps_its_head_a_capped_body_and_the_response_digest() {
        let captures = Arc::new(Captures::default());
        let mut rx = captures.take_receiver().unwrap();
        assert!(
            captures.sample("production", "hello").is_none(),
            "none running"
        );
        captures.set(vec![rule(1.0, 10)]);
        assert!(captures.sample("staging", "hello").is_none());
        let tap = captures.sample("production", "hello").unwrap();
        let req = http::Request::post("/orders?x=1")
            .header("authorization", "Bearer secret")
            .header("cookie", "a=b")
            .header("x-api-key", "k")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
        let (req, pending) = tap.begin(captures.clone(), 7, req);
        let read = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&read[..], b"{\"a\":1}", "the guest reads the whole body");
        let resp = pending.finish(http::Response::new(Full::new(Bytes::from_static(b"ok"))));
        assert_eq!(resp.status(), 200);
        let sent = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"ok");
        let c = rx.try_recv().unwrap();
        assert_eq!(
            (c.method.as_str(), c.path.as_str(), c.version),
            ("POST", "/orders?x=1", 7)
        );
        assert_eq!(
            c.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(
            (c.body.as_slice(), c.body_truncated),
            (&b"{\"a\""[..], true)
        );
        assert_eq!(c.status, 200);
        assert_eq!(
            c.response_digest,
            format!("sha256:{}", hex::encode(Sha256::digest(b"ok")))
        );
        assert_eq!(c.response_bytes, 2);
    }

    #[test]
    fn sampling_keeps_about_its_rate_and_never_more_than_its_maximum() {
        let captures = Captures::default();
        captures.set(vec![rule(0.25, 1_000_000)]);
        let kept = (0..20_000)
            .filter(|_| captures.sample("production", "hello").is_some())
            .count();
        assert!((4_400..5_600).contains(&kept), "{kept} of 20000 at 25%");
        captures.set(vec![rule(1.0, 3)]);
        let kept = (0..10)
            .filter(|_| captures.sample("production", "hello").is_some())
            .count();
        assert_eq!(kept, 3);
    }

    #[test]
    fn a_full_channel_drops_and_counts() {
        let captures = Arc::new(Captures::default());
        captures.set(vec![rule(1.0, 10_000)]);
        for _ in 0..CHANNEL + 5 {
            let tap = captures.sample("production", "hello").unwrap();
            let (_, pending) = tap.begin(
                captures.clone(),
                1,
                http::Request::new(Full::new(Bytes::new())),
            );
            drop(pending.finish(http::Response::new(Full::new(Bytes::new()))));
        }
        assert_eq!(captures.dropped(), 5);
    }
}
