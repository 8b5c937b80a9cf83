//! Promotion: an environment's pipeline (the environment it follows and
//! the evidence a version needs there before it may serve here).

use serde::{Deserialize, Serialize};

/// An environment's pipeline: a version deployed here must first have
/// served in `after`, with the evidence asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The environment a version must have served in first.
    pub after: String,
    /// How long it must have served there (taking all of that
    /// environment's traffic, with traffic, and not rolled back), in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_ms: Option<u64>,
    /// A passed verification there (`seal verify-release`).
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub require_verification: bool,
}

/// An environment's pipeline with who set it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineView {
    #[serde(flatten)]
    pub pipeline: Pipeline,
    pub updated_at: i64,
    pub updated_by: String,
}

/// `PUT /v1/environments/{env}/pipeline` (admin): each field absent is
/// left as it is; `standalone` removes the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPipeline {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// 0: no soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_verification: Option<bool>,
    /// The environment follows none: every field above must be absent.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub standalone: bool,
}

/// `GET /v1/environments/{env}/evidence/{fn}/{version}`: what a version
/// has, and lacks, to serve in an environment with a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub environment: String,
    pub function: String,
    pub version: u64,
    pub digest: String,
    /// None: the environment follows none, so nothing is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
    /// How long it served in the environment followed (ms), taking all of
    /// its traffic; none if it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_ms: Option<u64>,
    /// Invocations it handled there.
    pub invocations: u64,
    /// What is missing, each in a sentence; empty: it may serve here.
    pub missing: Vec<String>,
}
