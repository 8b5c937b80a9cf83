//! Test guest: sleeps for `?ms=N` milliseconds (default 500), then responds
//! `200 slept N ms`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

const DEFAULT_MS: u64 = 500;

struct Slow;

impl Guest for Slow {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let ms = request
            .path_with_query()
            .as_deref()
            .and_then(query_ms)
            .unwrap_or(DEFAULT_MS);

        let ns = ms.saturating_mul(1_000_000);
        wasi::clocks::monotonic_clock::subscribe_duration(ns).block();

        let text = format!("slept {ms} ms");
        respond(response_out, 200, "text/plain", text.as_bytes());
    }
}

/// Extracts `ms=N` from the query part of a path-with-query.
fn query_ms(path_with_query: &str) -> Option<u64> {
    let (_, query) = path_with_query.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "ms")
        .and_then(|(_, v)| v.parse().ok())
}

/// Sends a complete response with the given status, content type and body.
fn respond(out: ResponseOutparam, status: u16, content_type: &str, body_bytes: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[content_type.as_bytes().to_vec()]);
    let _ = headers.set("content-length", &[body_bytes.len().to_string().into_bytes()]);

    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));

    {
        let stream = body.write().expect("body stream");
        for chunk in body_bytes.chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write body");
        }
    }
    OutgoingBody::finish(body, None).expect("finish body");
}

wasi::http::proxy::export!(Slow);
