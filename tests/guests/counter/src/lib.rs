//! Test guest: counts the requests its instance has served in a global and
//! answers `200 <count>`; on a path containing `trap` it counts, then traps.
//! A fresh instance per request always answers 1; a reused one counts up.

use std::sync::atomic::{AtomicU64, Ordering};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        if request
            .path_with_query()
            .is_some_and(|p| p.contains("trap"))
        {
            core::arch::wasm32::unreachable()
        }
        let response = OutgoingResponse::new(Fields::new());
        let _ = response.set_status_code(200);
        let body = response.body().expect("response body");
        ResponseOutparam::set(response_out, Ok(response));
        {
            let stream = body.write().expect("body stream");
            let _ = stream.blocking_write_and_flush(n.to_string().as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Counter);
