//! The ahead-of-time compile cache: compiled components on disk, one
//! `<hex digest>.cwasm` file per artifact, each written atomically.
//!
//! Wasmtime trusts what it deserializes (a compiled file is native code),
//! so a cached file is only ever deserialized after its sha256 matches the
//! hash recorded when it was compiled. That rule is enforced by type: the
//! only way to get a [`Verified`] is through a hash check, and
//! [`deserialize`] takes nothing else. A missing, unreadable or tampered
//! file is not an error here: the caller recompiles from the verified wasm.

use crate::error::{Result, RuntimeError};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The directory compiled components are cached in.
pub(crate) struct CompileCache {
    dir: PathBuf,
}

/// Compiled bytes whose sha256 was checked against the recorded hash, held
/// in memory so they cannot change between the check and their use.
pub(crate) struct Verified(Vec<u8>);

impl CompileCache {
    /// Uses `dir` as the cache, creating it if need be.
    pub(crate) fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Cache {
            path: dir.clone(),
            source,
        })?;
        // Temp files of writes cut off by a crash (the data-dir lock keeps
        // any other server out while this one opens it).
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self { dir })
    }

    /// Where the compiled form of the artifact `digest_hex` is cached.
    pub(crate) fn path(&self, digest_hex: &str) -> PathBuf {
        self.dir.join(format!("{digest_hex}.cwasm"))
    }

    /// Writes `compiled` as the cached form of `digest_hex` and returns its
    /// sha256 (hex), for the caller to record and check on later loads.
    pub(crate) fn store(&self, digest_hex: &str, compiled: &[u8]) -> Result<String> {
        let sha = sha256_hex(compiled);
        write_atomic(&self.path(digest_hex), compiled)?;
        Ok(sha)
    }

    /// The cached compiled form of `digest_hex`, if it is there and its
    /// sha256 is `expected_sha256`. A missing or unreadable file is `None`
    /// quietly; one that does not match its hash is `None` with a warning.
    pub(crate) fn read_verified(
        &self,
        digest_hex: &str,
        expected_sha256: &str,
    ) -> Option<Verified> {
        let path = self.path(digest_hex);
        let bytes = std::fs::read(&path).ok()?;
        let actual = sha256_hex(&bytes);
        if actual != expected_sha256 {
            tracing::warn!(path = %path.display(), expected = expected_sha256, actual, "compiled cache file does not match its recorded hash; recompiling");
            return None;
        }
        Some(Verified(bytes))
    }

    /// Reads back the file [`CompileCache::store`] just wrote, whose hash
    /// it returned as `sha256`. Unlike [`CompileCache::read_verified`] a
    /// failure here is an error: there is nothing left to fall back on.
    pub(crate) fn read_back(&self, digest_hex: &str, sha256: &str) -> Result<Verified> {
        let path = self.path(digest_hex);
        let bytes = std::fs::read(&path).map_err(|source| RuntimeError::Cache { path, source })?;
        if sha256_hex(&bytes) != sha256 {
            return Err(RuntimeError::Compile(
                "compiled file changed on disk while loading".into(),
            ));
        }
        Ok(Verified(bytes))
    }
}

/// The sha256 of `bytes`, lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Turns verified compiled bytes into a component of `engine`. Fails if
/// this engine does not accept them (another wasmtime version or config).
#[allow(unsafe_code)]
pub(crate) fn deserialize(engine: &Engine, bytes: &Verified) -> Result<Component, String> {
    // SAFETY: `bytes` were produced by `Engine::precompile_component` of an
    // engine with this configuration, and a `Verified` exists only once
    // their sha256 matched the hash recorded when they were written; the
    // bytes are held in memory, so they cannot change between the check and
    // this call.
    unsafe { Component::deserialize(engine, &bytes.0) }.map_err(|e| format!("{e:#}"))
}

/// Writes `bytes` to `path` so that `path` is either its old content or all
/// of `bytes`, never a partial file: a temporary file in the same
/// directory, synced, then renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let err = |source| RuntimeError::Cache {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc"), from FIPS 180-2.
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn cache() -> (tempfile::TempDir, CompileCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path().join("nested").join("cache")).unwrap();
        (dir, cache)
    }

    #[test]
    fn store_returns_the_sha256_and_leaves_only_the_cache_file() {
        let (_dir, cache) = cache();
        let sha = cache.store("d1", b"abc").unwrap();
        assert_eq!(sha, SHA256_ABC);
        assert_eq!(std::fs::read(cache.path("d1")).unwrap(), b"abc");
        // The temporary file was renamed over the cache file, not left.
        let names: Vec<_> = std::fs::read_dir(&cache.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["d1.cwasm"]);
    }

    #[test]
    fn a_file_matching_its_hash_is_verified() {
        let (_dir, cache) = cache();
        let sha = cache.store("d1", b"abc").unwrap();
        let verified = cache.read_verified("d1", &sha).unwrap();
        assert_eq!(verified.0, b"abc");
        assert_eq!(cache.read_back("d1", &sha).unwrap().0, b"abc");
    }

    #[test]
    fn a_file_not_matching_its_hash_is_refused() {
        let (_dir, cache) = cache();
        let sha = cache.store("d1", b"abc").unwrap();
        std::fs::write(cache.path("d1"), b"abd").unwrap();
        assert!(cache.read_verified("d1", &sha).is_none());
        // Nor is a hash for another file accepted for this one.
        let other = cache.store("d2", b"xyz").unwrap();
        assert!(cache.read_verified("d1", &other).is_none());
        assert!(cache.read_verified("d2", &other).is_some());
    }

    #[test]
    fn a_missing_file_is_not_verified() {
        let (_dir, cache) = cache();
        assert!(cache.read_verified("absent", SHA256_ABC).is_none());
    }

    #[test]
    fn read_back_fails_on_a_changed_or_missing_file() {
        let (_dir, cache) = cache();
        let sha = cache.store("d1", b"abc").unwrap();
        std::fs::write(cache.path("d1"), b"changed").unwrap();
        assert!(matches!(
            cache.read_back("d1", &sha),
            Err(RuntimeError::Compile(m)) if m.contains("changed on disk")
        ));
        std::fs::remove_file(cache.path("d1")).unwrap();
        match cache.read_back("d1", &sha) {
            Err(RuntimeError::Cache { path, .. }) => assert_eq!(path, cache.path("d1")),
            Err(e) => panic!("expected a cache I/O error, got {e}"),
            Ok(_) => panic!("a missing file was read back"),
        }
    }
}
