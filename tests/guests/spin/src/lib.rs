//! Test guest: spins forever inside the handler and never responds.
//! The host must interrupt it (epoch / fuel / timeout).

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Spin;

impl Guest for Spin {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        let mut counter: u64 = 0;
        loop {
            // black_box keeps the loop body observable so it cannot be
            // optimised away.
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

wasi::http::proxy::export!(Spin);
