//! `seal migrate`: the state of an embedded data dir (its SQLite file, at
//! the current schema) copied into an empty PostgreSQL store in one
//! transaction, every table row for row (ids, hashes and ciphertexts as
//! they are: the audit chain and the sealed secrets stay valid), then
//! verified: each table's rows are read back from both and their digests
//! compared.

use crate::{PostgresStore, Result};
use seal_state::StateError;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::Path;

/// Every table of the state, parents before children.
const TABLES: &[&str] = &[
    "functions",
    "environments",
    "versions",
    "deployments",
    "routes",
    "deployment_events",
    "audit",
    "usage",
    "budgets",
    "tokens",
    "settings",
    "setting_revisions",
    "policies",
    "pipelines",
    "attestations",
    "queues",
    "triggers",
    "events",
    "deliveries",
    "attempts",
    "cron_runs",
    "hold_releases",
    "applied_files",
    "releases",
    "captures",
    "captured_requests",
    "flag_revisions",
];

/// Tables whose ids PostgreSQL allocates (identity columns).
const IDENTITIES: &[&str] = &[
    "deployments",
    "events",
    "deliveries",
    "releases",
    "captured_requests",
];

/// Rows per INSERT (PostgreSQL binds at most 65,535 parameters).
const CHUNK: usize = 500;

/// What was copied: per table, its rows and the digest both sides agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub tables: Vec<(String, u64, String)>,
}

/// A column's value, typed by the PostgreSQL column it goes to.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    /// A stable rendering for the digest.
    fn render(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"n;"),
            Value::Int(i) => out.extend_from_slice(format!("i{i};").as_bytes()),
            Value::Bool(b) => out.extend_from_slice(format!("b{b};").as_bytes()),
            Value::Float(f) => out.extend_from_slice(format!("f{:x};", f.to_bits()).as_bytes()),
            Value::Text(t) => {
                out.extend_from_slice(format!("t{}:", t.len()).as_bytes());
                out.extend_from_slice(t.as_bytes());
            }
            Value::Bytes(b) => {
                out.extend_from_slice(format!("x{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Bool,
    Float,
    Text,
    Bytes,
}

fn kind_of(pg_type: &str) -> Result<Kind> {
    Ok(match pg_type {
        "bigint" | "integer" | "smallint" => Kind::Int,
        "boolean" => Kind::Bool,
        "double precision" | "real" => Kind::Float,
        "text" | "character varying" => Kind::Text,
        "bytea" => Kind::Bytes,
        other => {
            return Err(
                StateError::Backend(format!("cannot migrate a column of type {other}")).into(),
            );
        }
    })
}

/// The digest of a table's rows, whatever their order: the sha256 of the
/// sorted hashes of each row's rendering.
fn digest(rows: &[Vec<Value>]) -> String {
    let mut hashes: Vec<[u8; 32]> = rows
        .iter()
        .map(|row| {
            let mut buf = Vec::new();
            for v in row {
                v.render(&mut buf);
            }
            Sha256::digest(&buf).into()
        })
        .collect();
    hashes.sort_unstable();
    let mut all = Sha256::new();
    for h in &hashes {
        all.update(h);
    }
    format!("sha256:{:x}", all.finalize())
}

fn from_sqlite(row: &sqlx::sqlite::SqliteRow, i: usize, kind: Kind) -> Result<Value> {
    let v = match kind {
        Kind::Int => row.try_get_unchecked::<Option<i64>, _>(i)?.map(Value::Int),
        Kind::Bool => row
            .try_get_unchecked::<Option<i64>, _>(i)?
            .map(|b| Value::Bool(b != 0)),
        Kind::Float => row
            .try_get_unchecked::<Option<f64>, _>(i)?
            .map(Value::Float),
        Kind::Text => row
            .try_get_unchecked::<Option<String>, _>(i)?
            .map(Value::Text),
        Kind::Bytes => row
            .try_get_unchecked::<Option<Vec<u8>>, _>(i)?
            .map(Value::Bytes),
    };
    Ok(v.unwrap_or(Value::Null))
}

fn from_postgres(
    row: &sqlx::postgres::PgRow,
    i: usize,
    kind: Kind,
    pg_type: &str,
) -> Result<Value> {
    let v = match (kind, pg_type) {
        (Kind::Int, "integer") => row
            .try_get::<Option<i32>, _>(i)?
            .map(|n| Value::Int(n.into())),
        (Kind::Int, "smallint") => row
            .try_get::<Option<i16>, _>(i)?
            .map(|n| Value::Int(n.into())),
        (Kind::Int, _) => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
        (Kind::Bool, _) => row.try_get::<Option<bool>, _>(i)?.map(Value::Bool),
        (Kind::Float, "real") => row
            .try_get::<Option<f32>, _>(i)?
            .map(|f| Value::Float(f.into())),
        (Kind::Float, _) => row.try_get::<Option<f64>, _>(i)?.map(Value::Float),
        (Kind::Text, _) => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
        (Kind::Bytes, _) => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Value::Bytes),
    };
    Ok(v.unwrap_or(Value::Null))
}

impl PostgresStore {
    /// Copies the state in the SQLite file at `path` (already at the
    /// current schema: open it with its own backend first) into this
    /// store, which must hold no state yet, and verifies the copy.
    pub async fn import_sqlite(&self, path: &Path) -> Result<Imported> {
        let sqlite = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
            .await?;
        let mut tx = self.pool.begin().await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM functions) + (SELECT COUNT(*) FROM audit) \
                  + (SELECT COUNT(*) FROM tokens) + (SELECT COUNT(*) FROM deployments) \
                  + (SELECT COUNT(*) FROM environments WHERE created_at <> 0)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if held > 0 {
            return Err(StateError::Conflict(
                "the PostgreSQL database already holds Seal state; migrate into an empty one (a new database or schema)".into(),
            )
            .into());
        }
        // The environments its migrations seeded come from the file instead.
        sqlx::query("DELETE FROM environments")
            .execute(&mut *tx)
            .await?;
        let mut copied = Vec::new();
        for table in TABLES {
            let columns: Vec<(String, String)> = sqlx::query_as(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&mut *tx)
            .await?;
            let kinds: Vec<Kind> = columns
                .iter()
                .map(|(_, t)| kind_of(t))
                .collect::<Result<_>>()?;
            let list = columns
                .iter()
                .map(|(c, _)| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let rows = sqlx::query(&format!("SELECT {list} FROM {table}"))
                .fetch_all(&sqlite)
                .await?;
            let values: Vec<Vec<Value>> = rows
                .iter()
                .map(|r| {
                    kinds
                        .iter()
                        .enumerate()
                        .map(|(i, k)| from_sqlite(r, i, *k))
                        .collect::<Result<_>>()
                })
                .collect::<Result<_>>()?;
            for chunk in values.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
                    "INSERT INTO {table} ({list}) "
                ));
                q.push_values(chunk, |mut b, row| {
                    for v in row {
                        match v {
                            Value::Null => b.push("NULL"),
                            Value::Int(i) => b.push_bind(*i),
                            Value::Bool(x) => b.push_bind(*x),
                            Value::Float(f) => b.push_bind(*f),
                            Value::Text(t) => b.push_bind(t.clone()),
                            Value::Bytes(x) => b.push_bind(x.clone()),
                        };
                    }
                });
                q.build().execute(&mut *tx).await?;
            }
            if IDENTITIES.contains(table) {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                     GREATEST((SELECT MAX(id) FROM {table}), 1), (SELECT MAX(id) FROM {table}) IS NOT NULL)"
                ))
                .execute(&mut *tx)
                .await?;
            }
            // Read back inside the transaction: what PostgreSQL holds must
            // have the digest of what the file holds.
            let back = sqlx::query(&format!("SELECT {list} FROM {table}"))
                .fetch_all(&mut *tx)
                .await?;
            let back: Vec<Vec<Value>> = back
                .iter()
                .map(|r| {
                    kinds
                        .iter()
                        .zip(&columns)
                        .enumerate()
                        .map(|(i, (k, (_, t)))| from_postgres(r, i, *k, t))
                        .collect::<Result<_>>()
                })
                .collect::<Result<_>>()?;
            let (want, got) = (digest(&values), digest(&back));
            if want != got || values.len() != back.len() {
                return Err(StateError::Backend(format!(
                    "table {table} did not copy intact ({} rows {want}, read back {} rows {got}); nothing was committed",
                    values.len(),
                    back.len()
                ))
                .into());
            }
            copied.push((table.to_string(), values.len() as u64, want));
        }
        tx.commit().await?;
        sqlite.close().await;
        Ok(Imported { tables: copied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_digest_ignores_row_order_and_sees_every_value() {
        let a = vec![Value::Int(1), Value::Text("x".into()), Value::Null];
        let b = vec![Value::Int(2), Value::Bytes(vec![0, 1]), Value::Bool(true)];
        assert_eq!(
            digest(&[a.clone(), b.clone()]),
            digest(&[b.clone(), a.clone()])
        );
        let mut changed = b.clone();
        changed[1] = Value::Bytes(vec![0, 2]);
        assert_ne!(digest(&[a.clone(), b]), digest(&[a.clone(), changed]));
        // A text and bytes of the same content differ; so do 1 and true.
        assert_ne!(
            digest(&[vec![Value::Text("ab".into())]]),
            digest(&[vec![Value::Bytes(b"ab".to_vec())]])
        );
        assert_ne!(
            digest(&[vec![Value::Int(1)]]),
            digest(&[vec![Value::Bool(true)]])
        );
    }
}
