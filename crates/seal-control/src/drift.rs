//! Drift: the desired state last applied to each environment, compared
//! with what serves every `--drift-interval`. Each environment's
//! differences are a gauge per function (`seal_drift_differences`, with
//! an alert rule in the generated monitoring), a log line and a webhook
//! (the file's `notify`) when an environment starts or stops drifting,
//! and part of `seal status`. With
//! `--self-heal`, the controller re-applies the environment's file, which
//! never deploys a held version (the plan refuses it, and that is said).

use crate::engine::Control;
use crate::error::ControlResult;
use crate::trust::Approvals;
use seal_api_types::desired::{DriftReport, FileSource, ReleaseFile};
use seal_state::AppliedFile;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The actor a self-heal applies as.
pub const SELF_HEAL: &str = "seal (self-heal)";

/// The last drift check of each environment, and the last reason a
/// self-heal of each could not apply its file (said once, not every
/// check).
#[derive(Debug, Default)]
pub(crate) struct DriftReports(
    std::sync::Mutex<BTreeMap<String, DriftReport>>,
    std::sync::Mutex<BTreeMap<String, String>>,
);

impl DriftReports {
    pub(crate) fn all(&self) -> Vec<DriftReport> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether `why` is new for `env` (and remembers it).
    fn new_refusal(&self, env: &str, why: &str) -> bool {
        let mut m = self.1.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(env).is_some_and(|w| w == why) {
            return false;
        }
        m.insert(env.to_owned(), why.to_owned());
        true
    }

    fn replace(&self, report: DriftReport) -> Option<DriftReport> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(report.environment.clone(), report)
    }
}

/// The part of a file about one environment, as TOML (what is stored as
/// that environment's desired state).
pub(crate) fn restricted(file: &ReleaseFile, env: &str) -> ControlResult<String> {
    let mut one = ReleaseFile::default();
    if let Some(spec) = file.environments.get(env) {
        one.environments.insert(env.to_owned(), spec.clone());
    }
    toml::to_string(&one).map_err(crate::error::ControlError::internal)
}

impl Control {
    /// Compares each environment with the file last applied to it, and
    /// (with `self_heal`, on the controller) re-applies the file where it
    /// drifted.
    pub async fn check_drift(self: &Arc<Self>, self_heal: bool) -> ControlResult<()> {
        // A release whose node died (or restarted) without taking the
        // lead is found here too, not only when a node takes it.
        if self.is_controller() {
            self.recover_releases().await?;
        }
        // An environment a release is changing now is between two files:
        // it is checked once the release has ended.
        let releases = self.state.releases(20).await?;
        let changing: Vec<String> = releases
            .iter()
            .filter(|r| r.state == "running")
            .flat_map(|r| r.environments.clone())
            .collect();
        for applied in self.state.applied_files(None).await? {
            if changing.contains(&applied.environment) {
                continue;
            }
            let report = self.drift_of(&applied).await;
            let drifted = !report.differences.is_empty() || report.error.is_some();
            let before = self.drift_reports.replace(report.clone());
            let was = before
                .as_ref()
                .is_some_and(|b| !b.differences.is_empty() || b.error.is_some());
            self.metrics.set_drift(&report, before.as_ref());
            match (was, drifted) {
                (false, true) => tracing::warn!(
                    environment = %applied.environment,
                    file = %applied.file_digest,
                    differences = report.differences.len(),
                    error = report.error.as_deref().unwrap_or(""),
                    first = %report
                        .differences
                        .first()
                        .map(|d| {
                            let at = if d.function.is_empty() { "environment" } else { &d.function };
                            format!("{at} {}: {}", d.field, d.why.as_deref().unwrap_or(""))
                        })
                        .unwrap_or_default(),
                    "environment drifted from the release file last applied"
                ),
                (true, false) => tracing::info!(
                    environment = %applied.environment,
                    file = %applied.file_digest,
                    "environment matches the release file last applied again"
                ),
                _ => {}
            }
            if was != drifted && self.is_controller() {
                self.notify_drift(&applied, &report, drifted);
            }
            if self_heal && drifted && report.error.is_none() && self.is_controller() {
                // A self-heal of this very file that failed (and went
                // back) would fail again: not tried in a loop.
                let digest = crate::desired::file_digest(&applied.file);
                let failed_before = releases
                    .iter()
                    .find(|r| r.environments.contains(&applied.environment))
                    .is_some_and(|r| {
                        r.actor == SELF_HEAL && r.state == "failed" && r.file_digest == digest
                    });
                if failed_before {
                    tracing::debug!(environment = %applied.environment, "self-heal of this file failed before; not tried again");
                } else {
                    self.heal(&applied).await;
                }
            }
        }
        Ok(())
    }

    /// Tells the environment's `notify` URL (from the file last applied)
    /// that it drifted or matches again, off the checker's path.
    fn notify_drift(&self, applied: &AppliedFile, report: &DriftReport, drifted: bool) {
        let Some(url) = crate::desired::parse(&applied.file)
            .ok()
            .and_then(|f| f.environments.get(&applied.environment)?.notify.clone())
        else {
            return;
        };
        let body = serde_json::json!({
            "event": if drifted { "drifted" } else { "in_sync" },
            "environment": report.environment,
            "file_digest": report.file_digest,
            "commit": report.commit,
            "applied_by": report.applied_by,
            "differences": report.differences,
            "error": report.error,
            "at": report.checked_at,
        });
        self.outbound.deliver(
            "drift notification",
            format!("drift of {}", applied.environment),
            url,
            body,
        );
    }

    async fn drift_of(&self, applied: &AppliedFile) -> DriftReport {
        let mut report = DriftReport {
            environment: applied.environment.clone(),
            file_digest: applied.file_digest.clone(),
            commit: applied.commit.clone(),
            applied_at: applied.applied_at,
            applied_by: applied.actor.clone(),
            checked_at: seal_state::now_ms(),
            differences: Vec::new(),
            error: None,
        };
        let checked = match crate::desired::parse(&applied.file) {
            Ok(file) => self.differences(&file).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(d) => report.differences = d,
            Err(e) => report.error = Some(e.public_message()),
        }
        report
    }

    /// Re-applies an environment's file; a refusal (a held version, an
    /// apply already running, a deployment in progress) is logged.
    async fn heal(self: &Arc<Self>, applied: &AppliedFile) {
        // Differences an apply does not clear (a queue the file does not
        // list) or may not (protection and policy need an admin) are
        // reported, not re-applied every check.
        match self.plan_release(&applied.file).await {
            Ok((plan, _)) if plan.steps.is_empty() => {
                tracing::debug!(environment = %applied.environment, "self-heal: applying the file would change nothing; its differences are reported only");
                return;
            }
            Ok((plan, _)) if plan.changes_environment_settings() => {
                tracing::debug!(environment = %applied.environment, "self-heal: the file would change an environment's protection or policy, which needs an admin: `seal apply` it");
                return;
            }
            Ok(_) => {}
            // Refused as it stands (a queue's window, a held version): the
            // drift report says why; trying again each check would not.
            Err(e) => {
                let why = e.public_message();
                if self.drift_reports.new_refusal(&applied.environment, &why) {
                    tracing::warn!(environment = %applied.environment, error = %why, "self-heal did not re-apply the release file");
                }
                return;
            }
        }
        let source = FileSource {
            commit: applied.commit.clone(),
            ..Default::default()
        };
        match self
            .apply_release(
                &applied.file,
                false,
                Some(source),
                SELF_HEAL,
                // Never an environment's protection or policy: a deployer
                // may have applied a file whose settings matched then, so
                // putting them back over an admin's change needs an admin.
                Approvals::default(),
            )
            .await
        {
            Ok(a) if a.succeeded => tracing::info!(
                environment = %applied.environment,
                steps = a.plan.steps.len(),
                "self-heal re-applied the release file"
            ),
            Ok(_) => tracing::warn!(
                environment = %applied.environment,
                "self-heal re-applied the release file and a step failed; what it moved went back"
            ),
            Err(e) => tracing::warn!(
                environment = %applied.environment,
                error = %e.public_message(),
                "self-heal did not re-apply the release file"
            ),
        }
    }

    /// The drift checks' last results, per environment.
    pub fn drift(&self) -> Vec<DriftReport> {
        self.drift_reports.all()
    }

    /// Checks for drift every `interval` until `stop`.
    pub async fn run_drift_checks(
        self: Arc<Self>,
        interval: std::time::Duration,
        self_heal: bool,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            match self.check_drift(self_heal).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot check for drift; retrying");
                }
                Err(_) => {}
            }
        }
    }
}
