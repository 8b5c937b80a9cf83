//! The observability endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | OpenMetrics exposition |
//! | GET | `/v1/functions/{fn}/logs` | NDJSON log records (`environment`, `version`, `status`, `since`, `limit`, `follow`, `correlation`) |
//! | GET | `/v1/logs?correlation=ID` | NDJSON log records of every function with that correlation id (same filters) |
//! | GET | `/v1/top` | every routed version over the last ~10 s |
//! | GET | `/v1/cluster` | the nodes on the store, their versions and heartbeats, the controller |
//! | GET | `/v1/functions/{fn}/cost?since=24h` | invocations and GB-seconds per version, budget status |
//! | PUT/DELETE | `/v1/functions/{fn}/budget` | `{"gb_seconds", "period": "day"\|"month", "webhook"?}` |
//! | GET | `/v1/functions/{fn}/monitoring/{grafana\|prometheus-rules}` | generated dashboard / alert rules |

use crate::auth::{Caller, Routes, admin, viewer};
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use seal_api_types::observe::{BudgetAnswer, BudgetBody, Cost, Top};
use seal_control::Control;
use seal_control::usage::BudgetRequest;
use seal_serving::logs::{LogFilter, StatusFilter, now_ms};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route("/metrics", viewer(Method::GET, metrics))
        .route("/v1/top", viewer(Method::GET, top))
        .route("/v1/cluster", viewer(Method::GET, cluster))
        .route("/v1/functions/{function}/logs", viewer(Method::GET, logs))
        .route("/v1/logs", viewer(Method::GET, all_logs))
        .route("/v1/functions/{function}/cost", viewer(Method::GET, cost))
        .route(
            "/v1/functions/{function}/budget",
            admin(Method::PUT, set_budget).and(admin(Method::DELETE, delete_budget)),
        )
        .route(
            "/v1/functions/{function}/monitoring/{kind}",
            viewer(Method::GET, monitoring),
        )
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic
/// text format otherwise.
async fn metrics(State(c): State<Arc<Control>>, headers: HeaderMap) -> Response {
    let text = c.metrics_text();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, seal_control::metrics::CONTENT_TYPE)],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                seal_control::metrics::CLASSIC_CONTENT_TYPE,
            )],
            seal_control::metrics::to_classic(&text),
        )
            .into_response()
    }
}

/// `24h`, `90m`, `7d` → milliseconds ago.
pub(crate) fn since_ms(since: Option<&str>, default: &str) -> ApiResult<i64> {
    let s = since.unwrap_or(default);
    let d = humantime::parse_duration(s).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid duration {s:?} for since: {e} (use e.g. 10m, 24h, 7d)"
        ))
    })?;
    Ok(now_ms() - d.as_millis().min(i64::MAX as u128) as i64)
}

#[derive(Deserialize)]
struct LogsQuery {
    environment: Option<String>,
    version: Option<u64>,
    status: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
    correlation: Option<String>,
}

async fn logs(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    c.function_or_404(&function).await?;
    log_stream(&c, Some(function), q)
}

/// Every function's records: a journey followed by its correlation id
/// across the functions it passed through (`?correlation=` is required).
async fn all_logs(
    State(c): State<Arc<Control>>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    if q.correlation.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "name a function (/v1/functions/{fn}/logs) or a correlation id (?correlation=ID)",
        ));
    }
    log_stream(&c, None, q)
}

fn log_stream(c: &Control, function: Option<String>, q: LogsQuery) -> ApiResult<Response> {
    let status = q
        .status
        .as_deref()
        .map(StatusFilter::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let since = match q.since.as_deref() {
        Some(s) => Some(since_ms(Some(s), s)?),
        None => None,
    };
    let filter = LogFilter {
        function,
        correlation: q.correlation,
        environment: q.environment,
        version: q.version,
        status,
        since_ms: since,
    };
    let hub = &c.serving().telemetry().logs;
    // Subscribe before reading the backlog so nothing falls between them.
    let live = q.follow.then(|| hub.subscribe());
    let backlog = hub.query(&filter, q.limit.unwrap_or(100).min(hub.capacity()));
    let last_seq = backlog.last().map_or(0, |r| r.seq);
    let lines = futures::stream::iter(
        backlog
            .into_iter()
            .map(|r| Ok::<_, std::convert::Infallible>(Bytes::from(format!("{}\n", r.json())))),
    );
    let body = match live {
        None => Body::from_stream(lines),
        Some(rx) => {
            let follow = futures::stream::unfold(rx, move |mut rx| {
                let filter = filter.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok(r) if r.seq > last_seq && filter.matches(&r) => {
                                return Some((Ok(Bytes::from(format!("{}\n", r.json()))), rx));
                            }
                            Ok(_) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                let note = json!({"kind": "notice", "message": format!("{n} records skipped: the reader fell behind")});
                                return Some((Ok(Bytes::from(format!("{note}\n"))), rx));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Body::from_stream(futures::StreamExt::chain(lines, follow))
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .map_err(|e| seal_control::ControlError::internal(e).into())
}

#[derive(Deserialize)]
struct TopQuery {
    environment: Option<String>,
}

async fn top(State(c): State<Arc<Control>>, Query(q): Query<TopQuery>) -> Json<Top> {
    Json(c.top(q.environment.as_deref()))
}

async fn cluster(
    State(c): State<Arc<Control>>,
) -> ApiResult<Json<seal_api_types::cluster::ClusterStatus>> {
    Ok(Json(c.cluster_status().await?))
}

#[derive(Deserialize)]
struct CostQuery {
    since: Option<String>,
    environment: Option<String>,
}

async fn cost(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<CostQuery>,
) -> ApiResult<Json<Cost>> {
    let since = since_ms(q.since.as_deref(), "24h")?;
    Ok(Json(
        c.usage()
            .cost(&function, since, q.environment.as_deref())
            .await?,
    ))
}

async fn set_budget(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
    body: Result<Json<BudgetBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<BudgetAnswer>> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let budget = c
        .usage()
        .set_budget(
            &function,
            BudgetRequest {
                gb_seconds: body.gb_seconds,
                period: body.period,
                webhook: body.webhook,
            },
            &who.actor(),
        )
        .await?;
    Ok(Json(BudgetAnswer { budget }))
}

async fn delete_budget(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
) -> ApiResult<StatusCode> {
    c.usage().delete_budget(&function, &who.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn monitoring(
    State(c): State<Arc<Control>>,
    Path((function, kind)): Path<(String, String)>,
) -> ApiResult<Response> {
    match kind.as_str() {
        "grafana" => {
            c.function_or_404(&function).await?;
            Ok((
                [(header::CONTENT_TYPE, "application/json")],
                seal_control::monitoring::grafana_dashboard(&function),
            )
                .into_response())
        }
        "prometheus-rules" => Ok((
            [(header::CONTENT_TYPE, "application/yaml")],
            c.prometheus_rules(&function).await?,
        )
            .into_response()),
        other => Err(ApiError::not_found(format!(
            "no monitoring output {other:?}: use grafana or prometheus-rules"
        ))),
    }
}
