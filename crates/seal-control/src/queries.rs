//! What callers read and the small writes that are not deployments: the
//! catalog (functions, versions, artifacts), deployment history, the
//! audit log, live views (status, top), cost and budgets.
//! Every read of the stores goes through here, so the API crate never
//! touches a store.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_api_types::access::SettingRevisions;
use seal_api_types::catalog::{
    FunctionList, FunctionStatus, FunctionSummary, Inspection, OciManifest, RouteStatus,
    RouteWeights, ServerInfo, VersionList, VersionStatus,
};
use seal_api_types::observe::{Top, TopRow};
use seal_artifact::{Digest, parse_oci_manifest};
use seal_state::{
    AuditRecord, AuditVerification, DeploymentEvent, DeploymentRecord, TokenRecord, now_ms,
};
use std::sync::atomic::Ordering;

impl Control {
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }

    /// Runtime counters and the server's limits.
    pub fn server_info(&self) -> ServerInfo {
        let stats = self.runtime.stats();
        ServerInfo {
            seal_version: env!("CARGO_PKG_VERSION").to_owned(),
            compiles: stats.compiles.load(Ordering::Relaxed),
            cache_loads: stats.cache_loads.load(Ordering::Relaxed),
            max_upload_bytes: self.max_upload_bytes,
            default_environment: self.default_environment.clone(),
        }
    }

    /// Every function with its version count, latest version and routes.
    pub async fn list_functions(&self) -> ControlResult<FunctionList> {
        let routes = self.state.routes().await?;
        let mut functions = Vec::new();
        for name in self.state.functions().await? {
            let versions = self.state.versions(&name).await?;
            functions.push(FunctionSummary {
                versions: versions.len(),
                latest: versions.last().map(|v| v.version),
                routes: routes
                    .iter()
                    .filter(|r| r.function == name)
                    .cloned()
                    .collect(),
                function: name,
            });
        }
        Ok(FunctionList { functions })
    }

    /// A function's routes, each version's weight and digest, and whether
    /// it serves here now with its live counters.
    pub async fn function_status(&self, function: &str) -> ControlResult<FunctionStatus> {
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
                versions.push(VersionStatus {
                    version: w.version,
                    weight: w.weight,
                    digest,
                    serving: backend.is_some(),
                    requests: backend.map(|b| b.stats.requests()),
                    errors: backend.map(|b| b.stats.errors()),
                });
            }
            routes.push(RouteStatus {
                environment: r.environment,
                deployment_id: r.deployment_id,
                updated_at: r.updated_at,
                versions,
            });
        }
        let versions = self.state.versions(function).await?;
        let drift = self
            .drift()
            .into_iter()
            .flat_map(|r| r.differences)
            .filter(|d| d.function == function)
            .collect();
        Ok(FunctionStatus {
            function: function.to_owned(),
            latest_version: versions.last().map(|v| v.version),
            routes,
            drift,
        })
    }

    pub async fn list_versions(&self, function: &str) -> ControlResult<VersionList> {
        self.function_or_404(function).await?;
        let versions = self.state.versions(function).await?;
        Ok(VersionList {
            function: function.to_owned(),
            versions,
        })
    }

    /// One version in full: its record, its OCI manifest (every blob it
    /// names re-hashed, so `inspect` doubles as a check), and where it is
    /// routed.
    pub async fn inspect_version(&self, function: &str, number: u64) -> ControlResult<Inspection> {
        let v = self.version_or_404(function, number).await?;
        let digest = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let oci = self.oci.clone();
        let oci_manifest = tokio::task::spawn_blocking(move || {
            let bytes = oci.read_blob(&digest)?;
            let refs = parse_oci_manifest(&bytes)?;
            oci.read_blob(&refs.config_digest)?;
            oci.read_blob(&refs.layer_digest)?;
            serde_json::from_slice::<OciManifest>(&bytes).map_err(ControlError::internal)
        })
        .await
        .map_err(ControlError::internal)??;
        let routes: Vec<_> = self
            .state
            .routes()
            .await?
            .into_iter()
            .filter(|r| r.function == function && r.weights.iter().any(|w| w.version == number))
            .map(|r| RouteWeights {
                environment: r.environment,
                weights: r.weights,
            })
            .collect();
        Ok(Inspection {
            version: v,
            oci_manifest,
            verified: true,
            routes,
        })
    }

    /// A function's deployments, newest first.
    pub async fn deployments(
        &self,
        function: &str,
        environment: Option<&str>,
    ) -> ControlResult<Vec<DeploymentRecord>> {
        self.function_or_404(function).await?;
        Ok(self
            .state
            .deployments(function, environment)
            .await?
            .into_iter()
            .map(crate::redact::deployment)
            .collect())
    }

    /// One deployment with its events.
    pub async fn deployment(
        &self,
        id: u64,
    ) -> ControlResult<(DeploymentRecord, Vec<DeploymentEvent>)> {
        self.state
            .deployment(id)
            .await?
            .map(|(d, events)| (crate::redact::deployment(d), events))
            .ok_or_else(|| ControlError::not_found(format!("no deployment {id}")))
    }

    /// The preview token of a deployment in progress, for a caller who may
    /// deploy to its environment (`None` for anyone else, or once it ended).
    pub fn preview_token(
        &self,
        d: &DeploymentRecord,
        who: &crate::tokens::Principal,
    ) -> Option<String> {
        let may_deploy = who.require_role(crate::tokens::Role::Deployer).is_ok()
            && who.require_env(&d.environment).is_ok();
        let candidate = d.candidate?;
        (d.is_active() && may_deploy).then(|| {
            self.previews
                .token(&d.environment, &d.function, d.id, candidate)
        })
    }

    pub async fn environments(&self) -> ControlResult<Vec<String>> {
        Ok(self.state.environments().await?)
    }

    pub async fn audit_log(&self, limit: u32) -> ControlResult<Vec<AuditRecord>> {
        let mut entries = self.state.audit_log(limit).await?;
        for e in &mut entries {
            crate::redact::audit_detail(&mut e.detail);
        }
        Ok(entries)
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
    ) -> ControlResult<SettingRevisions> {
        self.function_or_404(function).await?;
        let revisions = self
            .state
            .setting_revisions(function, environment, 1000)
            .await?;
        Ok(SettingRevisions { revisions })
    }

    /// Every routed version over the last ~10 s: rates, errors, latency.
    pub fn top(&self, environment: Option<&str>) -> Top {
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
                rows.push(TopRow {
                    function: route.function.clone(),
                    environment: route.environment.clone(),
                    version: b.version,
                    digest: b.digest.clone(),
                    weight: b.weight,
                    rps: rate(w.requests),
                    requests: w.requests,
                    errors: w.errors,
                    error_rate: w.error_rate(),
                    p50_ms: w.quantile_us(0.5).map(|u| u as f64 / 1e3),
                    p99_ms: w.quantile_us(0.99).map(|u| u as f64 / 1e3),
                    cold_starts: w.cold_starts,
                    total_requests: b.stats.requests(),
                    total_cold_starts: b.stats.cold_starts(),
                    gb_seconds: b.stats.gb_seconds(),
                });
            }
        }
        rows.sort_by(|a, b| {
            let key = |r: &TopRow| {
                (
                    r.function.clone(),
                    r.environment.clone(),
                    std::cmp::Reverse(r.version),
                )
            };
            key(a).cmp(&key(b))
        });
        Top {
            at: now_ms(),
            window_seconds,
            rows,
        }
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
