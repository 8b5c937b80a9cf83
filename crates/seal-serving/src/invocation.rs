//! One invocation's telemetry: its correlation id and trace context, the
//! guest's output as tagged log lines, and — when the runtime reports the
//! invocation's end — its metrics, its JSON log line and its span.
//!
//! The correlation id is the W3C `traceparent` trace id when the caller
//! sent one, else the caller's `x-request-id`, else a new trace id. The
//! guest receives `traceparent` (naming this invocation's span as parent)
//! and `x-request-id`; the response carries `x-request-id`.

use crate::Backend;
use crate::logs::{LogHub, Payload, RecordText};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use seal_runtime::{GuestStream, InvocationObserver, InvocationReport, InvokeError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the gateway records about invocations, beyond the per-version
/// counters the rollout gates read (those are always on).
pub struct Telemetry {
    pub logs: LogHub,
    /// Spans go out over OTLP when set.
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    /// One JSON log line (and ring record) per invocation. Off, only guest
    /// output and the counters remain.
    pub invocation_logs: bool,
    /// Share of invocations without a caller's `traceparent` that are
    /// traced (a caller's sampled flag is always followed).
    pub trace_sample_ratio: f64,
    /// Flag evaluations and the failed invocations that made them, per
    /// flag and variant.
    pub flag_counts: FlagCounts,
}

/// (function, environment, flag, variant or error code).
pub type FlagCountKey = (String, String, String, String);

/// Evaluations of each flag per variant, and how many of the invocations
/// that got that variant failed (5xx, trap, timeout): a flag ramp watched
/// like a canary.
#[derive(Debug, Default)]
pub struct FlagCounts(std::sync::Mutex<HashMap<FlagCountKey, (u64, u64)>>);

impl FlagCounts {
    fn add(&self, function: &str, environment: &str, used: &[FlagUse], failed: bool) {
        if used.is_empty() {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for u in used {
            let variant = u
                .variant
                .clone()
                .unwrap_or_else(|| format!("error:{}", u.error.unwrap_or("GENERAL")));
            let e = m
                .entry((
                    function.to_owned(),
                    environment.to_owned(),
                    u.key.clone(),
                    variant,
                ))
                .or_default();
            e.0 += 1;
            if failed {
                e.1 += 1;
            }
        }
    }

    /// Every count: (key, evaluations, failed invocations).
    pub fn snapshot(&self) -> Vec<(FlagCountKey, u64, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, (n, f))| (k.clone(), *n, *f)).collect();
        v.sort();
        v
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            logs: LogHub::new(10_000),
            tracer: None,
            invocation_logs: true,
            trace_sample_ratio: 1.0,
            flag_counts: FlagCounts::default(),
        }
    }
}

/// The trace context of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: [u8; 16],
    /// This invocation's span.
    pub span_id: [u8; 8],
    /// The caller's span, when it sent `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceIds {
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// `traceparent` for the guest: this invocation's span as parent.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// The same, built on the stack (it is written on every request).
    fn traceparent_bytes(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let _ = hex::encode_to_slice(self.trace_id, &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id, &mut out[36..52]);
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A trace id in lower-case hex, on the stack.
fn trace_hex(id: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let _ = hex::encode_to_slice(id, &mut out);
    out
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Parses a W3C `traceparent` (`00-<trace>-<parent>-<flags>`); `None` for
/// anything malformed, the forbidden version `ff` or all-zero ids.
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = unhex::<16>(trace)?;
    let parent = unhex::<8>(parent)?;
    let flags = unhex::<1>(flags)?[0];
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags & 1 == 1))
}

/// Random ids for traces and spans: a small fast generator per thread,
/// seeded from the thread's cryptographic one (ids must be unique and
/// unpredictable enough to not collide, not secret), as OpenTelemetry's
/// SDK makes its own.
fn random_id<const N: usize>() -> [u8; N] {
    use rand::{Rng, SeedableRng};
    thread_local! {
        static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
    }
    IDS.with(|rng| {
        let mut rng = rng.borrow_mut();
        loop {
            let id: [u8; N] = rng.random();
            if id != [0; N] {
                return id;
            }
        }
    })
}

/// The invocation's trace context and correlation id, from the caller's
/// headers or new; a new trace is sampled with probability `ratio`.
pub fn correlate(headers: &HeaderMap, ratio: f64) -> (TraceIds, RequestId) {
    let span_id = random_id::<8>();
    let incoming = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    if let Some((trace_id, parent, sampled)) = incoming {
        let ids = TraceIds {
            trace_id,
            span_id,
            parent: Some(parent),
            sampled,
        };
        return (ids, RequestId::of_trace(&trace_id));
    }
    let trace_id = random_id::<16>();
    let ids = TraceIds {
        trace_id,
        span_id,
        parent: None,
        sampled: ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio),
    };
    let request_id = headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .and_then(|v| {
            Some(RequestId {
                header: HeaderValue::from_str(v).ok()?,
                id: RecordText::new(v),
            })
        })
        .unwrap_or_else(|| RequestId::of_trace(&trace_id));
    (ids, request_id)
}

/// An invocation's correlation id, as text and as a header value (each
/// made once: both are written on every request).
#[derive(Debug, Clone)]
pub struct RequestId {
    pub id: RecordText,
    pub header: HeaderValue,
}

impl RequestId {
    fn of_trace(trace_id: &[u8; 16]) -> Self {
        let hex = trace_hex(trace_id);
        let text = std::str::from_utf8(&hex).unwrap_or_default();
        Self {
            id: RecordText::new(text),
            header: HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("")),
        }
    }
}

/// Sets the headers the guest sees: its parent span and the correlation id.
pub fn propagate(headers: &mut HeaderMap, ids: &TraceIds, request_id: &RequestId) {
    if let Ok(v) = HeaderValue::from_bytes(&ids.traceparent_bytes()) {
        headers.insert(TRACEPARENT, v);
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID, request_id.header.clone());
    }
}

/// One invocation, observed. Created by the gateway per request and handed
/// to the runtime.
pub struct Invocation {
    pub(crate) backend: Arc<Backend>,
    /// The settings revision the guest's environment came from.
    pub(crate) config_revision: i64,
    /// The environment's flags, for a guest that declares any.
    pub(crate) flag_set: Option<Arc<seal_flags::FlagSet>>,
    /// The flags it evaluated, with the variant each gave (only for a
    /// guest that declares flags: nothing is allocated for the others).
    pub(crate) flags_evaluated: Option<Arc<std::sync::Mutex<Vec<FlagUse>>>>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) request_id: RecordText,
    pub(crate) ids: TraceIds,
    pub(crate) method: http::Method,
    pub(crate) path: RecordText,
    pub(crate) arrived: Instant,
    /// The wall-clock time it arrived, read only for a span (traced).
    pub(crate) arrived_wall: Option<SystemTime>,
    /// Whether the gates judge it.
    pub(crate) traffic: crate::Traffic,
    /// Its place among the function's requests in flight, freed when the
    /// last holder (the guest's task) lets the invocation go.
    pub(crate) _permit: crate::admission::Permit,
    /// Where the events it publishes go (set only when its manifest lists
    /// queues and the server gave the serving layer a sink).
    pub(crate) events: Option<Arc<dyn EventSink>>,
}

/// Who published an event from inside a function: stamped on the event so
/// the consumer's logs and the dead letters name the producer, and so the
/// consumer's invocation carries the producer's correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedBy {
    pub environment: String,
    pub function: String,
    pub version: u64,
    pub digest: String,
    /// The producing invocation's correlation id.
    pub correlation: Arc<str>,
    /// `traceparent` naming the producing invocation's span.
    pub traceparent: String,
}

/// Takes the events functions publish (the control plane implements it:
/// the queue, its checks and the durable commit are its own; this crate
/// knows no queue). Answers a status and a JSON body, as the ingest
/// endpoint does.
pub trait EventSink: Send + Sync {
    fn publish(
        &self,
        by: EmittedBy,
        queue: String,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = (http::StatusCode, bytes::Bytes)> + Send>>;
}

/// One invocation's emitter: the sink, told who publishes.
struct InvocationEmitter {
    sink: Arc<dyn EventSink>,
    by: EmittedBy,
}

impl seal_runtime::Emitter for InvocationEmitter {
    fn emit(
        &self,
        queue: String,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = (http::StatusCode, bytes::Bytes)> + Send>> {
        self.sink.publish(self.by.clone(), queue, headers, body)
    }
}

fn method_ser<S: serde::Serializer>(m: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

fn hex_ser<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

/// An invocation's log record, beyond its version's tags.
#[derive(Debug, Clone, Serialize)]
pub struct InvocationFields {
    pub request_id: RecordText,
    #[serde(serialize_with = "hex_ser")]
    pub trace_id: [u8; 16],
    #[serde(serialize_with = "hex_ser")]
    pub span_id: [u8; 8],
    #[serde(serialize_with = "method_ser")]
    pub method: http::Method,
    pub path: RecordText,
    pub status: u16,
    pub duration_ms: f64,
    pub head_ms: Option<f64>,
    pub instantiate_us: u64,
    pub cold: bool,
    /// Served by an instance an earlier invocation used (the manifest's
    /// `instance_reuse`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    /// Served by a fresh instance made ready before the request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prepared: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<crate::telemetry::ColdStart>,
    pub memory_peak_bytes: u64,
    pub gb_seconds: f64,
    /// Revision of the config and secrets the guest ran with (0 = none set).
    pub config_revision: i64,
    /// The feature flags it evaluated and what each gave.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<FlagUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorField>,
}

/// One flag an invocation evaluated: its variant, or the error code.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlagUse {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Answers a guest's OFREP requests from its environment's flag set and
/// notes each evaluation for the invocation's record.
struct Flags {
    set: Option<Arc<seal_flags::FlagSet>>,
    used: Arc<std::sync::Mutex<Vec<FlagUse>>>,
}

impl seal_runtime::FlagEvaluator for Flags {
    fn evaluate(
        &self,
        key: &str,
        context: &serde_json::Value,
    ) -> (http::StatusCode, serde_json::Value) {
        let empty = serde_json::Map::new();
        let ctx = context.as_object().unwrap_or(&empty);
        let result = match &self.set {
            Some(set) => set.evaluate(key, ctx),
            None => Err(seal_flags::EvalError {
                code: "FLAG_NOT_FOUND",
                details: format!("no flag {key:?} in this environment"),
            }),
        };
        let (status, body, used) = match result {
            Ok(a) => (
                http::StatusCode::OK,
                serde_json::to_value(&a).unwrap_or_default(),
                FlagUse {
                    key: key.to_owned(),
                    variant: Some(a.variant.clone()),
                    error: None,
                },
            ),
            Err(e) => (
                if e.code == "FLAG_NOT_FOUND" {
                    http::StatusCode::NOT_FOUND
                } else {
                    http::StatusCode::BAD_REQUEST
                },
                serde_json::json!({"key": key, "errorCode": e.code, "errorDetails": e.details}),
                FlagUse {
                    key: key.to_owned(),
                    variant: None,
                    error: Some(e.code),
                },
            ),
        };
        if let Ok(mut u) = self.used.lock()
            && u.len() < 64
        {
            u.push(used);
        }
        (status, body)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorField {
    pub kind: &'static str,
    pub message: String,
}

/// A line the guest wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GuestFields {
    pub request_id: RecordText,
    #[serde(serialize_with = "hex_ser")]
    pub trace_id: [u8; 16],
    pub stream: &'static str,
    pub message: String,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Invocation {
    fn span(&self, r: &InvocationReport, status: u16, error: Option<&InvokeError>) {
        let (Some(tracer), Some(arrived_wall)) = (&self.telemetry.tracer, self.arrived_wall) else {
            return;
        };
        let b = &self.backend;
        let mut attributes = vec![
            opentelemetry::KeyValue::new("faas.name", b.function_name.clone()),
            opentelemetry::KeyValue::new("faas.coldstart", r.cold),
            opentelemetry::KeyValue::new("seal.function", b.function_name.clone()),
            opentelemetry::KeyValue::new("seal.environment", b.environment.clone()),
            opentelemetry::KeyValue::new("seal.version", b.version as i64),
            opentelemetry::KeyValue::new("seal.digest", b.digest.clone()),
            opentelemetry::KeyValue::new("seal.cold_start", r.cold),
            opentelemetry::KeyValue::new("seal.instance_reused", r.reused),
            opentelemetry::KeyValue::new("seal.instance_prepared", r.prepared),
            opentelemetry::KeyValue::new("seal.request_id", self.request_id.to_string()),
            opentelemetry::KeyValue::new("http.request.method", self.method.to_string()),
            opentelemetry::KeyValue::new("url.path", self.path.to_string()),
            opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
            opentelemetry::KeyValue::new("seal.instantiate_us", r.instantiate.as_micros() as i64),
        ];
        if let Some(e) = error {
            attributes.push(opentelemetry::KeyValue::new("error.type", e.kind()));
        }
        let status = match error {
            Some(e) => Status::error(e.to_string()),
            None if status >= 500 => Status::error(format!("status {status}")),
            None => Status::Unset,
        };
        let builder = tracer
            .span_builder(format!("invoke {}", b.function_name))
            .with_kind(SpanKind::Server)
            .with_trace_id(TraceId::from_bytes(self.ids.trace_id))
            .with_span_id(SpanId::from_bytes(self.ids.span_id))
            .with_start_time(arrived_wall)
            .with_attributes(attributes)
            .with_status(status);
        let parent = match self.ids.parent {
            Some(p) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(self.ids.trace_id),
                SpanId::from_bytes(p),
                if self.ids.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )),
            None => opentelemetry::Context::new(),
        };
        let mut span = tracer.build_with_context(builder, &parent);
        use opentelemetry::trace::Span as _;
        span.end_with_timestamp(arrived_wall + self.arrived.elapsed());
    }
}

impl InvocationObserver for Invocation {
    fn guest_output(&self, stream: GuestStream, line: &str) {
        let b = &self.backend;
        tracing::info!(
            target: "seal::guest",
            function = %b.function_name, environment = %b.environment,
            version = b.version, digest = %b.digest,
            request_id = %self.request_id, stream = stream.as_str(),
            "{line}"
        );
        self.telemetry.logs.push(
            &b.tags,
            None,
            Payload::Guest(GuestFields {
                request_id: self.request_id.clone(),
                trace_id: self.ids.trace_id,
                stream: stream.as_str(),
                message: line.to_owned(),
            }),
        );
    }

    fn flags(&self) -> Option<Arc<dyn seal_runtime::FlagEvaluator>> {
        Some(Arc::new(Flags {
            set: self.flag_set.clone(),
            used: self.flags_evaluated.clone()?,
        }))
    }

    fn deny_outbound(&self) -> bool {
        self.backend.outbound_denied
    }

    fn shares_instances(&self) -> bool {
        !self.backend.replay
    }

    fn emitter(&self) -> Option<Arc<dyn seal_runtime::Emitter>> {
        let sink = self.events.clone()?;
        let b = &self.backend;
        Some(Arc::new(InvocationEmitter {
            sink,
            by: EmittedBy {
                environment: b.environment.clone(),
                function: b.function_name.clone(),
                version: b.version,
                digest: b.digest.clone(),
                correlation: Arc::from(self.request_id.as_str()),
                traceparent: self.ids.traceparent(),
            },
        }))
    }

    fn late_failure(&self, error: &InvokeError) {
        if error.is_function_error() {
            self.backend.stats.record_late_error(self.traffic);
        }
    }

    fn finished(&self, r: InvocationReport) {
        let b = &self.backend;
        let gb_seconds =
            b.stats
                .record_invocation(&r, b.function.limits().memory_bytes, b.load_timings());
        let error = r.outcome.as_ref().err();
        let status = r.status.or(error.map(InvokeError::status)).unwrap_or(500);
        self.span(&r, status, error);
        let flags_used = self
            .flags_evaluated
            .as_ref()
            .and_then(|f| f.lock().ok().map(|mut u| std::mem::take(&mut *u)))
            .unwrap_or_default();
        self.telemetry.flag_counts.add(
            &b.function_name,
            &b.environment,
            &flags_used,
            status >= 500,
        );
        if !self.telemetry.invocation_logs {
            return;
        }
        let duration_ms = ms(r.total);
        tracing::info!(
            target: "seal::invocation",
            function = %b.function_name, environment = %b.environment,
            version = b.version, digest = %b.digest,
            request_id = %self.request_id, status, duration_ms, cold = r.cold,
            config_revision = self.config_revision,
            error = error.map(InvokeError::kind),
            "invocation"
        );
        let fields = InvocationFields {
            request_id: self.request_id.clone(),
            trace_id: self.ids.trace_id,
            span_id: self.ids.span_id,
            method: self.method.clone(),
            path: self.path.clone(),
            status,
            duration_ms,
            head_ms: r.call_to_head.map(|c| ms(c + r.instantiate)),
            instantiate_us: r.instantiate.as_micros() as u64,
            cold: r.cold,
            reused: r.reused,
            prepared: r.prepared,
            cold_start: if r.cold {
                b.stats.last_cold_start()
            } else {
                None
            },
            memory_peak_bytes: r.peak_memory_bytes,
            gb_seconds,
            config_revision: self.config_revision,
            flags: flags_used,
            error: error.map(|e| ErrorField {
                kind: e.kind(),
                message: e.to_string(),
            }),
        };
        self.telemetry
            .logs
            .push(&b.tags, Some(status), Payload::Invocation(fields));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip_and_refusals() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, sampled) = parse_traceparent(v).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert!(sampled);
        for bad in [
            "",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn correlation_prefers_traceparent_then_request_id() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let (ids, id) = correlate(&h, 1.0);
        assert_eq!(&*id.id, "abc-123");
        assert_eq!(id.header, "abc-123");
        assert_eq!(ids.parent, None);
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let (ids, id) = correlate(&h, 1.0);
        assert_eq!(&*id.id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(id.header, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.parent.map(|p| hex(&p)).unwrap(), "00f067aa0ba902b7");
        assert!(!ids.sampled);
        // The guest's parent is this invocation's span, in the same trace.
        let tp = ids.traceparent();
        let (t, p, _) = parse_traceparent(&tp).unwrap();
        assert_eq!((t, p), (ids.trace_id, ids.span_id));
        let (ids, id) = correlate(&HeaderMap::new(), 1.0);
        assert_eq!(&*id.id, ids.trace_hex());
        assert_eq!(id.header, ids.trace_hex().as_str());
        let tp = ids.traceparent();
        assert_eq!(
            tp,
            format!("00-{}-{}-01", hex(&ids.trace_id), hex(&ids.span_id)),
            "sampled at ratio 1"
        );
        let unsampled = TraceIds {
            sampled: false,
            ..ids
        };
        assert!(unsampled.traceparent().ends_with("-00"));
    }
}
