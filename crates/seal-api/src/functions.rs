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
//! | GET | `/v1/server` | runtime counters (compiles, cache loads) |
//! | GET | `/healthz` | liveness |
//!
//! Metrics, logs, cost, budgets, `top` and generated monitoring are in
//! [`crate::observe_api`].

use crate::auth::{Principal, Role};
use crate::engine::Control;
use crate::error::{ApiError, ApiResult};
use crate::rollout::Command;
use crate::rollout::plan::{RolloutSpec, Strategy};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use seal_artifact::{Digest, parse_oci_manifest};
use seal_oci::StoreError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The manifest endpoint takes small JSON documents only.
const MAX_MANIFEST_BYTES: usize = 64 * 1024;

pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/server", get(server_info))
        .route("/v1/blobs/{digest}", put(put_blob).head(head_blob))
        .route("/v1/artifacts", post(post_artifact))
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{function}", get(function_status))
        .route("/v1/functions/{function}/versions", get(list_versions))
        .route(
            "/v1/functions/{function}/versions/{version}",
            get(inspect_version),
        )
        .route("/v1/functions/{function}/deploy", post(deploy))
        .route("/v1/functions/{function}/rollback", post(rollback))
        .route(
            "/v1/functions/{function}/deployments",
            get(list_deployments),
        )
        .route("/v1/deployments/{id}", get(show_deployment))
        .route("/v1/deployments/{id}/{command}", post(deployment_command))
        .route("/v1/functions/{function}/rollout", get(rollout_status))
        .route("/v1/audit", get(audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route(
            "/v1/environments",
            get(list_environments).post(create_environment),
        )
        .merge(crate::observe_api::routes())
        .merge(crate::security_api::routes())
        // Authentication runs per route (it decides by the route's
        // template); unknown paths get a plain 404.
        .route_layer(axum::middleware::from_fn_with_state(
            control.clone(),
            crate::auth::authenticate,
        ))
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_MANIFEST_BYTES))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(control)
}

/// Every error answer is JSON, including axum's own rejections (bad query
/// strings, bodies over the limit, wrong methods), which are plain text.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_owned();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned();
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    axum::response::IntoResponse::into_response(ApiError::new(status, code, message))
}

/// Only an admin may approve wider permissions.
fn require_approver(who: &Principal) -> ApiResult<()> {
    who.require_role(Role::Admin).map_err(|_| {
        ApiError::forbidden(format!(
            "--allow-new-permissions needs an admin token; {} is a {}",
            who.name,
            who.role.as_str()
        ))
    })
}

fn parse_digest(s: &str) -> ApiResult<Digest> {
    Digest::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn server_info(State(c): State<Arc<Control>>) -> Json<Value> {
    let stats = c.runtime().stats();
    Json(json!({
        "seal_version": env!("CARGO_PKG_VERSION"),
        "compiles": stats.compiles.load(Ordering::Relaxed),
        "cache_loads": stats.cache_loads.load(Ordering::Relaxed),
        "max_upload_bytes": c.max_upload_bytes,
        "default_environment": c.default_environment,
    }))
}

/// Whether an intact blob is stored (re-hashed off the async workers).
async fn has_blob(c: &Control, digest: &Digest) -> bool {
    let oci = c.oci.clone();
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || oci.has_blob(&digest))
        .await
        .unwrap_or(false)
}

async fn head_blob(State(c): State<Arc<Control>>, Path(digest): Path<String>) -> StatusCode {
    match Digest::parse(&digest) {
        Ok(d) if has_blob(&c, &d).await => StatusCode::OK,
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
) -> ApiResult<(StatusCode, Json<Value>)> {
    let expected = parse_digest(&digest)?;
    let limit = c.max_upload_bytes;
    let too_large = || StoreError::TooLarge { limit };
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large().into());
    }
    if has_blob(&c, &expected).await {
        return Ok((
            StatusCode::OK,
            Json(json!({"digest": expected, "existed": true})),
        ));
    }
    let mut writer = c.oci.blob_writer(limit)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        if let Err(e) = writer.write(&chunk) {
            drop(writer); // removes the partial upload
            drain(&mut stream).await;
            return Err(e.into());
        }
    }
    let size = writer.written();
    let digest = tokio::task::spawn_blocking(move || writer.commit(Some(&expected)))
        .await
        .map_err(ApiError::internal)??;
    Ok((
        StatusCode::CREATED,
        Json(json!({"digest": digest, "size": size, "existed": false})),
    ))
}

/// Reads and discards what a refused upload is still sending, for a bounded
/// time and size, so the client is still reading when the 413 arrives
/// instead of seeing its connection reset mid-send.
async fn drain(stream: &mut axum::body::BodyDataStream) {
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
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let published = c.publish(body.to_vec(), &who.actor()).await?;
    let status = if published.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(published))))
}

async fn list_functions(State(c): State<Arc<Control>>) -> ApiResult<Json<Value>> {
    let routes = c.state.routes().await?;
    let mut out = Vec::new();
    for name in c.state.functions().await? {
        let versions = c.state.versions(&name).await?;
        let fn_routes: Vec<_> = routes.iter().filter(|r| r.function == name).collect();
        out.push(json!({
            "function": name,
            "versions": versions.len(),
            "latest": versions.last().map(|v| v.version),
            "routes": fn_routes,
        }));
    }
    Ok(Json(json!({"functions": out})))
}

async fn function_status(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
) -> ApiResult<Json<Value>> {
    c.function_or_404(&function).await?;
    let table = c.gateway().table();
    let mut routes = Vec::new();
    for r in c
        .state
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.function == function)
    {
        let live = table.get(&r.environment, &r.function);
        let mut versions = Vec::new();
        for w in &r.weights {
            let digest = c
                .state
                .version(&function, w.version)
                .await?
                .map(|v| v.digest);
            let backend = live.and_then(|l| l.backends.iter().find(|b| b.version == w.version));
            versions.push(json!({
                "version": w.version,
                "weight": w.weight,
                "digest": digest,
                "serving": backend.is_some(),
                "requests": backend.map(|b| b.stats.requests()),
                "errors": backend.map(|b| b.stats.errors()),
            }));
        }
        routes.push(json!({
            "environment": r.environment,
            "deployment_id": r.deployment_id,
            "updated_at": r.updated_at,
            "versions": versions,
        }));
    }
    let versions = c.state.versions(&function).await?;
    Ok(Json(json!({
        "function": function,
        "latest_version": versions.last().map(|v| v.version),
        "routes": routes,
    })))
}

async fn list_versions(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
) -> ApiResult<Json<Value>> {
    c.function_or_404(&function).await?;
    let versions = c.state.versions(&function).await?;
    Ok(Json(json!({"function": function, "versions": versions})))
}

async fn inspect_version(
    State(c): State<Arc<Control>>,
    Path((function, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let number: u64 = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("version must be a number, got {version:?}")))?;
    c.function_or_404(&function).await?;
    let v = c
        .state
        .version(&function, number)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{function} has no version {number}")))?;
    let digest = parse_digest(&v.digest)?;
    let oci = c.oci.clone();
    let (oci_manifest, verified) = tokio::task::spawn_blocking(move || {
        let bytes = oci.read_blob(&digest)?;
        let refs = parse_oci_manifest(&bytes)?;
        // Verify every blob the artifact names, so `inspect` doubles as a check.
        oci.read_blob(&refs.config_digest)?;
        oci.read_blob(&refs.layer_digest)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok::<_, ApiError>((value, true))
    })
    .await
    .map_err(ApiError::internal)??;
    let routes: Vec<_> = c
        .state
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.function == function && r.weights.iter().any(|w| w.version == number))
        .map(|r| json!({"environment": r.environment, "weights": r.weights}))
        .collect();
    Ok(Json(json!({
        "version": v,
        "oci_manifest": oci_manifest,
        "verified": verified,
        "routes": routes,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    version: u64,
    environment: Option<String>,
    reason: Option<String>,
    /// Progressive settings; absent (or all-at-once) moves all traffic now.
    rollout: Option<RolloutSpec>,
    /// Plan only: print what would happen, change nothing.
    #[serde(default)]
    dry_run: bool,
    /// The admin's approval of wider permissions in production.
    #[serde(default)]
    allow_new_permissions: bool,
}

async fn deploy(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let req: DeployRequest = parse_json(&body)?;
    who.require_env(req.environment.as_deref().unwrap_or(&c.default_environment))?;
    if req.allow_new_permissions {
        require_approver(&who)?;
    }
    if let Some(spec) = &req.rollout
        && spec.strategy == Strategy::AllAtOnce
        && spec.has_progressive_settings()
    {
        return Err(ApiError::bad_request(
            "steps, gates, hooks and the other rollout settings need --strategy canary, linear or blue-green; all-at-once moves all traffic at once",
        ));
    }
    if let Some(spec) = req
        .rollout
        .filter(|r| r.strategy != Strategy::AllAtOnce || req.dry_run)
    {
        if spec.strategy == Strategy::AllAtOnce {
            return Err(ApiError::bad_request(
                "--plan shows the steps of canary, linear and blue-green deployments; all-at-once has one step: 100% now",
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
                req.allow_new_permissions,
            )
            .await?;
        return Ok(Json(v));
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
            req.allow_new_permissions,
        )
        .await?;
    Ok(Json(json!(outcome)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    environment: Option<String>,
    to: Option<u64>,
    /// The admin's approval, needed only for a target that never served
    /// in this environment and asks for more.
    #[serde(default)]
    allow_new_permissions: bool,
}

async fn rollback(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let req: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        parse_json(&body)?
    };
    who.require_env(req.environment.as_deref().unwrap_or(&c.default_environment))?;
    if req.allow_new_permissions {
        require_approver(&who)?;
    }
    let outcome = c
        .rollback(
            &function,
            req.environment.as_deref(),
            req.to,
            &who.actor(),
            req.allow_new_permissions,
        )
        .await?;
    Ok(Json(json!(outcome)))
}

async fn deployment_command(
    State(c): State<Arc<Control>>,
    Path((id, command)): Path<(String, String)>,
    who: Principal,
) -> ApiResult<Json<Value>> {
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
    if let Some((d, _)) = c.state.deployment(id).await? {
        who.require_env(&d.environment)?;
    }
    let d = c.command(id, cmd, &who.actor()).await?;
    Ok(Json(json!({"deployment": d})))
}

async fn rollout_status(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<DeploymentsQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        c.rollout_status(&function, q.environment.as_deref())
            .await?,
    ))
}

/// JSON bodies with errors that name the problem (axum's `Json` rejection
/// is plain text).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

#[derive(Deserialize)]
struct DeploymentsQuery {
    environment: Option<String>,
}

async fn list_deployments(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<DeploymentsQuery>,
) -> ApiResult<Json<Value>> {
    c.function_or_404(&function).await?;
    let deployments = c
        .state
        .deployments(&function, q.environment.as_deref())
        .await?;
    Ok(Json(
        json!({"function": function, "deployments": deployments}),
    ))
}

async fn show_deployment(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!("deployment id must be a number, got {id:?}"))
    })?;
    let (deployment, events) = c
        .state
        .deployment(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id}")))?;
    Ok(Json(json!({"deployment": deployment, "events": events})))
}

async fn list_environments(State(c): State<Arc<Control>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({
        "environments": c.state.environments().await?,
        "default": c.default_environment,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateEnvironment {
    name: String,
}

async fn create_environment(
    State(c): State<Arc<Control>>,
    who: Principal,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CreateEnvironment = parse_json(&body)?;
    let created = c.create_environment(&req.name, &who.actor()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"name": req.name, "created": created}))))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(c): State<Arc<Control>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let entries = c
        .state
        .audit_log(q.limit.unwrap_or(100).min(10_000))
        .await?;
    Ok(Json(json!({"entries": entries})))
}

async fn verify_audit(State(c): State<Arc<Control>>) -> ApiResult<Json<Value>> {
    let v = c.state.verify_audit().await?;
    Ok(Json(json!(v)))
}
