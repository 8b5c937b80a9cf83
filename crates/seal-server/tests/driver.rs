//! The deploy service and the rollout driver through the in-process
//! `TestServer`: real SQLite, real OCI layout, real wasmtime, no spawned
//! binary and no socket for the traffic.
//!
//! The driver's clock is tokio's, so these tests pause it once a
//! deployment is under way and move it by hand: a 30 s step takes no wall
//! time. While the clock is paused the test never parks the runtime (it
//! spins with `yield_now`), because a parked runtime would let tokio
//! auto-advance the clock while SQLite works on its own thread.
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use seal_api_types::DeploymentState;
use seal_control::ControlError;
use seal_control::rollout::plan::RolloutSpec;
use seal_control::rollout::{Command, Progressive};
use seal_control::trust::Approvals;
use seal_server::testing::TestServer;
use serde_json::json;
use std::time::Duration;

const ENV: &str = "production";
const TICK: Duration = Duration::from_millis(100);

fn component(name: &str) -> Vec<u8> {
    std::fs::read(guests::guest(name)).unwrap()
}

/// `api@1` (echo) serving production all at once, and `api@2` published
/// from `candidate` (not serving).
async fn two_versions(candidate: &str) -> TestServer {
    let s = TestServer::start().await.unwrap();
    let v1 = s.publish("api", &component("echo"), None).await.unwrap();
    assert_eq!(v1.version, 1);
    let v2 = s
        .publish("api", &component(candidate), Some("the candidate"))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    s.control()
        .deploy("api", 1, None, None, "test", Approvals::default())
        .await
        .unwrap();
    s
}

/// Starts a progressive deployment of `api@2`; returns its id once the
/// driver has applied its first step.
async fn roll_out(s: &TestServer, spec: serde_json::Value) -> u64 {
    let spec: RolloutSpec = serde_json::from_value(spec).unwrap();
    let started = s
        .control()
        .deploy_progressive(
            "api",
            2,
            None,
            None,
            "test",
            spec,
            false,
            Approvals::default(),
        )
        .await
        .unwrap();
    let Progressive::Started { deployment, .. } = started else {
        panic!("only planned: {started:?}");
    };
    let id = deployment.id;
    let wall = std::time::Instant::now();
    while candidate_weight(s) == 0 {
        assert!(wall.elapsed() < Duration::from_secs(20), "no first step");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

fn candidate_weight(s: &TestServer) -> u32 {
    s.weights(ENV, "api")
        .iter()
        .find(|(v, _)| *v == 2)
        .map_or(0, |(_, w)| *w)
}

/// Lets every task run (the clock stays where it is) until `done`, for at
/// most 20 s of wall time.
async fn settle(what: &str, mut done: impl FnMut() -> bool) {
    let wall = std::time::Instant::now();
    while !done() {
        assert!(
            wall.elapsed() < Duration::from_secs(20),
            "still waiting for {what}"
        );
        tokio::task::yield_now().await;
    }
}

/// Lets every task run for a moment of wall time, clock still.
async fn spin(wall: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < wall {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock by `total` in ticks, letting the driver act on
/// each, and checks `each` after every tick.
async fn advance(total: Duration, by: Duration, mut each: impl FnMut()) {
    let mut moved = Duration::ZERO;
    while moved < total {
        tokio::time::advance(by).await;
        moved += by;
        spin(Duration::from_millis(2)).await;
        each();
    }
}

/// On a paused clock: the 30 s step at 50% holds to its interval, then
/// the deployment ends; the clock runs again after.
async fn last_step_to_the_end(s: &TestServer) {
    advance(Duration::from_millis(29_800), TICK, || {
        assert_eq!(candidate_weight(s), 50);
    })
    .await;
    advance(Duration::from_millis(500), TICK, || {}).await;
    settle("the end", || s.control().rollouts().running().is_empty()).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_step_advances_exactly_at_its_interval() {
    let s = two_versions("echo").await;
    let id = roll_out(
        &s,
        json!({"strategy": "canary", "steps": [10, 50, 100], "interval_ms": 30_000,
               "gates": {"min_requests": 0}}),
    )
    .await;
    tokio::time::pause();
    let step_began = tokio::time::Instant::now();
    assert_eq!(candidate_weight(&s), 10);
    // Up to just before the interval, the step holds.
    advance(Duration::from_millis(29_800), TICK, || {
        assert_eq!(candidate_weight(&s), 10, "moved before its interval");
    })
    .await;
    // The next tick or two end it (a tick judges the time it began at).
    let mut at = None;
    advance(Duration::from_millis(500), TICK, || {
        if at.is_none() && candidate_weight(&s) == 50 {
            at = Some(step_began.elapsed());
        }
    })
    .await;
    settle("step 2", || candidate_weight(&s) == 50).await;
    let at = at.unwrap_or_else(|| step_began.elapsed());
    assert!(
        at >= Duration::from_secs(30) && at <= Duration::from_millis(30_300),
        "step 2 at {at:?}"
    );
    // And the same for the last step, then success.
    last_step_to_the_end(&s).await;
    let (d, events) = s.control().deployment(id).await.unwrap();
    assert_eq!(d.state, DeploymentState::Succeeded);
    assert_eq!(s.weights(ENV, "api"), [(2, 100)]);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "started",
            "step",
            "gate",
            "step",
            "gate",
            "promoted",
            "succeeded"
        ],
        "{events:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_breach_rolls_back_on_the_next_tick() {
    let s = two_versions("fail").await;
    let id = roll_out(
        &s,
        json!({"strategy": "canary", "steps": [50, 100], "interval_ms": 600_000,
               "gates": {"max_error_rate": 0.01, "min_requests": 5}}),
    )
    .await;
    // The candidate fails every request sent to it (pinned, as the
    // `seal-version` header pins).
    for _ in 0..20 {
        assert_eq!(s.invoke(ENV, "api", Some(2)).await, Some(500));
    }
    tokio::time::pause();
    let breach = tokio::time::Instant::now();
    tokio::time::advance(TICK).await;
    settle("the rollback", || s.weights(ENV, "api") == [(1, 100)]).await;
    assert!(
        breach.elapsed() <= 2 * TICK,
        "rolled back after {:?}, not on the next tick",
        breach.elapsed()
    );
    settle("the driver to end", || {
        s.control().rollouts().running().is_empty()
    })
    .await;
    tokio::time::resume();
    let (d, events) = s.control().deployment(id).await.unwrap();
    assert_eq!(d.state, DeploymentState::RolledBack);
    let gate = events
        .iter()
        .rfind(|e| e.kind == "gate")
        .expect("the failed gate is recorded");
    assert_eq!(gate.detail["verdict"], "fail", "{:?}", gate.detail);
    // The baseline serves everyone again.
    assert_eq!(s.invoke(ENV, "api", None).await, Some(200));
    s.shutdown().await;
}

#[tokio::test]
async fn a_paused_deployment_waits_for_approval() {
    let s = two_versions("echo").await;
    let id = roll_out(
        &s,
        json!({"strategy": "canary", "steps": [50, 100], "interval_ms": 10_000,
               "approve_before_promote": true, "gates": {"min_requests": 0}}),
    )
    .await;
    tokio::time::pause();
    advance(Duration::from_millis(10_300), TICK, || {}).await;
    settle("the pause", || {
        s.control()
            .rollouts()
            .live(id)
            .is_some_and(|l| l.phase == "waiting for approval")
    })
    .await;
    // Minutes pass; nothing moves without an approval.
    advance(Duration::from_secs(240), Duration::from_secs(1), || {
        assert_eq!(candidate_weight(&s), 50, "moved without approval");
    })
    .await;
    tokio::time::resume();
    let (d, _) = s.control().deployment(id).await.unwrap();
    assert_eq!(d.state, DeploymentState::Paused);
    s.control()
        .command(id, Command::Approve, "approver")
        .await
        .unwrap();
    let wall = std::time::Instant::now();
    while !s.control().rollouts().running().is_empty() {
        assert!(wall.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (d, events) = s.control().deployment(id).await.unwrap();
    assert_eq!(d.state, DeploymentState::Succeeded);
    assert!(events.iter().any(|e| e.kind == "approved"), "{events:?}");
    assert_eq!(s.weights(ENV, "api"), [(2, 100)]);
    s.shutdown().await;
}

#[tokio::test]
async fn a_restart_resumes_at_the_committed_step() {
    let mut s = two_versions("echo").await;
    let id = roll_out(
        &s,
        json!({"strategy": "canary", "steps": [10, 50, 100], "interval_ms": 30_000,
               "gates": {"min_requests": 0}}),
    )
    .await;
    tokio::time::pause();
    advance(Duration::from_millis(30_300), TICK, || {}).await;
    settle("step 2", || candidate_weight(&s) == 50).await;
    tokio::time::resume();
    s.restart().await.unwrap();
    // The new server serves the committed step and resumes its driver.
    assert_eq!(candidate_weight(&s), 50);
    let wall = std::time::Instant::now();
    while s.control().rollouts().running() != [id] {
        assert!(wall.elapsed() < Duration::from_secs(20), "not resumed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (d, events) = s.control().deployment(id).await.unwrap();
    assert_eq!((d.state, d.step), (DeploymentState::Progressing, 2));
    let resumed = events.iter().rfind(|e| e.kind == "resumed").unwrap();
    assert_eq!(resumed.detail["step"], 2);
    // Its clock restarted with the new process: a full interval from now.
    tokio::time::pause();
    last_step_to_the_end(&s).await;
    let (d, _) = s.control().deployment(id).await.unwrap();
    assert_eq!(d.state, DeploymentState::Succeeded);
    s.shutdown().await;
}

#[tokio::test]
async fn the_deploy_service_refuses_with_typed_errors() {
    let s = two_versions("echo").await;
    let c = s.control();
    // An unknown version, function or environment.
    let e = c
        .deploy("api", 9, None, None, "test", Approvals::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    let e = c
        .deploy("nope", 1, None, None, "test", Approvals::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    let e = c
        .deploy(
            "api",
            2,
            Some("prodution"),
            None,
            "test",
            Approvals::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::UnknownEnvironment { name, .. } if name == "prodution"),
        "{e:?}"
    );
    // Nothing to roll back to yet.
    let e = c
        .rollback("api", None, None, "test", Approvals::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::NoPreviousVersion(_)), "{e:?}");

    // While a rollout runs, only its driver moves the route.
    let id = roll_out(
        &s,
        json!({"strategy": "canary", "steps": [10, 100], "interval_ms": 600_000,
               "gates": {"min_requests": 0}}),
    )
    .await;
    let e = c
        .deploy("api", 1, None, None, "test", Approvals::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ControlError::DeploymentInProgress { id: busy, .. } if busy == id),
        "{e:?}"
    );
    let e = c
        .rollback("api", None, Some(1), "test", Approvals::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ControlError::DeploymentInProgress { .. }),
        "{e:?}"
    );
    assert_eq!(candidate_weight(&s), 10, "the refusals changed nothing");
    let e = c.command(id, Command::Approve, "test").await.unwrap_err();
    assert!(matches!(e, ControlError::NotPaused(_)), "{e:?}");
    c.command(id, Command::Abort, "test").await.unwrap();
    let e = c.command(id, Command::Abort, "test").await.unwrap_err();
    assert!(matches!(e, ControlError::NotActive { .. }), "{e:?}");
    assert_eq!(s.weights(ENV, "api"), [(1, 100)]);

    // A policy that requires a signature refuses an unsigned artifact.
    let key = seal_trust::SigningKey::generate();
    c.trust()
        .set_policy(
            "production",
            true,
            &[key.public_key().to_pem()],
            Default::default(),
            "admin",
        )
        .await
        .unwrap();
    let e = c
        .deploy("api", 2, None, None, "test", Approvals::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::PolicyRefused(_)), "{e:?}");
    assert!(
        e.to_string().contains("refused by production's policy"),
        "{e}"
    );
    assert_eq!(s.weights(ENV, "api"), [(1, 100)]);
    s.shutdown().await;
}
