//! Progressive delivery: canary, linear and blue/green deployments driven
//! by live per-version telemetry.
//!
//! A deployment is a state machine stored in the state store
//! (`progressing` → `paused` → `succeeded | rolled_back | aborted`), with
//! its plan. One driver task per active deployment ticks every
//! [`TICK`], reads the candidate's and the baseline's telemetry windows
//! (cumulative gateway counters minus a snapshot taken when the step
//! began), evaluates the gates, and moves the route. Every transition is
//! committed (deployment row, event, route, audit) *before* the gateway's
//! table is swapped; a gate evaluation that decides something is written
//! as an event first.
//!
//! The baseline stays in the route at 0% until the deployment ends, so a
//! rollback is a weight change on functions already loaded: a commit and a
//! pointer swap, never a load.

pub mod gates;
pub mod plan;

use crate::cluster::FleetSnapshot;
use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use crate::trust::Approvals;
use gates::{Evaluation, Judge, Verdict};
use plan::{Hook, HookPhase, OnInconclusive, Plan, Planning, RolloutSpec, VersionRef};
use seal_api_types::rollout::{RolloutStatus, StepView, VersionRole, VersionWindow};
use seal_serving::{Backend, Route, RouteTable, Snapshot};
use seal_state::{DeploymentRecord, DeploymentState, NewRollout, Transition, WeightedVersion};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// The tokio clock, so a paused test runtime drives steps and ticks.
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How often a driver looks at the telemetry.
pub const TICK: Duration = Duration::from_millis(100);
/// The window `seal rollout status` reports rates over.
pub const STATUS_WINDOW: Duration = Duration::from_secs(10);

/// What a person can tell a running deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Approve,
    Promote,
    Abort,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        [Command::Approve, Command::Promote, Command::Abort]
            .into_iter()
            .find(|c| c.as_str() == s)
    }

    fn as_str(self) -> &'static str {
        match self {
            Command::Approve => "approve",
            Command::Promote => "promote",
            Command::Abort => "abort",
        }
    }
}

type Reply = oneshot::Sender<ControlResult<DeploymentRecord>>;
/// A command, who sent it, and where the resulting record goes.
type Envelope = (Command, String, Reply);
/// (environment, function, version) → recent (time, snapshot) pairs.
type History = HashMap<(String, String, u64), VecDeque<(Instant, Snapshot)>>;

/// The in-memory side of progressive delivery: a command channel per
/// running driver, the latest evaluation of each, and the history of
/// snapshots `rollout status` computes rates from.
#[derive(Default)]
pub struct Rollouts {
    drivers: Mutex<HashMap<u64, mpsc::Sender<Envelope>>>,
    live: Mutex<HashMap<u64, LiveView>>,
    history: Mutex<History>,
    /// The driver tasks, so the server's shutdown stops and joins them.
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

/// What a driver is doing right now (for `rollout status`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LiveView {
    pub step: usize,
    pub of: usize,
    pub weight: u32,
    pub started_at: i64,
    pub next_at: Option<i64>,
    pub evaluation: Option<Evaluation>,
    pub phase: String,
}

/// What a progressive deploy request did: only planned (`dry_run`), or
/// started (the deployment, its first route, the plan, what the
/// candidate may do that the baseline may not, what the policy checked).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Progressive {
    Planned {
        dry_run: bool,
        plan: Plan,
        permissions: Option<crate::trust::PermissionChange>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contracts: Option<crate::trust::ContractChanges>,
    },
    Started {
        deployment: Box<DeploymentRecord>,
        unchanged: bool,
        weights: Vec<WeightedVersion>,
        plan: Plan,
        permissions: Option<crate::trust::PermissionChange>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contracts: Option<crate::trust::ContractChanges>,
        trust: Vec<String>,
    },
}

/// How a deployment ends.
struct Ending {
    state: DeploymentState,
    event: &'static str,
    weights: Vec<WeightedVersion>,
    detail: Value,
    actor: String,
}

impl Control {
    /// Starts (or, with `dry_run`, only plans) a progressive deployment.
    #[allow(clippy::too_many_arguments)]
    pub async fn deploy_progressive(
        self: &Arc<Self>,
        function: &str,
        version: u64,
        environment: Option<&str>,
        reason: Option<&str>,
        actor: &str,
        spec: RolloutSpec,
        dry_run: bool,
        approvals: Approvals,
    ) -> ControlResult<Progressive> {
        let env = self.environment_or_default(environment).await?;
        let candidate = self.version_or_404(function, version).await?;
        if let Some(url) = &spec.notify {
            self.outbound.check_url("notify URL", url)?;
        }
        let _guard = self.deploy_lock.lock().await;
        if let Some(busy) = self.active_deployment(&env, function).await? {
            return Err(busy_error(&busy));
        }
        // Trust (policy, verified blobs) first: an untrusted artifact is
        // refused whatever it asks for; then the permissions it asks for.
        let (candidate_fn, trust) = self
            .load_for_route(&candidate, &env, "deploy", actor)
            .await?;
        let checks = self
            .trust
            .check_release(&env, &candidate, approvals, actor)
            .await?;
        let current = self.state.route(&env, function).await?;
        let Some(baseline) = current
            .as_ref()
            .and_then(|r| r.weights.iter().max_by_key(|w| w.weight).copied())
        else {
            return Err(ControlError::NoBaseline(format!(
                "{function} serves nothing in {env} yet: a {} needs a baseline to compare with; deploy the first version all-at-once",
                spec.strategy.as_str()
            )));
        };
        if baseline.version == version {
            return Err(ControlError::conflict(format!(
                "{function}@{version} already serves {env}: nothing to roll out"
            )));
        }
        let baseline_v = self.version_or_404(function, baseline.version).await?;
        let current_weights = current.map(|r| r.weights).unwrap_or_default();
        let plan = spec.plan(
            function,
            &env,
            VersionRef {
                version: baseline.version,
                digest: baseline_v.digest.clone(),
            },
            VersionRef {
                version,
                digest: candidate.digest.clone(),
            },
            current_weights.clone(),
        )?;
        if dry_run {
            return Ok(Progressive::Planned {
                dry_run: true,
                plan: crate::redact::plan(plan),
                permissions: checks.permissions,
                contracts: checks.contracts,
            });
        }
        // The pipeline's evidence last, once this is a real deploy (a plan
        // writes no refusal, override or soak record).
        self.check_evidence(&env, &candidate, approvals, actor)
            .await?;
        let plan_json = serde_json::to_value(&plan).map_err(ControlError::internal)?;
        // The baseline is loaded (verified) too before anything is recorded.
        let baseline_fn = self.catalog.load(&baseline_v).await?;
        let weights = plan.weights_at(0);
        let record = self
            .state
            .start_rollout(NewRollout {
                function,
                environment: &env,
                strategy: plan.strategy,
                plan: &plan_json,
                baseline: baseline.version,
                candidate: version,
                from_weights: Some(&current_weights),
                weights: &weights,
                sticky_header: plan.sticky_header.as_deref(),
                actor,
                reason,
                digest: Some(&candidate.digest),
            })
            .await?;
        let backends = vec![
            Arc::new(self.serving.backend(
                &env,
                function,
                version,
                &candidate.digest,
                0,
                candidate_fn,
            )),
            Arc::new(self.serving.backend(
                &env,
                function,
                baseline.version,
                &baseline_v.digest,
                100,
                baseline_fn,
            )),
        ];
        self.swap_route(self.route_for(&plan, record.id, backends, false));
        tracing::info!(function, environment = %env, deployment = record.id, strategy = plan.strategy.as_str(),
            baseline = baseline.version, candidate = version, "progressive deployment started");
        self.notify(&plan, record.id, "started", json!({"weights": weights}));
        self.observe_transition(&record, "started");
        // The controller drives it: this node, or the one that adopts it
        // when it hears of the new route.
        if self.is_controller() {
            self.spawn_driver(record.clone(), plan.clone());
        }
        Ok(Progressive::Started {
            deployment: Box::new(crate::redact::deployment(record)),
            unchanged: false,
            weights,
            plan: crate::redact::plan(plan),
            permissions: checks.permissions,
            contracts: checks.contracts,
            trust,
        })
    }

    pub(crate) async fn active_deployment(
        &self,
        env: &str,
        function: &str,
    ) -> ControlResult<Option<DeploymentRecord>> {
        Ok(self
            .state
            .active_deployments()
            .await?
            .into_iter()
            .find(|d| d.environment == env && d.function == function))
    }

    /// Sends approve / promote / abort to a running deployment and waits
    /// for the transition it causes.
    pub async fn command(
        &self,
        id: u64,
        cmd: Command,
        actor: &str,
    ) -> ControlResult<DeploymentRecord> {
        let Some((d, _)) = self.state.deployment(id).await? else {
            return Err(ControlError::not_found(format!("no deployment {id}")));
        };
        if !d.is_active() {
            return Err(ControlError::NotActive {
                id,
                message: format!(
                    "deployment {id} has already finished ({}): nothing to {}",
                    d.state,
                    cmd.as_str()
                ),
            });
        }
        if cmd == Command::Approve && d.state != DeploymentState::Paused {
            return Err(ControlError::NotPaused(format!(
                "deployment {id} is not waiting for approval (state {}, step {})",
                d.state, d.step
            )));
        }
        let tx = self
            .rollouts
            .drivers
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned());
        let Some(tx) = tx else {
            if self.state.shared() && !self.is_controller() {
                return self.relay_command(id, cmd, actor).await;
            }
            return Err(ControlError::NotRunning(self.not_driven_here(id).await));
        };
        let (reply, rx) = oneshot::channel();
        tx.send((cmd, actor.to_owned(), reply))
            .await
            .map_err(|_| ControlError::conflict(format!("deployment {id} has just finished")))?;
        rx.await
            .map_err(|_| ControlError::conflict(format!("deployment {id} has just finished")))?
            .map(crate::redact::deployment)
    }

    /// A command sent through a node that is not the controller: left in
    /// the store for the controller's driver, its answer awaited.
    async fn relay_command(
        &self,
        id: u64,
        cmd: Command,
        actor: &str,
    ) -> ControlResult<DeploymentRecord> {
        let sent = self.state.send_command(id, cmd.as_str(), actor).await?;
        let deadline = Instant::now() + RELAY_TIMEOUT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(answer) = self.state.command_answer(sent).await? {
                return relayed_answer(&answer);
            }
        }
        Err(ControlError::NotRunning(format!(
            "the controller did not answer the {} of deployment {id} within {}s; see seal cluster status",
            cmd.as_str(),
            RELAY_TIMEOUT.as_secs()
        )))
    }

    /// On the controller: carries out the commands other nodes relayed,
    /// each once, and records each answer.
    pub(crate) async fn answer_commands(self: &Arc<Self>) -> ControlResult<()> {
        for c in self.state.pending_commands().await? {
            if !self.cluster.start_answering(c.id) {
                continue;
            }
            let control = self.clone();
            tokio::spawn(async move {
                let result = match Command::parse(&c.command) {
                    Some(cmd) => control.command(c.deployment, cmd, &c.actor).await,
                    None => Err(ControlError::conflict(format!(
                        "unknown command {}",
                        c.command
                    ))),
                };
                let answer = match result {
                    Ok(record) => json!({"ok": record}),
                    Err(e) => json!({"error": {"code": e.code(), "message": e.to_string()}}),
                };
                if let Err(e) = control
                    .state
                    .answer_command(c.id, &answer.to_string())
                    .await
                {
                    tracing::warn!(command = c.id, error = %e, "cannot record a relayed command's answer");
                }
                control.cluster.done_answering(c.id);
            });
        }
        Ok(())
    }

    /// Why a command for deployment `id` cannot reach its driver here.
    async fn not_driven_here(&self, id: u64) -> String {
        if !self.state.shared() || self.is_controller() {
            return format!("deployment {id} is not running on this server; retry in a moment");
        }
        match self.cluster_status().await {
            Ok(c) => match c.nodes.iter().find(|n| n.controller) {
                Some(n) => format!(
                    "deployment {id} is driven by the controller, node {} (API at {}); send the command through that node",
                    n.name, n.api
                ),
                None => format!(
                    "deployment {id} has no controller right now (the lease is being taken over); retry in a few seconds"
                ),
            },
            Err(_) => {
                format!("deployment {id} is driven by another node; retry through the controller")
            }
        }
    }

    /// The live view of a route: the deployment on it, per-version rates
    /// over the last [`STATUS_WINDOW`], and the latest gate verdicts.
    pub async fn rollout_status(
        &self,
        function: &str,
        environment: Option<&str>,
    ) -> ControlResult<RolloutStatus> {
        let env = self.environment_or_default(environment).await?;
        self.function_or_404(function).await?;
        let deployment = self
            .state
            .deployments(function, Some(&env))
            .await?
            .into_iter()
            .next();
        let active = deployment.as_ref().is_some_and(|d| d.is_active());
        let mut live = deployment.as_ref().filter(|d| d.is_active()).and_then(|d| {
            self.rollouts
                .live
                .lock()
                .ok()
                .and_then(|m| m.get(&d.id).cloned())
        });
        // Driven by another node (the controller): as it last reported.
        if let Some(d) = deployment.as_ref().filter(|d| d.is_active())
            && live.is_none()
            && self.state.shared()
        {
            live = self.controller_live_view(d.id).await;
        }
        let table = self.serving.table();
        let mut versions = Vec::new();
        let mut weights = Vec::new();
        if let Some(route) = table.get(&env, function) {
            for b in &route.backends {
                weights.push(WeightedVersion {
                    version: b.version,
                    weight: b.weight,
                });
                let (window, secs) = self.rollouts.window(&env, function, b);
                let role = match deployment.as_ref().filter(|d| d.is_active()) {
                    Some(d) if d.candidate == Some(b.version) => VersionRole::Candidate,
                    Some(d) if d.baseline == Some(b.version) => VersionRole::Baseline,
                    _ => VersionRole::Stable,
                };
                let summary = gates::summary_of(&window);
                versions.push(VersionWindow {
                    version: b.version,
                    digest: b.digest.clone(),
                    weight: b.weight,
                    role,
                    window_s: secs,
                    requests: window.requests,
                    rps: if secs > 0.0 {
                        window.requests as f64 / secs
                    } else {
                        0.0
                    },
                    errors: window.errors,
                    error_rate: summary.error_rate,
                    p50_ms: summary.p50_ms,
                    p99_ms: summary.p99_ms,
                });
            }
        }
        Ok(RolloutStatus {
            function: function.to_owned(),
            environment: env,
            active,
            deployment: deployment.map(crate::redact::deployment),
            step: live.as_ref().map(|l| StepView {
                index: l.step,
                of: l.of,
                weight: l.weight,
                started_at: l.started_at,
                next_at: l.next_at,
                phase: l.phase.clone(),
            }),
            weights,
            versions,
            gates: live.and_then(|l| l.evaluation),
        })
    }

    /// After a restart: every deployment that was in progress is resumed
    /// from the step it had reached (its clock restarts, its telemetry is
    /// new), or rolled back when its candidate cannot serve.
    pub async fn resume_rollouts(self: &Arc<Self>) -> ControlResult<()> {
        for d in self.state.active_deployments().await? {
            // Under the deploy lock: a deployment this node starts holds it
            // until its driver runs, so it is never adopted twice.
            let _guard = self.deploy_lock.lock().await;
            if self.rollouts.is_driving(d.id) {
                continue;
            }
            let plan: Option<Plan> = d.plan.clone().and_then(|p| serde_json::from_value(p).ok());
            let table = self.serving.table();
            let route = table.get(&d.environment, &d.function);
            let serves = |v: Option<u64>| {
                route.is_some_and(|r| r.backends.iter().any(|b| Some(b.version) == v))
            };
            let Some(plan) = plan else {
                tracing::error!(
                    deployment = d.id,
                    "active deployment without a readable plan"
                );
                continue;
            };
            if !serves(d.candidate) || !serves(d.baseline) {
                let ending = Ending {
                    state: DeploymentState::RolledBack,
                    event: "rolled_back",
                    weights: plan.rollback_target.clone(),
                    detail: json!({"reason": "a version of the deployment could not be loaded when its driver resumed (after a restart or a change of controller)", "gate": null}),
                    actor: "seal".into(),
                };
                if let Err(e) = self.finish_locked(&d, &plan, ending).await {
                    tracing::error!(deployment = d.id, error = %e, "cannot roll back after restart");
                }
                continue;
            }
            let mut detail = json!({"step": d.step, "state": d.state});
            if let Some(fence) = self.fence() {
                detail["controller"] = json!({"node": self.node_name(), "epoch": fence.epoch});
            }
            self.state.record_event(d.id, "resumed", &detail).await?;
            tracing::info!(
                deployment = d.id,
                step = d.step,
                "deployment resumed after restart"
            );
            self.spawn_driver(d, plan);
        }
        Ok(())
    }

    fn spawn_driver(self: &Arc<Self>, d: DeploymentRecord, plan: Plan) {
        let (tx, rx) = mpsc::channel(8);
        if let Ok(mut m) = self.rollouts.drivers.lock() {
            m.insert(d.id, tx);
        }
        let control = self.clone();
        let mut tasks = self
            .rollouts
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget drivers that ended, so the set holds only running ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let id = d.id;
            let mut driver = Driver {
                control: control.clone(),
                plan,
                rx,
                deployment: d,
            };
            if let Err(e) = driver.run().await {
                tracing::error!(deployment = id, error = %e, "deployment driver failed; it resumes on the next start");
            }
            if let Ok(mut m) = control.rollouts.drivers.lock() {
                m.remove(&id);
            }
            if let Ok(mut m) = control.rollouts.live.lock() {
                m.remove(&id);
            }
        });
    }

    /// Swaps one route into the gateway's table, carrying the others over.
    /// The caller holds `deploy_lock`.
    fn swap_route(&self, route: Route) {
        let previous = self.serving.table();
        let mut routes: Vec<Route> = previous
            .routes()
            .filter(|r| !(r.environment == route.environment && r.function == route.function))
            .map(|r| (**r).clone())
            .collect();
        routes.push(route);
        let table = RouteTable::new(routes);
        self.serving.publish(table);
    }

    /// Re-weights the live route of a deployment (both versions are loaded
    /// in it for the deployment's whole life). The caller holds the lock.
    fn reweigh_locked(
        &self,
        plan: &Plan,
        deployment: u64,
        weights: &[WeightedVersion],
        finished: bool,
    ) -> ControlResult<()> {
        let table = self.serving.table();
        let route = table
            .get(&plan.environment, &plan.function)
            .ok_or_else(|| ControlError::internal("the deployment's route is not in the table"))?;
        let mut backends = Vec::new();
        for w in weights {
            let b = route
                .backends
                .iter()
                .find(|b| b.version == w.version)
                .ok_or_else(|| {
                    ControlError::internal(format!(
                        "version {} is not loaded in the route",
                        w.version
                    ))
                })?;
            backends.push(Arc::new(b.with_weight(w.weight)));
        }
        self.swap_route(self.route_for(plan, deployment, backends, finished));
        Ok(())
    }

    /// Records a transition, then applies its weights.
    async fn transition_locked(
        &self,
        d: &DeploymentRecord,
        plan: &Plan,
        t: Transition<'_>,
    ) -> ControlResult<DeploymentRecord> {
        let weights = t.weights.map(<[WeightedVersion]>::to_vec);
        let finished = t.finished;
        let event = t.event;
        let t = Transition {
            fence: self.fence(),
            ..t
        };
        let record = self.state.transition(d.id, t).await?;
        self.observe_transition(&record, event);
        if let Some(w) = weights {
            self.reweigh_locked(plan, d.id, &w, finished)?;
        } else if finished {
            self.reweigh_locked(plan, d.id, &record.to_weights, true)?;
        }
        Ok(record)
    }

    async fn finish_locked(
        &self,
        d: &DeploymentRecord,
        plan: &Plan,
        ending: Ending,
    ) -> ControlResult<DeploymentRecord> {
        let started = Instant::now();
        // Who ended it (a person, or `seal` for a gate or a hook) is part
        // of the record, not only of the audit log: a hold names them.
        let mut detail = ending.detail.clone();
        if let Some(o) = detail.as_object_mut() {
            o.insert("by".into(), json!(ending.actor));
        }
        let record = self
            .transition_locked(
                d,
                plan,
                Transition {
                    state: ending.state,
                    step: None,
                    weights: Some(&ending.weights),
                    finished: true,
                    event: ending.event,
                    detail,
                    audit: Some(("deploy", ending.state.as_str(), &ending.actor)),
                    fence: None,
                },
            )
            .await?;
        tracing::info!(deployment = d.id, function = %plan.function, environment = %plan.environment,
            state = ending.state.as_str(), swap_us = started.elapsed().as_micros() as u64, "deployment ended");
        self.notify(plan, d.id, ending.event, ending.detail);
        Ok(record)
    }

    /// Fires a webhook for a deployment event, off the driver's path, with
    /// retries and exponential backoff.
    fn notify(&self, plan: &Plan, id: u64, event: &str, detail: Value) {
        let Some(url) = plan.notify.clone() else {
            return;
        };
        let body = json!({
            "deployment": id, "function": plan.function, "environment": plan.environment,
            "strategy": plan.strategy.as_str(), "candidate": plan.candidate.version,
            "baseline": plan.baseline.version, "event": event, "detail": detail,
            "at": seal_state::now_ms(),
        });
        self.outbound.deliver(
            "deployment notification",
            format!("deployment {id}"),
            url,
            body,
        );
    }

    /// Sends one hook request to the candidate through the gateway (real
    /// HTTP on the gateway's socket, `seal-version` naming the candidate,
    /// with the deployment's preview token).
    /// Redirects are answers, never followed; what is stored of the body
    /// is only what the expectation looked for.
    async fn run_hook(&self, plan: &Plan, deployment: u64, hook: &Hook) -> (bool, Value) {
        let Some(addr) = self.gateway_addr() else {
            return (false, json!({"error": "gateway address unknown"}));
        };
        let url = format!("http://{addr}{}", hook.request.path);
        let method = reqwest::Method::from_bytes(hook.request.method.as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut req = self
            .outbound
            .gateway()
            .request(method, &url)
            .header(
                "host",
                format!("{}.{}.localhost", plan.function, plan.environment),
            )
            .timeout(Duration::from_secs(30));
        for (k, v) in &hook.request.headers {
            req = req.header(k, v);
        }
        // After the hook's own headers, so they cannot change what it
        // tests: the candidate, judged like any traffic with the token.
        let token = self.previews.token(
            &plan.environment,
            &plan.function,
            deployment,
            plan.candidate.version,
        );
        req = req
            .header(seal_serving::HEADER_PIN, plan.candidate.version.to_string())
            .header(seal_serving::HEADER_PREVIEW_TOKEN, token);
        if let Some(body) = &hook.request.body {
            req = req.body(body.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            // Without the URL: its query may carry what the hook sends.
            Err(e) => return (false, json!({"error": e.without_url().to_string()})),
        };
        let status = resp.status().as_u16();
        let served_by = resp
            .headers()
            .get("seal-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await.unwrap_or_default();
        let mut problems = Vec::new();
        if served_by.as_deref() != Some(&plan.candidate.version.to_string()) {
            problems.push(format!(
                "served by version {served_by:?}, not the candidate"
            ));
        }
        if let Some(want) = hook.expect.status
            && want != status
        {
            problems.push(format!("status {status}, expected {want}"));
        }
        if hook.expect.success && !(200..300).contains(&status) {
            problems.push(format!("status {status}, expected a success (2xx)"));
        }
        if let Some(want) = &hook.expect.body_contains
            && !body.contains(want.as_str())
        {
            problems.push(format!("body does not contain {want:?}"));
        }
        let mut detail = json!({"status": status, "problems": problems});
        if hook.expect.body_contains.is_some() {
            let excerpt: String = body.chars().take(200).collect();
            detail["body"] = json!(excerpt);
        }
        (problems.is_empty(), detail)
    }
}

impl Control {
    /// Stops every deployment driver of this process and waits for them to
    /// end. Each stops at an await point; what it had committed stays, and
    /// the next start resumes from there (as after a crash).
    pub async fn stop_rollouts(&self) {
        let mut tasks = std::mem::take(
            &mut *self
                .rollouts
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tasks.shutdown().await;
        if let Ok(mut m) = self.rollouts.drivers.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.rollouts.live.lock() {
            m.clear();
        }
    }
}

impl Rollouts {
    /// The deployments whose driver runs in this process now.
    pub fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .drivers
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Whether a driver of deployment `id` runs on this node.
    fn is_driving(&self, id: u64) -> bool {
        self.drivers.lock().is_ok_and(|m| m.contains_key(&id))
    }

    /// Every driver's live view here, by deployment id (JSON).
    pub(crate) fn live_views(&self) -> Value {
        self.live.lock().map_or(Value::Null, |m| {
            Value::Object(m.iter().map(|(id, v)| (id.to_string(), json!(v))).collect())
        })
    }

    /// What the driver of deployment `id` is doing now, if it runs here.
    pub fn live(&self, id: u64) -> Option<LiveView> {
        self.live.lock().ok()?.get(&id).cloned()
    }

    /// Records a snapshot of every version in the table (called every
    /// second by the sampler task) and forgets versions no longer routed.
    pub fn sample(&self, table: &RouteTable) {
        let now = Instant::now();
        let Ok(mut h) = self.history.lock() else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        for r in table.routes() {
            for b in &r.backends {
                let key = (r.environment.clone(), r.function.clone(), b.version);
                let q = h.entry(key.clone()).or_default();
                q.push_back((now, b.stats.snapshot()));
                while q.front().is_some_and(|(t, _)| {
                    now.duration_since(*t) > STATUS_WINDOW + Duration::from_secs(1)
                }) {
                    q.pop_front();
                }
                seen.insert(key);
            }
        }
        h.retain(|k, _| seen.contains(k));
    }

    /// The last ~10 s of a version: now minus the oldest kept snapshot.
    pub(crate) fn window(&self, env: &str, function: &str, b: &Backend) -> (Snapshot, f64) {
        let now = b.stats.snapshot();
        let oldest = self.history.lock().ok().and_then(|h| {
            h.get(&(env.to_owned(), function.to_owned(), b.version))
                .and_then(|q| q.front().cloned())
        });
        match oldest {
            Some((t, s)) => (now.since(&s), t.elapsed().as_secs_f64()),
            None => (Snapshot::default(), 0.0),
        }
    }
}

impl Control {
    /// The route of a deployment's step: its sticky header and preview
    /// (with the deployment's token) while it runs.
    fn route_for(
        &self,
        plan: &Plan,
        deployment: u64,
        backends: Vec<Arc<Backend>>,
        finished: bool,
    ) -> Route {
        let sticky = if finished {
            None
        } else {
            plan.sticky_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        };
        let preview = (!finished).then_some(plan.candidate.version);
        let token = preview.map(|v| {
            self.previews
                .token(&plan.environment, &plan.function, deployment, v)
        });
        self.protected(
            Route::from_arcs(&plan.environment, &plan.function, backends)
                .with_sticky_header(sticky)
                .with_preview(preview, token),
        )
    }
}

/// How long a node waits for the controller to answer a relayed command.
const RELAY_TIMEOUT: Duration = Duration::from_secs(15);

/// The controller's answer to a relayed command, as the sender returns it.
fn relayed_answer(answer: &str) -> ControlResult<DeploymentRecord> {
    let v: Value = serde_json::from_str(answer).map_err(ControlError::internal)?;
    if let Some(record) = v.get("ok") {
        return serde_json::from_value(record.clone()).map_err(ControlError::internal);
    }
    let code = v["error"]["code"].as_str().unwrap_or("");
    let message = v["error"]["message"].as_str().unwrap_or("").to_owned();
    Err(match code {
        "not_paused" => ControlError::NotPaused(message),
        "not_running" => ControlError::NotRunning(message),
        "not_found" => ControlError::not_found(message),
        _ => ControlError::conflict(message),
    })
}

fn busy_error(d: &DeploymentRecord) -> ControlError {
    seal_state::StateError::Busy {
        id: d.id,
        function: d.function.clone(),
        environment: d.environment.clone(),
    }
    .into()
}

/// The task that walks one deployment through its plan.
struct Driver {
    control: Arc<Control>,
    plan: Plan,
    rx: mpsc::Receiver<Envelope>,
    deployment: DeploymentRecord,
}

/// Why a phase stopped early.
enum Stop {
    /// The deployment ended (rolled back, aborted).
    Ended,
    /// A person promoted it: the switch is done, the promotion's tail
    /// (post-traffic hooks, scale-down delay) remains.
    Promoted,
}

impl Driver {
    async fn run(&mut self) -> ControlResult<()> {
        // Steps applied so far; the last plan step always has weight 100.
        let mut step = self.deployment.step as usize;
        if step == 0 && self.run_hooks(HookPhase::PreTraffic).await?.is_some() {
            return Ok(());
        }
        loop {
            if step >= 1 && self.plan.steps[step - 1].weight == 100 {
                // Restarted after the switch: finish the promotion.
                return self.promote("seal".into()).await;
            }
            if step >= 1 && self.deployment.state != DeploymentState::Paused {
                match self.judge_step(step).await? {
                    Some(Stop::Ended) => return Ok(()),
                    Some(Stop::Promoted) => return self.finish_promotion().await,
                    None => {}
                }
            }
            if self.plan.steps[step].weight == 100 {
                if self.plan.approve_before_promote {
                    if self.deployment.state != DeploymentState::Paused {
                        self.pause().await?;
                    }
                    match self.wait_for_approval().await? {
                        Some(Stop::Ended) => return Ok(()),
                        Some(Stop::Promoted) => return self.finish_promotion().await,
                        None => {}
                    }
                }
                return self.promote("seal".into()).await;
            }
            self.apply_step(step + 1).await?;
            step += 1;
        }
    }

    fn set_live(
        &self,
        step: usize,
        started: i64,
        next_at: Option<i64>,
        eval: Option<Evaluation>,
        phase: &str,
    ) {
        let weight = step
            .checked_sub(1)
            .and_then(|i| self.plan.steps.get(i))
            .map_or(0, |s| s.weight);
        if let Ok(mut m) = self.control.rollouts.live.lock() {
            m.insert(
                self.deployment.id,
                LiveView {
                    step,
                    of: self.plan.steps.len(),
                    weight,
                    started_at: started,
                    next_at,
                    evaluation: eval,
                    phase: phase.to_owned(),
                },
            );
        }
    }

    async fn apply_step(&mut self, step: usize) -> ControlResult<()> {
        let weight = self.plan.steps[step - 1].weight;
        let weights = self.plan.weights_at(weight);
        let _guard = self.control.deploy_lock.lock().await;
        self.deployment = self
            .control
            .transition_locked(
                &self.deployment,
                &self.plan,
                Transition {
                    state: DeploymentState::Progressing,
                    step: Some(step as u32),
                    weights: Some(&weights),
                    finished: false,
                    event: "step",
                    detail: json!({"step": step, "weight": weight, "weights": weights}),
                    audit: None,
                    fence: None,
                },
            )
            .await?;
        drop(_guard);
        tracing::info!(
            deployment = self.deployment.id,
            step,
            weight,
            "deployment step"
        );
        self.control.notify(
            &self.plan,
            self.deployment.id,
            "step",
            json!({"step": step, "weight": weight, "weights": weights}),
        );
        Ok(())
    }

    /// Watches one step until its gates pass (→ `None`), or the deployment
    /// ends (rolled back by a gate, the deadline, or a person).
    async fn judge_step(&mut self, step: usize) -> ControlResult<Option<Stop>> {
        let spec = self.plan.steps[step - 1].clone();
        let interval = Duration::from_millis(spec.duration_ms);
        let deadline = Duration::from_millis(self.plan.progress_deadline_ms);
        let gates = gates::Gates {
            min_requests: Some(self.plan.min_requests),
            ..self.plan.gate_settings.clone()
        };
        let (c0, b0) = self.snapshots();
        let started = Instant::now();
        let started_ms = seal_state::now_ms();
        let mut next_record = interval;
        loop {
            let elapsed = started.elapsed();
            let next_at = started_ms + next_record.as_millis() as i64;
            tokio::select! {
                cmd = self.rx.recv() => {
                    if let Some(stop) = self.on_command(cmd).await? {
                        return Ok(Some(stop));
                    }
                    continue;
                }
                () = tokio::time::sleep(TICK) => {}
            }
            let (c, b) = self.snapshots();
            let (cw, nodes) = c.since(&c0);
            let (bw, _) = b.since(&b0);
            let baseline_weight = 100 - spec.weight;
            let baseline_window = (baseline_weight > 0 && bw.requests > 0).then_some(&bw);
            let step_over = elapsed >= interval;
            let mut eval = gates.evaluate(&cw, baseline_window, step_over);
            if self.control.state.shared() {
                eval.nodes = Some(nodes);
            }
            if let Some(limit) = gates.max_queue_age_ms {
                let oldest = self
                    .control
                    .events
                    .oldest_pending(&self.plan.environment, &self.plan.function);
                let r = gates::queue_age(limit, oldest, &cw);
                if r.verdict == Verdict::Fail {
                    eval.verdict = Verdict::Fail;
                }
                eval.results.push(r);
            }
            self.set_live(
                step,
                started_ms,
                Some(next_at),
                Some(eval.clone()),
                "judging",
            );
            match eval.verdict {
                Verdict::Fail => {
                    self.roll_back_on(step, &eval, "").await?;
                    return Ok(Some(Stop::Ended));
                }
                Verdict::Pass if step_over => {
                    self.record_gate(step, &eval).await?;
                    return Ok(None);
                }
                _ if elapsed >= next_record => {
                    // End of the interval without a pass: record it, then
                    // wait (or fail) until the progress deadline.
                    self.record_gate(step, &eval).await?;
                    next_record += interval;
                    if self.plan.on_inconclusive == OnInconclusive::Fail {
                        self.end_rolled_back(
                            "gates inconclusive at the end of the step (on_inconclusive: fail)"
                                .into(),
                            None,
                        )
                        .await?;
                        return Ok(Some(Stop::Ended));
                    }
                }
                _ => {}
            }
            if elapsed >= deadline {
                self.record_gate(step, &eval).await?;
                self.end_rolled_back(
                    format!(
                        "progress deadline: step {step} was still inconclusive after {}",
                        humantime::format_duration(Duration::from_secs(deadline.as_secs()))
                    ),
                    None,
                )
                .await?;
                return Ok(Some(Stop::Ended));
            }
        }
    }

    /// The candidate's and the baseline's counters across the fleet.
    fn snapshots(&self) -> (FleetSnapshot, FleetSnapshot) {
        let table = self.control.serving.table();
        let route = table.get(&self.plan.environment, &self.plan.function);
        let snap = |v: u64| {
            let local = route
                .and_then(|r| r.backends.iter().find(|b| b.version == v))
                .map(|b| b.stats.snapshot())
                .unwrap_or_default();
            self.control
                .fleet_snapshot(&self.plan.environment, &self.plan.function, v, local)
        };
        (
            snap(self.plan.candidate.version),
            snap(self.plan.baseline.version),
        )
    }

    async fn record_gate(&self, step: usize, eval: &Evaluation) -> ControlResult<()> {
        self.control
            .state
            .record_event(
                self.deployment.id,
                "gate",
                &match eval.nodes {
                    Some(nodes) => json!({"step": step, "verdict": eval.verdict,
                        "results": eval.results, "nodes": nodes}),
                    None => json!({"step": step, "verdict": eval.verdict, "results": eval.results}),
                },
            )
            .await?;
        Ok(())
    }

    /// A failed evaluation: its event first, then the rollback naming the
    /// failed gate, its threshold and what was measured.
    async fn roll_back_on(
        &mut self,
        step: usize,
        eval: &Evaluation,
        when: &str,
    ) -> ControlResult<()> {
        self.record_gate(step, eval).await?;
        let failed = eval.failed().cloned();
        if let Some(g) = &failed {
            self.control
                .metrics
                .gate_failed(&self.plan.function, &self.plan.environment, &g.gate);
        }
        let reason = failed.as_ref().map_or_else(
            || format!("a gate failed{when}"),
            |g| {
                format!(
                    "gate {} failed{when}: measured {}, threshold {}",
                    g.gate, g.measured, g.threshold
                )
            },
        );
        self.end_rolled_back(reason, failed.map(|g| json!(g))).await
    }

    async fn end_rolled_back(&mut self, reason: String, gate: Option<Value>) -> ControlResult<()> {
        self.end(Ending {
            state: DeploymentState::RolledBack,
            event: "rolled_back",
            weights: self.plan.rollback_target.clone(),
            detail: json!({"reason": reason, "gate": gate, "weights": self.plan.rollback_target}),
            actor: "seal".into(),
        })
        .await
    }

    /// A person stops the deployment: back to the baseline alone.
    async fn abort(&mut self, actor: String) -> ControlResult<()> {
        self.end(Ending {
            state: DeploymentState::Aborted,
            event: "aborted",
            weights: self.plan.rollback_target.clone(),
            detail: json!({"reason": format!("aborted by {actor}"), "weights": self.plan.rollback_target}),
            actor,
        })
        .await
    }

    async fn end(&mut self, ending: Ending) -> ControlResult<()> {
        let _guard = self.control.deploy_lock.lock().await;
        self.deployment = self
            .control
            .finish_locked(&self.deployment, &self.plan, ending)
            .await?;
        Ok(())
    }

    /// Handles a command; `Some` when it ended the deployment.
    async fn on_command(&mut self, cmd: Option<Envelope>) -> ControlResult<Option<Stop>> {
        let Some((cmd, actor, reply)) = cmd else {
            return Ok(None);
        };
        match cmd {
            Command::Abort => {
                let result = self.abort(actor).await;
                let _ = reply.send(result.map(|()| self.deployment.clone()));
                Ok(Some(Stop::Ended))
            }
            Command::Promote => {
                let result = self.switch_to_candidate(&actor).await;
                let failed = result.is_err();
                let _ = reply.send(result.map(|()| self.deployment.clone()));
                Ok(Some(if failed { Stop::Ended } else { Stop::Promoted }))
            }
            Command::Approve => {
                let _ = reply.send(Err(ControlError::NotPaused(format!(
                    "deployment {} is not waiting for approval",
                    self.deployment.id
                ))));
                Ok(None)
            }
        }
    }

    async fn pause(&mut self) -> ControlResult<Option<Stop>> {
        let _guard = self.control.deploy_lock.lock().await;
        self.deployment = self
            .control
            .transition_locked(
                &self.deployment,
                &self.plan,
                Transition {
                    state: DeploymentState::Paused,
                    step: None,
                    weights: None,
                    finished: false,
                    event: "paused",
                    detail: json!({"reason": "waiting for an approval before promotion"}),
                    audit: None,
                    fence: None,
                },
            )
            .await?;
        drop(_guard);
        self.control.notify(
            &self.plan,
            self.deployment.id,
            "paused",
            json!({"step": self.deployment.step}),
        );
        Ok(None)
    }

    async fn wait_for_approval(&mut self) -> ControlResult<Option<Stop>> {
        let step = self.deployment.step as usize;
        self.set_live(
            step,
            seal_state::now_ms(),
            None,
            None,
            "waiting for approval",
        );
        loop {
            let Some((cmd, actor, reply)) = self.rx.recv().await else {
                return Ok(Some(Stop::Ended));
            };
            if cmd == Command::Approve {
                let _guard = self.control.deploy_lock.lock().await;
                let result = self
                    .control
                    .transition_locked(
                        &self.deployment,
                        &self.plan,
                        Transition {
                            state: DeploymentState::Progressing,
                            step: None,
                            weights: None,
                            finished: false,
                            event: "approved",
                            detail: json!({"by": actor}),
                            audit: Some(("approve", "ok", &actor)),
                            fence: None,
                        },
                    )
                    .await;
                drop(_guard);
                match result {
                    Ok(d) => {
                        self.deployment = d.clone();
                        let _ = reply.send(Ok(d));
                        return Ok(None);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        return Err(e);
                    }
                }
            }
            if let Some(stop) = self.on_command(Some((cmd, actor, reply))).await? {
                return Ok(Some(stop));
            }
        }
    }

    /// The candidate takes all traffic (the baseline stays loaded at 0%),
    /// post-traffic hooks run, blue/green watches the scale-down delay, and
    /// the deployment succeeds with the candidate alone in the route.
    async fn promote(&mut self, actor: String) -> ControlResult<()> {
        self.switch_to_candidate(&actor).await?;
        self.finish_promotion().await
    }

    async fn switch_to_candidate(&mut self, actor: &str) -> ControlResult<()> {
        let last = self.plan.steps.len();
        let weights = self.plan.weights_at(100);
        let _guard = self.control.deploy_lock.lock().await;
        self.deployment = self
            .control
            .transition_locked(
                &self.deployment,
                &self.plan,
                Transition {
                    state: DeploymentState::Progressing,
                    step: Some(last as u32),
                    weights: Some(&weights),
                    finished: false,
                    event: "promoted",
                    detail: json!({"step": last, "weights": weights, "by": actor}),
                    audit: Some(("promote", "ok", actor)),
                    fence: None,
                },
            )
            .await?;
        drop(_guard);
        self.control.notify(
            &self.plan,
            self.deployment.id,
            "promoted",
            json!({"weights": weights, "by": actor}),
        );
        Ok(())
    }

    async fn finish_promotion(&mut self) -> ControlResult<()> {
        if self.run_hooks(HookPhase::PostTraffic).await?.is_some() {
            return Ok(());
        }
        if let Some(delay) = self.plan.scale_down_delay_ms
            && self
                .watch_after_switch(Duration::from_millis(delay))
                .await?
                .is_some()
        {
            return Ok(());
        }
        self.end(Ending {
            state: DeploymentState::Succeeded,
            event: "succeeded",
            weights: self.plan.final_weights(),
            detail: json!({"weights": self.plan.final_weights()}),
            actor: "seal".into(),
        })
        .await
    }

    /// Blue/green after the switch: the old version stays warm at 0% for
    /// the scale-down delay, and a certain breach on the absolute gates
    /// switches back at once.
    async fn watch_after_switch(&mut self, delay: Duration) -> ControlResult<Option<Stop>> {
        let gates = gates::Gates {
            max_error_rate_increase: None,
            max_latency_increase: None,
            min_requests: Some(self.plan.min_requests),
            ..self.plan.gate_settings.clone()
        };
        let (c0, _) = self.snapshots();
        let started = Instant::now();
        let started_ms = seal_state::now_ms();
        let step = self.plan.steps.len();
        while started.elapsed() < delay {
            tokio::select! {
                cmd = self.rx.recv() => {
                    if let Some((Command::Abort, actor, reply)) = cmd {
                        let result = self.abort(actor).await;
                        let _ = reply.send(result.map(|()| self.deployment.clone()));
                        return Ok(Some(Stop::Ended));
                    } else if let Some((_, _, reply)) = cmd {
                        let _ = reply.send(Ok(self.deployment.clone()));
                    }
                    continue;
                }
                () = tokio::time::sleep(TICK) => {}
            }
            if gates.is_empty() {
                continue;
            }
            let (c, _) = self.snapshots();
            let eval = gates.evaluate(&c.since(&c0).0, None, false);
            self.set_live(
                step,
                started_ms,
                Some(started_ms + delay.as_millis() as i64),
                Some(eval.clone()),
                "scale-down delay",
            );
            if eval.verdict == Verdict::Fail {
                self.roll_back_on(step, &eval, " after the switch").await?;
                return Ok(Some(Stop::Ended));
            }
        }
        Ok(None)
    }

    /// Runs the hooks of one phase; a failure ends the deployment
    /// (aborted before traffic, rolled back after).
    async fn run_hooks(&mut self, phase: HookPhase) -> ControlResult<Option<Stop>> {
        let hooks: Vec<Hook> = self
            .plan
            .hook_specs
            .iter()
            .filter(|h| h.phase == phase)
            .cloned()
            .collect();
        for hook in hooks {
            self.set_live(
                self.deployment.step as usize,
                seal_state::now_ms(),
                None,
                None,
                "hooks",
            );
            let (passed, detail) = self
                .control
                .run_hook(&self.plan, self.deployment.id, &hook)
                .await;
            let phase_name = phase.as_str();
            self.control
                .state
                .record_event(
                    self.deployment.id,
                    "hook",
                    &json!({"name": hook.name, "phase": phase_name, "passed": passed, "detail": detail}),
                )
                .await?;
            if !passed {
                let reason = format!(
                    "{phase_name} hook {:?} failed: {}",
                    hook.name, detail["problems"]
                );
                let (state, event) = match phase {
                    HookPhase::PreTraffic => (DeploymentState::Aborted, "aborted"),
                    HookPhase::PostTraffic => (DeploymentState::RolledBack, "rolled_back"),
                };
                self.end(Ending {
                    state,
                    event,
                    weights: self.plan.rollback_target.clone(),
                    detail: json!({"reason": reason, "hook": hook.name, "result": detail, "weights": self.plan.rollback_target}),
                    actor: "seal".into(),
                })
                .await?;
                return Ok(Some(Stop::Ended));
            }
        }
        Ok(None)
    }
}
