//! The rollout settings of a deploy request, as they go over the wire:
//! the strategy, its steps, the gates and the hooks. The server checks
//! them and expands them into a plan; the CLI builds them from its flags.

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
}

impl Gates {
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
