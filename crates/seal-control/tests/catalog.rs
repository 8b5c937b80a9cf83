//! The catalog service on its own: a real SQLite state store, a real OCI
//! layout and the real wasmtime runtime, no server around them.
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use bytes::Bytes;
use seal_artifact::SealManifest;
use seal_control::{Catalog, ControlError};
use seal_oci::{ArtifactStore, OciLayout};
use seal_runtime::{Runtime, RuntimeConfig};
use seal_state::StateStore;
use std::sync::Arc;

struct Fixture {
    catalog: Catalog,
    state: Arc<dyn StateStore>,
    layout: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let state: Arc<dyn StateStore> = Arc::new(
        seal_state_sqlite::SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let layout = dir.path().join("artifacts");
    let oci: Arc<dyn ArtifactStore> = Arc::new(OciLayout::open(layout.clone()).unwrap());
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir: dir.path().join("compiled"),
            max_instances: 16,
        })
        .unwrap(),
    );
    Fixture {
        catalog: Catalog::new(state.clone(), oci, runtime, 64 << 20),
        state,
        layout,
        _dir: dir,
    }
}

/// Uploads the blobs of `component` packed as `name` and publishes it.
async fn publish(f: &Fixture, name: &str, component: &[u8]) -> seal_control::Published {
    let packed = seal_artifact::pack(component, &SealManifest::new(name)).unwrap();
    for (digest, bytes) in [
        (&packed.config_digest, packed.config_bytes.clone()),
        (&packed.layer_digest, component.to_vec()),
    ] {
        let mut body = futures::stream::iter([Ok::<_, String>(Bytes::from(bytes))]);
        let put = f
            .catalog
            .put_blob(digest.clone(), None, &mut body)
            .await
            .unwrap();
        assert!(!put.existed);
    }
    f.catalog
        .publish(packed.manifest_bytes, "test")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_published_version_loads_and_a_damaged_blob_never_does() {
    let f = fixture().await;
    let echo = std::fs::read(guests::guest("echo")).unwrap();
    let p = publish(&f, "api", &echo).await;
    assert_eq!((p.version, p.created), (1, true));
    // The same artifact again: the same version, nothing new.
    let again = publish_again(&f, "api", &echo).await;
    assert_eq!((again.version, again.created), (1, false));

    let v = f.state.version("api", 1).await.unwrap().unwrap();
    f.catalog.load(&v).await.unwrap();

    // Flip one byte of the component on disk: every load re-hashes it.
    let layer = seal_artifact::sha256_digest(&echo);
    let path = f.layout.join("blobs/sha256").join(layer.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let Err(e) = f.catalog.load(&v).await else {
        panic!("a damaged component loaded");
    };
    assert!(matches!(e, ControlError::ArtifactCorrupt(_)), "{e:?}");

    // A lost blob is named as lost.
    std::fs::remove_file(&path).unwrap();
    let Err(e) = f.catalog.load(&v).await else {
        panic!("a lost component loaded");
    };
    assert!(matches!(e, ControlError::ArtifactMissing(_)), "{e:?}");
}

#[tokio::test]
async fn uploads_are_checked_against_their_digest_and_the_limit() {
    let f = fixture().await;
    let claimed = seal_artifact::sha256_digest(b"what was announced");
    let mut body = futures::stream::iter([Ok::<_, String>(Bytes::from_static(b"something else"))]);
    let e = f
        .catalog
        .put_blob(claimed.clone(), None, &mut body)
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::DigestMismatch(_)), "{e:?}");
    assert!(!f.catalog.has_blob(&claimed).await, "nothing was kept");
    let mut empty = futures::stream::iter(Vec::<Result<Bytes, String>>::new());
    let e = f
        .catalog
        .put_blob(claimed, Some(65 << 20), &mut empty)
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::TooLarge(_)), "{e:?}");
}

/// Publishing an artifact whose blobs are already stored.
async fn publish_again(f: &Fixture, name: &str, component: &[u8]) -> seal_control::Published {
    let packed = seal_artifact::pack(component, &SealManifest::new(name)).unwrap();
    f.catalog
        .publish(packed.manifest_bytes, "test")
        .await
        .unwrap()
}
