//! Desired state in files: export today's state, plan and apply a release
//! file, say where an environment differs from one.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/export?environment=` | today's state as a release file (JSON form) |
//! | POST | `/v1/apply` | `{"file": TOML, "plan"?, "source"?, "allow_new_permissions"?, "allow_breaking_contract"?}`: the plan, carried out unless `plan` |
//! | POST | `/v1/diff` | `{"file": TOML}`: differences with why; `in_sync` |
//! | GET | `/v1/changelog?function=&environment=&since=7d` | a function's deployments, newest first: commit → version → deployment → outcome |
//! | GET | `/v1/releases` | applies of release files, newest first: id, state, every step's outcome |
//! | GET | `/v1/releases/{id}` | one release |
//! | GET | `/v1/drift` | the last drift check of each environment against the file last applied to it |
//! | GET | `/v1/holds?environment=` | versions rolled back and held, newest first |
//! | POST | `/v1/holds/release` | `{"function", "version", "environment"?}`: the hold lifted (audited) |
//!
//! A token limited to some environments may apply only files that name
//! no other; a file that changes an environment's protection or trust
//! policy needs an admin token to apply (a deployer may plan it).

use crate::auth::{Caller, Routes, deployer, viewer};
use crate::error::ApiResult;
use crate::parse_json;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use seal_api_types::desired::{
    ApplyAnswer, ApplyRequest, Changelog, DiffAnswer, Drift, Exported, Hold, Holds, ReleaseHold,
    ReleaseRecord, Releases,
};
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
        .route("/v1/changelog", viewer(Method::GET, changelog))
        .route("/v1/drift", viewer(Method::GET, drift))
        .route("/v1/releases", viewer(Method::GET, releases))
        .route("/v1/releases/{id}", viewer(Method::GET, release))
        .route("/v1/holds", viewer(Method::GET, holds))
        .route("/v1/holds/release", deployer(Method::POST, release_hold))
}

async fn holds(
    State(c): State<Arc<Control>>,
    Query(q): Query<EnvironmentQuery>,
) -> ApiResult<Json<Holds>> {
    Ok(Json(Holds {
        holds: c.holds(q.environment.as_deref()).await?,
    }))
}

async fn release_hold(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<Hold>> {
    let req: ReleaseHold = parse_json(&body)?;
    who.require_env(
        req.environment
            .as_deref()
            .unwrap_or(c.default_environment()),
    )?;
    Ok(Json(
        c.release_hold(
            &req.function,
            req.version,
            req.environment.as_deref(),
            &who.actor(),
        )
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentQuery {
    environment: Option<String>,
}

async fn export(
    State(c): State<Arc<Control>>,
    Query(q): Query<EnvironmentQuery>,
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
    let approvals = crate::functions::approvals(
        &who,
        req.allow_new_permissions,
        req.allow_breaking_contract,
        req.allow_missing_evidence,
    )?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangelogQuery {
    function: String,
    environment: Option<String>,
    since: Option<String>,
}

async fn changelog(
    State(c): State<Arc<Control>>,
    Query(q): Query<ChangelogQuery>,
) -> ApiResult<Json<Changelog>> {
    Ok(Json(
        c.changelog(
            &q.function,
            q.environment.as_deref(),
            q.since
                .as_deref()
                .map(|s| crate::observe::since_ms(Some(s), s))
                .transpose()?,
        )
        .await?,
    ))
}

async fn drift(State(c): State<Arc<Control>>) -> Json<Drift> {
    Json(Drift {
        environments: c.drift(),
    })
}

async fn releases(State(c): State<Arc<Control>>) -> ApiResult<Json<Releases>> {
    Ok(Json(Releases {
        releases: c.releases(100).await?,
    }))
}

async fn release(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReleaseRecord>> {
    let id: u64 = id.parse().map_err(|_| {
        crate::error::ApiError::bad_request(format!("a release id is a number, got {id:?}"))
    })?;
    Ok(Json(c.release(id).await?))
}
