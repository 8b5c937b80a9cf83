//! The gateway: Seal's data plane.
//!
//! A hyper server, separate from the control API, that resolves
//! environment + function from the request, picks a version from the route,
//! and hands the request to that version's pre-instantiated component.
//!
//! Invariants:
//! - the request path takes no lock and touches no database: the
//!   [`RouteTable`] is an immutable snapshot behind an `ArcSwap`, replaced
//!   whole by the control plane after a deployment is committed;
//! - a request holds the `Arc` of the backend it started on, so a swap never
//!   moves or fails a request in flight;
//! - every response names the version and artifact digest that produced it
//!   (`seal-version`, `seal-digest`), errors included.
//!
//! This crate does not know where routes come from; it is handed tables.

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use seal_runtime::{Function, HyperOutgoingBody, full_body};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub mod invocation;
pub mod logs;
pub mod telemetry;
pub use invocation::Telemetry;
pub use telemetry::{ColdStart, ErrorKind, Snapshot, VersionStats};

pub const HEADER_VERSION: HeaderName = HeaderName::from_static("seal-version");
pub const HEADER_DIGEST: HeaderName = HeaderName::from_static("seal-digest");

/// One version of a route, ready to serve.
#[derive(Clone)]
pub struct Backend {
    pub environment: String,
    pub function_name: String,
    /// The same names, shared by this version's log records.
    pub tags: Arc<logs::VersionTags>,
    pub version: u64,
    pub digest: String,
    pub weight: u32,
    pub function: Arc<Function>,
    pub stats: Arc<VersionStats>,
    version_header: HeaderValue,
    digest_header: HeaderValue,
    /// What the guest sees in its environment whatever the settings: which
    /// function, environment, version and artifact it is.
    env: Arc<[(String, String)]>,
    /// The config and secrets of this function in this environment (shared
    /// by every version on the route, replaced when they change).
    settings: Arc<SettingsSlot>,
    /// `env` plus the settings this version's manifest lets it see, built
    /// once per settings revision.
    guest_env: Arc<ArcSwap<GuestEnv>>,
}

/// The config values and (decrypted) secrets of a function in an
/// environment, as guests receive them. `Debug` shows keys, never values.
#[derive(Default)]
pub struct Settings {
    /// The revision of the last change (0 = never set).
    pub revision: i64,
    pub vars: Vec<(String, String)>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("revision", &self.revision)
            .field(
                "keys",
                &self.vars.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where the current [`Settings`] of one function in one environment live.
#[derive(Debug, Default)]
pub struct SettingsSlot(ArcSwap<Settings>);

/// A guest's environment for one settings revision.
struct GuestEnv {
    revision: i64,
    vars: Arc<[(String, String)]>,
}

impl Backend {
    /// The guest's environment variables and the settings revision they
    /// come from: Seal's own `SEAL_*` variables, then each config value or
    /// secret whose key the manifest declares.
    pub fn guest_env(&self) -> (i64, Arc<[(String, String)]>) {
        let settings = self.settings.0.load();
        let cached = self.guest_env.load();
        if cached.revision == settings.revision {
            return (cached.revision, cached.vars.clone());
        }
        let declared = &self.function.limits().config_keys;
        let vars: Arc<[(String, String)]> = self
            .env
            .iter()
            .cloned()
            .chain(
                settings
                    .vars
                    .iter()
                    .filter(|(k, _)| seal_runtime::config_key_allowed(declared, k))
                    .cloned(),
            )
            .collect();
        self.guest_env.store(Arc::new(GuestEnv {
            revision: settings.revision,
            vars: vars.clone(),
        }));
        (settings.revision, vars)
    }

    pub fn load_timings(&self) -> seal_runtime::LoadTimings {
        self.function.load_timings()
    }

    /// The same version (same loaded function, same live stats) at
    /// another weight.
    pub fn with_weight(&self, weight: u32) -> Backend {
        Backend {
            weight,
            ..self.clone()
        }
    }
}

/// The versions serving one function in one environment.
#[derive(Clone)]
pub struct Route {
    pub environment: String,
    pub function: String,
    pub backends: Vec<Arc<Backend>>,
    /// Callers with the same value of this header get the same version.
    pub sticky_header: Option<HeaderName>,
    /// The version under deployment, served on the preview host
    /// `<fn>--preview.<env>.localhost` whatever its weight.
    pub preview: Option<u64>,
    total_weight: u32,
}

impl Route {
    pub fn new(environment: &str, function: &str, backends: Vec<Backend>) -> Self {
        Self::from_arcs(
            environment,
            function,
            backends.into_iter().map(Arc::new).collect(),
        )
    }

    /// A route over backends that may already serve elsewhere (a step of a
    /// deployment reuses the loaded functions and their live stats).
    pub fn from_arcs(environment: &str, function: &str, backends: Vec<Arc<Backend>>) -> Self {
        let total_weight = backends.iter().map(|b| b.weight).sum();
        Self {
            environment: environment.to_owned(),
            function: function.to_owned(),
            backends,
            sticky_header: None,
            preview: None,
            total_weight,
        }
    }

    pub fn with_sticky_header(mut self, header: Option<HeaderName>) -> Self {
        self.sticky_header = header;
        self
    }

    pub fn with_preview(mut self, version: Option<u64>) -> Self {
        self.preview = version;
        self
    }

    /// `seal-version` override if it names a version of this route, else
    /// the sticky key's hash, else a weighted random choice.
    ///
    /// A sticky caller's ticket is a hash of its key, fixed for the life of
    /// the deployment; the candidate is listed first, so a ticket that fell
    /// on the candidate at 10% still falls on it at 50%.
    fn pick(&self, requested: Option<u64>, sticky: Option<&[u8]>) -> Option<&Arc<Backend>> {
        let ticket = if self.total_weight == 0 {
            0
        } else if let Some(key) = sticky {
            sticky_ticket(key, self.total_weight)
        } else {
            rand::random_range(0..self.total_weight)
        };
        let i = choose(
            self.backends.iter().map(|b| (b.version, b.weight)),
            requested,
            ticket,
        )?;
        self.backends.get(i)
    }
}

/// Index of the version to serve: the requested one if present (even at
/// weight 0, e.g. a blue/green preview), else the one whose cumulative
/// weight range holds `ticket` (drawn uniformly from `0..total`).
fn choose(
    versions: impl Iterator<Item = (u64, u32)> + Clone,
    requested: Option<u64>,
    mut ticket: u32,
) -> Option<usize> {
    if let Some(r) = requested
        && let Some(i) = versions.clone().position(|(v, _)| v == r)
    {
        return Some(i);
    }
    for (i, (_, weight)) in versions.enumerate() {
        if ticket < weight {
            return Some(i);
        }
        ticket -= weight;
    }
    None
}

/// A stable ticket in `0..total` for a sticky key: the first 8 bytes of
/// its SHA-256 (stable across restarts and builds, unlike `DefaultHasher`).
fn sticky_ticket(key: &[u8], total: u32) -> u32 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    // Map onto 0..100 first so the same key holds the same place in the
    // weight space whatever the weights add up to.
    let percent = u64::from_be_bytes(first) % 100;
    ((percent * u64::from(total)) / 100) as u32
}

/// An immutable snapshot of every route, keyed by (environment, function).
#[derive(Clone, Default)]
pub struct RouteTable {
    /// environment → function → route; nested so lookups borrow `&str`.
    routes: HashMap<String, HashMap<String, Arc<Route>>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let mut table: HashMap<String, HashMap<String, Arc<Route>>> = HashMap::new();
        for r in routes {
            table
                .entry(r.environment.clone())
                .or_default()
                .insert(r.function.clone(), Arc::new(r));
        }
        Self { routes: table }
    }

    pub fn get(&self, environment: &str, function: &str) -> Option<&Arc<Route>> {
        self.routes.get(environment)?.get(function)
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values().flat_map(|m| m.values())
    }
}

/// A version in an environment, as the registry of live counters knows it.
#[derive(Clone)]
pub struct VersionEntry {
    pub environment: String,
    pub function: String,
    pub version: u64,
    pub digest: String,
    pub stats: Arc<VersionStats>,
}

/// The data plane: holds the current route table and serves HTTP.
pub struct Gateway {
    table: ArcSwap<RouteTable>,
    default_environment: String,
    telemetry: Arc<Telemetry>,
    /// Live counters of every version that has served in this process,
    /// by (environment, function, version): kept after a version leaves its
    /// route so its counters never go backwards.
    registry: std::sync::Mutex<HashMap<(String, String, u64), VersionEntry>>,
    /// Settings of each function in each environment, by (environment,
    /// function).
    settings: std::sync::Mutex<HashMap<(String, String), Arc<SettingsSlot>>>,
}

impl Gateway {
    pub fn new(default_environment: &str, telemetry: Telemetry) -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            default_environment: default_environment.to_owned(),
            telemetry: Arc::new(telemetry),
            registry: std::sync::Mutex::default(),
            settings: std::sync::Mutex::default(),
        })
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The live counters of a version in an environment (created on first
    /// use, then the same for the life of the process).
    pub fn stats_for(
        &self,
        environment: &str,
        function: &str,
        version: u64,
        digest: &str,
    ) -> Arc<VersionStats> {
        let mut reg = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reg.entry((environment.to_owned(), function.to_owned(), version))
            .or_insert_with(|| VersionEntry {
                environment: environment.to_owned(),
                function: function.to_owned(),
                version,
                digest: digest.to_owned(),
                stats: Arc::default(),
            })
            .stats
            .clone()
    }

    /// The counters of a version that has served here, if it has.
    pub fn registered_stats(
        &self,
        environment: &str,
        function: &str,
        version: u64,
    ) -> Option<Arc<VersionStats>> {
        let reg = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reg.get(&(environment.to_owned(), function.to_owned(), version))
            .map(|e| e.stats.clone())
    }

    /// The settings slot of a function in an environment (created empty on
    /// first use, then the same for the life of the process).
    pub fn settings_slot(&self, environment: &str, function: &str) -> Arc<SettingsSlot> {
        self.settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((environment.to_owned(), function.to_owned()))
            .or_default()
            .clone()
    }

    /// Replaces the settings of a function in an environment: the next
    /// invocation of any of its versions sees them.
    pub fn set_settings(&self, environment: &str, function: &str, settings: Settings) {
        self.settings_slot(environment, function)
            .0
            .store(Arc::new(settings));
    }

    /// A backend for a version, counting into its registered stats (so
    /// every route naming the version counts into the same ones) and
    /// reading its function's settings in that environment.
    pub fn backend(
        &self,
        environment: &str,
        function: &str,
        version: u64,
        digest: &str,
        weight: u32,
        loaded: Arc<Function>,
    ) -> Backend {
        let stats = self.stats_for(environment, function, version, digest);
        let settings = self.settings_slot(environment, function);
        let env = [
            ("SEAL_FUNCTION", function.to_owned()),
            ("SEAL_ENVIRONMENT", environment.to_owned()),
            ("SEAL_VERSION", version.to_string()),
            ("SEAL_DIGEST", digest.to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        Backend {
            env: Arc::from(env),
            settings,
            guest_env: Arc::new(ArcSwap::from_pointee(GuestEnv {
                revision: -1,
                vars: Arc::from([]),
            })),
            tags: Arc::new(logs::VersionTags {
                function: function.to_owned(),
                environment: environment.to_owned(),
                version,
                digest: digest.to_owned(),
            }),
            environment: environment.to_owned(),
            function_name: function.to_owned(),
            version,
            digest: digest.to_owned(),
            weight,
            function: loaded,
            stats,
            version_header: HeaderValue::from(version),
            digest_header: HeaderValue::from_str(digest)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        }
    }

    /// Every version that has served in this process, sorted.
    pub fn versions(&self) -> Vec<VersionEntry> {
        let reg = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<VersionEntry> = reg.values().cloned().collect();
        out.sort_by(|a, b| {
            (&a.function, &a.environment, a.version).cmp(&(&b.function, &b.environment, b.version))
        });
        out
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Atomically replaces the route table. Requests already running keep
    /// the backends they picked.
    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    /// Accepts connections until `shutdown` resolves, then lets in-flight
    /// requests finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        tokio::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "gateway accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let service = hyper::service::service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "gateway connection ended with an error");
                }
            });
        }
        graceful.shutdown().await;
    }

    /// Serves one request.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let started = std::time::Instant::now();
        let (route, uri, target_preview) = {
            let Some(target) = resolve(&req, &self.default_environment) else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no function named in the request: use http://GATEWAY/<function>/… or Host: <function>.<environment>.localhost",
                    None,
                );
            };
            // Take the route's Arc and let the snapshot guard go at once: the
            // request keeps what it picked even if the table is swapped.
            let route = self
                .table
                .load()
                .get(target.environment, target.function)
                .cloned();
            let Some(route) = route else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!(
                        "no route for function {:?} in environment {:?}",
                        target.function, target.environment
                    ),
                    None,
                );
            };
            match function_uri(&req, &target.path) {
                Ok(uri) => (route, uri, target.preview),
                Err(msg) => {
                    return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg, None);
                }
            }
        };
        // The function sees the path after `/<function>`.
        *req.uri_mut() = uri;
        let requested = if target_preview {
            route.preview
        } else {
            req.headers()
                .get(&HEADER_VERSION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if target_preview && requested.is_none() {
            return error_response(
                StatusCode::NOT_FOUND,
                "no_preview",
                &format!(
                    "{} has no deployment in progress in {}: nothing to preview",
                    route.function, route.environment
                ),
                None,
            );
        }
        let sticky = route
            .sticky_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .map(|v| v.as_bytes().to_vec());
        let Some(backend) = route.pick(requested, sticky.as_deref()).cloned() else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_version",
                "the route has no version with traffic",
                None,
            );
        };
        let (ids, request_id) =
            invocation::correlate(req.headers(), self.telemetry.trace_sample_ratio);
        invocation::propagate(req.headers_mut(), &ids, &request_id);
        let request_id_header = HeaderValue::from_str(&request_id).ok();
        let (config_revision, env) = backend.guest_env();
        let invocation = Arc::new(invocation::Invocation {
            config_revision,
            backend: backend.clone(),
            telemetry: self.telemetry.clone(),
            request_id: Arc::from(request_id),
            ids,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            arrived: started,
            arrived_wall: std::time::SystemTime::now(),
        });
        let mut resp = match backend.function.handle(req, &env, invocation).await {
            Ok(resp) => {
                backend
                    .stats
                    .record(started.elapsed(), resp.status().is_server_error());
                resp
            }
            Err(e) => {
                // An overloaded pool is the platform's answer, not the
                // version's: it counts as a request but not an error.
                backend
                    .stats
                    .record(started.elapsed(), e.is_function_error());
                tracing::warn!(
                    function = %route.function, environment = %route.environment,
                    version = backend.version, digest = %backend.digest,
                    kind = e.kind(), error = %e, "invocation failed"
                );
                let status =
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut resp = error_response(status, e.kind(), &e.to_string(), Some(&backend));
                if let Some(id) = request_id_header {
                    resp.headers_mut().insert(invocation::X_REQUEST_ID, id);
                }
                return resp;
            }
        };
        stamp(&mut resp, &backend);
        if let Some(id) = request_id_header
            && !resp.headers().contains_key(invocation::X_REQUEST_ID)
        {
            resp.headers_mut().insert(invocation::X_REQUEST_ID, id);
        }
        resp
    }
}

struct Target<'a> {
    environment: &'a str,
    function: &'a str,
    /// Path and query the function sees.
    path: std::borrow::Cow<'a, str>,
    /// `<fn>--preview.<env>.localhost`: the version under deployment.
    preview: bool,
}

/// `Host: <fn>.<env>.localhost` picks the environment explicitly;
/// otherwise the first path segment is the function in the default one.
fn resolve<'a, B>(req: &'a Request<B>, default_env: &'a str) -> Option<Target<'a>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Some(prefix) = host.strip_suffix(".localhost") {
        let mut parts = prefix.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(f), Some(e), None) if !f.is_empty() && !e.is_empty() => {
                let (function, preview) = split_preview(f);
                return Some(Target {
                    environment: e,
                    function,
                    path: path_and_query.into(),
                    preview,
                });
            }
            (Some(f), None, None) if !f.is_empty() => {
                let (function, preview) = split_preview(f);
                return Some(Target {
                    environment: default_env,
                    function,
                    path: path_and_query.into(),
                    preview,
                });
            }
            _ => {}
        }
    }
    let rest = path_and_query.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (function, tail) = rest.split_at(end);
    if function.is_empty() {
        return None;
    }
    let path = if tail.starts_with('/') {
        tail.into()
    } else {
        format!("/{tail}").into()
    };
    Some(Target {
        environment: default_env,
        function,
        path,
        preview: false,
    })
}

/// `hello--preview` → (`hello`, true). Function names cannot contain
/// `--` followed by `preview` at the end and mean something else: the
/// name rule allows it, so a function literally named `x--preview` is
/// reachable by path only.
fn split_preview(host_label: &str) -> (&str, bool) {
    match host_label.strip_suffix("--preview") {
        Some(f) if !f.is_empty() => (f, true),
        _ => (host_label, false),
    }
}

/// The URI the function sees: its own path, absolute (wasi:http wants an
/// authority).
fn function_uri<B>(req: &Request<B>, path: &str) -> Result<Uri, String> {
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost")
        .to_owned();
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("invalid request URI: {e}"))
}

fn stamp(resp: &mut Response<HyperOutgoingBody>, backend: &Backend) {
    let h = resp.headers_mut();
    h.insert(HEADER_VERSION, backend.version_header.clone());
    h.insert(HEADER_DIGEST, backend.digest_header.clone());
}

/// A JSON error answer: `{"error": {"code", "message"}}`.
fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    backend: Option<&Backend>,
) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut resp = Response::new(full_body(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(b) = backend {
        stamp(&mut resp, b);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap()
    }

    #[test]
    fn version_choice_honours_override_then_weights() {
        let route = [(1u64, 90u32), (2, 10), (3, 0)];
        let it = || route.iter().copied();
        // Weighted: tickets 0..90 → v1, 90..100 → v2, never the 0% version.
        assert_eq!(choose(it(), None, 0), Some(0));
        assert_eq!(choose(it(), None, 89), Some(0));
        assert_eq!(choose(it(), None, 90), Some(1));
        assert_eq!(choose(it(), None, 99), Some(1));
        // An override naming a version in the route wins, even at 0%.
        assert_eq!(choose(it(), Some(3), 0), Some(2));
        assert_eq!(choose(it(), Some(2), 0), Some(1));
        // An override naming another version falls back to the weights.
        assert_eq!(choose(it(), Some(7), 95), Some(1));
        // No weight at all: nothing to serve.
        assert_eq!(choose([(1u64, 0u32)].into_iter(), None, 0), None);
    }

    #[test]
    fn resolves_path_and_host_forms() {
        let check = |host: &str, path: &str, want: Option<(&str, &str, &str)>| {
            let r = req(host, path);
            let got =
                resolve(&r, "production").map(|t| (t.environment, t.function, t.path.into_owned()));
            let got = got.as_ref().map(|(e, f, p)| (*e, *f, p.as_str()));
            assert_eq!(got, want, "{host} {path}");
        };
        check(
            "127.0.0.1:8080",
            "/hello/a/b?x=1",
            Some(("production", "hello", "/a/b?x=1")),
        );
        check(
            "127.0.0.1:8080",
            "/hello",
            Some(("production", "hello", "/")),
        );
        check(
            "127.0.0.1",
            "/hello?q",
            Some(("production", "hello", "/?q")),
        );
        check(
            "hello.staging.localhost:8080",
            "/x",
            Some(("staging", "hello", "/x")),
        );
        check("hello.localhost", "/x", Some(("production", "hello", "/x")));
        check("127.0.0.1", "/", None);
        let r = req("hello--preview.staging.localhost", "/x");
        let t = resolve(&r, "production").unwrap();
        assert_eq!(
            (t.function, t.environment, t.preview),
            ("hello", "staging", true)
        );
        let r = req("hello.staging.localhost", "/x");
        assert!(!resolve(&r, "production").unwrap().preview);
    }

    #[test]
    fn a_sticky_caller_stays_on_the_candidate_as_it_grows() {
        // Candidate (v2) first, as the rollout controller lists it.
        let at = |w: u32| [(2u64, w), (1u64, 100 - w)];
        let mut on_candidate_at_10 = 0;
        for user in 0..1000 {
            let key = format!("user-{user}");
            let ticket = sticky_ticket(key.as_bytes(), 100);
            assert_eq!(ticket, sticky_ticket(key.as_bytes(), 100), "stable");
            let pick = |w| choose(at(w).into_iter(), None, ticket);
            if pick(10) == Some(0) {
                on_candidate_at_10 += 1;
                assert_eq!(pick(50), Some(0), "{key} moved back to the baseline");
                assert_eq!(pick(90), Some(0));
            }
        }
        // About 10% of callers: the hash spreads keys evenly.
        assert!(
            (50..=150).contains(&on_candidate_at_10),
            "{on_candidate_at_10}"
        );
    }
}
