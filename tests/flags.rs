//! End-to-end feature flags management: `seal flags apply|list|get|
//! history|delete` against the real server — flagd files checked by name,
//! each change an audited revision.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::Server;

const FLAGS: &str = r##"{
  "flags": {
    "new-checkout": {
      "state": "ENABLED",
      "variants": {"on": true, "off": false},
      "defaultVariant": "off",
      "targeting": {"fractional": [["on", 10], ["off", 90]]}
    },
    "banner": {
      "state": "DISABLED",
      "variants": {"red": "#f00", "blue": "#00f"},
      "defaultVariant": "red"
    }
  }
}"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_applied_as_checked_audited_revisions_per_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };

    let applied = s.seal_json(&[
        "flags",
        "apply",
        &file("flags.json", FLAGS),
        "--env",
        "staging",
    ]);
    assert_eq!(applied["revision"], 1, "{applied:#}");
    assert_eq!(applied["changed"], json!(["banner", "new-checkout"]));
    let list = s.seal_json(&["flags", "list", "--env", "staging"]);
    assert_eq!(list["flags"][1]["key"], "new-checkout", "{list:#}");
    assert_eq!(list["flags"][1]["targeting"], true);
    assert_eq!(list["flags"][0]["state"], "DISABLED");
    // Per environment: production has none.
    assert_eq!(
        s.seal_json(&["flags", "list", "--env", "production"])["flags"],
        json!([])
    );

    // Bad files are refused naming the flag and field; nothing changes.
    s.seal(&[
        "flags",
        "apply",
        &file("bad.json", "{\"flags\": "),
        "--env",
        "staging",
    ])
    .assert_fails_with("not JSON");
    s.seal(&[
        "flags",
        "apply",
        &file(
            "default.json",
            r#"{"flags": {"banner": {"state": "ENABLED", "variants": {"red": "r"}, "defaultVariant": "green"}}}"#,
        ),
        "--env",
        "staging",
    ])
    .assert_fails_with("flags.banner.defaultVariant: \"green\" is not one of its variants (red)");
    s.seal(&[
        "flags",
        "apply",
        &file("types.json", r#"{"flags": {"x": {"state": "ENABLED", "variants": {"a": 1, "b": "two"}, "defaultVariant": "a"}}}"#),
        "--env",
        "staging",
    ])
    .assert_fails_with("flags.x.variants.b");
    s.seal(&[
        "flags",
        "apply",
        &file("flags.json", FLAGS),
        "--env",
        "nowhere",
    ])
    .assert_fails_with("nowhere");
    assert_eq!(
        s.seal_json(&["flags", "list", "--env", "staging"])["revision"],
        1
    );

    // A second file replaces by key and keeps the rest.
    s.seal_json(&[
        "flags",
        "apply",
        &file(
            "banner.json",
            r##"{"flags": {"banner": {"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "blue"}}}"##,
        ),
        "--env",
        "staging",
    ]);
    let banner = s.seal_json(&["flags", "get", "banner", "--env", "staging"]);
    assert_eq!(banner["revision"], 2);
    assert_eq!(banner["definition"]["defaultVariant"], "blue", "{banner:#}");
    let deleted = s.seal_json(&["flags", "delete", "new-checkout", "--env", "staging"]);
    assert_eq!(deleted["revision"], 3);
    s.seal(&["flags", "get", "new-checkout", "--env", "staging"])
        .assert_fails_with("no flag \"new-checkout\" in staging");
    s.seal(&["flags", "delete", "new-checkout", "--env", "staging"])
        .assert_fails_with("no flag");

    let history = s.seal_json(&["flags", "history", "--env", "staging"]);
    let revisions: Vec<_> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        [
            (3, "delete".to_owned()),
            (2, "apply".to_owned()),
            (1, "apply".to_owned())
        ]
    );
    let of_banner = s.seal_json(&["flags", "history", "banner", "--env", "staging"]);
    assert_eq!(of_banner["revisions"].as_array().unwrap().len(), 2);
    let text = s.seal(&["flags", "history", "--env", "staging"]).stdout;
    assert!(
        text.contains("delete") && text.contains("new-checkout"),
        "{text}"
    );

    // A viewer reads, never writes; every change is audited.
    let tok = s.seal_json(&["token", "create", "--role", "viewer"]);
    let viewer = [("SEAL_TOKEN", tok["token"].as_str().unwrap())];
    assert!(
        s.seal_env(&["flags", "list", "--env", "staging"], &viewer)
            .ok
    );
    assert!(
        !s.seal_env(&["flags", "delete", "banner", "--env", "staging"], &viewer)
            .ok
    );
    let log = s.api_get("/v1/audit?limit=50").await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "flags.apply").count(), 2);
    assert_eq!(actions.iter().filter(|a| **a == "flags.delete").count(), 1);
}

/// What the `flagged` guest got from its OFREP evaluation: status and body.
async fn evaluate(s: &Server, query: &str) -> (u16, serde_json::Value) {
    let r = s.get_host("flagged.staging.localhost", query).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let (status, body) = text.split_once(' ').unwrap_or_else(|| panic!("{text}"));
    (
        status.parse().unwrap_or_else(|_| panic!("{text}")),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_evaluates_its_declared_flags_over_ofrep_and_a_change_applies_at_its_next_request()
{
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // A bad flag key in the manifest is refused at publish.
    let bad = s.seal(&[
        "publish",
        support::guest("flagged").to_str().unwrap(),
        "--name",
        "flagged",
        "--flag",
        "bad key",
    ]);
    assert!(
        !bad.ok && bad.stderr.contains("capabilities.flags"),
        "{}",
        bad.stderr
    );
    support::publish_file(
        &s,
        &support::guest("flagged"),
        "flagged",
        &["--flag", "new-checkout", "--flag", "color"],
    );
    let inspect = s.seal_json(&["inspect", "flagged@1"]).to_string();
    assert!(
        inspect.contains(r#""flags":["new-checkout","color"]"#),
        "{inspect}"
    );
    s.seal_json(&["deploy", "flagged", "1", "-e", "staging"]);

    // Declared, but the environment has no such flag yet: OFREP's 404.
    let (status, body) = evaluate(&s, "/flag?key=new-checkout&user=ann").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errorCode"], "FLAG_NOT_FOUND");

    let file = dir.path().join("flags.json");
    std::fs::write(&file, FLAGS).unwrap();
    s.seal_json(&["flags", "apply", file.to_str().unwrap(), "--env", "staging"]);
    let (status, body) = evaluate(&s, "/flag?key=new-checkout&user=ann").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], "new-checkout");
    assert_eq!(body["reason"], "TARGETING_MATCH");
    let first = body["variant"].clone();
    // Sticky: the same user gets the same variant every time.
    for _ in 0..5 {
        assert_eq!(
            evaluate(&s, "/flag?key=new-checkout&user=ann").await.1["variant"],
            first
        );
    }

    // A change takes effect at the next request, with no deploy.
    std::fs::write(
        &file,
        r#"{"flags": {"new-checkout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}}"#,
    )
    .unwrap();
    s.seal_json(&["flags", "apply", file.to_str().unwrap(), "--env", "staging"]);
    let (status, body) = evaluate(&s, "/flag?key=new-checkout&user=ann").await;
    assert_eq!(
        (status, &body["value"], &body["reason"]),
        (200, &json!(true), &json!("STATIC")),
        "{body}"
    );

    // A flag the manifest does not declare is refused in OFREP's format,
    // even though the environment has it.
    let (status, body) = evaluate(&s, "/flag?key=banner&user=ann").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["key"], "banner");
    assert_eq!(body["errorCode"], "GENERAL");
    assert!(
        body["errorDetails"]
            .as_str()
            .unwrap()
            .contains("does not declare"),
        "{body}"
    );

    // Bulk evaluation answers the declared flags the environment has.
    let (status, body) = evaluate(&s, "/all?user=ann").await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["new-checkout"], "{body}");

    // Metrics count evaluations per flag and variant.
    let metrics = s.api_text("/metrics").await;
    let on = support::metric(
        &metrics,
        "seal_flag_evaluations_total",
        &[
            ("function", "flagged"),
            ("environment", "staging"),
            ("flag", "new-checkout"),
            ("variant", "on"),
        ],
    );
    assert!(on.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(
        support::metric(
            &metrics,
            "seal_flag_variant_errors_total",
            &[
                ("function", "flagged"),
                ("environment", "staging"),
                ("flag", "new-checkout"),
                ("variant", "on"),
            ],
        ),
        Some(0.0)
    );

    // The invocation's log record lists the flags it evaluated.
    let logs = s.api_text("/v1/functions/flagged/logs?limit=50").await;
    assert!(
        logs.lines()
            .any(|l| l.contains("\"flags\":[{\"key\":\"new-checkout\",\"variant\":\"on\"}]")),
        "{logs}"
    );
}

/// What the `flags-js` guest's OpenFeature client answered.
async fn evaluate_js(s: &Server, user: &str, key: &str) -> serde_json::Value {
    let r = s
        .get_host(
            "flagsjs.staging.localhost",
            &format!("/?user={user}&key={key}"),
        )
        .await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A JavaScript component (componentize-js) that uses the OpenFeature server
/// SDK with the published `@openfeature/ofrep-provider`, unchanged, pointed
/// at `http://flags.seal.internal`: its `fetch` calls are answered by the
/// runtime. `scripts/build-foreign-guests` builds it from
/// tests/foreign/js-flags; `scripts/test` and CI always do and set
/// SEAL_REQUIRE_FOREIGN_GUESTS, so there this test cannot pass without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_openfeature_ofrep_provider_reads_flags_inside_a_javascript_component() {
    let wasm = support::repo().join("target/foreign-guests/flags-js.wasm");
    if !wasm.is_file() {
        assert!(
            std::env::var_os("SEAL_REQUIRE_FOREIGN_GUESTS").is_none(),
            "SEAL_REQUIRE_FOREIGN_GUESTS is set but {} is missing; run scripts/build-foreign-guests",
            wasm.display()
        );
        eprintln!("skipping: run scripts/build-foreign-guests to build the flags-js guest");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    support::publish_file(&s, &wasm, "flagsjs", &["--flag", "greeting"]);
    s.seal_json(&["deploy", "flagsjs", "1", "-e", "staging"]);

    // No such flag in the environment yet: the SDK falls back to the
    // default and says why, as it would against any OFREP server.
    let body = evaluate_js(&s, "ann", "greeting").await;
    assert_eq!(body["value"], "off", "{body}");
    assert_eq!(body["reason"], "ERROR", "{body}");
    assert_eq!(body["errorCode"], "FLAG_NOT_FOUND", "{body}");

    let file = dir.path().join("flags.json");
    std::fs::write(
        &file,
        r#"{"flags": {
          "greeting": {"state": "ENABLED", "variants": {"hello": "hello", "hi": "hi"},
                       "defaultVariant": "hello",
                       "targeting": {"fractional": [["hi", 50], ["hello", 50]]}},
          "banner": {"state": "ENABLED", "variants": {"red": "red"}, "defaultVariant": "red"}
        }}"#,
    )
    .unwrap();
    s.seal_json(&["flags", "apply", file.to_str().unwrap(), "--env", "staging"]);
    // `fractional` through the client: each user sticks to one variant,
    // and over a few users both variants show.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12 {
        let user = format!("user-{i}");
        let first = evaluate_js(&s, &user, "greeting").await;
        assert_eq!(first["reason"], "TARGETING_MATCH", "{first}");
        assert_eq!(first["value"], first["variant"], "{first}");
        assert_eq!(evaluate_js(&s, &user, "greeting").await, first);
        seen.insert(first["value"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A change takes effect at the next request, with no deploy.
    std::fs::write(
        &file,
        r#"{"flags": {
          "greeting": {"state": "ENABLED", "variants": {"hello": "hello", "hi": "hi"}, "defaultVariant": "hi"},
          "banner": {"state": "ENABLED", "variants": {"red": "red"}, "defaultVariant": "red"}
        }}"#,
    )
    .unwrap();
    s.seal_json(&["flags", "apply", file.to_str().unwrap(), "--env", "staging"]);
    let body = evaluate_js(&s, "ann", "greeting").await;
    assert_eq!(
        (&body["value"], &body["reason"]),
        (&json!("hi"), &json!("STATIC")),
        "{body}"
    );

    // A flag the manifest does not declare, though the environment has it:
    // refused (OFREP's 403), so the client falls back to its default.
    let body = evaluate_js(&s, "ann", "banner").await;
    assert_eq!(body["value"], "off", "{body}");
    assert_eq!(body["reason"], "ERROR", "{body}");
    assert_eq!(body["errorCode"], "GENERAL", "{body}");
}
