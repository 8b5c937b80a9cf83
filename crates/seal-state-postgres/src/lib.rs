//! The shared state backend: PostgreSQL reached through sqlx, with its
//! own migrations in `migrations/`, for several `seal server` nodes on one
//! database. Implements every trait of `seal-state` and passes the same
//! contract suite as the SQLite backend.
//!
//! Where SQLite relies on its one writer, this backend says what
//! serialises concurrent writers, from any node:
//! - deployments, events and deliveries take identity ids;
//! - the audit chain takes a transaction-scoped advisory lock before it
//!   reads its head, so it stays one chain with no gap;
//! - a route's deploy lock is an advisory lock on (environment, function)
//!   taken before the "no active deployment" check, and a transition locks
//!   its deployment row;
//! - version numbers, settings revisions and a queue's deduplication are
//!   allocated or checked under an advisory lock on what they count.
//!
//! Writes whose loss only repeats work (claims, attempt outcomes) commit
//! with `synchronous_commit = off`; everything a caller is told is
//! durable waits for the commit.

use seal_state::{
    AUDIT_GENESIS, AppliedFile, AuditRecord, AuditVerification, Budget, DeploymentEvent,
    DeploymentRecord, HOUR_MS, HoldRelease, NewAudit, NewDeployment, NewRollout, NewVersion,
    ReleaseRecord, RouteRecord, StateError, StepOutcome, Transition, UsageDelta, UsageRow,
    VersionRecord, audit_hash, now_ms,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use std::str::FromStr;

use seal_state_sql::{
    AUDIT_COLUMNS, AuditRow, BudgetRow, DeploymentRow, RouteRow, UsageRowDb, VersionRow,
    audit_record, verify_chain, weights_json,
};

mod captures;
mod changes;
mod cluster;
mod events;
mod flags;
mod import;
pub use import::Imported;
mod ports;
mod security;

/// What this backend's own code fails with; it becomes a [`StateError`]
/// at the traits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state store error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("state store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<Error> for StateError {
    fn from(e: Error) -> Self {
        match e {
            Error::State(s) => s,
            Error::Db(e) if unreachable(&e) => StateError::Unavailable(e.to_string()),
            other => StateError::Backend(other.to_string()),
        }
    }
}

/// Whether a driver error means the database cannot be reached now (it
/// stopped, the network dropped, every connection is gone), rather than
/// a fault of the statement.
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 (connection exception), 57P01-57P03 (the server is
        // shutting down or starting).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The highest change revision this node has heard of (started by the
    /// first wait for a change).
    heard: std::sync::Arc<tokio::sync::OnceCell<tokio::sync::watch::Receiver<i64>>>,
}

/// Connections per node.
const CONNECTIONS: u32 = 16;

/// Advisory lock keys (transaction scope). Keys made of a name hash the
/// name with `hashtext` under the class's first key.
pub(crate) mod lock {
    /// The audit chain's head.
    pub const AUDIT: i32 = 1;
    /// A route: `(ROUTE, hashtext(environment/function))`.
    pub const ROUTE: i32 = 2;
    /// Version numbers (every publish; rare).
    pub const PUBLISH: i32 = 3;
    /// A function's settings revisions in an environment.
    pub const SETTINGS: i32 = 4;
    /// A queue's enqueues (deduplication).
    pub const QUEUE: i32 = 5;
}

/// Takes a transaction-scoped advisory lock on `(class, hashtext(name))`.
pub(crate) async fn advisory(conn: &mut sqlx::PgConnection, class: i32, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(class)
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…`) and runs the
    /// migrations (sqlx holds an advisory lock while it migrates, so
    /// nodes starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// The same with options built by the caller (a test's own schema).
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            // An API call while the database is away answers
            // `state_unavailable` after this, rather than hanging.
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            heard: Default::default(),
        })
    }

    /// The pool, for tests that inspect or damage rows.
    #[doc(hidden)]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn version_by_digest(&self, digest: &str) -> Result<Option<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>("SELECT * FROM versions WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_into().map_err(Error::from))
            .transpose()
    }

    pub async fn version(&self, function: &str, number: u64) -> Result<Option<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>(
            "SELECT * FROM versions WHERE function = $1 AND number = $2",
        )
        .bind(function)
        .bind(number as i64)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_into().map_err(Error::from))
        .transpose()
    }

    pub async fn versions(&self, function: &str) -> Result<Vec<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>(
            "SELECT * FROM versions WHERE function = $1 ORDER BY number",
        )
        .bind(function)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.try_into().map_err(Error::from))
        .collect()
    }

    pub async fn all_versions(&self) -> Result<Vec<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>("SELECT * FROM versions ORDER BY function, number")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| r.try_into().map_err(Error::from))
            .collect()
    }

    pub async fn function_exists(&self, name: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM functions WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn functions(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM functions ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Creates `function@N` for `digest`, or returns the version that digest
    /// already has (`false` = not created). Writes an audit entry when it
    /// creates one.
    pub async fn create_version(&self, new: NewVersion<'_>) -> Result<(VersionRecord, bool)> {
        let mut tx = self.pool.begin().await?;
        advisory(&mut tx, lock::PUBLISH, "").await?;
        if let Some(existing) =
            sqlx::query_as::<_, VersionRow>("SELECT * FROM versions WHERE digest = $1")
                .bind(new.digest)
                .fetch_optional(&mut *tx)
                .await?
        {
            tx.commit().await?;
            return Ok((existing.try_into()?, false));
        }
        let now = now_ms();
        sqlx::query("INSERT INTO functions (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(new.function)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let number: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE function = $1",
        )
        .bind(new.function)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO versions (function, number, digest, manifest, component_size, compiled_sha256, created_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new.function)
        .bind(number)
        .bind(new.digest)
        .bind(new.manifest.to_string())
        .bind(new.component_size as i64)
        .bind(new.compiled_sha256)
        .bind(now)
        .bind(new.actor)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor: new.actor,
                action: "publish",
                object: &format!("{}@{number}", new.function),
                digest: Some(new.digest),
                outcome: "ok",
                detail: serde_json::json!({"component_size": new.component_size}),
            },
        )
        .await?;
        tx.commit().await?;
        let record = self
            .version(new.function, number as u64)
            .await?
            .ok_or_else(|| StateError::Corrupt("version vanished after insert".into()))?;
        Ok((record, true))
    }

    /// Records a new hash of a version's compiled form (after a recompile).
    pub async fn set_compiled_sha256(&self, digest: &str, sha256: &str) -> Result<()> {
        sqlx::query("UPDATE versions SET compiled_sha256 = $1 WHERE digest = $2")
            .bind(sha256)
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn environment_exists(&self, name: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM environments WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Creates an environment (`false` if it already existed), with an
    /// audit entry when created.
    pub async fn create_environment(&self, name: &str, actor: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO environments (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let created = done.rows_affected() == 1;
        if created {
            insert_audit(
                &mut tx,
                NewAudit {
                    actor,
                    action: "environment.create",
                    object: name,
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::json!({}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    pub async fn environments(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM environments ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Sets or clears an environment's protection, with an audit entry,
    /// in one transaction; false if the environment does not exist.
    pub async fn set_environment_protected(
        &self,
        name: &str,
        protected: Option<bool>,
        actor: &str,
    ) -> Result<bool> {
        let statement = sqlx::query("UPDATE environments SET protected = $1 WHERE name = $2")
            .bind(protected)
            .bind(name);
        self.change_audited(
            statement,
            NewAudit {
                actor,
                action: "environment.protect",
                object: name,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"protected": protected}),
            },
        )
        .await
    }

    /// Runs one statement and, when it changed a row, its audit entry, in
    /// one transaction; false (and nothing written) when no row changed.
    pub(crate) async fn change_audited<'q>(
        &self,
        statement: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        audit: NewAudit<'_>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if statement.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn environment_protection(&self) -> Result<Vec<(String, bool)>> {
        Ok(sqlx::query_as(
            "SELECT name, protected FROM environments WHERE protected IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn routes(&self) -> Result<Vec<RouteRecord>> {
        sqlx::query_as::<_, RouteRow>("SELECT * FROM routes ORDER BY environment, function")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| r.try_into().map_err(Error::from))
            .collect()
    }

    pub async fn route(&self, environment: &str, function: &str) -> Result<Option<RouteRecord>> {
        sqlx::query_as::<_, RouteRow>(
            "SELECT * FROM routes WHERE environment = $1 AND function = $2",
        )
        .bind(environment)
        .bind(function)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_into().map_err(Error::from))
        .transpose()
    }

    /// Records a route change: the deployment, its events, the new route row
    /// and an audit entry, in one transaction. The caller swaps the in-memory
    /// route table only after this returns.
    pub async fn record_deployment(&self, new: NewDeployment<'_>) -> Result<DeploymentRecord> {
        let mut tx = self.pool.begin().await?;
        ensure_idle(&mut tx, new.function, new.environment).await?;
        let now = now_ms();
        let to = weights_json(new.to_weights);
        let from = new.from_weights.map(weights_json);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deployments (function, environment, kind, strategy, state, from_weights, to_weights, actor, reason, created_at, finished_at)
             VALUES ($1, $2, $3, $4, 'succeeded', $5, $6, $7, $8, $9, $9) RETURNING id",
        )
        .bind(new.function)
        .bind(new.environment)
        .bind(new.kind.as_str())
        .bind(new.strategy.as_str())
        .bind(&from)
        .bind(&to)
        .bind(new.actor)
        .bind(new.reason)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let events = [
            (
                "started",
                serde_json::json!({"from": new.from_weights, "to": new.to_weights, "strategy": new.strategy}),
            ),
            (
                "route_switched",
                serde_json::json!({"weights": new.to_weights}),
            ),
            ("succeeded", serde_json::json!({})),
        ];
        for (seq, (kind, detail)) in events.iter().enumerate() {
            sqlx::query("INSERT INTO deployment_events (deployment_id, seq, at, kind, detail) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(seq as i64 + 1)
                .bind(now)
                .bind(*kind)
                .bind(detail.to_string())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO routes (environment, function, weights, deployment_id, updated_at, sticky_header, preview)
             VALUES ($1, $2, $3, $4, $5, NULL, NULL)
             ON CONFLICT (environment, function) DO UPDATE SET weights = excluded.weights,
                 deployment_id = excluded.deployment_id, updated_at = excluded.updated_at,
                 sticky_header = NULL, preview = NULL",
        )
        .bind(new.environment)
        .bind(new.function)
        .bind(&to)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor: new.actor,
                action: new.kind.as_str(),
                object: &format!("{}/{}", new.environment, new.function),
                digest: new.digest,
                outcome: "ok",
                detail: serde_json::json!({"deployment": id, "from": new.from_weights, "to": new.to_weights, "reason": new.reason}),
            },
        )
        .await?;
        tx.commit().await?;
        self.deployment(id as u64)
            .await?
            .map(|(d, _)| d)
            .ok_or_else(|| StateError::Corrupt("deployment vanished after insert".into()).into())
    }

    /// Starts a progressive deployment: the deployment row (progressing,
    /// step 0), its `started` event, the route with the candidate at 0%
    /// and the audit entry, in one transaction. Refused (`Busy`) when the
    /// route already has an active deployment.
    pub async fn start_rollout(&self, new: NewRollout<'_>) -> Result<DeploymentRecord> {
        let mut tx = self.pool.begin().await?;
        ensure_idle(&mut tx, new.function, new.environment).await?;
        let now = now_ms();
        let weights = weights_json(new.weights);
        let from = new.from_weights.map(weights_json);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO deployments (function, environment, kind, strategy, state, from_weights, to_weights, actor, reason,
                 created_at, finished_at, plan, baseline, candidate, step, step_started_at)
             VALUES ($1, $2, 'deploy', $3, 'progressing', $4, $5, $6, $7, $8, NULL, $9, $10, $11, 0, $8)
             RETURNING id",
        )
        .bind(new.function)
        .bind(new.environment)
        .bind(new.strategy.as_str())
        .bind(&from)
        .bind(&weights)
        .bind(new.actor)
        .bind(new.reason)
        .bind(now)
        .bind(new.plan.to_string())
        .bind(new.baseline as i64)
        .bind(new.candidate as i64)
        .fetch_one(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            id,
            "started",
            &serde_json::json!({"strategy": new.strategy, "from": new.from_weights, "weights": new.weights,
                "baseline": new.baseline, "candidate": new.candidate}),
        )
        .await?;
        upsert_route(
            &mut tx,
            new.environment,
            new.function,
            &weights,
            id,
            new.sticky_header,
            Some(new.candidate),
        )
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor: new.actor,
                action: "deploy",
                object: &format!("{}/{}", new.environment, new.function),
                digest: new.digest,
                outcome: "started",
                detail: serde_json::json!({"deployment": id, "strategy": new.strategy,
                    "from": new.from_weights, "candidate": new.candidate, "reason": new.reason}),
            },
        )
        .await?;
        tx.commit().await?;
        self.deployment_record(id as u64).await
    }

    /// Applies one transition of an active deployment in one transaction:
    /// its state (and step), its event, the route (if the weights change)
    /// and an audit entry. Refused (`NotActive`) once the deployment has
    /// ended, so two racing transitions cannot both end it.
    pub async fn transition(&self, id: u64, t: Transition<'_>) -> Result<DeploymentRecord> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE id = $1 FOR UPDATE",
        )
        .bind(id as i64)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(StateError::NotActive(id).into());
        };
        let d: DeploymentRecord = row.try_into()?;
        if !d.is_active() {
            return Err(StateError::NotActive(id).into());
        }
        if let Some(fence) = &t.fence {
            cluster::check_fence(&mut tx, fence).await?;
        }
        let now = now_ms();
        let weights = t.weights.map(weights_json);
        sqlx::query(
            "UPDATE deployments SET state = $2,
                 step = COALESCE($3, step),
                 step_started_at = CASE WHEN $3 IS NULL THEN step_started_at ELSE $4 END,
                 to_weights = COALESCE($5, to_weights),
                 finished_at = CASE WHEN $6 THEN $4 ELSE NULL END
             WHERE id = $1",
        )
        .bind(id as i64)
        .bind(t.state.as_str())
        .bind(t.step.map(i64::from))
        .bind(now)
        .bind(&weights)
        .bind(t.finished)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, id as i64, t.event, &t.detail).await?;
        if t.weights.is_some() || t.finished {
            let weights = weights.unwrap_or_else(|| weights_json(&d.to_weights));
            let (sticky, preview) = if t.finished {
                (None, None)
            } else {
                let route = self.route_in(&mut tx, &d.environment, &d.function).await?;
                (
                    route.as_ref().and_then(|r| r.sticky_header.clone()),
                    route.as_ref().and_then(|r| r.preview),
                )
            };
            upsert_route(
                &mut tx,
                &d.environment,
                &d.function,
                &weights,
                id as i64,
                sticky.as_deref(),
                preview,
            )
            .await?;
        }
        if let Some((action, outcome, actor)) = t.audit {
            insert_audit(
                &mut tx,
                NewAudit {
                    actor,
                    action,
                    object: &format!("{}/{}", d.environment, d.function),
                    digest: None,
                    outcome,
                    detail: serde_json::json!({"deployment": id, "event": t.event, "detail": t.detail}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        self.deployment_record(id).await
    }

    /// Appends an event (a gate evaluation, a hook result) without changing
    /// the deployment's state.
    pub async fn record_event(
        &self,
        id: u64,
        kind: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, id as i64, kind, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deployments that still own their route (to resume after a restart).
    pub async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE state IN ('pending', 'progressing', 'paused') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.try_into().map_err(Error::from))
        .collect()
    }

    async fn deployment_record(&self, id: u64) -> Result<DeploymentRecord> {
        self.deployment(id).await?.map(|(d, _)| d).ok_or_else(|| {
            StateError::Corrupt(format!("deployment {id} vanished after write")).into()
        })
    }

    async fn route_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        environment: &str,
        function: &str,
    ) -> Result<Option<RouteRecord>> {
        sqlx::query_as::<_, RouteRow>(
            "SELECT * FROM routes WHERE environment = $1 AND function = $2",
        )
        .bind(environment)
        .bind(function)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_into().map_err(Error::from))
        .transpose()
    }

    pub async fn deployments(
        &self,
        function: &str,
        environment: Option<&str>,
    ) -> Result<Vec<DeploymentRecord>> {
        sqlx::query_as::<_, DeploymentRow>(
            "SELECT * FROM deployments WHERE function = $1 AND ($2 IS NULL OR environment = $2) ORDER BY id DESC",
        )
        .bind(function)
        .bind(environment)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.try_into().map_err(Error::from))
        .collect()
    }

    /// Releases a hold (a row naming the deployment that made it), with
    /// its audit entry; false if that hold was released already.
    pub async fn release_hold(&self, r: &HoldRelease) -> Result<bool> {
        let statement = sqlx::query(
            "INSERT INTO hold_releases (environment, function, version, deployment_id, released_at, released_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&r.environment)
        .bind(&r.function)
        .bind(r.version as i64)
        .bind(r.deployment_id as i64)
        .bind(r.released_at)
        .bind(&r.released_by);
        self.change_audited(
            statement,
            NewAudit {
                actor: &r.released_by,
                action: "hold.release",
                object: &format!("{}/{}", r.environment, r.function),
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"version": r.version, "deployment": r.deployment_id}),
            },
        )
        .await
    }

    /// Replaces the file applied to each environment, in one transaction.
    pub async fn record_applied(&self, files: &[AppliedFile]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for f in files {
            sqlx::query(
                "INSERT INTO applied_files (environment, file, file_digest, commit_id, actor, applied_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (environment) DO UPDATE SET file = excluded.file, \
                 file_digest = excluded.file_digest, commit_id = excluded.commit_id, \
                 actor = excluded.actor, applied_at = excluded.applied_at",
            )
            .bind(&f.environment)
            .bind(&f.file)
            .bind(&f.file_digest)
            .bind(&f.commit)
            .bind(&f.actor)
            .bind(f.applied_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn applied_files(&self, environment: Option<&str>) -> Result<Vec<AppliedFile>> {
        let rows: Vec<(String, String, String, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT environment, file, file_digest, commit_id, actor, applied_at \
             FROM applied_files WHERE $1 IS NULL OR environment = $1 ORDER BY environment",
        )
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(environment, file, file_digest, commit, actor, applied_at)| AppliedFile {
                    environment,
                    file,
                    file_digest,
                    commit,
                    actor,
                    applied_at,
                },
            )
            .collect())
    }

    /// Records a release as running, unless one is (then `Conflict`
    /// naming it), in one transaction.
    pub async fn start_release(&self, new: &ReleaseRecord) -> Result<ReleaseRecord> {
        let json =
            |v: serde_json::Result<String>| v.map_err(|e| StateError::Backend(e.to_string()));
        let mut tx = self.pool.begin().await?;
        // One release at a time across the nodes of the store.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('seal_releases'))")
            .execute(&mut *tx)
            .await?;
        let running: Option<seal_state_sql::ReleaseRow> = sqlx::query_as(&format!(
            "SELECT {} FROM releases WHERE state = 'running' ORDER BY id LIMIT 1",
            seal_state_sql::RELEASE_COLUMNS
        ))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = running {
            return Err(StateError::Conflict(format!(
                "an apply is running: release {} of {} by {} since {}; wait for it to end",
                r.0,
                r.1,
                r.4,
                seal_state_sql::rfc3339(r.8)
            ))
            .into());
        }
        let source = match &new.source {
            Some(s) => Some(json(serde_json::to_string(s))?),
            None => None,
        };
        let id: i64 = sqlx::query_scalar("INSERT INTO releases (file_digest, environments, source, actor, state, plan, outcomes, created_at, node) VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8) RETURNING id")
            .bind(&new.file_digest)
            .bind(json(serde_json::to_string(&new.environments))?)
            .bind(source)
            .bind(&new.actor)
            .bind(json(serde_json::to_string(&new.plan))?)
            .bind(json(serde_json::to_string(&new.outcomes))?)
            .bind(new.created_at)
            .bind(&new.node)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ReleaseRecord {
            id: id as u64,
            state: "running".into(),
            finished_at: None,
            ..new.clone()
        })
    }

    pub async fn update_release(
        &self,
        id: u64,
        state: &str,
        outcomes: &[StepOutcome],
        finished: bool,
    ) -> Result<()> {
        let outcomes =
            serde_json::to_string(outcomes).map_err(|e| StateError::Backend(e.to_string()))?;
        sqlx::query(
            "UPDATE releases SET state = $1, outcomes = $2, \
             finished_at = CASE WHEN $3 THEN $4 ELSE finished_at END WHERE id = $5",
        )
        .bind(state)
        .bind(outcomes)
        .bind(finished)
        .bind(now_ms())
        .bind(id as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn releases(&self, limit: u32) -> Result<Vec<ReleaseRecord>> {
        let rows: Vec<seal_state_sql::ReleaseRow> = sqlx::query_as(&format!(
            "SELECT {} FROM releases ORDER BY id DESC LIMIT $1",
            seal_state_sql::RELEASE_COLUMNS
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(seal_state_sql::release_record)
            .collect::<std::result::Result<_, _>>()?)
    }

    pub async fn release(&self, id: u64) -> Result<Option<ReleaseRecord>> {
        let row: Option<seal_state_sql::ReleaseRow> = sqlx::query_as(&format!(
            "SELECT {} FROM releases WHERE id = $1",
            seal_state_sql::RELEASE_COLUMNS
        ))
        .bind(id as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(seal_state_sql::release_record).transpose()?)
    }

    pub async fn hold_releases(&self, environment: Option<&str>) -> Result<Vec<HoldRelease>> {
        let rows: Vec<(String, String, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT environment, function, version, deployment_id, released_at, released_by \
             FROM hold_releases WHERE $1 IS NULL OR environment = $1 \
             ORDER BY released_at DESC, deployment_id DESC",
        )
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(environment, function, version, deployment_id, released_at, released_by)| {
                    HoldRelease {
                        environment,
                        function,
                        version: version as u64,
                        deployment_id: deployment_id as u64,
                        released_at,
                        released_by,
                    }
                },
            )
            .collect())
    }

    pub async fn deployment(
        &self,
        id: u64,
    ) -> Result<Option<(DeploymentRecord, Vec<DeploymentEvent>)>> {
        let Some(row) =
            sqlx::query_as::<_, DeploymentRow>("SELECT * FROM deployments WHERE id = $1")
                .bind(id as i64)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let events: Vec<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT seq, at, kind, detail FROM deployment_events WHERE deployment_id = $1 ORDER BY seq",
        )
        .bind(id as i64)
        .fetch_all(&self.pool)
        .await?;
        let events = events
            .into_iter()
            .map(|(seq, at, kind, detail)| DeploymentEvent {
                seq: seq as u64,
                at,
                kind,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            })
            .collect();
        Ok(Some((row.try_into()?, events)))
    }

    /// Appends an audit entry on its own (refusals, failures).
    pub async fn audit(&self, entry: NewAudit<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The most recent audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(audit_record).collect())
    }

    /// Recomputes the audit chain from the first entry and reports the
    /// first broken link: an edited entry (its hash no longer matches), a
    /// removed or reordered one (ids jump, or `prev_hash` is not the hash
    /// before it), or an entry without a hash.
    pub async fn verify_audit(&self) -> Result<AuditVerification> {
        let rows: Vec<AuditRow> =
            sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"))
                .fetch_all(&self.pool)
                .await?;
        Ok(verify_chain(rows))
    }
}

/// Refuses a new deployment while the route has an active one.
async fn ensure_idle(
    tx: &mut Transaction<'_, Postgres>,
    function: &str,
    environment: &str,
) -> Result<()> {
    advisory(tx, lock::ROUTE, &format!("{environment}/{function}")).await?;
    let busy: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM deployments WHERE function = $1 AND environment = $2
             AND state IN ('pending', 'progressing', 'paused') ORDER BY id LIMIT 1",
    )
    .bind(function)
    .bind(environment)
    .fetch_optional(&mut **tx)
    .await?;
    match busy {
        Some(id) => Err(StateError::Busy {
            id: id as u64,
            function: function.to_owned(),
            environment: environment.to_owned(),
        }
        .into()),
        None => Ok(()),
    }
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    // Two writers appending to one deployment take turns on its row.
    sqlx::query("SELECT id FROM deployments WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let seq: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_events WHERE deployment_id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO deployment_events (deployment_id, seq, at, kind, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(seq)
        .bind(now_ms())
        .bind(kind)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_route(
    tx: &mut Transaction<'_, Postgres>,
    environment: &str,
    function: &str,
    weights: &str,
    deployment_id: i64,
    sticky_header: Option<&str>,
    preview: Option<u64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO routes (environment, function, weights, deployment_id, updated_at, sticky_header, preview)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (environment, function) DO UPDATE SET weights = excluded.weights,
             deployment_id = excluded.deployment_id, updated_at = excluded.updated_at,
             sticky_header = excluded.sticky_header, preview = excluded.preview",
    )
    .bind(environment)
    .bind(function)
    .bind(weights)
    .bind(deployment_id)
    .bind(now_ms())
    .bind(sticky_header)
    .bind(preview.map(|v| v as i64))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn insert_audit(
    tx: &mut Transaction<'_, Postgres>,
    entry: NewAudit<'_>,
) -> Result<()> {
    // One chain under concurrent writers: the head is read, and the entry
    // after it written, by one transaction at a time (the lock is held
    // until it commits or rolls back).
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from(lock::AUDIT))
        .execute(&mut **tx)
        .await?;
    let last: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (id, prev) = match last {
        Some((id, hash)) => (
            id + 1,
            hash.ok_or_else(|| StateError::Corrupt(format!("audit entry {id} has no hash")))?,
        ),
        None => (1, AUDIT_GENESIS.to_owned()),
    };
    let at = now_ms();
    let detail = entry.detail.to_string();
    let hash = audit_hash(
        &prev,
        id,
        at,
        entry.actor,
        entry.action,
        entry.object,
        entry.digest,
        entry.outcome,
        &detail,
    );
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, object, digest, outcome, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(at)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(entry.object)
    .bind(entry.digest)
    .bind(entry.outcome)
    .bind(detail)
    .bind(prev)
    .bind(hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PostgresStore {
    /// Adds usage deltas in one transaction (summed into their hour rows).
    pub async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for d in deltas {
            sqlx::query(
                "INSERT INTO usage (function, environment, version, hour, invocations, gb_seconds) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (function, environment, version, hour) DO UPDATE SET \
                 invocations = usage.invocations + excluded.invocations, \
                 gb_seconds = usage.gb_seconds + excluded.gb_seconds",
            )
            .bind(&d.function)
            .bind(&d.environment)
            .bind(d.version as i64)
            .bind(d.hour)
            .bind(d.invocations as i64)
            .bind(d.gb_seconds)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage per environment and version in the hours starting at or after
    /// `since_ms` truncated to its hour.
    pub async fn usage(&self, function: &str, since_ms: i64) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query_as::<_, UsageRowDb>(
            "SELECT environment, version, CAST(SUM(invocations) AS BIGINT) AS invocations, \
             CAST(SUM(gb_seconds) AS DOUBLE PRECISION) AS gb_seconds FROM usage \
             WHERE function = $1 AND hour >= $2 GROUP BY environment, version \
             ORDER BY environment, version",
        )
        .bind(function)
        .bind(since_ms - since_ms.rem_euclid(HOUR_MS))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| UsageRow {
                environment: r.environment,
                version: r.version,
                invocations: r.invocations,
                gb_seconds: r.gb_seconds,
            })
            .collect())
    }

    /// Sets a budget; the change and its audit entry are one transaction.
    pub async fn set_budget(&self, b: &Budget, audit: NewAudit<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO budgets (function, gb_seconds, period, webhook, alerted_period, updated_by, updated_at) \
             VALUES ($1, $2, $3, $4, NULL, $5, $6) \
             ON CONFLICT (function) DO UPDATE SET gb_seconds = excluded.gb_seconds, \
             period = excluded.period, webhook = excluded.webhook, alerted_period = NULL, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(&b.function)
        .bind(b.gb_seconds)
        .bind(&b.period)
        .bind(&b.webhook)
        .bind(&b.updated_by)
        .bind(b.updated_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn budget(&self, function: &str) -> Result<Option<Budget>> {
        Ok(
            sqlx::query_as::<_, BudgetRow>("SELECT * FROM budgets WHERE function = $1")
                .bind(function)
                .fetch_optional(&self.pool)
                .await?
                .map(Budget::from),
        )
    }

    pub async fn budgets(&self) -> Result<Vec<Budget>> {
        Ok(
            sqlx::query_as::<_, BudgetRow>("SELECT * FROM budgets ORDER BY function")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(Budget::from)
                .collect(),
        )
    }

    /// Removes a budget; false when there was none.
    /// Deletes a budget and records it, in one transaction; false (and
    /// nothing recorded) when there was none.
    pub async fn delete_budget(&self, function: &str, audit: NewAudit<'_>) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM budgets WHERE function = $1")
            .bind(function)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Claims the warning for the period starting at `period_start`: true
    /// exactly once per period, however many servers ask.
    pub async fn claim_budget_alert(&self, function: &str, period_start: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE budgets SET alerted_period = $2 WHERE function = $1 \
             AND (alerted_period IS NULL OR alerted_period < $2)",
        )
        .bind(function)
        .bind(period_start)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// A database of its own for each test: a fresh schema in the test
/// database, dropped when the guard goes. Without a reachable server the
/// test is skipped with the reason printed, unless `SEAL_REQUIRE_POSTGRES`
/// is set (CI), when it fails.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    pub fn url() -> String {
        std::env::var("SEAL_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_owned())
    }

    /// Drops its schema when dropped.
    pub struct Schema {
        pub name: String,
    }

    impl Schema {
        pub fn options(&self) -> PgConnectOptions {
            PgConnectOptions::from_str(&url())
                .expect("SEAL_TEST_POSTGRES is a postgres:// URL")
                .options([("search_path", self.name.as_str())])
                // Its connections are found by name when it is dropped.
                .application_name(&self.name)
        }

        /// Another store on the same schema: a second node.
        pub async fn node(&self) -> PostgresStore {
            PostgresStore::connect_with(self.options())
                .await
                .expect("connect a second node")
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Its own thread and runtime: a test's runtime may be gone, or
            // blocked here while its pool still holds connections (one may
            // be inside a transaction whose rollback that runtime would
            // have sent), so those connections are ended first.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&url()).await {
                        let _ = sqlx::query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = $1 AND pid <> pg_backend_pid()",
                        )
                        .bind(&name)
                        .execute(&mut c)
                        .await;
                        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                            .execute(&mut c)
                            .await;
                    }
                });
            })
            .join();
        }
    }

    use sqlx::Connection;

    /// A store on a new, empty schema, or `None` (skipped, reason printed).
    pub async fn store() -> Option<(Schema, PostgresStore)> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let url = url();
        let mut admin = match sqlx::PgConnection::connect(&url).await {
            Ok(c) => c,
            Err(e) if std::env::var_os("SEAL_REQUIRE_POSTGRES").is_some() => {
                panic!("SEAL_REQUIRE_POSTGRES is set and PostgreSQL at {url} is unreachable: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipped: no PostgreSQL at {url} ({e}); set SEAL_TEST_POSTGRES to a server's URL"
                );
                return None;
            }
        };
        let name = format!(
            "seal_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            now_ms()
        );
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test schema");
        let schema = Schema { name };
        let store = PostgresStore::connect_with(schema.options())
            .await
            .expect("connect and migrate");
        Some((schema, store))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::store;
    use super::*;
    use seal_state::{DeploymentState, Fence, Strategy, WeightedVersion};

    async fn fresh() -> Option<(testing::Schema, std::sync::Arc<dyn seal_state::StateStore>)> {
        let (schema, s) = store().await?;
        Some((schema, std::sync::Arc::new(s)))
    }

    seal_state::contract_tests!(maybe fresh);

    type Fresh = (
        testing::Schema,
        std::sync::Arc<dyn seal_state::StateStore>,
        std::sync::Arc<dyn seal_state::Queues>,
    );

    async fn fresh_queues() -> Option<Fresh> {
        let (schema, s) = fresh().await?;
        let q = std::sync::Arc::new(seal_state::StoreQueues(s.clone()));
        Some((schema, s, q))
    }

    mod queues {
        use super::fresh_queues;
        seal_state::queue_contract_tests!(fresh_queues);
    }

    fn new_version<'a>(f: &'a str, d: &'a str, m: &'a serde_json::Value) -> NewVersion<'a> {
        NewVersion {
            function: f,
            digest: d,
            manifest: m,
            component_size: 10,
            compiled_sha256: "x",
            actor: "test",
        }
    }

    fn audit(i: usize) -> NewAudit<'static> {
        NewAudit {
            actor: "t",
            action: "test",
            object: "o",
            digest: None,
            outcome: "ok",
            detail: serde_json::json!({"i": i}),
        }
    }

    #[tokio::test]
    async fn writers_on_three_nodes_keep_one_audit_chain() {
        let Some((schema, a)) = store().await else {
            return;
        };
        let (b, c) = (schema.node().await, schema.node().await);
        let mut writers = Vec::new();
        for (n, s) in [a.clone(), b, c].into_iter().enumerate() {
            for k in 0..8 {
                let s = s.clone();
                writers.push(tokio::spawn(async move {
                    for i in 0..5 {
                        s.audit(audit(n * 100 + k * 10 + i)).await.unwrap();
                    }
                }));
            }
        }
        for w in writers {
            w.await.unwrap();
        }
        let v = a.verify_audit().await.unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 120);
        // A writer that rolls back leaves no gap: the next entry follows.
        let mut tx = a.pool.begin().await.unwrap();
        insert_audit(&mut tx, audit(999)).await.unwrap();
        tx.rollback().await.unwrap();
        a.audit(audit(1000)).await.unwrap();
        let v = a.verify_audit().await.unwrap();
        assert!(v.ok && v.entries == 121, "{v:?}");
    }

    /// Versions 1 and 2 of `hello`.
    async fn two_versions(s: &PostgresStore) {
        let m = serde_json::json!({});
        for d in ["sha256:a", "sha256:b"] {
            s.create_version(new_version("hello", d, &m)).await.unwrap();
        }
    }

    /// A canary of hello@2 over hello@1 on production (candidate at 0%).
    async fn start_canary(s: &PostgresStore) -> Result<DeploymentRecord> {
        let weights = [
            WeightedVersion {
                version: 1,
                weight: 100,
            },
            WeightedVersion {
                version: 2,
                weight: 0,
            },
        ];
        s.start_rollout(NewRollout {
            function: "hello",
            environment: "production",
            strategy: Strategy::Canary,
            from_weights: None,
            weights: &weights,
            actor: "t",
            reason: None,
            digest: None,
            plan: &serde_json::json!({}),
            baseline: 1,
            candidate: 2,
            sticky_header: None,
        })
        .await
    }

    #[tokio::test]
    async fn two_nodes_starting_a_rollout_on_one_route_get_one_deployment() {
        let Some((schema, a)) = store().await else {
            return;
        };
        let b = schema.node().await;
        two_versions(&a).await;
        let start = |s: PostgresStore| async move { start_canary(&s).await };
        for _ in 0..5 {
            let (x, y) = tokio::join!(start(a.clone()), start(b.clone()));
            let won = [&x, &y].iter().filter(|r| r.is_ok()).count();
            let busy = [x.as_ref().err(), y.as_ref().err()]
                .into_iter()
                .flatten()
                .filter(|e| matches!(e, Error::State(StateError::Busy { .. })))
                .count();
            let active = a.active_deployments().await.unwrap();
            assert_eq!(active.len(), 1, "one rollout owns the route");
            let id = active[0].id;
            assert!(won == 1 && busy == 1, "{x:?} {y:?}");
            // End it, so the next round races again.
            a.transition(
                id,
                Transition {
                    state: DeploymentState::Succeeded,
                    step: None,
                    weights: None,
                    finished: true,
                    event: "succeeded",
                    detail: serde_json::json!({}),
                    audit: None,
                    fence: None,
                },
            )
            .await
            .unwrap();
        }
        let v = a.verify_audit().await.unwrap();
        assert!(v.ok, "{v:?}");
    }

    #[tokio::test]
    async fn one_node_holds_the_lease_until_it_expires_and_an_old_holder_is_fenced() {
        let Some((schema, a)) = store().await else {
            return;
        };
        let b = schema.node().await;
        let ttl = std::time::Duration::from_millis(400);
        let ea = a
            .acquire_lease("a", ttl)
            .await
            .unwrap()
            .expect("a free lease");
        assert_eq!(b.acquire_lease("b", ttl).await.unwrap(), None, "held by a");
        // Renewal keeps the epoch.
        assert_eq!(a.acquire_lease("a", ttl).await.unwrap(), Some(ea));
        let l = b.lease().await.unwrap().unwrap();
        assert_eq!((l.holder.as_deref(), l.epoch), (Some("a"), ea));
        assert!(l.expires_in_ms > 0 && l.expires_in_ms <= 400, "{l:?}");

        // A rollout a's driver moves under its fence.
        two_versions(&a).await;
        let d = start_canary(&a).await.unwrap();
        let step = |fence: Fence, step: u32| Transition {
            state: DeploymentState::Progressing,
            step: Some(step),
            weights: None,
            finished: false,
            event: "step",
            detail: serde_json::json!({}),
            audit: None,
            fence: Some(fence),
        };
        let fa = Fence {
            node: "a".into(),
            epoch: ea,
        };
        a.transition(d.id, step(fa.clone(), 1)).await.unwrap();

        // a stalls past its lease: b takes over with a new epoch, and a's
        // next transition is refused and changes nothing.
        tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
        let eb = b
            .acquire_lease("b", ttl)
            .await
            .unwrap()
            .expect("expired: taken");
        assert!(eb > ea);
        assert_eq!(
            a.acquire_lease("a", ttl).await.unwrap(),
            None,
            "b holds it now"
        );
        let e = a.transition(d.id, step(fa, 2)).await.unwrap_err();
        assert!(
            matches!(e, Error::State(StateError::Fenced { epoch }) if epoch == ea),
            "{e:?}"
        );
        assert_eq!(a.deployment(d.id).await.unwrap().unwrap().0.step, 1);
        let fb = Fence {
            node: "b".into(),
            epoch: eb,
        };
        b.transition(d.id, step(fb, 2)).await.unwrap();
        assert_eq!(a.deployment(d.id).await.unwrap().unwrap().0.step, 2);

        // A clean stop hands the lease over at once.
        b.release_lease("b", eb).await.unwrap();
        let next = a.acquire_lease("a", ttl).await.unwrap().expect("released");
        assert!(next > eb);
    }

    #[tokio::test]
    async fn nodes_report_their_versions_and_silent_ones_drop_out() {
        let Some((schema, a)) = store().await else {
            return;
        };
        let b = schema.node().await;
        let report = |node: &str, requests: u64| seal_state::NodeReport {
            node: node.into(),
            api: "127.0.0.1:1".into(),
            gateway: "127.0.0.1:2".into(),
            release: "0.1.0".into(),
            started_at: 5,
            versions: vec![seal_state::NodeVersion {
                environment: "production".into(),
                function: "hello".into(),
                version: 1,
                weight: 100,
                counters: serde_json::json!({"requests": requests}),
            }],
            rollouts: serde_json::json!({"7": {"step": 1}}),
        };
        a.report_node(&report("a", 3)).await.unwrap();
        b.report_node(&report("b", 7)).await.unwrap();
        b.report_node(&report("b", 9)).await.unwrap();
        let nodes = a.nodes(std::time::Duration::from_secs(60)).await.unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].report, report("a", 3));
        assert_eq!(
            nodes[1].report,
            report("b", 9),
            "the latest report replaces the last"
        );
        assert!(nodes.iter().all(|n| n.heartbeat_age_ms < 60_000));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        b.report_node(&report("b", 10)).await.unwrap();
        let recent = a
            .nodes(std::time::Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(
            recent
                .iter()
                .map(|n| n.report.node.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[tokio::test]
    async fn version_numbers_count_up_under_concurrent_publishes() {
        let Some((schema, a)) = store().await else {
            return;
        };
        let b = schema.node().await;
        let m = serde_json::json!({});
        let mut jobs = Vec::new();
        for i in 0..20 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let m = m.clone();
            jobs.push(tokio::spawn(async move {
                let d = format!("sha256:{i}");
                s.create_version(new_version("hello", &d, &m))
                    .await
                    .unwrap()
                    .0
                    .version
            }));
        }
        let mut got = Vec::new();
        for j in jobs {
            got.push(j.await.unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (1..=20).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_change_on_one_node_wakes_a_waiter_on_another_and_a_tick_does_not() {
        let Some((schema, a)) = store().await else {
            return;
        };
        let b = schema.node().await;
        let seen = b.change_revision().await.unwrap();
        let poll = std::time::Duration::from_secs(30);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                (b.wait_for_change(seen, poll).await.unwrap(), t.elapsed())
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(a.create_environment("qa", "t").await.unwrap());
        let (now, took) = waiter.await.unwrap();
        // Other tests' schemas share the channel; their announcements
        // never wake this one.
        assert!(now > seen, "{now} > {seen}");
        assert!(
            took < std::time::Duration::from_secs(10),
            "woken by NOTIFY, not the poll: {took:?}"
        );
        // A cron tick moves a trigger's last tick, not the revision.
        let t = seal_state::TriggerRecord {
            name: "nightly".into(),
            environment: "production".into(),
            function: "f".into(),
            spec: serde_json::from_value(
                serde_json::json!({"kind": "cron", "schedule": "0 3 * * *"}),
            )
            .unwrap(),
            created_at: 0,
            created_by: "t".into(),
        };
        assert!(a.create_trigger(&t).await.unwrap());
        let before = a.change_revision().await.unwrap();
        assert!(before > now, "a binding is a change");
        let run = seal_state::CronRun {
            trigger: "nightly".into(),
            scheduled_at: 1_000,
            fired_at: 1_001,
            status: "running".into(),
            version: None,
            digest: None,
            http_status: None,
            duration_ms: None,
            error: None,
        };
        assert!(a.commit_tick(&run).await.unwrap());
        assert_eq!(a.change_revision().await.unwrap(), before);
        // With nothing announced, a wait ends at its poll.
        let t = std::time::Instant::now();
        let r = b
            .wait_for_change(before, std::time::Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(r, before);
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    }

    #[tokio::test]
    async fn the_audit_chain_finds_the_first_edited_or_missing_entry() {
        let Some((_schema, s)) = store().await else {
            return;
        };
        async fn exec(s: &PostgresStore, sql: &str) {
            sqlx::query(sql).execute(&s.pool).await.unwrap();
        }
        for i in 0..5 {
            s.audit(audit(i)).await.unwrap();
        }
        let v = s.verify_audit().await.unwrap();
        assert!(v.ok && v.entries == 5 && v.first_broken.is_none(), "{v:?}");
        exec(&s, "UPDATE audit SET actor = 'mallory' WHERE id = 2").await;
        let b = s.verify_audit().await.unwrap().first_broken.unwrap();
        assert_eq!(b.id, 2);
        assert!(b.reason.contains("changed"), "{}", b.reason);
        exec(&s, "UPDATE audit SET actor = 't' WHERE id = 2").await;
        exec(&s, "DELETE FROM audit WHERE id = 4").await;
        let b = s.verify_audit().await.unwrap().first_broken.unwrap();
        assert_eq!(b.id, 5);
        assert!(b.reason.contains("missing"), "{}", b.reason);
    }
}
