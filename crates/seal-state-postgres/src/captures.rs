//! Traffic captures and the requests they kept.

use crate::{PostgresStore, Result, insert_audit};
use seal_state::{Capture, CapturedRequest, NewAudit, now_ms};
use seal_state_sql::{
    CAPTURE_COLUMNS, CAPTURED_COLUMNS, CaptureRow, CapturedRow, capture_record, captured_request,
};
use std::collections::BTreeMap;

impl PostgresStore {
    /// Starts (or restarts, keeping what it kept) a capture, audited.
    pub async fn start_capture(&self, c: &Capture) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO captures (environment, function, rate_percent, max_requests, body_limit, drop_headers, started_at, started_by, stopped_at, stopped_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL) \
             ON CONFLICT (environment, function) DO UPDATE SET rate_percent = excluded.rate_percent, \
             max_requests = excluded.max_requests, body_limit = excluded.body_limit, \
             drop_headers = excluded.drop_headers, started_at = excluded.started_at, \
             started_by = excluded.started_by, stopped_at = NULL, stopped_by = NULL",
        )
        .bind(&c.environment)
        .bind(&c.function)
        .bind(c.rate_percent)
        .bind(c.max as i64)
        .bind(c.body_limit as i64)
        .bind(serde_json::to_string(&c.drop_headers).unwrap_or_else(|_| "[]".into()))
        .bind(c.started_at)
        .bind(&c.started_by)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor: &c.started_by,
                action: "capture.start",
                object: &format!("{}/{}", c.environment, c.function),
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({
                    "rate_percent": c.rate_percent,
                    "max": c.max,
                    "body_limit": c.body_limit,
                    "drop_headers": c.drop_headers,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stops a running capture, audited; false if none was running.
    pub async fn stop_capture(
        &self,
        environment: &str,
        function: &str,
        actor: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE captures SET stopped_at = $3, stopped_by = $4 \
             WHERE environment = $1 AND function = $2 AND stopped_at IS NULL",
        )
        .bind(environment)
        .bind(function)
        .bind(now_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if done {
            insert_audit(
                &mut tx,
                NewAudit {
                    actor,
                    action: "capture.stop",
                    object: &format!("{environment}/{function}"),
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::Value::Null,
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Every capture with the count it kept.
    pub async fn captures(&self) -> Result<Vec<Capture>> {
        let rows: Vec<CaptureRow> = sqlx::query_as(&format!(
            "SELECT {CAPTURE_COLUMNS} FROM captures c ORDER BY c.environment, c.function"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(capture_record)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Keeps requests of running captures, each up to its maximum.
    pub async fn add_captured(&self, requests: &[CapturedRequest]) -> Result<u64> {
        let mut by_capture: BTreeMap<(&str, &str), Vec<&CapturedRequest>> = BTreeMap::new();
        for r in requests {
            by_capture
                .entry((r.environment.as_str(), r.function.as_str()))
                .or_default()
                .push(r);
        }
        let mut kept = 0u64;
        let mut tx = self.pool.begin().await?;
        for ((environment, function), rows) in by_capture {
            let capture: Option<(i64, Option<i64>, i64)> = sqlx::query_as(
                "SELECT max_requests, stopped_at, captured FROM captures WHERE environment = $1 AND function = $2 FOR UPDATE",
            )
            .bind(environment)
            .bind(function)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((max, None, count)) = capture else {
                continue;
            };
            let room = (max - count).max(0) as usize;
            let mut added = 0i64;
            for r in rows.into_iter().take(room) {
                sqlx::query(
                    "INSERT INTO captured_requests (environment, function, version, at, method, path, headers, body, body_truncated, status, response_digest, response_bytes, duration_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(environment)
                .bind(function)
                .bind(r.version as i64)
                .bind(r.at)
                .bind(&r.method)
                .bind(&r.path)
                .bind(serde_json::to_string(&r.headers).unwrap_or_else(|_| "[]".into()))
                .bind(&r.body)
                .bind(r.body_truncated)
                .bind(i64::from(r.status))
                .bind(&r.response_digest)
                .bind(r.response_bytes as i64)
                .bind(r.duration_ms as i64)
                .execute(&mut *tx)
                .await?;
                kept += 1;
                added += 1;
            }
            if added > 0 {
                sqlx::query(
                    "UPDATE captures SET captured = captured + $3 WHERE environment = $1 AND function = $2",
                )
                .bind(environment)
                .bind(function)
                .bind(added)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(kept)
    }

    /// The requests a capture kept, oldest first.
    pub async fn captured(
        &self,
        environment: &str,
        function: &str,
        limit: u32,
    ) -> Result<Vec<CapturedRequest>> {
        let rows: Vec<CapturedRow> = sqlx::query_as(&format!(
            "SELECT {CAPTURED_COLUMNS} FROM captured_requests WHERE environment = $1 AND function = $2 ORDER BY id LIMIT $3"
        ))
        .bind(environment)
        .bind(function)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(captured_request)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Deletes a capture and what it kept, audited.
    pub async fn delete_capture(
        &self,
        environment: &str,
        function: &str,
        actor: &str,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let existed = sqlx::query("DELETE FROM captures WHERE environment = $1 AND function = $2")
            .bind(environment)
            .bind(function)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if !existed {
            return Ok(None);
        }
        let deleted =
            sqlx::query("DELETE FROM captured_requests WHERE environment = $1 AND function = $2")
                .bind(environment)
                .bind(function)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        insert_audit(
            &mut tx,
            NewAudit {
                actor,
                action: "capture.delete",
                object: &format!("{environment}/{function}"),
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({ "deleted": deleted }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(deleted))
    }
}
