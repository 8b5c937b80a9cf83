//! What the service tests share: a service's real parts on a temp dir.
#![allow(clippy::unwrap_used, dead_code)]

#[path = "../../../../tests/support/guests.rs"]
pub mod guests;

use bytes::Bytes;
use seal_artifact::SealManifest;
use seal_control::Catalog;
use seal_oci::{ArtifactStore, OciLayout};
use seal_runtime::{Runtime, RuntimeConfig};
use seal_state::StateStore;
use std::sync::Arc;

pub struct Fixture {
    pub catalog: Arc<Catalog>,
    pub state: Arc<dyn StateStore>,
    pub oci: Arc<dyn ArtifactStore>,
    pub runtime: Arc<Runtime>,
    pub layout: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub async fn fixture() -> Fixture {
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
        catalog: Arc::new(Catalog::new(
            state.clone(),
            oci.clone(),
            runtime.clone(),
            64 << 20,
        )),
        state,
        oci,
        runtime,
        layout,
        _dir: dir,
    }
}

/// Uploads the blobs of `component` packed as `name` and publishes it.
pub async fn publish(f: &Fixture, name: &str, component: &[u8]) -> seal_control::Published {
    let packed = seal_artifact::pack(component, &SealManifest::new(name)).unwrap();
    for (digest, bytes) in [
        (&packed.config_digest, packed.config_bytes.clone()),
        (&packed.layer_digest, component.to_vec()),
    ] {
        let mut body = futures::stream::iter([Ok::<_, String>(Bytes::from(bytes))]);
        // (A blob stored before, e.g. the component of another function,
        // is answered as existing.)
        f.catalog
            .put_blob(digest.clone(), None, &mut body)
            .await
            .unwrap();
    }
    f.catalog
        .publish(packed.manifest_bytes, "test")
        .await
        .unwrap()
}

/// Publishing an artifact whose blobs are already stored.
pub async fn publish_again(f: &Fixture, name: &str, component: &[u8]) -> seal_control::Published {
    let packed = seal_artifact::pack(component, &SealManifest::new(name)).unwrap();
    f.catalog
        .publish(packed.manifest_bytes, "test")
        .await
        .unwrap()
}
