//! End-to-end event triggers: queues, subscriptions, retries, dead
//! letters, cron, and a canary judged on its event traffic, against the
//! real server and real guests.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{
    Cuttable, NatsNamespace, Server, assert_error, guest, metric, post_event, publish_file,
};

/// POSTs a binary-mode CloudEvent; returns status and body.
async fn send_binary(s: &Server, queue: &str, id: &str, subject: Option<&str>) -> (u16, Value) {
    let subject: Vec<(&str, &str)> = subject.map(|v| ("ce-subject", v)).into_iter().collect();
    let r = post_event(s, queue, id, r#"{"total": 12}"#, &subject).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls an event until every delivery is done or dead.
async fn settled(s: &Server, id: u64, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let e = s.api_get(&format!("/v1/events/{id}")).await;
        let deliveries = e["deliveries"].as_array().unwrap();
        if !deliveries.is_empty()
            && deliveries
                .iter()
                .all(|d| d["state"] == "done" || d["state"] == "dead")
        {
            return e;
        }
        assert!(
            start.elapsed() < limit,
            "event {id} not settled in {limit:?}: {e:#}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A queue subscription: `seal trigger create queue` with `extra` flags.
fn subscribe(s: &Server, function: &str, queue: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "trigger",
        "create",
        "queue",
        "--function",
        function,
        "--queue",
        queue,
    ];
    args.extend(extra);
    s.seal_json(&args)
}

/// A request to the `shop` function (the events guest as a producer),
/// under a caller's request id.
async fn emit(s: &Server, path: &str, body: &'static str, request_id: &str) -> reqwest::Response {
    s.http
        .post(format!("{}/shop{path}", s.gateway))
        .header("x-request-id", request_id.to_owned())
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts one of the latest audit entries matches.
async fn assert_audited(s: &Server, matches: impl Fn(&Value) -> bool) {
    let audit = s.api_get("/v1/audit?limit=5").await;
    assert!(
        audit["entries"].as_array().unwrap().iter().any(matches),
        "{audit}"
    );
}

fn billing(s: &Server) {
    assert_eq!(publish_file(s, &guest("events"), "billing", &[]).0, 1);
    s.seal_json(&["deploy", "billing", "1"]);
    s.seal_json(&["queue", "create", "orders"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_retried_dead_lettered_and_redriven() {
    delivered_retried_dead_lettered_and_redriven(&[]).await;
}

/// The same story with the events in NATS JetStream: a stream, a durable
/// consumer per subscription, a dead-letter stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_events_are_delivered_retried_dead_lettered_and_redriven() {
    let Some(nats) = NatsNamespace::create("story") else {
        return;
    };
    delivered_retried_dead_lettered_and_redriven(&["--events", &nats.url()]).await;
}

async fn delivered_retried_dead_lettered_and_redriven(server_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), server_args);
    billing(&s);
    let t = subscribe(
        &s,
        "billing",
        "orders",
        &["--max-attempts", "3", "--backoff", "20ms..50ms"],
    );
    assert_eq!(t["name"], "billing-orders");
    assert_eq!(t["kind"], "queue");
    assert_eq!(t["max_attempts"], 3);

    // Handled at the first attempt: 2xx.
    let (status, ok) = send_binary(&s, "orders", "ok-1", None).await;
    assert_eq!(status, 202, "{ok}");
    let ok_id = ok["events"][0]["id"].as_u64().unwrap();
    // Retryable (500): every attempt made, then dead-lettered.
    let (_, retry) = send_binary(&s, "orders", "retry-1", Some("status-500")).await;
    let retry_id = retry["events"][0]["id"].as_u64().unwrap();
    // Permanent (400): dead-lettered at once, no retry.
    let (_, perm) = send_binary(&s, "orders", "perm-1", Some("status-400")).await;
    let perm_id = perm["events"][0]["id"].as_u64().unwrap();
    // Rate-limited (429) is retryable too.
    let (_, limited) = send_binary(&s, "orders", "limited-1", Some("status-429")).await;
    let limited_id = limited["events"][0]["id"].as_u64().unwrap();

    let e = settled(&s, ok_id, Duration::from_secs(20)).await;
    let d = &e["deliveries"][0];
    assert_eq!(d["state"], "done", "{e:#}");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["history"][0]["version"], 1);
    assert_eq!(d["history"][0]["status"], 200);
    assert!(
        d["history"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(e["type"], "order.created");
    assert_eq!(e["event"]["data"], json!({"total": 12}));

    let e = settled(&s, retry_id, Duration::from_secs(20)).await;
    let d = &e["deliveries"][0];
    assert_eq!(d["state"], "dead", "{e:#}");
    assert_eq!(d["dead_reason"], "attempts_exhausted");
    let history = d["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "every attempt recorded: {e:#}");
    for (i, a) in history.iter().enumerate() {
        assert_eq!(a["attempt"], i as u64 + 1);
        assert_eq!(a["status"], 500);
        assert_eq!(a["outcome"], "retryable");
        assert_eq!(a["version"], 1, "retries stay on one version");
    }
    let e = settled(&s, perm_id, Duration::from_secs(20)).await;
    let d = &e["deliveries"][0];
    assert_eq!(
        (d["state"].as_str(), d["dead_reason"].as_str()),
        (Some("dead"), Some("permanent"))
    );
    assert_eq!(d["history"].as_array().unwrap().len(), 1, "no retry: {e:#}");
    let e = settled(&s, limited_id, Duration::from_secs(20)).await;
    assert_eq!(e["deliveries"][0]["history"].as_array().unwrap().len(), 3);

    // The guest got the event in binary mode, and said so in its log.
    let logs = s.seal(&["logs", "billing", "-o", "json"]);
    assert!(
        logs.stdout
            .contains("event: ok-1 type=order.created subject=-"),
        "{}",
        logs.stdout
    );

    // A duplicate (same source and id) within the window adds nothing.
    let (status, dup) = send_binary(&s, "orders", "ok-1", None).await;
    assert_eq!(status, 202);
    assert_eq!(dup["events"][0]["duplicate"], true);
    assert_eq!(dup["events"][0]["id"], ok_id);

    // Dead letters: the 500, the 400 and the 429, with reason and version.
    let dead = s.seal_json(&["dlq", "list", "--queue", "orders"]);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 3, "{dead:#?}");
    let of = |id: u64| dead.iter().find(|d| d["event_id"] == id).unwrap().clone();
    assert_eq!(of(perm_id)["reason"], "permanent");
    assert_eq!(of(perm_id)["version"], 1);
    assert!(of(retry_id)["last_error"].as_str().unwrap().contains("500"));
    let shown = s.seal_json(&["dlq", "show", &of(retry_id)["id"].to_string()]);
    assert_eq!(shown["event"]["ce_id"], "retry-1");

    // The same story in the metrics, per subscription.
    let text = s.api_text("/metrics").await;
    let sub = [("queue", "orders"), ("trigger", "billing-orders")];
    let count = |outcome: &str| {
        let mut l = sub.to_vec();
        l.push(("outcome", outcome));
        metric(&text, "seal_event_deliveries_total", &l).unwrap_or(0.0)
    };
    assert_eq!(count("delivered"), 1.0, "{text}");
    assert_eq!(count("dead_lettered"), 3.0, "{text}");
    assert_eq!(
        count("retried"),
        4.0,
        "two retries each of the 500 and the 429"
    );
    assert_eq!(
        metric(&text, "seal_event_latency_seconds_count", &sub),
        Some(1.0)
    );
    // Nothing is left to handle: the backlog gauges say so (set each second).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let text = s.api_text("/metrics").await;
    assert_eq!(
        metric(&text, "seal_queue_depth", &sub).unwrap_or(0.0),
        0.0,
        "{text}"
    );

    // Redrive to a fixed version: billing@2 answers 2xx to everything.
    assert_eq!(publish_file(&s, &guest("echo"), "billing", &[]).0, 2);
    s.seal(&["dlq", "redrive", "--all", "--to", "2"])
        .assert_fails_with("not in the route");
    s.seal_json(&["deploy", "billing", "2"]);
    let redriven = s.seal_json(&[
        "dlq",
        "redrive",
        &of(retry_id)["id"].to_string(),
        "--to",
        "2",
    ]);
    assert_eq!(redriven["count"], 1);
    let e = settled(&s, retry_id, Duration::from_secs(20)).await;
    let d = &e["deliveries"][0];
    assert_eq!(d["state"], "done", "{e:#}");
    let history = d["history"].as_array().unwrap();
    assert_eq!(history.len(), 4, "attempt numbers go on: {e:#}");
    assert_eq!(history[3]["attempt"], 4);
    assert_eq!(history[3]["version"], 2);

    // Purge the rest; each change is audited.
    let purged = s.seal_json(&["dlq", "purge", "--queue", "orders"]);
    assert_eq!(purged["count"], 2);
    assert!(s.seal_json(&["dlq", "list"]).as_array().unwrap().is_empty());
    let audit = s.seal_json(&["audit"]);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in ["queue.create", "trigger.create", "dlq.redrive", "dlq.purge"] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    // The CLI sends structured events and shows their attempts.
    let data = dir.path().join("order.json");
    std::fs::write(&data, r#"{"total": 3}"#).unwrap();
    let sent = s.seal_json(&[
        "events",
        "send",
        "orders",
        "--type",
        "order.created",
        "--id",
        "cli-1",
        "--data",
        &format!("@{}", data.display()),
    ]);
    let id = sent["events"][0]["id"].as_u64().unwrap();
    settled(&s, id, Duration::from_secs(20)).await;
    let shown = s.seal_json(&["events", "show", &id.to_string()]);
    assert_eq!(shown["deliveries"][0]["state"], "done");
    assert_eq!(shown["deliveries"][0]["history"][0]["version"], 2);
    assert_eq!(shown["event"]["data"], json!({"total": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_and_bindings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    let url = format!("{}/v1/queues/production/orders/events", s.api);
    // Each request from scratch: a header given twice would be two values.
    let with = |pairs: &[(&str, &str)]| {
        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "x1"),
            ("ce-source", "/shop"),
            ("ce-type", "t"),
        ];
        for (k, v) in pairs {
            headers.retain(|(h, _)| h != k);
            headers.push((k, v));
        }
        let mut req = s.http.post(&url);
        for (k, v) in headers.into_iter().filter(|(_, v)| !v.is_empty()) {
            req = req.header(k, v);
        }
        req
    };
    for (req, needle) in [
        (with(&[("ce-id", "")]), "ce-id"),
        (with(&[("ce-source", "")]), "ce-source"),
        (with(&[("ce-type", "")]), "ce-type"),
        (with(&[("ce-specversion", "")]), "ce-specversion"),
        (with(&[("ce-specversion", "0.3")]), "0.3"),
        (with(&[("ce-subject", "50%off")]), "percent"),
        (
            with(&[("ce-datacontenttype", "text/plain")]),
            "ce-datacontenttype",
        ),
        (
            s.http
                .post(&url)
                .header("content-type", "application/cloudevents+json")
                .body(r#"{"specversion":"1.0","id":"1","source":"/s"}"#),
            "type",
        ),
    ] {
        let r = req.send().await.unwrap();
        let body = assert_error(r, 400, "bad_request").await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    // A payload over 256 KiB, a batch over its count.
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(300 * 1024));
    let r = with(&[("content-type", "application/json")])
        .body(big)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "too_large").await;
    let one = r#"{"specversion":"1.0","id":"b","source":"/s","type":"t"}"#;
    let batch = format!("[{}]", vec![one; 101].join(","));
    let r = s
        .http
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "too_large").await;
    // A batch within limits is accepted in one commit.
    let batch = format!("[{one},{}]", one.replace("\"b\"", "\"c\""));
    let r = s
        .http
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    // An unknown queue.
    let r = s
        .http
        .post(format!("{}/v1/queues/production/nosuch/events", s.api))
        .header("content-type", "application/cloudevents+json")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    // A token for staging cannot publish to production.
    let tok = s.seal_json(&["token", "create", "--role", "deployer", "--env", "staging"]);
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(tok["token"].as_str().unwrap())
        .header("content-type", "application/cloudevents+json")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    // A publisher token enqueues on its queue only, and reads nothing.
    s.seal_json(&["queue", "create", "refunds"]);
    let publisher = s.seal_json(&[
        "token",
        "create",
        "--role",
        "publisher",
        "--queue",
        "orders",
    ]);
    let publisher = publisher["token"].as_str().unwrap().to_owned();
    let post = |queue: &str| {
        reqwest::Client::new()
            .post(format!("{}/v1/queues/production/{queue}/events", s.api))
            .bearer_auth(&publisher)
            .header("content-type", "application/cloudevents+json")
            .body(one.replace("\"b\"", "\"p1\""))
    };
    assert_eq!(post("orders").send().await.unwrap().status(), 202);
    let body = assert_error(post("refunds").send().await.unwrap(), 403, "forbidden").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only to orders"),
        "{body}"
    );
    let r = reqwest::Client::new()
        .get(format!("{}/v1/queues", s.api))
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
    s.seal(&["token", "create", "--role", "publisher"])
        .assert_fails_with("names the queues");
    s.seal(&["token", "create", "--role", "viewer", "--queue", "orders"])
        .assert_fails_with("only a publisher");
    // A viewer cannot enqueue.
    let viewer = s.seal_json(&["token", "create", "--role", "viewer"]);
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(viewer["token"].as_str().unwrap())
        .header("content-type", "application/cloudevents+json")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;

    // Bindings: an invalid schedule or zone, a function with no route, an
    // unknown queue.
    s.seal(&[
        "trigger",
        "create",
        "cron",
        "--function",
        "billing",
        "--schedule",
        "61 * * * *",
    ])
    .assert_fails_with("invalid cron expression");
    s.seal(&[
        "trigger",
        "create",
        "cron",
        "--function",
        "billing",
        "--schedule",
        "* * *",
    ])
    .assert_fails_with("5 fields");
    s.seal(&[
        "trigger",
        "create",
        "cron",
        "--function",
        "billing",
        "--schedule",
        "* * * * *",
        "--timezone",
        "Mars/Olympus",
    ])
    .assert_fails_with("unknown time zone");
    assert_eq!(publish_file(&s, &guest("echo"), "idle", &[]).0, 1);
    s.seal(&[
        "trigger",
        "create",
        "queue",
        "--function",
        "idle",
        "--queue",
        "orders",
    ])
    .assert_fails_with("no version serving");
    s.seal(&[
        "trigger",
        "create",
        "queue",
        "--function",
        "billing",
        "--queue",
        "nosuch",
    ])
    .assert_fails_with("no queue nosuch");
    let (status, _) = s.api_post("/v1/queues", json!({"name": "Bad_Name"})).await;
    assert_eq!(status, 400);
    // A queue read by a trigger is not deleted.
    subscribe(&s, "billing", "orders", &[]);
    s.seal(&["queue", "delete", "orders"])
        .assert_fails_with("delete them first");
    // Nothing above stopped the server.
    assert_eq!(s.api_health().await, 200);
}

/// A guest that traps on every event dead-letters after its attempts while
/// another subscription on the same queue keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_consumer_dead_letters_and_others_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    assert_eq!(publish_file(&s, &guest("trap"), "broken", &[]).0, 1);
    s.seal_json(&["deploy", "broken", "1"]);
    subscribe(
        &s,
        "broken",
        "orders",
        &["--max-attempts", "2", "--backoff", "10ms..20ms"],
    );
    subscribe(&s, "billing", "orders", &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, v) = send_binary(&s, "orders", &format!("e{i}"), None).await;
        assert_eq!(status, 202);
        ids.push(v["events"][0]["id"].as_u64().unwrap());
    }
    for id in ids {
        let e = settled(&s, id, Duration::from_secs(30)).await;
        for d in e["deliveries"].as_array().unwrap() {
            match d["trigger"].as_str().unwrap() {
                "broken-orders" => {
                    assert_eq!(d["state"], "dead", "{e:#}");
                    assert_eq!(d["history"][0]["error_kind"], "trap");
                    assert_eq!(d["history"].as_array().unwrap().len(), 2);
                }
                _ => assert_eq!(d["state"], "done", "{e:#}"),
            }
        }
    }
    assert_eq!(s.seal_json(&["dlq", "list"]).as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_on_time_and_once_per_tick_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    let t = s.seal_json(&[
        "trigger",
        "create",
        "cron",
        "--function",
        "billing",
        "--schedule",
        "* * * * * *",
        "--timezone",
        "Europe/Paris",
    ]);
    assert_eq!(t["name"], "billing-cron");
    assert_eq!(t["timezone"], "Europe/Paris");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let runs = s.seal_json(&["trigger", "runs", "billing-cron"]);
    let runs = runs.as_array().unwrap().clone();
    let ok: Vec<&Value> = runs.iter().filter(|r| r["status"] == "ok").collect();
    assert!(ok.len() >= 2, "{runs:#?}");
    for r in &ok {
        let at = r["scheduled_at"].as_i64().unwrap();
        assert_eq!(at % 1000, 0, "ticks fall on the second: {r}");
        let delay = r["fired_at"].as_i64().unwrap() - at;
        assert!(
            (0..1000).contains(&delay),
            "fired {delay} ms after its tick: {r}"
        );
        assert_eq!(r["version"], 1);
        assert_eq!(r["http_status"], 200);
    }
    // The tick is a CloudEvent whose time is the scheduled instant.
    let logs = s.seal(&["logs", "billing", "-o", "json"]).stdout;
    assert!(logs.contains("type=dev.seal.cron.tick"), "{logs}");
    let dir_path = s.data_dir.clone();
    s.stop();
    // Down for a few ticks: with on_missed = skip they are recorded as
    // missed (one record), not run; no tick runs twice.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let s = Server::start(&dir_path);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let runs = s.seal_json(&["trigger", "runs", "billing-cron", "--limit", "100"]);
    let runs = runs.as_array().unwrap();
    let mut ticks: Vec<i64> = runs
        .iter()
        .map(|r| r["scheduled_at"].as_i64().unwrap())
        .collect();
    let n = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "a tick recorded twice: {runs:#?}");
    assert!(
        runs.iter().any(|r| r["status"] == "missed"),
        "the downtime's ticks are recorded as missed: {runs:#?}"
    );
    let after_restart = runs
        .iter()
        .filter(|r| {
            r["status"] == "ok"
                && r["scheduled_at"].as_i64().unwrap()
                    > ok[0]["scheduled_at"].as_i64().unwrap() + 2_500
        })
        .count();
    assert!(
        after_restart >= 1,
        "ticks resume after the restart: {runs:#?}"
    );
}

/// A canary whose version fails events is rolled back by its gates on
/// event traffic alone; pending retries then go to the baseline and every
/// event is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_events_is_rolled_back_by_its_event_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    assert_eq!(publish_file(&s, &guest("fail"), "billing", &[]).0, 2);
    subscribe(
        &s,
        "billing",
        "orders",
        &["--max-attempts", "10", "--backoff", "50ms..200ms"],
    );
    let (status, v) = s.api_post("/v1/functions/billing/deploy",
        json!({"version": 2, "rollout": {"strategy": "canary", "steps": [50], "interval_ms": 60000,
               "gates": {"max_error_rate": 0.05, "min_requests": 20}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let deployment = v["deployment"]["id"].as_u64().unwrap();
    // No HTTP traffic at all: only events.
    let mut ids = Vec::new();
    let started = Instant::now();
    let mut state = String::new();
    for i in 0..400 {
        let (status, v) = send_binary(&s, "orders", &format!("o{i}"), None).await;
        assert_eq!(status, 202);
        ids.push(v["events"][0]["id"].as_u64().unwrap());
        if i % 20 == 19 {
            let d = s.api_get(&format!("/v1/deployments/{deployment}")).await;
            state = d["deployment"]["state"].as_str().unwrap().to_owned();
            if state != "progressing" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = s.api_get(&format!("/v1/deployments/{deployment}")).await;
    assert_eq!(
        d["deployment"]["state"],
        "rolled_back",
        "after {:?}: {d:#}",
        started.elapsed()
    );
    assert!(state == "rolled_back" || state == "progressing");
    let gate = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "gate")
        .unwrap()
        .clone();
    assert_eq!(gate["detail"]["verdict"], "fail", "{gate:#}");
    // Every event is handled in the end, the last attempt on the baseline;
    // an event's attempts before the rollback all went to one version.
    let mut on_candidate = 0;
    for id in ids {
        let e = settled(&s, id, Duration::from_secs(30)).await;
        let d = &e["deliveries"][0];
        assert_eq!(d["state"], "done", "{e:#}");
        let history = d["history"].as_array().unwrap();
        assert_eq!(history.last().unwrap()["version"], 1, "{e:#}");
        let failed: Vec<&Value> = history.iter().filter(|a| a["status"] == 500).collect();
        if !failed.is_empty() {
            on_candidate += 1;
            assert!(failed.iter().all(|a| a["version"] == 2), "{e:#}");
        }
    }
    assert!(on_candidate > 0, "the canary got no events");
}

/// 1,000 events, the server killed (`kill -9`) three times while it
/// delivers them: after the last restart every event is handled, none is
/// lost; events handled more than once (an attempt cut off by a kill runs
/// again) are counted and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_when_the_server_is_killed_during_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path());
    billing(&s);
    subscribe(&s, "billing", "orders", &["--max-in-flight", "16"]);
    let url = format!("{}/v1/queues/production/orders/events", s.api);
    let mut ids = Vec::new();
    for batch in 0..10 {
        let events: Vec<Value> = (0..100)
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("k{}", batch * 100 + i),
                       "source": "/shop", "type": "order.created", "subject": "sleep-15"})
            })
            .collect();
        let r = s
            .http
            .post(&url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        ids.extend(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_u64().unwrap()),
        );
    }
    assert_eq!(ids.len(), 1000);
    let mut logs = String::new();
    for round in 0..3 {
        // Let some deliveries run, then kill the server mid-flight.
        tokio::time::sleep(Duration::from_millis(250 + 100 * round)).await;
        logs.push_str(&s.log());
        let data = s.data_dir.clone();
        s.stop();
        s = Server::start(&data);
    }
    let mut handled_once = 0;
    for id in &ids {
        let e = settled(&s, *id, Duration::from_secs(60)).await;
        let d = &e["deliveries"][0];
        assert_eq!(d["state"], "done", "{e:#}");
        handled_once += 1;
    }
    logs.push_str(&s.log());
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for line in logs.lines() {
        if let Some(rest) = line.split("event: ").nth(1)
            && let Some(id) = rest.split_whitespace().next()
        {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "1000 events, 3 kills: {handled_once} handled, {} seen by the guest, {duplicates} handled more than once",
        seen.len()
    );
    assert_eq!(handled_once, 1000);
    assert_eq!(seen.len(), 1000, "every event reached the guest");
    // At least once, and the redeliveries are the kills' in-flight ones.
    // A slot goes on to a delivery claimed ahead before the outcome of
    // the one it ran is committed, so a kill can catch, per slot of the
    // 16: the attempt running, the one before it whose outcome waits for
    // the next commit, and one in the commit under way. Three kills.
    assert!(duplicates <= 3 * 3 * 16, "{duplicates} duplicates");
}

/// Enqueues claim what they add for free slots, beside the delivery
/// loop's own claims, on the same slots: with many producers at once and
/// two slots, every event is handled in seconds (a claim left without a
/// slot would wait out its lease, a minute), never more than two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_the_delivery_loop_share_the_slots_and_strand_no_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    subscribe(&s, "billing", "orders", &["--max-in-flight", "2"]);
    let mut producers = tokio::task::JoinSet::new();
    let s = std::sync::Arc::new(s);
    for p in 0..8 {
        let s = s.clone();
        producers.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let r = post_event(
                    &s,
                    "orders",
                    &format!("slot-{p}-{i}"),
                    "{}",
                    &[("ce-subject", "sleep-5")],
                )
                .await;
                assert_eq!(r.status(), 202);
                let v: Value = r.json().await.unwrap();
                ids.push(v["events"][0]["id"].as_u64().unwrap());
            }
            ids
        });
    }
    let ids: Vec<u64> = producers.join_all().await.into_iter().flatten().collect();
    assert_eq!(ids.len(), 80);
    for id in &ids {
        let e = settled(&s, *id, Duration::from_secs(20)).await;
        assert_eq!(e["deliveries"][0]["state"], "done", "{e:#}");
    }
    // Each handler logs its start and then sleeps 5 ms: with two slots,
    // a third start waits for one of the two before it to end, so any
    // three starts span at least 5 ms.
    let mut starts: Vec<u128> = s
        .log()
        .lines()
        .filter(|l| l.contains("event: slot-"))
        .filter_map(|l| {
            l.split(" at=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    starts.sort_unstable();
    assert!(starts.len() >= 80, "{} starts logged", starts.len());
    for w in starts.windows(3) {
        assert!(
            w[2] - w[0] >= 4_500_000,
            "three handlers at once with max in flight 2: starts {w:?}"
        );
    }
}

/// Pre-traffic hooks may send recorded CloudEvents to the candidate (in
/// binary mode, through the gateway with the preview token): a candidate
/// that fails one is rolled back before any traffic; one that handles
/// them all goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hooks_test_the_candidate_before_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    // The same component under another manifest: a new artifact.
    assert_eq!(
        publish_file(&s, &guest("events"), "billing", &["--timeout", "10s"]).0,
        2
    );
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let batch = |last_subject: &str| {
        json!({"events": [
            {"specversion": "1.0", "id": "hook-ok", "source": "/recorded", "type": "order.created",
             "subject": "caf\u{e9} 100%", "data": {"total": 1}},
            {"specversion": "1.0", "id": "hook-last", "source": "/recorded", "type": "order.created",
             "subject": last_subject}
        ]})
    };
    std::fs::write(hooks.join("orders.json"), batch("status-500").to_string()).unwrap();
    let canary = [
        "deploy",
        "billing",
        "2",
        "--strategy",
        "canary",
        "--steps",
        "50",
        "--interval",
        "1s",
        "--hooks",
    ];
    let mut args = canary.to_vec();
    let hooks_arg = hooks.display().to_string();
    args.push(&hooks_arg);
    args.push("--wait");
    let out = s.seal(&args);
    let text = format!("{}{}", out.stdout, out.stderr);
    // The first event passed, the second failed the candidate before it
    // got any traffic.
    assert!(text.contains("orders-0 (pre-traffic): passed"), "{text}");
    assert!(
        text.contains("orders-1 (pre-traffic): FAILED")
            && text.contains("expected a success (2xx)"),
        "{text}"
    );
    assert!(text.contains("now 1=100%"), "{text}");
    // The candidate got the events in binary mode, attributes
    // percent-encoded as the binding says.
    let logs = s
        .seal(&["logs", "billing", "--version", "2", "-o", "json"])
        .stdout;
    assert!(logs.contains("event: hook-ok type=order.created"), "{logs}");
    assert!(
        logs.contains("subject=caf%C3%A9%20100%25"),
        "the guest sees the header as sent: {logs}"
    );

    // The same events all handled: the canary goes on to success.
    std::fs::write(hooks.join("orders.json"), batch("fine").to_string()).unwrap();
    let out = s.seal(&args);
    assert!(
        out.stdout.contains("succeeded") || out.stderr.contains("succeeded"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

/// Producers that reach the gateway but not the API post events there
/// with a publisher token: the same checks, the same durable commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_post_events_to_the_gateway_with_a_publisher_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    subscribe(&s, "billing", "orders", &[]);
    let token = s.seal_json(&[
        "token",
        "create",
        "--role",
        "publisher",
        "--queue",
        "orders",
    ]);
    let token = token["token"].as_str().unwrap().to_owned();
    let plain = reqwest::Client::new();
    let post = |queue: &str, auth: Option<&str>| {
        let mut r = plain
            .post(format!(
                "{}/_seal/queues/production/{queue}/events",
                s.gateway
            ))
            .header("ce-specversion", "1.0")
            .header("ce-id", "gw-1")
            .header("ce-source", "/partner")
            .header("ce-type", "order.created")
            .header("content-type", "application/json")
            .body(r#"{"total": 9}"#);
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        r
    };
    let r = post("orders", Some(&token)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let id = v["events"][0]["id"].as_u64().unwrap();
    let e = settled(&s, id, Duration::from_secs(20)).await;
    assert_eq!(e["deliveries"][0]["state"], "done", "{e:#}");
    assert_eq!(e["source"], "/partner");
    assert_error(
        post("orders", None).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        post("refunds", Some(&token)).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let r = plain
        .post(format!(
            "{}/_seal/queues/production/orders/events",
            s.gateway
        ))
        .bearer_auth(&token)
        .header("ce-specversion", "1.0")
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    let r = plain
        .get(format!("{}/_seal/queues/production/orders", s.gateway))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    // Functions are still served beside it.
    assert_eq!(s.get("/billing/").await.status(), 200);
}

/// A project directory for the events guest: `seal.toml` with the given
/// extra TOML and schema files, the component packed as built.
fn project(root: &std::path::Path, name: &str, toml: &str, schemas: &[(&str, &str)]) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in schemas {
        std::fs::write(dir.join(file), text).unwrap();
    }
    std::fs::write(
        dir.join("seal.toml"),
        format!(
            "name = \"{name}\"\n[build]\ncomponent = {:?}\n{toml}",
            guest("events").to_str().unwrap()
        ),
    )
    .unwrap();
    dir.to_str().unwrap().to_owned()
}

const ORDER_V1: &str =
    r#"{"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}"#;
const ORDER_V2: &str = r#"{"type": "object", "properties": {"total": {"type": "integer"}, "currency": {"type": "string"}}, "required": ["total", "currency"]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_contracts_refuse_bad_schemas_bad_events_and_breaking_deploys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let consumes = "[events.consumes.\"order.created\"]\nschema = \"order.json\"\n";

    // A schema that is not valid JSON Schema, or not JSON, or missing, is
    // refused at publish with what is wrong; nothing is published.
    let bad = project(
        dir.path(),
        "bad",
        consumes,
        &[("order.json", r#"{"type": 12}"#)],
    );
    s.seal(&["publish", &bad, "--no-build"])
        .assert_fails_with("order.created");
    std::fs::write(format!("{bad}/order.json"), "{not json").unwrap();
    s.seal(&["publish", &bad, "--no-build"])
        .assert_fails_with("order.json");
    std::fs::remove_file(format!("{bad}/order.json")).unwrap();
    s.seal(&["publish", &bad, "--no-build"])
        .assert_fails_with("order.json");
    assert!(
        !s.seal(&["versions", "bad"]).ok
            || s.seal_json(&["versions", "bad"])
                .as_array()
                .is_none_or(Vec::is_empty)
    );

    // v1 consumes order.created with a schema, packed in the artifact.
    let billing = project(dir.path(), "billing", consumes, &[("order.json", ORDER_V1)]);
    let v1 = s.seal_json(&["publish", &billing, "--no-build"]);
    assert_eq!(v1["version"], 1, "{v1}");
    s.seal_json(&["deploy", "billing", "1"]);
    s.seal_json(&["queue", "create", "orders"]);
    subscribe(&s, "billing", "orders", &[]);

    // An event that keeps the contract is delivered; one that breaks it is
    // dead-lettered with reason `schema` and never reaches the function.
    let (status, ok) = send_binary(&s, "orders", "fits-1", None).await;
    assert_eq!(status, 202, "{ok}");
    let ok = settled(
        &s,
        ok["events"][0]["id"].as_u64().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(ok["deliveries"][0]["state"], "done", "{ok:#}");
    let r = post_event(&s, "orders", "breaks-1", r#"{"total": "twelve"}"#, &[]).await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let bad = settled(
        &s,
        v["events"][0]["id"].as_u64().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let d = &bad["deliveries"][0];
    assert_eq!(d["state"], "dead", "{bad:#}");
    assert_eq!(d["dead_reason"], "schema", "{bad:#}");
    assert!(
        d["last_error"].as_str().unwrap().contains("billing@1"),
        "{bad:#}"
    );
    assert_eq!(d["history"][0]["error_kind"], "schema", "{bad:#}");
    assert!(d["history"][0]["status"].is_null(), "{bad:#}");
    assert!(s.log().contains("event: fits-1"), "{}", s.log());
    assert!(!s.log().contains("event: breaks-1"), "{}", s.log());
    let dead = s.seal_json(&["dlq", "list", "--queue", "orders"]);
    assert_eq!(dead[0]["reason"], "schema", "{dead}");

    // v2 makes the consumed schema stricter: production refuses it and
    // says why, the refusal is audited, v1 keeps serving.
    std::fs::write(format!("{billing}/order.json"), ORDER_V2).unwrap();
    assert_eq!(
        s.seal_json(&["publish", &billing, "--no-build"])["version"],
        2
    );
    let out = s.seal(&["deploy", "billing", "2"]);
    out.assert_fails_with("--allow-breaking-contract");
    assert!(
        out.stderr
            .contains("! consumes order.created: schema stricter"),
        "{}",
        out.stderr
    );
    let status = s.seal_json(&["status", "billing"]);
    assert_eq!(status["routes"][0]["versions"][0]["version"], 1);
    assert_audited(&s, |e| {
        e["action"] == "breaking-contract"
            && e["outcome"] == "refused"
            && e["detail"]["contracts"]["breaking"] == true
    })
    .await;
    // A deployer cannot approve it; an admin can, and that is audited.
    let token = s.seal_json(&["token", "create", "--role", "deployer"]);
    let out = s.seal_env(
        &["deploy", "billing", "2", "--allow-breaking-contract"],
        &[("SEAL_TOKEN", token["token"].as_str().unwrap())],
    );
    out.assert_fails_with("admin");
    let d = s.seal_json(&["deploy", "billing", "2", "--allow-breaking-contract"]);
    assert_eq!(d["contracts"]["breaking"], true, "{d}");
    assert_eq!(d["contracts"]["from_version"], 1, "{d}");
    assert_audited(&s, |e| {
        e["action"] == "breaking-contract" && e["outcome"] == "approved"
    })
    .await;
    // Outside production the diff is shown and the deploy goes on.
    s.seal_json(&["env", "create", "staging"]);
    s.seal_json(&["deploy", "billing", "2", "-e", "staging"]);
    let d = s.seal_json(&["deploy", "billing", "1", "-e", "staging"]);
    assert_eq!(d["contracts"]["breaking"], false, "{d}");

    // Replay: production's dead letter and a saved batch, once each, to
    // billing@1 in staging; the outcome of each, a non-zero exit when one
    // failed, and the dead letter stays where it was.
    let batch = dir.path().join("batch.json");
    std::fs::write(
        &batch,
        r#"[{"specversion": "1.0", "id": "replay-1", "source": "/saved", "type": "order.created",
             "datacontenttype": "application/json", "data": {"total": 3}},
            {"specversion": "1.0", "id": "replay-2", "source": "/saved", "type": "order.created",
             "subject": "status-500", "datacontenttype": "application/json", "data": {"total": 4}}]"#,
    )
    .unwrap();
    let out = s.seal(&[
        "events",
        "replay",
        "billing",
        "--to",
        "1",
        "-e",
        "staging",
        "--file",
        batch.to_str().unwrap(),
        "--output",
        "json",
    ]);
    out.assert_fails_with("1 of 2 events failed on billing@1 in staging");
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["succeeded"], 1, "{answer}");
    assert_eq!(answer["results"][0]["status"], 200, "{answer}");
    assert_eq!(answer["results"][1]["status"], 500, "{answer}");
    assert_eq!(answer["results"][1]["outcome"], "retryable", "{answer}");
    assert!(s.log().contains("event: replay-1"), "{}", s.log());
    let out = s.seal(&[
        "events", "replay", "billing", "--to", "1", "-e", "staging", "--dlq", "--output", "json",
    ]);
    out.assert_fails_with("failed");
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["results"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["results"][0]["ce_id"], "breaks-1", "{answer}");
    assert_eq!(answer["results"][0]["error_kind"], "schema", "{answer}");
    assert_eq!(
        s.seal_json(&["dlq", "list", "--queue", "orders"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Never in production, never to a version off the route, never both
    // sources at once.
    s.seal(&["events", "replay", "billing", "--to", "2", "--dlq"])
        .assert_fails_with("production is protected");
    s.seal(&[
        "events", "replay", "billing", "--to", "2", "-e", "staging", "--dlq",
    ])
    .assert_fails_with("not in the route");
    let (status, body) = s
        .api_post(
            "/v1/functions/billing/replay",
            json!({"environment": "staging", "version": 1, "dead_letters": {}, "events": [{}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .api_post(
            "/v1/functions/billing/replay",
            json!({"environment": "staging", "version": 1, "events": [{"id": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "malformed event: {body}");
    assert_audited(&s, |e| {
        e["action"] == "events-replay" && e["object"] == "staging/billing"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_chain_keeps_one_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // shop publishes to orders (a capability, approved like a host);
    // billing consumes orders and forwards to receipts; mail consumes
    // receipts.
    let shop = project(
        dir.path(),
        "shop",
        "[capabilities]\nqueues = [\"orders\", \"audit\"]\n[events.produces.\"order.created\"]\nschema = \"order.json\"\n",
        &[("order.json", ORDER_V1)],
    );
    s.seal_json(&["publish", &shop, "--no-build"]);
    let out = s.seal(&["deploy", "shop", "1"]);
    out.assert_fails_with("queue orders");
    s.seal_json(&["deploy", "shop", "1", "--allow-new-permissions"]);
    let billing = project(
        dir.path(),
        "billing",
        "[capabilities]\nqueues = [\"receipts\"]\n",
        &[],
    );
    s.seal_json(&["publish", &billing, "--no-build"]);
    s.seal_json(&["deploy", "billing", "1", "--allow-new-permissions"]);
    assert_eq!(publish_file(&s, &guest("events"), "mail", &[]).0, 1);
    s.seal_json(&["deploy", "mail", "1"]);
    for (queue, function) in [("orders", "billing"), ("receipts", "mail")] {
        s.seal_json(&["queue", "create", queue]);
        subscribe(&s, function, queue, &[]);
    }

    // One HTTP request to shop: its event reaches billing, whose event
    // reaches mail, all under the caller's request id.
    let r = emit(
        &s,
        "/emit/orders?type=order.created&id=o-1&subject=emit-receipts",
        r#"{"total": 5}"#,
        "journey-7",
    )
    .await;
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    let id = answer["events"][0]["id"].as_u64().unwrap();
    let start = Instant::now();
    while !s.log().lines().any(|l| {
        l.contains("event: fwd-o-1 type=order.forwarded") && l.contains("request=journey-7")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "mail never got it: {}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = settled(&s, id, Duration::from_secs(20)).await;
    assert_eq!(e["deliveries"][0]["state"], "done", "{e:#}");
    // Stamped by the platform: who published it, under which id.
    assert_eq!(e["event"]["sealversion"], "shop@1", "{e:#}");
    assert_eq!(e["event"]["sealcorrelation"], "journey-7", "{e:#}");
    assert!(
        e["event"]["sealdigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{e:#}"
    );
    assert!(s.log().contains("event: o-1 type=order.created"));
    assert!(s.log().contains("request=journey-7"));

    // `seal logs --correlation` follows the journey through all three.
    let lines = s.seal(&["logs", "--correlation", "journey-7", "--output", "json"]);
    assert!(lines.ok, "{}", lines.stderr);
    let functions: std::collections::BTreeSet<String> = lines
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .inspect(|v| assert_eq!(v["request_id"], "journey-7", "{v}"))
        .map(|v| v["function"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        functions,
        ["billing", "mail", "shop"].map(str::to_owned).into(),
        "{}",
        lines.stdout
    );
    let r = s
        .http
        .get(format!("{}/v1/logs", s.api))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;

    // A queue the manifest does not list: denied inside the guest, as an
    // unlisted host is; nothing is enqueued.
    s.seal_json(&["queue", "create", "refunds"]);
    let r = emit(&s, "/emit/refunds?id=r-1", r#"{"total": 5}"#, "j-2").await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HttpRequestDenied"));
    // An event that breaks the produced contract is refused to the
    // function with the reason; a listed queue that does not exist is a
    // 404; nothing is enqueued by either.
    let r = emit(
        &s,
        "/emit/orders?type=order.created&id=o-2",
        r#"{"total": "x"}"#,
        "j-3",
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop@1"),
        "{body}"
    );
    let r = emit(&s, "/emit/orders?id=o-3", "not json at all", "j-4").await;
    assert_eq!(r.status(), 400, "malformed data for a declared type");
    let r = emit(
        &s,
        "/emit/audit?type=order.created&id=o-4",
        r#"{"total": 1}"#,
        "j-5",
    )
    .await;
    assert_eq!(r.status(), 404);
    // Only o-1 and billing's forward of it were ever enqueued.
    let r = s
        .http
        .get(format!("{}/v1/events/{}", s.api, id + 2))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    // A producer outside Seal cannot pass for a function.
    let r = post_event(
        &s,
        "orders",
        "forged-1",
        r#"{"total": 1}"#,
        &[
            ("ce-sealversion", "shop@1"),
            ("ce-sealcorrelation", "journey-7"),
        ],
    )
    .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    let e = s
        .api_get(&format!("/v1/events/{}", v["events"][0]["id"]))
        .await;
    assert!(e["event"].get("sealversion").is_none(), "{e:#}");
    assert!(e["event"].get("sealcorrelation").is_none(), "{e:#}");
    // The gateway kept serving throughout.
    assert_eq!(s.get("/mail/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_lets_its_queue_back_up_is_rolled_back_by_the_queue_gate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    billing(&s);
    assert_eq!(
        publish_file(&s, &guest("events"), "billing", &["--memory", "96MiB"]).0,
        2
    );
    subscribe(&s, "billing", "orders", &["--max-in-flight", "1"]);
    // One event at a time, each taking 700 ms: the queue backs up.
    let out = s.seal(
        &"deploy billing 2 --strategy canary --steps 50 --interval 60s --max-queue-age 1s --output json"
            .split(' ')
            .collect::<Vec<_>>(),
    );
    assert!(out.ok, "{}", out.stderr);
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    let deployment = d["deployment"]["id"].as_u64().unwrap();
    for i in 0..6 {
        let (status, _) = send_binary(&s, "orders", &format!("slow-{i}"), Some("sleep-700")).await;
        assert_eq!(status, 202);
    }
    let started = Instant::now();
    let d = loop {
        let d = s.api_get(&format!("/v1/deployments/{deployment}")).await;
        if d["deployment"]["state"] != "progressing" {
            break d;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still progressing: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(d["deployment"]["state"], "rolled_back", "{d:#}");
    let gate = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "gate")
        .unwrap()
        .clone();
    let failed = gate["detail"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["verdict"] == "fail")
        .unwrap()
        .clone();
    assert_eq!(failed["gate"], "queue_age", "{gate:#}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("billing-orders"),
        "{failed:#}"
    );
    let status = s.seal_json(&["status", "billing"]);
    assert_eq!(status["routes"][0]["versions"][0]["version"], 1, "{status}");
}

/// NATS stops: an ingest answers 503 `queues_unavailable` and accepts
/// nothing; when NATS is back everything resumes with no restart, the
/// producer's retry is accepted once, and every event acknowledged before
/// the outage is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_away_ingest_says_so_and_nothing_acknowledged_is_lost() {
    let Some(nats) = NatsNamespace::create("outage") else {
        return;
    };
    let proxy = Cuttable::to(nats.server_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &["--events", &nats.url_via(&proxy.addr.to_string())],
    );
    billing(&s);
    subscribe(&s, "billing", "orders", &["--max-in-flight", "1"]);
    // Acknowledged, then handled one at a time, 200 ms each: most still
    // wait in JetStream when it goes away.
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = post_event(
            &s,
            "orders",
            &format!("before-{i}"),
            "{}",
            &[("ce-subject", "sleep-200")],
        )
        .await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        ids.push(v["events"][0]["id"].as_u64().unwrap());
    }

    proxy.down();
    let r = post_event(&s, "orders", "during", "{}", &[]).await;
    let body = assert_error(r, 503, "queues_unavailable").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("NATS") && message.contains("nothing was accepted"),
        "{body}"
    );
    assert_eq!(s.api_health().await, 200, "the server keeps running");

    // Back: the producer's retry is accepted, with no restart.
    proxy.restore();
    let start = Instant::now();
    let during = loop {
        let r = post_event(&s, "orders", "during", "{}", &[]).await;
        if r.status() == 202 {
            let v: Value = r.json().await.unwrap();
            break v["events"][0]["id"].as_u64().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ingest did not come back: {}\n{}",
            r.status(),
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ids.push(during);
    for id in ids {
        // An attempt whose acknowledgement the outage cut off runs again
        // after its ack wait (the timeout, 30 s, and 30 s more).
        let e = settled(&s, id, Duration::from_secs(120)).await;
        assert_eq!(e["deliveries"][0]["state"], "done", "{e:#}");
    }
    let again = post_event(&s, "orders", "during", "{}", &[]).await;
    let v: Value = again.json().await.unwrap();
    assert_eq!(v["events"][0]["duplicate"], true, "accepted once: {v}");
    assert_eq!(v["events"][0]["id"], during);
}
