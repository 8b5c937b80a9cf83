//! Desired state in files: export today's state, plan and apply a release
//! file, say where an environment differs from one.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/export?environment=` | today's state as a release file (JSON form) |
//! | POST | `/v1/apply` | `{"file": TOML, "plan"?, "source"?, "allow_new_permissions"?, "allow_breaking_contract"?}`: the plan, carried out unless `plan` |
//! | POST | `/v1/diff` | `{"file": TOML}`: differences with why; `in_sync` |
//!
//! A token limited to some environments may apply only files that name
//! no other.

use crate::auth::{Caller, Routes, deployer, viewer};
use crate::error::ApiResult;
use crate::parse_json;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::Method;
use seal_api_types::desired::{ApplyAnswer, ApplyRequest, DiffAnswer, Exported};
use seal_control::Control;
use seal_control::desired::MAX_FILE_BYTES;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route("/v1/export", viewer(Method::GET, export))
        .route(
            "/v1/apply",
            deployer(Method::POST, apply).body_limit(2 * MAX_FILE_BYTES),
        )
        .route(
            "/v1/diff",
            viewer(Method::POST, diff).body_limit(2 * MAX_FILE_BYTES),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    environment: Option<String>,
}

async fn export(
    State(c): State<Arc<Control>>,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Json<Exported>> {
    Ok(Json(Exported {
        file: c.export_release(q.environment.as_deref()).await?,
    }))
}

async fn apply(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<ApplyAnswer>> {
    let req: ApplyRequest = parse_json(&body)?;
    let file = seal_control::desired::parse(&req.file)?;
    for env in file.environments.keys() {
        who.require_env(env)?;
    }
    let approvals =
        crate::functions::approvals(&who, req.allow_new_permissions, req.allow_breaking_contract)?;
    Ok(Json(
        c.apply_release(&req.file, req.plan, req.source, &who.actor(), approvals)
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffRequest {
    file: String,
}

async fn diff(
    State(c): State<Arc<Control>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<DiffAnswer>> {
    let req: DiffRequest = parse_json(&body)?;
    Ok(Json(c.diff_release(&req.file).await?))
}
