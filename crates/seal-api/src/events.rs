//! API routes for queues, triggers, events and dead letters.
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET/POST | `/v1/queues?environment=` | viewer/deployer | list / create (`{"name", "environment"?, "dedup_window_ms"?}`) |
//! | DELETE | `/v1/queues/{env}/{queue}` | deployer | delete a queue no trigger reads, with its events |
//! | POST | `/v1/queues/{env}/{queue}/events` | publisher of that queue, deployer | enqueue CloudEvents: binary, structured or batch mode; 202 once committed |
//! | GET/POST | `/v1/triggers?function=` | viewer/deployer | list / create (`{"function", "kind": "queue"\|"cron", …}`) |
//! | GET/DELETE | `/v1/triggers/{name}` | viewer/deployer | one trigger / delete it |
//! | GET | `/v1/triggers/{name}/runs?limit=` | viewer | a cron trigger's recent ticks |
//! | GET | `/v1/events/{id}` | viewer | an event with every delivery and attempt |
//! | GET | `/v1/dlq?environment=&queue=` | viewer | dead letters |
//! | GET | `/v1/dlq/{id}` | viewer | one dead letter with its event |
//! | POST | `/v1/dlq/redrive` | deployer | `{"ids"\|"all", "queue"?, "to"?}` → back to delivery |
//! | POST | `/v1/dlq/purge` | deployer | `{"ids"?, "queue"?}` → deleted |
//! | POST | `/v1/functions/{fn}/replay` | deployer | `{"version", "environment"?, "dead_letters"?: {"environment"?, "queue"?, "ids"?} \| "events": […]}` → each event's outcome on that version (not in a protected environment) |

use crate::auth::{Caller, Routes, deployer, publisher, viewer};
use crate::error::{ApiError, ApiResult};
use crate::parse_json;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use seal_api_types::events::{
    CreateQueue, CreateTrigger, CronRun, DeadLetter, DlqChange, EnqueueAnswer, EventRecord,
    PurgeRequest, QueueRecord, RedriveRequest, ReplayAnswer, ReplayRequest, TriggerRecord,
};
use seal_control::Control;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub fn routes() -> Routes {
    Routes::default()
        .route(
            "/v1/queues",
            viewer(Method::GET, list_queues).and(deployer(Method::POST, create_queue)),
        )
        .route(
            "/v1/queues/{environment}/{queue}",
            deployer(Method::DELETE, delete_queue),
        )
        .route(
            "/v1/queues/{environment}/{queue}/events",
            publisher(Method::POST, ingest).body_limit(seal_control::events::MAX_INGEST_BYTES + 1),
        )
        .route(
            "/v1/triggers",
            viewer(Method::GET, list_triggers).and(deployer(Method::POST, create_trigger)),
        )
        .route(
            "/v1/triggers/{name}",
            viewer(Method::GET, get_trigger).and(deployer(Method::DELETE, delete_trigger)),
        )
        .route(
            "/v1/triggers/{name}/runs",
            viewer(Method::GET, trigger_runs),
        )
        .route("/v1/events/{id}", viewer(Method::GET, get_event))
        .route("/v1/dlq", viewer(Method::GET, list_dlq))
        .route("/v1/dlq/redrive", deployer(Method::POST, redrive))
        .route("/v1/dlq/purge", deployer(Method::POST, purge))
        .route("/v1/dlq/{id}", viewer(Method::GET, get_dead_letter))
        .route(
            "/v1/functions/{function}/replay",
            deployer(Method::POST, replay)
                .body_limit(seal_control::events::MAX_INGEST_BYTES + 4096),
        )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Filter {
    environment: Option<String>,
    queue: Option<String>,
    function: Option<String>,
    limit: Option<u32>,
}

fn number(s: &str, what: &str) -> ApiResult<u64> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("{what} must be a number, not {s:?}")))
}

async fn list_queues(
    State(c): State<Arc<Control>>,
    Query(f): Query<Filter>,
) -> ApiResult<Json<Vec<QueueRecord>>> {
    Ok(Json(c.events().queues(f.environment.as_deref()).await?))
}

async fn create_queue(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<QueueRecord>)> {
    let req: CreateQueue = parse_json(&body)?;
    who.require_env(
        req.environment
            .as_deref()
            .unwrap_or(c.default_environment()),
    )?;
    let q = c.events().create_queue(&req, &who.actor()).await?;
    Ok((StatusCode::CREATED, Json(q)))
}

async fn delete_queue(
    State(c): State<Arc<Control>>,
    Path((environment, queue)): Path<(String, String)>,
    who: Caller,
) -> ApiResult<StatusCode> {
    who.require_env(&environment)?;
    c.events()
        .delete_queue(&environment, &queue, &who.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ingest(
    State(c): State<Arc<Control>>,
    Path((environment, queue)): Path<(String, String)>,
    who: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<EnqueueAnswer>)> {
    let answer = c
        .events()
        .ingest(&who, &environment, &queue, &headers, &body)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

async fn list_triggers(
    State(c): State<Arc<Control>>,
    Query(f): Query<Filter>,
) -> ApiResult<Json<Vec<TriggerRecord>>> {
    Ok(Json(c.events().triggers(f.function.as_deref()).await?))
}

async fn create_trigger(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<TriggerRecord>)> {
    let req: CreateTrigger = parse_json(&body)?;
    who.require_env(
        req.environment
            .as_deref()
            .unwrap_or(c.default_environment()),
    )?;
    let t = c.events().create_trigger(&req, &who.actor()).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

async fn get_trigger(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerRecord>> {
    Ok(Json(c.events().trigger(&name).await?))
}

async fn delete_trigger(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    who: Caller,
) -> ApiResult<StatusCode> {
    let t = c.events().trigger(&name).await?;
    who.require_env(&t.environment)?;
    c.events().delete_trigger(&name, &who.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trigger_runs(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    Query(f): Query<Filter>,
) -> ApiResult<Json<Vec<CronRun>>> {
    Ok(Json(
        c.events().cron_runs(&name, f.limit.unwrap_or(20)).await?,
    ))
}

async fn get_event(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
) -> ApiResult<Json<EventRecord>> {
    Ok(Json(c.events().event(number(&id, "an event id")?).await?))
}

async fn list_dlq(
    State(c): State<Arc<Control>>,
    Query(f): Query<Filter>,
) -> ApiResult<Json<Vec<DeadLetter>>> {
    Ok(Json(
        c.events()
            .dead_letters(f.environment.as_deref(), f.queue.as_deref())
            .await?,
    ))
}

#[derive(Serialize)]
struct DeadLetterView {
    #[serde(flatten)]
    dead_letter: DeadLetter,
    event: EventRecord,
}

async fn get_dead_letter(
    State(c): State<Arc<Control>>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeadLetterView>> {
    let (dead_letter, event) = c
        .events()
        .dead_letter(number(&id, "a dead letter id")?)
        .await?;
    Ok(Json(DeadLetterView { dead_letter, event }))
}

/// A token limited to environments acts on the dead letters of one: the
/// one named, or the default.
fn scope_dead_letters(
    c: &Control,
    who: &Caller,
    environment: &mut Option<String>,
) -> ApiResult<()> {
    if environment.is_some() || who.environments.is_some() {
        let env = environment.get_or_insert_with(|| c.default_environment().to_owned());
        who.require_env(env)?;
    }
    Ok(())
}

async fn redrive(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<DlqChange>> {
    let mut req: RedriveRequest = parse_json(&body)?;
    scope_dead_letters(&c, &who, &mut req.environment)?;
    Ok(Json(c.events().redrive(&req, &who.actor()).await?))
}

async fn purge(
    State(c): State<Arc<Control>>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<DlqChange>> {
    let mut req: PurgeRequest = parse_json(&body)?;
    scope_dead_letters(&c, &who, &mut req.environment)?;
    Ok(Json(c.events().purge(&req, &who.actor()).await?))
}

/// A limited token replays only where it may act, and reads the dead
/// letters only of an environment it may act on.
async fn replay(
    State(c): State<Arc<Control>>,
    Path(function): Path<String>,
    who: Caller,
    body: axum::body::Bytes,
) -> ApiResult<Json<ReplayAnswer>> {
    let mut req: ReplayRequest = parse_json(&body)?;
    let env = req
        .environment
        .get_or_insert_with(|| c.default_environment().to_owned());
    who.require_env(env)?;
    if let Some(d) = &mut req.dead_letters {
        scope_dead_letters(&c, &who, &mut d.environment)?;
    }
    Ok(Json(c.replay_events(&function, &req, &who.actor()).await?))
}
