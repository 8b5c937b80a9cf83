//! Test guest: allocates 1 MiB chunks forever, touching every page and keeping
//! them alive, until allocation fails -- at which point it traps. Without a
//! host memory limit this grows towards the 4 GiB wasm32 ceiling.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

struct MemHog;

impl Guest for MemHog {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk: Vec<u8> = Vec::new();
            if chunk.try_reserve_exact(CHUNK).is_err() || chunks.try_reserve(1).is_err() {
                // Out of memory: trap.
                core::arch::wasm32::unreachable();
            }
            // Touch every page with a non-zero value so nothing can be lazily
            // zero-mapped or optimised away.
            chunk.resize(CHUNK, 0);
            for offset in (0..CHUNK).step_by(PAGE) {
                chunk[offset] = 0xA5;
            }
            chunks.push(std::hint::black_box(chunk));
            std::hint::black_box(&chunks);
        }
    }
}

wasi::http::proxy::export!(MemHog);
