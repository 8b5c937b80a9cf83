//! `seal queue …`, `seal trigger …`, `seal events …` and `seal dlq …`:
//! durable queues, the triggers that bind functions to queues and
//! schedules, events and their attempts, dead letters.

use crate::client::Client;
use crate::commands::deploy::parse_duration_ms;
use crate::output::{OutputFormat, emit, opt, table, time_ms};
use anyhow::{Context, bail};
use seal_api_types::events::{
    CreateQueue, CreateTrigger, CronCanary, CronRun, CronSchedule, DeadLetter, DlqChange,
    EnqueueAnswer, EventRecord, OnMissed, Overlap, PurgeRequest, QueueRecord, QueueSubscription,
    RedriveRequest, ReplayAnswer, ReplayDeadLetters, ReplayRequest, TriggerRecord, TriggerSpec,
};
use serde_json::{Value, json};

#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Create a durable queue in an environment.
    Create {
        name: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// Events with the (source, id) of one enqueued this recently are
        /// duplicates (default 10m).
        #[arg(long, value_parser = parse_duration_ms)]
        dedup_window: Option<u64>,
    },
    /// List queues.
    List {
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// Delete a queue (and its events); refused while a trigger reads it.
    Delete {
        name: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TriggerCommand {
    /// Bind a function to a queue or a schedule.
    #[command(subcommand)]
    Create(TriggerKind),
    /// List triggers.
    List {
        #[arg(long)]
        function: Option<String>,
    },
    /// Delete a trigger (its pending deliveries are dropped).
    Delete { name: String },
    /// Recent ticks of a cron trigger: scheduled time, version, status, latency.
    Runs {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TriggerKind {
    /// Deliver every event of a queue to a function (a subscription).
    Queue {
        #[arg(long)]
        function: String,
        #[arg(long)]
        queue: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// Default: FUNCTION-QUEUE (prefixed by the environment when it is
        /// not the server's default).
        #[arg(long)]
        name: Option<String>,
        /// Attempts before an event is dead-lettered.
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        /// Backoff between attempts, INITIAL..MAX (exponential, jittered).
        #[arg(long, default_value = "1s..30s")]
        backoff: String,
        /// Events older than this are dead-lettered instead of retried.
        #[arg(long, default_value = "24h", value_parser = parse_duration_ms)]
        max_age: u64,
        /// Deliveries running at once.
        #[arg(long, default_value_t = 16)]
        max_in_flight: u32,
    },
    /// Run a function on a schedule.
    Cron {
        #[arg(long)]
        function: String,
        /// Five fields (minute hour day month weekday), or six with seconds first.
        #[arg(long)]
        schedule: String,
        /// An IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Ticks missed while no server ran: skip (recorded) or run the latest once.
        #[arg(long, default_value = "skip")]
        on_missed: String,
        /// A tick while the previous run goes: allow, or forbid (recorded as skipped).
        #[arg(long, default_value = "allow")]
        overlap: String,
        /// During a canary: ticks run on the baseline, or follow-weights.
        #[arg(long, default_value = "baseline")]
        canary: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum EventsCommand {
    /// Enqueue one CloudEvent (structured mode).
    Send {
        queue: String,
        #[arg(long = "type")]
        ty: String,
        #[arg(long, default_value = "/seal/cli")]
        source: String,
        /// Default: a new unique id.
        #[arg(long)]
        id: Option<String>,
        /// JSON data, or @FILE to read it from a file.
        #[arg(long)]
        data: Option<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// An event with every attempt: version, digest, status, duration.
    Show { id: u64 },
    /// Send events once to one version of a function in an environment
    /// that is not protected — a function's dead letters (say,
    /// production's, against a fix deployed in staging) or a saved batch —
    /// and show each outcome. Nothing is enqueued or retried and the dead
    /// letters stay; exits non-zero if any event failed.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["dlq", "file"])))]
    Replay {
        function: String,
        /// The version, in the function's route in --env.
        #[arg(long, value_name = "N")]
        to: u64,
        /// Where the version runs (not a protected environment).
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// Re-send the function's dead letters.
        #[arg(long)]
        dlq: bool,
        /// Of dead letters from this environment (default: the server's
        /// default, production).
        #[arg(long, requires = "dlq", value_name = "ENV")]
        from_env: Option<String>,
        /// Of dead letters of this queue.
        #[arg(long, requires = "dlq")]
        queue: Option<String>,
        /// Only these dead letters.
        #[arg(long = "id", requires = "dlq", value_name = "ID")]
        ids: Vec<u64>,
        /// A saved batch: a JSON array of structured CloudEvents, an
        /// object with an `events` array, or one event.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters.
    List {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// One dead letter with its event and attempts.
    Show { id: u64 },
    /// Send dead letters back to their subscription.
    Redrive {
        /// Dead letter ids (or --all).
        ids: Vec<u64>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// Deliver to this version (in the route) instead of by the weights.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Delete dead letters (all of them, of --queue, unless ids are given).
    Purge {
        ids: Vec<u64>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub async fn queue(cmd: QueueCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        QueueCommand::Create {
            name,
            env,
            dedup_window,
        } => {
            let q: QueueRecord = client
                .post_as(
                    "/v1/queues",
                    &CreateQueue {
                        name,
                        environment: env,
                        dedup_window_ms: dedup_window,
                    },
                )
                .await?;
            emit(out, &q, |q| {
                println!("queue {} created in {}", q.name, q.environment)
            });
        }
        QueueCommand::List { env } => {
            let qs: Vec<QueueRecord> = client
                .get_as(&format!(
                    "/v1/queues{}",
                    query(&[("environment", env.as_deref())])
                ))
                .await?;
            emit(out, &qs, |qs| {
                table(
                    &["ENVIRONMENT", "QUEUE", "DEDUP WINDOW", "CREATED", "BY"],
                    qs.iter()
                        .map(|q| {
                            vec![
                                q.environment.clone(),
                                q.name.clone(),
                                format!("{}s", q.dedup_window_ms / 1000),
                                time_ms(q.created_at),
                                q.created_by.clone(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        QueueCommand::Delete { name, env } => {
            let env = match env {
                Some(e) => e,
                None => default_environment(client).await?,
            };
            client
                .checked(
                    client.request(reqwest::Method::DELETE, &format!("/v1/queues/{env}/{name}")),
                )
                .await?;
            emit(out, &json!({"deleted": name, "environment": env}), |_| {
                println!("queue {name} deleted from {env}")
            });
        }
    }
    Ok(())
}

/// The server's default environment, for paths that name one.
pub(crate) async fn default_environment(client: &Client) -> anyhow::Result<String> {
    let envs: seal_api_types::catalog::Environments = client.get_as("/v1/environments").await?;
    Ok(envs.default)
}

fn parse_backoff(s: &str) -> anyhow::Result<(u64, u64)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("--backoff {s:?}: expected INITIAL..MAX, e.g. 1s..30s"))?;
    let a = parse_duration_ms(a).map_err(|e| anyhow::anyhow!("--backoff: {e}"))?;
    let b = parse_duration_ms(b).map_err(|e| anyhow::anyhow!("--backoff: {e}"))?;
    Ok((a, b))
}

fn choice<T>(flag: &str, v: &str, options: &[(&str, T)]) -> anyhow::Result<T>
where
    T: Copy,
{
    options
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .with_context(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            format!("--{flag} {v:?}: one of {}", names.join(", "))
        })
}

pub async fn trigger(
    cmd: TriggerCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        TriggerCommand::Create(kind) => {
            let req = match kind {
                TriggerKind::Queue {
                    function,
                    queue,
                    env,
                    name,
                    max_attempts,
                    backoff,
                    max_age,
                    max_in_flight,
                } => {
                    let (initial, max) = parse_backoff(&backoff)?;
                    CreateTrigger {
                        name,
                        function,
                        environment: env,
                        spec: TriggerSpec::Queue(QueueSubscription {
                            queue,
                            max_attempts,
                            backoff_initial_ms: initial,
                            backoff_max_ms: max,
                            max_age_ms: max_age,
                            max_in_flight,
                        }),
                    }
                }
                TriggerKind::Cron {
                    function,
                    schedule,
                    timezone,
                    on_missed,
                    overlap,
                    canary,
                    env,
                    name,
                } => CreateTrigger {
                    name,
                    function,
                    environment: env,
                    spec: TriggerSpec::Cron(CronSchedule {
                        schedule,
                        timezone,
                        on_missed: choice(
                            "on-missed",
                            &on_missed,
                            &[("skip", OnMissed::Skip), ("once", OnMissed::Once)],
                        )?,
                        overlap: choice(
                            "overlap",
                            &overlap,
                            &[("allow", Overlap::Allow), ("forbid", Overlap::Forbid)],
                        )?,
                        canary: choice(
                            "canary",
                            &canary,
                            &[
                                ("baseline", CronCanary::Baseline),
                                ("follow-weights", CronCanary::FollowWeights),
                            ],
                        )?,
                    }),
                },
            };
            let t: TriggerRecord = client.post_as("/v1/triggers", &req).await?;
            emit(out, &t, |t| {
                println!(
                    "trigger {} created: {} in {} ← {}",
                    t.name,
                    t.function,
                    t.environment,
                    describe(&t.spec)
                )
            });
        }
        TriggerCommand::List { function } => {
            let ts: Vec<TriggerRecord> = client
                .get_as(&format!(
                    "/v1/triggers{}",
                    query(&[("function", function.as_deref())])
                ))
                .await?;
            emit(out, &ts, |ts| {
                table(
                    &["NAME", "KIND", "ENVIRONMENT", "FUNCTION", "SOURCE"],
                    ts.iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.spec.kind().to_owned(),
                                t.environment.clone(),
                                t.function.clone(),
                                describe(&t.spec),
                            ]
                        })
                        .collect(),
                )
            });
        }
        TriggerCommand::Delete { name } => {
            client
                .checked(client.request(reqwest::Method::DELETE, &format!("/v1/triggers/{name}")))
                .await?;
            emit(out, &json!({"deleted": name}), |_| {
                println!("trigger {name} deleted")
            });
        }
        TriggerCommand::Runs { name, limit } => {
            let runs: Vec<CronRun> = client
                .get_as(&format!("/v1/triggers/{name}/runs?limit={limit}"))
                .await?;
            emit(out, &runs, |runs| {
                table(
                    &[
                        "SCHEDULED",
                        "FIRED +MS",
                        "STATUS",
                        "VERSION",
                        "HTTP",
                        "DURATION",
                        "ERROR",
                    ],
                    runs.iter()
                        .map(|r| {
                            vec![
                                time_ms(r.scheduled_at),
                                format!("{}", r.fired_at - r.scheduled_at),
                                r.status.clone(),
                                opt(r.version),
                                opt(r.http_status),
                                r.duration_ms.map(|d| format!("{d}ms")).unwrap_or_default(),
                                r.error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            });
        }
    }
    Ok(())
}

fn describe(spec: &TriggerSpec) -> String {
    match spec {
        TriggerSpec::Queue(q) => format!(
            "queue {} (attempts {}, backoff {}ms..{}ms, max in flight {})",
            q.queue, q.max_attempts, q.backoff_initial_ms, q.backoff_max_ms, q.max_in_flight
        ),
        TriggerSpec::Cron(c) => format!("cron {:?} {}", c.schedule, c.timezone),
    }
}

fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

pub async fn events(cmd: EventsCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Send {
            queue,
            ty,
            source,
            id,
            data,
            env,
        } => {
            let env = match env {
                Some(e) => e,
                None => default_environment(client).await?,
            };
            let mut event = json!({
                "specversion": "1.0",
                "id": id.unwrap_or_else(new_id),
                "source": source,
                "type": ty,
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            });
            if let Some(d) = data {
                let text = match d.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read --data file {path}"))?,
                    None => d,
                };
                let value: Value = serde_json::from_str(&text)
                    .context("--data must be JSON (or @FILE holding JSON)")?;
                event["datacontenttype"] = json!("application/json");
                event["data"] = value;
            }
            let req = client
                .request(
                    reqwest::Method::POST,
                    &format!("/v1/queues/{env}/{queue}/events"),
                )
                .header("content-type", "application/cloudevents+json")
                .body(serde_json::to_vec(&event)?);
            let answer: EnqueueAnswer = client
                .send_as(req, "POST", &format!("/v1/queues/{env}/{queue}/events"))
                .await?;
            emit(out, &answer, |a| {
                for e in &a.events {
                    if e.duplicate {
                        println!(
                            "event {} is a duplicate of {} (not enqueued again)",
                            e.ce_id, e.id
                        );
                    } else {
                        println!(
                            "event {} enqueued on {} in {} as {}",
                            e.ce_id, a.queue, a.environment, e.id
                        );
                    }
                }
            });
        }
        EventsCommand::Show { id } => {
            let e: EventRecord = client.get_as(&format!("/v1/events/{id}")).await?;
            emit(out, &e, print_event);
        }
        EventsCommand::Replay {
            function,
            to,
            env,
            dlq,
            from_env,
            queue,
            ids,
            file,
        } => {
            let events = match &file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    saved_batch(&text)
                        .with_context(|| format!("{} holds no CloudEvents", path.display()))?
                }
                None => Vec::new(),
            };
            let req = ReplayRequest {
                environment: env,
                version: to,
                dead_letters: dlq.then_some(ReplayDeadLetters {
                    environment: from_env,
                    queue,
                    ids,
                }),
                events,
            };
            let answer: ReplayAnswer = client
                .post_as(&format!("/v1/functions/{function}/replay"), &req)
                .await?;
            emit(out, &answer, print_replay);
            if answer.failed > 0 {
                bail!(
                    "{} of {} events failed on {}@{} in {}",
                    answer.failed,
                    answer.results.len(),
                    answer.function,
                    answer.version,
                    answer.environment
                );
            }
        }
    }
    Ok(())
}

/// The events of a saved batch: an array, `{"events": [...]}`, or one.
fn saved_batch(text: &str) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    let events = match v {
        Value::Array(a) => a,
        Value::Object(mut o) if o.contains_key("events") => match o.remove("events") {
            Some(Value::Array(a)) => a,
            _ => bail!("\"events\" is not an array"),
        },
        Value::Object(o) => vec![Value::Object(o)],
        _ => bail!("expected an event, an array of events or {{\"events\": [...]}}"),
    };
    if events.is_empty() {
        bail!("the batch is empty");
    }
    Ok(events)
}

fn print_replay(a: &ReplayAnswer) {
    println!(
        "replayed {} event(s) on {}@{} in {}: {} succeeded, {} failed",
        a.results.len(),
        a.function,
        a.version,
        a.environment,
        a.succeeded,
        a.failed
    );
    table(
        &[
            "CE-ID",
            "TYPE",
            "DEAD-LETTER",
            "STATUS",
            "OUTCOME",
            "ERROR",
            "DURATION",
        ],
        a.results
            .iter()
            .map(|r| {
                vec![
                    r.ce_id.clone(),
                    r.ty.clone(),
                    opt(r.dead_letter),
                    opt(r.status),
                    r.outcome.as_str().to_owned(),
                    r.error_kind.clone().unwrap_or_default(),
                    format!("{}ms", r.duration_ms),
                ]
            })
            .collect(),
    );
}

fn print_event(e: &EventRecord) {
    println!(
        "event {} ({}, type {}, source {}) on {} in {}, enqueued {}",
        e.id,
        e.ce_id,
        e.ty,
        e.source,
        e.queue,
        e.environment,
        time_ms(e.enqueued_at)
    );
    if e.deliveries.is_empty() {
        println!("no subscription read it");
    }
    for d in &e.deliveries {
        println!(
            "\n{} → {}: {}{}",
            d.trigger,
            d.function,
            d.state.as_str(),
            d.dead_reason
                .map(|r| format!(" ({})", r.as_str()))
                .unwrap_or_default()
        );
        table(
            &[
                "ATTEMPT", "VERSION", "DIGEST", "STATUS", "OUTCOME", "ERROR", "DURATION",
            ],
            d.history
                .iter()
                .map(|a| {
                    vec![
                        a.attempt.to_string(),
                        opt(a.version),
                        a.digest.as_deref().map(short).unwrap_or_default(),
                        opt(a.status),
                        a.outcome.as_str().to_owned(),
                        a.error_kind.clone().unwrap_or_default(),
                        format!("{}ms", a.duration_ms),
                    ]
                })
                .collect(),
        );
    }
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

pub async fn dlq(cmd: DlqCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List { queue, env } => {
            let dead: Vec<DeadLetter> = client
                .get_as(&format!(
                    "/v1/dlq{}",
                    query(&[("environment", env.as_deref()), ("queue", queue.as_deref())])
                ))
                .await?;
            emit(out, &dead, |dead| {
                table(
                    &[
                        "ID",
                        "EVENT",
                        "QUEUE",
                        "TRIGGER",
                        "TYPE",
                        "REASON",
                        "VERSION",
                        "ATTEMPTS",
                        "LAST ERROR",
                    ],
                    dead.iter()
                        .map(|d| {
                            vec![
                                d.id.to_string(),
                                d.event_id.to_string(),
                                format!("{}/{}", d.environment, d.queue),
                                d.trigger.clone(),
                                d.ty.clone(),
                                d.reason.as_str().to_owned(),
                                opt(d.version),
                                d.attempts.to_string(),
                                d.last_error.clone().unwrap_or_default(),
                            ]
                        })
                        .collect(),
                )
            });
        }
        DlqCommand::Show { id } => {
            let v: Value = client.get(&format!("/v1/dlq/{id}")).await?;
            emit(out, &v, |v| {
                println!(
                    "dead letter {id}: {} after {} attempt(s), last version {}: {}",
                    v["reason"].as_str().unwrap_or("?"),
                    v["attempts"],
                    v["version"],
                    v["last_error"].as_str().unwrap_or("")
                );
                if let Ok(e) = serde_json::from_value::<EventRecord>(v["event"].clone()) {
                    print_event(&e);
                }
            });
        }
        DlqCommand::Redrive {
            ids,
            all,
            queue,
            env,
            to,
        } => {
            if ids.is_empty() && !all {
                bail!("name dead letters by id, or use --all");
            }
            let changed: DlqChange = client
                .post_as(
                    "/v1/dlq/redrive",
                    &RedriveRequest {
                        ids,
                        all,
                        queue,
                        environment: env,
                        to,
                    },
                )
                .await?;
            emit(out, &changed, |c| {
                println!(
                    "{} dead letter(s) back to delivery{}",
                    c.count,
                    to.map(|v| format!(" on version {v}")).unwrap_or_default()
                )
            });
        }
        DlqCommand::Purge { ids, queue, env } => {
            let changed: DlqChange = client
                .post_as(
                    "/v1/dlq/purge",
                    &PurgeRequest {
                        ids,
                        queue,
                        environment: env,
                    },
                )
                .await?;
            emit(out, &changed, |c| {
                println!("{} dead letter(s) deleted", c.count)
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_batch_is_an_array_an_events_object_or_one_event() {
        let one = r#"{"id": "a", "type": "t"}"#;
        assert_eq!(saved_batch(one).unwrap().len(), 1);
        assert_eq!(saved_batch(&format!("[{one}, {one}]")).unwrap().len(), 2);
        assert_eq!(
            saved_batch(&format!(r#"{{"events": [{one}]}}"#)).unwrap()[0]["id"],
            "a"
        );
        for bad in ["[]", "3", "not json", r#"{"events": 3}"#] {
            assert!(saved_batch(bad).is_err(), "{bad}");
        }
    }
}
