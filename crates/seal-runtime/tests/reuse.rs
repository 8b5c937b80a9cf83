//! Instance reuse through the runtime's public API with a real guest (the
//! `counter` test guest: it answers how many requests its instance has
//! served, and traps on a path containing `trap`).
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use http_body_util::BodyExt;
use seal_runtime::{
    Function, FunctionLimits, GuestStream, InvocationObserver, InvocationReport, InvokeError,
    Runtime, RuntimeConfig, full_body,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Reports(Mutex<Vec<InvocationReport>>);

impl InvocationObserver for Reports {
    fn guest_output(&self, _: GuestStream, _: &str) {}
    fn late_failure(&self, _: &InvokeError) {}
    fn finished(&self, r: InvocationReport) {
        self.0.lock().unwrap().push(r);
    }
}

fn limits(reuse: Option<u32>) -> FunctionLimits {
    FunctionLimits {
        memory_bytes: 64 << 20,
        timeout: Duration::from_secs(10),
        outbound_hosts: Arc::new([]),
        config_keys: Arc::new([]),
        queues: Arc::new([]),
        flags: Arc::new([]),
        max_concurrency: None,
        instance_reuse: reuse,
    }
}

/// What the guest answered: its count, or the error's kind.
async fn call(f: &Function, path: &str, obs: Arc<Reports>) -> Result<u64, String> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .body(full_body(""))
        .unwrap();
    match f.handle(req, &[], obs).await {
        Ok(resp) => {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Ok(String::from_utf8_lossy(&body).parse().unwrap())
        }
        Err(e) => Err(e.kind().to_owned()),
    }
}

fn runtime(dir: &tempfile::TempDir, max_instances: u32) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: dir.path().join("cache"),
        max_instances,
    })
    .unwrap()
}

/// Waits for the guest's task to report (it ends after the body).
async fn reports(obs: &Reports, n: usize) -> Vec<InvocationReport> {
    for _ in 0..200 {
        if obs.0.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    obs.0.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_its_uses_then_a_fresh_one_and_a_trap_discards_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, 16);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let (f, _) = rt
        .prepare("counter", None, || Ok(wasm), limits(Some(3)))
        .unwrap();
    let obs = Arc::new(Reports::default());
    let mut seen = Vec::new();
    for i in 0..5 {
        seen.push(call(&f, "/", obs.clone()).await.unwrap());
        reports(&obs, i + 1).await;
    }
    // Three uses, then a fresh instance.
    assert_eq!(seen, [1, 2, 3, 1, 2]);
    let reused: Vec<bool> = reports(&obs, 5).await.iter().map(|r| r.reused).collect();
    assert_eq!(reused, [false, true, true, false, true]);
    // A trap discards the instance.
    assert_eq!(call(&f, "/trap", obs.clone()).await, Err("trap".into()));
    assert_eq!(call(&f, "/", obs.clone()).await, Ok(1));

    // Without the setting: always a fresh instance.
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let (fresh, _) = rt
        .prepare("counter-fresh", None, || Ok(wasm), limits(None))
        .unwrap();
    for _ in 0..3 {
        assert_eq!(call(&fresh, "/", obs.clone()).await, Ok(1));
    }
}

/// Idle instances hold pool slots: all functions together keep at most a
/// quarter of the pool idle (here 4 slots: one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_never_take_more_than_their_share_of_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, 4);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let w2 = wasm.clone();
    let (f1, _) = rt
        .prepare("one", None, || Ok(wasm), limits(Some(100)))
        .unwrap();
    let (f2, _) = rt
        .prepare("two", None, || Ok(w2), limits(Some(99)))
        .unwrap();
    let obs = Arc::new(Reports::default());
    assert_eq!(call(&f1, "/", obs.clone()).await, Ok(1)); // idles: the budget is spent
    reports(&obs, 1).await;
    assert_eq!(call(&f2, "/", obs.clone()).await, Ok(1)); // no room: dropped
    reports(&obs, 2).await;
    assert_eq!(call(&f2, "/", obs.clone()).await, Ok(1));
    reports(&obs, 3).await;
    assert_eq!(call(&f1, "/", obs.clone()).await, Ok(2)); // still there
}

/// An idle instance keeps nothing of its last invocation: its observer
/// (and what that holds, such as an admission permit) is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_lets_its_last_invocation_go() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, 16);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let (f, _) = rt
        .prepare("c", None, || Ok(wasm), limits(Some(10)))
        .unwrap();
    let obs = Arc::new(Reports::default());
    assert_eq!(call(&f, "/", obs.clone()).await, Ok(1));
    reports(&obs, 1).await;
    for _ in 0..200 {
        if Arc::strong_count(&obs) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        Arc::strong_count(&obs),
        1,
        "the idle instance still holds the observer"
    );
    assert_eq!(call(&f, "/", obs.clone()).await, Ok(2));
}
