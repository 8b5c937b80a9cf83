//! End-to-end progressive delivery: canary, linear and blue/green
//! deployments against the real server, real guests and real traffic.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{
    Server, assert_error, example_component, guest, header, metric, publish_file, webhook_receiver,
};

/// `api@1` serving (all-at-once) from `v1`, `api@2` published from `v2`.
fn two_versions(s: &Server, v1: &std::path::Path, v2: &std::path::Path) {
    assert_eq!(publish_file(s, v1, "api", &[]).0, 1);
    assert_eq!(publish_file(s, v2, "api", &[]).0, 2);
    s.seal_json(&["deploy", "api", "1"]);
}

async fn start_rollout(s: &Server, rollout: Value) -> u64 {
    let (status, v) = s
        .api_post(
            "/v1/functions/api/deploy",
            json!({"version": 2, "rollout": rollout}),
        )
        .await;
    assert_eq!(status, 200, "{v}\n{}", s.log());
    assert_eq!(v["deployment"]["state"], "progressing", "{v}");
    v["deployment"]["id"].as_u64().unwrap()
}

/// Polls a deployment until its driver has applied step `step` (so what
/// is sent from now on counts in that step's window).
async fn wait_step(s: &Server, id: u64, step: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let v = s.api_get(&format!("/v1/deployments/{id}")).await;
        if v["deployment"]["step"].as_u64().unwrap_or(0) >= step {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "deployment {id} did not reach step {step} in {limit:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls a deployment until it leaves the active states (or `limit`).
async fn wait_finished(s: &Server, id: u64, limit: Duration) -> (Value, Vec<Value>) {
    let start = Instant::now();
    loop {
        let v = s.api_get(&format!("/v1/deployments/{id}")).await;
        let state = v["deployment"]["state"].as_str().unwrap().to_owned();
        if !["pending", "progressing", "paused"].contains(&state.as_str()) {
            return (
                v["deployment"].clone(),
                v["events"].as_array().unwrap().clone(),
            );
        }
        assert!(
            start.elapsed() < limit,
            "deployment {id} still {state} after {limit:?}: {v:#}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state(s: &Server, id: u64, want: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let v = s.api_get(&format!("/v1/deployments/{id}")).await;
        if v["deployment"]["state"] == want {
            return v;
        }
        assert!(start.elapsed() < limit, "never {want}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Background traffic to `/api{path}` until stopped: counts per version
/// and failures of the baseline (version 1).
struct Traffic {
    stop: Arc<AtomicBool>,
    per_version: Arc<[AtomicU64; 3]>,
    baseline_failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(s: &Server, path: &str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let per_version: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let baseline_failures = Arc::new(AtomicU64::new(0));
        let (http, url) = (s.http.clone(), format!("{}/api{path}", s.gateway));
        let (st, pv, bf) = (stop.clone(), per_version.clone(), baseline_failures.clone());
        let task = tokio::spawn(async move {
            // Bounded: at most 3000 requests.
            for _ in 0..3000 {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let http = http.clone();
                let url = url.clone();
                let (pv, bf) = (pv.clone(), bf.clone());
                tokio::spawn(async move {
                    let Ok(r) = http.get(&url).send().await else {
                        bf.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let v: usize = header(&r, "seal-version").parse().unwrap_or(0);
                    pv[v.min(2)].fetch_add(1, Ordering::Relaxed);
                    if v == 1 && !r.status().is_success() {
                        bf.fetch_add(1, Ordering::Relaxed);
                    }
                });
                tokio::time::sleep(every).await;
            }
        });
        Self {
            stop,
            per_version,
            baseline_failures,
            task,
        }
    }

    async fn stop(self) -> ([u64; 3], u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        (
            [0, 1, 2].map(|i| self.per_version[i].load(Ordering::Relaxed)),
            self.baseline_failures.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_to_a_failing_version_rolls_back_at_once_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &guest("fail"));
    let traffic = Traffic::start(&s, "/", Duration::from_millis(10));
    let started = Instant::now();
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [50], "interval_ms": 60000,
               "gates": {"max_error_rate": 0.05, "min_requests": 20}}),
    )
    .await;
    let (d, events) = wait_finished(&s, id, Duration::from_secs(20)).await;
    let took = started.elapsed();
    let (counts, baseline_failures) = traffic.stop().await;

    assert_eq!(d["state"], "rolled_back", "{d:#}");
    // Never waited for the 60 s interval: the breach was certain first.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(baseline_failures, 0, "baseline traffic failed: {counts:?}");
    assert!(counts[2] > 0, "the canary got no traffic: {counts:?}");
    let k = kinds(&events);
    assert_eq!(k, ["started", "step", "gate", "rolled_back"], "{events:#?}");
    let gate = &events[2]["detail"];
    assert_eq!(gate["verdict"], "fail");
    assert_eq!(gate["results"][0]["gate"], "error_rate");
    assert_eq!(gate["results"][0]["threshold"], "≤ 5%");
    assert!(gate["results"][0]["candidate"]["errors"].as_u64().unwrap() >= 2);
    let rb = &events[3]["detail"];
    let reason = rb["reason"].as_str().unwrap();
    assert!(
        reason.contains("error_rate") && reason.contains("100%"),
        "{reason}"
    );
    assert_eq!(rb["gate"]["verdict"], "fail");
    // The route is the baseline alone again, and the gateway agrees.
    assert_eq!(d["to_weights"], json!([{"version": 1, "weight": 100}]));
    for _ in 0..20 {
        let r = s.get("/api/").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "seal-version"), "1");
    }
    // The CLI shows every transition and the failed gate with its numbers.
    let out = s.seal(&["deployments", "show", &id.to_string()]);
    assert!(out.ok, "{}", out.stderr);
    for needle in ["rolled_back", "error_rate", "≤ 5%", "fail"] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    // The audit log names the automatic rollback.
    let audit = s.api_get("/v1/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "rolled_back"),
        "{audit:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_version_fails_the_latency_gate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &guest("slow"));
    let traffic = Traffic::start(&s, "/?ms=300", Duration::from_millis(20));
    let id = start_rollout(
        &s,
        json!({"strategy": "linear", "increment": 50, "interval_ms": 60000,
               "gates": {"max_latency": {"quantile": 0.99, "ms": 100}, "min_requests": 10}}),
    )
    .await;
    let (d, events) = wait_finished(&s, id, Duration::from_secs(30)).await;
    let (_, baseline_failures) = traffic.stop().await;
    assert_eq!(d["state"], "rolled_back");
    assert_eq!(baseline_failures, 0);
    let rb = events.iter().find(|e| e["kind"] == "rolled_back").unwrap();
    assert_eq!(rb["detail"]["gate"]["gate"], "latency_p99", "{rb:#}");
    let measured = rb["detail"]["gate"]["measured"].as_str().unwrap();
    let ms: f64 = measured.trim_end_matches(" ms").parse().unwrap();
    assert!(ms >= 300.0, "{measured}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_promotes_through_every_step_with_zero_baseline_failures() {
    let dir = tempfile::tempdir().unwrap();
    // The notification receiver is on loopback: the operator allows it.
    let s = Server::start_with(dir.path(), &["--allow-outbound", "127.0.0.1"]);
    two_versions(
        &s,
        &example_component("hello"),
        &example_component("hello_v2"),
    );
    let (hook_url, notes) = webhook_receiver().await;
    let traffic = Traffic::start(&s, "/", Duration::from_millis(5));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [20, 60], "interval_ms": 1500,
               "gates": {"max_error_rate": 0.05, "max_latency": {"quantile": 0.99, "ms": 1000},
                         "max_error_rate_increase": 0.05, "min_requests": 10},
               "notify": hook_url,
               "hooks": [{"name": "says-v2", "phase": "pre-traffic",
                          "request": {"method": "GET", "path": "/"},
                          "expect": {"status": 200, "body_contains": "(v2)"}},
                         {"name": "still-v2", "phase": "post-traffic",
                          "request": {"path": "/after"},
                          "expect": {"status": 200}}]}),
    )
    .await;
    let (d, events) = wait_finished(&s, id, Duration::from_secs(30)).await;
    let (counts, baseline_failures) = traffic.stop().await;
    assert_eq!(d["state"], "succeeded", "{events:#?}");
    assert_eq!(baseline_failures, 0, "{counts:?}");
    assert!(counts[1] > 0 && counts[2] > 0, "{counts:?}");
    let k = kinds(&events);
    assert_eq!(
        k,
        [
            "started",
            "hook",
            "step",
            "gate",
            "step",
            "gate",
            "promoted",
            "hook",
            "succeeded"
        ],
        "{events:#?}"
    );
    assert_eq!(events[2]["detail"]["weight"], 20);
    assert_eq!(events[4]["detail"]["weight"], 60);
    for g in [&events[3], &events[5]] {
        assert_eq!(g["detail"]["verdict"], "pass", "{g:#}");
        assert_eq!(g["detail"]["results"].as_array().unwrap().len(), 3);
    }
    assert_eq!(events[1]["detail"]["passed"], true);
    assert_eq!(events[7]["detail"]["phase"], "post-traffic");
    assert_eq!(d["to_weights"], json!([{"version": 2, "weight": 100}]));
    let r = s.get("/api/").await;
    assert_eq!(header(&r, "seal-version"), "2");
    // Every transition reached the webhook, in order.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<String> = notes
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["event"].as_str().unwrap_or("").to_owned())
            .collect();
        if got.len() >= 5 {
            assert_eq!(got, ["started", "step", "step", "promoted", "succeeded"]);
            break;
        }
        assert!(Instant::now() < deadline, "webhook got {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The attack: callers pin the candidate with `seal-version` and hang up
/// before its answer (its late write then traps). They used to count as
/// the candidate's errors and rolled a healthy canary back in 1–2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_who_hang_up_or_pin_without_the_token_do_not_decide_a_canary() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.seal_json(&["env", "create", "staging"]);
    assert_eq!(publish_file(&s, &guest("echo"), "api", &[]).0, 1);
    assert_eq!(publish_file(&s, &guest("slow"), "api", &[]).0, 2);
    s.seal_json(&["deploy", "api", "1", "--env", "staging"]);
    let (status, v) = s
        .api_post(
            "/v1/functions/api/deploy",
            json!({"version": 2, "environment": "staging",
               "rollout": {"strategy": "canary", "steps": [50], "interval_ms": 3000,
                           "gates": {"max_error_rate": 0.01, "min_requests": 10}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["deployment"]["id"].as_u64().unwrap();
    wait_step(&s, id, 1, Duration::from_secs(10)).await;
    let url = format!("{}/?ms=300", s.gateway);
    let host = "api.staging.localhost";
    // Pinned without the token (staging is not protected, so they are
    // served) and gone after 100 ms, before the candidate answers.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let hang_ups = (0..10).map(|_| {
        impatient
            .get(&url)
            .header("host", host)
            .header("seal-version", "2")
            .send()
    });
    for r in futures::future::join_all(hang_ups).await {
        assert!(r.unwrap_err().is_timeout());
    }
    // Unpinned callers who hang up too: judged traffic, still not the
    // candidate's errors.
    let hang_ups = (0..10).map(|_| impatient.get(&url).header("host", host).send());
    futures::future::join_all(hang_ups).await;
    // Pinned without the token and patient: served by the candidate and
    // counted, never judged.
    for _ in 0..5 {
        let r = s
            .http
            .get(format!("{}/?ms=1", s.gateway))
            .header("host", host)
            .header("seal-version", "2")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&r, "seal-version"), "2");
        r.bytes().await.unwrap();
    }
    // Real traffic, read to the end.
    let mut served = [0u32; 3];
    for _ in 0..60 {
        let r = s
            .http
            .get(format!("{}/?ms=1", s.gateway))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        served[header(&r, "seal-version").parse::<usize>().unwrap().min(2)] += 1;
        r.bytes().await.unwrap();
    }
    assert!(served[2] >= 10, "{served:?}");
    let (d, events) = wait_finished(&s, id, Duration::from_secs(20)).await;
    assert_eq!(d["state"], "succeeded", "{events:#?}\n{}", s.log());
    let gate = events.iter().rfind(|e| e["kind"] == "gate").unwrap();
    assert_eq!(gate["detail"]["verdict"], "pass", "{gate:#}");
    let error_rate = &gate["detail"]["results"][0];
    assert_eq!(error_rate["gate"], "error_rate");
    // Judged: the real requests the weights sent to the candidate, not the
    // 5 pinned ones (nor the hang-ups, which never got an answer).
    assert_eq!(
        error_rate["measured"],
        format!("0% (0/{})", served[2]),
        "{gate:#}"
    );
    let text = s.api_text("/metrics").await;
    let v2 = [("environment", "staging"), ("version", "2")];
    assert_eq!(
        metric(&text, "seal_invocations_unjudged_total", &v2),
        Some(5.0),
        "{text}"
    );
    for kind in ["trap", "status_5xx", "timeout", "memory", "no_response"] {
        let labels = [v2[0], v2[1], ("kind", kind)];
        assert_eq!(
            metric(&text, "seal_invocation_errors_total", &labels),
            Some(0.0),
            "{kind}: {text}"
        );
    }
    assert!(
        metric(&text, "seal_invocations_client_closed_total", &v2).unwrap() >= 10.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_traffic_canary_is_inconclusive_waits_then_meets_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [50], "interval_ms": 500,
               "progress_deadline_ms": 2500,
               "gates": {"max_error_rate": 0.01, "min_requests": 1000}}),
    )
    .await;
    // A few requests: not enough to pass, nothing to fail.
    for _ in 0..10 {
        assert_eq!(s.get("/api/").await.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = s.api_get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(v["deployment"]["state"], "progressing", "waits: {v:#}");
    let first_gate = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "gate")
        .cloned()
        .unwrap_or_else(|| panic!("no gate evaluation recorded: {v:#}"));
    assert_eq!(first_gate["detail"]["verdict"], "inconclusive");
    // The live view says so too.
    let st = s.api_get("/v1/functions/api/rollout").await;
    assert_eq!(st["active"], true);
    assert_eq!(st["gates"]["verdict"], "inconclusive", "{st:#}");
    assert_eq!(st["step"]["weight"], 50);
    let (d, events) = wait_finished(&s, id, Duration::from_secs(10)).await;
    assert_eq!(d["state"], "rolled_back");
    let rb = events.last().unwrap();
    assert!(
        rb["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("progress deadline"),
        "{rb:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deployment_on_a_busy_route_is_refused_and_abort_restores_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    publish_file(&s, &guest("slow"), "api", &[]);
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [10], "interval_ms": 600000}),
    )
    .await;

    // Every other way to move the route is refused while it runs.
    let (st, v) = s
        .api_post("/v1/functions/api/deploy", json!({"version": 3}))
        .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "deployment_in_progress");
    let (st, _) = s
        .api_post(
            "/v1/functions/api/deploy",
            json!({"version": 3, "rollout": {"strategy": "linear"}}),
        )
        .await;
    assert_eq!(st, 409);
    let (st, _) = s.api_post("/v1/functions/api/rollback", json!({})).await;
    assert_eq!(st, 409);
    s.seal(&["deploy", "api", "3"])
        .assert_fails_with(&format!("seal abort {id}"));
    // Approve is only for a paused deployment.
    let (st, v) = s
        .api_post(&format!("/v1/deployments/{id}/approve"), json!({}))
        .await;
    assert_eq!(st, 409);
    assert_eq!(v["error"]["code"], "not_paused");

    let out = s.seal(&["abort", &id.to_string()]);
    assert!(out.ok, "{}", out.stderr);
    let v = s.api_get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(v["deployment"]["state"], "aborted");
    assert_eq!(
        v["deployment"]["to_weights"],
        json!([{"version": 1, "weight": 100}])
    );
    for _ in 0..20 {
        assert_eq!(header(&s.get("/api/").await, "seal-version"), "1");
    }
    // Finished: commands are refused, the route is free again.
    let (st, v) = s
        .api_post(&format!("/v1/deployments/{id}/abort"), json!({}))
        .await;
    assert_eq!(st, 409);
    assert_eq!(v["error"]["code"], "not_active");
    s.seal_json(&["deploy", "api", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_by_header_and_host_then_switches() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(
        &s,
        &example_component("hello"),
        &example_component("hello_v2"),
    );
    // Production is protected from the first deploy on: no deployment in
    // progress, no token, no pin.
    let r = s
        .http
        .get(format!("{}/api/", s.gateway))
        .header("seal-version", "1")
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "preview_token_required").await;
    let id = start_rollout(
        &s,
        json!({"strategy": "blue-green", "interval_ms": 1500, "scale_down_delay_ms": 1000,
               "gates": {"min_requests": 3}}),
    )
    .await;
    wait_step(&s, id, 1, Duration::from_secs(10)).await;
    // Before the switch: live traffic stays on v1; v2 is reachable by
    // header and on the preview host, in production only with the
    // deployment's preview token (`seal deployments show` prints it).
    for _ in 0..10 {
        assert_eq!(header(&s.get("/api/").await, "seal-version"), "1");
    }
    let pinned = |token: Option<&str>| {
        let mut r = s
            .http
            .get(format!("{}/api/", s.gateway))
            .header("seal-version", "2");
        if let Some(t) = token {
            r = r.header("seal-preview-token", t);
        }
        r.send()
    };
    let preview = |token: Option<&str>| {
        let mut r = s
            .http
            .get(format!("{}/", s.gateway))
            .header("host", "api--preview.production.localhost");
        if let Some(t) = token {
            r = r.header("seal-preview-token", t);
        }
        r.send()
    };
    for r in [
        pinned(None).await.unwrap(),
        pinned(Some("0123456789abcdef0123456789abcdef"))
            .await
            .unwrap(),
        preview(None).await.unwrap(),
    ] {
        let v = assert_error(r, 403, "preview_token_required").await;
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("seal deployments show"),
            "{v}"
        );
    }
    let shown = s.seal(&["deployments", "show", &id.to_string()]);
    assert!(shown.ok, "{}", shown.stderr);
    let token = s.api_get(&format!("/v1/deployments/{id}")).await["preview_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        shown.stdout.contains(&format!("preview token: {token}")),
        "{}",
        shown.stdout
    );
    let r = pinned(Some(&token)).await.unwrap();
    assert_eq!(header(&r, "seal-version"), "2");
    let body = r.text().await.unwrap();
    assert!(body.contains("(v2)"), "{body}");
    for _ in 0..3 {
        let r = preview(Some(&token)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "seal-version"), "2");
    }
    let (d, events) = wait_finished(&s, id, Duration::from_secs(20)).await;
    assert_eq!(d["state"], "succeeded", "{events:#?}");
    assert_eq!(
        kinds(&events),
        ["started", "step", "gate", "promoted", "succeeded"]
    );
    assert_eq!(header(&s.get("/api/").await, "seal-version"), "2");
    // Nothing in progress: nothing to preview, and the token is gone.
    let r = s.get_host("api--preview.production.localhost", "/").await;
    assert_error(r, 404, "no_preview").await;
    let done = s.api_get(&format!("/v1/deployments/{id}")).await;
    assert!(done.get("preview_token").is_none(), "{done:#}");
    let r = pinned(Some(&token)).await.unwrap();
    assert_error(r, 403, "preview_token_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_callers_stay_on_their_version_as_the_canary_grows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [30, 70], "interval_ms": 2500,
               "sticky_header": "x-user", "gates": {"min_requests": 0}}),
    )
    .await;
    async fn version_of(s: &Server, user: u32) -> String {
        let r = s
            .http
            .get(format!("{}/api/", s.gateway))
            .header("x-user", format!("user-{user}"))
            .send()
            .await
            .unwrap();
        header(&r, "seal-version")
    }
    async fn step_of(s: &Server, id: u64) -> u64 {
        s.api_get(&format!("/v1/deployments/{id}")).await["deployment"]["step"]
            .as_u64()
            .unwrap()
    }
    while step_of(&s, id).await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut at_30 = Vec::new();
    for user in 0..60 {
        let v = version_of(&s, user).await;
        // The same caller gets the same answer every time.
        assert_eq!(v, version_of(&s, user).await, "user-{user}");
        at_30.push(v);
    }
    let on_candidate = at_30.iter().filter(|v| *v == "2").count();
    assert!((5..=35).contains(&on_candidate), "{on_candidate}/60 at 30%");
    while step_of(&s, id).await < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (user, before) in at_30.iter().enumerate() {
        if before == "2" {
            assert_eq!(
                version_of(&s, user as u32).await,
                "2",
                "user-{user} moved back"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_before_promote_pauses_until_approved() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [50], "interval_ms": 300,
               "approve_before_promote": true, "gates": {"min_requests": 0}}),
    )
    .await;
    let v = wait_state(&s, id, "paused", Duration::from_secs(10)).await;
    assert_eq!(v["deployment"]["to_weights"][0]["weight"], 50);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.api_get(&format!("/v1/deployments/{id}")).await["deployment"]["state"],
        "paused",
        "stays paused without approval"
    );
    let out = s.seal(&["approve", &id.to_string()]);
    assert!(out.ok, "{}", out.stderr);
    let (d, events) = wait_finished(&s, id, Duration::from_secs(10)).await;
    assert_eq!(d["state"], "succeeded");
    let k = kinds(&events);
    assert!(
        k.ends_with(&[
            "paused".into(),
            "approved".into(),
            "promoted".into(),
            "succeeded".into()
        ]),
        "{k:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_canary_the_restarted_server_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [10, 50], "interval_ms": 1500,
               "gates": {"min_requests": 0}}),
    )
    .await;
    wait_state(&s, id, "progressing", Duration::from_secs(5)).await;
    while s.api_get(&format!("/v1/deployments/{id}")).await["deployment"]["step"] != 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop(); // SIGKILL

    let s = Server::start(dir.path());
    // The route is exactly as committed: both versions, step 1's weights.
    let st = s.api_get("/v1/functions/api/rollout").await;
    assert_eq!(st["active"], true, "{st:#}");
    let mut seen = [false; 3];
    for _ in 0..200 {
        let v: usize = header(&s.get("/api/").await, "seal-version")
            .parse()
            .unwrap();
        seen[v] = true;
    }
    assert!(seen[1], "the baseline still serves");
    let (d, events) = wait_finished(&s, id, Duration::from_secs(20)).await;
    assert_eq!(d["state"], "succeeded", "{events:#?}");
    assert!(
        kinds(&events).contains(&"resumed".to_owned()),
        "{events:#?}"
    );
    assert_eq!(header(&s.get("/api/").await, "seal-version"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_canary_with_a_damaged_candidate_the_restart_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [50], "interval_ms": 600000}),
    )
    .await;
    // Damage the candidate's component blob on disk, then kill -9.
    let v2 = s.api_get("/v1/functions/api/versions/2").await;
    let layer = v2["oci_manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no layer digest in {v2:#}"))
        .to_owned();
    s.stop();
    let blob = dir
        .path()
        .join("artifacts/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    std::fs::write(&blob, b"not the component").unwrap();

    let s = Server::start(dir.path());
    let (d, events) = wait_finished(&s, id, Duration::from_secs(10)).await;
    assert_eq!(d["state"], "rolled_back", "{events:#?}");
    assert_eq!(d["to_weights"], json!([{"version": 1, "weight": 100}]));
    for _ in 0..20 {
        let r = s.get("/api/").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "seal-version"), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_traffic_hook_aborts_before_any_traffic_moves() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &guest("fail"));
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [50], "interval_ms": 1000,
               "hooks": [{"name": "smoke", "request": {"path": "/health"},
                          "expect": {"status": 200}}]}),
    )
    .await;
    let (d, events) = wait_finished(&s, id, Duration::from_secs(10)).await;
    assert_eq!(d["state"], "aborted");
    assert_eq!(kinds(&events), ["started", "hook", "aborted"]);
    assert_eq!(events[1]["detail"]["passed"], false);
    assert_eq!(events[1]["detail"]["detail"]["status"], 500);
    assert!(
        events[2]["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("smoke"),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_and_bad_rollout_settings_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    two_versions(&s, &guest("echo"), &example_component("hello_v2"));
    let out = s.seal(&[
        "deploy",
        "api",
        "2",
        "--strategy",
        "canary",
        "--steps",
        "10,50,100",
        "--interval",
        "30s",
        "--max-error-rate",
        "1%",
        "--max-latency",
        "p99=200ms",
        "--min-requests",
        "50",
        "--plan",
    ]);
    assert!(out.ok, "{}", out.stderr);
    for needle in ["10%", "50%", "100%", "1%", "200", "50", "nothing changed"] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    let plan = s.seal_json(&[
        "deploy",
        "api",
        "2",
        "--strategy",
        "linear",
        "--increment",
        "25",
        "--interval",
        "10s",
        "--plan",
    ]);
    let weights: Vec<u64> = plan["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [25, 50, 75, 100]);
    assert_eq!(
        plan["plan"]["rollback_target"],
        json!([{"version": 1, "weight": 100}])
    );
    // Nothing was recorded.
    let list = s.api_get("/v1/functions/api/deployments").await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1);

    for (rollout, needle) in [
        (json!({"strategy": "canary", "steps": [50, 20]}), "increase"),
        (json!({"strategy": "canary", "steps": [0]}), "outside"),
        (json!({"strategy": "linear", "increment": 0}), "increment"),
        (
            json!({"strategy": "canary", "gates": {"max_error_rate": 2.0}}),
            "between",
        ),
        (json!({"strategy": "sideways"}), "sideways"),
        (
            json!({"strategy": "all-at-once", "gates": {"max_error_rate": 0.01}}),
            "canary, linear or blue-green strategy",
        ),
        // Hardening: u64::MAX durations and CRLF in a hook header were
        // accepted and failed (or overflowed) only when the driver ran.
        (
            json!({"strategy": "canary", "interval_ms": u64::MAX}),
            "interval must be at most",
        ),
        (
            json!({"strategy": "canary", "progress_deadline_ms": u64::MAX}),
            "progress_deadline must be at most",
        ),
        (
            json!({"strategy": "canary", "hooks": [{"name": "h", "request":
                {"path": "/", "headers": {"x-a": "1\r\nx-injected: 2"}}}]}),
            "not a valid header name and value",
        ),
    ] {
        let (st, v) = s
            .api_post(
                "/v1/functions/api/deploy",
                json!({"version": 2, "rollout": rollout}),
            )
            .await;
        assert_eq!(st, 400, "{rollout}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{rollout}: {msg}");
    }
    // A canary needs a baseline.
    publish_file(&s, &guest("echo"), "fresh", &[]);
    let (st, v) = s
        .api_post(
            "/v1/functions/fresh/deploy",
            json!({"version": 1, "rollout": {"strategy": "canary"}}),
        )
        .await;
    assert_eq!(st, 409);
    assert_eq!(v["error"]["code"], "no_baseline");
    let list = s.api_get("/v1/functions/api/deployments").await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1);
}

/// `api@1` serving and `api@2` published, both echo (another timeout makes
/// another artifact).
fn two_echo_versions(s: &Server) {
    let echo = guest("echo");
    assert_eq!(publish_file(s, &echo, "api", &[]).0, 1);
    assert_eq!(publish_file(s, &echo, "api", &["--timeout", "5s"]).0, 2);
    s.seal_json(&["deploy", "api", "1"]);
}

/// A loopback server only the Seal server's network position reaches:
/// answers `TOPSECRET` and counts the requests that reach it.
async fn secret_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nTOPSECRET",
                )
                .await;
        }
    });
    (format!("http://{addr}/secret"), hits)
}

/// Hardening: a candidate answered its pre-traffic hook with `307` to a
/// loopback URL; the hook client followed the redirect from the server's
/// network position and stored what it fetched where viewers read it.
/// Now the redirect is the hook's answer: it fails, nothing is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_answered_with_a_redirect_fails_and_fetches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (secret, hits) = secret_server().await;
    two_echo_versions(&s);
    let id = start_rollout(
        &s,
        json!({"strategy": "canary", "steps": [50], "interval_ms": 1000,
               "hooks": [{"name": "smoke", "request": {"path": format!("/redirect?to={secret}")},
                          "expect": {"status": 200}}]}),
    )
    .await;
    let (d, events) = wait_finished(&s, id, Duration::from_secs(10)).await;
    assert_eq!(d["state"], "aborted", "{events:#?}");
    assert_eq!(events[1]["detail"]["passed"], false, "{events:#?}");
    assert_eq!(events[1]["detail"]["detail"]["status"], 307);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let everything = format!(
        "{}{}",
        s.api_get(&format!("/v1/deployments/{id}")).await,
        s.api_get("/v1/audit?limit=1000").await
    );
    assert!(!everything.contains("TOPSECRET"), "{everything}");
    // Not even the candidate's own redirect body: the hook's expectation
    // did not look at the body.
    assert!(!everything.contains("redirecting"), "{everything}");
}

/// Hardening: any deployer's notify URL on loopback got the server's POSTs.
/// Now what only the server can reach is refused when the deploy is asked
/// for, and changes nothing; an operator's allowed range is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_urls_the_server_alone_could_reach_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (secret, hits) = secret_server().await;
    two_echo_versions(&s);
    let before = s.api_get("/v1/functions/api/deployments").await;
    for (url, why) in [
        (secret.as_str(), "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/hook", "private"),
        ("http://localhost:9/hook", "loopback"),
    ] {
        let (status, v) = s
            .api_post(
                "/v1/functions/api/deploy",
                json!({"version": 2, "rollout": {"strategy": "canary", "notify": url}}),
            )
            .await;
        assert_eq!(status, 400, "{url}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(why) && message.contains("notify URL"),
            "{message}"
        );
    }
    assert_eq!(s.api_get("/v1/functions/api/deployments").await, before);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    s.stop();

    // The operator allows the loopback range: accepted, and delivered.
    let s = Server::start_with(dir.path(), &["--allow-outbound", "127.0.0.0/8"]);
    let (status, v) = s.api_post("/v1/functions/api/deploy",
        json!({"version": 2, "rollout": {"strategy": "canary", "steps": [50], "interval_ms": 60000,
                                         "notify": secret,
                                         "hooks": [{"name": "auth", "request": {"path": "/",
                                                    "headers": {"authorization": "Bearer s3cret"}}}]}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = v["deployment"]["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the allowed notification never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Readers of deployments see where notifications go, not the URL's
    // path (tokens live there), and no hook header value.
    let shown = format!(
        "{}{}{}",
        s.api_get(&format!("/v1/deployments/{id}")).await,
        s.api_get("/v1/functions/api/deployments").await,
        s.api_get("/v1/functions/api/rollout").await,
    );
    assert!(
        !shown.contains("/secret") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(shown.contains("/(redacted)"), "{shown}");
}
