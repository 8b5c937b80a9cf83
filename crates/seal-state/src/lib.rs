//! The state store's model and ports: the records Seal keeps (functions
//! and versions, environments, routes, deployments and their events, the
//! audit chain, usage and budgets, tokens, settings, policies,
//! attestations) and one trait per aggregate that a backend implements.
//! [`StateStore`] is all of them together: what the control plane holds,
//! as `Arc<dyn StateStore>`.
//!
//! Backends are sibling crates (`seal-state-sqlite` today; PostgreSQL
//! next) and every one runs the same [`contract`] suite.
//!
//! Invariants every backend keeps:
//! - a version number is allocated once per function and never reused; a
//!   digest maps to at most one version;
//! - a route row changes only inside the transaction that inserts the
//!   deployment explaining the change, its events and its audit entry;
//! - every change that has an audit entry is one transaction with it;
//! - the audit log is one hash chain ([`audit_hash`]).
//!
//! This crate knows no SQL driver, no wasm and no HTTP.

use async_trait::async_trait;
pub use seal_api_types::capture::{Capture, CapturedRequest};
pub use seal_api_types::desired::{ReleaseRecord, StepOutcome};
pub use seal_api_types::events::{
    AttemptRecord, CronRun, DeadLetter, DeadReason, DeliveryRecord, DeliveryState, Enqueued,
    EventRecord, Outcome, QueueRecord, QueueSubscription, TriggerRecord, TriggerSpec,
};
pub use seal_api_types::flags::FlagRevision;
pub use seal_api_types::records::{
    AuditRecord, AuditVerification, BrokenLink, Budget, DeploymentEvent, DeploymentRecord,
    RouteRecord, SettingRevision, TokenRecord, VersionRecord, WeightedVersion,
};
pub use seal_api_types::rollout::Strategy;
pub use seal_api_types::{DeploymentKind, DeploymentState};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "contract")]
pub mod contract;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store itself failed (I/O, the driver, a migration); the
    /// message is for the server log.
    #[error("{0}")]
    Backend(String),
    #[error("corrupt state row: {0}")]
    Corrupt(String),
    /// The store cannot be reached now (its server is down or
    /// unreachable); the same call may succeed later.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// The event queues (a broker) cannot be reached now; the message
    /// says which, safe to show a user.
    #[error("{0}")]
    QueuesUnavailable(String),
    /// The route has a deployment in progress; it must finish first.
    #[error("deployment {id} is in progress on {environment}/{function}")]
    Busy {
        id: u64,
        function: String,
        environment: String,
    },
    #[error("deployment {0} is not active")]
    NotActive(u64),
    /// A controller's transition carried a lease this node no longer
    /// holds: another node took over, and this one must not commit.
    #[error("this node is no longer the controller (lease epoch {epoch} was taken over)")]
    Fenced { epoch: i64 },
    /// A change that contradicts what is stored (safe to show a user).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// The first entry's `prev_hash`.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit entry's hash: SHA-256 (hex) of the JSON array
/// `[prev_hash, id, at, actor, action, object, digest, outcome, detail]`,
/// `detail` being the stored text. JSON makes the encoding unambiguous
/// whatever the fields contain.
#[allow(clippy::too_many_arguments)]
pub fn audit_hash(
    prev_hash: &str,
    id: i64,
    at: i64,
    actor: &str,
    action: &str,
    object: &str,
    digest: Option<&str>,
    outcome: &str,
    detail: &str,
) -> String {
    use sha2::Digest as _;
    let canonical = serde_json::json!([
        prev_hash, id, at, actor, action, object, digest, outcome, detail
    ])
    .to_string();
    hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// A hold released: the version may be deployed by an apply again,
/// until a later deployment rolls it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRelease {
    pub environment: String,
    pub function: String,
    pub version: u64,
    /// The deployment that rolled the version back (the hold released).
    pub deployment_id: u64,
    pub released_at: i64,
    pub released_by: String,
}

/// The release file last applied to an environment: the part of it about
/// that environment (TOML), with where the whole file came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFile {
    pub environment: String,
    pub file: String,
    /// sha256 of the whole file as applied.
    pub file_digest: String,
    pub commit: Option<String>,
    pub actor: String,
    pub applied_at: i64,
}

/// An audit entry to append.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub object: &'a str,
    pub digest: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: serde_json::Value,
}

/// A version to create at publish time.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub function: &'a str,
    pub digest: &'a str,
    pub manifest: &'a serde_json::Value,
    pub component_size: u64,
    pub compiled_sha256: &'a str,
    pub actor: &'a str,
}

/// A completed route change to record.
#[derive(Debug, Clone)]
pub struct NewDeployment<'a> {
    pub function: &'a str,
    pub environment: &'a str,
    pub kind: DeploymentKind,
    pub strategy: Strategy,
    pub from_weights: Option<&'a [WeightedVersion]>,
    pub to_weights: &'a [WeightedVersion],
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    /// The artifact digest(s) the route now serves, for the audit entry.
    pub digest: Option<&'a str>,
}

/// A progressive deployment to start.
#[derive(Debug, Clone)]
pub struct NewRollout<'a> {
    pub function: &'a str,
    pub environment: &'a str,
    pub strategy: Strategy,
    pub plan: &'a serde_json::Value,
    pub baseline: u64,
    pub candidate: u64,
    pub from_weights: Option<&'a [WeightedVersion]>,
    /// The route while the deployment starts (candidate at 0%).
    pub weights: &'a [WeightedVersion],
    pub sticky_header: Option<&'a str>,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// One state change of a progressive deployment, recorded whole.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub state: DeploymentState,
    /// New step index, if the step changes (restarts its clock).
    pub step: Option<u32>,
    /// New route weights, if the route changes.
    pub weights: Option<&'a [WeightedVersion]>,
    /// The deployment ends: the route loses its sticky key and preview.
    pub finished: bool,
    pub event: &'a str,
    pub detail: serde_json::Value,
    /// An audit entry (action, outcome, actor) for changes people care about.
    pub audit: Option<(&'a str, &'a str, &'a str)>,
    /// The controller lease the driver acts under: on a shared store the
    /// transition commits only while this node still holds that epoch.
    pub fence: Option<Fence>,
}

/// A node's hold on the controller lease: its name and the lease's epoch,
/// which grows with every change of holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    pub epoch: i64,
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Usage counted since the last flush, for one version in one hour.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageDelta {
    pub function: String,
    pub environment: String,
    pub version: u64,
    pub hour: i64,
    pub invocations: u64,
    pub gb_seconds: f64,
}

/// A version's usage over a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub environment: String,
    pub version: i64,
    pub invocations: i64,
    pub gb_seconds: f64,
}

pub const HOUR_MS: i64 = 3_600_000;

/// A token to create; `hash` is the SHA-256 (hex) of the token.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub environments: Option<&'a [String]>,
    /// The queues a publisher token may enqueue on.
    pub queues: Option<&'a [String]>,
    pub hash: &'a str,
    pub actor: &'a str,
}

/// One stored config value or secret.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingRecord {
    pub key: String,
    pub secret: bool,
    /// Plain UTF-8 for config; nonce + ciphertext for a secret.
    pub value: Vec<u8>,
    pub revision: i64,
}

/// A change to the config or the secrets of a function in an environment.
#[derive(Debug, Clone)]
pub struct SettingChange<'a> {
    pub function: &'a str,
    pub environment: &'a str,
    pub secret: bool,
    /// Keys with their stored form (ciphertext for secrets).
    pub set: Vec<(String, Vec<u8>)>,
    pub unset: Vec<String>,
    pub actor: &'a str,
}

/// An attestation attached to an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestationRecord {
    pub subject: String,
    pub referrer: String,
    pub envelope: String,
    pub keyid: Option<String>,
    pub created_at: i64,
    pub actor: String,
}

/// Start (unix ms, UTC) of the calendar `day` or `month` holding `ms`.
pub fn period_start(ms: i64, period: &str) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    let day_start = ms - ms.rem_euclid(DAY_MS);
    if period != "month" {
        return day_start;
    }
    // Civil date of the day (Howard Hinnant's days-from-civil, inverted).
    let days = day_start / DAY_MS;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5 + 1;
    day_start - (day_of_month - 1) * DAY_MS
}

/// Functions, their versions, and environments.
#[async_trait]
pub trait Catalog: Send + Sync {
    async fn version_by_digest(&self, digest: &str) -> Result<Option<VersionRecord>>;
    async fn version(&self, function: &str, number: u64) -> Result<Option<VersionRecord>>;
    /// A function's versions, oldest first.
    async fn versions(&self, function: &str) -> Result<Vec<VersionRecord>>;
    async fn all_versions(&self) -> Result<Vec<VersionRecord>>;
    async fn function_exists(&self, name: &str) -> Result<bool>;
    async fn functions(&self) -> Result<Vec<String>>;
    /// Allocates `function@N` for a digest, with its audit entry; a digest
    /// that already has a version returns it (`false`).
    async fn create_version(&self, new: NewVersion<'_>) -> Result<(VersionRecord, bool)>;
    async fn set_compiled_sha256(&self, digest: &str, sha256: &str) -> Result<()>;
    async fn environment_exists(&self, name: &str) -> Result<bool>;
    /// Creates an environment with its audit entry; false if it existed.
    async fn create_environment(&self, name: &str, actor: &str) -> Result<bool>;
    async fn environments(&self) -> Result<Vec<String>>;
    /// Sets (`Some`) or clears (`None`: the server's rule applies) an
    /// environment's protection, with its audit entry; false if the
    /// environment does not exist.
    async fn set_environment_protected(
        &self,
        name: &str,
        protected: Option<bool>,
        actor: &str,
    ) -> Result<bool>;
    /// Every environment whose protection an admin set.
    async fn environment_protection(&self) -> Result<Vec<(String, bool)>>;
}

/// Routes, deployments and their events.
#[async_trait]
pub trait Deployments: Send + Sync {
    async fn routes(&self) -> Result<Vec<RouteRecord>>;
    async fn route(&self, environment: &str, function: &str) -> Result<Option<RouteRecord>>;
    /// An all-at-once deployment: the deployment, its events, the route
    /// and the audit entry in one transaction; `Busy` if the route has an
    /// active deployment.
    async fn record_deployment(&self, new: NewDeployment<'_>) -> Result<DeploymentRecord>;
    /// A progressive deployment's start, in one transaction as above.
    async fn start_rollout(&self, new: NewRollout<'_>) -> Result<DeploymentRecord>;
    /// One transition of an active deployment (step, pause, promotion,
    /// rollback, end), in one transaction; `NotActive` once it ended.
    async fn transition(&self, id: u64, t: Transition<'_>) -> Result<DeploymentRecord>;
    async fn record_event(&self, id: u64, kind: &str, detail: &serde_json::Value) -> Result<()>;
    async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>>;
    /// A function's deployments, newest first.
    async fn deployments(
        &self,
        function: &str,
        environment: Option<&str>,
    ) -> Result<Vec<DeploymentRecord>>;
    async fn deployment(&self, id: u64)
    -> Result<Option<(DeploymentRecord, Vec<DeploymentEvent>)>>;
    /// Releases the hold a deployment put on a version, with its audit
    /// entry, in one transaction; false if it was released already.
    async fn release_hold(&self, release: &HoldRelease) -> Result<bool>;
    /// The holds released, in one environment or all, newest first.
    async fn hold_releases(&self, environment: Option<&str>) -> Result<Vec<HoldRelease>>;
    /// Records the file applied to each of its environments (replacing
    /// what was applied there before), in one transaction.
    async fn record_applied(&self, files: &[AppliedFile]) -> Result<()>;
    /// The file last applied to each environment (or one), by name.
    async fn applied_files(&self, environment: Option<&str>) -> Result<Vec<AppliedFile>>;
    /// Records a release as `running`; `Conflict` naming the release
    /// already running (one at a time in the store).
    async fn start_release(&self, new: &ReleaseRecord) -> Result<ReleaseRecord>;
    /// A release's state and outcomes so far (`finished`: it ended now).
    async fn update_release(
        &self,
        id: u64,
        state: &str,
        outcomes: &[StepOutcome],
        finished: bool,
    ) -> Result<()>;
    /// Releases, newest first.
    async fn releases(&self, limit: u32) -> Result<Vec<ReleaseRecord>>;
    async fn release(&self, id: u64) -> Result<Option<ReleaseRecord>>;
}

/// The hash-chained audit log.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn audit(&self, entry: NewAudit<'_>) -> Result<()>;
    /// The most recent entries, newest first.
    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>>;
    /// Recomputes the chain: the first edited, removed or reordered entry.
    async fn verify_audit(&self) -> Result<AuditVerification>;
}

/// Hourly usage and cost budgets.
#[async_trait]
pub trait Usage: Send + Sync {
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<()>;
    async fn usage(&self, function: &str, since_ms: i64) -> Result<Vec<UsageRow>>;
    async fn set_budget(&self, b: &Budget, audit: NewAudit<'_>) -> Result<()>;
    async fn budget(&self, function: &str) -> Result<Option<Budget>>;
    async fn budgets(&self) -> Result<Vec<Budget>>;
    async fn delete_budget(&self, function: &str, audit: NewAudit<'_>) -> Result<bool>;
    /// True exactly once per period, however many servers ask.
    async fn claim_budget_alert(&self, function: &str, period_start: i64) -> Result<bool>;
}

/// API tokens (hashes only).
#[async_trait]
pub trait Tokens: Send + Sync {
    async fn token_count(&self) -> Result<u64>;
    async fn create_token(&self, new: NewToken<'_>) -> Result<TokenRecord>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    async fn tokens(&self) -> Result<Vec<TokenRecord>>;
    async fn revoke_token(&self, id: &str, actor: &str) -> Result<Option<TokenRecord>>;
}

/// Config and (sealed) secrets per function and environment, with their
/// revisions.
#[async_trait]
pub trait Settings: Send + Sync {
    /// One transaction: the rows, a revision (keys only) and an audit entry.
    async fn change_settings(&self, change: SettingChange<'_>) -> Result<i64>;
    async fn settings(
        &self,
        function: &str,
        environment: &str,
    ) -> Result<(i64, Vec<SettingRecord>)>;
    async fn setting_scopes(&self) -> Result<Vec<(String, String)>>;
    async fn setting_revisions(
        &self,
        function: &str,
        environment: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SettingRevision>>;
}

/// Trust policies and pipelines per environment: what a deploy there
/// must meet.
#[async_trait]
pub trait Policies: Send + Sync {
    async fn set_policy(
        &self,
        environment: &str,
        policy: &serde_json::Value,
        actor: &str,
    ) -> Result<()>;
    /// The policy, its revision time and who set it.
    async fn policy(&self, environment: &str) -> Result<Option<(serde_json::Value, i64, String)>>;
    /// Replaces (`None`: removes) an environment's pipeline: the
    /// environment a version must have served in first and the evidence
    /// it needs there. Audited as `pipeline.set`.
    async fn set_pipeline(
        &self,
        environment: &str,
        pipeline: Option<&serde_json::Value>,
        actor: &str,
    ) -> Result<()>;
    /// The pipeline, its revision time and who set it.
    async fn pipeline(&self, environment: &str)
    -> Result<Option<(serde_json::Value, i64, String)>>;
    /// Every environment's pipeline.
    async fn pipelines(&self) -> Result<Vec<(String, serde_json::Value)>>;
}

/// Feature flag sets per environment, each change a revision.
#[async_trait]
pub trait FlagSets: Send + Sync {
    /// Stores an environment's whole flag set (flagd JSON) as its next
    /// revision; audited as `flags.<action>` with the keys changed.
    async fn set_flags(
        &self,
        environment: &str,
        flags: &serde_json::Value,
        action: &str,
        changed: &[String],
        actor: &str,
    ) -> Result<i64>;
    /// The environment's current set, if it ever had one.
    async fn flags(&self, environment: &str) -> Result<Option<FlagRevision>>;
    /// Revisions newest first; with `key`, those that changed it.
    async fn flag_history(
        &self,
        environment: &str,
        key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlagRevision>>;
    /// Every environment's current set.
    async fn all_flags(&self) -> Result<Vec<FlagRevision>>;
}

/// Traffic captures and the requests they kept.
#[async_trait]
pub trait Captures: Send + Sync {
    /// Starts (or restarts, keeping what it kept) a capture; audited as
    /// `capture.start`.
    async fn start_capture(&self, c: &Capture) -> Result<()>;
    /// Stops a running capture; false if there was none. Audited as
    /// `capture.stop`.
    async fn stop_capture(&self, environment: &str, function: &str, actor: &str) -> Result<bool>;
    /// Every capture with the count it kept.
    async fn captures(&self) -> Result<Vec<Capture>>;
    /// Keeps requests of captures that are running, each capture up to its
    /// maximum (the rest are dropped); returns how many were kept.
    async fn add_captured(&self, requests: &[CapturedRequest]) -> Result<u64>;
    /// The requests a capture kept, oldest first.
    async fn captured(
        &self,
        environment: &str,
        function: &str,
        limit: u32,
    ) -> Result<Vec<CapturedRequest>>;
    /// Deletes a capture and everything it kept; the number of requests
    /// deleted, or `None` if there was no such capture. Audited as
    /// `capture.delete`.
    async fn delete_capture(
        &self,
        environment: &str,
        function: &str,
        actor: &str,
    ) -> Result<Option<u64>>;
}

/// The index of attestations attached to artifacts.
#[async_trait]
pub trait Attestations: Send + Sync {
    /// Records an attestation (once per referrer) with its audit entry.
    async fn add_attestation(&self, a: &AttestationRecord, object: &str) -> Result<bool>;
    async fn attestations(&self, subject: &str) -> Result<Vec<AttestationRecord>>;
    /// Removes one attestation from the index, with its audit entry;
    /// false if there was none.
    async fn remove_attestation(
        &self,
        subject: &str,
        referrer: &str,
        object: &str,
        actor: &str,
    ) -> Result<bool>;
}

/// An event to enqueue: the CloudEvent's identity and its structured JSON
/// form.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub ce_id: &'a str,
    pub source: &'a str,
    pub ty: &'a str,
    pub event: &'a str,
}

/// One producer's enqueue, within [`Events::enqueue_batch`].
#[derive(Debug, Clone)]
pub struct Enqueue<'a> {
    pub environment: &'a str,
    pub queue: &'a str,
    pub events: &'a [NewEvent<'a>],
    pub now: i64,
    pub dedup_since: i64,
}

/// A claim made with [`Events::enqueue_and_claim`]: up to `limit` of the
/// deliveries the enqueue adds for `trigger`, leased until `lease_until`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimNew<'a> {
    pub trigger: &'a str,
    pub lease_until: i64,
    pub limit: u32,
}

/// A delivery claimed for an attempt: its lease runs until the deadline
/// given to [`Events::claim_due`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub delivery_id: u64,
    pub event_id: u64,
    pub trigger: String,
    pub environment: String,
    pub queue: String,
    pub function: String,
    /// Attempts made so far in this run (0 for the first one; a redrive
    /// starts a new run).
    pub attempts: u32,
    /// The number the next attempt's record gets (attempt numbers go on
    /// across redrives).
    pub next_attempt: u32,
    pub pinned_version: Option<u64>,
    pub ce_id: String,
    pub enqueued_at: i64,
    /// The CloudEvent in its structured JSON form.
    pub event: String,
}

/// An attempt that ended (or a delivery ended without one) and what
/// follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub delivery_id: u64,
    pub attempt: Option<AttemptRecord>,
    pub next: NextStep,
    pub at: i64,
}

/// One claim made with [`Events::finish_and_claim`]: up to `limit`
/// deliveries of `trigger` due at `now`, leased until `lease_until`.
#[derive(Debug, Clone, Copy)]
pub struct ClaimDue<'a> {
    pub trigger: &'a TriggerRecord,
    pub now: i64,
    pub lease_until: i64,
    pub limit: u32,
}

/// What a subscription has not handled yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Backlog {
    pub environment: String,
    pub queue: String,
    pub trigger: String,
    pub function: String,
    pub pending: u64,
    pub running: u64,
    pub oldest_enqueued_at: Option<i64>,
}

/// What follows an attempt (or a check before one).
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    Done,
    Retry { at: i64, error: String },
    Dead { reason: DeadReason, error: String },
}

/// Durable queues and triggers: the queues of each environment, the
/// triggers binding functions to them or to a schedule, the events and
/// one delivery per event and subscription, and cron ticks. The events
/// themselves are reached through [`Queues`]: here when the queues are
/// the state store's, in a broker otherwise.
#[async_trait]
pub trait Events: Send + Sync {
    /// False when it exists already. Audited.
    async fn create_queue(&self, q: &QueueRecord) -> Result<bool>;
    async fn queues(&self, environment: Option<&str>) -> Result<Vec<QueueRecord>>;
    async fn queue(&self, environment: &str, name: &str) -> Result<Option<QueueRecord>>;
    /// Deletes the queue and its events; `Conflict` while a trigger reads
    /// it. False when there is no such queue. Audited.
    async fn delete_queue(&self, environment: &str, name: &str, actor: &str) -> Result<bool>;
    /// False when the name is taken. Audited.
    async fn create_trigger(&self, t: &TriggerRecord) -> Result<bool>;
    async fn triggers(&self) -> Result<Vec<TriggerRecord>>;
    async fn trigger(&self, name: &str) -> Result<Option<TriggerRecord>>;
    /// Deletes the trigger and its deliveries not yet handled. Audited.
    async fn delete_trigger(&self, name: &str, actor: &str) -> Result<bool>;
    /// Stores the events (one transaction) with one pending delivery per
    /// queue trigger of the queue, due at `now`. An event whose (`source`,
    /// `id`) was enqueued in the queue at or after `dedup_since` is a
    /// duplicate: answered with the stored one, nothing added.
    async fn enqueue(
        &self,
        environment: &str,
        queue: &str,
        events: &[NewEvent<'_>],
        now: i64,
        dedup_since: i64,
    ) -> Result<Vec<Enqueued>> {
        let mut out = self
            .enqueue_batch(&[Enqueue {
                environment,
                queue,
                events,
                now,
                dedup_since,
            }])
            .await?;
        Ok(out.pop().unwrap_or_default())
    }
    /// Several enqueues (of any queues) in one durable transaction, in
    /// order: what concurrent producers share (group commit). One answer
    /// per enqueue.
    async fn enqueue_batch(&self, batch: &[Enqueue<'_>]) -> Result<Vec<Vec<Enqueued>>> {
        Ok(self.enqueue_and_claim(batch, &[]).await?.0)
    }
    /// [`Events::enqueue_batch`], and in the same transaction, for each of
    /// `claims`, the first `limit` deliveries it adds for that trigger (in
    /// enqueue order) are claimed as [`Events::claim_due`] would: running,
    /// leased until `lease_until`, answered with the enqueues' answers.
    /// The delivery loop runs them at once, with no claim of its own (an
    /// event's way to its handler is one commit).
    async fn enqueue_and_claim(
        &self,
        batch: &[Enqueue<'_>],
        claims: &[ClaimNew<'_>],
    ) -> Result<(Vec<Vec<Enqueued>>, Vec<Claimed>)>;
    /// Claims up to `limit` deliveries of `trigger` that are due at `now`
    /// (pending and `next_at <= now`, or running past their lease) and
    /// marks them running until `lease_until`.
    async fn claim_due(
        &self,
        trigger: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>>;
    /// The earliest instant a pending delivery of `trigger` is due.
    async fn next_due(&self, trigger: &str) -> Result<Option<i64>>;
    /// Records attempts (where one was made) and what follows each, in one
    /// transaction. A backend may commit these without waiting for the
    /// disk: losing one only delivers its event again.
    async fn finish_deliveries(&self, done: &[Finished]) -> Result<()>;
    /// [`Events::finish_deliveries`], then [`Events::claim_due`] for each
    /// of `claims` (one answer each), in one transaction where the backend
    /// has them: the delivery loop frees its slots and fills them again in
    /// one round trip to the store. Committed like outcomes (without
    /// waiting for the disk): losing a claim only leaves it due again.
    async fn finish_and_claim(
        &self,
        done: &[Finished],
        claims: &[ClaimDue<'_>],
    ) -> Result<Vec<Vec<Claimed>>>;
    /// [`Events::finish_deliveries`] for one delivery.
    async fn finish_delivery(
        &self,
        delivery_id: u64,
        attempt: Option<&AttemptRecord>,
        next: &NextStep,
        now: i64,
    ) -> Result<()> {
        self.finish_deliveries(&[Finished {
            delivery_id,
            attempt: attempt.cloned(),
            next: next.clone(),
            at: now,
        }])
        .await
    }
    /// Running deliveries become pending (due now): at start, when no
    /// other server can be running them. Returns how many.
    async fn release_running(&self, now: i64) -> Result<u64>;
    /// Per subscription with anything not yet handled: pending and running
    /// deliveries and the oldest event's enqueue time.
    async fn backlog(&self) -> Result<Vec<Backlog>>;
    /// Deletes events enqueued before `before` that nothing waits for any
    /// more (every delivery done, or none), with their deliveries and
    /// attempts; dead letters stay until purged. Returns how many events.
    async fn sweep_events(&self, before: i64) -> Result<u64>;
    /// One event with its deliveries and every attempt.
    async fn event(&self, id: u64) -> Result<Option<EventRecord>>;
    async fn dead_letters(
        &self,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> Result<Vec<DeadLetter>>;
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>>;
    /// Dead letters back to pending (due now, a new run of attempts),
    /// pinned to `to` when given. Returns the ids changed. Audited.
    async fn redrive(
        &self,
        ids: &[u64],
        to: Option<u64>,
        now: i64,
        actor: &str,
    ) -> Result<Vec<u64>>;
    /// Deletes dead letters (and events left with no delivery). Returns
    /// the ids deleted. Audited.
    async fn purge(&self, ids: &[u64], actor: &str) -> Result<Vec<u64>>;
    /// Commits a cron tick as fired before it runs: moves the trigger's
    /// last tick to `run.scheduled_at` and records the run, one
    /// transaction. False (nothing written) when that tick or a later one
    /// was committed already.
    async fn commit_tick(&self, run: &CronRun) -> Result<bool>;
    /// Records how a committed tick's run ended.
    async fn finish_run(&self, run: &CronRun) -> Result<()>;
    /// Runs still `running` become `interrupted`: at start.
    async fn interrupt_runs(&self) -> Result<u64>;
    async fn cron_runs(&self, trigger: &str, limit: u32) -> Result<Vec<CronRun>>;
    /// The last tick a cron trigger committed.
    async fn last_tick(&self, trigger: &str) -> Result<Option<i64>>;
}

/// Where events wait and how they are handed out: the message path of
/// the queues whose names and triggers the [`Events`] store keeps. The
/// embedded default is the state store itself ([`StoreQueues`]); a message
/// broker (NATS JetStream) is the sibling, and both run the same contract
/// suite. Every method means what the [`Events`] method of the same name
/// says, except where noted.
#[async_trait]
pub trait Queues: Send + Sync {
    /// Where the events are, for messages ("the state store", a URL).
    fn location(&self) -> String;
    async fn enqueue_batch(&self, batch: &[Enqueue<'_>]) -> Result<Vec<Vec<Enqueued>>>;
    /// Whether [`Queues::enqueue_and_claim`] claims (the state store's
    /// queues do; a broker hands its messages out itself).
    fn claims_on_enqueue(&self) -> bool {
        false
    }
    /// Claims nothing unless [`Queues::claims_on_enqueue`]: the delivery
    /// loop claims as it would otherwise.
    async fn enqueue_and_claim(
        &self,
        batch: &[Enqueue<'_>],
        claims: &[ClaimNew<'_>],
    ) -> Result<(Vec<Vec<Enqueued>>, Vec<Claimed>)> {
        let _ = claims;
        Ok((self.enqueue_batch(batch).await?, Vec::new()))
    }
    /// Claims up to `limit` due deliveries of the queue trigger `trigger`.
    async fn claim_due(
        &self,
        trigger: &TriggerRecord,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>>;
    /// `None` also when the queues cannot tell (a broker that pushes).
    async fn next_due(&self, trigger: &str) -> Result<Option<i64>>;
    async fn finish_deliveries(&self, done: &[Finished]) -> Result<()>;
    /// Outcomes committed and the slots they free filled again: one
    /// transaction in the state store; a broker acknowledges, then claims.
    async fn finish_and_claim(
        &self,
        done: &[Finished],
        claims: &[ClaimDue<'_>],
    ) -> Result<Vec<Vec<Claimed>>> {
        self.finish_deliveries(done).await?;
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            out.push(
                self.claim_due(c.trigger, c.now, c.lease_until, c.limit)
                    .await?,
            );
        }
        Ok(out)
    }
    async fn release_running(&self, now: i64) -> Result<u64>;
    async fn backlog(&self) -> Result<Vec<Backlog>>;
    async fn sweep_events(&self, before: i64) -> Result<u64>;
    async fn event(&self, id: u64) -> Result<Option<EventRecord>>;
    async fn dead_letters(
        &self,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> Result<Vec<DeadLetter>>;
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>>;
    async fn redrive(
        &self,
        ids: &[u64],
        to: Option<u64>,
        now: i64,
        actor: &str,
    ) -> Result<Vec<u64>>;
    async fn purge(&self, ids: &[u64], actor: &str) -> Result<Vec<u64>>;
    /// The store deleted the queue: its events go too.
    async fn queue_deleted(&self, environment: &str, queue: &str) -> Result<()>;
    /// The store deleted the trigger: its deliveries go too.
    async fn trigger_deleted(&self, trigger: &str) -> Result<()>;
}

/// The queues kept in the state store, in the same transactions as the
/// rest (the embedded default, and PostgreSQL's).
pub struct StoreQueues(pub std::sync::Arc<dyn StateStore>);

#[async_trait]
impl Queues for StoreQueues {
    fn location(&self) -> String {
        "the state store".into()
    }
    fn claims_on_enqueue(&self) -> bool {
        true
    }
    async fn enqueue_batch(&self, batch: &[Enqueue<'_>]) -> Result<Vec<Vec<Enqueued>>> {
        self.0.enqueue_batch(batch).await
    }
    async fn enqueue_and_claim(
        &self,
        batch: &[Enqueue<'_>],
        claims: &[ClaimNew<'_>],
    ) -> Result<(Vec<Vec<Enqueued>>, Vec<Claimed>)> {
        self.0.enqueue_and_claim(batch, claims).await
    }
    async fn claim_due(
        &self,
        trigger: &TriggerRecord,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        self.0
            .claim_due(&trigger.name, now, lease_until, limit)
            .await
    }
    async fn next_due(&self, trigger: &str) -> Result<Option<i64>> {
        self.0.next_due(trigger).await
    }
    async fn finish_deliveries(&self, done: &[Finished]) -> Result<()> {
        self.0.finish_deliveries(done).await
    }
    async fn finish_and_claim(
        &self,
        done: &[Finished],
        claims: &[ClaimDue<'_>],
    ) -> Result<Vec<Vec<Claimed>>> {
        self.0.finish_and_claim(done, claims).await
    }
    async fn release_running(&self, now: i64) -> Result<u64> {
        self.0.release_running(now).await
    }
    async fn backlog(&self) -> Result<Vec<Backlog>> {
        self.0.backlog().await
    }
    async fn sweep_events(&self, before: i64) -> Result<u64> {
        self.0.sweep_events(before).await
    }
    async fn event(&self, id: u64) -> Result<Option<EventRecord>> {
        self.0.event(id).await
    }
    async fn dead_letters(
        &self,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> Result<Vec<DeadLetter>> {
        self.0.dead_letters(environment, queue).await
    }
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        self.0.dead_letter(id).await
    }
    async fn redrive(
        &self,
        ids: &[u64],
        to: Option<u64>,
        now: i64,
        actor: &str,
    ) -> Result<Vec<u64>> {
        self.0.redrive(ids, to, now, actor).await
    }
    async fn purge(&self, ids: &[u64], actor: &str) -> Result<Vec<u64>> {
        self.0.purge(ids, actor).await
    }
    async fn queue_deleted(&self, _environment: &str, _queue: &str) -> Result<()> {
        // Deleted with the queue, in its transaction.
        Ok(())
    }
    async fn trigger_deleted(&self, _trigger: &str) -> Result<()> {
        Ok(())
    }
}

/// What several nodes on one store need to follow each other's changes.
/// A backend that one process owns (SQLite: one server per data dir) is
/// not shared and has nothing to follow.
#[async_trait]
pub trait Changes: Send + Sync {
    /// Whether other nodes may write to this store.
    fn shared(&self) -> bool;
    /// The change revision: it grows with every committed change to
    /// routes, environments, settings, policies, tokens or triggers, by
    /// any node (0 on a store that is not shared).
    async fn change_revision(&self) -> Result<i64>;
    /// Waits until the revision may differ from `seen` (a change was
    /// announced) or `poll` has passed, then reads it. A lost announcement
    /// costs at most `poll`.
    async fn wait_for_change(&self, seen: i64, poll: std::time::Duration) -> Result<i64>;
}

/// What a node tells the others every second: who it is, and the
/// cumulative counters of every version it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub api: String,
    pub gateway: String,
    /// The `seal` release the node runs.
    pub release: String,
    pub started_at: i64,
    pub versions: Vec<NodeVersion>,
    /// What the drivers running on it are doing, by deployment id (only
    /// the controller runs any), as the control plane describes it.
    #[serde(default)]
    pub rollouts: serde_json::Value,
}

/// One version a node serves, with its counters since the node loaded it
/// (opaque here: the serving layer's snapshot as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeVersion {
    pub environment: String,
    pub function: String,
    pub version: u64,
    pub weight: u32,
    pub counters: serde_json::Value,
}

/// A node as the store last heard of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub report: NodeReport,
    /// Milliseconds since its last report, by the store's clock.
    pub heartbeat_age_ms: i64,
}

/// Who holds the controller lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub epoch: i64,
    /// Milliseconds until it expires (negative: expired), by the store's clock.
    pub expires_in_ms: i64,
}

/// One controller among several nodes: a lease in the store, taken by
/// one node at a time, and each node's heartbeat with its counters. A
/// store one process owns (SQLite) has one node, which always leads: the
/// defaults say so and store nothing.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Takes the controller lease for `node` if it is free or expired
    /// (a new epoch), or renews it if `node` holds it (the same epoch),
    /// for `ttl` by the store's clock. `Some(epoch)` when `node` holds it.
    async fn acquire_lease(&self, _node: &str, _ttl: std::time::Duration) -> Result<Option<i64>> {
        Ok(Some(1))
    }
    /// Gives the lease up at once (a clean stop), if `node` holds `epoch`.
    async fn release_lease(&self, _node: &str, _epoch: i64) -> Result<()> {
        Ok(())
    }
    /// The lease as it stands (`None`: a store with one node).
    async fn lease(&self) -> Result<Option<LeaseRecord>> {
        Ok(None)
    }
    /// Records a node's heartbeat and the counters of what it serves.
    async fn report_node(&self, _report: &NodeReport) -> Result<()> {
        Ok(())
    }
    /// Every node heard of within `within`, with its last report.
    async fn nodes(&self, _within: std::time::Duration) -> Result<Vec<NodeRecord>> {
        Ok(Vec::new())
    }
    /// Leaves a command (approve, promote, abort) for the controller's
    /// driver of `deployment`; returns its id.
    async fn send_command(&self, _deployment: u64, _command: &str, _actor: &str) -> Result<i64> {
        Err(StateError::Conflict(
            "this store has one node: commands go to its driver directly".into(),
        ))
    }
    /// Commands not answered yet, oldest first.
    async fn pending_commands(&self) -> Result<Vec<PendingCommand>> {
        Ok(Vec::new())
    }
    /// Records the controller's answer (JSON) to a command.
    async fn answer_command(&self, _id: i64, _answer: &str) -> Result<()> {
        Ok(())
    }
    /// The answer to a command, once given.
    async fn command_answer(&self, _id: i64) -> Result<Option<String>> {
        Ok(None)
    }
}

/// A command for a deployment's driver, sent through another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommand {
    pub id: i64,
    pub deployment: u64,
    pub command: String,
    pub actor: String,
}

/// Every aggregate: what the control plane needs of a state backend.
pub trait StateStore:
    Catalog
    + Deployments
    + AuditLog
    + Usage
    + Tokens
    + Settings
    + Policies
    + Attestations
    + Captures
    + FlagSets
    + Events
    + Changes
    + Cluster
{
}

impl<T> StateStore for T where
    T: Catalog
        + Deployments
        + AuditLog
        + Usage
        + Tokens
        + Settings
        + Policies
        + Attestations
        + Captures
        + FlagSets
        + Events
        + Changes
        + Cluster
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods() {
        // 2026-11-22T12:34:56Z
        let t = 1_795_350_896_000;
        assert_eq!(period_start(t, "day"), 1_795_305_600_000); // 2026-11-22T00:00Z
        assert_eq!(period_start(t, "month"), 1_793_491_200_000); // 2026-11-01T00:00Z
        // 2024-03-01T00:00Z is its own month start (leap year February before it).
        assert_eq!(period_start(1_709_251_200_000, "month"), 1_709_251_200_000);
        assert_eq!(period_start(1_709_251_199_999, "month"), 1_706_745_600_000); // 2024-02-01
    }
}
