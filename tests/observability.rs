//! Observability end to end: the real server on 127.0.0.1:0, real guests,
//! real HTTP. Metrics, logs, traces, cold starts, cost, budgets and the
//! generated dashboard and rules, each checked for the right tags.
//!
//! `promtool` checks run when it is installed (`.ci/run` installs Debian's
//! `prometheus` package and sets `SEAL_REQUIRE_PROMTOOL=1`, which makes a
//! missing `promtool` a failure rather than a skip).

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{Server, example_component, guest, header, metric, publish_file, webhook_receiver};

/// A Prometheus tool on PATH; without it the check is skipped (with a
/// note), unless `SEAL_REQUIRE_PROMTOOL=1` makes that a failure.
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("SEAL_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "SEAL_REQUIRE_PROMTOOL=1 but {name} is not on PATH"
        );
        eprintln!("{name} not installed: skipping this check");
    }
    found
}

fn promtool() -> Option<PathBuf> {
    prometheus_tool("promtool")
}

fn run_promtool(args: &[&str], stdin: &[u8]) {
    let Some(bin) = promtool() else { return };
    use std::io::Write;
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check rules` takes files (stdin only in newer releases).
fn check_rules(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, yaml).unwrap();
    run_promtool(&["check", "rules", path.to_str().unwrap()], b"");
}

/// `/metrics` as Prometheus scrapes it (OpenMetrics).
async fn metrics(s: &Server) -> (String, String) {
    let r = s
        .http
        .get(format!("{}/metrics", s.api))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = header(&r, "content-type");
    (ct, r.text().await.unwrap())
}

/// The ring's records for a function (JSON lines), with a query string.
async fn log_lines(s: &Server, function: &str, query: &str) -> Vec<Value> {
    let r = s
        .http
        .get(format!("{}/v1/functions/{function}/logs?{query}", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "logs?{query}");
    assert_eq!(header(&r, "content-type"), "application/x-ndjson");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until `pred` holds on the logs (records are written when the
/// guest's task ends, just after the response).
async fn wait_logs(
    s: &Server,
    function: &str,
    query: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(s, function, query).await;
        if pred(&lines) || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signal_names_function_environment_version_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (v1, d1) = publish_file(&s, &guest("echo"), "svc", &[]);
    let (v2, d2) = publish_file(&s, &example_component("hello"), "svc", &[]);
    assert_eq!((v1, v2), (1, 2));

    s.seal_json(&["deploy", "svc", "1"]);
    // A caller's x-request-id is the correlation id, passed to the guest and
    // returned.
    let r = s
        .http
        .get(format!("{}/svc/first", s.gateway))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-request-id"), "req-abc-123");
    let echoed: Value = r.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-request-id"], "req-abc-123");
    let tp = echoed["headers"]["traceparent"].as_str().unwrap();
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
    // A caller's traceparent continues its trace: the trace id is the
    // correlation id and the guest's parent is Seal's span in that trace.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = s
        .http
        .get(format!("{}/svc/traced", s.gateway))
        .header("traceparent", caller)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "x-request-id"),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let echoed: Value = r.json().await.unwrap();
    let guest_tp = echoed["headers"]["traceparent"].as_str().unwrap();
    assert!(guest_tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!guest_tp.contains("00f067aa0ba902b7"), "{guest_tp}");
    for _ in 0..3 {
        assert_eq!(s.get("/svc/").await.status(), 200);
    }
    s.seal_json(&["deploy", "svc", "2"]);
    for _ in 0..4 {
        let r = s.get("/svc/").await;
        assert_eq!(header(&r, "seal-version"), "2");
    }

    // Logs: one invocation line per request, each naming its version and
    // digest; the first of each version is its cold start.
    let inv = wait_logs(&s, "svc", "limit=1000", |l| {
        l.iter().filter(|r| r["kind"] == "invocation").count() >= 9
    })
    .await;
    let inv: Vec<&Value> = inv.iter().filter(|r| r["kind"] == "invocation").collect();
    assert_eq!(inv.len(), 9, "{inv:#?}");
    for (version, digest, n) in [(1, &d1, 5), (2, &d2, 4)] {
        let mine: Vec<&&Value> = inv.iter().filter(|r| r["version"] == version).collect();
        assert_eq!(mine.len(), n, "version {version}");
        for r in &mine {
            assert_eq!(r["function"], "svc");
            assert_eq!(r["environment"], "production");
            assert_eq!(&r["digest"], digest);
            assert_eq!(r["status"], 200);
            assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
            assert!(r["gb_seconds"].as_f64().unwrap() > 0.0);
            assert!(r["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        }
        let cold: Vec<_> = mine.iter().filter(|r| r["cold"] == true).collect();
        assert_eq!(cold.len(), 1, "one cold start for version {version}");
        let cs = &cold[0]["cold_start"];
        assert!(cs["load_us"].as_u64().unwrap() > 0, "{cs}");
        assert!(cs["instantiate_us"].as_u64().unwrap() > 0, "{cs}");
        assert!(cs["first_call_us"].as_u64().unwrap() > 0, "{cs}");
    }
    let tagged = inv
        .iter()
        .find(|r| r["request_id"] == "req-abc-123")
        .expect("the x-request-id invocation");
    assert_eq!(tagged["path"], "/first");
    let traced = inv
        .iter()
        .find(|r| r["path"] == "/traced")
        .expect("the traced invocation");
    assert_eq!(traced["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(traced["request_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // Guest stdout and stderr, captured with the invocation's tags.
    let guest_lines = log_lines(&s, "svc", "limit=1000").await;
    let out: Vec<&Value> = guest_lines
        .iter()
        .filter(|r| r["kind"] == "guest")
        .collect();
    assert!(out.iter().any(|r| r["stream"] == "stdout"
        && r["message"] == "echo: GET /first"
        && r["request_id"] == "req-abc-123"
        && r["version"] == 1
        && r["digest"] == d1.as_str()));
    assert!(
        out.iter()
            .any(|r| r["stream"] == "stderr" && r["message"] == "echo: request id req-abc-123")
    );
    // Filters: by version, by status.
    let v2_only = log_lines(&s, "svc", "version=2&limit=1000").await;
    assert!(!v2_only.is_empty() && v2_only.iter().all(|r| r["version"] == 2));
    assert!(log_lines(&s, "svc", "status=5xx").await.is_empty());
    let r = s
        .http
        .get(format!("{}/v1/functions/svc/logs?status=9xx", s.api))
        .send()
        .await
        .unwrap();
    support::assert_error(r, 400, "bad_request").await;

    // Metrics: the digest once per version in the info metric, never on
    // the per-request series.
    let (ct, text) = metrics(&s).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(text.trim_end().ends_with("# EOF"));
    for (version, digest) in [("1", &d1), ("2", &d2)] {
        assert_eq!(
            metric(
                &text,
                "seal_version_info",
                &[
                    ("function", "svc"),
                    ("version", version),
                    ("digest", digest)
                ]
            ),
            Some(1.0),
            "{text}"
        );
    }
    let v = |version: &'static str| {
        [
            ("function", "svc"),
            ("environment", "production"),
            ("version", version),
        ]
    };
    assert_eq!(metric(&text, "seal_invocations_total", &v("1")), Some(5.0));
    assert_eq!(metric(&text, "seal_invocations_total", &v("2")), Some(4.0));
    assert_eq!(metric(&text, "seal_cold_starts_total", &v("1")), Some(1.0));
    assert_eq!(metric(&text, "seal_cold_starts_total", &v("2")), Some(1.0));
    assert_eq!(
        metric(&text, "seal_invocation_duration_seconds_count", &v("2")),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, "seal_instantiation_duration_seconds_count", &v("1")),
        Some(5.0)
    );
    assert_eq!(metric(&text, "seal_route_weight", &v("2")), Some(100.0));
    assert_eq!(metric(&text, "seal_route_weight", &v("1")), Some(0.0));
    assert!(metric(&text, "seal_cost_gigabyte_seconds_total", &v("1")).unwrap() > 0.0);
    let mut load = v("1").to_vec();
    load.push(("phase", "load"));
    assert!(metric(&text, "seal_cold_start_phase_seconds", &load).unwrap() > 0.0);
    assert_eq!(
        metric(
            &text,
            "seal_deployments_total",
            &[("function", "svc"), ("outcome", "succeeded")]
        ),
        Some(2.0)
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if line.contains(&d1) || line.contains(&d2) {
            assert!(line.starts_with("seal_version_info{"), "digest on {line}");
        }
    }
    // Without an OpenMetrics Accept header (curl, promtool): the classic
    // text format, which promtool lints.
    let r = s
        .http
        .get(format!("{}/metrics", s.api))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "content-type").starts_with("text/plain; version=0.0.4"));
    let classic = r.text().await.unwrap();
    assert!(classic.contains("# TYPE seal_invocations_total counter"));
    assert!(!classic.contains("# EOF"));
    run_promtool(&["check", "metrics"], classic.as_bytes());

    // The live view names both versions.
    let top = s.api_get("/v1/top").await;
    let rows = top["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["function"] == "svc" && r["version"] == 2)
        .unwrap();
    assert_eq!(row["weight"], 100);
    assert_eq!(row["total_requests"], 4);
    assert_eq!(row["total_cold_starts"], 1);

    // The CLI over the same records.
    let out = s.seal(&["logs", "svc", "--version", "2", "--output", "json"]);
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines
            .iter()
            .all(|l| l["version"] == 2 && l["kind"] == "invocation")
    );
    let text = s.seal(&["logs", "svc", "--version", "1"]);
    assert!(text.ok && text.stdout.contains("svc@1"), "{}", text.stdout);
    assert!(text.stdout.contains("echo: GET /first"), "{}", text.stdout);
    s.seal(&["logs", "nope"])
        .assert_fails_with("unknown function");
    s.seal(&["logs", "svc", "--status", "9xx"])
        .assert_fails_with("invalid status filter");
    let top = s.seal_json(&["top", "--iterations", "1"]);
    assert!(
        top["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["function"] == "svc" && r["version"] == 2)
    );
    let cost = s.seal_json(&["cost", "svc"]);
    assert_eq!(cost["total"]["invocations"], 9);
    let rules = s.seal(&["monitoring", "svc", "--prometheus-rules"]);
    assert!(rules.ok && rules.stdout.contains("SealHighErrorRate"));

    // --follow prints records as they happen.
    let mut follow = std::process::Command::new(support::seal_bin())
        .args([
            "logs", "svc", "--follow", "--limit", "0", "--output", "json",
        ])
        .env("SEAL_SERVER", &s.api)
        .env("SEAL_TOKEN", &s.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Until the follower is subscribed, a request may come before it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let r = s
            .http
            .get(format!("{}/svc/followed", s.gateway))
            .header("x-request-id", "follow-me")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "seal logs --follow printed nothing"
        );
    };
    let _ = follow.kill();
    let _ = follow.wait();
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["request_id"], "follow-me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_and_logged_with_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    for (name, wasm) in [("trapper", "trap"), ("failer", "fail"), ("hog", "memhog")] {
        publish_file(&s, &guest(wasm), name, &[]);
        s.seal_json(&["deploy", name, "1"]);
    }
    assert_eq!(s.get("/trapper/").await.status(), 500);
    assert_eq!(s.get("/failer/").await.status(), 500);
    assert_eq!(s.get("/hog/").await.status(), 500);

    let (_, text) = metrics(&s).await;
    for (function, kind) in [
        ("trapper", "trap"),
        ("failer", "status_5xx"),
        ("hog", "memory"),
    ] {
        let got = metric(
            &text,
            "seal_invocation_errors_total",
            &[("function", function), ("kind", kind)],
        );
        assert_eq!(got, Some(1.0), "{function} {kind}:\n{text}");
    }
    assert_eq!(
        metric(
            &text,
            "seal_invocation_errors_total",
            &[("function", "trapper"), ("kind", "timeout")]
        ),
        Some(0.0)
    );

    let lines = wait_logs(&s, "trapper", "status=5xx", |l| !l.is_empty()).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["status"], 500);
    assert_eq!(lines[0]["error"]["kind"], "trap");
    let hog = wait_logs(&s, "hog", "", |l| !l.is_empty()).await;
    assert_eq!(hog[0]["error"]["kind"], "memory");
    assert!(hog[0]["memory_peak_bytes"].as_u64().unwrap() > 1 << 20);
    // The server kept serving.
    assert_eq!(s.get("/failer/").await.status(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_out_over_otlp_and_continue_the_callers_trace() {
    let (url, got) = webhook_receiver().await;
    let endpoint = url.trim_end_matches("/hook").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--otlp-endpoint", &endpoint]);
    let (_, digest) = publish_file(&s, &guest("echo"), "traced", &[]);
    s.seal_json(&["deploy", "traced", "1"]);
    let r = s
        .http
        .get(format!("{}/traced/x", s.gateway))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Batches go out every second.
    let spans = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans: Vec<Value> = got
                .lock()
                .unwrap()
                .iter()
                .flat_map(|export| {
                    export["resourceSpans"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
                .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
                .collect();
            let have_invoke = spans.iter().any(|s| s["name"] == "invoke traced");
            let have_deploy = spans.iter().any(|s| s["name"] == "deployment succeeded");
            if (have_invoke && have_deploy) || Instant::now() > deadline {
                break spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let attr = |span: &Value, key: &str| -> Value {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
            .unwrap_or(Value::Null)
    };
    let invoke = spans
        .iter()
        .find(|s| s["name"] == "invoke traced")
        .unwrap_or_else(|| panic!("no invocation span in {spans:#?}"));
    assert_eq!(invoke["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(invoke["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(attr(invoke, "seal.function")["stringValue"], "traced");
    assert_eq!(attr(invoke, "seal.digest")["stringValue"], digest.as_str());
    assert_eq!(
        attr(invoke, "seal.environment")["stringValue"],
        "production"
    );
    let version = attr(invoke, "seal.version")["intValue"].clone();
    assert!(version == json!("1") || version == json!(1), "{version}");
    assert_eq!(attr(invoke, "seal.cold_start")["boolValue"], true);
    // The guest's parent is this span.
    let lines = log_lines(&s, "traced", "").await;
    let inv = lines.iter().find(|l| l["kind"] == "invocation").unwrap();
    assert_eq!(inv["span_id"], invoke["spanId"]);

    let deploy = spans
        .iter()
        .find(|s| s["name"] == "deployment succeeded")
        .unwrap_or_else(|| panic!("no deployment span in {spans:#?}"));
    assert_eq!(attr(deploy, "seal.function")["stringValue"], "traced");
    assert_eq!(
        attr(deploy, "seal.deployment.state")["stringValue"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_is_persisted_per_version_and_a_crossed_budget_warns_once() {
    let (hook, notes) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    // The webhook receiver is on loopback: the operator allows it.
    let s = Server::start_with(dir.path(), &["--allow-outbound", "127.0.0.1"]);
    publish_file(&s, &guest("echo"), "metered", &[]);
    s.seal_json(&["deploy", "metered", "1"]);
    for _ in 0..5 {
        assert_eq!(s.get("/metered/").await.status(), 200);
    }
    // Written when each guest's task ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cost = s.api_get("/v1/functions/metered/cost?since=1h").await;
    let v = &cost["versions"][0];
    assert_eq!(v["version"], 1);
    assert_eq!(v["environment"], "production");
    assert_eq!(v["invocations"], 5);
    let gbs = v["gb_seconds"].as_f64().unwrap();
    // Memory limit (default 128 MiB = 0.125 GiB) × duration: positive and
    // below 0.125 GB-s per second of the test.
    assert!(gbs > 0.0 && gbs < 0.125 * 5.0, "{gbs}");
    assert_eq!(cost["total"]["invocations"], 5);
    assert_eq!(cost["budget"], Value::Null);

    // A budget already crossed warns at once: webhook, audit, metric.
    let r = s
        .http
        .put(format!("{}/v1/functions/metered/budget", s.api))
        .json(&json!({"gb_seconds": gbs / 10.0, "period": "day", "webhook": hook}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while notes.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let notes = notes.lock().unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0]["event"], "budget_exceeded");
        assert_eq!(notes[0]["function"], "metered");
        assert!(notes[0]["detail"]["ratio"].as_f64().unwrap() >= 10.0 - 1e-9);
    }
    let (_, text) = metrics(&s).await;
    assert!(metric(&text, "seal_budget_usage_ratio", &[("function", "metered")]).unwrap() >= 1.0);
    let audit = s.api_get("/v1/audit").await;
    let warned = audit["entries"]
        .as_array()
        .or_else(|| audit.as_array())
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "budget_exceeded" && e["object"] == "metered")
        .count();
    assert_eq!(warned, 1);
    // More usage and another flush: no second warning this period.
    assert_eq!(s.get("/metered/").await.status(), 200);
    let cost = s.api_get("/v1/functions/metered/cost").await;
    assert_eq!(cost["budget"]["exceeded"], true);
    assert_eq!(cost["total"]["invocations"], 6);
    // Readers see where the webhook goes, not its path (tokens live there).
    let shown = format!("{cost}{audit}");
    assert!(!shown.contains(&hook), "{shown}");
    assert!(shown.contains("/(redacted)"), "{shown}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(notes.lock().unwrap().len(), 1);

    // Persisted: a restart still reports the usage.
    s.stop();
    let s = Server::start(dir.path());
    let cost = s.api_get("/v1/functions/metered/cost?since=1h").await;
    assert_eq!(cost["total"]["invocations"], 6, "{cost}");

    // Bad budgets are refused.
    for body in [
        json!({"gb_seconds": 0}),
        json!({"gb_seconds": -1}),
        json!({"gb_seconds": 1, "period": "fortnight"}),
        json!({"gb_seconds": 1, "webhook": "ftp://x"}),
    ] {
        let r = s
            .http
            .put(format!("{}/v1/functions/metered/budget", s.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        support::assert_error(r, 400, "bad_request").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_dashboard_and_rules_are_valid_and_written_on_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &guest("echo"), "watched", &[]);
    s.seal_json(&["deploy", "watched", "1"]);

    let written = dir.path().join("monitoring/watched");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !written.join("rules.yml").exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rules = std::fs::read_to_string(written.join("rules.yml")).unwrap();
    assert!(rules.contains("SealHighErrorRate"));
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(written.join("dashboard.json")).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "seal-watched");

    // The API serves the same documents.
    let r = s
        .http
        .get(format!(
            "{}/v1/functions/watched/monitoring/prometheus-rules",
            s.api
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = r.text().await.unwrap();
    assert_eq!(served, rules);
    check_rules(&served);
    let grafana = s.api_get("/v1/functions/watched/monitoring/grafana").await;
    assert_eq!(grafana, dashboard);
    let panels = grafana["panels"].as_array().unwrap();
    assert!(panels.iter().any(|p| p["repeat"] == "version"));

    // A budget adds its alerts, to the served rules and the written file.
    let r = s
        .http
        .put(format!("{}/v1/functions/watched/budget", s.api))
        .json(&json!({"gb_seconds": 100, "period": "month"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rules = std::fs::read_to_string(written.join("rules.yml")).unwrap();
    assert!(rules.contains("SealBudgetExceeded"), "{rules}");
    check_rules(&rules);

    // The rules about environments (their own settings drifting) are
    // written at start, beside the functions' (no function is `_...`).
    let env_rules =
        std::fs::read_to_string(dir.path().join("monitoring/_environments/rules.yml")).unwrap();
    assert!(env_rules.contains("SealEnvironmentDrifted"), "{env_rules}");
    assert!(
        env_rules.contains("seal_environment_drift_differences"),
        "{env_rules}"
    );
    check_rules(&env_rules);

    let r = s
        .http
        .get(format!("{}/v1/functions/nope/monitoring/grafana", s.api))
        .send()
        .await
        .unwrap();
    support::assert_error(r, 404, "not_found").await;
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_versions_and_their_digests() {
    let Some(bin) = prometheus_tool("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, digest) = publish_file(&s, &guest("echo"), "scraped", &[]);
    s.seal_json(&["deploy", "scraped", "1"]);
    for _ in 0..3 {
        assert_eq!(s.get("/scraped/").await.status(), 200);
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = s.api.trim_start_matches("http://");
    let prom_dir = tempfile::tempdir().unwrap();
    let config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: seal\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            s.data_dir.join("admin.token").display()
        ),
    )
    .unwrap();
    let _prom = Child(
        std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| {
        let http = s.http.clone();
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let q = q.to_owned();
        async move {
            let r = http.get(url).query(&[("query", q)]).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            v["data"]["result"].as_array().cloned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let invocations = loop {
        let got = query("seal_invocations_total{function=\"scraped\"}").await;
        if let Some(r) = got.filter(|r| !r.is_empty()) {
            break r;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped Seal");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(invocations.len(), 1, "{invocations:?}");
    assert_eq!(invocations[0]["metric"]["version"], "1");
    assert_eq!(invocations[0]["metric"]["environment"], "production");
    assert_eq!(invocations[0]["value"][1], "3");
    let info = query("seal_version_info{function=\"scraped\"}")
        .await
        .unwrap();
    assert_eq!(info[0]["metric"]["digest"], digest.as_str());
    // Prometheus scraped OpenMetrics (it asks for it) and stored the
    // histogram's buckets.
    let p99 = query(
        "histogram_quantile(0.99, sum by (le) (seal_invocation_duration_seconds_bucket{function=\"scraped\"}))",
    )
    .await
    .unwrap();
    let v: f64 = p99[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(v > 0.0 && v < 5.0, "{v}");
}
