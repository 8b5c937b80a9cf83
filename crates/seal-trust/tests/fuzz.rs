//! Property tests ("fuzz targets" on stable Rust) for what the trust crate
//! reads from users: DSSE envelopes (and the statements inside), OCI
//! referrer manifests and policy requirements. Inputs are arbitrary bytes
//! or a valid sample with random edits. The properties: no panic, and a
//! mutated envelope never verifies unless its signed bytes are intact.
//!
//! `cargo test` runs 256 cases per target (the CI smoke run); a long run:
//! `PROPTEST_CASES=200000 cargo test --release -p seal-trust --test fuzz`.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use seal_artifact::fuzzing::input;
use seal_trust::{Envelope, SigningKey};

fn key() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(SigningKey::generate)
}

fn envelope_sample() -> Vec<u8> {
    let statement = serde_json::json!({
        "_type": seal_trust::STATEMENT_TYPE,
        "subject": [{"name": "hello", "digest": {"sha256": "ab".repeat(32)}}],
        "predicateType": seal_trust::SLSA_PROVENANCE_V1,
        "predicate": {"buildDefinition": {"buildType": seal_trust::BUILD_TYPE}},
    });
    Envelope::sign(&statement, key()).to_json()
}

fn referrer_sample() -> Vec<u8> {
    let d = |c: &str| seal_artifact::Digest::parse(&format!("sha256:{}", c.repeat(64))).unwrap();
    seal_trust::referrer_manifest(&d("a"), 500, &d("b"), 900, "keyid").unwrap()
}

proptest! {
    #[test]
    fn envelopes_never_panic_and_edits_break_the_signature(bytes in input(envelope_sample(), 2048)) {
        if let Ok(envelope) = Envelope::from_json(&bytes) {
            let _ = envelope.statement();
            let original = Envelope::from_json(&envelope_sample()).unwrap();
            if envelope.verify(&[key().public_key()]).is_ok() {
                // Only the signed payload and type, intact, verify.
                prop_assert_eq!(&envelope.payload, &original.payload);
                prop_assert_eq!(&envelope.payload_type, &original.payload_type);
            }
        }
    }

    #[test]
    fn referrer_manifests_never_panic(bytes in input(referrer_sample(), 2048)) {
        let _ = seal_trust::parse_referrer_manifest(&bytes);
    }

    #[test]
    fn policy_requirements_never_panic(text in "\\PC{0,64}") {
        let _ = seal_trust::parse_requirement(&text);
    }
}

#[test]
fn the_seeds_are_accepted() {
    let e = Envelope::from_json(&envelope_sample()).unwrap();
    assert!(e.verify(&[key().public_key()]).is_ok());
    assert!(e.statement().is_ok());
    assert!(seal_trust::parse_referrer_manifest(&referrer_sample()).is_ok());
}
