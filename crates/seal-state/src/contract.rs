//! The contract every state backend keeps, written once. A backend runs
//! it against itself with [`contract_tests!`](crate::contract_tests):
//!
//! ```text
//! async fn fresh() -> (tempfile::TempDir, std::sync::Arc<dyn seal_state::StateStore>) { … }
//! seal_state::contract_tests!(fresh);
//! ```
//!
//! Each check gets an empty store in which the environments `production`
//! and `staging` exist (every backend creates them on first open).

#![allow(clippy::unwrap_used)] // test code: a failed step is a failed contract

use crate::*;
use serde_json::json;

fn version<'a>(
    function: &'a str,
    digest: &'a str,
    manifest: &'a serde_json::Value,
) -> NewVersion<'a> {
    NewVersion {
        function,
        digest,
        manifest,
        component_size: 10,
        compiled_sha256: "x",
        actor: "contract",
    }
}

fn all(version: u64) -> Vec<WeightedVersion> {
    vec![WeightedVersion {
        version,
        weight: 100,
    }]
}

fn deploy<'a>(
    function: &'a str,
    to: &'a [WeightedVersion],
    from: Option<&'a [WeightedVersion]>,
) -> NewDeployment<'a> {
    NewDeployment {
        function,
        environment: "production",
        kind: DeploymentKind::Deploy,
        strategy: Strategy::AllAtOnce,
        from_weights: from,
        to_weights: to,
        actor: "contract",
        reason: None,
        digest: None,
    }
}

fn note<'a>(object: &'a str) -> NewAudit<'a> {
    NewAudit {
        actor: "contract",
        action: "test",
        object,
        digest: None,
        outcome: "ok",
        detail: json!({}),
    }
}

/// Version numbers count up per function; a digest keeps its version; a
/// publish is audited once.
pub async fn versions_count_up_and_a_digest_keeps_its_version(s: &dyn StateStore) {
    let m = json!({"name": "hello"});
    let (v1, created) = s
        .create_version(version("hello", "sha256:a", &m))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(v1.version, 1);
    let (v2, _) = s
        .create_version(version("hello", "sha256:b", &m))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let (other, _) = s
        .create_version(version("other", "sha256:c", &m))
        .await
        .unwrap();
    assert_eq!(other.version, 1, "numbers are per function");
    let (again, created) = s
        .create_version(version("hello", "sha256:a", &m))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.version, 1);
    assert_eq!(s.versions("hello").await.unwrap().len(), 2);
    assert_eq!(
        s.version_by_digest("sha256:b")
            .await
            .unwrap()
            .map(|v| v.version),
        Some(2)
    );
    assert_eq!(s.version("hello", 9).await.unwrap(), None);
    assert!(s.function_exists("hello").await.unwrap());
    assert!(!s.function_exists("nope").await.unwrap());
    assert_eq!(s.functions().await.unwrap(), ["hello", "other"]);
    assert_eq!(
        s.audit_log(10).await.unwrap().len(),
        3,
        "one entry per new version"
    );
    s.set_compiled_sha256("sha256:a", "abc").await.unwrap();
    assert_eq!(
        s.version("hello", 1)
            .await
            .unwrap()
            .unwrap()
            .compiled_sha256
            .as_deref(),
        Some("abc")
    );
}

/// Environments exist only when created; creating one twice is a no-op.
pub async fn environments_are_explicit(s: &dyn StateStore) {
    assert!(s.environment_exists("production").await.unwrap());
    assert!(s.environment_exists("staging").await.unwrap());
    assert!(!s.environment_exists("qa").await.unwrap());
    assert!(s.create_environment("qa", "contract").await.unwrap());
    assert!(!s.create_environment("qa", "contract").await.unwrap());
    assert!(s.environment_exists("qa").await.unwrap());
    let mut all = s.environments().await.unwrap();
    all.sort();
    assert_eq!(all, ["production", "qa", "staging"]);
    assert_eq!(
        s.audit_log(10).await.unwrap().len(),
        1,
        "one creation, one entry"
    );
}

/// A hold is released once, audited, and listed per environment, newest
/// first; releasing it again changes nothing.
pub async fn hold_releases_are_recorded_once(s: &dyn StateStore) {
    let release = |env: &str, version: u64, deployment_id: u64, at: i64| HoldRelease {
        environment: env.into(),
        function: "hello".into(),
        version,
        deployment_id,
        released_at: at,
        released_by: "contract".into(),
    };
    assert!(s.hold_releases(None).await.unwrap().is_empty());
    assert!(
        s.release_hold(&release("production", 2, 7, 1_000))
            .await
            .unwrap()
    );
    assert!(
        !s.release_hold(&release("production", 2, 7, 2_000))
            .await
            .unwrap()
    );
    assert!(
        s.release_hold(&release("production", 2, 9, 3_000))
            .await
            .unwrap()
    );
    assert!(
        s.release_hold(&release("staging", 2, 8, 4_000))
            .await
            .unwrap()
    );
    let production = s.hold_releases(Some("production")).await.unwrap();
    assert_eq!(
        production,
        vec![
            release("production", 2, 9, 3_000),
            release("production", 2, 7, 1_000)
        ]
    );
    assert_eq!(s.hold_releases(None).await.unwrap().len(), 3);
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(
        log.iter().filter(|e| e.action == "hold.release").count(),
        3,
        "{log:?}"
    );
    assert_eq!(log[0].object, "staging/hello");
    assert_eq!(log[0].detail["deployment"], 8);
    assert!(s.verify_audit().await.unwrap().ok);
}

/// The file applied to an environment replaces the one before, per
/// environment; several are recorded together.
pub async fn applied_files_replace_per_environment(s: &dyn StateStore) {
    let file = |env: &str, text: &str, commit: Option<&str>, at: i64| AppliedFile {
        environment: env.into(),
        file: text.into(),
        file_digest: format!("sha256:{text}"),
        commit: commit.map(str::to_owned),
        actor: "contract".into(),
        applied_at: at,
    };
    assert!(s.applied_files(None).await.unwrap().is_empty());
    s.record_applied(&[
        file("production", "a", Some("c1"), 1),
        file("staging", "a", Some("c1"), 1),
    ])
    .await
    .unwrap();
    s.record_applied(&[file("production", "b", None, 2)])
        .await
        .unwrap();
    assert_eq!(
        s.applied_files(None).await.unwrap(),
        vec![
            file("production", "b", None, 2),
            file("staging", "a", Some("c1"), 1)
        ]
    );
    assert_eq!(
        s.applied_files(Some("staging")).await.unwrap(),
        vec![file("staging", "a", Some("c1"), 1)]
    );
}

/// One release runs at a time: a second is refused naming the first; its
/// progress and end are recorded; ids count up, listed newest first.
pub async fn releases_run_one_at_a_time(s: &dyn StateStore) {
    let plan: seal_api_types::desired::ApplyPlan = serde_json::from_value(json!({
        "file_digest": "sha256:ab", "environments": ["production"], "steps": []
    }))
    .unwrap();
    let new = |actor: &str| ReleaseRecord {
        id: 0,
        file_digest: "sha256:ab".into(),
        environments: vec!["production".into()],
        source: None,
        actor: actor.into(),
        node: "n1".into(),
        state: "running".into(),
        created_at: 1_000,
        finished_at: None,
        plan: plan.clone(),
        outcomes: Vec::new(),
    };
    let first = s.start_release(&new("alice")).await.unwrap();
    assert_eq!(first.state, "running");
    match s.start_release(&new("bob")).await {
        Err(StateError::Conflict(m)) => assert!(
            m.contains(&format!("release {}", first.id)) && m.contains("alice"),
            "{m}"
        ),
        other => panic!("a second running release: {other:?}"),
    }
    let step: StepOutcome = serde_json::from_value(json!({
        "environment": "production", "function": "hello", "outcome": "applied",
        "deployment": 3, "from": 1
    }))
    .unwrap();
    s.update_release(first.id, "running", std::slice::from_ref(&step), false)
        .await
        .unwrap();
    let read = s.release(first.id).await.unwrap().unwrap();
    assert_eq!(read.outcomes, vec![step.clone()]);
    assert_eq!(read.finished_at, None);
    assert_eq!(read.node, "n1");
    s.update_release(first.id, "succeeded", &[step], true)
        .await
        .unwrap();
    let second = s.start_release(&new("bob")).await.unwrap();
    assert!(second.id > first.id);
    let list = s.releases(10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, second.id);
    assert_eq!(list[1].state, "succeeded");
    assert!(list[1].finished_at.is_some());
    assert!(s.release(999).await.unwrap().is_none());
}

/// An environment's protection is set, cleared back to the server's rule,
/// and audited; an unknown environment is not created by it.
pub async fn protection_is_set_per_environment(s: &dyn StateStore) {
    assert!(s.environment_protection().await.unwrap().is_empty());
    assert!(
        s.set_environment_protected("staging", Some(true), "contract")
            .await
            .unwrap()
    );
    assert!(
        s.set_environment_protected("production", Some(false), "contract")
            .await
            .unwrap()
    );
    assert_eq!(
        s.environment_protection().await.unwrap(),
        [
            ("production".to_owned(), false),
            ("staging".to_owned(), true)
        ]
    );
    assert!(
        s.set_environment_protected("production", None, "contract")
            .await
            .unwrap()
    );
    assert_eq!(
        s.environment_protection().await.unwrap(),
        [("staging".to_owned(), true)]
    );
    assert!(
        !s.set_environment_protected("qa", Some(true), "contract")
            .await
            .unwrap()
    );
    assert!(!s.environment_exists("qa").await.unwrap());
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(log.len(), 3, "one entry per change, none for the refusal");
    assert!(log.iter().all(|e| e.action == "environment.protect"));
}

/// A deployment moves the route, with its events and its audit entry.
pub async fn a_deployment_moves_the_route_with_its_events_and_audit(s: &dyn StateStore) {
    let m = json!({});
    s.create_version(version("hello", "sha256:a", &m))
        .await
        .unwrap();
    s.create_version(version("hello", "sha256:b", &m))
        .await
        .unwrap();
    let audited = s.audit_log(100).await.unwrap().len();
    let d1 = s
        .record_deployment(deploy("hello", &all(1), None))
        .await
        .unwrap();
    assert_eq!(d1.state, DeploymentState::Succeeded);
    let route = s.route("production", "hello").await.unwrap().unwrap();
    assert_eq!(route.weights, all(1));
    assert_eq!(route.deployment_id, d1.id);
    let d2 = s
        .record_deployment(deploy("hello", &all(2), Some(&all(1))))
        .await
        .unwrap();
    assert!(d2.id > d1.id, "ids grow");
    assert_eq!(
        s.route("production", "hello")
            .await
            .unwrap()
            .unwrap()
            .weights,
        all(2)
    );
    let (d, events) = s.deployment(d2.id).await.unwrap().unwrap();
    assert_eq!(d.from_weights, Some(all(1)));
    assert!(!events.is_empty());
    assert_eq!(s.audit_log(100).await.unwrap().len(), audited + 2);
    let history = s.deployments("hello", Some("production")).await.unwrap();
    assert_eq!(
        history.iter().map(|d| d.id).collect::<Vec<_>>(),
        [d2.id, d1.id],
        "newest first"
    );
    assert_eq!(s.routes().await.unwrap().len(), 1);
    assert!(s.deployment(d2.id + 100).await.unwrap().is_none());
}

/// An active progressive deployment owns its route: another deployment is
/// `Busy`; once it ended, a transition is `NotActive`.
pub async fn an_active_rollout_owns_its_route(s: &dyn StateStore) {
    let m = json!({});
    s.create_version(version("hello", "sha256:a", &m))
        .await
        .unwrap();
    s.create_version(version("hello", "sha256:b", &m))
        .await
        .unwrap();
    s.record_deployment(deploy("hello", &all(1), None))
        .await
        .unwrap();
    let start = [
        WeightedVersion {
            version: 2,
            weight: 0,
        },
        WeightedVersion {
            version: 1,
            weight: 100,
        },
    ];
    let plan = json!({"steps": [10, 100]});
    let d = s
        .start_rollout(NewRollout {
            function: "hello",
            environment: "production",
            strategy: Strategy::Canary,
            plan: &plan,
            baseline: 1,
            candidate: 2,
            from_weights: Some(&all(1)),
            weights: &start,
            sticky_header: None,
            actor: "contract",
            reason: None,
            digest: Some("sha256:b"),
        })
        .await
        .unwrap();
    assert!(d.is_active(), "{}", d.state);
    assert_eq!(s.active_deployments().await.unwrap().len(), 1);
    let busy = s
        .record_deployment(deploy("hello", &all(2), Some(&all(1))))
        .await
        .unwrap_err();
    assert!(
        matches!(busy, StateError::Busy { id, .. } if id == d.id),
        "{busy:?}"
    );
    // The refused deployment changed nothing.
    assert_eq!(
        s.route("production", "hello")
            .await
            .unwrap()
            .unwrap()
            .weights,
        start
    );
    s.record_event(d.id, "gate", &json!({"verdict": "pass"}))
        .await
        .unwrap();
    let ended = s
        .transition(
            d.id,
            Transition {
                state: DeploymentState::Succeeded,
                step: Some(2),
                weights: Some(&all(2)),
                finished: true,
                event: "succeeded",
                detail: json!({}),
                audit: Some(("deploy", "succeeded", "contract")),
                fence: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ended.state, DeploymentState::Succeeded);
    assert!(s.active_deployments().await.unwrap().is_empty());
    assert_eq!(
        s.route("production", "hello")
            .await
            .unwrap()
            .unwrap()
            .weights,
        all(2)
    );
    let again = s
        .transition(
            d.id,
            Transition {
                state: DeploymentState::RolledBack,
                step: None,
                weights: Some(&all(1)),
                finished: true,
                event: "rolled_back",
                detail: json!({}),
                audit: None,
                fence: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, StateError::NotActive(id) if id == d.id),
        "{again:?}"
    );
    let (_, events) = s.deployment(d.id).await.unwrap().unwrap();
    assert!(events.iter().any(|e| e.kind == "gate"));
}

/// Every entry is chained to the one before it, from the genesis hash.
pub async fn the_audit_log_is_one_chain(s: &dyn StateStore) {
    assert_eq!(s.verify_audit().await.unwrap().entries, 0);
    for o in ["a", "b", "c"] {
        s.audit(note(o)).await.unwrap();
    }
    let v = s.verify_audit().await.unwrap();
    assert!(v.ok && v.entries == 3 && v.first_broken.is_none(), "{v:?}");
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(log[0].object, "c", "newest first");
    assert_eq!(log[0].hash, v.head);
    assert_eq!(log[2].prev_hash.as_deref(), Some(AUDIT_GENESIS));
    assert_eq!(log[0].prev_hash, log[1].hash);
    assert_eq!(s.audit_log(1).await.unwrap().len(), 1);
}

/// A budget and its audit entry are one change; deleting nothing records
/// nothing; an alert is claimed once per period.
pub async fn budgets_are_audited_with_their_change(s: &dyn StateStore) {
    let b = Budget {
        function: "hello".into(),
        gb_seconds: 5.0,
        period: "day".into(),
        webhook: None,
        alerted_period: None,
        updated_by: "contract".into(),
        updated_at: 1,
    };
    s.set_budget(&b, note("hello")).await.unwrap();
    assert_eq!(s.budget("hello").await.unwrap(), Some(b.clone()));
    assert_eq!(s.budgets().await.unwrap().len(), 1);
    assert_eq!(s.audit_log(10).await.unwrap().len(), 1);
    assert!(s.claim_budget_alert("hello", 100).await.unwrap());
    assert!(!s.claim_budget_alert("hello", 100).await.unwrap());
    assert!(s.claim_budget_alert("hello", 200).await.unwrap());
    assert!(s.delete_budget("hello", note("hello")).await.unwrap());
    assert!(!s.delete_budget("hello", note("hello")).await.unwrap());
    assert_eq!(
        s.audit_log(10).await.unwrap().len(),
        2,
        "no entry for nothing deleted"
    );
    assert_eq!(s.budget("hello").await.unwrap(), None);
}

/// Usage deltas add up per hour and version.
pub async fn usage_adds_up_per_version(s: &dyn StateStore) {
    let delta = |version, invocations| UsageDelta {
        function: "hello".into(),
        environment: "production".into(),
        version,
        hour: HOUR_MS * 10,
        invocations,
        gb_seconds: invocations as f64 * 0.5,
    };
    s.add_usage(&[delta(1, 2), delta(2, 1)]).await.unwrap();
    s.add_usage(&[delta(1, 3)]).await.unwrap();
    let rows = s.usage("hello", 0).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].version, rows[0].invocations), (1, 5));
    assert_eq!(rows[0].gb_seconds, 2.5);
    assert!(s.usage("hello", HOUR_MS * 11).await.unwrap().is_empty());
}

/// Tokens are found by hash only, and a revoked one says so.
pub async fn tokens_are_found_by_hash_and_revoked(s: &dyn StateStore) {
    assert_eq!(s.token_count().await.unwrap(), 0);
    let envs = ["staging".to_owned()];
    let t = s
        .create_token(NewToken {
            id: "tk_1",
            name: "ci",
            role: "deployer",
            environments: Some(&envs),
            queues: None,
            hash: "h1",
            actor: "contract",
        })
        .await
        .unwrap();
    assert_eq!(t.environments.as_deref(), Some(&envs[..]));
    assert_eq!(
        s.token_by_hash("h1").await.unwrap().map(|t| t.id),
        Some("tk_1".into())
    );
    assert_eq!(s.token_by_hash("h2").await.unwrap(), None);
    let revoked = s.revoke_token("tk_1", "contract").await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(s.revoke_token("tk_9", "contract").await.unwrap().is_none());
    assert_eq!(s.tokens().await.unwrap().len(), 1);
    assert_eq!(s.token_count().await.unwrap(), 1);
    let queues = ["orders".to_owned()];
    let p = s
        .create_token(NewToken {
            id: "tk_2",
            name: "shop",
            role: "publisher",
            environments: None,
            queues: Some(&queues),
            hash: "h2",
            actor: "contract",
        })
        .await
        .unwrap();
    assert_eq!(p.queues.as_deref(), Some(&queues[..]));
    let back = s.token_by_hash("h2").await.unwrap().unwrap();
    assert_eq!(back.queues.as_deref(), Some(&queues[..]));
}

/// Settings change by revision; a revision names keys, never values.
pub async fn settings_change_by_revision(s: &dyn StateStore) {
    let change = |set: Vec<(String, Vec<u8>)>, unset: Vec<String>| SettingChange {
        function: "hello",
        environment: "production",
        secret: false,
        set,
        unset,
        actor: "contract",
    };
    assert_eq!(s.settings("hello", "production").await.unwrap().0, 0);
    let r1 = s
        .change_settings(change(vec![("GREETING".into(), b"hi".to_vec())], vec![]))
        .await
        .unwrap();
    let r2 = s
        .change_settings(change(
            vec![("OTHER".into(), b"x".to_vec())],
            vec!["GREETING".into()],
        ))
        .await
        .unwrap();
    assert!(r2 > r1);
    let (revision, rows) = s.settings("hello", "production").await.unwrap();
    assert_eq!(revision, r2);
    assert_eq!(
        rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["OTHER"]
    );
    assert_eq!(rows[0].value, b"x");
    let revisions = s.setting_revisions("hello", None, 10).await.unwrap();
    assert_eq!(revisions.len(), 2);
    assert!(
        !revisions
            .iter()
            .any(|r| r.changes.to_string().contains("hi"))
    );
    assert_eq!(
        s.setting_scopes().await.unwrap(),
        [("hello".to_owned(), "production".to_owned())]
    );
}

/// A policy is stored per environment with who set it.
pub async fn policies_are_per_environment(s: &dyn StateStore) {
    assert_eq!(s.policy("production").await.unwrap(), None);
    let p = json!({"require_signature": true});
    s.set_policy("production", &p, "contract").await.unwrap();
    let (stored, _, by) = s.policy("production").await.unwrap().unwrap();
    assert_eq!((stored, by.as_str()), (p, "contract"));
}

/// A pipeline is stored per environment with who set it, replaced, and
/// removed; each change is audited.
pub async fn pipelines_are_per_environment(s: &dyn StateStore) {
    assert_eq!(s.pipeline("production").await.unwrap(), None);
    assert!(s.pipelines().await.unwrap().is_empty());
    let p = json!({"after": "staging", "soak_ms": 1800000});
    s.set_pipeline("production", Some(&p), "contract")
        .await
        .unwrap();
    let (stored, _, by) = s.pipeline("production").await.unwrap().unwrap();
    assert_eq!((stored, by.as_str()), (p, "contract"));
    let q = json!({"after": "staging", "soak_ms": 600000});
    s.set_pipeline("production", Some(&q), "admin")
        .await
        .unwrap();
    assert_eq!(
        s.pipelines().await.unwrap(),
        [("production".to_owned(), q.clone())]
    );
    assert_eq!(s.pipeline("staging").await.unwrap(), None);
    s.set_pipeline("production", None, "admin").await.unwrap();
    assert_eq!(s.pipeline("production").await.unwrap(), None);
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(
        log.iter().filter(|a| a.action == "pipeline.set").count(),
        3,
        "{log:?}"
    );
}

/// A capture keeps requests only while it runs and up to its maximum;
/// stopping, restarting and deleting it are audited.
pub async fn captures_keep_requests_up_to_their_maximum(s: &dyn StateStore) {
    let capture = Capture {
        environment: "production".into(),
        function: "hello".into(),
        rate_percent: 5.0,
        max: 3,
        body_limit: 1024,
        drop_headers: vec!["x-api-key".into()],
        started_at: 1,
        started_by: "contract".into(),
        stopped_at: None,
        stopped_by: None,
        captured: 0,
    };
    let request = |n: u8| CapturedRequest {
        id: 0,
        environment: "production".into(),
        function: "hello".into(),
        version: 2,
        at: 10 + i64::from(n),
        method: "POST".into(),
        path: format!("/orders/{n}?x=1"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: vec![0, n, 255],
        body_truncated: n == 1,
        status: 201,
        response_digest: "sha256:ab".into(),
        response_bytes: 2,
        duration_ms: 3,
    };
    // None running: nothing is kept.
    assert_eq!(s.add_captured(&[request(0)]).await.unwrap(), 0);
    s.start_capture(&capture).await.unwrap();
    assert_eq!(s.add_captured(&[request(1), request(2)]).await.unwrap(), 2);
    assert_eq!(
        s.add_captured(&[request(3), request(4)]).await.unwrap(),
        1,
        "up to its maximum"
    );
    let kept = s.captured("production", "hello", 10).await.unwrap();
    assert_eq!(kept.len(), 3);
    assert!(kept[0].id < kept[1].id && kept[1].id < kept[2].id);
    let first = CapturedRequest {
        id: kept[0].id,
        ..request(1)
    };
    assert_eq!(kept[0], first, "read back as written, bytes and all");
    assert_eq!(s.captured("production", "hello", 1).await.unwrap().len(), 1);
    assert!(s.captured("staging", "hello", 10).await.unwrap().is_empty());
    let all = s.captures().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0],
        Capture {
            captured: 3,
            ..capture.clone()
        }
    );
    assert!(!all[0].running(), "full");

    assert!(
        s.stop_capture("production", "hello", "admin")
            .await
            .unwrap()
    );
    assert!(
        !s.stop_capture("production", "hello", "admin")
            .await
            .unwrap()
    );
    let stopped = &s.captures().await.unwrap()[0];
    assert_eq!(stopped.stopped_by.as_deref(), Some("admin"));
    // Restarted with a larger maximum, it keeps what it kept and more.
    s.start_capture(&Capture {
        max: 5,
        ..capture.clone()
    })
    .await
    .unwrap();
    let restarted = &s.captures().await.unwrap()[0];
    assert!(restarted.running() && restarted.stopped_at.is_none());
    assert_eq!(s.add_captured(&[request(5)]).await.unwrap(), 1);
    assert_eq!(
        s.delete_capture("production", "hello", "admin")
            .await
            .unwrap(),
        Some(4)
    );
    assert_eq!(
        s.delete_capture("production", "hello", "admin")
            .await
            .unwrap(),
        None
    );
    assert!(s.captures().await.unwrap().is_empty());
    assert!(
        s.captured("production", "hello", 10)
            .await
            .unwrap()
            .is_empty()
    );
    let log = s.audit_log(20).await.unwrap();
    for action in ["capture.start", "capture.stop", "capture.delete"] {
        assert!(log.iter().any(|a| a.action == action), "{action}: {log:?}");
    }
}

/// Each flag change is a revision of the whole set, per environment, with
/// the keys it changed; history filters by key.
pub async fn flag_sets_are_revisions_per_environment(s: &dyn StateStore) {
    assert_eq!(s.flags("production").await.unwrap(), None);
    let one = json!({"flags": {"a": {"state": "ENABLED"}}});
    let two = json!({"flags": {"a": {"state": "ENABLED"}, "b": {"state": "DISABLED"}}});
    assert_eq!(
        s.set_flags("production", &one, "apply", &["a".into()], "ann")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.set_flags("production", &two, "apply", &["b".into()], "bob")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.set_flags("staging", &one, "apply", &["a".into()], "ann")
            .await
            .unwrap(),
        1
    );
    let now = s.flags("production").await.unwrap().unwrap();
    assert_eq!(
        (now.revision, &now.flags, now.actor.as_str()),
        (2, &two, "bob")
    );
    let history = s.flag_history("production", None, 10).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [2, 1]
    );
    let of_a = s.flag_history("production", Some("a"), 10).await.unwrap();
    assert_eq!(of_a.len(), 1);
    assert_eq!(of_a[0].changed, ["a"]);
    let all = s.all_flags().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|r| (r.environment.as_str(), r.revision))
            .collect::<Vec<_>>(),
        [("production", 2), ("staging", 1)]
    );
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(log.iter().filter(|a| a.action == "flags.apply").count(), 3);
}

/// An attestation is recorded once per referrer.
pub async fn attestations_are_recorded_once(s: &dyn StateStore) {
    let a = AttestationRecord {
        subject: "sha256:a".into(),
        referrer: "sha256:r".into(),
        envelope: "sha256:e".into(),
        keyid: Some("k".into()),
        created_at: 1,
        actor: "contract".into(),
    };
    assert!(s.add_attestation(&a, "production/hello").await.unwrap());
    assert!(!s.add_attestation(&a, "production/hello").await.unwrap());
    assert_eq!(s.attestations("sha256:a").await.unwrap(), [a]);
    assert!(s.attestations("sha256:b").await.unwrap().is_empty());
    // Removed once, with its own audit entry.
    assert!(
        s.remove_attestation("sha256:a", "sha256:r", "production/hello", "admin")
            .await
            .unwrap()
    );
    assert!(
        !s.remove_attestation("sha256:a", "sha256:r", "production/hello", "admin")
            .await
            .unwrap()
    );
    assert!(s.attestations("sha256:a").await.unwrap().is_empty());
    let log = s.audit_log(10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["attestation.remove", "attestation.attach"]
    );
}

/// One `#[tokio::test]` per contract check, each on a fresh store from
/// `$fresh` (an async fn returning a guard and an `Arc<dyn StateStore>`).
fn queue_record(name: &str) -> QueueRecord {
    QueueRecord {
        environment: "production".into(),
        name: name.into(),
        dedup_window_ms: 60_000,
        created_at: 1,
        created_by: "contract".into(),
    }
}

fn subscription(name: &str, function: &str, queue: &str) -> TriggerRecord {
    TriggerRecord {
        name: name.into(),
        environment: "production".into(),
        function: function.into(),
        spec: TriggerSpec::Queue(seal_api_types::events::QueueSubscription::new(queue)),
        created_at: 1,
        created_by: "contract".into(),
    }
}

fn event<'a>(id: &'a str, body: &'a str) -> NewEvent<'a> {
    NewEvent {
        ce_id: id,
        source: "/shop",
        ty: "order.created",
        event: body,
    }
}

fn attempt(n: u32, outcome: Outcome) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        version: Some(1),
        digest: Some("sha256:aa".into()),
        status: Some(if outcome == Outcome::Ok { 200 } else { 500 }),
        outcome,
        error_kind: None,
        started_at: 10,
        duration_ms: 3,
    }
}

/// An event is stored with one delivery per subscription of its queue;
/// a duplicate in the window adds nothing; a claimed delivery is leased,
/// released at start, and finished once.
pub async fn events_are_delivered_once_per_subscription(s: &dyn StateStore) {
    assert!(s.create_queue(&queue_record("orders")).await.unwrap());
    assert!(!s.create_queue(&queue_record("orders")).await.unwrap());
    assert!(
        s.create_trigger(&subscription("billing-orders", "billing", "orders"))
            .await
            .unwrap()
    );
    assert!(
        s.create_trigger(&subscription("mail-orders", "mail", "orders"))
            .await
            .unwrap()
    );
    assert!(
        !s.create_trigger(&subscription("mail-orders", "mail", "orders"))
            .await
            .unwrap()
    );
    let body = r#"{"specversion":"1.0","id":"a1","source":"/shop","type":"order.created"}"#;
    let first = s
        .enqueue(
            "production",
            "orders",
            &[event("a1", body), event("a2", body)],
            100,
            0,
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|e| !e.duplicate));
    let again = s
        .enqueue("production", "orders", &[event("a1", body)], 200, 50)
        .await
        .unwrap();
    assert!(again[0].duplicate, "within the window");
    assert_eq!(again[0].id, first[0].id);
    let outside = s
        .enqueue("production", "orders", &[event("a1", body)], 300, 150)
        .await
        .unwrap();
    assert!(!outside[0].duplicate, "past the window it is a new event");

    let backlog = s.backlog().await.unwrap();
    let billing = backlog
        .iter()
        .find(|b| b.trigger == "billing-orders")
        .unwrap();
    assert_eq!((billing.pending, billing.running), (3, 0));
    assert_eq!(billing.oldest_enqueued_at, Some(100));
    assert_eq!(billing.queue, "orders");

    // Not due before its time; claimed once; a lease keeps others off.
    assert!(
        s.claim_due("billing-orders", 99, 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = s.claim_due("billing-orders", 100, 1_000, 1).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].attempts, claimed[0].next_attempt), (0, 1));
    assert_eq!(claimed[0].event, body);
    let rest = s.claim_due("billing-orders", 400, 1_000, 10).await.unwrap();
    assert_eq!(rest.len(), 2, "the other two, not the leased one");
    // Past the lease it is due again (a crashed node's claim).
    let expired = s
        .claim_due("billing-orders", 1_000, 2_000, 10)
        .await
        .unwrap();
    assert_eq!(expired.len(), 3);
    assert_eq!(s.release_running(2_500).await.unwrap(), 3);
    let d = s
        .claim_due("billing-orders", 2_500, 9_000, 10)
        .await
        .unwrap();
    assert_eq!(d.len(), 3);
    s.finish_delivery(
        d[0].delivery_id,
        Some(&attempt(1, Outcome::Retryable)),
        &NextStep::Retry {
            at: 5_000,
            error: "500".into(),
        },
        2_600,
    )
    .await
    .unwrap();
    assert_eq!(s.next_due("billing-orders").await.unwrap(), Some(5_000));
    let retry = s
        .claim_due("billing-orders", 5_000, 9_000, 10)
        .await
        .unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0].attempts, retry[0].next_attempt), (1, 2));
    s.finish_delivery(
        retry[0].delivery_id,
        Some(&attempt(2, Outcome::Ok)),
        &NextStep::Done,
        5_100,
    )
    .await
    .unwrap();
    let shown = s.event(d[0].event_id).await.unwrap().unwrap();
    assert_eq!(shown.ce_id, "a1");
    assert_eq!(shown.deliveries.len(), 2, "one per subscription");
    let billing = shown
        .deliveries
        .iter()
        .find(|x| x.trigger == "billing-orders")
        .unwrap();
    assert_eq!(billing.state, DeliveryState::Done);
    assert_eq!(billing.history.len(), 2);
    assert_eq!(billing.history[1].outcome, Outcome::Ok);
    // The mail subscription is untouched by billing's claims.
    assert_eq!(
        s.claim_due("mail-orders", 400, 1_000, 10)
            .await
            .unwrap()
            .len(),
        3
    );

    // A queue read by a trigger is not deleted; without readers it is,
    // with its events.
    assert!(matches!(
        s.delete_queue("production", "orders", "contract").await,
        Err(StateError::Conflict(_))
    ));
    assert!(
        s.delete_trigger("billing-orders", "contract")
            .await
            .unwrap()
    );
    assert!(s.delete_trigger("mail-orders", "contract").await.unwrap());
    assert!(
        s.delete_queue("production", "orders", "contract")
            .await
            .unwrap()
    );
    assert!(s.event(d[0].event_id).await.unwrap().is_none());
    assert!(
        !s.delete_queue("production", "orders", "contract")
            .await
            .unwrap()
    );
    let actions: Vec<String> = s
        .audit_log(20)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in [
        "queue.create",
        "trigger.create",
        "trigger.delete",
        "queue.delete",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    assert!(s.verify_audit().await.unwrap().ok);
}

/// A dead letter keeps its reason and version; redrive starts a new run
/// (attempt numbers go on), pinned when asked; purge deletes it.
pub async fn dead_letters_are_redriven_and_purged(s: &dyn StateStore) {
    s.create_queue(&queue_record("orders")).await.unwrap();
    s.create_trigger(&subscription("billing-orders", "billing", "orders"))
        .await
        .unwrap();
    let body = r#"{"id":"x"}"#;
    s.enqueue(
        "production",
        "orders",
        &[event("x", body), event("y", body)],
        10,
        0,
    )
    .await
    .unwrap();
    let d = s.claim_due("billing-orders", 10, 100, 10).await.unwrap();
    for c in &d {
        s.finish_delivery(
            c.delivery_id,
            Some(&attempt(1, Outcome::Permanent)),
            &NextStep::Dead {
                reason: DeadReason::Permanent,
                error: "status 400".into(),
            },
            20,
        )
        .await
        .unwrap();
    }
    let dead = s
        .dead_letters(Some("production"), Some("orders"))
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, DeadReason::Permanent);
    assert_eq!(dead[0].version, Some(1));
    assert_eq!(dead[0].last_error.as_deref(), Some("status 400"));
    assert!(
        s.dead_letters(None, Some("other"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.dead_letter(dead[0].id).await.unwrap().unwrap(), dead[0]);

    let redriven = s
        .redrive(&[dead[0].id, 999], Some(2), 30, "contract")
        .await
        .unwrap();
    assert_eq!(redriven, vec![dead[0].id]);
    let again = s.claim_due("billing-orders", 30, 100, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].pinned_version, Some(2));
    assert_eq!((again[0].attempts, again[0].next_attempt), (0, 2));
    assert!(s.dead_letter(dead[0].id).await.unwrap().is_none());

    // Retention: the handled event goes once old enough; the dead letter
    // and the pending redrive stay.
    let handled = s
        .enqueue("production", "orders", &[event("z", body)], 40, 0)
        .await
        .unwrap()[0]
        .id;
    let z = s.claim_due("billing-orders", 40, 100, 10).await.unwrap();
    let z = z.iter().find(|c| c.event_id == handled).unwrap();
    s.finish_delivery(
        z.delivery_id,
        Some(&attempt(1, Outcome::Ok)),
        &NextStep::Done,
        41,
    )
    .await
    .unwrap();
    assert_eq!(s.sweep_events(40).await.unwrap(), 0, "not old enough");
    assert_eq!(s.sweep_events(1_000).await.unwrap(), 1);
    assert!(s.event(handled).await.unwrap().is_none());
    assert!(
        s.event(dead[1].event_id).await.unwrap().is_some(),
        "a dead letter stays"
    );
    assert!(
        s.event(dead[0].event_id).await.unwrap().is_some(),
        "a redriven one stays"
    );
    assert_eq!(
        s.purge(&[dead[1].id], "contract").await.unwrap(),
        vec![dead[1].id]
    );
    assert!(s.purge(&[dead[1].id], "contract").await.unwrap().is_empty());
    assert!(s.dead_letters(None, None).await.unwrap().is_empty());
    let actions: Vec<String> = s
        .audit_log(20)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(
        actions.contains(&"dlq.redrive".to_owned()) && actions.contains(&"dlq.purge".to_owned())
    );
}

/// Several producers' enqueues in one transaction keep their order: a
/// duplicate of an event earlier in the same batch is found.
pub async fn enqueues_commit_together_in_order(s: &dyn StateStore) {
    s.create_queue(&queue_record("orders")).await.unwrap();
    s.create_queue(&queue_record("refunds")).await.unwrap();
    s.create_trigger(&subscription("billing-orders", "billing", "orders"))
        .await
        .unwrap();
    let body = r#"{"id":"b1"}"#;
    let one = [event("b1", body)];
    let two = [event("b1", body), event("b2", body)];
    let answers = s
        .enqueue_batch(&[
            Enqueue {
                environment: "production",
                queue: "orders",
                events: &one,
                now: 10,
                dedup_since: 0,
            },
            Enqueue {
                environment: "production",
                queue: "refunds",
                events: &one,
                now: 10,
                dedup_since: 0,
            },
            Enqueue {
                environment: "production",
                queue: "orders",
                events: &two,
                now: 10,
                dedup_since: 0,
            },
        ])
        .await
        .unwrap();
    assert_eq!(answers.len(), 3);
    assert!(!answers[0][0].duplicate);
    assert!(!answers[1][0].duplicate, "another queue: not a duplicate");
    assert!(answers[2][0].duplicate);
    assert_eq!(answers[2][0].id, answers[0][0].id);
    assert!(!answers[2][1].duplicate);
    // Deliveries only for the queue with a subscription.
    assert_eq!(
        s.claim_due("billing-orders", 10, 100, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(s.enqueue_batch(&[]).await.unwrap().is_empty());
}

/// Outcomes and the claims that refill their slots go in one call: what
/// was finished is recorded, each claim takes at most its limit of what
/// is due (never a delivery just finished or still leased), and a repeat
/// of an id within one enqueue is a duplicate of its first.
pub async fn outcomes_commit_with_the_next_claims(s: &dyn StateStore) {
    s.create_queue(&queue_record("orders")).await.unwrap();
    let billing = subscription("billing-orders", "billing", "orders");
    let mail = subscription("mail-orders", "mail", "orders");
    s.create_trigger(&billing).await.unwrap();
    s.create_trigger(&mail).await.unwrap();
    let body = r#"{"id":"c"}"#;
    let added = s
        .enqueue(
            "production",
            "orders",
            &[
                event("c1", body),
                event("c2", body),
                event("c1", body),
                event("c3", body),
                event("c4", body),
            ],
            10,
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        added.iter().map(|e| e.duplicate).collect::<Vec<_>>(),
        [false, false, true, false, false]
    );
    assert_eq!(added[2].id, added[0].id, "the repeat names the first");
    let first = s.claim_due("billing-orders", 10, 100, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let attempt_at = |c: &Claimed, outcome: Outcome, next: NextStep| Finished {
        delivery_id: c.delivery_id,
        attempt: Some(attempt(1, outcome)),
        next,
        at: 20,
    };
    let done = [
        attempt_at(&first[0], Outcome::Ok, NextStep::Done),
        attempt_at(
            &first[1],
            Outcome::Retryable,
            NextStep::Retry {
                at: 5_000,
                error: "500".into(),
            },
        ),
    ];
    let claims = [
        ClaimDue {
            trigger: &billing,
            now: 20,
            lease_until: 200,
            limit: 5,
        },
        ClaimDue {
            trigger: &mail,
            now: 20,
            lease_until: 200,
            limit: 3,
        },
    ];
    let claimed = s.finish_and_claim(&done, &claims).await.unwrap();
    assert_eq!(claimed.len(), 2, "one answer per claim");
    let ids = |cs: &[Claimed]| {
        cs.iter()
            .map(|c| c.delivery_id)
            .collect::<std::collections::HashSet<_>>()
    };
    let again = ids(&claimed[0]);
    assert_eq!(again.len(), 2, "the two not yet claimed: {:?}", claimed[0]);
    assert!(
        again.is_disjoint(&ids(&first)),
        "neither the finished one nor the retry (not due until 5000)"
    );
    assert_eq!(claimed[1].len(), 3, "the limit holds");
    assert!(claimed[1].iter().all(|c| c.trigger == "mail-orders"));
    assert_eq!(
        delivery_of(s, first[0].event_id, "billing-orders").await,
        (DeliveryState::Done, 1)
    );
    assert_eq!(
        s.next_due("billing-orders").await.unwrap(),
        Some(200),
        "the claims' lease ends before the retry is due"
    );
    // Finishing alone (no claims) and claiming alone (nothing finished).
    let last = s.finish_and_claim(&[], &claims[1..]).await.unwrap();
    assert_eq!(last[0].len(), 1, "the fourth; the other three are leased");
    assert!(
        s.finish_and_claim(&[], &claims[1..]).await.unwrap()[0].is_empty(),
        "nothing left due"
    );
    let rest = s
        .finish_and_claim(
            &[attempt_at(&claimed[0][0], Outcome::Ok, NextStep::Done)],
            &[],
        )
        .await
        .unwrap();
    assert!(rest.is_empty());
    let b = s.backlog().await.unwrap();
    let b = b.iter().find(|b| b.trigger == "billing-orders").unwrap();
    assert_eq!((b.pending, b.running), (1, 1), "the retry and one claimed");
}

/// An enqueue claims, in its own transaction, the first deliveries it
/// adds for the triggers it is asked to (never a duplicate's, never more
/// than the limit, never another trigger's): they are running under the
/// lease given, carry the event as a claim would, and the rest stay due.
pub async fn enqueues_claim_what_they_add(s: &dyn StateStore) {
    s.create_queue(&queue_record("orders")).await.unwrap();
    s.create_trigger(&subscription("billing-orders", "billing", "orders"))
        .await
        .unwrap();
    s.create_trigger(&subscription("mail-orders", "mail", "orders"))
        .await
        .unwrap();
    s.create_trigger(&subscription("audit-orders", "audit", "orders"))
        .await
        .unwrap();
    let body = r#"{"id":"n"}"#;
    let first = [event("n1", body)];
    let second = [event("n1", body), event("n2", body), event("n3", body)];
    let claims = [
        ClaimNew {
            trigger: "billing-orders",
            lease_until: 500,
            limit: 2,
        },
        ClaimNew {
            trigger: "audit-orders",
            lease_until: 700,
            limit: 1,
        },
    ];
    let (answers, claimed) = s
        .enqueue_and_claim(
            &[
                Enqueue {
                    environment: "production",
                    queue: "orders",
                    events: &first,
                    now: 10,
                    dedup_since: 0,
                },
                Enqueue {
                    environment: "production",
                    queue: "orders",
                    events: &second,
                    now: 10,
                    dedup_since: 0,
                },
            ],
            &claims,
        )
        .await
        .unwrap();
    assert!(answers[1][0].duplicate);
    assert_eq!(claimed.len(), 3, "the limits: {claimed:?}");
    let of = |trigger: &str| -> Vec<&Claimed> {
        claimed.iter().filter(|c| c.trigger == trigger).collect()
    };
    let billing = of("billing-orders");
    assert_eq!(
        billing.iter().map(|c| c.event_id).collect::<Vec<_>>(),
        [answers[0][0].id, answers[1][1].id],
        "the first ones added, in order, none for the duplicate"
    );
    let audit = of("audit-orders");
    assert_eq!(
        audit.iter().map(|c| c.event_id).collect::<Vec<_>>(),
        [answers[0][0].id],
        "a limit used up by the first enqueue of the batch"
    );
    let c = billing[0];
    assert_eq!((c.attempts, c.next_attempt, c.pinned_version), (0, 1, None));
    assert_eq!(
        (
            c.environment.as_str(),
            c.queue.as_str(),
            c.function.as_str()
        ),
        ("production", "orders", "billing")
    );
    assert_eq!((c.ce_id.as_str(), c.enqueued_at), ("n1", 10));
    assert_eq!(c.event, body);
    // Leased as claimed: not due again until the lease ends.
    let due = s.claim_due("billing-orders", 20, 600, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|d| d.event_id).collect::<Vec<_>>(),
        [answers[1][2].id],
        "only the one left unclaimed"
    );
    assert_eq!(
        s.claim_due("mail-orders", 20, 600, 10).await.unwrap().len(),
        3,
        "another trigger's deliveries stay due"
    );
    let b = s.backlog().await.unwrap();
    let b = b.iter().find(|b| b.trigger == "billing-orders").unwrap();
    assert_eq!((b.pending, b.running), (0, 3));
    // Each trigger's claims under its own lease.
    let audit_due = s.claim_due("audit-orders", 600, 900, 10).await.unwrap();
    assert_eq!(
        audit_due.iter().map(|d| d.event_id).collect::<Vec<_>>(),
        [answers[1][1].id, answers[1][2].id],
        "leased until 700, the first is not due at 600"
    );
    // Its outcome is recorded like any claimed delivery's.
    s.finish_deliveries(&[Finished {
        delivery_id: c.delivery_id,
        attempt: Some(attempt(1, Outcome::Ok)),
        next: NextStep::Done,
        at: 30,
    }])
    .await
    .unwrap();
    assert_eq!(
        delivery_of(s, c.event_id, "billing-orders").await,
        (DeliveryState::Done, 1)
    );
    // A lease that ended makes the other claimed one due again.
    let late = s.claim_due("billing-orders", 500, 900, 10).await.unwrap();
    assert_eq!(
        late.iter().map(|d| d.delivery_id).collect::<Vec<_>>(),
        [billing[1].delivery_id]
    );
    let audit_late = s.claim_due("audit-orders", 700, 900, 10).await.unwrap();
    assert_eq!(
        audit_late.iter().map(|d| d.delivery_id).collect::<Vec<_>>(),
        [audit[0].delivery_id]
    );
}

/// A tick is committed once; a run left running is interrupted at start.
pub async fn cron_ticks_commit_once(s: &dyn StateStore) {
    let t = TriggerRecord {
        name: "report-cron".into(),
        environment: "production".into(),
        function: "report".into(),
        spec: TriggerSpec::Cron(seal_api_types::events::CronSchedule {
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            on_missed: Default::default(),
            overlap: Default::default(),
            canary: Default::default(),
        }),
        created_at: 1,
        created_by: "contract".into(),
    };
    assert!(s.create_trigger(&t).await.unwrap());
    assert_eq!(s.last_tick("report-cron").await.unwrap(), None);
    let run = |at: i64, status: &str| CronRun {
        trigger: "report-cron".into(),
        scheduled_at: at,
        fired_at: at + 1,
        status: status.into(),
        version: None,
        digest: None,
        http_status: None,
        duration_ms: None,
        error: None,
    };
    assert!(s.commit_tick(&run(60_000, "running")).await.unwrap());
    assert!(
        !s.commit_tick(&run(60_000, "running")).await.unwrap(),
        "twice"
    );
    assert!(!s.commit_tick(&run(0, "running")).await.unwrap(), "older");
    assert_eq!(s.last_tick("report-cron").await.unwrap(), Some(60_000));
    let mut done = run(60_000, "ok");
    done.http_status = Some(200);
    done.version = Some(3);
    s.finish_run(&done).await.unwrap();
    assert!(s.commit_tick(&run(120_000, "running")).await.unwrap());
    assert_eq!(s.interrupt_runs().await.unwrap(), 1);
    let runs = s.cron_runs("report-cron", 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].scheduled_at, 120_000, "newest first");
    assert_eq!(runs[0].status, "interrupted");
    assert_eq!((runs[1].status.as_str(), runs[1].version), ("ok", Some(3)));
}

/// The state of `trigger`'s delivery of event `id` and its attempts so far.
async fn delivery_of(s: &dyn StateStore, id: u64, trigger: &str) -> (DeliveryState, usize) {
    let shown = s.event(id).await.unwrap().unwrap();
    let d = shown
        .deliveries
        .iter()
        .find(|d| d.trigger == trigger)
        .unwrap();
    (d.state, d.history.len())
}

/// What a claim of `trigger` gets, after waiting up to `within` for at
/// least `want` (a broker hands out what it has stored a moment later).
async fn claim_until(
    q: &dyn Queues,
    trigger: &TriggerRecord,
    limit: u32,
    want: usize,
    within: std::time::Duration,
) -> Vec<Claimed> {
    let until = std::time::Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let now = now_ms();
        got.extend(
            q.claim_due(trigger, now, now + 60_000, limit - got.len() as u32)
                .await
                .unwrap(),
        );
        if got.len() >= want || got.len() as u32 == limit || std::time::Instant::now() >= until {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn finished(c: &Claimed, attempt: Option<AttemptRecord>, next: NextStep) -> Finished {
    Finished {
        delivery_id: c.delivery_id,
        attempt,
        next,
        at: now_ms(),
    }
}

/// The queues' message path on the wall clock (every [`Queues`] backend,
/// the state store's and a broker's): an event reaches each subscription
/// once; a retry waits for its time and keeps counting attempts; a
/// duplicate within the window adds nothing and one past it is new; a
/// deleted queue takes its events.
pub async fn queued_events_reach_each_subscription_once(s: &dyn StateStore, q: &dyn Queues) {
    s.create_queue(&queue_record("orders")).await.unwrap();
    let billing = subscription("billing-orders", "billing", "orders");
    let mail = subscription("mail-orders", "mail", "orders");
    s.create_trigger(&billing).await.unwrap();
    s.create_trigger(&mail).await.unwrap();
    let body = r#"{"specversion":"1.0","id":"a1","source":"/shop","type":"order.created"}"#;
    let enqueue = |events: Vec<NewEvent<'static>>, window: i64| async move {
        let now = now_ms();
        let e = [Enqueue {
            environment: "production",
            queue: "orders",
            events: &events,
            now,
            dedup_since: now - window,
        }];
        q.enqueue_batch(&e).await.unwrap().pop().unwrap()
    };
    let first = enqueue(vec![event("a1", body), event("a2", body)], 600_000).await;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|e| !e.duplicate));
    assert_ne!(first[0].id, first[1].id);
    let again = enqueue(vec![event("a1", body)], 600_000).await;
    assert!(again[0].duplicate, "within the window");
    assert_eq!(again[0].id, first[0].id);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let outside = enqueue(vec![event("a1", body)], 100).await;
    assert!(
        !outside[0].duplicate,
        "past the queue's window it is a new event"
    );
    assert_ne!(outside[0].id, first[0].id);

    let wait = std::time::Duration::from_secs(5);
    let one = claim_until(q, &billing, 1, 1, wait).await;
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].attempts, one[0].next_attempt), (0, 1));
    assert_eq!(one[0].event, body);
    assert_eq!(
        (one[0].environment.as_str(), one[0].queue.as_str()),
        ("production", "orders")
    );
    let rest = claim_until(q, &billing, 10, 2, wait).await;
    assert_eq!(rest.len(), 2, "the other two, not the claimed one");
    assert!(rest.iter().all(|c| c.event_id != one[0].event_id));
    let backlog = q.backlog().await.unwrap();
    let b = backlog
        .iter()
        .find(|b| b.trigger == "billing-orders")
        .unwrap();
    assert_eq!(b.pending + b.running, 3, "{b:?}");
    assert!(b.oldest_enqueued_at.is_some());

    q.finish_deliveries(&[finished(
        &one[0],
        Some(attempt(1, Outcome::Retryable)),
        NextStep::Retry {
            at: now_ms() + 400,
            error: "500".into(),
        },
    )])
    .await
    .unwrap();
    let early = claim_until(q, &billing, 10, 1, std::time::Duration::from_millis(150)).await;
    assert!(early.is_empty(), "a retry waits for its time");
    let retry = claim_until(q, &billing, 10, 1, wait).await;
    assert_eq!(retry.len(), 1, "{retry:#?} {one:#?} {rest:#?}");
    assert_eq!(
        retry[0].event_id, one[0].event_id,
        "{retry:#?} {one:#?} {rest:#?}"
    );
    assert_eq!((retry[0].attempts, retry[0].next_attempt), (1, 2));
    let mut done = vec![finished(
        &retry[0],
        Some(attempt(2, Outcome::Ok)),
        NextStep::Done,
    )];
    for c in &rest {
        done.push(finished(c, Some(attempt(1, Outcome::Ok)), NextStep::Done));
    }
    q.finish_deliveries(&done).await.unwrap();
    assert!(
        claim_until(q, &billing, 10, 1, std::time::Duration::from_millis(300))
            .await
            .is_empty(),
        "handled events are not handed out again"
    );

    let shown = q.event(one[0].event_id).await.unwrap().unwrap();
    assert_eq!(
        (shown.ce_id.as_str(), shown.source.as_str()),
        ("a1", "/shop")
    );
    assert_eq!(shown.deliveries.len(), 2, "one per subscription: {shown:?}");
    let b = shown
        .deliveries
        .iter()
        .find(|x| x.trigger == "billing-orders")
        .unwrap();
    assert_eq!(b.state, DeliveryState::Done);
    assert_eq!(b.history.len(), 2);
    assert_eq!(b.history[1].outcome, Outcome::Ok);
    let m = shown
        .deliveries
        .iter()
        .find(|x| x.trigger == "mail-orders")
        .unwrap();
    assert_eq!((m.state, m.attempts), (DeliveryState::Pending, 0));
    // The mail subscription is untouched by billing's claims.
    assert_eq!(claim_until(q, &mail, 10, 3, wait).await.len(), 3);

    s.delete_trigger("billing-orders", "contract")
        .await
        .unwrap();
    q.trigger_deleted("billing-orders").await.unwrap();
    s.delete_trigger("mail-orders", "contract").await.unwrap();
    q.trigger_deleted("mail-orders").await.unwrap();
    assert!(
        s.delete_queue("production", "orders", "contract")
            .await
            .unwrap()
    );
    q.queue_deleted("production", "orders").await.unwrap();
    assert!(q.event(one[0].event_id).await.unwrap().is_none());
}

/// A dead letter keeps why it died and the version that answered; a
/// redrive starts a new run (attempt numbers go on), pinned when asked,
/// and a purge deletes it; both audited.
pub async fn dead_letters_keep_why_and_go_back_when_redriven(s: &dyn StateStore, q: &dyn Queues) {
    s.create_queue(&queue_record("orders")).await.unwrap();
    let billing = subscription("billing-orders", "billing", "orders");
    s.create_trigger(&billing).await.unwrap();
    let body = r#"{"id":"x","type":"order.created"}"#;
    let now = now_ms();
    let events = [event("x", body), event("y", body)];
    q.enqueue_batch(&[Enqueue {
        environment: "production",
        queue: "orders",
        events: &events,
        now,
        dedup_since: now - 60_000,
    }])
    .await
    .unwrap();
    let wait = std::time::Duration::from_secs(5);
    let d = claim_until(q, &billing, 10, 2, wait).await;
    assert_eq!(d.len(), 2);
    let dead: Vec<Finished> = d
        .iter()
        .map(|c| {
            finished(
                c,
                Some(attempt(1, Outcome::Permanent)),
                NextStep::Dead {
                    reason: DeadReason::Permanent,
                    error: "HTTP 400".into(),
                },
            )
        })
        .collect();
    q.finish_deliveries(&dead).await.unwrap();
    let letters = q
        .dead_letters(Some("production"), Some("orders"))
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    let x = letters
        .iter()
        .find(|l| l.event_id == d[0].event_id)
        .unwrap();
    assert_eq!(x.reason, DeadReason::Permanent);
    assert_eq!(x.version, Some(1));
    assert_eq!(x.last_error.as_deref(), Some("HTTP 400"));
    assert_eq!(
        (x.trigger.as_str(), x.function.as_str()),
        ("billing-orders", "billing")
    );
    assert_eq!(x.ce_id, d[0].ce_id);
    assert!(
        q.dead_letters(None, Some("other"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.dead_letter(x.id).await.unwrap().as_ref(), Some(x));
    let y = letters.iter().find(|l| l.id != x.id).unwrap().clone();

    assert_eq!(
        q.redrive(&[x.id, 999_999], Some(2), now_ms(), "contract")
            .await
            .unwrap(),
        vec![x.id]
    );
    assert!(q.dead_letter(x.id).await.unwrap().is_none());
    let again = claim_until(q, &billing, 10, 1, wait).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, d[0].event_id);
    assert_eq!(again[0].pinned_version, Some(2));
    assert_eq!(
        (again[0].attempts, again[0].next_attempt),
        (0, 2),
        "a new run; numbers go on"
    );
    q.finish_deliveries(&[finished(
        &again[0],
        Some(attempt(2, Outcome::Ok)),
        NextStep::Done,
    )])
    .await
    .unwrap();
    let shown = q.event(d[0].event_id).await.unwrap().unwrap();
    assert_eq!(shown.deliveries.len(), 1);
    assert_eq!(shown.deliveries[0].state, DeliveryState::Done);
    assert_eq!(shown.deliveries[0].history.len(), 2);

    assert_eq!(q.purge(&[y.id], "contract").await.unwrap(), vec![y.id]);
    assert!(q.purge(&[y.id], "contract").await.unwrap().is_empty());
    assert!(q.dead_letters(None, None).await.unwrap().is_empty());
    let actions: Vec<String> = s
        .audit_log(20)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(
        actions.contains(&"dlq.redrive".to_owned()) && actions.contains(&"dlq.purge".to_owned())
    );
}

/// Runs the [`Queues`] contract: `$fresh` answers `Option<(guard, state,
/// queues)>` (`None` skips, printing why).
#[macro_export]
macro_rules! queue_contract_tests {
    ($fresh:path) => {
        $crate::queue_contract_tests!(@each $fresh;
            queued_events_reach_each_subscription_once,
            dead_letters_keep_why_and_go_back_when_redriven
        );
    };
    (@each $fresh:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let Some((_guard, state, queues)) = $fresh().await else {
                    return;
                };
                $crate::contract::$check(&*state, &*queues).await;
            }
        )*
    };
}

#[macro_export]
macro_rules! contract_tests {
    // `$fresh` answers `Option<(guard, store)>`: `None` skips the test (a
    // backend whose server is not reachable; it prints why).
    (maybe $fresh:path) => {
        $crate::contract_tests!(@list maybe $fresh);
    };
    ($fresh:path) => {
        $crate::contract_tests!(@list always $fresh);
    };
    (@list $mode:ident $fresh:path) => {
        $crate::contract_tests!(@each $mode $fresh;
            versions_count_up_and_a_digest_keeps_its_version,
            environments_are_explicit,
            protection_is_set_per_environment,
            hold_releases_are_recorded_once,
            applied_files_replace_per_environment,
            releases_run_one_at_a_time,
            a_deployment_moves_the_route_with_its_events_and_audit,
            an_active_rollout_owns_its_route,
            the_audit_log_is_one_chain,
            budgets_are_audited_with_their_change,
            usage_adds_up_per_version,
            tokens_are_found_by_hash_and_revoked,
            settings_change_by_revision,
            policies_are_per_environment,
            pipelines_are_per_environment,
            captures_keep_requests_up_to_their_maximum,
            flag_sets_are_revisions_per_environment,
            attestations_are_recorded_once,
            events_are_delivered_once_per_subscription,
            dead_letters_are_redriven_and_purged,
            cron_ticks_commit_once,
            enqueues_commit_together_in_order,
            enqueues_claim_what_they_add,
            outcomes_commit_with_the_next_claims
        );
    };
    (@each always $fresh:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (_guard, store) = $fresh().await;
                $crate::contract::$check(&*store).await;
            }
        )*
    };
    (@each maybe $fresh:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let Some((_guard, store)) = $fresh().await else {
                    return;
                };
                $crate::contract::$check(&*store).await;
            }
        )*
    };
}
