//! What the SQL backends share: the rows they read (sqlx `FromRow`,
//! generic over the database: SQLite and PostgreSQL decode the same
//! columns into the same Rust types) and their conversion into
//! `seal-state` records, and the audit chain's check. Each backend keeps
//! its own SQL, locking and id allocation; a row read means the same in
//! both.

use seal_state::{
    AUDIT_GENESIS, AttemptRecord, AuditRecord, AuditVerification, Backlog, BrokenLink, Budget,
    Claimed, CronRun, DeadLetter, DeadReason, DeliveryRecord, DeliveryState, DeploymentKind,
    DeploymentRecord, DeploymentState, Outcome, QueueRecord, ReleaseRecord, RouteRecord,
    StateError, Strategy, TokenRecord, TriggerRecord, TriggerSpec, VersionRecord, WeightedVersion,
    audit_hash,
};
use sqlx::FromRow;

#[derive(FromRow)]
pub struct VersionRow {
    pub function: String,
    pub number: i64,
    pub digest: String,
    pub manifest: String,
    pub component_size: i64,
    pub compiled_sha256: Option<String>,
    pub created_at: i64,
    pub created_by: String,
}

impl TryFrom<VersionRow> for VersionRecord {
    type Error = StateError;
    fn try_from(r: VersionRow) -> Result<Self, StateError> {
        Ok(Self {
            manifest: serde_json::from_str(&r.manifest).map_err(|e| {
                StateError::Corrupt(format!("manifest of {}@{}: {e}", r.function, r.number))
            })?,
            function: r.function,
            version: r.number as u64,
            digest: r.digest,
            component_size: r.component_size as u64,
            compiled_sha256: r.compiled_sha256,
            created_at: r.created_at,
            created_by: r.created_by,
        })
    }
}

#[derive(FromRow)]
pub struct RouteRow {
    pub environment: String,
    pub function: String,
    pub weights: String,
    pub deployment_id: i64,
    pub updated_at: i64,
    pub sticky_header: Option<String>,
    pub preview: Option<i64>,
}

impl TryFrom<RouteRow> for RouteRecord {
    type Error = StateError;
    fn try_from(r: RouteRow) -> Result<Self, StateError> {
        Ok(Self {
            weights: parse_weights(&r.weights)?,
            environment: r.environment,
            function: r.function,
            deployment_id: r.deployment_id as u64,
            updated_at: r.updated_at,
            sticky_header: r.sticky_header,
            preview: r.preview.map(|v| v as u64),
        })
    }
}

pub fn parse_weights(s: &str) -> Result<Vec<WeightedVersion>, StateError> {
    serde_json::from_str(s).map_err(|e| StateError::Corrupt(format!("weights {s:?}: {e}")))
}

pub fn weights_json(w: &[WeightedVersion]) -> String {
    serde_json::to_string(w).unwrap_or_else(|_| "[]".into())
}

#[derive(FromRow)]
pub struct DeploymentRow {
    pub id: i64,
    pub function: String,
    pub environment: String,
    pub kind: String,
    pub strategy: String,
    pub state: String,
    pub from_weights: Option<String>,
    pub to_weights: String,
    pub actor: String,
    pub reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub plan: Option<String>,
    pub baseline: Option<i64>,
    pub candidate: Option<i64>,
    pub step: i64,
    pub step_started_at: Option<i64>,
}

impl TryFrom<DeploymentRow> for DeploymentRecord {
    type Error = StateError;
    fn try_from(r: DeploymentRow) -> Result<Self, StateError> {
        Ok(Self {
            id: r.id as u64,
            from_weights: r.from_weights.as_deref().map(parse_weights).transpose()?,
            to_weights: parse_weights(&r.to_weights)?,
            function: r.function,
            environment: r.environment,
            kind: DeploymentKind::parse(&r.kind).ok_or_else(|| {
                StateError::Corrupt(format!("deployment {} has kind {:?}", r.id, r.kind))
            })?,
            strategy: Strategy::parse(&r.strategy).ok_or_else(|| {
                StateError::Corrupt(format!("deployment {} has strategy {:?}", r.id, r.strategy))
            })?,
            state: DeploymentState::parse(&r.state).ok_or_else(|| {
                StateError::Corrupt(format!("deployment {} has state {:?}", r.id, r.state))
            })?,
            actor: r.actor,
            reason: r.reason,
            created_at: r.created_at,
            finished_at: r.finished_at,
            plan: r
                .plan
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StateError::Corrupt(format!("plan of deployment {}: {e}", r.id)))?,
            baseline: r.baseline.map(|v| v as u64),
            candidate: r.candidate.map(|v| v as u64),
            step: r.step as u32,
            step_started_at: r.step_started_at,
        })
    }
}

pub type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub const AUDIT_COLUMNS: &str =
    "id, at, actor, action, object, digest, outcome, detail, prev_hash, hash";

/// A version's usage over a time range.
#[derive(FromRow)]
pub struct UsageRowDb {
    pub environment: String,
    pub version: i64,
    pub invocations: i64,
    pub gb_seconds: f64,
}

/// A function's cost budget per calendar period (UTC).
#[derive(FromRow)]
pub struct BudgetRow {
    pub function: String,
    pub gb_seconds: f64,
    pub period: String,
    pub webhook: Option<String>,
    pub alerted_period: Option<i64>,
    pub updated_by: String,
    pub updated_at: i64,
}

impl From<BudgetRow> for Budget {
    fn from(r: BudgetRow) -> Self {
        Budget {
            function: r.function,
            gb_seconds: r.gb_seconds,
            period: r.period,
            webhook: r.webhook,
            alerted_period: r.alerted_period,
            updated_by: r.updated_by,
            updated_at: r.updated_at,
        }
    }
}

#[derive(FromRow)]
pub struct QueueRow {
    pub environment: String,
    pub name: String,
    pub dedup_window_ms: i64,
    pub created_at: i64,
    pub created_by: String,
}

impl From<QueueRow> for QueueRecord {
    fn from(r: QueueRow) -> Self {
        Self {
            environment: r.environment,
            name: r.name,
            dedup_window_ms: r.dedup_window_ms as u64,
            created_at: r.created_at,
            created_by: r.created_by,
        }
    }
}

#[derive(FromRow)]
pub struct TriggerRow {
    pub name: String,
    pub environment: String,
    pub function: String,
    pub spec: String,
    pub created_at: i64,
    pub created_by: String,
}

impl TryFrom<TriggerRow> for TriggerRecord {
    type Error = StateError;
    fn try_from(r: TriggerRow) -> Result<Self, StateError> {
        let spec: TriggerSpec = serde_json::from_str(&r.spec)
            .map_err(|e| StateError::Corrupt(format!("trigger {}: {e}", r.name)))?;
        Ok(Self {
            name: r.name,
            environment: r.environment,
            function: r.function,
            spec,
            created_at: r.created_at,
            created_by: r.created_by,
        })
    }
}

#[derive(FromRow)]
pub struct ClaimRow {
    pub id: i64,
    pub event_id: i64,
    pub trigger: String,
    pub function: String,
    pub attempts: i64,
    pub pinned_version: Option<i64>,
    pub environment: String,
    pub queue: String,
    pub ce_id: String,
    pub enqueued_at: i64,
    pub event: String,
    pub last_attempt: i64,
}

#[derive(FromRow)]
pub struct BacklogRow {
    pub environment: String,
    pub queue: String,
    pub trigger: String,
    pub function: String,
    pub pending: i64,
    pub running: i64,
    pub oldest: Option<i64>,
}

#[derive(FromRow)]
pub struct EventRow {
    pub id: i64,
    pub environment: String,
    pub queue: String,
    pub ce_id: String,
    pub ce_source: String,
    pub ce_type: String,
    pub event: String,
    pub enqueued_at: i64,
}

#[derive(FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub trigger: String,
    pub function: String,
    pub state: String,
    pub attempts: i64,
    pub next_at: i64,
    pub dead_reason: Option<String>,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for DeliveryRecord {
    type Error = StateError;
    fn try_from(r: DeliveryRow) -> Result<Self, StateError> {
        Ok(Self {
            state: DeliveryState::parse(&r.state).ok_or_else(|| {
                StateError::Corrupt(format!("delivery {} state {:?}", r.id, r.state))
            })?,
            dead_reason: r.dead_reason.as_deref().and_then(DeadReason::parse),
            id: r.id as u64,
            trigger: r.trigger,
            function: r.function,
            attempts: r.attempts as u32,
            next_at: r.next_at,
            last_error: r.last_error,
            finished_at: r.finished_at,
            history: Vec::new(),
        })
    }
}

#[derive(FromRow)]
pub struct AttemptRow {
    pub attempt: i64,
    pub version: Option<i64>,
    pub digest: Option<String>,
    pub status: Option<i64>,
    pub outcome: String,
    pub error_kind: Option<String>,
    pub started_at: i64,
    pub duration_ms: i64,
}

impl From<AttemptRow> for AttemptRecord {
    fn from(r: AttemptRow) -> Self {
        Self {
            attempt: r.attempt as u32,
            version: r.version.map(|v| v as u64),
            digest: r.digest,
            status: r.status.map(|s| s as u16),
            outcome: Outcome::parse(&r.outcome).unwrap_or(Outcome::Retryable),
            error_kind: r.error_kind,
            started_at: r.started_at,
            duration_ms: r.duration_ms as u64,
        }
    }
}

#[derive(FromRow)]
pub struct DeadRow {
    pub id: i64,
    pub event_id: i64,
    pub environment: String,
    pub queue: String,
    pub trigger: String,
    pub function: String,
    pub ce_id: String,
    pub ce_type: String,
    pub dead_reason: Option<String>,
    pub last_error: Option<String>,
    pub last_version: Option<i64>,
    pub attempts: i64,
    pub finished_at: Option<i64>,
}

impl From<DeadRow> for DeadLetter {
    fn from(r: DeadRow) -> Self {
        Self {
            id: r.id as u64,
            event_id: r.event_id as u64,
            environment: r.environment,
            queue: r.queue,
            trigger: r.trigger,
            function: r.function,
            ce_id: r.ce_id,
            ty: r.ce_type,
            reason: r
                .dead_reason
                .as_deref()
                .and_then(DeadReason::parse)
                .unwrap_or(DeadReason::AttemptsExhausted),
            last_error: r.last_error,
            version: r.last_version.map(|v| v as u64),
            attempts: r.attempts as u32,
            dead_at: r.finished_at.unwrap_or_default(),
        }
    }
}

pub const DEAD_SELECT: &str = "SELECT d.id, d.event_id, e.environment, e.queue, d.trigger, d.function, \
     e.ce_id, e.ce_type, d.dead_reason, d.last_error, d.last_version, d.attempts, d.finished_at \
     FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.state = 'dead'";

#[derive(FromRow)]
pub struct RunRow {
    pub trigger: String,
    pub scheduled_at: i64,
    pub fired_at: i64,
    pub status: String,
    pub version: Option<i64>,
    pub digest: Option<String>,
    pub http_status: Option<i64>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

impl From<RunRow> for CronRun {
    fn from(r: RunRow) -> Self {
        Self {
            trigger: r.trigger,
            scheduled_at: r.scheduled_at,
            fired_at: r.fired_at,
            status: r.status,
            version: r.version.map(|v| v as u64),
            digest: r.digest,
            http_status: r.http_status.map(|s| s as u16),
            duration_ms: r.duration_ms.map(|d| d as u64),
            error: r.error,
        }
    }
}

#[derive(FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub environments: Option<String>,
    pub queues: Option<String>,
    pub hash: String,
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

impl TryFrom<TokenRow> for TokenRecord {
    type Error = StateError;
    fn try_from(r: TokenRow) -> Result<Self, StateError> {
        let environments =
            match r.environments {
                Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                    StateError::Corrupt(format!("token {} environments: {e}", r.id))
                })?),
                None => None,
            };
        let queues = match r.queues {
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| StateError::Corrupt(format!("token {} queues: {e}", r.id)))?,
            ),
            None => None,
        };
        Ok(Self {
            id: r.id,
            name: r.name,
            role: r.role,
            environments,
            queues,
            hash: r.hash,
            created_at: r.created_at,
            created_by: r.created_by,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
        })
    }
}

pub const TOKEN_COLUMNS: &str =
    "id, name, role, environments, queues, hash, created_at, created_by, revoked_at, revoked_by";

/// An audit row as `AUDIT_COLUMNS` selects it, as a record.
pub fn audit_record(row: AuditRow) -> AuditRecord {
    let (id, at, actor, action, object, digest, outcome, detail, prev_hash, hash) = row;
    AuditRecord {
        id: id as u64,
        at,
        actor,
        action,
        object,
        digest,
        outcome,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        prev_hash,
        hash,
    }
}

/// Recomputes the audit chain from the first entry (rows in id order)
/// and reports the first broken link: an edited entry (its hash no
/// longer matches), a removed or reordered one (ids jump, or `prev_hash`
/// is not the hash before it), or an entry without a hash.
pub fn verify_chain(rows: Vec<AuditRow>) -> AuditVerification {
    let mut prev = AUDIT_GENESIS.to_owned();
    let mut entries = 0u64;
    for (expected_id, row) in (1i64..).zip(rows) {
        let (id, at, actor, action, object, digest, outcome, detail, prev_hash, hash) = row;
        let broken = |reason: String| AuditVerification {
            ok: false,
            entries,
            head: None,
            first_broken: Some(BrokenLink {
                id: id as u64,
                reason,
            }),
        };
        if id != expected_id {
            return broken(format!("entries {expected_id}..{} are missing", id - 1));
        }
        if prev_hash.as_deref() != Some(prev.as_str()) {
            return broken("its prev_hash is not the hash of the entry before it".into());
        }
        let computed = audit_hash(
            &prev,
            id,
            at,
            &actor,
            &action,
            &object,
            digest.as_deref(),
            &outcome,
            &detail,
        );
        if hash.as_deref() != Some(computed.as_str()) {
            return broken("its contents do not match its hash (the entry was changed)".into());
        }
        prev = computed;
        entries += 1;
    }
    AuditVerification {
        ok: true,
        entries,
        head: (entries > 0).then_some(prev),
        first_broken: None,
    }
}

impl From<ClaimRow> for Claimed {
    fn from(r: ClaimRow) -> Self {
        Self {
            delivery_id: r.id as u64,
            event_id: r.event_id as u64,
            trigger: r.trigger,
            environment: r.environment,
            queue: r.queue,
            function: r.function,
            attempts: r.attempts as u32,
            next_attempt: r.last_attempt as u32 + 1,
            pinned_version: r.pinned_version.map(|v| v as u64),
            ce_id: r.ce_id,
            enqueued_at: r.enqueued_at,
            event: r.event,
        }
    }
}

impl From<BacklogRow> for Backlog {
    fn from(r: BacklogRow) -> Self {
        Self {
            environment: r.environment,
            queue: r.queue,
            trigger: r.trigger,
            function: r.function,
            pending: r.pending as u64,
            running: r.running as u64,
            oldest_enqueued_at: r.oldest,
        }
    }
}

/// The `seal-state` traits for a backend's store type, each method
/// delegating to the store's inherent method of the same name and
/// turning the backend's error into [`seal_state::StateError`]:
/// `seal_state_sql::state_ports!(SqliteStore);`.
#[macro_export]
macro_rules! state_ports {
    ($store:ty) => {
        $crate::state_ports!(@ports $store;
    Events {
        fn create_queue(q: &QueueRecord) -> bool;
        fn queues(environment: Option<&str>) -> Vec<QueueRecord>;
        fn queue(environment: &str, name: &str) -> Option<QueueRecord>;
        fn delete_queue(environment: &str, name: &str, actor: &str) -> bool;
        fn create_trigger(t: &TriggerRecord) -> bool;
        fn triggers() -> Vec<TriggerRecord>;
        fn trigger(name: &str) -> Option<TriggerRecord>;
        fn delete_trigger(name: &str, actor: &str) -> bool;
        fn enqueue_and_claim(batch: &[Enqueue<'_>], claims: &[ClaimNew<'_>]) -> (Vec<Vec<Enqueued>>, Vec<Claimed>);
        fn claim_due(trigger: &str, now: i64, lease_until: i64, limit: u32) -> Vec<Claimed>;
        fn next_due(trigger: &str) -> Option<i64>;
        fn finish_deliveries(done: &[Finished]) -> ();
        fn finish_and_claim(done: &[Finished], claims: &[ClaimDue<'_>]) -> Vec<Vec<Claimed>>;
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
        fn release_hold(release: &HoldRelease) -> bool;
        fn hold_releases(environment: Option<&str>) -> Vec<HoldRelease>;
        fn record_applied(files: &[AppliedFile]) -> ();
        fn applied_files(environment: Option<&str>) -> Vec<AppliedFile>;
        fn start_release(new: &ReleaseRecord) -> ReleaseRecord;
        fn update_release(id: u64, state: &str, outcomes: &[StepOutcome], finished: bool) -> ();
        fn releases(limit: u32) -> Vec<ReleaseRecord>;
        fn release(id: u64) -> Option<ReleaseRecord>;
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
        fn set_pipeline(environment: &str, pipeline: Option<&serde_json::Value>, actor: &str) -> ();
        fn pipeline(environment: &str) -> Option<(serde_json::Value, i64, String)>;
        fn pipelines() -> Vec<(String, serde_json::Value)>;
    }
    FlagSets {
        fn set_flags(environment: &str, flags: &serde_json::Value, action: &str, changed: &[String], actor: &str) -> i64;
        fn flags(environment: &str) -> Option<FlagRevision>;
        fn flag_history(environment: &str, key: Option<&str>, limit: u32) -> Vec<FlagRevision>;
        fn all_flags() -> Vec<FlagRevision>;
    }
    Captures {
        fn start_capture(c: &Capture) -> ();
        fn stop_capture(environment: &str, function: &str, actor: &str) -> bool;
        fn captures() -> Vec<Capture>;
        fn add_captured(requests: &[CapturedRequest]) -> u64;
        fn captured(environment: &str, function: &str, limit: u32) -> Vec<CapturedRequest>;
        fn delete_capture(environment: &str, function: &str, actor: &str) -> Option<u64>;
    }
    Attestations {
        fn add_attestation(a: &AttestationRecord, object: &str) -> bool;
        fn attestations(subject: &str) -> Vec<AttestationRecord>;
        fn remove_attestation(subject: &str, referrer: &str, object: &str, actor: &str) -> bool;
    }
        );
    };
    (@ports $store:ty; $($port:ident { $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* })*) => {
        const _: () = {
            use ::seal_state::*;
            $(
                #[async_trait::async_trait]
                impl ::seal_state::$port for $store {
                    $(async fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                        Ok(<$store>::$name(self, $($arg),*).await?)
                    })*
                }
            )*
        };
    };
}

/// A `releases` row: id, file digest, environments, source, actor, state,
/// plan, outcomes (JSON text), created, finished, node.
pub type ReleaseRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
);

/// The columns of [`ReleaseRow`], in order.
pub const RELEASE_COLUMNS: &str = "id, file_digest, environments, source, actor, state, plan, outcomes, created_at, finished_at, node";

/// A stored release as the record the API answers with.
pub fn release_record(r: ReleaseRow) -> seal_state::Result<ReleaseRecord> {
    fn parse<T: serde::de::DeserializeOwned>(
        id: i64,
        what: &str,
        text: &str,
    ) -> seal_state::Result<T> {
        serde_json::from_str(text)
            .map_err(|e| StateError::Backend(format!("release {id}: {what}: {e}")))
    }
    Ok(ReleaseRecord {
        id: r.0 as u64,
        environments: parse(r.0, "environments", &r.2)?,
        source: match &r.3 {
            Some(s) => parse(r.0, "source", s)?,
            None => None,
        },
        plan: parse(r.0, "plan", &r.6)?,
        outcomes: parse(r.0, "outcomes", &r.7)?,
        file_digest: r.1,
        actor: r.4,
        state: r.5,
        created_at: r.8,
        finished_at: r.9,
        node: r.10,
    })
}

/// Unix milliseconds as RFC 3339 to the second (for messages).
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A `captures` row: environment, function, rate, max, body limit, drop
/// headers (JSON), started at/by, stopped at/by, kept count.
pub type CaptureRow = (
    String,
    String,
    f64,
    i64,
    i64,
    String,
    i64,
    String,
    Option<i64>,
    Option<String>,
    i64,
);

/// The columns of [`CaptureRow`], in order (table alias `c`).
pub const CAPTURE_COLUMNS: &str = "c.environment, c.function, c.rate_percent, c.max_requests, c.body_limit, \
     c.drop_headers, c.started_at, c.started_by, c.stopped_at, c.stopped_by, c.captured";

/// A stored capture as the record the API answers with.
pub fn capture_record(r: CaptureRow) -> seal_state::Result<seal_state::Capture> {
    Ok(seal_state::Capture {
        drop_headers: serde_json::from_str(&r.5)
            .map_err(|e| StateError::Corrupt(format!("capture of {} in {}: {e}", r.1, r.0)))?,
        environment: r.0,
        function: r.1,
        rate_percent: r.2,
        max: r.3.max(0) as u64,
        body_limit: r.4.max(0) as u64,
        started_at: r.6,
        started_by: r.7,
        stopped_at: r.8,
        stopped_by: r.9,
        captured: r.10.max(0) as u64,
    })
}

/// A `captured_requests` row, in [`CAPTURED_COLUMNS`] order.
pub type CapturedRow = (
    i64,
    String,
    String,
    i64,
    i64,
    String,
    String,
    String,
    Vec<u8>,
    bool,
    i64,
    String,
    i64,
    i64,
);

/// The columns of [`CapturedRow`], in order.
pub const CAPTURED_COLUMNS: &str = "id, environment, function, version, at, method, path, headers, body, body_truncated, status, response_digest, response_bytes, duration_ms";

/// A stored captured request as the API answers with it.
pub fn captured_request(r: CapturedRow) -> seal_state::Result<seal_state::CapturedRequest> {
    Ok(seal_state::CapturedRequest {
        id: r.0 as u64,
        headers: serde_json::from_str(&r.7)
            .map_err(|e| StateError::Corrupt(format!("captured request {}: {e}", r.0)))?,
        environment: r.1,
        function: r.2,
        version: r.3 as u64,
        at: r.4,
        method: r.5,
        path: r.6,
        body: r.8,
        body_truncated: r.9,
        status: r.10.clamp(0, i64::from(u16::MAX)) as u16,
        response_digest: r.11,
        response_bytes: r.12.max(0) as u64,
        duration_ms: r.13.max(0) as u64,
    })
}

/// A `flag_revisions` row, in [`FLAG_COLUMNS`] order.
pub type FlagRow = (String, i64, String, String, String, i64, String);

/// The columns of [`FlagRow`], in order.
pub const FLAG_COLUMNS: &str = "environment, revision, flags, action, changed, at, actor";

/// A stored flag revision as the API answers with it.
pub fn flag_revision(r: FlagRow) -> seal_state::Result<seal_state::FlagRevision> {
    let bad = |what: &str, e: serde_json::Error| {
        StateError::Corrupt(format!("flag revision {} of {}: {what}: {e}", r.1, r.0))
    };
    Ok(seal_state::FlagRevision {
        flags: serde_json::from_str(&r.2).map_err(|e| bad("flags", e))?,
        changed: serde_json::from_str(&r.4).map_err(|e| bad("changed", e))?,
        environment: r.0,
        revision: r.1,
        action: r.3,
        at: r.5,
        actor: r.6,
    })
}
