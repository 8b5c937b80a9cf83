//! Supply-chain trust for Seal's sealed artifacts.
//!
//! A release is trusted when a key the environment trusts has signed a
//! statement about *that exact artifact* saying how it was built. This crate
//! provides each piece of that chain:
//!
//! - [`SigningKey`] / [`PublicKey`]: Ed25519 keys in PKCS#8 / SPKI PEM, with a
//!   stable key id (`sha256:` of the SPKI DER);
//! - [`statement`]: an in-toto Statement v1 whose predicate is SLSA
//!   Provenance v1, built from a [`BuildInfo`] (with
//!   [`cargo_lock_dependencies`] for the resolved dependencies);
//! - [`Envelope`]: the DSSE v1 envelope that signs the statement;
//! - [`referrer_manifest`] / [`parse_referrer_manifest`]: the OCI image
//!   manifest that attaches an envelope blob to the artifact manifest as an
//!   OCI 1.1 referrer (`subject`);
//! - [`Policy`] / [`evaluate`]: the per-environment rule the deploy engine
//!   enforces, and [`inspect`] for `seal verify` without a policy.
//!
//! What this crate does **not** know: where blobs, keys or policies are stored
//! (no files, no SQLite), how referrers are pushed or listed (no HTTP, no
//! registry client), nor who is allowed to change a policy. It turns bytes
//! into checked values and decisions; callers do the I/O. Every error message
//! is a user-facing reason.

mod dsse;
mod keys;
mod policy;
mod provenance;
mod referrer;

pub use dsse::{ENVELOPE_MEDIA_TYPE, Envelope, EnvelopeSignature, PAYLOAD_TYPE, pae};
pub use keys::{PublicKey, SigningKey};
pub use policy::{
    EnvelopeReport, Policy, TrustedKey, VSA_PREDICATE, Verdict, evaluate, inspect,
    parse_requirement, requirement_path,
};
pub use provenance::{
    BUILD_TYPE, BUILD_TYPE_PREBUILT, BuildInfo, ResolvedDependency, SLSA_PROVENANCE_V1,
    STATEMENT_TYPE, cargo_lock_dependencies, statement,
};
pub use referrer::{
    ATTESTATION_ARTIFACT_TYPE, EMPTY_CONFIG, EMPTY_CONFIG_MEDIA_TYPE, KEYID_ANNOTATION, Referrer,
    parse_referrer_manifest, referrer_manifest,
};

/// Errors of this crate. Every message is safe and meant to be shown to a user.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A key file could not be read as the expected kind of key.
    #[error("invalid key: {0}")]
    Key(String),
    /// Bytes that should be a DSSE envelope are not one.
    #[error("invalid DSSE envelope: {0}")]
    Envelope(String),
    /// The envelope's payload is not an in-toto statement.
    #[error("invalid statement: {0}")]
    Statement(String),
    /// An OCI manifest that should attach an attestation does not.
    #[error("invalid attestation manifest: {0}")]
    Referrer(String),
    /// A Cargo.lock that could not be read.
    #[error("invalid Cargo.lock: {0}")]
    CargoLock(String),
    /// A `--require-provenance` argument that could not be parsed.
    #[error("invalid provenance requirement {0:?}: {1}")]
    Requirement(String, String),
    /// [`Envelope::verify`] found no signature that verifies with the given keys.
    #[error("{0}")]
    Signature(String),
    /// A policy refused the artifact; the message is the exact reason.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T, E = TrustError> = std::result::Result<T, E>;

/// A key id or digest shortened for humans: `sha256:` + 12 hex digits + `…`.
/// Anything that is not a well-formed key id is quoted (it may come from an
/// attacker-controlled envelope), truncated to a sane length.
pub(crate) fn short_id(id: &str) -> String {
    match seal_artifact::Digest::parse(id) {
        Ok(d) => format!("sha256:{}…", d.short()),
        Err(_) if id.is_empty() => "(no keyid)".to_owned(),
        Err(_) => {
            let cut: String = id.chars().take(40).collect();
            if cut.len() < id.len() {
                format!("{cut:?}…")
            } else {
                format!("{cut:?}")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn short_id_shortens_digests_and_quotes_garbage() {
        let d = seal_artifact::sha256_digest(b"k");
        assert_eq!(short_id(d.as_str()), format!("sha256:{}…", &d.hex()[..12]));
        assert_eq!(short_id(""), "(no keyid)");
        assert_eq!(short_id("evil\n"), "\"evil\\n\"");
        let long = "x".repeat(100);
        assert_eq!(short_id(&long), format!("{:?}…", "x".repeat(40)));
    }
}
