//! End-to-end instance reuse: `[limits] instance_reuse` (here `seal
//! publish --instance-reuse`) keeps a guest's global state between the
//! requests of one version, never across versions or after a trap; a
//! version without it gets a fresh instance per request.

#![allow(clippy::unwrap_used)]

mod support;

use support::{Server, guest, publish_file};

/// The count the `counter` guest answers (requests its instance served).
async fn count(s: &Server, path: &str) -> u64 {
    let r = s.get(path).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_keeps_state_within_a_version_never_across_versions_or_after_a_trap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let wasm = guest("counter");
    // Fresh per request: every instance has served one request, also under
    // concurrent load.
    publish_file(&s, &wasm, "count", &[]);
    s.seal_json(&["deploy", "count", "1"]);
    let answers = futures::future::join_all((0..40).map(|_| count(&s, "/count/"))).await;
    assert!(answers.iter().all(|n| *n == 1), "{answers:?}");
    // A bad setting is refused at publish.
    let bad = s.seal(&[
        "publish",
        wasm.to_str().unwrap(),
        "--name",
        "count",
        "--instance-reuse",
        "0",
    ]);
    assert!(
        !bad.ok && bad.stderr.contains("limits.instance_reuse"),
        "{}",
        bad.stderr
    );

    // Reuse declared: it is in the manifest, and in the deploy's diff as a
    // widening (production is protected: an admin approves it).
    let (v2, _) = publish_file(&s, &wasm, "count", &["--instance-reuse", "1000"]);
    assert_eq!(v2, 2);
    let inspect = s.seal(&["inspect", "count@2"]).stdout;
    assert!(
        inspect.contains("instances    reused, 1000 invocations each at most"),
        "{inspect}"
    );
    let json = s.seal_json(&["inspect", "count@2"]).to_string();
    assert!(json.contains(r#""instance_reuse":1000"#), "{json}");
    let deployed = s.seal(&["deploy", "count", "2", "--allow-new-permissions"]);
    assert!(
        deployed.ok
            && deployed.stdout.contains(
                "+ instance reuse: a fresh instance per request -> 1000 invocations per instance"
            ),
        "{}{}",
        deployed.stdout,
        deployed.stderr
    );
    // One request at a time: one instance, its count going up.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(count(&s, "/count/").await);
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);

    // A trap discards the instance: the next request starts from 1.
    let r = s.get("/count/trap").await;
    assert_eq!(r.status(), 500);
    assert_eq!(count(&s, "/count/").await, 1);
    assert_eq!(count(&s, "/count/").await, 2);

    // Another version never gets this version's instances.
    let (v3, _) = publish_file(&s, &wasm, "count", &["--instance-reuse", "999"]);
    assert_eq!(v3, 3);
    s.seal_json(&["deploy", "count", "3"]);
    assert_eq!(count(&s, "/count/").await, 1);
    assert_eq!(count(&s, "/count/").await, 2);

    // The log records say which invocations reused an instance.
    let logs = s.api_text("/v1/functions/count/logs?limit=200").await;
    let records: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["status"].is_number())
        .collect();
    let reused = |v: u64| {
        records
            .iter()
            .filter(|r| r["version"] == v && r["reused"] == true)
            .count()
    };
    assert_eq!(reused(1), 0, "{logs}");
    assert!(reused(2) >= 5, "{logs}");
    assert_eq!(reused(3), 1, "{logs}");
}

/// A fresh-per-request version has an instance made when it is routed:
/// the first request after the deploy (its cold start) is served by it, so
/// it pays no instantiation, and the instance was never called before
/// (the count is 1). The log record says `prepared`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_a_deploy_finds_an_instance_ready() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &guest("counter"), "ready", &[]);
    s.seal_json(&["deploy", "ready", "1"]);
    // Made off the request path right after the route switch: give it
    // time (it takes milliseconds).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(count(&s, "/ready/").await, 1);
    let logs = s.api_text("/v1/functions/ready/logs?limit=20").await;
    let first: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|r: &serde_json::Value| r["status"].is_number())
        .unwrap_or_else(|| panic!("no invocation record: {logs}"));
    assert_eq!(first["cold"], true, "{first}");
    assert_eq!(first["prepared"], true, "{first}");
    assert!(first.get("reused").is_none(), "{first}");
    assert!(first["instantiate_us"].as_u64().unwrap() < 1_000, "{first}");
}
