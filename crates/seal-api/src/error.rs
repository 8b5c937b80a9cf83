//! The one place a domain error becomes an HTTP answer: a status, a
//! stable code and a message safe to show, as JSON ([`ErrorBody`]).
//! Anything unexpected was logged in full where it happened and is
//! answered as a plain 500 without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use seal_api_types::ErrorBody;
use seal_control::ControlError;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// The status each kind of refusal is answered with.
fn status_of(e: &ControlError) -> StatusCode {
    use ControlError as E;
    match e {
        E::NotFound(_) | E::UnknownEnvironment { .. } => StatusCode::NOT_FOUND,
        E::Invalid(_) | E::BlobMissing(_) | E::DigestMismatch(_) => StatusCode::BAD_REQUEST,
        E::Artifact { .. } | E::ArtifactCorrupt(_) | E::CannotLoad(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        E::DeploymentInProgress { .. }
        | E::NotActive { .. }
        | E::NotPaused(_)
        | E::NoBaseline(_)
        | E::NoPreviousVersion(_)
        | E::Conflict(_) => StatusCode::CONFLICT,
        E::NotRunning(_)
        | E::StateUnavailable(_)
        | E::RegistryUnavailable(_)
        | E::QueuesUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::Registry(_) => StatusCode::BAD_GATEWAY,
        E::PolicyRefused(_)
        | E::PermissionsWidened(_)
        | E::ContractBroken(_)
        | E::EvidenceMissing(_)
        | E::Forbidden(_) => StatusCode::FORBIDDEN,
        E::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        E::ArtifactMissing(_) | E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let mut body = ErrorBody::new(e.code(), e.public_message());
        match &e {
            ControlError::DeploymentInProgress { id, .. } | ControlError::NotActive { id, .. } => {
                body.error.deployment = Some(*id);
            }
            ControlError::UnknownEnvironment { name, .. } => {
                body.error.environment = Some(name.clone());
            }
            _ => {}
        }
        Self {
            status: status_of(&e),
            body,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_refusals_get_their_statuses_and_context() {
        let e: ApiError = ControlError::DeploymentInProgress {
            id: 5,
            function: "hello".into(),
            environment: "production".into(),
        }
        .into();
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.body.error.code, "deployment_in_progress");
        assert_eq!(e.body.error.deployment, Some(5));
        let e: ApiError = ControlError::UnknownEnvironment {
            name: "prodution".into(),
            known: vec!["production".into()],
        }
        .into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body.error.environment.as_deref(), Some("prodution"));
        assert!(
            e.body
                .error
                .message
                .contains("unknown environment \"prodution\"")
        );
        let e: ApiError = ControlError::PolicyRefused("no".into()).into();
        assert_eq!(
            (e.status, e.body.error.code.as_str()),
            (StatusCode::FORBIDDEN, "policy")
        );
    }

    #[test]
    fn internal_errors_are_plain_500s() {
        let e: ApiError = ControlError::Internal("sqlite: disk I/O error at /data".into()).into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body.error.message.contains("/data"));
    }
}
