//! Test guest: traps (wasm `unreachable`) inside the handler before any
//! response has been set.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl Guest for Trap {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        core::arch::wasm32::unreachable()
    }
}

wasi::http::proxy::export!(Trap);
