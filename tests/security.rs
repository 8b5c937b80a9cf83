//! End-to-end: access control, config and secrets, capabilities,
//! signatures and policy — each attack the issue lists is a test here,
//! against the real server on 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::{Server, assert_error, guest, publish_file};

/// A request to the API with a given token (or none).
async fn call(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", s.api));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn create_token(s: &Server, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let v = s.seal_json(&all);
    (
        v["token"].as_str().unwrap().to_owned(),
        v["record"]["id"].as_str().unwrap().to_owned(),
    )
}

fn routed_version(s: &Server, env: &str) -> Value {
    let status = s.seal_json(&["status", "svc"]);
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["environment"] == env)
        .map(|r| r["versions"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_environments_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    // The first start wrote an admin token, readable by its owner only.
    let path = dir.path().join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin.token mode {mode:o}");
    }
    assert!(s.token.starts_with("seal_"));

    publish_file(&s, &guest("echo"), "svc", &[]);
    s.seal_json(&["env", "create", "staging"]);
    let audit_len = || async {
        s.api_get("/v1/audit?limit=1000").await["entries"]
            .as_array()
            .unwrap()
            .len()
    };

    // No token, a malformed header, an unknown token: 401, health open.
    let r = call(&s, reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status(), 200);
    let r = call(&s, reqwest::Method::GET, "/v1/functions", None, None).await;
    assert_eq!(
        support::header(&r, "www-authenticate"),
        "Bearer realm=\"seal\""
    );
    assert_error(r, 401, "unauthorized").await;
    let r = call(
        &s,
        reqwest::Method::GET,
        "/metrics",
        Some("seal_nope"),
        None,
    )
    .await;
    assert_error(r, 401, "unauthorized").await;
    let before = audit_len().await;
    let r = call(
        &s,
        reqwest::Method::POST,
        "/v1/functions/svc/deploy",
        None,
        Some(json!({"version": 1})),
    )
    .await;
    assert_error(r, 401, "unauthorized").await;
    assert_eq!(routed_version(&s, "production"), Value::Null);

    // A viewer reads but changes nothing.
    let (viewer, _) = create_token(&s, &["--role", "viewer", "--name", "watcher"]);
    let r = call(
        &s,
        reqwest::Method::GET,
        "/v1/functions/svc",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        &s,
        reqwest::Method::POST,
        "/v1/functions/svc/deploy",
        Some(&viewer),
        Some(json!({"version": 1})),
    )
    .await;
    let body = assert_error(r, 403, "forbidden").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs deployer"),
        "{body}"
    );
    let r = call(&s, reqwest::Method::GET, "/v1/tokens", Some(&viewer), None).await;
    assert_error(r, 403, "forbidden").await;

    // A deployer limited to staging: staging yes, production no.
    let (deployer, deployer_id) = create_token(
        &s,
        &["--role", "deployer", "--env", "staging", "--name", "ci"],
    );
    let who = s.seal_env(&["whoami"], &[("SEAL_TOKEN", &deployer)]);
    assert!(who.ok && who.stdout.contains("ci") && who.stdout.contains("deployer"));
    let out = s.seal_env(
        &["deploy", "svc", "1", "-e", "production"],
        &[("SEAL_TOKEN", &deployer)],
    );
    out.assert_fails_with("may change only staging");
    assert_eq!(routed_version(&s, "production"), Value::Null);
    let out = s.seal_env(
        &["rollback", "svc", "-e", "production"],
        &[("SEAL_TOKEN", &deployer)],
    );
    out.assert_fails_with("may change only staging");
    let ok = s.seal_env(
        &["deploy", "svc", "1", "-e", "staging", "--output", "json"],
        &[("SEAL_TOKEN", &deployer)],
    );
    assert!(ok.ok, "{}", ok.stderr);
    // The deployer cannot mint tokens.
    let out = s.seal_env(
        &["token", "create", "--role", "admin"],
        &[("SEAL_TOKEN", &deployer)],
    );
    out.assert_fails_with("needs admin");
    // Refusals changed nothing: the only new audit entries are the two
    // token creations and the staging deploy.
    assert_eq!(audit_len().await, before + 3);
    let audit = s.api_get("/v1/audit?limit=1").await;
    assert_eq!(audit["entries"][0]["actor"], "ci");

    // Tokens are listed without secrets; a revoked token gets 401.
    let list = s.seal(&["token", "list", "--output", "json"]);
    assert!(list.ok);
    assert!(!list.stdout.contains(&deployer) && !list.stdout.contains(&viewer));
    assert!(!list.stdout.contains(&s.token));
    let revoked = s.seal_json(&["token", "revoke", &deployer_id]);
    assert!(revoked["record"]["revoked_at"].is_i64());
    let r = call(
        &s,
        reqwest::Method::GET,
        "/v1/functions",
        Some(&deployer),
        None,
    )
    .await;
    let body = assert_error(r, 401, "unauthorized").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    let out = s.seal_env(
        &["deploy", "svc", "1", "-e", "staging"],
        &[("SEAL_TOKEN", &deployer)],
    );
    out.assert_fails_with("revoked");

    // Without a token file and no SEAL_TOKEN, the CLI says what to do.
    let empty = tempfile::tempdir().unwrap();
    let out = s.seal_env(
        &["functions"],
        &[("SEAL_DATA_DIR", empty.path().to_str().unwrap())],
    );
    out.assert_fails_with("SEAL_TOKEN");

    // A restart does not mint another admin token; the old one works.
    let token = s.token.clone();
    s.stop();
    let s = Server::start(dir.path());
    assert_eq!(s.token, token);
    let tokens = s.api_get("/v1/tokens").await;
    let admins = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin")
        .count();
    assert_eq!(admins, 1);
}
