//! The `EventsService`: queues, triggers, ingest, delivery with retries
//! and dead letters, cron ticks. Built from the state port and the
//! serving layer alone; attempts run through `seal_events::deliver`, so
//! an event is served by the function's live route (its version chosen by
//! a hash of the event id against the weights) and counts in the same
//! per-version telemetry the rollout gates judge.
//!
//! Two loops, started by the server: [`EventsService::run_queues`] claims
//! due deliveries per subscription (at most `max_in_flight` each) and
//! [`EventsService::run_cron`] fires cron ticks, each committed before it
//! runs.

use crate::error::{ControlError, ControlResult};
use crate::lookup;
use crate::metrics::{CronLabels, DeliveryLabels, EventMetrics, SubscriptionLabels};
use seal_api_types::events::{
    CreateQueue, CreateTrigger, CronCanary, CronRun, CronSchedule, DeadLetter, DeadReason,
    DlqChange, EnqueueAnswer, EventRecord, OnMissed, Outcome, Overlap, PurgeRequest, QueueRecord,
    QueueSubscription, RedriveRequest, ReplayAnswer, ReplayRequest, ReplayResult, TriggerRecord,
    TriggerSpec,
};
use seal_events::codec::{self, Limits};
use seal_events::schedule::Schedule;
use seal_events::{AttributesReader, Event};
use seal_serving::{Serving, Traffic};
use seal_state::{
    AttemptRecord, Claimed, Finished, NewEvent, NextStep, Queues, StateStore, StoreQueues, now_ms,
};

/// The extensions the platform stamps on the events functions publish:
/// removed from those producers outside post, so none can pass for a
/// function's.
pub const STAMPED: [&str; 3] = ["sealversion", "sealdigest", "sealcorrelation"];

/// An event as the store keeps it.
struct StoredEvent {
    ce_id: String,
    source: String,
    ty: String,
    json: String,
}

/// One producer's enqueue waiting for the next group commit.
struct PendingEnqueue {
    environment: String,
    queue: String,
    events: Vec<StoredEvent>,
    now: i64,
    dedup_since: i64,
    reply: tokio::sync::oneshot::Sender<ControlResult<Vec<seal_api_types::events::Enqueued>>>,
}

/// The deliveries an enqueue may claim for one subscription: a slot
/// taken for each, before the commit.
struct Reserved {
    trigger: String,
    sub: QueueSubscription,
    lease_until: i64,
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Fewer slots than events: some of its deliveries stay pending.
    short: bool,
}

/// What a commit of enqueues hands the delivery loop: the deliveries it
/// claimed, each with its slot, and whether it added some it did not
/// claim (the loop then runs a pass).
struct Handoff {
    started: Vec<(
        Claimed,
        QueueSubscription,
        tokio::sync::OwnedSemaphorePermit,
    )>,
    pass: bool,
}

/// Ends the hand-over of enqueues' claims when the delivery loop ends.
struct HandoffEnds<'a> {
    handoff: &'a Mutex<Option<tokio::sync::mpsc::UnboundedSender<Handoff>>>,
    starter: tokio::task::AbortHandle,
}

impl Drop for HandoffEnds<'_> {
    fn drop(&mut self) {
        *lock(self.handoff) = None;
        self.starter.abort();
    }
}

/// Commits waiting enqueues in one transaction, claiming with it what the
/// slots in `reserved` can take; answers each producer and hands the
/// claims to the delivery loop (`handoff`; without one, nothing is
/// reserved and the loop is only woken).
async fn commit_enqueues(
    queues: Arc<dyn Queues>,
    batch: Vec<PendingEnqueue>,
    reserved: Vec<Reserved>,
    handoff: Option<tokio::sync::mpsc::UnboundedSender<Handoff>>,
) -> bool {
    let news: Vec<Vec<NewEvent<'_>>> = batch
        .iter()
        .map(|p| {
            p.events
                .iter()
                .map(|e| NewEvent {
                    ce_id: &e.ce_id,
                    source: &e.source,
                    ty: &e.ty,
                    event: &e.json,
                })
                .collect()
        })
        .collect();
    let requests: Vec<seal_state::Enqueue<'_>> = batch
        .iter()
        .zip(&news)
        .map(|(p, events)| seal_state::Enqueue {
            environment: &p.environment,
            queue: &p.queue,
            events,
            now: p.now,
            dedup_since: p.dedup_since,
        })
        .collect();
    let claims: Vec<seal_state::ClaimNew<'_>> = reserved
        .iter()
        .map(|r| seal_state::ClaimNew {
            trigger: &r.trigger,
            lease_until: r.lease_until,
            limit: r.permits.len() as u32,
        })
        .collect();
    let result = queues.enqueue_and_claim(&requests, &claims).await;
    drop(claims);
    drop(requests);
    drop(news);
    match result {
        Ok((answers, claimed)) => {
            // What was added may be left pending: no subscription was
            // known to the reservation, or one had fewer slots than events.
            let added = answers.iter().flatten().any(|e| !e.duplicate);
            let pass = added && (reserved.is_empty() || reserved.iter().any(|r| r.short));
            let mut reserved: HashMap<String, Reserved> = reserved
                .into_iter()
                .map(|r| (r.trigger.clone(), r))
                .collect();
            let mut started = Vec::with_capacity(claimed.len());
            for c in claimed {
                match reserved
                    .get_mut(&c.trigger)
                    .and_then(|r| Some((r.sub.clone(), r.permits.pop()?)))
                {
                    Some((sub, permit)) => started.push((c, sub, permit)),
                    // Not asked for: left leased, and due again when its
                    // lease ends.
                    None => tracing::error!(delivery = c.delivery_id, "claimed without a slot"),
                }
            }
            // Slots taken and not used (duplicates) go back: a pass that
            // found them taken may have left something due.
            let pass = pass || reserved.values().any(|r| !r.permits.is_empty());
            for (p, a) in batch.into_iter().zip(answers) {
                let _ = p.reply.send(Ok(a));
            }
            match handoff {
                Some(h) if !started.is_empty() || pass => {
                    // A loop that stopped leaves them leased: due again at
                    // the next start, or when their lease ends.
                    let _ = h.send(Handoff { started, pass });
                    false
                }
                Some(_) => false,
                None => added,
            }
        }
        Err(e) => {
            let e = ControlError::from(e);
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
            false
        }
    }
}

/// An attempt that ended, waiting to be committed; its subscription slot
/// is freed once it is.
/// A delivery claimed ahead, waiting for a slot.
struct Waiting {
    claimed: Claimed,
    sub: QueueSubscription,
    /// The last instant it may start and still end inside its lease;
    /// later, it is left to come due again when the lease ends.
    start_by: i64,
}

struct Ended {
    claimed: Claimed,
    finished: Finished,
    /// The attempt's slot, or none when its task went on with a
    /// delivery claimed ahead (the slot went with it).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The largest ingest request (a batch) the codec accepts.
pub const MAX_INGEST_BYTES: usize = 1024 * 1024;

/// How long a handled event is kept (for `seal events show`) before the
/// delivery loop deletes it; dead letters stay until purged.
pub const EVENT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// Default deduplication window of a queue.
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 10 * 60_000;
/// How long a claimed delivery stays leased to its attempt when its
/// function serves nothing (otherwise its timeout and a margin).
const LEASE_MS: i64 = 5 * 60_000;
/// What a lease adds to the function's timeout: the wait for an instance
/// and the commit of the outcome.
const LEASE_MARGIN_MS: i64 = 30_000;
/// A tick found due later than this after its instant was missed (the
/// server was not running): its trigger's `on_missed` decides.
const MISSED_AFTER_MS: i64 = 5_000;

pub struct EventsService {
    state: Arc<dyn StateStore>,
    /// Where the events wait: the state store, or a broker.
    queues: Arc<dyn Queues>,
    serving: Arc<Serving>,
    default_environment: String,
    limits: Limits,
    /// Wakes the queue loop: an ingest, a redrive, a finished delivery.
    wake_queues: tokio::sync::Notify,
    /// Wakes the cron loop: a trigger created or deleted.
    wake_cron: tokio::sync::Notify,
    /// Deliveries running per subscription, with the `max_in_flight` its
    /// semaphore was made for.
    in_flight: Mutex<HashMap<String, (u32, Arc<tokio::sync::Semaphore>)>>,
    /// Cron triggers whose run is going (for `overlap = forbid`).
    cron_running: Mutex<HashSet<String>>,
    metrics: EventMetrics,
    /// Enqueues waiting for the next group commit, and whose turn it is
    /// to commit.
    pending: Mutex<Vec<PendingEnqueue>>,
    commit_turn: tokio::sync::Mutex<()>,
    /// The running delivery loop's inbox for what enqueues claimed.
    handoff: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Handoff>>>,
    /// Deliveries claimed ahead, per trigger: the commit of outcomes
    /// claims up to `max_in_flight` more than the slots it frees, and an
    /// attempt that ends starts the next of these on its slot at once,
    /// instead of its slot waiting for that commit (state store only).
    ready: Mutex<HashMap<String, std::collections::VecDeque<Waiting>>>,
    /// The queue triggers and when they were read.
    trigger_cache: Mutex<Option<(i64, Arc<Vec<TriggerRecord>>)>>,
    /// Subscriptions whose backlog gauges were set last time (so one that
    /// emptied goes back to 0).
    gauged: Mutex<HashSet<SubscriptionLabels>>,
    /// The backlog as last read (every second, by the queue loop), for
    /// the queue gate of rollouts.
    backlog: Mutex<Arc<Vec<seal_state::Backlog>>>,
    /// The event schemas of the versions events come from and go to.
    contracts: crate::event_contracts::ContractCache,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `[a-z][a-z0-9-]{0,62}`, like function names.
pub(crate) fn check_name(what: &str, name: &str) -> ControlResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "invalid {what} name {name:?}: lowercase letters, digits and '-', starting with a letter, at most 63"
        )))
    }
}

impl EventsService {
    pub fn new(
        state: Arc<dyn StateStore>,
        serving: Arc<Serving>,
        default_environment: String,
        metrics: EventMetrics,
    ) -> Self {
        Self {
            metrics,
            pending: Mutex::default(),
            commit_turn: tokio::sync::Mutex::new(()),
            handoff: Mutex::default(),
            ready: Mutex::default(),
            trigger_cache: Mutex::default(),
            gauged: Mutex::default(),
            contracts: crate::event_contracts::ContractCache::new(state.clone()),
            backlog: Mutex::default(),
            queues: Arc::new(StoreQueues(state.clone())),
            state,
            serving,
            default_environment,
            limits: Limits {
                max_batch_bytes: MAX_INGEST_BYTES,
                ..Limits::default()
            },
            wake_queues: tokio::sync::Notify::new(),
            wake_cron: tokio::sync::Notify::new(),
            in_flight: Mutex::default(),
            cron_running: Mutex::default(),
        }
    }

    /// Keeps the events in `queues` instead of the state store.
    pub fn set_queues(&mut self, queues: Arc<dyn Queues>) {
        self.queues = queues;
    }

    /// Where the events wait, for messages.
    pub fn queues_location(&self) -> String {
        self.queues.location()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn env<'a>(&'a self, environment: Option<&'a str>) -> &'a str {
        environment.unwrap_or(&self.default_environment)
    }

    pub async fn create_queue(&self, req: &CreateQueue, actor: &str) -> ControlResult<QueueRecord> {
        check_name("queue", &req.name)?;
        let environment = self.env(req.environment.as_deref()).to_owned();
        lookup::environment_must_exist(&*self.state, &environment).await?;
        let q = QueueRecord {
            environment,
            name: req.name.clone(),
            dedup_window_ms: req.dedup_window_ms.unwrap_or(DEFAULT_DEDUP_WINDOW_MS),
            created_at: now_ms(),
            created_by: actor.to_owned(),
        };
        if !self.state.create_queue(&q).await? {
            return Err(ControlError::Conflict(format!(
                "queue {} already exists in {}",
                q.name, q.environment
            )));
        }
        Ok(q)
    }

    pub async fn queues(&self, environment: Option<&str>) -> ControlResult<Vec<QueueRecord>> {
        Ok(self.state.queues(environment).await?)
    }

    pub async fn delete_queue(
        &self,
        environment: &str,
        name: &str,
        actor: &str,
    ) -> ControlResult<()> {
        if self.state.delete_queue(environment, name, actor).await? {
            self.queues.queue_deleted(environment, name).await?;
            Ok(())
        } else {
            Err(ControlError::not_found(format!(
                "no queue {name} in {environment}"
            )))
        }
    }

    async fn queue_must_exist(&self, environment: &str, queue: &str) -> ControlResult<QueueRecord> {
        // A queue found implies its environment (queues are created only
        // in one that exists, and environments are never deleted): one
        // read on the ingest path; the environment is looked up only to
        // say which of the two is missing.
        if let Some(q) = self.state.queue(environment, queue).await? {
            return Ok(q);
        }
        lookup::environment_must_exist(&*self.state, environment).await?;
        Err(ControlError::not_found(format!(
            "no queue {queue} in {environment}"
        )))
    }

    /// A trigger's settings are valid in `environment`: its queue exists
    /// and its subscription settings are in bounds, or its schedule and
    /// time zone parse.
    pub(crate) async fn check_trigger(
        &self,
        environment: &str,
        spec: &TriggerSpec,
    ) -> ControlResult<()> {
        match spec {
            TriggerSpec::Queue(q) => {
                self.queue_must_exist(environment, &q.queue).await?;
                check_subscription(q)
            }
            TriggerSpec::Cron(c) => {
                Schedule::parse(&c.schedule, &c.timezone).map_err(ControlError::Invalid)?;
                Ok(())
            }
        }
    }

    pub async fn create_trigger(
        &self,
        req: &CreateTrigger,
        actor: &str,
    ) -> ControlResult<TriggerRecord> {
        let environment = self.env(req.environment.as_deref()).to_owned();
        lookup::environment_must_exist(&*self.state, &environment).await?;
        lookup::function_must_exist(&*self.state, &req.function).await?;
        self.check_trigger(&environment, &req.spec).await?;
        if self
            .state
            .route(&environment, &req.function)
            .await?
            .is_none()
        {
            return Err(ControlError::Invalid(format!(
                "{} has no version serving in {environment}: deploy one before binding a trigger",
                req.function
            )));
        }
        let name = match &req.name {
            Some(n) => n.clone(),
            None => {
                let base = match &req.spec {
                    TriggerSpec::Queue(q) => format!("{}-{}", req.function, q.queue),
                    TriggerSpec::Cron(_) => format!("{}-cron", req.function),
                };
                if environment == self.default_environment {
                    base
                } else {
                    format!("{environment}-{base}")
                }
            }
        };
        check_name("trigger", &name)?;
        let t = TriggerRecord {
            name,
            environment,
            function: req.function.clone(),
            spec: req.spec.clone(),
            created_at: now_ms(),
            created_by: actor.to_owned(),
        };
        if !self.state.create_trigger(&t).await? {
            return Err(ControlError::Conflict(format!(
                "a trigger named {} exists already: choose another name",
                t.name
            )));
        }
        *lock(&self.trigger_cache) = None;
        self.wake_cron.notify_one();
        self.wake_queues.notify_one();
        Ok(t)
    }

    /// Another node changed the trigger bindings: read them again, and
    /// let the loops look at them.
    pub fn triggers_changed(&self) {
        *lock(&self.trigger_cache) = None;
        self.wake_cron.notify_one();
        self.wake_queues.notify_one();
    }

    pub async fn triggers(&self, function: Option<&str>) -> ControlResult<Vec<TriggerRecord>> {
        let mut all = self.state.triggers().await?;
        if let Some(f) = function {
            all.retain(|t| t.function == f);
        }
        Ok(all)
    }

    pub async fn trigger(&self, name: &str) -> ControlResult<TriggerRecord> {
        self.state
            .trigger(name)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no trigger {name}")))
    }

    pub async fn delete_trigger(&self, name: &str, actor: &str) -> ControlResult<()> {
        if !self.state.delete_trigger(name, actor).await? {
            return Err(ControlError::not_found(format!("no trigger {name}")));
        }
        self.queues.trigger_deleted(name).await?;
        lock(&self.in_flight).remove(name);
        lock(&self.ready).remove(name);
        *lock(&self.trigger_cache) = None;
        self.wake_cron.notify_one();
        Ok(())
    }

    pub async fn cron_runs(&self, name: &str, limit: u32) -> ControlResult<Vec<CronRun>> {
        let t = self.trigger(name).await?;
        if !matches!(t.spec, TriggerSpec::Cron(_)) {
            return Err(ControlError::Invalid(format!(
                "{name} is a queue trigger: its deliveries are shown per event"
            )));
        }
        Ok(self.state.cron_runs(name, limit.clamp(1, 1000)).await?)
    }

    /// Reads the events of one ingest request and commits them (with one
    /// delivery per subscription) before answering.
    /// The one entry of every producer (the API and the gateway): the
    /// caller must be a publisher of that queue or a deployer.
    pub async fn ingest(
        &self,
        who: &crate::tokens::Principal,
        environment: &str,
        queue: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> ControlResult<EnqueueAnswer> {
        who.require_publish(environment, queue)?;
        let q = self.queue_must_exist(environment, queue).await?;
        let mut events = self.read_events(headers, body)?;
        // Only the platform says which function published an event.
        for e in &mut events {
            for name in STAMPED {
                e.remove_extension(name);
            }
        }
        self.enqueue(&q, &events).await
    }

    fn read_events(&self, headers: &http::HeaderMap, body: &[u8]) -> ControlResult<Vec<Event>> {
        codec::read_request(headers, body, &self.limits).map_err(|e| match e {
            codec::CodecError::Malformed(m) => {
                ControlError::Invalid(format!("malformed CloudEvent: {m}"))
            }
            other => ControlError::TooLarge(other.to_string()),
        })
    }

    /// Events a function publishes from inside an invocation (to
    /// `http://events.seal.internal/<queue>`; the runtime has checked its
    /// manifest lists the queue). Each is stamped with the version and
    /// artifact that published it, the invocation's correlation id and
    /// trace context; one whose type the manifest says it produces is
    /// checked against that schema first, and a batch with one that fails
    /// is refused whole.
    pub async fn publish_from(
        &self,
        by: &seal_serving::EmittedBy,
        queue: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> ControlResult<EnqueueAnswer> {
        let q = self.queue_must_exist(&by.environment, queue).await?;
        let mut events = self.read_events(headers, body)?;
        for e in &mut events {
            if let Err(why) = self
                .contracts
                .check(
                    crate::event_contracts::Side::Produces,
                    &by.function,
                    by.version,
                    &by.digest,
                    e,
                )
                .await?
            {
                return Err(ControlError::Invalid(why));
            }
            e.set_extension("sealversion", format!("{}@{}", by.function, by.version));
            e.set_extension("sealdigest", by.digest.clone());
            e.set_extension("sealcorrelation", by.correlation.to_string());
            e.set_extension("traceparent", by.traceparent.clone());
        }
        self.enqueue(&q, &events).await
    }

    /// Commits already-built events to a queue, durably, before it
    /// answers. Producers that arrive while a commit runs share the next
    /// one (group commit): the first to get the turn commits every
    /// enqueue waiting, in one transaction, and hands each its answer.
    pub async fn enqueue(&self, q: &QueueRecord, events: &[Event]) -> ControlResult<EnqueueAnswer> {
        let stored: Vec<StoredEvent> = events
            .iter()
            .map(|e| StoredEvent {
                ce_id: e.id().to_owned(),
                source: e.source().to_string(),
                ty: e.ty().to_owned(),
                json: codec::to_json(e),
            })
            .collect();
        let now = now_ms();
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        lock(&self.pending).push(PendingEnqueue {
            environment: q.environment.clone(),
            queue: q.name.clone(),
            events: stored,
            now,
            dedup_since: now - q.dedup_window_ms as i64,
            reply,
        });
        let turn = self.commit_turn.lock().await;
        if let Ok(done) = answer.try_recv() {
            drop(turn);
            return self.answered(q, done);
        }
        let batch = std::mem::take(&mut *lock(&self.pending));
        let handoff = lock(&self.handoff).clone();
        let reserved = match &handoff {
            Some(_) if self.queues.claims_on_enqueue() => self.reserve(&batch),
            _ => Vec::new(),
        };
        // Its own task: a producer that hangs up must not cut the commit
        // the others wait for, nor lose the claims made with it.
        let queues = self.queues.clone();
        let wake = tokio::spawn(commit_enqueues(queues, batch, reserved, handoff)).await;
        drop(turn);
        if wake.unwrap_or(true) {
            self.wake_queues.notify_one();
        }
        let done = answer
            .await
            .map_err(|_| ControlError::internal("the enqueue was lost before its commit"))?;
        self.answered(q, done)
    }

    /// Takes the free slots of the subscriptions of the queues in `batch`,
    /// up to one per event each: the deliveries the commit adds for them
    /// are claimed with it and run at once. Reads the subscriptions as the
    /// delivery loop last read them (it reads them again at least once a
    /// second, and a trigger change clears them), without waiting:
    /// the batch is out of the pending list, and nothing may drop it
    /// before its commit starts.
    fn reserve(&self, batch: &[PendingEnqueue]) -> Vec<Reserved> {
        let Some((_, triggers)) = lock(&self.trigger_cache).clone() else {
            return Vec::new();
        };
        let now = now_ms();
        let mut reserved = Vec::new();
        for t in triggers.iter() {
            let TriggerSpec::Queue(sub) = &t.spec else {
                continue;
            };
            let events: usize = batch
                .iter()
                .filter(|p| p.environment == t.environment && p.queue == sub.queue)
                .map(|p| p.events.len())
                .sum();
            if events == 0 {
                continue;
            }
            let slots = self.slots(&t.name, sub.max_in_flight);
            let permits: Vec<_> = (0..events)
                .map_while(|_| slots.clone().try_acquire_owned().ok())
                .collect();
            reserved.push(Reserved {
                trigger: t.name.clone(),
                sub: sub.clone(),
                lease_until: now + self.lease_ms(&t.environment, &t.function),
                short: permits.len() < events,
                permits,
            });
        }
        reserved
    }

    fn answered(
        &self,
        q: &QueueRecord,
        done: ControlResult<Vec<seal_api_types::events::Enqueued>>,
    ) -> ControlResult<EnqueueAnswer> {
        Ok(EnqueueAnswer {
            environment: q.environment.clone(),
            queue: q.name.clone(),
            events: done?,
        })
    }

    pub async fn event(&self, id: u64) -> ControlResult<EventRecord> {
        self.queues
            .event(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no event {id}")))
    }

    pub async fn dead_letters(
        &self,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> ControlResult<Vec<DeadLetter>> {
        Ok(self.queues.dead_letters(environment, queue).await?)
    }

    pub async fn dead_letter(&self, id: u64) -> ControlResult<(DeadLetter, EventRecord)> {
        let d = self
            .queues
            .dead_letter(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no dead letter {id}")))?;
        let e = self.event(d.event_id).await?;
        Ok((d, e))
    }

    /// Sends events once to one version of `function` in `environment`
    /// (the caller has checked it is not protected): the function's dead
    /// letters, or a saved batch. Each is checked against the version's
    /// consumed contract, then delivered as a queue would deliver it, one
    /// after another; nothing is enqueued, retried or dead-lettered, and
    /// the dead letters stay. Counted in the version's totals, never
    /// judged by a gate. Audited with its counts.
    pub async fn replay(
        &self,
        function: &str,
        environment: &str,
        req: &ReplayRequest,
        actor: &str,
    ) -> ControlResult<ReplayAnswer> {
        lookup::environment_must_exist(&*self.state, environment).await?;
        lookup::function_must_exist(&*self.state, function).await?;
        let backend = self
            .serving
            .route(environment, function)
            .and_then(|r| r.backends.iter().find(|b| b.version == req.version).cloned())
            .ok_or_else(|| {
                ControlError::Invalid(format!(
                    "{function}@{} is not in the route of {function} in {environment}: deploy it there (a canary at any weight will do) before replaying to it",
                    req.version
                ))
            })?;
        // (event, the dead letter it came from)
        let mut events: Vec<(Event, Option<u64>)> = Vec::new();
        match (&req.dead_letters, req.events.is_empty()) {
            (Some(_), false) | (None, true) => {
                return Err(ControlError::Invalid(
                    "replay either dead letters or a batch of events (one of the two)".into(),
                ));
            }
            (Some(d), true) => {
                let from = self.env(d.environment.as_deref()).to_owned();
                let every = self
                    .state
                    .dead_letters(Some(&from), d.queue.as_deref())
                    .await?;
                for id in &d.ids {
                    if !every.iter().any(|x| x.id == *id && x.function == function) {
                        return Err(ControlError::not_found(format!(
                            "no dead letter {id} of {function} in {from}"
                        )));
                    }
                }
                let chosen: Vec<&DeadLetter> = every
                    .iter()
                    .filter(|x| {
                        x.function == function && (d.ids.is_empty() || d.ids.contains(&x.id))
                    })
                    .collect();
                if chosen.len() > self.limits.max_batch_events {
                    return Err(ControlError::TooLarge(format!(
                        "{} dead letters match; a replay sends at most {}: name them by id or by queue",
                        chosen.len(),
                        self.limits.max_batch_events
                    )));
                }
                for x in chosen {
                    let stored = self.event(x.event_id).await?;
                    let e = codec::from_json(&stored.event.to_string()).map_err(|e| {
                        ControlError::internal(format!("event {}: {e}", x.event_id))
                    })?;
                    events.push((e, Some(x.id)));
                }
            }
            (None, false) => {
                // Read as an ingest reads a batch: the same checks and limits.
                let body = serde_json::to_vec(&req.events).map_err(ControlError::internal)?;
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(codec::BATCH),
                );
                for e in self.read_events(&headers, &body)? {
                    events.push((e, None));
                }
            }
        }
        let mut results = Vec::with_capacity(events.len());
        for (event, dead_letter) in &events {
            let mut result = ReplayResult {
                ce_id: event.id().to_owned(),
                ty: event.ty().to_owned(),
                dead_letter: *dead_letter,
                status: None,
                outcome: Outcome::Permanent,
                error_kind: None,
                error: None,
                duration_ms: 0,
            };
            match self
                .contracts
                .check(
                    crate::event_contracts::Side::Consumes,
                    function,
                    backend.version,
                    &backend.digest,
                    event,
                )
                .await?
            {
                Err(why) => {
                    result.error_kind = Some("schema".into());
                    result.error = Some(why);
                }
                Ok(()) => {
                    let a = seal_events::deliver::deliver(
                        &self.serving,
                        &backend,
                        event,
                        Traffic::Unjudged,
                    )
                    .await;
                    result.status = a.status;
                    result.outcome = a.outcome;
                    result.error_kind = a.error_kind;
                    result.error = a.error;
                    result.duration_ms = a.duration.as_millis() as u64;
                }
            }
            results.push(result);
        }
        let succeeded = results.iter().filter(|r| r.outcome == Outcome::Ok).count() as u64;
        let answer = ReplayAnswer {
            function: function.to_owned(),
            environment: environment.to_owned(),
            version: backend.version,
            succeeded,
            failed: results.len() as u64 - succeeded,
            results,
        };
        self.state
            .audit(seal_state::NewAudit {
                actor,
                action: "events-replay",
                object: &format!("{environment}/{function}"),
                digest: Some(&backend.digest),
                outcome: "done",
                detail: serde_json::json!({
                    "version": backend.version,
                    "source": if req.dead_letters.is_some() { "dead-letters" } else { "batch" },
                    "succeeded": answer.succeeded,
                    "failed": answer.failed,
                }),
            })
            .await?;
        Ok(answer)
    }

    /// The dead letters a redrive or purge names: its ids (each must be a
    /// dead letter), or with `all` every one of the queue (or everywhere).
    async fn select(
        &self,
        ids: &[u64],
        all: bool,
        environment: Option<&str>,
        queue: Option<&str>,
    ) -> ControlResult<Vec<DeadLetter>> {
        if all != ids.is_empty() {
            return Err(ControlError::Invalid(
                "name dead letters by id, or ask for all of them (of a queue), not both".into(),
            ));
        }
        let every = self.queues.dead_letters(environment, queue).await?;
        if all {
            return Ok(every);
        }
        ids.iter()
            .map(|id| {
                every
                    .iter()
                    .find(|d| d.id == *id)
                    .cloned()
                    .ok_or_else(|| ControlError::not_found(format!("no dead letter {id}")))
            })
            .collect()
    }

    /// Dead letters back to their subscription, to the live route or to
    /// one version of it.
    pub async fn redrive(&self, req: &RedriveRequest, actor: &str) -> ControlResult<DlqChange> {
        let chosen = self
            .select(
                &req.ids,
                req.all,
                req.environment.as_deref(),
                req.queue.as_deref(),
            )
            .await?;
        if let Some(to) = req.to {
            for d in &chosen {
                let serves = self
                    .serving
                    .route(&d.environment, &d.function)
                    .is_some_and(|r| r.backends.iter().any(|b| b.version == to));
                if !serves {
                    return Err(ControlError::Invalid(format!(
                        "{}@{to} is not in the route of {} in {}: deploy it (a canary at any weight will do) before redriving to it",
                        d.function, d.function, d.environment
                    )));
                }
            }
        }
        for d in &chosen {
            if self.state.trigger(&d.trigger).await?.is_none() {
                return Err(ControlError::Conflict(format!(
                    "dead letter {} belongs to trigger {}, which was deleted",
                    d.id, d.trigger
                )));
            }
        }
        let ids: Vec<u64> = chosen.iter().map(|d| d.id).collect();
        let changed = self.queues.redrive(&ids, req.to, now_ms(), actor).await?;
        self.wake_queues.notify_one();
        Ok(DlqChange {
            count: changed.len() as u64,
            ids: changed,
        })
    }

    pub async fn purge(&self, req: &PurgeRequest, actor: &str) -> ControlResult<DlqChange> {
        let all = req.ids.is_empty();
        let chosen = self
            .select(
                &req.ids,
                all,
                req.environment.as_deref(),
                req.queue.as_deref(),
            )
            .await?;
        let ids: Vec<u64> = chosen.iter().map(|d| d.id).collect();
        let deleted = self.queues.purge(&ids, actor).await?;
        Ok(DlqChange {
            count: deleted.len() as u64,
            ids: deleted,
        })
    }

    /// The queue triggers, read from the store at most once a second (and
    /// after a trigger is created or deleted here).
    async fn queue_triggers(&self) -> ControlResult<Arc<Vec<TriggerRecord>>> {
        if let Some((at, list)) = &*lock(&self.trigger_cache)
            && now_ms() - at < 1_000
        {
            return Ok(list.clone());
        }
        let mut list = self.state.triggers().await?;
        list.retain(|t| matches!(t.spec, TriggerSpec::Queue(_)));
        let list = Arc::new(list);
        *lock(&self.trigger_cache) = Some((now_ms(), list.clone()));
        Ok(list)
    }

    fn slots(&self, trigger: &str, max_in_flight: u32) -> Arc<tokio::sync::Semaphore> {
        slots_in(&mut lock(&self.in_flight), trigger, max_in_flight)
    }

    /// Delivers due events until `stop`: at start, deliveries a previous
    /// process left running are due again (at-least-once). Every node of a
    /// shared store delivers; claims skip each other's rows.
    pub async fn run_queues(self: Arc<Self>, stop: CancellationToken) {
        // On a shared store the deliveries running are other nodes' too:
        // those of a node that died are due again when their lease ends.
        if !self.state.shared() {
            match self.queues.release_running(now_ms()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deliveries = n, "deliveries cut off by a stop are due again")
                }
                Err(e) => tracing::error!(error = %e, "cannot release running deliveries"),
            }
        }
        let mut running = tokio::task::JoinSet::new();
        // Attempts end in any order; this loop commits the outcomes that
        // ended meanwhile in one transaction, which also claims what the
        // slots they free can take (one round trip to the store per batch
        // of outcomes under load), and runs a full pass over the
        // subscriptions when woken (an enqueue, a trigger change), when
        // something is due, and at least once a second.
        let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut ended = Vec::new();
        // Enqueues claim for free slots from here on (not before the
        // release above, which would hand their claims out twice). What
        // they claim starts on a task of its own, not on this loop, which
        // may be waiting for the store.
        let (handoff_tx, handoff_rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.handoff) = Some(handoff_tx);
        let starter = tokio::spawn(self.clone().start_handed(handoff_rx, ended_tx.clone()));
        // However this loop ends (a panic, or its future dropped), the
        // enqueues stop claiming and what was handed over stops with it.
        let handoff_ends = HandoffEnds {
            handoff: &self.handoff,
            starter: starter.abort_handle(),
        };
        let mut gauged_at = 0;
        let mut swept_at = 0;
        let mut next_pass = 0;
        loop {
            if now_ms() - gauged_at >= 1_000 {
                gauged_at = now_ms();
                if let Err(e) = self.gauge_backlog().await {
                    tracing::warn!(error = %e, "cannot read the event backlog");
                }
            }
            if now_ms() - swept_at >= 60_000 {
                swept_at = now_ms();
                match self
                    .queues
                    .sweep_events(swept_at - EVENT_RETENTION_MS)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(events = n, "handled events past their retention deleted")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot sweep handled events"),
                }
            }
            if now_ms() >= next_pass {
                next_pass = match self.dispatch(&mut running, &ended_tx).await {
                    Ok(at) => at,
                    Err(e) => {
                        tracing::warn!(error = %e, "event delivery loop");
                        now_ms() + 1_000
                    }
                };
            }
            while running.try_join_next().is_some() {}
            let wait = (next_pass - now_ms()).clamp(0, 1_000) as u64;
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ended_rx.recv_many(&mut ended, 512) => {
                    if let Some(at) = self.settle(&mut ended, &mut running, &ended_tx, &stop).await {
                        next_pass = next_pass.min(at);
                    }
                }
                () = self.wake_queues.notified() => next_pass = now_ms(),
                () = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
            }
        }
        // Attempts cut off here stay claimed, as do those claimed by
        // enqueues and not started; the next start redelivers them. Those
        // that ended are committed before the loop returns.
        drop(handoff_ends);
        let _ = starter.await;
        running.shutdown().await;
        drop(ended_tx);
        while ended_rx.recv_many(&mut ended, 512).await > 0 {
            let done: Vec<Finished> = ended.iter().map(|e| e.finished.clone()).collect();
            match self.queues.finish_deliveries(&done).await {
                Ok(()) => ended
                    .drain(..)
                    .for_each(|e| self.count(&e.claimed, &e.finished)),
                Err(e) => {
                    tracing::error!(error = %e, deliveries = done.len(), "cannot record delivery attempts");
                    ended.clear();
                }
            }
        }
    }

    /// Commits the outcomes in `ended` in one transaction that also
    /// claims, for each subscription they belong to, as many due
    /// deliveries as its slots can take once theirs are free; starts those
    /// on the freed slots. Returns when the next full pass is due, if
    /// sooner than planned: in the state store, a claim that got less
    /// than it asked for took everything due, so the next pass is when the
    /// next of its deliveries is due (a read, not another claim on the
    /// one writer, which enqueues wait for).
    async fn settle(
        self: &Arc<Self>,
        ended: &mut Vec<Ended>,
        running: &mut tokio::task::JoinSet<()>,
        ended_tx: &tokio::sync::mpsc::UnboundedSender<Ended>,
        stop: &CancellationToken,
    ) -> Option<i64> {
        // The slots of the attempts that ended stay taken until their
        // outcomes are committed, then go to what the commit claims. Slots
        // free already stay free for the enqueues to claim at once (and for
        // deliveries claimed ahead, below); a pass
        // fills them when a claim here finds less than it asks for, an
        // enqueue finds no free slot, or a second goes by.
        let mut freed: HashMap<String, Vec<tokio::sync::OwnedSemaphorePermit>> = HashMap::new();
        let mut outcomes = Vec::with_capacity(ended.len());
        for e in ended.drain(..) {
            let permits = freed.entry(e.claimed.trigger.clone()).or_default();
            permits.extend(e.permit);
            outcomes.push((e.claimed, e.finished));
        }
        // Under load, each subscription whose attempts ended also claims
        // ahead, up to its max in flight: its attempts then go from one
        // delivery to the next without waiting for this commit. A claim
        // ahead waits about one attempt before it starts, so its lease
        // covers two. Not on a store shared by several nodes: claims
        // ahead that a node took down with it would wait out that longer
        // lease before another node could take them.
        let ahead = self.queues.claims_on_enqueue() && !self.state.shared();
        let done: Vec<Finished> = outcomes.iter().map(|(_, f)| f.clone()).collect();
        let triggers = match self.queue_triggers().await {
            Ok(list) if !stop.is_cancelled() => list,
            _ => Arc::new(Vec::new()),
        };
        let now = now_ms();
        let mut claims = Vec::new();
        let mut subs = Vec::new();
        for t in triggers.iter() {
            let TriggerSpec::Queue(sub) = &t.spec else {
                continue;
            };
            let Some(permits) = freed.get_mut(&t.name) else {
                continue;
            };
            let lease = self.lease_ms(&t.environment, &t.function);
            let room = if ahead {
                let waiting = lock(&self.ready).get(&t.name).map_or(0, |r| r.len());
                (sub.max_in_flight as usize).saturating_sub(waiting)
            } else {
                0
            };
            claims.push(seal_state::ClaimDue {
                trigger: t,
                now,
                // Whatever this commit claims may wait behind claims ahead
                // (they start first), so all of it has the longer lease.
                lease_until: now + if ahead { 2 * lease } else { lease },
                limit: (permits.len() + room) as u32,
            });
            subs.push(sub);
        }
        let claimed = match self.queues.finish_and_claim(&done, &claims).await {
            Ok(claimed) => claimed,
            Err(e) => {
                // Left claimed: due again when their lease ends (or at the
                // next start).
                tracing::error!(error = %e, deliveries = done.len(), "cannot record delivery attempts");
                return Some(now_ms());
            }
        };
        for (c, f) in &outcomes {
            self.count(c, f);
        }
        let mut short = Vec::new();
        let mut waits = Vec::new();
        for ((claim, sub), got) in claims.iter().zip(subs).zip(claimed) {
            waits.push((claim.trigger.name.as_str(), sub.max_in_flight));
            if (got.len() as u32) < claim.limit {
                short.push(claim.trigger.name.as_str());
            }
            // What waits already goes first, then what this commit
            // claimed, one slot each; the rest waits for a slot.
            let start_by = now + self.lease_ms(&claim.trigger.environment, &claim.trigger.function);
            lock(&self.ready)
                .entry(claim.trigger.name.clone())
                .or_default()
                .extend(got.into_iter().map(|claimed| Waiting {
                    claimed,
                    sub: sub.clone(),
                    start_by,
                }));
            let permits = freed.get_mut(&claim.trigger.name).expect("grouped above");
            while let Some(permit) = permits.pop() {
                let Some(w) = self.next_waiting(&claim.trigger.name) else {
                    break;
                };
                self.start(running, ended_tx, &w.sub, w.claimed, permit);
            }
        }
        // The slots no claim took go back; deliveries claimed ahead take
        // them at once (none waits while a slot is free).
        drop(freed);
        for (trigger, max_in_flight) in waits {
            self.start_waiting(running, ended_tx, trigger, max_in_flight);
        }
        if short.is_empty() {
            return None;
        }
        // A broker's deliveries are pulled, not read: a short pull says
        // nothing of what arrives next, so the pass comes at once.
        if !self.queues.claims_on_enqueue() {
            return Some(now_ms());
        }
        let mut next = None::<i64>;
        for trigger in short {
            match self.queues.next_due(trigger).await {
                Ok(Some(due)) => next = Some(next.map_or(due, |n| n.min(due))),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next due delivery");
                    return Some(now_ms());
                }
            }
        }
        next
    }

    /// One pass: claims what each subscription may take and starts it.
    /// Returns when the next pass is needed.
    async fn dispatch(
        self: &Arc<Self>,
        running: &mut tokio::task::JoinSet<()>,
        ended: &tokio::sync::mpsc::UnboundedSender<Ended>,
    ) -> ControlResult<i64> {
        let now = now_ms();
        let mut next = now + 1_000;
        let triggers = self.queue_triggers().await?;
        // Claims ahead of a trigger deleted since are dropped here (its
        // deliveries went with it).
        lock(&self.ready).retain(|name, _| triggers.iter().any(|t| &t.name == name));
        for t in triggers.iter() {
            let TriggerSpec::Queue(sub) = &t.spec else {
                continue;
            };
            self.start_waiting(running, ended, &t.name, sub.max_in_flight);
            // The free slots are taken before the claim, so that each
            // delivery it claims has one (enqueues take free slots too).
            let slots = self.slots(&t.name, sub.max_in_flight);
            let mut permits: Vec<_> =
                std::iter::from_fn(|| slots.clone().try_acquire_owned().ok()).collect();
            let free = permits.len() as u32;
            if free == 0 {
                continue;
            }
            let lease = self.lease_ms(&t.environment, &t.function);
            let claimed = self.queues.claim_due(t, now, now + lease, free).await?;
            let full = claimed.len() as u32 == free;
            // Started before anything else can fail: a claim not started
            // would wait out its lease.
            for c in claimed {
                let Some(permit) = permits.pop() else {
                    tracing::error!(delivery = c.delivery_id, "claimed beyond its limit");
                    break;
                };
                self.start(running, ended, sub, c, permit);
            }
            if full {
                next = now;
            } else if let Some(due) = self.queues.next_due(&t.name).await? {
                next = next.min(due);
            }
        }
        Ok(next)
    }

    /// Starts deliveries claimed ahead for `trigger` on its free slots.
    fn start_waiting(
        self: &Arc<Self>,
        running: &mut tokio::task::JoinSet<()>,
        ended: &tokio::sync::mpsc::UnboundedSender<Ended>,
        trigger: &str,
        max_in_flight: u32,
    ) {
        let slots = self.slots(trigger, max_in_flight);
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            let Some(w) = self.next_waiting(trigger) else {
                break;
            };
            self.start(running, ended, &w.sub, w.claimed, permit);
        }
    }

    /// The next delivery claimed ahead for `trigger` that can still run
    /// inside its lease. One that cannot (it waited behind attempts
    /// longer than planned) is left claimed: it comes due again when its
    /// lease ends, and is never run twice at once.
    fn next_waiting(&self, trigger: &str) -> Option<Waiting> {
        let now = now_ms();
        let mut ready = lock(&self.ready);
        let waiting = ready.get_mut(trigger)?;
        while let Some(w) = waiting.pop_front() {
            if now <= w.start_by {
                return Some(w);
            }
            tracing::debug!(
                delivery = w.claimed.delivery_id,
                "a delivery claimed ahead waited past its lease: due again when it ends"
            );
        }
        None
    }

    /// Starts what enqueues claimed, as they hand it over, until the
    /// delivery loop aborts it (its attempts are cut off with it, and
    /// stay claimed). A handoff that left deliveries pending wakes the
    /// loop for a pass.
    async fn start_handed(
        self: Arc<Self>,
        mut handoff: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
        ended: tokio::sync::mpsc::UnboundedSender<Ended>,
    ) {
        let mut running = tokio::task::JoinSet::new();
        let mut handed = Vec::new();
        while handoff.recv_many(&mut handed, 512).await > 0 {
            for h in handed.drain(..) {
                for (c, sub, permit) in h.started {
                    self.start(&mut running, &ended, &sub, c, permit);
                }
                if h.pass {
                    self.wake_queues.notify_one();
                }
            }
            while running.try_join_next().is_some() {}
        }
    }

    /// Runs one attempt of a claimed delivery on its slot; its outcome
    /// goes to the delivery loop.
    fn start(
        self: &Arc<Self>,
        running: &mut tokio::task::JoinSet<()>,
        ended: &tokio::sync::mpsc::UnboundedSender<Ended>,
        sub: &QueueSubscription,
        c: Claimed,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        let mut sub = sub.clone();
        let ended = ended.clone();
        running.spawn(async move {
            let mut c = c;
            loop {
                let now = now_ms();
                let (attempt, next) = this.run_attempt(&c, &sub, now).await;
                let finished = Finished {
                    delivery_id: c.delivery_id,
                    attempt,
                    next,
                    at: now_ms(),
                };
                // The slot goes on to a delivery claimed ahead, if one
                // waits; else back, with the outcome, to the loop.
                match this.next_waiting(&c.trigger) {
                    Some(w) => {
                        let _ = ended.send(Ended {
                            claimed: std::mem::replace(&mut c, w.claimed),
                            finished,
                            permit: None,
                        });
                        sub = w.sub;
                    }
                    None => {
                        let _ = ended.send(Ended {
                            claimed: c,
                            finished,
                            permit: Some(permit),
                        });
                        break;
                    }
                }
            }
        });
    }

    /// How long a claim of `function`'s deliveries lasts: the longest
    /// timeout of the versions on its route and a margin (an attempt
    /// cannot run longer), so a delivery whose node died is handed out
    /// again soon after; [`LEASE_MS`] when nothing serves it.
    fn lease_ms(&self, environment: &str, function: &str) -> i64 {
        self.serving
            .route(environment, function)
            .and_then(|r| {
                r.backends
                    .iter()
                    .map(|b| b.function.limits().timeout.as_millis() as i64)
                    .max()
            })
            .map_or(LEASE_MS, |t| t + LEASE_MARGIN_MS)
    }

    /// Counts a committed outcome in the subscription's metrics.
    fn count(&self, c: &Claimed, f: &Finished) {
        let labels = SubscriptionLabels {
            environment: c.environment.clone(),
            queue: c.queue.clone(),
            trigger: c.trigger.clone(),
            function: c.function.clone(),
        };
        let outcome = match &f.next {
            NextStep::Done => {
                self.metrics
                    .latency
                    .get_or_create(&labels)
                    .observe((f.at - c.enqueued_at).max(0) as f64 / 1000.0);
                "delivered"
            }
            NextStep::Retry { .. } => "retried",
            NextStep::Dead { reason, error } => {
                tracing::warn!(
                    event = c.event_id, trigger = %c.trigger, reason = reason.as_str(), error = %error,
                    "event dead-lettered"
                );
                "dead_lettered"
            }
        };
        self.metrics
            .deliveries
            .get_or_create(&DeliveryLabels {
                environment: labels.environment,
                queue: labels.queue,
                trigger: labels.trigger,
                function: labels.function,
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The oldest pending event of `function`'s subscriptions in
    /// `environment` as of the last backlog read: its trigger and how
    /// long it has waited (ms).
    pub fn oldest_pending(&self, environment: &str, function: &str) -> Option<(String, u64)> {
        let now = now_ms();
        lock(&self.backlog)
            .iter()
            .filter(|b| b.environment == environment && b.function == function)
            .filter_map(|b| {
                Some((
                    b.trigger.clone(),
                    (now - b.oldest_enqueued_at?).max(0) as u64,
                ))
            })
            .max_by_key(|(_, age)| *age)
    }

    /// Sets the backlog gauges (depth, oldest age, in flight) from the
    /// store; subscriptions with nothing left go back to 0.
    async fn gauge_backlog(&self) -> ControlResult<()> {
        let now = now_ms();
        let mut seen = HashSet::new();
        let backlog = self.queues.backlog().await?;
        *lock(&self.backlog) = Arc::new(backlog.clone());
        for b in backlog {
            let labels = SubscriptionLabels {
                environment: b.environment,
                queue: b.queue,
                trigger: b.trigger,
                function: b.function,
            };
            self.metrics
                .depth
                .get_or_create(&labels)
                .set((b.pending + b.running) as i64);
            self.metrics.oldest_age.get_or_create(&labels).set(
                b.oldest_enqueued_at
                    .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            );
            self.metrics
                .in_flight
                .get_or_create(&labels)
                .set(b.running as i64);
            seen.insert(labels);
        }
        let mut gauged = lock(&self.gauged);
        for gone in gauged.difference(&seen) {
            self.metrics.depth.get_or_create(gone).set(0);
            self.metrics.oldest_age.get_or_create(gone).set(0.0);
            self.metrics.in_flight.get_or_create(gone).set(0);
        }
        *gauged = seen;
        Ok(())
    }

    async fn run_attempt(
        &self,
        c: &Claimed,
        sub: &QueueSubscription,
        now: i64,
    ) -> (Option<AttemptRecord>, NextStep) {
        let event = match codec::from_json(&c.event) {
            Ok(e) => e,
            Err(e) => {
                return (
                    None,
                    NextStep::Dead {
                        reason: DeadReason::Permanent,
                        error: format!("the stored event cannot be read: {e}"),
                    },
                );
            }
        };
        if now - c.enqueued_at > sub.max_age_ms as i64 {
            return (
                None,
                NextStep::Dead {
                    reason: DeadReason::MaxAge,
                    error: format!(
                        "older than the subscription's maximum age ({} ms)",
                        sub.max_age_ms
                    ),
                },
            );
        }
        let route = self.serving.route(&c.environment, &c.function);
        let backend = route.as_ref().and_then(|r| match c.pinned_version {
            Some(v) => r.backends.iter().find(|b| b.version == v),
            None => seal_events::deliver::pick(r, &c.ce_id),
        });
        let started_at = now_ms();
        // The picked version's contract first: an event that breaks it is
        // never handed to the function. A contract that cannot be read is
        // not the event's fault: that attempt is retried.
        if let Some(b) = backend {
            let refused = match self
                .contracts
                .check(
                    crate::event_contracts::Side::Consumes,
                    &c.function,
                    b.version,
                    &b.digest,
                    &event,
                )
                .await
            {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(("schema", Outcome::Permanent, DeadReason::Schema, why)),
                Err(e) => Some((
                    "contract_unreadable",
                    Outcome::Retryable,
                    DeadReason::AttemptsExhausted,
                    e.to_string(),
                )),
            };
            if let Some((kind, outcome, reason, error)) = refused {
                let record = AttemptRecord {
                    attempt: c.next_attempt,
                    version: Some(b.version),
                    digest: Some(b.digest.clone()),
                    status: None,
                    outcome,
                    error_kind: Some(kind.into()),
                    started_at,
                    duration_ms: 0,
                };
                let made = c.attempts + 1;
                let next = if outcome == Outcome::Permanent || made >= sub.max_attempts {
                    NextStep::Dead { reason, error }
                } else {
                    NextStep::Retry {
                        at: now_ms() + backoff_ms(sub, made) as i64,
                        error,
                    }
                };
                return (Some(record), next);
            }
        }
        let (record, outcome, error) = match backend {
            Some(b) => {
                let traffic = if c.pinned_version.is_some() {
                    Traffic::Unjudged
                } else {
                    Traffic::Judged
                };
                let a = seal_events::deliver::deliver_from_queue(&self.serving, b, &event, traffic)
                    .await;
                let error = a.error.clone();
                (
                    AttemptRecord {
                        attempt: c.next_attempt,
                        version: Some(a.version),
                        digest: Some(a.digest),
                        status: a.status,
                        outcome: a.outcome,
                        error_kind: a.error_kind,
                        started_at,
                        duration_ms: a.duration.as_millis() as u64,
                    },
                    a.outcome,
                    error,
                )
            }
            None => {
                let why = match c.pinned_version {
                    Some(v) => format!("{}@{v} no longer serves in {}", c.function, c.environment),
                    None => format!("{} has no version serving in {}", c.function, c.environment),
                };
                (
                    AttemptRecord {
                        attempt: c.next_attempt,
                        version: None,
                        digest: None,
                        status: None,
                        outcome: Outcome::Retryable,
                        error_kind: Some("no_route".into()),
                        started_at,
                        duration_ms: 0,
                    },
                    Outcome::Retryable,
                    Some(why),
                )
            }
        };
        let error = error.unwrap_or_default();
        let made = c.attempts + 1;
        let next = match outcome {
            Outcome::Ok => NextStep::Done,
            Outcome::Permanent => NextStep::Dead {
                reason: DeadReason::Permanent,
                error,
            },
            Outcome::Retryable if made >= sub.max_attempts => NextStep::Dead {
                reason: DeadReason::AttemptsExhausted,
                error,
            },
            Outcome::Retryable => NextStep::Retry {
                at: now_ms() + backoff_ms(sub, made) as i64,
                error,
            },
        };
        (Some(record), next)
    }

    /// Fires cron ticks until `stop`. A tick is committed (the trigger's
    /// last tick moved to it) before it runs, so a restart neither fires it
    /// again nor skips it silently.
    pub async fn run_cron(self: Arc<Self>, stop: CancellationToken) {
        match self.state.interrupt_runs().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "cron runs cut off by a stop marked interrupted"),
            Err(e) => tracing::error!(error = %e, "cannot mark interrupted cron runs"),
        }
        let mut running = tokio::task::JoinSet::new();
        let mut schedules: HashMap<String, (CronSchedule, Schedule)> = HashMap::new();
        loop {
            let next = match self.cron_pass(&mut schedules, &mut running).await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(error = %e, "cron loop");
                    now_ms() + 1_000
                }
            };
            while running.try_join_next().is_some() {}
            let wait = (next - now_ms()).clamp(0, 60_000) as u64;
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake_cron.notified() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
            }
        }
        running.shutdown().await;
    }

    async fn cron_pass(
        self: &Arc<Self>,
        schedules: &mut HashMap<String, (CronSchedule, Schedule)>,
        running: &mut tokio::task::JoinSet<()>,
    ) -> ControlResult<i64> {
        let now = now_ms();
        let mut next_wake = now + 60_000;
        let triggers = self.state.triggers().await?;
        schedules.retain(|name, _| triggers.iter().any(|t| &t.name == name));
        for t in triggers {
            let TriggerSpec::Cron(spec) = &t.spec else {
                continue;
            };
            let schedule = match schedules.get(&t.name) {
                Some((s, parsed)) if s == spec => parsed.clone(),
                _ => match Schedule::parse(&spec.schedule, &spec.timezone) {
                    Ok(p) => {
                        schedules.insert(t.name.clone(), (spec.clone(), p.clone()));
                        p
                    }
                    Err(e) => {
                        tracing::warn!(trigger = %t.name, error = %e, "cron trigger cannot be scheduled");
                        continue;
                    }
                },
            };
            let last = self.state.last_tick(&t.name).await?.unwrap_or(t.created_at);
            let Some(due) = schedule.next_after(last) else {
                continue;
            };
            if due > now {
                next_wake = next_wake.min(due);
                continue;
            }
            // The latest tick at or before now is the one to act on.
            let latest = schedule.last_between(last, now).unwrap_or(due);
            let missed = now - latest > MISSED_AFTER_MS || latest != due;
            let run = |status: &str, error: Option<String>| CronRun {
                trigger: t.name.clone(),
                scheduled_at: latest,
                fired_at: now,
                status: status.into(),
                version: None,
                digest: None,
                http_status: None,
                duration_ms: None,
                error,
            };
            if missed && spec.on_missed == OnMissed::Skip {
                let skipped = run(
                    "missed",
                    Some(format!(
                        "tick(s) since {} were due while no server ran; on_missed = skip",
                        last
                    )),
                );
                self.state.commit_tick(&skipped).await?;
                self.count_run(&t, "missed");
                tracing::warn!(trigger = %t.name, scheduled_at = latest, "cron tick missed while no server ran: skipped");
            } else if spec.overlap == Overlap::Forbid && lock(&self.cron_running).contains(&t.name)
            {
                self.state
                    .commit_tick(&run(
                        "skipped",
                        Some("the previous run is still going; overlap = forbid".into()),
                    ))
                    .await?;
            } else if self.state.commit_tick(&run("running", None)).await? {
                lock(&self.cron_running).insert(t.name.clone());
                let this = self.clone();
                let spec = spec.clone();
                let t = t.clone();
                self.metrics
                    .cron_delay
                    .get_or_create(&SubscriptionLabels {
                        environment: t.environment.clone(),
                        queue: String::new(),
                        trigger: t.name.clone(),
                        function: t.function.clone(),
                    })
                    .observe((now - latest).max(0) as f64 / 1000.0);
                running.spawn(async move {
                    let done = this.fire(&t, &spec, latest, now).await;
                    lock(&this.cron_running).remove(&t.name);
                    this.count_run(&t, &done.status);
                    if let Err(e) = this.state.finish_run(&done).await {
                        tracing::error!(trigger = %t.name, error = %e, "cannot record a cron run");
                    }
                });
            }
            if let Some(n) = schedule.next_after(latest) {
                next_wake = next_wake.min(n);
            }
        }
        Ok(next_wake)
    }

    fn count_run(&self, t: &TriggerRecord, status: &str) {
        self.metrics
            .cron_runs
            .get_or_create(&CronLabels {
                environment: t.environment.clone(),
                trigger: t.name.clone(),
                function: t.function.clone(),
                status: status.into(),
            })
            .inc();
    }

    /// Runs one committed tick: a `dev.seal.cron.tick` event whose time is
    /// the scheduled instant, on the baseline (or by the weights).
    async fn fire(
        &self,
        t: &TriggerRecord,
        spec: &CronSchedule,
        scheduled: i64,
        fired: i64,
    ) -> CronRun {
        let mut run = CronRun {
            trigger: t.name.clone(),
            scheduled_at: scheduled,
            fired_at: fired,
            status: "failed".into(),
            version: None,
            digest: None,
            http_status: None,
            duration_ms: None,
            error: None,
        };
        let id = format!("{}-{scheduled}", t.name);
        let event = match seal_events::codec::new_event(
            &id,
            &format!("/seal/{}/triggers/{}", t.environment, t.name),
            "dev.seal.cron.tick",
            seal_events::schedule::instant(scheduled),
            Some(
                serde_json::json!({"trigger": t.name, "schedule": spec.schedule, "timezone": spec.timezone}),
            ),
        ) {
            Ok(e) => e,
            Err(e) => {
                run.error = Some(e);
                return run;
            }
        };
        let Some(route) = self.serving.route(&t.environment, &t.function) else {
            run.error = Some(format!(
                "{} has no version serving in {}",
                t.function, t.environment
            ));
            return run;
        };
        let backend = match spec.canary {
            CronCanary::Baseline => seal_events::deliver::baseline(&route),
            CronCanary::FollowWeights => seal_events::deliver::pick(&route, &id),
        };
        let Some(backend) = backend else {
            run.error = Some(format!(
                "{} has no version serving in {}",
                t.function, t.environment
            ));
            return run;
        };
        let a =
            seal_events::deliver::deliver(&self.serving, backend, &event, Traffic::Judged).await;
        run.version = Some(a.version);
        run.digest = Some(a.digest);
        run.http_status = a.status;
        run.duration_ms = Some(a.duration.as_millis() as u64);
        run.status = if a.outcome == Outcome::Ok {
            "ok"
        } else {
            "failed"
        }
        .into();
        run.error = a.error;
        run
    }
}

pub(crate) fn check_subscription(q: &QueueSubscription) -> ControlResult<()> {
    let bad = |m: &str| Err(ControlError::Invalid(m.into()));
    if q.max_attempts == 0 || q.max_attempts > 100 {
        return bad("max attempts must be 1 to 100");
    }
    if q.max_in_flight == 0 || q.max_in_flight > 1000 {
        return bad("max in flight must be 1 to 1000");
    }
    if q.backoff_initial_ms == 0 || q.backoff_initial_ms > q.backoff_max_ms {
        return bad("backoff must be initial..max with 0 < initial <= max");
    }
    if q.max_age_ms == 0 {
        return bad("max age must be more than 0");
    }
    Ok(())
}

/// The wait before retry `n` (after `n` attempts): exponential from the
/// initial backoff, capped, with equal jitter (half fixed, half random),
/// so retries of many events spread out.
fn backoff_ms(sub: &QueueSubscription, n: u32) -> u64 {
    let exp = sub
        .backoff_initial_ms
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(32));
    let cap = exp.min(sub.backoff_max_ms);
    cap / 2 + rand::random_range(0..=cap / 2)
}

/// The delivery slots of `trigger`, sized `max_in_flight`. A trigger
/// recreated under the same name with another `max_in_flight` (on this
/// node or another one of a shared store) gets a semaphore of the new
/// size; permits of the old one go back to it as its deliveries end.
fn slots_in(
    map: &mut HashMap<String, (u32, Arc<tokio::sync::Semaphore>)>,
    trigger: &str,
    max_in_flight: u32,
) -> Arc<tokio::sync::Semaphore> {
    let new = || {
        (
            max_in_flight,
            Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1) as usize)),
        )
    };
    match map.get_mut(trigger) {
        Some(slot) if slot.0 == max_in_flight => slot.1.clone(),
        Some(slot) => {
            *slot = new();
            slot.1.clone()
        }
        None => map.entry(trigger.to_owned()).or_insert_with(new).1.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_recreated_with_another_max_in_flight_gets_slots_of_that_size() {
        let mut map = HashMap::new();
        let first = slots_in(&mut map, "orders", 2);
        assert_eq!(first.available_permits(), 2);
        let held = first.clone().try_acquire_owned().unwrap();
        // Same setting: the same slots, one of them taken.
        let again = slots_in(&mut map, "orders", 2);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.available_permits(), 1);
        // Recreated with another max_in_flight: slots of the new size.
        let resized = slots_in(&mut map, "orders", 5);
        assert!(!Arc::ptr_eq(&first, &resized));
        assert_eq!(resized.available_permits(), 5);
        assert!(Arc::ptr_eq(&resized, &slots_in(&mut map, "orders", 5)));
        // A permit of the old slots goes back to them, not the new ones.
        drop(held);
        assert_eq!(first.available_permits(), 2);
        assert_eq!(resized.available_permits(), 5);
        // Other triggers have their own.
        assert_eq!(slots_in(&mut map, "other", 1).available_permits(), 1);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut sub = QueueSubscription::new("q");
        sub.backoff_initial_ms = 100;
        sub.backoff_max_ms = 1_000;
        for _ in 0..50 {
            let first = backoff_ms(&sub, 1);
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff_ms(&sub, 3);
            assert!((200..=400).contains(&third), "{third}");
            let late = backoff_ms(&sub, 40);
            assert!((500..=1_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn names_and_subscriptions_are_checked() {
        assert!(check_name("queue", "orders").is_ok());
        for bad in ["", "Orders", "1x", "a_b", &"a".repeat(64)] {
            assert!(check_name("queue", bad).is_err(), "{bad}");
        }
        let mut q = QueueSubscription::new("q");
        assert!(check_subscription(&q).is_ok());
        q.max_attempts = 0;
        assert!(check_subscription(&q).is_err());
        q.max_attempts = 3;
        q.backoff_initial_ms = 60_000;
        assert!(check_subscription(&q).is_err(), "initial over max");
    }
}
