//! The composition root: binds the listeners, opens the stores, builds the
//! runtime, restores the routes, and hands back the addresses it bound and
//! a shutdown handle. Nothing deeper binds ports or reads the environment.

use crate::api;
use crate::engine::Control;
use anyhow::Context;
use seal_gateway::Gateway;
use seal_oci::OciLayout;
use seal_runtime::{Runtime, RuntimeConfig};
use seal_state::StateStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Everything `seal server` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub gateway_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_upload_bytes: u64,
    pub default_environment: String,
    pub max_instances: u32,
    /// Send spans over OTLP/HTTP to this collector (`http://host:4318`).
    pub otlp_endpoint: Option<String>,
    /// One JSON log line per invocation (guest output is always captured).
    pub invocation_logs: bool,
    /// Log records kept in memory for `seal logs`.
    pub log_buffer: usize,
    /// Share of new traces (no caller `traceparent`) whose spans are exported.
    pub trace_sample_ratio: f64,
    /// The master key for secrets (64 hex characters); `None` = the one in
    /// `<data-dir>/master.key`, created on first start.
    pub master_key: Option<Redacted>,
}

impl ServerConfig {
    /// Defaults for everything but the addresses and the data dir.
    pub fn new(gateway_listen: SocketAddr, api_listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            gateway_listen,
            api_listen,
            data_dir,
            max_upload_bytes: 64 << 20,
            default_environment: "production".into(),
            max_instances: 1000,
            otlp_endpoint: None,
            invocation_logs: true,
            log_buffer: 10_000,
            trace_sample_ratio: 1.0,
            master_key: None,
        }
    }
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
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        finish(&self.control, self.tracer_provider).await;
    }

    /// A handle that stops the server when `true` is sent on it.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Waits until both listeners have stopped.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        finish(&self.control, self.tracer_provider).await;
    }
}

/// After the listeners stop: persist the last usage, flush the last spans.
async fn finish(control: &Control, provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>) {
    if let Err(e) = control.flush_usage().await {
        tracing::warn!(error = %e.message, "cannot persist the last usage counts");
    }
    if let Some(p) = provider {
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    // Bind first, so a busy port fails before any state is touched.
    let gateway_listener = TcpListener::bind(config.gateway_listen)
        .await
        .with_context(|| format!("cannot listen on {} (gateway)", config.gateway_listen))?;
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (api)", config.api_listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let state = StateStore::open_sqlite(&config.data_dir.join("state.db"))
        .await
        .context("cannot open the state store")?;
    let oci = Arc::new(
        OciLayout::open(config.data_dir.join("artifacts"))
            .context("cannot open the artifact store")?,
    );
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir: config.data_dir.join("compiled"),
            max_instances: config.max_instances,
        })
        .context("cannot start the wasm runtime")?,
    );
    let (tracer_provider, tracer) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (p, t) = crate::telemetry::otlp_tracer(endpoint)
                .with_context(|| format!("cannot export traces to {endpoint}"))?;
            (Some(p), Some(t))
        }
        None => (None, None),
    };
    let gateway = Gateway::new(
        &config.default_environment,
        seal_gateway::Telemetry {
            logs: seal_gateway::logs::LogHub::new(config.log_buffer),
            tracer: tracer.clone(),
            invocation_logs: config.invocation_logs,
            trace_sample_ratio: config.trace_sample_ratio,
        },
    );
    let control = Arc::new(
        Control::new(
            state,
            oci,
            runtime,
            gateway.clone(),
            config.max_upload_bytes,
            config.default_environment.clone(),
            crate::settings::SecretBox::load_or_create(
                &config.data_dir,
                config.master_key.as_ref().map(|k| k.0.as_str()),
            )?,
        )
        .with_tracer(tracer)
        .with_monitoring_dir(config.data_dir.join("monitoring")),
    );
    control
        .reconcile_index()
        .await
        .map_err(|e| anyhow::anyhow!("cannot check the artifact index: {}", e.message))?;
    control.set_gateway_addr(gateway_addr);
    control
        .apply_all_settings()
        .await
        .map_err(|e| anyhow::anyhow!("cannot restore config and secrets: {}", e.message))?;
    let admin_token_file = control
        .bootstrap_admin_token(&config.data_dir.join("admin.token"))
        .await?;
    control
        .reload_routes()
        .await
        .map_err(|e| anyhow::anyhow!("cannot restore routes: {}", e.message))?;

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut gw_rx = rx.clone();
    tasks.push(tokio::spawn(gateway.serve(gateway_listener, async move {
        let _ = gw_rx.wait_for(|stop| *stop).await;
    })));
    // Deployments that were in progress resume (or roll back) once the
    // gateway serves again: their hooks and gates need it.
    let resumer = control.clone();
    tokio::spawn(async move {
        if let Err(e) = resumer.resume_rollouts().await {
            tracing::error!(error = %e.message, "cannot resume deployments");
        }
    });
    // Per-version snapshots every second, for `seal rollout status` rates.
    let sampler = control.clone();
    let mut sampler_rx = rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => sampler.rollouts().sample(&sampler.gateway().table()),
                _ = sampler_rx.wait_for(|stop| *stop) => break,
            }
        }
    });
    // Usage (cost) persisted every 10 s; budgets checked after each flush.
    let flusher = control.clone();
    let mut flusher_rx = rx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        tick.tick().await;
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = flusher_rx.wait_for(|stop| *stop) => true,
            };
            if stop {
                break;
            }
            if let Err(e) = flusher.flush_usage().await {
                tracing::warn!(error = %e.message, "cannot persist usage");
            }
        }
    });
    let app = api::router(control.clone());
    let mut api_rx = rx;
    tasks.push(tokio::spawn(async move {
        let result = axum::serve(api_listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_rx.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "api server failed");
        }
    }));
    Ok(RunningServer {
        gateway_addr,
        api_addr,
        admin_token_file,
        control,
        shutdown,
        tasks,
        tracer_provider,
    })
}
