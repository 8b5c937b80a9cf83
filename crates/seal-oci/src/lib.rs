//! The artifact store: the [`ArtifactStore`] port the control plane uses
//! (content-addressed blobs, verified on every read, and the list of
//! artifact manifests), and its embedded implementation, an OCI image
//! layout directory ([`OciLayout`]). An OCI distribution registry is the
//! sibling implementation (`seal-oci-registry`), with a layout as its
//! local read-through cache.
//!
//! ```text
//! <root>/oci-layout          {"imageLayoutVersion":"1.0.0"}
//! <root>/index.json          one descriptor per artifact manifest
//! <root>/blobs/sha256/<hex>  content-addressed blobs
//! ```
//!
//! Invariants this crate keeps:
//! - a blob file only ever appears complete: it is written to a temp file in
//!   the same directory, fsynced, and renamed into place;
//! - an existing blob is never rewritten (same digest, same bytes);
//! - every read recomputes the sha256 and refuses bytes that do not match
//!   their name ([`StoreError::Corrupt`]), so a damaged blob is never executed.
//!
//! It knows nothing of functions or versions beyond the annotations it is
//! handed for `index.json`.

use seal_artifact::{Digest, sha256_digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {0} is not in the artifact store")]
    NotFound(Digest),
    #[error(
        "blob {digest} is corrupt on disk: its content hashes to {actual}; it will not be used"
    )]
    Corrupt { digest: Digest, actual: Digest },
    #[error("upload does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("artifact store I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("artifact store index is unreadable: {0}")]
    Index(String),
    /// The artifact registry cannot be reached now (refused connection,
    /// timeout, 5xx); the call may be repeated.
    #[error("{0}")]
    Unavailable(String),
    /// The artifact registry answered, and refused (authentication, a
    /// manifest it would not take).
    #[error("{0}")]
    Registry(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Annotation keys written on `index.json` entries.
pub const ANNOTATION_FUNCTION: &str = "dev.seal.function";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation on a referrer's `index.json` entry: the artifact manifest it
/// is about (its `subject`), so referrers are found without reading every
/// manifest.
pub const ANNOTATION_SUBJECT: &str = "dev.seal.subject";

/// An OCI image layout directory.
#[derive(Debug)]
pub struct OciLayout {
    root: PathBuf,
    /// Serialises read-modify-write of `index.json`.
    index_lock: Mutex<()>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<IndexEntry>,
}

/// One entry of `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl OciLayout {
    /// Opens (creating if needed) a layout at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        // Temp files of uploads and index writes cut off by a crash;
        // nothing else writes here before `open` returns.
        for dir in [&blobs, &root] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".upload-") || name.starts_with(".tmp-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let layout = Self {
            root,
            index_lock: Mutex::new(()),
        };
        let marker = layout.root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = layout.root.join("index.json");
        if !index.exists() {
            layout.write_index(&Index {
                schema_version: 2,
                media_type: Some("application/vnd.oci.image.index.v1+json".into()),
                manifests: Vec::new(),
            })?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// Whether a blob with this digest is present *and intact* (re-hashed).
    /// A damaged blob counts as absent, so a fresh upload replaces it.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.read_blob(digest).is_ok()
    }

    /// Writes `bytes` as a blob and returns its digest. Idempotent.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let mut w = self.blob_writer(u64::MAX)?;
        w.write(bytes)?;
        w.commit(None)
    }

    /// Starts a streamed blob upload that refuses more than `limit` bytes.
    pub fn blob_writer(&self, limit: u64) -> Result<BlobWriter> {
        let dir = self.root.join("blobs").join("sha256");
        let file = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            limit,
            dir,
        })
    }

    /// Reads a blob, verifying its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(digest.clone()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let actual = sha256_digest(&bytes);
        if &actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Records an artifact manifest in `index.json` (once per digest).
    pub fn add_manifest(&self, entry: IndexEntry) -> Result<()> {
        let _guard = self
            .index_lock
            .lock()
            .map_err(|_| StoreError::Index("index lock poisoned".into()))?;
        let mut index = self.read_index()?;
        if index.manifests.iter().any(|m| m.digest == entry.digest) {
            return Ok(());
        }
        index.manifests.push(entry);
        self.write_index(&index)
    }

    /// Unlists a manifest from `index.json` (its blobs stay: other
    /// manifests may name them); false if it was not listed.
    pub fn remove_manifest(&self, digest: &Digest) -> Result<bool> {
        let _guard = self
            .index_lock
            .lock()
            .map_err(|_| StoreError::Index("index lock poisoned".into()))?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index.manifests.retain(|m| m.digest != *digest);
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// Every manifest recorded in `index.json`.
    pub fn manifests(&self) -> Result<Vec<IndexEntry>> {
        Ok(self.read_index()?.manifests)
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Index(e.to_string()))
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(index).map_err(|e| StoreError::Index(e.to_string()))?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }
}

/// What the control plane needs of an artifact store. Every read verifies
/// the bytes against their digest; a blob that fails is
/// [`StoreError::Corrupt`] and counts as absent. The calls block (files,
/// sockets): callers run them off the async workers.
pub trait ArtifactStore: Send + Sync {
    /// Whether an intact blob with this digest is stored.
    fn has_blob(&self, digest: &Digest) -> bool;
    /// Stores `bytes` as a blob and returns its digest; idempotent.
    fn put_blob(&self, bytes: &[u8]) -> Result<Digest>;
    /// Starts a streamed upload that refuses more than `limit` bytes.
    fn upload(&self, limit: u64) -> Result<Box<dyn BlobUpload>>;
    /// The bytes of a blob, verified against its digest.
    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>>;
    /// The stored size of a blob (not verified), `None` when absent.
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Lists an artifact (or referrer) manifest, once per digest.
    fn add_manifest(&self, entry: IndexEntry) -> Result<()>;
    /// Unlists a manifest (a removed attestation's referrer); false if it
    /// was not listed.
    fn remove_manifest(&self, digest: &Digest) -> Result<bool>;
    /// Every listed manifest.
    fn manifests(&self) -> Result<Vec<IndexEntry>>;
    /// The listed manifests whose subject is `subject` (attestations about
    /// an artifact), as the OCI referrers API answers. The layout lists
    /// each with [`ANNOTATION_SUBJECT`]; a registry asks its referrers
    /// endpoint.
    fn referrers(&self, subject: &Digest) -> Result<Vec<IndexEntry>> {
        Ok(self
            .manifests()?
            .into_iter()
            .filter(|e| {
                e.annotations
                    .get(ANNOTATION_SUBJECT)
                    .is_some_and(|s| s == subject.as_str())
            })
            .collect())
    }
}

/// A blob being streamed into an [`ArtifactStore`]; dropped without
/// [`BlobUpload::commit`], it leaves nothing behind.
pub trait BlobUpload: Send {
    /// Appends a chunk; fails once the total passes the limit.
    fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Checks the digest (if one was announced) and stores the blob.
    fn commit(self: Box<Self>, expected: Option<&Digest>) -> Result<Digest>;
}

impl ArtifactStore for OciLayout {
    fn has_blob(&self, digest: &Digest) -> bool {
        OciLayout::has_blob(self, digest)
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        OciLayout::put_blob(self, bytes)
    }

    fn upload(&self, limit: u64) -> Result<Box<dyn BlobUpload>> {
        Ok(Box::new(self.blob_writer(limit)?))
    }

    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        OciLayout::read_blob(self, digest)
    }

    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn add_manifest(&self, entry: IndexEntry) -> Result<()> {
        OciLayout::add_manifest(self, entry)
    }

    fn remove_manifest(&self, digest: &Digest) -> Result<bool> {
        OciLayout::remove_manifest(self, digest)
    }

    fn manifests(&self) -> Result<Vec<IndexEntry>> {
        OciLayout::manifests(self)
    }
}

impl BlobUpload for BlobWriter {
    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        BlobWriter::write(self, chunk)
    }

    fn written(&self) -> u64 {
        BlobWriter::written(self)
    }

    fn commit(self: Box<Self>, expected: Option<&Digest>) -> Result<Digest> {
        BlobWriter::commit(*self, expected)
    }
}

/// A blob being streamed in: hashed and size-checked as it is written.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    limit: u64,
    dir: PathBuf,
}

impl BlobWriter {
    /// Appends a chunk; fails (and the upload is discarded on drop) once the
    /// total passes the limit, so an oversized upload is never buffered whole.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(StoreError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).map_err(io_err(&self.dir))
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the digest (if one was announced), fsyncs and renames the
    /// blob into place. An existing blob with that digest is left untouched.
    pub fn commit(self, expected: Option<&Digest>) -> Result<Digest> {
        let actual = Digest::from_sha256(&self.hasher.finalize());
        if let Some(expected) = expected
            && expected != &actual
        {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let target = self.dir.join(actual.hex());
        if fs::read(&target).is_ok_and(|b| sha256_digest(&b) == actual) {
            // Never rewrite an intact blob; the temp file is removed on drop.
            return Ok(actual);
        }
        // Absent, or damaged on disk (its bytes were never this digest's):
        // the verified upload takes its place, atomically.
        self.file.as_file().sync_all().map_err(io_err(&self.dir))?;
        self.file
            .persist(&target)
            .map_err(|e| io_err(&target)(e.error))?;
        sync_dir(&self.dir);
        Ok(actual)
    }
}

/// Writes a small file atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Makes a rename durable. Best effort: not every platform can fsync a directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_left_by_a_crash_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciLayout::open(dir.path()).unwrap();
        let d = store.put_blob(b"kept").unwrap();
        let blobs = dir.path().join("blobs/sha256");
        for leftover in [
            blobs.join(".upload-abc"),
            blobs.join(".tmp-abc"),
            dir.path().join(".tmp-index"),
        ] {
            std::fs::write(&leftover, b"partial").unwrap();
        }
        drop(store);
        let store = OciLayout::open(dir.path()).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .chain(std::fs::read_dir(&blobs).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        left.sort();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(store.read_blob(&d).unwrap(), b"kept");
    }

    #[test]
    fn blobs_round_trip_and_are_verified_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciLayout::open(dir.path()).unwrap();
        assert!(dir.path().join("oci-layout").is_file());
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        // Same bytes again: same digest, file untouched.
        assert_eq!(store.put_blob(b"hello").unwrap(), d);

        fs::write(store.blob_path(&d), b"jello").unwrap();
        let err = store.read_blob(&d).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(!store.has_blob(&d), "a damaged blob is not 'present'");
        // Uploading the real bytes again repairs it.
        assert_eq!(store.put_blob(b"hello").unwrap(), d);
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
    }

    #[test]
    fn streamed_upload_enforces_limit_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciLayout::open(dir.path()).unwrap();
        let mut w = store.blob_writer(4).unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(
            w.write(b"de"),
            Err(StoreError::TooLarge { limit: 4 })
        ));
        drop(w);

        let mut w = store.blob_writer(100).unwrap();
        w.write(b"abc").unwrap();
        let wrong = sha256_digest(b"xyz");
        assert!(matches!(
            w.commit(Some(&wrong)),
            Err(StoreError::DigestMismatch { .. })
        ));
        // Nothing but the layout's own files is left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn index_records_each_manifest_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = OciLayout::open(dir.path()).unwrap();
        let d = store.put_blob(b"{}").unwrap();
        let entry = IndexEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: d,
            size: 2,
            annotations: BTreeMap::new(),
        };
        store.add_manifest(entry.clone()).unwrap();
        store.add_manifest(entry.clone()).unwrap();
        let reopened = OciLayout::open(dir.path()).unwrap();
        assert_eq!(reopened.manifests().unwrap(), vec![entry]);
    }

    #[test]
    fn referrers_are_the_manifests_about_a_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store: Box<dyn ArtifactStore> = Box::new(OciLayout::open(dir.path()).unwrap());
        let artifact = store.put_blob(b"{\"artifact\":1}").unwrap();
        let other = store.put_blob(b"{\"artifact\":2}").unwrap();
        let entry = |bytes: &[u8], subject: Option<&Digest>| IndexEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: store.put_blob(bytes).unwrap(),
            size: bytes.len() as u64,
            annotations: subject
                .map(|s| BTreeMap::from([(ANNOTATION_SUBJECT.to_owned(), s.to_string())]))
                .unwrap_or_default(),
        };
        let plain = entry(b"{\"artifact\":1}", None);
        let about = entry(b"{\"referrer\":1}", Some(&artifact));
        let about_other = entry(b"{\"referrer\":2}", Some(&other));
        for e in [&plain, &about, &about_other] {
            store.add_manifest(e.clone()).unwrap();
        }
        assert_eq!(store.referrers(&artifact).unwrap(), vec![about]);
        assert_eq!(store.referrers(&other).unwrap(), vec![about_other]);
        let nothing = store.put_blob(b"unrelated").unwrap();
        assert!(store.referrers(&nothing).unwrap().is_empty());
    }
}
