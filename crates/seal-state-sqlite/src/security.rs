//! Tokens, settings (config and secrets) and trust policies.
//!
//! This module stores bytes and hashes: it never sees a token in clear
//! (only its SHA-256) nor a secret in clear (only its ciphertext), and it
//! never writes a setting's value into an audit entry or a revision row.

use crate::{Error, Result, SqliteStore, insert_audit};
use seal_state::{
    AttestationRecord, NewAudit, NewToken, SettingChange, SettingRecord, SettingRevision,
    StateError, TokenRecord, now_ms,
};
use seal_state_sql::{TOKEN_COLUMNS, TokenRow};

impl SqliteStore {
    /// Records an attestation (once per referrer) with its audit entry.
    /// Returns false when it was already recorded.
    pub async fn add_attestation(&self, a: &AttestationRecord, object: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO attestations (subject, referrer, envelope, keyid, created_at, actor) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (subject, referrer) DO NOTHING",
        )
        .bind(&a.subject)
        .bind(&a.referrer)
        .bind(&a.envelope)
        .bind(&a.keyid)
        .bind(a.created_at)
        .bind(&a.actor)
        .execute(&mut *tx)
        .await?;
        let added = done.rows_affected() == 1;
        if added {
            insert_audit(
                &mut tx,
                NewAudit {
                    actor: &a.actor,
                    action: "attestation.attach",
                    object,
                    digest: Some(&a.subject),
                    outcome: "ok",
                    detail: serde_json::json!({"referrer": a.referrer, "keyid": a.keyid}),
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// The attestations of an artifact, oldest first.
    pub async fn attestations(&self, subject: &str) -> Result<Vec<AttestationRecord>> {
        let rows: Vec<(String, String, String, Option<String>, i64, String)> = sqlx::query_as(
            "SELECT subject, referrer, envelope, keyid, created_at, actor FROM attestations \
             WHERE subject = $1 ORDER BY created_at, referrer",
        )
        .bind(subject)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(subject, referrer, envelope, keyid, created_at, actor)| AttestationRecord {
                    subject,
                    referrer,
                    envelope,
                    keyid,
                    created_at,
                    actor,
                },
            )
            .collect())
    }

    /// Removes one attestation from the index, with an audit entry, in
    /// one transaction; false if there was none.
    pub async fn remove_attestation(
        &self,
        subject: &str,
        referrer: &str,
        object: &str,
        actor: &str,
    ) -> Result<bool> {
        let statement =
            sqlx::query("DELETE FROM attestations WHERE subject = $1 AND referrer = $2")
                .bind(subject)
                .bind(referrer);
        self.change_audited(
            statement,
            NewAudit {
                actor,
                action: "attestation.remove",
                object,
                digest: Some(subject),
                outcome: "ok",
                detail: serde_json::json!({"referrer": referrer}),
            },
        )
        .await
    }

    /// How many tokens were ever created (revoked ones included).
    pub async fn token_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.read)
            .await?;
        Ok(n as u64)
    }

    /// Creates a token, with its audit entry, in one transaction.
    pub async fn create_token(&self, new: NewToken<'_>) -> Result<TokenRecord> {
        let mut tx = self.pool.begin().await?;
        let environments = new
            .environments
            .map(|e| serde_json::to_string(e).unwrap_or_else(|_| "[]".into()));
        let at = now_ms();
        sqlx::query(
            "INSERT INTO tokens (id, name, role, environments, queues, hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new.id)
        .bind(new.name)
        .bind(new.role)
        .bind(&environments)
        .bind(
            new.queues
                .map(|q| serde_json::to_string(q).unwrap_or_else(|_| "[]".into())),
        )
        .bind(new.hash)
        .bind(at)
        .bind(new.actor)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor: new.actor,
                action: "token.create",
                object: new.id,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({
                    "name": new.name,
                    "role": new.role,
                    "environments": new.environments,
                    "queues": new.queues,
                }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(TokenRecord {
            id: new.id.to_owned(),
            name: new.name.to_owned(),
            role: new.role.to_owned(),
            environments: new.environments.map(<[String]>::to_vec),
            queues: new.queues.map(<[String]>::to_vec),
            hash: new.hash.to_owned(),
            created_at: at,
            created_by: new.actor.to_owned(),
            revoked_at: None,
            revoked_by: None,
        })
    }

    /// The token whose SHA-256 is `hash`, revoked or not.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row: Option<TokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| r.try_into().map_err(Error::from)).transpose()
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows: Vec<TokenRow> = sqlx::query_as(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| r.try_into().map_err(Error::from))
            .collect()
    }

    /// Revokes a token (once; revoking again changes nothing). `None` when
    /// there is no such token.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<Option<TokenRecord>> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $2, revoked_by = $3 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            insert_audit(
                &mut tx,
                NewAudit {
                    actor,
                    action: "token.revoke",
                    object: id,
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::json!({}),
                },
            )
            .await?;
        }
        let row: Option<TokenRow> =
            sqlx::query_as(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.map(|r| r.try_into().map_err(Error::from)).transpose()
    }

    /// Applies a change to the config or secrets of a function in an
    /// environment: one new revision, one revision row and one audit entry
    /// naming the keys (never the values), all or nothing. A key of the
    /// other kind (a config key set as a secret, or the reverse) or an
    /// unset of a key that is not there is refused and changes nothing.
    pub async fn change_settings(&self, change: SettingChange<'_>) -> Result<i64> {
        let kind = if change.secret { "secrets" } else { "config" };
        let mut tx = self.pool.begin().await?;
        let existing: Vec<(String, bool)> = sqlx::query_as(
            "SELECT key, secret FROM settings WHERE function = $1 AND environment = $2",
        )
        .bind(change.function)
        .bind(change.environment)
        .fetch_all(&mut *tx)
        .await?;
        for (key, _) in &change.set {
            if let Some((_, secret)) = existing.iter().find(|(k, _)| k == key)
                && *secret != change.secret
            {
                let (is, as_) = if *secret {
                    ("a secret", "a secret")
                } else {
                    ("a config value", "config")
                };
                return Err(StateError::Conflict(format!(
                    "{key} is {is} of {}/{}: change it as {as_}, or unset it there first",
                    change.environment, change.function
                ))
                .into());
            }
        }
        for key in &change.unset {
            if !existing
                .iter()
                .any(|(k, secret)| k == key && *secret == change.secret)
            {
                return Err(StateError::Conflict(format!(
                    "{} has no {} key {key} in {}",
                    change.function,
                    if change.secret { "secret" } else { "config" },
                    change.environment
                ))
                .into());
            }
        }
        let revision: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(revision), 0) + 1 FROM setting_revisions \
             WHERE function = $1 AND environment = $2",
        )
        .bind(change.function)
        .bind(change.environment)
        .fetch_one(&mut *tx)
        .await?;
        for (key, value) in &change.set {
            sqlx::query(
                "INSERT INTO settings (function, environment, key, secret, value, revision) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (function, environment, key) DO UPDATE SET \
                 value = excluded.value, revision = excluded.revision",
            )
            .bind(change.function)
            .bind(change.environment)
            .bind(key)
            .bind(change.secret)
            .bind(value)
            .bind(revision)
            .execute(&mut *tx)
            .await?;
        }
        for key in &change.unset {
            sqlx::query(
                "DELETE FROM settings WHERE function = $1 AND environment = $2 AND key = $3",
            )
            .bind(change.function)
            .bind(change.environment)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        let set_keys: Vec<&str> = change.set.iter().map(|(k, _)| k.as_str()).collect();
        let changes = serde_json::json!({"kind": kind, "set": set_keys, "unset": change.unset});
        sqlx::query(
            "INSERT INTO setting_revisions (function, environment, revision, at, actor, changes) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(change.function)
        .bind(change.environment)
        .bind(revision)
        .bind(now_ms())
        .bind(change.actor)
        .bind(changes.to_string())
        .execute(&mut *tx)
        .await?;
        let object = format!("{}/{}", change.environment, change.function);
        insert_audit(
            &mut tx,
            NewAudit {
                actor: change.actor,
                action: if change.secret { "secrets.set" } else { "config.set" },
                object: &object,
                digest: None,
                outcome: "ok",
                detail: serde_json::json!({"revision": revision, "set": set_keys, "unset": change.unset}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// The settings of a function in an environment and the current
    /// revision (0 when nothing was ever set).
    pub async fn settings(
        &self,
        function: &str,
        environment: &str,
    ) -> Result<(i64, Vec<SettingRecord>)> {
        let revision: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(revision), 0) FROM setting_revisions \
             WHERE function = $1 AND environment = $2",
        )
        .bind(function)
        .bind(environment)
        .fetch_one(&self.read)
        .await?;
        let rows: Vec<(String, bool, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT key, secret, value, revision FROM settings \
             WHERE function = $1 AND environment = $2 ORDER BY key",
        )
        .bind(function)
        .bind(environment)
        .fetch_all(&self.read)
        .await?;
        let rows = rows
            .into_iter()
            .map(|(key, secret, value, revision)| SettingRecord {
                key,
                secret,
                value,
                revision,
            })
            .collect();
        Ok((revision, rows))
    }

    /// Every (function, environment) whose settings were ever changed.
    pub async fn setting_scopes(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT function, environment FROM setting_revisions ORDER BY function, environment",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Recorded changes of a function's settings, newest first.
    pub async fn setting_revisions(
        &self,
        function: &str,
        environment: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SettingRevision>> {
        let rows: Vec<(String, String, i64, i64, String, String)> = sqlx::query_as(
            "SELECT function, environment, revision, at, actor, changes FROM setting_revisions \
             WHERE function = $1 AND ($2 IS NULL OR environment = $2) \
             ORDER BY at DESC, revision DESC LIMIT $3",
        )
        .bind(function)
        .bind(environment)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(function, environment, revision, at, actor, changes)| SettingRevision {
                    changes: serde_json::from_str(&changes)
                        .unwrap_or(serde_json::Value::String(changes)),
                    function,
                    environment,
                    revision,
                    at,
                    actor,
                },
            )
            .collect())
    }

    /// Replaces the trust policy of an environment, with its audit entry.
    pub async fn set_policy(
        &self,
        environment: &str,
        policy: &serde_json::Value,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO policies (environment, policy, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (environment) DO UPDATE SET policy = excluded.policy, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(environment)
        .bind(policy.to_string())
        .bind(now_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        insert_audit(
            &mut tx,
            NewAudit {
                actor,
                action: "policy.set",
                object: environment,
                digest: None,
                outcome: "ok",
                detail: policy.clone(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The trust policy of an environment, if one was set, with when and
    /// by whom.
    pub async fn policy(
        &self,
        environment: &str,
    ) -> Result<Option<(serde_json::Value, i64, String)>> {
        let row: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT policy, updated_at, updated_by FROM policies WHERE environment = $1",
        )
        .bind(environment)
        .fetch_optional(&self.read)
        .await?;
        row.map(|(t, at, by)| {
            serde_json::from_str(&t)
                .map(|p| (p, at, by))
                .map_err(|e| StateError::Corrupt(format!("policy of {environment}: {e}")).into())
        })
        .transpose()
    }

    /// Replaces (or with `None` removes) the pipeline of an environment,
    /// with its audit entry.
    pub async fn set_pipeline(
        &self,
        environment: &str,
        pipeline: Option<&serde_json::Value>,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        match pipeline {
            Some(p) => {
                sqlx::query(
                    "INSERT INTO pipelines (environment, pipeline, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (environment) DO UPDATE SET pipeline = excluded.pipeline, \
                     updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                )
                .bind(environment)
                .bind(p.to_string())
                .bind(now_ms())
                .bind(actor)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM pipelines WHERE environment = $1")
                    .bind(environment)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        insert_audit(
            &mut tx,
            NewAudit {
                actor,
                action: "pipeline.set",
                object: environment,
                digest: None,
                outcome: "ok",
                detail: pipeline.cloned().unwrap_or(serde_json::Value::Null),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pipeline of an environment, if one was set, with when and by
    /// whom.
    pub async fn pipeline(
        &self,
        environment: &str,
    ) -> Result<Option<(serde_json::Value, i64, String)>> {
        let row: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT pipeline, updated_at, updated_by FROM pipelines WHERE environment = $1",
        )
        .bind(environment)
        .fetch_optional(&self.read)
        .await?;
        row.map(|(t, at, by)| {
            serde_json::from_str(&t)
                .map(|p| (p, at, by))
                .map_err(|e| StateError::Corrupt(format!("pipeline of {environment}: {e}")).into())
        })
        .transpose()
    }

    /// Every environment's pipeline, by environment.
    pub async fn pipelines(&self) -> Result<Vec<(String, serde_json::Value)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT environment, pipeline FROM pipelines ORDER BY environment")
                .fetch_all(&self.read)
                .await?;
        rows.into_iter()
            .map(|(e, t)| {
                serde_json::from_str(&t)
                    .map(|p| (e.clone(), p))
                    .map_err(|err| StateError::Corrupt(format!("pipeline of {e}: {err}")).into())
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn tokens_are_found_by_hash_and_revoked_once() {
        let (_d, s) = store().await;
        assert_eq!(s.token_count().await.unwrap(), 0);
        let envs = vec!["staging".to_owned()];
        s.create_token(NewToken {
            id: "tk1",
            name: "ci",
            role: "deployer",
            environments: Some(&envs),
            queues: None,
            hash: "h1",
            actor: "admin",
        })
        .await
        .unwrap();
        let t = s.token_by_hash("h1").await.unwrap().unwrap();
        assert_eq!(t.environments.as_deref(), Some(&envs[..]));
        assert!(s.token_by_hash("h2").await.unwrap().is_none());
        let r = s.revoke_token("tk1", "admin").await.unwrap().unwrap();
        let at = r.revoked_at.unwrap();
        let again = s.revoke_token("tk1", "other").await.unwrap().unwrap();
        assert_eq!(
            (again.revoked_at, again.revoked_by.as_deref()),
            (Some(at), Some("admin"))
        );
        assert!(s.revoke_token("nope", "admin").await.unwrap().is_none());
        let actions: Vec<String> = s
            .audit_log(10)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["token.revoke", "token.create"]);
    }

    #[tokio::test]
    async fn settings_change_in_revisions_and_refuse_kind_mixups() {
        let (_d, s) = store().await;
        let change = |secret, set: Vec<(&str, &str)>, unset: Vec<&str>| SettingChange {
            function: "f",
            environment: "production",
            secret,
            set: set
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                .collect(),
            unset: unset.into_iter().map(str::to_owned).collect(),
            actor: "a",
        };
        assert_eq!(s.settings("f", "production").await.unwrap().0, 0);
        let r1 = s
            .change_settings(change(false, vec![("A", "1"), ("B", "2")], vec![]))
            .await
            .unwrap();
        let r2 = s
            .change_settings(change(true, vec![("K", "ciphertext")], vec![]))
            .await
            .unwrap();
        assert_eq!((r1, r2), (1, 2));
        let e = s
            .change_settings(change(false, vec![("K", "plain")], vec![]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("K is a secret"), "{e}");
        let e = s
            .change_settings(change(false, vec![], vec!["nope"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no config key nope"), "{e}");
        let r3 = s
            .change_settings(change(false, vec![("A", "3")], vec!["B"]))
            .await
            .unwrap();
        assert_eq!(r3, 3);
        let (rev, rows) = s.settings("f", "production").await.unwrap();
        assert_eq!(rev, 3);
        let got: Vec<(&str, bool, &[u8])> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.secret, r.value.as_slice()))
            .collect();
        assert_eq!(
            got,
            [("A", false, &b"3"[..]), ("K", true, &b"ciphertext"[..])]
        );
        let revs = s.setting_revisions("f", None, 10).await.unwrap();
        assert_eq!(revs.len(), 3);
        assert_eq!(revs[0].changes["unset"], serde_json::json!(["B"]));
        // Values never reach the audit log.
        let audit = serde_json::to_string(&s.audit_log(10).await.unwrap()).unwrap();
        assert!(!audit.contains("ciphertext") && audit.contains("secrets.set"));
    }
}
