//! Seal's wire contract: the JSON bodies the control API answers with and
//! the CLI reads, as plain serde types. This crate depends on no other
//! Seal crate, so a client can use it without the server's code.
//!
//! Every error answer is an [`ErrorBody`]; clients tell errors apart by
//! [`ErrorDetail::code`] (stable) and show [`ErrorDetail::message`]. Where
//! an error is about one thing a client may act on (the deployment in the
//! way, the environment that does not exist), it is named in its own
//! field, so a client never has to parse a message.

use serde::{Deserialize, Serialize};

pub mod access;
pub mod capture;
pub mod catalog;
pub mod cluster;
pub mod deployment;
pub mod desired;
pub mod events;
pub mod flags;
pub mod observe;
pub mod promotion;
pub mod records;
pub mod rollout;

pub use deployment::{DeploymentKind, DeploymentState};

use rollout::RolloutSpec;

/// `POST /v1/functions/{fn}/deploy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub version: u64,
    /// The server's default environment when absent.
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Progressive settings; absent (or all-at-once) moves all traffic now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Plan only: what would happen, nothing changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// An admin's approval of wider permissions (production).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_new_permissions: bool,
    /// An admin's approval of a contract change that may break producers
    /// or consumers (production).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_breaking_contract: bool,
    /// An admin's override of the environment's pipeline: the version may
    /// serve without the evidence it asks for (audited with what lacked).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_missing_evidence: bool,
}

/// `POST /v1/functions/{fn}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub environment: Option<String>,
    /// The version to return to; the one that served before when absent.
    #[serde(default)]
    pub to: Option<u64>,
    /// An admin's approval, needed only for a target that never served in
    /// this environment and asks for more.
    #[serde(default)]
    pub allow_new_permissions: bool,
    /// The same for a target that never served here and breaks the event
    /// contracts of the version serving.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_breaking_contract: bool,
    /// The same for a target that never served here and lacks the
    /// evidence the environment's pipeline asks for.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_missing_evidence: bool,
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable: `not_found`, `bad_request`, `deployment_in_progress`, …
    pub code: String,
    /// Safe to show a user; names no client flag or command.
    pub message: String,
    /// The deployment the error is about (`deployment_in_progress`,
    /// `not_active`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    /// The environment the error is about (`unknown_environment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                deployment: None,
                environment: None,
            },
        }
    }
}

/// Stable error codes a client acts on.
pub mod codes {
    pub const DEPLOYMENT_IN_PROGRESS: &str = "deployment_in_progress";
    pub const UNKNOWN_ENVIRONMENT: &str = "unknown_environment";
    pub const PERMISSIONS_WIDENED: &str = "permissions_widened";
    pub const BREAKING_CONTRACT: &str = "breaking_contract";
    pub const NO_PREVIOUS_VERSION: &str = "no_previous_version";
    pub const UNAUTHORIZED: &str = "unauthorized";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_round_trip_and_omit_empty_context() {
        let body = ErrorBody::new("not_found", "no deployment 9");
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"code":"not_found","message":"no deployment 9"}}"#
        );
        let mut busy = ErrorBody::new(codes::DEPLOYMENT_IN_PROGRESS, "busy");
        busy.error.deployment = Some(4);
        let back: ErrorBody = serde_json::from_str(&serde_json::to_string(&busy).unwrap()).unwrap();
        assert_eq!(back, busy);
        // Older servers send code and message only.
        let old: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"conflict","message":"m"}}"#).unwrap();
        assert_eq!(old.error.deployment, None);
    }
}
