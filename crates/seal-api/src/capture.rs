//! Traffic capture routes.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET/POST | `/v1/captures` | list / start (`StartCapture`, deployer) |
//! | POST | `/v1/captures/{env}/{fn}/stop` | stop a capture (what it kept stays) |
//! | DELETE | `/v1/captures/{env}/{fn}` | delete a capture and what it kept |
//! | GET | `/v1/captures/{env}/{fn}/requests?limit=` | what it kept, oldest first (deployer of that environment: real requests; at most 1,000) |

use crate::auth::{Caller, Routes, deployer, viewer};
use crate::error::ApiResult;
use crate::parse_json;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use seal_api_types::capture::{
    Capture, CaptureDeleted, CaptureList, CapturedRequests, StartCapture,
};
use seal_control::Control;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route(
            "/v1/captures",
            viewer(Method::GET, list).and(deployer(Method::POST, start)),
        )
        .route(
            "/v1/captures/{environment}/{function}",
            deployer(Method::DELETE, delete),
        )
        .route(
            "/v1/captures/{environment}/{function}/stop",
            deployer(Method::POST, stop),
        )
        .route(
            "/v1/captures/{environment}/{function}/requests",
            deployer(Method::GET, requests),
        )
}

async fn list(State(c): State<Arc<Control>>) -> ApiResult<Json<CaptureList>> {
    Ok(Json(CaptureList {
        captures: c.captures().await?,
    }))
}

async fn start(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Capture>)> {
    let req: StartCapture = parse_json(&body)?;
    who.require_env(
        req.environment
            .as_deref()
            .unwrap_or(c.default_environment()),
    )?;
    let capture = c.start_capture(&req, &who.actor()).await?;
    Ok((StatusCode::CREATED, Json(capture)))
}

async fn stop(
    State(c): State<Arc<Control>>,
    Path((environment, function)): Path<(String, String)>,
    who: Caller,
) -> ApiResult<Json<Capture>> {
    who.require_env(&environment)?;
    Ok(Json(
        c.stop_capture(&environment, &function, &who.actor())
            .await?,
    ))
}

async fn delete(
    State(c): State<Arc<Control>>,
    Path((environment, function)): Path<(String, String)>,
    who: Caller,
) -> ApiResult<Json<CaptureDeleted>> {
    who.require_env(&environment)?;
    let deleted = c
        .delete_capture(&environment, &function, &who.actor())
        .await?;
    Ok(Json(CaptureDeleted {
        environment,
        function,
        deleted,
    }))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u32>,
}

async fn requests(
    State(c): State<Arc<Control>>,
    Path((environment, function)): Path<(String, String)>,
    who: Caller,
    Query(q): Query<Limit>,
) -> ApiResult<Json<CapturedRequests>> {
    // Real requests of that environment: only for a token that may act there.
    who.require_env(&environment)?;
    let limit = q.limit.unwrap_or(100).min(1_000);
    Ok(Json(CapturedRequests {
        requests: c.captured(&environment, &function, limit).await?,
    }))
}
