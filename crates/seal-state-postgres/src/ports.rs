//! The `seal-state` traits, implemented by the store's own methods: each
//! trait method calls the method of the same name and turns this
//! backend's errors into [`seal_state::StateError`].

use crate::PostgresStore;
use seal_state::{
    AttestationRecord, AuditRecord, AuditVerification, Budget, DeploymentEvent, DeploymentRecord,
    NewAudit, NewDeployment, NewRollout, NewToken, NewVersion, Result, RouteRecord, SettingChange,
    SettingRecord, SettingRevision, TokenRecord, Transition, UsageDelta, UsageRow, VersionRecord,
};
use seal_state::{
    Backlog, Claimed, CronRun, DeadLetter, Enqueue, Enqueued, EventRecord, Finished, QueueRecord,
    TriggerRecord,
};

/// `impl Trait for PostgresStore`, one method per line, each delegating to
/// the inherent method of the same name.
macro_rules! ports {
    ($($port:ident { $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* })*) => {$(
        #[async_trait::async_trait]
        impl seal_state::$port for PostgresStore {
            $(async fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                Ok(PostgresStore::$name(self, $($arg),*).await?)
            })*
        }
    )*};
}

ports! {
    Events {
        fn create_queue(q: &QueueRecord) -> bool;
        fn queues(environment: Option<&str>) -> Vec<QueueRecord>;
        fn queue(environment: &str, name: &str) -> Option<QueueRecord>;
        fn delete_queue(environment: &str, name: &str, actor: &str) -> bool;
        fn create_trigger(t: &TriggerRecord) -> bool;
        fn triggers() -> Vec<TriggerRecord>;
        fn trigger(name: &str) -> Option<TriggerRecord>;
        fn delete_trigger(name: &str, actor: &str) -> bool;
        fn enqueue_batch(batch: &[Enqueue<'_>]) -> Vec<Vec<Enqueued>>;
        fn claim_due(trigger: &str, now: i64, lease_until: i64, limit: u32) -> Vec<Claimed>;
        fn next_due(trigger: &str) -> Option<i64>;
        fn finish_deliveries(done: &[Finished]) -> ();
        fn release_running(now: i64) -> u64;
        fn backlog() -> Vec<Backlog>;
        fn sweep_events(before: i64) -> u64;
        fn event(id: u64) -> Option<EventRecord>;
        fn dead_letters(environment: Option<&str>, queue: Option<&str>) -> Vec<DeadLetter>;
        fn dead_letter(id: u64) -> Option<DeadLetter>;
        fn redrive(ids: &[u64], to: Option<u64>, now: i64, actor: &str) -> Vec<u64>;
        fn purge(ids: &[u64], actor: &str) -> Vec<u64>;
        fn commit_tick(run: &CronRun) -> bool;
        fn finish_run(run: &CronRun) -> ();
        fn interrupt_runs() -> u64;
        fn cron_runs(trigger: &str, limit: u32) -> Vec<CronRun>;
        fn last_tick(trigger: &str) -> Option<i64>;
    }
    Catalog {
        fn version_by_digest(digest: &str) -> Option<VersionRecord>;
        fn version(function: &str, number: u64) -> Option<VersionRecord>;
        fn versions(function: &str) -> Vec<VersionRecord>;
        fn all_versions() -> Vec<VersionRecord>;
        fn function_exists(name: &str) -> bool;
        fn functions() -> Vec<String>;
        fn create_version(new: NewVersion<'_>) -> (VersionRecord, bool);
        fn set_compiled_sha256(digest: &str, sha256: &str) -> ();
        fn environment_exists(name: &str) -> bool;
        fn create_environment(name: &str, actor: &str) -> bool;
        fn environments() -> Vec<String>;
        fn set_environment_protected(name: &str, protected: Option<bool>, actor: &str) -> bool;
        fn environment_protection() -> Vec<(String, bool)>;
    }
    Deployments {
        fn routes() -> Vec<RouteRecord>;
        fn route(environment: &str, function: &str) -> Option<RouteRecord>;
        fn record_deployment(new: NewDeployment<'_>) -> DeploymentRecord;
        fn start_rollout(new: NewRollout<'_>) -> DeploymentRecord;
        fn transition(id: u64, t: Transition<'_>) -> DeploymentRecord;
        fn record_event(id: u64, kind: &str, detail: &serde_json::Value) -> ();
        fn active_deployments() -> Vec<DeploymentRecord>;
        fn deployments(function: &str, environment: Option<&str>) -> Vec<DeploymentRecord>;
        fn deployment(id: u64) -> Option<(DeploymentRecord, Vec<DeploymentEvent>)>;
    }
    AuditLog {
        fn audit(entry: NewAudit<'_>) -> ();
        fn audit_log(limit: u32) -> Vec<AuditRecord>;
        fn verify_audit() -> AuditVerification;
    }
    Usage {
        fn add_usage(deltas: &[UsageDelta]) -> ();
        fn usage(function: &str, since_ms: i64) -> Vec<UsageRow>;
        fn set_budget(b: &Budget, audit: NewAudit<'_>) -> ();
        fn budget(function: &str) -> Option<Budget>;
        fn budgets() -> Vec<Budget>;
        fn delete_budget(function: &str, audit: NewAudit<'_>) -> bool;
        fn claim_budget_alert(function: &str, period_start: i64) -> bool;
    }
    Tokens {
        fn token_count() -> u64;
        fn create_token(new: NewToken<'_>) -> TokenRecord;
        fn token_by_hash(hash: &str) -> Option<TokenRecord>;
        fn tokens() -> Vec<TokenRecord>;
        fn revoke_token(id: &str, actor: &str) -> Option<TokenRecord>;
    }
    Settings {
        fn change_settings(change: SettingChange<'_>) -> i64;
        fn settings(function: &str, environment: &str) -> (i64, Vec<SettingRecord>);
        fn setting_scopes() -> Vec<(String, String)>;
        fn setting_revisions(function: &str, environment: Option<&str>, limit: u32) -> Vec<SettingRevision>;
    }
    Policies {
        fn set_policy(environment: &str, policy: &serde_json::Value, actor: &str) -> ();
        fn policy(environment: &str) -> Option<(serde_json::Value, i64, String)>;
    }
    Attestations {
        fn add_attestation(a: &AttestationRecord, object: &str) -> bool;
        fn attestations(subject: &str) -> Vec<AttestationRecord>;
        fn remove_attestation(subject: &str, referrer: &str, object: &str, actor: &str) -> bool;
    }
}

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
