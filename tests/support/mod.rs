//! End-to-end test harness: builds the guest components from source, starts
//! the real `seal server` on 127.0.0.1:0, and runs the real CLI against it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn seal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_seal"))
}

mod guests;
#[allow(unused_imports)] // not every test binary uses both
pub use guests::{example_component, guest};

/// A running `seal server` child process; killed on drop, its log printed
/// if the test failed.
pub struct Server {
    child: Option<Child>,
    pub gateway: String,
    pub api: String,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    /// The admin token the server wrote on its first start.
    pub token: String,
    /// A client that sends the admin token (harmless on gateway requests).
    pub http: reqwest::Client,
}

impl Server {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// `seal server` on loopback port 0 with `data_dir`, not started.
    pub fn command(data_dir: &Path) -> Command {
        let mut command = Command::new(seal_bin());
        command
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir);
        command
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Self::command(data_dir)
            .args(extra)
            .env("SEAL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn seal server");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut gateway, mut api) = (None, None);
        while gateway.is_none() || api.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "server did not print its addresses; log:\n{}",
                        log.lock().unwrap()
                    )
                });
            if let Some(a) = line.strip_prefix("gateway listening on ") {
                gateway = Some(a.to_owned());
            } else if let Some(a) = line.strip_prefix("api listening on ") {
                api = Some(a.to_owned());
            }
        }
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("the server writes <data-dir>/admin.token")
            .trim()
            .to_owned();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Self {
            child: Some(child),
            gateway: gateway.unwrap(),
            api: api.unwrap(),
            data_dir: data_dir.to_owned(),
            log,
            token,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
        }
    }

    /// POSTs JSON to the control API; returns status and body.
    pub async fn api_post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The status of the control API's `/healthz`.
    pub async fn api_health(&self) -> u16 {
        self.http
            .get(format!("{}/healthz", self.api))
            .send()
            .await
            .expect("api request")
            .status()
            .as_u16()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) for a server log line that `matches`: the log is
    /// written by the server's logging thread and read by ours, so a line
    /// may arrive after the answer that followed it.
    pub async fn wait_log(&self, what: &str, matches: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.log().lines().any(&matches) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} is not in the server log:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Stops the server with SIGTERM-like kill and waits for it.
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        c.wait().expect("wait for seal server")
    }

    /// Runs a CLI command against this server, as its admin: the CLI finds
    /// the token in the data dir, as it does for a local server.
    pub fn seal(&self, args: &[&str]) -> CliOutput {
        self.seal_env(args, &[])
    }

    /// Runs a CLI command with extra environment variables (e.g. another
    /// `SEAL_TOKEN`).
    pub fn seal_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let out = Command::new(seal_bin())
            .args(args)
            .env("SEAL_SERVER", &self.api)
            .env("SEAL_DATA_DIR", &self.data_dir)
            .env_remove("SEAL_TOKEN")
            .envs(env.iter().copied())
            .output()
            .expect("run seal");
        CliOutput {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a CLI command that must succeed with `--output json`, and parses it.
    pub fn seal_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.seal(&all);
        assert!(
            out.ok,
            "seal {args:?} failed: {}\n{}",
            out.stderr,
            self.log()
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("seal {args:?} printed non-JSON ({e}): {}", out.stdout))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.gateway))
            .send()
            .await
            .expect("gateway request")
    }

    /// A gateway request with an explicit `Host` header (`fn.env.localhost`).
    pub async fn get_host(&self, host: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.gateway))
            .header("host", host)
            .send()
            .await
            .expect("gateway request")
    }

    /// A control API answer as text (`/metrics`, NDJSON logs).
    pub async fn api_text(&self, path: &str) -> String {
        self.api_ok(path).await.text().await.expect("api text")
    }

    /// A successful control API answer.
    async fn api_ok(&self, path: &str) -> reqwest::Response {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .expect("api request");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp
    }

    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        self.api_ok(path).await.json().await.expect("api json")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- seal server log ----\n{}", self.log());
        }
    }
}

pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts failure with a single-line message containing `needle`.
    pub fn assert_fails_with(&self, needle: &str) {
        assert!(!self.ok, "expected failure, got success: {}", self.stdout);
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}: {}",
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "error is not one line: {}",
            self.stderr
        );
    }
}

/// Asserts an API or gateway error answer: the status and the JSON
/// `{"error": {"code"}}`. Returns the body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "{}", resp.url());
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Publishes a built `.wasm` file under a name and returns (version, digest).
pub fn publish_file(server: &Server, path: &Path, name: &str, extra: &[&str]) -> (u64, String) {
    let p = path.to_str().unwrap();
    let mut args = vec!["publish", p, "--name", name];
    args.extend(extra);
    let v = server.seal_json(&args);
    (
        v["version"].as_u64().expect("version"),
        v["digest"].as_str().expect("digest").to_owned(),
    )
}

/// A tiny HTTP receiver on 127.0.0.1:0 that keeps every JSON body posted
/// to it (webhooks, OTLP/HTTP JSON exports) and answers 204.
pub async fn webhook_receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            if let Ok(v) = serde_json::from_str(&body[..len]) {
                                sink.lock().unwrap().push(v);
                            }
                            let _ = stream
                                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}/hook"), got)
}

/// The value of the sample `name{…}` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let (l, v) = r.split_once('}')?;
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            return None;
        };
        labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

/// Runs skopeo: `Some(output)` when it ran and succeeded (a failure
/// panics with its stderr); `None` when it cannot run (skipped with the
/// reason, a failure when `SEAL_REQUIRE_REGISTRY` is set).
pub fn skopeo(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("skopeo").args(args).output() {
        Ok(o) => {
            assert!(
                o.status.success(),
                "skopeo {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(o)
        }
        Err(e) => {
            assert!(
                std::env::var_os("SEAL_REQUIRE_REGISTRY").is_none(),
                "SEAL_REQUIRE_REGISTRY is set but skopeo cannot run: {e}"
            );
            eprintln!("skipped the skopeo checks: {e}");
            None
        }
    }
}

/// A TCP proxy to a service (PostgreSQL, NATS) that a test can cut:
/// while down, open connections are dropped and new ones closed at once,
/// as when the service stops.
pub struct Cuttable {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    pub async fn to(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, open2) = (up.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                open2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, up, open }
    }

    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.open.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A namespace of its own on the test NATS server (`SEAL_TEST_NATS`,
/// default nats://127.0.0.1:4222), removed with the guard. `None` when no
/// NATS answers (skipped, reason printed; a failure when
/// `SEAL_REQUIRE_NATS` is set).
pub struct NatsNamespace {
    pub at: seal_queues_nats::NatsLocation,
}

impl NatsNamespace {
    pub fn create(test: &str) -> Option<Self> {
        let url =
            std::env::var("SEAL_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let mut at = seal_queues_nats::NatsLocation::parse(&url).unwrap();
        let addr = at.server.trim_start_matches("nats://").to_owned();
        if let Err(e) = std::net::TcpStream::connect(&addr) {
            assert!(
                std::env::var_os("SEAL_REQUIRE_NATS").is_none(),
                "SEAL_REQUIRE_NATS is set but no NATS answers at {url}: {e}"
            );
            eprintln!("skipped: no NATS at {url} ({e})");
            return None;
        }
        at.namespace = format!("e2e_{test}_{}", std::process::id());
        Some(Self { at })
    }

    /// What `--events` is given: the namespace on `server` (the NATS
    /// server itself, or a proxy in front of it).
    pub fn url_via(&self, server: &str) -> String {
        format!("nats://{server}/{}", self.at.namespace)
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.at.server, self.at.namespace)
    }

    /// The NATS server's host and port.
    pub fn server_addr(&self) -> String {
        self.at.server.trim_start_matches("nats://").to_owned()
    }
}

impl Drop for NatsNamespace {
    fn drop(&mut self) {
        let _ = seal_queues_nats::remove_namespace_now(&self.at);
    }
}

/// POSTs a binary-mode `order.created` event with `data`, and any other
/// headers, to a queue of production through the API.
pub async fn post_event(
    s: &Server,
    queue: &str,
    id: &str,
    data: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = s
        .http
        .post(format!("{}/v1/queues/production/{queue}/events", s.api))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/shop")
        .header("ce-type", "order.created")
        .header("content-type", "application/json")
        .body(data.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}
