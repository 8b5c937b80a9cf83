//! The control API: JSON over HTTP under `/v1/…`, on its own listener.
//!
//! | method | path | what |
//! |---|---|---|
//! | HEAD/PUT | `/v1/blobs/{digest}` | does a blob exist / stream one in (size-limited, digest-checked) |
//! | POST | `/v1/artifacts` | body = OCI manifest; creates `function@N` |
//! | GET | `/v1/functions` | functions with their routes |
//! | GET | `/v1/functions/{fn}` | status: routes, weights, live counters |
//! | GET | `/v1/functions/{fn}/versions[/{n}]` | versions / one version in full |
//! | POST | `/v1/functions/{fn}/deploy` | `{"version", "environment"?, "reason"?, "rollout"?, "dry_run"?}` |
//! | POST | `/v1/functions/{fn}/rollback` | `{"environment"?, "to"?}` |
//! | GET | `/v1/functions/{fn}/deployments` | history, newest first |
//! | GET | `/v1/deployments/{id}` | one deployment with its events |
//! | POST | `/v1/deployments/{id}/approve\|promote\|abort` | steer a progressive deployment |
//! | GET | `/v1/functions/{fn}/rollout?environment=` | live view: weights, per-version windows, gates |
//! | GET | `/v1/audit` | audit entries, newest first |
//! | GET | `/v1/audit/verify` | recompute the hash chain: `{ok, entries, head, first_broken}` |
//! | GET/POST | `/v1/environments` | list / create (`{"name"}`) environments |
//! | GET | `/v1/environments/{env}` | one environment: default, protected and why |
//! | PUT | `/v1/environments/{env}/protection` | admin: `{"protected": true\|false\|null}` (null: the server's rule) |
//! | PUT | `/v1/environments/{env}/pipeline` | admin: `{"after"?, "soak_ms"?, "require_verification"?}` or `{"standalone": true}` |
//! | GET | `/v1/environments/{env}/evidence/{fn}/{n}` | what a version has and lacks to serve there |
//! | POST | `/v1/verify-release` | deployer: replay a capture to a candidate and the baseline, compare, sign the verdict |
//! | GET | `/v1/server-key` | the key the server signs its own attestations with |
//! | GET | `/v1/server` | runtime counters (compiles, cache loads) |
//! | GET | `/healthz` | liveness |
//!
//! Metrics, logs, cost, budgets, `top` and generated monitoring are in
//! [`crate::observe_api`].

use crate::auth::{Caller, Routes, admin, deployer, public, viewer};
use crate::error::{ApiError, ApiResult};
use crate::parse_json;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use seal_api_types::catalog::{
    AuditEntries, CreateEnvironment, DeploymentAnswer, DeploymentDetail, DeploymentList,
    EnvironmentCreated, EnvironmentView, Environments, FunctionList, FunctionStatus, Inspection,
    ServerInfo, SetProtection, VersionList,
};
use seal_api_types::promotion::{Evidence, ServerKey, SetPipeline, VerifyRelease, VerifyReport};
use seal_api_types::records::AuditVerification;
use seal_api_types::rollout::RolloutStatus;
use seal_api_types::rollout::Strategy;
use seal_api_types::{DeployRequest, RollbackRequest};
use seal_artifact::Digest;
use seal_control::catalog::Published;
use seal_control::engine::DeployOutcome;
use seal_control::rollout::Command;
use seal_control::trust::Approvals;
use seal_control::{Control, ControlError, Role};
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route("/healthz", public(Method::GET, || async { "ok" }))
        .route("/v1/server", viewer(Method::GET, server_info))
        .route(
            "/v1/blobs/{digest}",
            deployer(Method::PUT, put_blob).and(viewer(Method::HEAD, head_blob)),
        )
        .route("/v1/artifacts", deployer(Method::POST, post_artifact))
        .route("/v1/functions", viewer(Method::GET, list_functions))
        .route(
            "/v1/functions/{function}",
            viewer(Method::GET, function_status),
        )
        .route(
            "/v1/functions/{function}/versions",
            viewer(Method::GET, list_versions),
        )
        .route(
            "/v1/functions/{function}/versions/{version}",
            viewer(Method::GET, inspect_version),
        )
        .route(
            "/v1/functions/{function}/deploy",
            deployer(Method::POST, deploy),
        )
        .route(
            "/v1/functions/{function}/rollback",
            deployer(Method::POST, rollback),
        )
        .route(
            "/v1/functions/{function}/deployments",
            viewer(Method::GET, list_deployments),
        )
        .route("/v1/deployments/{id}", viewer(Method::GET, show_deployment))
        .route(
            "/v1/deployments/{id}/{command}",
            deployer(Method::POST, deployment_command),
        )
        .route(
            "/v1/functions/{function}/rollout",
            viewer(Method::GET, rollout_status),
        )
        .route("/v1/audit", viewer(Method::GET, audit))
        .route("/v1/audit/verify", viewer(Method::GET, verify_audit))
        .route(
            "/v1/environments",
            viewer(Method::GET, list_environments).and(admin(Method::POST, create_environment)),
        )
        .route(
            "/v1/environments/{environment}",
            viewer(Method::GET, get_environment),
        )
        .route(
            "/v1/environments/{environment}/protection",
            admin(Method::PUT, set_protection),
        )
        .route(
            "/v1/environments/{environment}/pipeline",
            admin(Method::PUT, set_pipeline),
        )
        .route(
            "/v1/environments/{environment}/evidence/{function}/{version}",
            viewer(Method::GET, evidence),
        )
        .route("/v1/verify-release", deployer(Method::POST, verify_release))
        .route("/v1/server-key", viewer(Method::GET, server_key))
}

async fn verify_release(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<VerifyReport>> {
    let req: VerifyRelease = parse_json(&body)?;
    // It runs in one environment and reads (and replays) another's traffic.
    who.require_env(&req.environment)?;
    who.require_env(&req.replay)?;
    Ok(Json(c.verify_release(&req, &who.actor()).await?))
}

async fn server_key(State(c): State<Arc<Control>>) -> Json<ServerKey> {
    Json(c.server_key())
}

async fn set_pipeline(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<EnvironmentView>> {
    let req: SetPipeline = parse_json(&body)?;
    c.set_pipeline(&environment, &req, &who.actor()).await?;
    Ok(Json(environment_view(&c, environment).await?))
}

async fn evidence(
    State(c): State<Arc<Control>>,
    Path((environment, function, version)): Path<(String, String, u64)>,
) -> ApiResult<Json<Evidence>> {
    c.environment_must_exist(&environment).await?;
    let v = c.version_or_404(&function, version).await?;
    Ok(Json(c.evidence(&environment, &v).await?))
}

/// Only an admin may approve wider permissions or a breaking contract.
pub(crate) fn approvals(
    who: &Caller,
    new_permissions: bool,
    breaking_contract: bool,
    missing_evidence: bool,
) -> ApiResult<Approvals> {
    for (asked, what) in [
        (new_permissions, "new permissions (allow_new_permissions)"),
        (
            breaking_contract,
            "a breaking contract (allow_breaking_contract)",
        ),
        (
            missing_evidence,
            "a version without its pipeline's evidence (allow_missing_evidence)",
        ),
    ] {
        if asked && who.require_role(Role::Admin).is_err() {
            return Err(ControlError::forbidden(format!(
                "approving {what} needs an admin token; {} is a {}",
                who.name,
                who.role.as_str()
            ))
            .into());
        }
    }
    Ok(Approvals {
        new_permissions,
        breaking_contract,
        environment_settings: who.require_role(Role::Admin).is_ok(),
        missing_evidence,
    })
}

fn parse_digest(s: &str) -> ApiResult<Digest> {
    Digest::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn server_info(State(c): State<Arc<Control>>) -> Json<ServerInfo> {
    Json(c.server_info())
}

async fn head_blob(State(c): State<Arc<Control>>, Path(digest): Path<String>) -> StatusCode {
    match Digest::parse(&digest) {
        Ok(d) if c.catalog().has_blob(&d).await => StatusCode::OK,
        Ok(_) => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// Streams a blob to disk, hashing as it goes; refuses past the limit
/// without buffering the upload.
async fn put_blob(
    State(c): State<Arc<Control>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let expected = match parse_digest(&digest) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body
        .into_data_stream()
        .map(|r| r.map_err(|e| e.to_string()));
    let answer = match c.catalog().put_blob(expected, announced, &mut stream).await {
        Ok(put) => {
            let status = if put.existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(put)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    };
    // A blob already stored (or a refused upload) is answered before its
    // body is read: read the rest so the connection stays reusable (when
    // that cannot finish, `close_unread` says the connection closes).
    // Not when the client waits for `100 Continue` before sending it:
    // reading would ask for the bytes the answer makes useless.
    let waits_to_send = headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits_to_send {
        drain(&mut stream).await;
    }
    answer
}

/// Reads and discards what an upload is still sending once its answer is
/// known, for a bounded time and size, so the client is still reading when
/// the answer arrives instead of seeing its connection reset mid-send.
async fn drain<S>(stream: &mut S)
where
    S: futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
{
    const MAX_DRAIN_BYTES: usize = 64 << 20;
    let mut drained = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len();
            if drained > MAX_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

async fn post_artifact(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Published>)> {
    let published = c.catalog().publish(body.to_vec(), &who.actor()).await?;
    let status = if published.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(published)))
}

async fn list_functions(State(c): State<Arc<Control>>) -> ApiResult<Json<FunctionList>> {
    Ok(Json(c.list_functions().await?))
}

async fn function_status(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
) -> ApiResult<Json<FunctionStatus>> {
    Ok(Json(c.function_status(&function).await?))
}

async fn list_versions(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
) -> ApiResult<Json<VersionList>> {
    Ok(Json(c.list_versions(&function).await?))
}

async fn inspect_version(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
) -> ApiResult<Json<Inspection>> {
    let number: u64 = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version must be a number, got {version:?}")))?;
    Ok(Json(c.inspect_version(&function, number).await?))
}

async fn deploy(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let req: DeployRequest = parse_json(&body)?;
    who.require_env(
        req.environment
            .as_deref()
            .unwrap_or(c.default_environment()),
    )?;
    let approvals = approvals(
        &who,
        req.allow_new_permissions,
        req.allow_breaking_contract,
        req.allow_missing_evidence,
    )?;
    if let Some(e) = req.rollout.as_ref().and_then(|s| s.all_at_once_conflict()) {
        return Err(ApiError::bad_request(e));
    }
    if let Some(spec) = req
        .rollout
        .filter(|r| r.strategy != Strategy::AllAtOnce || req.dry_run)
    {
        if spec.strategy == Strategy::AllAtOnce {
            return Err(ApiError::bad_request(
                "a plan (dry_run) shows the steps of canary, linear and blue-green deployments; all-at-once has one step: 100% now",
            ));
        }
        let v = c
            .deploy_progressive(
                &function,
                req.version,
                req.environment.as_deref(),
                req.reason.as_deref(),
                &who.actor(),
                spec,
                req.dry_run,
                approvals,
            )
            .await?;
        return Ok(Json(v).into_response());
    }
    if req.dry_run {
        return Err(ApiError::bad_request(
            "dry_run needs a progressive rollout (strategy canary, linear or blue-green)",
        ));
    }
    let outcome = c
        .deploy(
            &function,
            req.version,
            req.environment.as_deref(),
            req.reason.as_deref(),
            &who.actor(),
            approvals,
        )
        .await?;
    Ok(Json(outcome).into_response())
}

async fn rollback(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<DeployOutcome>> {
    let req: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        parse_json(&body)?
    };
    who.require_env(
        req.environment
            .as_deref()
            .unwrap_or(c.default_environment()),
    )?;
    let approvals = approvals(
        &who,
        req.allow_new_permissions,
        req.allow_breaking_contract,
        req.allow_missing_evidence,
    )?;
    let outcome = c
        .rollback(
            &function,
            req.environment.as_deref(),
            req.to,
            &who.actor(),
            approvals,
        )
        .await?;
    Ok(Json(outcome))
}

async fn deployment_command(
    State(c): State<Arc<Control>>,
    Path((id, command)): Path<(String, String)>,
    who: Caller,
) -> ApiResult<Json<DeploymentAnswer>> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("deployment id must be a number, got {id:?}"))
    })?;
    let cmd = match command.as_str() {
        "approve" => Command::Approve,
        "promote" => Command::Promote,
        "abort" => Command::Abort,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown deployment command {other:?}: use approve, promote or abort"
            )));
        }
    };
    if let Ok((d, _)) = c.deployment(id).await {
        who.require_env(&d.environment)?;
    }
    let d = c.command(id, cmd, &who.actor()).await?;
    Ok(Json(DeploymentAnswer { deployment: d }))
}

async fn rollout_status(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<DeploymentsQuery>,
) -> ApiResult<Json<RolloutStatus>> {
    Ok(Json(
        c.rollout_status(&function, q.environment.as_deref())
            .await?,
    ))
}

#[derive(Deserialize)]
struct DeploymentsQuery {
    environment: Option<String>,
}

async fn list_deployments(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<DeploymentsQuery>,
) -> ApiResult<Json<DeploymentList>> {
    let deployments = c.deployments(&function, q.environment.as_deref()).await?;
    Ok(Json(DeploymentList {
        function,
        deployments,
    }))
}

async fn show_deployment(
    State(c): State<Arc<Control>>,
    who: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentDetail>> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("deployment id must be a number, got {id:?}"))
    })?;
    let (deployment, events) = c.deployment(id).await?;
    let preview_token = c.preview_token(&deployment, &who);
    Ok(Json(DeploymentDetail {
        deployment,
        events,
        preview_token,
    }))
}

async fn list_environments(State(c): State<Arc<Control>>) -> ApiResult<Json<Environments>> {
    let environments = c.environments().await?;
    let protected = environments
        .iter()
        .filter(|e| c.protection_of(e).0)
        .cloned()
        .collect();
    Ok(Json(Environments {
        environments,
        default: c.default_environment().to_owned(),
        protected,
    }))
}

async fn environment_view(c: &Control, name: String) -> ApiResult<EnvironmentView> {
    let (protected, source) = c.protection_of(&name);
    Ok(EnvironmentView {
        default: name == c.default_environment(),
        protected,
        protection: source.as_str().to_owned(),
        pipeline: c.pipeline_of(&name).await?,
        followed_by: c.followers(&name).await?,
        name,
    })
}

async fn get_environment(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
) -> ApiResult<Json<EnvironmentView>> {
    c.environment_must_exist(&environment).await?;
    Ok(Json(environment_view(&c, environment).await?))
}

async fn set_protection(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<EnvironmentView>> {
    let req: SetProtection = parse_json(&body)?;
    c.set_protection(&environment, req.protected, &who.actor())
        .await?;
    Ok(Json(environment_view(&c, environment).await?))
}

async fn create_environment(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<EnvironmentCreated>)> {
    let req: CreateEnvironment = parse_json(&body)?;
    // The pipeline is checked before the environment is made: a bad one
    // leaves nothing behind.
    if let Some(after) = &req.after {
        c.environment_must_exist(after).await?;
        if *after == req.name {
            return Err(
                ControlError::bad_request(format!("{} cannot follow itself", req.name)).into(),
            );
        }
    } else if req.soak_ms.is_some() || req.require_verification {
        return Err(ControlError::bad_request(
            "a soak or a required verification needs the environment it follows (after)",
        )
        .into());
    }
    if let Some(ms) = req.soak_ms
        && ms != 0
        && !(1000..=seal_control::promotion::MAX_SOAK_MS).contains(&ms)
    {
        return Err(ControlError::bad_request("a soak is 1s to 30 days (0 for none)").into());
    }
    let created = c.create_environment(&req.name, &who.actor()).await?;
    if req.after.is_some() {
        let set = SetPipeline {
            after: req.after.clone(),
            soak_ms: req.soak_ms,
            // Asked for, or left as it is (an existing environment keeps it).
            require_verification: req.require_verification.then_some(true),
            standalone: false,
        };
        c.set_pipeline(&req.name, &set, &who.actor()).await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(EnvironmentCreated {
            name: req.name,
            created,
        }),
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(c): State<Arc<Control>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditEntries>> {
    let entries = c.audit_log(q.limit.unwrap_or(100).min(10_000)).await?;
    Ok(Json(AuditEntries { entries }))
}

async fn verify_audit(State(c): State<Arc<Control>>) -> ApiResult<Json<AuditVerification>> {
    Ok(Json(c.verify_audit().await?))
}
