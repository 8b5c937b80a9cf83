//! The rollout settings of a deploy request, as they go over the wire:
//! the strategy, its steps, the gates and the hooks. The server checks
//! them and expands them into a plan; the CLI builds them from its flags.
//! Then what a rollout reports while it runs: gate evaluations and the
//! live status of a route.

use crate::records::{DeploymentRecord, WeightedVersion};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    AllAtOnce,
    Canary,
    Linear,
    BlueGreen,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        [Self::AllAtOnce, Self::Canary, Self::Linear, Self::BlueGreen]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::AllAtOnce => "all-at-once",
            Strategy::Canary => "canary",
            Strategy::Linear => "linear",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInconclusive {
    #[default]
    Wait,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookPhase {
    PreTraffic,
    PostTraffic,
}

impl HookPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreTraffic => "pre-traffic",
            Self::PostTraffic => "post-traffic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRequest {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookExpect {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Any 2xx answer (what an event handler's success is).
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub success: bool,
}

/// A synthetic request sent to the candidate through the version header
/// before it gets traffic (pre-traffic) or after promotion (post-traffic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub name: String,
    #[serde(default = "default_phase")]
    pub phase: HookPhase,
    pub request: HookRequest,
    #[serde(default = "default_expect")]
    pub expect: HookExpect,
}

fn default_phase() -> HookPhase {
    HookPhase::PreTraffic
}

fn default_expect() -> HookExpect {
    HookExpect {
        status: Some(200),
        body_contains: None,
        success: false,
    }
}

/// The rollout settings of a deploy request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Gates::is_unset")]
    pub gates: Gates,
    #[serde(default, skip_serializing_if = "OnInconclusive::is_default")]
    pub on_inconclusive: OnInconclusive,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub approve_before_promote: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
}

impl OnInconclusive {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl RolloutSpec {
    /// Only a strategy: what `--strategy S` alone asks for.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            steps: None,
            increment: None,
            interval_ms: None,
            gates: Gates::default(),
            on_inconclusive: OnInconclusive::default(),
            progress_deadline_ms: None,
            approve_before_promote: false,
            scale_down_delay_ms: None,
            sticky_header: None,
            notify: None,
            hooks: Vec::new(),
        }
    }
}

impl RolloutSpec {
    /// Why the settings contradict each other: steps, gates and the other
    /// progressive settings with the all-at-once strategy.
    pub fn all_at_once_conflict(&self) -> Option<&'static str> {
        (self.strategy == Strategy::AllAtOnce && self.has_progressive_settings()).then_some(
            "steps, gates, hooks and the other rollout settings need the canary, linear or blue-green strategy; all-at-once moves all traffic at once",
        )
    }

    /// Whether anything beyond the strategy was asked for.
    pub fn has_progressive_settings(&self) -> bool {
        self.steps.is_some()
            || self.increment.is_some()
            || self.interval_ms.is_some()
            || self.gates != Gates::default()
            || self.on_inconclusive != OnInconclusive::Wait
            || self.progress_deadline_ms.is_some()
            || self.approve_before_promote
            || self.scale_down_delay_ms.is_some()
            || self.sticky_header.is_some()
            || self.notify.is_some()
            || !self.hooks.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyLimit {
    /// e.g. 0.99 for p99.
    pub quantile: f64,
    pub ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<LatencyLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_increase: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Fails the step when the oldest pending event of any of the
    /// function's queue subscriptions in the environment is older than
    /// this (a candidate that stalls consumption). Not a request gate:
    /// steps with only this gate stay time-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_age_ms: Option<u64>,
}

impl Gates {
    /// No request gate is set (`max_queue_age_ms` is not one).
    pub fn is_empty(&self) -> bool {
        self.max_error_rate.is_none()
            && self.max_latency.is_none()
            && self.max_error_rate_increase.is_none()
            && self.max_latency_increase.is_none()
    }

    /// Nothing set at all (`min_requests` included).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    pub fn has_relative(&self) -> bool {
        self.max_error_rate_increase.is_some() || self.max_latency_increase.is_some()
    }
}

/// What a gate (or all of them) says of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

/// A window's numbers as they appear in events and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One gate's verdict with the numbers it was reached on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: String,
    pub threshold: String,
    pub verdict: Verdict,
    pub measured: String,
    pub detail: String,
    pub candidate: WindowSummary,
    pub baseline: Option<WindowSummary>,
}

/// Every gate of a step, judged together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub results: Vec<GateResult>,
    /// How many nodes' traffic the windows sum (absent: one server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,
}

impl Evaluation {
    /// The first failed gate, for the rollback record.
    pub fn failed(&self) -> Option<&GateResult> {
        self.results.iter().find(|r| r.verdict == Verdict::Fail)
    }
}

/// `GET /v1/functions/{fn}/rollout`: the deployment on a route, each
/// version's numbers over the last few seconds, the latest verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub function: String,
    pub environment: String,
    /// The latest deployment still owns the route.
    pub active: bool,
    /// The latest deployment of the route, active or not.
    pub deployment: Option<DeploymentRecord>,
    /// Where the running deployment stands (none when nothing runs).
    pub step: Option<StepView>,
    pub weights: Vec<WeightedVersion>,
    pub versions: Vec<VersionWindow>,
    /// The latest evaluation of the running deployment.
    pub gates: Option<Evaluation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// 1-based index of the step (0 before the first).
    pub index: usize,
    pub of: usize,
    /// The candidate's weight in this step.
    pub weight: u32,
    pub started_at: i64,
    pub next_at: Option<i64>,
    pub phase: String,
}

/// The role a version plays in a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionRole {
    Candidate,
    Baseline,
    Stable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionWindow {
    pub version: u64,
    pub digest: String,
    pub weight: u32,
    pub role: VersionRole,
    pub window_s: f64,
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}
