//! Feature flag routes.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET/POST | `/v1/flags/{env}` | the set's flags / apply a flagd file (deployer) |
//! | GET | `/v1/flags/{env}/history?key=&limit=` | revisions, newest first |
//! | GET/DELETE | `/v1/flags/{env}/{key}` | one flag's definition / delete it (deployer) |

use crate::auth::{Caller, Routes, deployer, viewer};
use crate::error::ApiResult;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use seal_api_types::flags::{FlagDefinition, FlagHistory, FlagList, FlagsChanged};
use seal_control::Control;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route(
            "/v1/flags/{environment}",
            viewer(Method::GET, list).and(
                deployer(Method::POST, apply).body_limit(seal_control::flags::MAX_FLAG_FILE + 1),
            ),
        )
        .route(
            "/v1/flags/{environment}/history",
            viewer(Method::GET, history),
        )
        .route(
            "/v1/flags/{environment}/{key}",
            viewer(Method::GET, get).and(deployer(Method::DELETE, delete)),
        )
}

async fn list(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
) -> ApiResult<Json<FlagList>> {
    Ok(Json(c.list_flags(&environment).await?))
}

async fn apply(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<FlagsChanged>> {
    who.require_env(&environment)?;
    Ok(Json(
        c.apply_flags(&environment, &body, &who.actor()).await?,
    ))
}

#[derive(Deserialize)]
struct HistoryQuery {
    key: Option<String>,
    limit: Option<u32>,
}

async fn history(
    State(c): State<Arc<Control>>,
    Path(environment): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<FlagHistory>> {
    Ok(Json(
        c.flag_history(
            &environment,
            q.key.as_deref(),
            q.limit.unwrap_or(50).min(1000),
        )
        .await?,
    ))
}

async fn get(
    State(c): State<Arc<Control>>,
    Path((environment, key)): Path<(String, String)>,
) -> ApiResult<Json<FlagDefinition>> {
    Ok(Json(c.flag(&environment, &key).await?))
}

async fn delete(
    State(c): State<Arc<Control>>,
    Path((environment, key)): Path<(String, String)>,
    who: Caller,
) -> ApiResult<Json<FlagsChanged>> {
    who.require_env(&environment)?;
    Ok(Json(c.delete_flag(&environment, &key, &who.actor()).await?))
}
