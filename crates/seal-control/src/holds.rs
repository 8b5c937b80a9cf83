//! Holds: a version rolled back in an environment — by a gate, by a
//! failed hook, by a person's abort or `seal rollback` — is held there, so
//! an apply (and later self-heal) will not bring it straight back. The
//! hold is the deployment that rolled the version back (derived from the
//! history, so it is committed with the rollback itself and cannot be
//! lost); `seal hold release` records a release naming that deployment,
//! audited, and a later rollback of the same version holds it again.
//!
//! An apply undoing its own earlier steps (a later step failed, or a
//! restart interrupted it) rolls back with [`UNDONE_BY_APPLY`] as the
//! reason and aborts as [`RELEASE_RECOVERY`]: that judged nothing about
//! the version, so it holds nothing.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_api_types::desired::Hold;
use seal_state::{DeploymentKind, DeploymentRecord, DeploymentState, HoldRelease};
use std::collections::{BTreeMap, BTreeSet};

/// The reason an apply's own undo carries (the start of it).
pub const UNDONE_BY_APPLY: &str = "undone by apply";

/// Who aborts the deployment of a release a restart interrupted: that
/// abort judged nothing about the version either.
pub const RELEASE_RECOVERY: &str = "seal (interrupted release)";

/// Who aborts a release's deployment because a step beside it in its
/// wave failed: that judged nothing about its version.
pub const RELEASE_STOPPED: &str = "seal (release stopped)";

/// The version a deployment rolled back, if it rolled one back.
fn rejected(d: &DeploymentRecord) -> Option<u64> {
    match (d.state, d.kind) {
        (DeploymentState::RolledBack | DeploymentState::Aborted, _) => d.candidate,
        (DeploymentState::Succeeded, DeploymentKind::Rollback)
            if !d
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(UNDONE_BY_APPLY)) =>
        {
            let from = d
                .from_weights
                .as_ref()?
                .iter()
                .max_by_key(|w| w.weight)?
                .version;
            let to = d.to_weights.iter().max_by_key(|w| w.weight)?.version;
            (from != to).then_some(from)
        }
        _ => None,
    }
}

impl Control {
    /// Why a deployment ended and who ended it (`seal`: a gate or a
    /// hook), from the event that ended it.
    pub(crate) async fn ending(
        &self,
        d: &DeploymentRecord,
    ) -> ControlResult<(Option<String>, String)> {
        let event = self.state.deployment(d.id).await?.and_then(|(_, events)| {
            events
                .into_iter()
                .rev()
                .find(|e| e.detail.get("reason").is_some())
        });
        let text = |key: &str| {
            event
                .as_ref()
                .and_then(|e| e.detail.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Ok((
            text("reason"),
            text("by").unwrap_or_else(|| d.actor.clone()),
        ))
    }

    /// The holds of one function in one environment, newest first.
    pub(crate) async fn holds_of(&self, env: &str, function: &str) -> ControlResult<Vec<Hold>> {
        let released: BTreeSet<(u64, u64)> = self
            .state
            .hold_releases(Some(env))
            .await?
            .into_iter()
            .filter(|r| r.function == function)
            .map(|r| (r.version, r.deployment_id))
            .collect();
        // The newest deployment that rolled back each version.
        let mut newest: BTreeMap<u64, DeploymentRecord> = BTreeMap::new();
        for d in self.state.deployments(function, Some(env)).await? {
            if let Some(v) = rejected(&d) {
                newest.entry(v).or_insert(d);
            }
        }
        let mut holds = Vec::new();
        for (version, d) in newest {
            if released.contains(&(version, d.id)) {
                continue;
            }
            let hold = self.hold(version, d).await?;
            if hold.by != RELEASE_RECOVERY && hold.by != RELEASE_STOPPED {
                holds.push(hold);
            }
        }
        holds.sort_by(|a, b| b.at.cmp(&a.at).then(b.deployment.cmp(&a.deployment)));
        Ok(holds)
    }

    async fn hold(&self, version: u64, d: DeploymentRecord) -> ControlResult<Hold> {
        let (reason, by) = if d.kind == DeploymentKind::Rollback {
            let to = d
                .to_weights
                .iter()
                .max_by_key(|w| w.weight)
                .map_or(0, |w| w.version);
            (
                format!("rolled back to {}@{to} with seal rollback", d.function),
                d.actor.clone(),
            )
        } else {
            let (reason, by) = self.ending(&d).await?;
            (
                reason.unwrap_or_else(|| format!("deployment {} {}", d.id, d.state.as_str())),
                by,
            )
        };
        Ok(Hold {
            environment: d.environment.clone(),
            function: d.function.clone(),
            version,
            deployment: d.id,
            at: d.finished_at.unwrap_or(d.created_at),
            by,
            reason,
        })
    }

    /// `seal holds`: every hold in an environment (default: all), newest
    /// first.
    pub async fn holds(&self, environment: Option<&str>) -> ControlResult<Vec<Hold>> {
        let envs = match environment {
            Some(e) => {
                self.environment_must_exist(e).await?;
                vec![e.to_owned()]
            }
            None => self.state.environments().await?,
        };
        let mut holds = Vec::new();
        for env in envs {
            for function in self.state.functions().await? {
                holds.extend(self.holds_of(&env, &function).await?);
            }
        }
        holds.sort_by(|a, b| b.at.cmp(&a.at).then(b.deployment.cmp(&a.deployment)));
        Ok(holds)
    }

    /// `seal hold release fn@N`: the hold on a version is lifted (audited);
    /// `NotFound` when the version is not held there.
    pub async fn release_hold(
        &self,
        function: &str,
        version: u64,
        environment: Option<&str>,
        actor: &str,
    ) -> ControlResult<Hold> {
        let env = self.environment_or_default(environment).await?;
        self.version_or_404(function, version).await?;
        let Some(hold) = self
            .holds_of(&env, function)
            .await?
            .into_iter()
            .find(|h| h.version == version)
        else {
            return Err(ControlError::not_found(format!(
                "{function}@{version} is not held in {env}"
            )));
        };
        self.state
            .release_hold(&HoldRelease {
                environment: env.clone(),
                function: function.to_owned(),
                version,
                deployment_id: hold.deployment,
                released_at: seal_state::now_ms(),
                released_by: actor.to_owned(),
            })
            .await?;
        tracing::info!(function, environment = %env, version, deployment = hold.deployment, "hold released");
        Ok(hold)
    }
}

/// How a plan names a hold it refuses.
pub(crate) fn refusal(h: &Hold) -> ControlError {
    let by = if h.by == "seal" {
        "by seal".to_owned()
    } else {
        format!("by {}", h.by)
    };
    ControlError::conflict(format!(
        "{}@{} is held in {}: rolled back {by} at {} (deployment {}): {}; release it with `seal hold release {}@{} --env {}`",
        h.function,
        h.version,
        h.environment,
        crate::desired::time(h.at),
        h.deployment,
        h.reason,
        h.function,
        h.version,
        h.environment
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use seal_state::{Strategy, WeightedVersion};

    fn d(
        kind: DeploymentKind,
        state: DeploymentState,
        from: u64,
        to: u64,
        reason: Option<&str>,
    ) -> DeploymentRecord {
        let w = |v| {
            vec![WeightedVersion {
                version: v,
                weight: 100,
            }]
        };
        DeploymentRecord {
            id: 1,
            function: "f".into(),
            environment: "production".into(),
            kind,
            strategy: Strategy::Canary,
            state,
            from_weights: Some(w(from)),
            to_weights: w(to),
            actor: "admin".into(),
            reason: reason.map(str::to_owned),
            created_at: 0,
            finished_at: None,
            plan: None,
            baseline: Some(from),
            candidate: Some(to),
            step: 0,
            step_started_at: None,
        }
    }

    #[test]
    fn what_a_deployment_rolled_back_is_held() {
        use DeploymentKind::*;
        use DeploymentState::*;
        // A canary rolled back by a gate, or aborted: its candidate.
        assert_eq!(rejected(&d(Deploy, RolledBack, 1, 2, None)), Some(2));
        assert_eq!(rejected(&d(Deploy, Aborted, 1, 2, None)), Some(2));
        // seal rollback from 2 to 1: 2.
        assert_eq!(rejected(&d(Rollback, Succeeded, 2, 1, None)), Some(2));
        // An apply undoing its own step holds nothing, nor does a deploy.
        assert_eq!(
            rejected(&d(
                Rollback,
                Succeeded,
                2,
                1,
                Some("undone by apply sha256:ab: c failed")
            )),
            None
        );
        assert_eq!(rejected(&d(Deploy, Succeeded, 1, 2, None)), None);
        assert_eq!(rejected(&d(Deploy, Progressing, 1, 2, None)), None);
    }
}
