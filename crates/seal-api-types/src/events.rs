//! Event triggers on the wire: queues, triggers (queue subscriptions and
//! cron schedules), enqueued events with their delivery attempts, dead
//! letters. The state store keeps the same records (`seal-state`
//! re-exports them).

use serde::{Deserialize, Serialize};

/// A named, durable event queue of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub environment: String,
    pub name: String,
    /// Events with the (`source`, `id`) of one enqueued this long ago or
    /// less are accepted as duplicates and not enqueued again.
    pub dedup_window_ms: u64,
    pub created_at: i64,
    pub created_by: String,
}

/// `POST /v1/queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQueue {
    pub name: String,
    #[serde(default)]
    pub environment: Option<String>,
    /// Ten minutes when absent.
    #[serde(default)]
    pub dedup_window_ms: Option<u64>,
}

/// What a queue subscription does with each event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSubscription {
    pub queue: String,
    /// Attempts before the event is dead-lettered (default 3).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Exponential backoff between attempts, with full jitter: the n-th
    /// retry waits a random time up to `min(max, initial * 2^(n-1))`.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// An event older than this (since it was enqueued) is dead-lettered
    /// instead of attempted again (default one day).
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
    /// Deliveries of this subscription running at once (default 16).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_backoff_initial_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_max_age_ms() -> u64 {
    24 * 3_600_000
}
fn default_max_in_flight() -> u32 {
    16
}

impl QueueSubscription {
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            max_attempts: default_max_attempts(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_age_ms: default_max_age_ms(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

/// What a trigger binds a function to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TriggerSpec {
    Queue(QueueSubscription),
    Cron(CronSchedule),
}

impl TriggerSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Queue(_) => "queue",
            Self::Cron(_) => "cron",
        }
    }
}

/// A schedule: a cron expression in a time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronSchedule {
    /// Five fields, or six with seconds first.
    pub schedule: String,
    /// An IANA time zone (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub on_missed: OnMissed,
    #[serde(default)]
    pub overlap: Overlap,
    /// Whether ticks follow a canary's weights (default: every tick runs on
    /// the baseline).
    #[serde(default)]
    pub canary: CronCanary,
}

fn utc() -> String {
    "UTC".into()
}

/// Ticks missed while no server ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissed {
    /// Recorded as missed, not run.
    #[default]
    Skip,
    /// The latest missed tick runs once.
    Once,
}

/// A tick that comes while the previous run still goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Allow,
    /// Recorded as skipped.
    Forbid,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CronCanary {
    #[default]
    Baseline,
    FollowWeights,
}

/// A trigger binds a function in an environment (never a version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRecord {
    pub name: String,
    pub environment: String,
    pub function: String,
    #[serde(flatten)]
    pub spec: TriggerSpec,
    pub created_at: i64,
    pub created_by: String,
}

/// `POST /v1/triggers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTrigger {
    /// `<function>-<queue>` or `<function>-cron` when absent, prefixed by
    /// the environment when it is not the server's default.
    #[serde(default)]
    pub name: Option<String>,
    pub function: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(flatten)]
    pub spec: TriggerSpec,
}

/// One event accepted by `POST /v1/queues/{env}/{queue}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// Seal's id of the stored event (`seal events show ID`).
    pub id: u64,
    /// The CloudEvent's own `id` and `source`.
    pub ce_id: String,
    pub source: String,
    /// Already enqueued within the queue's deduplication window: this is
    /// that event, nothing was added.
    pub duplicate: bool,
}

/// The answer to an ingest: every event of the request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueAnswer {
    pub environment: String,
    pub queue: String,
    pub events: Vec<Enqueued>,
}

/// Where one event stands with one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    /// An attempt is running.
    Running,
    /// Handled (a 2xx answer).
    Done,
    /// Dead-lettered.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "done" => Self::Done,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// How one attempt ended, by the function's answer: 2xx = `ok`; 408, 409,
/// 429, 5xx, a trap, a timeout, a memory kill = `retryable`; any other
/// status = `permanent` (no retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Retryable,
    Permanent,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ok" => Self::Ok,
            "retryable" => Self::Retryable,
            "permanent" => Self::Permanent,
            _ => return None,
        })
    }

    /// The outcome of an HTTP answer's status.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            408 | 409 | 429 | 500..=599 => Self::Retryable,
            _ => Self::Permanent,
        }
    }
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// Every attempt failed with a retryable error.
    AttemptsExhausted,
    /// Older than the subscription's maximum age.
    MaxAge,
    /// A permanent failure (a 4xx other than 408, 409, 429).
    Permanent,
    /// The event does not match its type's schema.
    Schema,
    /// The function has no version serving in the environment.
    NoRoute,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::MaxAge => "max_age",
            Self::Permanent => "permanent",
            Self::Schema => "schema",
            Self::NoRoute => "no_route",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "attempts_exhausted" => Self::AttemptsExhausted,
            "max_age" => Self::MaxAge,
            "permanent" => Self::Permanent,
            "schema" => Self::Schema,
            "no_route" => Self::NoRoute,
            _ => return None,
        })
    }
}

/// One attempt to deliver an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub version: Option<u64>,
    pub digest: Option<String>,
    /// The function's answer, when it gave one.
    pub status: Option<u16>,
    pub outcome: Outcome,
    /// `trap`, `timeout`, `memory`, `overloaded`, `throttled`, `status`, …
    pub error_kind: Option<String>,
    pub started_at: i64,
    pub duration_ms: u64,
}

/// One event with one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Also the dead letter's id when `state` is `dead`.
    pub id: u64,
    pub trigger: String,
    pub function: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_at: i64,
    pub dead_reason: Option<DeadReason>,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
}

/// An enqueued event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: u64,
    pub environment: String,
    pub queue: String,
    pub ce_id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub enqueued_at: i64,
    /// The CloudEvent in the structured JSON format.
    pub event: serde_json::Value,
    #[serde(default)]
    pub deliveries: Vec<DeliveryRecord>,
}

/// A dead-lettered delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The delivery's id (`seal dlq show ID`).
    pub id: u64,
    pub event_id: u64,
    pub environment: String,
    pub queue: String,
    pub trigger: String,
    pub function: String,
    pub ce_id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub reason: DeadReason,
    pub last_error: Option<String>,
    /// The version whose answer dead-lettered it.
    pub version: Option<u64>,
    pub attempts: u32,
    pub dead_at: i64,
}

/// `POST /v1/dlq/redrive`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Dead letters to redrive; with `all`, every one (of `queue`, when
    /// given).
    #[serde(default)]
    pub ids: Vec<u64>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    /// Deliver to this version instead of the live route (it must be in
    /// the route or have served the environment).
    #[serde(default)]
    pub to: Option<u64>,
}

/// `POST /v1/dlq/purge`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default)]
    pub ids: Vec<u64>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
}

/// How many dead letters a redrive or purge touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqChange {
    pub count: u64,
    pub ids: Vec<u64>,
}

/// One tick of a cron trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRun {
    pub trigger: String,
    /// The scheduled instant (the CloudEvent's `time`).
    pub scheduled_at: i64,
    pub fired_at: i64,
    /// `running`, `ok`, `failed`, `skipped` (overlap), `missed`
    /// (downtime), `interrupted` (the server stopped during the run).
    pub status: String,
    pub version: Option<u64>,
    pub digest: Option<String>,
    pub http_status: Option<u16>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_documented_table() {
        for s in [200, 202, 204, 299] {
            assert_eq!(Outcome::of_status(s), Outcome::Ok, "{s}");
        }
        for s in [408, 409, 429, 500, 502, 503, 599] {
            assert_eq!(Outcome::of_status(s), Outcome::Retryable, "{s}");
        }
        for s in [300, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(Outcome::of_status(s), Outcome::Permanent, "{s}");
        }
    }

    #[test]
    fn trigger_specs_carry_their_kind_and_defaults() {
        let t: CreateTrigger = serde_json::from_str(
            r#"{"function":"billing","kind":"queue","queue":"orders","max_attempts":5}"#,
        )
        .unwrap();
        let TriggerSpec::Queue(q) = &t.spec else {
            panic!("{t:?}")
        };
        assert_eq!((q.max_attempts, q.max_in_flight), (5, 16));
        let c: CreateTrigger = serde_json::from_str(
            r#"{"function":"report","kind":"cron","schedule":"*/5 * * * *","canary":"follow-weights"}"#,
        )
        .unwrap();
        let TriggerSpec::Cron(c) = &c.spec else {
            panic!()
        };
        assert_eq!(c.timezone, "UTC");
        assert_eq!(c.canary, CronCanary::FollowWeights);
        assert_eq!(c.on_missed, OnMissed::Skip);
        let back = serde_json::to_value(TriggerSpec::Cron(c.clone())).unwrap();
        assert_eq!(back["kind"], "cron");
    }
}

/// `POST /v1/functions/{fn}/replay`: events sent once, synchronously, to
/// one version of a function in an environment that is not protected —
/// production's dead letters against a fix in staging, or a saved batch.
/// Nothing is enqueued, retried or dead-lettered, and dead letters stay
/// where they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Where the version runs (default: the server's default environment,
    /// which must then not be protected).
    #[serde(default)]
    pub environment: Option<String>,
    /// The version, which must be in the function's route there.
    pub version: u64,
    /// Re-send this function's dead letters.
    #[serde(default)]
    pub dead_letters: Option<ReplayDeadLetters>,
    /// Or these events (structured-mode CloudEvents, at most 100).
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
}

/// Which dead letters a replay re-sends: the function's, in an
/// environment, optionally of one queue or by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayDeadLetters {
    /// Where they were dead-lettered (default: the default environment).
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub ids: Vec<u64>,
}

/// What a replay did with each event, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayAnswer {
    pub function: String,
    pub environment: String,
    pub version: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub results: Vec<ReplayResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayResult {
    pub ce_id: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The dead letter it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<u64>,
    /// The function's answer, when it gave one.
    pub status: Option<u16>,
    pub outcome: Outcome,
    /// As in an attempt's record; `schema` when the event breaks the
    /// version's contract (then it was not sent).
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}
