//! The CPU lane: how guests that compute for long share the worker threads
//! with everyone else.
//!
//! Every guest yields to the executor at each epoch tick (10 ms), so none
//! holds a worker thread for long; but ten guests spinning in a loop, all
//! yielding and resuming, still take turns with every other request on the
//! same two workers, and a healthy neighbour waited behind them. So a guest
//! that has run longer than [`LIGHT_TICKS`] ticks, or grown its memory by
//! more than [`LIGHT_GROWTH`] bytes (allocating and touching pages costs
//! CPU in the kernel, page faults and zeroing), is *heavy*: before each
//! further slice it takes a permit of the lane, which admits at most
//! `permits` heavy guests at once (one fewer than the worker threads, at
//! least one). The others wait on the lane, using no CPU, in FIFO order; a
//! light request (most of them: ~1 ms) never touches it, so it always has
//! a worker the heavy ones cannot all take.
//!
//! A heavy guest's run also moves, at its next yield, off the server's
//! workers to the [`heavy_executor`]: threads of their own (one fewer than
//! the cores, at least one) at a lower scheduling priority (nice
//! [`HEAVY_NICE`]). The kernel then gives the workers serving light
//! requests, and a client or proxy on the same host, the CPU first; a
//! heavy guest computes on what they leave, which is all of it when they
//! are idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The nice value of the heavy executor's threads (0 is the default; 19
/// the lowest priority). At 10 a heavy thread weighs about a tenth of a
/// worker when both want a core.
pub const HEAVY_NICE: i32 = 10;

/// Where heavy guests run once they are heavy: a multi-threaded executor
/// of its own, one thread fewer than the cores (at least one), each at
/// nice [`HEAVY_NICE`]; made the first time it is asked for, and for the
/// life of the process. `None` if it could not be made (the guests then
/// stay where they are).
pub(crate) fn heavy_executor() -> Option<&'static tokio::runtime::Handle> {
    static HEAVY: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    HEAVY
        .get_or_init(|| {
            let threads = std::thread::available_parallelism()
                .map_or(1, usize::from)
                .saturating_sub(1)
                .max(1);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("seal-heavy")
                .on_thread_start(|| {
                    ON_HEAVY.set(true);
                    lower_this_threads_priority();
                })
                .enable_all()
                .build()
                .map_err(|e| tracing::warn!(error = %e, "no executor for heavy guests; they stay on the workers"))
                .ok()
        })
        .as_ref()
        .map(|rt| rt.handle())
}

tokio::task_local! {
    /// In a run moved to the heavy executor: the runtime it came from.
    static HOME: tokio::runtime::Handle;
}

/// `run`, moved to the heavy executor from `home`.
pub(crate) async fn moved_from<F: std::future::Future>(
    home: Option<tokio::runtime::Handle>,
    run: F,
) -> F::Output {
    match home {
        Some(home) => HOME.scope(home, run).await,
        None => run.await,
    }
}

/// Runs `f` with the runtime a moved run came from as the current one
/// (so what it spawns runs there, at the workers' priority); elsewhere
/// just runs it.
pub(crate) fn on_home<R>(f: impl FnOnce() -> R) -> R {
    match HOME.try_with(|home| home.clone()) {
        Ok(home) => {
            let _entered = home.enter();
            f()
        }
        Err(_) => f(),
    }
}

thread_local! {
    static ON_HEAVY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is one of the heavy executor's.
pub(crate) fn on_heavy_executor() -> bool {
    ON_HEAVY.get()
}

/// Lowers the calling thread's scheduling priority to [`HEAVY_NICE`]
/// (Linux: a nice value is a thread's own). Raising a nice value needs no
/// privilege; where it fails the thread runs at the default priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), HEAVY_NICE)
    {
        tracing::debug!(error = %e, "could not lower a heavy-guest thread's priority");
    }
}

/// What a heavy guest yields on.
pub(crate) type YieldOn = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Ticks a guest may run before it is heavy (50 ms of wasm).
pub const LIGHT_TICKS: u32 = 5;
/// Memory a guest may grow by while it runs before it is heavy.
pub const LIGHT_GROWTH: usize = 4 << 20;

/// The lane heavy guests take turns in.
#[derive(Debug, Clone)]
pub struct CpuLane {
    permits: Arc<Semaphore>,
    size: usize,
}

impl CpuLane {
    /// A lane for `workers` executor threads: `workers - 1` heavy guests at
    /// once, at least one.
    pub fn for_workers(workers: usize) -> Self {
        Self::with_size(workers.saturating_sub(1))
    }

    /// A lane admitting `size` heavy guests at once (at least one).
    pub fn with_size(size: usize) -> Self {
        let size = size.max(1);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The lane for this machine's cores (the server's executor runs one
    /// worker per core).
    pub fn for_this_machine() -> Self {
        Self::for_workers(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Heavy guests running a slice now.
    pub fn running(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    /// What one store holds of the lane: a seat, reset for each
    /// invocation it runs.
    pub(crate) fn seat(&self) -> Seat {
        Seat {
            lane: self.clone(),
            ticks: 0,
            held: None,
            heavy: Arc::default(),
        }
    }
}

/// One store's place in the lane: how long its invocation has run, and the
/// permit of its current slice while it is heavy. It lives in the store
/// (made once with it), so an invocation costs the lane no allocation
/// and touches no shared count until it is heavy.
pub(crate) struct Seat {
    lane: CpuLane,
    ticks: u32,
    /// Made the first time the invocation is heavy.
    held: Option<Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>>,
    /// Whether the invocation running now is heavy: read by its run, which
    /// then moves to the [`heavy_executor`].
    heavy: Arc<AtomicBool>,
}

impl Seat {
    /// A new invocation starts light; a permit an earlier one held is
    /// given back.
    pub(crate) fn reset(&mut self) {
        self.ticks = 0;
        self.held = None;
        self.heavy.store(false, Ordering::Relaxed);
    }

    /// Set while the invocation running now is heavy.
    pub(crate) fn heavy(&self) -> Arc<AtomicBool> {
        self.heavy.clone()
    }

    /// At an epoch tick: `None` while the guest is light (a plain yield);
    /// once heavy, the future to yield on, which gives up the slice's
    /// permit and waits for the next one.
    /// `grown`: bytes the guest's memories have grown by since they were
    /// created.
    pub(crate) fn tick(&mut self, grown: usize) -> Option<YieldOn> {
        self.ticks = self.ticks.saturating_add(1);
        if self.ticks <= LIGHT_TICKS && grown <= LIGHT_GROWTH {
            return None;
        }
        self.heavy.store(true, Ordering::Relaxed);
        let held = self.held.get_or_insert_default().clone();
        let permits = self.lane.permits.clone();
        Some(Box::pin(async move {
            // Give the slice up first, so a waiting guest can have it.
            drop(held.lock().map(|mut h| h.take()));
            tokio::task::yield_now().await;
            if let Ok(p) = permits.acquire_owned().await
                && let Ok(mut h) = held.lock()
            {
                *h = Some(p);
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store's seat outlives its invocations: once reset for the next
    /// one, the permit the last one held is back in the lane and the new
    /// invocation starts light.
    #[tokio::test]
    async fn a_reset_seat_gives_its_permit_back_and_starts_light() {
        let lane = CpuLane::with_size(1);
        let mut seat = lane.seat();
        for _ in 0..LIGHT_TICKS {
            assert!(seat.tick(0).is_none(), "light for {LIGHT_TICKS} ticks");
        }
        seat.tick(0).expect("heavy past its light ticks").await;
        assert_eq!(lane.running(), 1, "the heavy guest holds the lane");

        seat.reset();
        assert_eq!(lane.running(), 0, "the permit is given back");
        assert!(seat.tick(0).is_none(), "the next invocation starts light");
        // Growing memory past the light budget makes it heavy at once.
        assert!(seat.tick(LIGHT_GROWTH + 1).is_some());
    }
}
