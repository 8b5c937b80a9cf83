//! `GET /v1/cluster` (`seal cluster status`): the nodes sharing one
//! store and which of them is the controller.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Whether the store is shared by several nodes (PostgreSQL).
    pub shared: bool,
    /// The node that answered.
    pub this_node: String,
    /// The node holding the controller lease (`None`: it expired and no
    /// node has taken it yet).
    pub controller: Option<String>,
    /// The lease's epoch: it grows with every change of controller.
    pub epoch: Option<i64>,
    pub lease_expires_in_ms: Option<i64>,
    /// Nodes heard from in the last few seconds.
    pub nodes: Vec<ClusterNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub name: String,
    pub api: String,
    pub gateway: String,
    /// The `seal` release it runs.
    pub release: String,
    pub started_at: i64,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    pub controller: bool,
    /// The versions in its route table.
    pub versions: Vec<LoadedVersion>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedVersion {
    pub environment: String,
    pub function: String,
    pub version: u64,
    pub weight: u32,
}
