//! Property tests ("fuzz targets" on stable Rust) for everything the
//! artifact crate reads from users: `seal.toml`, the sealed manifest, OCI
//! manifests and components. Each input is either arbitrary bytes or a
//! valid sample with random bytes changed, inserted or cut, so the parsers
//! are driven past their first check. The property: no panic, and what is
//! accepted is consistent (a manifest round-trips through its canonical
//! bytes).
//!
//! `cargo test` runs 256 cases per target (the CI smoke run); a long run:
//! `PROPTEST_CASES=200000 cargo test --release -p seal-artifact --test fuzz`.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use seal_artifact::fuzzing::input;
use seal_artifact::{ProjectFile, SealManifest};

/// A valid sample with up to 8 random edits (overwrite, insert, cut).
const SEAL_TOML: &str = r#"name = "hello"
description = "Says hello"
tags = ["example"]
[build]
command = "cargo build"
component = "x.wasm"
[limits]
memory_mb = 64
timeout_ms = 5000
max_concurrency = 8
[capabilities]
outbound_hosts = ["api.example.org", "*.example.com:8443", "127.0.0.1:9000"]
config_keys = ["GREETING"]
"#;

fn manifest_sample() -> Vec<u8> {
    let p = ProjectFile::parse(SEAL_TOML).unwrap();
    p.to_manifest(|_| unreachable!("the sample names no schema file"))
        .unwrap()
        .to_canonical_json()
}

fn oci_sample() -> Vec<u8> {
    let d = |c: &str| format!("sha256:{}", c.repeat(64));
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": seal_artifact::ARTIFACT_TYPE,
        "config": {"mediaType": seal_artifact::CONFIG_MEDIA_TYPE, "digest": d("a"), "size": 120},
        "layers": [{"mediaType": seal_artifact::LAYER_MEDIA_TYPE, "digest": d("b"), "size": 4096}],
    })
    .to_string()
    .into_bytes()
}

proptest! {
    #[test]
    fn seal_toml_never_panics(bytes in input(SEAL_TOML.as_bytes().to_vec(), 2048)) {
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(p) = ProjectFile::parse(text)
        {
            // What parses yields a manifest that validates or says why.
            // Schema files read as an empty object.
            if let Ok(m) = p.to_manifest(|_| Ok(b"{}".to_vec()))
                && m.validate().is_ok()
            {
                prop_assert_eq!(SealManifest::from_json(&m.to_canonical_json()).unwrap(), m);
            }
        }
    }

    #[test]
    fn sealed_manifests_never_panic_and_round_trip(bytes in input(manifest_sample(), 2048)) {
        if let Ok(m) = SealManifest::from_json(&bytes) {
            let canonical = m.to_canonical_json();
            prop_assert_eq!(SealManifest::from_json(&canonical).unwrap(), m);
        }
    }

    #[test]
    fn oci_manifests_never_panic(bytes in input(oci_sample(), 2048)) {
        let _ = seal_artifact::parse_oci_manifest(&bytes);
    }

    #[test]
    fn components_never_panic(bytes in input(b"\0asm\x0d\0\x01\0\x01\x04\x01\x60\0\0".to_vec(), 2048)) {
        let _ = seal_artifact::validate_component(&bytes);
    }
}

/// The seeds are valid, so the mutations start from inputs that pass.
#[test]
fn the_seeds_are_accepted() {
    assert!(ProjectFile::parse(SEAL_TOML).is_ok());
    assert!(SealManifest::from_json(&manifest_sample()).is_ok());
    assert!(seal_artifact::parse_oci_manifest(&oci_sample()).is_ok());
}
