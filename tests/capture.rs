//! End-to-end traffic capture: `seal capture start|stop|list|show|delete`
//! against the real server and gateway — the share kept, the headers
//! never kept, the body and the response digest, the maximum.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{Server, guest, publish_file};

/// Sends `n` requests with credentials, a header to drop and one to keep;
/// returns each answer's body by its request id.
async fn send(s: &Server, n: usize, tag: &str) -> HashMap<String, Vec<u8>> {
    let mut answers = HashMap::new();
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let r = s
            .http
            .post(format!("{}/hello/orders?n={i}", s.gateway))
            .header("authorization", "Bearer do-not-keep")
            .header("cookie", "session=do-not-keep")
            .header("x-api-key", "do-not-keep")
            .header("x-keep", "yes")
            .header("x-request-id", &id)
            .body(format!("payload-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        answers.insert(id, r.bytes().await.unwrap().to_vec());
    }
    answers
}

/// The capture's count once it stops moving (the writer persists in
/// batches, off the request path).
async fn settled(s: &Server) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let list = s.seal_json(&["capture", "list"]);
        let now = list["captures"][0]["captured"].as_u64().unwrap();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_keeps_about_its_share_never_credentials_and_at_most_its_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &guest("echo"), "hello", &[]);
    s.seal_json(&["deploy", "hello", "1"]);

    // Bad input: an unknown function, a rate over 100%, a bad header, no
    // capture to stop or show.
    s.seal(&["capture", "start", "nope", "--rate", "5%"])
        .assert_fails_with("nope");
    let over = s.seal(&["capture", "start", "hello", "--rate", "150%"]);
    assert!(
        !over.ok && over.stderr.contains("at most 100%"),
        "{}",
        over.stderr
    );
    let (code, body) = s
        .api_post(
            "/v1/captures",
            serde_json::json!({"function": "hello", "rate_percent": 150.0}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = s
        .api_post(
            "/v1/captures",
            serde_json::json!({"function": "hello", "rate_percent": 5.0, "drop_headers": ["bad header"]}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    s.seal(&["capture", "stop", "hello"])
        .assert_fails_with("no capture of hello in production");
    s.seal(&["capture", "show", "hello"])
        .assert_fails_with("no capture of hello in production");

    // 25% of 400 requests: about 100 kept.
    let c = s.seal_json(&[
        "capture",
        "start",
        "hello",
        "--env",
        "production",
        "--rate",
        "25%",
        "--drop-header",
        "X-Api-Key",
    ]);
    assert_eq!(c["rate_percent"], 25.0, "{c:#}");
    assert_eq!(c["max"], 10_000, "{c:#}");
    assert_eq!(c["drop_headers"], serde_json::json!(["x-api-key"]), "{c:#}");
    let answers = send(&s, 400, "a").await;
    let kept = settled(&s).await;
    assert!((60..=140).contains(&kept), "kept {kept} of 400 at 25%");

    let shown = s.seal_json(&["capture", "show", "hello", "--limit", "1000"]);
    let requests = shown["requests"].as_array().unwrap();
    assert_eq!(requests.len() as u64, kept);
    for r in requests {
        let headers: Vec<(String, String)> = serde_json::from_value(r["headers"].clone()).unwrap();
        for (name, value) in &headers {
            assert_ne!(value, "do-not-keep", "{name} was kept: {r:#}");
        }
        assert!(headers.contains(&("x-keep".into(), "yes".into())), "{r:#}");
        let id = &headers.iter().find(|(n, _)| n == "x-request-id").unwrap().1;
        let i = id.strip_prefix("a-").unwrap();
        assert_eq!(r["method"], "POST");
        assert_eq!(r["path"], format!("/orders?n={i}"), "{r:#}");
        assert_eq!(r["version"], 1);
        assert_eq!(r["status"], 200);
        let body = r["body"].as_str().unwrap();
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(body, format!("payload-{i}").into_bytes());
        // The digest of exactly what the caller received.
        let answer = &answers[id.as_str()];
        assert_eq!(
            r["response_digest"],
            format!("sha256:{}", hex::encode(Sha256::digest(answer))),
            "{r:#}"
        );
        assert_eq!(r["response_bytes"], answer.len() as u64);
    }
    // Real production requests: not for a token limited to staging.
    let tok = s.seal_json(&["token", "create", "--role", "deployer", "--env", "staging"]);
    let staging_only = [("SEAL_TOKEN", tok["token"].as_str().unwrap())];
    assert!(
        !s.seal_env(
            &["capture", "show", "hello", "--env", "production"],
            &staging_only
        )
        .ok
    );
    let text = s.seal(&["capture", "list"]).stdout;
    assert!(
        text.contains("capture of hello in production: running; 25% of requests"),
        "{text}"
    );

    // Stopped, it keeps what it kept and no more.
    let c = s.seal_json(&["capture", "stop", "hello"]);
    assert_eq!(c["stopped_by"], "admin", "{c:#}");
    send(&s, 40, "b").await;
    assert_eq!(settled(&s).await, kept);
    s.seal(&["capture", "stop", "hello"])
        .assert_fails_with("stopped already");
    // A restart that would drop more headers than the kept requests were
    // filtered by is refused: those headers are in them.
    s.seal(&[
        "capture",
        "start",
        "hello",
        "--rate",
        "25%",
        "--drop-header",
        "x-api-key",
        "--drop-header",
        "X-Keep",
    ])
    .assert_fails_with(&format!("kept {kept} requests with x-keep in them"));

    // Deleted with what it kept; a new one keeps at most its maximum.
    let d = s.seal_json(&["capture", "delete", "hello"]);
    assert_eq!(d["deleted"], kept, "{d:#}");
    assert_eq!(
        s.seal_json(&["capture", "list"])["captures"],
        serde_json::json!([])
    );
    s.seal_json(&["capture", "start", "hello", "--rate", "100%", "--max", "5"]);
    send(&s, 20, "c").await;
    assert_eq!(settled(&s).await, 5);
    let v: Value = s.api_get("/v1/audit?limit=50").await;
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in ["capture.start", "capture.stop", "capture.delete"] {
        assert!(actions.contains(&a), "{a}: {actions:?}");
    }
}

/// Events from a queue count as the function's traffic: a running capture
/// keeps the binary-mode CloudEvents request the guest got and what it
/// answered; events sent straight to a version (`seal events replay`)
/// are not traffic and are not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_keeps_events_delivered_from_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &guest("events"), "billing", &[]);
    s.seal_json(&["deploy", "billing", "1"]);
    s.seal_json(&["queue", "create", "orders"]);
    s.seal_json(&[
        "trigger",
        "create",
        "queue",
        "--function",
        "billing",
        "--queue",
        "orders",
    ]);
    s.seal_json(&["capture", "start", "billing", "--rate", "100%"]);
    let data = dir.path().join("order.json");
    for i in 0..3 {
        std::fs::write(&data, format!(r#"{{"order": {i}}}"#)).unwrap();
        s.seal_json(&[
            "events",
            "send",
            "orders",
            "--type",
            "order.created",
            "--id",
            &format!("order-{i}"),
            "--data",
            &format!("@{}", data.display()),
        ]);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let requests = loop {
        let shown = s.seal_json(&["capture", "show", "billing"]);
        let requests = shown["requests"].as_array().unwrap().clone();
        if requests.len() >= 3 || Instant::now() > deadline {
            break requests;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(requests.len(), 3, "{requests:#?}");
    let mut ids = Vec::new();
    for r in &requests {
        let headers: HashMap<String, String> =
            serde_json::from_value::<Vec<(String, String)>>(r["headers"].clone())
                .unwrap()
                .into_iter()
                .collect();
        assert_eq!(r["method"], "POST", "{r:#}");
        assert_eq!(r["path"], "/", "{r:#}");
        assert_eq!(headers["ce-type"], "order.created", "{r:#}");
        assert_eq!(headers["ce-specversion"], "1.0", "{r:#}");
        assert_eq!(r["status"], 200, "{r:#}");
        assert!(
            r["response_digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:"),
            "{r:#}"
        );
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD
            .decode(r["body"].as_str().unwrap())
            .unwrap();
        let i = headers["ce-id"].strip_prefix("order-").unwrap().to_owned();
        // The data as the guest got it (JSON data is sent compact).
        assert_eq!(body, format!(r#"{{"order":{i}}}"#).into_bytes(), "{r:#}");
        assert!(r["body_truncated"].is_null(), "{r:#}");
        ids.push(headers["ce-id"].clone());
    }
    ids.sort();
    assert_eq!(ids, ["order-0", "order-1", "order-2"]);
}
