//! One controller among several nodes (migration 3): the controller
//! lease, the fence a driver's transition checks, and the nodes' reports.

use crate::{PostgresStore, Result};
use seal_state::{
    Fence, LeaseRecord, NodeRecord, NodeReport, NodeVersion, PendingCommand, StateError,
};
use std::time::Duration;

impl PostgresStore {
    pub async fn acquire_lease(&self, node: &str, ttl: Duration) -> Result<Option<i64>> {
        // Renewed by its holder (same epoch) while it has not expired;
        // otherwise taken with a new epoch when expired or free.
        Ok(sqlx::query_scalar(
            "UPDATE controller_lease SET \
                 epoch = CASE WHEN holder = $1 AND expires_at >= now() THEN epoch ELSE epoch + 1 END, \
                 acquired_at = CASE WHEN holder = $1 AND expires_at >= now() THEN acquired_at ELSE now() END, \
                 holder = $1, \
                 expires_at = now() + make_interval(secs => $2) \
             WHERE id = 1 AND (holder = $1 OR holder IS NULL OR expires_at < now()) \
             RETURNING epoch",
        )
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn release_lease(&self, node: &str, epoch: i64) -> Result<()> {
        sqlx::query(
            "UPDATE controller_lease SET expires_at = '-infinity' \
             WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(node)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn lease(&self) -> Result<Option<LeaseRecord>> {
        let (holder, epoch, expires_in_ms): (Option<String>, i64, f64) = sqlx::query_as(
            "SELECT holder, epoch, \
                    CASE WHEN expires_at = '-infinity' THEN -1e15 \
                         ELSE EXTRACT(EPOCH FROM expires_at - now()) * 1000 END::float8 \
             FROM controller_lease WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(LeaseRecord {
            holder,
            epoch,
            expires_in_ms: expires_in_ms.clamp(i64::MIN as f64, i64::MAX as f64) as i64,
        }))
    }

    pub async fn report_node(&self, r: &NodeReport) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // A heartbeat lost to a crash is sent again a second later.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO nodes (name, api, gateway, release, started_at, heartbeat_at, rollouts) \
             VALUES ($1, $2, $3, $4, $5, now(), $6) \
             ON CONFLICT (name) DO UPDATE SET api = $2, gateway = $3, release = $4, \
                 started_at = $5, heartbeat_at = now(), rollouts = $6",
        )
        .bind(&r.node)
        .bind(&r.api)
        .bind(&r.gateway)
        .bind(&r.release)
        .bind(r.started_at)
        .bind(r.rollouts.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM node_versions WHERE node = $1")
            .bind(&r.node)
            .execute(&mut *tx)
            .await?;
        if !r.versions.is_empty() {
            let envs: Vec<&str> = r.versions.iter().map(|v| v.environment.as_str()).collect();
            let fns: Vec<&str> = r.versions.iter().map(|v| v.function.as_str()).collect();
            let numbers: Vec<i64> = r.versions.iter().map(|v| v.version as i64).collect();
            let weights: Vec<i32> = r.versions.iter().map(|v| v.weight as i32).collect();
            let counters: Vec<String> = r.versions.iter().map(|v| v.counters.to_string()).collect();
            sqlx::query(
                "INSERT INTO node_versions (node, environment, function, version, weight, counters) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::int[], $6::text[])",
            )
            .bind(&r.node)
            .bind(&envs)
            .bind(&fns)
            .bind(&numbers)
            .bind(&weights)
            .bind(&counters)
            .execute(&mut *tx)
            .await?;
        }
        // Nodes silent for a day are forgotten.
        sqlx::query("DELETE FROM nodes WHERE heartbeat_at < now() - interval '1 day'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn nodes(&self, within: Duration) -> Result<Vec<NodeRecord>> {
        type Row = (String, String, String, String, i64, f64, String);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, api, gateway, release, started_at, \
                    (EXTRACT(EPOCH FROM now() - heartbeat_at) * 1000)::float8, rollouts \
             FROM nodes WHERE heartbeat_at >= now() - make_interval(secs => $1) ORDER BY name",
        )
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        type VRow = (String, String, String, i64, i32, String);
        let versions: Vec<VRow> = sqlx::query_as(
            "SELECT v.node, v.environment, v.function, v.version, v.weight, v.counters \
             FROM node_versions v JOIN nodes n ON n.name = v.node \
             WHERE n.heartbeat_at >= now() - make_interval(secs => $1) \
             ORDER BY v.node, v.environment, v.function, v.version",
        )
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<NodeRecord> = rows
            .into_iter()
            .map(
                |(node, api, gateway, release, started_at, age, rollouts)| NodeRecord {
                    report: NodeReport {
                        node,
                        api,
                        gateway,
                        release,
                        started_at,
                        versions: Vec::new(),
                        rollouts: serde_json::from_str(&rollouts).unwrap_or_default(),
                    },
                    heartbeat_age_ms: age.max(0.0) as i64,
                },
            )
            .collect();
        for (node, environment, function, version, weight, counters) in versions {
            if let Some(n) = out.iter_mut().find(|n| n.report.node == node) {
                n.report.versions.push(NodeVersion {
                    environment,
                    function,
                    version: version as u64,
                    weight: weight.max(0) as u32,
                    counters: serde_json::from_str(&counters).unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }
}

impl PostgresStore {
    pub async fn send_command(&self, deployment: u64, command: &str, actor: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO deployment_commands (deployment, command, actor) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(deployment as i64)
        .bind(command)
        .bind(actor)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn pending_commands(&self) -> Result<Vec<PendingCommand>> {
        let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT id, deployment, command, actor FROM deployment_commands \
             WHERE answer IS NULL AND created_at > now() - interval '1 minute' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, deployment, command, actor)| PendingCommand {
                id,
                deployment: deployment as u64,
                command,
                actor,
            })
            .collect())
    }

    pub async fn answer_command(&self, id: i64, answer: &str) -> Result<()> {
        sqlx::query("UPDATE deployment_commands SET answer = $2 WHERE id = $1 AND answer IS NULL")
            .bind(id)
            .bind(answer)
            .execute(&self.pool)
            .await?;
        // Answered commands are kept a day, for the record.
        sqlx::query("DELETE FROM deployment_commands WHERE created_at < now() - interval '1 day'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn command_answer(&self, id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, Option<String>>(
            "SELECT answer FROM deployment_commands WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }
}

/// Inside a transition's transaction: refuses unless `fence` still holds
/// the lease. The row stays share-locked until the commit, so a takeover
/// waits for this transition rather than overlapping it.
pub(crate) async fn check_fence(conn: &mut sqlx::PgConnection, fence: &Fence) -> Result<()> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT epoch FROM controller_lease WHERE id = 1 AND holder = $1 AND epoch = $2 FOR SHARE",
    )
    .bind(&fence.node)
    .bind(fence.epoch)
    .fetch_optional(conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StateError::Fenced { epoch: fence.epoch }.into()),
    }
}
