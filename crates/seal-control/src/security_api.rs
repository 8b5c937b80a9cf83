//! API routes for access control, config, secrets and trust policies.
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET | `/v1/whoami` | viewer | the calling token: name, role, environments |
//! | GET/POST | `/v1/tokens` | admin | list / create (`{"role", "environments"?, "name"?}`; the token is in this answer only) |
//! | POST | `/v1/tokens/{id}/revoke` | admin | revoke a token |

use crate::auth::{Principal, Role};
use crate::engine::Control;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

async fn whoami(who: Principal) -> Json<Value> {
    Json(json!({
        "id": who.token_id,
        "name": who.name,
        "role": who.role.as_str(),
        "environments": who.environments,
    }))
}

async fn list_tokens(State(c): State<Arc<Control>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"tokens": c.state.tokens().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    role: String,
    #[serde(default)]
    environments: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
}

async fn create_token(
    State(c): State<Arc<Control>>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CreateToken = parse_json(&body)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid role {:?}: use viewer, deployer or admin",
            req.role
        ))
    })?;
    let created = c
        .create_token(role, req.environments, req.name, &who.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": created.token, "record": created.record})),
    ))
}

async fn revoke_token(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    who: Principal,
) -> ApiResult<Json<Value>> {
    let record = c
        .state
        .revoke_token(&id, &who.actor())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token {id} (see `seal token list`)")))?;
    Ok(Json(json!({"record": record})))
}
