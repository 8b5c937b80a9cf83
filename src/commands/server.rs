//! `seal server`: parse flags into a `ServerConfig`, start, wait for a signal.

use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Gateway (data plane) address; port 0 picks a free port.
    #[arg(long, env = "SEAL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Control API address; port 0 picks a free port.
    #[arg(long, env = "SEAL_API_LISTEN", default_value = "127.0.0.1:8081")]
    api_listen: SocketAddr,

    /// Where the state lives: a PostgreSQL URL (postgres://user@host/db)
    /// shared by several nodes; default: the embedded SQLite file in the
    /// data dir. Every node on one database needs the same SEAL_MASTER_KEY.
    #[arg(long, env = "SEAL_STATE", value_parser = parse_state, value_name = "URL")]
    state: Option<String>,

    /// Where artifacts live: an OCI distribution registry,
    /// oci://host[:port]/repository (HTTPS; plain HTTP for a loopback host
    /// or with oci+http://), shared by several nodes, with the data dir's
    /// layout as a verified local cache; default: the layout alone.
    /// Credentials: SEAL_REGISTRY_USERNAME and SEAL_REGISTRY_PASSWORD.
    #[arg(long, env = "SEAL_ARTIFACTS", value_parser = seal_server::parse_registry, value_name = "URL")]
    artifacts: Option<String>,

    /// Where events wait: NATS JetStream, nats://host:port[/namespace]
    /// (namespace default `seal`: the prefix of its streams), shared by
    /// several nodes; default: the state store. Credentials:
    /// SEAL_NATS_USER and SEAL_NATS_PASSWORD.
    #[arg(long, env = "SEAL_EVENTS", value_parser = seal_server::parse_events, value_name = "URL")]
    events: Option<String>,

    /// How often each environment is compared with the release file last
    /// applied to it (seal apply); differences are the
    /// seal_drift_differences gauge, logged, and shown by seal status.
    /// 0 turns the check off.
    #[arg(long, env = "SEAL_DRIFT_INTERVAL", default_value = "1m", value_parser = parse_drift_interval, value_name = "DURATION")]
    drift_interval: std::time::Duration,

    /// Re-apply the release file of an environment that drifted from it
    /// (on the controller). Never deploys a held version: the plan refuses
    /// it and the log says so.
    #[arg(long, env = "SEAL_SELF_HEAL")]
    self_heal: bool,

    /// This node's name among the nodes of one database (seal cluster
    /// status); default: the host name and the API port.
    #[arg(long, env = "SEAL_NODE", value_parser = parse_node, value_name = "NAME")]
    node: Option<String>,

    /// How long the controller lease lasts unless renewed (every second):
    /// a dead controller is replaced within it. Nodes of one database
    /// should agree on it.
    #[arg(long, env = "SEAL_CONTROLLER_LEASE", default_value = "4s", value_parser = parse_lease, value_name = "DURATION")]
    controller_lease: std::time::Duration,

    /// Largest blob an upload may send, e.g. 64MiB, 512KiB, 1000000.
    #[arg(long, env = "SEAL_MAX_UPLOAD_SIZE", default_value = "64MiB", value_parser = parse_size)]
    max_upload_size: u64,

    /// Environment served at http://GATEWAY/<function>/….
    #[arg(long, env = "SEAL_DEFAULT_ENVIRONMENT", default_value = "production")]
    default_environment: String,

    /// Concurrent instances the pooling allocator reserves slots for.
    #[arg(long, env = "SEAL_MAX_INSTANCES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_instances: u32,

    /// Requests of one function served at once in one environment when its
    /// manifest declares no `[limits] max_concurrency` (default: a quarter
    /// of --max-instances); past it the gateway answers 429 with
    /// retry-after.
    #[arg(long, env = "SEAL_FUNCTION_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "N")]
    function_concurrency: Option<u32>,

    /// Guests that have run more than 50 ms of wasm in one invocation that
    /// may compute at once (default: one fewer than the cores, at least
    /// one); the others wait their turn, so short requests always find a
    /// worker thread.
    #[arg(long, env = "SEAL_HEAVY_GUESTS", value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    heavy_guests: Option<u32>,

    /// Export a span per invocation and per deployment transition over
    /// OTLP/HTTP (JSON) to this collector, e.g. http://127.0.0.1:4318.
    #[arg(long, env = "SEAL_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,

    /// Share of invocations without a caller's traceparent whose spans are
    /// exported (0 to 1). A caller's sampled flag is always followed, and
    /// every invocation is logged whatever its sampling.
    #[arg(long, env = "SEAL_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_ratio, value_name = "RATIO")]
    trace_sample_ratio: f64,

    /// Write one JSON log line per invocation (function, version, digest,
    /// request id, status, duration, cold start). Guest stdout/stderr are
    /// captured either way.
    #[arg(long, env = "SEAL_INVOCATION_LOGS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    invocation_logs: bool,

    /// Log records kept in memory for `seal logs` (oldest dropped first).
    #[arg(long, env = "SEAL_LOG_BUFFER", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    log_buffer: u64,

    /// Log format on stderr.
    #[arg(long, env = "SEAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// An address or CIDR range that deployment notifications and budget
    /// webhooks may reach although it is not public (loopback, private,
    /// link-local, …, are refused otherwise). Repeat, or separate with
    /// commas in SEAL_ALLOW_OUTBOUND.
    #[arg(
        long,
        env = "SEAL_ALLOW_OUTBOUND",
        value_delimiter = ',',
        value_name = "RANGE"
    )]
    allow_outbound: Vec<String>,

    /// Gateway connections open at once; one more is answered 503 with
    /// retry-after and closed. The open-file limit is raised to fit.
    #[arg(long, env = "SEAL_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,

    /// How long a gateway connection may take to send a request's headers
    /// (the first, or the next on a kept-alive connection: this is also the
    /// idle keep-alive timeout) before it is closed, e.g. 30s.
    #[arg(long, env = "SEAL_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_header_timeout, value_name = "DURATION")]
    header_read_timeout: std::time::Duration,
}

/// A node name: letters, digits and `-_.:`.
fn parse_node(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a node name is 1 to 128 letters, digits, '-', '_', '.' or ':'".into())
    }
}

/// A `postgres://` or `postgresql://` URL.
fn parse_state(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unsupported state store {:?}: give a PostgreSQL URL (postgres://user@host:5432/db), or leave --state out for the embedded SQLite file",
            s.split("://").next().unwrap_or(s)
        ))
    }
}

fn parse_lease(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(2) || d > std::time::Duration::from_secs(60) {
        return Err("give a duration from 2s to 60s (it is renewed every second)".into());
    }
    Ok(d)
}

fn parse_drift_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !d.is_zero()
        && (d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(86_400))
    {
        return Err("give a duration from 100ms to 24h, or 0 to turn the check off".into());
    }
    Ok(d)
}

fn parse_header_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(600) {
        return Err("give a duration from 100ms to 10m".into());
    }
    Ok(d)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A number from 0 to 1.
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid ratio {s:?}: give a number from 0 to 1, e.g. 0.1"
        )),
    }
}

/// `64MiB`, `512KiB`, `1GiB`, `10MB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit (KiB, MiB, GiB, KB, MB, GB, B)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use KiB, MiB, GiB, KB, MB, GB or B"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("invalid size {s:?}: must be between 1 byte and 16 EiB"))
}

/// With `--output json` the start-up report is one JSON line
/// (`{"gateway", "api", "data_dir", "admin_token_file"}`) instead of the three text lines.
pub async fn run(
    args: ServerArgs,
    data_dir: PathBuf,
    format: crate::output::OutputFormat,
) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Log lines are written by a background thread (per-invocation lines
    // must not put a write(2) on the request path); if it falls 128k lines
    // behind, lines are dropped rather than requests slowed.
    let (writer, _log_guard) =
        tracing_appender::non_blocking(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    seal_artifact::validate_environment_name(&args.default_environment)
        .map_err(|e| anyhow::anyhow!("--default-environment: {e}"))?;

    let mut config = seal_server::ServerConfig::new(args.listen, args.api_listen, data_dir.clone());
    config.default_environment = args.default_environment;
    if let Some(url) = args.state {
        config.state = seal_server::StateConfig::Postgres {
            url: seal_server::Redacted(url),
        };
    }
    config.artifacts.registry = args.artifacts;
    config.events = args.events;
    config.drift_interval = (!args.drift_interval.is_zero()).then_some(args.drift_interval);
    config.self_heal = args.self_heal;
    config.node_name = args.node;
    config.controller_lease = args.controller_lease;
    config.artifacts.max_upload_bytes = args.max_upload_size;
    config.runtime.max_instances = args.max_instances;
    config.runtime.function_concurrency = args.function_concurrency;
    config.runtime.heavy_guests = args.heavy_guests.map(|n| n as usize);
    config.allow_outbound = args.allow_outbound;
    config.gateway.limits = seal_server::ConnectionLimits {
        max_connections: args.max_connections as usize,
        header_read_timeout: args.header_read_timeout,
    };
    config.telemetry = seal_server::TelemetryConfig {
        otlp_endpoint: args.otlp_endpoint,
        invocation_logs: args.invocation_logs,
        log_buffer: args.log_buffer as usize,
        trace_sample_ratio: args.trace_sample_ratio,
    };
    // Only from the environment: a flag would show it in `ps`.
    config.master_key = std::env::var("SEAL_MASTER_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .map(seal_server::Redacted);
    let server = seal_server::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        match format {
            crate::output::OutputFormat::Text => {
                writeln!(out, "gateway listening on http://{}", server.gateway_addr)?;
                writeln!(out, "api listening on http://{}", server.api_addr)?;
                writeln!(out, "data dir {}", data_dir.display())?;
                if let Some(path) = &server.admin_token_file {
                    writeln!(
                        out,
                        "admin token written to {} (mode 0600; the CLI on this machine reads it)",
                        path.display()
                    )?;
                }
            }
            crate::output::OutputFormat::Json => writeln!(
                out,
                "{}",
                serde_json::json!({
                    "gateway": format!("http://{}", server.gateway_addr),
                    "api": format!("http://{}", server.api_addr),
                    "data_dir": data_dir,
                    "admin_token_file": server.admin_token_file,
                })
            )?,
        }
        out.flush()?;
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}

/// `seal migrate --to postgres://…`: the embedded state of the data dir
/// copied into an empty PostgreSQL store, verified by digest.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("where").required(true).multiple(true).args(["to", "artifacts"])))]
pub struct MigrateArgs {
    /// The PostgreSQL store to fill with the state (empty: a new database
    /// or schema).
    #[arg(long, value_parser = parse_state, value_name = "URL")]
    to: Option<String>,
    /// The registry to push the artifacts to (oci://host[:port]/repository):
    /// every listed artifact and attestation, each blob read back and
    /// re-hashed.
    #[arg(long, value_parser = seal_server::parse_registry, value_name = "URL")]
    artifacts: Option<String>,
}

pub async fn migrate(
    args: MigrateArgs,
    data_dir: std::path::PathBuf,
    out: crate::output::OutputFormat,
) -> anyhow::Result<()> {
    let to = seal_server::MigrateTo {
        state: args.to.map(seal_server::Redacted),
        artifacts: args.artifacts,
    };
    let m = seal_server::migrate(&data_dir, &to).await?;
    crate::output::emit(out, &m, |m| {
        for t in &m.tables {
            println!("{:<18} {:>8} rows  {}", t.table, t.rows, t.digest);
        }
        if let Some(entries) = m.audit_entries {
            println!(
                "audit chain: {entries} entries, head {} (the same in both stores)",
                m.audit_head.as_deref().unwrap_or("-")
            );
        }
        if let Some(a) = &m.artifacts {
            println!(
                "artifacts: {} manifests, {} blobs ({} bytes) pushed to {}, each read back and verified",
                a.manifests, a.blobs, a.bytes, a.registry
            );
        }
        println!(
            "start the server with this data dir and the same --state/--artifacts (the master key and compiled code stay here); give other nodes the same master key"
        );
    });
    Ok(())
}
