//! The serving layer: what any trigger needs to run a function, without a
//! listener of its own.
//!
//! [`Serving`] holds the current [`RouteTable`] (an immutable snapshot
//! behind an `ArcSwap`), the live per-version counters ([`VersionStats`]),
//! the settings slot of each function in each environment, and the log
//! hub. The HTTP gateway, a cron trigger and a queue trigger all resolve a
//! route here, pick a version with [`Route::pick`], and run it with
//! [`Serving::invoke`], so every trigger counts into the same per-version
//! windows the rollout gates read.
//!
//! Invariants:
//! - the request path takes no lock and touches no database: the route
//!   table is replaced whole by the control plane after a deployment is
//!   committed;
//! - a request holds the `Arc` of the backend it started on, so a swap
//!   never moves or fails a request in flight;
//! - a version's counters are created once per process and never go
//!   backwards, whichever routes name it.
//!
//! This crate does not know where routes come from (it is handed tables)
//! nor how requests arrive (no sockets, no hyper server).

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use seal_runtime::{Function, HyperOutgoingBody, InvokeError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub mod admission;
pub mod capture;
pub mod head;
pub mod invocation;
pub mod logs;
pub mod telemetry;
pub use admission::{Admission, InFlight};
pub use invocation::{EmittedBy, EventSink, Telemetry};
pub use telemetry::{ColdStart, ErrorKind, Snapshot, Traffic, VersionStats};

/// Versions a route table change may newly route and still get an
/// instance made ahead each (see [`Serving::publish`]).
pub const MAX_PREPARED_PER_PUBLISH: usize = 16;

/// Every answer names the version and the artifact that produced it.
pub const HEADER_VERSION: HeaderName = HeaderName::from_static("seal-version");
pub const HEADER_DIGEST: HeaderName = HeaderName::from_static("seal-digest");
/// Pins a request to a version of its route.
pub const HEADER_PIN: HeaderName = HeaderName::from_static("seal-version");
/// The deployment's preview token: a request pinned with it counts in the
/// gates (and, in a protected environment, is served at all). Never passed
/// to the guest.
pub const HEADER_PREVIEW_TOKEN: HeaderName = HeaderName::from_static("seal-preview-token");

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
    /// Requests of this function in flight in this environment (shared by
    /// every version, as its concurrency limit is).
    in_flight: Arc<InFlight>,
    /// `env` plus the settings this version's manifest lets it see, built
    /// once per settings revision.
    guest_env: Arc<ArcSwap<GuestEnv>>,
    /// Every outbound request refused and no event published (a replay).
    pub outbound_denied: bool,
    /// A replay backend (`Serving::replay_backend`): never shares a
    /// reused instance with live traffic.
    pub replay: bool,
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

    /// Names this version and its artifact in an answer's headers
    /// (`seal-version`, `seal-digest`); the values are built once.
    pub fn stamp(&self, headers: &mut http::HeaderMap) {
        headers.insert(HEADER_VERSION, self.version_header.clone());
        headers.insert(HEADER_DIGEST, self.digest_header.clone());
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
    /// The deployment's preview token (see [`HEADER_PREVIEW_TOKEN`]).
    preview_token: Option<Box<str>>,
    /// Pinning a version here (`seal-version`, the preview host) needs the
    /// preview token.
    pub protected: bool,
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
            preview_token: None,
            protected: false,
            total_weight,
        }
    }

    pub fn with_sticky_header(mut self, header: Option<HeaderName>) -> Self {
        self.sticky_header = header;
        self
    }

    /// The version a deployment in progress previews, and its token.
    pub fn with_preview(mut self, version: Option<u64>, token: Option<String>) -> Self {
        self.preview = version;
        self.preview_token = token.map(String::into_boxed_str);
        self
    }

    pub fn with_protected(mut self, protected: bool) -> Self {
        self.protected = protected;
        self
    }

    /// Whether `presented` is this route's preview token (compared in
    /// constant time).
    pub fn trusts(&self, presented: Option<&HeaderValue>) -> bool {
        let (Some(want), Some(got)) = (self.preview_token.as_deref(), presented) else {
            return false;
        };
        let (want, got) = (want.as_bytes(), got.as_bytes());
        want.len() == got.len() && want.iter().zip(got).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }

    /// How a request that pins a version (`pinned`) with the headers
    /// `presented` is treated: judged, served unjudged, or refused.
    pub fn admit_pin(&self, pinned: bool, presented: Option<&HeaderValue>) -> Option<Traffic> {
        if !pinned || self.trusts(presented) {
            Some(Traffic::Judged)
        } else if self.protected {
            None
        } else {
            Some(Traffic::Unjudged)
        }
    }

    /// `seal-version` override if it names a version of this route, else
    /// the sticky key's hash, else a weighted random choice.
    ///
    /// A sticky caller's ticket is a hash of its key, fixed for the life of
    /// the deployment; the candidate is listed first, so a ticket that fell
    /// on the candidate at 10% still falls on it at 50%.
    pub fn pick(&self, requested: Option<u64>, sticky: Option<&[u8]>) -> Option<&Arc<Backend>> {
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

/// A stable ticket in `0..total` for a sticky key: its place in 0..100 is
/// flagd's `fractional` bucket of the same key (murmur3, stable across
/// restarts and builds), so a caller in a canary's first 10% is in a
/// flag's first 10% too when the flag buckets by the same value.
fn sticky_ticket(key: &[u8], total: u32) -> u32 {
    // Onto 0..100 first so the same key holds the same place in the
    // weight space whatever the weights add up to.
    let percent = seal_flags::bucket_bytes(key);
    ((percent * f64::from(total) / 100.0) as u32).min(total.saturating_sub(1))
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

/// What one invocation produced, for the trigger to answer with.
pub struct Invoked {
    pub result: Result<http::Response<HyperOutgoingBody>, InvokeError>,
    /// The invocation's correlation id, for the `x-request-id` answer.
    pub request_id: Option<HeaderValue>,
}

/// The serving state of this process: the route table every trigger reads
/// and the registries the control plane fills.
pub struct Serving {
    table: ArcSwap<RouteTable>,
    telemetry: Arc<Telemetry>,
    /// Live counters of every version that has served in this process,
    /// by (environment, function, version): kept after a version leaves its
    /// route so its counters never go backwards.
    registry: std::sync::Mutex<HashMap<(String, String, u64), VersionEntry>>,
    /// Settings of each function in each environment, by (environment,
    /// function).
    settings: std::sync::Mutex<HashMap<(String, String), Arc<SettingsSlot>>>,
    /// Held by a settings change from reading the old ones to making the
    /// new instances ahead: two changes at once would each release the
    /// idle instances of the settings they read, and one could miss those
    /// the other made.
    settings_change: std::sync::Mutex<()>,
    /// In-flight counts of each function in each environment.
    in_flight: std::sync::Mutex<HashMap<(String, String), Arc<InFlight>>>,
    /// Concurrency limits and the fair share of the instance pool.
    admission: Arc<Admission>,
    /// Where functions' events go, once the server sets it.
    event_sink: std::sync::OnceLock<Arc<dyn EventSink>>,
    /// The traffic captures running in this process.
    captures: Arc<capture::Captures>,
    /// Each environment's feature flags, as guests evaluate them.
    flag_sets: ArcSwap<HashMap<String, Arc<seal_flags::FlagSet>>>,
}

impl Serving {
    /// A serving layer over a pool of 1,000 instances with a per-function
    /// default of 250 in flight (the server's defaults).
    pub fn new(telemetry: Telemetry) -> Arc<Self> {
        Self::with_admission(telemetry, Admission::new(1000, 250))
    }

    pub fn with_admission(telemetry: Telemetry, admission: Arc<Admission>) -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            telemetry: Arc::new(telemetry),
            registry: std::sync::Mutex::default(),
            settings: std::sync::Mutex::default(),
            settings_change: std::sync::Mutex::default(),
            in_flight: std::sync::Mutex::default(),
            admission,
            event_sink: std::sync::OnceLock::new(),
            captures: Arc::default(),
            flag_sets: ArcSwap::from_pointee(HashMap::new()),
        })
    }

    /// Replaces every environment's feature flags (each set checked when
    /// it was applied).
    pub fn set_flag_sets(&self, sets: HashMap<String, Arc<seal_flags::FlagSet>>) {
        self.flag_sets.store(Arc::new(sets));
    }

    /// An environment's feature flags, if it has any.
    pub fn flag_set(&self, environment: &str) -> Option<Arc<seal_flags::FlagSet>> {
        self.flag_sets.load().get(environment).cloned()
    }

    /// The traffic captures running in this process (see [`capture`]).
    pub fn captures(&self) -> &Arc<capture::Captures> {
        &self.captures
    }

    /// Lets functions whose manifest lists queues publish events to them,
    /// handed to `sink`. Unset, their publishing is answered 503.
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        let _ = self.event_sink.set(sink);
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The in-flight count of a function in an environment (created on
    /// first use, then the same for the life of the process).
    fn in_flight_slot(&self, environment: &str, function: &str) -> Arc<InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((environment.to_owned(), function.to_owned()))
            .or_default()
            .clone()
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
    ///
    /// Instances kept idle with the old environment variables (left for
    /// reuse or made ahead) are dropped, and the versions routed there get
    /// one made ahead with the new ones.
    pub fn set_settings(&self, environment: &str, function: &str, settings: Settings) {
        let _turn = self
            .settings_change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let route = self.route(environment, function);
        let before: Vec<Arc<[(String, String)]>> = route
            .iter()
            .flat_map(|r| r.backends.iter().map(|b| b.guest_env().1))
            .collect();
        self.settings_slot(environment, function)
            .0
            .store(Arc::new(settings));
        if let Some(route) = route {
            for (b, old) in route.backends.iter().zip(before) {
                let new = b.guest_env().1;
                if *new != *old {
                    b.function.release_idle(Some(&old));
                    b.function.prepare_ahead(&new);
                }
            }
        }
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
        self.backend_with(
            environment,
            function,
            version,
            digest,
            weight,
            loaded,
            stats,
            false,
            false,
        )
    }

    /// A backend for replaying requests to `version` in `environment` with
    /// its config and secrets there, outside every route: counters of its
    /// own (no gate, cost or soak counts a replay), and with `deny_outbound`
    /// every outbound request refused and no event published.
    pub fn replay_backend(
        &self,
        environment: &str,
        function: &str,
        version: u64,
        digest: &str,
        loaded: Arc<Function>,
        deny_outbound: bool,
    ) -> Backend {
        self.backend_with(
            environment,
            function,
            version,
            digest,
            0,
            loaded,
            Arc::default(),
            deny_outbound,
            true,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn backend_with(
        &self,
        environment: &str,
        function: &str,
        version: u64,
        digest: &str,
        weight: u32,
        loaded: Arc<Function>,
        stats: Arc<VersionStats>,
        outbound_denied: bool,
        replay: bool,
    ) -> Backend {
        let settings = self.settings_slot(environment, function);
        let in_flight = self.in_flight_slot(environment, function);
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
            in_flight,
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
            outbound_denied,
            replay,
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
    /// the backends they picked. The versions it newly routes get an
    /// instance made ahead, so the first request after a deploy skips
    /// instantiation; a table that routes more than
    /// [`MAX_PREPARED_PER_PUBLISH`] new versions at once (a restart loading
    /// every route) gets none, as they would hold memory for requests that
    /// may not come.
    ///
    /// The idle instances of versions it no longer routes anywhere are
    /// dropped.
    pub fn publish(&self, table: RouteTable) {
        let table = Arc::new(table);
        let previous = self.table.swap(table.clone());
        let routed: std::collections::HashSet<*const Function> = table
            .routes()
            .flat_map(|r| r.backends.iter().map(|b| Arc::as_ptr(&b.function)))
            .collect();
        let mut released = std::collections::HashSet::new();
        for b in previous.routes().flat_map(|r| r.backends.iter()) {
            let f = Arc::as_ptr(&b.function);
            if !routed.contains(&f) && released.insert(f) {
                b.function.release_idle(None);
            }
        }
        let newly_routed: Vec<&Arc<Backend>> = table
            .routes()
            .flat_map(|r| {
                let before = previous.get(&r.environment, &r.function);
                r.backends.iter().filter(move |b| {
                    !before.is_some_and(|p| p.backends.iter().any(|o| o.version == b.version))
                })
            })
            .take(MAX_PREPARED_PER_PUBLISH + 1)
            .collect();
        if newly_routed.len() <= MAX_PREPARED_PER_PUBLISH {
            for b in newly_routed {
                b.function.prepare_ahead(&b.guest_env().1);
            }
        }
    }

    /// The route of a function in an environment in the current snapshot.
    /// The caller keeps the route's `Arc`, not the snapshot.
    pub fn route(&self, environment: &str, function: &str) -> Option<Arc<Route>> {
        self.table.load().get(environment, function).cloned()
    }

    /// Runs one invocation of `backend`: correlation id and trace context
    /// (set on the request for the guest), the guest's environment for the
    /// current settings revision, the observer that records its metrics,
    /// log record and span, and the version's request/error/latency
    /// counters (latency to the response head, what the gates read).
    pub async fn invoke<B>(
        &self,
        backend: &Arc<Backend>,
        mut req: http::Request<B>,
        started: Instant,
        traffic: Traffic,
    ) -> Invoked
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<seal_runtime::BodyError>,
    {
        let (ids, request_id) =
            invocation::correlate(req.headers(), self.telemetry.trace_sample_ratio);
        let request_id_header = Some(request_id.header.clone());
        let permit = match self.admission.admit(
            &backend.in_flight,
            backend.function.limits().max_concurrency,
        ) {
            Ok(p) => p,
            Err(refused) => {
                backend.stats.record_overloaded();
                return Invoked {
                    result: Err(refused),
                    request_id: request_id_header,
                };
            }
        };
        invocation::propagate(req.headers_mut(), &ids, &request_id);
        let (config_revision, env) = backend.guest_env();
        let invocation = Arc::new(invocation::Invocation {
            config_revision,
            backend: backend.clone(),
            telemetry: self.telemetry.clone(),
            request_id: request_id.id,
            ids,
            method: req.method().clone(),
            path: req.uri().path().into(),
            arrived: started,
            arrived_wall: self
                .telemetry
                .tracer
                .is_some()
                .then(std::time::SystemTime::now),
            traffic,
            _permit: permit,
            events: if backend.function.limits().queues.is_empty() {
                None
            } else {
                self.event_sink.get().cloned()
            },
            flag_set: if backend.function.limits().flags.is_empty() {
                None
            } else {
                self.flag_set(&backend.environment)
            },
            flags_evaluated: (!backend.function.limits().flags.is_empty()).then(Arc::default),
        });
        let result = backend.function.handle(req, &env, invocation).await;
        match &result {
            Ok(resp) => {
                backend
                    .stats
                    .record(started.elapsed(), resp.status().is_server_error(), traffic)
            }
            // An overloaded pool is the platform's answer, neither a
            // request of the version nor its error; the gates see it apart.
            Err(e) if e.is_overloaded() => backend.stats.record_overloaded(),
            Err(e) => backend
                .stats
                .record(started.elapsed(), e.is_function_error(), traffic),
        }
        Invoked {
            result,
            request_id: request_id_header,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_pin_counts_in_the_gates_only_with_the_preview_token() {
        let token = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
        let wrong = HeaderValue::from_static("0123456789abcdef0123456789abcdee");
        let short = HeaderValue::from_static("0123");
        let open = Route::new("staging", "api", vec![])
            .with_preview(Some(2), Some(token.to_str().unwrap().to_owned()));
        assert_eq!(open.admit_pin(false, None), Some(Traffic::Judged));
        assert_eq!(open.admit_pin(true, Some(&token)), Some(Traffic::Judged));
        for bad in [None, Some(&wrong), Some(&short)] {
            assert_eq!(open.admit_pin(true, bad), Some(Traffic::Unjudged));
        }
        let protected = open.clone().with_protected(true);
        assert_eq!(protected.admit_pin(false, None), Some(Traffic::Judged));
        assert_eq!(
            protected.admit_pin(true, Some(&token)),
            Some(Traffic::Judged)
        );
        for bad in [None, Some(&wrong), Some(&short)] {
            assert_eq!(protected.admit_pin(true, bad), None);
        }
        // No deployment in progress: no token to present.
        let idle = Route::new("production", "api", vec![]).with_protected(true);
        assert_eq!(idle.admit_pin(true, Some(&token)), None);
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

    #[test]
    fn a_sticky_callers_canary_bucket_is_its_flag_bucket() {
        // A flag that buckets by the same key, its first variant as wide as
        // the candidate's weight, gives every caller on the candidate that
        // variant and every other caller the other.
        let flags = seal_flags::FlagSet::parse(
            br#"{"flags": {"new-ui": {"state": "ENABLED", "variants": {"new": true, "old": false},
                "defaultVariant": "old",
                "targeting": {"fractional": [{"var": "user"}, ["new", 10], ["old", 90]]}}}}"#,
        )
        .unwrap();
        let route = [(2u64, 10u32), (1u64, 90u32)];
        for user in 0..1000 {
            let key = format!("user-{user}");
            let on_candidate =
                choose(route.into_iter(), None, sticky_ticket(key.as_bytes(), 100)) == Some(0);
            let ctx = serde_json::json!({"user": key});
            let flag = flags.evaluate("new-ui", ctx.as_object().unwrap()).unwrap();
            assert_eq!(on_candidate, flag.variant == "new", "{key}");
        }
    }
}
