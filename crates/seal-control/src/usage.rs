//! Cost: the gateway counts GB-seconds per version in memory; this module
//! persists the growth since the last flush into hourly rows (every 10 s,
//! before a cost query, and at shutdown), then checks budgets: the usage
//! ratio is a metric, and the first crossing in a period writes a warning
//! to the audit log, a log line and, if set, a webhook.

use crate::error::{ControlError, ControlResult};
use crate::lookup;
use crate::metrics::Metrics;
use seal_api_types::observe::{BudgetStatus, Cost, CostRow, CostTotal};
use seal_serving::Serving;
use seal_state::{Budget, HOUR_MS, NewAudit, StateStore, UsageDelta, now_ms, period_start};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// (environment, function, version).
type VersionKey = (String, String, u64);

/// A budget change.
#[derive(Debug)]
pub struct BudgetRequest {
    pub gb_seconds: f64,
    pub period: Option<String>,
    pub webhook: Option<String>,
}

/// Where a function's generated dashboard and alert rules are written
/// (none: not written).
#[derive(Debug, Clone, Default)]
pub(crate) struct MonitoringFiles(pub(crate) Option<std::path::PathBuf>);

impl MonitoringFiles {
    /// Regenerates a function's dashboard and rules files from its budget.
    /// Never fails the change that asked for it.
    pub(crate) async fn write(&self, state: &dyn StateStore, function: &str) {
        let Some(dir) = &self.0 else { return };
        let budget = state.budget(function).await.ok().flatten();
        if let Err(e) = crate::monitoring::write_files(dir, function, budget.as_ref()) {
            tracing::warn!(function, error = %e, "cannot write the generated dashboard and rules");
        }
    }
}

/// Cost and budgets: persists what the serving layer counts, answers cost
/// queries, keeps budgets and warns when one is exceeded. Built from the
/// state port, the serving layer's counters and the metrics it sets.
pub struct UsageService {
    state: Arc<dyn StateStore>,
    serving: Arc<Serving>,
    metrics: Arc<Metrics>,
    /// Budget webhooks.
    pub(crate) outbound: crate::outbound::Outbound,
    pub(crate) monitoring: MonitoringFiles,
    /// What was persisted so far per version: invocations and GB-seconds.
    flushed: Mutex<HashMap<VersionKey, (u64, f64)>>,
    /// One flush at a time, so two never persist the same growth.
    running: tokio::sync::Mutex<()>,
}

impl UsageService {
    pub fn new(
        state: Arc<dyn StateStore>,
        serving: Arc<Serving>,
        metrics: Arc<Metrics>,
        outbound: crate::outbound::Outbound,
    ) -> Self {
        Self {
            state,
            serving,
            metrics,
            outbound,
            monitoring: MonitoringFiles::default(),
            flushed: Mutex::default(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Persists usage counted since the last flush, then checks budgets.
    pub async fn flush_usage(&self) -> ControlResult<()> {
        let _one = self.running.lock().await;
        let hour = now_ms() - now_ms().rem_euclid(HOUR_MS);
        let mut deltas = Vec::new();
        let mut next = Vec::new();
        {
            let flushed = self
                .flushed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in self.serving.versions() {
                let key = (e.environment.clone(), e.function.clone(), e.version);
                let (n, gbs) = (e.stats.invocations(), e.stats.gb_seconds());
                let (n0, gbs0) = flushed.get(&key).copied().unwrap_or((0, 0.0));
                if n > n0 {
                    deltas.push(UsageDelta {
                        function: e.function.clone(),
                        environment: e.environment.clone(),
                        version: e.version,
                        hour,
                        invocations: n - n0,
                        gb_seconds: (gbs - gbs0).max(0.0),
                    });
                    next.push((key, (n, gbs)));
                }
            }
        }
        self.state.add_usage(&deltas).await?;
        {
            let mut flushed = self
                .flushed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            flushed.extend(next);
        }
        self.check_budgets().await
    }

    /// Invocations and GB-seconds per version since `since` (unix ms), and
    /// the budget's status. What is still only in memory is counted too.
    pub async fn cost(
        &self,
        function: &str,
        since: i64,
        environment: Option<&str>,
    ) -> ControlResult<Cost> {
        lookup::function_must_exist(&*self.state, function).await?;
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
            versions.push(CostRow {
                gb_seconds_per_invocation: if r.invocations > 0 {
                    r.gb_seconds / r.invocations as f64
                } else {
                    0.0
                },
                environment: r.environment,
                version: r.version,
                digest,
                invocations: r.invocations,
                gb_seconds: r.gb_seconds,
            });
        }
        let budget = match self.state.budget(function).await? {
            None => None,
            Some(b) => {
                let start = period_start(now_ms(), &b.period);
                let used: f64 = self
                    .state
                    .usage(function, start)
                    .await?
                    .iter()
                    .map(|u| u.gb_seconds)
                    .sum();
                Some(BudgetStatus {
                    gb_seconds: b.gb_seconds,
                    period: b.period,
                    period_start: start,
                    used_gb_seconds: used,
                    ratio: used / b.gb_seconds,
                    exceeded: used >= b.gb_seconds,
                    webhook: b.webhook.as_deref().map(crate::redact::url),
                })
            }
        };
        Ok(Cost {
            function: function.to_owned(),
            since,
            until: now_ms(),
            granularity: "hour".to_owned(),
            versions,
            total: CostTotal {
                invocations,
                gb_seconds,
            },
            budget,
        })
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
        lookup::function_must_exist(&*self.state, function).await?;
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
            self.outbound.check_url("webhook", url)?;
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
                    detail: json!({"gb_seconds": budget.gb_seconds, "period": budget.period,
                        "webhook": budget.webhook.as_deref().map(crate::redact::url)}),
                },
            )
            .await?;
        self.monitoring.write(&*self.state, function).await;
        self.flush_usage().await?;
        Ok(budget)
    }

    /// Removes a function's budget; the change and its audit entry are one
    /// transaction.
    pub async fn delete_budget(&self, function: &str, actor: &str) -> ControlResult<()> {
        lookup::function_must_exist(&*self.state, function).await?;
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
        self.monitoring.write(&*self.state, function).await;
        Ok(())
    }

    async fn check_budgets(&self) -> ControlResult<()> {
        for b in self.state.budgets().await? {
            let start = period_start(now_ms(), &b.period);
            let used: f64 = self
                .state
                .usage(&b.function, start)
                .await?
                .iter()
                .map(|u| u.gb_seconds)
                .sum();
            let labels = crate::metrics::FunctionLabels {
                function: b.function.clone(),
            };
            let ratio = if b.gb_seconds > 0.0 {
                used / b.gb_seconds
            } else {
                0.0
            };
            self.metrics.budget_usage.get_or_create(&labels).set(ratio);
            self.metrics
                .budget_limit
                .get_or_create(&labels)
                .set(b.gb_seconds);
            if used < b.gb_seconds || !self.state.claim_budget_alert(&b.function, start).await? {
                continue;
            }
            let detail = serde_json::json!({
                "budget_gb_seconds": b.gb_seconds, "used_gb_seconds": used,
                "ratio": ratio, "period": b.period, "period_start": start,
            });
            tracing::warn!(function = %b.function, used_gb_seconds = used, budget_gb_seconds = b.gb_seconds,
                period = %b.period, "cost budget exceeded");
            self.state
                .audit(NewAudit {
                    actor: "seal",
                    action: "budget_exceeded",
                    object: &b.function,
                    digest: None,
                    outcome: "warning",
                    detail: detail.clone(),
                })
                .await?;
            if let Some(url) = b.webhook.clone() {
                let body = serde_json::json!({
                    "event": "budget_exceeded", "function": b.function, "detail": detail,
                    "at": now_ms(),
                });
                self.outbound.deliver(
                    "budget webhook",
                    format!("budget of {}", b.function),
                    url,
                    body,
                );
            }
        }
        Ok(())
    }
}
