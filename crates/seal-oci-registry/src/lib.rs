//! The shared artifact store: an OCI distribution registry
//! (`oci://host:port/repository`), through `oci-client`, with a local
//! artifact store (the node's OCI image layout) as a verified read-through
//! cache.
//!
//! - **The registry is the source of truth.** A blob is stored once it is
//!   in the registry (which checks its digest); [`ArtifactStore::has_blob`]
//!   asks the registry, so a blob that reached only the cache is pushed
//!   again. Every artifact manifest is pushed as a manifest, by digest and
//!   under a tag named after its version (`hello-3`), so `skopeo inspect`
//!   and `skopeo copy` read what Seal pushed.
//! - **Reads go through the cache.** A blob is read from the cache (re-hashed
//!   on every read); when absent or damaged it is pulled from the registry,
//!   verified against its digest and cached. So a node loads what another
//!   node published, and a registry outage stops nothing that is cached:
//!   serving, restarts and rollbacks to cached versions go on.
//! - **Referrers** (signatures, provenance) are pushed as manifests whose
//!   `subject` is the artifact, and listed under the fallback tag
//!   `sha256-<hex>` of the subject (an image index), which every registry
//!   keeps; a registry with the referrers API also indexes the `subject`.
//!
//! The calls block (the trait's contract): each runs its request on the
//! server's runtime and waits for it, so callers run them off the async
//! workers, as they do for the layout's file I/O.

use futures::FutureExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use seal_artifact::{Digest, sha256_digest};
use seal_oci::{
    ANNOTATION_REF_NAME, ANNOTATION_SUBJECT, ArtifactStore, BlobUpload, IndexEntry, Result,
    StoreError,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// How long one registry request may take, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a referrers index update waits before reading it back.
const REFERRERS_SETTLE: Duration = Duration::from_millis(30);

/// Where the registry is: `oci://host[:port]/repository` (HTTPS, plain
/// HTTP for a loopback host) or `oci+http://…` (plain HTTP anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLocation {
    pub registry: String,
    pub repository: String,
    pub plain_http: bool,
}

impl RegistryLocation {
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let (rest, forced_http) = if let Some(rest) = url.strip_prefix("oci://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("oci+http://") {
            (rest, true)
        } else {
            return Err(format!(
                "{url:?} is not a registry address: expected oci://host[:port]/repository"
            ));
        };
        let Some((registry, repository)) = rest.split_once('/') else {
            return Err(format!(
                "{url:?} names no repository: expected oci://host[:port]/repository"
            ));
        };
        if registry.is_empty() || registry.contains('@') {
            return Err(format!(
                "{url:?}: the registry host is empty or carries credentials (set SEAL_REGISTRY_USERNAME and SEAL_REGISTRY_PASSWORD instead)"
            ));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.split(['.', '_', '-']).all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        };
        if !repository.split('/').all(component_ok) {
            return Err(format!(
                "{url:?}: repository {repository:?} must be lowercase path components of letters and digits, separated by '.', '_' or '-'"
            ));
        }
        let host = registry
            .rsplit_once(':')
            .map_or(registry, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            plain_http: forced_http || loopback,
        })
    }

    fn by_digest(&self, digest: &Digest) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_string(),
        )
    }

    fn by_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            tag.to_owned(),
        )
    }
}

impl std::fmt::Display for RegistryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}/{}", self.registry, self.repository)
    }
}

/// The registry side: the client, its address and credentials, and the
/// runtime its requests run on.
struct Remote {
    client: Client,
    auth: RegistryAuth,
    at: RegistryLocation,
    runtime: tokio::runtime::Handle,
    /// One referrers index update at a time through this node.
    referrers_lock: std::sync::Mutex<()>,
}

impl Remote {
    /// Runs one request on the runtime and waits for it (from a blocking
    /// thread), bounded in time.
    fn run<T: Send + 'static>(
        &self,
        what: String,
        request: impl Future<Output = std::result::Result<T, OciDistributionError>> + Send + 'static,
    ) -> Answer<T> {
        let at = self.at.to_string();
        let task = self
            .runtime
            .spawn(tokio::time::timeout(REQUEST_TIMEOUT, request));
        match futures::executor::block_on(task.map(|r| r.ok())) {
            Some(Ok(Ok(v))) => Ok(v),
            Some(Ok(Err(e))) => Err(classify(&at, &what, e)),
            Some(Err(_)) => Err(Failure::Store(StoreError::Unavailable(format!(
                "the artifact registry {at} did not answer within {}s ({what})",
                REQUEST_TIMEOUT.as_secs()
            )))),
            None => Err(Failure::Store(StoreError::Unavailable(format!(
                "the artifact registry request was cut off ({what}): the server is stopping"
            )))),
        }
    }

    /// What a blob request moves into its task: the client, the blob's
    /// reference and its digest.
    fn blob_request(&self, digest: &Digest) -> (Client, Reference, String) {
        (
            self.client.clone(),
            self.at.by_digest(digest),
            digest.to_string(),
        )
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let (client, r, d) = self.blob_request(digest);
        let size = self.run(format!("HEAD blob {digest}"), async move {
            // The response's length is all that is read.
            let stream = client.pull_blob_stream(&r, d.as_str()).await?;
            Ok(stream.content_length)
        });
        match size {
            Ok(n) => Ok(Some(n.unwrap_or_default())),
            Err(Failure::Absent) => Ok(None),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    fn push_blob(&self, digest: &Digest, bytes: Vec<u8>) -> Result<()> {
        if self.blob_size(digest)?.is_some() {
            return Ok(());
        }
        let (client, r, d) = self.blob_request(digest);
        self.run(format!("push blob {digest}"), async move {
            client.push_blob(&r, &bytes, &d).await.map(|_| ())
        })
        .map_err(|f| f.of(digest))
    }

    /// A blob's bytes, or else the manifest under that digest (a manifest
    /// someone else pushed exists only as a manifest), verified.
    fn pull(&self, digest: &Digest) -> Result<Vec<u8>> {
        let (client, r, d) = self.blob_request(digest);
        let blob = self.run(format!("pull blob {digest}"), async move {
            let mut out = Vec::new();
            client.pull_blob(&r, d.as_str(), &mut out).await?;
            Ok(out)
        });
        let bytes = match blob {
            Ok(bytes) => bytes,
            Err(Failure::Absent) => {
                self.pull_manifest(self.at.by_digest(digest))
                    .map_err(|f| f.of(digest))?
                    .0
            }
            Err(Failure::Store(e)) => return Err(e),
        };
        let actual = sha256_digest(&bytes);
        if &actual != digest {
            return Err(StoreError::Registry(format!(
                "the artifact registry {} answered {digest} with bytes that hash to {actual}; refused",
                self.at
            )));
        }
        Ok(bytes)
    }

    fn pull_manifest(&self, reference: Reference) -> Answer<(Vec<u8>, String)> {
        let (client, auth) = (self.client.clone(), self.auth.clone());
        self.run(format!("pull manifest {reference}"), async move {
            client
                .pull_manifest_raw(&reference, &auth, &[OCI_MANIFEST, OCI_INDEX])
                .await
        })
    }

    fn push_manifest(&self, reference: Reference, bytes: Vec<u8>, media_type: &str) -> Result<()> {
        let content_type = media_type.parse().map_err(|_| {
            StoreError::Registry(format!(
                "manifest media type {media_type:?} is not a header value"
            ))
        })?;
        let client = self.client.clone();
        let what = format!("push manifest {reference}");
        self.run(what.clone(), async move {
            client
                .push_manifest_raw(&reference, bytes, content_type)
                .await
                .map(|_| ())
        })
        .map_err(|f| match f {
            // A manifest naming a blob the registry lacks.
            Failure::Absent => StoreError::Registry(format!(
                "the artifact registry {} refused ({what}): it lacks a blob the manifest names",
                self.at
            )),
            Failure::Store(e) => e,
        })
    }

    /// The referrers listed under a subject's fallback tag (an empty index
    /// when there is none yet).
    fn fallback_index(&self, subject: &Digest) -> Result<Value> {
        match self.pull_manifest(self.at.by_tag(&fallback_tag(subject))) {
            Ok((bytes, _)) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Registry(format!(
                    "the referrers index of {subject} in {} is not JSON: {e}",
                    self.at
                ))
            }),
            Err(Failure::Absent) => Ok(json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [],
            })),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// Lists (`Some(descriptor)`) or unlists (`None`) the referrer
    /// `digest` under its subject's fallback tag; true when that changed
    /// the index. A registry has no conditional write: updates through one
    /// node are serialised here, and an update by another node landing
    /// between this read and write is caught by reading the index back
    /// after it settles and writing again (bounded). What remains is a
    /// write of the other node's that took longer than the settle time
    /// from its read; Seal's own checks read attestations from the state
    /// store, not from this index.
    fn set_referrer(
        &self,
        subject: &Digest,
        digest: &Digest,
        descriptor: Option<Value>,
    ) -> Result<bool> {
        let _one_writer = self
            .referrers_lock
            .lock()
            .map_err(|_| StoreError::Index("referrers lock poisoned".into()))?;
        let mut changed = false;
        let mut last = None;
        for attempt in 0..8u64 {
            if attempt > 0 {
                // Apart from the other writer: a few ms, spread by digest.
                let spread = u64::from(digest.hex().as_bytes()[0] % 8);
                std::thread::sleep(Duration::from_millis(5 * attempt + spread));
            }
            // distribution answers 500 to a tag read racing its write:
            // such failures are retried here like a lost update.
            let mut index = match self.fallback_index(subject) {
                Ok(index) => index,
                Err(StoreError::Unavailable(why)) => {
                    last = Some(why);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut manifests = index["manifests"].as_array().cloned().unwrap_or_default();
            let listed = manifests.iter().any(|m| m["digest"] == digest.as_str());
            if listed == descriptor.is_some() {
                return Ok(changed);
            }
            match &descriptor {
                Some(d) => manifests.push(d.clone()),
                None => manifests.retain(|m| m["digest"] != digest.as_str()),
            }
            index["manifests"] = Value::Array(manifests);
            let bytes = serde_json::to_vec(&index).map_err(|e| StoreError::Index(e.to_string()))?;
            match self.push_manifest(self.at.by_tag(&fallback_tag(subject)), bytes, OCI_INDEX) {
                Ok(()) => changed = true,
                Err(StoreError::Unavailable(why)) => last = Some(why),
                Err(e) => return Err(e),
            }
            // Read back (next turn) once a racing write would have landed.
            std::thread::sleep(REFERRERS_SETTLE);
        }
        if let Some(why) = last {
            return Err(StoreError::Unavailable(why));
        }
        Err(StoreError::Registry(format!(
            "the referrers index of {subject} in {} kept changing under this update; try again",
            self.at
        )))
    }
}

fn client_for(at: &RegistryLocation) -> Client {
    Client::new(ClientConfig {
        protocol: if at.plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: true,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(REQUEST_TIMEOUT),
        ..Default::default()
    })
}

/// Basic credentials from `SEAL_REGISTRY_USERNAME` and
/// `SEAL_REGISTRY_PASSWORD`, else anonymous.
fn auth_from_env() -> RegistryAuth {
    match (
        std::env::var("SEAL_REGISTRY_USERNAME"),
        std::env::var("SEAL_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    }
}

/// The referrers tag scheme's tag for a subject: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// Why a request failed: the registry has no such thing, or the store's
/// error (unreachable, which may be retried, or refused).
#[derive(Debug)]
enum Failure {
    Absent,
    Store(StoreError),
}

type Answer<T> = std::result::Result<T, Failure>;

impl Failure {
    /// The store's error, an absence being of `digest`.
    fn of(self, digest: &Digest) -> StoreError {
        match self {
            Self::Absent => StoreError::NotFound(digest.clone()),
            Self::Store(e) => e,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// What a failed request means to the caller.
fn classify(at: &str, what: &str, e: OciDistributionError) -> Failure {
    use OciDistributionError as E;
    let not_found = |code: &OciErrorCode| {
        matches!(
            code,
            OciErrorCode::BlobUnknown | OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
        )
    };
    Failure::Store(match &e {
        E::RegistryError { envelope, .. } if envelope.errors.iter().any(|e| not_found(&e.code)) => {
            return Failure::Absent;
        }
        E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
            return Failure::Absent;
        }
        // A blob pull fails with the response's status.
        E::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 404) => {
            return Failure::Absent;
        }
        E::RequestError(r) if r.status().is_some_and(|s| s.is_client_error()) => {
            StoreError::Registry(format!("the artifact registry {at} refused ({what}): {e}"))
        }
        E::RequestError(_) | E::IoError(_) => StoreError::Unavailable(format!(
            "the artifact registry {at} is unreachable ({what}): {e}"
        )),
        E::ServerError { code, .. } if *code >= 500 => {
            StoreError::Unavailable(format!("the artifact registry {at} failed ({what}): {e}"))
        }
        _ => StoreError::Registry(format!("the artifact registry {at} refused ({what}): {e}")),
    })
}

/// An artifact store over an OCI distribution registry, with a local
/// store as its verified read-through cache.
pub struct RegistryStore {
    remote: Arc<Remote>,
    cache: Arc<dyn ArtifactStore>,
}

impl RegistryStore {
    /// A store over the registry at `at`, caching in `cache`. Nothing is
    /// asked of the registry here: a node starts, and serves what it has
    /// cached, while the registry is away. Must be called on the runtime
    /// the requests are to run on.
    pub fn new(at: RegistryLocation, cache: Arc<dyn ArtifactStore>) -> Result<Self> {
        let (client, auth) = (client_for(&at), auth_from_env());
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Registry("the registry store needs a tokio runtime".into()))?;
        Ok(Self {
            remote: Arc::new(Remote {
                client,
                auth,
                at,
                runtime,
                referrers_lock: Default::default(),
            }),
            cache,
        })
    }

    pub fn location(&self) -> &RegistryLocation {
        &self.remote.at
    }

    /// Asks the registry's API root; an error says why it cannot be used.
    pub fn check(&self) -> Result<()> {
        // A tag list of the repository: answered (maybe NAME_UNKNOWN, which
        // is fine for a new repository) means reachable.
        let (client, auth, r) = (
            self.remote.client.clone(),
            self.remote.auth.clone(),
            self.remote.at.by_tag("latest"),
        );
        match self.remote.run("list tags".into(), async move {
            client.list_tags(&r, &auth, Some(1), None).await.map(|_| ())
        }) {
            Ok(()) | Err(Failure::Absent) => Ok(()),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// The digest's bytes from the cache, else pulled from the registry,
    /// verified and cached.
    fn read_through(&self, digest: &Digest) -> Result<Vec<u8>> {
        match self.cache.read_blob(digest) {
            Ok(bytes) => return Ok(bytes),
            Err(StoreError::NotFound(_) | StoreError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        let bytes = self.remote.pull(digest)?;
        self.cache.put_blob(&bytes)?;
        tracing::debug!(%digest, registry = %self.remote.at, "blob cached from the registry");
        Ok(bytes)
    }
}

/// What [`RegistryStore::import`] pushed, each blob read back from the
/// registry and re-hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Listed manifests: artifacts, then their referrers.
    pub manifests: u64,
    /// Distinct blobs (configs, components, envelopes, manifests).
    pub blobs: u64,
    pub bytes: u64,
}

impl RegistryStore {
    /// Pushes every manifest `from` lists, with the blobs each names, as a
    /// publish would (artifacts before the referrers about them), then
    /// reads every blob back from the registry and checks its digest.
    /// Idempotent: what the registry has already is not sent again.
    pub fn import(&self, from: &dyn ArtifactStore) -> Result<Imported> {
        let mut entries = from.manifests()?;
        // Artifacts first: a referrer's subject is in the registry before it.
        entries.sort_by_key(|e| e.annotations.contains_key(ANNOTATION_SUBJECT));
        let mut pushed = std::collections::BTreeSet::new();
        let mut out = Imported::default();
        for entry in entries {
            let manifest = from.read_blob(&entry.digest)?;
            let parsed: Value = serde_json::from_slice(&manifest).map_err(|e| {
                StoreError::Index(format!("manifest {} is not JSON: {e}", entry.digest))
            })?;
            let named = std::iter::once(&parsed["config"])
                .chain(parsed["layers"].as_array().into_iter().flatten())
                .filter_map(|d| d["digest"].as_str().and_then(|d| Digest::parse(d).ok()));
            for digest in named.chain(std::iter::once(entry.digest.clone())) {
                if pushed.insert(digest.clone()) {
                    let bytes = from.read_blob(&digest)?;
                    out.bytes += bytes.len() as u64;
                    self.put_blob(&bytes)?;
                }
            }
            self.add_manifest(entry)?;
            out.manifests += 1;
        }
        for digest in &pushed {
            // Pulled past the cache: the registry's bytes, re-hashed.
            self.remote.pull(digest)?;
        }
        out.blobs = pushed.len() as u64;
        Ok(out)
    }
}

impl ArtifactStore for RegistryStore {
    fn has_blob(&self, digest: &Digest) -> bool {
        matches!(self.remote.blob_size(digest), Ok(Some(_)))
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = sha256_digest(bytes);
        self.remote.push_blob(&digest, bytes.to_vec())?;
        self.cache.put_blob(bytes)
    }

    fn upload(&self, limit: u64) -> Result<Box<dyn BlobUpload>> {
        Ok(Box::new(Upload {
            staged: self.cache.upload(limit)?,
            remote: self.remote.clone(),
            cache: self.cache.clone(),
        }))
    }

    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_through(digest)
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.cache.blob_size(digest)? {
            Some(n) => Ok(Some(n)),
            None => self.remote.blob_size(digest),
        }
    }

    fn add_manifest(&self, entry: IndexEntry) -> Result<()> {
        let bytes = self.read_through(&entry.digest)?;
        let remote = &self.remote;
        remote.push_manifest(
            remote.at.by_digest(&entry.digest),
            bytes.clone(),
            &entry.media_type,
        )?;
        if let Some(tag) = entry.annotations.get(ANNOTATION_REF_NAME) {
            remote.push_manifest(remote.at.by_tag(tag), bytes.clone(), &entry.media_type)?;
        }
        if let Some(subject) = subject_of(&entry) {
            let descriptor = referrer_descriptor(&entry, &bytes);
            remote.set_referrer(&subject, &entry.digest, Some(descriptor))?;
        }
        self.cache.add_manifest(entry)
    }

    fn remove_manifest(&self, digest: &Digest) -> Result<bool> {
        let bytes = self.read_through(digest)?;
        let subject = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|m| m["subject"]["digest"].as_str().map(str::to_owned))
            .and_then(|d| Digest::parse(&d).ok());
        let listed = match subject {
            Some(subject) => self.remote.set_referrer(&subject, digest, None)?,
            None => false,
        };
        Ok(self.cache.remove_manifest(digest)? || listed)
    }

    fn manifests(&self) -> Result<Vec<IndexEntry>> {
        self.cache.manifests()
    }

    fn referrers(&self, subject: &Digest) -> Result<Vec<IndexEntry>> {
        let index = match self.remote.fallback_index(subject) {
            Ok(index) => index,
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "referrers listed from the local cache");
                return self.cache.referrers(subject);
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let Some(digest) = m["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else {
                continue;
            };
            let mut annotations: BTreeMap<String, String> = m["annotations"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect();
            annotations.insert(ANNOTATION_SUBJECT.to_owned(), subject.to_string());
            out.push(IndexEntry {
                media_type: m["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_owned(),
                digest,
                size: m["size"].as_u64().unwrap_or_default(),
                annotations,
            });
        }
        Ok(out)
    }
}

fn subject_of(entry: &IndexEntry) -> Option<Digest> {
    Digest::parse(entry.annotations.get(ANNOTATION_SUBJECT)?).ok()
}

/// A referrer's descriptor in its subject's index: its type and
/// annotations as the referrers API would list them.
fn referrer_descriptor(entry: &IndexEntry, manifest: &[u8]) -> Value {
    let parsed: Value = serde_json::from_slice(manifest).unwrap_or(Value::Null);
    let artifact_type = parsed["artifactType"]
        .as_str()
        .or_else(|| parsed["config"]["mediaType"].as_str());
    let mut annotations = parsed["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (k, v) in &entry.annotations {
        if k != ANNOTATION_SUBJECT {
            annotations.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let mut d = json!({
        "mediaType": entry.media_type,
        "digest": entry.digest.as_str(),
        "size": entry.size,
        "annotations": annotations,
    });
    if let Some(t) = artifact_type {
        d["artifactType"] = Value::String(t.to_owned());
    }
    d
}

/// An upload staged in the cache; committed, it is pushed to the registry
/// (which checks the digest again) before it counts as stored.
struct Upload {
    staged: Box<dyn BlobUpload>,
    remote: Arc<Remote>,
    cache: Arc<dyn ArtifactStore>,
}

impl BlobUpload for Upload {
    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.staged.write(chunk)
    }

    fn written(&self) -> u64 {
        self.staged.written()
    }

    fn commit(self: Box<Self>, expected: Option<&Digest>) -> Result<Digest> {
        let digest = self.staged.commit(expected)?;
        let bytes = self.cache.read_blob(&digest)?;
        self.remote.push_blob(&digest, bytes)?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_with_their_protocol() {
        let l = RegistryLocation::parse("oci://127.0.0.1:5000/seal/artifacts").unwrap();
        assert_eq!(l.registry, "127.0.0.1:5000");
        assert_eq!(l.repository, "seal/artifacts");
        assert!(l.plain_http, "loopback is plain HTTP");
        assert_eq!(l.to_string(), "http://127.0.0.1:5000/seal/artifacts");
        let l = RegistryLocation::parse("oci://registry.example.com/team/seal").unwrap();
        assert!(!l.plain_http, "a remote registry is HTTPS");
        assert!(
            RegistryLocation::parse("oci+http://registry.internal:5000/seal")
                .unwrap()
                .plain_http
        );
        assert!(
            RegistryLocation::parse("oci://localhost:5000/x")
                .unwrap()
                .plain_http
        );
        assert!(
            RegistryLocation::parse("oci://[::1]:5000/x")
                .unwrap()
                .plain_http
        );
        for bad in [
            "http://127.0.0.1:5000/seal",
            "oci://127.0.0.1:5000",
            "oci:///seal",
            "oci://user:pw@host/seal",
            "oci://host/Seal",
            "oci://host/seal//x",
            "oci://host/-seal",
        ] {
            assert!(RegistryLocation::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_referrer_is_listed_with_its_type_and_annotations() {
        let subject = sha256_digest(b"artifact");
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.dev.seal.attestation",
            "annotations": {"dev.seal.keyid": "k1"},
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let entry = IndexEntry {
            media_type: OCI_MANIFEST.into(),
            digest: sha256_digest(&bytes),
            size: bytes.len() as u64,
            annotations: BTreeMap::from([
                (ANNOTATION_SUBJECT.to_owned(), subject.to_string()),
                ("dev.seal.function".to_owned(), "hello".to_owned()),
            ]),
        };
        let d = referrer_descriptor(&entry, &bytes);
        assert_eq!(d["artifactType"], "application/vnd.dev.seal.attestation");
        assert_eq!(d["annotations"]["dev.seal.keyid"], "k1");
        assert_eq!(d["annotations"]["dev.seal.function"], "hello");
        assert!(d["annotations"].get(ANNOTATION_SUBJECT).is_none());
        assert_eq!(subject_of(&entry), Some(subject.clone()));
        assert_eq!(fallback_tag(&subject), format!("sha256-{}", subject.hex()));
    }
}

#[cfg(feature = "testing")]
pub mod testing;

/// The CNCF Wasm OCI artifact layout (`wkg oci push`, `oras`): this
/// config media type and one `application/wasm` layer.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";

/// A component someone else pushed, pulled by its pinned digest.
pub struct PulledComponent {
    /// The component's bytes, verified against the layer's digest.
    pub wasm: Vec<u8>,
    /// Where it came from: `oci://host/repository@sha256:…`.
    pub reference: String,
    /// The repository's last path component (a default function name).
    pub name: String,
}

/// Pulls a component published in the Wasm OCI artifact layout from
/// `oci://host[:port]/repository@sha256:…`. The digest pin is required (a
/// tag can move; a sealed version cannot), and every byte is checked: the
/// manifest against the pin, the component against its layer digest.
pub async fn pull_component(reference: &str) -> Result<PulledComponent> {
    let bad = |why: String| StoreError::Registry(format!("{reference}: {why}"));
    let Some((location, pin)) = reference.rsplit_once('@') else {
        return Err(bad(
            "pin the artifact by digest (oci://host/repository@sha256:…): a tag can move, a version cannot".into(),
        ));
    };
    let at = RegistryLocation::parse(location).map_err(StoreError::Registry)?;
    let pin = Digest::parse(pin).map_err(|e| bad(format!("bad digest: {e}")))?;
    let name = at
        .repository
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let remote = Remote {
        client: client_for(&at),
        auth: auth_from_env(),
        runtime: tokio::runtime::Handle::current(),
        at,
        referrers_lock: Default::default(),
    };
    let wasm = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        // Verified against the pin.
        let manifest = remote.pull(&pin).map_err(|e| match e {
            StoreError::NotFound(_) => {
                StoreError::Registry(format!("{pin} is not in {}", remote.at))
            }
            other => other,
        })?;
        let parsed: Value = serde_json::from_slice(&manifest)
            .map_err(|e| StoreError::Registry(format!("manifest {pin} is not JSON: {e}")))?;
        let config = parsed["config"]["mediaType"].as_str().unwrap_or_default();
        let layers = parsed["layers"].as_array().cloned().unwrap_or_default();
        let wasm_layers: Vec<&Value> = layers
            .iter()
            .filter(|l| l["mediaType"] == WASM_LAYER)
            .collect();
        if config != WASM_CONFIG || wasm_layers.len() != 1 {
            return Err(StoreError::Registry(format!(
                "{pin} is not a Wasm component artifact: config media type {config:?} (expected {WASM_CONFIG}), {} {WASM_LAYER} layer(s) (expected 1)",
                wasm_layers.len()
            )));
        }
        let layer = wasm_layers[0];
        let digest = layer["digest"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .ok_or_else(|| StoreError::Registry(format!("{pin}: the wasm layer has no valid digest")))?;
        let wasm = remote.pull(&digest)?;
        if layer["size"].as_u64() != Some(wasm.len() as u64) {
            return Err(StoreError::Registry(format!(
                "{pin}: the wasm layer is {} bytes, the manifest says {}",
                wasm.len(),
                layer["size"]
            )));
        }
        Ok(wasm)
    })
    .await
    .map_err(|e| StoreError::Registry(e.to_string()))??;
    Ok(PulledComponent {
        wasm,
        reference: reference.to_owned(),
        name,
    })
}
