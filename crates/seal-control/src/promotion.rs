//! Promotion: an environment's pipeline — the environment a version must
//! have served in first, and the evidence it needs there (a soak: served
//! long enough, taking all of that environment's traffic, with traffic,
//! and never rolled back; a passed verification) — checked at every
//! deploy that names a version, by the same gate as permissions and
//! contracts. An admin may override it; the override is audited with what
//! lacked. Promotion moves the same digest: nothing is rebuilt.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use crate::trust::Approvals;
use seal_api_types::DeploymentState;
use seal_api_types::promotion::{Evidence, Pipeline, PipelineView, SetPipeline};
use seal_state::{NewAudit, VersionRecord};

/// The longest soak a pipeline may ask for.
pub const MAX_SOAK_MS: u64 = 30 * 24 * 3_600_000;

/// How deep a chain of pipelines may go (production after staging after
/// dev …): a longer one is refused as if it were a cycle.
const MAX_CHAIN: usize = 32;

/// A duration as people write it (`12m`, `1h 30m`), to the second.
pub(crate) fn human(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

impl Control {
    /// An environment's pipeline, with who set it and when.
    pub async fn pipeline_of(&self, env: &str) -> ControlResult<Option<PipelineView>> {
        match self.state.pipeline(env).await? {
            Some((value, updated_at, updated_by)) => Ok(Some(PipelineView {
                pipeline: serde_json::from_value(value).map_err(ControlError::internal)?,
                updated_at,
                updated_by,
            })),
            None => Ok(None),
        }
    }

    /// The environments whose pipeline follows `env`.
    pub async fn followers(&self, env: &str) -> ControlResult<Vec<String>> {
        let mut out = Vec::new();
        for (name, value) in self.state.pipelines().await? {
            let p: Pipeline = serde_json::from_value(value).map_err(ControlError::internal)?;
            if p.after == env {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Sets (or with `standalone` removes) an environment's pipeline;
    /// a field the request leaves out keeps its value. Refused: an
    /// environment that does not exist (either one), one that follows
    /// itself or makes a cycle, a soak over 30 days. Audited.
    pub async fn set_pipeline(
        &self,
        env: &str,
        req: &SetPipeline,
        actor: &str,
    ) -> ControlResult<Option<PipelineView>> {
        self.environment_must_exist(env).await?;
        if req.standalone {
            if req.after.is_some() || req.soak_ms.is_some() || req.require_verification.is_some() {
                return Err(ControlError::bad_request(
                    "standalone removes the pipeline: give no after, soak or require_verification with it",
                ));
            }
            self.state.set_pipeline(env, None, actor).await?;
            tracing::info!(environment = env, "pipeline removed");
            return Ok(None);
        }
        let current = self.pipeline_of(env).await?.map(|v| v.pipeline);
        let after = match (&req.after, &current) {
            (Some(a), _) => a.clone(),
            (None, Some(c)) => c.after.clone(),
            (None, None) => {
                return Err(ControlError::bad_request(format!(
                    "{env} follows no environment yet: name the one it follows (--after staging)"
                )));
            }
        };
        if after == env {
            return Err(ControlError::bad_request(format!(
                "{env} cannot follow itself"
            )));
        }
        self.environment_must_exist(&after).await?;
        // No cycle: the chain from `after` must never come back here.
        let mut chain = vec![env.to_owned(), after.clone()];
        let mut at = after.clone();
        while let Some(p) = self.pipeline_of(&at).await? {
            chain.push(p.pipeline.after.clone());
            if p.pipeline.after == env || chain.len() > MAX_CHAIN {
                return Err(ControlError::bad_request(format!(
                    "{env} after {after} makes a cycle: {}",
                    chain.join(" after ")
                )));
            }
            at = p.pipeline.after;
        }
        let soak_ms = match req.soak_ms {
            Some(0) => None,
            Some(ms) if ms > MAX_SOAK_MS => {
                return Err(ControlError::bad_request(format!(
                    "a soak of {} is longer than the 30 days allowed",
                    human(ms)
                )));
            }
            Some(ms) if ms < 1000 => {
                return Err(ControlError::bad_request(
                    "a soak is at least 1s (0 for none)",
                ));
            }
            Some(ms) => Some(ms),
            None => current.as_ref().and_then(|c| c.soak_ms),
        };
        let pipeline = Pipeline {
            after,
            soak_ms,
            require_verification: req
                .require_verification
                .or(current.as_ref().map(|c| c.require_verification))
                .unwrap_or(false),
        };
        let value = serde_json::to_value(&pipeline).map_err(ControlError::internal)?;
        self.state.set_pipeline(env, Some(&value), actor).await?;
        tracing::info!(environment = env, after = %pipeline.after, soak_ms = ?pipeline.soak_ms, require_verification = pipeline.require_verification, "pipeline set");
        self.pipeline_of(env).await
    }

    /// What `v` has, and lacks, to serve in `env`.
    pub async fn evidence(&self, env: &str, v: &VersionRecord) -> ControlResult<Evidence> {
        let pipeline = self.pipeline_of(env).await?.map(|p| p.pipeline);
        let mut evidence = Evidence {
            environment: env.to_owned(),
            function: v.function.clone(),
            version: v.version,
            digest: v.digest.clone(),
            pipeline: pipeline.clone(),
            served_ms: None,
            invocations: 0,
            missing: Vec::new(),
            returning: None,
        };
        let Some(p) = pipeline else {
            return Ok(evidence);
        };
        let name = format!("{}@{}", v.function, v.version);
        // A version that served all of this environment's traffic before
        // was admitted here then: going back to it (a release file
        // reverted, a deploy of the previous version) is a return, as a
        // rollback is, not a promotion (Argo Rollouts' rollback window
        // skips analysis the same way).
        // One rolled back here is no approved state to return to, nor one
        // whose verification was revoked since (a failure is the latest).
        // Nor one rolled back where it came from since.
        let rolled_back_here = self
            .holds_of(env, &v.function)
            .await?
            .iter()
            .chain(self.holds_of(&p.after, &v.function).await?.iter())
            .any(|h| h.version == v.version);
        let revoked = p.require_verification
            && matches!(
                self.last_verification(&p.after, env, v).await?,
                Some((false, _, _))
            );
        if !rolled_back_here
            && !revoked
            && let Some((start, _)) = self.served_run(env, v).await?
        {
            evidence.returning = Some(format!(
                "{name} served all of {env}'s traffic from {}: a return, not a promotion",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(start.max(0) as u64)
                )
            ));
            return Ok(evidence);
        }
        let there = &p.after;
        let run = self.served_run(there, v).await?;
        evidence.served_ms = run.map(|(_, ms)| ms);
        // Counted by every node, persisted every few seconds: this node's
        // count is written first.
        if let Err(e) = self.usage.flush_usage().await {
            tracing::warn!(error = %e, "cannot persist usage before reading a version's evidence");
        }
        // Invocations of its latest run there (by the hour: the hour it
        // started counts whole).
        evidence.invocations = self
            .state
            .usage(&v.function, run.map_or(i64::MAX, |(start, _)| start))
            .await?
            .iter()
            .filter(|u| u.environment == *there && u.version as u64 == v.version)
            .map(|u| u.invocations.max(0) as u64)
            .sum();
        let held = self
            .holds_of(there, &v.function)
            .await?
            .into_iter()
            .find(|h| h.version == v.version);
        if let Some(h) = held {
            evidence.missing.push(format!(
                "{name} was rolled back in {there} (deployment {}, by {}: {}); a rolled-back version is not promoted",
                h.deployment, h.by, h.reason
            ));
        }
        match (evidence.served_ms, p.soak_ms) {
            (None, soak) => evidence.missing.push(format!(
                "{name} never served all of {there}'s traffic{}",
                soak.map(|s| format!(" ({} required)", human(s)))
                    .unwrap_or_default()
            )),
            (Some(served), Some(soak)) if served < soak => evidence.missing.push(format!(
                "{name} served {} in {there}, {} required",
                human(served),
                human(soak)
            )),
            _ => {}
        }
        if evidence.served_ms.is_some() && p.soak_ms.is_some() && evidence.invocations == 0 {
            evidence.missing.push(format!(
                "{name} served no traffic in {there}: a soak counts only with invocations"
            ));
        }
        if p.require_verification {
            match self.last_verification(there, env, v).await? {
                Some((true, _, _)) => {}
                Some((false, at, verdict)) => evidence.missing.push(format!(
                    "{name}'s last verification in {there} failed at {at} ({verdict}); a failed verification revokes an earlier pass"
                )),
                None => evidence.missing.push(format!(
                    "{name} has no passed verification in {there} (`seal verify-release {name} --env {there} --replay {env}`)"
                )),
            }
        }
        Ok(evidence)
    }

    /// When `v`'s latest run serving all of `env`'s traffic began and how
    /// long it has lasted (to now, or to the deployment that moved traffic from it);
    /// none if it never did. A canary of another version that was rolled
    /// back or aborted does not end the run: the traffic came back.
    async fn served_run(&self, env: &str, v: &VersionRecord) -> ControlResult<Option<(i64, u64)>> {
        let mut deployments = self.state.deployments(&v.function, Some(env)).await?;
        deployments.sort_by_key(|d| d.id);
        let full = |d: &seal_state::DeploymentRecord| {
            d.to_weights
                .iter()
                .any(|w| w.version == v.version && w.weight == 100)
        };
        let mut run: Option<(i64, Option<i64>)> = None;
        for d in &deployments {
            let moved_away = !full(d)
                && (d.is_active() || d.state == DeploymentState::Succeeded)
                && run.is_some_and(|(_, end)| end.is_none());
            if moved_away && let Some((start, None)) = run {
                run = Some((start, Some(d.created_at)));
            }
            if full(d) && d.state == DeploymentState::Succeeded {
                let start = d.finished_at.unwrap_or(d.created_at);
                match run {
                    // Still serving: the run goes on.
                    Some((_, None)) => {}
                    _ => run = Some((start, None)),
                }
            }
        }
        Ok(run.map(|(start, end)| {
            let end = end.unwrap_or_else(seal_state::now_ms);
            (start, end.saturating_sub(start).max(0) as u64)
        }))
    }

    /// The pipeline gate of a deploy: refused (and audited) unless the
    /// version has the evidence `env`'s pipeline asks for, or an admin
    /// overrides it (audited with what lacked).
    pub(crate) async fn check_evidence(
        &self,
        env: &str,
        v: &VersionRecord,
        approvals: Approvals,
        actor: &str,
    ) -> ControlResult<()> {
        let evidence = self.evidence(env, v).await?;
        if evidence.missing.is_empty() {
            // A soak that let a version through is recorded once, signed,
            // beside its verification summaries.
            if let (Some(p), Some(served)) = (&evidence.pipeline, evidence.served_ms)
                && let Some(soak) = p.soak_ms
                && let Err(e) = self
                    .attest_soak(v, &p.after, served, soak, evidence.invocations)
                    .await
            {
                tracing::warn!(error = %e, function = %v.function, version = v.version, "cannot record the completed soak");
            }
            return Ok(());
        }
        let overridden = approvals.missing_evidence;
        let _ = self
            .state
            .audit(NewAudit {
                actor,
                action: "deploy",
                object: &format!("{env}/{}", v.function),
                digest: Some(&v.digest),
                outcome: if overridden {
                    "evidence_overridden"
                } else {
                    "refused"
                },
                detail: serde_json::json!({
                    "version": v.version,
                    "pipeline": evidence.pipeline,
                    "missing": evidence.missing,
                }),
            })
            .await;
        if overridden {
            tracing::warn!(environment = env, function = %v.function, version = v.version, missing = ?evidence.missing, actor, "deploy without its pipeline's evidence, by an admin's override");
            return Ok(());
        }
        Err(ControlError::EvidenceMissing(format!(
            "{}@{} may not serve in {env} yet: {} (an admin may deploy it anyway with --allow-missing-evidence)",
            v.function,
            v.version,
            evidence.missing.join("; ")
        )))
    }
}
