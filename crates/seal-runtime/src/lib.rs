//! The runtime: runs sealed components in wasmtime.
//!
//! One [`Engine`] (pooling allocator, epoch interruption) and one [`Linker`]
//! serve every function. A component is compiled once, at publish time, and
//! its compiled form cached on disk by artifact digest; a [`Function`] holds
//! the pre-instantiated component (`ProxyPre`) and its limits, and every
//! request gets a fresh `Store`.
//!
//! Invariants:
//! - nothing is compiled on the request path;
//! - a cached compiled file is deserialized only after its sha256 matches
//!   the one recorded when it was compiled (wasmtime trusts what it
//!   deserializes); otherwise the caller recompiles from the verified blob;
//! - a trap, a timeout or an out-of-memory ends that one request with an
//!   [`InvokeError`]; the engine and every other request carry on;
//! - a guest's outbound HTTP request leaves only for a host its manifest
//!   allows ([`FunctionLimits::outbound_hosts`]); any other is answered
//!   inside the guest with `HTTP-request-denied` before a socket is opened.
//!
//! This crate knows nothing of routes, versions or databases.

use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use seal_artifact::capabilities::{HostPattern, config_key_allowed};
pub use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How often the epoch advances; timeouts are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("failed to compile component: {0}")]
    Compile(String),
    #[error("component cannot be linked: {0}")]
    Link(String),
    #[error("compile cache I/O error at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime configuration error: {0}")]
    Config(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Why one invocation failed. Each is that request's failure alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeError {
    /// The guest trapped (unreachable, panic, bad memory access, …).
    Trap(String),
    /// The guest ran past its time limit.
    Timeout(Duration),
    /// The guest tried to grow memory past its limit.
    OutOfMemory { limit_bytes: u64 },
    /// The guest returned without setting a response, or set an error code.
    NoResponse(String),
    /// Every instance slot is busy: the server is at capacity, the
    /// function did nothing wrong.
    Overloaded(String),
    /// The host could not set up the invocation.
    Internal(String),
}

impl InvokeError {
    /// A short machine-readable kind: `trap`, `timeout`, `memory`, `no_response`, `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            InvokeError::Trap(_) => "trap",
            InvokeError::Timeout(_) => "timeout",
            InvokeError::OutOfMemory { .. } => "memory",
            InvokeError::NoResponse(_) => "no_response",
            InvokeError::Overloaded(_) => "overloaded",
            InvokeError::Internal(_) => "internal",
        }
    }

    /// Whether this failure is the function's fault (and so counts as an
    /// error of its version) rather than the server's.
    pub fn is_function_error(&self) -> bool {
        !matches!(self, InvokeError::Overloaded(_) | InvokeError::Internal(_))
    }

    /// The HTTP status this failure answers with.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::Timeout(_) => 504,
            InvokeError::Overloaded(_) => 503,
            _ => 500,
        }
    }
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::Trap(m) => write!(f, "function trapped: {m}"),
            InvokeError::Timeout(d) => {
                write!(f, "function exceeded its timeout of {} ms", d.as_millis())
            }
            InvokeError::OutOfMemory { limit_bytes } => write!(
                f,
                "function exceeded its memory limit of {} MiB",
                limit_bytes >> 20
            ),
            InvokeError::NoResponse(m) => write!(f, "function did not produce a response: {m}"),
            InvokeError::Overloaded(m) => write!(f, "server at capacity: {m}"),
            InvokeError::Internal(m) => write!(f, "runtime error: {m}"),
        }
    }
}

/// Which of the guest's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStream {
    Stdout,
    Stderr,
}

impl GuestStream {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// What the runtime measured about one invocation, reported once when the
/// guest's task ends (body streamed, trapped, timed out or aborted).
#[derive(Debug, Clone)]
pub struct InvocationReport {
    /// First invocation served by this loaded function in this process.
    pub cold: bool,
    /// Fresh store and instance from the pre-instantiated component.
    pub instantiate: Duration,
    /// From the call into the guest's handler to its response head (None:
    /// it never sent one).
    pub call_to_head: Option<Duration>,
    /// From the start of instantiation to the end of the guest's task: what
    /// the invocation held an instance for (the billed duration).
    pub total: Duration,
    /// The status the guest answered with, if it answered.
    pub status: Option<u16>,
    /// Largest linear memory the guest asked for (bytes).
    pub peak_memory_bytes: u64,
    /// How the invocation ended.
    pub outcome: Result<(), InvokeError>,
}

/// Told what happens during one invocation. The gateway implements it to
/// tag guest output, count failures the response head can no longer carry,
/// and write the invocation's log line, metrics and span.
pub trait InvocationObserver: Send + Sync {
    /// One line the guest wrote (without its newline).
    fn guest_output(&self, stream: GuestStream, line: &str);
    /// A failure after the response head went out (a trap or timeout while
    /// the body streams): the status cannot say so, but it still counts.
    fn late_failure(&self, error: &InvokeError);
    /// Called exactly once per invocation that reached the guest's task.
    fn finished(&self, report: InvocationReport);
}

/// Server-wide runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (`<hex digest>.cwasm`).
    pub cache_dir: PathBuf,
    /// Instances the pooling allocator keeps slots for.
    pub max_instances: u32,
}

/// Counters that say what the runtime did since start.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Components compiled from wasm (at publish, or after a cache miss).
    pub compiles: AtomicU64,
    /// Components loaded from the compile cache.
    pub cache_loads: AtomicU64,
}

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

/// Per-function limits and permissions, fixed when a version is loaded.
#[derive(Debug, Clone)]
pub struct FunctionLimits {
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// Hosts outbound requests may go to; empty = none.
    pub outbound_hosts: Arc<[HostPattern]>,
    /// Config keys (and secrets) the guest may see; `*` = all.
    pub config_keys: Arc<[String]>,
}

/// The wasmtime engine and linker shared by every function.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    cache_dir: PathBuf,
    stats: Arc<RuntimeStats>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .total_stacks(config.max_instances)
            // Interpreters compiled to wasm (Python, JS) have large tables.
            .table_elements(100_000)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20);
        // A fresh instance per request means a slot is reset per request.
        // Resetting the hot first pages with memset instead of madvise
        // avoids a page fault per touched page and a TLB-shootdown IPI per
        // reset; measured on the hello example (bench/RESULTS.md) this is
        // ~1.4x throughput. 1.25 MiB covers the 1 MiB shadow stack Rust's
        // wasm32-wasip2 target puts at the bottom of memory, plus data.
        pool.linear_memory_keep_resident(1280 << 10)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10);
        let mut cfg = Config::new();
        cfg.wasm_component_model(true).epoch_interruption(true);
        let mut pooled = cfg.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // The pool reserves address space for every slot up front; where the
        // OS refuses that (a low `ulimit -v`, say), run without it rather
        // than not at all, and say so.
        let engine = match Engine::new(&pooled) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "pooling allocator unavailable; using on-demand instance allocation");
                Engine::new(&cfg).map_err(|e| RuntimeError::Config(format!("{e:#}")))?
            }
        };

        let mut linker = Linker::<Host>::new(&engine);
        // What `wasmtime serve -Scli` provides: wasi:cli, clocks, random, io
        // (and filesystem/sockets, which are linked but grant nothing: no
        // preopens, no network access), plus wasi:http.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Config(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Config(format!("{e:#}")))?;

        std::fs::create_dir_all(&config.cache_dir).map_err(|source| RuntimeError::Cache {
            path: config.cache_dir.clone(),
            source,
        })?;
        spawn_epoch_ticker(engine.weak());
        Ok(Self {
            engine,
            linker,
            cache_dir: config.cache_dir,
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    fn cache_path(&self, digest_hex: &str) -> PathBuf {
        self.cache_dir.join(format!("{digest_hex}.cwasm"))
    }

    /// Compiles a component ahead of time, writes the compiled form to the
    /// cache and returns the sha256 (hex) of the compiled bytes, to be
    /// recorded by the caller and checked on every later load.
    pub fn compile(&self, digest_hex: &str, wasm: &[u8]) -> Result<String> {
        let compiled = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        let sha = hex::encode(Sha256::digest(&compiled));
        write_atomic(&self.cache_path(digest_hex), &compiled)?;
        Ok(sha)
    }

    /// Loads a compiled component from the cache if it is there, its hash
    /// is `expected_sha256`, and this engine accepts it. `None` means:
    /// recompile from the verified wasm.
    pub fn load_cached(&self, digest_hex: &str, expected_sha256: &str) -> Option<Component> {
        let path = self.cache_path(digest_hex);
        let bytes = std::fs::read(&path).ok()?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != expected_sha256 {
            tracing::warn!(path = %path.display(), expected = expected_sha256, actual, "compiled cache file does not match its recorded hash; recompiling");
            return None;
        }
        match deserialize(&self.engine, &bytes) {
            Ok(c) => {
                self.stats.cache_loads.fetch_add(1, Ordering::Relaxed);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compiled cache file not usable by this engine; recompiling");
                None
            }
        }
    }

    /// Compiles (or loads) and pre-instantiates: the one entry point the
    /// control plane uses. `wasm` is called only when the cache cannot be
    /// used. Returns the function and, if it was (re)compiled, the new hash.
    pub fn prepare(
        &self,
        digest_hex: &str,
        expected_sha256: Option<&str>,
        wasm: impl FnOnce() -> Result<Vec<u8>, String>,
        limits: FunctionLimits,
    ) -> Result<(Arc<Function>, Option<String>)> {
        let started = std::time::Instant::now();
        let cached = expected_sha256.and_then(|sha| self.load_cached(digest_hex, sha));
        let (component, new_sha) = match cached {
            Some(c) => (c, None),
            None => {
                let wasm = wasm().map_err(RuntimeError::Compile)?;
                let sha = self.compile(digest_hex, &wasm)?;
                let bytes = std::fs::read(self.cache_path(digest_hex)).map_err(|source| {
                    RuntimeError::Cache {
                        path: self.cache_path(digest_hex),
                        source,
                    }
                })?;
                if hex::encode(Sha256::digest(&bytes)) != sha {
                    return Err(RuntimeError::Compile(
                        "compiled file changed on disk while loading".into(),
                    ));
                }
                let c = deserialize(&self.engine, &bytes).map_err(RuntimeError::Compile)?;
                (c, Some(sha))
            }
        };
        let from_cache = new_sha.is_none();
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let pre = ProxyPre::new(pre).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let function = Function {
            pre,
            limits,
            load: LoadTimings {
                from_cache,
                load: started.elapsed(),
            },
            warm: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((Arc::new(function), new_sha))
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    // SAFETY: `bytes` were produced by `Engine::precompile_component` of an
    // engine with this configuration, and callers have checked their sha256
    // against the hash recorded when they were written; the bytes are held
    // in memory, so they cannot change between the check and this call.
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| format!("{e:#}"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let err = |source| RuntimeError::Cache {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

fn spawn_epoch_ticker(engine: wasmtime::EngineWeak) {
    std::thread::Builder::new()
        .name("seal-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            }
        })
        .ok();
}

/// Per-store state: WASI contexts, the resource table, the memory limiter,
/// the outbound-request gate.
struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    outbound: OutboundGate,
}

/// Lets a guest's outbound request through only to an allowed host.
struct OutboundGate {
    allowed: Arc<[HostPattern]>,
}

impl wasmtime_wasi_http::WasiHttpHooks for OutboundGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let uri = request.uri();
        // The name checked must be the name connected to: no userinfo
        // (`allowed.org@other.org`), no port that is not a number.
        let authority = uri.authority().map_or("", |a| a.as_str());
        if authority.contains('@') || (authority.ends_with(':') && uri.port_u16().is_none()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let host = uri.host().unwrap_or("");
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            });
        if !seal_artifact::capabilities::host_allowed(&self.allowed, host, port) {
            tracing::debug!(host, port, "outbound request denied by the manifest");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        wasmtime_wasi_http::default_hooks().send_request(request, options, fut)
    }
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

/// Caps linear memory growth and remembers whether the cap was hit, so a
/// resulting trap is reported as out-of-memory rather than a plain trap,
/// and the largest size asked for (the invocation's peak memory).
struct MemoryLimiter {
    max_bytes: usize,
    hit: bool,
    peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// One artifact, pre-instantiated, with its limits: ready to serve.
pub struct Function {
    pre: ProxyPre<Host>,
    limits: FunctionLimits,
    load: LoadTimings,
    /// Set by the first invocation: every later one is warm.
    warm: std::sync::atomic::AtomicBool,
}

impl Function {
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

    /// Runs one request in a fresh store with `env` as its environment
    /// variables. The response body keeps streaming from the guest after
    /// this returns.
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        env: &[(String, String)],
        observer: Arc<dyn InvocationObserver>,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let cold = self.take_cold();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestOutput::new(GuestStream::Stdout, observer.clone()))
            .stderr(GuestOutput::new(GuestStream::Stderr, observer.clone()))
            .envs(env);
        let mut store = Store::new(
            self.pre.engine(),
            Host {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                limiter: MemoryLimiter {
                    max_bytes: usize::try_from(self.limits.memory_bytes).unwrap_or(usize::MAX),
                    hit: false,
                    peak: 0,
                },
                outbound: OutboundGate {
                    allowed: self.limits.outbound_hosts.clone(),
                },
            },
        );
        store.limiter(|h| &mut h.limiter);
        // Every epoch tick the guest yields to the executor, so a busy guest
        // cannot starve other requests on its worker thread; past the
        // deadline the tick interrupts it instead (a `Trap::Interrupt`).
        let deadline = std::time::Instant::now() + self.limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if std::time::Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

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
        let out = store
            .data_mut()
            .http()
            .new_response_outparam_from_callback(move |response| {
                if let Ok(r) = &response {
                    head_flag.set(r.status().as_u16());
                }
                let _ = sender.send(response);
            })
            .map_err(|e| InvokeError::Internal(format!("{e:#}")))?;
        let pre = self.pre.clone();
        let memory_limit = self.limits.memory_bytes;
        let timeout = self.limits.timeout;

        // The guest runs in its own task so it can keep streaming the body
        // after the response head has been handed back. The whole task,
        // body streaming included, is bounded by the timeout: a guest
        // parked in a host wait (a sleep, a client that stopped reading)
        // does not hold its instance slot past the deadline.
        let task = tokio::task::spawn(async move {
            // Reports the invocation even if this task is aborted.
            let mut report = ReportOnDrop {
                observer: observer.clone(),
                report: Some(InvocationReport {
                    cold,
                    instantiate: Duration::ZERO,
                    call_to_head: None,
                    total: Duration::ZERO,
                    status: None,
                    peak_memory_bytes: 0,
                    outcome: Err(InvokeError::Timeout(timeout)),
                }),
                started: std::time::Instant::now(),
                call_started: None,
                head: head.clone(),
            };
            let run = async {
                let proxy = match pre.instantiate_async(&mut store).await {
                    Ok(p) => p,
                    Err(e) => return Err(instantiate_error(e)),
                };
                let now = std::time::Instant::now();
                report.call_started = Some(now);
                if let Some(r) = report.report.as_mut() {
                    r.instantiate = now - report.started;
                }
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
                    .map_err(|e| classify(e, store.data().limiter.hit, memory_limit, timeout))
            };
            let result = match tokio::time::timeout(timeout, run).await {
                Ok(result) => result,
                Err(_elapsed) => Err(InvokeError::Timeout(timeout)),
            };
            if let Err(e) = &result
                && head.sent()
            {
                // The status is already on the wire; the body is cut short.
                tracing::warn!(kind = e.kind(), error = %e, "function failed after sending its response head");
                observer.late_failure(e);
            }
            if let Some(r) = report.report.as_mut() {
                r.peak_memory_bytes = store.data().limiter.peak as u64;
                r.outcome = result.clone();
            }
            // The store first: its output streams flush their last
            // partial lines before the invocation is reported.
            drop(store);
            drop(report);
            result
        });

        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(code))) => Err(InvokeError::NoResponse(format!(
                "guest answered with error {code:?}"
            ))),
            Ok(Err(_)) => match task.await {
                Ok(Ok(())) => Err(InvokeError::NoResponse(
                    "guest returned without calling response-outparam.set".into(),
                )),
                Ok(Err(e)) => Err(e),
                Err(join) => Err(InvokeError::Internal(join.to_string())),
            },
            Err(_elapsed) => {
                task.abort();
                Err(InvokeError::Timeout(timeout))
            }
        }
    }
}

/// Whether (and when, with what status) the guest handed over its response
/// head; written by the outparam callback, read by the guest's task.
#[derive(Default)]
struct HeadSent {
    status: std::sync::atomic::AtomicU16,
    at: std::sync::OnceLock<std::time::Instant>,
}

impl HeadSent {
    fn set(&self, status: u16) {
        let _ = self.at.set(std::time::Instant::now());
        self.status.store(status, Ordering::Release);
    }

    fn sent(&self) -> bool {
        self.status.load(Ordering::Acquire) != 0
    }
}

/// Hands the invocation's report to its observer when the guest's task
/// ends, however it ends (an aborted task reports a timeout).
struct ReportOnDrop {
    observer: Arc<dyn InvocationObserver>,
    report: Option<InvocationReport>,
    started: std::time::Instant,
    call_started: Option<std::time::Instant>,
    head: Arc<HeadSent>,
}

impl Drop for ReportOnDrop {
    fn drop(&mut self) {
        let Some(mut r) = self.report.take() else {
            return;
        };
        r.total = self.started.elapsed();
        let status = self.head.status.load(Ordering::Acquire);
        r.status = (status != 0).then_some(status);
        r.call_to_head = match (self.call_started, self.head.at.get()) {
            (Some(call), Some(at)) => Some(at.saturating_duration_since(call)),
            _ => None,
        };
        self.observer.finished(r);
    }
}

/// A guest's stdout or stderr: split into lines, each handed to the
/// invocation's observer. Lines are cut at [`MAX_LINE`] bytes and an
/// invocation's output at [`MAX_OUTPUT`] (then one line says so), so a
/// guest that prints without end cannot grow the server's memory.
#[derive(Clone)]
struct GuestOutput {
    inner: Arc<std::sync::Mutex<LineBuffer>>,
}

const MAX_LINE: usize = 16 << 10;
const MAX_OUTPUT: usize = 1 << 20;

struct LineBuffer {
    stream: GuestStream,
    observer: Arc<dyn InvocationObserver>,
    partial: Vec<u8>,
    written: usize,
    truncated: bool,
}

impl LineBuffer {
    fn emit(&mut self, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        self.written += bytes.len();
        if self.written > MAX_OUTPUT {
            self.truncated = true;
            self.observer.guest_output(
                self.stream,
                &format!("[seal: output truncated after {} bytes]", MAX_OUTPUT),
            );
            return;
        }
        let line = String::from_utf8_lossy(bytes);
        self.observer
            .guest_output(self.stream, line.trim_end_matches('\r'));
    }

    fn write(&mut self, mut buf: &[u8]) {
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.emit(&buf[..nl]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&buf[..nl]);
                self.emit(&line);
            }
            buf = &buf[nl + 1..];
        }
        self.partial.extend_from_slice(buf);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            self.emit(&line);
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }
}

impl GuestOutput {
    fn new(stream: GuestStream, observer: Arc<dyn InvocationObserver>) -> Self {
        Self {
            inner: Arc::new(std::sync::Mutex::new(LineBuffer {
                stream,
                observer,
                partial: Vec::new(),
                written: 0,
                truncated: false,
            })),
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// Written synchronously (no adapter task), so the guest's lines reach
    /// the observer in order and before its invocation is reported.
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if let Ok(mut b) = self.inner.lock() {
            b.write(&bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Ok(mut b) = self.inner.lock() {
            b.write(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// An instantiation failure is the server's (no free slot) or a link
/// problem, not a guest trap.
fn instantiate_error(e: wasmtime::Error) -> InvokeError {
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

fn classify(e: wasmtime::Error, oom: bool, memory_limit: u64, timeout: Duration) -> InvokeError {
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

/// A complete body from bytes, in the body type the runtime streams.
pub fn full_body(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
