//! Traces out over OTLP/HTTP (JSON encoding), and deployment transitions as
//! spans: every transition of one deployment is a span in the same trace,
//! whose id is derived from the deployment, so a tracing backend shows a
//! deployment's life as one trace next to the invocations it moved.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceId, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracer, SdkTracerProvider};
use seal_state::DeploymentRecord;
use sha2::{Digest as _, Sha256};
use std::time::Duration;

/// The endpoint's traces URL: `http://host:4318` → `http://host:4318/v1/traces`;
/// a URL that already has a path is used as it is.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("invalid OTLP endpoint {endpoint:?}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "invalid OTLP endpoint {endpoint:?}: only http:// is supported (put a collector with TLS in front for https)"
        ));
    }
    if url.path() == "/" || url.path().is_empty() {
        Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
    } else {
        Ok(endpoint.to_owned())
    }
}

/// A tracer exporting in batches (every second) to `endpoint` over
/// OTLP/HTTP with JSON bodies. The batches are built and sent by a task on
/// the server's tokio runtime with the async HTTP client: no extra threads
/// (the SDK's default processor adds two, which measurably cost
/// throughput on a small machine, see bench/RESULTS.md).
pub fn otlp_tracer(endpoint: &str) -> anyhow::Result<(SdkTracerProvider, SdkTracer)> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let url = traces_url(endpoint).map_err(anyhow::Error::msg)?;
    // The operator named the collector, so no address policy applies; but
    // like every outbound call of the control plane it follows no redirect
    // and is bounded in time.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(crate::outbound::CONNECT_TIMEOUT)
        .timeout(crate::outbound::REQUEST_TIMEOUT)
        .no_proxy()
        .build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("seal")
                .build(),
        )
        .build();
    let tracer = provider.tracer("seal");
    Ok((provider, tracer))
}

/// The trace a deployment's transitions belong to.
pub fn deployment_trace_id(d: &DeploymentRecord) -> TraceId {
    let h = Sha256::digest(format!(
        "seal-deployment:{}:{}:{}",
        d.id, d.created_at, d.function
    ));
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    TraceId::from_bytes(id)
}

/// One span for one committed transition.
pub fn transition_span(tracer: Option<&SdkTracer>, d: &DeploymentRecord, event: &str) {
    let Some(tracer) = tracer else {
        return;
    };
    let weights = serde_json::to_string(&d.to_weights).unwrap_or_default();
    let mut attributes = vec![
        KeyValue::new("seal.deployment.id", d.id as i64),
        KeyValue::new("seal.deployment.event", event.to_owned()),
        KeyValue::new("seal.deployment.state", d.state.as_str()),
        KeyValue::new("seal.deployment.strategy", d.strategy.as_str()),
        KeyValue::new("seal.deployment.step", i64::from(d.step)),
        KeyValue::new("seal.deployment.weights", weights),
        KeyValue::new("seal.function", d.function.clone()),
        KeyValue::new("seal.environment", d.environment.clone()),
        KeyValue::new("seal.actor", d.actor.clone()),
    ];
    if let Some(c) = d.candidate {
        attributes.push(KeyValue::new("seal.deployment.candidate", c as i64));
    }
    if let Some(r) = &d.reason {
        attributes.push(KeyValue::new("seal.deployment.reason", r.clone()));
    }
    let builder = tracer
        .span_builder(format!("deployment {event}"))
        .with_kind(SpanKind::Internal)
        .with_trace_id(deployment_trace_id(d))
        .with_attributes(attributes);
    let mut span = tracer.build_with_context(builder, &opentelemetry::Context::new());
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector/custom/traces").unwrap(),
            "http://collector/custom/traces"
        );
        assert!(traces_url("https://x").unwrap_err().contains("http://"));
        assert!(traces_url("not a url").is_err());
    }
}
