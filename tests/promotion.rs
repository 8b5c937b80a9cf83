//! End-to-end promotion: an environment's pipeline (`seal env create
//! production --after staging --soak …`), the evidence a version needs
//! where it must have served first, the refusals that name what lacks,
//! and an admin's audited override, against the real server.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Server, guest, header, publish_file};

/// The version `hello` answers with in `env`.
async fn serves_in(s: &Server, env: &str) -> String {
    let r = s.get_host(&format!("hello.{env}.localhost"), "/").await;
    assert_eq!(r.status(), 200, "hello in {env}");
    header(&r, "seal-version")
}

async fn audited(s: &Server, matches: impl Fn(&Value) -> bool) -> Option<Value> {
    let log = s.api_get("/v1/audit?limit=50").await;
    log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| matches(e))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_reaches_production_only_with_its_evidence_from_staging_or_an_admins_audited_override()
 {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // Three versions of one guest, each asking for less time than the one
    // before (a narrowing needs no approval).
    for (v, timeout) in [(1, "30s"), (2, "20s"), (3, "10s")] {
        let published = publish_file(&s, &guest("echo"), "hello", &["--timeout", timeout]);
        assert_eq!(published.0, v);
    }
    s.seal_json(&["env", "create", "staging"]);

    // production exists (the server's default): create gives it the
    // pipeline of the interface.
    s.seal_json(&[
        "env",
        "create",
        "production",
        "--after",
        "staging",
        "--soak",
        "2s",
    ]);
    let env = s.seal_json(&["env", "show", "production"]);
    assert_eq!(env["pipeline"]["after"], "staging", "{env:#}");
    assert_eq!(env["pipeline"]["soak_ms"], 2000, "{env:#}");
    assert_eq!(env["pipeline"]["updated_by"], "admin", "{env:#}");
    let text = s.seal(&["env", "show", "production"]).stdout;
    assert!(
        text.contains(
            "pipeline: after staging; a version needs to have served in staging, for at least 2s"
        ),
        "{text}"
    );
    let text = s.seal(&["env", "show", "staging"]).stdout;
    assert!(text.contains("followed by: production"), "{text}");
    assert!(text.contains("pipeline: none"), "{text}");

    // Bad pipelines are refused by name and change nothing.
    s.seal(&["env", "update", "production", "--after", "production"])
        .assert_fails_with("production cannot follow itself");
    s.seal(&["env", "update", "staging", "--after", "production"])
        .assert_fails_with(
            "staging after production makes a cycle: staging after production after staging",
        );
    s.seal(&["env", "update", "production", "--after", "qa"])
        .assert_fails_with("qa");
    s.seal(&["env", "update", "production", "--soak", "31d"])
        .assert_fails_with("longer than the 30 days allowed");
    s.seal(&["env", "update", "staging", "--soak", "1m"])
        .assert_fails_with("staging follows no environment yet");
    let (code, body) = s
        .api_post(
            "/v1/environments",
            serde_json::json!({"name": "qa", "soak_ms": 1000}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        s.seal_json(&["env", "show", "production"])["pipeline"]["soak_ms"],
        2000
    );
    let tok = s.seal_json(&["token", "create", "--role", "deployer"]);
    let deployer = [("SEAL_TOKEN", tok["token"].as_str().unwrap())];
    s.seal_env(&["env", "update", "production", "--soak", "1s"], &deployer)
        .assert_fails_with("admin");

    // hello@1 never served in staging: refused, with what lacks, audited.
    s.seal(&["deploy", "hello", "1", "-e", "production"])
        .assert_fails_with("hello@1 may not serve in production yet: hello@1 never served all of staging's traffic (2s required)");
    let refused = audited(&s, |e| e["action"] == "deploy" && e["outcome"] == "refused")
        .await
        .expect("the refusal is audited");
    assert_eq!(refused["object"], "production/hello", "{refused:#}");
    assert_eq!(refused["detail"]["version"], 1, "{refused:#}");

    // Served in staging, but not yet long enough and with no traffic.
    s.seal_json(&["deploy", "hello", "1", "-e", "staging"]);
    let out = s.seal(&["deploy", "hello", "1", "-e", "production"]);
    out.assert_fails_with("required");
    assert!(
        out.stderr.contains("hello@1 served no traffic in staging"),
        "{}",
        out.stderr
    );
    let evidence = s
        .api_get("/v1/environments/production/evidence/hello/1")
        .await;
    assert_eq!(evidence["invocations"], 0, "{evidence:#}");
    assert!(
        evidence["served_ms"].as_u64().unwrap() < 2000,
        "{evidence:#}"
    );

    // With traffic and its soak done, it goes through.
    for _ in 0..5 {
        assert_eq!(serves_in(&s, "staging").await, "1");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let evidence = s
        .api_get("/v1/environments/production/evidence/hello/1")
        .await;
    assert_eq!(evidence["missing"], serde_json::json!([]), "{evidence:#}");
    assert_eq!(evidence["invocations"], 5, "{evidence:#}");
    s.seal_json(&["deploy", "hello", "1", "-e", "production"]);
    assert_eq!(serves_in(&s, "production").await, "1");
    // The completed soak is recorded once, signed by the server.
    let verified = s.seal(&["verify", "hello@1", "-e", "staging"]);
    assert!(
        verified
            .stdout
            .contains("signature ok, subject ok, verification summary: soak PASSED in staging"),
        "{}{}",
        verified.stdout,
        verified.stderr
    );

    // hello@2 served staging and was rolled back there: never promoted.
    s.seal_json(&["deploy", "hello", "2", "-e", "staging"]);
    for _ in 0..3 {
        assert_eq!(serves_in(&s, "staging").await, "2");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    s.seal_json(&["rollback", "hello", "-e", "staging"]);
    s.seal(&["deploy", "hello", "2", "-e", "production"])
        .assert_fails_with("hello@2 was rolled back in staging");

    // Only an admin may override, and the override is audited with what
    // lacked.
    s.seal_env(
        &[
            "deploy",
            "hello",
            "2",
            "-e",
            "production",
            "--allow-missing-evidence",
        ],
        &deployer,
    )
    .assert_fails_with("needs an admin token");
    assert_eq!(serves_in(&s, "production").await, "1");
    s.seal_json(&[
        "deploy",
        "hello",
        "2",
        "-e",
        "production",
        "--allow-missing-evidence",
    ]);
    assert_eq!(serves_in(&s, "production").await, "2");
    let overridden = audited(&s, |e| e["outcome"] == "evidence_overridden")
        .await
        .expect("the override is audited");
    assert_eq!(overridden["actor"], "admin", "{overridden:#}");
    assert!(
        overridden["detail"]["missing"][0]
            .as_str()
            .unwrap()
            .contains("rolled back in staging"),
        "{overridden:#}"
    );
    // Going back to a version that served production before needs no
    // evidence (a rollback returns to an approved state).
    s.seal_json(&["rollback", "hello", "-e", "production"]);
    assert_eq!(serves_in(&s, "production").await, "1");

    // A required verification: none exists yet for hello@3, so a release
    // file that deploys it is refused in its plan, before anything moves.
    s.seal_json(&["deploy", "hello", "3", "-e", "staging"]);
    for _ in 0..3 {
        assert_eq!(serves_in(&s, "staging").await, "3");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let env = s.seal_json(&["env", "update", "production", "--require-verification"]);
    assert_eq!(env["pipeline"]["require_verification"], true, "{env:#}");
    assert_eq!(env["pipeline"]["soak_ms"], 2000, "kept: {env:#}");
    let file = dir.path().join("release.toml");
    std::fs::write(
        &file,
        "[environments.production.functions.hello]\nversion = 3\n",
    )
    .unwrap();
    s.seal(&["apply", "-f", file.to_str().unwrap()])
        .assert_fails_with("hello@3 has no passed verification in staging");
    assert_eq!(serves_in(&s, "production").await, "1");

    // Standalone again: nothing is asked.
    let env = s.seal_json(&["env", "update", "production", "--standalone"]);
    assert!(env.get("pipeline").is_none(), "{env:#}");
    let applied = s.seal_json(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(applied["succeeded"], true, "{applied:#}");
    assert_eq!(serves_in(&s, "production").await, "3");

    // A pipeline again, stricter than when hello@1 and hello@3 came in:
    // going back to either (a deploy, a reverted release file) is a
    // return to what production served, not a promotion, so it needs no
    // evidence, as a rollback needs none. One rolled back in production
    // is no such state: hello@2 is refused.
    s.seal_json(&[
        "env",
        "update",
        "production",
        "--after",
        "staging",
        "--soak",
        "2s",
        "--require-verification",
    ]);
    let evidence = s
        .api_get("/v1/environments/production/evidence/hello/1")
        .await;
    assert!(
        evidence["missing"].as_array().unwrap().is_empty()
            && evidence["returning"]
                .as_str()
                .unwrap()
                .starts_with("hello@1 served all of production's traffic from"),
        "{evidence:#}"
    );
    s.seal_json(&[
        "deploy",
        "hello",
        "1",
        "-e",
        "production",
        "--allow-new-permissions",
    ]);
    assert_eq!(serves_in(&s, "production").await, "1");
    let applied = s.seal_json(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(applied["succeeded"], true, "{applied:#}");
    assert_eq!(serves_in(&s, "production").await, "3");
    s.seal(&[
        "deploy",
        "hello",
        "2",
        "-e",
        "production",
        "--allow-new-permissions",
    ])
    .assert_fails_with("hello@2 was rolled back in staging");
}

/// `shop` answers in `env` with this status.
async fn shop(s: &Server, env: &str, path: &str) -> reqwest::StatusCode {
    s.get_host(&format!("shop.{env}.localhost"), path)
        .await
        .status()
}

/// Runs `seal verify-release` and returns its JSON report and whether it
/// exited 0.
fn verify(s: &Server, candidate: &str, extra: &[&str]) -> (Value, bool) {
    let mut args = vec![
        "verify-release",
        candidate,
        "--env",
        "staging",
        "--replay",
        "production",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = s.seal(&args);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}{}", out.stdout, out.stderr));
    (report, out.ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_finds_the_one_route_a_candidate_changed_and_its_signed_verdict_gates_production()
{
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // shop@2 changed /price; shop@3 and shop@4 did not (the same guest,
    // each asking for less time).
    for (v, timeout) in [(1, "30s"), (2, "20s"), (3, "10s"), (4, "5s")] {
        let published = publish_file(&s, &guest("shop"), "shop", &["--timeout", timeout]);
        assert_eq!(published.0, v);
    }
    s.seal_json(&["deploy", "shop", "1", "-e", "production"]);

    // Nothing captured yet: refused, saying how to capture.
    s.seal(&[
        "verify-release",
        "shop@2",
        "--env",
        "staging",
        "--replay",
        "production",
    ])
    .assert_fails_with("no captured requests of shop in production");

    s.seal_json(&[
        "capture",
        "start",
        "shop",
        "--env",
        "production",
        "--rate",
        "100%",
    ]);
    for i in 0..10 {
        assert_eq!(
            shop(&s, "production", &format!("/price?item={i}")).await,
            200
        );
        assert_eq!(shop(&s, "production", "/hello").await, 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.seal_json(&["capture", "list"])["captures"][0]["captured"] != 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture never kept 20"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ignoring the price, shop@2 passes (a later run, below, fails it).
    let (report, ok) = verify(&s, "shop@2", &["--ignore", "/price"]);
    assert!(ok && report["passed"] == true, "{report:#}");

    // shop@2: /price differs on every request, /hello on none; the ids
    // and times are learned as noise.
    let (report, ok) = verify(&s, "shop@2", &[]);
    assert!(!ok, "a failed verification exits non-zero: {report:#}");
    assert_eq!(report["passed"], false, "{report:#}");
    assert_eq!(report["baseline_version"], 1);
    assert_eq!(report["requests"], 20);
    assert_eq!(report["mismatches"], 10);
    let route = |r: &Value, name: &str| {
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["route"] == name)
            .unwrap_or_else(|| panic!("no {name}: {r:#}"))
            .clone()
    };
    let price = route(&report, "GET /price");
    assert_eq!(
        (price["requests"].as_u64(), price["mismatches"].as_u64()),
        (Some(10), Some(10))
    );
    assert_eq!(
        price["differences"].as_array().unwrap().len(),
        1,
        "{price:#}"
    );
    assert_eq!(price["differences"][0]["field"], "body /price");
    assert_eq!(price["differences"][0]["baseline"], "10");
    assert_eq!(price["differences"][0]["candidate"], "12");
    let hello = route(&report, "GET /hello");
    assert_eq!(hello["mismatches"], 0, "{hello:#}");
    let noisy: Vec<&str> = report["noisy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for n in [
        "GET /price: body /id",
        "GET /price: body /at",
        "GET /hello: body /id",
    ] {
        assert!(noisy.contains(&n), "{n}: {noisy:?}");
    }
    let text = s.seal(&[
        "verify-release",
        "shop@2",
        "--env",
        "staging",
        "--replay",
        "production",
    ]);
    assert!(
        text.stdout.contains("GET /price: 10 of 10 differ (100%)")
            && text.stdout.contains("body /price differs in 10")
            && text.stdout.contains("GET /hello: 0 of 10 differ (0%)"),
        "{}",
        text.stdout
    );

    // shop@3 passes as it is; the verdict is signed by the server's key.
    let (report, ok) = verify(&s, "shop@3", &[]);
    assert!(ok, "{report:#}");
    assert_eq!(report["mismatches"], 0, "{report:#}");
    let key = s.seal_json(&["trust", "server-key"]);
    assert!(
        key["pem"].as_str().unwrap().contains("BEGIN PUBLIC KEY"),
        "{key:#}"
    );
    let attestations = s.seal_json(&["attestations", "list", "shop@3"]);
    let signed = attestations["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| Some(a["referrer"].as_str().unwrap()) == report["attestation"].as_str())
        .unwrap_or_else(|| panic!("not attached: {attestations:#}"))
        .clone();
    assert_eq!(signed["keyid"], key["keyid"], "{signed:#}");
    assert_eq!(
        signed["envelope"]["payloadType"],
        "application/vnd.in-toto+json"
    );
    // `seal verify` checks it against the server's key and says what it is.
    let verified = s.seal(&["verify", "shop@3", "-e", "staging"]);
    assert!(
        verified.stdout.contains(
            "signature ok, subject ok, verification summary: verification PASSED in staging at"
        ),
        "{}{}",
        verified.stdout,
        verified.stderr
    );

    // Production asks for a passed verification in staging.
    s.seal_json(&[
        "env",
        "update",
        "production",
        "--after",
        "staging",
        "--require-verification",
    ]);
    for v in ["2", "3", "4"] {
        s.seal_json(&["deploy", "shop", v, "-e", "staging"]);
    }
    s.seal(&["deploy", "shop", "2", "-e", "production"])
        .assert_fails_with("shop@2's last verification in staging failed");
    s.seal_json(&["deploy", "shop", "3", "-e", "production"]);
    assert_eq!(shop(&s, "production", "/hello").await, 200);

    // A forged summary (signed by another key) is no evidence, and an
    // unsigned one is refused outright.
    let other = seal_trust::SigningKey::generate();
    let digest = s.seal_json(&["versions", "shop"])["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 4)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "shop@4", "digest": {"sha256": digest}}],
        "predicateType": "https://slsa.dev/verification_summary/v1",
        "predicate": {
            "verifier": {"id": "https://seal.dev/verify-release"},
            "timeVerified": "2099-01-01T00:00:00.000Z",
            "verificationResult": "PASSED",
            "sealVerification": {"environment": "staging", "verdict": "passed"},
        },
    });
    let forged = seal_trust::Envelope::sign(&statement, &other);
    let r = s
        .http
        .post(format!(
            "{}/v1/functions/shop/versions/4/attestations",
            s.api
        ))
        .body(forged.to_json())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut unsigned: Value = serde_json::from_slice(&forged.to_json()).unwrap();
    unsigned["signatures"] = serde_json::json!([]);
    let r = s
        .http
        .post(format!(
            "{}/v1/functions/shop/versions/4/attestations",
            s.api
        ))
        .body(unsigned.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.seal(&["deploy", "shop", "4", "-e", "production"])
        .assert_fails_with("shop@4 has no passed verification in staging");
    // A pass with a looser threshold (or ignored fields) is reported, but is
    // no evidence either.
    let (report, ok) = verify(&s, "shop@4", &["--max-mismatch", "50%"]);
    assert!(ok && report["passed"] == true, "{report:#}");
    s.seal(&["deploy", "shop", "4", "-e", "production"])
        .assert_fails_with("shop@4 has no passed verification in staging");
    // Nor can an environment be verified against its own traffic.
    s.seal(&[
        "verify-release",
        "shop@4",
        "--env",
        "staging",
        "--replay",
        "staging",
    ])
    .assert_fails_with("compares staging with itself");

    // A later failed verification revokes a pass: against production's
    // shop@2 (an admin's override), shop@3's prices differ.
    s.seal_json(&[
        "deploy",
        "shop",
        "2",
        "-e",
        "production",
        "--allow-missing-evidence",
        "--allow-new-permissions",
    ]);
    let (report, ok) = verify(&s, "shop@3", &[]);
    assert!(!ok && report["baseline_version"] == 2, "{report:#}");
    // Refused although shop@3 served production before: a revoked pass
    // makes it no approved state to return to.
    s.seal(&["deploy", "shop", "3", "-e", "production"])
        .assert_fails_with("shop@3's last verification in staging failed");
    // The superseded pass is gone: of each kind the server keeps only its
    // latest summary, so its own attestations stay bounded and a
    // revoking failure always finds room.
    let listed = s.seal_json(&["attestations", "list", "shop@3"]);
    let verifications: Vec<(String, String)> = listed["attestations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["keyid"] == key["keyid"])
        .filter_map(|a| {
            use base64::Engine as _;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(a["envelope"]["payload"].as_str().unwrap())
                .unwrap();
            let st: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let p = &st["predicate"];
            p["sealVerification"].is_object().then(|| {
                (
                    a["referrer"].as_str().unwrap().to_owned(),
                    p["verificationResult"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(
        verifications,
        [(
            report["attestation"].as_str().unwrap().to_owned(),
            "FAILED".to_owned()
        )],
        "{listed:#}"
    );

    // A candidate the staging policy refuses is not replayed at all.
    let pubkey = dir.path().join("other.pub");
    std::fs::write(&pubkey, other.public_key().to_pem()).unwrap();
    s.seal_json(&[
        "policy",
        "set",
        "staging",
        "--require-signature",
        "--trusted-key",
        pubkey.to_str().unwrap(),
    ]);
    let refused = s.seal(&[
        "verify-release",
        "shop@3",
        "--env",
        "staging",
        "--replay",
        "production",
    ]);
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("shop@3 refused by staging's policy"),
        "{}",
        refused.stderr
    );
}
