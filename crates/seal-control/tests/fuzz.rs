//! Property tests ("fuzz targets" on stable Rust) for the deploy request,
//! the richest JSON body the API accepts: arbitrary bytes, or a valid
//! request with random edits, parsed as the API parses it and planned as
//! the control plane plans it. The properties: no panic, and every plan
//! that is accepted is within the bounds a driver can run (weights
//! 1..=100 rising to 100, every duration and count bounded).
//!
//! `cargo test` runs 256 cases (the CI smoke run); a long run:
//! `PROPTEST_CASES=200000 cargo test --release -p seal-control --test fuzz`.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use seal_api_types::DeployRequest;
use seal_artifact::fuzzing::input;
use seal_control::rollout::plan::{Planning, VersionRef};
use seal_state::WeightedVersion;

fn sample() -> Vec<u8> {
    serde_json::json!({
        "version": 2, "environment": "staging", "reason": "ship",
        "rollout": {
            "strategy": "canary", "steps": [10, 50], "interval_ms": 30000,
            "progress_deadline_ms": 600000, "on_inconclusive": "wait",
            "approve_before_promote": false, "sticky_header": "x-user",
            "notify": "http://hooks.example.org/t",
            "gates": {"max_error_rate": 0.01, "min_requests": 20,
                      "max_latency": {"quantile": 0.99, "ms": 200.0}, "max_error_rate_increase": 0.02,
                      "max_latency_increase": 0.5},
            "hooks": [{"name": "smoke", "phase": "pre-traffic",
                       "request": {"method": "GET", "path": "/health", "headers": {"x-a": "1"}},
                       "expect": {"status": 200, "body_contains": "ok"}}]
        }
    })
    .to_string()
    .into_bytes()
}

proptest! {
    #[test]
    fn deploy_requests_never_panic_and_accepted_plans_are_bounded(
        bytes in input(sample(), 1024)
    ) {
        let Ok(req) = serde_json::from_slice::<DeployRequest>(&bytes) else {
            return Ok(());
        };
        let Some(spec) = req.rollout else { return Ok(()) };
        let v = |n| VersionRef { version: n, digest: format!("sha256:{}", "a".repeat(64)) };
        let route = vec![WeightedVersion { version: 1, weight: 100 }];
        if let Ok(plan) = spec.plan("api", "staging", v(1), v(2), route) {
            prop_assert!(!plan.steps.is_empty());
            let mut last = 0;
            for s in &plan.steps {
                prop_assert!(s.weight >= last && s.weight <= 100, "{:?}", plan.steps);
                last = s.weight;
            }
            prop_assert_eq!(last, 100);
            prop_assert!(plan.worst_case_ms < u64::MAX / 2);
        }
    }
}

#[test]
fn the_seed_plans() {
    let req: DeployRequest = serde_json::from_slice(&sample()).unwrap();
    let v = |n| VersionRef {
        version: n,
        digest: format!("sha256:{}", "a".repeat(64)),
    };
    let plan = req
        .rollout
        .unwrap()
        .plan(
            "api",
            "staging",
            v(1),
            v(2),
            vec![WeightedVersion {
                version: 1,
                weight: 100,
            }],
        )
        .unwrap();
    assert_eq!(plan.steps.len(), 3);
}
