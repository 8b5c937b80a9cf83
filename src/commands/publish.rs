//! `seal publish DIR|FILE.wasm`: build (for a project directory), pack into a
//! sealed OCI artifact, upload its blobs, and create the version.

use crate::client::Client;
use crate::output::{OutputFormat, emit};
use anyhow::{Context, bail};
use clap::Args;
use seal_artifact::{Digest, PackedArtifact, ProjectFile, SealManifest, pack, sha256_digest};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// A project directory with a seal.toml (built, then packed), or a
    /// component .wasm file (packed as is).
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
}

pub async fn run(args: PublishArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let (component, mut manifest) = if args.path.is_dir() {
        load_project(&args.path, args.no_build)?
    } else if args.path.is_file() {
        let bytes = std::fs::read(&args.path)
            .with_context(|| format!("cannot read {}", args.path.display()))?;
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| name_from_file(&args.path));
        (bytes, SealManifest::new(&name))
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
    manifest.provenance.builder = Some(format!("seal-cli/{}", env!("CARGO_PKG_VERSION")));

    let packed = pack(&component, &manifest)
        .with_context(|| format!("cannot publish {}", args.path.display()))?;
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
    let result = json!({
        "function": v["function"],
        "version": v["version"],
        "digest": v["digest"],
        "created": v["created"],
    });
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
    });
    Ok(())
}

/// Reads seal.toml, runs its build command, and returns the component and manifest.
fn load_project(dir: &Path, no_build: bool) -> anyhow::Result<(Vec<u8>, SealManifest)> {
    let toml_path = dir.join("seal.toml");
    let text = std::fs::read_to_string(&toml_path)
        .with_context(|| format!("{} has no readable seal.toml", dir.display()))?;
    let project =
        ProjectFile::parse(&text).with_context(|| format!("in {}", toml_path.display()))?;
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
    }
    let component_path = dir.join(&project.build.component);
    let component = std::fs::read(&component_path).with_context(|| {
        format!(
            "cannot read the built component {} (build.component in {})",
            component_path.display(),
            toml_path.display()
        )
    })?;
    let mut manifest = project.to_manifest();
    manifest.provenance.source = git(dir, &["config", "--get", "remote.origin.url"]);
    manifest.provenance.commit = git(dir, &["rev-parse", "HEAD"]);
    Ok((component, manifest))
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
    use super::name_from_file;
    use std::path::Path;

    #[test]
    fn file_names_become_function_names() {
        assert_eq!(
            name_from_file(Path::new("/x/Hello_World.wasm")),
            "hello-world"
        );
        assert_eq!(name_from_file(Path::new("guest_echo.wasm")), "guest-echo");
    }
}
