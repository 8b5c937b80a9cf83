//! Scale-out, end to end: the real `seal server` on PostgreSQL
//! (`--state postgres://…`), each test on a schema of its own in the test
//! database (`SEAL_TEST_POSTGRES`, default
//! postgres://postgres@127.0.0.1:5432/test). Without a reachable server
//! the tests are skipped with the reason printed; with
//! `SEAL_REQUIRE_POSTGRES` set (CI) that is a failure.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use std::process::Command;
use support::*;

fn postgres_url() -> String {
    std::env::var("SEAL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs one SQL statement with `psql`.
fn psql(sql: &str) -> Result<(), String> {
    match Command::new("psql")
        .arg(postgres_url())
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("cannot run psql: {e}")),
    }
}

/// A schema of its own, dropped with the guard.
struct Schema(String);

impl Schema {
    /// `None` when PostgreSQL is not reachable (skipped, reason printed).
    fn create(test: &str) -> Option<Self> {
        let name = format!("seal_e2e_{test}_{}", std::process::id());
        match psql(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        )) {
            Ok(()) => Some(Self(name)),
            Err(e) if std::env::var_os("SEAL_REQUIRE_POSTGRES").is_some() => {
                panic!("SEAL_REQUIRE_POSTGRES is set and PostgreSQL is unusable: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no PostgreSQL at {} ({e})", postgres_url());
                None
            }
        }
    }

    /// The URL a server is given: the test database, this schema first.
    fn url(&self) -> String {
        let sep = if postgres_url().contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            postgres_url(),
            self.0
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_deploys_serves_and_restarts_and_a_second_node_shares_its_state() {
    let Some(schema) = Schema::create("share") else {
        return;
    };
    let url = schema.url();
    let echo = guest("echo");
    let dir_a = tempfile::tempdir().unwrap();
    let a = Server::start_with(dir_a.path(), &["--state", &url]);
    let (v, digest) = publish_file(&a, &echo, "echo", &[]);
    assert_eq!(v, 1);
    a.seal_json(&["deploy", "echo", "1"]);
    let r = a.get("/echo/one").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "seal-digest"), digest);
    // Nothing of the state is in the data dir.
    assert!(!dir_a.path().join("state.db").exists());
    a.stop();

    // Restarted on the same database, it serves the same route.
    let a = Server::start_with(dir_a.path(), &["--state", &url]);
    let r = a.get("/echo/after-restart").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "seal-digest"), digest);

    // A second node with a data dir of its own, the same database, the
    // same master key and the admin token the first one wrote: it sees
    // the version, the route and one audit chain.
    let dir_b = tempfile::tempdir().unwrap();
    share_keys(dir_a.path(), dir_b.path());
    let b = Server::start_with(dir_b.path(), &["--state", &url]);
    let versions = b.seal_json(&["versions", "echo"]);
    assert_eq!(
        versions["versions"][0]["digest"],
        digest.as_str(),
        "{versions}"
    );
    let status: Value = b.seal_json(&["status", "echo"]);
    assert!(status.to_string().contains(&digest), "{status}");
    b.seal_json(&["env", "create", "qa"]);
    let envs = a.seal_json(&["env", "list"]);
    assert!(envs.to_string().contains("\"qa\""), "{envs}");
    let verify_a = a.seal_json(&["audit", "verify"]);
    let verify_b = b.seal_json(&["audit", "verify"]);
    assert_eq!(verify_a["ok"], true, "{verify_a}");
    assert_eq!(verify_a["head"], verify_b["head"]);
    let log = b.seal_json(&["audit"]);
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for want in ["publish", "deploy", "environment.create"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
}

#[test]
fn an_unsupported_state_url_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Server::command(dir.path())
        .args(["--state", "mysql://root@localhost/seal"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported state store \"mysql\"") && err.contains("postgres://"),
        "{err}"
    );
}

#[test]
fn a_bad_events_url_is_refused_with_the_form_it_takes() {
    for (url, says) in [
        ("amqp://localhost:5672", "not a NATS URL"),
        ("nats://localhost:4222/Team.A", "invalid NATS namespace"),
        ("nats:///seal", "names no NATS server"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Server::command(dir.path())
            .args(["--events", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{url}: {err}");
    }
}

#[test]
fn an_unreachable_database_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Server::command(dir.path())
        .args(["--state", "postgres://seal@127.0.0.1:1/seal"])
        .env("SEAL_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the state store (PostgreSQL)"),
        "{err}"
    );
}

/// Through `node`: config `GREETING=hi` and secret `API_KEY=s3cr3t` of
/// `svc` (the secret read from standard input, as the CLI takes it).
fn set_greeting_and_secret(node: &Server) {
    assert!(node.seal(&["config", "set", "svc", "GREETING=hi"]).ok);
    let mut secret = Command::new(seal_bin())
        .args(["secrets", "set", "svc", "API_KEY"])
        .env("SEAL_SERVER", &node.api)
        .env("SEAL_DATA_DIR", &node.data_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        secret.stdin.take().unwrap().write_all(b"s3cr3t\n").unwrap();
    }
    assert!(secret.wait().unwrap().success());
}

/// Waits (bounded) until `node` answers `/hello/` from `version`.
async fn until_serves(node: &Server, version: u64) -> std::time::Duration {
    until_serves_at(node, "/hello/", version).await
}

/// Waits (bounded) until `node` answers `path` from `version`.
async fn until_serves_at(node: &Server, path: &str, version: u64) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let r = node.get(path).await;
        if r.status() == 200 && header(&r, "seal-version") == version.to_string() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "node did not serve {path} from version {version} within 15 s (status {}, version {:?}); log:\n{}",
            r.status(),
            r.headers().get("seal-version"),
            node.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_through_one_node_reaches_the_other_nodes_gateway() {
    let Some(schema) = Schema::create("follow") else {
        return;
    };
    let url = schema.url();
    let dir_a = tempfile::tempdir().unwrap();
    let a = Server::start_with(dir_a.path(), &["--state", &url]);
    let dir_b = tempfile::tempdir().unwrap();
    share_keys(dir_a.path(), dir_b.path());
    let b = Server::start_with(dir_b.path(), &["--state", &url]);
    // Each node's artifact layout is its own until the registry store:
    // the same files published on both give the same versions.
    for node in [&a, &b] {
        let (v1, _) = publish_file(node, &example_component("hello"), "hello", &[]);
        let (v2, _) = publish_file(node, &example_component("hello_v2"), "hello", &[]);
        assert_eq!((v1, v2), (1, 2));
    }
    assert_eq!(b.get("/hello/").await.status(), 404, "nothing routed yet");

    a.seal_json(&["deploy", "hello", "1"]);
    let first = until_serves(&b, 1).await;
    a.seal_json(&["deploy", "hello", "2"]);
    let second = until_serves(&b, 2).await;
    // And back the other way: a rollback through B reaches A.
    b.seal_json(&["rollback", "hello"]);
    let third = until_serves(&a, 1).await;
    eprintln!("route change reached the other node in {first:?}, {second:?}, {third:?}");

    // Config and secrets set through A reach B's guest (both nodes hold
    // the same master key).
    for node in [&a, &b] {
        publish_file(
            node,
            &guest("echo"),
            "svc",
            &["--config-key", "GREETING", "--config-key", "API_KEY"],
        );
    }
    a.seal_json(&["deploy", "svc", "1"]);
    set_greeting_and_secret(&a);
    let start = std::time::Instant::now();
    loop {
        let r = b.get("/svc/").await;
        if r.status() == 200 {
            let env: Value = r.json().await.unwrap();
            if env["env"]["GREETING"] == "hi" && env["env"]["API_KEY"] == "s3cr3t" {
                break;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "B's guest never saw the settings"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // An environment created through A, and a deployment there, serve
    // through B (the host names the environment).
    a.seal_json(&["env", "create", "qa"]);
    a.seal_json(&["deploy", "hello", "2", "--env", "qa"]);
    let start = std::time::Instant::now();
    loop {
        let r = b.get_host("hello.qa.localhost", "/").await;
        if header(&r, "seal-version") == "2" {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "qa never served on B"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Cuttable {
    /// A proxy to the test database and the schema's URL through it.
    async fn before(schema: &Schema) -> (Self, String) {
        let url = schema.url();
        // The test database's host and port.
        let authority = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(|a| a.rsplit('@').next().unwrap().to_owned())
            .unwrap();
        let proxy = Self::to(authority.clone()).await;
        let via_proxy = url.replacen(&authority, &proxy.addr.to_string(), 1);
        (proxy, via_proxy)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_away_the_gateway_serves_and_the_api_says_state_unavailable() {
    let Some(schema) = Schema::create("outage") else {
        return;
    };
    let (proxy, via_proxy) = Cuttable::before(&schema).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--state", &via_proxy]);
    publish_file(&s, &example_component("hello"), "hello", &[]);
    publish_file(&s, &example_component("hello_v2"), "hello", &[]);
    s.seal_json(&["deploy", "hello", "1"]);
    assert_eq!(s.get("/hello/").await.status(), 200);

    proxy.down();
    for _ in 0..20 {
        let r = s.get("/hello/").await;
        assert_eq!(r.status(), 200, "the gateway serves its last route table");
        assert_eq!(header(&r, "seal-version"), "1");
    }
    let r = s
        .http
        .get(format!("{}/v1/functions/hello/versions", s.api))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 503, "state_unavailable").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("state store is unavailable")),
        "{body}"
    );
    let out = s.seal(&["deploy", "hello", "2"]);
    out.assert_fails_with("state store is unavailable");

    // Back: everything resumes, with no restart.
    proxy.restore();
    let start = std::time::Instant::now();
    loop {
        let out = s.seal(&["deploy", "hello", "2"]);
        if out.ok {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the API did not come back: {}\n{}",
            out.stderr,
            s.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = s.get("/hello/").await;
    assert_eq!(header(&r, "seal-version"), "2");
    let v = s.seal_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// Gives a node's data dir the admin token and master key of another (as
/// an operator hands them to every node of one database).
fn share_keys(from: &std::path::Path, to: &std::path::Path) {
    for f in ["admin.token", "master.key"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// Nodes sharing one schema: the first writes the admin token and master
/// key, the others copy them (as an operator hands them to every node).
struct Fleet {
    dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    fn new() -> Self {
        Self { dirs: Vec::new() }
    }

    fn start(&mut self, url: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        if let Some(first) = self.dirs.first() {
            share_keys(first.path(), dir.path());
        }
        let s = Server::start_with(dir.path(), &["--state", url]);
        self.dirs.push(dir);
        s
    }
}

/// Polls `seal cluster status` through `node` until `check` holds (or 15 s).
async fn until_cluster(node: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let v = node.api_get("/v1/cluster").await;
        if check(&v) {
            return v;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "{what} never held: {v:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn controller(v: &Value) -> Option<String> {
    v["controller"].as_str().map(str::to_owned)
}

fn node_named(v: &Value, api: &str) -> Option<String> {
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| api.ends_with(n["api"].as_str().unwrap_or("-")))
        .and_then(|n| n["name"].as_str().map(str::to_owned))
}

async fn deployment(node: &Server, id: u64) -> Value {
    node.api_get(&format!("/v1/deployments/{id}")).await
}

/// Polls a deployment through `node` until it has ended (or `limit`).
async fn until_finished(node: &Server, id: u64, limit: std::time::Duration) -> Value {
    until_deployment_within(node, id, "finished", limit, |d| {
        !["pending", "progressing", "paused"].contains(&d["state"].as_str().unwrap_or(""))
    })
    .await
}

/// A (the controller: started first, its lease confirmed) and B, with
/// `api@1` = echo and `api@2` = `candidate` published through both.
async fn controller_and_follower(
    fleet: &mut Fleet,
    url: &str,
    candidate: &std::path::Path,
) -> (Server, Server) {
    let a = fleet.start(url);
    until_cluster(&a, "a is the controller", |v| {
        controller(v).is_some() && controller(v) == node_named(v, &a.api)
    })
    .await;
    let b = fleet.start(url);
    for node in [&a, &b] {
        publish_file(node, &guest("echo"), "api", &[]);
        publish_file(node, candidate, "api", &[]);
    }
    (a, b)
}

/// Starts a progressive deployment of `api@2` through `node`.
async fn start_rollout(node: &Server, rollout: Value) -> u64 {
    let (status, v) = node
        .api_post(
            "/v1/functions/api/deploy",
            serde_json::json!({"version": 2, "rollout": rollout}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["deployment"]["id"].as_u64().unwrap()
}

/// Polls a deployment through `node` until `check` holds (or 15 s).
async fn until_deployment(node: &Server, id: u64, what: &str, check: impl Fn(&Value) -> bool) {
    until_deployment_within(node, id, what, std::time::Duration::from_secs(15), check).await;
}

/// Polls a deployment through `node` until `check` holds of it (or
/// `limit`); returns the deployment with its events.
async fn until_deployment_within(
    node: &Server,
    id: u64,
    what: &str,
    limit: std::time::Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    loop {
        let d = deployment(node, id).await;
        if check(&d["deployment"]) {
            return d;
        }
        assert!(
            start.elapsed() < limit,
            "deployment {id} never {what} within {limit:?}: {d:#}\n{}",
            node.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_have_one_controller_and_a_clean_stop_hands_it_over() {
    let Some(schema) = Schema::create("controller") else {
        return;
    };
    let url = schema.url();
    let mut fleet = Fleet::new();
    let a = fleet.start(&url);
    let b = fleet.start(&url);
    let c = fleet.start(&url);
    for node in [&a, &b, &c] {
        publish_file(node, &example_component("hello"), "hello", &[]);
    }
    a.seal_json(&["deploy", "hello", "1"]);
    until_serves(&c, 1).await;
    // Every node lists the three, one controller, and what each serves.
    let mut seen = None;
    for node in [&a, &b, &c] {
        let v = until_cluster(node, "three nodes, one serving hello@1 each", |v| {
            v["nodes"].as_array().is_some_and(|n| {
                n.len() == 3
                    && n.iter().all(|n| {
                        n["versions"].to_string().contains("\"function\":\"hello\"")
                            && n["heartbeat_age_ms"].as_i64().unwrap() < 5_000
                    })
            }) && controller(v).is_some()
        })
        .await;
        assert_eq!(v["shared"], true);
        let leaders: Vec<&Value> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["controller"] == true)
            .collect();
        assert_eq!(leaders.len(), 1, "{v:#}");
        assert_eq!(leaders[0]["name"].as_str(), controller(&v).as_deref());
        assert!(seen.is_none() || seen == controller(&v), "{v:#}");
        seen = controller(&v);
    }
    // A second process under a live node's name is refused by name.
    let a_node = node_named(&a.api_get("/v1/cluster").await, &a.api).unwrap();
    let twin = tempfile::tempdir().unwrap();
    share_keys(&a.data_dir, twin.path());
    let out = Server::command(twin.path())
        .args(["--state", &url, "--node", &a_node])
        .env("SEAL_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("node name {a_node} is in use")),
        "{err}"
    );
    // The first node started took the free lease.
    let first = until_cluster(&b, "a names itself", |v| node_named(v, &a.api).is_some()).await;
    assert_eq!(controller(&first), node_named(&first, &a.api), "{first:#}");
    let text = b.seal(&["cluster", "status"]);
    assert!(
        text.ok && text.stdout.contains("controller: "),
        "{}",
        text.stdout
    );
    let epoch = first["epoch"].as_i64().unwrap();

    // A clean stop gives the lease up: another node takes it at its next
    // heartbeat, not after the lease time.
    let stopped = std::time::Instant::now();
    let a_name = controller(&first).unwrap();
    let status = a.terminate();
    assert!(status.success());
    let after = until_cluster(&b, "another controller", |v| {
        controller(v).is_some_and(|c| c != a_name)
    })
    .await;
    let took = stopped.elapsed();
    assert!(after["epoch"].as_i64().unwrap() > epoch, "{after:#}");
    assert!(
        took < std::time::Duration::from_millis(3_500),
        "took {took:?}"
    );
    eprintln!("controller handed over in {took:?} after a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_on_traffic_that_only_another_node_saw() {
    let Some(schema) = Schema::create("fleetgate") else {
        return;
    };
    let url = schema.url();
    let mut fleet = Fleet::new();
    let (a, b) = controller_and_follower(&mut fleet, &url, &guest("fail")).await;
    let a_name = controller(&a.api_get("/v1/cluster").await).unwrap();
    b.seal_json(&["deploy", "api", "1"]);
    until_serves_at(&b, "/api/", 1).await;
    // Started through B; the controller (A) drives it. Its gates must see
    // B's traffic, the only traffic there is.
    let id = start_rollout(
        &b,
        serde_json::json!({"strategy": "canary", "steps": [50], "interval_ms": 4000,
            "gates": {"max_error_rate": 0.01, "min_requests": 20}}),
    )
    .await;
    let mut sent = 0;
    let start = std::time::Instant::now();
    let finished = loop {
        let d = deployment(&b, id).await;
        if d["deployment"]["state"] != "progressing" {
            break d;
        }
        for _ in 0..20 {
            b.get("/api/").await;
            sent += 1;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20) && sent < 4_000,
            "never rolled back after {sent} requests: {d:#}\n{}",
            a.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        finished["deployment"]["state"], "rolled_back",
        "{finished:#}"
    );
    let events = finished["events"].as_array().unwrap();
    let resumed = events.iter().find(|e| e["kind"] == "resumed").unwrap();
    assert_eq!(
        resumed["detail"]["controller"]["node"].as_str(),
        Some(a_name.as_str()),
        "A adopted the deployment B started: {events:#?}"
    );
    // The evaluation that failed says it summed both nodes' counters.
    let gate = events
        .iter()
        .rfind(|e| e["kind"] == "gate")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(gate["detail"]["verdict"], "fail", "{gate:#}");
    assert_eq!(gate["detail"]["nodes"], 2, "{gate:#}");
    let rolled = events.iter().find(|e| e["kind"] == "rolled_back").unwrap();
    assert_eq!(rolled["detail"]["gate"]["gate"], "error_rate", "{rolled:#}");
    // A's own gateway served none of it; B served it all.
    let total = |top: &Value| -> u64 {
        top["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["total_requests"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(&a.api_get("/v1/top").await), 0);
    assert!(total(&b.api_get("/v1/top").await) >= 20);
    until_serves_at(&a, "/api/", 1).await;
    until_serves_at(&b, "/api/", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_canary_is_replaced_and_the_canary_finishes() {
    let Some(schema) = Schema::create("failover") else {
        return;
    };
    let url = schema.url();
    let mut fleet = Fleet::new();
    let (a, b) = controller_and_follower(&mut fleet, &url, &example_component("hello_v2")).await;
    a.seal_json(&["deploy", "api", "1"]);
    let id = start_rollout(
        &a,
        serde_json::json!({"strategy": "canary", "steps": [20, 50], "interval_ms": 1500,
            "gates": {"min_requests": 0}}),
    )
    .await;
    until_deployment(&b, id, "reached step 1", |d| d["step"] == 1).await;
    let killed = std::time::Instant::now();
    a.stop(); // SIGKILL: the lease is not given up, it expires.
    let b_name = until_cluster(&b, "b names itself", |v| node_named(v, &b.api).is_some()).await;
    let b_name = node_named(&b_name, &b.api).unwrap();
    until_cluster(&b, "b takes over", |v| {
        controller(v).as_deref() == Some(&b_name)
    })
    .await;
    let took = killed.elapsed();
    eprintln!("controller replaced {took:?} after kill -9");
    assert!(took < std::time::Duration::from_secs(6), "took {took:?}");
    // B resumes from the committed step and finishes it; every answer
    // meanwhile came from a servable version.
    for _ in 0..50 {
        let r = b.get("/api/").await;
        assert_eq!(r.status(), 200);
    }
    let done = until_finished(&b, id, std::time::Duration::from_secs(20)).await;
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}");
    let events = done["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "resumed"
            && e["detail"]["controller"]["node"].as_str() == Some(b_name.as_str())),
        "{events:#?}"
    );
    assert_eq!(header(&b.get("/api/").await, "seal-version"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_abort_through_a_node_that_is_not_the_controller_reach_its_driver() {
    let Some(schema) = Schema::create("relay") else {
        return;
    };
    let url = schema.url();
    let mut fleet = Fleet::new();
    let (a, b) = controller_and_follower(&mut fleet, &url, &example_component("hello_v2")).await;
    let paused_canary = serde_json::json!({"strategy": "canary", "steps": [50], "interval_ms": 300,
        "approve_before_promote": true, "gates": {"min_requests": 0}});
    b.seal_json(&["deploy", "api", "1"]);
    let id = start_rollout(&b, paused_canary.clone()).await;
    until_deployment(&b, id, "paused", |d| d["state"] == "paused").await;
    // B's rollout status shows the controller's driver as it reports it.
    let start = std::time::Instant::now();
    loop {
        let st = b.api_get("/v1/functions/api/rollout").await;
        if st["step"]["index"] == 1 && st["step"]["phase"] == "waiting for approval" {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "B never showed the driver's step: {st:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Approved through B: A's driver carries it out, B answers with it.
    let out = b.seal(&["approve", &id.to_string()]);
    assert!(out.ok, "{}\n{}", out.stderr, a.log());
    let done = until_finished(&b, id, std::time::Duration::from_secs(15)).await;
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}");
    let approved = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "approved");
    assert!(approved, "{done:#}");
    // A finished deployment is refused by name on B itself.
    let again = b.seal(&["approve", &id.to_string()]);
    assert!(
        !again.ok && again.stderr.contains("finished"),
        "{}",
        again.stderr
    );

    // Aborted through B.
    b.seal_json(&["deploy", "api", "1"]);
    let id = start_rollout(&b, paused_canary).await;
    until_deployment(&b, id, "paused", |d| d["state"] == "paused").await;
    let out = b.seal(&["abort", &id.to_string()]);
    assert!(out.ok, "{}", out.stderr);
    let done = until_finished(&b, id, std::time::Duration::from_secs(15)).await;
    assert_eq!(done["deployment"]["state"], "aborted", "{done:#}");
    until_serves_at(&a, "/api/", 1).await;
}

/// `seal migrate` with the data dir of `data_dir`, not through a server.
fn migrate(data_dir: &std::path::Path, to: &[&str]) -> std::process::Output {
    Command::new(seal_bin())
        .arg("migrate")
        .args(to)
        .args(["--output", "json", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_migrate_moves_an_embedded_data_dir_into_postgres_intact() {
    let Some(schema) = Schema::create("migrate") else {
        return;
    };
    let Some(registry) = seal_oci_registry::testing::TestRegistry::start() else {
        return;
    };
    let url = schema.url();
    let artifacts = registry.url("seal/migrated");
    let to = ["--to", url.as_str(), "--artifacts", artifacts.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &example_component("hello"), "hello", &[]);
    let (_, digest) = publish_file(&s, &example_component("hello_v2"), "hello", &[]);
    s.seal_json(&["deploy", "hello", "1"]);
    s.seal_json(&["deploy", "hello", "2"]);
    s.seal_json(&["env", "create", "qa"]);
    publish_file(
        &s,
        &guest("echo"),
        "svc",
        &["--config-key", "GREETING", "--config-key", "API_KEY"],
    );
    s.seal_json(&["deploy", "svc", "1"]);
    set_greeting_and_secret(&s);
    let token = s.seal_json(&["token", "create", "--role", "deployer", "--name", "ci"]);
    let ci = token["token"].as_str().unwrap().to_owned();
    let head = s.seal_json(&["audit", "verify"]);

    // Refused while the server holds the data dir.
    let busy = migrate(dir.path(), &to);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{busy:?}"
    );
    s.stop();

    let out = migrate(dir.path(), &to);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = |t: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rows("versions"), 3, "{report:#}");
    assert_eq!(rows("deployments"), 3, "{report:#}");
    assert_eq!(report["audit_head"], head["head"], "{report:#}");
    // Three artifacts: hello@1, hello@2 and svc@1, each a manifest, a
    // config (hello's two versions share theirs) and a component.
    assert_eq!(report["artifacts"]["manifests"], 3, "{report:#}");
    assert_eq!(report["artifacts"]["blobs"], 8, "{report:#}");
    // A second migration into the same store is refused, changing nothing.
    let again = migrate(dir.path(), &to);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds Seal state"),
        "{again:?}"
    );

    // The same data dir on PostgreSQL serves as before: routes, settings
    // and secrets, tokens, environments, one audit chain that goes on.
    let s = Server::start_with(dir.path(), &["--state", &url, "--artifacts", &artifacts]);
    let r = s.get("/hello/").await;
    assert_eq!(header(&r, "seal-digest"), digest);
    let env: Value = s.get("/svc/").await.json().await.unwrap();
    assert_eq!(env["env"]["GREETING"], "hi", "{env}");
    assert_eq!(env["env"]["API_KEY"], "s3cr3t", "{env}");
    let versions = s.seal_env(&["versions", "hello", "-o", "json"], &[("SEAL_TOKEN", &ci)]);
    assert!(versions.ok, "the token still works: {}", versions.stderr);
    assert!(s.seal_json(&["env", "list"]).to_string().contains("\"qa\""));
    s.seal_json(&["rollback", "hello"]);
    assert_eq!(header(&s.get("/hello/").await, "seal-version"), "1");
    let v = s.seal_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["entries"].as_u64().unwrap(),
        head["entries"].as_u64().unwrap() + 1
    );
    // A new node, nothing cached, serves the migrated versions from the
    // registry.
    let dir_b = tempfile::tempdir().unwrap();
    share_keys(dir.path(), dir_b.path());
    let b = Server::start_with(dir_b.path(), &["--state", &url, "--artifacts", &artifacts]);
    until_serves(&b, 1).await;
    until_serves_at(&b, "/svc/", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_cut_off_from_postgres_steps_down_and_resumes_its_canary_when_it_is_back() {
    let Some(schema) = Schema::create("stepdown") else {
        return;
    };
    let (proxy, via_proxy) = Cuttable::before(&schema).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &["--state", &via_proxy, "--controller-lease", "2s"],
    );
    publish_file(&s, &example_component("hello"), "hello", &[]);
    publish_file(&s, &example_component("hello_v2"), "hello", &[]);
    s.seal_json(&["deploy", "hello", "1"]);
    let (status, v) = s
        .api_post(
            "/v1/functions/hello/deploy",
            serde_json::json!({"version": 2, "rollout": {"strategy": "canary", "steps": [20, 50],
                "interval_ms": 1500, "gates": {"min_requests": 0}}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["deployment"]["id"].as_u64().unwrap();
    until_deployment(&s, id, "reached step 1", |d| d["step"] == 1).await;

    // Away for longer than the lease: the controller stops driving by
    // itself; the gateway keeps serving the route as committed.
    proxy.down();
    s.wait_log("the controller stepping down", |l| {
        l.contains("could not be renewed in time; stepping down")
    })
    .await;
    for _ in 0..20 {
        assert_eq!(s.get("/hello/").await.status(), 200);
    }
    proxy.restore();
    let done = until_finished(&s, id, std::time::Duration::from_secs(30)).await;
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}");
    let resumed = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "resumed")
        .count();
    assert!(resumed >= 1, "taken again, the lease resumed it: {done:#}");
    until_serves(&s, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_published_through_one_node_load_on_another_from_the_registry() {
    let Some(schema) = Schema::create("registry") else {
        return;
    };
    let Some(mut registry) = seal_oci_registry::testing::TestRegistry::start() else {
        return;
    };
    let url = schema.url();
    let artifacts = registry.url("seal/functions");
    let dir_a = tempfile::tempdir().unwrap();
    let a = Server::start_with(dir_a.path(), &["--state", &url, "--artifacts", &artifacts]);
    let dir_b = tempfile::tempdir().unwrap();
    share_keys(dir_a.path(), dir_b.path());
    let b = Server::start_with(dir_b.path(), &["--state", &url, "--artifacts", &artifacts]);

    // Published through A alone: B loads both versions from the registry.
    let (_, d1) = publish_file(&a, &example_component("hello"), "hello", &[]);
    let (_, d2) = publish_file(&a, &example_component("hello_v2"), "hello", &[]);
    a.seal_json(&["deploy", "hello", "1"]);
    until_serves(&b, 1).await;
    a.seal_json(&["deploy", "hello", "2"]);
    until_serves(&b, 2).await;
    let cached = |digest: &str| {
        dir_b
            .path()
            .join("artifacts/blobs/sha256")
            .join(&digest["sha256:".len()..])
            .exists()
    };
    assert!(cached(&d1) && cached(&d2), "B read both through its cache");

    // What Seal pushed is an ordinary OCI artifact to other tools.
    let tag = format!("docker://{}/seal/functions:hello-1", registry.addr());
    if let Some(out) = skopeo(&["inspect", "--tls-verify=false", "--raw", &tag]) {
        let inspect: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            inspect["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let copy = tempfile::tempdir().unwrap();
        let dest = format!("oci:{}:hello", copy.path().display());
        let out = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", &tag, &dest])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Same bytes under the same digest: the manifest skopeo copied is
        // the version Seal published.
        let copied = copy
            .path()
            .join("blobs/sha256")
            .join(&d1["sha256:".len()..]);
        assert!(copied.exists(), "skopeo's copy lacks manifest {d1}");
        let layer = inspect["layers"][0]["digest"].as_str().unwrap();
        assert!(
            copy.path()
                .join("blobs/sha256")
                .join(&layer["sha256:".len()..])
                .exists()
        );
    }

    // The registry goes away: both nodes keep serving, a rollback to a
    // cached version works, a restart too, a publish fails clearly and
    // stores nothing.
    registry.stop();
    assert_eq!(b.get("/hello/").await.status(), 200);
    b.seal_json(&["rollback", "hello"]);
    until_serves(&a, 1).await;
    until_serves(&b, 1).await;
    // A node restarted meanwhile serves from its cache.
    b.stop();
    let b = Server::start_with(dir_b.path(), &["--state", &url, "--artifacts", &artifacts]);
    until_serves(&b, 1).await;
    let out = a.seal(&["publish", guest("echo").to_str().unwrap(), "--name", "svc"]);
    out.assert_fails_with("registry");
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    let listed = a.seal(&["versions", "svc", "--output", "json"]);
    assert!(
        !listed.ok || !listed.stdout.contains("\"digest\""),
        "a failed publish recorded a version: {}",
        listed.stdout
    );

    // Back: publishing works again with no restart, and B loads it.
    registry.restart();
    let (v, _) = publish_file(&a, &guest("echo"), "svc", &[]);
    assert_eq!(v, 1);
    a.seal_json(&["deploy", "svc", "1"]);
    until_serves_at(&b, "/svc/", 1).await;
}

/// Events in NATS JetStream shared by two nodes of one database: events
/// sent through either node are each handled, whichever node delivers
/// them (the subscription is one durable consumer both pull from), and
/// shown through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_event_queues_in_nats_jetstream() {
    let Some(schema) = Schema::create("natsq") else {
        return;
    };
    let Some(nats) = NatsNamespace::create("nodes") else {
        return;
    };
    let (url, events) = (schema.url(), nats.url());
    let args = ["--state", url.as_str(), "--events", events.as_str()];
    let dir_a = tempfile::tempdir().unwrap();
    let a = Server::start_with(dir_a.path(), &args);
    let dir_b = tempfile::tempdir().unwrap();
    share_keys(dir_a.path(), dir_b.path());
    let b = Server::start_with(dir_b.path(), &args);
    for node in [&a, &b] {
        assert_eq!(publish_file(node, &guest("events"), "billing", &[]).0, 1);
    }
    a.seal_json(&["deploy", "billing", "1"]);
    a.seal_json(&["queue", "create", "orders"]);
    a.seal_json(&[
        "trigger",
        "create",
        "queue",
        "--function",
        "billing",
        "--queue",
        "orders",
    ]);
    let mut sent = Vec::new();
    for i in 0..20 {
        let (through, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = post_event(through, "orders", &format!("n{i}"), "{}", &[]).await;
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        sent.push((v["events"][0]["id"].as_u64().unwrap(), other));
    }
    let start = std::time::Instant::now();
    for (id, other) in sent {
        loop {
            let e = other.api_get(&format!("/v1/events/{id}")).await;
            let d = &e["deliveries"][0];
            if d["state"] == "done" {
                assert_eq!(d["history"][0]["status"], 200, "{e:#}");
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "event {id} not handled: {e:#}\nA:\n{}\nB:\n{}",
                a.log(),
                b.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
