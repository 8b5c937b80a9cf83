//! The API's one error type: a status, a stable code and a message safe to
//! show a user. Anything unexpected is logged in full and answered as a
//! plain 500 without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use seal_artifact::ArtifactError;
use seal_oci::StoreError;
use seal_runtime::RuntimeError;
use seal_state::StateError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// Logs the full error and answers a 500 without internals.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error (see the server log)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ArtifactError> for ApiError {
    fn from(e: ArtifactError) -> Self {
        let code = match e {
            ArtifactError::NotWasm => "not_wasm",
            ArtifactError::CoreModule => "core_module",
            ArtifactError::InvalidComponent(_) => "invalid_component",
            ArtifactError::NoHttpHandler { .. } => "no_http_handler",
            ArtifactError::InvalidName { .. } => "invalid_name",
            ArtifactError::InvalidManifest(_) => "invalid_manifest",
            ArtifactError::InvalidArtifact(_) | ArtifactError::Digest(_) => "invalid_artifact",
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => {
                Self::new(StatusCode::BAD_REQUEST, "blob_missing", e.to_string())
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt blob refused");
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "artifact_corrupt",
                    e.to_string(),
                )
            }
            StoreError::DigestMismatch { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "digest_mismatch", e.to_string())
            }
            StoreError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            StoreError::Io { .. } | StoreError::Index(_) => Self::internal(e),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Busy {
                id,
                function,
                environment,
            } => Self::new(
                StatusCode::CONFLICT,
                "deployment_in_progress",
                format!(
                    "deployment {id} is in progress on {function} in {environment}: wait for it, or stop it with `seal abort {id}`"
                ),
            ),
            StateError::NotActive(id) => Self::new(
                StatusCode::CONFLICT,
                "not_active",
                format!("deployment {id} has already finished"),
            ),
            StateError::Conflict(message) => Self::conflict(message),
            other => Self::internal(other),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Compile(_) | RuntimeError::Link(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cannot_load",
                e.to_string(),
            ),
            RuntimeError::Cache { .. } | RuntimeError::Config(_) => Self::internal(e),
        }
    }
}
