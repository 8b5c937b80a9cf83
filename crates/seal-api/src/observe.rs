//! The observability endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | OpenMetrics exposition |
//! | GET | `/v1/functions/{fn}/logs` | NDJSON log records (`environment`, `version`, `status`, `since`, `limit`, `follow`) |
//! | GET | `/v1/top` | every routed version over the last ~10 s |
//! | GET | `/v1/functions/{fn}/cost?since=24h` | invocations and GB-seconds per version, budget status |
//! | PUT/DELETE | `/v1/functions/{fn}/budget` | `{"gb_seconds", "period": "day"\|"month", "webhook"?}` |
//! | GET | `/v1/functions/{fn}/monitoring/{grafana\|prometheus-rules}` | generated dashboard / alert rules |

use crate::auth::Principal;
use crate::engine::Control;
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use seal_gateway::logs::{LogFilter, StatusFilter};
use seal_state::{Budget, NewAudit, now_ms, period_start};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/top", get(top))
        .route("/v1/functions/{function}/logs", get(logs))
        .route("/v1/functions/{function}/cost", get(cost))
        .route(
            "/v1/functions/{function}/budget",
            axum::routing::put(set_budget).delete(delete_budget),
        )
        .route(
            "/v1/functions/{function}/monitoring/{kind}",
            get(monitoring),
        )
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic
/// text format otherwise.
async fn metrics(State(c): State<Arc<Control>>, headers: HeaderMap) -> Response {
    let text = c.metrics.encode();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, crate::metrics::CLASSIC_CONTENT_TYPE)],
            crate::metrics::to_classic(&text),
        )
            .into_response()
    }
}

/// `24h`, `90m`, `7d` → milliseconds ago.
fn since_ms(since: Option<&str>, default: &str) -> ApiResult<i64> {
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
}

async fn logs(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    c.function_or_404(&function).await?;
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
        environment: q.environment,
        version: q.version,
        status,
        since_ms: since,
    };
    let hub = &c.gateway().telemetry().logs;
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
        .map_err(ApiError::internal)
}

#[derive(Deserialize)]
struct TopQuery {
    environment: Option<String>,
}

async fn top(State(c): State<Arc<Control>>, Query(q): Query<TopQuery>) -> Json<Value> {
    let table = c.gateway().table();
    let mut rows = Vec::new();
    let mut window_seconds: f64 = 0.0;
    for route in table.routes() {
        if q.environment
            .as_ref()
            .is_some_and(|e| *e != route.environment)
        {
            continue;
        }
        for b in &route.backends {
            let (w, secs) = c.rollouts().window(&route.environment, &route.function, b);
            window_seconds = window_seconds.max(secs);
            let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
            rows.push(json!({
                "function": route.function,
                "environment": route.environment,
                "version": b.version,
                "digest": b.digest,
                "weight": b.weight,
                "rps": rate(w.requests),
                "requests": w.requests,
                "errors": w.errors,
                "error_rate": w.error_rate(),
                "p50_ms": w.quantile_us(0.5).map(|u| u as f64 / 1e3),
                "p99_ms": w.quantile_us(0.99).map(|u| u as f64 / 1e3),
                "cold_starts": w.cold_starts,
                "total_requests": b.stats.requests(),
                "total_cold_starts": b.stats.cold_starts(),
                "gb_seconds": b.stats.gb_seconds(),
            }));
        }
    }
    rows.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["function"].as_str().unwrap_or("").to_owned(),
                v["environment"].as_str().unwrap_or("").to_owned(),
                std::cmp::Reverse(v["version"].as_u64().unwrap_or(0)),
            )
        };
        key(a).cmp(&key(b))
    });
    Json(json!({"at": now_ms(), "window_seconds": window_seconds, "rows": rows}))
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
) -> ApiResult<Json<Value>> {
    c.function_or_404(&function).await?;
    let since = since_ms(q.since.as_deref(), "24h")?;
    // Count what is still only in memory.
    c.flush_usage().await?;
    let rows = c.state.usage(&function, since).await?;
    let mut versions = Vec::new();
    let (mut invocations, mut gb_seconds) = (0i64, 0.0f64);
    for r in rows {
        if q.environment.as_ref().is_some_and(|e| *e != r.environment) {
            continue;
        }
        let digest = c
            .state
            .version(&function, r.version as u64)
            .await?
            .map(|v| v.digest);
        invocations += r.invocations;
        gb_seconds += r.gb_seconds;
        versions.push(json!({
            "environment": r.environment,
            "version": r.version,
            "digest": digest,
            "invocations": r.invocations,
            "gb_seconds": r.gb_seconds,
            "gb_seconds_per_invocation": if r.invocations > 0 { r.gb_seconds / r.invocations as f64 } else { 0.0 },
        }));
    }
    let budget = match c.state.budget(&function).await? {
        None => Value::Null,
        Some(b) => {
            let start = period_start(now_ms(), &b.period);
            let used: f64 = c
                .state
                .usage(&function, start)
                .await?
                .iter()
                .map(|u| u.gb_seconds)
                .sum();
            json!({
                "gb_seconds": b.gb_seconds, "period": b.period, "period_start": start,
                "used_gb_seconds": used, "ratio": used / b.gb_seconds,
                "exceeded": used >= b.gb_seconds, "webhook": b.webhook,
            })
        }
    };
    Ok(Json(json!({
        "function": function,
        "since": since,
        "until": now_ms(),
        "granularity": "hour",
        "versions": versions,
        "total": {"invocations": invocations, "gb_seconds": gb_seconds},
        "budget": budget,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    gb_seconds: f64,
    period: Option<String>,
    webhook: Option<String>,
}

async fn set_budget(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Principal,
    body: Result<Json<BudgetBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    c.function_or_404(&function).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !body.gb_seconds.is_finite() || body.gb_seconds <= 0.0 {
        return Err(ApiError::bad_request(format!(
            "invalid budget {}: GB-seconds must be a positive number",
            body.gb_seconds
        )));
    }
    let period = body.period.unwrap_or_else(|| "month".into());
    if period != "day" && period != "month" {
        return Err(ApiError::bad_request(format!(
            "invalid budget period {period:?}: use day or month (UTC calendar periods)"
        )));
    }
    if let Some(url) = &body.webhook {
        let ok = reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http");
        if !ok {
            return Err(ApiError::bad_request(format!(
                "invalid webhook {url:?}: give an http:// URL (https is not supported by this server's client)"
            )));
        }
    }
    let who = who.actor();
    let budget = Budget {
        function: function.clone(),
        gb_seconds: body.gb_seconds,
        period,
        webhook: body.webhook,
        alerted_period: None,
        updated_by: who.clone(),
        updated_at: now_ms(),
    };
    c.state.set_budget(&budget).await?;
    c.state
        .audit(NewAudit {
            actor: &who,
            action: "budget_set",
            object: &function,
            digest: None,
            outcome: "ok",
            detail: json!({"gb_seconds": budget.gb_seconds, "period": budget.period, "webhook": budget.webhook}),
        })
        .await?;
    c.write_monitoring(&function).await;
    // Judge the new budget against what is already used.
    c.flush_usage().await?;
    Ok(Json(json!({"budget": budget})))
}

async fn delete_budget(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Principal,
) -> ApiResult<StatusCode> {
    c.function_or_404(&function).await?;
    if !c.state.delete_budget(&function).await? {
        return Err(ApiError::not_found(format!("{function} has no budget")));
    }
    c.metrics.forget_budget(&function);
    c.state
        .audit(NewAudit {
            actor: &who.actor(),
            action: "budget_deleted",
            object: &function,
            digest: None,
            outcome: "ok",
            detail: json!({}),
        })
        .await?;
    c.write_monitoring(&function).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn monitoring(
    State(c): State<Arc<Control>>,
    Path((function, kind)): Path<(String, String)>,
) -> ApiResult<Response> {
    c.function_or_404(&function).await?;
    match kind.as_str() {
        "grafana" => Ok(Json(crate::monitoring::grafana_dashboard(&function)).into_response()),
        "prometheus-rules" => {
            let budget = c.state.budget(&function).await?;
            Ok((
                [(header::CONTENT_TYPE, "application/yaml")],
                crate::monitoring::prometheus_rules(&function, budget.as_ref()),
            )
                .into_response())
        }
        other => Err(ApiError::not_found(format!(
            "no monitoring output {other:?}: use grafana or prometheus-rules"
        ))),
    }
}
