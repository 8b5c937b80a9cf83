//! The `seal-state` traits, implemented by the store's own methods: each
//! trait method calls the method of the same name and turns this
//! backend's errors into [`seal_state::StateError`].

use crate::SqliteStore;
use seal_state::Result;

seal_state_sql::state_ports!(SqliteStore);

/// One server owns the file: there is no other writer to follow.
#[async_trait::async_trait]
impl seal_state::Changes for SqliteStore {
    fn shared(&self) -> bool {
        false
    }

    async fn change_revision(&self) -> Result<i64> {
        Ok(0)
    }

    async fn wait_for_change(&self, _seen: i64, poll: std::time::Duration) -> Result<i64> {
        tokio::time::sleep(poll).await;
        Ok(0)
    }
}

/// One process owns the file: it is the only node and always leads.
impl seal_state::Cluster for SqliteStore {}
