//! Following other nodes' changes: the database moves one revision in
//! every change's transaction and announces it on `seal_changes` (see
//! migration 2). One listener connection per node turns announcements
//! into a watch value; a waiter wakes on an announcement or when its poll
//! interval passes, and reads the revision from the table either way, so
//! an announcement lost to a reconnect costs at most one poll.

use crate::{PostgresStore, Result};
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::watch;

pub(crate) const CHANNEL: &str = "seal_changes";

impl PostgresStore {
    pub async fn change_revision(&self) -> Result<i64> {
        revision(&self.pool).await
    }

    pub async fn wait_for_change(&self, seen: i64, poll: Duration) -> Result<i64> {
        let mut heard = self
            .heard
            .get_or_init(|| async { listen(self.pool.clone()) })
            .await
            .clone();
        let _ = tokio::time::timeout(poll, heard.wait_for(|r| *r > seen)).await;
        self.change_revision().await
    }
}

/// Starts the node's listener task; it ends when the store is dropped
/// (every receiver gone). Its value is the highest revision announced,
/// or read after the listener (re)connected, since what was announced
/// while it was away is lost.
fn listen(pool: sqlx::PgPool) -> watch::Receiver<i64> {
    let (tx, rx) = watch::channel(i64::MIN);
    let raise = |tx: &watch::Sender<i64>, r: i64| {
        tx.send_if_modified(|cur| {
            let newer = r > *cur;
            if newer {
                *cur = r;
            }
            newer
        });
    };
    let reread = |pool: sqlx::PgPool| async move { revision(&pool).await.ok() };
    tokio::spawn(async move {
        let mut listener: Option<PgListener> = None;
        // Announcements name the schema the change was made in.
        let mut own_schema: Option<String> = None;
        loop {
            if tx.is_closed() {
                return;
            }
            let l = match &mut listener {
                Some(l) => l,
                None => match connect(&pool).await {
                    Ok(l) => {
                        if own_schema.is_none() {
                            own_schema = sqlx::query_scalar("SELECT current_schema()")
                                .fetch_one(&pool)
                                .await
                                .ok();
                        }
                        if let Some(r) = reread(pool.clone()).await {
                            raise(&tx, r);
                        }
                        listener.insert(l)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for other nodes' changes; polling until it can");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = tx.closed() => return,
                        }
                        continue;
                    }
                },
            };
            let got = tokio::select! {
                got = l.try_recv() => got,
                _ = tx.closed() => return,
            };
            match got {
                Ok(Some(n)) => {
                    let announced = n.payload().rsplit_once(' ').and_then(|(schema, r)| {
                        (Some(schema) == own_schema.as_deref()).then(|| r.parse::<i64>().ok())?
                    });
                    if let Some(r) = announced {
                        raise(&tx, r);
                    }
                }
                // The connection dropped and sqlx reconnected: what was
                // announced meanwhile is lost, so the revision is re-read.
                Ok(None) => {
                    if let Some(r) = reread(pool.clone()).await {
                        raise(&tx, r);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the change listener; reconnecting");
                    listener = None;
                }
            }
        }
    });
    rx
}

async fn revision(pool: &sqlx::PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT revision FROM changes WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

async fn connect(pool: &sqlx::PgPool) -> Result<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}
