//! `seal publish DIR|FILE.wasm`: build (for a project directory), pack into a
//! sealed OCI artifact, upload its blobs, and create the version.

use crate::client::Client;
use crate::output::{OutputFormat, emit};
use anyhow::{Context, bail};
use clap::Args;
use seal_artifact::{Digest, PackedArtifact, ProjectFile, SealManifest, pack, sha256_digest};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// A project directory with a seal.toml (built, then packed), a
    /// component .wasm file (packed as is), or a component someone pushed
    /// to a registry in the Wasm OCI artifact layout (`wkg oci push`,
    /// `oras`), pinned by digest: oci://host[:port]/repository@sha256:….
    path: PathBuf,
    /// Function name (default: seal.toml's name, or the file name).
    #[arg(long)]
    name: Option<String>,
    /// Skip the build command of seal.toml; pack the component as it is.
    #[arg(long)]
    no_build: bool,
    /// Memory limit of each invocation, e.g. 128MiB (overrides seal.toml).
    #[arg(long, value_parser = super::server::parse_size)]
    memory: Option<u64>,
    /// Time limit of each invocation, e.g. 30s, 500ms (overrides seal.toml).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Requests served at once in an environment, all versions together;
    /// past it the gateway answers 429 (overrides seal.toml; default: the
    /// server's --function-concurrency).
    #[arg(long, value_name = "N")]
    max_concurrency: Option<u32>,
    /// Invocations one instance may serve, one at a time, keeping its
    /// global state between them (overrides seal.toml's [limits]
    /// instance_reuse; default: a fresh instance per request).
    #[arg(long, value_name = "N")]
    instance_reuse: Option<u32>,
    /// Allow outbound HTTP requests to this host (repeat for more; adds to
    /// seal.toml's [capabilities] outbound_hosts): api.example.org,
    /// api.example.org:8443, *.example.org, 127.0.0.1:9000, or * for any.
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Let the function see this config key or secret (repeat for more;
    /// adds to [capabilities] config_keys; * for every key).
    #[arg(long = "config-key", value_name = "KEY")]
    config_keys: Vec<String>,
    /// Let the function evaluate this feature flag through OFREP at
    /// http://flags.seal.internal (repeat for more; adds to
    /// [capabilities] flags).
    #[arg(long = "flag", value_name = "KEY")]
    flags: Vec<String>,
    /// Sign the published version with this private key (from `seal
    /// keygen`): an SLSA provenance statement about the artifact's digest
    /// (source, commit, build command, Cargo.lock dependencies, builder) in
    /// a DSSE envelope, attached to the version. The key is read first: a
    /// bad key file stops the publish before anything is built or sent.
    #[arg(long, value_name = "KEYFILE", help_heading = "Provenance")]
    sign: Option<PathBuf>,
    /// Where the source comes from, e.g. git+https://example.org/team/hello
    /// (default for a project directory: its git remote origin).
    #[arg(long, value_name = "URL", help_heading = "Provenance")]
    source: Option<String>,
    /// The source revision (default for a project directory: its git HEAD).
    #[arg(long, value_name = "SHA", help_heading = "Provenance")]
    commit: Option<String>,
}

pub async fn run(args: PublishArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    // A bad key fails here, before anything is built or uploaded.
    let signing_key = match &args.sign {
        Some(path) => Some(super::trust::read_signing_key(path)?),
        None => None,
    };
    let project_dir = args.path.is_dir().then(|| args.path.clone());
    let started_on = SystemTime::now();
    let path = args.path.to_string_lossy();
    let mut pulled_from = None;
    let (component, mut manifest, built_with) = if let Some(dir) = &project_dir {
        load_project(dir, args.no_build)?
    } else if path.starts_with("oci://") || path.starts_with("oci+http://") {
        let pulled = seal_server::pull_component(&path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot pull {path}: {e}"))?;
        let name = args.name.clone().unwrap_or(pulled.name);
        pulled_from = Some(pulled.reference);
        (pulled.wasm, SealManifest::new(&name), None)
    } else if args.path.is_file() {
        let bytes = std::fs::read(&args.path)
            .with_context(|| format!("cannot read {}", args.path.display()))?;
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| name_from_file(&args.path));
        (bytes, SealManifest::new(&name), None)
    } else {
        bail!(
            "{} is neither a project directory nor a .wasm file",
            args.path.display()
        );
    };
    if let Some(name) = &args.name {
        manifest.name = name.clone();
    }
    if let Some(bytes) = args.memory {
        manifest.limits.memory_mb = bytes.div_ceil(1 << 20);
    }
    if let Some(t) = args.timeout {
        manifest.limits.timeout_ms = t.as_millis().try_into().unwrap_or(u64::MAX);
    }
    if let Some(n) = args.max_concurrency {
        manifest.limits.max_concurrency = Some(n);
    }
    if let Some(n) = args.instance_reuse {
        manifest.limits.instance_reuse = Some(n);
    }
    for h in args.allow_hosts {
        if !manifest.capabilities.outbound_hosts.contains(&h) {
            manifest.capabilities.outbound_hosts.push(h);
        }
    }
    for k in args.config_keys {
        if !manifest.capabilities.config_keys.contains(&k) {
            manifest.capabilities.config_keys.push(k);
        }
    }
    for f in args.flags {
        if !manifest.capabilities.flags.contains(&f) {
            manifest.capabilities.flags.push(f);
        }
    }
    // The same source and commit go into the manifest and the attestation.
    let git_top = project_dir
        .as_deref()
        .and_then(|d| git(d, &["rev-parse", "--show-toplevel"]))
        .map(PathBuf::from);
    let source = args.source.clone().or(pulled_from).or_else(|| {
        project_dir
            .as_deref()
            .and_then(|d| git(d, &["remote", "get-url", "origin"]))
            .map(|url| source_from_remote(&url))
    });
    let commit = args.commit.clone().or_else(|| {
        project_dir
            .as_deref()
            .and_then(|d| git(d, &["rev-parse", "HEAD"]))
    });
    manifest.provenance.source = source.clone();
    manifest.provenance.commit = commit.clone();
    manifest.provenance.builder = Some(format!("seal-cli/{}", env!("CARGO_PKG_VERSION")));

    let packed = pack(&component, &manifest)
        .with_context(|| format!("cannot publish {}", args.path.display()))?;
    let finished_on = SystemTime::now();

    // Everything the attestation says is gathered before anything is sent.
    let provenance = match &signing_key {
        None => None,
        Some(_) => {
            let (project, resolved_dependencies) = match &project_dir {
                Some(dir) => (
                    git_top.as_deref().and_then(|top| project_path(dir, top)),
                    lock_dependencies(dir, git_top.as_deref())?,
                ),
                None => (None, Vec::new()),
            };
            let missing: Vec<&str> = [("source", &source), ("commit", &commit)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(name, _)| name)
                .collect();
            if !missing.is_empty() {
                eprintln!(
                    "note: the signed provenance has no {} (none given and none found in git): add --source URL / --commit SHA if a policy requires them",
                    missing.join(" or ")
                );
            }
            Some(seal_trust::BuildInfo {
                function: manifest.name.clone(),
                subject: packed.digest.clone(),
                build_type: if project_dir.is_some() {
                    seal_trust::BUILD_TYPE
                } else {
                    seal_trust::BUILD_TYPE_PREBUILT
                }
                .to_owned(),
                source: source.clone(),
                commit: commit.clone(),
                build_command: built_with,
                project,
                resolved_dependencies,
                builder_id: format!(
                    "https://seal.dev/builder/seal-cli@{}",
                    env!("CARGO_PKG_VERSION")
                ),
                started_on,
                finished_on,
            })
        }
    };

    // Check the server's limit first, so a big component is refused before
    // megabytes are sent (the server enforces it regardless).
    let info = client.get("/v1/server").await?;
    if let Some(limit) = info["max_upload_bytes"].as_u64()
        && component.len() as u64 > limit
    {
        bail!(
            "the component is {} bytes, larger than the limit of {limit} bytes this server accepts (seal server --max-upload-size)",
            component.len()
        );
    }
    upload_blob(client, &packed.config_bytes, &packed.config_digest).await?;
    upload_blob(client, &component, &packed.layer_digest).await?;
    let v = publish_manifest(client, &packed).await?;
    let mut result = json!({
        "function": v["function"],
        "version": v["version"],
        "digest": v["digest"],
        "created": v["created"],
    });
    if let (Some(key), Some(info)) = (&signing_key, &provenance) {
        let published = format!("{}@{}", crate::output::s(&v["function"]), v["version"]);
        if v["digest"].as_str() != Some(packed.digest.as_str()) {
            bail!(
                "published {published} as {}, but the artifact packed here is {}: not signing it",
                crate::output::s(&v["digest"]),
                packed.digest
            );
        }
        let envelope = seal_trust::Envelope::sign(&seal_trust::statement(info), key);
        let path = format!(
            "/v1/functions/{}/versions/{}/attestations",
            crate::output::s(&v["function"]),
            v["version"]
        );
        let a = client
            .send(
                client
                    .request(reqwest::Method::POST, &path)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(envelope.to_json()),
            )
            .await
            .with_context(|| {
                format!(
                    "{published} is published ({}), but attaching its signed provenance failed",
                    packed.digest
                )
            })?;
        result["signed"] = json!({
            "keyid": a["keyid"].as_str().unwrap_or(key.keyid()),
            "referrer": a["referrer"],
        });
    }
    emit(out, &result, |r| {
        let how = if r["created"].as_bool() == Some(true) {
            "published"
        } else {
            "already published as"
        };
        println!(
            "{how} {}@{} {}",
            crate::output::s(&r["function"]),
            r["version"],
            crate::output::s(&r["digest"])
        );
        if r["signed"].is_object() {
            println!(
                "signed {}@{} with key {} (provenance: source {}, commit {})",
                crate::output::s(&r["function"]),
                r["version"],
                crate::output::s(&r["signed"]["keyid"]),
                source.as_deref().unwrap_or("unknown"),
                commit.as_deref().unwrap_or("unknown"),
            );
        }
    });
    Ok(())
}

/// A git remote URL as an SLSA source URI: `git+` + the URL, with the
/// credentials of an https URL removed (they must not end up in a signed,
/// stored statement) and scp-like `user@host:path` written as `ssh://`.
fn source_from_remote(url: &str) -> String {
    let url = url.trim();
    if url.starts_with("git+") {
        return url.to_owned();
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        let authority = match authority.rsplit_once('@') {
            Some((_, host)) if web => host.to_owned(),
            Some((user, host)) => {
                let user = user.split_once(':').map_or(user, |(u, _)| u);
                format!("{user}@{host}")
            }
            None => authority.to_owned(),
        };
        return format!("git+{scheme}://{authority}{path}");
    }
    if url.starts_with('/') {
        return format!("git+file://{url}");
    }
    match url.split_once(':') {
        // scp-like syntax: [user@]host:path (no slash before the colon).
        Some((host, path)) if !host.contains('/') && !host.is_empty() => {
            format!("git+ssh://{host}/{}", path.trim_start_matches('/'))
        }
        _ => format!("git+{url}"),
    }
}

/// The project directory relative to the git top-level, `/`-separated
/// (`.` for the top-level itself).
fn project_path(dir: &Path, top: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let top = top.canonicalize().ok()?;
    let rel = dir.strip_prefix(&top).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

/// The nearest Cargo.lock in `dir` or its parents, up to the git top-level
/// (only `dir` itself outside git).
fn find_cargo_lock(dir: &Path, top: Option<&Path>) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    let top = top.and_then(|t| t.canonicalize().ok());
    let mut at = dir.as_path();
    loop {
        let lock = at.join("Cargo.lock");
        if lock.is_file() {
            return Some(lock);
        }
        match (&top, at.parent()) {
            (Some(top), Some(parent)) if at != top && at.starts_with(top) => at = parent,
            _ => return None,
        }
    }
}

fn lock_dependencies(
    dir: &Path,
    top: Option<&Path>,
) -> anyhow::Result<Vec<seal_trust::ResolvedDependency>> {
    let Some(lock) = find_cargo_lock(dir, top) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&lock)
        .with_context(|| format!("cannot read {}", lock.display()))?;
    seal_trust::cargo_lock_dependencies(&text)
        .with_context(|| format!("--sign: cannot list the dependencies in {}", lock.display()))
}

/// Reads seal.toml, runs its build command, and returns the component, the
/// manifest, and the build command if it ran.
fn load_project(
    dir: &Path,
    no_build: bool,
) -> anyhow::Result<(Vec<u8>, SealManifest, Option<String>)> {
    let toml_path = dir.join("seal.toml");
    let text = std::fs::read_to_string(&toml_path)
        .with_context(|| format!("{} has no readable seal.toml", dir.display()))?;
    let project =
        ProjectFile::parse(&text).with_context(|| format!("in {}", toml_path.display()))?;
    let mut built_with = None;
    if let (Some(cmd), false) = (&project.build.command, no_build) {
        eprintln!("building {}: {cmd}", project.name);
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .status()
            .with_context(|| format!("cannot run build command {cmd:?}"))?;
        if !status.success() {
            bail!("build command {cmd:?} failed ({status})");
        }
        built_with = Some(cmd.clone());
    }
    let component_path = dir.join(&project.build.component);
    let component = std::fs::read(&component_path).with_context(|| {
        format!(
            "cannot read the built component {} (build.component in {})",
            component_path.display(),
            toml_path.display()
        )
    })?;
    let manifest = project
        .to_manifest(|path| std::fs::read(dir.join(path)))
        .with_context(|| format!("in {}", toml_path.display()))?;
    Ok((component, manifest, built_with))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// `Hello_World.wasm` → `hello-world`.
fn name_from_file(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    stem.to_ascii_lowercase().replace(['_', '.', ' '], "-")
}

async fn upload_blob(client: &Client, bytes: &[u8], digest: &Digest) -> anyhow::Result<()> {
    debug_assert_eq!(&sha256_digest(bytes), digest);
    let path = format!("/v1/blobs/{digest}");
    let head = client
        .request(reqwest::Method::HEAD, &path)
        .send()
        .await
        .map_err(|e| client.unreachable(e))?;
    if head.status().is_success() {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("uploading {bytes}/{total_bytes} {wide_bar} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if bytes.len() < (1 << 20) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let chunks: Vec<Vec<u8>> = bytes.chunks(256 << 10).map(<[u8]>::to_vec).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks.into_iter().map(move |c| {
        progress.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    }));
    let result = client
        .send(
            client
                .request(reqwest::Method::PUT, &path)
                .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    bar.finish_and_clear();
    result.map(|_| ()).context("upload refused")
}

async fn publish_manifest(
    client: &Client,
    packed: &PackedArtifact,
) -> anyhow::Result<serde_json::Value> {
    client
        .send(
            client
                .request(reqwest::Method::POST, "/v1/artifacts")
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/vnd.oci.image.manifest.v1+json",
                )
                .body(packed.manifest_bytes.clone()),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_remotes_become_source_uris() {
        let cases = [
            (
                "https://example.org/team/hello.git",
                "git+https://example.org/team/hello.git",
            ),
            (
                "https://ci:ghp_secret@github.com/team/hello",
                "git+https://github.com/team/hello",
            ),
            (
                "ssh://git:pw@example.org:2222/team/hello.git",
                "git+ssh://git@example.org:2222/team/hello.git",
            ),
            (
                "git@github.com:team/hello.git",
                "git+ssh://git@github.com/team/hello.git",
            ),
            ("/srv/git/hello.git", "git+file:///srv/git/hello.git"),
            ("git+https://example.org/x", "git+https://example.org/x"),
        ];
        for (remote, want) in cases {
            assert_eq!(source_from_remote(remote), want, "{remote}");
        }
    }

    #[test]
    fn cargo_lock_is_found_up_to_the_git_top_level() {
        let root = tempfile::tempdir().expect("tempdir");
        let top = root.path().join("repo");
        let project = top.join("functions/hello");
        std::fs::create_dir_all(&project).expect("mkdir");
        // A lock above the top-level is not the project's.
        std::fs::write(root.path().join("Cargo.lock"), "").expect("write");
        assert_eq!(find_cargo_lock(&project, Some(&top)), None);
        assert_eq!(find_cargo_lock(&project, None), None);
        std::fs::write(top.join("Cargo.lock"), "").expect("write");
        let found = find_cargo_lock(&project, Some(&top)).expect("workspace lock");
        assert!(found.ends_with("repo/Cargo.lock"), "{}", found.display());
        assert_eq!(find_cargo_lock(&project, None), None);
        std::fs::write(project.join("Cargo.lock"), "").expect("write");
        let found = find_cargo_lock(&project, None).expect("own lock");
        assert!(found.ends_with("hello/Cargo.lock"), "{}", found.display());

        assert_eq!(
            project_path(&project, &top).as_deref(),
            Some("functions/hello")
        );
        assert_eq!(project_path(&top, &top).as_deref(), Some("."));
        assert_eq!(project_path(root.path(), &top), None);
    }

    #[test]
    fn file_names_become_function_names() {
        assert_eq!(
            name_from_file(Path::new("/x/Hello_World.wasm")),
            "hello-world"
        );
        assert_eq!(name_from_file(Path::new("guest_echo.wasm")), "guest-echo");
    }
}
