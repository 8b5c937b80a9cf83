//! Heavy guests compute on threads of their own at a lower priority: the
//! `counter` test guest computes for `/spin/<ms>` milliseconds. One test
//! in this file, so the process's heavy executor is this test's alone.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use http_body_util::BodyExt;
use seal_runtime::{
    Env, Function, FunctionLimits, GuestStream, InvocationObserver, InvocationReport, InvokeError,
    Runtime, RuntimeConfig, full_body,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Quiet;

impl InvocationObserver for Quiet {
    fn guest_output(&self, _: GuestStream, _: &str) {}
    fn late_failure(&self, _: &InvokeError) {}
    fn finished(&self, _: InvocationReport) {}
}

/// What the guest answered (its count) or the error's kind.
async fn call(f: &Function, path: &str) -> Result<String, String> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .body(full_body(""))
        .unwrap();
    match f.handle(req, &Env::from([]), Arc::new(Quiet)).await {
        Ok(resp) => {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => Err(e.kind().to_owned()),
    }
}

/// This process's threads named `seal-heavy`: (CPU ticks used, nice).
fn heavy_threads() -> Vec<(u64, i64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "seal-heavy" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the command's closing parenthesis, from field 3.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let (utime, stime, nice) = (fields[11], fields[12], fields[16]);
        found.push((
            utime.parse::<u64>().unwrap() + stime.parse::<u64>().unwrap(),
            nice.parse().unwrap(),
        ));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_guest_computes_on_threads_of_lower_priority_and_light_ones_never_move() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: dir.path().join("cache"),
        max_instances: 16,
    })
    .unwrap();
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let limits = FunctionLimits {
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(5),
        outbound_hosts: Arc::new([]),
        config_keys: Arc::new([]),
        queues: Arc::new([]),
        flags: Arc::new([]),
        max_concurrency: None,
        instance_reuse: None,
    };
    let (f, _) = rt.prepare("counter", None, || Ok(wasm), limits).unwrap();

    // Light requests (and a guest computing for less than its light
    // ticks) never leave the workers: no heavy thread is ever made.
    for path in ["/", "/spin/20", "/"] {
        assert_eq!(call(&f, path).await, Ok("1".into()));
    }
    assert!(heavy_threads().is_empty(), "{:?}", heavy_threads());

    // A guest computing for 600 ms is heavy after 50: the rest of its run
    // is on the heavy threads, at nice 10, and it still answers.
    let started = Instant::now();
    assert_eq!(call(&f, "/spin/600").await, Ok("1".into()));
    assert!(started.elapsed() >= Duration::from_millis(600));
    let threads = heavy_threads();
    assert!(!threads.is_empty(), "the heavy executor runs");
    assert!(
        threads
            .iter()
            .all(|&(_, nice)| nice >= seal_runtime::HEAVY_NICE as i64),
        "{threads:?}"
    );
    // (At least that nice: under a higher one the threads keep theirs.)
    // Clock ticks are 10 ms: the guest computed there (at least 100 ms of
    // its 550 past the light ticks, even on a machine busy elsewhere).
    let ticks: u64 = threads.iter().map(|&(t, _)| t).sum();
    assert!(
        ticks >= 10,
        "{ticks} ticks on the heavy threads: {threads:?}"
    );

    // Past its timeout a heavy guest is still stopped, there.
    let f2 = {
        let wasm = std::fs::read(guests::guest("counter")).unwrap();
        let mut l = f.limits().clone();
        l.timeout = Duration::from_millis(300);
        rt.prepare("counter", None, || Ok(wasm), l).unwrap().0
    };
    assert_eq!(call(&f2, "/spin/5000").await, Err("timeout".into()));
    // And light requests go on as before.
    assert_eq!(call(&f, "/").await, Ok("1".into()));

    // A heavy guest's host calls work where it moved: after computing for
    // 200 ms it makes an outbound request (to a server here, which its
    // manifest names).
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = upstream.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
                .await;
        }
    });
    let wasm = std::fs::read(guests::guest("outbound")).unwrap();
    let mut l = f.limits().clone();
    l.outbound_hosts = Arc::new([seal_runtime::HostPattern::parse(&addr.to_string()).unwrap()]);
    let (out, _) = rt.prepare("outbound", None, || Ok(wasm), l).unwrap();
    assert_eq!(
        call(&out, &format!("/?host={addr}&path=/&spin=200")).await,
        Ok("upstream 200: hi".into())
    );
}
