//! One loaded function and how it serves a request: [`Function::handle`]
//! runs the request in a fresh store, instantiated from the
//! pre-instantiated component (or made ready before the request, or, when
//! the manifest says so, an instance an earlier request used), and hands
//! back the response head while the guest keeps streaming the body.
//!
//! The guest runs where the caller awaits until its response head is out,
//! then (if its body still streams) in a task of its own; the run is
//! bounded as a whole by the function's timeout, so a slow body or a
//! stalled client cannot hold an instance slot past the deadline. Two
//! small pieces keep the accounting honest whatever happens to that run:
//! [`HeadSent`] records, from the guest's own
//! `response-outparam.set`, whether and when the head went out (so a later
//! failure is known to be "late"), and [`ReportOnDrop`] hands the
//! invocation's report to its observer exactly once, even when the run is
//! aborted.

use crate::error::InvokeError;
use crate::host::Host;
use crate::limits::{FunctionLimits, MemoryLimiter, classify, instantiate_error};
use crate::observer::{InvocationObserver, InvocationReport};
use crate::outbound::OutboundGate;
use crate::stdio::{GuestOutput, GuestStream};
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// Host resources (headers, bodies, streams, pollables…) one invocation
/// may hold at once; wasmtime's default is a million.
pub const MAX_RESOURCES: usize = 4096;
/// In-memory size of one set of header fields a guest builds (wasmtime's
/// default is 128 KiB).
pub const MAX_FIELDS_BYTES: usize = 64 << 10;

/// How a function was made ready, for its cold-start breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTimings {
    /// True when the compiled form came from the cache; false when it was
    /// compiled from wasm (publish, or a cache miss).
    pub from_cache: bool,
    /// Reading and verifying the compiled file (or compiling), deserializing
    /// it and pre-instantiating (linking) the component.
    pub load: Duration,
}

/// A guest's environment variables, shared by its invocations.
pub type Env = Arc<[(String, String)]>;

/// Idle instances one reusing function keeps at most; more are dropped.
pub const MAX_IDLE_INSTANCES: usize = 64;
/// Instances made ahead of a request that all functions together keep at
/// most (and at most a quarter of the pool).
pub const MAX_PREPARED_INSTANCES: usize = 16;
/// An idle instance unused this long is discarded rather than reused (a
/// reaper looks every quarter of it, so it goes within 1.25 times this).
pub const INSTANCE_IDLE: Duration = Duration::from_secs(60);

/// An idle instance: one between two invocations of a function that
/// declares `instance_reuse`, or one made ahead of a request and never
/// called. Its store (the guest's state), its exports, and what it was
/// built with.
struct Warm {
    store: Store<Host>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    stdout: GuestOutput,
    stderr: GuestOutput,
    /// The environment variables it was instantiated with: another set
    /// (a config change) needs another instance.
    env: Env,
    /// Invocations it has served.
    uses: u32,
    idle_since: std::time::Instant,
}

/// How many instances may sit idle across every function of the runtime:
/// an idle instance holds a slot of the instance pool, so reuse can never
/// take more than this share of it from requests.
pub(crate) struct IdleBudget {
    free: std::sync::atomic::AtomicIsize,
}

impl IdleBudget {
    pub(crate) fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            free: std::sync::atomic::AtomicIsize::new(slots.min(isize::MAX as usize) as isize),
        })
    }

    fn try_take(&self) -> bool {
        if self.free.fetch_sub(1, Ordering::AcqRel) > 0 {
            true
        } else {
            self.free.fetch_add(1, Ordering::AcqRel);
            false
        }
    }

    fn give_back(&self, n: usize) {
        self.free.fetch_add(n as isize, Ordering::AcqRel);
    }
}

/// The idle instances of one function (see [`Warm`]), within the
/// runtime's [`IdleBudget`]; a reaper task drops those idle too long,
/// traffic or not.
struct WarmPool {
    idle: std::sync::Mutex<Vec<Warm>>,
    budget: Arc<IdleBudget>,
    reaping: std::sync::atomic::AtomicBool,
    /// An instance is being made ready ahead of a request.
    filling: std::sync::atomic::AtomicBool,
    /// Bumped by every release: an instance made or used before it is
    /// not kept after it (its version left the routes, or its config
    /// changed, while it ran).
    generation: std::sync::atomic::AtomicU64,
    /// Its version left the routes: no instance is made ahead until it
    /// is routed again.
    retired: std::sync::atomic::AtomicBool,
}

impl WarmPool {
    fn new(budget: Arc<IdleBudget>) -> Self {
        Self {
            idle: std::sync::Mutex::new(Vec::new()),
            budget,
            reaping: std::sync::atomic::AtomicBool::new(false),
            filling: std::sync::atomic::AtomicBool::new(false),
            generation: std::sync::atomic::AtomicU64::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether an instance built with `env` waits, idle.
    fn holds(&self, env: &[(String, String)]) -> bool {
        self.lock()
            .iter()
            .any(|w| *w.env == *env && w.idle_since.elapsed() < INSTANCE_IDLE)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the instances idle past [`INSTANCE_IDLE`]; how many are left.
    fn reap(&self) -> usize {
        let stale: Vec<Warm> = {
            let mut idle = self.lock();
            let (stale, kept): (Vec<Warm>, Vec<Warm>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|w| w.idle_since.elapsed() >= INSTANCE_IDLE);
            *idle = kept;
            stale
        };
        let n_stale = stale.len();
        drop(stale);
        self.budget.give_back(n_stale);
        self.lock().len()
    }

    /// The most recently used idle instance built with `env`.
    fn take(&self, env: &[(String, String)], now: std::time::Instant) -> Option<Warm> {
        let mut idle = self.lock();
        let i = idle.iter().rposition(|w| {
            *w.env == *env && now.saturating_duration_since(w.idle_since) < INSTANCE_IDLE
        })?;
        let warm = idle.swap_remove(i);
        drop(idle);
        self.budget.give_back(1);
        Some(warm)
    }

    /// A place in the budget for one idle instance, held until it is
    /// [put](Self::put_reserved) (or given back when dropped).
    fn reserve(&self) -> Option<Reserved> {
        self.budget
            .try_take()
            .then(|| Reserved(Some(self.budget.clone())))
    }

    /// The generation an instance made or taken now belongs to.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `warm`, made or used in generation `born`, idle (unless a
    /// release came since).
    fn put(self: &Arc<Self>, warm: Warm, born: u64) {
        if let Some(place) = self.reserve() {
            self.put_reserved(warm, place, born);
        }
    }

    /// (`warm.idle_since` is when it went idle: now.)
    fn put_reserved(self: &Arc<Self>, warm: Warm, mut place: Reserved, born: u64) {
        {
            let mut idle = self.lock();
            if idle.len() >= MAX_IDLE_INSTANCES || self.generation() != born {
                drop(idle);
                drop(warm);
                return;
            }
            idle.push(warm);
            // The idle instance holds the place now.
            place.0 = None;
        }
        if !self.reaping.swap(true, Ordering::AcqRel) {
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(INSTANCE_IDLE / 4).await;
                    let Some(pool) = pool.upgrade() else {
                        return;
                    };
                    if pool.reap() == 0 {
                        pool.reaping.store(false, Ordering::Release);
                        // One put may have come between the reap and the
                        // flag: it spawned no reaper, so this one goes on.
                        if pool.lock().is_empty() || pool.reaping.swap(true, Ordering::AcqRel) {
                            return;
                        }
                    }
                }
            });
        }
    }
}

impl WarmPool {
    /// Drops the idle instances built with `env`, or every one.
    fn release(&self, env: Option<&[(String, String)]>) {
        let gone: Vec<Warm> = {
            let mut idle = self.lock();
            self.generation.fetch_add(1, Ordering::AcqRel);
            if env.is_none() {
                self.retired.store(true, Ordering::Release);
            }
            let (gone, kept): (Vec<Warm>, Vec<Warm>) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|w| env.is_none_or(|e| *w.env == *e));
            *idle = kept;
            gone
        };
        let n = gone.len();
        drop(gone);
        self.budget.give_back(n);
    }
}

/// One place of an [`IdleBudget`] taken for an instance not yet idle;
/// given back when dropped unless the instance went idle.
struct Reserved(Option<Arc<IdleBudget>>);

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(budget) = self.0.take() {
            budget.give_back(1);
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let n = self
            .idle
            .get_mut()
            .map_or_else(|p| p.into_inner().len(), |v| v.len());
        self.budget.give_back(n);
    }
}

/// What making an instance ready ahead of a request needs, apart from
/// the function (a task does it).
struct Ahead {
    pre: ProxyPre<Host>,
    memory_bytes: u64,
    timeout: Duration,
    idle: Arc<WarmPool>,
    lane: crate::lane::CpuLane,
}

impl Ahead {
    /// Instantiates one instance for `env` in a task of its own and leaves
    /// it idle, unless one is ready or being made, or the budget of
    /// instances made ahead is spent (its place is taken before any work,
    /// so a full budget costs no instantiation). Its output and outbound
    /// gate point nowhere until a request takes it.
    /// `routed`: the server asks, its version being routed (else it is
    /// a refill after an invocation, skipped once the version left the
    /// routes).
    fn prepare(self: &Arc<Self>, env: &Env, routed: bool) {
        if routed {
            self.idle.retired.store(false, Ordering::Release);
        } else if self.idle.retired.load(Ordering::Acquire) {
            return;
        }
        if self.idle.holds(env) || self.idle.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        // Whatever happens to the task (a panic, the runtime shutting
        // down), the next request may try again.
        let filling = Filling(self.idle.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(place) = self.idle.reserve() else {
            return;
        };
        let born = self.idle.generation();
        let (this, env) = (self.clone(), env.clone());
        rt.spawn(async move {
            let _filling = filling;
            let this = &*this;
            let (mut store, stdout, stderr) = new_store(
                &this.pre,
                this.memory_bytes,
                &env,
                None,
                OutboundGate::new(Arc::from([])),
                &this.lane,
            );
            // Instantiation runs guest code (start functions): bounded as
            // an invocation is, yielding at each epoch tick.
            store
                .data_mut()
                .run_until(std::time::Instant::now() + this.timeout);
            store.set_epoch_deadline(1);
            let made =
                tokio::time::timeout(this.timeout, this.pre.instantiate_async(&mut store)).await;
            if let Ok(Ok(proxy)) = made {
                store.data_mut().idle();
                this.idle.put_reserved(
                    Warm {
                        store,
                        proxy,
                        stdout,
                        stderr,
                        env,
                        uses: 0,
                        idle_since: std::time::Instant::now(),
                    },
                    place,
                    born,
                );
            }
        });
    }
}

/// Marks its pool as no longer making an instance ahead, when dropped.
struct Filling(Arc<WarmPool>);

impl Drop for Filling {
    fn drop(&mut self) {
        self.0.filling.store(false, Ordering::Release);
    }
}

/// A store for one instance of `pre`, with `env` as its environment
/// variables, its output told to `observer` (none: an instance made
/// ahead) and its guest code taking turns in `lane`; and that output.
fn new_store(
    pre: &ProxyPre<Host>,
    memory_bytes: u64,
    env: &[(String, String)],
    observer: Option<Arc<dyn InvocationObserver>>,
    outbound: OutboundGate,
    lane: &crate::lane::CpuLane,
) -> (Store<Host>, GuestOutput, GuestOutput) {
    let stdout = GuestOutput::new(GuestStream::Stdout, observer.clone());
    let stderr = GuestOutput::new(GuestStream::Stderr, observer);
    let mut wasi = WasiCtx::builder();
    wasi.stdout(stdout.clone()).stderr(stderr.clone()).envs(env);
    // Host-side resources are bounded per invocation too: entries in the
    // resource table (fields, streams, pollables, …) and the size of each
    // header set the guest builds.
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    let mut http = WasiHttpCtx::new();
    http.set_field_size_limit(MAX_FIELDS_BYTES);
    let mut store = Store::new(
        pre.engine(),
        Host {
            wasi: wasi.build(),
            http,
            table,
            limiter: MemoryLimiter::new(memory_bytes),
            outbound,
            deadline: None,
            seat: lane.seat(),
        },
    );
    store.limiter(|h| &mut h.limiter);
    store.epoch_deadline_callback(crate::host::on_epoch);
    (store, stdout, stderr)
}

/// Counts one running invocation of a function until it leaves (or is
/// dropped: an aborted run leaves too).
struct Running(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Running {
    fn enter(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Some(count.clone()))
    }

    /// Leaves; how many invocations of the function are still running.
    fn leave(mut self) -> usize {
        self.0
            .take()
            .map_or(0, |c| c.fetch_sub(1, Ordering::AcqRel) - 1)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One artifact, pre-instantiated, with its limits: ready to serve.
pub struct Function {
    pre: ProxyPre<Host>,
    /// The compiled component it shares with every function made of the
    /// same component (kept alive while one of them is).
    _compiled: Arc<crate::engine::Compiled>,
    limits: FunctionLimits,
    load: LoadTimings,
    /// Set by the first invocation: every later one is warm.
    warm: std::sync::atomic::AtomicBool,
    /// Where its invocations take turns once they compute for long.
    lane: crate::lane::CpuLane,
    /// Idle instances: those left by earlier invocations when its
    /// manifest declares `instance_reuse`, else those made ready ahead.
    idle: Arc<WarmPool>,
    /// Its invocations running now.
    running: Arc<std::sync::atomic::AtomicUsize>,
    /// How it makes an instance ready ahead of a request.
    ahead: Arc<Ahead>,
}

impl Function {
    pub(crate) fn new(
        compiled: Arc<crate::engine::Compiled>,
        limits: FunctionLimits,
        load: LoadTimings,
        lane: crate::lane::CpuLane,
        idle_budget: Arc<IdleBudget>,
        prepared_budget: Arc<IdleBudget>,
    ) -> Self {
        // A reusing function's idle instances were used; another's were
        // made ahead, which a smaller budget bounds (each holds a pool
        // slot and, once used, its memory stays resident).
        let idle = Arc::new(WarmPool::new(if limits.instance_reuse.is_some() {
            idle_budget
        } else {
            prepared_budget
        }));
        let ahead = Arc::new(Ahead {
            pre: compiled.pre.clone(),
            memory_bytes: limits.memory_bytes,
            timeout: limits.timeout,
            idle: idle.clone(),
            lane: lane.clone(),
        });
        Self {
            pre: compiled.pre.clone(),
            _compiled: compiled,
            limits,
            load,
            warm: std::sync::atomic::AtomicBool::new(false),
            lane,
            idle,
            running: Arc::default(),
            ahead,
        }
    }

    /// Makes an instance ready for the next request with `env` (its
    /// environment variables), off the request path: for a function that
    /// takes a fresh instance per request, when none is ready for `env`
    /// yet. The server calls it when a version is routed, so the first
    /// request after a deploy skips instantiation; after each invocation
    /// the runtime does the same when the function is otherwise idle.
    pub fn prepare_ahead(&self, env: &Env) {
        if self.limits.instance_reuse.is_none() {
            self.ahead.prepare(env, true);
        }
    }

    /// Whether an instance made ready ahead (or left for reuse) waits for
    /// a request with `env`.
    pub fn has_ready_instance(&self, env: &[(String, String)]) -> bool {
        self.idle.holds(env)
    }

    /// Drops its idle instances (left for reuse or made ahead): those
    /// built with `env` (the environment variables a config change
    /// replaced), or every one when `env` is `None` (its version left the
    /// routes).
    pub fn release_idle(&self, env: Option<&[(String, String)]>) {
        self.idle.release(env);
    }

    pub fn limits(&self) -> &FunctionLimits {
        &self.limits
    }

    pub fn load_timings(&self) -> LoadTimings {
        self.load
    }

    /// Whether this invocation is the function's first (its cold start).
    fn take_cold(&self) -> bool {
        !self.warm.load(Ordering::Relaxed) && !self.warm.swap(true, Ordering::Relaxed)
    }

    /// Runs one request with `env` as its environment variables, in an
    /// idle instance of the function's own when one waits (left for reuse,
    /// or made ahead and never called), else in a fresh store. The guest
    /// runs in the caller's future until its response head is out; the
    /// body keeps streaming from the guest, in a task, after this returns.
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        env: &Env,
        observer: Arc<dyn InvocationObserver>,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let cold = self.take_cold();
        // What the invocation's outbound gate lets through: the manifest's
        // lists (shared with the function, cloned only into a new store),
        // where its events go and what evaluates its flags.
        let deny = observer.deny_outbound();
        let denied: Arc<[seal_artifact::capabilities::HostPattern]>;
        let allowed = if deny {
            denied = Arc::from([]);
            &denied
        } else {
            &self.limits.outbound_hosts
        };
        let emitter = if self.limits.queues.is_empty() || deny {
            None
        } else {
            observer.emitter()
        };
        let evaluator = if self.limits.flags.is_empty() {
            None
        } else {
            observer.flags()
        };
        // An idle instance of its own when there is one: for a function
        // that declares reuse, one an earlier invocation left (the guest's
        // state stays); otherwise one made ready before the request and
        // never called. The per-invocation parts (output, outbound gate,
        // memory peak) are this request's. A replay takes none and leaves
        // none.
        let shares = observer.shares_instances();
        let reuse = self.limits.instance_reuse.filter(|_| shares);
        let born = self.idle.generation();
        // One reading of the clock for the start of the invocation: its
        // deadline, its report and the idle check.
        let started = std::time::Instant::now();
        let warm = if shares {
            self.idle.take(env, started)
        } else {
            None
        };
        // Counted only where it decides anything: whether to make the
        // next instance ahead (a reusing function makes none).
        let ahead = (shares && self.limits.instance_reuse.is_none()).then(|| self.ahead.clone());
        let running = ahead.as_ref().map(|_| Running::enter(&self.running));
        let (mut store, proxy, outputs, uses) = match warm {
            Some(mut w) => {
                w.stdout.rebind(Some(observer.clone()));
                w.stderr.rebind(Some(observer.clone()));
                let host = w.store.data_mut();
                host.outbound.attach(
                    allowed,
                    (&self.limits.queues, emitter),
                    (&self.limits.flags, evaluator),
                );
                host.limiter.next_invocation();
                (w.store, Some(w.proxy), (w.stdout, w.stderr), w.uses)
            }
            None => {
                let (store, stdout, stderr) = new_store(
                    &self.pre,
                    self.limits.memory_bytes,
                    env,
                    Some(observer.clone()),
                    OutboundGate::for_invocation(
                        allowed.clone(),
                        (self.limits.queues.clone(), emitter),
                        (self.limits.flags.clone(), evaluator),
                    ),
                    &self.lane,
                );
                (store, None, (stdout, stderr), 0)
            }
        };
        // An instance made ready before the request was never called: it
        // is as fresh as one made now.
        let reused = uses > 0;
        let prepared = proxy.is_some() && !reused;
        // The store's epoch callback (`host::on_epoch`) bounds the guest
        // by this deadline and seats it in the CPU lane.
        let deadline = started + self.limits.timeout;
        store.data_mut().run_until(deadline);
        store.set_epoch_deadline(1);

        // Set by the epoch callback once the guest is heavy: its run then
        // moves to the heavy executor (see `Migrating`).
        let heavy = store.data().seat.heavy();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;
        // Whether the guest handed over a response head, recorded by the
        // guest's own `response-outparam.set` call, so a failure after it
        // is known to be "late" without racing the caller.
        // It also carries the status and when the head was sent, for the
        // invocation's report.
        let head = Arc::new(HeadSent::default());
        let head_flag = head.clone();
        let head_for_caller = head.clone();
        let out = store
            .data_mut()
            .http()
            .new_response_outparam_from_callback(move |response| {
                if let Ok(r) = &response {
                    head_flag.set(r.status().as_u16());
                }
                let response = response.map(|r| {
                    let watched = head_flag.clone();
                    r.map(|body| WatchedBody::new(body, watched).boxed_unsync())
                });
                if sender.send(response).is_err() {
                    // Nobody waits for the answer any more.
                    head_flag.client_gone();
                }
            })
            .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;
        // Only an instance made now needs the pre-instantiated component.
        let pre = proxy.is_none().then(|| self.pre.clone());
        let memory_limit = self.limits.memory_bytes;
        let timeout = self.limits.timeout;
        let idle = self.idle.clone();
        let env_kept = env.clone();

        // The guest runs where the caller awaits until its response head is
        // out (no hand-off to another task for an answer that comes at
        // once); what is left (the body streaming, or the whole run if the
        // caller goes) continues in a task of its own. The whole run, body
        // streaming included, is bounded by the timeout: a guest parked in
        // a host wait (a sleep, a client that stopped reading) does not
        // hold its instance slot past the deadline.
        let run = Box::pin(async move {
            // Reports the invocation even if this run is dropped.
            let mut report = ReportOnDrop {
                observer: observer.clone(),
                report: Some(InvocationReport {
                    cold,
                    reused,
                    prepared,
                    instantiate: Duration::ZERO,
                    call_to_head: None,
                    total: Duration::ZERO,
                    status: None,
                    peak_memory_bytes: 0,
                    outcome: Err(InvokeError::Timeout(timeout)),
                }),
                started,
                call_started: None,
                ended: None,
                head: head.clone(),
            };
            // The instance comes back with the outcome, for reuse.
            let run = async {
                let (proxy, now) = match (proxy, pre) {
                    // Reused: the call starts as the invocation does.
                    (Some(p), _) if reused => (p, started),
                    // Made ahead: its "instantiate" is the time from the
                    // invocation's start to the call, as for one made now.
                    (Some(p), _) => (p, std::time::Instant::now()),
                    (None, Some(pre)) => match pre.instantiate_async(&mut store).await {
                        Ok(p) => (p, std::time::Instant::now()),
                        Err(e) => return (Err(instantiate_error(e)), None),
                    },
                    (None, None) => {
                        return (
                            Err(InvokeError::Internal("no instance to call".into())),
                            None,
                        );
                    }
                };
                report.call_started = Some(now);
                if let Some(r) = report.report.as_mut()
                    && !reused
                {
                    r.instantiate = now - report.started;
                }
                let result = proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
                    .map_err(|e| classify(e, store.data().limiter.hit, memory_limit, timeout));
                (result, Some(proxy))
            };
            let (result, instance) = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(ran) => ran,
                Err(_elapsed) => (Err(InvokeError::Timeout(timeout)), None),
            };
            // A guest whose caller hung up fails when it writes to a
            // closed body (a Rust guest traps on it): the caller's doing,
            // not the version's.
            let result = match result {
                Err(e) if e.is_function_error() && head.is_client_gone() => {
                    Err(InvokeError::ClientClosed(e.to_string()))
                }
                r => r,
            };
            if let Err(e) = &result
                && head.sent()
            {
                // The status is already on the wire; the body is cut short.
                if e.is_function_error() {
                    tracing::warn!(kind = e.kind(), error = %e, "function failed after sending its response head");
                } else {
                    tracing::debug!(kind = e.kind(), error = %e, "invocation ended early");
                }
                observer.late_failure(e);
            }
            if let Some(r) = report.report.as_mut() {
                r.peak_memory_bytes = store.data().limiter.peak as u64;
                r.outcome = result.clone();
            }
            // The output's last partial lines before the invocation is
            // reported.
            outputs.0.finish();
            outputs.1.finish();
            // Kept for the next invocation only after a clean run with
            // uses left: a trap, a timeout (the run is cut short before
            // this) or a memory kill discards the instance.
            // An answer that never came (no head, an error code) is a
            // failure too. Idle, it holds nothing of this invocation: its
            // output and gate point nowhere (the invocation, its admission
            // permit, its event sender and flags are let go), it has no
            // deadline, and its CPU-lane seat has given back any permit.
            let uses = uses + 1;
            match (reuse, instance) {
                (Some(max), Some(proxy)) if result.is_ok() && head.sent() && uses < max => {
                    outputs.0.rebind(None);
                    outputs.1.rebind(None);
                    let host = store.data_mut();
                    host.outbound.detach();
                    host.idle();
                    let now = std::time::Instant::now();
                    report.ended = Some(now);
                    // (Its reaper, if it starts one, runs where the
                    // invocation came from, not on the heavy executor.)
                    crate::lane::on_home(|| {
                        idle.put(
                            Warm {
                                store,
                                proxy,
                                stdout: outputs.0,
                                stderr: outputs.1,
                                env: env_kept.clone(),
                                uses,
                                idle_since: now,
                            },
                            born,
                        )
                    })
                }
                _ => drop(store),
            }
            drop(report);
            // Under light load (no other invocation of the function
            // running), the next request's instance is made now, off its
            // path; at saturation none is, as it would only move the same
            // work around.
            if running.is_some_and(|r| r.leave() == 0)
                && !matches!(result, Err(InvokeError::Overloaded(_)))
                && let Some(ahead) = ahead
            {
                crate::lane::on_home(|| ahead.prepare(&env_kept, false));
            }
            result
        });
        // A panic in the run (a host bug) fails this invocation alone.
        let run: Run = Box::pin(std::panic::AssertUnwindSafe(run).catch_unwind().map(|ran| {
            ran.unwrap_or_else(|_| Err(InvokeError::Internal("the invocation panicked".into())))
        }));

        // If this future is dropped before the answer arrives, the caller
        // has gone (its connection closed): the guest's failures from then
        // on are not its own, and its run goes on in a task.
        let mut run = Detach {
            run: Some(Migrating {
                run: Some(Where::Here(run)),
                heavy,
            }),
            rt: tokio::runtime::Handle::try_current().ok(),
        };
        let mut receiver = receiver;
        let waiting = CallerWaiting(Some(head_for_caller));
        let step = std::future::poll_fn(|cx| run.until_head(cx, &mut receiver)).await;
        waiting.disarm();
        let answer = match step {
            Step::Head(Ok(answer)) => Ok(answer),
            // The guest dropped its outparam unanswered: the end of its
            // run says why.
            Step::Head(Err(_)) => Err(run.finish().await),
            Step::Ran(result) => receiver.try_recv().map_err(|_| result),
        };
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(InvokeError::NoResponse(format!(
                "guest answered with error {code:?}"
            ))),
            Err(Ok(())) => Err(InvokeError::NoResponse(
                "guest returned without calling response-outparam.set".into(),
            )),
            Err(Err(e)) => Err(e),
        }
    }
}

type Answer = Result<
    http::Response<HyperOutgoingBody>,
    wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
>;

/// What the caller saw first: the guest's response head (or its
/// outparam dropped unanswered), or the end of its run.
enum Step {
    Head(Result<Answer, tokio::sync::oneshot::error::RecvError>),
    Ran(Result<(), InvokeError>),
}

/// The guest's run, polled by the caller until the response head is out;
/// dropped unfinished (the head is out and the body still streams, or the
/// caller went away), the rest runs in a task of its own.
struct Detach {
    run: Option<Migrating>,
    /// Where the rest runs (the caller's runtime, wherever it is dropped).
    rt: Option<tokio::runtime::Handle>,
}

/// A guest's run, from instantiation to the end of its body.
type Run = std::pin::Pin<Box<dyn Future<Output = Result<(), InvokeError>> + Send>>;

impl Detach {
    fn until_head(
        &mut self,
        cx: &mut std::task::Context<'_>,
        head: &mut tokio::sync::oneshot::Receiver<Answer>,
    ) -> std::task::Poll<Step> {
        use std::task::Poll;
        if let Some(run) = self.run.as_mut()
            && let Poll::Ready(result) = std::pin::Pin::new(run).poll(cx)
        {
            self.run = None;
            return Poll::Ready(Step::Ran(result));
        }
        std::pin::Pin::new(head).poll(cx).map(Step::Head)
    }

    async fn finish(&mut self) -> Result<(), InvokeError> {
        let Some(run) = self.run.as_mut() else {
            return Err(InvokeError::Internal("the run was already over".into()));
        };
        let result = run.await;
        self.run = None;
        result
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        match (self.run.take(), self.rt.as_ref()) {
            // Already a task of its own on the heavy executor: it goes on.
            (
                Some(Migrating {
                    run: Some(Where::Moved(_)),
                    ..
                }),
                _,
            ) => {}
            (Some(run), Some(rt)) => {
                rt.spawn(run);
            }
            _ => {}
        }
    }
}

/// A guest's run that moves to the heavy executor
/// ([`crate::lane::heavy_executor`]) at the first yield after the guest
/// turned heavy, and from then on is awaited there: the workers serving
/// light requests are not the threads heavy guests compute on.
struct Migrating {
    run: Option<Where>,
    heavy: Arc<std::sync::atomic::AtomicBool>,
}

enum Where {
    /// Polled by whoever polls this (the caller, or the task it left).
    Here(Run),
    /// A task on the heavy executor.
    Moved(tokio::task::JoinHandle<Result<(), InvokeError>>),
}

impl Future for Migrating {
    type Output = Result<(), InvokeError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        loop {
            match self.run.as_mut() {
                None => {
                    return Poll::Ready(Err(InvokeError::Internal(
                        "the run was already over".into(),
                    )));
                }
                Some(Where::Here(run)) => {
                    if let Poll::Ready(result) = run.as_mut().poll(cx) {
                        self.run = None;
                        return Poll::Ready(result);
                    }
                    if !self.heavy.load(std::sync::atomic::Ordering::Relaxed)
                        || crate::lane::on_heavy_executor()
                    {
                        return Poll::Pending;
                    }
                    let Some(executor) = crate::lane::heavy_executor() else {
                        return Poll::Pending;
                    };
                    let Some(Where::Here(run)) = self.run.take() else {
                        unreachable!("matched above");
                    };
                    // The rest of the run is a task there; this awaits it.
                    // What it starts at its end (the next instance made
                    // ahead, an idle reaper) goes back to the runtime it
                    // came from (`lane::on_home`). Its timeout's timer
                    // stays that runtime's too: it was made there.
                    let home = tokio::runtime::Handle::try_current().ok();
                    self.run = Some(Where::Moved(
                        executor.spawn(crate::lane::moved_from(home, run)),
                    ));
                }
                Some(Where::Moved(task)) => {
                    let ended = std::task::ready!(std::pin::Pin::new(task).poll(cx));
                    self.run = None;
                    return Poll::Ready(ended.unwrap_or_else(|_| {
                        Err(InvokeError::Internal(
                            "the invocation's run was cancelled".into(),
                        ))
                    }));
                }
            }
        }
    }
}

/// Whether (and when, with what status) the guest handed over its response
/// head, and whether its caller has gone; written by the outparam callback,
/// the caller's future and the response body, read by the guest's run.
#[derive(Default)]
struct HeadSent {
    status: std::sync::atomic::AtomicU16,
    at: std::sync::OnceLock<std::time::Instant>,
    client_gone: std::sync::atomic::AtomicBool,
}

impl HeadSent {
    fn set(&self, status: u16) {
        let _ = self.at.set(std::time::Instant::now());
        self.status.store(status, Ordering::Release);
    }

    fn sent(&self) -> bool {
        self.status.load(Ordering::Acquire) != 0
    }

    fn client_gone(&self) {
        self.client_gone.store(true, Ordering::Release);
    }

    fn is_client_gone(&self) -> bool {
        self.client_gone.load(Ordering::Acquire)
    }
}

/// Marks the caller gone if [`Function::handle`]'s future is dropped
/// while it waits for the response head (the connection closed).
struct CallerWaiting(Option<Arc<HeadSent>>);

impl CallerWaiting {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CallerWaiting {
    fn drop(&mut self) {
        if let Some(head) = self.0.take() {
            head.client_gone();
        }
    }
}

/// The response body as the caller reads it: dropped before its end (the
/// client closed the connection mid-body), it marks the caller gone.
struct WatchedBody {
    inner: HyperOutgoingBody,
    head: Arc<HeadSent>,
    ended: bool,
}

impl WatchedBody {
    fn new(inner: HyperOutgoingBody, head: Arc<HeadSent>) -> Self {
        Self {
            inner,
            head,
            ended: false,
        }
    }
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        if !self.ended && !http_body::Body::is_end_stream(&self.inner) {
            self.head.client_gone();
        }
    }
}

/// Hands the invocation's report to its observer when the guest's run
/// ends, however it ends (a run cut short reports a timeout).
struct ReportOnDrop {
    observer: Arc<dyn InvocationObserver>,
    report: Option<InvocationReport>,
    started: std::time::Instant,
    call_started: Option<std::time::Instant>,
    /// When the run ended, if it already read the clock for it.
    ended: Option<std::time::Instant>,
    head: Arc<HeadSent>,
}

impl Drop for ReportOnDrop {
    fn drop(&mut self) {
        let Some(mut r) = self.report.take() else {
            return;
        };
        r.total = self
            .ended
            .unwrap_or_else(std::time::Instant::now)
            .saturating_duration_since(self.started);
        if std::thread::panicking() {
            // Unwinding from a host bug: not the guest's timeout.
            r.outcome = Err(InvokeError::Internal("the invocation panicked".into()));
        }
        let status = self.head.status.load(Ordering::Acquire);
        r.status = (status != 0).then_some(status);
        r.call_to_head = match (self.call_started, self.head.at.get()) {
            (Some(call), Some(at)) => Some(at.saturating_duration_since(call)),
            _ => None,
        };
        self.observer.finished(r);
    }
}

/// A complete body from bytes, in the body type the runtime streams.
pub fn full_body(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{RETURNS, Recorder, limits, proxy, runtime};

    const MIB: u64 = 1 << 20;

    /// Prepares `core_module` as a proxy and invokes it once per `rounds`,
    /// returning each result and the recorder.
    async fn invoke(
        core_module: &str,
        limits: FunctionLimits,
        rounds: usize,
    ) -> (Vec<Result<u16, InvokeError>>, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(core_module);
        let (f, _) = rt.prepare("d", None, || Ok(wasm), limits).unwrap();
        let rec = Arc::new(Recorder::default());
        let mut results = Vec::new();
        for _ in 0..rounds {
            let req = http::Request::get("http://localhost/")
                .body(full_body("request body"))
                .unwrap();
            let r = f.handle(req, &Env::from([]), rec.clone()).await;
            results.push(r.map(|resp| resp.status().as_u16()));
        }
        (results, rec)
    }

    #[tokio::test]
    async fn a_guest_that_does_not_answer_is_no_response_and_reported_once() {
        let (results, rec) = invoke(RETURNS, limits(16 * MIB, Duration::from_secs(5)), 2).await;
        for r in &results {
            assert!(
                matches!(r, Err(InvokeError::NoResponse(m)) if m.contains("response-outparam.set")),
                "{r:?}"
            );
        }
        let reports = rec.reports();
        assert_eq!(reports.len(), 2, "one report per invocation");
        // Only the first invocation is cold.
        assert!(reports[0].cold);
        assert!(!reports[1].cold);
        for r in &reports {
            // The guest's own call returned normally.
            assert_eq!(r.outcome, Ok(()));
            assert_eq!(r.status, None);
            assert_eq!(r.call_to_head, None);
            assert!(r.total >= r.instantiate);
        }
        assert!(rec.late().is_empty());
    }

    /// A panic in an invocation's run (here its observer's) fails that
    /// invocation with an internal error; the caller's task goes on and
    /// the function serves the next request.
    #[tokio::test]
    async fn a_panic_in_a_run_fails_that_invocation_alone() {
        struct Panics(std::sync::atomic::AtomicBool);
        impl InvocationObserver for Panics {
            fn guest_output(&self, _: GuestStream, _: &str) {}
            fn late_failure(&self, _: &InvokeError) {}
            fn finished(&self, _: InvocationReport) {
                if self.0.swap(false, Ordering::AcqRel) {
                    panic!("observer bug");
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        let (f, _) = rt
            .prepare(
                "d",
                None,
                || Ok(wasm),
                limits(16 * MIB, Duration::from_secs(5)),
            )
            .unwrap();
        let obs = Arc::new(Panics(std::sync::atomic::AtomicBool::new(true)));
        let env = Env::from([]);
        let call = || {
            let req = http::Request::get("http://localhost/")
                .body(full_body(""))
                .unwrap();
            f.handle(req, &env, obs.clone())
        };
        let first = call().await;
        assert!(
            matches!(&first, Err(InvokeError::Internal(m)) if m.contains("panicked")),
            "{first:?}"
        );
        let second = call().await;
        assert!(
            matches!(&second, Err(InvokeError::NoResponse(_))),
            "{second:?}"
        );
    }

    /// Grows its memory a page per call and counts calls in a global;
    /// with `trap_at`, traps on that call of one instance.
    fn growing(trap_at: Option<u32>) -> String {
        let trap = trap_at
            .map(|n| format!("(if (i32.eq (global.get $n) (i32.const {n})) (then unreachable))"))
            .unwrap_or_default();
        format!(
            r#"(memory 1)
            (global $n (mut i32) (i32.const 0))
            (func (export "handle") (param i32 i32)
                (drop (memory.grow (i32.const 1)))
                (global.set $n (i32.add (global.get $n) (i32.const 1)))
                {trap})"#
        )
    }

    const PAGE: u64 = 64 << 10;

    /// An instance whose guest never answered is not kept, whatever its
    /// manifest says (the caller got an error).
    #[tokio::test]
    async fn an_instance_that_did_not_answer_is_not_reused() {
        let mut l = limits(16 * MIB, Duration::from_secs(5));
        l.instance_reuse = Some(3);
        let (_, rec) = invoke(&growing(None), l, 3).await;
        for r in rec.reports() {
            assert!(!r.reused);
            assert_eq!(r.peak_memory_bytes, 2 * PAGE);
        }
    }

    #[tokio::test]
    async fn without_the_setting_every_request_gets_a_fresh_instance() {
        let (_, rec) = invoke(&growing(None), limits(16 * MIB, Duration::from_secs(5)), 3).await;
        for r in rec.reports() {
            assert!(!r.reused);
            assert_eq!(r.peak_memory_bytes, 2 * PAGE);
        }
    }

    #[tokio::test]
    async fn a_trap_ends_the_invocation_with_a_trap() {
        let guest = r#"(func (export "handle") (param i32 i32) unreachable)"#;
        let (results, rec) = invoke(guest, limits(16 * MIB, Duration::from_secs(5)), 1).await;
        let err = results[0].clone().unwrap_err();
        assert_eq!(err.kind(), "trap", "{err:?}");
        let reports = rec.reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, Err(err));
    }

    /// A guest whose `memory.grow` is refused and that then traps (as a
    /// Rust guest aborts when allocation fails) is out of memory.
    #[tokio::test]
    async fn refused_memory_growth_then_a_trap_is_out_of_memory() {
        let guest = r#"(memory 1)
            (func (export "handle") (param i32 i32)
                (drop (memory.grow (i32.const 100)))
                unreachable)"#;
        let (results, rec) = invoke(guest, limits(MIB, Duration::from_secs(5)), 1).await;
        let err = results[0].clone().unwrap_err();
        assert_eq!(err, InvokeError::OutOfMemory { limit_bytes: MIB });
        assert_eq!(err.status(), 500);
        let reports = rec.reports();
        assert_eq!(reports[0].outcome, Err(err));
        // Its one initial page was all it was granted.
        assert_eq!(reports[0].peak_memory_bytes, 64 << 10);
    }

    /// A guest that makes more host resources than the cap (here 5,000
    /// header sets, kept) is stopped at the cap, as a trap of its own;
    /// under wasmtime's default it would return (no answer).
    #[tokio::test]
    async fn host_resources_are_capped_per_invocation() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = r#"(component
            (import "wasi:http/types@0.2.0" (instance $types
                (export "incoming-request" (type (sub resource)))
                (export "response-outparam" (type (sub resource)))
                (export "fields" (type (sub resource)))
                (export "[constructor]fields" (func (result (own 2))))))
            (alias export $types "incoming-request" (type $req))
            (alias export $types "response-outparam" (type $out))
            (alias export $types "[constructor]fields" (func $new-fields))
            (core func $new (canon lower (func $new-fields)))
            (core module $m
                (import "" "new" (func $new (result i32)))
                (func (export "handle") (param i32 i32) (local $n i32)
                    ;; 5,000 header sets, then return (without an answer).
                    (loop $l
                        (drop (call $new))
                        (local.set $n (i32.add (local.get $n) (i32.const 1)))
                        (br_if $l (i32.lt_u (local.get $n) (i32.const 5000))))))
            (core instance $i (instantiate $m
                (with "" (instance (export "new" (func $new))))))
            (func $handle (param "request" (own $req)) (param "response-out" (own $out))
                (canon lift (core func $i "handle")))
            (instance $h (export "handle" (func $handle)))
            (export "wasi:http/incoming-handler@0.2.0" (instance $h)))"#;
        let (f, _) = rt
            .prepare(
                "fields",
                None,
                || Ok(wasm.as_bytes().to_vec()),
                limits(16 * MIB, Duration::from_secs(5)),
            )
            .unwrap();
        let rec = Arc::new(Recorder::default());
        let req = http::Request::get("http://localhost/")
            .body(full_body(""))
            .unwrap();
        let started = std::time::Instant::now();
        let err = f.handle(req, &Env::from([]), rec).await.unwrap_err();
        assert!(
            matches!(&err, InvokeError::Trap(m) if m.contains("resource table has no free keys")),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped by the cap, not the timeout"
        );
    }

    /// Guests that compute for long take turns in the CPU lane: never more
    /// than its size at once, whatever their number, and each still ends
    /// at its timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spinning_guests_take_turns_in_the_cpu_lane() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir).with_cpu_lane(crate::CpuLane::with_size(1));
        let spin = proxy(r#"(func (export "handle") (param i32 i32) (loop $l (br $l)))"#);
        let timeout = Duration::from_millis(600);
        let (f, _) = rt
            .prepare("spin", None, || Ok(spin), limits(16 * MIB, timeout))
            .unwrap();
        let rec = Arc::new(Recorder::default());
        let spinners: Vec<_> = (0..3)
            .map(|_| {
                let (f, rec) = (f.clone(), rec.clone());
                tokio::spawn(async move {
                    let req = http::Request::get("http://localhost/")
                        .body(full_body(""))
                        .unwrap();
                    f.handle(req, &Env::from([]), rec).await.map(|r| r.status())
                })
            })
            .collect();
        let lane = rt.cpu_lane().clone();
        let mut seen_running = 0;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let running = lane.running();
            assert!(running <= 1, "{running} heavy guests at once");
            seen_running = seen_running.max(running);
        }
        assert_eq!(seen_running, 1, "the heavy guests never ran in the lane");
        for s in spinners {
            assert_eq!(s.await.unwrap(), Err(InvokeError::Timeout(timeout)));
        }
        // Their permits went with them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lane.running(), 0);
    }

    #[tokio::test]
    async fn a_guest_past_its_timeout_is_interrupted_as_a_timeout() {
        let guest = r#"(func (export "handle") (param i32 i32) (loop $l (br $l)))"#;
        let timeout = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let (results, rec) = invoke(guest, limits(16 * MIB, timeout), 1).await;
        assert_eq!(results[0], Err(InvokeError::Timeout(timeout)));
        assert!(started.elapsed() >= timeout);
        // The guest's run may have been cut short rather than interrupted;
        // it then reports when it is dropped, soon after `handle` returns.
        let mut reports = rec.reports();
        for _ in 0..500 {
            if !reports.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            reports = rec.reports();
        }
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, Err(InvokeError::Timeout(timeout)));
    }
}
