//! Queues, triggers, events and their deliveries, cron ticks.
//!
//! An event is stored once, with one delivery row per queue trigger of its
//! queue, in the transaction that answers the producer. A delivery is
//! claimed by moving it to `running` with a lease; an attempt's record and
//! what follows it (done, retry at, dead letter) are one transaction.

use crate::{Error, Result, SqliteStore, insert_audit};
use seal_state::{
    AttemptRecord, Backlog, ClaimDue, ClaimNew, Claimed, CronRun, DeadLetter, DeliveryRecord,
    Enqueue, Enqueued, EventRecord, Finished, NewAudit, NewEvent, NextStep, QueueRecord,
    StateError, TriggerRecord, TriggerSpec,
};
use seal_state_sql::{
    AttemptRow, BacklogRow, ClaimRow, DEAD_SELECT, DeadRow, DeliveryRow, EventRow, QueueRow,
    RunRow, TriggerRow,
};
use std::collections::HashMap;

/// Runs `$body` in one transaction committed without waiting for the
/// disk (`synchronous = NORMAL`; WAL mode keeps it atomic, and a process
/// crash loses nothing; a power cut may lose the last ones). Only for
/// writes whose loss repeats work — a claim (the event stays due), an
/// attempt's outcome (the event is delivered again: at least once) —
/// never for what a caller was told is durable: an enqueue stays `FULL`.
/// It runs as its own task, so a caller that stops waiting cannot leave
/// the connection relaxed: `FULL` is restored before the connection goes
/// back to the pool, or the connection is closed.
macro_rules! relaxed {
    ($pool:expr, $tx:ident => $body:block) => {{
        let pool = $pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            // The switch and the BEGIN go in one round trip to the
            // connection's thread, the end and the switch back in another.
            if let Err(e) = sqlx::query("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
            {
                conn.close_on_drop();
                return Err(Error::from(e));
            }
            let result: Result<_> = async {
                let $tx: &mut sqlx::SqliteConnection = &mut *conn;
                Ok($body)
            }
            .await;
            let end = if result.is_ok() {
                "COMMIT; PRAGMA synchronous = FULL"
            } else {
                "ROLLBACK; PRAGMA synchronous = FULL"
            };
            if let Err(e) = sqlx::query(end).execute(&mut *conn).await {
                // A failed COMMIT may leave the transaction open and the
                // connection relaxed: it is not given back.
                conn.close_on_drop();
                result?;
                return Err(Error::from(e));
            }
            result
        })
        .await
        .map_err(|e| Error::from(StateError::Backend(format!("relaxed transaction: {e}"))))??
    }};
}

impl SqliteStore {
    pub async fn create_queue(&self, q: &QueueRecord) -> Result<bool> {
        let object = format!("{}/{}", q.environment, q.name);
        self.change_audited(
            sqlx::query(
                "INSERT INTO queues (environment, name, dedup_window_ms, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&q.environment)
            .bind(&q.name)
            .bind(q.dedup_window_ms as i64)
            .bind(q.created_at)
            .bind(&q.created_by),
            NewAudit {
                actor: &q.created_by,
                action: "queue.create",
                object: &object,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"dedup_window_ms": q.dedup_window_ms}),
            },
        )
        .await
    }

    pub async fn queues(&self, environment: Option<&str>) -> Result<Vec<QueueRecord>> {
        let rows: Vec<QueueRow> = sqlx::query_as(
            "SELECT * FROM queues WHERE $1 IS NULL OR environment = $1 ORDER BY environment, name",
        )
        .bind(environment)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn queue(&self, environment: &str, name: &str) -> Result<Option<QueueRecord>> {
        let row: Option<QueueRow> =
            sqlx::query_as("SELECT * FROM queues WHERE environment = $1 AND name = $2")
                .bind(environment)
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.map(Into::into))
    }

    pub async fn delete_queue(&self, environment: &str, name: &str, actor: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let readers: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM triggers WHERE environment = $1 AND queue = $2 ORDER BY name",
        )
        .bind(environment)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !readers.is_empty() {
            return Err(StateError::Conflict(format!(
                "queue {name} in {environment} is read by trigger(s) {}: delete them first",
                readers.join(", ")
            ))
            .into());
        }
        let gone = sqlx::query("DELETE FROM queues WHERE environment = $1 AND name = $2")
            .bind(environment)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(false);
        }
        let events = sqlx::query("DELETE FROM events WHERE environment = $1 AND queue = $2")
            .bind(environment)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM deliveries WHERE event_id NOT IN (SELECT id FROM events)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM attempts WHERE delivery_id NOT IN (SELECT id FROM deliveries)")
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor,
                action: "queue.delete",
                object: &format!("{environment}/{name}"),
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"events_deleted": events}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn create_trigger(&self, t: &TriggerRecord) -> Result<bool> {
        let queue = match &t.spec {
            TriggerSpec::Queue(q) => Some(q.queue.as_str()),
            TriggerSpec::Cron(_) => None,
        };
        let spec = serde_json::to_string(&t.spec)
            .map_err(|e| StateError::Backend(format!("trigger spec: {e}")))?;
        self.change_audited(
            sqlx::query(
                "INSERT INTO triggers (name, kind, environment, function, queue, spec, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(&t.name)
            .bind(t.spec.kind())
            .bind(&t.environment)
            .bind(&t.function)
            .bind(queue)
            .bind(spec)
            .bind(t.created_at)
            .bind(&t.created_by),
            NewAudit {
                actor: &t.created_by,
                action: "trigger.create",
                object: &t.name,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({
                    "environment": t.environment,
                    "function": t.function,
                    "spec": t.spec,
                }),
            },
        )
        .await
    }

    pub async fn triggers(&self) -> Result<Vec<TriggerRecord>> {
        let rows: Vec<TriggerRow> = sqlx::query_as(
            "SELECT name, environment, function, spec, created_at, created_by FROM triggers ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| r.try_into().map_err(Error::from))
            .collect()
    }

    pub async fn trigger(&self, name: &str) -> Result<Option<TriggerRecord>> {
        let row: Option<TriggerRow> = sqlx::query_as(
            "SELECT name, environment, function, spec, created_at, created_by FROM triggers WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| r.try_into().map_err(Error::from)).transpose()
    }

    pub async fn delete_trigger(&self, name: &str, actor: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM triggers WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(false);
        }
        let dropped = sqlx::query(
            "DELETE FROM deliveries WHERE trigger = $1 AND state IN ('pending', 'running')",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        insert_audit(
            &mut tx,
            NewAudit {
                actor,
                action: "trigger.delete",
                object: name,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"pending_deliveries_dropped": dropped}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn enqueue_and_claim(
        &self,
        batch: &[Enqueue<'_>],
        claims: &[ClaimNew<'_>],
    ) -> Result<(Vec<Vec<Enqueued>>, Vec<Claimed>)> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        let mut claim: HashMap<&str, (i64, u32)> = claims
            .iter()
            .map(|c| (c.trigger, (c.lease_until, c.limit)))
            .collect();
        let mut claimed = Vec::new();
        for e in batch {
            out.push(enqueue_in(&mut tx, e, &mut claim, &mut claimed).await?);
        }
        tx.commit().await?;
        Ok((out, claimed))
    }

    pub async fn claim_due(
        &self,
        trigger: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        let trigger = trigger.to_owned();
        let rows = relaxed!(self.pool, tx => {
            claim_in(tx, &trigger, now, lease_until, limit).await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn next_due(&self, trigger: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(at) FROM ( \
                SELECT next_at AS at FROM (SELECT next_at FROM deliveries \
                    WHERE trigger = $1 AND state = 'pending' ORDER BY next_at LIMIT 1) \
                UNION ALL \
                SELECT MIN(lease_until) FROM deliveries WHERE trigger = $1 AND state = 'running')",
        )
        .bind(trigger)
        .fetch_one(&self.read)
        .await?)
    }

    pub async fn finish_deliveries(&self, done: &[Finished]) -> Result<()> {
        let done = done.to_vec();
        relaxed!(self.pool, tx => {
            finish_in(tx, &done).await?;
        });
        Ok(())
    }

    pub async fn finish_and_claim(
        &self,
        done: &[Finished],
        claims: &[ClaimDue<'_>],
    ) -> Result<Vec<Vec<Claimed>>> {
        let done = done.to_vec();
        let claims: Vec<(String, i64, i64, u32)> = claims
            .iter()
            .map(|c| (c.trigger.name.clone(), c.now, c.lease_until, c.limit))
            .collect();
        let claimed = relaxed!(self.pool, tx => {
            finish_in(tx, &done).await?;
            let mut claimed = Vec::with_capacity(claims.len());
            for (trigger, now, lease_until, limit) in &claims {
                claimed.push(claim_in(tx, trigger, *now, *lease_until, *limit).await?);
            }
            claimed
        });
        Ok(claimed
            .into_iter()
            .map(|rows| rows.into_iter().map(Into::into).collect())
            .collect())
    }

    pub async fn release_running(&self, now: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, next_at = MIN(next_at, $1) \
             WHERE state = 'running'",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn backlog(&self) -> Result<Vec<Backlog>> {
        let rows: Vec<BacklogRow> = sqlx::query_as(
            "SELECT e.environment, e.queue, d.trigger, d.function, \
                    SUM(CASE WHEN d.state = 'pending' THEN 1 ELSE 0 END) AS pending, \
                    SUM(CASE WHEN d.state = 'running' THEN 1 ELSE 0 END) AS running, \
                    MIN(e.enqueued_at) AS oldest \
             FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE d.state IN ('pending', 'running') \
             GROUP BY e.environment, e.queue, d.trigger, d.function",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn sweep_events(&self, before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let gone: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM events e WHERE e.enqueued_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state <> 'done') \
             ORDER BY id LIMIT 10000",
        )
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        for id in &gone {
            sqlx::query(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM deliveries WHERE event_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM events WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    pub async fn event(&self, id: u64) -> Result<Option<EventRecord>> {
        let row: Option<EventRow> = sqlx::query_as(
            "SELECT id, environment, queue, ce_id, ce_source, ce_type, event, enqueued_at \
                 FROM events WHERE id = $1",
        )
        .bind(id as i64)
        .fetch_optional(&self.read)
        .await?;
        let Some(EventRow {
            id,
            environment,
            queue,
            ce_id,
            ce_source: source,
            ce_type: ty,
            event,
            enqueued_at,
        }) = row
        else {
            return Ok(None);
        };
        let deliveries: Vec<DeliveryRow> = sqlx::query_as(
            "SELECT id, trigger, function, state, attempts, next_at, dead_reason, last_error, finished_at \
             FROM deliveries WHERE event_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let did = d.id;
            let mut rec: DeliveryRecord = d.try_into()?;
            let attempts: Vec<AttemptRow> = sqlx::query_as(
                "SELECT attempt, version, digest, status, outcome, error_kind, started_at, duration_ms \
                 FROM attempts WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(did)
            .fetch_all(&self.read)
            .await?;
            rec.history = attempts.into_iter().map(Into::into).collect();
            out.push(rec);
        }
        Ok(Some(EventRecord {
            id: id as u64,
            environment,
            queue,
            ce_id,
            source,
            ty,
            enqueued_at,
            event: serde_json::from_str(&event)
                .map_err(|e| StateError::Corrupt(format!("event {id}: {e}")))?,
            deliveries: out,
        }))
    }

    pub async fn dead_letters(
        &self,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> Result<Vec<DeadLetter>> {
        let rows: Vec<DeadRow> = sqlx::query_as(&format!(
            "{DEAD_SELECT} AND ($1 IS NULL OR e.environment = $1) AND ($2 IS NULL OR e.queue = $2) ORDER BY d.id"
        ))
        .bind(environment)
        .bind(queue)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let row: Option<DeadRow> = sqlx::query_as(&format!("{DEAD_SELECT} AND d.id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(Into::into))
    }

    pub async fn redrive(
        &self,
        ids: &[u64],
        to: Option<u64>,
        now: i64,
        actor: &str,
    ) -> Result<Vec<u64>> {
        let mut tx = self.pool.begin().await?;
        let mut changed = Vec::new();
        for id in ids {
            let n = sqlx::query(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = $2, pinned_version = $3, \
                 dead_reason = NULL, finished_at = NULL WHERE id = $1 AND state = 'dead'",
            )
            .bind(*id as i64)
            .bind(now)
            .bind(to.map(|v| v as i64))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                changed.push(*id);
            }
        }
        if !changed.is_empty() {
            insert_audit(
                &mut tx,
                NewAudit {
                    actor,
                    action: "dlq.redrive",
                    object: &format!("{} dead letter(s)", changed.len()),
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::json!({"ids": changed, "to": to}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub async fn purge(&self, ids: &[u64], actor: &str) -> Result<Vec<u64>> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = Vec::new();
        for id in ids {
            let n = sqlx::query("DELETE FROM deliveries WHERE id = $1 AND state = 'dead'")
                .bind(*id as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query("DELETE FROM attempts WHERE delivery_id = $1")
                    .bind(*id as i64)
                    .execute(&mut *tx)
                    .await?;
                deleted.push(*id);
            }
        }
        if !deleted.is_empty() {
            sqlx::query("DELETE FROM events WHERE id NOT IN (SELECT event_id FROM deliveries)")
                .execute(&mut *tx)
                .await?;
            insert_audit(
                &mut tx,
                NewAudit {
                    actor,
                    action: "dlq.purge",
                    object: &format!("{} dead letter(s)", deleted.len()),
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::json!({"ids": deleted}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    pub async fn commit_tick(&self, run: &CronRun) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE triggers SET last_tick = $2 WHERE name = $1 AND (last_tick IS NULL OR last_tick < $2)",
        )
        .bind(&run.trigger)
        .bind(run.scheduled_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        insert_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn finish_run(&self, run: &CronRun) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn interrupt_runs(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE cron_runs SET status = 'interrupted', error = 'the server stopped during the run' \
             WHERE status = 'running'",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub async fn cron_runs(&self, trigger: &str, limit: u32) -> Result<Vec<CronRun>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT * FROM cron_runs WHERE trigger = $1 ORDER BY scheduled_at DESC LIMIT $2",
        )
        .bind(trigger)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn last_tick(&self, trigger: &str) -> Result<Option<i64>> {
        let t: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_tick FROM triggers WHERE name = $1")
                .bind(trigger)
                .fetch_optional(&self.read)
                .await?;
        Ok(t.flatten())
    }
}

/// Inserts or replaces a cron run row (keyed by trigger and tick).
async fn insert_run(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, run: &CronRun) -> Result<()> {
    sqlx::query(
        "INSERT INTO cron_runs (trigger, scheduled_at, fired_at, status, version, digest, http_status, duration_ms, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (trigger, scheduled_at) DO UPDATE SET status = excluded.status, \
         version = excluded.version, digest = excluded.digest, http_status = excluded.http_status, \
         duration_ms = excluded.duration_ms, error = excluded.error",
    )
    .bind(&run.trigger)
    .bind(run.scheduled_at)
    .bind(run.fired_at)
    .bind(&run.status)
    .bind(run.version.map(|v| v as i64))
    .bind(run.digest.as_deref())
    .bind(run.http_status.map(i64::from))
    .bind(run.duration_ms.map(|d| d as i64))
    .bind(run.error.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Claims up to `limit` due deliveries of `trigger`, inside a transaction.
async fn claim_in(
    tx: &mut sqlx::SqliteConnection,
    trigger: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<ClaimRow>> {
    let rows: Vec<ClaimRow> = sqlx::query_as(
        "SELECT d.id, d.event_id, d.trigger, d.function, d.attempts, d.pinned_version, \
                e.environment, e.queue, e.ce_id, e.enqueued_at, e.event, \
                (SELECT COALESCE(MAX(a.attempt), 0) FROM attempts a WHERE a.delivery_id = d.id) AS last_attempt \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.id IN ( \
            SELECT id FROM (SELECT id FROM deliveries \
                WHERE trigger = $1 AND state = 'running' AND lease_until <= $2 \
                ORDER BY lease_until LIMIT $3) \
            UNION ALL \
            SELECT id FROM (SELECT id FROM deliveries \
                WHERE trigger = $1 AND state = 'pending' AND next_at <= $2 \
                ORDER BY next_at, id LIMIT $3) \
            LIMIT $3) \
         ORDER BY d.next_at, d.id",
    )
    .bind(trigger)
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?;
    // One statement for the whole claim.
    if !rows.is_empty() {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE deliveries SET state = 'running', lease_until = ",
        );
        q.push_bind(lease_until).push(" WHERE id IN (");
        let mut ids = q.separated(", ");
        for r in &rows {
            ids.push_bind(r.id);
        }
        ids.push_unseparated(")");
        q.build().execute(&mut *tx).await?;
    }
    Ok(rows)
}

/// Records attempts and what follows each, inside a transaction.
async fn finish_in(tx: &mut sqlx::SqliteConnection, done: &[Finished]) -> Result<()> {
    // The common case, attempts that succeeded, in two statements
    // for the whole batch; retries and dead letters one by one.
    let (succeeded, others): (Vec<&Finished>, Vec<&Finished>) = done
        .iter()
        .partition(|f| matches!(f.next, NextStep::Done) && f.attempt.is_some());
    for chunk in succeeded.chunks(256) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO attempts (delivery_id, attempt, version, digest, status, outcome, error_kind, started_at, duration_ms) ",
        );
        q.push_values(chunk, |mut row, f| {
            let a = f.attempt.as_ref().expect("partitioned on an attempt");
            row.push_bind(f.delivery_id as i64)
                .push_bind(i64::from(a.attempt))
                .push_bind(a.version.map(|v| v as i64))
                .push_bind(a.digest.clone())
                .push_bind(a.status.map(i64::from))
                .push_bind(a.outcome.as_str())
                .push_bind(a.error_kind.clone())
                .push_bind(a.started_at)
                .push_bind(a.duration_ms as i64);
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *tx).await?;
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE deliveries SET state = 'done', attempts = attempts + 1, lease_until = NULL, \
             last_error = NULL, last_version = COALESCE(v.column2, last_version), finished_at = v.column3 \
             FROM (",
        );
        q.push_values(chunk, |mut row, f| {
            let version = f.attempt.as_ref().and_then(|a| a.version).map(|v| v as i64);
            row.push_bind(f.delivery_id as i64)
                .push_bind(version)
                .push_bind(f.at);
        });
        q.push(") AS v WHERE deliveries.id = v.column1");
        q.build().execute(&mut *tx).await?;
    }
    for f in others {
        finish_one(tx, f.delivery_id, f.attempt.as_ref(), &f.next, f.at).await?;
    }
    Ok(())
}

/// Records one attempt and what follows it, inside a transaction.
async fn finish_one(
    tx: &mut sqlx::SqliteConnection,
    delivery_id: u64,
    attempt: Option<&AttemptRecord>,
    next: &NextStep,
    now: i64,
) -> Result<()> {
    if let Some(a) = attempt {
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, version, digest, status, outcome, error_kind, started_at, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(delivery_id as i64)
        .bind(i64::from(a.attempt))
        .bind(a.version.map(|v| v as i64))
        .bind(a.digest.as_deref())
        .bind(a.status.map(i64::from))
        .bind(a.outcome.as_str())
        .bind(a.error_kind.as_deref())
        .bind(a.started_at)
        .bind(a.duration_ms as i64)
        .execute(&mut *tx)
        .await?;
    }
    let made = i64::from(attempt.is_some());
    let version = attempt.and_then(|a| a.version).map(|v| v as i64);
    match next {
        NextStep::Done => {
            sqlx::query(
                "UPDATE deliveries SET state = 'done', attempts = attempts + $2, lease_until = NULL, \
                 last_error = NULL, last_version = COALESCE($3, last_version), finished_at = $4 WHERE id = $1",
            )
            .bind(delivery_id as i64)
            .bind(made)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        NextStep::Retry { at, error } => {
            sqlx::query(
                "UPDATE deliveries SET state = 'pending', attempts = attempts + $2, lease_until = NULL, \
                 next_at = $3, last_error = $4, last_version = COALESCE($5, last_version) WHERE id = $1",
            )
            .bind(delivery_id as i64)
            .bind(made)
            .bind(at)
            .bind(error)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        NextStep::Dead { reason, error } => {
            sqlx::query(
                "UPDATE deliveries SET state = 'dead', attempts = attempts + $2, lease_until = NULL, \
                 dead_reason = $3, last_error = $4, last_version = COALESCE($5, last_version), \
                 finished_at = $6 WHERE id = $1",
            )
            .bind(delivery_id as i64)
            .bind(made)
            .bind(reason.as_str())
            .bind(error)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

/// The ids of events stored since `since` under the pairs (source, id)
/// of `chunk`, each pair a search of the dedup index: CROSS JOIN keeps
/// the pairs the outer loop (SQLite's planner otherwise walks the
/// queue's events, a scan that grows with the table). `prefix` goes
/// before the statement (`EXPLAIN QUERY PLAN` in a test).
fn seen_query<'a>(
    prefix: &str,
    chunk: &'a [NewEvent<'a>],
    environment: &'a str,
    queue: &'a str,
    since: i64,
) -> sqlx::QueryBuilder<'a, sqlx::Sqlite> {
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!("{prefix}WITH v(s, i) AS ("));
    q.push_values(chunk, |mut row, e| {
        row.push_bind(e.source).push_bind(e.ce_id);
    });
    q.push(") SELECT v.s, v.i, e.id FROM v CROSS JOIN events e ON e.environment = ")
        .push_bind(environment)
        .push(" AND e.queue = ")
        .push_bind(queue)
        .push(" AND e.ce_source = v.s AND e.ce_id = v.i AND e.enqueued_at >= ")
        .push_bind(since);
    q
}

/// Rows per multi-row statement: well within SQLite's bound parameters
/// (8 columns × 256).
const BATCH_ROWS: usize = 256;

/// Stores one producer's events and their deliveries, inside a transaction.
/// One enqueue inside the batch's transaction. `claim` holds, per
/// trigger, the lease and how many more of its new deliveries are claimed
/// (they go to `claimed`).
async fn enqueue_in(
    tx: &mut sqlx::SqliteConnection,
    enqueue: &Enqueue<'_>,
    claim: &mut HashMap<&str, (i64, u32)>,
    claimed: &mut Vec<Claimed>,
) -> Result<Vec<Enqueued>> {
    let Enqueue {
        environment,
        queue,
        events,
        now,
        dedup_since,
    } = *enqueue;
    let subscribers: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, function FROM triggers WHERE environment = $1 AND queue = $2 ORDER BY name",
    )
    .bind(environment)
    .bind(queue)
    .fetch_all(&mut *tx)
    .await?;
    let (mut next_event, mut next_delivery): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(MAX(id), 0) + 1 FROM events), \
                (SELECT COALESCE(MAX(id), 0) + 1 FROM deliveries)",
    )
    .fetch_one(&mut *tx)
    .await?;
    // The events seen within the window under the same (source, id): one
    // statement per chunk.
    let mut seen: HashMap<(&str, &str), i64> = HashMap::new();
    for chunk in events.chunks(BATCH_ROWS) {
        let mut q = seen_query("", chunk, environment, queue, dedup_since);
        let rows: Vec<(String, String, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
        for (source, ce_id, id) in rows {
            // Keyed by the batch's own strings, which outlive the map.
            if let Some(e) = chunk
                .iter()
                .find(|e| e.source == source && e.ce_id == ce_id)
            {
                let known = seen.entry((e.source, e.ce_id)).or_insert(id);
                *known = (*known).max(id);
            }
        }
    }
    // New events take the next ids; a pair seen earlier in this batch is
    // a duplicate of that one.
    let mut out = Vec::with_capacity(events.len());
    let mut new = Vec::with_capacity(events.len());
    for e in events {
        let (id, duplicate) = match seen.get(&(e.source, e.ce_id)) {
            Some(&id) => (id, true),
            None => {
                let id = next_event;
                next_event += 1;
                seen.insert((e.source, e.ce_id), id);
                new.push((id, e));
                (id, false)
            }
        };
        out.push(Enqueued {
            id: id as u64,
            ce_id: e.ce_id.to_owned(),
            source: e.source.to_owned(),
            duplicate,
        });
    }
    for chunk in new.chunks(BATCH_ROWS) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO events (id, environment, queue, ce_id, ce_source, ce_type, event, enqueued_at) ",
        );
        q.push_values(chunk, |mut row, (id, e)| {
            row.push_bind(*id)
                .push_bind(environment)
                .push_bind(queue)
                .push_bind(e.ce_id)
                .push_bind(e.source)
                .push_bind(e.ty)
                .push_bind(e.event)
                .push_bind(now);
        });
        q.build().execute(&mut *tx).await?;
    }
    if !subscribers.is_empty() {
        // Each delivery with its lease when it is claimed here.
        let mut deliveries = Vec::with_capacity(new.len() * subscribers.len());
        for (event, e) in &new {
            for s in &subscribers {
                let id = next_delivery;
                next_delivery += 1;
                let lease = match claim.get_mut(s.0.as_str()) {
                    Some((lease_until, left)) if *left > 0 => {
                        *left -= 1;
                        claimed.push(Claimed {
                            delivery_id: id as u64,
                            event_id: *event as u64,
                            trigger: s.0.clone(),
                            environment: environment.to_owned(),
                            queue: queue.to_owned(),
                            function: s.1.clone(),
                            attempts: 0,
                            next_attempt: 1,
                            pinned_version: None,
                            ce_id: e.ce_id.to_owned(),
                            enqueued_at: now,
                            event: e.event.to_owned(),
                        });
                        Some(*lease_until)
                    }
                    _ => None,
                };
                deliveries.push((id, *event, s, lease));
            }
        }
        for chunk in deliveries.chunks(BATCH_ROWS) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO deliveries (id, event_id, trigger, function, state, next_at, lease_until) ",
            );
            q.push_values(chunk, |mut row, (id, event, (trigger, function), lease)| {
                row.push_bind(*id)
                    .push_bind(*event)
                    .push_bind(trigger.as_str())
                    .push_bind(function.as_str())
                    .push_bind(if lease.is_some() {
                        "running"
                    } else {
                        "pending"
                    })
                    .push_bind(now)
                    .push_bind(*lease);
            });
            q.build().execute(&mut *tx).await?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The duplicate check of a batch searches the dedup index per pair
    /// and never scans the queue's events (which would make every
    /// enqueue slower as the table grows).
    #[tokio::test]
    async fn the_duplicate_check_searches_the_index_per_pair() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap();
        let ids: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
        let batch: Vec<NewEvent<'_>> = ids
            .iter()
            .map(|id| NewEvent {
                ce_id: id,
                source: "/shop",
                ty: "order.created",
                event: "{}",
            })
            .collect();
        let plan: Vec<(i64, i64, i64, String)> =
            seen_query("EXPLAIN QUERY PLAN ", &batch, "production", "orders", 0)
                .build_query_as()
                .fetch_all(&s.pool)
                .await
                .unwrap();
        let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            steps.contains(
                &"SEARCH e USING INDEX events_dedup (environment=? AND queue=? AND ce_source=? AND ce_id=?)"
            ),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|s| s.starts_with("SCAN e")), "{steps:?}");
    }
}
