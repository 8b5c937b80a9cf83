//! The catalog service on its own: a real SQLite state store, a real OCI
//! layout and the real wasmtime runtime, no server around them.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use seal_control::ControlError;
use support::{fixture, guests, publish, publish_again};

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

#[tokio::test]
async fn functions_made_of_one_component_compile_it_once() {
    let f = fixture().await;
    let echo = std::fs::read(guests::guest("echo")).unwrap();
    let compiles = || {
        f.runtime
            .stats()
            .compiles
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut loaded = Vec::new();
    for name in ["a", "b", "c"] {
        publish(&f, name, &echo).await;
        let v = f.state.version(name, 1).await.unwrap().unwrap();
        loaded.push(f.catalog.load(&v).await.unwrap());
    }
    assert_eq!(compiles(), 1, "three functions, one component, one compile");
    // They share one compile cache file and record its hash.
    let shas: std::collections::BTreeSet<_> =
        futures::future::join_all(["a", "b", "c"].map(|n| f.state.version(n, 1)))
            .await
            .into_iter()
            .map(|v| v.unwrap().unwrap().compiled_sha256)
            .collect();
    assert_eq!(shas.len(), 1, "{shas:?}");
    // Another component is another compile.
    let other = std::fs::read(guests::guest("events")).unwrap();
    publish(&f, "d", &other).await;
    assert_eq!(compiles(), 2);
}
