//! One attempt of one event on one version.
//!
//! The event goes to the version's `wasi:http` handler as a binary-mode
//! CloudEvents request through [`Serving::invoke`], so it is admitted,
//! limited, logged, traced and counted in the version's telemetry (the
//! rollout gates read it) exactly as an HTTP request is. Its outcome
//! follows the documented table ([`Outcome::of_status`]; a trap, a
//! timeout, a memory kill, an overloaded pool or a throttled function are
//! retryable).

use crate::codec;
use cloudevents::Event;
use http_body_util::BodyExt;
pub use seal_api_types::events::Outcome;
use seal_serving::{Backend, Route, Serving, Traffic};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub version: u64,
    pub digest: String,
    /// The function's answer, when it gave one.
    pub status: Option<u16>,
    pub outcome: Outcome,
    /// `status` for an answer that was not a 2xx, else the runtime's kind
    /// (`trap`, `timeout`, `memory`, `overloaded`, `throttled`, …).
    pub error_kind: Option<String>,
    /// Safe to store and show: a status line or the runtime's public
    /// message.
    pub error: Option<String>,
    pub duration: Duration,
}

/// The version an event goes to on a route: a ticket from a hash of the
/// event's id against the live weights, so every retry of one event lands
/// on the same version while the weights stand.
pub fn pick<'r>(route: &'r Route, ce_id: &str) -> Option<&'r Arc<Backend>> {
    route.pick(None, Some(ce_id.as_bytes()))
}

/// The route's baseline: the heaviest version, the one listed last among
/// equals (a progressive deployment lists its candidate first). Cron ticks
/// run here unless their trigger follows the weights.
pub fn baseline(route: &Route) -> Option<&Arc<Backend>> {
    route
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .fold(None, |best: Option<&Arc<Backend>>, b| match best {
            Some(x) if x.weight > b.weight => Some(x),
            _ => Some(b),
        })
}

/// Answers are read to their end (so the guest's run completes) but only
/// this much is kept: an event handler's body is not stored.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The trace id of a well-formed `traceparent`, as lowercase hex.
fn trace_id_of(traceparent: &str) -> Option<&str> {
    seal_serving::invocation::parse_traceparent(traceparent)?;
    traceparent.trim().split('-').nth(1)
}

/// Sets the headers that carry the event's trace context and correlation
/// id into the consumer's invocation.
fn correlate(event: &Event, headers: &mut http::HeaderMap) {
    // The event's trace context and correlation id are the invocation's.
    // The serving layer takes a valid `traceparent`'s trace id as the
    // correlation id, so when the producer's correlation id is another
    // (its caller's `x-request-id`), the trace context is left out and
    // the correlation id kept: one id follows the event across functions.
    let correlation = event.extension("sealcorrelation").map(|v| v.to_string());
    if let Some(tp) = event.extension("traceparent").map(|v| v.to_string())
        && correlation
            .as_deref()
            .is_none_or(|c| trace_id_of(&tp).is_some_and(|t| t.eq_ignore_ascii_case(c)))
        && let Ok(v) = http::HeaderValue::from_str(&tp)
    {
        headers.insert("traceparent", v);
    }
    if let Some(id) = correlation
        && let Ok(v) = http::HeaderValue::from_str(&id)
    {
        headers.insert("x-request-id", v);
    }
}

/// Runs one attempt of `event` on `backend`.
pub async fn deliver(
    serving: &Serving,
    backend: &Arc<Backend>,
    event: &Event,
    traffic: Traffic,
) -> Attempt {
    attempt(serving, backend, event, traffic, false).await
}

/// [`deliver`] for an event from a queue: a capture running on the
/// function in its environment samples it as it samples HTTP requests
/// (the binary-mode CloudEvents request the guest gets, and the status
/// and body digest of its answer), so a replay exercises the candidate
/// with its event traffic too.
pub async fn deliver_from_queue(
    serving: &Serving,
    backend: &Arc<Backend>,
    event: &Event,
    traffic: Traffic,
) -> Attempt {
    attempt(serving, backend, event, traffic, true).await
}

async fn attempt(
    serving: &Serving,
    backend: &Arc<Backend>,
    event: &Event,
    traffic: Traffic,
    capture: bool,
) -> Attempt {
    let started = Instant::now();
    // An absolute URI, as the gateway gives a guest: the function's host
    // name in the environment, path `/`.
    let uri = format!(
        "http://{}.{}.localhost/",
        backend.function_name, backend.environment
    );
    let mut req = codec::to_request_bytes(event, &uri);
    correlate(event, req.headers_mut());
    let tap = if capture {
        serving
            .captures()
            .sample(&backend.environment, &backend.function_name)
    } else {
        None
    };
    // The event's body is whole in memory: kept as sent, read or not.
    let pending = tap.map(|tap| tap.begin_whole(serving.captures().clone(), backend.version, &req));
    let req = req.map(http_body_util::Full::new);
    let invoked = serving.invoke(backend, req, started, traffic).await;
    let mut attempt = Attempt {
        version: backend.version,
        digest: backend.digest.clone(),
        status: None,
        outcome: Outcome::Retryable,
        error_kind: None,
        error: None,
        duration: Duration::ZERO,
    };
    match invoked.result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            attempt.status = Some(status);
            attempt.outcome = Outcome::of_status(status);
            // A captured event's record goes out when its answer has been
            // read, with the digest of that body.
            let read = match pending {
                None => read_answer(resp.into_body()).await,
                Some(pending) => read_answer(pending.finish(resp).into_body()).await,
            };
            match read {
                Ok(()) if attempt.outcome == Outcome::Ok => {}
                Ok(_) => {
                    attempt.error_kind = Some("status".into());
                    attempt.error = Some(format!("the function answered {status}"));
                }
                Err(e) => {
                    // The answer's head was a success but its body broke
                    // off (a trap while streaming): not handled.
                    attempt.outcome = Outcome::Retryable;
                    attempt.error_kind = Some("body".into());
                    attempt.error = Some(format!("the answer broke off: {e}"));
                }
            }
        }
        Err(e) => {
            // No answer: a captured event keeps the status a caller would
            // have got, with an empty body.
            if let Some(pending) = pending {
                let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *resp.status_mut() = http::StatusCode::from_u16(e.status())
                    .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                drop(pending.finish(resp));
            }
            attempt.outcome = Outcome::Retryable;
            attempt.error_kind = Some(e.kind().to_owned());
            attempt.error = Some(e.public_message());
        }
    }
    attempt.duration = started.elapsed();
    attempt
}

/// Reads an answer to its end, keeping none of it past
/// [`MAX_ANSWER_BYTES`].
async fn read_answer<B>(body: B) -> Result<(), String>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::EventBuilder;

    fn event(ext: &[(&str, &str)]) -> Event {
        let mut b = cloudevents::EventBuilderV10::new()
            .id("1")
            .source("/t")
            .ty("t");
        for (k, v) in ext {
            b = b.extension(k, *v);
        }
        b.build().unwrap()
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_consumer_gets_the_producers_correlation_id() {
        // Correlation is the trace id: both headers go.
        let mut h = http::HeaderMap::new();
        correlate(
            &event(&[
                ("traceparent", TP),
                ("sealcorrelation", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ]),
            &mut h,
        );
        assert_eq!(h["traceparent"], TP);
        assert_eq!(h["x-request-id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        // Correlation is a caller's request id: the trace context would
        // replace it, so it stays out.
        let mut h = http::HeaderMap::new();
        correlate(
            &event(&[("traceparent", TP), ("sealcorrelation", "order-42")]),
            &mut h,
        );
        assert!(h.get("traceparent").is_none());
        assert_eq!(h["x-request-id"], "order-42");
        // A producer outside Seal: its trace context is followed.
        let mut h = http::HeaderMap::new();
        correlate(&event(&[("traceparent", TP)]), &mut h);
        assert_eq!(h["traceparent"], TP);
        assert!(h.get("x-request-id").is_none());
        // A malformed one is dropped.
        let mut h = http::HeaderMap::new();
        correlate(
            &event(&[("traceparent", "00-zz-01"), ("sealcorrelation", "x")]),
            &mut h,
        );
        assert!(h.get("traceparent").is_none());
    }
}
