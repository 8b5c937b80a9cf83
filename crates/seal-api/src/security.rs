//! API routes for access control, config, secrets and trust policies.
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET | `/v1/whoami` | viewer | the calling token: name, role, environments |
//! | GET/POST | `/v1/tokens` | admin | list / create (`{"role", "environments"?, "name"?}`; the token is in this answer only) |
//! | POST | `/v1/tokens/{id}/revoke` | admin | revoke a token |
//! | GET | `/v1/functions/{fn}/config?environment=` | viewer | config values, secret names (never values), revision |
//! | POST | `/v1/functions/{fn}/config` | deployer | `{"environment"?, "set": {K: V}, "unset": [K]}` → a new revision |
//! | POST | `/v1/functions/{fn}/secrets` | deployer | the same for secrets; the answer names keys only |
//! | GET | `/v1/functions/{fn}/config/revisions?environment=` | viewer | who changed which keys when |
//! | GET/POST | `/v1/functions/{fn}/versions/{n}/attestations` | viewer/deployer | list / attach a DSSE envelope (stored as an OCI referrer) |
//! | POST | `/v1/functions/{fn}/versions/{n}/verify` | viewer | `{"environment"?, "keys"?: [PEM]}` → artifact, attestations, policy verdict |
//! | GET/PUT | `/v1/policies/{env}` | viewer/admin | an environment's trust policy |

use crate::auth::{Principal, Role};
use crate::engine::Control;
use crate::error::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route(
            "/v1/functions/{function}/config",
            get(get_settings).post(set_config),
        )
        .route("/v1/functions/{function}/secrets", post(set_secrets))
        .route(
            "/v1/functions/{function}/config/revisions",
            get(setting_revisions),
        )
        .route(
            "/v1/functions/{function}/versions/{version}/attestations",
            get(list_attestations).post(attach_attestation).layer(
                axum::extract::DefaultBodyLimit::max(crate::trust::MAX_ENVELOPE_BYTES),
            ),
        )
        .route(
            "/v1/functions/{function}/versions/{version}/verify",
            post(verify_version),
        )
        .route(
            "/v1/policies/{environment}",
            get(get_policy).put(put_policy),
        )
}

fn version_number(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("version must be a number, got {s:?}")))
}

async fn list_attestations(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        c.list_attestations(&function, version_number(&version)?)
            .await?,
    ))
}

async fn attach_attestation(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let v = c
        .attach_attestation(&function, version_number(&version)?, &body, &who.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    environment: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
}

async fn verify_version(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let req: VerifyRequest = if body.is_empty() {
        VerifyRequest::default()
    } else {
        parse_json(&body)?
    };
    Ok(Json(
        c.verify_version(
            &function,
            version_number(&version)?,
            req.environment.as_deref(),
            &req.keys,
        )
        .await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyRequest {
    #[serde(default)]
    require_signature: bool,
    #[serde(default)]
    trusted_keys: Vec<String>,
    #[serde(default)]
    required_provenance: BTreeMap<String, Option<String>>,
}

async fn get_policy(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
) -> ApiResult<Json<Value>> {
    if !c.state.environment_exists(&environment).await? {
        return Err(ApiError::not_found(format!("no environment {environment}")));
    }
    Ok(Json(c.policy_view(&environment).await?))
}

async fn put_policy(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let req: PolicyRequest = parse_json(&body)?;
    Ok(Json(
        c.set_policy(
            &environment,
            req.require_signature,
            &req.trusted_keys,
            req.required_provenance,
            &who.actor(),
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvQuery {
    environment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeSettings {
    environment: Option<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
}

async fn get_settings(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Json<Value>> {
    let env = q
        .environment
        .unwrap_or_else(|| c.default_environment.clone());
    Ok(Json(c.settings_view(&function, &env).await?))
}

async fn set_config(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    change_settings(&c, &function, who, &body, false).await
}

async fn set_secrets(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    change_settings(&c, &function, who, &body, true).await
}

async fn change_settings(
    c: &Control,
    function: &str,
    who: Principal,
    body: &[u8],
    secret: bool,
) -> ApiResult<Json<Value>> {
    // A body that does not parse is refused without echoing it: it may
    // hold a secret.
    let req: ChangeSettings = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid request: expected {{\"environment\", \"set\": {{KEY: VALUE}}, \"unset\": [KEY]}} (error at line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let env = req
        .environment
        .unwrap_or_else(|| c.default_environment.clone());
    who.require_env(&env)?;
    let changed = c
        .change_settings(function, &env, secret, req.set, req.unset, &who.actor())
        .await?;
    Ok(Json(json!(changed)))
}

async fn setting_revisions(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Json<Value>> {
    c.function_or_404(&function).await?;
    let revisions = c
        .state
        .setting_revisions(&function, q.environment.as_deref(), 1000)
        .await?;
    Ok(Json(json!({"revisions": revisions})))
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
