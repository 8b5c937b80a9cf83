//! The OCI 1.1 referrer manifest that attaches a DSSE envelope to an artifact.

use crate::dsse::ENVELOPE_MEDIA_TYPE;
use crate::{Result, TrustError};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageManifest, ImageManifestBuilder, MediaType,
};
use seal_artifact::{Digest, sha256_digest};
use std::collections::HashMap;

/// `artifactType` of a Seal attestation manifest: a Seal-specific type, so
/// that `GET /v2/<name>/referrers/<digest>?artifactType=…` lists exactly the
/// attestations Seal made (its single layer is a DSSE envelope of
/// [`ENVELOPE_MEDIA_TYPE`] carrying an in-toto statement).
pub const ATTESTATION_ARTIFACT_TYPE: &str = "application/vnd.dev.seal.attestation.v1+json";
/// The OCI empty config blob.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Media type of [`EMPTY_CONFIG`].
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Annotation holding the signing key id, so a listing can show it without
/// fetching the envelope. Informational only: never trusted.
pub const KEYID_ANNOTATION: &str = "dev.seal.signature.keyid";

/// What an attestation manifest points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    /// The artifact manifest the attestation is about.
    pub subject: Digest,
    /// The DSSE envelope blob.
    pub envelope: Digest,
    pub envelope_size: u64,
    /// The [`KEYID_ANNOTATION`], if present (a hint, not verified).
    pub keyid: Option<String>,
}

/// The OCI image manifest that attaches an envelope to an artifact:
/// `artifactType` = [`ATTESTATION_ARTIFACT_TYPE`], config = the OCI empty
/// descriptor, one layer (the envelope blob), `subject` = the artifact
/// manifest, annotation [`KEYID_ANNOTATION`] = `keyid`. Deterministic: the
/// same inputs give the same bytes.
pub fn referrer_manifest(
    subject: &Digest,
    subject_size: u64,
    envelope: &Digest,
    envelope_size: u64,
    keyid: &str,
) -> Result<Vec<u8>> {
    let empty = sha256_digest(EMPTY_CONFIG);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(ATTESTATION_ARTIFACT_TYPE.into()))
        .config(descriptor(
            MediaType::EmptyJSON,
            &empty,
            EMPTY_CONFIG.len() as u64,
        )?)
        .layers(vec![descriptor(
            MediaType::Other(ENVELOPE_MEDIA_TYPE.into()),
            envelope,
            envelope_size,
        )?])
        .subject(descriptor(MediaType::ImageManifest, subject, subject_size)?)
        .annotations(HashMap::from([(
            KEYID_ANNOTATION.to_owned(),
            keyid.to_owned(),
        )]))
        .build()
        .map_err(|e| TrustError::Referrer(e.to_string()))?;
    serde_json::to_vec(&manifest).map_err(|e| TrustError::Referrer(e.to_string()))
}

fn descriptor(media_type: MediaType, digest: &Digest, size: u64) -> Result<Descriptor> {
    let oci_digest: oci_spec::image::Digest = digest
        .as_str()
        .parse()
        .map_err(|e: oci_spec::OciSpecError| TrustError::Referrer(e.to_string()))?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(oci_digest)
        .size(size)
        .build()
        .map_err(|e| TrustError::Referrer(e.to_string()))
}

fn seal_digest(d: &oci_spec::image::Digest) -> Result<Digest> {
    Digest::parse(d.as_ref()).map_err(|e| TrustError::Referrer(e.to_string()))
}

/// Parses an attestation manifest: schemaVersion 2, `artifactType` =
/// [`ATTESTATION_ARTIFACT_TYPE`], exactly one [`ENVELOPE_MEDIA_TYPE`] layer,
/// and a `subject`.
pub fn parse_referrer_manifest(bytes: &[u8]) -> Result<Referrer> {
    let m: ImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| TrustError::Referrer(format!("not an OCI image manifest: {e}")))?;
    if m.schema_version() != 2 {
        return Err(TrustError::Referrer(format!(
            "schemaVersion must be 2, got {}",
            m.schema_version()
        )));
    }
    match m.artifact_type() {
        Some(t) if t.to_string() == ATTESTATION_ARTIFACT_TYPE => {}
        Some(t) => {
            return Err(TrustError::Referrer(format!(
                "artifactType is {t}, expected {ATTESTATION_ARTIFACT_TYPE}"
            )));
        }
        None => {
            return Err(TrustError::Referrer(format!(
                "no artifactType, expected {ATTESTATION_ARTIFACT_TYPE}"
            )));
        }
    }
    let [layer] = m.layers().as_slice() else {
        return Err(TrustError::Referrer(format!(
            "expected exactly one {ENVELOPE_MEDIA_TYPE} layer, got {} layers",
            m.layers().len()
        )));
    };
    if layer.media_type().to_string() != ENVELOPE_MEDIA_TYPE {
        return Err(TrustError::Referrer(format!(
            "layer media type is {}, expected {ENVELOPE_MEDIA_TYPE}",
            layer.media_type()
        )));
    }
    let subject = m.subject().as_ref().ok_or_else(|| {
        TrustError::Referrer("no subject: it is not attached to an artifact".into())
    })?;
    Ok(Referrer {
        subject: seal_digest(subject.digest())?,
        envelope: seal_digest(layer.digest())?,
        envelope_size: layer.size(),
        keyid: m
            .annotations()
            .as_ref()
            .and_then(|a| a.get(KEYID_ANNOTATION).cloned()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample() -> (Digest, Digest, Vec<u8>) {
        let subject = sha256_digest(b"artifact manifest");
        let envelope = sha256_digest(b"envelope");
        let bytes = referrer_manifest(&subject, 512, &envelope, 1234, "sha256:abc").unwrap();
        (subject, envelope, bytes)
    }

    #[test]
    fn referrer_manifest_round_trips() {
        let (subject, envelope, bytes) = sample();
        let r = parse_referrer_manifest(&bytes).unwrap();
        assert_eq!(
            r,
            Referrer {
                subject: subject.clone(),
                envelope: envelope.clone(),
                envelope_size: 1234,
                keyid: Some("sha256:abc".into()),
            }
        );
        // Deterministic.
        assert_eq!(
            referrer_manifest(&subject, 512, &envelope, 1234, "sha256:abc").unwrap(),
            bytes
        );
    }

    #[test]
    fn referrer_manifest_has_the_oci_shape() {
        let (subject, envelope, bytes) = sample();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(v["artifactType"], ATTESTATION_ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], EMPTY_CONFIG_MEDIA_TYPE);
        assert_eq!(
            v["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(v["config"]["size"], 2);
        assert_eq!(v["layers"][0]["mediaType"], ENVELOPE_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["digest"], envelope.as_str());
        assert_eq!(v["layers"][0]["size"], 1234);
        assert_eq!(
            v["subject"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(v["subject"]["digest"], subject.as_str());
        assert_eq!(v["subject"]["size"], 512);
        assert_eq!(v["annotations"][KEYID_ANNOTATION], "sha256:abc");
    }

    #[test]
    fn parse_rejects_wrong_shapes() {
        let (_, _, bytes) = sample();
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();

        let mut wrong_type = v.clone();
        wrong_type["artifactType"] = seal_artifact::ARTIFACT_TYPE.into();
        let err = parse_referrer_manifest(&serde_json::to_vec(&wrong_type).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .contains("artifactType is application/vnd.seal.function.v1"),
            "{err}"
        );

        let mut wrong_layer = v.clone();
        wrong_layer["layers"][0]["mediaType"] = "application/wasm".into();
        let err = parse_referrer_manifest(&serde_json::to_vec(&wrong_layer).unwrap()).unwrap_err();
        assert!(err.to_string().contains("layer media type"), "{err}");

        v.as_object_mut().unwrap().remove("subject");
        let err = parse_referrer_manifest(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("no subject"), "{err}");

        assert!(parse_referrer_manifest(b"{}").is_err());
        assert!(parse_referrer_manifest(b"garbage").is_err());
    }
}
