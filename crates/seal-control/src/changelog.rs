//! The change log of a function: each deployment, newest first, linked
//! back to where its version came from (the commit its SLSA provenance
//! names, the apply and release-file commit in its reason) and forward to
//! how it ended (succeeded, rolled back by which gate with its numbers,
//! aborted by a hook, still held).

use crate::engine::Control;
use crate::error::ControlResult;
use seal_api_types::desired::{Changelog, ChangelogEntry};
use seal_state::{DeploymentKind, DeploymentState};
use std::collections::BTreeMap;

impl Control {
    /// `seal changelog`: the deployments of `function` (in `environment`,
    /// or all; since `since_ms`, or all), newest first.
    pub async fn changelog(
        &self,
        function: &str,
        environment: Option<&str>,
        since_ms: Option<i64>,
    ) -> ControlResult<Changelog> {
        self.function_or_404(function).await?;
        if let Some(e) = environment {
            self.environment_must_exist(e).await?;
        }
        let mut provenance: BTreeMap<u64, (String, Option<String>, Option<String>)> =
            BTreeMap::new();
        let mut holds: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        let mut entries = Vec::new();
        for d in self.state.deployments(function, environment).await? {
            if since_ms.is_some_and(|since| d.created_at < since) {
                continue;
            }
            let main = |w: &[seal_state::WeightedVersion]| {
                w.iter().max_by_key(|w| w.weight).map(|w| w.version)
            };
            let version = d
                .candidate
                .filter(|_| d.kind == DeploymentKind::Deploy)
                .or_else(|| main(&d.to_weights))
                .unwrap_or_default();
            let (digest, source, commit) = match provenance.get(&version) {
                Some(known) => known.clone(),
                None => {
                    let digest = self
                        .state
                        .version(function, version)
                        .await?
                        .map(|v| v.digest)
                        .unwrap_or_default();
                    let (source, commit) = self.trust.provenance(&digest).await?;
                    let found = (digest, source, commit);
                    provenance.insert(version, found.clone());
                    found
                }
            };
            let why = match d.state {
                DeploymentState::RolledBack | DeploymentState::Aborted => {
                    let (reason, by) = self.ending(&d).await?;
                    reason.map(|r| format!("{r} (by {by})"))
                }
                _ => None,
            };
            let held = match holds.get(&d.environment) {
                Some(held) => held.contains(&(d.id, version)),
                None => {
                    let held: Vec<(u64, u64)> = self
                        .holds_of(&d.environment, function)
                        .await?
                        .into_iter()
                        .map(|h| (h.deployment, h.version))
                        .collect();
                    let this = held.contains(&(d.id, version));
                    holds.insert(d.environment.clone(), held);
                    this
                }
            };
            entries.push(ChangelogEntry {
                held,
                deployment: d.id,
                environment: d.environment,
                at: d.created_at,
                finished_at: d.finished_at,
                kind: d.kind,
                strategy: d.strategy,
                actor: d.actor,
                version,
                digest,
                from: d.from_weights.as_deref().and_then(main),
                source,
                commit,
                reason: d.reason,
                outcome: d.state,
                why,
            });
        }
        Ok(Changelog {
            function: function.to_owned(),
            entries,
        })
    }
}
