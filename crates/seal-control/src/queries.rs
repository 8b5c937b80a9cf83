//! What callers read and the small writes that are not deployments: the
//! catalog (functions, versions, artifacts), deployment history, the
//! audit log, live views (status, top), cost and budgets.
//! Every read of the stores goes through here, so the API crate never
//! touches a store.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_artifact::{Digest, parse_oci_manifest};
use seal_state::{
    AuditRecord, AuditVerification, Budget, DeploymentEvent, DeploymentRecord, NewAudit,
    TokenRecord, now_ms, period_start,
};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

/// A budget change's answer.
#[derive(Debug)]
pub struct BudgetRequest {
    pub gb_seconds: f64,
    pub period: Option<String>,
    pub webhook: Option<String>,
}

impl Control {
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }

    /// Runtime counters and the server's limits.
    pub fn server_info(&self) -> Value {
        let stats = self.runtime.stats();
        json!({
            "seal_version": env!("CARGO_PKG_VERSION"),
            "compiles": stats.compiles.load(Ordering::Relaxed),
            "cache_loads": stats.cache_loads.load(Ordering::Relaxed),
            "max_upload_bytes": self.max_upload_bytes,
            "default_environment": self.default_environment,
        })
    }

    /// Every function with its version count, latest version and routes.
    pub async fn list_functions(&self) -> ControlResult<Value> {
        let routes = self.state.routes().await?;
        let mut out = Vec::new();
        for name in self.state.functions().await? {
            let versions = self.state.versions(&name).await?;
            let fn_routes: Vec<_> = routes.iter().filter(|r| r.function == name).collect();
            out.push(json!({
                "function": name,
                "versions": versions.len(),
                "latest": versions.last().map(|v| v.version),
                "routes": fn_routes,
            }));
        }
        Ok(json!({"functions": out}))
    }

    /// A function's routes, each version's weight and digest, and whether
    /// it serves here now with its live counters.
    pub async fn function_status(&self, function: &str) -> ControlResult<Value> {
        self.function_or_404(function).await?;
        let table = self.serving.table();
        let mut routes = Vec::new();
        for r in self
            .state
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.function == function)
        {
            let live = table.get(&r.environment, &r.function);
            let mut versions = Vec::new();
            for w in &r.weights {
                let digest = self
                    .state
                    .version(function, w.version)
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
        let versions = self.state.versions(function).await?;
        Ok(json!({
            "function": function,
            "latest_version": versions.last().map(|v| v.version),
            "routes": routes,
        }))
    }

    pub async fn list_versions(&self, function: &str) -> ControlResult<Value> {
        self.function_or_404(function).await?;
        let versions = self.state.versions(function).await?;
        Ok(json!({"function": function, "versions": versions}))
    }

    /// One version in full: its record, its OCI manifest (every blob it
    /// names re-hashed, so `inspect` doubles as a check), and where it is
    /// routed.
    pub async fn inspect_version(&self, function: &str, number: u64) -> ControlResult<Value> {
        let v = self.version_or_404(function, number).await?;
        let digest = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let oci = self.oci.clone();
        let oci_manifest = tokio::task::spawn_blocking(move || {
            let bytes = oci.read_blob(&digest)?;
            let refs = parse_oci_manifest(&bytes)?;
            oci.read_blob(&refs.config_digest)?;
            oci.read_blob(&refs.layer_digest)?;
            Ok::<_, ControlError>(serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        })
        .await
        .map_err(ControlError::internal)??;
        let routes: Vec<_> = self
            .state
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.function == function && r.weights.iter().any(|w| w.version == number))
            .map(|r| json!({"environment": r.environment, "weights": r.weights}))
            .collect();
        Ok(json!({
            "version": v,
            "oci_manifest": oci_manifest,
            "verified": true,
            "routes": routes,
        }))
    }

    /// A function's deployments, newest first.
    pub async fn deployments(
        &self,
        function: &str,
        environment: Option<&str>,
    ) -> ControlResult<Vec<DeploymentRecord>> {
        self.function_or_404(function).await?;
        Ok(self.state.deployments(function, environment).await?)
    }

    /// One deployment with its events.
    pub async fn deployment(
        &self,
        id: u64,
    ) -> ControlResult<(DeploymentRecord, Vec<DeploymentEvent>)> {
        self.state
            .deployment(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no deployment {id}")))
    }

    pub async fn environments(&self) -> ControlResult<Vec<String>> {
        Ok(self.state.environments().await?)
    }

    pub async fn audit_log(&self, limit: u32) -> ControlResult<Vec<AuditRecord>> {
        Ok(self.state.audit_log(limit).await?)
    }

    pub async fn verify_audit(&self) -> ControlResult<AuditVerification> {
        Ok(self.state.verify_audit().await?)
    }

    pub async fn tokens(&self) -> ControlResult<Vec<TokenRecord>> {
        Ok(self.state.tokens().await?)
    }

    pub async fn revoke_token(&self, id: &str, actor: &str) -> ControlResult<TokenRecord> {
        self.state
            .revoke_token(id, actor)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no token {id}")))
    }

    /// Who changed which config or secret keys of a function, when.
    pub async fn setting_revisions(
        &self,
        function: &str,
        environment: Option<&str>,
    ) -> ControlResult<Value> {
        self.function_or_404(function).await?;
        let revisions = self
            .state
            .setting_revisions(function, environment, 1000)
            .await?;
        Ok(json!({"revisions": revisions}))
    }

    /// Every routed version over the last ~10 s: rates, errors, latency.
    pub fn top(&self, environment: Option<&str>) -> Value {
        let table = self.serving.table();
        let mut rows = Vec::new();
        let mut window_seconds: f64 = 0.0;
        for route in table.routes() {
            if environment.is_some_and(|e| e != route.environment) {
                continue;
            }
            for b in &route.backends {
                let (w, secs) = self.rollouts.window(&route.environment, &route.function, b);
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
        json!({"at": now_ms(), "window_seconds": window_seconds, "rows": rows})
    }

    /// Invocations and GB-seconds per version since `since` (unix ms), and
    /// the budget's status. What is still only in memory is counted too.
    pub async fn cost(
        &self,
        function: &str,
        since: i64,
        environment: Option<&str>,
    ) -> ControlResult<Value> {
        self.function_or_404(function).await?;
        self.flush_usage().await?;
        let rows = self.state.usage(function, since).await?;
        let mut versions = Vec::new();
        let (mut invocations, mut gb_seconds) = (0i64, 0.0f64);
        for r in rows {
            if environment.is_some_and(|e| e != r.environment) {
                continue;
            }
            let digest = self
                .state
                .version(function, r.version as u64)
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
        let budget = match self.state.budget(function).await? {
            None => Value::Null,
            Some(b) => {
                let start = period_start(now_ms(), &b.period);
                let used: f64 = self
                    .state
                    .usage(function, start)
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
        Ok(json!({
            "function": function,
            "since": since,
            "until": now_ms(),
            "granularity": "hour",
            "versions": versions,
            "total": {"invocations": invocations, "gb_seconds": gb_seconds},
            "budget": budget,
        }))
    }

    /// Sets a function's GB-second budget; the change and its audit entry
    /// are one transaction. The new budget is judged against what is
    /// already used.
    pub async fn set_budget(
        &self,
        function: &str,
        req: BudgetRequest,
        actor: &str,
    ) -> ControlResult<Budget> {
        self.function_or_404(function).await?;
        if !req.gb_seconds.is_finite() || req.gb_seconds <= 0.0 {
            return Err(ControlError::bad_request(format!(
                "invalid budget {}: GB-seconds must be a positive number",
                req.gb_seconds
            )));
        }
        let period = req.period.unwrap_or_else(|| "month".into());
        if period != "day" && period != "month" {
            return Err(ControlError::bad_request(format!(
                "invalid budget period {period:?}: use day or month (UTC calendar periods)"
            )));
        }
        if let Some(url) = &req.webhook {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http");
            if !ok {
                return Err(ControlError::bad_request(format!(
                    "invalid webhook {url:?}: give an http:// URL (https is not supported by this server's client)"
                )));
            }
        }
        let budget = Budget {
            function: function.to_owned(),
            gb_seconds: req.gb_seconds,
            period,
            webhook: req.webhook,
            alerted_period: None,
            updated_by: actor.to_owned(),
            updated_at: now_ms(),
        };
        self.state
            .set_budget(
                &budget,
                NewAudit {
                    actor,
                    action: "budget_set",
                    object: function,
                    digest: None,
                    outcome: "ok",
                    detail: json!({"gb_seconds": budget.gb_seconds, "period": budget.period, "webhook": budget.webhook}),
                },
            )
            .await?;
        self.write_monitoring(function).await;
        self.flush_usage().await?;
        Ok(budget)
    }

    /// Removes a function's budget; the change and its audit entry are one
    /// transaction.
    pub async fn delete_budget(&self, function: &str, actor: &str) -> ControlResult<()> {
        self.function_or_404(function).await?;
        let deleted = self
            .state
            .delete_budget(
                function,
                NewAudit {
                    actor,
                    action: "budget_deleted",
                    object: function,
                    digest: None,
                    outcome: "ok",
                    detail: json!({}),
                },
            )
            .await?;
        if !deleted {
            return Err(ControlError::not_found(format!("{function} has no budget")));
        }
        self.metrics.forget_budget(function);
        self.write_monitoring(function).await;
        Ok(())
    }

    /// The generated Prometheus alert rules of a function (its budget
    /// included).
    pub async fn prometheus_rules(&self, function: &str) -> ControlResult<String> {
        self.function_or_404(function).await?;
        let budget = self.state.budget(function).await?;
        Ok(crate::monitoring::prometheus_rules(
            function,
            budget.as_ref(),
        ))
    }

    /// The `/metrics` exposition (OpenMetrics text).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }
}
