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
//! | DELETE | `/v1/functions/{fn}/versions/{n}/attestations/{referrer}` | admin | remove one (audited) |
//! | POST | `/v1/functions/{fn}/versions/{n}/verify` | viewer | `{"environment"?, "keys"?: [PEM]}` → artifact, attestations, policy verdict |
//! | GET/PUT | `/v1/policies/{env}` | viewer/admin | an environment's trust policy |

use crate::auth::{Caller, Routes, admin, deployer, viewer};
use crate::error::{ApiError, ApiResult};
use crate::parse_json;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use seal_api_types::access::{
    CreateToken, SettingRevisions, SettingsView, TokenAnswer, TokenCreated, TokenList, WhoAmI,
};
use seal_control::settings::SettingsChanged;
use seal_control::trust::{Attached, AttestationList, PolicyView, VerifyReport};
use seal_control::{Control, Role};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route("/v1/whoami", viewer(Method::GET, whoami))
        .route(
            "/v1/tokens",
            admin(Method::GET, list_tokens).and(admin(Method::POST, create_token)),
        )
        .route("/v1/tokens/{id}/revoke", admin(Method::POST, revoke_token))
        .route(
            "/v1/functions/{function}/config",
            viewer(Method::GET, get_settings).and(deployer(Method::POST, set_config)),
        )
        .route(
            "/v1/functions/{function}/secrets",
            deployer(Method::POST, set_secrets),
        )
        .route(
            "/v1/functions/{function}/config/revisions",
            viewer(Method::GET, setting_revisions),
        )
        .route(
            "/v1/functions/{function}/versions/{version}/attestations",
            viewer(Method::GET, list_attestations)
                .and(deployer(Method::POST, attach_attestation))
                .body_limit(seal_control::trust::MAX_ENVELOPE_BYTES),
        )
        .route(
            "/v1/functions/{function}/versions/{version}/attestations/{referrer}",
            admin(Method::DELETE, remove_attestation),
        )
        // Verifying changes nothing: any reader may ask.
        .route(
            "/v1/functions/{function}/versions/{version}/verify",
            viewer(Method::POST, verify_version),
        )
        .route(
            "/v1/policies/{environment}",
            viewer(Method::GET, get_policy).and(admin(Method::PUT, put_policy)),
        )
}

fn version_number(s: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("version must be a number, got {s:?}")))
}

async fn list_attestations(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
) -> ApiResult<Json<AttestationList>> {
    Ok(Json(
        c.trust()
            .list_attestations(&function, version_number(&version)?)
            .await?,
    ))
}

async fn attach_attestation(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Attached>)> {
    let v = c
        .trust()
        .attach_attestation(&function, version_number(&version)?, &body, &who.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn remove_attestation(
    State(c): State<Arc<Control>>,
    Path((function, version, referrer)): Path<(String, String, String)>,
    who: Caller,
) -> ApiResult<StatusCode> {
    c.trust()
        .remove_attestation(
            &function,
            version_number(&version)?,
            &referrer,
            &who.actor(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
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
) -> ApiResult<Json<VerifyReport>> {
    let req: VerifyRequest = if body.is_empty() {
        VerifyRequest::default()
    } else {
        parse_json(&body)?
    };
    Ok(Json(
        c.trust()
            .verify_version(
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
) -> ApiResult<Json<PolicyView>> {
    c.environment_must_exist(&environment).await?;
    Ok(Json(c.trust().policy_view(&environment).await?))
}

async fn put_policy(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<PolicyView>> {
    let req: PolicyRequest = parse_json(&body)?;
    Ok(Json(
        c.trust()
            .set_policy(
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
) -> ApiResult<Json<SettingsView>> {
    let env = q
        .environment
        .unwrap_or_else(|| c.default_environment().to_owned());
    Ok(Json(c.settings().settings_view(&function, &env).await?))
}

async fn set_config(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<SettingsChanged>> {
    change_settings(&c, &function, who, &body, false).await
}

async fn set_secrets(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<SettingsChanged>> {
    change_settings(&c, &function, who, &body, true).await
}

async fn change_settings(
    c: &Control,
    function: &str,
    who: Caller,
    body: &[u8],
    secret: bool,
) -> ApiResult<Json<SettingsChanged>> {
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
        .unwrap_or_else(|| c.default_environment().to_owned());
    who.require_env(&env)?;
    let changed = c
        .settings()
        .change_settings(function, &env, secret, req.set, req.unset, &who.actor())
        .await?;
    Ok(Json(changed))
}

async fn setting_revisions(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<EnvQuery>,
) -> ApiResult<Json<SettingRevisions>> {
    Ok(Json(
        c.setting_revisions(&function, q.environment.as_deref())
            .await?,
    ))
}

async fn whoami(Caller(who): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        id: who.token_id,
        name: who.name,
        role: who.role.as_str().to_owned(),
        environments: who.environments,
    })
}

async fn list_tokens(State(c): State<Arc<Control>>) -> ApiResult<Json<TokenList>> {
    Ok(Json(TokenList {
        tokens: c.tokens().await?,
    }))
}

async fn create_token(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let req: CreateToken = parse_json(&body)?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid role {:?}: use publisher, viewer, deployer or admin",
            req.role
        ))
    })?;
    let created = c
        .create_token(role, req.environments, req.queues, req.name, &who.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token: created.token,
            record: created.record,
        }),
    ))
}

async fn revoke_token(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
    who: Caller,
) -> ApiResult<Json<TokenAnswer>> {
    let record = c.revoke_token(&id, &who.actor()).await?;
    Ok(Json(TokenAnswer { record }))
}
