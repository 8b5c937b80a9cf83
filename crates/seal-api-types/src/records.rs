//! The records the state store keeps that the API answers with: versions,
//! routes, deployments and their events, audit entries, budgets, tokens
//! and setting revisions. `seal-state` re-exports them as its model, so a
//! stored record and its wire form are one type. Fields marked
//! `#[serde(skip)]` are the store's own (a token's hash, a compile
//! checksum) and never cross the wire.

use crate::rollout::Strategy;
use crate::{DeploymentKind, DeploymentState};
use serde::{Deserialize, Serialize};

/// One version's share of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedVersion {
    pub version: u64,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub function: String,
    pub version: u64,
    pub digest: String,
    /// The Seal manifest (config blob) as JSON.
    pub manifest: serde_json::Value,
    pub component_size: u64,
    #[serde(skip)]
    pub compiled_sha256: Option<String>,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub environment: String,
    pub function: String,
    pub weights: Vec<WeightedVersion>,
    pub deployment_id: u64,
    pub updated_at: i64,
    pub sticky_header: Option<String>,
    /// The version a deployment in progress previews.
    pub preview: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: u64,
    pub function: String,
    pub environment: String,
    pub kind: DeploymentKind,
    pub strategy: Strategy,
    pub state: DeploymentState,
    pub from_weights: Option<Vec<WeightedVersion>>,
    pub to_weights: Vec<WeightedVersion>,
    pub actor: String,
    pub reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The progressive plan (steps, gates, hooks), absent for all-at-once.
    pub plan: Option<serde_json::Value>,
    pub baseline: Option<u64>,
    pub candidate: Option<u64>,
    /// Index of the current step (0-based) of the plan.
    pub step: u32,
    pub step_started_at: Option<i64>,
}

impl DeploymentRecord {
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub seq: u64,
    pub at: i64,
    pub kind: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub digest: Option<String>,
    pub outcome: String,
    pub detail: serde_json::Value,
    /// The hash of the entry before (64 zeros for the first).
    pub prev_hash: Option<String>,
    /// SHA-256 over this entry and `prev_hash` (see [`audit_hash`]).
    pub hash: Option<String>,
}

/// What `verify_audit` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The last entry's hash: record it elsewhere to detect a truncated tail
    /// later (a chain cannot tell on its own that its end was cut off).
    pub head: Option<String>,
    pub first_broken: Option<BrokenLink>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenLink {
    pub id: u64,
    pub reason: String,
}

/// A function's cost budget per calendar period (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub function: String,
    pub gb_seconds: f64,
    /// `day` or `month`.
    pub period: String,
    pub webhook: Option<String>,
    pub alerted_period: Option<i64>,
    pub updated_by: String,
    pub updated_at: i64,
}

/// An API token, as stored (the hash, never the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Environments the token may change; `None` = all.
    pub environments: Option<Vec<String>>,
    /// The queues a publisher token may enqueue on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
    #[serde(skip)]
    pub hash: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

/// A recorded change: who, when, which keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRevision {
    pub function: String,
    pub environment: String,
    pub revision: i64,
    pub at: i64,
    pub actor: String,
    /// `{"kind": "config"|"secrets", "set": [keys], "unset": [keys]}`
    pub changes: serde_json::Value,
}
