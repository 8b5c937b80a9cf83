//! `seal cluster status`: the nodes sharing one store and the controller.

use crate::client::Client;
use crate::output::{OutputFormat, emit};
use seal_api_types::cluster::ClusterStatus;

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// List the nodes heard from in the last few seconds: their addresses,
    /// release, last heartbeat and the versions they serve; and which one is
    /// the controller (it runs the deployment drivers and cron ticks).
    Status,
}

pub async fn cluster(
    cmd: ClusterCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let v: ClusterStatus = client.get_as("/v1/cluster").await?;
            emit(out, &v, print_status);
            Ok(())
        }
    }
}

fn print_status(v: &ClusterStatus) {
    match (&v.controller, v.epoch) {
        (Some(c), Some(epoch)) => println!(
            "controller: {c} (lease epoch {epoch}, renewed, expires in {} ms)",
            v.lease_expires_in_ms.unwrap_or(0)
        ),
        (Some(c), None) => println!("controller: {c} (one node on an embedded store)"),
        (None, _) => {
            println!("controller: none (the lease expired; a node takes it within seconds)")
        }
    }
    println!(
        "{:<28} {:<22} {:<22} {:<10} {:>10}  VERSIONS",
        "NODE", "API", "GATEWAY", "RELEASE", "HEARTBEAT"
    );
    for n in &v.nodes {
        let versions: Vec<String> = n
            .versions
            .iter()
            .map(|l| {
                format!(
                    "{}/{}@{}:{}%",
                    l.environment, l.function, l.version, l.weight
                )
            })
            .collect();
        let name = if n.controller {
            format!("{} *", n.name)
        } else {
            n.name.clone()
        };
        println!(
            "{:<28} {:<22} {:<22} {:<10} {:>8}ms  {}",
            name,
            n.api,
            n.gateway,
            n.release,
            n.heartbeat_age_ms,
            if versions.is_empty() {
                "-".to_owned()
            } else {
                versions.join(" ")
            }
        );
    }
}
