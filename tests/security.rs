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

    // An admin limited to staging cannot reach beyond it: no tokens, no
    // policies, no environments.
    let (staging_admin, _) = create_token(&s, &["--role", "admin", "--env", "staging"]);
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/v1/tokens",
            json!({"role": "admin"}),
        ),
        (reqwest::Method::PUT, "/v1/policies/production", json!({})),
        (
            reqwest::Method::POST,
            "/v1/environments",
            json!({"name": "qa"}),
        ),
    ] {
        let r = call(&s, method, path, Some(&staging_admin), Some(body)).await;
        let body = assert_error(r, 403, "forbidden").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("admin token for all"),
            "{path}: {body}"
        );
    }

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
        .filter(|t| t["role"] == "admin" && t["environments"].is_null())
        .count();
    assert_eq!(admins, 1, "{tokens}");
}

/// Runs the CLI with `input` on its standard input.
fn seal_stdin(s: &Server, args: &[&str], input: &str) -> support::CliOutput {
    use std::io::Write;
    let mut child = std::process::Command::new(support::seal_bin())
        .args(args)
        .env("SEAL_SERVER", &s.api)
        .env("SEAL_DATA_DIR", &s.data_dir)
        .env_remove("SEAL_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    support::CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn guest_env(s: &Server) -> Value {
    let r = s.get("/svc/").await;
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["env"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_secrets_reach_the_guest_and_never_leak() {
    const SECRET: &str = "s3cr3t-Value-7f1e9c";
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    publish_file(
        &s,
        &guest("echo"),
        "svc",
        &["--config-key", "GREETING", "--config-key", "API_KEY"],
    );
    s.seal_json(&["deploy", "svc", "1"]);
    assert_eq!(guest_env(&s).await["SEAL_VERSION"], "1");

    // Config: plain, per environment, only declared keys reach the guest.
    let out = s.seal(&["config", "set", "svc", "GREETING=hi", "UNDECLARED=x"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("does not declare UNDECLARED"),
        "{}",
        out.stderr
    );
    // The secret comes from stdin and is not echoed.
    let out = seal_stdin(
        &s,
        &["secrets", "set", "svc", "API_KEY"],
        &format!("{SECRET}\n"),
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
    assert!(out.stdout.contains("revision 2"), "{}", out.stdout);
    let env = guest_env(&s).await;
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["API_KEY"], SECRET);
    assert!(env.get("UNDECLARED").is_none(), "{env}");

    // The revision is on the invocation's log record.
    let logs = s.api_text("/v1/functions/svc/logs?limit=100").await;
    let last = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|r| r["kind"] == "invocation")
        .unwrap();
    assert_eq!(last["config_revision"], 2, "{last}");

    // Mix-ups and bad input are refused, naming keys, never values.
    let out = s.seal(&["config", "set", "svc", &format!("API_KEY={SECRET}")]);
    out.assert_fails_with("API_KEY is a secret");
    assert!(!out.stderr.contains(SECRET));
    let big = "v".repeat(40_000) + SECRET;
    let r = s
        .http
        .post(format!("{}/v1/functions/svc/secrets", s.api))
        .json(&json!({"set": {"BIG": big}}))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 400, "bad_request").await;
    assert!(!body.to_string().contains(SECRET));
    let r = s
        .http
        .post(format!("{}/v1/functions/svc/secrets", s.api))
        .body(format!("{{\"set\": {{\"K\": \"{SECRET}\"}}, oops"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 400, "bad_request").await;
    assert!(!body.to_string().contains(SECRET), "{body}");
    let out = seal_stdin(&s, &["secrets", "set", "svc", "bad-key"], SECRET);
    out.assert_fails_with("invalid key");
    assert!(!out.stderr.contains(SECRET));

    // A deployer limited to staging cannot touch production's secrets.
    let (staging, _) = create_token(&s, &["--role", "deployer", "--env", "staging"]);
    let r = call(
        &s,
        reqwest::Method::POST,
        "/v1/functions/svc/secrets",
        Some(&staging),
        Some(json!({"environment": "production", "unset": ["API_KEY"]})),
    )
    .await;
    assert_error(r, 403, "forbidden").await;
    assert_eq!(guest_env(&s).await["API_KEY"], SECRET);

    // Nowhere in clear: API answers, audit, history, metrics, logs, CLI, the
    // server's own log, the database file.
    let listed = s.seal(&["secrets", "list", "svc", "--output", "json"]);
    assert!(listed.ok && listed.stdout.contains("API_KEY"));
    let shown = s.seal(&["config", "get", "svc"]);
    assert!(shown.ok && shown.stdout.contains("(secret)") && shown.stdout.contains("hi"));
    let history = s.seal(&["config", "history", "svc"]);
    assert!(history.ok && history.stdout.contains("API_KEY"));
    let mut seen = vec![listed.stdout, shown.stdout, history.stdout, logs];
    for path in [
        "/v1/functions/svc/config",
        "/v1/functions/svc/config/revisions",
        "/v1/audit?limit=1000",
        "/v1/functions/svc/logs?limit=1000",
        "/metrics",
        "/v1/functions/svc",
        "/v1/functions/svc/versions/1",
    ] {
        let r = s.http.get(format!("{}{path}", s.api)).send().await.unwrap();
        assert!(r.status().is_success(), "{path}");
        seen.push(r.text().await.unwrap());
    }
    seen.push(s.log());
    for text in &seen {
        assert!(!text.contains(SECRET), "the secret leaked: {text}");
    }
    let db = std::fs::read(dir.path().join("state.db")).unwrap();
    let wal = std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    }

    // After a restart the secret still decrypts (master key in the data dir).
    s.stop();
    let s = Server::start(dir.path());
    let env = guest_env(&s).await;
    assert_eq!(
        (env["GREETING"].as_str(), env["API_KEY"].as_str()),
        (Some("hi"), Some(SECRET))
    );
    // Unset: gone from the guest at the next invocation.
    assert!(s.seal(&["secrets", "unset", "svc", "API_KEY"]).ok);
    assert!(guest_env(&s).await.get("API_KEY").is_none());
}

/// Hardening: the outbound gate checked names, never the addresses they
/// resolve to, so `*` or a name pointing at 127.0.0.1 reached the server's
/// own network (the cloud metadata address alike). Only a manifest that
/// names the address itself reaches it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_or_star_never_reaches_a_non_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (hook, got) = support::webhook_receiver().await;
    let port: u16 = hook
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    let localhost = format!("localhost:{port}");
    publish_file(
        &s,
        &guest("outbound"),
        "out",
        &["--allow-host", "*", "--allow-host", &localhost],
    );
    // Any host at all needs an admin's approval in every environment.
    let out = s.seal(&["deploy", "out", "1", "-e", "staging"]);
    out.assert_fails_with("+ outbound host *");
    s.seal_json(&[
        "deploy",
        "out",
        "1",
        "-e",
        "staging",
        "--allow-new-permissions",
    ]);
    for target in [
        format!("127.0.0.1:{port}"),
        localhost.clone(),
        "169.254.169.254".to_owned(),
    ] {
        let r = s
            .http
            .get(format!("{}/?host={target}&path=/hook", s.gateway))
            .header("host", "out.staging.localhost")
            .send()
            .await
            .unwrap();
        let (status, body) = (r.status().as_u16(), r.text().await.unwrap());
        assert_eq!(status, 502, "{target}: {body}");
        assert!(body.contains("DestinationIpProhibited"), "{target}: {body}");
    }
    assert!(
        got.lock().unwrap().is_empty(),
        "the loopback listener was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_hosts_are_enforced_and_widening_needs_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (hook, _) = support::webhook_receiver().await;
    let allowed = hook
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .to_owned();
    let port: u16 = allowed.rsplit_once(':').unwrap().1.parse().unwrap();
    let wasm = guest("outbound");
    publish_file(&s, &wasm, "out", &["--allow-host", &allowed]);
    // A first deploy that reaches the network is a widening too.
    let out = s.seal(&["deploy", "out", "1"]);
    out.assert_fails_with("asks for more than nothing");
    s.seal_json(&["deploy", "out", "1", "--allow-new-permissions"]);

    let fetch = |host: String| {
        let s = &s;
        async move {
            let r = s.get(&format!("/out/?host={host}&path=/hook")).await;
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = fetch(allowed.clone()).await;
    assert_eq!((status, body.as_str()), (200, "upstream 204: "));
    // Another host, or the same host on another port: denied inside the
    // guest, before any connection.
    for denied in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{}", port + 1),
    ] {
        let (status, body) = fetch(denied.clone()).await;
        assert_eq!(status, 502, "{denied}: {body}");
        assert!(body.contains("HttpRequestDenied"), "{denied}: {body}");
    }

    // v2 asks for one more host: production refuses without an admin's
    // --allow-new-permissions, and says what widens.
    publish_file(
        &s,
        &wasm,
        "out",
        &["--allow-host", &allowed, "--allow-host", "api.example.org"],
    );
    let out = s.seal(&["deploy", "out", "2"]);
    out.assert_fails_with("+ outbound host api.example.org");
    assert!(
        out.stderr.contains("--allow-new-permissions"),
        "{}",
        out.stderr
    );
    let (deployer, _) = create_token(&s, &["--role", "deployer"]);
    let out = s.seal_env(
        &["deploy", "out", "2", "--allow-new-permissions"],
        &[("SEAL_TOKEN", &deployer)],
    );
    out.assert_fails_with("needs an admin token");
    // Nor can a rollback to a version that never served here.
    let out = s.seal_env(
        &["rollback", "out", "--to", "2"],
        &[("SEAL_TOKEN", &deployer)],
    );
    out.assert_fails_with("+ outbound host api.example.org");
    let status = s.seal_json(&["status", "out"]);
    assert_eq!(status["routes"][0]["versions"][0]["version"], 1);
    let audit = s.api_get("/v1/audit?limit=5").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["outcome"] == "refused" && e["detail"]["permissions"]["widens"] == true),
        "{audit}"
    );

    // Staging is not protected: the diff is shown, the deploy goes on.
    s.seal_json(&["env", "create", "staging"]);
    s.seal_json(&["deploy", "out", "1", "-e", "staging"]);
    let d = s.seal_json(&["deploy", "out", "2", "-e", "staging"]);
    assert_eq!(d["permissions"]["added_hosts"], json!(["api.example.org"]));
    assert_eq!(d["permissions"]["from_version"], 1);

    let d = s.seal_json(&["deploy", "out", "2", "--allow-new-permissions"]);
    assert_eq!(d["permissions"]["widens"], true);
    let (status, _) = fetch(allowed.clone()).await;
    assert_eq!(status, 200);
    // Narrowing back needs no approval.
    let d = s.seal_json(&["deploy", "out", "1"]);
    assert_eq!(
        d["permissions"]["removed_hosts"],
        json!(["api.example.org"])
    );
    assert_eq!(d["permissions"]["widens"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_provenance_and_policy_guard_every_deploy() {
    const SOURCE: &str = "git+https://example.org/team/svc";
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let key = |name: &str| keys.path().join(name).to_str().unwrap().to_owned();
    for name in ["trusted.key", "other.key"] {
        let k = s.seal_json(&["keygen", "--out", &key(name)]);
        assert!(k["keyid"].as_str().unwrap().starts_with("sha256:"), "{k}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key("trusted.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let echo = guest("echo");
    // Four versions of one function, each a different artifact (memory).
    let publish = |memory: &str, extra: &[&str]| {
        let mut args = vec!["--memory", memory];
        args.extend(extra);
        publish_file(&s, &echo, "svc", &args).0
    };
    let trusted = key("trusted.key");
    let other = key("other.key");
    let (trusted_pub, other_pub) = (key("trusted.pub"), key("other.pub"));
    let v1 = publish("64MiB", &["--sign", &trusted, "--source", SOURCE]);
    let v2 = publish("65MiB", &["--sign", &other, "--source", SOURCE]);
    let v3 = publish("66MiB", &[]);
    let v4 = publish("67MiB", &["--sign", &trusted]);
    assert_eq!((v1, v2, v3, v4), (1, 2, 3, 4));

    // The attestation is an OCI referrer of the artifact manifest.
    let atts = s.api_get("/v1/functions/svc/versions/1/attestations").await;
    let att = &atts["attestations"][0];
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("artifacts/index.json")).unwrap())
            .unwrap();
    let version1 = s.api_get("/v1/functions/svc/versions/1").await;
    let digest1 = version1["version"]["digest"].as_str().unwrap().to_owned();
    assert!(
        index["manifests"].as_array().unwrap().iter().any(|m| {
            m["digest"] == att["referrer"]
                && m["annotations"]["dev.seal.subject"] == digest1.as_str()
        }),
        "{index}"
    );
    let referrer_hex = att["referrer"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let referrer: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("artifacts/blobs/sha256").join(referrer_hex)).unwrap(),
    )
    .unwrap();
    assert_eq!(referrer["subject"]["digest"], digest1.as_str());
    let statement: Value =
        serde_json::from_slice(&base64_decode(att["envelope"]["payload"].as_str().unwrap()))
            .unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        digest1.trim_start_matches("sha256:")
    );
    let predicate = &statement["predicate"];
    assert_eq!(
        predicate["buildDefinition"]["externalParameters"]["source"],
        SOURCE
    );
    assert!(predicate["runDetails"]["builder"]["id"].is_string());
    assert!(predicate["runDetails"]["metadata"]["startedOn"].is_string());

    // Production requires a signature by the trusted key and the source.
    s.seal_json(&[
        "policy",
        "set",
        "production",
        "--require-signature",
        "--trusted-key",
        &trusted_pub,
        "--require-provenance",
        &format!("source={SOURCE}"),
    ]);
    let d = s.seal_json(&["deploy", "svc", "1"]);
    assert!(d["trust"].to_string().contains("signature: ok"), "{d}");
    assert_eq!(s.get("/svc/").await.status(), 200);
    for (v, why) in [
        ("2", "signed by untrusted key"),
        ("3", "not signed: production requires a signature"),
        (
            "4",
            "provenance lacks buildDefinition.externalParameters.source",
        ),
    ] {
        let out = s.seal(&["deploy", "svc", v]);
        out.assert_fails_with(why);
        assert!(
            out.stderr.contains("refused by production's policy"),
            "{}",
            out.stderr
        );
    }
    // A progressive deployment and a rollback are held to the same policy.
    let out = s.seal(&[
        "deploy",
        "svc",
        "3",
        "--strategy",
        "canary",
        "--steps",
        "50",
    ]);
    out.assert_fails_with("not signed");
    let out = s.seal(&["rollback", "svc", "--to", "2"]);
    out.assert_fails_with("signed by untrusted key");

    // A valid signature over another digest cannot be attached to v3.
    let r = s
        .http
        .post(format!(
            "{}/v1/functions/svc/versions/3/attestations",
            s.api
        ))
        .json(&att["envelope"])
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 422, "subject_mismatch").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&digest1)
    );
    s.seal(&["deploy", "svc", "3"])
        .assert_fails_with("not signed");
    // Every refusal is in the audit log with its reason; nothing moved.
    let audit = s.api_get("/v1/audit?limit=20").await;
    let refused = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "refused")
        .count();
    assert!(refused >= 6, "{audit}");
    let status = s.seal_json(&["status", "svc"]);
    assert_eq!(status["routes"][0]["versions"][0]["version"], 1);

    // `seal verify`: ok with the trusted key, not with the other one.
    let ok = s.seal(&["verify", "svc@1", "--key", &trusted_pub]);
    assert!(ok.ok, "{}{}", ok.stdout, ok.stderr);
    let v = s.seal(&["verify", "svc@2", "--key", &trusted_pub, "--output", "json"]);
    assert!(!v.ok);
    let report: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["attestations"][0]["signature"], "untrusted");

    // The policy is checked again when a server loads a version: a policy
    // that no longer trusts v1's key keeps it from serving after a restart.
    s.seal_json(&[
        "policy",
        "set",
        "production",
        "--require-signature",
        "--trusted-key",
        &other_pub,
    ]);
    s.stop();
    let s = Server::start(dir.path());
    assert_ne!(s.get("/svc/").await.status(), 200);
    s.wait_log("the policy refusal at start", |l| {
        l.contains("refused by production's policy")
    })
    .await;
    s.seal_json(&["policy", "clear", "production"]);

    // Tampered artifact bytes: the layer blob is edited on disk.
    let layer = version1["oci_manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let path = dir.path().join("artifacts/blobs/sha256").join(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let v = s.seal(&["verify", "svc@1", "--output", "json"]);
    assert!(!v.ok);
    let report: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(report["artifact"]["ok"], false, "{report}");
    let out = s.seal(&["deploy", "svc", "1"]);
    assert!(!out.ok, "a tampered artifact was deployed");
}

fn base64_decode(s: &str) -> Vec<u8> {
    // Standard alphabet with padding, as DSSE writes it.
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= table(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Protection is a flag of each environment: production (and the
/// server's default) by rule, any other when an admin says so. It moves
/// the permission gate and the pinned-request rule together, at once on
/// the live routes and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_is_per_environment_and_only_an_admin_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.seal_json(&["env", "create", "staging"]);
    let listed = s.seal_json(&["env", "list"]);
    assert_eq!(listed["protected"], json!(["production"]), "{listed}");
    let shown = s.seal_json(&["env", "show", "staging"]);
    assert_eq!(
        (&shown["protected"], &shown["protection"]),
        (&json!(false), &json!("rule"))
    );
    let wasm = guest("outbound");
    publish_file(&s, &wasm, "out", &["--allow-host", "a.example.org"]);
    publish_file(
        &s,
        &wasm,
        "out",
        &[
            "--allow-host",
            "a.example.org",
            "--allow-host",
            "b.example.org",
        ],
    );
    publish_file(&s, &guest("echo"), "echo", &[]);
    for env in ["staging", "production"] {
        s.seal_json(&["deploy", "out", "1", "-e", env, "--allow-new-permissions"]);
        s.seal_json(&["deploy", "echo", "1", "-e", env]);
    }
    let pinned = |env: &'static str| {
        let s = &s;
        async move {
            s.http
                .get(format!("{}/", s.gateway))
                .header("host", format!("echo.{env}.localhost"))
                .header("seal-version", "1")
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(pinned("staging").await.status(), 200);
    assert_error(pinned("production").await, 403, "preview_token_required").await;

    // A deployer may not change it, and the refusal changes nothing.
    let (deployer, _) = create_token(&s, &["--role", "deployer"]);
    s.seal_env(&["env", "protect", "staging"], &[("SEAL_TOKEN", &deployer)])
        .assert_fails_with("admin");
    assert_eq!(pinned("staging").await.status(), 200);
    // Nor may anyone protect an environment that does not exist.
    s.seal(&["env", "protect", "stagin"])
        .assert_fails_with("stagin");

    // Protected by an admin: the live route refuses the pin at once, and a
    // widening there needs an admin's approval.
    let shown = s.seal_json(&["env", "protect", "staging"]);
    assert_eq!(
        (&shown["protected"], &shown["protection"]),
        (&json!(true), &json!("set"))
    );
    assert_error(pinned("staging").await, 403, "preview_token_required").await;
    s.seal_env(
        &["deploy", "out", "2", "-e", "staging"],
        &[("SEAL_TOKEN", &deployer)],
    )
    .assert_fails_with("+ outbound host b.example.org");
    // Production unprotected: its pins are served, its widenings free.
    s.seal_json(&["env", "unprotect", "production"]);
    assert_eq!(pinned("production").await.status(), 200);
    let out = s.seal_env(
        &["deploy", "out", "2", "-e", "production", "--output", "json"],
        &[("SEAL_TOKEN", &deployer)],
    );
    assert!(out.ok, "{}", out.stderr);
    let d: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(d["permissions"]["widens"], true, "{d}");

    // Both settings survive a restart.
    s.stop();
    let s = Server::start(dir.path());
    let listed = s.seal_json(&["env", "list"]);
    assert_eq!(listed["protected"], json!(["staging"]), "{listed}");
    let r = s.get_host("echo.staging.localhost", "/").await;
    assert_eq!(r.status(), 200, "unpinned traffic is served as before");
    let r = s
        .http
        .get(format!("{}/", s.gateway))
        .header("host", "echo.staging.localhost")
        .header("seal-version", "1")
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "preview_token_required").await;
    // Back to the rule: staging open again, production protected again.
    s.seal_json(&["env", "protect", "staging", "--rule"]);
    let shown = s.seal_json(&["env", "protect", "production", "--rule"]);
    assert_eq!(
        (&shown["protected"], &shown["protection"]),
        (&json!(true), &json!("rule"))
    );
    let audit = s.api_get("/v1/audit?limit=10").await;
    let changes = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "environment.protect")
        .count();
    assert_eq!(changes, 4, "{audit}");
}

/// Junk attestations can fill a version's slots; an admin removes one
/// (audited, unlisted from the artifact layout), a deployer cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_removes_an_attestation_and_a_deployer_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let key = keys.path().join("k.key").to_str().unwrap().to_owned();
    s.seal_json(&["keygen", "--out", &key]);
    publish_file(&s, &guest("echo"), "svc", &["--sign", &key]);
    let listed = s.seal_json(&["attestations", "list", "svc@1"]);
    let referrer = listed["attestations"][0]["referrer"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = s.seal(&["attestations", "list", "svc@1"]);
    assert!(text.stdout.contains(&referrer), "{}", text.stdout);

    let (deployer, _) = create_token(&s, &["--role", "deployer"]);
    s.seal_env(
        &["attestations", "remove", "svc@1", &referrer],
        &[("SEAL_TOKEN", &deployer)],
    )
    .assert_fails_with("admin");
    s.seal(&["attestations", "remove", "svc@1", "sha256:nothex"])
        .assert_fails_with("REFERRER");

    let out = s.seal(&["attestations", "remove", "svc@1", &referrer]);
    assert!(out.ok, "{}", out.stderr);
    let listed = s.seal_json(&["attestations", "list", "svc@1"]);
    assert_eq!(listed["attestations"], json!([]));
    let index = std::fs::read_to_string(dir.path().join("artifacts/index.json")).unwrap();
    assert!(!index.contains(&referrer), "{index}");
    s.seal(&["attestations", "remove", "svc@1", &referrer])
        .assert_fails_with("has no attestation");
    let audit = s.api_get("/v1/audit?limit=5").await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "attestation.remove"
                && e["detail"]["referrer"] == referrer.as_str()),
        "{audit}"
    );
}
