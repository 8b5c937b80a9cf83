//! Per-function limits and how hitting them is told apart from other
//! failures.
//!
//! [`FunctionLimits`] is fixed when a version loads. Within a store the
//! [`MemoryLimiter`] enforces the memory cap and remembers that it refused
//! growth, because wasmtime only reports the trap that follows (a guest
//! whose allocation fails aborts): [`classify`] then reports it as
//! out-of-memory, and an epoch interrupt as a timeout, rather than as plain
//! traps. [`instantiate_error`] likewise tells a full instance pool (the
//! server's fault) from a guest that fails to start.

use crate::error::InvokeError;
use seal_artifact::capabilities::HostPattern;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Trap;

/// Per-function limits and permissions, fixed when a version is loaded.
#[derive(Debug, Clone)]
pub struct FunctionLimits {
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// Hosts outbound requests may go to; empty = none.
    pub outbound_hosts: Arc<[HostPattern]>,
    /// Config keys (and secrets) the guest may see; `*` = all.
    pub config_keys: Arc<[String]>,
    /// Queues the guest may publish events to; empty = none.
    pub queues: Arc<[String]>,
    /// Feature flags the guest may evaluate; empty = none.
    pub flags: Arc<[String]>,
    /// Requests of the function at once in an environment (the manifest's
    /// `max_concurrency`); `None`: the server's default.
    pub max_concurrency: Option<u32>,
    /// Invocations one instance may serve (the manifest's
    /// `instance_reuse`); `None`: a fresh instance per request.
    pub instance_reuse: Option<u32>,
}

/// Table elements a guest may grow a table to.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Caps the linear memory of a whole instance — every memory of every
/// core instance in the component, summed — and remembers whether the cap
/// was hit, so a resulting trap is reported as out-of-memory rather than a
/// plain trap, and the largest total granted (the invocation's peak).
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// Bytes of linear memory granted so far, all memories together.
    total: usize,
    /// Growth past `max_bytes` was refused.
    pub(crate) hit: bool,
    /// Largest total linear memory granted, in bytes.
    pub(crate) peak: usize,
    /// Bytes granted by growing memories after they were created (what the
    /// guest allocated while it ran, not its initial image).
    pub(crate) grown: usize,
}

impl MemoryLimiter {
    pub(crate) fn new(memory_bytes: u64) -> Self {
        Self {
            max_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            total: 0,
            hit: false,
            peak: 0,
            grown: 0,
        }
    }
}

impl MemoryLimiter {
    /// A reused instance's next invocation: its peak starts from the
    /// memory the instance holds, and nothing has been refused yet.
    pub(crate) fn next_invocation(&mut self) {
        self.hit = false;
        self.peak = self.total;
        self.grown = 0;
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    /// `current` and `desired` are one memory's sizes; a new memory starts
    /// at `current` 0, so the sum over calls is the instance's total.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(total);
        if current > 0 {
            self.grown = self.grown.saturating_add(desired.saturating_sub(current));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// An instantiation failure is the server's (no free slot) or a link
/// problem, not a guest trap.
pub(crate) fn instantiate_error(e: wasmtime::Error) -> InvokeError {
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return InvokeError::Overloaded(format!("{e:#}"));
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        // A trap in a start function is the guest's own failure.
        return InvokeError::Trap(format!("{trap}: {e:#}"));
    }
    InvokeError::Internal(format!("instantiation failed: {e:#}"))
}

/// What a failed call into the guest was: out-of-memory if the limiter
/// refused growth (`oom`), a timeout if the epoch deadline interrupted it,
/// otherwise a trap.
pub(crate) fn classify(
    e: wasmtime::Error,
    oom: bool,
    memory_limit: u64,
    timeout: Duration,
) -> InvokeError {
    if oom {
        return InvokeError::OutOfMemory {
            limit_bytes: memory_limit,
        };
    }
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return InvokeError::Timeout(timeout);
    }
    InvokeError::Trap(format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter as _;

    const MIB: usize = 1 << 20;
    const PAGE: usize = 64 << 10;

    #[test]
    fn memory_growth_within_the_limit_is_allowed_and_sets_the_peak() {
        let mut l = MemoryLimiter::new(2 * MIB as u64);
        assert!(l.memory_growing(0, MIB, None).unwrap());
        assert_eq!(l.peak, MIB);
        // Exactly the limit is still within it.
        assert!(l.memory_growing(MIB, 2 * MIB, None).unwrap());
        assert_eq!(l.peak, 2 * MIB);
        assert!(!l.hit);
    }

    #[test]
    fn memory_growth_past_the_limit_is_refused_and_flagged() {
        let mut l = MemoryLimiter::new(2 * MIB as u64);
        assert!(l.memory_growing(0, MIB, None).unwrap());
        assert!(!l.memory_growing(MIB, 2 * MIB + 1, None).unwrap());
        assert!(l.hit);
        // The refused size is not the peak: the peak is what was granted.
        assert_eq!(l.peak, MIB);
        // The flag stays set even if later growth fits.
        assert!(l.memory_growing(MIB, MIB + PAGE, None).unwrap());
        assert!(l.hit);
    }

    #[test]
    fn the_limit_is_on_the_sum_of_every_memory_of_the_instance() {
        let mut l = MemoryLimiter::new(2 * MIB as u64);
        // Two memories of 1 MiB each: exactly the limit.
        assert!(l.memory_growing(0, MIB, None).unwrap());
        assert!(l.memory_growing(0, MIB, None).unwrap());
        assert_eq!(l.peak, 2 * MIB);
        // A third memory, or either one growing, would pass it.
        assert!(!l.memory_growing(0, PAGE, None).unwrap());
        assert!(!l.memory_growing(MIB, MIB + PAGE, None).unwrap());
        assert!(l.hit);
        assert_eq!(l.peak, 2 * MIB);
    }

    /// As wasmtime drives it: a module with two memories cannot hold more
    /// than the limit between them.
    #[test]
    fn a_guest_with_two_memories_is_held_to_one_limit() {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(
            &engine,
            r#"(module
                (memory $a 2)
                (memory $b 1)
                (func (export "grow_b") (param i32) (result i32)
                    (memory.grow $b (local.get 0))))"#,
        )
        .unwrap();
        let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(4 * PAGE as u64));
        store.limiter(|l| l);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow_b")
            .unwrap();
        assert_eq!(store.data().peak, 3 * PAGE);
        // Alone, $b could grow to 4 pages; with $a's 2 it gets 1 more.
        assert_eq!(grow.call(&mut store, 2).unwrap(), -1);
        assert!(store.data().hit);
        assert_eq!(grow.call(&mut store, 1).unwrap(), 1);
        assert_eq!(store.data().peak, 4 * PAGE);
    }

    #[test]
    fn a_limit_beyond_usize_means_no_limit() {
        let mut l = MemoryLimiter::new(u64::MAX);
        assert!(l.memory_growing(0, usize::MAX, None).unwrap());
        assert!(!l.hit);
    }

    #[test]
    fn table_growth_is_capped_at_a_million_elements_without_the_memory_flag() {
        let mut l = MemoryLimiter::new(MIB as u64);
        assert!(l.table_growing(0, 1_000_000, None).unwrap());
        assert!(!l.table_growing(1_000_000, 1_000_001, None).unwrap());
        assert!(!l.hit);
        assert_eq!(l.peak, 0);
    }

    /// The limiter as wasmtime drives it: `memory.grow` past the cap
    /// returns -1 to the guest and sets the flag.
    #[test]
    fn a_guest_memory_grow_past_the_limit_fails_and_is_flagged() {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(
            &engine,
            r#"(module
                (memory 1)
                (func (export "grow") (param i32) (result i32)
                    (memory.grow (local.get 0))))"#,
        )
        .unwrap();
        let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(4 * PAGE as u64));
        store.limiter(|l| l);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow")
            .unwrap();
        // Instantiation asked for the initial page.
        assert_eq!(store.data().peak, PAGE);
        assert_eq!(grow.call(&mut store, 3).unwrap(), 1);
        assert_eq!(store.data().peak, 4 * PAGE);
        assert!(!store.data().hit);
        assert_eq!(grow.call(&mut store, 1).unwrap(), -1);
        assert!(store.data().hit);
        assert_eq!(store.data().peak, 4 * PAGE);
    }

    #[test]
    fn a_refused_growth_makes_any_failure_out_of_memory() {
        let e = classify(
            wasmtime::Error::new(Trap::UnreachableCodeReached),
            true,
            7,
            Duration::ZERO,
        );
        assert_eq!(e, InvokeError::OutOfMemory { limit_bytes: 7 });
        // Even an interrupt: the memory cap was the cause.
        let e = classify(
            wasmtime::Error::new(Trap::Interrupt),
            true,
            7,
            Duration::ZERO,
        );
        assert_eq!(e, InvokeError::OutOfMemory { limit_bytes: 7 });
    }

    #[test]
    fn an_interrupt_is_a_timeout_and_other_failures_are_traps() {
        let t = Duration::from_millis(250);
        let e = classify(wasmtime::Error::new(Trap::Interrupt), false, 7, t);
        assert_eq!(e, InvokeError::Timeout(t));
        let e = classify(
            wasmtime::Error::new(Trap::UnreachableCodeReached),
            false,
            7,
            t,
        );
        assert!(matches!(e, InvokeError::Trap(_)), "{e:?}");
        let e = classify(wasmtime::Error::msg("host function failed"), false, 7, t);
        assert!(
            matches!(&e, InvokeError::Trap(m) if m.contains("host function failed")),
            "{e:?}"
        );
    }

    #[test]
    fn instantiation_traps_are_the_guests_and_other_failures_internal() {
        let e = instantiate_error(wasmtime::Error::new(Trap::UnreachableCodeReached));
        assert!(matches!(&e, InvokeError::Trap(_)), "{e:?}");
        assert!(e.is_function_error());
        let e = instantiate_error(wasmtime::Error::msg("import not satisfied"));
        assert!(
            matches!(&e, InvokeError::Internal(m) if m.contains("import not satisfied")),
            "{e:?}"
        );
        assert!(!e.is_function_error());
    }
}
