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
    /// Set when it served all of this environment's traffic before (a
    /// sentence saying when): a return to it, like a rollback, is not a
    /// promotion and needs no evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returning: Option<String>,
}

/// `POST /v1/verify-release`: replay a capture to a candidate and to the
/// version serving where it was captured, both in `environment` with its
/// config, and compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRelease {
    pub function: String,
    pub version: u64,
    /// Where both run (e.g. staging).
    pub environment: String,
    /// Whose capture is replayed, and whose serving version is the
    /// baseline (e.g. production).
    pub replay: String,
    /// Captured requests replayed at most (default 500, at most 2,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Both run with every outbound request refused and no event published.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub deny_outbound: bool,
    /// JSON pointers never compared (`/meta/generated_at`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// The mismatch rate a pass allows, in percent (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mismatch_percent: Option<f64>,
}

/// One way a candidate's answer differed from the baseline's, with an
/// example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mismatch {
    /// `status`, `header NAME`, `body` (not JSON) or `body POINTER`.
    pub field: String,
    /// Requests where it differed.
    pub count: u64,
    /// The first such request (its captured id) and both values.
    pub request: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

/// A route's share of a verification (`METHOD /path`, query left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteVerdict {
    pub route: String,
    pub requests: u64,
    /// Requests whose answer differed beyond the noise.
    pub mismatches: u64,
    pub mismatch_percent: f64,
    pub differences: Vec<Mismatch>,
}

/// What a verification found, and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub function: String,
    pub version: u64,
    pub digest: String,
    pub environment: String,
    pub replay: String,
    pub baseline_version: u64,
    pub baseline_digest: String,
    pub requests: u64,
    pub mismatches: u64,
    pub mismatch_percent: f64,
    pub max_mismatch_percent: f64,
    /// Fields that differed between two runs of the baseline itself
    /// (timestamps, ids): never counted.
    pub noisy: Vec<String>,
    pub routes: Vec<RouteVerdict>,
    /// Answers of 5xx (or failed invocations), of the baseline's first run
    /// and of the candidate.
    pub baseline_errors: u64,
    pub candidate_errors: u64,
    pub baseline_p50_ms: f64,
    pub candidate_p50_ms: f64,
    pub baseline_p95_ms: f64,
    pub candidate_p95_ms: f64,
    pub deny_outbound: bool,
    pub passed: bool,
    /// Why it passed or failed, in a sentence.
    pub verdict: String,
    /// The signed verification summary attached to the candidate (its
    /// referrer digest), the evidence a pipeline reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
}

/// `GET /v1/server-key`: the key the server signs its own attestations
/// with (the same on every node of one master key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerKey {
    pub keyid: String,
    /// SPKI PEM.
    pub pem: String,
}
