//! Seal's event queues on NATS JetStream (`seal server --events
//! nats://host:port[/namespace]`): the sibling of the embedded queues
//! (the state store's tables) behind the same [`Queues`] port, running the
//! same contract suite. Queue names, triggers and cron ticks stay in the
//! state store; the events and their hand-out live here.
//!
//! What JetStream holds, per namespace `ns` (default `seal`):
//! - the events stream `NS_EVENTS`: every event of every environment,
//!   on `ns.events.<environment>.<queue>._`; its sequence number is the
//!   event's id (`seal events show ID`). A redriven dead letter is a copy
//!   on `ns.events.<environment>.<queue>.<trigger>`, for that subscription
//!   only. The event is acknowledged (`202`) once the stream has stored it;
//!   a producer's retry is recognised by `Nats-Msg-Id` (a hash of the
//!   queue, `source` and `id`) within the stream's duplicate window, and
//!   a queue's shorter window is honoured by re-publishing under a new id;
//! - a durable pull consumer per subscription (named as the trigger),
//!   filtered on its queue, starting at the trigger's creation time: ack
//!   wait = the delivery lease, max deliver = the subscription's
//!   attempts + 1 (attempts are counted here, in the delivery record:
//!   NATS 2.9 may hand a message out a second time while its attempt
//!   runs, which this node absorbs and which must not cost an attempt),
//!   a retry held by the node that ran the attempt until its backoff
//!   is over, kept from the others by in-progress acknowledgements (not
//!   a delayed `NAK`: NATS 2.9 can rewind a pull consumer when a delayed
//!   message falls due with no pull waiting, handing out another message
//!   a second time and the delayed one only after its ack wait; nor the
//!   consumer's backoff list, which 2.9 applies to ack-wait expiries
//!   only); if that node dies, the ack wait hands it to another;
//! - the dead-letter stream `NS_DLQ` on `ns.dlq.<env>.<queue>.<trigger>`,
//!   the event with why it died in headers; its sequence is the dead
//!   letter's id. A delivery the dispatcher gives up on is written there
//!   and terminated; one that ran out of deliveries without an answer
//!   (its node died on the last attempt) is caught by JetStream's
//!   `MAX_DELIVERIES` advisory, kept in the stream `NS_ADVISORIES`, and
//!   dead-lettered from it by whichever node reads it first (idempotent
//!   by message id);
//! - the stream `NS_DELIVERIES` on `ns.deliveries.<event>.<trigger>`,
//!   one message kept per subject (a key-value store, as JetStream's own
//!   KV is, made directly so it works on NATS 2.9): per event and
//!   subscription its state and attempt history (`seal events show`).
//!
//! When NATS cannot be reached, an ingest answers `503
//! queues_unavailable` and nothing is acknowledged; the client reconnects
//! on its own and the consumers carry on from where they were.

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use seal_state::{
    AttemptRecord, Backlog, Claimed, DeadLetter, DeadReason, DeliveryRecord, DeliveryState,
    Enqueue, Enqueued, EventRecord, Finished, NewAudit, NextStep, Queues, Result, StateError,
    StateStore, TriggerRecord, TriggerSpec, now_ms,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stream's duplicate window before any queue asks for more (the
/// default queue window).
const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
/// How long attempt histories are kept: a little longer than handled
/// events are shown.
const RECORDS_KEPT: Duration = Duration::from_secs(8 * 24 * 3600);
/// The longest a claim waits for JetStream to answer a pull that finds
/// nothing.
const FETCH_WAIT: Duration = Duration::from_millis(10);
/// The dead-letter stream's duplicate window.
const DLQ_WINDOW: Duration = Duration::from_secs(3600);
/// A subscription's ack wait before its first claim says otherwise.
const DEFAULT_LEASE: Duration = Duration::from_secs(300);
/// JetStream API calls are cut after this (NATS down: a quick 503).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

const MSG_ID: &str = "Nats-Msg-Id";
const H_EVENT: &str = "Seal-Event";
const H_PIN: &str = "Seal-Pin";
const H_ENQUEUED: &str = "Seal-Enqueued-At";
const H_FUNCTION: &str = "Seal-Function";
const H_REASON: &str = "Seal-Reason";
const H_ERROR: &str = "Seal-Error";
const H_VERSION: &str = "Seal-Version";
const H_ATTEMPTS: &str = "Seal-Attempts";

/// Where the queues are: `nats://host:port[/namespace]` (or `tls://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsLocation {
    /// What the client connects to (no namespace).
    pub server: String,
    /// Prefix of every stream and subject: several Seal
    /// installations (or tests) share one NATS apart.
    pub namespace: String,
}

impl NatsLocation {
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let rest = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("tls://"))
            .ok_or_else(|| {
                format!("{url:?} is not a NATS URL: use nats://host:port[/namespace]")
            })?;
        let (authority, namespace) = match rest.split_once('/') {
            Some((a, ns)) if !ns.is_empty() => (a, ns),
            Some((a, _)) => (a, "seal"),
            None => (rest, "seal"),
        };
        if authority.is_empty() {
            return Err(format!("{url:?} names no NATS server"));
        }
        let ok = namespace.len() <= 32
            && namespace.starts_with(|c: char| c.is_ascii_lowercase())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(format!(
                "invalid NATS namespace {namespace:?}: lowercase letters, digits and '_', starting with a letter, at most 32"
            ));
        }
        let scheme = if url.starts_with("tls://") {
            "tls"
        } else {
            "nats"
        };
        Ok(Self {
            server: format!("{scheme}://{authority}"),
            namespace: namespace.to_owned(),
        })
    }

    fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.namespace.to_uppercase())
    }
    fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.namespace.to_uppercase())
    }
    fn advisory_stream(&self) -> String {
        format!("{}_ADVISORIES", self.namespace.to_uppercase())
    }
    fn records_stream(&self) -> String {
        format!("{}_DELIVERIES", self.namespace.to_uppercase())
    }
    fn record_subject(&self, key: &str) -> String {
        format!("{}.deliveries.{key}", self.namespace)
    }
    fn queue_subject(&self, environment: &str, queue: &str) -> String {
        format!("{}.events.{environment}.{queue}", self.namespace)
    }
    fn dlq_subject(&self, environment: &str, queue: &str, trigger: &str) -> String {
        format!("{}.dlq.{environment}.{queue}.{trigger}", self.namespace)
    }
}

/// The streams and consumers, made on first use (so a node starts
/// while NATS is down, and serves HTTP meanwhile).
struct Streams {
    events: stream::Stream,
    dlq: stream::Stream,
    advisories: consumer::PullConsumer,
    records: stream::Stream,
}

/// Why a delivery died, as its dead letter says.
struct Death<'a> {
    reason: DeadReason,
    error: &'a str,
    version: Option<u64>,
    attempts: u32,
}

/// A claimed message waiting for its attempt's outcome.
struct InFlight {
    message: jetstream::Message,
    claimed: Claimed,
    record: DeliveryRecord,
    stream_seq: u64,
    /// `Some(at)`: waiting here for its retry at `at` (JetStream still
    /// sees it delivered, kept so by in-progress acknowledgements);
    /// `None`: an attempt runs.
    retry_at: Option<i64>,
    /// When JetStream last heard that it is being worked on.
    progress_at: i64,
}

pub struct NatsQueues {
    at: NatsLocation,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Trigger records (for consumers and event lookups) and the audit.
    state: Arc<dyn StateStore>,
    streams: tokio::sync::OnceCell<Streams>,
    consumers: tokio::sync::Mutex<HashMap<String, consumer::PullConsumer>>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_delivery: AtomicU64,
    /// The events stream's duplicate window, in ms.
    window_ms: AtomicI64,
    /// When advisories were last read.
    tended_at: AtomicI64,
}

/// Deletes the namespace's streams at `at`, with every event
/// and dead letter in them (tests; an installation being removed).
pub async fn remove_namespace(at: &NatsLocation) -> std::result::Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(at.server.as_str())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", at.server))?;
    let js = jetstream::new(client);
    for name in [
        at.events_stream(),
        at.dlq_stream(),
        at.advisory_stream(),
        at.records_stream(),
    ] {
        if let Err(e) = js.delete_stream(&name).await
            && !e.to_string().contains("not found")
        {
            return Err(format!("cannot remove stream {name}: {e}"));
        }
    }
    Ok(())
}

/// [`remove_namespace`] from synchronous code (a test guard's `Drop`,
/// while its runtime may be going away): on a thread and runtime of its
/// own.
pub fn remove_namespace_now(at: &NatsLocation) -> std::result::Result<(), String> {
    let at = at.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(remove_namespace(&at))
    })
    .join()
    .map_err(|_| "the removal panicked".to_owned())?
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

fn ms(t: async_nats::jetstream::message::Info<'_>) -> i64 {
    (t.published.unix_timestamp_nanos() / 1_000_000) as i64
}

fn time_ms(t: async_nats::datetime::DateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// One line, no control characters: a header value.
fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.chars().take(1000).collect()
}

/// The CloudEvent's `id`, `source` and `type` from its structured form.
fn identity(body: &[u8]) -> (String, String, String, Value) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let get = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    (get("id"), get("source"), get("type"), v)
}

/// An event's `Nats-Msg-Id`: its queue, `source` and `id`, hashed.
fn msg_id(e: &Enqueue<'_>, event: &seal_state::NewEvent<'_>) -> String {
    use sha2::Digest;
    hex::encode(
        &sha2::Sha256::digest(
            [e.environment, e.queue, event.source, event.ce_id]
                .join("\u{0}")
                .as_bytes(),
        )[..16],
    )
}

fn record_key(event: u64, trigger: &str) -> String {
    format!("{event}.{trigger}")
}

fn new_record(trigger: &str, function: &str, now: i64) -> DeliveryRecord {
    DeliveryRecord {
        id: 0,
        trigger: trigger.to_owned(),
        function: function.to_owned(),
        state: DeliveryState::Pending,
        attempts: 0,
        next_at: now,
        dead_reason: None,
        last_error: None,
        finished_at: None,
        history: Vec::new(),
    }
}

impl NatsQueues {
    /// A client for the queues at `at`; it connects in the background and
    /// reconnects by itself. Credentials: `user`/`password` when given.
    pub async fn connect(
        at: NatsLocation,
        credentials: Option<(String, String)>,
        state: Arc<dyn StateStore>,
    ) -> std::result::Result<Self, String> {
        let mut options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .name("seal");
        if let Some((user, password)) = credentials {
            options = options.user_and_password(user, password);
        }
        let client = options
            .connect(at.server.as_str())
            .await
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", at.server))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        Ok(Self {
            at,
            client,
            js,
            state,
            streams: tokio::sync::OnceCell::new(),
            consumers: tokio::sync::Mutex::default(),
            in_flight: Mutex::default(),
            next_delivery: AtomicU64::new(1),
            window_ms: AtomicI64::new(0),
            tended_at: AtomicI64::new(0),
        })
    }

    /// Creates (or finds) the streams and the advisory consumer now:
    /// for a start-up check and for tests.
    pub async fn check(&self) -> Result<()> {
        self.streams().await.map(|_| ())
    }

    /// A NATS error as the caller sees it: unreachable (503), or a
    /// failure for the log.
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> StateError {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            StateError::QueuesUnavailable(format!(
                "the event queues (NATS JetStream at {}) cannot be reached: nothing was accepted, try again shortly",
                self.at.server
            ))
        } else {
            let e = e.to_string();
            if e.contains("timed out") || e.contains("no responders") {
                StateError::QueuesUnavailable(format!(
                    "the event queues (NATS JetStream at {}) did not answer ({what}): nothing was accepted, try again shortly",
                    self.at.server
                ))
            } else {
                StateError::Backend(format!("NATS JetStream, {what}: {e}"))
            }
        }
    }

    /// A stream on disk, made unless it exists.
    async fn file_stream(
        &self,
        name: String,
        subject: String,
        description: &str,
        tune: impl FnOnce(stream::Config) -> stream::Config,
    ) -> Result<stream::Stream> {
        let config = tune(stream::Config {
            name,
            subjects: vec![subject],
            storage: stream::StorageType::File,
            description: Some(format!("Seal: {description}")),
            ..Default::default()
        });
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| self.fail(&format!("creating the stream of {description}"), e))
    }

    async fn streams(&self) -> Result<&Streams> {
        self.streams
            .get_or_try_init(|| async {
                let ns = &self.at.namespace;
                let events = self
                    .file_stream(
                        self.at.events_stream(),
                        format!("{ns}.events.>"),
                        "events of every queue",
                        |c| stream::Config {
                            duplicate_window: DEFAULT_WINDOW,
                            ..c
                        },
                    )
                    .await?;
                self.window_ms.store(
                    events.cached_info().config.duplicate_window.as_millis() as i64,
                    Ordering::Relaxed,
                );
                // Longer than any ack wait (the longest timeout and its
                // margin): a dead letter written twice, the second after a
                // redelivery, is one.
                let dlq = self
                    .file_stream(
                        self.at.dlq_stream(),
                        format!("{ns}.dlq.>"),
                        "dead letters",
                        |c| stream::Config {
                            duplicate_window: DLQ_WINDOW,
                            ..c
                        },
                    )
                    .await?;
                let advisories = self
                    .file_stream(
                        self.at.advisory_stream(),
                        format!(
                            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                            self.at.events_stream()
                        ),
                        "deliveries that ran out of attempts, to dead-letter",
                        |c| stream::Config {
                            max_age: RECORDS_KEPT,
                            ..c
                        },
                    )
                    .await?
                    .get_or_create_consumer(
                        "dead-letters",
                        consumer::pull::Config {
                            durable_name: Some("dead-letters".into()),
                            ack_policy: consumer::AckPolicy::Explicit,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| self.fail("creating the advisory consumer", e))?;
                let records = self
                    .file_stream(
                        self.at.records_stream(),
                        format!("{ns}.deliveries.>"),
                        "delivery states and attempt histories",
                        |c| stream::Config {
                            max_messages_per_subject: 1,
                            max_age: RECORDS_KEPT,
                            ..c
                        },
                    )
                    .await?;
                Ok(Streams {
                    events,
                    dlq,
                    advisories,
                    records,
                })
            })
            .await
    }

    /// Widens the stream's duplicate window to `window_ms` if it is
    /// narrower (a queue with a longer window than any before).
    async fn widen_window(&self, window_ms: i64) -> Result<()> {
        if window_ms <= self.window_ms.load(Ordering::Relaxed) {
            return Ok(());
        }
        let s = self.streams().await?;
        // Read afresh: another node may have widened it further.
        let mut config = s
            .events
            .get_info()
            .await
            .map_err(|e| self.fail("reading the events stream", e))?
            .config;
        let wanted = Duration::from_millis(window_ms as u64);
        if config.duplicate_window >= wanted {
            self.window_ms.fetch_max(
                config.duplicate_window.as_millis() as i64,
                Ordering::Relaxed,
            );
            return Ok(());
        }
        config.duplicate_window = wanted;
        self.js
            .update_stream(config)
            .await
            .map_err(|e| self.fail("widening the duplicate window", e))?;
        self.window_ms.fetch_max(window_ms, Ordering::Relaxed);
        Ok(())
    }

    /// The subscription's durable consumer, made at its first use.
    async fn consumer(
        &self,
        trigger: &TriggerRecord,
        lease: Option<Duration>,
    ) -> Result<Option<consumer::PullConsumer>> {
        let TriggerSpec::Queue(sub) = &trigger.spec else {
            return Ok(None);
        };
        let mut consumers = self.consumers.lock().await;
        if let Some(c) = consumers.get(&trigger.name)
            && lease.is_none_or(|l| c.cached_info().config.ack_wait >= l)
        {
            return Ok(Some(c.clone()));
        }
        let lease = lease.unwrap_or(DEFAULT_LEASE);
        let s = self.streams().await?;
        let filter = format!(
            "{}.>",
            self.at.queue_subject(&trigger.environment, &sub.queue)
        );
        let start = self
            .first_since(&s.events, &filter, trigger.created_at)
            .await?;
        let config = consumer::pull::Config {
            durable_name: Some(trigger.name.clone()),
            description: Some(format!(
                "Seal: {} reading {} in {}",
                trigger.function, sub.queue, trigger.environment
            )),
            filter_subject: filter,
            // By sequence, not by time: NATS 2.9 refuses any
            // update of a consumer that starts at a time.
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: lease,
            // One delivery more than attempts: a handout lost on its way
            // (NATS 2.9 may hand a message out twice) does not cost an
            // attempt. The dispatcher counts attempts itself; this bounds
            // the deliveries of an event whose attempts never end.
            max_deliver: i64::from(sub.max_attempts) + 1,
            max_ack_pending: i64::from(sub.max_in_flight.max(1)) * 64,
            ..Default::default()
        };
        let mut c: consumer::PullConsumer = s
            .events
            .get_or_create_consumer(&trigger.name, config.clone())
            .await
            .map_err(|e| self.fail("creating a subscription's consumer", e))?;
        if c.cached_info().config.ack_wait < lease {
            // A version with a longer timeout serves now. (Where it
            // starts cannot change: the stored start is sent back.)
            let mut config = config;
            config.deliver_policy = c.cached_info().config.deliver_policy;
            c = s
                .events
                .create_consumer(config)
                .await
                .map_err(|e| self.fail("lengthening a subscription's ack wait", e))?;
        }
        consumers.insert(trigger.name.clone(), c.clone());
        Ok(Some(c))
    }

    /// The sequence of the first message on `filter` stored at or after
    /// `since` (ms), or the next one to come: where a subscription made
    /// then starts. A binary search, each step one message read.
    async fn first_since(&self, events: &stream::Stream, filter: &str, since: i64) -> Result<u64> {
        let info = events
            .get_info()
            .await
            .map_err(|e| self.fail("reading the events stream", e))?;
        let (mut lo, mut hi) = (
            info.state.first_sequence.max(1),
            info.state.last_sequence + 1,
        );
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match events.get_first_raw_message_by_subject(filter, mid).await {
                Ok(m) if time_ms(m.time) >= since => hi = mid,
                Ok(m) => lo = m.sequence + 1,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => hi = mid,
                Err(e) => return Err(self.fail("finding where a subscription starts", e)),
            }
        }
        Ok(lo)
    }

    /// The delivery's record, or a new one.
    /// Retries held here that are due: claimed again, up to `limit`.
    fn due_retries(&self, trigger: &TriggerRecord, now: i64, limit: u32) -> Vec<Claimed> {
        let mut in_flight = lock(&self.in_flight);
        let mut out = Vec::new();
        for f in in_flight.values_mut() {
            if out.len() as u32 >= limit {
                break;
            }
            if f.claimed.trigger != trigger.name || f.retry_at.is_none_or(|at| at > now) {
                continue;
            }
            f.retry_at = None;
            f.record.state = DeliveryState::Running;
            f.claimed.attempts = f.record.attempts;
            f.claimed.next_attempt = f.record.history.len() as u32 + 1;
            out.push(f.claimed.clone());
        }
        out
    }

    /// Tells JetStream the retries held here are still being worked on,
    /// well within their ack wait.
    async fn keep_held(&self, trigger: &TriggerRecord, ack_wait: Duration, now: i64) -> Result<()> {
        let every = (ack_wait.as_millis() as i64 / 3).max(200);
        let stale: Vec<jetstream::Message> = {
            let mut in_flight = lock(&self.in_flight);
            in_flight
                .values_mut()
                .filter(|f| f.claimed.trigger == trigger.name && f.retry_at.is_some())
                .filter(|f| now - f.progress_at >= every)
                .map(|f| {
                    f.progress_at = now;
                    f.message.clone()
                })
                .collect()
        };
        for m in stale {
            m.ack_with(jetstream::AckKind::Progress)
                .await
                .map_err(|e| self.fail("keeping a retry", e))?;
        }
        Ok(())
    }

    async fn record_or_new(
        &self,
        event_id: u64,
        trigger: &TriggerRecord,
        now: i64,
    ) -> Result<DeliveryRecord> {
        Ok(self
            .record(&record_key(event_id, &trigger.name))
            .await?
            .unwrap_or_else(|| new_record(&trigger.name, &trigger.function, now)))
    }

    async fn record(&self, key: &str) -> Result<Option<DeliveryRecord>> {
        let s = self.streams().await?;
        let bytes = match s
            .records
            .get_last_raw_message_by_subject(&self.at.record_subject(key))
            .await
        {
            Ok(m) => m.payload,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(e) => return Err(self.fail("reading a delivery", e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt(format!("delivery {key}: {e}")))
    }

    async fn put_record(&self, key: &str, r: &DeliveryRecord) -> Result<()> {
        let bytes = serde_json::to_vec(r).map_err(|e| StateError::Backend(e.to_string()))?;
        self.js
            .publish(self.at.record_subject(key), bytes.into())
            .await
            .map_err(|e| self.fail("recording a delivery", e))?
            .await
            .map_err(|e| self.fail("recording a delivery", e))?;
        Ok(())
    }

    /// Every queue subscription with its queue and its consumer's state.
    async fn subscriptions(&self) -> Result<Vec<(TriggerRecord, String, consumer::Info)>> {
        let mut out = Vec::new();
        for t in self.queue_triggers().await? {
            let TriggerSpec::Queue(sub) = &t.spec else {
                continue;
            };
            let queue = sub.queue.clone();
            let Some(c) = self.consumer(&t, None).await? else {
                continue;
            };
            let info = c
                .get_info()
                .await
                .map_err(|e| self.fail("reading a subscription", e))?;
            out.push((t, queue, info));
        }
        Ok(out)
    }

    async fn queue_triggers(&self) -> Result<Vec<TriggerRecord>> {
        let mut all = self.state.triggers().await?;
        all.retain(|t| matches!(t.spec, TriggerSpec::Queue(_)));
        Ok(all)
    }

    /// A stored message by sequence; `None` when there is none.
    async fn message(&self, stream: &stream::Stream, seq: u64) -> Result<Option<StreamMessage>> {
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.fail("reading a message", e)),
        }
    }

    /// Every message on `filter` (wildcards allowed), in order.
    async fn scan(&self, stream: &stream::Stream, filter: &str) -> Result<Vec<StreamMessage>> {
        let mut out = Vec::new();
        let mut seq = 1;
        loop {
            match stream.get_first_raw_message_by_subject(filter, seq).await {
                Ok(m) => {
                    seq = m.sequence + 1;
                    out.push(m);
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    return Ok(out);
                }
                Err(e) => return Err(self.fail("listing messages", e)),
            }
        }
    }

    fn dead_letter_of(&self, m: &StreamMessage) -> Option<DeadLetter> {
        let parts: Vec<&str> = m.subject.split('.').collect();
        let [_, "dlq", environment, queue, trigger] = parts[..] else {
            return None;
        };
        let h = Some(&m.headers);
        let (ce_id, _, ty, _) = identity(&m.payload);
        Some(DeadLetter {
            id: m.sequence,
            event_id: header(h, H_EVENT)?.parse().ok()?,
            environment: environment.to_owned(),
            queue: queue.to_owned(),
            trigger: trigger.to_owned(),
            function: header(h, H_FUNCTION)?.to_owned(),
            ce_id,
            ty,
            reason: DeadReason::parse(header(h, H_REASON)?)?,
            last_error: header(h, H_ERROR).map(str::to_owned),
            version: header(h, H_VERSION).and_then(|v| v.parse().ok()),
            attempts: header(h, H_ATTEMPTS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            dead_at: time_ms(m.time),
        })
    }

    /// Writes the dead letter of one delivery (idempotent: once per
    /// message and subscription) and returns its id.
    async fn write_dead_letter(
        &self,
        c: &Claimed,
        stream_seq: u64,
        body: Bytes,
        death: &Death<'_>,
    ) -> Result<u64> {
        let mut h = HeaderMap::new();
        h.insert(MSG_ID, format!("dead-{stream_seq}-{}", c.trigger).as_str());
        h.insert(H_EVENT, c.event_id.to_string().as_str());
        h.insert(H_FUNCTION, c.function.as_str());
        h.insert(H_REASON, death.reason.as_str());
        h.insert(H_ERROR, one_line(death.error).as_str());
        h.insert(H_ATTEMPTS, death.attempts.to_string().as_str());
        h.insert(H_ENQUEUED, c.enqueued_at.to_string().as_str());
        if let Some(v) = death.version {
            h.insert(H_VERSION, v.to_string().as_str());
        }
        let ack = self
            .js
            .publish_with_headers(
                self.at.dlq_subject(&c.environment, &c.queue, &c.trigger),
                h,
                body,
            )
            .await
            .map_err(|e| self.fail("writing a dead letter", e))?
            .await
            .map_err(|e| self.fail("writing a dead letter", e))?;
        Ok(ack.sequence)
    }

    /// Dead-letters what JetStream gave up on: deliveries that reached
    /// max deliver without an answer (the node running the last attempt
    /// died or hung past the ack wait).
    async fn tend(&self) -> Result<()> {
        let now = now_ms();
        if now - self.tended_at.load(Ordering::Relaxed) < 1_000 {
            return Ok(());
        }
        self.tended_at.store(now, Ordering::Relaxed);
        let s = self.streams().await?;
        let mut batch = s
            .advisories
            .fetch()
            .max_messages(64)
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| self.fail("reading advisories", e))?;
        let triggers = self.queue_triggers().await?;
        while let Ok(Some(Ok(advisory))) = tokio::time::timeout(FETCH_WAIT * 20, batch.next()).await
        {
            let v: Value = serde_json::from_slice(&advisory.payload).unwrap_or(Value::Null);
            let seq = v.get("stream_seq").and_then(Value::as_u64);
            let consumer = v.get("consumer").and_then(Value::as_str);
            if let (Some(seq), Some(name)) = (seq, consumer)
                && let Some(t) = triggers.iter().find(|t| t.name == name)
                && let Some(m) = self.message(&s.events, seq).await?
            {
                self.dead_letter_abandoned(t, seq, m).await?;
            }
            advisory
                .ack()
                .await
                .map_err(|e| self.fail("acknowledging an advisory", e))?;
        }
        Ok(())
    }

    async fn dead_letter_abandoned(
        &self,
        t: &TriggerRecord,
        seq: u64,
        m: StreamMessage,
    ) -> Result<()> {
        let TriggerSpec::Queue(sub) = &t.spec else {
            return Ok(());
        };
        if lock(&self.in_flight)
            .values()
            .any(|f| f.stream_seq == seq && f.claimed.trigger == t.name)
        {
            // This node still works on it (a held retry): its own outcome
            // will say.
            return Ok(());
        }
        let h = Some(&m.headers);
        let event_id = header(h, H_EVENT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(seq);
        let key = record_key(event_id, &t.name);
        let mut record = self
            .record(&key)
            .await?
            .unwrap_or_else(|| new_record(&t.name, &t.function, now_ms()));
        if record.state == DeliveryState::Dead || record.state == DeliveryState::Done {
            return Ok(());
        }
        let (ce_id, _, _, _) = identity(&m.payload);
        let claimed = Claimed {
            delivery_id: 0,
            event_id,
            trigger: t.name.clone(),
            environment: t.environment.clone(),
            queue: sub.queue.clone(),
            function: t.function.clone(),
            attempts: sub.max_attempts,
            next_attempt: 0,
            pinned_version: None,
            ce_id,
            enqueued_at: header(h, H_ENQUEUED)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| time_ms(m.time)),
            event: String::new(),
        };
        let error = record.last_error.clone().unwrap_or_else(|| {
            "no outcome within the ack wait on the last delivery (the attempt never ended)".into()
        });
        let version = record.history.last().and_then(|a| a.version);
        let id = self
            .write_dead_letter(
                &claimed,
                seq,
                m.payload.clone(),
                &Death {
                    reason: DeadReason::AttemptsExhausted,
                    error: &error,
                    version,
                    attempts: sub.max_attempts,
                },
            )
            .await?;
        record.id = id;
        record.state = DeliveryState::Dead;
        record.dead_reason = Some(DeadReason::AttemptsExhausted);
        record.last_error = Some(error);
        record.finished_at = Some(now_ms());
        self.put_record(&key, &record).await?;
        tracing::warn!(event = event_id, trigger = %t.name, "event dead-lettered: every delivery ran out without an outcome");
        Ok(())
    }

    /// Publishes one event, honouring a queue window shorter than the
    /// stream's: a duplicate of an event enqueued before `dedup_since` is
    /// published again under an id naming the one it follows.
    async fn publish_one(
        &self,
        e: &Enqueue<'_>,
        event: &seal_state::NewEvent<'_>,
        first: async_nats::jetstream::publish::PublishAck,
    ) -> Result<Enqueued> {
        let answer = |id: u64, duplicate: bool| Enqueued {
            id,
            ce_id: event.ce_id.to_owned(),
            source: event.source.to_owned(),
            duplicate,
        };
        let mut ack = first;
        if !ack.duplicate {
            return Ok(answer(ack.sequence, false));
        }
        let s = self.streams().await?;
        let base = msg_id(e, event);
        for _ in 0..16 {
            if !ack.duplicate {
                return Ok(answer(ack.sequence, false));
            }
            let Some(original) = self.message(&s.events, ack.sequence).await? else {
                // Purged since: a new event.
                ack = self
                    .publish_event(e, event, &format!("{base}#{}", ack.sequence))
                    .await?;
                continue;
            };
            if time_ms(original.time) >= e.dedup_since {
                return Ok(answer(ack.sequence, true));
            }
            ack = self
                .publish_event(e, event, &format!("{base}#{}", ack.sequence))
                .await?;
        }
        Err(StateError::Backend(format!(
            "event {} of {}: too many generations of duplicates",
            event.ce_id, event.source
        )))
    }

    /// Sends an event under `msg_id`; the future answers once JetStream
    /// stored it (or found it a duplicate).
    async fn send_event(
        &self,
        e: &Enqueue<'_>,
        event: &seal_state::NewEvent<'_>,
        msg_id: &str,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture> {
        let mut h = HeaderMap::new();
        h.insert(MSG_ID, msg_id);
        self.js
            .publish_with_headers(
                format!("{}._", self.at.queue_subject(e.environment, e.queue)),
                h,
                Bytes::copy_from_slice(event.event.as_bytes()),
            )
            .await
            .map_err(|x| self.fail("storing an event", x))
    }

    async fn publish_event(
        &self,
        e: &Enqueue<'_>,
        event: &seal_state::NewEvent<'_>,
        msg_id: &str,
    ) -> Result<async_nats::jetstream::publish::PublishAck> {
        self.send_event(e, event, msg_id)
            .await?
            .await
            .map_err(|x| self.fail("storing an event", x))
    }

    async fn finish_one(&self, f: &Finished) -> Result<()> {
        let Some(mut fl) = lock(&self.in_flight).remove(&f.delivery_id) else {
            return Ok(());
        };
        let r = &mut fl.record;
        if let Some(a) = &f.attempt {
            r.attempts += 1;
            r.history.push(a.clone());
        }
        let key = record_key(fl.claimed.event_id, &fl.claimed.trigger);
        let kind = match &f.next {
            NextStep::Done => {
                r.state = DeliveryState::Done;
                r.finished_at = Some(f.at);
                r.last_error = None;
                jetstream::AckKind::Ack
            }
            NextStep::Retry { at, error } => {
                r.state = DeliveryState::Pending;
                r.next_at = *at;
                r.last_error = Some(error.clone());
                // Held here until it is due, not handed back with a
                // delayed NAK (NATS 2.9 can lose the pointer of a consumer
                // when a delayed message falls due with no pull waiting):
                // in-progress acknowledgements keep it from being handed
                // out elsewhere; if this node dies, the ack wait hands it
                // to another, which reads the attempt count from the
                // record. Recorded first: not recorded, not held.
                self.put_record(&key, &fl.record).await?;
                fl.retry_at = Some(*at);
                lock(&self.in_flight).insert(f.delivery_id, fl);
                return Ok(());
            }
            NextStep::Dead { reason, error } => {
                let version = f.attempt.as_ref().and_then(|a: &AttemptRecord| a.version);
                let id = self
                    .write_dead_letter(
                        &fl.claimed,
                        fl.stream_seq,
                        fl.message.payload.clone(),
                        &Death {
                            reason: *reason,
                            error,
                            version,
                            attempts: r.attempts,
                        },
                    )
                    .await?;
                let r = &mut fl.record;
                r.id = id;
                r.state = DeliveryState::Dead;
                r.dead_reason = Some(*reason);
                r.last_error = Some(error.clone());
                r.finished_at = Some(f.at);
                jetstream::AckKind::Term
            }
        };
        // The acknowledgement first: while NATS is away it waits in the
        // client and goes out on reconnection, so a handled event is not
        // handed out again; the record (what `seal events show` says)
        // follows, and a failed write of it is only logged.
        fl.message
            .ack_with(kind)
            .await
            .map_err(|e| self.fail("acknowledging a delivery", e))?;
        if let Err(e) = self.put_record(&key, &fl.record).await {
            tracing::warn!(error = %e, delivery = %key, "cannot record a delivery's attempt");
        }
        Ok(())
    }
}

#[async_trait]
impl Queues for NatsQueues {
    fn location(&self) -> String {
        format!(
            "NATS JetStream at {} ({})",
            self.at.server, self.at.namespace
        )
    }

    async fn enqueue_batch(&self, batch: &[Enqueue<'_>]) -> Result<Vec<Vec<Enqueued>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Refused before anything is sent: nothing waits in the client
            // to be stored after the producer was told it was not.
            return Err(self.fail("storing an event", "not connected"));
        }
        self.streams().await?;
        for e in batch {
            self.widen_window(e.now - e.dedup_since).await?;
        }
        // Every event is sent before any acknowledgement is awaited: one
        // round trip for the lot.
        let mut sent = Vec::new();
        for e in batch {
            for event in e.events {
                let ack = self.send_event(e, event, &msg_id(e, event)).await?;
                sent.push(ack.into_future());
            }
        }
        let acks = futures::future::join_all(sent).await;
        let mut acks = acks.into_iter();
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            let mut answers = Vec::with_capacity(e.events.len());
            for event in e.events {
                let ack = acks
                    .next()
                    .ok_or_else(|| StateError::Backend("an acknowledgement went missing".into()))?
                    .map_err(|x| self.fail("storing an event", x))?;
                answers.push(self.publish_one(e, event, ack).await?);
            }
            out.push(answers);
        }
        Ok(out)
    }

    async fn claim_due(
        &self,
        trigger: &TriggerRecord,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        if let Err(e) = self.tend().await {
            tracing::warn!(error = %e, "cannot read the max-deliveries advisories");
        }
        let lease = Duration::from_millis((lease_until - now).max(1_000) as u64);
        let Some(c) = self.consumer(trigger, Some(lease)).await? else {
            return Ok(Vec::new());
        };
        let TriggerSpec::Queue(sub) = &trigger.spec else {
            return Ok(Vec::new());
        };
        let mut out = self.due_retries(trigger, now, limit);
        self.keep_held(trigger, c.cached_info().config.ack_wait, now)
            .await?;
        if out.len() as u32 >= limit {
            return Ok(out);
        }
        let batch = c
            .fetch()
            .max_messages((limit as usize - out.len()).max(1))
            .expires(FETCH_WAIT)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                // Perhaps deleted under us: made again at the next claim.
                self.consumers.lock().await.remove(&trigger.name);
                return Err(self.fail("claiming events", e));
            }
        };
        // NATS 2.9 leaves a pull unanswered when the message it would
        // hand out has just run out of deliveries: the expiry ends it.
        let mut fresh = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(FETCH_WAIT * 20, batch.next()).await {
            let m = m.map_err(|e| self.fail("claiming events", e))?;
            let (stream_seq, published) = {
                let info = m.info().map_err(|e| self.fail("reading a delivery", e))?;
                (info.stream_sequence, ms(info))
            };
            let to = m.subject.rsplit('.').next().unwrap_or("_").to_owned();
            if to != "_" && to != trigger.name {
                // A redrive for another subscription of the queue.
                m.ack()
                    .await
                    .map_err(|e| self.fail("skipping another's redrive", e))?;
                continue;
            }
            {
                // Handed out again while its attempt runs here (its ack
                // wait passed, or NATS 2.9 rewound the consumer when a
                // delayed retry fell due with no pull waiting): the
                // attempt goes on, acknowledged under the newer delivery.
                let mut in_flight = lock(&self.in_flight);
                if let Some(f) = in_flight
                    .values_mut()
                    .find(|f| f.stream_seq == stream_seq && f.claimed.trigger == trigger.name)
                {
                    f.message = m;
                    continue;
                }
            }
            let redriven = header(m.headers.as_ref(), H_EVENT).and_then(|v| v.parse::<u64>().ok());
            let event_id = redriven.unwrap_or(stream_seq);
            fresh.push((m, stream_seq, published, event_id));
        }
        // Each delivery's record says which attempt this is (and whether
        // it was handled already: NATS 2.9 can hand a message out again
        // as new), read for all of them at once.
        let records = futures::future::join_all(
            fresh
                .iter()
                .map(|(_, _, _, event_id)| self.record_or_new(*event_id, trigger, now)),
        )
        .await;
        for ((m, stream_seq, published, event_id), record) in fresh.into_iter().zip(records) {
            let mut record = match record {
                Ok(r) => r,
                Err(e) => {
                    // Handed back at once rather than hidden for an ack wait.
                    tracing::warn!(error = %e, event = event_id, "cannot read a delivery record");
                    let _ = m.ack_with(jetstream::AckKind::Nak(None)).await;
                    continue;
                }
            };
            if matches!(record.state, DeliveryState::Done | DeliveryState::Dead) {
                m.ack()
                    .await
                    .map_err(|e| self.fail("skipping a handled event", e))?;
                continue;
            }
            record.state = DeliveryState::Running;
            let h = m.headers.as_ref();
            let (ce_id, _, _, _) = identity(&m.payload);
            let claimed = Claimed {
                delivery_id: self.next_delivery.fetch_add(1, Ordering::Relaxed),
                event_id,
                trigger: trigger.name.clone(),
                environment: trigger.environment.clone(),
                queue: sub.queue.clone(),
                function: trigger.function.clone(),
                // Counted by Seal, not by JetStream's delivery count: a
                // handout that never reached an attempt (see above) is not
                // an attempt.
                attempts: record.attempts,
                next_attempt: record.history.len() as u32 + 1,
                pinned_version: header(h, H_PIN).and_then(|v| v.parse().ok()),
                ce_id,
                enqueued_at: header(h, H_ENQUEUED)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(published),
                event: String::from_utf8_lossy(&m.payload).into_owned(),
            };
            lock(&self.in_flight).insert(
                claimed.delivery_id,
                InFlight {
                    message: m,
                    claimed: claimed.clone(),
                    record,
                    stream_seq,
                    retry_at: None,
                    progress_at: now,
                },
            );
            out.push(claimed);
        }
        Ok(out)
    }

    async fn next_due(&self, trigger: &str) -> Result<Option<i64>> {
        // The retries held here; new events are pulled at every claim.
        Ok(lock(&self.in_flight)
            .values()
            .filter(|f| f.claimed.trigger == trigger)
            .filter_map(|f| f.retry_at)
            .min())
    }

    async fn finish_deliveries(&self, done: &[Finished]) -> Result<()> {
        let results = futures::future::join_all(done.iter().map(|f| self.finish_one(f))).await;
        // Acknowledgements are sent in the background; a flush makes them
        // leave now, and while NATS is away they wait for the reconnection.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.client.flush()).await;
        results.into_iter().collect()
    }

    async fn release_running(&self, _now: i64) -> Result<u64> {
        // JetStream gives a delivery whose ack wait passed to the next
        // claim by itself.
        Ok(0)
    }

    async fn backlog(&self) -> Result<Vec<Backlog>> {
        let s = self.streams().await?;
        let running: HashMap<String, u64> = lock(&self.in_flight)
            .values()
            .filter(|f| f.retry_at.is_none())
            .fold(HashMap::new(), |mut m, f| {
                *m.entry(f.claimed.trigger.clone()).or_default() += 1;
                m
            });
        let mut out = Vec::new();
        for (t, queue, info) in self.subscriptions().await? {
            // Read every second whatever the subscription's free slots:
            // where the retries held here are kept alive.
            self.keep_held(&t, info.config.ack_wait, now_ms()).await?;
            let running = running.get(&t.name).copied().unwrap_or(0);
            let waiting = info.num_pending + info.num_ack_pending as u64;
            if waiting == 0 {
                continue;
            }
            let filter = format!("{}.>", self.at.queue_subject(&t.environment, &queue));
            let oldest = s
                .events
                .get_first_raw_message_by_subject(&filter, info.ack_floor.stream_sequence + 1)
                .await
                .ok()
                .map(|m| {
                    header(Some(&m.headers), H_ENQUEUED)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| time_ms(m.time))
                });
            out.push(Backlog {
                environment: t.environment.clone(),
                queue,
                trigger: t.name.clone(),
                function: t.function.clone(),
                pending: waiting.saturating_sub(running),
                running,
                oldest_enqueued_at: oldest,
            });
        }
        Ok(out)
    }

    async fn sweep_events(&self, before: i64) -> Result<u64> {
        // Per queue, the events every subscription has handled (below the
        // lowest acknowledgement floor) go once the last of them is older
        // than `before`. Dead letters keep their own copy.
        let s = self.streams().await?;
        let mut floors: HashMap<(String, String), u64> = HashMap::new();
        for (t, queue, info) in self.subscriptions().await? {
            let floor = floors.entry((t.environment, queue)).or_insert(u64::MAX);
            *floor = (*floor).min(info.ack_floor.stream_sequence);
        }
        let mut purged = 0;
        for ((environment, queue), floor) in floors {
            if floor == 0 || floor == u64::MAX {
                continue;
            }
            let Some(last) = self.message(&s.events, floor).await? else {
                continue;
            };
            if time_ms(last.time) >= before {
                continue;
            }
            let r = s
                .events
                .purge()
                .filter(format!("{}.>", self.at.queue_subject(&environment, &queue)))
                .sequence(floor + 1)
                .await
                .map_err(|e| self.fail("sweeping handled events", e))?;
            purged += r.purged;
        }
        Ok(purged)
    }

    async fn event(&self, id: u64) -> Result<Option<EventRecord>> {
        let s = self.streams().await?;
        let Some(m) = self.message(&s.events, id).await? else {
            return Ok(None);
        };
        if header(Some(&m.headers), H_EVENT).is_some() {
            return Ok(None); // a redrive's copy, not an event of its own
        }
        let parts: Vec<&str> = m.subject.split('.').collect();
        let [_, "events", environment, queue, "_"] = parts[..] else {
            return Ok(None);
        };
        let (ce_id, source, ty, event) = identity(&m.payload);
        let enqueued_at = time_ms(m.time);
        let mut deliveries = Vec::new();
        for t in self.queue_triggers().await? {
            match &t.spec {
                TriggerSpec::Queue(sub) if t.environment == environment && sub.queue == queue => {}
                _ => continue,
            }
            match self.record(&record_key(id, &t.name)).await? {
                Some(r) => deliveries.push(r),
                None if t.created_at <= enqueued_at => {
                    deliveries.push(new_record(&t.name, &t.function, enqueued_at))
                }
                None => {}
            }
        }
        Ok(Some(EventRecord {
            id,
            environment: environment.to_owned(),
            queue: queue.to_owned(),
            ce_id,
            source,
            ty,
            enqueued_at,
            event,
            deliveries,
        }))
    }

    async fn dead_letters(
        &self,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> Result<Vec<DeadLetter>> {
        let s = self.streams().await?;
        let filter = format!(
            "{}.dlq.{}.{}.*",
            self.at.namespace,
            environment.unwrap_or("*"),
            queue.unwrap_or("*")
        );
        Ok(self
            .scan(&s.dlq, &filter)
            .await?
            .iter()
            .filter_map(|m| self.dead_letter_of(m))
            .collect())
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        let s = self.streams().await?;
        let Some(m) = self.message(&s.dlq, id).await? else {
            return Ok(None);
        };
        Ok(self.dead_letter_of(&m))
    }

    async fn redrive(
        &self,
        ids: &[u64],
        to: Option<u64>,
        _now: i64,
        actor: &str,
    ) -> Result<Vec<u64>> {
        let s = self.streams().await?;
        let mut changed = Vec::new();
        for &id in ids {
            let Some(m) = self.message(&s.dlq, id).await? else {
                continue;
            };
            let Some(d) = self.dead_letter_of(&m) else {
                continue;
            };
            // The record first: a claim of the copy reads it (a record
            // still saying dead would make the copy look handled).
            let key = record_key(d.event_id, &d.trigger);
            if let Some(mut r) = self.record(&key).await? {
                r.state = DeliveryState::Pending;
                r.attempts = 0;
                r.dead_reason = None;
                r.finished_at = None;
                self.put_record(&key, &r).await?;
            }
            let mut h = HeaderMap::new();
            h.insert(MSG_ID, format!("redrive-{id}").as_str());
            h.insert(H_EVENT, d.event_id.to_string().as_str());
            if let Some(enqueued) = header(Some(&m.headers), H_ENQUEUED) {
                h.insert(H_ENQUEUED, enqueued);
            }
            if let Some(v) = to {
                h.insert(H_PIN, v.to_string().as_str());
            }
            self.js
                .publish_with_headers(
                    format!(
                        "{}.{}",
                        self.at.queue_subject(&d.environment, &d.queue),
                        d.trigger
                    ),
                    h,
                    m.payload.clone(),
                )
                .await
                .map_err(|e| self.fail("redriving a dead letter", e))?
                .await
                .map_err(|e| self.fail("redriving a dead letter", e))?;
            s.dlq
                .delete_message(id)
                .await
                .map_err(|e| self.fail("removing a redriven dead letter", e))?;
            changed.push(id);
        }
        if !changed.is_empty() {
            self.state
                .audit(NewAudit {
                    actor,
                    action: "dlq.redrive",
                    object: &format!("{} dead letter(s)", changed.len()),
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::json!({"ids": changed, "to": to}),
                })
                .await?;
        }
        Ok(changed)
    }

    async fn purge(&self, ids: &[u64], actor: &str) -> Result<Vec<u64>> {
        let s = self.streams().await?;
        let mut deleted = Vec::new();
        for &id in ids {
            if self.message(&s.dlq, id).await?.is_none() {
                continue;
            }
            if s.dlq
                .delete_message(id)
                .await
                .map_err(|e| self.fail("purging a dead letter", e))?
            {
                deleted.push(id);
            }
        }
        if !deleted.is_empty() {
            self.state
                .audit(NewAudit {
                    actor,
                    action: "dlq.purge",
                    object: &format!("{} dead letter(s)", deleted.len()),
                    digest: None,
                    outcome: "ok",
                    detail: serde_json::json!({"ids": deleted}),
                })
                .await?;
        }
        Ok(deleted)
    }

    async fn queue_deleted(&self, environment: &str, queue: &str) -> Result<()> {
        let s = self.streams().await?;
        s.events
            .purge()
            .filter(format!("{}.>", self.at.queue_subject(environment, queue)))
            .await
            .map_err(|e| self.fail("deleting a queue's events", e))?;
        s.dlq
            .purge()
            .filter(format!("{}.dlq.{environment}.{queue}.*", self.at.namespace))
            .await
            .map_err(|e| self.fail("deleting a queue's dead letters", e))?;
        Ok(())
    }

    async fn trigger_deleted(&self, trigger: &str) -> Result<()> {
        self.consumers.lock().await.remove(trigger);
        lock(&self.in_flight).retain(|_, f| f.claimed.trigger != trigger);
        let s = self.streams().await?;
        match s.events.delete_consumer(trigger).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(self.fail("deleting a subscription's consumer", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let at = NatsLocation::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(at.server, "nats://127.0.0.1:4222");
        assert_eq!(at.namespace, "seal");
        assert_eq!(at.events_stream(), "SEAL_EVENTS");
        let at = NatsLocation::parse("tls://nats.example:4222/team_a").unwrap();
        assert_eq!(at.server, "tls://nats.example:4222");
        assert_eq!(
            at.queue_subject("production", "orders"),
            "team_a.events.production.orders"
        );
        assert_eq!(at.dlq_stream(), "TEAM_A_DLQ");
        assert!(
            NatsLocation::parse("http://x")
                .unwrap_err()
                .contains("not a NATS URL")
        );
        assert!(
            NatsLocation::parse("nats://x/Bad.Name")
                .unwrap_err()
                .contains("namespace")
        );
        assert!(NatsLocation::parse("nats:///ns").is_err());
    }

    #[test]
    fn header_values_are_one_line() {
        assert_eq!(one_line("a\r\nb"), "a  b");
        assert_eq!(one_line(&"x".repeat(2000)).len(), 1000);
    }
}
