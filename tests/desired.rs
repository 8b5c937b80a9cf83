//! End-to-end desired state: `seal export`, `seal apply`, `seal diff`
//! against the real server, real guests and a real git work tree.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{Server, example_component, guest, header, publish_file};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Release Bot")
        .env("GIT_AUTHOR_EMAIL", "release@example.org")
        .env("GIT_COMMITTER_NAME", "Release Bot")
        .env("GIT_COMMITTER_EMAIL", "release@example.org")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes `text` as `release.toml` in a git work tree and commits it.
fn commit(repo: &Path, text: &str, message: &str) -> (String, String) {
    let file = repo.join("release.toml");
    std::fs::write(&file, text).unwrap();
    git(repo, &["add", "release.toml"]);
    git(repo, &["commit", "-q", "-m", message]);
    (
        file.to_str().unwrap().to_owned(),
        git(repo, &["rev-parse", "HEAD"]),
    )
}

async fn serves(s: &Server, function: &str) -> String {
    let r = s.get(&format!("/{function}/")).await;
    assert_eq!(r.status(), 200, "{function}");
    header(&r, "seal-version")
}

/// Whether the newest 50 audit entries hold one that `matches`.
async fn audited(s: &Server, matches: impl Fn(&Value) -> bool) -> bool {
    s.api_get("/v1/audit?limit=50").await["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(matches)
}

async fn deployments(s: &Server, function: &str) -> Vec<Value> {
    s.api_get(&format!("/v1/functions/{function}/deployments"))
        .await["deployments"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_apply_round_trip_changes_nothing_and_a_changed_file_moves_only_what_changed_in_order()
 {
    let dir = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    let s = Server::start(dir.path());
    for f in ["a", "b", "c"] {
        assert_eq!(publish_file(&s, &guest("echo"), f, &[]).0, 1);
        assert_eq!(
            publish_file(&s, &example_component("hello_v2"), f, &[]).0,
            2
        );
        s.seal_json(&["deploy", f, "1"]);
    }
    s.seal_json(&["config", "set", "a", "GREETING=hi"]);
    s.seal_json(&["queue", "create", "orders"]);
    s.seal_json(&[
        "trigger",
        "create",
        "queue",
        "--function",
        "b",
        "--queue",
        "orders",
    ]);
    let secret = Command::new(support::seal_bin())
        .args(["secrets", "set", "b", "API_KEY"])
        .env("SEAL_SERVER", &s.api)
        .env("SEAL_DATA_DIR", &s.data_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"hunter2")?;
            c.wait()
        })
        .unwrap();
    assert!(secret.success());

    // Export: versions with their digests, config, secret names only.
    let out = s.seal(&["export", "-e", "production"]);
    assert!(out.ok, "{}", out.stderr);
    let exported = out.stdout;
    for needle in [
        "[environments.production.functions.a]",
        "version = 1",
        "GREETING = \"hi\"",
        "secrets = [\"API_KEY\"]",
        "digest = \"sha256:",
    ] {
        assert!(exported.contains(needle), "{needle}: {exported}");
    }
    assert!(!exported.contains("hunter2"), "{exported}");
    for needle in [
        "[environments.production.functions.b.triggers.b-orders]",
        "kind = \"queue\"",
        "queue = \"orders\"",
        "max_attempts = 3",
    ] {
        assert!(exported.contains(needle), "{needle}: {exported}");
    }
    let (file, first_commit) = commit(repo.path(), &exported, "export production");

    // Round trip: the plan is empty, applying changes nothing, diff is 0.
    let before: usize = [
        deployments(&s, "a").await.len(),
        deployments(&s, "b").await.len(),
    ]
    .iter()
    .sum();
    let plan = s.seal_json(&["apply", "-f", &file, "--plan"]);
    assert_eq!(plan["plan"]["steps"], json!([]), "{plan:#}");
    assert_eq!(plan["applied"], false);
    let applied = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(applied["plan"]["steps"], json!([]), "{applied:#}");
    let after: usize = [
        deployments(&s, "a").await.len(),
        deployments(&s, "b").await.len(),
    ]
    .iter()
    .sum();
    assert_eq!(before, after, "a no-op apply deployed something");
    let diff = s.seal(&["diff", "-f", &file]);
    assert!(diff.ok, "{} {}", diff.stdout, diff.stderr);
    assert!(diff.stdout.contains("in sync"), "{}", diff.stdout);

    // A changed file: a to 2 after c, c to 2 by a canary, a's config; b
    // unchanged.
    let mut changed: toml::Table = toml::from_str(&exported).unwrap();
    let fns = changed["environments"]["production"]["functions"]
        .as_table_mut()
        .unwrap();
    let a = fns["a"].as_table_mut().unwrap();
    a.remove("digest");
    a.insert("version".into(), 2.into());
    a.insert("after".into(), toml::Value::Array(vec!["c".into()]));
    a.insert(
        "config".into(),
        toml::Value::Table(toml::toml! { GREETING = "hello" }),
    );
    let c = fns["c"].as_table_mut().unwrap();
    c.remove("digest");
    c.insert("version".into(), 2.into());
    c.insert(
        "rollout".into(),
        toml::Value::Table(toml::toml! { strategy = "canary"
        steps = [50]
        interval_ms = 300 }),
    );
    // b: after a, its queue trigger retried more, a cron trigger added.
    let b = fns["b"].as_table_mut().unwrap();
    b.insert("after".into(), toml::Value::Array(vec!["a".into()]));
    b.insert(
        "triggers".into(),
        toml::Value::Table(toml::toml! {
            [b-orders]
            kind = "queue"
            queue = "orders"
            max_attempts = 5
            [b-cron]
            kind = "cron"
            schedule = "0 9 * * *"
        }),
    );
    let text = toml::to_string(&changed).unwrap();
    let (file, second_commit) = commit(repo.path(), &text, "a and c to 2");
    assert_ne!(first_commit, second_commit);

    let plan = s.seal_json(&["apply", "-f", &file, "--plan"]);
    let steps = plan["plan"]["steps"].as_array().unwrap();
    let order: Vec<&str> = steps
        .iter()
        .map(|s| s["function"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["c", "a", "b"], "{plan:#}");
    assert_eq!(
        steps[2]["changes"],
        json!([{"change": "triggers", "create": ["b-cron"], "replace": ["b-orders"]}])
    );
    assert_eq!(steps[0]["changes"][0]["change"], "deploy");
    assert_eq!(steps[0]["changes"][0]["strategy"], "canary");
    assert_eq!(steps[0]["changes"][0]["steps"], json!([50, 100]));
    assert_eq!(
        steps[1]["changes"][0],
        json!({"change": "config", "set": {"GREETING": "hello"}, "unset": []})
    );
    assert_eq!(steps[1]["changes"][1]["from"], 1);
    assert_eq!(steps[1]["changes"][1]["to"], 2);
    // The text plan says the same, in order.
    let text_plan = s.seal(&["apply", "-f", &file, "--plan"]);
    assert!(text_plan.ok);
    let (pc, pa) = (
        text_plan.stdout.find("1. c in production").unwrap(),
        text_plan.stdout.find("2. a in production").unwrap(),
    );
    assert!(pc < pa, "{}", text_plan.stdout);
    assert!(
        text_plan.stdout.contains("steps 50% → 100%")
            && text_plan.stdout.contains("3. b in production")
            && text_plan.stdout.contains("triggers create b-cron")
            && text_plan.stdout.contains("triggers replace b-orders"),
        "{}",
        text_plan.stdout
    );
    // Nothing changed yet.
    assert_eq!(serves(&s, "a").await, "1");
    assert_eq!(serves(&s, "c").await, "1");

    let b_before = deployments(&s, "b").await.len();
    let applied = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(applied["succeeded"], true, "{applied:#}");
    let outcomes = applied["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3, "{applied:#}");
    assert!(
        outcomes.iter().all(|o| o["outcome"] == "applied"),
        "{applied:#}"
    );
    assert_eq!(serves(&s, "a").await, "2");
    assert_eq!(serves(&s, "c").await, "2");
    assert_eq!(
        deployments(&s, "b").await.len(),
        b_before,
        "b was not in the plan"
    );
    // c's canary ended before a moved: a's deployment is the later one.
    let c_dep = &deployments(&s, "c").await[0];
    let a_dep = &deployments(&s, "a").await[0];
    assert_eq!(c_dep["strategy"], "canary");
    assert_eq!(c_dep["state"], "succeeded");
    assert!(c_dep["finished_at"].as_i64().unwrap() <= a_dep["created_at"].as_i64().unwrap());
    assert!(
        a_dep["reason"]
            .as_str()
            .unwrap()
            .contains(&second_commit[..12]),
        "{a_dep:#}"
    );
    let triggers = s.seal_json(&["trigger", "list", "--function", "b"]);
    let names: Vec<&str> = triggers
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{triggers:#}");
    assert!(
        names.contains(&"b-cron") && names.contains(&"b-orders"),
        "{triggers:#}"
    );
    let orders = triggers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "b-orders")
        .unwrap()
        .clone();
    assert_eq!(orders["max_attempts"], 5, "{orders:#}");
    let config = s.seal_json(&["config", "get", "a"]);
    assert_eq!(config["config"]["GREETING"], "hello");
    // The audit log has the apply with the file's digest and the commit.
    let audit = s.api_get("/v1/audit?limit=50").await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "apply")
        .expect("an apply entry")
        .clone();
    assert_eq!(entry["digest"], applied["plan"]["file_digest"]);
    assert_eq!(entry["outcome"], "succeeded");
    assert_eq!(entry["detail"]["source"]["commit"], second_commit.as_str());
    assert_eq!(entry["detail"]["source"]["message"], "a and c to 2");
    assert!(
        entry["detail"]["source"]["author"]
            .as_str()
            .unwrap()
            .contains("Release Bot")
    );
    assert_eq!(entry["detail"]["source"]["uncommitted"], Value::Null);

    // Applying the same file again is a no-op.
    let again = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(again["plan"]["steps"], json!([]), "{again:#}");
    assert!(s.seal(&["diff", "-f", &file]).ok);

    // Drift: a manual deploy and a config change outside the file, each
    // with who and which command.
    s.seal_json(&["deploy", "a", "1", "--reason", "hotfix"]);
    s.seal_json(&["config", "set", "a", "GREETING=manual", "EXTRA=1"]);
    let diff = s.seal(&["diff", "-f", &file]);
    assert!(!diff.ok);
    let code = Command::new(support::seal_bin())
        .args(["diff", "-f", &file])
        .env("SEAL_SERVER", &s.api)
        .env("SEAL_DATA_DIR", &s.data_dir)
        .status()
        .unwrap();
    assert_eq!(code.code(), Some(3));
    for needle in [
        "a in production version: file a@2, serving a@1 (100%)",
        "why: seal deploy by admin",
        "reason: hotfix",
        "config.GREETING: file hello, serving manual",
        "config.EXTRA: file (absent), serving 1",
        "why: config set by admin",
    ] {
        assert!(diff.stdout.contains(needle), "{needle}: {}", diff.stdout);
    }
    assert!(
        !diff.stdout.contains("b in production"),
        "b did not drift: {}",
        diff.stdout
    );
    let json = s.seal(&["diff", "-f", &file, "-o", "json"]);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["in_sync"], false);
    assert_eq!(v["differences"].as_array().unwrap().len(), 3, "{v:#}");
    // Applying the file puts it back.
    let healed = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(healed["succeeded"], true, "{healed:#}");
    assert_eq!(serves(&s, "a").await, "2");
    assert!(s.seal(&["diff", "-f", &file]).ok);

    // A person rolls c back: c@2 is held, so the file cannot bring it
    // back until the hold is released.
    s.seal_json(&["rollback", "c"]);
    let holds = s.seal_json(&["holds", "-e", "production"]);
    assert_eq!(holds["holds"].as_array().unwrap().len(), 1, "{holds:#}");
    assert_eq!(holds["holds"][0]["function"], "c");
    assert_eq!(holds["holds"][0]["version"], 2);
    assert_eq!(holds["holds"][0]["by"], "admin");
    let (code, body) = s.api_post("/v1/apply", json!({"file": text})).await;
    assert_eq!(code, 409, "{body:#}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("c@2 is held in production")
            && msg.contains("seal rollback")
            && msg.contains("seal hold release c@2 --env production"),
        "{msg}"
    );
    assert_eq!(serves(&s, "c").await, "1");
    let released = s.seal(&["hold", "release", "c@2"]);
    assert!(released.ok, "{}", released.stderr);
    assert!(
        released
            .stdout
            .contains("released the hold on c@2 in production"),
        "{}",
        released.stdout
    );
    assert!(
        s.seal_json(&["holds"])["holds"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    s.seal(&["hold", "release", "c@2"])
        .assert_fails_with("c@2 is not held in production");
    assert!(
        audited(&s, |e| e["action"] == "hold.release"
            && e["object"] == "production/c")
        .await,
        "no such audit entry"
    );
    let healed = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(healed["succeeded"], true, "{healed:#}");
    assert_eq!(serves(&s, "c").await, "2");
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_rolls_back_what_the_apply_moved_and_bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let files = tempfile::tempdir().unwrap();
    // b@2 is signed, with the commit it was built from in its provenance.
    let key = files.path().join("release.key");
    s.seal_json(&["keygen", "--out", key.to_str().unwrap()]);
    let signed = [
        "--sign",
        key.to_str().unwrap(),
        "--source",
        "git+https://example.org/team/b",
        "--commit",
        COMMIT,
    ];
    for (f, v2) in [
        ("a", example_component("hello_v2")),
        ("b", guest("fail")),
        ("c", example_component("hello_v2")),
    ] {
        assert_eq!(publish_file(&s, &guest("echo"), f, &[]).0, 1);
        let extra: &[&str] = if f == "b" { &signed } else { &[] };
        assert_eq!(publish_file(&s, &v2, f, extra).0, 2);
        s.seal_json(&["deploy", f, "1"]);
    }
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };

    // Three functions in order a, b, c; b's canary fails its pre-traffic
    // hook (the fail guest answers 500): a goes back to 1, c never starts.
    let file = write(
        "release.toml",
        r#"
[environments.production.functions.a]
version = 2

[environments.production.functions.b]
version = 2
after = ["a"]
[environments.production.functions.b.rollout]
strategy = "canary"
steps = [50]
interval_ms = 300
[[environments.production.functions.b.rollout.hooks]]
name = "smoke"
request = { path = "/" }

[environments.production.functions.c]
version = 2
after = ["b"]
"#,
    );
    let out = s.seal(&["apply", "-f", &file, "-o", "json"]);
    assert!(!out.ok, "a failed apply exits non-zero");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["succeeded"], false, "{v:#}");
    let by_fn = |f: &str| {
        v["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["function"] == f)
            .unwrap()
            .clone()
    };
    assert_eq!(by_fn("a")["outcome"], "rolled_back", "{v:#}");
    assert_eq!(by_fn("b")["outcome"], "failed", "{v:#}");
    assert!(
        by_fn("b")["detail"].as_str().unwrap().contains("smoke"),
        "{v:#}"
    );
    assert_eq!(by_fn("c")["outcome"], "not_started", "{v:#}");
    assert_eq!(serves(&s, "a").await, "1");
    assert_eq!(serves(&s, "b").await, "1");
    assert_eq!(serves(&s, "c").await, "1");
    assert_eq!(deployments(&s, "c").await.len(), 1, "c was never touched");
    assert!(
        audited(&s, |e| e["action"] == "apply" && e["outcome"] == "failed").await,
        "no such audit entry"
    );

    // diff says why each differs: b by its hook, a by the apply's undo.
    let diff = s.seal(&["diff", "-f", &file]);
    assert!(!diff.ok);
    for needle in [
        "b in production version: file b@2, serving b@1 (100%)",
        "why: rolled back by seal (a gate or a hook) at",
        "pre-traffic hook \"smoke\" failed",
        "why: seal rollback by admin at",
        "reason: undone by apply",
    ] {
        assert!(diff.stdout.contains(needle), "{needle}: {}", diff.stdout);
    }

    // The change log links b@2's commit to its production outcome.
    let log = s.seal_json(&["changelog", "b", "-e", "production", "--since", "1h"]);
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{log:#}");
    let latest = &entries[0];
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["from"], 1);
    assert_eq!(latest["commit"], COMMIT);
    assert_eq!(latest["source"], "git+https://example.org/team/b");
    assert_eq!(latest["strategy"], "canary");
    assert_eq!(latest["outcome"], "aborted");
    assert_eq!(latest["held"], true);
    assert!(
        latest["reason"].as_str().unwrap().contains(": apply "),
        "{latest:#}"
    );
    let why = latest["why"].as_str().unwrap();
    assert!(why.contains("smoke") && why.contains("(by seal)"), "{why}");
    assert_eq!(entries[1]["version"], 1);
    assert_eq!(entries[1]["outcome"], "succeeded");
    assert_eq!(entries[1]["commit"], Value::Null, "b@1 has no provenance");
    let md = s.seal(&["changelog", "b", "--format", "markdown"]);
    assert!(md.ok, "{}", md.stderr);
    assert!(md.stdout.starts_with("# Changes to b"), "{}", md.stdout);
    for needle in [
        "- ",
        "production b@2 ← @1, canary deploy by admin",
        &format!("commit {COMMIT} of git+https://example.org/team/b"),
        "held: release with seal hold release b@2 --env production",
        "`sha256:",
    ] {
        assert!(md.stdout.contains(needle), "{needle}: {}", md.stdout);
    }
    s.seal(&["changelog", "b", "--since", "soon"])
        .assert_fails_with("invalid duration");
    s.seal(&["changelog", "nope"])
        .assert_fails_with("unknown function");

    // b@2, aborted by its hook, is held; a@2, undone by the apply, is not.
    let holds = s.seal_json(&["holds"]);
    let held: Vec<String> = holds["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}@{}", h["function"].as_str().unwrap(), h["version"]))
        .collect();
    assert_eq!(held, ["b@2"], "{holds:#}");
    assert_eq!(holds["holds"][0]["by"], "seal");
    assert!(
        holds["holds"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("smoke"),
        "{holds:#}"
    );
    let text = s.seal(&["holds"]);
    assert!(
        text.stdout.contains("b@2") && text.stdout.contains("seal"),
        "{}",
        text.stdout
    );
    let (code, body) = s
        .api_post(
            "/v1/apply",
            json!({"file": std::fs::read_to_string(&file).unwrap(), "plan": true}),
        )
        .await;
    assert_eq!(code, 409, "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("b@2 is held in production: rolled back by seal"),
        "{body:#}"
    );

    // Bad files, each refused with what is wrong and nothing changed.
    let refused = |status: u16, text: &str, needles: &[&str]| {
        let s = &s;
        let text = text.to_owned();
        let needles: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
        async move {
            let (code, body) = s.api_post("/v1/apply", json!({"file": text})).await;
            assert_eq!(code, status, "{body:#}");
            let msg = body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for n in &needles {
                assert!(msg.contains(n.as_str()), "{n}: {msg}");
            }
            assert!(!msg.contains("hunter2"), "{msg}");
        }
    };
    let head = "[environments.production.functions.a]\n";
    refused(400, &format!("{head}verison = 2\n"), &["line 2", "verison"]).await;
    refused(
        404,
        "[environments.production.functions.nope]\nversion = 1\n",
        &["unknown function \"nope\""],
    )
    .await;
    refused(
        404,
        &format!("{head}version = 9\n"),
        &["a has no version 9"],
    )
    .await;
    refused(
        404,
        &format!("{head}digest = \"sha256:{}\"\n", "ab".repeat(32)),
        &["no version has digest", "publish it first"],
    )
    .await;
    refused(
        400,
        &format!("{head}version = 1\nsecrets = {{ API_KEY = \"hunter2\" }}\n"),
        &["names only"],
    )
    .await;
    refused(
        400,
        &format!("{head}version = 1\nsecrets = \"hunter2\"\n"),
        &["list of names"],
    )
    .await;
    refused(
        400,
        &format!("{head}version = 1\nsecrets = [\"API_KEY\"]\n"),
        &["expects secrets that are not set: API_KEY"],
    )
    .await;
    refused(400, "[environments.production.functions.a]\nversion = 1\nafter = [\"b\"]\n[environments.production.functions.b]\nversion = 1\nafter = [\"a\"]\n", &["cycle", "a → b → a"]).await;
    refused(
        404,
        "[environments.nowhere.functions.a]\nversion = 1\n",
        &["unknown environment \"nowhere\""],
    )
    .await;
    refused(
        400,
        &format!("{head}version = 1\n[environments.production.functions.a.triggers.t1]\nkind = \"queue\"\nqueue = \"nope\"\n"),
        &["functions.a.triggers.t1", "nope"],
    )
    .await;
    refused(
        400,
        &format!("{head}version = 1\n[environments.production.functions.a.triggers.t2]\nkind = \"cron\"\nschedule = \"every day\"\n"),
        &["functions.a.triggers.t2"],
    )
    .await;
    refused(
        400,
        &format!("{head}version = 1\n[environments.production.functions.a.triggers.t3]\nkind = \"webhook\"\n"),
        &["line 4", "unknown variant `webhook`"],
    )
    .await;
    assert_eq!(serves(&s, "a").await, "1");
    assert!(
        s.seal_json(&["trigger", "list", "--function", "a"])
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused file made a trigger"
    );

    // A token for staging may not apply a file for production.
    s.seal_json(&["env", "create", "staging"]);
    let tok = s.seal_json(&["token", "create", "--role", "deployer", "--env", "staging"]);
    let tok = tok["token"].as_str().unwrap();
    let prod = write(
        "prod.toml",
        "[environments.production.functions.a]\nversion = 2\n",
    );
    s.seal_env(&["apply", "-f", &prod], &[("SEAL_TOKEN", tok)])
        .assert_fails_with("may change only staging");
    assert_eq!(serves(&s, "a").await, "1");

    // Two applies at once: the second is refused, naming the first.
    let slow = r#"
[environments.production.functions.c]
version = 2
[environments.production.functions.c.rollout]
strategy = "canary"
steps = [50]
interval_ms = 3000
"#;
    let first = {
        let (api, token) = (s.api.clone(), s.token.clone());
        let slow = slow.to_owned();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{api}/v1/apply"))
                .bearer_auth(token)
                .json(&json!({"file": slow}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // Wait until the first apply's canary has started.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while deployments(&s, "c").await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first apply never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = s
        .api_post(
            "/v1/apply",
            json!({"file": "[environments.production.functions.a]\nversion = 2\n"}),
        )
        .await;
    assert_eq!(code, 409, "{body:#}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("an apply is running") && msg.contains("sha256:") && msg.contains("admin"),
        "{msg}"
    );
    let first = first.await.unwrap();
    assert_eq!(first["succeeded"], true, "{first:#}");
    assert_eq!(serves(&s, "c").await, "2");
    assert_eq!(
        serves(&s, "a").await,
        "1",
        "the refused apply changed nothing"
    );
}

/// Waits (up to 10 s) until the server's last drift check of production
/// satisfies `ok`; returns that report.
async fn drift_until(s: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = s.api_get("/v1/drift").await;
        if let Some(r) = d["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["environment"] == "production")
            && ok(r)
        {
            return r.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {d:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `a@1` (echo) and `a@2` published, a@2 serving, and the exported state
/// applied: production's desired state is a@2.
fn applied_a2(s: &Server, dir: &Path) -> String {
    assert_eq!(publish_file(s, &guest("echo"), "a", &[]).0, 1);
    assert_eq!(
        publish_file(s, &example_component("hello_v2"), "a", &[]).0,
        2
    );
    s.seal_json(&["deploy", "a", "2"]);
    let out = s.seal(&["export", "-e", "production"]);
    assert!(out.ok, "{}", out.stderr);
    let file = dir.join("release.toml");
    std::fs::write(&file, out.stdout).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let applied = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(applied["plan"]["steps"], json!([]), "{applied:#}");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_from_the_file_last_applied_is_measured_and_said_and_self_heal_puts_it_back_but_never_a_held_version()
 {
    // Without self-heal: drift is a report, a gauge, a log line, and part
    // of `seal status`.
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    // The notification receiver is on loopback: the operator allows it.
    let s = Server::start_with(
        dir.path(),
        &["--drift-interval", "200ms", "--allow-outbound", "127.0.0.1"],
    );
    let file = applied_a2(&s, files.path());
    // The file names where drift is told.
    let (hook, notes) = support::webhook_receiver().await;
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "[environments.production]\n",
        &format!("[environments.production]\nnotify = \"{hook}\"\n"),
        1,
    );
    std::fs::write(&file, text).unwrap();
    let applied = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(applied["plan"]["steps"], json!([]), "{applied:#}");
    let r = drift_until(&s, "in sync after the apply", |r| {
        r["differences"] == json!([])
    })
    .await;
    assert!(
        r["file_digest"].as_str().unwrap().starts_with("sha256:"),
        "{r:#}"
    );
    assert_eq!(r["applied_by"], "admin");

    s.seal_json(&["deploy", "a", "1", "--reason", "manual fix"]);
    let r = drift_until(&s, "the manual deploy as drift", |r| {
        r["differences"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    let d = &r["differences"][0];
    assert_eq!(d["function"], "a");
    assert_eq!(d["field"], "version");
    assert_eq!(d["desired"], "a@2");
    let why = d["why"].as_str().unwrap();
    assert!(
        why.contains("seal deploy by admin") && why.contains("manual fix"),
        "{why}"
    );
    let metrics = s.api_text("/metrics").await;
    assert_eq!(
        support::metric(
            &metrics,
            "seal_drift_differences",
            &[("function", "a"), ("environment", "production")]
        ),
        Some(1.0),
        "{metrics}"
    );
    s.wait_log("the drift warning", |l| {
        l.contains("environment drifted from the release file last applied")
    })
    .await;
    let status = s.seal(&["status", "a"]);
    assert!(
        status.stdout.contains("drift in production: version is a@1 (100%), the release file says a@2 (seal deploy by admin"),
        "{}",
        status.stdout
    );
    assert_eq!(
        s.seal_json(&["status", "a"])["drift"][0]["field"],
        "version"
    );
    let told = |event: &'static str| {
        let notes = notes.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(n) = notes.lock().unwrap().iter().find(|n| n["event"] == event) {
                    return n.clone();
                }
                assert!(std::time::Instant::now() < deadline, "never told {event}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let n = told("drifted").await;
    assert_eq!(n["environment"], "production", "{n:#}");
    assert_eq!(n["differences"][0]["field"], "version", "{n:#}");
    assert_eq!(n["differences"][0]["desired"], "a@2", "{n:#}");
    // Put back by hand: in sync again, gauge 0.
    s.seal_json(&["deploy", "a", "2"]);
    drift_until(&s, "in sync again", |r| r["differences"] == json!([])).await;
    assert_eq!(told("in_sync").await["differences"], json!([]));
    assert_eq!(
        notes.lock().unwrap().len(),
        2,
        "told once per change, not every check"
    );
    let metrics = s.api_text("/metrics").await;
    assert_eq!(
        support::metric(
            &metrics,
            "seal_drift_differences",
            &[("function", "a"), ("environment", "production")]
        ),
        Some(0.0)
    );
    s.wait_log("the all-clear", |l| {
        l.contains("matches the release file last applied again")
    })
    .await;
    assert_eq!(serves(&s, "a").await, "2");
    drop(s);

    // With self-heal: a manual deploy is undone; a rollback is not, since
    // the version it left is held.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--drift-interval", "200ms", "--self-heal"]);
    applied_a2(&s, files.path());
    s.seal_json(&["deploy", "a", "1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while serves(&s, "a").await != "2" {
        assert!(
            std::time::Instant::now() < deadline,
            "self-heal never put a@2 back:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The release is audited once it has ended, just after the route moved.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !audited(&s, |e| {
        e["action"] == "apply" && e["actor"] == "seal (self-heal)"
    })
    .await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry of the self-heal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.seal_json(&["rollback", "a"]);
    assert_eq!(serves(&s, "a").await, "1");
    s.wait_log("self-heal refusing the held version", |l| {
        l.contains("self-heal did not re-apply") && l.contains("a@2 is held in production")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        serves(&s, "a").await,
        "1",
        "self-heal brought back a held version"
    );
    drift_until(&s, "the rollback as drift", |r| {
        r["differences"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("seal rollback by admin"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_cut_by_kill_9_is_rolled_back_as_a_whole_when_the_server_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    for f in ["a", "b"] {
        assert_eq!(publish_file(&s, &guest("echo"), f, &[]).0, 1);
        assert_eq!(
            publish_file(&s, &example_component("hello_v2"), f, &[]).0,
            2
        );
        s.seal_json(&["deploy", f, "1"]);
    }
    // a moves at once, then b's canary runs for a minute: the server is
    // killed in between.
    let text = r#"
[environments.production.functions.a]
version = 2

[environments.production.functions.b]
version = 2
after = ["a"]
[environments.production.functions.b.rollout]
strategy = "canary"
steps = [50]
interval_ms = 60000
"#;
    std::fs::write(files.path().join("release.toml"), text).unwrap();
    let apply = {
        let (api, token) = (s.api.clone(), s.token.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{api}/v1/apply"))
                .bearer_auth(token)
                .json(&json!({"file": text}))
                .send()
                .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while deployments(&s, "b").await[0]["state"] != "progressing" {
        assert!(
            std::time::Instant::now() < deadline,
            "b's canary never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serves(&s, "a").await, "2");
    let running = s.seal_json(&["releases"]);
    assert_eq!(running["releases"][0]["state"], "running", "{running:#}");
    let id = running["releases"][0]["id"].as_u64().unwrap();
    s.stop(); // SIGKILL
    assert!(apply.await.unwrap().is_err(), "the apply's answer was cut");

    let s = Server::start(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let release = loop {
        let r = s.api_get(&format!("/v1/releases/{id}")).await;
        if r["state"] != "running" {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {r:#}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(release["state"], "rolled_back", "{release:#}");
    let outcomes = release["outcomes"].as_array().unwrap();
    assert!(
        outcomes.iter().all(|o| o["outcome"] == "rolled_back"),
        "{release:#}"
    );
    assert_eq!(serves(&s, "a").await, "1");
    assert_eq!(serves(&s, "b").await, "1");
    assert_eq!(deployments(&s, "b").await[0]["state"], "aborted");
    // Nothing is held: the release was cut, no version was judged.
    assert_eq!(s.seal_json(&["holds"])["holds"], json!([]));
    let show = s.seal(&["releases", "show", &id.to_string()]);
    assert!(show.ok, "{}", show.stderr);
    let header = format!("release {id} rolled_back by admin");
    for needle in [
        header.as_str(),
        "interrupted by a restart",
        "a in production: rolled_back",
        "b in production: rolled_back",
    ] {
        assert!(show.stdout.contains(needle), "{needle}: {}", show.stdout);
    }
    let list = s.seal(&["releases"]);
    assert!(list.stdout.contains("rolled_back"), "{}", list.stdout);
    s.seal(&["releases", "show", "99"])
        .assert_fails_with("no release 99");
    assert!(
        audited(&s, |e| e["action"] == "apply"
            && e["outcome"] == "rolled_back")
        .await,
        "no such audit entry"
    );
    // The same file applies again afterwards.
    let path = files.path().join("release.toml");
    let plan = s.seal_json(&["apply", "-f", path.to_str().unwrap(), "--plan"]);
    let order: Vec<&str> = plan["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["function"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["a", "b"], "{plan:#}");
}

/// The outcome of `function` in an apply's answer.
fn outcome_of(v: &Value, function: &str) -> Value {
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["function"].as_str().unwrap_or_default() == function)
        .unwrap_or_else(|| panic!("no outcome for {function}: {v:#}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_of_one_wave_roll_out_side_by_side_and_the_first_failure_stops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let files = tempfile::tempdir().unwrap();
    for (f, v2) in [
        ("a", example_component("hello_v2")),
        ("b", guest("fail")),
        ("c", example_component("hello_v2")),
    ] {
        assert_eq!(publish_file(&s, &guest("echo"), f, &[]).0, 1);
        assert_eq!(publish_file(&s, &v2, f, &[]).0, 2);
        s.seal_json(&["deploy", f, "1"]);
    }
    // a and b name nothing in `after`: one wave, side by side. a's canary
    // would wait a minute at 50%; b's fails its smoke hook (the fail
    // guest answers 500). c comes after both.
    let file = files.path().join("release.toml");
    std::fs::write(
        &file,
        r#"
[environments.production.functions.a]
version = 2
[environments.production.functions.a.rollout]
strategy = "canary"
steps = [50]
interval_ms = 60000

[environments.production.functions.b]
version = 2
[environments.production.functions.b.rollout]
strategy = "canary"
steps = [50]
interval_ms = 1000
[[environments.production.functions.b.rollout.hooks]]
name = "smoke"
request = { path = "/" }

[environments.production.functions.c]
version = 2
after = ["a", "b"]
"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let plan = s.seal_json(&["apply", "-f", file, "--plan"]);
    let waves: Vec<(String, u64)> = plan["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["function"].as_str().unwrap().to_owned(),
                s["wave"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        waves,
        [("a".into(), 0), ("b".into(), 0), ("c".into(), 1)],
        "{plan:#}"
    );
    let text = s.seal(&["apply", "-f", file, "--plan"]);
    assert!(
        text.stdout
            .contains("wave 1 (side by side; the first to fail stops the others):")
            && text.stdout.contains(" wave 2:"),
        "{}",
        text.stdout
    );

    let out = s.seal(&["apply", "-f", file, "-o", "json"]);
    assert!(!out.ok, "a failed apply exits non-zero");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(outcome_of(&v, "b")["outcome"], "failed", "{v:#}");
    let a = outcome_of(&v, "a");
    assert_eq!(a["outcome"], "rolled_back", "{v:#}");
    assert!(
        a["detail"]
            .as_str()
            .unwrap()
            .contains("stopped: b failed beside it in wave 1"),
        "{v:#}"
    );
    assert_eq!(outcome_of(&v, "c")["outcome"], "not_started", "{v:#}");
    for f in ["a", "b", "c"] {
        assert_eq!(serves(&s, f).await, "1", "{f}");
    }
    // a's canary was stopped by the release, not waited out: its
    // deployment ended aborted by the release.
    let d = s
        .api_get(&format!(
            "/v1/deployments/{}",
            a["deployment"].as_u64().unwrap()
        ))
        .await;
    assert_eq!(d["deployment"]["state"], "aborted", "{d:#}");
    assert!(
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["by"] == "seal (release stopped)"),
        "{d:#}"
    );
    // Only the version that failed is held: a@2 judged nothing.
    let holds = s.seal_json(&["holds"]);
    let held: Vec<String> = holds["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}@{}", h["function"].as_str().unwrap(), h["version"]))
        .collect();
    assert_eq!(held, ["b@2"], "{holds:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environments_protection_policy_and_queues_are_in_the_file_and_need_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(dir.path(), &["--drift-interval", "200ms"]);
    let files = tempfile::tempdir().unwrap();
    let key = files.path().join("release.key");
    s.seal_json(&["keygen", "--out", key.to_str().unwrap()]);
    let pem = std::fs::read_to_string(files.path().join("release.pub")).unwrap();
    assert_eq!(publish_file(&s, &guest("echo"), "a", &[]).0, 1);
    let signed = [
        "--sign",
        key.to_str().unwrap(),
        "--source",
        "git+https://example.org/team/a",
        "--commit",
        COMMIT,
    ];
    assert_eq!(
        publish_file(&s, &example_component("hello_v2"), "a", &signed).0,
        2
    );
    assert_eq!(publish_file(&s, &example_component("hello"), "a", &[]).0, 3);
    s.seal_json(&["deploy", "a", "1"]);
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let file_for = |version: u32| {
        format!(
            r#"
[environments.production]
protected = true
[environments.production.policy]
require_signature = true
trusted_keys = ["""
{pem}"""]
require_provenance = ["source=git+https://example.org/team/a"]
[environments.production.queues.orders]

[environments.production.functions.a]
version = {version}
[environments.production.functions.a.triggers.a-orders]
kind = "queue"
queue = "orders"
"#
        )
    };
    let policy = || async { s.api_get("/v1/policies/production").await["policy"].clone() };

    // The policy the file sets is the one its deploys must meet: a@3 is
    // not signed, so the plan is refused before anything changes.
    let unsigned = write("unsigned.toml", &file_for(3));
    s.seal(&["apply", "-f", &unsigned])
        .assert_fails_with("the policy this file sets");
    assert_eq!(policy().await["require_signature"], false);
    assert!(
        s.seal_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A deployer may see the plan, not carry it out.
    let file = write("release.toml", &file_for(2));
    let tok = s.seal_json(&["token", "create", "--role", "deployer"]);
    let tok = tok["token"].as_str().unwrap();
    let plan = s.seal_env(
        &["apply", "-f", &file, "--plan", "-o", "json"],
        &[("SEAL_TOKEN", tok)],
    );
    assert!(plan.ok, "{}", plan.stderr);
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    let steps = plan["plan"]["steps"].as_array().unwrap();
    assert_eq!(steps[0]["environment"], "production", "{plan:#}");
    assert!(steps[0].get("function").is_none(), "{plan:#}");
    assert_eq!(steps[0]["wave"], 0);
    assert_eq!(steps[0]["changes"][0]["change"], "policy", "{plan:#}");
    assert_eq!(steps[0]["changes"][0]["require_signature"], true);
    assert_eq!(
        steps[0]["changes"][1],
        json!({"change": "queues", "create": ["orders"]}),
        "{plan:#}"
    );
    assert_eq!(steps[1]["function"], "a");
    assert_eq!(steps[1]["wave"], 1);
    s.seal_env(&["apply", "-f", &file], &[("SEAL_TOKEN", tok)])
        .assert_fails_with("needs an admin token");
    assert_eq!(policy().await["require_signature"], false);
    assert_eq!(serves(&s, "a").await, "1");

    // An admin applies it: policy, then queue, then a@2 and its trigger
    // on the queue the file made.
    let applied = s.seal_json(&["apply", "-f", &file]);
    assert_eq!(applied["succeeded"], true, "{applied:#}");
    let p = policy().await;
    assert_eq!(p["require_signature"], true, "{p:#}");
    assert_eq!(
        p["required_provenance"],
        json!({"source": "git+https://example.org/team/a"})
    );
    let queues = s.seal_json(&["queue", "list"]);
    assert_eq!(queues[0]["name"], "orders", "{queues:#}");
    assert_eq!(
        s.seal_json(&["trigger", "list", "--function", "a"])[0]["name"],
        "a-orders"
    );
    assert_eq!(serves(&s, "a").await, "2");
    assert!(s.seal(&["diff", "-f", &file]).ok);

    // Exported, the environment's settings come back and apply as a no-op.
    let exported = s.seal(&["export", "-e", "production"]);
    assert!(exported.ok, "{}", exported.stderr);
    for needle in [
        "protected = true",
        "require_signature = true",
        "BEGIN PUBLIC KEY",
        "source=git+https://example.org/team/a",
        "[environments.production.queues.orders]",
    ] {
        assert!(
            exported.stdout.contains(needle),
            "{needle}: {}",
            exported.stdout
        );
    }
    let again = write("exported.toml", &exported.stdout);
    let noop = s.seal_json(&["apply", "-f", &again]);
    assert_eq!(noop["plan"]["steps"], json!([]), "{noop:#}");

    // Changed by hand: each difference says why.
    s.seal_json(&["queue", "create", "extra"]);
    s.seal_json(&["policy", "clear", "production"]);
    let diff = s.seal(&["diff", "-f", &file]);
    assert!(!diff.ok);
    for needle in [
        "environment production policy: file require_signature=true",
        "serving none",
        "environment production queues.extra: file (absent), serving exists",
        "apply never deletes a queue",
        "seal queue delete extra --env production",
    ] {
        assert!(diff.stdout.contains(needle), "{needle}: {}", diff.stdout);
    }
    // The drift check sees them too (against the exported file, applied
    // last): a gauge of the environment's own, and `seal drift`.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = s.api_text("/metrics").await;
        let own = support::metric(
            &metrics,
            "seal_environment_drift_differences",
            &[("environment", "production")],
        );
        if own == Some(2.0) {
            assert!(
                !metrics.contains("seal_drift_differences{function=\"\""),
                "{metrics}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no environment drift in the metrics: {own:?}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drift = s.seal(&["drift"]);
    assert!(!drift.ok, "a drifted environment fails: {}", drift.stdout);
    for needle in [
        "production: 2 differences",
        "environment production policy: file require_signature=true",
        "environment production queues.extra",
    ] {
        assert!(drift.stdout.contains(needle), "{needle}: {}", drift.stdout);
    }
    // A queue's window is fixed when it is made: a file that asks for
    // another one is refused by name.
    let window = write(
        "window.toml",
        "[environments.production.queues.extra]\ndedup_window_ms = 1000\n",
    );
    s.seal(&["apply", "-f", &window]).assert_fails_with(
        "environments.production.queues.extra: the queue's dedup window is 600000 ms",
    );
    // ... and reported by `seal diff` as a difference, not an error.
    let diff = s.seal(&["diff", "-f", &window, "-o", "json"]);
    assert!(!diff.ok, "a difference exits non-zero");
    let diff: Value = serde_json::from_str(&diff.stdout).unwrap();
    assert_eq!(
        diff["differences"][0]["field"], "queues.extra.dedup_window_ms",
        "{diff:#}"
    );
    assert_eq!(diff["differences"][0]["desired"], "1000", "{diff:#}");
    assert_eq!(diff["differences"][0]["actual"], "600000", "{diff:#}");
    // Protection is the file's too.
    let open = write(
        "open.toml",
        "[environments.production]\nprotected = false\n",
    );
    let applied = s.seal_json(&["apply", "-f", &open]);
    assert_eq!(
        applied["plan"]["steps"][0]["changes"],
        json!([{"change": "protection", "protected": false}]),
        "{applied:#}"
    );
    assert_eq!(
        s.api_get("/v1/environments/production").await["protected"],
        false
    );

    // A file that turns signatures on and then fails a later step puts
    // the policy back, so what it moved may return to unsigned versions.
    s.seal_json(&["deploy", "a", "1"]);
    assert_eq!(publish_file(&s, &guest("echo"), "b", &[]).0, 1);
    assert_eq!(publish_file(&s, &guest("fail"), "b", &signed).0, 2);
    s.seal_json(&["deploy", "b", "1"]);
    let failing = write(
        "failing.toml",
        &format!(
            r#"
[environments.production.policy]
require_signature = true
trusted_keys = ["""
{pem}"""]

[environments.production.functions.a]
version = 2

[environments.production.functions.b]
version = 2
after = ["a"]
[environments.production.functions.b.rollout]
strategy = "canary"
steps = [50]
interval_ms = 300
[[environments.production.functions.b.rollout.hooks]]
name = "smoke"
request = {{ path = "/" }}
"#
        ),
    );
    let out = s.seal(&["apply", "-f", &failing, "-o", "json"]);
    assert!(!out.ok, "{}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(outcome_of(&v, "b")["outcome"], "failed", "{v:#}");
    assert_eq!(outcome_of(&v, "a")["outcome"], "rolled_back", "{v:#}");
    let env_step = outcome_of(&v, "");
    assert!(
        env_step["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("trust policy put back"),
        "{v:#}"
    );
    assert_eq!(policy().await["require_signature"], false);
    assert_eq!(serves(&s, "a").await, "1");
    assert_eq!(serves(&s, "b").await, "1");
}
