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

/// One controller among the nodes: the lease and the nodes' reports.
#[async_trait::async_trait]
impl seal_state::Cluster for PostgresStore {
    async fn acquire_lease(&self, node: &str, ttl: std::time::Duration) -> Result<Option<i64>> {
        Ok(PostgresStore::acquire_lease(self, node, ttl).await?)
    }

    async fn release_lease(&self, node: &str, epoch: i64) -> Result<()> {
        Ok(PostgresStore::release_lease(self, node, epoch).await?)
    }

    async fn lease(&self) -> Result<Option<seal_state::LeaseRecord>> {
        Ok(PostgresStore::lease(self).await?)
    }

    async fn report_node(&self, report: &seal_state::NodeReport) -> Result<()> {
        Ok(PostgresStore::report_node(self, report).await?)
    }

    async fn nodes(&self, within: std::time::Duration) -> Result<Vec<seal_state::NodeRecord>> {
        Ok(PostgresStore::nodes(self, within).await?)
    }

    async fn send_command(&self, deployment: u64, command: &str, actor: &str) -> Result<i64> {
        Ok(PostgresStore::send_command(self, deployment, command, actor).await?)
    }

    async fn pending_commands(&self) -> Result<Vec<seal_state::PendingCommand>> {
        Ok(PostgresStore::pending_commands(self).await?)
    }

    async fn answer_command(&self, id: i64, answer: &str) -> Result<()> {
        Ok(PostgresStore::answer_command(self, id, answer).await?)
    }

    async fn command_answer(&self, id: i64) -> Result<Option<String>> {
        Ok(PostgresStore::command_answer(self, id).await?)
    }
}
