//! The domain's one error type. Each variant is a kind of refusal a caller
//! can act on (a trigger, a reconciler and the API alike); its message is
//! safe to show a user and names no transport (no status codes, no CLI
//! flags). Only the API crate turns a variant into an HTTP status.
//! Anything unexpected is [`ControlError::Internal`]: logged in full where
//! it is made, shown to a user as a plain "internal error".

use seal_artifact::ArtifactError;
use seal_oci::StoreError;
use seal_runtime::RuntimeError;
use seal_state::StateError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// A function, version, deployment, token or environment that does not
    /// exist.
    #[error("{0}")]
    NotFound(String),
    /// An environment that does not exist (a typo must not create one).
    #[error("unknown environment {name:?} (environments: {})", known.join(", "))]
    UnknownEnvironment { name: String, known: Vec<String> },
    /// The request itself is wrong: a bad name, value or combination.
    #[error("{0}")]
    Invalid(String),
    /// The artifact is not acceptable; `code` says why (`not_wasm`,
    /// `core_module`, `invalid_component`, `no_http_handler`,
    /// `invalid_name`, `invalid_manifest`, `invalid_artifact`,
    /// `subject_mismatch`).
    #[error("{message}")]
    Artifact { code: &'static str, message: String },
    /// A blob the request names is not in the artifact store.
    #[error("{0}")]
    BlobMissing(String),
    /// Uploaded bytes do not hash to the digest they were sent under.
    #[error("{0}")]
    DigestMismatch(String),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A stored blob no longer matches its digest: never executed.
    #[error("{0}")]
    ArtifactCorrupt(String),
    /// A stored version has lost part of its artifact.
    #[error("{0}")]
    ArtifactMissing(String),
    /// The component compiles or links no more (an engine change).
    #[error("{0}")]
    CannotLoad(String),
    /// The route has an active deployment; only its driver may move it.
    #[error("deployment {id} is in progress on {function} in {environment}")]
    DeploymentInProgress {
        id: u64,
        function: String,
        environment: String,
    },
    /// The deployment has already ended.
    #[error("{message}")]
    NotActive { id: u64, message: String },
    /// An approval for a deployment that is not waiting for one.
    #[error("{0}")]
    NotPaused(String),
    /// A progressive deployment needs something to compare with.
    #[error("{0}")]
    NoBaseline(String),
    /// The deployment's driver is not running here (yet).
    #[error("{0}")]
    NotRunning(String),
    /// A rollback without a target, and nothing served before.
    #[error("{0}")]
    NoPreviousVersion(String),
    /// The state does not allow it now (nothing to roll back, already
    /// serving, a lost race).
    #[error("{0}")]
    Conflict(String),
    /// The environment's policy refused the artifact.
    #[error("{0}")]
    PolicyRefused(String),
    /// The version asks for more than the one it replaces, in an
    /// environment that needs an admin's approval for that.
    #[error("{0}")]
    PermissionsWidened(String),
    /// The version breaks the event contracts of the one it replaces, in
    /// an environment that needs an admin's approval for that.
    #[error("{0}")]
    ContractBroken(String),
    /// The version lacks the evidence the environment's pipeline asks
    /// for (soak, verification) where it must have served first.
    #[error("{0}")]
    EvidenceMissing(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The caller is not who it claims (no, unknown or revoked token).
    #[error("{0}")]
    Unauthenticated(String),
    /// The state store cannot be reached now; the call may be repeated.
    #[error("{0}")]
    StateUnavailable(String),
    /// The event queues (a broker) cannot be reached now; nothing was
    /// accepted, the call may be repeated.
    #[error("{0}")]
    QueuesUnavailable(String),
    /// The artifact registry cannot be reached now; what is cached keeps
    /// serving, the call may be repeated.
    #[error("{0}")]
    RegistryUnavailable(String),
    /// The artifact registry refused a request.
    #[error("{0}")]
    Registry(String),
    /// Everything else; the message is for the server log only.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ControlResult<T> = Result<T, ControlError>;

impl ControlError {
    /// The stable code clients tell errors apart by.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::UnknownEnvironment { .. } => "unknown_environment",
            Self::Invalid(_) => "bad_request",
            Self::Artifact { code, .. } => code,
            Self::BlobMissing(_) => "blob_missing",
            Self::DigestMismatch(_) => "digest_mismatch",
            Self::TooLarge(_) => "too_large",
            Self::ArtifactCorrupt(_) => "artifact_corrupt",
            Self::ArtifactMissing(_) => "artifact_missing",
            Self::CannotLoad(_) => "cannot_load",
            Self::DeploymentInProgress { .. } => "deployment_in_progress",
            Self::NotActive { .. } => "not_active",
            Self::NotPaused(_) => "not_paused",
            Self::NoBaseline(_) => "no_baseline",
            Self::NotRunning(_) => "not_running",
            Self::NoPreviousVersion(_) => "no_previous_version",
            Self::Conflict(_) => "conflict",
            Self::PolicyRefused(_) => "policy",
            Self::PermissionsWidened(_) => "permissions_widened",
            Self::ContractBroken(_) => "breaking_contract",
            Self::EvidenceMissing(_) => "evidence_missing",
            Self::Forbidden(_) => "forbidden",
            Self::Unauthenticated(_) => "unauthorized",
            Self::StateUnavailable(_) => "state_unavailable",
            Self::RegistryUnavailable(_) => "registry_unavailable",
            Self::QueuesUnavailable(_) => "queues_unavailable",
            Self::Registry(_) => "registry_error",
            Self::Internal(_) => "internal",
        }
    }

    /// The message a user may see: everything but an internal error's.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal server error (see the server log)".into(),
            other => other.to_string(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthenticated(message.into())
    }

    /// Logs the full error where it happened; users see a plain message.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::Internal(err.to_string())
    }

    pub(crate) fn invalid_artifact(message: String) -> Self {
        Self::Artifact {
            code: "invalid_artifact",
            message,
        }
    }
}

impl From<ArtifactError> for ControlError {
    fn from(e: ArtifactError) -> Self {
        let code = match e {
            ArtifactError::NotWasm => "not_wasm",
            ArtifactError::CoreModule => "core_module",
            ArtifactError::InvalidComponent(_) => "invalid_component",
            ArtifactError::NoHttpHandler { .. } => "no_http_handler",
            ArtifactError::InvalidName { .. } | ArtifactError::InvalidEnvironment { .. } => {
                "invalid_name"
            }
            ArtifactError::InvalidManifest(_) => "invalid_manifest",
            ArtifactError::InvalidArtifact(_) | ArtifactError::Digest(_) => "invalid_artifact",
        };
        Self::Artifact {
            code,
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::BlobMissing(e.to_string()),
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt blob refused");
                Self::ArtifactCorrupt(e.to_string())
            }
            StoreError::DigestMismatch { .. } => Self::DigestMismatch(e.to_string()),
            StoreError::TooLarge { .. } => Self::TooLarge(e.to_string()),
            StoreError::Io { .. } | StoreError::Index(_) => Self::internal(e),
            StoreError::Unavailable(message) => {
                tracing::warn!(error = %message, "the artifact registry is unavailable");
                Self::RegistryUnavailable(message)
            }
            StoreError::Registry(message) => Self::Registry(message),
        }
    }
}

impl From<StateError> for ControlError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Busy {
                id,
                function,
                environment,
            } => Self::DeploymentInProgress {
                id,
                function,
                environment,
            },
            StateError::NotActive(id) => Self::NotActive {
                id,
                message: format!("deployment {id} has already finished"),
            },
            StateError::Conflict(message) => Self::Conflict(message),
            StateError::Unavailable(why) => {
                tracing::warn!(error = %why, "the state store is unavailable");
                Self::StateUnavailable(
                    "the state store is unavailable; the gateway keeps serving its routes, try again shortly".into(),
                )
            }
            StateError::QueuesUnavailable(why) => {
                tracing::warn!(error = %why, "the event queues are unavailable");
                Self::QueuesUnavailable(why)
            }
            other => Self::internal(other),
        }
    }
}

impl From<RuntimeError> for ControlError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Compile(_) | RuntimeError::Link(_) => Self::CannotLoad(e.to_string()),
            RuntimeError::Cache { .. } | RuntimeError::Config(_) => Self::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_errors_become_typed_refusals() {
        let busy: ControlError = StateError::Busy {
            id: 7,
            function: "hello".into(),
            environment: "production".into(),
        }
        .into();
        assert!(matches!(
            busy,
            ControlError::DeploymentInProgress { id: 7, .. }
        ));
        assert_eq!(busy.code(), "deployment_in_progress");
        assert_eq!(
            busy.to_string(),
            "deployment 7 is in progress on hello in production"
        );
        let gone: ControlError = StateError::NotActive(3).into();
        assert_eq!(gone.code(), "not_active");
    }

    #[test]
    fn internal_errors_never_show_their_cause() {
        let e = ControlError::internal("disk /secret/path on fire");
        assert_eq!(e.code(), "internal");
        assert!(!e.public_message().contains("/secret/path"));
        assert!(e.to_string().contains("/secret/path"), "kept for the log");
    }

    #[test]
    fn artifact_errors_keep_their_codes() {
        let e: ControlError = ArtifactError::NotWasm.into();
        assert_eq!(e.code(), "not_wasm");
        let e: ControlError = StoreError::TooLarge { limit: 10 }.into();
        assert!(matches!(e, ControlError::TooLarge(_)));
    }
}
