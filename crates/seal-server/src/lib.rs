//! The composition root: the only place that picks concrete
//! implementations (the SQLite state store, the OCI layout, the wasmtime
//! runtime, the HTTP gateway), binds the listeners, and owns the
//! background tasks. It hands back the addresses it bound and a shutdown
//! handle; nothing deeper binds ports or reads the environment.
//!
//! Every task started here is in one `JoinSet` under one cancellation
//! token: [`RunningServer::shutdown`] cancels the token and joins them
//! all, so nothing of a stopped server keeps running.

use anyhow::Context;
use seal_control::Control;
pub use seal_gateway::ConnectionLimits;
use seal_gateway::Gateway;
use seal_oci::{ArtifactStore, OciLayout};
use seal_runtime::{Runtime, RuntimeConfig};
use seal_serving::Serving;
use seal_state::StateStore;
use seal_state_postgres::PostgresStore;
use seal_state_sqlite::SqliteStore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod testing;

/// Everything `seal server` can be told, by the part it configures.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the embedded defaults keep their files (state, artifacts,
    /// compiled code, keys, generated monitoring).
    pub data_dir: PathBuf,
    /// The environment of requests that do not name one.
    pub default_environment: String,
    pub state: StateConfig,
    /// This node's name among the nodes of one shared store; `None`: the
    /// host name and the API port.
    pub node_name: Option<String>,
    /// How long the controller lease lasts unless renewed.
    pub controller_lease: std::time::Duration,
    pub artifacts: ArtifactsConfig,
    /// Where events wait: NATS JetStream (`nats://host:port[/namespace]`)
    /// shared by several nodes; `None`: the state store.
    pub events: Option<String>,
    /// How often each environment is compared with the release file last
    /// applied to it (`None`: never), and whether the controller
    /// re-applies it where it drifted.
    pub drift_interval: Option<std::time::Duration>,
    pub self_heal: bool,
    pub runtime: RuntimeSection,
    pub gateway: GatewayConfig,
    pub api: ApiConfig,
    pub telemetry: TelemetryConfig,
    /// The master key for secrets (64 hex characters); `None` = the one in
    /// `<data-dir>/master.key`, created on first start.
    pub master_key: Option<Redacted>,
    /// Address ranges (`10.0.0.0/8`, `127.0.0.1`) that webhooks and
    /// notifications may reach although they are not public.
    pub allow_outbound: Vec<String>,
}

/// Where the state (functions, versions, routes, deployments, audit) lives.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// The embedded default: one SQLite file.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database (`postgres://…`), shared by several nodes.
    Postgres { url: Redacted },
}

/// Where artifacts live and how big an upload may be.
#[derive(Debug, Clone)]
pub struct ArtifactsConfig {
    /// An OCI image layout directory: the embedded store, or the local
    /// cache of the registry.
    pub layout_dir: PathBuf,
    /// An OCI distribution registry (`oci://host:port/repository`) shared
    /// by several nodes; `None`: the layout alone.
    pub registry: Option<String>,
    pub max_upload_bytes: u64,
}

/// `seal publish oci://…@sha256:…`: a component in the Wasm OCI artifact
/// layout, pulled and verified.
pub use seal_oci_registry::{PulledComponent, pull_component};

/// Checks an `--events` address (`nats://host:port[/namespace]`).
pub fn parse_events(url: &str) -> Result<String, String> {
    seal_queues_nats::NatsLocation::parse(url).map(|_| url.to_owned())
}

/// The event queues on NATS JetStream at `url`. An unreachable NATS is
/// logged, not fatal: the node serves HTTP, ingest answers 503 until NATS
/// is back, and the client reconnects by itself. Credentials:
/// `SEAL_NATS_USER` and `SEAL_NATS_PASSWORD`.
async fn nats_queues(
    url: &str,
    state: Arc<dyn seal_state::StateStore>,
) -> anyhow::Result<Arc<dyn seal_state::Queues>> {
    let at = seal_queues_nats::NatsLocation::parse(url).map_err(anyhow::Error::msg)?;
    let credentials = match (
        std::env::var("SEAL_NATS_USER"),
        std::env::var("SEAL_NATS_PASSWORD"),
    ) {
        (Ok(u), Ok(p)) => Some((u, p)),
        _ => None,
    };
    let queues = seal_queues_nats::NatsQueues::connect(at, credentials, state)
        .await
        .map_err(anyhow::Error::msg)?;
    match queues.check().await {
        Ok(()) => {
            tracing::info!(events = %seal_state::Queues::location(&queues), "events in NATS JetStream")
        }
        Err(e) => {
            tracing::warn!(error = %e, "NATS JetStream is unavailable; event ingest answers 503 until it is back")
        }
    }
    Ok(Arc::new(queues))
}

/// Checks an `--artifacts` address (`oci://host[:port]/repository`).
pub fn parse_registry(url: &str) -> Result<String, String> {
    seal_oci_registry::RegistryLocation::parse(url).map(|_| url.to_owned())
}

/// The wasm runtime.
#[derive(Debug, Clone)]
pub struct RuntimeSection {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Instance pool size.
    pub max_instances: u32,
    /// Requests of one function in flight in one environment when its
    /// manifest declares no `max_concurrency`; `None`: a quarter of the
    /// pool.
    pub function_concurrency: Option<u32>,
    /// Guests that have computed for long (past 50 ms of wasm) running at
    /// once; the others wait their turn. `None`: one fewer than the cores.
    pub heavy_guests: Option<usize>,
}

impl RuntimeSection {
    /// The per-function default in effect.
    pub fn function_concurrency(&self) -> u32 {
        self.function_concurrency
            .unwrap_or(self.max_instances / 4)
            .max(1)
    }
}

/// The HTTP trigger.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Connection count and header-read bounds.
    pub limits: seal_gateway::ConnectionLimits,
}

/// The control API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
}

/// Logs, traces and the in-memory log ring.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Send spans over OTLP/HTTP to this collector (`http://host:4318`).
    pub otlp_endpoint: Option<String>,
    /// One JSON log line per invocation (guest output is always captured).
    pub invocation_logs: bool,
    /// Log records kept in memory for `seal logs`.
    pub log_buffer: usize,
    /// Share of new traces (no caller `traceparent`) whose spans are exported.
    pub trace_sample_ratio: f64,
}

impl ServerConfig {
    /// Defaults for everything but the addresses and the data dir; the
    /// stores live in the data dir.
    pub fn new(gateway_listen: SocketAddr, api_listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            default_environment: "production".into(),
            state: StateConfig::Sqlite {
                path: data_dir.join("state.db"),
            },
            node_name: None,
            controller_lease: seal_control::cluster::LEASE_TTL,
            artifacts: ArtifactsConfig {
                layout_dir: data_dir.join("artifacts"),
                registry: None,
                max_upload_bytes: 64 << 20,
            },
            events: None,
            drift_interval: Some(std::time::Duration::from_secs(60)),
            self_heal: false,
            runtime: RuntimeSection {
                cache_dir: data_dir.join("compiled"),
                max_instances: 1000,
                function_concurrency: None,
                heavy_guests: None,
            },
            gateway: GatewayConfig {
                listen: gateway_listen,
                limits: seal_gateway::ConnectionLimits::default(),
            },
            api: ApiConfig { listen: api_listen },
            telemetry: TelemetryConfig {
                otlp_endpoint: None,
                invocation_logs: true,
                log_buffer: 10_000,
                trace_sample_ratio: 1.0,
            },
            master_key: None,
            allow_outbound: Vec::new(),
            data_dir,
        }
    }
}

/// How often a node on a shared store reads its change revision even
/// when no change was announced (a lost announcement costs at most this).
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The machine's host name, for a node's default name.
/// The registry store over `url`, caching in `cache`. An unreachable
/// registry is logged, not fatal: the node serves what it has cached and
/// publishing answers 503 until the registry is back.
async fn registry_store(
    url: &str,
    cache: Arc<dyn ArtifactStore>,
) -> anyhow::Result<Arc<dyn ArtifactStore>> {
    let at = seal_oci_registry::RegistryLocation::parse(url).map_err(anyhow::Error::msg)?;
    let store = Arc::new(
        seal_oci_registry::RegistryStore::new(at, cache)
            .context("cannot open the artifact registry")?,
    );
    let probe = store.clone();
    match tokio::task::spawn_blocking(move || probe.check()).await? {
        Ok(()) => tracing::info!(registry = %store.location(), "artifacts in the registry"),
        Err(e) => {
            tracing::warn!(error = %e, "the artifact registry is unavailable; serving from the local cache")
        }
    }
    Ok(store)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "seal".to_owned())
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A started server.
pub struct RunningServer {
    pub gateway_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// Where the first start wrote the admin token (`None` on later starts).
    pub admin_token_file: Option<PathBuf>,
    pub control: Arc<Control>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Released when the server is dropped (after shutdown).
    _lock: DataDirLock,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, joins every
    /// background task, and returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.wait().await;
    }

    /// A handle that stops the server when cancelled.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the server is stopped (through [`Self::shutdown_handle`])
    /// and every task has ended.
    pub async fn wait(mut self) {
        self.stop.cancelled().await;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                tracing::error!(error = %e, "a server task panicked");
            }
        }
        finish(&self.control, self.tracer_provider).await;
    }
}

/// After the listeners stop: stop the deployment drivers (they resume at
/// the next start from what they committed), persist the last captured
/// requests and usage, flush the last spans.
async fn finish(control: &Control, provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>) {
    control.stop_rollouts().await;
    control.flush_captures().await;
    if let Err(e) = control.usage().flush_usage().await {
        tracing::warn!(error = %e, "cannot persist the last usage counts");
    }
    if let Some(p) = provider {
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

/// Runs `tick` every `period` until `stop` is cancelled.
fn every<F, Fut>(
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
    period: std::time::Duration,
    skip_first: bool,
    mut tick: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = stop.clone();
    tasks.spawn(async move {
        let mut interval = tokio::time::interval(period);
        if skip_first {
            interval.tick().await;
        }
        loop {
            tokio::select! {
                _ = interval.tick() => tick().await,
                () = stop.cancelled() => break,
            }
        }
    });
}

/// `<data-dir>/seal.lock`: held (an advisory `flock`) for the life of a
/// server, so a second server on the same data dir refuses to start
/// instead of serving routes the first never hears of. It holds the
/// holder's pid and API address; the kernel releases it when the process
/// ends, however it ends.
pub const DATA_DIR_LOCK: &str = "seal.lock";

struct DataDirLock {
    file: std::fs::File,
}

impl DataDirLock {
    fn acquire(dir: &Path) -> anyhow::Result<Self> {
        use std::io::Read;
        let path = dir.join(DATA_DIR_LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "a process that has not written its pid yet".to_owned(),
                    h => h.to_owned(),
                };
                anyhow::bail!(
                    "data dir {} is in use by another seal server ({holder}); stop it, or give this server another data dir",
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let lock = Self { file };
        lock.describe(&format!("pid {}", std::process::id()))?;
        Ok(lock)
    }

    /// Replaces what the lock file says of its holder.
    fn describe(&self, holder: &str) -> anyhow::Result<()> {
        use std::io::{Seek, Write};
        let mut f = &self.file;
        f.set_len(0)?;
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(format!("{holder}\n").as_bytes())?;
        Ok(())
    }
}

/// Connections the kernel completes and queues before the server accepts
/// them (capped by `net.core.somaxconn`). tokio's `bind` asks for 1024; a
/// burst of connections past the queue is left half-open on the server's
/// side, retried by the clients' kernels for seconds, and a client that
/// gives up meanwhile can leave one the server only closes at its
/// header-read timeout.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's `bind` does on Unix: a restarted server may take its port
    // back while old connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit: every gateway
/// connection is a descriptor, and the control API, the stores and the
/// compile cache need theirs when the gateway is full.
fn raise_open_file_limit(max_connections: usize) {
    const RESERVE: u64 = 1024;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + RESERVE => tracing::warn!(
            open_files = limit,
            max_connections,
            "the open-file limit is below the gateway's connection limit plus a reserve; a full gateway may starve the API"
        ),
        Ok(limit) => tracing::debug!(open_files = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Producers' events posted to the gateway: the same token check, queue
/// and durable commit as the API's ingest route, and the same JSON errors.
struct GatewayIngest(Arc<Control>);

impl seal_gateway::EventIngest for GatewayIngest {
    fn ingest(
        &self,
        environment: String,
        queue: String,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (http::StatusCode, String)> + Send>>
    {
        let control = self.0.clone();
        Box::pin(async move {
            let result = async {
                let auth = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let who = control.authenticate(auth).await?;
                control
                    .events()
                    .ingest(&who, &environment, &queue, &headers, &body)
                    .await
            }
            .await;
            match result {
                Ok(answer) => (
                    http::StatusCode::ACCEPTED,
                    serde_json::to_string(&answer).unwrap_or_default(),
                ),
                Err(e) => {
                    let e = seal_api::error::ApiError::from(e);
                    (e.status, serde_json::to_string(&e.body).unwrap_or_default())
                }
            }
        })
    }
}

/// Events functions publish from inside an invocation: the queue, the
/// contract check and the durable commit of the control plane, answered
/// to the guest as the ingest route answers a producer.
struct FunctionEvents(Arc<Control>);

impl seal_serving::EventSink for FunctionEvents {
    fn publish(
        &self,
        by: seal_serving::EmittedBy,
        queue: String,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (http::StatusCode, bytes::Bytes)> + Send>>
    {
        let control = self.0.clone();
        Box::pin(async move {
            match control
                .events()
                .publish_from(&by, &queue, &headers, &body)
                .await
            {
                Ok(answer) => (
                    http::StatusCode::ACCEPTED,
                    serde_json::to_vec(&answer).unwrap_or_default().into(),
                ),
                Err(e) => {
                    let e = seal_api::error::ApiError::from(e);
                    (
                        e.status,
                        serde_json::to_vec(&e.body).unwrap_or_default().into(),
                    )
                }
            }
        })
    }
}

/// What `seal migrate` copied and checked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Migrated {
    /// Per table: its name, rows, and the digest both stores agree on
    /// (none when the state was not migrated).
    pub tables: Vec<MigratedTable>,
    /// Audit entries, and the chain's head in both stores (equal).
    pub audit_entries: Option<u64>,
    pub audit_head: Option<String>,
    /// What was pushed to the registry, read back and verified.
    pub artifacts: Option<MigratedArtifacts>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MigratedTable {
    pub table: String,
    pub rows: u64,
    pub digest: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MigratedArtifacts {
    pub registry: String,
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// Where `seal migrate` moves a data dir's contents: the state into a
/// PostgreSQL store, the artifacts into a registry, or both.
#[derive(Debug, Clone, Default)]
pub struct MigrateTo {
    pub state: Option<Redacted>,
    pub artifacts: Option<String>,
}

/// `seal migrate`: copies the embedded state of `data_dir` (its SQLite
/// file) into the empty PostgreSQL store `to.state`, verified table by
/// table by digest and by the audit chain's head, and pushes the
/// artifacts of its layout to the registry `to.artifacts`, each blob read
/// back and re-hashed. The data dir must not be in use by a server.
/// Compiled code and the master key stay in the data dir, which a node
/// started with `--state` and `--artifacts` keeps using (its layout
/// becomes the registry's cache).
pub async fn migrate(data_dir: &Path, to: &MigrateTo) -> anyhow::Result<Migrated> {
    anyhow::ensure!(
        to.state.is_some() || to.artifacts.is_some(),
        "say where to: --to postgres://… (the state), --artifacts oci://… (the artifacts), or both"
    );
    let _lock = DataDirLock::acquire(data_dir)?;
    let mut migrated = match &to.state {
        Some(url) => migrate_state(data_dir, url).await?,
        None => Migrated::default(),
    };
    if let Some(url) = &to.artifacts {
        migrated.artifacts = Some(migrate_artifacts(data_dir, url).await?);
    }
    Ok(migrated)
}

async fn migrate_artifacts(data_dir: &Path, url: &str) -> anyhow::Result<MigratedArtifacts> {
    let dir = data_dir.join("artifacts");
    anyhow::ensure!(
        dir.join("index.json").exists(),
        "{} holds no artifact layout (no artifacts/index.json): nothing to push",
        data_dir.display()
    );
    let layout: Arc<dyn ArtifactStore> =
        Arc::new(OciLayout::open(&dir).context("cannot open the artifact layout")?);
    let at = seal_oci_registry::RegistryLocation::parse(url).map_err(anyhow::Error::msg)?;
    let registry = seal_oci_registry::RegistryStore::new(at, layout.clone())?;
    let location = registry.location().to_string();
    let imported = tokio::task::spawn_blocking(move || registry.import(&*layout))
        .await?
        .with_context(|| format!("cannot push the artifacts to {location}"))?;
    Ok(MigratedArtifacts {
        registry: location,
        manifests: imported.manifests,
        blobs: imported.blobs,
        bytes: imported.bytes,
    })
}

async fn migrate_state(data_dir: &Path, url: &Redacted) -> anyhow::Result<Migrated> {
    let file = data_dir.join("state.db");
    anyhow::ensure!(
        file.exists(),
        "{} holds no embedded state (no state.db): nothing to migrate",
        data_dir.display()
    );
    // Opened with its own backend first: its migrations bring it to the
    // schema the copy reads.
    let sqlite = SqliteStore::open(&file)
        .await
        .context("cannot open the embedded state")?;
    let before = sqlite
        .verify_audit()
        .await
        .context("cannot check the embedded audit chain")?;
    anyhow::ensure!(
        before.ok,
        "the embedded audit chain is broken ({:?}); it is not copied",
        before.first_broken
    );
    sqlite.close().await;
    let pg = PostgresStore::connect(&url.0)
        .await
        .context("cannot open the PostgreSQL store")?;
    let imported = pg
        .import_sqlite(&file)
        .await
        .map_err(|e| anyhow::anyhow!("{}", seal_state::StateError::from(e)))?;
    let after = pg
        .verify_audit()
        .await
        .context("cannot check the copied audit chain")?;
    anyhow::ensure!(
        after.ok && after.entries == before.entries && after.head == before.head,
        "the copied audit chain differs from the embedded one ({} entries, head {:?}; copied {} entries, head {:?})",
        before.entries,
        before.head,
        after.entries,
        after.head
    );
    Ok(Migrated {
        tables: imported
            .tables
            .into_iter()
            .map(|(table, rows, digest)| MigratedTable {
                table,
                rows,
                digest,
            })
            .collect(),
        audit_entries: Some(after.entries),
        audit_head: after.head,
        artifacts: None,
    })
}

pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let outbound =
        seal_control::outbound::Outbound::new(seal_control::outbound::OutboundPolicy::new(
            config
                .allow_outbound
                .iter()
                .map(|r| seal_control::outbound::OutboundPolicy::parse_range(r))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("allowed outbound ranges: {e}"))?,
        ));
    raise_open_file_limit(config.gateway.limits.max_connections);
    // The data dir first: a second server on it is refused by name before
    // it binds a port or opens a store.
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let lock = DataDirLock::acquire(&config.data_dir)?;
    // Then bind, so a busy port fails before any state is touched.
    let gateway_listener = listen(config.gateway.listen)
        .with_context(|| format!("cannot listen on {} (gateway)", config.gateway.listen))?;
    let api_listener = listen(config.api.listen)
        .with_context(|| format!("cannot listen on {} (api)", config.api.listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    lock.describe(&format!("pid {}, api {api_addr}", std::process::id()))?;

    let state: Arc<dyn StateStore> = match &config.state {
        StateConfig::Sqlite { path } => Arc::new(
            SqliteStore::open(path)
                .await
                .context("cannot open the state store")?,
        ),
        StateConfig::Postgres { url } => Arc::new(
            PostgresStore::connect(&url.0)
                .await
                .context("cannot open the state store (PostgreSQL)")?,
        ),
    };
    let layout: Arc<dyn ArtifactStore> = Arc::new(
        OciLayout::open(config.artifacts.layout_dir.clone())
            .context("cannot open the artifact store")?,
    );
    let oci = match &config.artifacts.registry {
        None => layout,
        Some(url) => registry_store(url, layout).await?,
    };
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir: config.runtime.cache_dir.clone(),
            max_instances: config.runtime.max_instances,
        })
        .context("cannot start the wasm runtime")?
        .with_cpu_lane(match config.runtime.heavy_guests {
            Some(n) => seal_runtime::CpuLane::with_size(n),
            None => seal_runtime::CpuLane::for_this_machine(),
        }),
    );
    let (tracer_provider, tracer) = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let (p, t) = seal_control::telemetry::otlp_tracer(endpoint)
                .with_context(|| format!("cannot export traces to {endpoint}"))?;
            (Some(p), Some(t))
        }
        None => (None, None),
    };
    let serving = Serving::with_admission(
        seal_serving::Telemetry {
            logs: seal_serving::logs::LogHub::new(config.telemetry.log_buffer),
            tracer: tracer.clone(),
            invocation_logs: config.telemetry.invocation_logs,
            trace_sample_ratio: config.telemetry.trace_sample_ratio,
            flag_counts: Default::default(),
        },
        seal_serving::Admission::new(
            config.runtime.max_instances,
            config.runtime.function_concurrency(),
        ),
    );
    let gateway = Gateway::with_limits(
        serving.clone(),
        &config.default_environment,
        config.gateway.limits,
    );
    gateway.set_cpu_lane(runtime.cpu_lane().clone());
    let queues = match &config.events {
        Some(url) => Some(nats_queues(url, state.clone()).await?),
        None => None,
    };
    let mut control = Control::new(
        state,
        oci,
        runtime,
        serving.clone(),
        config.artifacts.max_upload_bytes,
        config.default_environment.clone(),
        seal_control::settings::SecretBox::load_or_create(
            &config.data_dir,
            config.master_key.as_ref().map(|k| k.0.as_str()),
        )?,
    )
    .with_outbound(outbound)
    .with_tracer(tracer)
    .with_monitoring_dir(config.data_dir.join("monitoring"));
    if let Some(q) = queues {
        control = control.with_queues(q);
    }
    let control = Arc::new(control);
    control
        .set_node(seal_control::cluster::NodeIdentity {
            name: config
                .node_name
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), api_addr.port())),
            api: api_addr.to_string(),
            gateway: gateway_addr.to_string(),
            started_at: seal_state::now_ms(),
            lease: config.controller_lease,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    gateway.set_ingest(Arc::new(GatewayIngest(control.clone())));
    serving.set_event_sink(Arc::new(FunctionEvents(control.clone())));
    control
        .catalog()
        .reconcile_index()
        .await
        .context("cannot check the artifact index")?;
    control.set_gateway_addr(gateway_addr);
    // Before routes and settings are loaded: what other nodes change from
    // here on is followed (below).
    let loaded_revision = control
        .change_revision()
        .await
        .context("cannot read the state store's change revision")?;
    control
        .settings()
        .apply_all_settings()
        .await
        .context("cannot restore config and secrets")?;
    let admin_token_file = control
        .bootstrap_admin_token(&config.data_dir.join("admin.token"))
        .await?;
    control
        .reload_routes()
        .await
        .context("cannot restore routes")?;
    control
        .load_captures()
        .await
        .context("cannot restore the traffic captures")?;
    control
        .load_flags()
        .await
        .context("cannot restore the feature flags")?;

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(gateway.serve(gateway_listener, stop.clone().cancelled_owned()));
    // Membership: heartbeats and the controller lease. The controller
    // (this node alone on SQLite, at once) resumes the deployments that
    // were in progress — once the gateway serves, since their hooks and
    // gates need it — and fires cron ticks.
    tasks.spawn(control.clone().run_node(stop.clone()));
    // On a store other nodes write to, their changes reach this node's
    // gateway: announced at commit, or found by a poll every 2 s.
    tasks.spawn(
        control
            .clone()
            .follow_changes(loaded_revision, FOLLOW_POLL, stop.clone()),
    );
    // What the gateway's captures sample, persisted on every node.
    tasks.spawn(control.clone().run_capture_writer(stop.clone()));
    // Event delivery, on every node.
    tasks.spawn(control.events().clone().run_queues(stop.clone()));
    // Drift from the release files applied, on every node (its gauge is
    // every node's); self-heal on the controller alone.
    if let Some(interval) = config.drift_interval {
        tasks.spawn(
            control
                .clone()
                .run_drift_checks(interval, config.self_heal, stop.clone()),
        );
    }
    // Per-version snapshots every second, for `seal rollout status` rates.
    let sampler = control.clone();
    every(
        &mut tasks,
        &stop,
        std::time::Duration::from_secs(1),
        false,
        move || {
            sampler.rollouts().sample(&sampler.serving().table());
            std::future::ready(())
        },
    );
    // Usage (cost) persisted every 10 s; budgets checked after each flush.
    let flusher = control.clone();
    every(
        &mut tasks,
        &stop,
        std::time::Duration::from_secs(10),
        true,
        move || {
            let flusher = flusher.clone();
            async move {
                if let Err(e) = flusher.usage().flush_usage().await {
                    tracing::warn!(error = %e, "cannot persist usage");
                }
            }
        },
    );
    let api = seal_api::serve(
        api_listener,
        control.clone(),
        config.gateway.limits.header_read_timeout,
        stop.clone().cancelled_owned(),
    );
    tasks.spawn(async move {
        if let Err(e) = api.await {
            tracing::error!(error = %e, "api server failed");
        }
    });
    Ok(RunningServer {
        gateway_addr,
        api_addr,
        admin_token_file,
        control,
        stop,
        tasks,
        tracer_provider,
        _lock: lock,
    })
}
