//! The catalog: the service that turns uploaded artifacts into versions
//! and versions into loaded, verified functions. It owns the in-memory
//! cache of pre-instantiated functions; nothing else reads the artifact
//! store's blobs to run them.
//!
//! Every load re-hashes the artifact's blobs (a damaged blob is refused
//! and never executed); the compiled form comes from memory, else from
//! the compile cache (hash-checked), else is recompiled from the verified
//! component. Compilation happens here, at publish and on load, never on
//! a request.

use crate::error::{ControlError, ControlResult};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use seal_artifact::{Digest, SealManifest, parse_oci_manifest, sha256_digest, validate_component};
use seal_oci::{ANNOTATION_FUNCTION, ANNOTATION_REF_NAME, ArtifactStore, IndexEntry};
use seal_runtime::{Function, FunctionLimits, Loader};
use seal_serving::RouteTable;
use seal_state::{NewVersion, StateStore, VersionRecord};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What a publish produced.
#[derive(Debug, Serialize)]
pub struct Published {
    pub function: String,
    pub version: u64,
    pub digest: String,
    /// False when this digest already had a version.
    pub created: bool,
}

/// A stored blob, after an upload.
#[derive(Debug, Serialize)]
pub struct BlobPut {
    pub digest: Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub existed: bool,
}

pub struct Catalog {
    state: Arc<dyn StateStore>,
    oci: Arc<dyn ArtifactStore>,
    runtime: Arc<dyn Loader>,
    /// Pre-instantiated functions by artifact digest (the data plane only
    /// sees the `Arc`s placed in the route table).
    loaded: Mutex<HashMap<String, Arc<Function>>>,
    /// The largest blob an upload may bring.
    max_upload_bytes: u64,
}

impl Catalog {
    pub fn new(
        state: Arc<dyn StateStore>,
        oci: Arc<dyn ArtifactStore>,
        runtime: Arc<dyn Loader>,
        max_upload_bytes: u64,
    ) -> Self {
        Self {
            state,
            oci,
            runtime,
            loaded: Mutex::default(),
            max_upload_bytes,
        }
    }

    /// Whether an intact blob is stored (re-hashed off the async workers).
    pub async fn has_blob(&self, digest: &Digest) -> bool {
        let oci = self.oci.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || oci.has_blob(&digest))
            .await
            .unwrap_or(false)
    }

    /// Streams a blob into the artifact store, hashing and counting as it
    /// goes: refused past the upload limit (without buffering) or when the
    /// bytes do not hash to `expected`. A refused upload leaves nothing
    /// behind; the caller may drain what `body` still holds.
    pub async fn put_blob<S>(
        &self,
        expected: Digest,
        announced_len: Option<u64>,
        body: &mut S,
    ) -> ControlResult<BlobPut>
    where
        S: Stream<Item = Result<Bytes, String>> + Unpin,
    {
        let limit = self.max_upload_bytes;
        if announced_len.is_some_and(|len| len > limit) {
            return Err(seal_oci::StoreError::TooLarge { limit }.into());
        }
        if self.has_blob(&expected).await {
            return Ok(BlobPut {
                digest: expected,
                size: None,
                existed: true,
            });
        }
        let mut writer = self.oci.upload(limit)?;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ControlError::bad_request(format!("upload interrupted: {e}")))?;
            // Dropping the writer removes the partial upload.
            writer.write(&chunk)?;
        }
        let size = writer.written();
        let digest = tokio::task::spawn_blocking(move || writer.commit(Some(&expected)))
            .await
            .map_err(ControlError::internal)??;
        Ok(BlobPut {
            digest,
            size: Some(size),
            existed: false,
        })
    }

    /// Turns an uploaded OCI manifest (whose blobs are already in the store)
    /// into `function@N`: every digest recomputed, the component validated,
    /// compiled once, and the version recorded.
    pub async fn publish(&self, manifest_bytes: Vec<u8>, actor: &str) -> ControlResult<Published> {
        let digest = sha256_digest(&manifest_bytes);
        let refs = parse_oci_manifest(&manifest_bytes)?;
        let oci = self.oci.clone();
        let (config_digest, config_size) = (refs.config_digest.clone(), refs.config_size);
        let config = blocking(move || oci.read_blob(&config_digest)).await??;
        if config.len() as u64 != config_size {
            return Err(ControlError::invalid_artifact(format!(
                "config blob is {} bytes, the manifest says {config_size}",
                config.len()
            )));
        }
        let manifest = SealManifest::from_json(&config)?;

        // Published before (on this node, or on another node on a shared
        // store): nothing to do when this node's store has the artifact;
        // otherwise it is checked and stored here too, and the version
        // stays the one recorded.
        if let Some(existing) = self.state.version_by_digest(digest.as_str()).await?
            && self.has_blob(&digest).await
        {
            return Ok(Published {
                function: existing.function,
                version: existing.version,
                digest: existing.digest,
                created: false,
            });
        }

        let oci = self.oci.clone();
        let runtime = self.runtime.clone();
        let layer_digest = refs.layer_digest.clone();
        let layer_size = refs.layer_size;
        let manifest_for_load = manifest.clone();
        let bytes_for_store = manifest_bytes.clone();
        let (function, compiled_sha) = blocking(move || -> ControlResult<_> {
            let wasm = oci.read_blob(&layer_digest)?;
            if wasm.len() as u64 != layer_size {
                return Err(ControlError::invalid_artifact(format!(
                    "component blob is {} bytes, the manifest says {layer_size}",
                    wasm.len()
                )));
            }
            validate_component(&wasm)?;
            // Keyed by the component: artifacts made of the same
            // component share one compiled form.
            let (function, sha) = runtime.prepare(
                layer_digest.hex(),
                None,
                Box::new(|| Ok(wasm)),
                limits_of(&manifest_for_load),
            )?;
            oci.put_blob(&bytes_for_store)?;
            Ok((function, sha.unwrap_or_default()))
        })
        .await??;

        let manifest_json = serde_json::to_value(&manifest).map_err(ControlError::internal)?;
        let (version, created) = self
            .state
            .create_version(NewVersion {
                function: &manifest.name,
                digest: digest.as_str(),
                manifest: &manifest_json,
                component_size: refs.layer_size,
                compiled_sha256: &compiled_sha,
                actor,
            })
            .await?;
        let oci = self.oci.clone();
        let entry = index_entry(&version, &digest, manifest_bytes.len() as u64);
        blocking(move || oci.add_manifest(entry)).await??;
        self.cache_function(digest.as_str(), function);
        tracing::info!(function = %version.function, version = version.version, digest = %digest, created, "published");
        Ok(Published {
            function: version.function,
            version: version.version,
            digest: version.digest,
            created,
        })
    }

    /// Makes the artifact store list every version's manifest. Publish writes it
    /// after the state store commits, so a crash in between is mended here
    /// at start-up (on a registry, a node also lists there the versions
    /// other nodes published; a registry away leaves that to the next
    /// start).
    pub async fn reconcile_index(&self) -> ControlResult<()> {
        let versions = self.state.all_versions().await?;
        let oci = self.oci.clone();
        blocking(move || -> ControlResult<()> {
            let known: std::collections::HashSet<Digest> =
                oci.manifests()?.into_iter().map(|m| m.digest).collect();
            for v in versions {
                let Ok(digest) = Digest::parse(&v.digest) else {
                    continue;
                };
                if known.contains(&digest) {
                    continue;
                }
                let listed = oci
                    .blob_size(&digest)
                    .and_then(|size| match size {
                        Some(size) => oci.add_manifest(index_entry(&v, &digest, size)).map(Some),
                        None => Ok(None),
                    });
                match listed {
                    Ok(Some(())) => {
                        tracing::info!(function = %v.function, version = v.version, "artifact index entry restored");
                    }
                    Ok(None) => {
                        tracing::error!(function = %v.function, version = v.version, digest = %digest, "artifact manifest missing from the store");
                    }
                    // A registry away at start: the node serves what it
                    // has cached; the next start lists the rest.
                    Err(seal_oci::StoreError::Unavailable(why)) => {
                        tracing::warn!(error = %why, "artifact index not checked: the registry is unavailable");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await?
    }

    fn cache_function(&self, digest: &str, function: Arc<Function>) {
        if let Ok(mut map) = self.loaded.lock() {
            map.insert(digest.to_owned(), function);
        }
    }

    /// Reads every blob of a stored artifact (OCI manifest, config, layer),
    /// each re-hashed on read, and returns the component bytes. A corrupt
    /// or missing blob is refused here, before anything runs or routes.
    pub async fn verified_component(&self, digest: &Digest) -> ControlResult<Vec<u8>> {
        Ok(self.verified_layer(digest).await?.1)
    }

    /// [`Catalog::verified_component`], with the component's digest.
    async fn verified_layer(&self, digest: &Digest) -> ControlResult<(Digest, Vec<u8>)> {
        let oci = self.oci.clone();
        let digest = digest.clone();
        blocking(move || -> ControlResult<(Digest, Vec<u8>)> {
            let stored = |d: &Digest| {
                oci.read_blob(d).map_err(|e| match e {
                    seal_oci::StoreError::NotFound(_) => ControlError::ArtifactMissing(format!(
                        "{e}: the data dir has lost part of artifact {digest}"
                    )),
                    other => other.into(),
                })
            };
            let refs = parse_oci_manifest(&stored(&digest)?)?;
            stored(&refs.config_digest)?;
            let wasm = stored(&refs.layer_digest)?;
            Ok((refs.layer_digest, wasm))
        })
        .await?
    }

    /// The pre-instantiated function of a version. Its blobs are verified
    /// every time; the compiled form comes from memory, else from the
    /// compile cache (hash-checked), else is recompiled from the verified
    /// component. A corrupt blob is refused and never executed. Versions
    /// made of the same component share its compiled form (memory and
    /// cache file), keyed by the component's digest.
    pub async fn load(&self, v: &VersionRecord) -> ControlResult<Arc<Function>> {
        let digest = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let (component, wasm) = self.verified_layer(&digest).await?;
        if let Some(f) = self
            .loaded
            .lock()
            .ok()
            .and_then(|m| m.get(&v.digest).cloned())
        {
            return Ok(f);
        }
        let manifest: SealManifest = serde_json::from_value(v.manifest.clone()).map_err(|e| {
            ControlError::internal(format!(
                "stored manifest of {}@{}: {e}",
                v.function, v.version
            ))
        })?;
        let runtime = self.runtime.clone();
        let expected = v.compiled_sha256.clone();
        let (function, new_sha) = blocking(move || {
            runtime.prepare(
                component.hex(),
                expected.as_deref(),
                Box::new(|| Ok(wasm)),
                limits_of(&manifest),
            )
        })
        .await??;
        if let Some(sha) = new_sha {
            self.state.set_compiled_sha256(&v.digest, &sha).await?;
        }
        self.cache_function(&v.digest, function.clone());
        Ok(function)
    }

    /// Keeps in memory only what serves now and what served just before
    /// (the rollback targets); everything else reloads from the compile
    /// cache when a deployment names it again.
    pub(crate) fn retain_loaded(&self, table: &RouteTable, previous: &RouteTable) {
        let keep: std::collections::HashSet<&str> = table
            .routes()
            .chain(previous.routes())
            .flat_map(|r| r.backends.iter().map(|b| b.digest.as_str()))
            .collect();
        if let Ok(mut map) = self.loaded.lock() {
            map.retain(|digest, _| keep.contains(digest.as_str()));
        }
    }
}

fn index_entry(v: &VersionRecord, digest: &Digest, size: u64) -> IndexEntry {
    IndexEntry {
        media_type: OCI_MANIFEST_MEDIA_TYPE.into(),
        digest: digest.clone(),
        size,
        annotations: BTreeMap::from([
            (ANNOTATION_FUNCTION.to_owned(), v.function.clone()),
            (
                ANNOTATION_REF_NAME.to_owned(),
                format!("{}-{}", v.function, v.version),
            ),
        ]),
    }
}

/// The limits and permissions the runtime enforces, from a manifest that
/// was validated when it was published (a pattern that no longer parses is
/// dropped, which only narrows what the guest may do).
fn limits_of(m: &SealManifest) -> FunctionLimits {
    FunctionLimits {
        memory_bytes: m.limits.memory_mb << 20,
        timeout: Duration::from_millis(m.limits.timeout_ms),
        outbound_hosts: m
            .capabilities
            .outbound_hosts
            .iter()
            .filter_map(|h| seal_runtime::HostPattern::parse(h).ok())
            .collect(),
        config_keys: m.capabilities.config_keys.iter().cloned().collect(),
        max_concurrency: m.limits.max_concurrency,
        instance_reuse: m.limits.instance_reuse,
        queues: m.capabilities.queues.iter().cloned().collect(),
        flags: m.capabilities.flags.iter().cloned().collect(),
    }
}

/// Runs blocking file and compile work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ControlResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ControlError::internal)
}
