//! Test guest: counts the requests its instance has served in a global and
//! answers `200 <count>`; on a path containing `trap` it counts, then traps;
//! on a path containing `spin/<ms>` it computes for that long first (past
//! 50 ms, a heavy guest in the CPU lane).
//! A fresh instance per request always answers 1; a reused one counts up.

use std::sync::atomic::{AtomicU64, Ordering};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.path_with_query().unwrap_or_default();
        if path.contains("trap") {
            core::arch::wasm32::unreachable()
        }
        if let Some(ms) = path
            .split("spin/")
            .nth(1)
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(ms) {
                std::hint::spin_loop();
            }
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
