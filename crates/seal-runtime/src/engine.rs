//! The engine: one wasmtime [`Engine`] and [`Linker`] for every function,
//! and [`Runtime::prepare`], which turns an artifact into a ready
//! [`Function`].
//!
//! The engine is configured once, here: the component model, epoch
//! interruption (a thread advances the epoch every [`EPOCH_TICK`], which is
//! what timeouts and fair scheduling are measured in) and the pooling
//! allocator, sized for the server's instance count. The linker provides
//! what `wasmtime serve -Scli` does. Compiling happens here too, but only
//! at publish or after a cache miss: `prepare` loads from the compile cache
//! whenever the recorded hash allows, and counts which it did in
//! [`RuntimeStats`].

use crate::cache::{CompileCache, deserialize};
use crate::error::{Result, RuntimeError};
use crate::function::{Function, LoadTimings};
use crate::host::Host;
use crate::limits::FunctionLimits;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// How often the epoch advances; timeouts are measured in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Pool slots per component instance slot, as components take them.
const CORE_INSTANCES_PER_SLOT: u32 = 8;
const MEMORIES_PER_SLOT: u32 = 2;
const TABLES_PER_SLOT: u32 = 4;
/// What one component instance may hold at most; a component that needs
/// more cannot instantiate.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;

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

/// The wasmtime engine and linker shared by every function.
/// A compiled, linked component: one per component whatever the number
/// of functions or versions made of it.
pub(crate) struct Compiled {
    pub(crate) pre: ProxyPre<Host>,
    /// The hash of its compile cache file.
    sha256: String,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<Host>,
    cache: CompileCache,
    /// Components compiled and linked in memory, by cache key, while a
    /// function uses them.
    compiled: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Compiled>>>,
    stats: Arc<RuntimeStats>,
    /// Where guests that compute for long take turns.
    lane: crate::lane::CpuLane,
    /// Instances reusing functions may keep idle, all together: a quarter
    /// of the pool.
    idle_budget: Arc<crate::function::IdleBudget>,
    /// Instances made ahead of a request, across every function.
    prepared_budget: Arc<crate::function::IdleBudget>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        // One slot is one request's component instance. A component is
        // several core instances (a Rust component ~4: its module, the
        // WASI adapter and their shims), memories and tables, so those
        // totals are sized per slot as components really take them:
        // `max_instances` requests fit whatever the language, and the
        // component-instance count is what bounds them.
        let slots = config.max_instances;
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_SLOT))
            .total_memories(slots.saturating_mul(MEMORIES_PER_SLOT))
            .total_tables(slots.saturating_mul(TABLES_PER_SLOT))
            .total_stacks(slots)
            // What one component may hold at most.
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
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
            .async_stack_keep_resident(64 << 10)
            // Where Linux has the PAGEMAP_SCAN ioctl (6.7 and later), the
            // reset finds the pages an instance dirtied and memsets those
            // alone, not the whole 1.25 MiB: a hello touches a few pages of
            // it. Elsewhere the reset stays the memset above.
            .pagemap_scan(Enabled::Auto);
        let mut cfg = Config::new();
        cfg.wasm_component_model(true).epoch_interruption(true);
        // Seal serves wasi:http/proxy 0.2 (and runs its guests' event and
        // cron handlers through the same world): nothing it links is a
        // concurrent (component-model async) host function. Without the
        // concurrency runtime, a call enters the guest on its fiber
        // directly and a host call does not create and delete a host task
        // in the store's task table; components that use the async ABI are
        // refused at publish, with wasmtime's error.
        cfg.concurrency_support(false);
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

        let cache = CompileCache::open(config.cache_dir)?;
        spawn_epoch_ticker(engine.weak());
        Ok(Self {
            engine,
            linker,
            cache,
            compiled: Default::default(),
            stats: Arc::default(),
            lane: crate::lane::CpuLane::for_this_machine(),
            idle_budget: crate::function::IdleBudget::new(
                (config.max_instances as usize / 4).max(1),
            ),
            prepared_budget: crate::function::IdleBudget::new(
                (config.max_instances as usize / 4)
                    .clamp(1, crate::function::MAX_PREPARED_INSTANCES),
            ),
        })
    }

    /// Heavy guests take turns in `lane` (by default, one fewer at once
    /// than this machine's cores).
    pub fn with_cpu_lane(mut self, lane: crate::lane::CpuLane) -> Self {
        self.lane = lane;
        self
    }

    pub fn cpu_lane(&self) -> &crate::lane::CpuLane {
        &self.lane
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
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
        self.cache.store(digest_hex, &compiled)
    }

    /// Loads a compiled component from the cache if it is there, its hash
    /// is `expected_sha256`, and this engine accepts it. `None` means:
    /// recompile from the verified wasm.
    pub fn load_cached(&self, digest_hex: &str, expected_sha256: &str) -> Option<Component> {
        let bytes = self.cache.read_verified(digest_hex, expected_sha256)?;
        match deserialize(&self.engine, &bytes) {
            Ok(c) => {
                self.stats.cache_loads.fetch_add(1, Ordering::Relaxed);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %self.cache.path(digest_hex).display(), error = %e, "compiled cache file not usable by this engine; recompiling");
                None
            }
        }
    }

    /// Compiles (or loads) and pre-instantiates: the one entry point the
    /// control plane uses. `key` names the component (its digest): every
    /// function made of the same component shares one compiled form, in
    /// memory while one of them is loaded and in the compile cache. `wasm`
    /// is called only when neither can be used. Returns the function and,
    /// when the compiled form's hash is not `expected_sha256` (it was
    /// compiled, or the caller did not know it), that hash.
    pub fn prepare(
        &self,
        key: &str,
        expected_sha256: Option<&str>,
        wasm: impl FnOnce() -> Result<Vec<u8>, String>,
        limits: FunctionLimits,
    ) -> Result<(Arc<Function>, Option<String>)> {
        let started = std::time::Instant::now();
        let shared = self
            .compiled
            .lock()
            .ok()
            .and_then(|m| m.get(key).and_then(std::sync::Weak::upgrade));
        // (compiled, whether it was compiled now)
        let (compiled, fresh) = match shared {
            Some(c) => (c, false),
            None => {
                let cached = expected_sha256.and_then(|sha| self.load_cached(key, sha));
                let fresh = cached.is_none();
                let (component, sha) = match cached {
                    Some(c) => (c, expected_sha256.unwrap_or_default().to_owned()),
                    None => {
                        let wasm = wasm().map_err(RuntimeError::Compile)?;
                        let sha = self.compile(key, &wasm)?;
                        let bytes = self.cache.read_back(key, &sha)?;
                        let c = deserialize(&self.engine, &bytes).map_err(RuntimeError::Compile)?;
                        (c, sha)
                    }
                };
                let pre = self
                    .linker
                    .instantiate_pre(&component)
                    .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
                let pre = ProxyPre::new(pre).map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
                let compiled = Arc::new(Compiled { pre, sha256: sha });
                if let Ok(mut m) = self.compiled.lock() {
                    m.retain(|_, c| c.strong_count() > 0);
                    m.insert(key.to_owned(), Arc::downgrade(&compiled));
                }
                (compiled, fresh)
            }
        };
        let new_sha = (fresh || expected_sha256 != Some(compiled.sha256.as_str()))
            .then(|| compiled.sha256.clone());
        let load = LoadTimings {
            from_cache: !fresh,
            load: started.elapsed(),
        };
        Ok((
            Arc::new(Function::new(
                compiled,
                limits,
                load,
                self.lane.clone(),
                self.idle_budget.clone(),
                self.prepared_budget.clone(),
            )),
            new_sha,
        ))
    }
}

/// The component source [`Loader::prepare`] calls when the compile cache
/// cannot be used: the verified component bytes, or why there are none.
pub type ComponentSource<'a> = Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send + 'a>;

/// What the control plane needs of a runtime, and all it may know of one:
/// a verified component in, a pre-instantiated [`Function`] out, and the
/// counters it reports. The composition root hands it a [`Runtime`]; no
/// other crate names the engine.
pub trait Loader: Send + Sync {
    /// See [`Runtime::prepare`].
    fn prepare(
        &self,
        digest_hex: &str,
        expected_sha256: Option<&str>,
        wasm: ComponentSource<'_>,
        limits: FunctionLimits,
    ) -> Result<(Arc<Function>, Option<String>)>;

    fn stats(&self) -> &RuntimeStats;
}

impl Loader for Runtime {
    fn prepare(
        &self,
        digest_hex: &str,
        expected_sha256: Option<&str>,
        wasm: ComponentSource<'_>,
        limits: FunctionLimits,
    ) -> Result<(Arc<Function>, Option<String>)> {
        Runtime::prepare(self, digest_hex, expected_sha256, wasm, limits)
    }

    fn stats(&self) -> &RuntimeStats {
        Runtime::stats(self)
    }
}

/// Advances `engine`'s epoch every [`EPOCH_TICK`] until the engine is
/// dropped.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::sha256_hex;
    use crate::testing::{RETURNS, counts, limits, proxy, runtime};
    use std::cell::Cell;

    fn lim() -> FunctionLimits {
        limits(16 << 20, Duration::from_secs(5))
    }

    /// Publishing compiles; a later load with the recorded hash comes from
    /// the cache without compiling and without asking for the wasm.
    #[test]
    fn a_cached_file_matching_its_hash_is_loaded_not_compiled() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        let (f, sha) = rt.prepare("d1", None, || Ok(wasm.clone()), lim()).unwrap();
        let sha = sha.unwrap();
        assert!(!f.load_timings().from_cache);
        assert_eq!(counts(&rt), (1, 0));
        assert_eq!(
            sha,
            sha256_hex(&std::fs::read(rt.cache.path("d1")).unwrap())
        );
        // No function of it left in memory: the next load reads the cache.
        drop(f);

        let asked = Cell::new(false);
        let wasm_source = || {
            asked.set(true);
            Err("the wasm must not be needed".to_owned())
        };
        let (f, new_sha) = rt.prepare("d1", Some(&sha), wasm_source, lim()).unwrap();
        assert_eq!(new_sha, None);
        assert!(f.load_timings().from_cache);
        assert!(!asked.get());
        assert_eq!(counts(&rt), (1, 1));
    }

    /// The engine runs without wasmtime's concurrency runtime (see
    /// `Runtime::new`): a component that uses the component model's async
    /// ABI is refused when it is compiled, with an error that says why.
    #[test]
    fn a_component_using_the_async_abi_is_refused_at_compile() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wat = r#"(component
            (core func $inc (canon backpressure.inc))
            (core module $m (import "" "inc" (func)))
            (core instance (instantiate $m (with "" (instance (export "inc" (func $inc))))))
        )"#;
        let err = rt.compile("async", wat.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("concurrency") || err.contains("async"),
            "{err}"
        );
        assert_eq!(counts(&rt), (0, 0));
        // A component of the proxy world compiles on the same engine.
        rt.compile("proxy", &proxy(RETURNS)).unwrap();
        assert_eq!(counts(&rt), (1, 0));
    }

    /// Functions made of one component share its compiled form: while one
    /// is loaded the others neither compile nor read the cache, each keeps
    /// its own limits, and the hash they are told is the shared file's.
    #[test]
    fn functions_of_one_component_share_one_compile() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        let (a, sha) = rt.prepare("c", None, || Ok(wasm.clone()), lim()).unwrap();
        let sha = sha.unwrap();
        let never = || Err("the wasm must not be needed".to_owned());
        let (b, b_sha) = rt
            .prepare("c", None, never, limits(32 << 20, Duration::from_secs(1)))
            .unwrap();
        assert_eq!(b_sha.as_deref(), Some(sha.as_str()), "told the shared hash");
        let (c, c_sha) = rt.prepare("c", Some(&sha), never, lim()).unwrap();
        assert_eq!(c_sha, None);
        assert_eq!(counts(&rt), (1, 0), "one compile, no cache read");
        assert!(b.load_timings().from_cache);
        assert_eq!(a.limits().memory_bytes, 16 << 20);
        assert_eq!(b.limits().memory_bytes, 32 << 20);
        // Another component is compiled apart.
        let other = proxy(r#"(func (export "handle") (param i32 i32)) (func (export "other"))"#);
        let (_d, _) = rt.prepare("o", None, || Ok(other), lim()).unwrap();
        assert_eq!(counts(&rt), (2, 0));
        // Once none is loaded, the shared form leaves memory: the cache
        // file (hash-checked) serves the next load.
        drop((a, b, c));
        let (_e, e_sha) = rt.prepare("c", Some(&sha), never, lim()).unwrap();
        assert_eq!(e_sha, None);
        assert_eq!(counts(&rt), (2, 1));
    }

    /// A damaged shared file is recompiled, never loaded, and every
    /// function of the component is told the new hash.
    #[test]
    fn a_damaged_shared_file_is_recompiled_for_every_function_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        let (f, sha) = rt.prepare("c", None, || Ok(wasm.clone()), lim()).unwrap();
        let sha = sha.unwrap();
        drop(f);
        let mut bytes = std::fs::read(rt.cache.path("c")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(rt.cache.path("c"), &bytes).unwrap();
        let (a, a_sha) = rt
            .prepare("c", Some(&sha), || Ok(wasm.clone()), lim())
            .unwrap();
        assert!(!a.load_timings().from_cache);
        let new = a_sha.unwrap();
        assert_eq!(
            new,
            sha256_hex(&std::fs::read(rt.cache.path("c")).unwrap()),
            "the damaged file was replaced"
        );
        // A second version of the same component, recorded with the old
        // hash, shares the recompiled form and is told its hash where it
        // differs (a compile is deterministic, so it may not).
        let (_b, b_sha) = rt
            .prepare("c", Some(&sha), || Err("not needed".into()), lim())
            .unwrap();
        assert_eq!(b_sha, (new != sha).then_some(new));
        assert_eq!(counts(&rt), (2, 0));
    }

    /// A cached file replaced by another component's compiled form (valid
    /// for this engine, so only the hash check stands in its way) is not
    /// deserialized: the function is recompiled from its wasm.
    #[test]
    fn a_cached_file_not_matching_its_hash_is_recompiled_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        let (_, sha) = rt.prepare("d1", None, || Ok(wasm.clone()), lim()).unwrap();
        let sha = sha.unwrap();
        let other = proxy(r#"(func (export "handle") (param i32 i32)) (func (export "other"))"#);
        let other_sha = rt.compile("d2", &other).unwrap();
        assert_ne!(other_sha, sha);
        std::fs::copy(rt.cache.path("d2"), rt.cache.path("d1")).unwrap();
        assert_eq!(counts(&rt), (2, 0));
        // The swapped-in file is one this engine would load.
        assert!(rt.load_cached("d1", &other_sha).is_some());
        assert_eq!(counts(&rt), (2, 1));

        let asked = Cell::new(false);
        let wasm_source = || {
            asked.set(true);
            Ok(wasm.clone())
        };
        let (f, new_sha) = rt.prepare("d1", Some(&sha), wasm_source, lim()).unwrap();
        assert!(asked.get());
        assert!(!f.load_timings().from_cache);
        assert_eq!(counts(&rt), (3, 1), "a compile, not a cache load");
        // The recompiled file replaced the swapped-in one, and the new hash
        // returned for recording is its hash.
        let new_sha = new_sha.unwrap();
        assert_ne!(new_sha, other_sha);
        assert_eq!(
            new_sha,
            sha256_hex(&std::fs::read(rt.cache.path("d1")).unwrap())
        );
    }

    /// A file that matches its recorded hash but that this engine does not
    /// accept (here: not a compiled component at all) is recompiled too.
    #[test]
    fn a_cached_file_the_engine_rejects_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        rt.compile("d1", &wasm).unwrap();
        std::fs::write(rt.cache.path("d1"), b"not a compiled component").unwrap();
        let garbage_sha = sha256_hex(b"not a compiled component");
        assert!(rt.load_cached("d1", &garbage_sha).is_none());
        let (f, new_sha) = rt
            .prepare("d1", Some(&garbage_sha), || Ok(wasm.clone()), lim())
            .unwrap();
        assert!(new_sha.is_some());
        assert!(!f.load_timings().from_cache);
        assert_eq!(counts(&rt), (2, 0));
    }

    #[test]
    fn a_missing_cached_file_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let wasm = proxy(RETURNS);
        let sha = rt.compile("d1", &wasm).unwrap();
        std::fs::remove_file(rt.cache.path("d1")).unwrap();
        let (_, new_sha) = rt
            .prepare("d1", Some(&sha), || Ok(wasm.clone()), lim())
            .unwrap();
        assert!(new_sha.is_some());
        assert_eq!(counts(&rt), (2, 0));
    }

    #[test]
    fn a_component_that_is_not_a_proxy_fails_to_link() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir);
        let err = rt
            .prepare("d1", None, || Ok(b"(component)".to_vec()), lim())
            .err()
            .unwrap();
        assert!(matches!(err, RuntimeError::Link(_)), "{err}");
        let err = rt
            .prepare("d2", None, || Ok(b"not wasm".to_vec()), lim())
            .err()
            .unwrap();
        assert!(matches!(err, RuntimeError::Compile(_)), "{err}");
    }
}
