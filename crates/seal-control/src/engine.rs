//! The control engine: publish and deploy. The only code that writes the
//! state store, the artifact store and the gateway's route table.

use crate::catalog::Catalog;
use crate::error::{ControlError, ControlResult};
use crate::trust::{Approvals, ReleaseChecks};
use seal_oci::ArtifactStore;
use seal_runtime::{Function, Loader};
use seal_serving::{Route, RouteTable, Serving};
use seal_state::{DeploymentKind, StateStore, Strategy};
use seal_state::{DeploymentRecord, NewAudit, NewDeployment, VersionRecord, WeightedVersion};
use serde::Serialize;
use std::sync::Arc;

/// Deploy and progressive delivery over the services they ask: the
/// catalog (verified loads), trust (policy and the permission gate),
/// settings and usage. The one place a route changes.
pub struct Control {
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) oci: Arc<dyn ArtifactStore>,
    pub(crate) runtime: Arc<dyn Loader>,
    pub(crate) serving: Arc<Serving>,
    pub(crate) max_upload_bytes: u64,
    pub(crate) default_environment: String,
    /// Publishing and loading versions (and the cache of loaded ones).
    pub(crate) catalog: Arc<Catalog>,
    /// Attestations, policies and the permission gate.
    pub(crate) trust: crate::trust::TrustService,
    /// The server's own signing key (derived from the master key: the
    /// same on every node), for the attestations it makes itself.
    pub(crate) server_key: seal_trust::SigningKey,
    /// Serialises route changes so each deployment sees the route it replaces.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    /// Running progressive deployments and their live views.
    pub(crate) rollouts: crate::rollout::Rollouts,
    /// Notifications, budget webhooks and rollout hooks.
    pub(crate) outbound: crate::outbound::Outbound,
    /// Where hooks reach the gateway (set once the listener is bound).
    gateway_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Cost and budgets.
    pub(crate) usage: crate::usage::UsageService,
    /// `/metrics` and the deployment SLIs.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Deployment transitions as spans, when traces are exported.
    pub(crate) tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    /// Config and secrets.
    pub(crate) settings: crate::settings::SettingsService,
    /// The preview tokens of deployments in progress.
    pub(crate) previews: crate::preview::PreviewTokens,
    /// Which environments are protected.
    pub(crate) protection: Arc<crate::protection::Protection>,
    /// Queues, triggers, event delivery and cron ticks.
    pub(crate) events: Arc<crate::events::EventsService>,
    /// This node among the others on a shared store, and whether it is the
    /// controller.
    pub(crate) cluster: crate::cluster::Membership,
    /// The releases this process is carrying out.
    pub(crate) carrying: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// The last drift check of each environment.
    pub(crate) drift_reports: crate::drift::DriftReports,
}

impl Control {
    pub fn new(
        state: Arc<dyn StateStore>,
        oci: Arc<dyn ArtifactStore>,
        runtime: Arc<dyn Loader>,
        serving: Arc<Serving>,
        max_upload_bytes: u64,
        default_environment: String,
        secrets: crate::settings::SecretBox,
    ) -> Self {
        let outbound = crate::outbound::Outbound::new(Default::default());
        let catalog = Arc::new(Catalog::new(
            state.clone(),
            oci.clone(),
            runtime.clone(),
            max_upload_bytes,
        ));
        let metrics = Arc::new(crate::metrics::Metrics::new(
            serving.clone(),
            runtime.clone(),
        ));
        let previews = secrets.preview_tokens();
        let server_key = secrets.server_key();
        let server_public = server_key.public_key();
        let protection = Arc::new(crate::protection::Protection::new(&default_environment));
        let events = Arc::new(crate::events::EventsService::new(
            state.clone(),
            serving.clone(),
            default_environment.clone(),
            metrics.events.clone(),
        ));
        Self {
            events,
            cluster: Default::default(),
            previews,
            server_key,
            trust: crate::trust::TrustService::new(
                state.clone(),
                oci.clone(),
                catalog.clone(),
                protection.clone(),
            )
            .with_server_key(server_public),
            protection,
            settings: crate::settings::SettingsService::new(
                state.clone(),
                serving.clone(),
                secrets,
            ),
            usage: crate::usage::UsageService::new(
                state.clone(),
                serving.clone(),
                metrics.clone(),
                outbound.clone(),
            ),
            catalog,
            metrics,
            tracer: None,
            state,
            oci,
            runtime,
            serving,
            max_upload_bytes,
            default_environment,
            deploy_lock: tokio::sync::Mutex::new(()),
            rollouts: crate::rollout::Rollouts::default(),
            outbound,
            gateway_addr: std::sync::OnceLock::new(),
            carrying: Default::default(),
            drift_reports: Default::default(),
        }
    }

    /// Webhooks and notifications go out under this client's address
    /// policy (the default allows public addresses only).
    pub fn with_outbound(mut self, outbound: crate::outbound::Outbound) -> Self {
        self.usage.outbound = outbound.clone();
        self.outbound = outbound;
        self
    }

    /// Keeps events in `queues` (a broker) instead of the state store.
    /// Call before anything else holds the events service.
    pub fn with_queues(mut self, queues: Arc<dyn seal_state::Queues>) -> Self {
        Arc::get_mut(&mut self.events)
            .expect("with_queues is called while the control plane is being built")
            .set_queues(queues);
        self
    }

    /// Exports deployment transitions as spans through `tracer`.
    pub fn with_tracer(mut self, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Writes each function's generated dashboard and alert rules under
    /// `dir` whenever one of its deployments ends.
    pub fn with_monitoring_dir(mut self, dir: std::path::PathBuf) -> Self {
        if let Err(e) = crate::monitoring::write_environment_rules(&dir) {
            tracing::warn!(error = %e, "cannot write the generated environment rules");
        }
        self.usage.monitoring = crate::usage::MonitoringFiles(Some(dir));
        self
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Everything that follows a committed deployment transition: its span,
    /// and when it ended, the SLI metrics and the regenerated dashboard and
    /// rules. Never fails the transition.
    pub(crate) fn observe_transition(&self, d: &DeploymentRecord, event: &str) {
        crate::telemetry::transition_span(self.tracer.as_ref(), d, event);
        if d.is_active() {
            return;
        }
        self.metrics.deployment_ended(d, &self.serving);
        if self.usage.monitoring.0.is_some() {
            let files = self.usage.monitoring.clone();
            let function = d.function.clone();
            let state = self.state.clone();
            tokio::spawn(async move { files.write(&*state, &function).await });
        }
    }

    pub fn set_gateway_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.gateway_addr.set(addr);
    }

    pub fn gateway_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway_addr.get().copied()
    }

    pub fn rollouts(&self) -> &crate::rollout::Rollouts {
        &self.rollouts
    }

    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// Queues, triggers, event delivery and cron ticks.
    pub fn events(&self) -> &Arc<crate::events::EventsService> {
        &self.events
    }

    /// Publishing and loading versions.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Config and secrets.
    pub fn settings(&self) -> &crate::settings::SettingsService {
        &self.settings
    }

    /// Attestations, policies, `verify`.
    pub fn trust(&self) -> &crate::trust::TrustService {
        &self.trust
    }

    /// Cost and budgets.
    pub fn usage(&self) -> &crate::usage::UsageService {
        &self.usage
    }

    /// Checks a version a deployment is about to name against the
    /// environment's policy and loads it; a refusal (policy, damaged or
    /// unloadable artifact) is written to the audit log before it returns.
    pub(crate) async fn load_for_route(
        &self,
        v: &VersionRecord,
        env: &str,
        action: &str,
        actor: &str,
    ) -> ControlResult<(Arc<Function>, Vec<String>)> {
        let checked = match self.trust.check_policy(v, env).await {
            Ok(checks) => self.catalog.load(v).await.map(|f| (f, checks)),
            Err(e) => Err(e),
        };
        match checked {
            Ok(ok) => Ok(ok),
            Err(e) => {
                if !matches!(e, ControlError::PolicyRefused(_)) {
                    self.metrics.artifact_fetch_failed(&v.function);
                }
                let _ = self
                    .state
                    .audit(NewAudit {
                        actor,
                        action,
                        object: &format!("{env}/{}", v.function),
                        digest: Some(&v.digest),
                        outcome: "refused",
                        detail: serde_json::json!({"version": v.version, "error": e.public_message()}),
                    })
                    .await;
                Err(e)
            }
        }
    }

    /// Rebuilds the route table from the state store and swaps it into the
    /// gateway. A version that cannot be loaded is left out (and logged):
    /// a route never names a version that cannot serve. When the store
    /// cannot be reached, nothing is swapped.
    pub async fn reload_routes(&self) -> ControlResult<()> {
        self.protection
            .replace(self.state.environment_protection().await?);
        let mut routes = Vec::new();
        for r in self.state.routes().await? {
            let mut backends = Vec::new();
            for w in &r.weights {
                let Some(v) = self.state.version(&r.function, w.version).await? else {
                    tracing::error!(function = %r.function, version = w.version, "route names an unknown version");
                    continue;
                };
                let loaded = match self.trust.check_policy(&v, &r.environment).await {
                    Ok(_) => self.catalog.load(&v).await,
                    Err(e) => Err(e),
                };
                match loaded {
                    // The store went away mid-rebuild: keep the table the
                    // gateway has rather than drop versions that can serve.
                    Err(e @ ControlError::StateUnavailable(_)) => return Err(e),
                    Ok(f) => backends.push(self.serving.backend(
                        &r.environment,
                        &r.function,
                        w.version,
                        &v.digest,
                        w.weight,
                        f,
                    )),
                    Err(e) => {
                        self.metrics.artifact_fetch_failed(&r.function);
                        tracing::error!(
                            function = %r.function, environment = %r.environment, version = w.version,
                            error = %e, "version cannot serve; left out of the route"
                        )
                    }
                }
            }
            if !backends.is_empty() {
                let sticky = r
                    .sticky_header
                    .as_deref()
                    .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
                let token = r.preview.map(|v| {
                    self.previews
                        .token(&r.environment, &r.function, r.deployment_id, v)
                });
                routes.push(
                    self.protected(
                        Route::new(&r.environment, &r.function, backends)
                            .with_sticky_header(sticky)
                            .with_preview(r.preview, token),
                    ),
                );
            }
        }
        let table = RouteTable::new(routes);
        self.serving.publish(table);
        Ok(())
    }

    /// Follows the changes other nodes commit to a shared store: each
    /// time the store's change revision moves (announced, or seen by the
    /// poll every `poll`), the routes, config and secrets and trigger
    /// bindings are read again. Does nothing on a store no other node
    /// writes. `loaded` is the revision read before start-up loaded its
    /// routes and settings, so a change committed meanwhile is applied
    /// and nothing is read twice.
    pub async fn follow_changes(
        self: Arc<Self>,
        loaded: i64,
        poll: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if !self.state.shared() {
            return;
        }
        let mut seen = loaded;
        // Said once when the store goes away and once when it is back,
        // not at every retry.
        let mut failing = false;
        loop {
            let next = tokio::select! {
                r = self.state.wait_for_change(seen, poll) => r,
                _ = stop.cancelled() => return,
            };
            let failed = match next {
                Ok(r) if r != seen => match self.apply_store_changes().await {
                    Ok(()) => {
                        tracing::debug!(revision = r, "applied changes from the shared store");
                        seen = r;
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            match (&failed, failing) {
                (Some(e), false) => tracing::warn!(error = %e,
                    "cannot follow the shared store; the gateway keeps its routes, retrying"),
                (None, true) => tracing::info!("following the shared store again"),
                _ => {}
            }
            failing = failed.is_some();
            if failing {
                tokio::select! {
                    _ = tokio::time::sleep(poll.min(std::time::Duration::from_secs(1))) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// The store's change revision, read before start-up loads what it
    /// follows (see [`Self::follow_changes`]).
    pub async fn change_revision(&self) -> ControlResult<i64> {
        Ok(self.state.change_revision().await?)
    }

    /// Re-reads what another node may have changed; the controller adopts
    /// the deployments other nodes started.
    async fn apply_store_changes(self: &Arc<Self>) -> ControlResult<()> {
        self.reload_routes().await?;
        self.settings().apply_all_settings().await?;
        self.events().triggers_changed();
        self.load_captures().await?;
        self.load_flags().await?;
        if self.is_controller() && self.state.shared() {
            self.resume_rollouts().await?;
            self.answer_commands().await?;
        }
        Ok(())
    }

    /// Every route is built through here: it carries its environment's
    /// protection (a pinned request there needs the preview token).
    pub(crate) fn protected(&self, route: Route) -> Route {
        let protected = self.protection.is_protected(&route.environment);
        route.with_protected(protected)
    }

    /// `seal events replay`: events sent once to one version, only in an
    /// environment that is not protected (a replay there would run
    /// production's code on events outside its queues' rules; redrive the
    /// dead letters instead).
    pub async fn replay_events(
        &self,
        function: &str,
        req: &seal_api_types::events::ReplayRequest,
        actor: &str,
    ) -> ControlResult<seal_api_types::events::ReplayAnswer> {
        let environment = req
            .environment
            .clone()
            .unwrap_or_else(|| self.default_environment().to_owned());
        if self.protection.is_protected(&environment) {
            return Err(ControlError::forbidden(format!(
                "{environment} is protected: replay events to a version in another environment, or redrive the dead letters to its route"
            )));
        }
        self.events.replay(function, &environment, req, actor).await
    }

    /// Whether an environment is protected, and why.
    pub fn protection_of(&self, environment: &str) -> (bool, crate::protection::Source) {
        self.protection.of(environment)
    }

    /// An admin sets an environment's protection (`None`: back to the
    /// server's rule). Committed with its audit entry, then every route of
    /// the environment is republished with it, under the deploy lock so no
    /// route change in between is lost.
    pub async fn set_protection(
        &self,
        environment: &str,
        protected: Option<bool>,
        actor: &str,
    ) -> ControlResult<()> {
        validate_environment_name(environment)?;
        let _guard = self.deploy_lock.lock().await;
        if !self
            .state
            .set_environment_protected(environment, protected, actor)
            .await?
        {
            self.environment_must_exist(environment).await?;
            // Created since the write: nothing was stored, so nothing is
            // applied either.
            return Err(ControlError::conflict(format!(
                "environment {environment} was created while its protection was being set; try again"
            )));
        }
        self.protection.set(environment, protected);
        let current = self.serving.table();
        let routes: Vec<Route> = current
            .routes()
            .map(|r| {
                let r = (**r).clone();
                if r.environment == environment {
                    self.protected(r)
                } else {
                    r
                }
            })
            .collect();
        self.serving.publish(RouteTable::new(routes));
        tracing::info!(environment, ?protected, "environment protection changed");
        Ok(())
    }

    /// 404 `unknown function` unless the function exists.
    pub async fn function_or_404(&self, function: &str) -> ControlResult<()> {
        crate::lookup::function_must_exist(&*self.state, function).await
    }

    pub async fn version_or_404(
        &self,
        function: &str,
        version: u64,
    ) -> ControlResult<VersionRecord> {
        crate::lookup::version_must_exist(&*self.state, function, version).await
    }

    /// The named environment (default: the server's), which must exist:
    /// a typo must not create a new environment.
    pub(crate) async fn environment_or_default(
        &self,
        environment: Option<&str>,
    ) -> ControlResult<String> {
        let env = environment.unwrap_or(&self.default_environment);
        validate_environment_name(env)?;
        self.environment_must_exist(env).await?;
        Ok(env.to_owned())
    }

    /// `UnknownEnvironment` unless `env` exists.
    pub async fn environment_must_exist(&self, env: &str) -> ControlResult<()> {
        crate::lookup::environment_must_exist(&*self.state, env).await
    }

    pub async fn create_environment(&self, name: &str, actor: &str) -> ControlResult<bool> {
        validate_environment_name(name)?;
        Ok(self.state.create_environment(name, actor).await?)
    }

    /// All-at-once deployment of `function@version` to an environment.
    pub async fn deploy(
        &self,
        function: &str,
        version: u64,
        environment: Option<&str>,
        reason: Option<&str>,
        actor: &str,
        approvals: Approvals,
    ) -> ControlResult<DeployOutcome> {
        let env = self.environment_or_default(environment).await?;
        let v = self.version_or_404(function, version).await?;
        let _guard = self.deploy_lock.lock().await;
        let to = vec![WeightedVersion {
            version,
            weight: 100,
        }];
        self.switch_locked(
            &env,
            &v,
            to,
            DeploymentKind::Deploy,
            reason,
            actor,
            Some(approvals),
        )
        .await
    }

    /// Returns the route to the version that served before the current one
    /// (or to `to`).
    pub async fn rollback(
        &self,
        function: &str,
        environment: Option<&str>,
        to: Option<u64>,
        actor: &str,
        approvals: Approvals,
    ) -> ControlResult<DeployOutcome> {
        self.rollback_because(function, environment, to, None, actor, approvals)
            .await
    }

    /// [`Self::rollback`] with the reason recorded on the deployment.
    pub(crate) async fn rollback_because(
        &self,
        function: &str,
        environment: Option<&str>,
        to: Option<u64>,
        reason: Option<&str>,
        actor: &str,
        approvals: Approvals,
    ) -> ControlResult<DeployOutcome> {
        let env = self.environment_or_default(environment).await?;
        self.function_or_404(function).await?;
        // The target is worked out under the lock, from the route as it is
        // now, so a deploy landing meanwhile cannot make it stale.
        let _guard = self.deploy_lock.lock().await;
        let Some(current) = self.state.route(&env, function).await? else {
            return Err(ControlError::conflict(format!(
                "{function} has no route in {env}: nothing to roll back"
            )));
        };
        let target = match to {
            Some(n) => n,
            None => {
                let latest = self
                    .state
                    .deployment(current.deployment_id)
                    .await?
                    .map(|(d, _)| d);
                let previous = latest
                    .and_then(|d| d.from_weights)
                    .and_then(|w| w.iter().max_by_key(|w| w.weight).map(|w| w.version));
                previous.ok_or_else(|| {
                    ControlError::NoPreviousVersion(format!(
                        "{function} has no previous version in {env} to roll back to; name the version to return to"
                    ))
                })?
            }
        };
        let v = self.version_or_404(function, target).await?;
        // A rollback returns to an approved state; a target that never
        // served here is a deploy in disguise and passes the permission gate.
        let served_here = self
            .state
            .deployments(function, Some(&env))
            .await?
            .iter()
            .any(|d| {
                d.to_weights
                    .iter()
                    .any(|w| w.version == target && w.weight > 0)
            });
        let gate = (!served_here).then_some(approvals);
        let to = vec![WeightedVersion {
            version: target,
            weight: 100,
        }];
        self.switch_locked(&env, &v, to, DeploymentKind::Rollback, reason, actor, gate)
            .await
    }

    /// Moves a route; the caller holds `deploy_lock`. With `gate` =
    /// `Some(approvals)` the target also passes the permission and
    /// contract gates, after the policy check (an untrusted artifact is
    /// refused whatever it asks for).
    #[allow(clippy::too_many_arguments)]
    async fn switch_locked(
        &self,
        env: &str,
        v: &VersionRecord,
        to: Vec<WeightedVersion>,
        kind: DeploymentKind,
        reason: Option<&str>,
        actor: &str,
        gate: Option<Approvals>,
    ) -> ControlResult<DeployOutcome> {
        if let Some(busy) = self.active_deployment(env, &v.function).await? {
            return Err(seal_state::StateError::Busy {
                id: busy.id,
                function: busy.function,
                environment: busy.environment,
            }
            .into());
        }
        let current = self.state.route(env, &v.function).await?;
        let previous = self.serving.table();
        let live = previous.get(env, &v.function);
        let live_matches = live.is_some_and(|r| {
            r.backends.len() == to.len()
                && r.backends
                    .iter()
                    .zip(&to)
                    .all(|(b, w)| b.version == w.version && b.weight == w.weight)
        });
        if live_matches && current.as_ref().is_some_and(|c| c.weights == to) {
            return Ok(DeployOutcome {
                deployment: None,
                unchanged: true,
                weights: to,
                permissions: None,
                contracts: None,
                trust: Vec::new(),
            });
        }
        // Load (and so verify) the target before anything is recorded: a
        // version that cannot serve never gets a route.
        let (function, trust) = self.load_for_route(v, env, kind.as_str(), actor).await?;
        let checks = match gate {
            Some(approvals) => {
                let checks = self.trust.check_release(env, v, approvals, actor).await?;
                self.check_evidence(env, v, approvals, actor).await?;
                checks
            }
            None => ReleaseChecks::default(),
        };
        let started = std::time::Instant::now();
        let deployment = self
            .state
            .record_deployment(NewDeployment {
                function: &v.function,
                environment: env,
                kind,
                strategy: Strategy::AllAtOnce,
                from_weights: current.as_ref().map(|c| c.weights.as_slice()),
                to_weights: &to,
                actor,
                reason,
                digest: Some(&v.digest),
            })
            .await?;
        // Committed; now the swap. Only this route changes: the others are
        // carried over from the current snapshot as they are.
        let mut routes: Vec<Route> = previous
            .routes()
            .filter(|r| !(r.environment == env && r.function == v.function))
            .map(|r| (**r).clone())
            .collect();
        routes.push(self.protected(Route::new(
            env,
            &v.function,
            vec![
                self.serving
                    .backend(env, &v.function, v.version, &v.digest, 100, function),
            ],
        )));
        let table = RouteTable::new(routes);
        self.catalog.retain_loaded(&table, &previous);
        self.serving.publish(table);
        tracing::info!(
            function = %v.function, environment = env, version = v.version, digest = %v.digest,
            deployment = deployment.id, kind = kind.as_str(), swap_us = started.elapsed().as_micros() as u64,
            "route switched"
        );
        self.observe_transition(&deployment, deployment.state.as_str());
        Ok(DeployOutcome {
            deployment: Some(deployment),
            unchanged: false,
            weights: to,
            permissions: checks.permissions,
            contracts: checks.contracts,
            trust,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct DeployOutcome {
    pub deployment: Option<DeploymentRecord>,
    pub unchanged: bool,
    pub weights: Vec<WeightedVersion>,
    /// What the new version may do that the one it replaces may not (and
    /// the reverse); null when nothing served before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<crate::trust::PermissionChange>,
    /// What the new version changes in the event contracts of the one it
    /// replaces; absent when nothing changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contracts: Option<crate::trust::ContractChanges>,
    /// What the environment's policy checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<String>,
}

/// An environment name a request may use (400 otherwise).
fn validate_environment_name(env: &str) -> ControlResult<()> {
    seal_artifact::validate_environment_name(env)
        .map_err(|e| ControlError::bad_request(e.to_string()))
}
