//! Instances made ahead of a request, as the serving layer keeps them:
//! made when a version is routed, dropped when it leaves the routes or its
//! config changes (through the in-process `TestServer`: real SQLite, real
//! OCI layout, real wasmtime).
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use seal_artifact::SealManifest;
use seal_control::trust::Approvals;
use seal_server::testing::TestServer;
use seal_serving::Backend;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const ENV: &str = "production";

/// The backend of `version` in the route of `api` now.
fn backend(s: &TestServer, version: u64) -> Option<Arc<Backend>> {
    s.control()
        .serving()
        .route(ENV, "api")?
        .backends
        .iter()
        .find(|b| b.version == version)
        .cloned()
}

fn ready(b: &Backend) -> bool {
    b.function.has_ready_instance(&b.guest_env().1)
}

/// Until `ok` holds (10 s at most); whether it did.
async fn eventually(ok: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_made_ahead_follow_the_route_and_the_config() {
    let s = TestServer::start().await.unwrap();
    let wasm = std::fs::read(guests::guest("echo")).unwrap();
    let mut manifest = SealManifest::new("api");
    manifest.capabilities.config_keys = vec!["GREETING".into()];
    s.publish_manifest(&wasm, &manifest).await.unwrap();
    manifest.description = Some("two".into());
    s.publish_manifest(&wasm, &manifest).await.unwrap();
    let deploy = |v| {
        s.control()
            .deploy("api", v, None, None, "test", Approvals::default())
    };

    // Routed: made ahead.
    deploy(1).await.unwrap();
    let v1 = backend(&s, 1).unwrap();
    assert!(eventually(|| ready(&v1)).await, "v1 got no instance ahead");

    // A config change: the old config's instance goes, one with the new
    // config is made.
    let old_env = v1.guest_env().1;
    s.control()
        .settings()
        .change_settings(
            "api",
            ENV,
            false,
            BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]),
            Vec::new(),
            "test",
        )
        .await
        .unwrap();
    let new_env = v1.guest_env().1;
    assert_ne!(old_env, new_env);
    assert!(!v1.function.has_ready_instance(&old_env));
    assert!(
        eventually(|| ready(&v1)).await,
        "none made for the new config"
    );

    // v2 replaces v1: v1's instance goes with its route, v2 gets one.
    deploy(2).await.unwrap();
    let v2 = backend(&s, 2).unwrap();
    assert!(backend(&s, 1).is_none());
    assert!(!ready(&v1), "v1 left the routes but keeps an instance");
    assert!(eventually(|| ready(&v2)).await, "v2 got no instance ahead");
    // It serves the first request.
    assert_eq!(s.invoke(ENV, "api", None).await, Some(200));
    s.shutdown().await;
}
