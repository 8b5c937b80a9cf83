//! The per-store state every invocation runs with: WASI and wasi:http
//! contexts over one resource table, the memory limiter and the outbound
//! request gate.
//!
//! It is its own module because two others meet in it: the engine's
//! [`Linker`](wasmtime::component::Linker) is typed by it, and each
//! invocation builds a fresh one for its store. The `WasiView` and
//! `WasiHttpView` impls are how the linked WASI host functions find their
//! contexts; wasi:http's hooks are the [`OutboundGate`].

use crate::lane::Seat;
use crate::limits::MemoryLimiter;
use crate::outbound::OutboundGate;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Per-store state: WASI contexts, the resource table, the memory limiter,
/// the outbound-request gate, and what the epoch callback reads.
pub(crate) struct Host {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) outbound: OutboundGate,
    /// When the guest code running now must stop (an invocation's, or an
    /// instantiation's ahead of one); `None` while the instance is idle.
    pub(crate) deadline: Option<std::time::Instant>,
    /// Its place in the CPU lane, reset for each invocation.
    pub(crate) seat: Seat,
}

impl Host {
    /// Guest code starts running, bounded by `deadline`, light.
    pub(crate) fn run_until(&mut self, deadline: std::time::Instant) {
        self.deadline = Some(deadline);
        self.seat.reset();
    }

    /// The guest code is done: the instance goes idle, holding no lane
    /// permit.
    pub(crate) fn idle(&mut self) {
        self.deadline = None;
        self.seat.reset();
    }
}

/// The epoch callback of every store, set once when it is made (nothing
/// to box per invocation): at every tick the guest yields to the
/// executor, so a busy guest cannot starve other requests on its worker
/// thread; once it has computed for long it takes turns in the CPU lane;
/// past its deadline the tick interrupts it instead (a `Trap::Interrupt`).
pub(crate) fn on_epoch(mut cx: StoreContextMut<'_, Host>) -> wasmtime::Result<UpdateDeadline> {
    let host = cx.data_mut();
    Ok(match host.deadline {
        None => UpdateDeadline::Continue(1),
        Some(deadline) if std::time::Instant::now() >= deadline => UpdateDeadline::Interrupt,
        Some(_) => match host.seat.tick(host.limiter.grown) {
            Some(turn) => UpdateDeadline::YieldCustom(1, turn),
            None => UpdateDeadline::Yield(1),
        },
    })
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
