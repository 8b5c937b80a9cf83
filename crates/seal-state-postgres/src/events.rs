//! Queues, triggers, events and their deliveries, cron ticks.
//!
//! An event is stored once, with one delivery row per queue trigger of its
//! queue, in the transaction that answers the producer. A delivery is
//! claimed by moving it to `running` with a lease; an attempt's record and
//! what follows it (done, retry at, dead letter) are one transaction.

use crate::{Error, PostgresStore, Result, advisory, insert_audit, lock};
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
/// WAL flush (`synchronous_commit = off`, for this transaction only): a
/// crash of the database may lose the last ones, never corrupt anything.
/// Only for writes whose loss repeats work — a claim (the event stays
/// due), an attempt's outcome (the event is delivered again: at least
/// once) — never for what a caller was told is durable: an enqueue waits.
/// A caller that stops waiting drops the transaction, which rolls back.
macro_rules! relaxed {
    ($pool:expr, $tx:ident => $body:block) => {{
        let mut conn = $pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *conn)
            .await?;
        let out = {
            let $tx: &mut sqlx::PgConnection = &mut *conn;
            $body
        };
        conn.commit().await?;
        out
    }};
}

impl PostgresStore {
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
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn queue(&self, environment: &str, name: &str) -> Result<Option<QueueRecord>> {
        let row: Option<QueueRow> =
            sqlx::query_as("SELECT * FROM queues WHERE environment = $1 AND name = $2")
                .bind(environment)
                .bind(name)
                .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
        .fetch_optional(&self.pool)
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
        // Deduplication reads then inserts: enqueues to one queue take
        // turns, from any node. Locks in one order, so two batches never
        // wait on each other.
        let mut queues: Vec<String> = batch
            .iter()
            .map(|e| format!("{}/{}", e.environment, e.queue))
            .collect();
        queues.sort_unstable();
        queues.dedup();
        for q in &queues {
            advisory(&mut tx, lock::QUEUE, q).await?;
        }
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
        let rows = relaxed!(self.pool, tx => {
            claim_in(tx, trigger, now, lease_until, limit).await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn next_due(&self, trigger: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT LEAST( \
                (SELECT MIN(next_at) FROM deliveries WHERE trigger = $1 AND state = 'pending'), \
                (SELECT MIN(lease_until) FROM deliveries WHERE trigger = $1 AND state = 'running'))",
        )
        .bind(trigger)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn finish_deliveries(&self, done: &[Finished]) -> Result<()> {
        relaxed!(self.pool, tx => {
            finish_in(tx, done).await?;
        });
        Ok(())
    }

    pub async fn finish_and_claim(
        &self,
        done: &[Finished],
        claims: &[ClaimDue<'_>],
    ) -> Result<Vec<Vec<Claimed>>> {
        let claimed = relaxed!(self.pool, tx => {
            finish_in(tx, done).await?;
            let mut claimed = Vec::with_capacity(claims.len());
            for c in claims {
                claimed.push(claim_in(tx, &c.trigger.name, c.now, c.lease_until, c.limit).await?);
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
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, next_at = LEAST(next_at, $1) \
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
        .fetch_all(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
            .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let row: Option<DeadRow> = sqlx::query_as(&format!("{DEAD_SELECT} AND d.id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn last_tick(&self, trigger: &str) -> Result<Option<i64>> {
        let t: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_tick FROM triggers WHERE name = $1")
                .bind(trigger)
                .fetch_optional(&self.pool)
                .await?;
        Ok(t.flatten())
    }
}

/// Inserts or replaces a cron run row (keyed by trigger and tick).
async fn insert_run(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, run: &CronRun) -> Result<()> {
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
    tx: &mut sqlx::PgConnection,
    trigger: &str,
    now: i64,
    lease_until: i64,
    limit: u32,
) -> Result<Vec<ClaimRow>> {
    // Nodes claiming together skip each other's rows.
    let ids: Vec<i64> = sqlx::query_scalar(
        "UPDATE deliveries SET state = 'running', lease_until = $4 WHERE id IN ( \
            SELECT id FROM deliveries WHERE trigger = $1 AND \
                ((state = 'pending' AND next_at <= $2) OR (state = 'running' AND lease_until <= $2)) \
            ORDER BY next_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id",
    )
    .bind(trigger)
    .bind(now)
    .bind(i64::from(limit))
    .bind(lease_until)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT d.id, d.event_id, d.trigger, d.function, d.attempts, d.pinned_version, \
                e.environment, e.queue, e.ce_id, e.enqueued_at, e.event, \
                (SELECT COALESCE(MAX(a.attempt), 0) FROM attempts a WHERE a.delivery_id = d.id) AS last_attempt \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.id = ANY($1) ORDER BY d.next_at, d.id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// Records attempts and what follows each, inside a transaction.
async fn finish_in(tx: &mut sqlx::PgConnection, done: &[Finished]) -> Result<()> {
    // The common case, attempts that succeeded, in two statements
    // for the whole batch; retries and dead letters one by one.
    let (succeeded, others): (Vec<&Finished>, Vec<&Finished>) = done
        .iter()
        .partition(|f| matches!(f.next, NextStep::Done) && f.attempt.is_some());
    for chunk in succeeded.chunks(256) {
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
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
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "UPDATE deliveries SET state = 'done', attempts = attempts + 1, lease_until = NULL, \
             last_error = NULL, last_version = COALESCE(v.version, deliveries.last_version), finished_at = v.at \
             FROM (",
        );
        q.push_values(chunk, |mut row, f| {
            let version = f.attempt.as_ref().and_then(|a| a.version).map(|v| v as i64);
            row.push_bind(f.delivery_id as i64)
                .push_bind(version)
                .push_bind(f.at);
        });
        q.push(") AS v (id, version, at) WHERE deliveries.id = v.id");
        q.build().execute(&mut *tx).await?;
    }
    for f in others {
        finish_one(tx, f.delivery_id, f.attempt.as_ref(), &f.next, f.at).await?;
    }
    Ok(())
}

/// Records one attempt and what follows it, inside a transaction.
async fn finish_one(
    tx: &mut sqlx::PgConnection,
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

/// Stores one producer's events and their deliveries, inside a
/// transaction that holds the queue's lock. `claim` holds, per trigger,
/// the lease and how many more of its new deliveries are claimed (they
/// go to `claimed`).
async fn enqueue_in(
    tx: &mut sqlx::PgConnection,
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
    // The events seen within the window under the same (source, id), in
    // one statement (each pair a search of the dedup index).
    let sources: Vec<&str> = events.iter().map(|e| e.source).collect();
    let ce_ids: Vec<&str> = events.iter().map(|e| e.ce_id).collect();
    let known: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT v.s, v.i, MAX(e.id) FROM unnest($1::text[], $2::text[]) AS v(s, i) \
         JOIN events e ON e.environment = $3 AND e.queue = $4 AND e.ce_source = v.s \
             AND e.ce_id = v.i AND e.enqueued_at >= $5 \
         GROUP BY v.s, v.i",
    )
    .bind(&sources)
    .bind(&ce_ids)
    .bind(environment)
    .bind(queue)
    .bind(dedup_since)
    .fetch_all(&mut *tx)
    .await?;
    let mut seen: HashMap<(&str, &str), Option<i64>> = HashMap::new();
    for (source, ce_id, id) in &known {
        seen.insert((source.as_str(), ce_id.as_str()), Some(*id));
    }
    // The first of each pair not seen is new; a repeat within the batch
    // is a duplicate of that first one.
    let new: Vec<&NewEvent<'_>> = events
        .iter()
        .filter(|e| match seen.entry((e.source, e.ce_id)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(None);
                true
            }
        })
        .collect();
    let mut ids: HashMap<(String, String), i64> = HashMap::new();
    if !new.is_empty() {
        let inserted: Vec<(i64, String, String)> = sqlx::query_as(
            "INSERT INTO events (environment, queue, ce_id, ce_source, ce_type, event, enqueued_at) \
             SELECT $1, $2, v.i, v.s, v.t, v.e, $3 \
             FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS v(i, s, t, e, n) \
             ORDER BY v.n RETURNING id, ce_source, ce_id",
        )
        .bind(environment)
        .bind(queue)
        .bind(now)
        .bind(new.iter().map(|e| e.ce_id).collect::<Vec<_>>())
        .bind(new.iter().map(|e| e.source).collect::<Vec<_>>())
        .bind(new.iter().map(|e| e.ty).collect::<Vec<_>>())
        .bind(new.iter().map(|e| e.event).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let event_ids: Vec<i64> = inserted.iter().map(|(id, _, _)| *id).collect();
        // One delivery per subscription of the queue, in event then name
        // order; the first ones of a trigger in `claim` are claimed.
        let (names, limits, leases): (Vec<&str>, Vec<i64>, Vec<i64>) = claim
            .iter()
            .filter(|(_, (_, left))| *left > 0)
            .map(|(name, (lease, left))| (*name, i64::from(*left), *lease))
            .collect();
        let added: Vec<(i64, i64, String, String, bool)> = sqlx::query_as(
            "INSERT INTO deliveries (event_id, trigger, function, state, next_at, lease_until) \
             SELECT id, name, function, CASE WHEN taken THEN 'running' ELSE 'pending' END, $2, \
                    CASE WHEN taken THEN lease END \
             FROM (SELECT x.id, x.n, t.name, t.function, c.lease, \
                          row_number() OVER (PARTITION BY t.name ORDER BY x.n) <= COALESCE(c.lim, 0) AS taken \
                   FROM unnest($1::bigint[]) WITH ORDINALITY AS x(id, n) \
                   CROSS JOIN (SELECT name, function FROM triggers WHERE environment = $3 AND queue = $4) AS t \
                   LEFT JOIN unnest($5::text[], $6::bigint[], $7::bigint[]) AS c(name, lim, lease) \
                       ON c.name = t.name) AS d \
             ORDER BY n, name \
             RETURNING id, event_id, trigger, function, state = 'running'",
        )
        .bind(&event_ids)
        .bind(now)
        .bind(environment)
        .bind(queue)
        .bind(&names)
        .bind(&limits)
        .bind(&leases)
        .fetch_all(&mut *tx)
        .await?;
        let by_pair: HashMap<(&str, &str), &NewEvent<'_>> =
            new.iter().map(|e| ((e.source, e.ce_id), *e)).collect();
        let by_id: HashMap<i64, &NewEvent<'_>> = inserted
            .iter()
            .filter_map(|(id, source, ce_id)| {
                Some((*id, *by_pair.get(&(source.as_str(), ce_id.as_str()))?))
            })
            .collect();
        for (id, event, trigger, function, taken) in added {
            if !taken {
                continue;
            }
            if let Some((_, left)) = claim.get_mut(trigger.as_str()) {
                *left = left.saturating_sub(1);
            }
            let e = by_id.get(&event).ok_or_else(|| {
                Error::from(StateError::Backend(format!("event {event} was not stored")))
            })?;
            claimed.push(Claimed {
                delivery_id: id as u64,
                event_id: event as u64,
                trigger,
                environment: environment.to_owned(),
                queue: queue.to_owned(),
                function,
                attempts: 0,
                next_attempt: 1,
                pinned_version: None,
                ce_id: e.ce_id.to_owned(),
                enqueued_at: now,
                event: e.event.to_owned(),
            });
        }
        ids = inserted
            .into_iter()
            .map(|(id, source, ce_id)| ((source, ce_id), id))
            .collect();
    }
    let mut firsts: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let key = (e.source, e.ce_id);
        let (id, duplicate) = match seen.get(&key).copied().flatten() {
            Some(id) => (id, true),
            None => {
                let id = ids
                    .get(&(e.source.to_owned(), e.ce_id.to_owned()))
                    .copied()
                    .ok_or_else(|| {
                        Error::from(StateError::Backend(format!(
                            "event {} from {} was not stored",
                            e.ce_id, e.source
                        )))
                    })?;
                (id, !firsts.insert(key))
            }
        };
        out.push(Enqueued {
            id: id as u64,
            ce_id: e.ce_id.to_owned(),
            source: e.source.to_owned(),
            duplicate,
        });
    }
    Ok(out)
}
