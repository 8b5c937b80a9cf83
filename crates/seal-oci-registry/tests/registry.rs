//! The registry store against a real registry (CNCF distribution 2.8):
//! two nodes' stores over one repository, each with its own cache.

#![allow(clippy::unwrap_used)]

use seal_artifact::{Digest, sha256_digest};
use seal_oci::{
    ANNOTATION_REF_NAME, ANNOTATION_SUBJECT, ArtifactStore, IndexEntry, OciLayout, StoreError,
};
use seal_oci_registry::testing::TestRegistry;
use seal_oci_registry::{OCI_MANIFEST, RegistryLocation, RegistryStore, fallback_tag};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

struct Node {
    _cache_dir: tempfile::TempDir,
    cache: Arc<OciLayout>,
    store: Arc<RegistryStore>,
}

fn node(registry: &TestRegistry) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(OciLayout::open(dir.path()).unwrap());
    let at = RegistryLocation::parse(&registry.url("seal/test")).unwrap();
    let store = Arc::new(RegistryStore::new(at, cache.clone()).unwrap());
    Node {
        _cache_dir: dir,
        cache,
        store,
    }
}

/// Runs blocking store calls off the async workers, as the server does.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// An artifact's three blobs, stored through `store`; returns the
/// manifest's digest and bytes.
fn put_artifact(store: &dyn ArtifactStore, payload: &[u8]) -> (Digest, Vec<u8>) {
    put_named(store, "hello", payload)
}

fn put_named(store: &dyn ArtifactStore, name: &str, payload: &[u8]) -> (Digest, Vec<u8>) {
    let config = format!(r#"{{"name":"{name}"}}"#);
    let config = config.as_bytes();
    let config_digest = store.put_blob(config).unwrap();
    let layer_digest = store.put_blob(payload).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.dev.seal.manifest.v1+json", "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": layer_digest.as_str(), "size": payload.len()}],
    }))
    .unwrap();
    let digest = store.put_blob(&manifest).unwrap();
    (digest, manifest)
}

fn listed(digest: &Digest, size: usize, tag: &str) -> IndexEntry {
    IndexEntry {
        media_type: OCI_MANIFEST.into(),
        digest: digest.clone(),
        size: size as u64,
        annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), tag.to_owned())]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_pushes_another_reads_verified_and_caches() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let (a, b) = (node(&registry), node(&registry));
    let (sa, sb, cb) = (a.store.clone(), b.store.clone(), b.cache.clone());
    blocking(move || {
        let (manifest, bytes) = put_artifact(&*sa, b"\0asm component bytes");
        sa.add_manifest(listed(&manifest, bytes.len(), "hello-1"))
            .unwrap();

        // B has nothing cached, yet the registry has it all.
        assert!(!cb.has_blob(&manifest));
        assert!(sb.has_blob(&manifest));
        assert_eq!(sb.blob_size(&manifest).unwrap(), Some(bytes.len() as u64));
        assert_eq!(sb.read_blob(&manifest).unwrap(), bytes);
        assert!(cb.has_blob(&manifest), "read through into B's cache");
        let layer = sha256_digest(b"\0asm component bytes");
        assert_eq!(sb.read_blob(&layer).unwrap(), b"\0asm component bytes");

        // An absent blob is absent, not an outage.
        let absent = sha256_digest(b"never pushed");
        assert!(!sb.has_blob(&absent));
        assert!(matches!(sb.read_blob(&absent), Err(StoreError::NotFound(d)) if d == absent));
        assert_eq!(sb.blob_size(&absent).unwrap(), None);

        // A blob damaged in B's cache is pulled again, never served.
        std::fs::write(cb.blob_path(&layer), b"tampered").unwrap();
        assert_eq!(sb.read_blob(&layer).unwrap(), b"\0asm component bytes");
        assert_eq!(cb.read_blob(&layer).unwrap(), b"\0asm component bytes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_counts_once_the_registry_has_it_and_a_wrong_digest_leaves_nothing() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let (a, b) = (node(&registry), node(&registry));
    let (sa, sb) = (a.store.clone(), b.store.clone());
    blocking(move || {
        let body = vec![7u8; 300_000];
        let digest = sha256_digest(&body);
        let mut up = sa.upload(1 << 20).unwrap();
        for chunk in body.chunks(65_536) {
            up.write(chunk).unwrap();
        }
        assert_eq!(up.commit(Some(&digest)).unwrap(), digest);
        assert!(sb.has_blob(&digest), "pushed to the registry on commit");

        let wrong = sha256_digest(b"something else");
        let mut up = sa.upload(1 << 20).unwrap();
        up.write(b"these bytes").unwrap();
        assert!(matches!(
            up.commit(Some(&wrong)),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!sb.has_blob(&sha256_digest(b"these bytes")));

        let mut up = sa.upload(10).unwrap();
        assert!(matches!(
            up.write(&[0; 11]),
            Err(StoreError::TooLarge { limit: 10 })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_listed_under_the_fallback_tag_and_unlisted() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let (a, b) = (node(&registry), node(&registry));
    let url = registry.url("seal/test");
    let (sa, sb) = (a.store.clone(), b.store.clone());
    let subject = blocking(move || {
        let (subject, bytes) = put_artifact(&*sa, b"component");
        sa.add_manifest(listed(&subject, bytes.len(), "hello-1"))
            .unwrap();
        let empty = sa.put_blob(b"{}").unwrap();
        let envelope = sa.put_blob(br#"{"payload":"..."}"#).unwrap();
        let referrer = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.dsse.envelope.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
            "layers": [{"mediaType": "application/vnd.dsse.envelope.v1+json", "digest": envelope.as_str(), "size": 17}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.as_str(), "size": bytes.len()},
        }))
        .unwrap();
        let referrer_digest = sa.put_blob(&referrer).unwrap();
        sa.add_manifest(IndexEntry {
            media_type: OCI_MANIFEST.into(),
            digest: referrer_digest.clone(),
            size: referrer.len() as u64,
            annotations: BTreeMap::from([(ANNOTATION_SUBJECT.to_owned(), subject.to_string())]),
        })
        .unwrap();

        // Another node sees it through the registry.
        let seen = sb.referrers(&subject).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].digest, referrer_digest);
        assert_eq!(
            seen[0].annotations.get(ANNOTATION_SUBJECT),
            Some(&subject.to_string())
        );
        assert!(sb.remove_manifest(&referrer_digest).unwrap());
        assert!(sa.referrers(&subject).unwrap().is_empty());
        assert!(!sb.remove_manifest(&referrer_digest).unwrap());
        subject
    })
    .await;

    // The fallback tag is a plain image index any client reads.
    let at = RegistryLocation::parse(&url).unwrap();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let r = oci_client::Reference::with_tag(at.registry, at.repository, fallback_tag(&subject));
    let (index, _) = client
        .pull_manifest_raw(
            &r,
            &oci_client::secrets::RegistryAuth::Anonymous,
            &["application/vnd.oci.image.index.v1+json"],
        )
        .await
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(index["manifests"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_stops_pushes_clearly_and_nothing_cached() {
    let Some(mut registry) = TestRegistry::start() else {
        return;
    };
    let a = node(&registry);
    let sa = a.store.clone();
    let (manifest, bytes) = blocking(move || put_artifact(&*sa, b"cached component")).await;

    registry.stop();
    let sa = a.store.clone();
    blocking(move || {
        // Cached: still read, verified.
        assert_eq!(sa.read_blob(&manifest).unwrap(), bytes);
        // Pushing: a clear, retryable error; nothing pretends to be stored.
        let e = sa.put_blob(b"new blob").unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("unreachable"), "{e}");
        assert!(!sa.has_blob(&sha256_digest(b"new blob")));
        let absent = sha256_digest(b"not cached");
        assert!(matches!(
            sa.read_blob(&absent),
            Err(StoreError::Unavailable(_))
        ));
    })
    .await;

    registry.restart();
    let sa = a.store.clone();
    blocking(move || {
        let d = sa.put_blob(b"new blob").unwrap();
        assert!(sa.has_blob(&d));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_is_imported_whole_and_read_back_verified() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(OciLayout::open(dir.path().join("old")).unwrap());
    let target = node(&registry);
    let reader = node(&registry);
    let (store, from, other) = (target.store.clone(), layout.clone(), reader.store.clone());
    blocking(move || {
        // What an embedded data dir holds: two artifacts, listed.
        let mut digests = Vec::new();
        for (k, payload) in [b"component one".as_slice(), b"component two"]
            .iter()
            .enumerate()
        {
            let (m, manifest) = put_named(&*from, &format!("f{k}"), payload);
            from.add_manifest(listed(&m, manifest.len(), &format!("f{k}-1")))
                .unwrap();
            digests.push(m);
        }
        let imported = store.import(&*from).unwrap();
        assert_eq!((imported.manifests, imported.blobs), (2, 6), "{imported:?}");
        // Another node, cache empty, reads each from the registry.
        for d in &digests {
            assert!(other.has_blob(d));
            assert_eq!(other.read_blob(d).unwrap(), from.read_blob(d).unwrap());
        }
        // Again: nothing new, the same answer.
        assert_eq!(store.import(&*from).unwrap(), imported);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_attached_at_once_through_one_node_are_all_listed() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let (a, b) = (node(&registry), node(&registry));
    let sa = a.store.clone();
    let (subject, size) = blocking(move || {
        let (subject, bytes) = put_artifact(&*sa, b"component");
        (subject, bytes.len())
    })
    .await;
    // Eight referrers through A at once: its updates of the subject's
    // index are serialised, none is lost (across nodes, a racing write is
    // caught by reading back after a settle time: narrowed, not excluded).
    // The empty config they share is pushed once first: eight pushes of
    // one blob at once make the registry's filesystem driver answer 500
    // now and then (distribution 2.8), which is not what is tested here.
    let sa = a.store.clone();
    let empty = blocking(move || sa.put_blob(b"{}").unwrap()).await;
    let mut tasks = Vec::new();
    for k in 0..8 {
        let store = a.store.clone();
        let subject = subject.clone();
        let empty = empty.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let referrer = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.dsse.envelope.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
                "layers": [],
                "annotations": {"n": k.to_string()},
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject.as_str(), "size": size},
            }))
            .unwrap();
            let digest = store.put_blob(&referrer).unwrap();
            store
                .add_manifest(IndexEntry {
                    media_type: OCI_MANIFEST.into(),
                    digest: digest.clone(),
                    size: referrer.len() as u64,
                    annotations: BTreeMap::from([(
                        ANNOTATION_SUBJECT.to_owned(),
                        subject.to_string(),
                    )]),
                })
                .map(|()| digest)
        }));
    }
    let mut attached = Vec::new();
    for t in tasks {
        attached.push(t.await.unwrap().unwrap());
    }
    let sb = b.store.clone();
    let listed = blocking(move || sb.referrers(&subject).unwrap()).await;
    for d in &attached {
        assert!(listed.iter().any(|e| &e.digest == d), "{d} was lost");
    }
    assert_eq!(listed.len(), 8);
}
