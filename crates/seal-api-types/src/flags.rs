//! Feature flags per environment, in flagd's JSON format.

use serde::{Deserialize, Serialize};

/// One revision of an environment's flag set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagRevision {
    pub environment: String,
    pub revision: i64,
    /// The whole set after this revision (flagd JSON: `{"flags": …}`).
    pub flags: serde_json::Value,
    /// `apply` or `delete`.
    pub action: String,
    /// The flag keys this revision added, replaced or deleted.
    pub changed: Vec<String>,
    pub at: i64,
    pub actor: String,
}

/// `GET /v1/flags/{env}/history`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagHistory {
    pub revisions: Vec<FlagRevision>,
}

/// One flag as `seal flags list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagSummary {
    pub key: String,
    /// `ENABLED` or `DISABLED`.
    pub state: String,
    pub default_variant: String,
    pub variants: Vec<String>,
    pub targeting: bool,
}

/// `GET /v1/flags/{env}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagList {
    pub environment: String,
    /// 0: no flag was ever set.
    pub revision: i64,
    pub flags: Vec<FlagSummary>,
}

/// The answer to an apply or a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagsChanged {
    pub environment: String,
    pub revision: i64,
    pub changed: Vec<String>,
}

/// `GET /v1/flags/{env}/{key}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagDefinition {
    pub environment: String,
    pub key: String,
    pub revision: i64,
    /// As applied (flagd JSON).
    pub definition: serde_json::Value,
}
