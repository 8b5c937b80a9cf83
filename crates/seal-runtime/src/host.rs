//! The per-store state every invocation runs with: WASI and wasi:http
//! contexts over one resource table, the memory limiter and the outbound
//! request gate.
//!
//! It is its own module because two others meet in it: the engine's
//! [`Linker`](wasmtime::component::Linker) is typed by it, and each
//! invocation builds a fresh one for its store. The `WasiView` and
//! `WasiHttpView` impls are how the linked WASI host functions find their
//! contexts; wasi:http's hooks are the [`OutboundGate`].

use crate::limits::MemoryLimiter;
use crate::outbound::OutboundGate;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Per-store state: WASI contexts, the resource table, the memory limiter,
/// the outbound-request gate.
pub(crate) struct Host {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) outbound: OutboundGate,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}
