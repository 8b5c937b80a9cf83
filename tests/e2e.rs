//! End-to-end: the real server on 127.0.0.1:0, real guests built from
//! source, the real CLI, real HTTP.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Server, assert_error, example_component, guest, header, publish_file, repo};

fn examples(name: &str) -> String {
    repo()
        .join("examples")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_deploy_rollback_and_history() {
    example_component("hello");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    // Publish the example project (builds through seal.toml) → hello@1.
    let p1 = s.seal_json(&["publish", &examples("hello")]);
    assert_eq!(p1["function"], "hello");
    assert_eq!(p1["version"], 1);
    let d1 = p1["digest"].as_str().unwrap().to_owned();
    assert!(d1.starts_with("sha256:") && d1.len() == 71, "{d1}");

    // Not deployed yet: 404 with a JSON error.
    let r = s.get("/hello/").await;
    assert_error(r, 404, "not_found").await;

    let d = s.seal_json(&["deploy", "hello", "1"]);
    assert_eq!(d["deployment"]["to_weights"][0]["version"], 1);
    let r = s.get("/hello/some/path?x=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "seal-version"), "1");
    assert_eq!(header(&r, "seal-digest"), d1);
    let text = r.text().await.unwrap();
    assert!(text.contains("(v1)"), "{text}");
    assert!(
        text.contains("path=/some/path?x=1"),
        "function must see the path after /hello: {text}"
    );

    // Second version under the same name.
    let p2 = s.seal_json(&["publish", &examples("hello-v2"), "--name", "hello"]);
    assert_eq!(p2["version"], 2);
    let d2 = p2["digest"].as_str().unwrap().to_owned();
    assert_ne!(d1, d2);
    s.seal_json(&["deploy", "hello", "2", "--reason", "ship v2"]);
    let r = s.get("/hello/").await;
    assert_eq!(header(&r, "seal-version"), "2");
    assert_eq!(header(&r, "seal-digest"), d2);
    assert!(r.text().await.unwrap().contains("(v2)"));

    // Environment by Host header.
    let r = s.get_host("hello.production.localhost", "/").await;
    assert_eq!(header(&r, "seal-version"), "2");
    let r = s.get_host("hello.staging.localhost", "/").await;
    assert_eq!(r.status(), 404, "staging has no route");

    // Rollback goes back to v1.
    let rb = s.seal_json(&["rollback", "hello"]);
    assert_eq!(rb["deployment"]["kind"], "rollback");
    assert_eq!(rb["deployment"]["to_weights"][0]["version"], 1);
    let r = s.get("/hello/").await;
    assert_eq!(header(&r, "seal-version"), "1");
    assert!(r.text().await.unwrap().contains("(v1)"));

    // Publishing the same artifact again returns the same version.
    let again = s.seal_json(&["publish", &examples("hello")]);
    assert_eq!(again["version"], 1);
    assert_eq!(again["digest"], d1.as_str());
    assert_eq!(again["created"], false);

    // History and inspection.
    let versions = s.seal_json(&["versions", "hello"]);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    let deployments = s.seal_json(&["deployments", "hello"]);
    let list = deployments["deployments"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["kind"], "rollback");
    assert_eq!(list[1]["reason"], "ship v2");
    assert_eq!(list[1]["actor"], "admin");
    let shown = s.seal_json(&["deployment", &list[0]["id"].to_string()]);
    let kinds: Vec<_> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert_eq!(kinds, ["started", "route_switched", "succeeded"]);
    let status = s.seal_json(&["status", "hello"]);
    assert_eq!(status["routes"][0]["versions"][0]["version"], 1);
    assert_eq!(status["routes"][0]["versions"][0]["serving"], true);
    let inspect = s.seal_json(&["inspect", "hello@2"]);
    assert_eq!(inspect["verified"], true);
    assert_eq!(inspect["version"]["digest"], d2.as_str());
    assert_eq!(inspect["oci_manifest"]["schemaVersion"], 2);
    assert_eq!(
        inspect["oci_manifest"]["config"]["mediaType"],
        "application/vnd.seal.function.config.v1+json"
    );
    assert_eq!(
        inspect["oci_manifest"]["layers"][0]["mediaType"],
        "application/wasm"
    );
    let audit = s.seal_json(&["audit"]);
    let actions: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    // The first start created the admin token: the first entry.
    assert_eq!(
        actions,
        [
            "rollback",
            "deploy",
            "publish",
            "deploy",
            "publish",
            "token.create"
        ]
    );

    // Human output works too.
    let out = s.seal(&["status", "hello"]);
    assert!(
        out.ok && out.stdout.contains("production"),
        "{}",
        out.stdout
    );

    // The artifact store is a real OCI image layout.
    let layout = dir.path().join("artifacts");
    assert!(layout.join("oci-layout").is_file());
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digests: Vec<_> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(digests, [d1.clone(), d2.clone()]);
    assert!(
        layout
            .join("blobs/sha256")
            .join(&d1["sha256:".len()..])
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_same_routes_without_recompiling() {
    let echo = guest("echo");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (v, digest) = publish_file(&s, &echo, "echo", &[]);
    s.seal_json(&["deploy", "echo", &v.to_string()]);
    let info = s.api_get("/v1/server").await;
    assert_eq!(info["compiles"], 1, "compiled once, at publish");
    s.stop();
    // As if the server died between committing the version and writing
    // index.json: the entry is restored at start-up.
    let index_path = dir.path().join("artifacts/index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"] = serde_json::json!([]);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    let s = Server::start(dir.path());
    let r = s.get("/echo/after-restart").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "seal-digest"), digest);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["path"], "/after-restart");
    let index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["dev.seal.function"],
        "echo"
    );
    let info = s.api_get("/v1/server").await;
    assert_eq!(info["compiles"], 0, "nothing recompiled on restart");
    assert_eq!(info["cache_loads"], 1);
    s.stop();

    // A tampered compiled file is not trusted: it is recompiled from the
    // verified blob, and the route still serves. (The file is named after
    // the component: every artifact made of it shares it.)
    let component = seal_artifact::sha256_digest(&std::fs::read(&echo).unwrap());
    let cached = dir
        .path()
        .join("compiled")
        .join(format!("{}.cwasm", component.hex()));
    let mut bytes = std::fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cached, bytes).unwrap();
    let s = Server::start(dir.path());
    assert_eq!(s.get("/echo/").await.status(), 200);
    let info = s.api_get("/v1/server").await;
    assert_eq!(info["compiles"], 1, "tampered cache must be recompiled");
    s.wait_log("the cache's hash mismatch", |l| {
        l.contains("does not match its recorded hash")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sees_method_path_headers_body_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (v, _) = publish_file(&s, &guest("echo"), "echo", &[]);
    s.seal_json(&["deploy", "echo", &v.to_string()]);
    let r = s
        .http
        .post(format!("{}/echo/a/b?c=d", s.gateway))
        .header("x-test", "yes")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/a/b?c=d");
    assert_eq!(body["headers"]["x-test"], "yes");
    assert_eq!(body["body"], "payload");
    assert_eq!(body["env"]["SEAL_FUNCTION"], "echo");
    assert_eq!(body["env"]["SEAL_ENVIRONMENT"], "production");
    assert_eq!(body["env"]["SEAL_VERSION"], "1");
    assert!(
        body["env"]["SEAL_DIGEST"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // Same function, function-without-trailing-slash form.
    let body: Value = s.get("/echo").await.json().await.unwrap();
    assert_eq!(body["path"], "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_timeouts_and_memory_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    for (name, extra) in [
        ("echo", vec![]),
        ("trap", vec![]),
        ("fail", vec![]),
        ("spin", vec!["--timeout", "2s"]),
        ("slow", vec!["--timeout", "300ms"]),
        ("memhog", vec!["--memory", "32MiB"]),
    ] {
        let (v, _) = publish_file(&s, &guest(name), name, &extra);
        s.seal_json(&["deploy", name, &v.to_string()]);
    }

    let r = s.get("/trap/").await;
    assert_eq!(r.status(), 500);
    assert_eq!(header(&r, "seal-version"), "1", "errors carry the version");
    assert!(header(&r, "seal-digest").starts_with("sha256:"));
    let request_id = header(&r, "x-request-id");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "trap");
    // Hardening: the caller is told the kind and the request id, never
    // the guest's backtrace or the host's error chain (those are logged).
    assert_eq!(body["error"]["message"], "function trapped", "{body}");
    assert_eq!(body["error"]["request_id"], request_id.as_str(), "{body}");
    // The details are in the server log.
    s.wait_log("the trap's details", |l| {
        l.contains("invocation failed") && l.contains("function trapped: ")
    })
    .await;

    let r = s.get("/fail/").await;
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "boom\n",
        "a guest's own 500 passes through"
    );

    // Two infinite loops (as many as the server has worker threads here)
    // and an echo request at the same time: the loops yield every epoch
    // tick, so the echo answers at once; the loops are cut at their timeout.
    let (spin, spin2, echo) = tokio::join!(s.get("/spin/"), s.get("/spin/"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let r = s.get("/echo/").await;
        (r.status(), started.elapsed())
    });
    assert_eq!(spin.status(), 504);
    assert_eq!(spin2.status(), 504);
    let body: Value = spin.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout");
    assert_eq!(echo.0, 200);
    assert!(
        echo.1 < Duration::from_millis(1000),
        "echo was held up by the loop: {:?}",
        echo.1
    );

    let r = s.get("/slow/?ms=5000").await;
    assert_eq!(r.status(), 504);
    let r = s.get("/slow/?ms=10").await;
    assert_eq!(r.status(), 200);

    let r = s.get("/memhog/").await;
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "memory", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("32 MiB"),
        "{body}"
    );

    // A trap after the head went out: the 200 is already on the wire, the
    // body is cut short, and it still counts as an error of the version.
    // (hyper may not even have flushed the head before the connection is
    // cut; either way the client must not see a complete response.)
    match s.http.get(format!("{}/trap/late", s.gateway)).send().await {
        Err(_) => {}
        Ok(r) => {
            assert_eq!(r.status(), 200);
            assert!(r.bytes().await.is_err(), "the body must not look complete");
        }
    }

    // Each failure counted against its version; the server still serves.
    let mut counted = Value::Null;
    for _ in 0..50 {
        let trap = s.seal_json(&["status", "trap"]);
        counted = trap["routes"][0]["versions"][0].clone();
        if counted["errors"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted["errors"], 2, "{counted}");
    assert_eq!(counted["requests"], 2, "{counted}");
    for _ in 0..5 {
        assert_eq!(s.get("/echo/").await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--max-upload-size", "90KiB"]);
    let (v, digest) = publish_file(&s, &guest("fail"), "keep", &[]);
    s.seal_json(&["deploy", "keep", &v.to_string()]);
    let still_serving = || async {
        let r = s.get("/keep/").await;
        assert_eq!(r.status(), 500, "the deployed guest answers 500 by design");
        assert_eq!(header(&r, "seal-digest"), digest, "route changed");
    };

    let files = tempfile::tempdir().unwrap();
    let garbage = files.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    s.seal(&["publish", garbage.to_str().unwrap()])
        .assert_fails_with("not a WebAssembly file");
    let core = files.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    s.seal(&["publish", core.to_str().unwrap()])
        .assert_fails_with("core WebAssembly module");
    s.seal(&["publish", guest("cli").to_str().unwrap(), "--name", "cli"])
        .assert_fails_with("does not export wasi:http/incoming-handler");
    for bad in ["../x", "Hello", &"a".repeat(200)] {
        s.seal(&["publish", guest("trap").to_str().unwrap(), "--name", bad])
            .assert_fails_with("invalid function name");
    }
    // echo is ~100 KB, over the 90 KiB limit.
    s.seal(&["publish", guest("echo").to_str().unwrap(), "--name", "big"])
        .assert_fails_with("larger than the limit");

    // The server checks too, not just the CLI: a raw oversized streamed
    // upload without Content-Length is cut off, and leaves nothing behind.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0u8; 64 * 1024]));
    let r = s
        .http
        .put(format!("{}/v1/blobs/sha256:{}", s.api, "0".repeat(64)))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "too_large").await;
    // A blob whose bytes do not match its digest is refused.
    let r = s
        .http
        .put(format!("{}/v1/blobs/sha256:{}", s.api, "0".repeat(64)))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("artifacts/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // A manifest that is not an OCI manifest.
    let r = s
        .http
        .post(format!("{}/v1/artifacts", s.api))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    s.seal(&["deploy", "nope", "1"])
        .assert_fails_with("unknown function");
    s.seal(&["deploy", "keep", "9"])
        .assert_fails_with("has no version 9");
    s.seal(&["deploy", "keep", "1", "--env", "Bad_Env"])
        .assert_fails_with("invalid environment name");
    s.seal(&["rollback", "keep"])
        .assert_fails_with("no previous version");
    s.seal(&["rollback", "keep", "--env", "staging"])
        .assert_fails_with("no route");
    s.seal(&["inspect", "keep"])
        .assert_fails_with("FUNCTION@VERSION");
    let r = s
        .http
        .post(format!("{}/v1/functions/keep/deploy", s.api))
        .body(r#"{"version": "one"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    still_serving().await;

    // Nothing was recorded for the refusals but the one deployment.
    let deployments = s.seal_json(&["deployments", "keep"]);
    assert_eq!(deployments["deployments"].as_array().unwrap().len(), 1);
    let functions = s.seal_json(&["functions"]);
    let names: Vec<_> = functions["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].clone())
        .collect();
    assert_eq!(names, ["keep"]);

    // A corrupted blob on disk is reported and never executed — even for a
    // version the running server already has compiled in memory.
    let (v2, d2) = publish_file(&s, &guest("trap"), "other", &[]);
    assert_eq!(v2, 1);
    let blobs = dir.path().join("artifacts/blobs/sha256");
    let oci_manifest: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&d2["sha256:".len()..])).unwrap())
            .unwrap();
    let layer = oci_manifest["layers"][0]["digest"].as_str().unwrap();
    let layer_path = blobs.join(&layer["sha256:".len()..]);
    let good = std::fs::read(&layer_path).unwrap();
    let mut bad = good.clone();
    bad[100] ^= 0xff;
    std::fs::write(&layer_path, &bad).unwrap();

    s.seal(&["deploy", "other", "1"])
        .assert_fails_with("corrupt");
    s.seal(&["inspect", "other@1"]).assert_fails_with("corrupt");
    assert_eq!(s.get("/other/").await.status(), 404);
    let r = s.get("/keep/").await;
    assert_eq!(
        header(&r, "seal-digest"),
        digest,
        "the good route still serves"
    );
    let audit = s.seal_json(&["audit"]);
    assert_eq!(audit["entries"][0]["outcome"], "refused");
    assert_eq!(audit["entries"][0]["action"], "deploy");

    // Publishing the same component again repairs the damaged blob; the
    // version (same digest) is unchanged and now deploys.
    let again = s.seal_json(&[
        "publish",
        guest("trap").to_str().unwrap(),
        "--name",
        "other",
    ]);
    assert_eq!(again["version"], 1);
    assert_eq!(again["created"], false);
    assert_eq!(std::fs::read(&layer_path).unwrap(), good);
    s.seal_json(&["deploy", "other", "1"]);
    assert_eq!(header(&s.get("/other/").await, "seal-digest"), d2);
}

/// A load loop of concurrent requests across deploys and rollbacks: zero
/// failed requests, and both versions seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_deploys_and_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (v1, _) = publish_file(&s, &example_component("hello"), "hello", &[]);
    let (v2, _) = publish_file(&s, &example_component("hello_v2"), "hello", &[]);
    assert_eq!((v1, v2), (1, 2));
    s.seal_json(&["deploy", "hello", "1"]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let url = format!("{}/hello/", s.gateway);
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut failed, mut seen) =
                (0u64, Vec::new(), std::collections::BTreeSet::new());
            // Bounded: at most 5000 requests per worker.
            for _ in 0..5000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        seen.insert(r.headers()["seal-version"].to_str().unwrap().to_owned());
                        ok += 1;
                    }
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed, seen)
        }));
    }
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if i % 2 == 0 {
            s.seal_json(&["deploy", "hello", "2"]);
        } else {
            s.seal_json(&["rollback", "hello"]);
        }
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut seen) = (0, std::collections::BTreeSet::new());
    for w in workers {
        let (ok, failed, s) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
        seen.extend(s);
    }
    assert!(total > 100, "too few requests to mean anything: {total}");
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["1", "2"]);
    let deployments = s.seal_json(&["deployments", "hello"]);
    assert_eq!(deployments["deployments"].as_array().unwrap().len(), 7);
}

/// Components built by componentize-py (CPython inside, ~18 MB) and
/// componentize-js (StarlingMonkey inside, ~13 MB) run unchanged: they
/// import other wasi 0.2.x minor versions and more interfaces than the Rust
/// guests. `scripts/build-foreign-guests` builds them (tools from PyPI and
/// npm); `scripts/test` and CI always do and set SEAL_REQUIRE_FOREIGN_GUESTS,
/// so there this test cannot pass without running them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_components_run() {
    let dir = repo().join("target/foreign-guests");
    let guests = [
        (
            "hello-py",
            "hello-py.wasm",
            "Hello from Python! path=/x?y=1",
        ),
        (
            "hello-js",
            "hello-js.wasm",
            "Hello from JavaScript! path=/x?y=1",
        ),
    ];
    if guests.iter().any(|(_, f, _)| !dir.join(f).is_file()) {
        assert!(
            std::env::var_os("SEAL_REQUIRE_FOREIGN_GUESTS").is_none(),
            "SEAL_REQUIRE_FOREIGN_GUESTS is set but {} lacks the guests; run scripts/build-foreign-guests",
            dir.display()
        );
        eprintln!("skipping: run scripts/build-foreign-guests to build the Python and JS guests");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let s = Server::start(data.path());
    for (name, file, expected) in guests {
        let path = dir.join(file);
        assert!(
            std::fs::metadata(&path).unwrap().len() > 10 << 20,
            "{file} should be a large (>10 MB) component"
        );
        let (v, digest) = publish_file(&s, &path, name, &[]);
        s.seal_json(&["deploy", name, &v.to_string()]);
        let r = s.get(&format!("/{name}/x?y=1")).await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(header(&r, "seal-digest"), digest);
        assert_eq!(r.text().await.unwrap(), expected);
    }
}

/// Puts a blob through the API the way any client could.
async fn put_blob(s: &Server, bytes: &[u8]) -> reqwest::StatusCode {
    let digest = seal_artifact::sha256_digest(bytes);
    s.http
        .put(format!("{}/v1/blobs/{digest}", s.api))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

/// Publishes by hand: blobs, then an OCI manifest naming them. Returns the
/// status and the JSON body of the final POST.
async fn raw_publish(s: &Server, component: &[u8], config: &Value) -> (u16, Value) {
    let config_bytes = serde_json::to_vec(config).unwrap();
    assert!(put_blob(s, &config_bytes).await.is_success());
    assert!(put_blob(s, component).await.is_success());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.seal.function.config.v1+json",
            "digest": seal_artifact::sha256_digest(&config_bytes).as_str(),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/wasm",
            "digest": seal_artifact::sha256_digest(component).as_str(),
            "size": component.len(),
        }],
    });
    let r = s
        .http
        .post(format!("{}/v1/artifacts", s.api))
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The server validates on its own: what a hand-made client sends is
/// checked as strictly as what the CLI checks before sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_bad_artifacts_from_any_client() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let manifest = |name: &str| serde_json::json!({"schema": 1, "name": name});
    let cli = std::fs::read(guest("cli")).unwrap();
    let echo = std::fs::read(guest("echo")).unwrap();
    for (component, config, code) in [
        (b"garbage".to_vec(), manifest("a"), "not_wasm"),
        (b"\0asm\x01\0\0\0".to_vec(), manifest("b"), "core_module"),
        (cli, manifest("c"), "no_http_handler"),
        (echo.clone(), manifest("../x"), "invalid_name"),
        (echo.clone(), manifest("Hello"), "invalid_name"),
        (
            echo.clone(),
            serde_json::json!({"schema": 1, "name": "d", "limits": {"memory_mb": 0}}),
            "invalid_manifest",
        ),
        (
            echo.clone(),
            serde_json::json!({"schema": 1, "name": "e", "surprise": true}),
            "invalid_manifest",
        ),
    ] {
        let (status, body) = raw_publish(&s, &component, &config).await;
        assert_eq!(status, 422, "{config}: {body}");
        assert_eq!(body["error"]["code"], code, "{config}: {body}");
    }
    // A manifest naming a blob that was never uploaded.
    let r = s
        .http
        .post(format!("{}/v1/artifacts", s.api))
        .body(
            serde_json::json!({
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.seal.function.config.v1+json", "digest": format!("sha256:{}", "1".repeat(64)), "size": 2},
                "layers": [{"mediaType": "application/wasm", "digest": format!("sha256:{}", "2".repeat(64)), "size": 2}],
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Errors from the HTTP layer itself are JSON too.
    let r = s
        .http
        .post(format!("{}/v1/artifacts", s.api))
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "too_large").await;
    let r = s
        .http
        .get(format!("{}/v1/audit?limit=many", s.api))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "bad_request").await;
    // Nothing was created by any of it.
    let functions = s.api_get("/v1/functions").await;
    assert_eq!(functions["functions"], serde_json::json!([]));

    // And a well-formed one goes through the same path.
    let (status, body) = raw_publish(&s, &echo, &manifest("echo")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 1);
}

/// Reads one HTTP/1.1 answer (head and a `content-length` body) from a
/// kept-alive connection; returns its head in lower case and its body.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + len {
                    return (head, got[end + 4..end + 4 + len].to_vec());
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within 10 s")
}

/// An upload answered before its body is read (a blob already stored, a
/// caller without a token) once left a connection hyper closed without
/// saying so: a pooled client sent its next request into it and failed
/// (`IncompleteMessage`). Now the stored blob's body is read and the
/// connection serves the next request; an unread one is answered with
/// `connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_answered_early_leave_the_connection_usable_or_say_it_closes() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let api = s.api.trim_start_matches("http://").to_owned();
    let blob = vec![7u8; 200 * 1024];
    let digest = seal_artifact::sha256_digest(&blob);
    assert_eq!(put_blob(&s, &blob).await, 201);

    // The same blob again, then a second request on the same connection.
    let mut c = tokio::net::TcpStream::connect(&api).await.unwrap();
    let head = format!(
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        s.token.trim(),
        blob.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&blob).await.unwrap();
    let (head, body) = read_answer(&mut c).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["existed"], true, "{body}");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_answer(&mut c).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // Refused before its body is read (no token): the answer says the
    // connection ends, and it does.
    let mut c = tokio::net::TcpStream::connect(&api).await.unwrap();
    c.write_all(
        format!(
            "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            blob.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (answer, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(closed, "the connection stayed open");

    // The gateway's own refusals too (no such function here).
    let gateway = s.gateway.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    c.write_all(b"POST /nosuch/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(closed, "the gateway connection stayed open");

    // And a pooled client alternating stored blobs and other calls never
    // sees a connection closed under it.
    for _ in 0..50 {
        assert_eq!(put_blob(&s, &blob).await, 200);
        s.api_get("/v1/functions").await;
    }
}

/// An oversized request head gets a JSON error naming the limit, from the
/// gateway and from the API alike (hyper's own 414 had no body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &guest("echo"), "echo", &[]);
    s.seal_json(&["deploy", "echo", "1"]);
    let long = "a".repeat(10 * 1024);
    let big = "v".repeat(20 * 1024);
    for base in [
        format!("{}/echo/", s.gateway),
        format!("{}/v1/functions", s.api),
    ] {
        let r = s.http.get(format!("{base}?q={long}")).send().await.unwrap();
        let v = assert_error(r, 414, "uri_too_long").await;
        assert!(
            v["error"]["message"].as_str().unwrap().contains("8192"),
            "{v}"
        );
        let r = s
            .http
            .get(&base)
            .header("x-one", &big)
            .header("x-two", &big)
            .send()
            .await
            .unwrap();
        assert_error(r, 431, "headers_too_large").await;
        // Within the limits, the same client is served.
        assert!(
            s.http
                .get(&base)
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
    }
}

/// A request that started on v1 finishes on v1 while v2 takes the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_finishes_on_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let slow = guest("slow");
    let (v1, d1) = publish_file(&s, &slow, "inflight", &[]);
    let (v2, d2) = publish_file(&s, &slow, "inflight", &["--timeout", "20s"]);
    assert_eq!((v1, v2), (1, 2));
    s.seal_json(&["deploy", "inflight", "1"]);
    let (slow_resp, ()) = tokio::join!(s.get("/inflight/?ms=1500"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.seal_json(&["deploy", "inflight", "2"]);
        let r = s.get("/inflight/?ms=1").await;
        assert_eq!(header(&r, "seal-digest"), d2, "new requests go to v2");
    });
    assert_eq!(slow_resp.status(), 200);
    assert_eq!(header(&slow_resp, "seal-version"), "1");
    assert_eq!(header(&slow_resp, "seal-digest"), d1);
    assert_eq!(slow_resp.text().await.unwrap(), "slept 1500 ms");
}

/// Deployments go only to environments that exist; a typo is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (v, digest) = publish_file(&s, &guest("echo"), "echo", &[]);
    s.seal(&["deploy", "echo", &v.to_string(), "--env", "prodution"])
        .assert_fails_with("unknown environment \"prodution\"");
    let created = s.seal_json(&["env", "create", "qa"]);
    assert_eq!(created["created"], true);
    s.seal_json(&["deploy", "echo", &v.to_string(), "--env", "qa"]);
    let r = s.get_host("echo.qa.localhost", "/hi").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "seal-digest"), digest);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["env"]["SEAL_ENVIRONMENT"], "qa");
    // Production was not touched.
    assert_eq!(s.get("/echo/").await.status(), 404);
    let envs = s.seal_json(&["env", "list"]);
    assert_eq!(
        envs["environments"],
        serde_json::json!(["production", "qa", "staging"])
    );
    assert_eq!(envs["default"], "production");
    let audit = s.seal_json(&["audit"]);
    assert_eq!(audit["entries"][1]["action"], "environment.create");
}

/// SIGTERM stops the server gracefully: a request in flight completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (v, _) = publish_file(&s, &guest("slow"), "slow", &[]);
    s.seal_json(&["deploy", "slow", &v.to_string()]);
    let url = format!("{}/slow/?ms=1000", s.gateway);
    let in_flight = tokio::spawn(async move { reqwest::get(url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("in-flight request must complete");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slept 1000 ms");
    assert!(status.success(), "server exit: {status}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "exited before the request finished"
    );
}

/// `seal server --output json` reports where it listens as one JSON line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_start_report_in_json() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(support::seal_bin())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--output",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let api = report["api"].as_str().unwrap().to_owned();
    let health = reqwest::get(format!("{api}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let r = reqwest::get(format!("{}/nothing/", report["gateway"].as_str().unwrap()))
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_finds_an_edited_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &guest("echo"), "audited", &[]);
    s.seal_json(&["deploy", "audited", "1"]);
    s.seal_json(&["env", "create", "qa"]);
    let v = s.seal_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let entries = v["entries"].as_u64().unwrap();
    assert!(entries >= 3, "{v}");
    let log = s.seal_json(&["audit"]);
    assert_eq!(log["entries"][0]["hash"], v["head"]);
    let text = s.seal(&["audit", "verify"]);
    assert!(
        text.ok && text.stdout.contains("audit log intact"),
        "{}",
        text.stdout
    );

    // Someone with the database file rewrites who did entry 2.
    s.stop();
    let db = dir.path().join("state.db");
    let edit = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit SET actor = 'someone-else' WHERE id = 2\"); c.commit()")
        .arg(&db)
        .status()
        .unwrap();
    assert!(edit.success());
    let s = Server::start(dir.path());
    let out = s.seal(&["audit", "verify"]);
    out.assert_fails_with("audit log broken at entry 2");
    let v = s.api_get("/v1/audit/verify").await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_broken"]["id"], 2);
    assert_eq!(v["entries"], 1);
    // New entries still append (after the broken link, which stays reported).
    s.seal_json(&["env", "create", "qa2"]);
    assert_eq!(s.api_get("/v1/audit/verify").await["first_broken"]["id"], 2);
}

/// Hardening: two servers on one data dir both started, and a deploy
/// through the second was stored but never served by the first. The
/// second now refuses to start, names the holder, and the first serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let holder = std::fs::read_to_string(dir.path().join("seal.lock")).unwrap();
    let api = s.api.trim_start_matches("http://").to_owned();
    assert!(holder.contains(&format!("api {api}")), "{holder:?} {api}");
    let out = Server::command(dir.path()).output().unwrap();
    assert!(!out.status.success(), "the second server started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another seal server") && stderr.contains(holder.trim()),
        "{stderr}"
    );
    assert_eq!(s.api_health().await, 200);
    s.stop();
}

/// Hardening: `seal … | head` panicked when the reader went away. A
/// client command whose stdout is a pipe with no reader now ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_command_whose_reader_went_away_ends_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.seal_json(&["env", "create", "qa"]);
    for args in [&["audit"][..], &["functions"][..], &["env", "list"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(support::seal_bin())
            .args(args)
            .env("SEAL_SERVER", &s.api)
            .env("SEAL_DATA_DIR", &s.data_dir)
            .env_remove("SEAL_TOKEN")
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        // Ended by SIGPIPE, as `cat` or `ls` would be.
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
    // The server is not affected by a client that stopped reading.
    assert_eq!(s.api_health().await, 200);
}

/// Reads from `stream` until the peer closes it (or `limit` passes);
/// returns what was read and whether it was closed in time.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Hardening: connections sending headers at 1 byte/s were never closed;
/// ~20,000 of them exhausted the file descriptors. Now a connection that
/// does not finish its headers in time is closed, one over the
/// connection limit is answered 503 and closed, and the API still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_surplus_connections_are_closed_and_the_api_still_answers() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &["--header-read-timeout", "1s", "--max-connections", "4"],
    );
    publish_file(&s, &guest("echo"), "echo", &[]);
    s.seal_json(&["deploy", "echo", "1"]);
    let gateway = s.gateway.trim_start_matches("http://").to_owned();

    // Half a request head, then nothing: closed after about a second.
    let mut slow = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    slow.write_all(b"GET /echo/ HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a connection with unfinished headers stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    // So is one that never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection stayed open");

    // One byte, or the start of an HTTP/2 preface, then silence: closed.
    for start in [&b"G"[..], &b"PRI * HTTP/2.0\r\n"[..]] {
        let mut c = tokio::net::TcpStream::connect(&gateway).await.unwrap();
        c.write_all(start).await.unwrap();
        let (_, closed) = read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(
            closed,
            "{:?} then silence stayed open",
            String::from_utf8_lossy(start)
        );
    }
    // A kept-alive connection that sends no next request: closed too.
    let mut kept = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    kept.write_all(b"GET /echo/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle kept-alive connection stayed open");

    // Four connections hold every slot (each sends half a head, so each
    // stays open up to its second); the fifth is refused with a 503.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(&gateway).await.unwrap();
        c.write_all(b"GET /echo/ HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut surplus = tokio::net::TcpStream::connect(&gateway).await.unwrap();
    let _ = surplus
        .write_all(b"GET /echo/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (answer, closed) = read_until_closed(&mut surplus, Duration::from_secs(5)).await;
    assert!(closed, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("\"too_many_connections\""), "{answer}");
    // The control API has its own listener: it answers meanwhile, and
    // bounds its own connections the same way (a silent one is closed).
    assert_eq!(s.api_health().await, 200);
    let api = s.api.trim_start_matches("http://").to_owned();
    let mut silent_api = tokio::net::TcpStream::connect(&api).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent_api, Duration::from_secs(5)).await;
    assert!(closed, "an idle API connection stayed open");
    // Once the held connections time out, the gateway serves again.
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Until the server has seen them go, a request may still meet the
        // refusal (written before the request is read).
        let r = s.http.get(format!("{}/echo/", s.gateway)).send().await;
        if r.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hardening: 400 requests held open to a sleeping function filled the
/// shared instance pool and every other function answered 503. Now a
/// function is held to its concurrency limit (429 + retry-after), and
/// past half the pool to a fair share of it (503 + retry-after), so a
/// neighbour is still served; the limit is the manifest's when it
/// declares one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_holding_requests_open_does_not_starve_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        &["--max-instances", "12", "--function-concurrency", "4"],
    );
    publish_file(&s, &guest("slow"), "sleepy", &[]);
    publish_file(&s, &guest("slow"), "declared", &["--max-concurrency", "8"]);
    publish_file(&s, &guest("echo"), "echo", &[]);
    for f in ["sleepy", "declared", "echo"] {
        s.seal_json(&["deploy", f, "1"]);
    }
    let inspect = s.seal(&["inspect", "declared@1"]);
    assert!(
        inspect.stdout.contains("at most 8 requests at once"),
        "{}",
        inspect.stdout
    );
    // Ten sleepers at once: four are served, six are refused at once.
    let hold = |f: &'static str, n: usize| {
        (0..n)
            .map(|_| {
                let (http, url) = (s.http.clone(), format!("{}/{f}/?ms=1500", s.gateway));
                tokio::spawn(async move { http.get(url).send().await.unwrap() })
            })
            .collect::<Vec<_>>()
    };
    let sleepers = hold("sleepy", 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The neighbour answers while the sleepers sleep.
    for _ in 0..5 {
        assert_eq!(s.get("/echo/").await.status(), 200);
    }
    let mut statuses = Vec::new();
    for t in sleepers {
        let r = t.await.unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            assert_eq!(header(&r, "retry-after"), "1");
            let v = assert_error(r, 429, "throttled").await;
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("concurrency limit of 4"), "{msg}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429, 429, 429]);

    // A function that declares 8 may hold 6 of the 12 slots (half the
    // pool, as the only busy function), and the neighbour still gets in.
    // (The sleepers' slots are freed as their tasks end, just after their
    // answers.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let declared = hold("declared", 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        assert_eq!(s.get("/echo/").await.status(), 200);
    }
    let mut statuses = Vec::new();
    for t in declared {
        let r = t.await.unwrap();
        let status = r.status().as_u16();
        if status == 503 {
            assert_eq!(header(&r, "retry-after"), "1");
            let v = assert_error(r, 503, "overloaded").await;
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("retry later"),
                "{v}"
            );
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 503, 503]);
    // Refusals are the server's answers, not the function's errors.
    let text = s.api_text("/metrics").await;
    let sleepy = [("function", "sleepy"), ("version", "1")];
    assert_eq!(
        support::metric(&text, "seal_invocations_overloaded_total", &sleepy),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        support::metric(&text, "seal_invocations_total", &sleepy),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_on_the_embedded_store_is_this_one_node_leading() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(&s, &example_component("hello"), "hello", &[]);
    s.seal_json(&["deploy", "hello", "1"]);
    let v = s.seal_json(&["cluster", "status"]);
    assert_eq!(v["shared"], false, "{v}");
    assert_eq!(v["controller"], v["this_node"], "{v}");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["controller"], true);
    assert!(s.api.ends_with(nodes[0]["api"].as_str().unwrap()), "{v}");
    assert_eq!(nodes[0]["versions"][0]["function"], "hello");
    assert_eq!(nodes[0]["versions"][0]["weight"], 100);
    // A viewer may read it; a publisher token may not.
    let publisher = s.seal_json(&[
        "token",
        "create",
        "--role",
        "publisher",
        "--queue",
        "orders",
    ]);
    let r = s
        .http
        .get(format!("{}/v1/cluster", s.api))
        .bearer_auth(publisher["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden").await;
}

/// Writes an OCI image layout holding `wasm` as `wkg oci push` and `oras`
/// lay a component out (config `application/vnd.wasm.config.v0+json`, one
/// `application/wasm` layer), under the tag `v1`; returns the manifest's
/// digest.
fn wasm_oci_layout(dir: &std::path::Path, wasm: &[u8], config_media_type: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = seal_artifact::sha256_digest(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let (layer, layer_size) = put(wasm);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer],
        "component": {"exports": ["wasi:http/incoming-handler@0.2.0"]},
    }))
    .unwrap();
    let (config, config_size) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_media_type, "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/wasm", "digest": layer, "size": layer_size}],
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    manifest_digest
}

/// Pushes a layout's `v1` to `docker://addr/repository:v1` with skopeo
/// (false when skopeo is missing and not required).
fn skopeo_push(layout: &std::path::Path, addr: &str, repository: &str) -> bool {
    support::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{addr}/{repository}:v1"),
    ])
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_pushed_by_other_tools_is_sealed_from_the_registry() {
    let Some(registry) = seal_oci_registry::testing::TestRegistry::start() else {
        return;
    };
    let wasm = std::fs::read(guest("echo")).unwrap();
    let layout = tempfile::tempdir().unwrap();
    let digest = wasm_oci_layout(layout.path(), &wasm, "application/vnd.wasm.config.v0+json");
    if !skopeo_push(layout.path(), registry.addr(), "team/echo") {
        return;
    }
    let image = tempfile::tempdir().unwrap();
    let image_digest = wasm_oci_layout(
        image.path(),
        &wasm,
        "application/vnd.oci.image.config.v1+json",
    );
    skopeo_push(image.path(), registry.addr(), "team/image");

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let reference = format!("oci://{}/team/echo@{digest}", registry.addr());
    let p = s.seal_json(&["publish", &reference]);
    assert_eq!(
        (p["function"].as_str(), p["version"].as_u64()),
        (Some("echo"), Some(1)),
        "{p}"
    );
    // Sealed under Seal's own manifest: a digest of its own, the component's
    // bytes unchanged, the registry reference as its source.
    assert_ne!(p["digest"], digest.as_str());
    s.seal_json(&["deploy", "echo", "1"]);
    assert_eq!(s.get("/echo/").await.status(), 200);
    let inspected = s.seal_json(&["inspect", "echo@1"]);
    assert!(inspected.to_string().contains(&reference), "{inspected}");

    // A tag can move: only a digest pin is taken.
    s.seal(&[
        "publish",
        &format!("oci://{}/team/echo:v1", registry.addr()),
    ])
    .assert_fails_with("pin the artifact by digest");
    // Not a component artifact.
    s.seal(&[
        "publish",
        &format!("oci://{}/team/image@{image_digest}", registry.addr()),
    ])
    .assert_fails_with("not a Wasm component artifact");
    // Nothing there.
    let absent = seal_artifact::sha256_digest(b"nothing");
    s.seal(&[
        "publish",
        &format!("oci://{}/team/echo@{absent}", registry.addr()),
    ])
    .assert_fails_with("is not in");
}
