//! The `seal-state` traits, implemented by the store's own methods: each
//! trait method calls the method of the same name and turns this
//! backend's errors into [`seal_state::StateError`].

use crate::PostgresStore;
use seal_state::Result;

seal_state_sql::state_ports!(PostgresStore);

/// Other nodes write to the same database.
#[async_trait::async_trait]
impl seal_state::Changes for PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    async fn change_revision(&self) -> Result<i64> {
        Ok(PostgresStore::change_revision(self).await?)
    }

    async fn wait_for_change(&self, seen: i64, poll: std::time::Duration) -> Result<i64> {
        Ok(PostgresStore::wait_for_change(self, seen, poll).await?)
    }
}
