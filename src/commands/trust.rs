//! Supply-chain trust: `seal keygen`, `seal verify FUNCTION@N`, `seal policy
//! set|show|clear ENV`, and the permission and trust lines a deploy prints.
//! Signing itself happens in `seal publish --sign` (publish.rs).

use crate::client::Client;
use crate::output::{OutputFormat, emit, s, time};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

// ---- seal keygen ----------------------------------------------------------

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600); the public
    /// key goes next to it with the extension .pub (release.key →
    /// release.pub).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Overwrite existing key files (the old private key is lost).
    #[arg(long)]
    force: bool,
}

/// Generates an Ed25519 key pair and writes it; needs no server.
pub fn keygen(args: KeygenArgs, out: OutputFormat) -> anyhow::Result<()> {
    let private_path = args.out;
    let public_path = public_key_path(&private_path)?;
    if !args.force {
        for p in [&private_path, &public_path] {
            if p.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a key (use --force to replace it)",
                    p.display()
                );
            }
        }
    }
    let key = seal_trust::SigningKey::generate();
    write_new(&private_path, key.to_pem().as_bytes(), 0o600, args.force)
        .with_context(|| format!("cannot write the private key {}", private_path.display()))?;
    write_new(
        &public_path,
        key.public_key().to_pem().as_bytes(),
        0o644,
        args.force,
    )
    .with_context(|| format!("cannot write the public key {}", public_path.display()))?;
    let result = json!({
        "private_key": private_path.display().to_string(),
        "public_key": public_path.display().to_string(),
        "keyid": key.keyid(),
    });
    emit(out, &result, |r| {
        println!(
            "private key {} (mode 0600: keep it secret, sign with it)",
            s(&r["private_key"])
        );
        println!(
            "public key  {} (share it: servers trust it)",
            s(&r["public_key"])
        );
        println!("keyid       {}", s(&r["keyid"]));
        println!(
            "next: seal publish DIR --sign {}; seal policy set production --require-signature --trusted-key {}",
            s(&r["private_key"]),
            s(&r["public_key"])
        );
    });
    Ok(())
}

/// `release.key` → `release.pub`; refuses a path whose public half would be itself.
fn public_key_path(private: &Path) -> anyhow::Result<PathBuf> {
    if private.file_name().is_none() {
        bail!("--out must name a file, got {}", private.display());
    }
    let public = private.with_extension("pub");
    if public == private {
        bail!(
            "--out {} would be overwritten by its own public key: name the private key e.g. release.key",
            private.display()
        );
    }
    Ok(public)
}

/// Creates `path` with `mode` (Unix), refusing an existing file unless
/// `replace`: then the old file is removed first, so the new one never
/// inherits a laxer mode.
fn write_new(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    if replace {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

// ---- key files ------------------------------------------------------------

/// Reads a private key for `--sign`, with the file named in every error.
pub fn read_signing_key(path: &Path) -> anyhow::Result<seal_trust::SigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("--sign: cannot read the key file {}", path.display()))?;
    seal_trust::SigningKey::from_pem(&pem).with_context(|| format!("--sign {}", path.display()))
}

/// Reads a public key file, checked here so that a wrong file (a private
/// key above all) is refused before anything is sent. Returns its PEM as
/// read and its key id.
fn read_public_key(flag: &str, path: &Path) -> anyhow::Result<(String, String)> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read the key file {}", path.display()))?;
    let key = seal_trust::PublicKey::from_pem(&pem)
        .with_context(|| format!("{flag} {}", path.display()))?;
    Ok((pem, key.keyid().to_owned()))
}

// ---- seal verify ----------------------------------------------------------

/// `FUNCTION@N`, e.g. `hello@3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    pub function: String,
    pub version: u64,
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.function, self.version)
    }
}

/// Parses `hello@3`.
pub fn parse_version_ref(s: &str) -> Result<VersionRef, String> {
    let Some((function, version)) = s.split_once('@') else {
        return Err(format!(
            "expected FUNCTION@VERSION, e.g. hello@3; got {s:?}"
        ));
    };
    seal_artifact::validate_function_name(function).map_err(|e| e.to_string())?;
    match version.parse::<u64>() {
        Ok(n) if n >= 1 && !version.starts_with('+') => Ok(VersionRef {
            function: function.to_owned(),
            version: n,
        }),
        _ => Err(format!(
            "expected FUNCTION@VERSION with a version number from 1, e.g. {function}@3; got {s:?}"
        )),
    }
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The version to check, as FUNCTION@VERSION, e.g. hello@3.
    #[arg(value_parser = parse_version_ref, value_name = "FUNCTION@VERSION")]
    target: VersionRef,
    /// A public key (PEM file, e.g. release.pub) the version must be signed
    /// by, checked in addition to the environment's trusted keys (repeat
    /// for more).
    #[arg(long = "key", value_name = "PUBFILE")]
    keys: Vec<PathBuf>,
    /// Whose policy to judge the version by (default: the server's default
    /// environment, production).
    #[arg(long, short = 'e')]
    env: Option<String>,
}

pub async fn verify(args: VerifyArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    if let Some(env) = &args.env {
        check_env(env)?;
    }
    let mut pems = Vec::with_capacity(args.keys.len());
    for path in &args.keys {
        pems.push(read_public_key("--key", path)?.0);
    }
    let mut body = Map::new();
    if let Some(env) = &args.env {
        body.insert("environment".into(), json!(env));
    }
    if !pems.is_empty() {
        body.insert("keys".into(), json!(pems));
    }
    let t = &args.target;
    let v = client
        .post(
            &format!("/v1/functions/{}/versions/{}/verify", t.function, t.version),
            &Value::Object(body),
        )
        .await?;
    let ok = v["ok"].as_bool() == Some(true);
    emit(out, &v, |v| {
        for line in verify_lines(v, t) {
            println!("{line}");
        }
        if ok {
            println!("ok");
        }
    });
    if ok {
        Ok(())
    } else {
        bail!("{}", verify_reason(&v, t, !args.keys.is_empty()))
    }
}

/// The text of a verify answer, one line per check (details indented).
fn verify_lines(v: &Value, t: &VersionRef) -> Vec<String> {
    let mut lines = vec![format!("{t} {}", clean(&s(&v["digest"])))];
    let a = &v["artifact"];
    lines.push(if a["ok"].as_bool() == Some(true) {
        "artifact: ok, every blob matches its digest".into()
    } else {
        format!("artifact: DAMAGED, {}", clean(&s(&a["error"])))
    });
    let reports: Vec<&Value> = v["attestations"].as_array().into_iter().flatten().collect();
    if reports.is_empty() {
        lines.push("attestations: none (publish with --sign KEYFILE to add one)".into());
    }
    for r in reports {
        let signature = match r["signature"].as_str() {
            Some("ok") => "signature ok".to_owned(),
            Some("untrusted") => "signature untrusted (not by a given or trusted key)".into(),
            Some("invalid") => "signature INVALID".into(),
            Some("unverified") => "signature not checked (no --key, no trusted key)".into(),
            other => format!("signature {}", clean(other.unwrap_or("-"))),
        };
        let subject = if r["subject_matches"].as_bool() == Some(true) {
            "subject ok"
        } else {
            "subject MISMATCH (about another artifact)"
        };
        let errors: Vec<&Value> = r["provenance_errors"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        if let Some(summary) = r["verification"].as_str() {
            lines.push(format!(
                "attestation {}: {signature}, {subject}, verification summary: {}",
                short_id(&s(&r["keyid"])),
                clean(summary)
            ));
            continue;
        }
        let provenance = if errors.is_empty() {
            "provenance ok".to_owned()
        } else {
            format!("provenance: {} problem(s)", errors.len())
        };
        lines.push(format!(
            "attestation {}: {signature}, {subject}, {provenance}",
            short_id(&s(&r["keyid"]))
        ));
        let field = |k: &str| match &r[k] {
            Value::Null => "-".to_owned(),
            x => clean(&s(x)),
        };
        lines.push(format!(
            "  source {}, commit {}, builder {}",
            field("source"),
            field("commit"),
            field("builder")
        ));
        for e in errors {
            lines.push(format!("  provenance error: {}", clean(&s(e))));
        }
    }
    let p = &v["policy"];
    if p.is_object() {
        let env = clean(&s(&p["environment"]));
        if p["ok"].as_bool() == Some(true) {
            lines.push(format!("policy {env}: ok"));
        } else {
            lines.push(format!(
                "policy {env}: REFUSED, {}",
                clean(&s(&p["reason"]))
            ));
        }
        for c in p["checks"].as_array().into_iter().flatten() {
            lines.push(format!("  {}", clean(&s(c))));
        }
    }
    lines
}

/// Why a verify answer is not ok, in one line.
fn verify_reason(v: &Value, t: &VersionRef, keys_given: bool) -> String {
    if let Some(reason) = v["reason"].as_str() {
        return clean(reason);
    }
    let a = &v["artifact"];
    if a["ok"].as_bool() != Some(true) {
        return format!("{t} is damaged: {}", clean(&s(&a["error"])));
    }
    let p = &v["policy"];
    if p.is_object() && p["ok"].as_bool() != Some(true) {
        return format!(
            "{t} refused by {}'s policy: {}",
            clean(&s(&p["environment"])),
            clean(&s(&p["reason"]))
        );
    }
    if keys_given {
        let reports: Vec<&Value> = v["attestations"].as_array().into_iter().flatten().collect();
        if reports.is_empty() {
            return format!("{t} has no attestations (publish it with --sign KEYFILE)");
        }
        let why: Vec<String> = reports
            .iter()
            .map(|r| {
                let id = short_id(&s(&r["keyid"]));
                if r["signature"] != "ok" {
                    format!("{id}: signature {}", clean(&s(&r["signature"])))
                } else if r["subject_matches"] != true {
                    format!("{id}: about another artifact")
                } else if let Some(e) = r["provenance_errors"].get(0) {
                    format!("{id}: {}", clean(&s(e)))
                } else {
                    format!("{id}: not one of the given keys")
                }
            })
            .collect();
        return format!(
            "no attestation of {t} is signed by the given key with valid provenance ({})",
            why.join("; ")
        );
    }
    format!("{t} did not verify")
}

// ---- seal policy ----------------------------------------------------------

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Replace the policy of an environment: deploys (and rollbacks) there
    /// need a version signed by a trusted key, with the required
    /// provenance.
    ///
    /// Provenance is checked on an attestation signed by one of the trusted
    /// keys, so --require-provenance needs --trusted-key too. Every flag
    /// not given is cleared: the new policy is exactly what this command
    /// says.
    Set {
        /// Environment, e.g. production.
        env: String,
        /// Refuse versions without an attestation signed by a trusted key.
        #[arg(long)]
        require_signature: bool,
        /// A public key (PEM file from `seal keygen`, e.g. release.pub)
        /// whose signatures the environment trusts (repeat for more).
        #[arg(long = "trusted-key", value_name = "PUBFILE")]
        trusted_keys: Vec<PathBuf>,
        /// A provenance field the signed attestation must have: FIELD (any
        /// value) or FIELD=VALUE (exactly). Fields: source, commit,
        /// project, buildCommand, builder, buildType, or a dotted path in
        /// the SLSA predicate. Repeat for more.
        #[arg(long = "require-provenance", value_name = "FIELD[=VALUE]", value_parser = parse_requirement)]
        require_provenance: Vec<(String, Option<String>)>,
    },
    /// Show the policy of an environment.
    Show {
        /// Environment, e.g. production.
        env: String,
    },
    /// Remove the policy of an environment: any version may be deployed there.
    Clear {
        /// Environment, e.g. production.
        env: String,
    },
}

/// `--require-provenance` through [`seal_trust::parse_requirement`], with
/// only the reason in the message (clap names the flag and the value).
fn parse_requirement(s: &str) -> Result<(String, Option<String>), String> {
    seal_trust::parse_requirement(s).map_err(|e| match e {
        seal_trust::TrustError::Requirement(_, why) => why,
        other => other.to_string(),
    })
}

/// The body of `PUT /v1/policies/{env}`.
fn policy_body(
    require_signature: bool,
    trusted_keys: Vec<String>,
    requirements: &[(String, Option<String>)],
) -> anyhow::Result<Value> {
    let mut required = Map::new();
    for (name, value) in requirements {
        if required.contains_key(name) {
            bail!("--require-provenance {name} is given twice; give each field once");
        }
        required.insert(name.clone(), json!(value));
    }
    if !require_signature && trusted_keys.is_empty() && required.is_empty() {
        bail!(
            "nothing to set: give --require-signature, --trusted-key or --require-provenance (to remove the policy: seal policy clear ENV)"
        );
    }
    if trusted_keys.is_empty() && (require_signature || !required.is_empty()) {
        bail!(
            "this policy would refuse every version: signatures and provenance are checked against trusted keys; add --trusted-key PUBFILE (from `seal keygen`)"
        );
    }
    Ok(json!({
        "require_signature": require_signature,
        "trusted_keys": trusted_keys,
        "required_provenance": required,
    }))
}

pub async fn policy(cmd: PolicyCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let (env, v, verb) = match cmd {
        PolicyCommand::Set {
            env,
            require_signature,
            trusted_keys,
            require_provenance,
        } => {
            check_env(&env)?;
            let mut pems = Vec::with_capacity(trusted_keys.len());
            for path in &trusted_keys {
                pems.push(read_public_key("--trusted-key", path)?.0);
            }
            let body = policy_body(require_signature, pems, &require_provenance)?;
            let v = put_policy(client, &env, &body).await?;
            (env, v, Some("set"))
        }
        PolicyCommand::Show { env } => {
            check_env(&env)?;
            let v = client.get(&format!("/v1/policies/{env}")).await?;
            (env, v, None)
        }
        PolicyCommand::Clear { env } => {
            check_env(&env)?;
            let v = put_policy(client, &env, &json!({})).await?;
            (env, v, Some("cleared"))
        }
    };
    emit(out, &v, |v| {
        if verb == Some("cleared") {
            println!("cleared the policy of {env}: any version may be deployed there");
            return;
        }
        if let Some(verb) = verb {
            println!("{verb} the policy of {env}");
        }
        for line in policy_lines(v, &env) {
            println!("{line}");
        }
    });
    Ok(())
}

async fn put_policy(client: &Client, env: &str, body: &Value) -> anyhow::Result<Value> {
    client
        .send(
            client
                .request(reqwest::Method::PUT, &format!("/v1/policies/{env}"))
                .json(body),
        )
        .await
}

/// A policy answer for humans.
fn policy_lines(v: &Value, env: &str) -> Vec<String> {
    let p = &v["policy"];
    let keys: Vec<&Value> = p["trusted_keys"].as_array().into_iter().flatten().collect();
    let required: Vec<(&String, &Value)> = p["required_provenance"]
        .as_object()
        .into_iter()
        .flatten()
        .collect();
    let require_signature = p["require_signature"].as_bool() == Some(true);
    let mut lines = Vec::new();
    if !require_signature && keys.is_empty() && required.is_empty() {
        lines.push(format!("{env} has no policy: any version may be deployed"));
    } else {
        lines.push(format!(
            "  require signature    {}",
            if require_signature { "yes" } else { "no" }
        ));
        if keys.is_empty() {
            lines.push("  trusted keys         none".into());
        }
        for (i, k) in keys.iter().enumerate() {
            let label = if i == 0 { "trusted keys" } else { "" };
            lines.push(format!("  {label:<20} {}", s(&k["keyid"])));
        }
        if required.is_empty() {
            lines.push("  required provenance  none".into());
        }
        for (i, (name, value)) in required.iter().enumerate() {
            let label = if i == 0 { "required provenance" } else { "" };
            let want = match value {
                Value::Null => format!("{name} (any value)"),
                other => format!("{name} = {}", s(other)),
            };
            lines.push(format!("  {label:<20} {want}"));
        }
    }
    if !v["updated_at"].is_null() {
        lines.push(format!(
            "  updated              {} by {}",
            time(&v["updated_at"]),
            s(&v["updated_by"])
        ));
    }
    lines
}

// ---- deploy output --------------------------------------------------------

/// After a deploy (or rollback) answer in text: the permission difference
/// from the version that served before, and the trust checks made.
pub fn print_deploy_trust(v: &Value, function: &str) {
    for line in deploy_trust_lines(v, function) {
        println!("{line}");
    }
}

fn deploy_trust_lines(v: &Value, function: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let p = &v["permissions"];
    let changes = permission_lines(p);
    if !changes.is_empty() {
        lines.push(format!(
            "permissions vs {function}@{}:",
            s(&p["from_version"])
        ));
        lines.extend(changes.into_iter().map(|c| format!("  {c}")));
    }
    let c = &v["contracts"];
    let changes = contract_lines(c);
    if !changes.is_empty() {
        lines.push(format!(
            "event contracts vs {function}@{}{}:",
            s(&c["from_version"]),
            if c["breaking"] == true {
                " (breaking)"
            } else {
                ""
            }
        ));
        lines.extend(changes.into_iter().map(|c| format!("  {c}")));
    }
    let checks: Vec<&Value> = v["trust"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if !checks.is_empty() {
        lines.push("trust:".into());
        lines.extend(checks.into_iter().map(|c| format!("  {}", clean(&s(c)))));
    }
    lines
}

/// One line per contract change: `+` a type added, `-` removed, `!` a
/// consumed schema made stricter (with why), `~` changed otherwise.
pub fn contract_lines(c: &Value) -> Vec<String> {
    c["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ch| {
            let (mark, tail) = match ch["change"].as_str().unwrap_or("") {
                "added" => ("+", String::new()),
                "removed" => ("-", String::new()),
                "stricter" => {
                    let reasons: Vec<String> = ch["reasons"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| clean(&s(r)))
                        .collect();
                    ("!", format!(": schema stricter ({})", reasons.join("; ")))
                }
                _ => ("~", ": schema changed".to_owned()),
            };
            format!(
                "{mark} {} {}{tail}",
                clean(&s(&ch["side"])),
                clean(&s(&ch["type"]))
            )
        })
        .collect()
}

/// One line per permission change: `+` what the new version may do that
/// the old one may not, `-` what it gives up.
pub fn permission_lines(p: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let list = |k: &str| -> Vec<String> {
        p[k].as_array()
            .into_iter()
            .flatten()
            .map(|x| clean(&s(x)))
            .collect()
    };
    out.extend(
        list("added_hosts")
            .into_iter()
            .map(|h| format!("+ outbound host {h}")),
    );
    out.extend(
        list("removed_hosts")
            .into_iter()
            .map(|h| format!("- outbound host {h}")),
    );
    out.extend(
        list("added_config_keys")
            .into_iter()
            .map(|k| format!("+ config key {k}")),
    );
    out.extend(
        list("removed_config_keys")
            .into_iter()
            .map(|k| format!("- config key {k}")),
    );
    out.extend(
        list("added_queues")
            .into_iter()
            .map(|q| format!("+ publish to queue {q}")),
    );
    out.extend(
        list("removed_queues")
            .into_iter()
            .map(|q| format!("- publish to queue {q}")),
    );
    out.extend(
        list("added_flags")
            .into_iter()
            .map(|f| format!("+ read flag {f}")),
    );
    out.extend(
        list("removed_flags")
            .into_iter()
            .map(|f| format!("- read flag {f}")),
    );
    let pair = |k: &str| -> Option<(u64, u64)> {
        let a = p[k].as_array()?;
        Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?))
    };
    let sign = |a: u64, b: u64| if b > a { "+" } else { "-" };
    if let Some((a, b)) = pair("memory_mb").filter(|(a, b)| a != b) {
        out.push(format!("{} memory {a} MiB -> {b} MiB", sign(a, b)));
    }
    if let Some((a, b)) = pair("timeout_ms").filter(|(a, b)| a != b) {
        out.push(format!(
            "{} timeout {} -> {}",
            sign(a, b),
            crate::output::duration_ms(&json!(a)),
            crate::output::duration_ms(&json!(b))
        ));
    }
    if let Some([a, b]) = p["instance_reuse"]
        .as_array()
        .filter(|a| a.len() == 2)
        .map(|a| [a[0].as_u64(), a[1].as_u64()])
    {
        let says = |n: Option<u64>| match n {
            None => "a fresh instance per request".to_owned(),
            Some(n) => format!("{n} invocations per instance"),
        };
        out.push(format!(
            "{} instance reuse: {} -> {}",
            sign(a.unwrap_or(1), b.unwrap_or(1)),
            says(a),
            says(b)
        ));
    }
    out
}

// ---- helpers --------------------------------------------------------------

#[derive(clap::Subcommand, Debug)]
pub enum AttestationsCommand {
    /// List the attestations attached to a version: referrer, key id, who
    /// attached it and when.
    List {
        /// FUNCTION@VERSION, e.g. hello@3.
        #[arg(value_parser = parse_version_ref, value_name = "FUNCTION@VERSION")]
        target: VersionRef,
    },
    /// Remove one attestation from a version (admin; audited): junk that
    /// fills its slots, or a statement withdrawn.
    Remove {
        /// FUNCTION@VERSION, e.g. hello@3.
        #[arg(value_parser = parse_version_ref, value_name = "FUNCTION@VERSION")]
        target: VersionRef,
        /// The attestation's referrer digest, as `list` prints it.
        #[arg(value_name = "REFERRER")]
        referrer: String,
    },
}

pub async fn attestations(
    cmd: AttestationsCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        AttestationsCommand::List { target } => {
            let v = client
                .get(&format!(
                    "/v1/functions/{}/versions/{}/attestations",
                    target.function, target.version
                ))
                .await?;
            emit(out, &v, |v| {
                let list: Vec<&Value> =
                    v["attestations"].as_array().into_iter().flatten().collect();
                if list.is_empty() {
                    println!("{target} has no attestations");
                }
                for a in list {
                    println!(
                        "{}  key {}  by {}  at {}",
                        clean(&s(&a["referrer"])),
                        short_id(&s(&a["keyid"])),
                        clean(&s(&a["actor"])),
                        time(&a["created_at"])
                    );
                }
            });
        }
        AttestationsCommand::Remove { target, referrer } => {
            seal_artifact::Digest::parse(&referrer)
                .map_err(|e| anyhow::anyhow!("REFERRER {referrer:?}: {e}"))?;
            client
                .checked(client.request(
                    reqwest::Method::DELETE,
                    &format!(
                        "/v1/functions/{}/versions/{}/attestations/{referrer}",
                        target.function, target.version
                    ),
                ))
                .await?;
            let v = json!({"function": target.function, "version": target.version, "removed": referrer});
            emit(out, &v, |_| {
                println!("removed attestation {referrer} from {target}")
            });
        }
    }
    Ok(())
}

/// Environment names follow the function-name rule (checked before they go
/// into a URL).
fn check_env(env: &str) -> anyhow::Result<()> {
    Ok(seal_artifact::validate_environment_name(env)?)
}

/// `sha256:` + 12 hex digits + `…` for a key id; anything else as it is
/// (made safe for a terminal).
fn short_id(id: &str) -> String {
    match seal_artifact::Digest::parse(id) {
        Ok(d) => format!("sha256:{}…", d.short()),
        Err(_) if id.is_empty() || id == "-" => "(no keyid)".into(),
        Err(_) => clean(id),
    }
}

/// Text from the server that may come from an attacker's envelope, made
/// safe for a terminal: control characters escaped, length bounded.
fn clean(text: &str) -> String {
    const MAX: usize = 300;
    let mut out: String = if text.chars().any(char::is_control) {
        text.escape_debug().collect()
    } else {
        text.to_owned()
    };
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vr(function: &str, version: u64) -> VersionRef {
        VersionRef {
            function: function.into(),
            version,
        }
    }

    #[test]
    fn version_refs() {
        assert_eq!(parse_version_ref("hello@3"), Ok(vr("hello", 3)));
        assert_eq!(parse_version_ref("my-fn@12"), Ok(vr("my-fn", 12)));
        let err = |s: &str| parse_version_ref(s).unwrap_err();
        assert_eq!(
            err("hello"),
            "expected FUNCTION@VERSION, e.g. hello@3; got \"hello\""
        );
        for bad in [
            "hello@",
            "hello@0",
            "hello@x",
            "hello@-1",
            "hello@+3",
            "hello@3@4",
        ] {
            assert!(
                err(bad).contains("version number from 1"),
                "{bad}: {}",
                err(bad)
            );
        }
        assert!(err("Hello@3").contains("invalid function name"));
        assert!(err("@3").contains("invalid function name"));
        assert_eq!(vr("hello", 3).to_string(), "hello@3");
    }

    #[test]
    fn requirements_become_the_put_body() {
        let reqs: Vec<(String, Option<String>)> = [
            "source=git+https://example.org/team/hello",
            " commit ",
            "builder = https://seal.dev/builder/seal-cli@0.1.0",
        ]
        .iter()
        .map(|r| parse_requirement(r).expect("parses"))
        .collect();
        let body = policy_body(true, vec!["PEM".into()], &reqs).expect("body");
        assert_eq!(
            body,
            json!({
                "require_signature": true,
                "trusted_keys": ["PEM"],
                "required_provenance": {
                    "source": "git+https://example.org/team/hello",
                    "commit": null,
                    "builder": "https://seal.dev/builder/seal-cli@0.1.0",
                },
            })
        );
        // Trusted keys alone are a valid (non-enforcing) policy.
        let body = policy_body(false, vec!["PEM".into()], &[]).expect("body");
        assert_eq!(body["require_signature"], false);
        assert_eq!(body["required_provenance"], json!({}));

        assert!(
            parse_requirement("source=")
                .unwrap_err()
                .contains("empty value")
        );
        assert!(parse_requirement("=x").unwrap_err().contains("FIELD=VALUE"));
        assert!(parse_requirement("a b").is_err());

        let twice = [
            ("source".to_owned(), Some("a".to_owned())),
            ("source".to_owned(), None),
        ];
        let err = policy_body(false, vec!["PEM".into()], &twice).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
        let err = policy_body(false, vec![], &[]).unwrap_err();
        assert!(err.to_string().contains("nothing to set"), "{err}");
        let err = policy_body(true, vec![], &[]).unwrap_err();
        assert!(err.to_string().contains("--trusted-key"), "{err}");
        let err = policy_body(false, vec![], &reqs).unwrap_err();
        assert!(err.to_string().contains("refuse every version"), "{err}");
    }

    #[test]
    fn permission_diff_lines() {
        let p = json!({
            "added_hosts": ["api.example.org"],
            "removed_hosts": ["old.example.org"],
            "added_config_keys": ["NEW"],
            "removed_config_keys": ["OLD"],
            "memory_mb": [128, 256],
            "timeout_ms": [30000, 10000],
            "widens": true,
            "from_version": 2,
        });
        assert_eq!(
            permission_lines(&p),
            [
                "+ outbound host api.example.org",
                "- outbound host old.example.org",
                "+ config key NEW",
                "- config key OLD",
                "+ memory 128 MiB -> 256 MiB",
                "- timeout 30s -> 10s",
            ]
        );
        let v = json!({
            "deployment": {},
            "permissions": p,
            "trust": {"checks": ["artifact: 3 blobs verified", "signature: ok, key sha256:ab…"]},
        });
        let lines = deploy_trust_lines(&v, "hello");
        assert_eq!(lines[0], "permissions vs hello@2:");
        assert_eq!(lines[1], "  + outbound host api.example.org");
        assert_eq!(lines[7], "trust:");
        assert_eq!(lines[8], "  artifact: 3 blobs verified");
        assert_eq!(lines.len(), 10);

        // Nothing served before, or nothing changed: no permission lines.
        assert!(deploy_trust_lines(&json!({"permissions": null}), "hello").is_empty());
        let same = json!({"permissions": {"added_hosts": [], "removed_hosts": [],
            "added_config_keys": [], "removed_config_keys": [], "widens": false, "from_version": 1}});
        assert!(deploy_trust_lines(&same, "hello").is_empty());
        // Flags and instance reuse, as the server's diff names them.
        let more = json!({"added_flags": ["new-checkout"], "removed_flags": ["old"],
            "instance_reuse": [null, 1000], "widens": true, "from_version": 1});
        assert_eq!(
            permission_lines(&more),
            [
                "+ read flag new-checkout",
                "- read flag old",
                "+ instance reuse: a fresh instance per request -> 1000 invocations per instance",
            ]
        );
    }

    #[test]
    fn contract_diff_lines() {
        let v = json!({"contracts": {"from_version": 3, "breaking": true, "changes": [
            {"side": "consumes", "type": "order.created", "change": "stricter",
             "reasons": ["/ now requires id", "/n minimum raised to 1"], "breaking": true},
            {"side": "produces", "type": "invoice.issued", "change": "removed", "breaking": true},
            {"side": "consumes", "type": "order.paid", "change": "added", "breaking": false},
            {"side": "produces", "type": "x\u{1b}[2J", "change": "changed", "breaking": false},
        ]}});
        assert_eq!(
            deploy_trust_lines(&v, "billing"),
            [
                "event contracts vs billing@3 (breaking):",
                "  ! consumes order.created: schema stricter (/ now requires id; /n minimum raised to 1)",
                "  - produces invoice.issued",
                "  + consumes order.paid",
                "  ~ produces x\\u{1b}[2J: schema changed",
            ]
        );
        assert!(deploy_trust_lines(&json!({"contracts": null}), "billing").is_empty());
    }

    #[test]
    fn verify_text_and_reasons() {
        let t = vr("hello", 3);
        let d = seal_artifact::sha256_digest(b"m").to_string();
        let v = json!({
            "function": "hello", "version": 3, "digest": d, "ok": false,
            "artifact": {"ok": true},
            "attestations": [{
                "keyid": d, "signature": "untrusted", "subject_matches": true,
                "provenance_errors": [], "source": "git+https://x/\u{1b}[31mred",
                "commit": "abc", "builder": null, "build_type": null,
            }],
            "policy": {"environment": "production", "ok": false,
                       "reason": "signed by untrusted key", "checks": []},
        });
        let lines = verify_lines(&v, &t);
        assert_eq!(lines[0], format!("hello@3 {d}"));
        assert_eq!(lines[1], "artifact: ok, every blob matches its digest");
        assert!(lines[2].starts_with("attestation sha256:"), "{}", lines[2]);
        assert!(lines[2].contains("signature untrusted"), "{}", lines[2]);
        assert!(!lines[3].contains('\u{1b}'), "control characters escaped");
        assert!(lines[3].contains("commit abc, builder -"), "{}", lines[3]);
        assert_eq!(
            lines[4],
            "policy production: REFUSED, signed by untrusted key"
        );
        assert_eq!(
            verify_reason(&v, &t, false),
            "hello@3 refused by production's policy: signed by untrusted key"
        );

        let mut v2 = v.clone();
        v2["policy"] = json!({"environment": "production", "ok": true, "checks": []});
        let reason = verify_reason(&v2, &t, true);
        assert!(reason.starts_with("no attestation of hello@3"), "{reason}");
        assert!(reason.contains("signature untrusted"), "{reason}");
        v2["attestations"] = json!([]);
        assert!(verify_reason(&v2, &t, true).contains("no attestations"));
        v2["artifact"] = json!({"ok": false, "error": "blob sha256:x is damaged"});
        assert_eq!(
            verify_reason(&v2, &t, true),
            "hello@3 is damaged: blob sha256:x is damaged"
        );
    }

    #[test]
    fn policy_text() {
        let v = json!({"environment": "production", "policy": {
            "require_signature": true,
            "trusted_keys": [{"keyid": "sha256:k1", "pem": "…"}, {"keyid": "sha256:k2", "pem": "…"}],
            "required_provenance": {"commit": null, "source": "git+https://x"}},
            "updated_at": null, "updated_by": null});
        assert_eq!(
            policy_lines(&v, "production"),
            [
                "  require signature    yes",
                "  trusted keys         sha256:k1",
                "                       sha256:k2",
                "  required provenance  commit (any value)",
                "                       source = git+https://x",
            ]
        );
        let empty = json!({"policy": {"require_signature": false, "trusted_keys": [],
            "required_provenance": {}}, "updated_at": null});
        assert_eq!(
            policy_lines(&empty, "staging"),
            ["staging has no policy: any version may be deployed"]
        );
    }

    #[test]
    fn keygen_writes_a_private_and_a_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("release.key");
        let args = |force| KeygenArgs {
            out: out.clone(),
            force,
        };
        keygen(args(false), OutputFormat::Json).expect("keygen");
        let private = std::fs::read_to_string(&out).expect("private");
        let public = std::fs::read_to_string(dir.path().join("release.pub")).expect("public");
        let key = seal_trust::SigningKey::from_pem(&private).expect("private key");
        let pubkey = seal_trust::PublicKey::from_pem(&public).expect("public key");
        assert_eq!(key.keyid(), pubkey.keyid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = keygen(args(false), OutputFormat::Json).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).expect("kept"), private);
        keygen(args(true), OutputFormat::Json).expect("--force replaces");
        assert_ne!(std::fs::read_to_string(&out).expect("new"), private);

        assert!(public_key_path(Path::new("release.pub")).is_err());
        assert_eq!(
            public_key_path(Path::new("keys/release")).expect("path"),
            Path::new("keys/release.pub")
        );
        let err = read_signing_key(&dir.path().join("release.pub")).unwrap_err();
        assert!(
            format!("{err:#}").contains("this is a public key"),
            "{err:#}"
        );
        let err = read_public_key("--key", &out).unwrap_err();
        assert!(
            format!("{err:#}").contains("this is a private key"),
            "{err:#}"
        );
    }
}
