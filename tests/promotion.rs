//! End-to-end promotion: an environment's pipeline (`seal env create
//! production --after staging --soak …`), the evidence a version needs
//! where it must have served first, the refusals that name what lacks,
//! and an admin's audited override, against the real server.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Server, guest, header, publish_file};

/// The version `hello` answers with in `env`.
async fn serves_in(s: &Server, env: &str) -> String {
    let r = s.get_host(&format!("hello.{env}.localhost"), "/").await;
    assert_eq!(r.status(), 200, "hello in {env}");
    header(&r, "seal-version")
}

async fn audited(s: &Server, matches: impl Fn(&Value) -> bool) -> Option<Value> {
    let log = s.api_get("/v1/audit?limit=50").await;
    log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| matches(e))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_reaches_production_only_with_its_evidence_from_staging_or_an_admins_audited_override()
 {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // Three versions of one guest, each asking for less time than the one
    // before (a narrowing needs no approval).
    for (v, timeout) in [(1, "30s"), (2, "20s"), (3, "10s")] {
        let published = publish_file(&s, &guest("echo"), "hello", &["--timeout", timeout]);
        assert_eq!(published.0, v);
    }
    s.seal_json(&["env", "create", "staging"]);

    // production exists (the server's default): create gives it the
    // pipeline of the interface.
    s.seal_json(&[
        "env",
        "create",
        "production",
        "--after",
        "staging",
        "--soak",
        "2s",
    ]);
    let env = s.seal_json(&["env", "show", "production"]);
    assert_eq!(env["pipeline"]["after"], "staging", "{env:#}");
    assert_eq!(env["pipeline"]["soak_ms"], 2000, "{env:#}");
    assert_eq!(env["pipeline"]["updated_by"], "admin", "{env:#}");
    let text = s.seal(&["env", "show", "production"]).stdout;
    assert!(
        text.contains(
            "pipeline: after staging; a version needs to have served in staging, for at least 2s"
        ),
        "{text}"
    );
    let text = s.seal(&["env", "show", "staging"]).stdout;
    assert!(text.contains("followed by: production"), "{text}");
    assert!(text.contains("pipeline: none"), "{text}");

    // Bad pipelines are refused by name and change nothing.
    s.seal(&["env", "update", "production", "--after", "production"])
        .assert_fails_with("production cannot follow itself");
    s.seal(&["env", "update", "staging", "--after", "production"])
        .assert_fails_with(
            "staging after production makes a cycle: staging after production after staging",
        );
    s.seal(&["env", "update", "production", "--after", "qa"])
        .assert_fails_with("qa");
    s.seal(&["env", "update", "production", "--soak", "31d"])
        .assert_fails_with("longer than the 30 days allowed");
    s.seal(&["env", "update", "staging", "--soak", "1m"])
        .assert_fails_with("staging follows no environment yet");
    let (code, body) = s
        .api_post(
            "/v1/environments",
            serde_json::json!({"name": "qa", "soak_ms": 1000}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        s.seal_json(&["env", "show", "production"])["pipeline"]["soak_ms"],
        2000
    );
    let tok = s.seal_json(&["token", "create", "--role", "deployer"]);
    let deployer = [("SEAL_TOKEN", tok["token"].as_str().unwrap())];
    s.seal_env(&["env", "update", "production", "--soak", "1s"], &deployer)
        .assert_fails_with("admin");

    // hello@1 never served in staging: refused, with what lacks, audited.
    s.seal(&["deploy", "hello", "1", "-e", "production"])
        .assert_fails_with("hello@1 may not serve in production yet: hello@1 never served all of staging's traffic (2s required)");
    let refused = audited(&s, |e| e["action"] == "deploy" && e["outcome"] == "refused")
        .await
        .expect("the refusal is audited");
    assert_eq!(refused["object"], "production/hello", "{refused:#}");
    assert_eq!(refused["detail"]["version"], 1, "{refused:#}");

    // Served in staging, but not yet long enough and with no traffic.
    s.seal_json(&["deploy", "hello", "1", "-e", "staging"]);
    let out = s.seal(&["deploy", "hello", "1", "-e", "production"]);
    out.assert_fails_with("required");
    assert!(
        out.stderr.contains("hello@1 served no traffic in staging"),
        "{}",
        out.stderr
    );
    let evidence = s
        .api_get("/v1/environments/production/evidence/hello/1")
        .await;
    assert_eq!(evidence["invocations"], 0, "{evidence:#}");
    assert!(
        evidence["served_ms"].as_u64().unwrap() < 2000,
        "{evidence:#}"
    );

    // With traffic and its soak done, it goes through.
    for _ in 0..5 {
        assert_eq!(serves_in(&s, "staging").await, "1");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let evidence = s
        .api_get("/v1/environments/production/evidence/hello/1")
        .await;
    assert_eq!(evidence["missing"], serde_json::json!([]), "{evidence:#}");
    assert_eq!(evidence["invocations"], 5, "{evidence:#}");
    s.seal_json(&["deploy", "hello", "1", "-e", "production"]);
    assert_eq!(serves_in(&s, "production").await, "1");

    // hello@2 served staging and was rolled back there: never promoted.
    s.seal_json(&["deploy", "hello", "2", "-e", "staging"]);
    for _ in 0..3 {
        assert_eq!(serves_in(&s, "staging").await, "2");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.seal_json(&["rollback", "hello", "-e", "staging"]);
    s.seal(&["deploy", "hello", "2", "-e", "production"])
        .assert_fails_with("hello@2 was rolled back in staging");

    // Only an admin may override, and the override is audited with what
    // lacked.
    s.seal_env(
        &[
            "deploy",
            "hello",
            "2",
            "-e",
            "production",
            "--allow-missing-evidence",
        ],
        &deployer,
    )
    .assert_fails_with("needs an admin token");
    assert_eq!(serves_in(&s, "production").await, "1");
    s.seal_json(&[
        "deploy",
        "hello",
        "2",
        "-e",
        "production",
        "--allow-missing-evidence",
    ]);
    assert_eq!(serves_in(&s, "production").await, "2");
    let overridden = audited(&s, |e| e["outcome"] == "evidence_overridden")
        .await
        .expect("the override is audited");
    assert_eq!(overridden["actor"], "admin", "{overridden:#}");
    assert!(
        overridden["detail"]["missing"][0]
            .as_str()
            .unwrap()
            .contains("rolled back in staging"),
        "{overridden:#}"
    );
    // Going back to a version that served production before needs no
    // evidence (a rollback returns to an approved state).
    s.seal_json(&["rollback", "hello", "-e", "production"]);
    assert_eq!(serves_in(&s, "production").await, "1");

    // A required verification: none exists yet for hello@3, so a release
    // file that deploys it is refused in its plan, before anything moves.
    s.seal_json(&["deploy", "hello", "3", "-e", "staging"]);
    for _ in 0..3 {
        assert_eq!(serves_in(&s, "staging").await, "3");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let env = s.seal_json(&["env", "update", "production", "--require-verification"]);
    assert_eq!(env["pipeline"]["require_verification"], true, "{env:#}");
    assert_eq!(env["pipeline"]["soak_ms"], 2000, "kept: {env:#}");
    let file = dir.path().join("release.toml");
    std::fs::write(
        &file,
        "[environments.production.functions.hello]\nversion = 3\n",
    )
    .unwrap();
    s.seal(&["apply", "-f", file.to_str().unwrap()])
        .assert_fails_with("hello@3 has no passed verification in staging");
    assert_eq!(serves_in(&s, "production").await, "1");

    // Standalone again: nothing is asked.
    let env = s.seal_json(&["env", "update", "production", "--standalone"]);
    assert!(env.get("pipeline").is_none(), "{env:#}");
    let applied = s.seal_json(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(applied["succeeded"], true, "{applied:#}");
    assert_eq!(serves_in(&s, "production").await, "3");
}
