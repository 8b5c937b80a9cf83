//! Instance reuse through the runtime's public API with a real guest (the
//! `counter` test guest: it answers how many requests its instance has
//! served, and traps on a path containing `trap`).
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use http_body_util::BodyExt;
use seal_runtime::{
    Env, Function, FunctionLimits, GuestStream, InvocationObserver, InvocationReport, InvokeError,
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
    call_with(f, path, &Env::from([]), obs).await
}

/// [`call`] with `env` as the guest's environment variables.
async fn call_with(
    f: &Function,
    path: &str,
    env: &Env,
    obs: Arc<dyn InvocationObserver>,
) -> Result<u64, String> {
    let req = http::Request::get(format!("http://localhost{path}"))
        .body(full_body(""))
        .unwrap();
    match f.handle(req, env, obs).await {
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

/// A kept instance's seat in the CPU lane is its store's: a guest that
/// went heavy and ended cleanly gives its permit back before the instance
/// goes idle (else the lane's one permit would stay with an idle instance
/// and every heavy guest after it would wait until its timeout), and its
/// next invocation starts light, with a deadline of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_instance_holds_no_lane_permit_and_each_use_has_its_own_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let lane = seal_runtime::CpuLane::with_size(1);
    let rt = runtime(&dir, 16).with_cpu_lane(lane.clone());
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let mut l = limits(Some(10));
    l.timeout = Duration::from_millis(400);
    let (f, _) = rt.prepare("counter", None, || Ok(wasm), l).unwrap();
    let obs = Arc::new(Reports::default());

    // 150 ms of computing: heavy past 50 ms, in the lane until it ends.
    assert_eq!(call(&f, "/spin/150", obs.clone()).await, Ok(1));
    reports(&obs, 1).await;
    assert_eq!(lane.running(), 0, "an idle instance holds no permit");
    // A second heavy use of the same instance gets the permit again.
    assert_eq!(call(&f, "/spin/150", obs.clone()).await, Ok(2));
    reports(&obs, 2).await;
    assert_eq!(lane.running(), 0);
    // Each use's deadline is its own (400 ms from its start, not from
    // the instance's first use): a third 150 ms use still fits, and one
    // that computes past it is a timeout of its own.
    assert_eq!(call(&f, "/spin/150", obs.clone()).await, Ok(3));
    // (A heavy run ends on the heavy executor, maybe after its caller has
    // the answer: its report says the instance is back.)
    reports(&obs, 3).await;
    assert_eq!(
        call(&f, "/spin/2000", obs.clone()).await,
        Err("timeout".into())
    );
    let r = reports(&obs, 4).await;
    assert!(r[1].reused && r[2].reused && r[3].reused, "one instance");
    assert_eq!(lane.running(), 0, "a timed-out guest gives its permit back");
    // The timed-out instance is discarded: the next request gets a fresh one.
    assert_eq!(call(&f, "/", obs.clone()).await, Ok(1));
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

/// Until `ready` holds (10 s at most); whether it did.
async fn eventually(ready: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A function that takes a fresh instance per request gets one made
/// before the request: the first request after `prepare_ahead` is served
/// by it, and it is as fresh as one made then (never called: the guest's
/// count is 1). While the function is otherwise idle, the next one is made
/// after each request. It is never used for another set of environment
/// variables, and a function that reuses instances gets none ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_instance_is_made_ready_before_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, 16);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let w2 = wasm.clone();
    let (f, _) = rt
        .prepare("fresh", None, || Ok(wasm), limits(None))
        .unwrap();
    let env = Env::from([("GREETING".to_owned(), "one".to_owned())]);
    assert!(!f.has_ready_instance(&env));
    f.prepare_ahead(&env);
    assert!(eventually(|| f.has_ready_instance(&env)).await);

    let obs = Arc::new(Reports::default());
    for i in 0..3 {
        assert_eq!(call_with(&f, "/", &env, obs.clone()).await, Ok(1));
        let r = reports(&obs, i + 1).await;
        assert!(
            r[i].prepared,
            "request {i} was not served by a ready instance"
        );
        assert!(!r[i].reused);
        // Made again after the request, off its path.
        assert!(eventually(|| f.has_ready_instance(&env)).await);
    }

    // Another config: an instance of its own, the ready one stays.
    let other = Env::from([("GREETING".to_owned(), "two".to_owned())]);
    assert_eq!(call_with(&f, "/", &other, obs.clone()).await, Ok(1));
    let r = reports(&obs, 4).await;
    assert!(!r[3].prepared);
    assert!(f.has_ready_instance(&env));

    // A reusing function keeps used instances instead.
    let (reusing, _) = rt
        .prepare("reusing", None, || Ok(w2), limits(Some(5)))
        .unwrap();
    reusing.prepare_ahead(&env);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reusing.has_ready_instance(&env));
}

/// A replay (an observer that shares no instances) neither takes an
/// instance made ahead nor leaves one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_takes_no_ready_instance() {
    struct Replay(Reports);
    impl InvocationObserver for Replay {
        fn guest_output(&self, _: GuestStream, _: &str) {}
        fn late_failure(&self, _: &InvokeError) {}
        fn finished(&self, r: InvocationReport) {
            self.0.finished(r);
        }
        fn shares_instances(&self) -> bool {
            false
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, 16);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let (f, _) = rt
        .prepare("fresh", None, || Ok(wasm), limits(None))
        .unwrap();
    let env = Env::from([]);
    f.prepare_ahead(&env);
    assert!(eventually(|| f.has_ready_instance(&env)).await);
    let replay = Arc::new(Replay(Reports::default()));
    assert_eq!(call_with(&f, "/", &env, replay.clone()).await, Ok(1));
    let r = reports(&replay.0, 1).await;
    assert!(!r[0].prepared);
    assert!(f.has_ready_instance(&env));

    // Nor does it make one ahead when it leaves the function idle.
    f.release_idle(None);
    assert!(!f.has_ready_instance(&env));
    assert_eq!(call_with(&f, "/", &env, replay.clone()).await, Ok(1));
    reports(&replay.0, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!f.has_ready_instance(&env));
}

/// Idle instances go when their version leaves the routes (all of them)
/// or its config changes (those built with the old environment), and
/// their places in the budget come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_instances_give_their_places_back() {
    let dir = tempfile::tempdir().unwrap();
    // 4 slots: one instance made ahead at a time, all functions together.
    let rt = runtime(&dir, 4);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let w2 = wasm.clone();
    let (f, _) = rt.prepare("f", None, || Ok(wasm), limits(None)).unwrap();
    let (g, _) = rt.prepare("g", None, || Ok(w2), limits(None)).unwrap();
    let old = Env::from([("K".to_owned(), "old".to_owned())]);
    let new = Env::from([("K".to_owned(), "new".to_owned())]);
    f.prepare_ahead(&old);
    assert!(eventually(|| f.has_ready_instance(&old)).await);
    // The budget is spent: g gets none.
    g.prepare_ahead(&new);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!g.has_ready_instance(&new));

    // Another config's instances stay; the old config's go.
    f.release_idle(Some(&new));
    assert!(f.has_ready_instance(&old));
    f.release_idle(Some(&old));
    assert!(!f.has_ready_instance(&old));
    g.prepare_ahead(&new);
    assert!(eventually(|| g.has_ready_instance(&new)).await);

    // Every one goes when the version leaves the routes, and a request
    // still running then makes none after it; routed again, it does.
    g.release_idle(None);
    assert!(!g.has_ready_instance(&new));
    let obs = Arc::new(Reports::default());
    assert_eq!(call_with(&g, "/", &new, obs.clone()).await, Ok(1));
    reports(&obs, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !g.has_ready_instance(&new),
        "a retired version was refilled"
    );
    f.prepare_ahead(&new);
    assert!(eventually(|| f.has_ready_instance(&new)).await);
}

/// Instances made ahead hold pool slots too, within a budget of their own:
/// a quarter of the pool (here 16 slots: 4), at most
/// `MAX_PREPARED_INSTANCES` whatever the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_made_ahead_stay_within_their_budget() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir, 16);
    let wasm = std::fs::read(guests::guest("counter")).unwrap();
    let env = Env::from([]);
    let functions: Vec<_> = (0..6)
        .map(|i| {
            let w = wasm.clone();
            let (f, _) = rt
                .prepare(&format!("f{i}"), None, || Ok(w), limits(None))
                .unwrap();
            f.prepare_ahead(&env);
            f
        })
        .collect();
    let ready = || {
        functions
            .iter()
            .filter(|f| f.has_ready_instance(&env))
            .count()
    };
    assert!(eventually(|| ready() == 4).await, "{} ready", ready());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready(), 4);
    // One taken by a request leaves room: the budget is given back.
    let obs = Arc::new(Reports::default());
    let served = functions
        .iter()
        .find(|f| f.has_ready_instance(&env))
        .unwrap();
    assert_eq!(call_with(served, "/", &env, obs.clone()).await, Ok(1));
    assert!(reports(&obs, 1).await[0].prepared);
    assert!(eventually(|| ready() == 4).await, "{} ready", ready());
}
