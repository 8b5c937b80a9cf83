//! Answers about functions, versions, environments, deployments and the
//! audit log: what `seal functions`, `versions`, `status`, `inspect`,
//! `deployments`, `env` and `audit` print.

use crate::records::{
    AuditRecord, DeploymentEvent, DeploymentRecord, RouteRecord, VersionRecord, WeightedVersion,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/server`: the server's version, limits and compile counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub seal_version: String,
    /// Components compiled since the server started.
    pub compiles: u64,
    /// Compiled components read back from the compile cache.
    pub cache_loads: u64,
    pub max_upload_bytes: u64,
    pub default_environment: String,
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub function: String,
    /// How many versions were published.
    pub versions: usize,
    pub latest: Option<u64>,
    pub routes: Vec<RouteRecord>,
}

/// `GET /v1/functions/{fn}`: each environment's route, and whether each
/// version in it serves now, with its counters since the server started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionStatus {
    pub function: String,
    pub latest_version: Option<u64>,
    pub routes: Vec<RouteStatus>,
    /// Where the function differs from the release file last applied to
    /// its environments, as of the last drift check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<crate::desired::Difference>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub environment: String,
    pub deployment_id: u64,
    pub updated_at: i64,
    pub versions: Vec<VersionStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionStatus {
    pub version: u64,
    pub weight: u32,
    pub digest: Option<String>,
    /// Loaded and in the gateway's route table.
    pub serving: bool,
    pub requests: Option<u64>,
    pub errors: Option<u64>,
}

/// `GET /v1/functions/{fn}/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    pub function: String,
    pub versions: Vec<VersionRecord>,
}

/// `GET /v1/functions/{fn}/versions/{n}`: the version, its OCI manifest
/// (every blob it names re-hashed on the way) and where it is routed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    pub version: VersionRecord,
    pub oci_manifest: OciManifest,
    /// Every blob matched its digest.
    pub verified: bool,
    pub routes: Vec<RouteWeights>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteWeights {
    pub environment: String,
    pub weights: Vec<WeightedVersion>,
}

/// An OCI image manifest (image-spec v1.1), as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: OciDescriptor,
    pub layers: Vec<OciDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<OciDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `GET /v1/environments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environments {
    pub environments: Vec<String>,
    /// Where a request without an environment goes.
    pub default: String,
    /// The protected ones among `environments`.
    #[serde(default)]
    pub protected: Vec<String>,
}

/// `GET /v1/environments/{env}`, and the answer to [`SetProtection`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentView {
    pub name: String,
    /// Whether it is the server's default environment.
    pub default: bool,
    /// Permission widenings need an admin; a request pinned to a version
    /// needs the deployment's preview token.
    pub protected: bool,
    /// `rule` (the default environment and `production` are protected) or
    /// `set` (by an admin).
    pub protection: String,
    /// The environment it follows and the evidence a version needs there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<crate::promotion::PipelineView>,
    /// The environments that follow this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub followed_by: Vec<String>,
}

/// `PUT /v1/environments/{env}/protection`: `true` or `false`, or `null`
/// to follow the server's rule again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetProtection {
    /// Required: `{}` is refused rather than read as `null`, so a body
    /// missing the field never clears an admin's setting.
    #[serde(deserialize_with = "present")]
    pub protected: Option<bool>,
}

/// An `Option` that must be present (`null` allowed): serde treats a
/// missing `Option` field as `None` unless it has its own deserializer.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Option::<bool>::deserialize(d)
}

/// `POST /v1/environments` (`{"name": …}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    pub name: String,
    /// A pipeline to give it at once (admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub require_verification: bool,
}

/// The answer to [`CreateEnvironment`]; `created` is false when it existed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentCreated {
    pub name: String,
    pub created: bool,
}

/// `GET /v1/functions/{fn}/deployments`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentList {
    pub function: String,
    pub deployments: Vec<DeploymentRecord>,
}

/// `GET /v1/deployments/{id}`: the deployment and every event it recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentDetail {
    pub deployment: DeploymentRecord,
    pub events: Vec<DeploymentEvent>,
    /// While the deployment runs, and only for a caller who may deploy to
    /// its environment: the token that lets a request pinned to the
    /// candidate (`seal-version`, the preview host) count in its gates,
    /// sent as `seal-preview-token` (required in a protected environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_token: Option<String>,
}

/// `POST /v1/deployments/{id}/{approve|promote|abort}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentAnswer {
    pub deployment: DeploymentRecord,
}

/// `GET /v1/audit`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntries {
    pub entries: Vec<AuditRecord>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_protection_needs_the_field_null_included() {
        use super::SetProtection;
        let parse = |s: &str| serde_json::from_str::<SetProtection>(s);
        assert_eq!(
            parse(r#"{"protected": true}"#).unwrap().protected,
            Some(true)
        );
        assert_eq!(parse(r#"{"protected": null}"#).unwrap().protected, None);
        let e = parse("{}").unwrap_err().to_string();
        assert!(e.contains("missing field `protected`"), "{e}");
    }

    use super::*;

    #[test]
    fn an_oci_manifest_reads_and_writes_as_the_spec_spells_it() {
        let text = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.seal.function.v1","config":{"mediaType":"application/vnd.seal.manifest.v1+json","digest":"sha256:aa","size":10},"layers":[{"mediaType":"application/wasm","digest":"sha256:bb","size":20}],"annotations":{"org.opencontainers.image.title":"hello"}}"#;
        let m: OciManifest = serde_json::from_str(text).unwrap();
        assert_eq!(m.layers[0].media_type, "application/wasm");
        assert_eq!(serde_json::to_string(&m).unwrap(), text);
    }
}
