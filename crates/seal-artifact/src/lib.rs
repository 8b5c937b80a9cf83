//! The sealed artifact: what a Seal release *is*.
//!
//! An artifact is an OCI image manifest (schemaVersion 2) whose config blob is
//! the [`SealManifest`] (media type [`CONFIG_MEDIA_TYPE`]) and whose single
//! layer ([`LAYER_MEDIA_TYPE`]) is a WebAssembly component exporting
//! `wasi:http/incoming-handler`. Its identity is the sha256 of the OCI
//! manifest bytes.
//!
//! This crate knows nothing about storage, networks or wasmtime: it turns
//! bytes into a validated, deterministic artifact and back. Packing is a pure
//! function — the same component and manifest always give the same digest —
//! so nothing time- or machine-dependent may enter the manifest.

pub mod capabilities;
pub mod contracts;
mod digest;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod manifest;
mod validate;

pub use digest::{Digest, DigestError, sha256_digest};
pub use manifest::{
    Capabilities, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_MS, Limits, MAX_MEMORY_MB, MAX_TIMEOUT_MS,
    ProjectBuild, ProjectContract, ProjectEvents, ProjectFile, Provenance, SealManifest,
    validate_environment_name, validate_function_name,
};
pub use validate::{ComponentInfo, validate_component};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageManifest, ImageManifestBuilder, MediaType,
};

/// Media type of the config blob: the Seal manifest as JSON.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.seal.function.config.v1+json";
/// Media type of the single layer: the WebAssembly component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// `artifactType` of the OCI manifest, so registries can tell Seal artifacts apart.
pub const ARTIFACT_TYPE: &str = "application/vnd.seal.function.v1";

/// Errors of this crate. Every message is safe to show a user.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build for the `wasm32-wasip2` target \
         (or wrap it with `wasm-tools component new`) so it exports wasi:http/incoming-handler"
    )]
    CoreModule,
    #[error("invalid WebAssembly component: {0}")]
    InvalidComponent(String),
    #[error(
        "the component does not export wasi:http/incoming-handler (it targets another world; \
         exports: {exports})"
    )]
    NoHttpHandler { exports: String },
    #[error("invalid function name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid environment name {name:?}: {reason}")]
    InvalidEnvironment { name: String, reason: &'static str },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("invalid artifact: {0}")]
    InvalidArtifact(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// A packed artifact: the three blobs and their digests.
#[derive(Debug, Clone)]
pub struct PackedArtifact {
    /// The OCI image manifest bytes; `digest` is their sha256.
    pub manifest_bytes: Vec<u8>,
    pub digest: Digest,
    pub config_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub layer_digest: Digest,
    pub layer_size: u64,
    pub manifest: SealManifest,
}

/// Packs a component and its Seal manifest into a deterministic OCI artifact.
///
/// The component is validated first; the manifest is validated and
/// normalised (see [`SealManifest::validate`]).
pub fn pack(component: &[u8], manifest: &SealManifest) -> Result<PackedArtifact> {
    validate_component(component)?;
    manifest.validate()?;
    let config_bytes = manifest.to_canonical_json();
    let config_digest = sha256_digest(&config_bytes);
    let layer_digest = sha256_digest(component);
    let layer_size = component.len() as u64;
    let oci = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(ARTIFACT_TYPE.into()))
        .config(descriptor(
            CONFIG_MEDIA_TYPE,
            &config_digest,
            config_bytes.len() as u64,
        )?)
        .layers(vec![descriptor(
            LAYER_MEDIA_TYPE,
            &layer_digest,
            layer_size,
        )?])
        .build()
        .map_err(|e| ArtifactError::InvalidArtifact(e.to_string()))?;
    let manifest_bytes =
        serde_json::to_vec(&oci).map_err(|e| ArtifactError::InvalidArtifact(e.to_string()))?;
    Ok(PackedArtifact {
        digest: sha256_digest(&manifest_bytes),
        manifest_bytes,
        config_bytes,
        config_digest,
        layer_digest,
        layer_size,
        manifest: manifest.clone(),
    })
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Result<Descriptor> {
    let oci_digest: oci_spec::image::Digest = digest
        .as_str()
        .parse()
        .map_err(|e: oci_spec::OciSpecError| ArtifactError::InvalidArtifact(e.to_string()))?;
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(oci_digest)
        .size(size)
        .build()
        .map_err(|e| ArtifactError::InvalidArtifact(e.to_string()))
}

/// The parts of an OCI manifest Seal needs, checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRefs {
    pub config_digest: Digest,
    pub config_size: u64,
    pub layer_digest: Digest,
    pub layer_size: u64,
}

/// Parses OCI manifest bytes received from a client or read from the store
/// and checks that they describe a Seal artifact: schemaVersion 2, a Seal
/// config blob, exactly one `application/wasm` layer.
pub fn parse_oci_manifest(bytes: &[u8]) -> Result<ArtifactRefs> {
    let oci: ImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| ArtifactError::InvalidArtifact(format!("not an OCI image manifest: {e}")))?;
    if oci.schema_version() != 2 {
        return Err(ArtifactError::InvalidArtifact(format!(
            "schemaVersion must be 2, got {}",
            oci.schema_version()
        )));
    }
    let config = oci.config();
    if config.media_type().to_string() != CONFIG_MEDIA_TYPE {
        return Err(ArtifactError::InvalidArtifact(format!(
            "config media type must be {CONFIG_MEDIA_TYPE}, got {}",
            config.media_type()
        )));
    }
    let [layer] = oci.layers().as_slice() else {
        return Err(ArtifactError::InvalidArtifact(format!(
            "expected exactly one {LAYER_MEDIA_TYPE} layer, got {} layers",
            oci.layers().len()
        )));
    };
    if layer.media_type().to_string() != LAYER_MEDIA_TYPE {
        return Err(ArtifactError::InvalidArtifact(format!(
            "layer media type must be {LAYER_MEDIA_TYPE}, got {}",
            layer.media_type()
        )));
    }
    Ok(ArtifactRefs {
        config_digest: Digest::parse(config.digest().as_ref())?,
        config_size: config.size(),
        layer_digest: Digest::parse(layer.digest().as_ref())?,
        layer_size: layer.size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid component that exports nothing.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn pack_refuses_a_component_without_the_handler() {
        let m = SealManifest::new("hello");
        let err = pack(EMPTY_COMPONENT, &m).unwrap_err();
        assert!(matches!(err, ArtifactError::NoHttpHandler { .. }), "{err}");
    }

    #[test]
    fn oci_manifest_parse_rejects_wrong_shapes() {
        assert!(parse_oci_manifest(b"{}").is_err());
        assert!(parse_oci_manifest(b"not json").is_err());
    }
}
