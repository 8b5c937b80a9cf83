//! What a progressive deployment will do: the settings a user asks for
//! ([`RolloutSpec`]), checked and expanded into steps ([`Plan`]). The plan
//! is stored with the deployment, so a restarted server resumes exactly
//! what was started.

use super::gates::{Gates, Judge};
use crate::error::{ControlError, ControlResult};
use seal_state::WeightedVersion;
use serde::{Deserialize, Serialize};

pub use seal_api_types::rollout::{
    Hook, HookExpect, HookPhase, HookRequest, OnInconclusive, RolloutSpec, Strategy,
};

pub const DEFAULT_INTERVAL_MS: u64 = 60_000;
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 600_000;
pub const DEFAULT_SCALE_DOWN_DELAY_MS: u64 = 30_000;
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

/// Bounds on what a deploy request may ask for: every duration and count
/// a driver waits on or repeats is finite and sane.
pub const MAX_INTERVAL_MS: u64 = 7 * 24 * 3_600_000;
pub const MAX_PROGRESS_DEADLINE_MS: u64 = 30 * 24 * 3_600_000;
pub const MAX_SCALE_DOWN_DELAY_MS: u64 = 24 * 3_600_000;
pub const MAX_MIN_REQUESTS: u64 = 1_000_000_000;
pub const MAX_HOOKS: usize = 16;
pub const MAX_HOOK_HEADERS: usize = 32;
pub const MAX_HOOK_BODY_BYTES: usize = 64 << 10;
pub const MAX_TEXT_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRef {
    pub version: u64,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// 1-based.
    pub index: usize,
    /// The candidate's weight during this step.
    pub weight: u32,
    /// How long the step is judged (0 for the final, promoting step).
    pub duration_ms: u64,
    pub gated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateLine {
    pub gate: String,
    pub threshold: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookLine {
    pub name: String,
    pub phase: HookPhase,
}

/// A checked, expanded rollout: stored with the deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub function: String,
    pub environment: String,
    pub strategy: Strategy,
    pub baseline: VersionRef,
    pub candidate: VersionRef,
    pub current_route: Vec<WeightedVersion>,
    pub steps: Vec<PlanStep>,
    pub gates: Vec<GateLine>,
    pub gate_settings: Gates,
    pub min_requests: u64,
    pub on_inconclusive: OnInconclusive,
    pub progress_deadline_ms: u64,
    pub approve_before_promote: bool,
    pub scale_down_delay_ms: Option<u64>,
    pub sticky_header: Option<String>,
    pub notify: Option<String>,
    pub hooks: Vec<HookLine>,
    pub hook_specs: Vec<Hook>,
    pub rollback_target: Vec<WeightedVersion>,
    /// Longest the deployment can take if every step waits until its
    /// progress deadline (plus the blue/green scale-down delay).
    pub worst_case_ms: u64,
}

impl Plan {
    /// Route weights with the candidate at `weight` (listed first, which
    /// sticky assignment relies on) and the baseline at the rest. The
    /// baseline stays in the route at 0% until the deployment ends, so a
    /// rollback is a weight change on backends already loaded.
    pub fn weights_at(&self, weight: u32) -> Vec<WeightedVersion> {
        vec![
            WeightedVersion {
                version: self.candidate.version,
                weight,
            },
            WeightedVersion {
                version: self.baseline.version,
                weight: 100 - weight,
            },
        ]
    }

    pub fn final_weights(&self) -> Vec<WeightedVersion> {
        vec![WeightedVersion {
            version: self.candidate.version,
            weight: 100,
        }]
    }
}

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError::bad_request(msg)
}

/// Expanding rollout settings into a plan.
pub trait Planning {
    fn plan(
        &self,
        function: &str,
        environment: &str,
        baseline: VersionRef,
        candidate: VersionRef,
        current_route: Vec<WeightedVersion>,
    ) -> ControlResult<Plan>;
}

impl Planning for RolloutSpec {
    /// Checks the settings and expands them into a plan.
    fn plan(
        &self,
        function: &str,
        environment: &str,
        baseline: VersionRef,
        candidate: VersionRef,
        current_route: Vec<WeightedVersion>,
    ) -> ControlResult<Plan> {
        let interval_ms = self.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        if interval_ms == 0 {
            return Err(bad("interval must be longer than 0"));
        }
        let hours = |ms: u64| ms / 3_600_000;
        if interval_ms > MAX_INTERVAL_MS {
            return Err(bad(format!(
                "interval must be at most {} hours",
                hours(MAX_INTERVAL_MS)
            )));
        }
        if self
            .progress_deadline_ms
            .is_some_and(|d| d > MAX_PROGRESS_DEADLINE_MS)
        {
            return Err(bad(format!(
                "progress_deadline must be at most {} hours",
                hours(MAX_PROGRESS_DEADLINE_MS)
            )));
        }
        if self
            .scale_down_delay_ms
            .is_some_and(|d| d > MAX_SCALE_DOWN_DELAY_MS)
        {
            return Err(bad(format!(
                "scale_down_delay must be at most {} hours",
                hours(MAX_SCALE_DOWN_DELAY_MS)
            )));
        }
        if self
            .gates
            .min_requests
            .is_some_and(|n| n > MAX_MIN_REQUESTS)
        {
            return Err(bad(format!(
                "min_requests must be at most {MAX_MIN_REQUESTS}"
            )));
        }
        for (name, text) in [
            ("notify", &self.notify),
            ("sticky_header", &self.sticky_header),
        ] {
            if text.as_ref().is_some_and(|t| t.len() > MAX_TEXT_BYTES) {
                return Err(bad(format!("{name} is longer than {MAX_TEXT_BYTES} bytes")));
            }
        }
        if self.hooks.len() > MAX_HOOKS {
            return Err(bad(format!("at most {MAX_HOOKS} hooks")));
        }
        let g = &self.gates;
        for (name, v) in [
            ("max_error_rate", g.max_error_rate),
            ("max_error_rate_increase", g.max_error_rate_increase),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(bad(format!("{name} must be between 0% and 100%")));
            }
        }
        if g.max_queue_age_ms == Some(0) {
            return Err(bad("max_queue_age must be a duration above 0, e.g. 1m"));
        }
        if let Some(v) = g.max_latency_increase
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(bad("max_latency_increase must be 0% or more"));
        }
        if let Some(l) = g.max_latency {
            if !(l.quantile > 0.0 && l.quantile < 1.0) {
                return Err(bad(
                    "max_latency quantile must be between p0 and p100, e.g. p99 at 200 ms",
                ));
            }
            if !(l.ms.is_finite() && l.ms > 0.0) {
                return Err(bad(
                    "max_latency must be a duration above 0, e.g. p99 at 200 ms",
                ));
            }
        }
        let weights: Vec<u32> = match self.strategy {
            Strategy::AllAtOnce => {
                return Err(bad(
                    "all-at-once has no steps: choose the canary, linear or blue-green strategy",
                ));
            }
            Strategy::Canary => {
                if self.increment.is_some() {
                    return Err(bad(
                        "increment is for the linear strategy; canary takes steps",
                    ));
                }
                let mut steps = self.steps.clone().unwrap_or_else(|| vec![10, 50, 100]);
                if steps.is_empty() {
                    return Err(bad("steps needs at least one weight, e.g. 10, 50, 100"));
                }
                if steps.last() != Some(&100) {
                    steps.push(100);
                }
                steps
            }
            Strategy::Linear => {
                if self.steps.is_some() {
                    return Err(bad(
                        "steps is for the canary strategy; linear takes an increment",
                    ));
                }
                let inc = self.increment.unwrap_or(20);
                if inc == 0 || inc > 100 {
                    return Err(bad("increment must be between 1 and 100"));
                }
                let mut steps: Vec<u32> = (1..).map(|i| i * inc).take_while(|w| *w < 100).collect();
                steps.push(100);
                steps
            }
            Strategy::BlueGreen => {
                if self.steps.is_some() || self.increment.is_some() {
                    return Err(bad(
                        "blue-green has no steps: the candidate is previewed at 0%, then gets 100%",
                    ));
                }
                vec![0, 100]
            }
        };
        let mut last = None;
        for &w in &weights {
            if w > 100 || (w == 0 && self.strategy != Strategy::BlueGreen) {
                return Err(bad(format!(
                    "step weight {w}% is outside 1..100: weights are the candidate's percentage of traffic"
                )));
            }
            if last.is_some_and(|l| w <= l) {
                return Err(bad(format!(
                    "steps must increase: {} comes after {}",
                    w,
                    last.unwrap_or_default()
                )));
            }
            last = Some(w);
        }
        if self.strategy != Strategy::BlueGreen && self.scale_down_delay_ms.is_some() {
            return Err(bad("scale_down_delay is for the blue-green strategy"));
        }
        if let Some(h) = &self.sticky_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(bad(format!(
                "sticky_header {h:?} is not a valid header name"
            )));
        }
        if let Some(url) = &self.notify
            && !url.starts_with("http://")
        {
            // The server's HTTP client is built without TLS.
            return Err(bad(format!(
                "notify must be an http:// URL (https is not supported yet; use a local relay), got {url:?}"
            )));
        }
        let mut names = std::collections::HashSet::new();
        for h in &self.hooks {
            if !names.insert(&h.name) {
                return Err(bad(format!("two hooks are named {:?}", h.name)));
            }
            if !h.request.path.starts_with('/') {
                return Err(bad(format!(
                    "hook {:?}: path must start with '/', got {:?}",
                    h.name, h.request.path
                )));
            }
            if http::Method::from_bytes(h.request.method.as_bytes()).is_err() {
                return Err(bad(format!(
                    "hook {:?}: invalid method {:?}",
                    h.name, h.request.method
                )));
            }
            if h.name.len() > MAX_TEXT_BYTES
                || h.request.path.len() > MAX_TEXT_BYTES
                || h.expect
                    .body_contains
                    .as_ref()
                    .is_some_and(|b| b.len() > MAX_TEXT_BYTES)
            {
                return Err(bad(format!(
                    "hook {:?}: name, path and body_contains are at most {MAX_TEXT_BYTES} bytes each",
                    h.name.chars().take(64).collect::<String>()
                )));
            }
            if http::uri::PathAndQuery::try_from(h.request.path.as_str()).is_err() {
                return Err(bad(format!(
                    "hook {:?}: path {:?} is not a valid request path",
                    h.name, h.request.path
                )));
            }
            if h.request
                .body
                .as_ref()
                .is_some_and(|b| b.len() > MAX_HOOK_BODY_BYTES)
            {
                return Err(bad(format!(
                    "hook {:?}: body is larger than {MAX_HOOK_BODY_BYTES} bytes",
                    h.name
                )));
            }
            if h.request.headers.len() > MAX_HOOK_HEADERS {
                return Err(bad(format!(
                    "hook {:?}: at most {MAX_HOOK_HEADERS} headers",
                    h.name
                )));
            }
            for (k, v) in &h.request.headers {
                // CR, LF and the other bytes a header cannot carry are
                // refused here, not when the hook first runs.
                if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || http::HeaderValue::from_str(v).is_err()
                {
                    return Err(bad(format!(
                        "hook {:?}: header {k:?} is not a valid header name and value",
                        h.name
                    )));
                }
                // The hook's target is the candidate, set by the server.
                if ["host", "seal-version", "seal-preview-token"]
                    .iter()
                    .any(|r| k.eq_ignore_ascii_case(r))
                {
                    return Err(bad(format!(
                        "hook {:?}: header {k:?} is set by the server (a hook always calls the candidate)",
                        h.name
                    )));
                }
            }
        }
        let progress_deadline_ms = self
            .progress_deadline_ms
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_MS.max(interval_ms));
        if progress_deadline_ms < interval_ms {
            return Err(bad("progress_deadline must be at least the interval"));
        }
        let steps: Vec<PlanStep> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| PlanStep {
                index: i + 1,
                weight: w,
                duration_ms: if w < 100 { interval_ms } else { 0 },
                gated: w < 100,
            })
            .collect();
        let scale_down_delay_ms = (self.strategy == Strategy::BlueGreen).then(|| {
            self.scale_down_delay_ms
                .unwrap_or(DEFAULT_SCALE_DOWN_DELAY_MS)
        });
        let gated = steps.iter().filter(|s| s.gated).count() as u64;
        let worst_case_ms = gated * progress_deadline_ms + scale_down_delay_ms.unwrap_or(0);
        Ok(Plan {
            function: function.to_owned(),
            environment: environment.to_owned(),
            strategy: self.strategy,
            rollback_target: vec![WeightedVersion {
                version: baseline.version,
                weight: 100,
            }],
            baseline,
            candidate,
            current_route,
            steps,
            gates: g
                .describe()
                .into_iter()
                .map(|(gate, threshold)| GateLine { gate, threshold })
                .collect(),
            gate_settings: g.clone(),
            // Without gates, steps are time-based: no traffic is required.
            min_requests: g.min_requests.unwrap_or(if g.is_empty() {
                0
            } else {
                DEFAULT_MIN_REQUESTS
            }),
            on_inconclusive: self.on_inconclusive,
            progress_deadline_ms,
            approve_before_promote: self.approve_before_promote,
            scale_down_delay_ms,
            sticky_header: self.sticky_header.clone(),
            notify: self.notify.clone(),
            hooks: self
                .hooks
                .iter()
                .map(|h| HookLine {
                    name: h.name.clone(),
                    phase: h.phase,
                })
                .collect(),
            hook_specs: self.hooks.clone(),
            worst_case_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> RolloutSpec {
        serde_json::from_value(json).unwrap()
    }

    fn plan(json: serde_json::Value) -> ControlResult<Plan> {
        let v = |n| VersionRef {
            version: n,
            digest: format!("sha256:{n}"),
        };
        spec(json).plan("hello", "production", v(1), v(2), vec![])
    }

    #[test]
    fn strategies_expand_into_steps() {
        let w = |p: Plan| p.steps.iter().map(|s| s.weight).collect::<Vec<_>>();
        assert_eq!(
            w(plan(serde_json::json!({"strategy": "canary", "steps": [10, 50]})).unwrap()),
            [10, 50, 100]
        );
        assert_eq!(
            w(plan(serde_json::json!({"strategy": "linear", "increment": 30})).unwrap()),
            [30, 60, 90, 100]
        );
        let bg = plan(serde_json::json!({"strategy": "blue-green", "interval_ms": 1000})).unwrap();
        assert_eq!(w(bg.clone()), [0, 100]);
        assert_eq!(bg.scale_down_delay_ms, Some(DEFAULT_SCALE_DOWN_DELAY_MS));
        let p = plan(serde_json::json!({"strategy": "canary", "interval_ms": 30000, "progress_deadline_ms": 60000})).unwrap();
        assert_eq!(p.worst_case_ms, 2 * 60000);
        assert_eq!(p.weights_at(10)[0].version, 2, "candidate first");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let err = |j| plan(j).unwrap_err().to_string();
        assert!(
            err(serde_json::json!({"strategy": "canary", "steps": [50, 10]})).contains("increase")
        );
        assert!(
            err(serde_json::json!({"strategy": "canary", "steps": [0, 50]})).contains("outside")
        );
        assert!(err(serde_json::json!({"strategy": "canary", "steps": [150]})).contains("outside"));
        assert!(
            err(serde_json::json!({"strategy": "linear", "increment": 0})).contains("increment")
        );
        assert!(
            err(serde_json::json!({"strategy": "canary", "interval_ms": 0})).contains("interval")
        );
        assert!(err(serde_json::json!({"strategy": "all-at-once"})).contains("no steps"));
        assert!(
            err(serde_json::json!({"strategy": "canary", "gates": {"max_latency": {"quantile": 1.5, "ms": 10}}}))
                .contains("quantile")
        );
        assert!(
            err(serde_json::json!({"strategy": "canary", "notify": "ftp://x"})).contains("notify")
        );
    }

    #[test]
    fn every_duration_and_count_is_bounded_and_hook_headers_are_checked() {
        let err = |j| plan(j).unwrap_err().to_string();
        let max = u64::MAX;
        assert!(
            err(serde_json::json!({"strategy": "canary", "interval_ms": max}))
                .contains("interval must be at most")
        );
        assert!(
            err(serde_json::json!({"strategy": "canary", "interval_ms": 1000, "progress_deadline_ms": max}))
                .contains("progress_deadline must be at most")
        );
        assert!(
            err(serde_json::json!({"strategy": "blue-green", "scale_down_delay_ms": max}))
                .contains("scale_down_delay must be at most")
        );
        assert!(
            err(serde_json::json!({"strategy": "canary", "gates": {"max_error_rate": 0.1, "min_requests": max}}))
                .contains("min_requests")
        );
        let hook = |headers: serde_json::Value| {
            serde_json::json!({"strategy": "canary", "hooks": [
                {"name": "h", "request": {"path": "/", "headers": headers}}]})
        };
        assert!(err(hook(serde_json::json!({"x-a": "1\r\nx-injected: 2"}))).contains("header"));
        assert!(err(hook(serde_json::json!({"bad name": "1"}))).contains("header"));
        for reserved in ["Host", "seal-version", "Seal-Preview-Token"] {
            assert!(
                err(hook(serde_json::json!({reserved: "1"}))).contains("set by the server"),
                "{reserved}"
            );
        }
        assert!(plan(hook(serde_json::json!({"authorization": "Bearer t"}))).is_ok());
        let many: Vec<_> = (0..17)
            .map(|i| serde_json::json!({"name": format!("h{i}"), "request": {"path": "/"}}))
            .collect();
        assert!(
            err(serde_json::json!({"strategy": "canary", "hooks": many}))
                .contains("at most 16 hooks")
        );
        assert!(
            err(serde_json::json!({"strategy": "canary", "hooks": [
                {"name": "h", "request": {"path": "/a b"}}]}))
            .contains("not a valid request path")
        );
        // The largest accepted settings still give a finite worst case.
        let p = plan(serde_json::json!({"strategy": "linear", "increment": 1,
            "interval_ms": MAX_INTERVAL_MS, "progress_deadline_ms": MAX_PROGRESS_DEADLINE_MS}))
        .unwrap();
        assert_eq!(p.worst_case_ms, 99 * MAX_PROGRESS_DEADLINE_MS);
    }
}
