//! What the runtime tells its embedder about each invocation: the
//! [`InvocationObserver`] the gateway implements, and the
//! [`InvocationReport`] it receives once the guest's run ends.
//!
//! The runtime measures and the embedder decides what to do with it (log
//! lines, metrics, spans): this crate stays free of telemetry and routing.

use crate::error::InvokeError;
use crate::stdio::GuestStream;
use std::time::Duration;

/// What the runtime measured about one invocation, reported once when the
/// guest's task ends (body streamed, trapped, timed out or aborted).
#[derive(Debug, Clone)]
pub struct InvocationReport {
    /// First invocation served by this loaded function in this process.
    pub cold: bool,
    /// Fresh store and instance from the pre-instantiated component
    /// (zero when an instance was reused).
    pub instantiate: Duration,
    /// Served by an instance an earlier invocation of the same version
    /// used (the manifest's `instance_reuse`).
    pub reused: bool,
    /// Served by a fresh instance made ready before the request arrived
    /// (never called before): its instantiation is not in this one's time.
    pub prepared: bool,
    /// From the call into the guest's handler to its response head (None:
    /// it never sent one).
    pub call_to_head: Option<Duration>,
    /// From the start of instantiation to the end of the guest's run: what
    /// the invocation held an instance for (the billed duration).
    pub total: Duration,
    /// The status the guest answered with, if it answered.
    pub status: Option<u16>,
    /// Largest linear memory the guest asked for (bytes).
    pub peak_memory_bytes: u64,
    /// How the invocation ended.
    pub outcome: Result<(), InvokeError>,
}

/// Told what happens during one invocation. The gateway implements it to
/// tag guest output, count failures the response head can no longer carry,
/// and write the invocation's log line, metrics and span.
pub trait InvocationObserver: Send + Sync {
    /// One line the guest wrote (without its newline).
    fn guest_output(&self, stream: GuestStream, line: &str);
    /// A failure after the response head went out (a trap or timeout while
    /// the body streams): the status cannot say so, but it still counts.
    fn late_failure(&self, error: &InvokeError);
    /// Called exactly once per invocation that reached the guest's run.
    fn finished(&self, report: InvocationReport);
    /// Where the events this invocation publishes go; `None` (the
    /// default): it may publish none.
    /// Whether this invocation runs with every outbound request refused
    /// and no events published (a replay of requests whose side effects
    /// must not repeat).
    fn deny_outbound(&self) -> bool {
        false
    }

    /// Whether this invocation may take, and leave, an idle instance: one
    /// a reusing function's earlier invocation left, or one made ahead of
    /// a request (a replay must not share state with live traffic, nor
    /// use up instances made for it: it gets an instance of its own and
    /// makes none ahead).
    fn shares_instances(&self) -> bool {
        true
    }

    /// The environment's feature flags, for a guest whose manifest
    /// declares any (none: every evaluation is `FLAG_NOT_FOUND`).
    fn flags(&self) -> Option<std::sync::Arc<dyn FlagEvaluator>> {
        None
    }

    fn emitter(&self) -> Option<std::sync::Arc<dyn Emitter>> {
        None
    }
}

/// Takes the events a guest publishes with an outbound request to
/// `http://events.seal.internal/<queue>` ([`EVENTS_AUTHORITY`]): the
/// runtime answers that request in process (no socket), after checking the
/// queue is one the manifest lists, with what this returns.
pub trait Emitter: Send + Sync {
    /// The request's headers and body (a CloudEvent in binary, structured
    /// or batch mode) for `queue`; answers with a status and a JSON body,
    /// as the ingest endpoint does.
    fn emit(
        &self,
        queue: String,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = (http::StatusCode, bytes::Bytes)> + Send>>;
}

/// The reserved authority of event publishing.
pub const EVENTS_AUTHORITY: &str = "events.seal.internal";

/// The reserved authority of feature flag evaluation (OpenFeature's
/// remote evaluation protocol, OFREP, answered in process).
pub const FLAGS_AUTHORITY: &str = "flags.seal.internal";

/// Evaluates the feature flags of the invocation's environment for the
/// runtime's OFREP answers.
pub trait FlagEvaluator: Send + Sync {
    /// One flag for an evaluation context (`{"targetingKey": …, …}`):
    /// OFREP's status and JSON body (`{key, value, variant, reason}` or
    /// `{key, errorCode, errorDetails}`).
    fn evaluate(
        &self,
        key: &str,
        context: &serde_json::Value,
    ) -> (http::StatusCode, serde_json::Value);
}
