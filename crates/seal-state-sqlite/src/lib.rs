//! The embedded state backend: one SQLite file reached through sqlx, with
//! migrations in `migrations/`. Implements every trait of `seal-state`
//! and passes its contract suite.
//!
//! The SQL is kept to what PostgreSQL also runs (BIGINT unix-millisecond
//! times, TEXT JSON, no `AUTOINCREMENT`). Ids are `MAX(id) + 1`, which is
//! safe here only because every write goes through one connection (one
//! writer); the PostgreSQL backend uses identity columns instead. Plain
//! reads go through a small pool of read-only connections beside it (WAL
//! lets them read while the writer commits), so a token lookup or a
//! backlog read never waits behind a commit.

use seal_state::{
    AUDIT_GENESIS, AppliedFile, AuditRecord, AuditVerification, Budget, DeploymentEvent,
    DeploymentRecord, HOUR_MS, HoldRelease, NewAudit, NewDeployment, NewRollout, NewVersion,
    ReleaseRecord, RouteRecord, StateError, StepOutcome, Transition, UsageDelta, UsageRow,
    VersionRecord, audit_hash, now_ms,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::Path;

use seal_state_sql::{
    AUDIT_COLUMNS, AuditRow, BudgetRow, DeploymentRow, RouteRow, UsageRowDb, VersionRow,
    audit_record, verify_chain, weights_json,
};

mod captures;
mod events;
mod flags;
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
            other => StateError::Backend(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one writer: every transaction and every write.
    pool: SqlitePool,
    /// Read-only connections for reads outside a transaction. A write
    /// has committed before it returns, so a read that follows it sees it.
    read: SqlitePool,
}

/// Read-only connections beside the writer.
const READERS: u32 = 2;

impl SqliteStore {
    /// Opens (creating if needed) the SQLite database at `path` and runs migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        // One writer connection: a single writer makes `MAX(id) + 1`
        // allocation and read-modify-write transactions trivially serial.
        // The HTTP data plane never touches the database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        // Whether this open adds the audit chain (migration 4): only then are
        // older entries chained. Later, an entry without a hash is a broken
        // link for `verify_audit`, never silently re-chained.
        let had_chain: bool = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 4 AND success",
        )
        .fetch_one(&pool)
        .await
        .map(|n| n > 0)
        .unwrap_or(false);
        sqlx::migrate!("./migrations").run(&pool).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true)
                    .busy_timeout(std::time::Duration::from_secs(10)),
            )
            .await?;
        let store = Self { pool, read };
        if !had_chain {
            store.chain_unhashed_audit().await?;
        }
        Ok(store)
    }

    /// Closes both pools (their maintenance tasks end with them): for a
    /// store opened for one job, e.g. `seal migrate`.
    pub async fn close(self) {
        self.pool.close().await;
        self.read.close().await;
    }

    pub async fn version_by_digest(&self, digest: &str) -> Result<Option<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>("SELECT * FROM versions WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.read)
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
        .fetch_optional(&self.read)
        .await?
        .map(|r| r.try_into().map_err(Error::from))
        .transpose()
    }

    pub async fn versions(&self, function: &str) -> Result<Vec<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>(
            "SELECT * FROM versions WHERE function = $1 ORDER BY number",
        )
        .bind(function)
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(|r| r.try_into().map_err(Error::from))
        .collect()
    }

    pub async fn all_versions(&self) -> Result<Vec<VersionRecord>> {
        sqlx::query_as::<_, VersionRow>("SELECT * FROM versions ORDER BY function, number")
            .fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|r| r.try_into().map_err(Error::from))
            .collect()
    }

    pub async fn function_exists(&self, name: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM functions WHERE name = $1")
            .bind(name)
            .fetch_one(&self.read)
            .await?;
        Ok(n > 0)
    }

    pub async fn functions(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM functions ORDER BY name")
                .fetch_all(&self.read)
                .await?,
        )
    }

    /// Creates `function@N` for `digest`, or returns the version that digest
    /// already has (`false` = not created). Writes an audit entry when it
    /// creates one.
    pub async fn create_version(&self, new: NewVersion<'_>) -> Result<(VersionRecord, bool)> {
        let mut tx = self.pool.begin().await?;
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
            .fetch_one(&self.read)
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
                .fetch_all(&self.read)
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
            .bind(protected.map(i64::from))
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
        statement: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
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
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, protected FROM environments WHERE protected IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|(n, p)| (n, p != 0)).collect())
    }

    pub async fn routes(&self) -> Result<Vec<RouteRecord>> {
        sqlx::query_as::<_, RouteRow>("SELECT * FROM routes ORDER BY environment, function")
            .fetch_all(&self.read)
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
        .fetch_optional(&self.read)
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
        let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM deployments")
            .fetch_one(&mut *tx)
            .await?;
        let to = weights_json(new.to_weights);
        let from = new.from_weights.map(weights_json);
        sqlx::query(
            "INSERT INTO deployments (id, function, environment, kind, strategy, state, from_weights, to_weights, actor, reason, created_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, 'succeeded', $6, $7, $8, $9, $10, $10)",
        )
        .bind(id)
        .bind(new.function)
        .bind(new.environment)
        .bind(new.kind.as_str())
        .bind(new.strategy.as_str())
        .bind(&from)
        .bind(&to)
        .bind(new.actor)
        .bind(new.reason)
        .bind(now)
        .execute(&mut *tx)
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
        let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM deployments")
            .fetch_one(&mut *tx)
            .await?;
        let weights = weights_json(new.weights);
        let from = new.from_weights.map(weights_json);
        sqlx::query(
            "INSERT INTO deployments (id, function, environment, kind, strategy, state, from_weights, to_weights, actor, reason,
                 created_at, finished_at, plan, baseline, candidate, step, step_started_at)
             VALUES ($1, $2, $3, 'deploy', $4, 'progressing', $5, $6, $7, $8, $9, NULL, $10, $11, $12, 0, $9)",
        )
        .bind(id)
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
        .execute(&mut *tx)
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
        let Some(row) =
            sqlx::query_as::<_, DeploymentRow>("SELECT * FROM deployments WHERE id = $1")
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
        .fetch_all(&self.read)
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
        tx: &mut Transaction<'_, Sqlite>,
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
        .fetch_all(&self.read)
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
        .fetch_all(&self.read)
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
        let id: i64 = sqlx::query_scalar("INSERT INTO releases (id, file_digest, environments, source, actor, state, plan, outcomes, created_at, node) VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM releases), $1, $2, $3, $4, 'running', $5, $6, $7, $8) RETURNING id")
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
        .fetch_all(&self.read)
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
        .fetch_optional(&self.read)
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
        .fetch_all(&self.read)
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
                .fetch_optional(&self.read)
                .await?
        else {
            return Ok(None);
        };
        let events: Vec<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT seq, at, kind, detail FROM deployment_events WHERE deployment_id = $1 ORDER BY seq",
        )
        .bind(id as i64)
        .fetch_all(&self.read)
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
        .fetch_all(&self.read)
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
                .fetch_all(&self.read)
                .await?;
        Ok(verify_chain(rows))
    }

    /// Chains the entries written before the chain existed, in id order,
    /// when the chain's migration is applied: from then on they are covered.
    async fn chain_unhashed_audit(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<AuditRow> =
            sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"))
                .fetch_all(&mut *tx)
                .await?;
        if rows.iter().any(|r| r.9.is_some()) {
            return Ok(());
        }
        let mut prev = AUDIT_GENESIS.to_owned();
        for (id, at, actor, action, object, digest, outcome, detail, prev_hash, hash) in rows {
            if let (Some(p), Some(h)) = (prev_hash, hash) {
                if p != prev {
                    return Err(StateError::Corrupt(format!(
                        "audit entry {id} does not follow the entry before it"
                    ))
                    .into());
                }
                prev = h;
                continue;
            }
            let h = audit_hash(
                &prev,
                id,
                at,
                &actor,
                &action,
                &object,
                digest.as_deref(),
                &outcome,
                &detail,
            );
            sqlx::query("UPDATE audit SET prev_hash = $1, hash = $2 WHERE id = $3")
                .bind(&prev)
                .bind(&h)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            prev = h;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Refuses a new deployment while the route has an active one.
async fn ensure_idle(
    tx: &mut Transaction<'_, Sqlite>,
    function: &str,
    environment: &str,
) -> Result<()> {
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
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<()> {
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
    tx: &mut Transaction<'_, Sqlite>,
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
    tx: &mut Transaction<'_, Sqlite>,
    entry: NewAudit<'_>,
) -> Result<()> {
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

impl SqliteStore {
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
        .fetch_all(&self.read)
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
                .fetch_optional(&self.read)
                .await?
                .map(Budget::from),
        )
    }

    pub async fn budgets(&self) -> Result<Vec<Budget>> {
        Ok(
            sqlx::query_as::<_, BudgetRow>("SELECT * FROM budgets ORDER BY function")
                .fetch_all(&self.read)
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

#[cfg(test)]
mod tests {
    use super::*;
    use seal_state::{DeploymentKind, DeploymentState, Strategy, WeightedVersion};

    async fn fresh() -> (
        tempfile::TempDir,
        std::sync::Arc<dyn seal_state::StateStore>,
    ) {
        let (dir, s) = store().await;
        (dir, std::sync::Arc::new(s))
    }

    seal_state::contract_tests!(fresh);

    type Fresh = (
        tempfile::TempDir,
        std::sync::Arc<dyn seal_state::StateStore>,
        std::sync::Arc<dyn seal_state::Queues>,
    );

    async fn fresh_queues() -> Option<Fresh> {
        let (dir, s) = fresh().await;
        let q = std::sync::Arc::new(seal_state::StoreQueues(s.clone()));
        Some((dir, s, q))
    }

    mod queues {
        use super::fresh_queues;
        seal_state::queue_contract_tests!(fresh_queues);
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap();
        (dir, s)
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

    #[tokio::test]
    async fn deployments_move_routes_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&path).await.unwrap();
            let m = serde_json::json!({});
            s.create_version(new_version("hello", "sha256:a", &m))
                .await
                .unwrap();
            let to = [WeightedVersion {
                version: 1,
                weight: 100,
            }];
            let d = s
                .record_deployment(NewDeployment {
                    function: "hello",
                    environment: "production",
                    kind: DeploymentKind::Deploy,
                    strategy: Strategy::AllAtOnce,
                    from_weights: None,
                    to_weights: &to,
                    actor: "test",
                    reason: None,
                    digest: Some("sha256:a"),
                })
                .await
                .unwrap();
            assert_eq!(d.id, 1);
            assert_eq!(d.state, DeploymentState::Succeeded);
            let (_, events) = s.deployment(1).await.unwrap().unwrap();
            assert_eq!(events.len(), 3);
        }
        let s = SqliteStore::open(&path).await.unwrap();
        let route = s.route("production", "hello").await.unwrap().unwrap();
        assert_eq!(
            route.weights,
            vec![WeightedVersion {
                version: 1,
                weight: 100
            }]
        );
        assert_eq!(route.deployment_id, 1);
    }

    #[tokio::test]
    async fn the_audit_chain_finds_the_first_edited_or_missing_entry() {
        async fn exec(s: &SqliteStore, sql: &str) {
            sqlx::query(sql).execute(&s.pool).await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = SqliteStore::open(&path).await.unwrap();
        assert_eq!(s.verify_audit().await.unwrap().entries, 0);
        for i in 0..5 {
            s.audit(NewAudit {
                actor: "t",
                action: "test",
                object: &format!("o{i}"),
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"i": i}),
            })
            .await
            .unwrap();
        }
        let v = s.verify_audit().await.unwrap();
        assert!(v.ok && v.entries == 5 && v.first_broken.is_none(), "{v:?}");
        let log = s.audit_log(10).await.unwrap();
        assert_eq!(log[0].hash, v.head);
        assert_eq!(log[4].prev_hash.as_deref(), Some(AUDIT_GENESIS));

        // An edited field breaks that entry's own hash.
        exec(&s, "UPDATE audit SET actor = 'mallory' WHERE id = 2").await;
        let v = s.verify_audit().await.unwrap();
        assert!(!v.ok);
        let b = v.first_broken.unwrap();
        assert_eq!(b.id, 2);
        assert!(b.reason.contains("changed"), "{}", b.reason);
        assert_eq!(v.entries, 1);

        // Rehashing the edited entry does not help: the next one no longer
        // follows it.
        let row: (i64, String, String, String, String, String, String) = sqlx::query_as(
            "SELECT at, actor, action, object, outcome, detail, prev_hash FROM audit WHERE id = 2",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        let forged = audit_hash(
            &row.6, 2, row.0, &row.1, &row.2, &row.3, None, &row.4, &row.5,
        );
        sqlx::query("UPDATE audit SET hash = $1 WHERE id = 2")
            .bind(&forged)
            .execute(&s.pool)
            .await
            .unwrap();
        let b = s.verify_audit().await.unwrap().first_broken.unwrap();
        assert_eq!(b.id, 3);
        assert!(b.reason.contains("prev_hash"), "{}", b.reason);

        // A removed entry is a gap.
        exec(&s, "DELETE FROM audit WHERE id = 4").await;
        exec(&s, "UPDATE audit SET actor = 't', hash = (SELECT prev_hash FROM audit WHERE id = 3) WHERE id = 2").await;
        let b = s.verify_audit().await.unwrap().first_broken.unwrap();
        assert_eq!(b.id, 5);
        assert!(b.reason.contains("missing"), "{}", b.reason);

        // Clearing hashes is not "legacy data": a reopen does not re-chain.
        exec(&s, "UPDATE audit SET hash = NULL, prev_hash = NULL").await;
        drop(s);
        let s = SqliteStore::open(&path).await.unwrap();
        let v = s.verify_audit().await.unwrap();
        assert_eq!(v.first_broken.unwrap().id, 1);
    }
}
