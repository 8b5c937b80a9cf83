//! Feature flag sets per environment: each change a revision holding the
//! whole set, so history and any past set are one read.

use crate::{Result, SqliteStore, insert_audit};
use seal_state::{FlagRevision, NewAudit, now_ms};
use seal_state_sql::{FLAG_COLUMNS, FlagRow, flag_revision};

impl SqliteStore {
    /// Stores an environment's whole flag set as its next revision.
    pub async fn set_flags(
        &self,
        environment: &str,
        flags: &serde_json::Value,
        action: &str,
        changed: &[String],
        actor: &str,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let (last,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(revision) FROM flag_revisions WHERE environment = $1")
                .bind(environment)
                .fetch_one(&mut *tx)
                .await?;
        let next = last.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO flag_revisions (environment, revision, flags, action, changed, at, actor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(environment)
        .bind(next)
        .bind(flags.to_string())
        .bind(action)
        .bind(serde_json::to_string(changed).unwrap_or_else(|_| "[]".into()))
        .bind(now_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor,
                action: &format!("flags.{action}"),
                object: environment,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"revision": next, "changed": changed}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// The environment's current flag set.
    pub async fn flags(&self, environment: &str) -> Result<Option<FlagRevision>> {
        let row: Option<FlagRow> = sqlx::query_as(&format!(
            "SELECT {FLAG_COLUMNS} FROM flag_revisions WHERE environment = $1 ORDER BY revision DESC LIMIT 1"
        ))
        .bind(environment)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(flag_revision).transpose()?)
    }

    /// Revisions newest first (those that changed `key`, when given).
    pub async fn flag_history(
        &self,
        environment: &str,
        key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlagRevision>> {
        let rows: Vec<FlagRow> = sqlx::query_as(&format!(
            "SELECT {FLAG_COLUMNS} FROM flag_revisions WHERE environment = $1 ORDER BY revision DESC"
        ))
        .bind(environment)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let r = flag_revision(r)?;
            if key.is_none_or(|k| r.changed.iter().any(|c| c == k)) {
                out.push(r);
            }
            if out.len() >= limit as usize {
                break;
            }
        }
        Ok(out)
    }

    /// Every environment's current flag set.
    pub async fn all_flags(&self) -> Result<Vec<FlagRevision>> {
        let rows: Vec<FlagRow> = sqlx::query_as(&format!(
            "SELECT {FLAG_COLUMNS} FROM flag_revisions f WHERE revision = \
             (SELECT MAX(revision) FROM flag_revisions g WHERE g.environment = f.environment) \
             ORDER BY environment"
        ))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(flag_revision)
            .collect::<std::result::Result<_, _>>()?)
    }
}
