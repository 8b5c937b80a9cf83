//! One controller among several nodes on a shared store.
//!
//! Every node serves (gateway, API, queue deliveries: claims skip each
//! other's rows), reports a heartbeat with the counters of every version
//! it serves each [`HEARTBEAT`], and competes for the controller lease
//! ([`LEASE_TTL`] by default, renewed each heartbeat). The holder runs what must run
//! once: the deployment drivers (adopting deployments other nodes started,
//! and resuming every active one from its committed step when it takes
//! over) and the cron ticks. Every transition a driver commits carries the
//! lease's epoch, checked in its transaction, so a stalled old controller
//! cannot commit after another took over. A node that cannot renew within
//! the lease time steps down by itself.
//!
//! A driver judges its gates on the whole fleet's traffic: its own
//! counters live, the others' as they last reported them.
//!
//! On a store one process owns (SQLite) the node leads from its first
//! heartbeat and stores nothing.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_api_types::cluster::{ClusterNode, ClusterStatus, LoadedVersion};
use seal_serving::Snapshot;
use seal_state::{Fence, NodeReport, NodeVersion};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the controller lease lasts unless renewed, by default: a dead
/// controller is replaced within it (plus one heartbeat).
pub const LEASE_TTL: Duration = Duration::from_secs(4);
/// How often a node reports and renews or asks for the lease.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent for longer is left out of the fleet's sums and shown as
/// gone.
pub const NODE_STALE: Duration = Duration::from_secs(10);

/// Between a node's name and its process in the lease's holder (a node
/// name has no `/`).
const HOLDER_SEPARATOR: char = '/';

/// The node name in a lease holder.
fn holder_name(holder: &str) -> &str {
    holder.split(HOLDER_SEPARATOR).next().unwrap_or(holder)
}

/// A node heard from this recently holds its name: another process may
/// not start under it (a killed node's name is free after it).
const NAME_IN_USE: Duration = Duration::from_secs(3);

/// Who this node is (set by the server once it has bound its listeners).
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    pub api: String,
    pub gateway: String,
    pub started_at: i64,
    /// How long its hold on the controller lease lasts unless renewed.
    pub lease: Duration,
}

/// Key of a version in a route.
type VersionKey = (String, String, u64);

/// The in-memory side of membership.
#[derive(Default)]
pub struct Membership {
    identity: OnceLock<NodeIdentity>,
    /// The lease epoch while this node is the controller.
    epoch: Mutex<Option<i64>>,
    /// Other nodes' last reported counters, by version (read while leading).
    fleet: Mutex<HashMap<VersionKey, BTreeMap<String, Snapshot>>>,
    /// Relayed commands being carried out here.
    answering: Mutex<std::collections::HashSet<i64>>,
}

/// A version's counters on every node that reported it: the sum of each
/// node's progress is its window, so a node that stops reporting takes
/// only its own counts away.
#[derive(Debug, Clone, Default)]
pub(crate) struct FleetSnapshot(BTreeMap<String, Snapshot>);

impl FleetSnapshot {
    /// The fleet's window since `earlier`, and how many nodes it sums.
    pub(crate) fn since(&self, earlier: &FleetSnapshot) -> (Snapshot, u32) {
        let mut sum = Snapshot::default();
        for (node, now) in &self.0 {
            match earlier.0.get(node) {
                Some(then) => sum.add(&now.since(then)),
                None => sum.add(now),
            }
        }
        (sum, self.0.len() as u32)
    }
}

impl Membership {
    fn name(&self) -> String {
        self.identity
            .get()
            .map_or_else(|| "local".to_owned(), |i| i.name.clone())
    }

    /// What this process holds the lease as: its name and its start, so
    /// two processes given one name never share the lease (or a fence).
    fn holder(&self) -> String {
        match self.identity.get() {
            Some(i) => format!(
                "{}{HOLDER_SEPARATOR}{}-{}",
                i.name,
                std::process::id(),
                i.started_at
            ),
            None => format!("local{HOLDER_SEPARATOR}{}", std::process::id()),
        }
    }

    fn leading(&self) -> Option<i64> {
        *self
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this node should carry out relayed command `id` (not already
    /// doing so).
    pub(crate) fn start_answering(&self, id: i64) -> bool {
        self.answering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id)
    }

    pub(crate) fn done_answering(&self, id: i64) {
        self.answering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    fn set_leading(&self, epoch: Option<i64>) {
        *self
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = epoch;
    }
}

impl Control {
    /// Names this node (its API and gateway addresses) for the others;
    /// refused when another live node reports under the same name (its
    /// counters and this node's would overwrite each other).
    pub async fn set_node(&self, identity: NodeIdentity) -> ControlResult<()> {
        if self.state.shared() {
            let taken = self
                .state
                .nodes(NAME_IN_USE)
                .await?
                .into_iter()
                .find(|n| n.report.node == identity.name && n.report.api != identity.api);
            if let Some(n) = taken {
                return Err(ControlError::conflict(format!(
                    "node name {} is in use by the node whose API is at {} (heard from {} ms ago); give this node another name (--node)",
                    identity.name, n.report.api, n.heartbeat_age_ms
                )));
            }
        }
        let _ = self.cluster.identity.set(identity);
        Ok(())
    }

    /// This node's name.
    pub fn node_name(&self) -> String {
        self.cluster.name()
    }

    /// Whether this node runs the drivers and cron ticks now (always, on
    /// a store one process owns).
    pub fn is_controller(&self) -> bool {
        !self.state.shared() || self.cluster.leading().is_some()
    }

    /// The fence a driver's transition carries: `None` on a store one
    /// process owns; on a shared one, this node's lease, or an epoch no
    /// lease has (refused) once it stepped down.
    pub(crate) fn fence(&self) -> Option<Fence> {
        if !self.state.shared() {
            return None;
        }
        Some(Fence {
            node: self.cluster.holder(),
            epoch: self.cluster.leading().unwrap_or(-1),
        })
    }

    /// A version's counters across the fleet: this node's live, the
    /// others' as last reported.
    pub(crate) fn fleet_snapshot(
        &self,
        environment: &str,
        function: &str,
        version: u64,
        local: Snapshot,
    ) -> FleetSnapshot {
        let mut nodes = BTreeMap::new();
        if self.state.shared()
            && let Ok(fleet) = self.cluster.fleet.lock()
            && let Some(others) = fleet.get(&(environment.to_owned(), function.to_owned(), version))
        {
            nodes.extend(others.iter().map(|(n, s)| (n.clone(), s.clone())));
        }
        nodes.insert(self.cluster.name(), local);
        FleetSnapshot(nodes)
    }

    fn node_report(&self) -> NodeReport {
        let identity = self.cluster.identity.get();
        let table = self.serving.table();
        let mut versions = Vec::new();
        for r in table.routes() {
            for b in &r.backends {
                versions.push(NodeVersion {
                    environment: r.environment.clone(),
                    function: r.function.clone(),
                    version: b.version,
                    weight: b.weight,
                    counters: serde_json::to_value(b.stats.snapshot()).unwrap_or_default(),
                });
            }
        }
        NodeReport {
            node: self.cluster.name(),
            api: identity.map(|i| i.api.clone()).unwrap_or_default(),
            gateway: identity.map(|i| i.gateway.clone()).unwrap_or_default(),
            release: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: identity.map_or(0, |i| i.started_at),
            versions,
            rollouts: self.rollouts.live_views(),
        }
    }

    /// This node's membership until `stop`: a heartbeat with its counters
    /// every [`HEARTBEAT`], the controller lease taken or renewed, and what
    /// the controller runs started on taking it and stopped on losing it.
    /// At `stop` the lease is given up, so another node takes over at once.
    pub async fn run_node(self: Arc<Self>, stop: CancellationToken) {
        let name = self.cluster.holder();
        let ttl = self
            .cluster
            .identity
            .get()
            .map_or(LEASE_TTL, |i| i.lease.max(HEARTBEAT * 2));
        let mut lead: Option<Lead> = None;
        let mut valid_until = Instant::now();
        let mut failing = false;
        loop {
            let sent = Instant::now();
            let result = async {
                if self.state.shared() {
                    self.state.report_node(&self.node_report()).await?;
                }
                self.state.acquire_lease(&name, ttl).await
            }
            .await;
            let failed = result.is_err();
            match result {
                Ok(Some(epoch)) => {
                    valid_until = sent + ttl;
                    if lead.as_ref().map(|l| l.epoch) != Some(epoch) {
                        if let Some(old) = lead.take() {
                            self.step_down(old).await;
                        }
                        lead = Some(self.take_lead(epoch).await);
                    }
                }
                Ok(None) => {
                    if let Some(old) = lead.take() {
                        tracing::warn!(
                            epoch = old.epoch,
                            "another node holds the controller lease; stepping down"
                        );
                        self.step_down(old).await;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot report to the shared store or renew the controller lease");
                    }
                    if Instant::now() >= valid_until
                        && let Some(old) = lead.take()
                    {
                        tracing::warn!(
                            epoch = old.epoch,
                            "the controller lease could not be renewed in time; stepping down"
                        );
                        self.step_down(old).await;
                    }
                }
            }
            failing = failed;
            if lead.is_some() && self.state.shared() {
                self.refresh_fleet(&self.cluster.name()).await;
                // Commands relayed while a notification was lost.
                if let Err(e) = self.answer_commands().await {
                    tracing::debug!(error = %e, "cannot read relayed commands");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT.saturating_sub(sent.elapsed())) => {}
                () = stop.cancelled() => break,
            }
        }
        if let Some(old) = lead.take() {
            let epoch = old.epoch;
            self.step_down(old).await;
            if let Err(e) = self.state.release_lease(&name, epoch).await {
                tracing::warn!(error = %e, "cannot give up the controller lease; another node takes it when it expires");
            }
        }
    }

    async fn take_lead(self: &Arc<Self>, epoch: i64) -> Lead {
        self.cluster.set_leading(Some(epoch));
        if self.state.shared() {
            tracing::info!(node = %self.cluster.name(), epoch, "this node is the controller");
        }
        let stop = CancellationToken::new();
        let cron = tokio::spawn(self.events.clone().run_cron(stop.clone()));
        // Every deployment in progress resumes from its committed step (or
        // rolls back when a version cannot serve).
        if let Err(e) = self.resume_rollouts().await {
            tracing::error!(error = %e, "cannot resume deployments");
        }
        // A release a restart interrupted is rolled back as a whole, once
        // its deployments' drivers run again.
        let control = self.clone();
        tokio::spawn(async move {
            if let Err(e) = control.recover_releases().await {
                tracing::error!(error = %e, "cannot recover interrupted releases");
            }
        });
        Lead { epoch, stop, cron }
    }

    async fn step_down(&self, lead: Lead) {
        self.cluster.set_leading(None);
        lead.stop.cancel();
        let _ = lead.cron.await;
        self.stop_rollouts().await;
        if let Ok(mut f) = self.cluster.fleet.lock() {
            f.clear();
        }
    }

    /// Reads the other nodes' last reports into the fleet's counters.
    async fn refresh_fleet(&self, me: &str) {
        let nodes = match self.state.nodes(NODE_STALE).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the other nodes' counters");
                return;
            }
        };
        let mut fleet: HashMap<VersionKey, BTreeMap<String, Snapshot>> = HashMap::new();
        for n in nodes.into_iter().filter(|n| n.report.node != me) {
            for v in n.report.versions {
                let Ok(snap) = serde_json::from_value::<Snapshot>(v.counters) else {
                    continue;
                };
                fleet
                    .entry((v.environment, v.function, v.version))
                    .or_default()
                    .insert(n.report.node.clone(), snap);
            }
        }
        if let Ok(mut f) = self.cluster.fleet.lock() {
            *f = fleet;
        }
    }

    /// What the controller's driver of deployment `id` is doing, as it
    /// last reported (for a node that does not drive it).
    pub(crate) async fn controller_live_view(&self, id: u64) -> Option<crate::rollout::LiveView> {
        let nodes = self.state.nodes(NODE_STALE).await.ok()?;
        nodes.into_iter().find_map(|n| {
            serde_json::from_value(n.report.rollouts.get(id.to_string())?.clone()).ok()
        })
    }

    /// `seal cluster status`: the nodes heard from lately, what each
    /// serves, and which one is the controller.
    pub async fn cluster_status(&self) -> ControlResult<ClusterStatus> {
        let me = self.cluster.name();
        let (mut nodes, lease) = if self.state.shared() {
            (
                self.state.nodes(NODE_STALE).await?,
                self.state.lease().await?,
            )
        } else {
            (Vec::new(), None)
        };
        if nodes.iter().all(|n| n.report.node != me) {
            nodes.push(seal_state::NodeRecord {
                report: self.node_report(),
                heartbeat_age_ms: 0,
            });
        }
        let holder = match &lease {
            Some(l) if l.expires_in_ms > 0 => {
                l.holder.as_deref().map(|h| holder_name(h).to_owned())
            }
            Some(_) => None,
            None => self.is_controller().then(|| me.clone()),
        };
        Ok(ClusterStatus {
            shared: self.state.shared(),
            this_node: me,
            controller: holder.clone(),
            epoch: lease.as_ref().map(|l| l.epoch),
            lease_expires_in_ms: lease.as_ref().map(|l| l.expires_in_ms.max(0)),
            nodes: nodes
                .into_iter()
                .map(|n| ClusterNode {
                    controller: holder.as_deref() == Some(n.report.node.as_str()),
                    name: n.report.node,
                    api: n.report.api,
                    gateway: n.report.gateway,
                    release: n.report.release,
                    started_at: n.report.started_at,
                    heartbeat_age_ms: n.heartbeat_age_ms,
                    versions: n
                        .report
                        .versions
                        .into_iter()
                        .map(|v| LoadedVersion {
                            environment: v.environment,
                            function: v.function,
                            version: v.version,
                            weight: v.weight,
                        })
                        .collect(),
                })
                .collect(),
        })
    }
}

/// What this node runs while it is the controller.
struct Lead {
    epoch: i64,
    stop: CancellationToken,
    cron: tokio::task::JoinHandle<()>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(requests: u64, errors: u64) -> Snapshot {
        Snapshot {
            requests,
            errors,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_fleet_window_sums_each_nodes_progress() {
        let start = FleetSnapshot(BTreeMap::from([
            ("a".to_owned(), snap(10, 1)),
            ("b".to_owned(), snap(100, 0)),
            ("gone".to_owned(), snap(50, 50)),
        ]));
        let now = FleetSnapshot(BTreeMap::from([
            ("a".to_owned(), snap(15, 1)),
            ("b".to_owned(), snap(130, 20)),
            // A node first heard of during the window counts from zero.
            ("new".to_owned(), snap(4, 4)),
        ]));
        let (w, nodes) = now.since(&start);
        assert_eq!((w.requests, w.errors, nodes), (5 + 30 + 4, 20 + 4, 3));
    }
}
