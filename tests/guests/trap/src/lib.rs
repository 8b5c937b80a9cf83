//! Test guest: traps (wasm `unreachable`) inside the handler. By default it
//! traps before any response has been set; on a path containing `late` it
//! first sends a 200 head and part of the body, then traps mid-body.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingResponse, ResponseOutparam};

struct Trap;

impl Guest for Trap {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let late = request
            .path_with_query()
            .is_some_and(|p| p.contains("late"));
        if late {
            let response = OutgoingResponse::new(Fields::new());
            let _ = response.set_status_code(200);
            let body = response.body().expect("response body");
            ResponseOutparam::set(response_out, Ok(response));
            let stream = body.write().expect("body stream");
            let _ = stream.blocking_write_and_flush(b"partial");
        }
        core::arch::wasm32::unreachable()
    }
}

wasi::http::proxy::export!(Trap);
