//! `/metrics`: OpenMetrics text from `prometheus-client`.
//!
//! Per-version series are read at scrape time from the gateway's registry
//! of live counters (the request path only does relaxed atomic adds; no
//! metric family is looked up per request). Every per-version series is
//! labelled `{function, environment, version}`; the artifact digest
//! appears once per version, in `seal_version_info{function, version,
//! digest}`, so cardinality grows with versions, not with requests.
//!
//! Deployment SLIs are ordinary `prometheus-client` families updated by the
//! control plane when a deployment ends.

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet, text::encode,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use seal_runtime::RuntimeStats;
use seal_serving::{ErrorKind, Serving, VersionEntry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The same exposition in Prometheus' classic text format (0.0.4), for
/// clients that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): counter families are named with their `_total` samples, and
/// the `# UNIT` and `# EOF` lines go. `prometheus-client` writes OpenMetrics
/// only; everything else is the same in both formats.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((prefix, rest)) = meta
            && let Some((name, tail)) = rest.split_once(' ')
            && counters.contains(name)
        {
            out.push_str(&format!("{prefix}{name}_total {tail}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub function: String,
    pub environment: String,
    pub strategy: String,
    /// succeeded, rolled_back, aborted.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub function: String,
    pub environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RollbackLabels {
    pub function: String,
    pub environment: String,
    /// gate, hook, restart, manual.
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub function: String,
    pub environment: String,
    pub gate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvironmentLabels {
    pub environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    pub environment: String,
    pub queue: String,
    pub trigger: String,
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub environment: String,
    pub queue: String,
    pub trigger: String,
    pub function: String,
    /// delivered, retried, dead_lettered.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CronLabels {
    pub environment: String,
    pub trigger: String,
    pub function: String,
    /// ok, failed, skipped, missed.
    pub status: String,
}

/// Queues, subscriptions and cron triggers. Counters and the latency
/// histogram are updated as deliveries end; the backlog gauges by the
/// delivery loop once a second.
#[derive(Clone)]
pub struct EventMetrics {
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub latency: Family<SubscriptionLabels, Histogram>,
    pub depth: Family<SubscriptionLabels, Gauge>,
    pub oldest_age: Family<SubscriptionLabels, Gauge<f64, AtomicU64>>,
    pub in_flight: Family<SubscriptionLabels, Gauge>,
    pub cron_runs: Family<CronLabels, Counter>,
    pub cron_delay: Family<SubscriptionLabels, Histogram>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 3600.0,
    ]
    .into_iter()
}

impl EventMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            deliveries: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            depth: Family::default(),
            oldest_age: Family::default(),
            in_flight: Family::default(),
            cron_runs: Family::default(),
            cron_delay: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
        };
        registry.register(
            "seal_event_deliveries",
            "Event deliveries that ended an attempt, by outcome (delivered, retried, dead_lettered)",
            m.deliveries.clone(),
        );
        registry.register_with_unit(
            "seal_event_latency",
            "From enqueue to the end of the attempt that handled the event",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "seal_queue_depth",
            "Events a subscription has not handled or dead-lettered yet",
            m.depth.clone(),
        );
        registry.register_with_unit(
            "seal_queue_oldest_age",
            "Age of the oldest event a subscription has not handled yet",
            Unit::Seconds,
            m.oldest_age.clone(),
        );
        registry.register(
            "seal_event_in_flight",
            "Deliveries of a subscription running now",
            m.in_flight.clone(),
        );
        registry.register(
            "seal_cron_runs",
            "Cron ticks, by status (ok, failed, skipped, missed)",
            m.cron_runs.clone(),
        );
        registry.register_with_unit(
            "seal_cron_delay",
            "From a tick's scheduled instant to its firing",
            Unit::Seconds,
            m.cron_delay.clone(),
        );
        m
    }
}

/// How the version that took all traffic compares with the one it
/// replaced: its error rate since then minus the old one's over its life
/// in this process.
struct PostDeploy {
    new_version: u64,
    new_since: seal_serving::Snapshot,
    old_rate: f64,
}

pub struct Metrics {
    registry: Registry,
    pub deployments: Family<DeploymentLabels, Counter>,
    pub deployment_duration: Family<DeploymentLabels, Histogram>,
    pub rollbacks: Family<RollbackLabels, Counter>,
    pub time_to_rollback: Family<RouteLabels, Histogram>,
    pub gate_failures: Family<GateLabels, Counter>,
    pub artifact_fetch_failures: Family<FunctionLabels, Counter>,
    pub budget_usage: Family<FunctionLabels, Gauge<f64, AtomicU64>>,
    pub budget_limit: Family<FunctionLabels, Gauge<f64, AtomicU64>>,
    /// Differences from the release file last applied, per function and
    /// environment (0: in sync).
    pub drift: Family<RouteLabels, Gauge>,
    /// Differences in an environment's own settings (protection, policy,
    /// queues) from the release file last applied.
    pub environment_drift: Family<EnvironmentLabels, Gauge>,
    pub events: EventMetrics,
    post_deploy: Arc<Mutex<HashMap<(String, String), PostDeploy>>>,
}

fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
}

impl Metrics {
    pub fn new(serving: Arc<Serving>, runtime: Arc<dyn seal_runtime::Loader>) -> Self {
        let mut registry = Registry::default();
        let deployments = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "seal_deployments",
            "Deployments that ended, by outcome (succeeded, rolled_back, aborted)",
            deployments.clone(),
        );
        let deployment_duration =
            Family::<DeploymentLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(duration_buckets())
            });
        registry.register_with_unit(
            "seal_deployment_duration",
            "From the start of a deployment to its end",
            Unit::Seconds,
            deployment_duration.clone(),
        );
        let rollbacks = Family::<RollbackLabels, Counter>::default();
        registry.register(
            "seal_rollbacks",
            "Rollbacks, automatic (gate, hook, restart) or manual",
            rollbacks.clone(),
        );
        let time_to_rollback = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(duration_buckets())
        });
        registry.register_with_unit(
            "seal_time_to_rollback",
            "From the start of a deployment to its automatic rollback",
            Unit::Seconds,
            time_to_rollback.clone(),
        );
        let gate_failures = Family::<GateLabels, Counter>::default();
        registry.register(
            "seal_gate_failures",
            "Gates that failed a deployment",
            gate_failures.clone(),
        );
        let artifact_fetch_failures = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "seal_artifact_fetch_failures",
            "Versions that could not be read, verified or loaded for a route",
            artifact_fetch_failures.clone(),
        );
        let budget_usage = Family::<FunctionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "seal_budget_usage_ratio",
            "GB-seconds used in the budget's current period over the budget",
            budget_usage.clone(),
        );
        let budget_limit = Family::<FunctionLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "seal_budget_gigabyte_seconds",
            "A function's cost budget per period (GB-seconds)",
            budget_limit.clone(),
        );
        let drift = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "seal_drift_differences",
            "Fields where a function differs from the release file last applied to its environment (0: in sync)",
            drift.clone(),
        );
        let environment_drift = Family::<EnvironmentLabels, Gauge>::default();
        registry.register(
            "seal_environment_drift_differences",
            "Fields where an environment's own settings (protection, trust policy, queues) differ from the release file last applied to it (0: in sync)",
            environment_drift.clone(),
        );
        let events = EventMetrics::register(&mut registry);
        let post_deploy = Arc::new(Mutex::new(HashMap::new()));
        registry.register_collector(Box::new(VersionCollector {
            serving,
            runtime,
            post_deploy: post_deploy.clone(),
        }));
        Self {
            registry,
            deployments,
            deployment_duration,
            rollbacks,
            time_to_rollback,
            gate_failures,
            artifact_fetch_failures,
            budget_usage,
            budget_limit,
            drift,
            environment_drift,
            events,
            post_deploy,
        }
    }

    /// The drift gauge of each function a drift check looked at: its
    /// differences now, 0 for a function that drifted before and no more.
    pub fn set_drift(
        &self,
        now: &seal_api_types::desired::DriftReport,
        before: Option<&seal_api_types::desired::DriftReport>,
    ) {
        let labels = |function: &str| RouteLabels {
            function: function.to_owned(),
            environment: now.environment.clone(),
        };
        for d in before.map(|b| b.differences.as_slice()).unwrap_or_default() {
            if !d.function.is_empty() {
                self.drift.get_or_create(&labels(&d.function)).set(0);
            }
        }
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for d in now.differences.iter().filter(|d| !d.function.is_empty()) {
            *counts.entry(&d.function).or_default() += 1;
        }
        for (function, n) in counts {
            self.drift.get_or_create(&labels(function)).set(n);
        }
        // The environment's own settings: a gauge of their own (set to 0
        // once checked, so an alert sees the environment in sync).
        let own = now
            .differences
            .iter()
            .filter(|d| d.function.is_empty())
            .count();
        self.environment_drift
            .get_or_create(&EnvironmentLabels {
                environment: now.environment.clone(),
            })
            .set(own as i64);
    }

    /// The OpenMetrics exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// A deployment reached its end state.
    pub fn deployment_ended(&self, d: &seal_state::DeploymentRecord, serving: &Serving) {
        let labels = DeploymentLabels {
            function: d.function.clone(),
            environment: d.environment.clone(),
            strategy: d.strategy.as_str().to_owned(),
            outcome: d.state.as_str().to_owned(),
        };
        self.deployments.get_or_create(&labels).inc();
        let seconds = d
            .finished_at
            .map_or(0.0, |f| (f - d.created_at) as f64 / 1e3);
        self.deployment_duration
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
        let route = RouteLabels {
            function: d.function.clone(),
            environment: d.environment.clone(),
        };
        let trigger = if d.kind == seal_state::DeploymentKind::Rollback {
            Some("manual")
        } else if d.state == seal_state::DeploymentState::RolledBack {
            let reason = d.reason.as_deref().unwrap_or("");
            Some(if reason.contains("hook") {
                "hook"
            } else if reason.contains("restart") {
                "restart"
            } else {
                "gate"
            })
        } else {
            None
        };
        if let Some(trigger) = trigger {
            self.rollbacks
                .get_or_create(&RollbackLabels {
                    function: d.function.clone(),
                    environment: d.environment.clone(),
                    trigger: trigger.into(),
                })
                .inc();
            if d.state == seal_state::DeploymentState::RolledBack {
                self.time_to_rollback
                    .get_or_create(&route)
                    .observe(seconds.max(0.0));
            }
        }
        // The version that now takes all traffic, against the one it replaced.
        let single = |w: &[seal_state::WeightedVersion]| {
            let live: Vec<_> = w.iter().filter(|w| w.weight > 0).collect();
            (live.len() == 1).then(|| live[0].version)
        };
        let new = single(&d.to_weights);
        let old = d.from_weights.as_deref().and_then(single);
        if let (Some(new), Some(old)) = (new, old)
            && new != old
        {
            let stats = |v: u64| serving.registered_stats(&d.environment, &d.function, v);
            if let (Some(n), Some(o)) = (stats(new), stats(old)) {
                let o = o.snapshot();
                if let Ok(mut p) = self.post_deploy.lock() {
                    p.insert(
                        (d.environment.clone(), d.function.clone()),
                        PostDeploy {
                            new_version: new,
                            new_since: n.snapshot(),
                            old_rate: o.error_rate(),
                        },
                    );
                }
            }
        }
    }

    pub fn gate_failed(&self, function: &str, environment: &str, gate: &str) {
        self.gate_failures
            .get_or_create(&GateLabels {
                function: function.into(),
                environment: environment.into(),
                gate: gate.into(),
            })
            .inc();
    }

    /// A budget was removed: its gauges go.
    pub fn forget_budget(&self, function: &str) {
        let labels = FunctionLabels {
            function: function.into(),
        };
        self.budget_usage.remove(&labels);
        self.budget_limit.remove(&labels);
    }

    pub fn artifact_fetch_failed(&self, function: &str) {
        self.artifact_fetch_failures
            .get_or_create(&FunctionLabels {
                function: function.into(),
            })
            .inc();
    }
}

/// Reads the gateway's version registry at scrape time.
struct VersionCollector {
    serving: Arc<Serving>,
    runtime: Arc<dyn seal_runtime::Loader>,
    post_deploy: Arc<Mutex<HashMap<(String, String), PostDeploy>>>,
}

impl std::fmt::Debug for VersionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VersionCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

fn version_labels(e: &VersionEntry) -> Labels {
    vec![
        ("function", e.function.clone()),
        ("environment", e.environment.clone()),
        ("version", e.version.to_string()),
    ]
}

/// Upper bounds of the exported histograms (µs, KiB), folded from the
/// fine log-linear buckets.
const LATENCY_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];
const INSTANTIATE_US: [u64; 11] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000,
];
const MEMORY_KIB: [u64; 9] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
];

/// An exported histogram: its family, and how its fine buckets fold.
struct HistogramSpec<'a> {
    name: &'a str,
    help: &'a str,
    unit: Unit,
    /// Upper bounds in recorded units.
    bounds: &'a [u64],
    /// Recorded unit → exported unit.
    scale: f64,
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    spec: HistogramSpec<'_>,
    entries: &[VersionEntry],
    pick: impl Fn(&seal_serving::VersionStats) -> &seal_serving::telemetry::AtomicHistogram,
) -> Result<(), std::fmt::Error> {
    let HistogramSpec {
        name,
        help,
        unit,
        bounds,
        scale,
    } = spec;
    let mut m = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    for e in entries {
        let h = pick(&e.stats);
        let counts = h.fold(bounds);
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .map(|b| *b as f64 * scale)
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts.iter().copied())
            .collect();
        let count = counts.iter().sum();
        let labels = version_labels(e);
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum() as f64 * scale,
            count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for VersionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let entries = self.serving.versions();
        let table = self.serving.table();

        // Feature flag evaluations per variant, and the failed invocations
        // that got each variant (a flag ramp watched like a canary).
        let flag_counts = self.serving.telemetry().flag_counts.snapshot();
        let labels = |k: &seal_serving::invocation::FlagCountKey| -> Labels {
            vec![
                ("function", k.0.clone()),
                ("environment", k.1.clone()),
                ("flag", k.2.clone()),
                ("variant", k.3.clone()),
            ]
        };
        counter(
            &mut encoder,
            "seal_flag_evaluations",
            "Feature flag evaluations by guests, per flag and variant (error:CODE when none)",
            flag_counts.iter().map(|(k, n, _)| (labels(k), *n)),
        )?;
        counter(
            &mut encoder,
            "seal_flag_variant_errors",
            "Invocations that evaluated a flag's variant and failed (5xx, trap, timeout, memory)",
            flag_counts.iter().map(|(k, _, f)| (labels(k), *f)),
        )?;

        // Sampled requests a full capture channel dropped (the store could
        // not keep up): the capture is thinner than its rate says.
        counter(
            &mut encoder,
            "seal_capture_dropped",
            "Requests a traffic capture sampled and dropped because its writer could not keep up",
            [(Labels::new(), self.serving.captures().dropped())],
        )?;

        // An info-style gauge (always 1) rather than OpenMetrics' `info`
        // type, which Prometheus' classic text parser (and promtool)
        // rejects.
        let mut info = encoder.encode_descriptor(
            "seal_version_info",
            "The artifact digest of each version that has served (always 1)",
            None,
            MetricType::Gauge,
        )?;
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if seen.insert((&e.function, e.version)) {
                let labels: Labels = vec![
                    ("function", e.function.clone()),
                    ("version", e.version.to_string()),
                    ("digest", e.digest.clone()),
                ];
                ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
            }
        }

        let mut weights = encoder.encode_descriptor(
            "seal_route_weight",
            "Percent of a route's traffic each version gets",
            None,
            MetricType::Gauge,
        )?;
        for e in &entries {
            let w = table
                .get(&e.environment, &e.function)
                .and_then(|r| r.backends.iter().find(|b| b.version == e.version))
                .map_or(0, |b| i64::from(b.weight));
            ConstGauge::new(w).encode(weights.encode_family(&version_labels(e))?)?;
        }

        counter(
            &mut encoder,
            "seal_invocations",
            "Requests routed to a version",
            entries
                .iter()
                .map(|e| (version_labels(e), e.stats.requests())),
        )?;
        counter(
            &mut encoder,
            "seal_invocation_errors",
            "Failed invocations by kind: status_5xx, trap, timeout, memory, no_response",
            entries.iter().flat_map(|e| {
                ErrorKind::ALL.iter().map(move |k| {
                    let mut l = version_labels(e);
                    l.push(("kind", k.as_str().to_owned()));
                    (l, e.stats.errors_of(*k))
                })
            }),
        )?;
        counter(
            &mut encoder,
            "seal_invocations_overloaded",
            "Requests refused for lack of an instance slot (the server's answer: neither the version's requests nor its errors)",
            entries
                .iter()
                .map(|e| (version_labels(e), e.stats.overloaded())),
        )?;
        counter(
            &mut encoder,
            "seal_invocations_unjudged",
            "Requests pinned to a version without the deployment's preview token (served, not judged by the gates)",
            entries
                .iter()
                .map(|e| (version_labels(e), e.stats.unjudged_requests())),
        )?;
        counter(
            &mut encoder,
            "seal_invocations_client_closed",
            "Invocations whose caller hung up before the answer was complete (not the version's errors)",
            entries
                .iter()
                .map(|e| (version_labels(e), e.stats.client_closed())),
        )?;
        counter(
            &mut encoder,
            "seal_cold_starts",
            "First invocations of a loaded version",
            entries
                .iter()
                .map(|e| (version_labels(e), e.stats.cold_starts())),
        )?;
        histogram(
            &mut encoder,
            HistogramSpec {
                name: "seal_invocation_duration",
                help: "Time from request arrival to the response head (requests the gates judge)",
                unit: Unit::Seconds,
                bounds: &LATENCY_US,
                scale: 1e-6,
            },
            &entries,
            |s| s.latency(),
        )?;
        histogram(
            &mut encoder,
            HistogramSpec {
                name: "seal_instantiation_duration",
                help: "Time to a fresh instance from the pre-instantiated component",
                unit: Unit::Seconds,
                bounds: &INSTANTIATE_US,
                scale: 1e-6,
            },
            &entries,
            |s| s.instantiation(),
        )?;
        histogram(
            &mut encoder,
            HistogramSpec {
                name: "seal_guest_memory_peak",
                help: "Largest linear memory an invocation used",
                unit: Unit::Bytes,
                bounds: &MEMORY_KIB,
                scale: 1024.0,
            },
            &entries,
            |s| s.memory_kib(),
        )?;

        let mut cold = encoder.encode_descriptor(
            "seal_cold_start_phase",
            "The last cold start of a version by phase: load (compile-cache load), instantiate, first_call",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for e in &entries {
            if let Some(c) = e.stats.last_cold_start() {
                for (phase, us) in [
                    ("load", c.load_us),
                    ("instantiate", c.instantiate_us),
                    ("first_call", c.first_call_us),
                ] {
                    let mut l = version_labels(e);
                    l.push(("phase", phase.to_owned()));
                    ConstGauge::new(us as f64 / 1e6).encode(cold.encode_family(&l)?)?;
                }
            }
        }

        let mut cost = encoder.encode_descriptor(
            "seal_cost_gigabyte_seconds",
            "Memory limit (GiB) times billed duration (s), summed over invocations",
            None,
            MetricType::Counter,
        )?;
        for e in &entries {
            ConstCounter::new(e.stats.gb_seconds())
                .encode(cost.encode_family(&version_labels(e))?)?;
        }

        let mut delta = encoder.encode_descriptor(
            "seal_post_deploy_error_rate_delta",
            "Error rate of the version that took all traffic since it did, minus that of the version it replaced",
            None,
            MetricType::Gauge,
        )?;
        if let Ok(p) = self.post_deploy.lock() {
            for ((env, function), pd) in p.iter() {
                let Some(e) = entries.iter().find(|e| {
                    &e.environment == env && &e.function == function && e.version == pd.new_version
                }) else {
                    continue;
                };
                let w = e.stats.snapshot().since(&pd.new_since);
                let labels: Labels =
                    vec![("function", function.clone()), ("environment", env.clone())];
                ConstGauge::new(w.error_rate() - pd.old_rate)
                    .encode(delta.encode_family(&labels)?)?;
            }
        }

        let stats: &RuntimeStats = self.runtime.stats();
        counter(
            &mut encoder,
            "seal_runtime_compiles",
            "Components compiled from wasm",
            [(Vec::new(), stats.compiles.load(Ordering::Relaxed))],
        )?;
        counter(
            &mut encoder,
            "seal_runtime_cache_loads",
            "Components loaded from the compile cache",
            [(Vec::new(), stats.cache_loads.load(Ordering::Relaxed))],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_format_names_counters_by_their_samples() {
        let om = "# HELP seal_x Things.\n# TYPE seal_x counter\nseal_x_total{a=\"1\"} 3\n# HELP seal_d Time.\n# TYPE seal_d histogram\n# UNIT seal_d seconds\nseal_d_count 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP seal_x_total Things.\n# TYPE seal_x_total counter\nseal_x_total{a=\"1\"} 3\n# HELP seal_d Time.\n# TYPE seal_d histogram\nseal_d_count 1\n"
        );
    }
}
