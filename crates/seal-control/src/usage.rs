//! Cost: the gateway counts GB-seconds per version in memory; this module
//! persists the growth since the last flush into hourly rows (every 10 s,
//! before a cost query, and at shutdown), then checks budgets: the usage
//! ratio is a metric, and the first crossing in a period writes a warning
//! to the audit log, a log line and, if set, a webhook.

use crate::engine::Control;
use crate::error::ControlResult;
use seal_state::{HOUR_MS, NewAudit, UsageDelta, now_ms, period_start};
use std::collections::HashMap;
use std::sync::Mutex;

/// (environment, function, version).
type VersionKey = (String, String, u64);

/// What was persisted so far per version: invocations and GB-seconds.
#[derive(Default)]
pub struct UsageFlusher {
    flushed: Mutex<HashMap<VersionKey, (u64, f64)>>,
    /// One flush at a time, so two never persist the same growth.
    running: tokio::sync::Mutex<()>,
}

impl Control {
    /// Persists usage counted since the last flush, then checks budgets.
    pub async fn flush_usage(&self) -> ControlResult<()> {
        let _one = self.usage.running.lock().await;
        let hour = now_ms() - now_ms().rem_euclid(HOUR_MS);
        let mut deltas = Vec::new();
        let mut next = Vec::new();
        {
            let flushed = self
                .usage
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
                .usage
                .flushed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            flushed.extend(next);
        }
        self.check_budgets().await
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
                let http = self.http.clone();
                tokio::spawn(async move {
                    let mut delay = std::time::Duration::from_millis(200);
                    for attempt in 1..=5 {
                        match http.post(&url).json(&body).send().await {
                            Ok(r) if r.status().is_success() => return,
                            Ok(r) => {
                                tracing::warn!(url, attempt, status = %r.status(), "budget webhook refused")
                            }
                            Err(e) => {
                                tracing::warn!(url, attempt, error = %e, "budget webhook failed")
                            }
                        }
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                });
            }
        }
        Ok(())
    }
}
