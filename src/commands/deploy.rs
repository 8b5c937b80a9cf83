//! `seal deploy` (all-at-once or progressive, `--plan`, `--wait`) and
//! `seal rollback`.

use crate::client::Client;
use crate::output::{OutputFormat, duration_ms, emit, s, weights};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use seal_api_types::rollout::{self as wire, Gates, Hook, LatencyLimit, RolloutSpec};
use seal_api_types::{DeployRequest, RollbackRequest};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Function name.
    function: String,
    /// Version number to deploy (see `seal versions FUNCTION`).
    version: u64,
    /// Environment to deploy to (default: the server's default, production).
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Why: recorded with the deployment and in the audit log.
    #[arg(long)]
    reason: Option<String>,
    /// Let this version do more than the one serving now: new outbound
    /// hosts or config keys, more memory, a longer timeout. Production
    /// refuses such a deploy without it, and only an admin token may give
    /// it; the difference is printed either way.
    #[arg(long)]
    allow_new_permissions: bool,

    /// Approve a version that breaks the event contracts of the one it
    /// replaces: a consumed or produced event type removed, a consumed
    /// schema made stricter. A protected environment (production) refuses
    /// such a deploy without it, and only an admin token may give it; the
    /// contract difference is printed either way.
    #[arg(long)]
    allow_breaking_contract: bool,

    /// Serve this version although it lacks the evidence the environment's
    /// pipeline asks for (soak, verification in the environment it
    /// follows). Only an admin token may give it; audited with what lacked.
    #[arg(long)]
    allow_missing_evidence: bool,

    /// How traffic moves to the new version.
    #[arg(long, value_enum, default_value_t = Strategy::AllAtOnce, help_heading = "Rollout")]
    strategy: Strategy,
    /// canary: the candidate's weight at each step, e.g. 10,50,100 (100 is
    /// appended if missing; default 10,50,100).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_weight,
        value_name = "PCT,…",
        help_heading = "Rollout"
    )]
    steps: Vec<u32>,
    /// linear: the weight added at each step, e.g. 20 → 20,40,60,80,100 (default 20).
    #[arg(long, value_parser = parse_weight, value_name = "PCT", help_heading = "Rollout")]
    increment: Option<u32>,
    /// How long each gated step runs before it may pass, e.g. 30s, 5m
    /// (blue-green: how long the preview bakes; default 1m).
    #[arg(long, value_parser = parse_duration_ms, value_name = "DUR", help_heading = "Rollout")]
    interval: Option<u64>,
    /// When a step ends without enough traffic for a verdict: wait for more
    /// (default), or fail (roll back).
    #[arg(long, value_enum, value_name = "WHAT", help_heading = "Rollout")]
    on_inconclusive: Option<OnInconclusive>,
    /// Roll back when a step still has no passing verdict after this long,
    /// e.g. 10m (default 10m).
    #[arg(long, value_parser = parse_duration_ms, value_name = "DUR", help_heading = "Rollout")]
    progress_deadline: Option<u64>,
    /// Pause before the step to 100% until `seal approve ID` (or `seal promote ID`).
    #[arg(long, help_heading = "Rollout")]
    approve_before_promote: bool,
    /// blue-green: after the switch, keep the old version warm at 0% this
    /// long, rolling back on an absolute gate breach, e.g. 30s.
    #[arg(long, value_parser = parse_duration_ms, value_name = "DUR", help_heading = "Rollout")]
    scale_down_delay: Option<u64>,
    /// Keep each caller on one version: requests with the same value of
    /// this header go to the same version, e.g. x-user.
    #[arg(long, value_parser = parse_header_name, value_name = "NAME", help_heading = "Rollout")]
    sticky_header: Option<String>,
    /// POST each transition of the deployment as JSON to this URL.
    #[arg(long, value_parser = parse_url, value_name = "URL", help_heading = "Rollout")]
    notify: Option<String>,
    /// Hook requests: every *.json file in DIR (by name) is one hook object,
    /// e.g. {"phase": "pre-traffic", "request": {"method": "GET", "path": "/"},
    /// "expect": {"status": 200}}; the file name is its name unless it has one.
    #[arg(long, value_name = "DIR", help_heading = "Rollout")]
    hooks: Option<PathBuf>,

    /// Absolute limit on the candidate's error rate, e.g. 1% or 0.5%.
    #[arg(long, value_parser = parse_rate, value_name = "PCT", help_heading = "Gates")]
    max_error_rate: Option<f64>,
    /// Absolute limit on a latency quantile of the candidate, e.g. p99=200ms, p50=20ms, p99.9=1s.
    #[arg(long, value_parser = parse_latency_bound, value_name = "pNN=DUR", help_heading = "Gates")]
    max_latency: Option<LatencyBound>,
    /// Limit on the candidate's error rate above the baseline's in the same
    /// window, in percentage points, e.g. 1%.
    #[arg(long, value_parser = parse_rate, value_name = "PCT", help_heading = "Gates")]
    max_error_rate_increase: Option<f64>,
    /// Limit on the candidate's median latency above the baseline's in the
    /// same window, e.g. 20% (candidate ≤ baseline × 1.2).
    #[arg(long, value_parser = parse_increase, value_name = "PCT", help_heading = "Gates")]
    max_latency_increase: Option<f64>,
    /// Roll back when the oldest pending event of any of the function's
    /// queue subscriptions here is older than this, e.g. 1m (a candidate
    /// that stalls its queues).
    #[arg(long, value_parser = parse_duration_ms, value_name = "DUR", help_heading = "Gates")]
    max_queue_age: Option<u64>,
    /// Requests the candidate must serve in a step before its gates may
    /// pass (default 20 with gates; 0 without, so steps are time-based).
    #[arg(long, value_name = "N", help_heading = "Gates")]
    min_requests: Option<u64>,

    /// Show what the deployment would do (steps, gates, worst-case
    /// duration, rollback target) and change nothing.
    #[arg(long, conflicts_with = "wait")]
    plan: bool,
    /// Follow the deployment: print each event until it finishes; exit
    /// non-zero if it rolled back or was aborted. With --output json, one
    /// JSON line per answer and per event.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// Switch the route in one step.
    AllAtOnce,
    /// The candidate's weight follows --steps, judged at each step.
    Canary,
    /// The candidate's weight grows by --increment, judged at each step.
    Linear,
    /// The candidate is served only on <fn>--preview.<env>.localhost for
    /// --interval, then gets all traffic at once.
    BlueGreen,
}

impl From<Strategy> for wire::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::AllAtOnce => wire::Strategy::AllAtOnce,
            Strategy::Canary => wire::Strategy::Canary,
            Strategy::Linear => wire::Strategy::Linear,
            Strategy::BlueGreen => wire::Strategy::BlueGreen,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnInconclusive {
    /// Keep the step running until there is enough traffic (or the progress deadline).
    Wait,
    /// Treat a step without enough traffic as a failure and roll back.
    Fail,
}

impl From<OnInconclusive> for wire::OnInconclusive {
    fn from(o: OnInconclusive) -> Self {
        match o {
            OnInconclusive::Wait => wire::OnInconclusive::Wait,
            OnInconclusive::Fail => wire::OnInconclusive::Fail,
        }
    }
}

/// `p99=200ms` → quantile 0.99, 200 ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyBound {
    pub quantile: f64,
    pub ms: u64,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Function name.
    function: String,
    /// Environment to roll back (default: the server's default, production).
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Version to return to (default: the one that served before the current deployment).
    #[arg(long)]
    to: Option<u64>,
    /// Approve a --to version that never served in this environment and
    /// asks for more permissions than the current one (admin only; needed
    /// in production).
    #[arg(long)]
    allow_new_permissions: bool,
    /// Approve a --to version that never served in this environment and
    /// breaks the event contracts of the current one (admin only; needed
    /// in production).
    #[arg(long)]
    allow_breaking_contract: bool,
    /// Approve a --to version that never served in this environment and
    /// lacks the evidence its pipeline asks for (admin only; audited).
    #[arg(long)]
    allow_missing_evidence: bool,
}

pub async fn deploy(args: DeployArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    check_names(&args.function, args.env.as_deref())?;
    let body = request_body(&args)?;
    let v = client
        .post(&format!("/v1/functions/{}/deploy", args.function), &body)
        .await?;

    if args.plan || v["dry_run"].as_bool() == Some(true) {
        emit(out, &v, |v| {
            print_plan(&v["plan"]);
            super::trust::print_deploy_trust(v, &args.function);
            println!("nothing changed (--plan)");
        });
        return Ok(());
    }

    let d = &v["deployment"];
    let progressive = d["strategy"]
        .as_str()
        .is_some_and(|st| st != wire::Strategy::AllAtOnce.as_str());
    let id = d["id"].as_u64();
    if args.wait && out == OutputFormat::Json {
        println!("{v}");
    } else {
        emit(out, &v, |v| {
            if progressive {
                report_started(v, &args.function, args.version);
            } else {
                report(v, &args.function, "deployed");
            }
            super::trust::print_deploy_trust(v, &args.function);
        });
    }
    match id {
        Some(id) if args.wait => follow(client, id, out).await,
        _ => Ok(()),
    }
}

/// The deploy request: `rollout` only when a strategy other than
/// all-at-once or any rollout flag is given (the server judges the rest).
fn request_body(args: &DeployArgs) -> anyhow::Result<Value> {
    let body = DeployRequest {
        version: args.version,
        environment: args.env.clone(),
        reason: args.reason.clone(),
        rollout: rollout_spec(args)?,
        dry_run: args.plan,
        allow_new_permissions: args.allow_new_permissions,
        allow_breaking_contract: args.allow_breaking_contract,
        allow_missing_evidence: args.allow_missing_evidence,
    };
    Ok(serde_json::to_value(body)?)
}

fn rollout_spec(args: &DeployArgs) -> anyhow::Result<Option<RolloutSpec>> {
    let spec = RolloutSpec {
        steps: (!args.steps.is_empty()).then(|| args.steps.clone()),
        increment: args.increment,
        interval_ms: args.interval,
        gates: Gates {
            max_error_rate: args.max_error_rate,
            max_latency: args.max_latency.map(|l| LatencyLimit {
                quantile: l.quantile,
                ms: l.ms as f64,
            }),
            max_error_rate_increase: args.max_error_rate_increase,
            max_latency_increase: args.max_latency_increase,
            min_requests: args.min_requests,
            max_queue_age_ms: args.max_queue_age,
        },
        on_inconclusive: args.on_inconclusive.map(Into::into).unwrap_or_default(),
        progress_deadline_ms: args.progress_deadline,
        approve_before_promote: args.approve_before_promote,
        scale_down_delay_ms: args.scale_down_delay,
        sticky_header: args.sticky_header.clone(),
        notify: args.notify.clone(),
        hooks: match &args.hooks {
            Some(dir) => load_hooks(dir)?,
            None => Vec::new(),
        },
        ..RolloutSpec::new(args.strategy.into())
    };
    if spec == RolloutSpec::new(wire::Strategy::AllAtOnce) {
        return Ok(None);
    }
    Ok(Some(spec))
}

/// What the binding percent-encodes in a `ce-*` header value: space, `"`,
/// `%` and anything outside printable ASCII.
const CE_HEADER: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'%');

/// A hook file holding `"event": {…}` or `"events": [{…}, …]` (CloudEvents
/// in the structured JSON form): one pre-traffic hook per event, sent to
/// the candidate in binary mode (`POST /`, attributes as percent-encoded
/// `ce-*` headers, `data` as the body), expecting a success (any 2xx)
/// unless the file says what to expect.
fn event_hooks(obj: &serde_json::Map<String, Value>, stem: &str) -> anyhow::Result<Vec<Hook>> {
    let events: Vec<&Value> = match (obj.get("event"), obj.get("events")) {
        (Some(e), None) => vec![e],
        (None, Some(Value::Array(es))) if !es.is_empty() => es.iter().collect(),
        _ => bail!("give \"event\": {{…}} or a non-empty \"events\": [{{…}}, …], not both"),
    };
    let expect = match obj.get("expect") {
        Some(e) => serde_json::from_value(e.clone()).context("\"expect\"")?,
        None => wire::HookExpect {
            status: None,
            body_contains: None,
            success: true,
        },
    };
    let phase = match obj.get("phase") {
        Some(p) => serde_json::from_value(p.clone()).context("\"phase\"")?,
        None => wire::HookPhase::PreTraffic,
    };
    let mut hooks = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let e = e.as_object().context("an event is a JSON object")?;
        let mut headers = std::collections::BTreeMap::new();
        for required in ["id", "source", "type"] {
            if !e.get(required).is_some_and(Value::is_string) {
                bail!("event {i} has no \"{required}\" string");
            }
        }
        headers.insert("ce-specversion".to_owned(), "1.0".to_owned());
        let mut body = None;
        for (k, v) in e {
            match k.as_str() {
                "specversion" | "data_base64" => {}
                "data" => {
                    body = Some(match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                }
                "datacontenttype" => {
                    headers.insert("content-type".into(), s(v));
                }
                _ => {
                    let text = s(v);
                    let encoded =
                        percent_encoding::utf8_percent_encode(&text, CE_HEADER).to_string();
                    headers.insert(format!("ce-{k}"), encoded);
                }
            }
        }
        if body.is_some() && !headers.contains_key("content-type") {
            headers.insert("content-type".into(), "application/json".into());
        }
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) => format!("{n}-{i}"),
            None if obj.contains_key("events") => format!("{stem}-{i}"),
            None => stem.to_owned(),
        };
        hooks.push(Hook {
            name,
            phase,
            request: wire::HookRequest {
                method: "POST".into(),
                path: "/".into(),
                headers,
                body,
            },
            expect: expect.clone(),
        });
    }
    Ok(hooks)
}

/// Every `*.json` file of `dir`, sorted by file name, as one hook object;
/// a hook without a "name" is named after its file.
pub fn load_hooks(dir: &Path) -> anyhow::Result<Vec<Hook>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--hooks: cannot read directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("--hooks: cannot read directory {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "--hooks: no *.json hook files in {} (each file is one hook, e.g. {{\"phase\": \"pre-traffic\", \"request\": {{\"method\": \"GET\", \"path\": \"/\"}}, \"expect\": {{\"status\": 200}}}})",
            dir.display()
        );
    }
    let mut hooks = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read hook file {}", path.display()))?;
        let mut hook: Value = serde_json::from_str(&text)
            .with_context(|| format!("hook file {} is not valid JSON", path.display()))?;
        // Recorded events: each one a hook sending it in binary mode.
        if let Some(obj) = hook.as_object()
            && (obj.contains_key("event") || obj.contains_key("events"))
        {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            hooks.extend(
                event_hooks(obj, &stem).with_context(|| format!("hook file {}", path.display()))?,
            );
            continue;
        }
        let Some(obj) = hook.as_object_mut() else {
            bail!(
                "hook file {} must hold one JSON object, e.g. {{\"request\": {{\"method\": \"GET\", \"path\": \"/\"}}}}",
                path.display()
            );
        };
        if !obj.get("request").is_some_and(Value::is_object) {
            bail!(
                "hook file {} has no \"request\" object: a hook needs e.g. \"request\": {{\"method\": \"GET\", \"path\": \"/\"}}",
                path.display()
            );
        }
        if !obj.contains_key("name") {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            obj.insert("name".into(), json!(stem));
        }
        let hook: Hook = serde_json::from_value(hook)
            .with_context(|| format!("hook file {} is not a hook", path.display()))?;
        hooks.push(hook);
    }
    Ok(hooks)
}

/// `started canary of hello@2 in production (deployment 7): 1=100% 2=0% →
/// steps 10% 50% 100%, every 30s`, and how to watch it.
fn report_started(v: &Value, function: &str, version: u64) {
    let d = &v["deployment"];
    let plan = if v["plan"].is_object() {
        &v["plan"]
    } else {
        &d["plan"]
    };
    let candidate = plan["candidate"]["version"]
        .as_u64()
        .or(d["candidate"].as_u64())
        .unwrap_or(version);
    let current = if v["weights"].is_array() {
        &v["weights"]
    } else {
        &d["to_weights"]
    };
    // By version, the candidate at 0% if the route does not list it yet.
    let mut now: Vec<Value> = current.as_array().cloned().unwrap_or_default();
    if !now.iter().any(|x| x["version"].as_u64() == Some(candidate)) {
        now.push(json!({"version": candidate, "weight": 0}));
    }
    now.sort_by_key(|x| x["version"].as_u64());
    let now = weights(&Value::Array(now));
    let steps: Vec<String> = plan["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|st| format!("{}%", s(&st["weight"])))
        .collect();
    let mut line = format!(
        "started {} of {function}@{candidate} in {} (deployment {}): {now}",
        s(&d["strategy"]),
        s(&d["environment"]),
        d["id"],
    );
    if !steps.is_empty() {
        line.push_str(&format!(" → steps {}", steps.join(" ")));
    }
    let every = plan["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|st| st["gated"].as_bool() == Some(true) && st["duration_ms"].as_u64() > Some(0))
        .map(|st| duration_ms(&st["duration_ms"]));
    if let Some(every) = every {
        line.push_str(&format!(", every {every}"));
    }
    println!("{line}");
    let env = s(&d["environment"]);
    println!("watch: seal rollout status {function} -e {env} --watch");
    if plan["approve_before_promote"].as_bool() == Some(true) {
        println!(
            "it pauses before the last step: seal approve {} (or seal promote / seal abort)",
            d["id"]
        );
    }
}

/// The plan of a `--plan` (dry run) answer, for humans.
pub fn print_plan(p: &Value) {
    if !p.is_object() {
        println!("the server returned no plan");
        return;
    }
    let version = |x: &Value| {
        if x.is_object() {
            format!(
                "{}@{} {}",
                s(&p["function"]),
                s(&x["version"]),
                s(&x["digest"])
            )
        } else {
            "-".into()
        }
    };
    let row = |k: &str, v: String| println!("  {k:<18} {v}");
    println!(
        "plan: {} of {} in {}",
        s(&p["strategy"]),
        s(&p["function"]),
        s(&p["environment"])
    );
    row("environment", s(&p["environment"]));
    row("current route", weights(&p["current_route"]));
    row("candidate", version(&p["candidate"]));
    row("baseline", version(&p["baseline"]));
    row("rollback target", weights(&p["rollback_target"]));
    println!("  steps:");
    for st in p["steps"].as_array().into_iter().flatten() {
        let dur = match st["duration_ms"].as_u64() {
            Some(0) | None => String::new(),
            Some(_) => format!("for {}", duration_ms(&st["duration_ms"])),
        };
        let mut gated = if st["gated"].as_bool() == Some(true) {
            "gated".to_string()
        } else {
            "not gated".to_string()
        };
        if st["weight"].as_u64() == Some(0) {
            gated.push_str(" (preview only)");
        }
        println!(
            "    {:>2}. {:>4}  {:<12} {gated}",
            s(&st["index"]),
            format!("{}%", s(&st["weight"])),
            dur
        );
    }
    let gates: Vec<&Value> = p["gates"].as_array().into_iter().flatten().collect();
    if gates.is_empty() {
        row("gates", "none".into());
    } else {
        println!("  gates:");
        for g in gates {
            println!("    {} {}", s(&g["gate"]), s(&g["threshold"]));
        }
    }
    row("min requests", s(&p["min_requests"]));
    row("on inconclusive", s(&p["on_inconclusive"]));
    row("progress deadline", duration_ms(&p["progress_deadline_ms"]));
    row(
        "approval",
        if p["approve_before_promote"].as_bool() == Some(true) {
            "required before the last step (seal approve ID)".into()
        } else {
            "not required".into()
        },
    );
    let hooks: Vec<String> = p["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| format!("{} ({})", s(&h["name"]), s(&h["phase"])))
        .collect();
    row(
        "hooks",
        if hooks.is_empty() {
            "none".into()
        } else {
            hooks.join(", ")
        },
    );
    row("sticky header", s(&p["sticky_header"]));
    if !p["scale_down_delay_ms"].is_null() {
        row("scale-down delay", duration_ms(&p["scale_down_delay_ms"]));
    }
    row("notify", s(&p["notify"]));
    row("worst case", duration_ms(&p["worst_case_ms"]));
}

/// Polls the deployment every 500 ms, printing each new event, until it is
/// no longer active; an error if it ended rolled back or aborted.
async fn follow(client: &Client, id: u64, out: OutputFormat) -> anyhow::Result<()> {
    let poll = async {
        let mut last_seq = 0u64;
        loop {
            let v = client.get(&format!("/v1/deployments/{id}")).await?;
            for e in v["events"].as_array().into_iter().flatten() {
                let seq = e["seq"].as_u64().unwrap_or(0);
                if seq <= last_seq {
                    continue;
                }
                last_seq = seq;
                match out {
                    OutputFormat::Json => println!("{e}"),
                    OutputFormat::Text => super::query::print_event(e),
                }
            }
            let d = &v["deployment"];
            let state = d["state"].as_str().unwrap_or("?");
            if !is_active(state) {
                match out {
                    OutputFormat::Json => println!("{v}"),
                    OutputFormat::Text => println!(
                        "deployment {id} {}: {} serves {}",
                        state.replace('_', " "),
                        s(&d["function"]),
                        weights(&d["to_weights"])
                    ),
                }
                return match state {
                    "rolled_back" => {
                        let reason = v["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .rev()
                            .find(|e| e["kind"] == "rolled_back")
                            .and_then(|e| e["detail"]["reason"].as_str())
                            .unwrap_or("no reason recorded");
                        bail!("deployment {id} rolled back: {reason}")
                    }
                    "aborted" => bail!("deployment {id} was aborted"),
                    _ => Ok(()),
                };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        r = poll => r,
        _ = tokio::signal::ctrl_c() => bail!(
            "stopped waiting; deployment {id} goes on (seal deployments show {id}, seal abort {id})"
        ),
    }
}

/// pending | progressing | paused.
pub fn is_active(state: &str) -> bool {
    matches!(state, "pending" | "progressing" | "paused")
}

pub async fn rollback(
    args: RollbackArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    check_names(&args.function, args.env.as_deref())?;
    let v = client
        .post(
            &format!("/v1/functions/{}/rollback", args.function),
            &serde_json::to_value(RollbackRequest {
                environment: args.env.clone(),
                to: args.to,
                allow_new_permissions: args.allow_new_permissions,
                allow_breaking_contract: args.allow_breaking_contract,
                allow_missing_evidence: args.allow_missing_evidence,
            })?,
        )
        .await?;
    emit(out, &v, |v| {
        report(v, &args.function, "rolled back");
        super::trust::print_deploy_trust(v, &args.function);
    });
    Ok(())
}

/// Checks names before they go into a URL, with the server's own rule.
pub fn check_names(function: &str, env: Option<&str>) -> anyhow::Result<()> {
    seal_artifact::validate_function_name(function)?;
    if let Some(env) = env {
        seal_artifact::validate_environment_name(env)?;
    }
    Ok(())
}

fn report(v: &serde_json::Value, function: &str, verb: &str) {
    if v["unchanged"].as_bool() == Some(true) {
        println!(
            "{function} already serves {} there; nothing changed",
            weights(&v["weights"])
        );
        return;
    }
    let d = &v["deployment"];
    println!(
        "{verb} {function} in {}: {} → {} (deployment {})",
        crate::output::s(&d["environment"]),
        weights(&d["from_weights"]),
        weights(&d["to_weights"]),
        d["id"]
    );
}

// ---- flag parsers -------------------------------------------------------

/// `"1"` → 0.01, `"0.5"` → 0.005, `"99.9"` → 0.999: a plain decimal
/// divided by 100 by moving the point, so the fraction is the nearest f64
/// to the decimal the user wrote. `None` unless digits with at most one '.'.
fn decimal_percent_to_fraction(num: &str) -> Option<f64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let shifted = if int.len() > 2 {
        let (hi, lo) = int.split_at(int.len() - 2);
        format!("{hi}.{lo}{frac}")
    } else {
        format!("0.{int:0>2}{frac}")
    };
    shifted.parse().ok()
}

/// A percentage with its % sign, as a fraction: `1%` → 0.01.
fn percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(if decimal_percent_to_fraction(t).is_some() {
            format!("invalid percentage {s:?}: add a % sign, e.g. {t}%")
        } else {
            format!("invalid percentage {s:?}: use e.g. 1% or 0.5%")
        });
    };
    decimal_percent_to_fraction(num.trim())
        .ok_or_else(|| format!("invalid percentage {s:?}: use e.g. 1% or 0.5%"))
}

/// A rate from 0% to 100%, as a fraction: `1%` → 0.01, `0.5%` → 0.005.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let f = percent(s)?;
    if f > 1.0 {
        return Err(format!("invalid percentage {s:?}: a rate is at most 100%"));
    }
    Ok(f)
}

/// A relative increase, 0% or more (may exceed 100%), as a fraction: `20%` → 0.2.
pub fn parse_increase(s: &str) -> Result<f64, String> {
    percent(s)
}

/// A traffic weight: a whole percentage from 1 to 100, `10` or `10%`.
pub fn parse_weight(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    match t.parse::<u32>() {
        Ok(w) if (1..=100).contains(&w) => Ok(w),
        _ => Err(format!(
            "invalid weight {s:?}: use a whole percentage from 1 to 100, e.g. 10"
        )),
    }
}

/// A duration such as `30s`, `5m`, `500ms`, in whole milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e}; use e.g. 30s, 5m or 500ms"))?;
    let ms =
        u64::try_from(d.as_millis()).map_err(|_| format!("invalid duration {s:?}: too long"))?;
    if ms == 0 && !d.is_zero() {
        return Err(format!("invalid duration {s:?}: shorter than 1ms"));
    }
    Ok(ms)
}

/// `p99=200ms` → {quantile 0.99, 200 ms}; `p50=20ms`, `p99.9=1s`.
pub fn parse_latency_bound(s: &str) -> Result<LatencyBound, String> {
    let bad = |why: &str| format!("invalid latency bound {s:?}: {why}; use e.g. p99=200ms");
    let t = s.trim();
    let Some((q, dur)) = t.split_once('=') else {
        return Err(bad("expected pNN=DURATION"));
    };
    let q = q.trim();
    let Some(num) = q.strip_prefix('p').or_else(|| q.strip_prefix('P')) else {
        return Err(bad("the quantile starts with p, as in p99"));
    };
    let quantile = decimal_percent_to_fraction(num)
        .filter(|q| *q > 0.0 && *q < 1.0)
        .ok_or_else(|| bad("the quantile must be between p0 and p100, exclusive"))?;
    let d = humantime::parse_duration(dur.trim())
        .map_err(|e| bad(&format!("bad duration {:?} ({e})", dur.trim())))?;
    if d.is_zero() || d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad(
            "the latency must be a whole number of milliseconds, 1ms or more",
        ));
    }
    let ms = u64::try_from(d.as_millis()).map_err(|_| bad("the latency is too long"))?;
    Ok(LatencyBound { quantile, ms })
}

/// A header name as HTTP allows it.
pub fn parse_header_name(s: &str) -> Result<String, String> {
    reqwest::header::HeaderName::from_bytes(s.trim().as_bytes())
        .map(|h| h.as_str().to_owned())
        .map_err(|_| format!("invalid header name {s:?}: use e.g. x-user"))
}

/// An http:// or https:// URL.
pub fn parse_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    let rest = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(t.to_owned()),
        _ => Err(format!(
            "invalid URL {s:?}: use an http:// or https:// URL, e.g. http://127.0.0.1:9999/hook"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        args: DeployArgs,
    }

    fn body(argv: &[&str]) -> Value {
        let mut full = vec!["deploy", "hello", "2"];
        full.extend_from_slice(argv);
        let t = T::try_parse_from(full).expect("parses");
        request_body(&t.args).expect("body")
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_rate("1%"), Ok(0.01));
        assert_eq!(parse_rate("0.5%"), Ok(0.005));
        assert_eq!(parse_rate("0%"), Ok(0.0));
        assert_eq!(parse_rate("100%"), Ok(1.0));
        assert_eq!(parse_rate(".5%"), Ok(0.005));
        assert_eq!(parse_rate("0.1%"), Ok(0.001));
        assert_eq!(parse_increase("20%"), Ok(0.2));
        assert_eq!(parse_increase("150%"), Ok(1.5));
        assert_eq!(
            parse_rate("abc").unwrap_err(),
            "invalid percentage \"abc\": use e.g. 1% or 0.5%"
        );
        assert_eq!(
            parse_rate("1").unwrap_err(),
            "invalid percentage \"1\": add a % sign, e.g. 1%"
        );
        assert!(parse_rate("101%").unwrap_err().contains("at most 100%"));
        for bad in ["-1%", "%", "1.2.3%", "1e2%", "inf%", "NaN%", "", "1 %x"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn weights_and_durations() {
        assert_eq!(parse_weight("10"), Ok(10));
        assert_eq!(parse_weight("100%"), Ok(100));
        for bad in ["0", "101", "ten", "-5", "2.5"] {
            assert!(
                parse_weight(bad).unwrap_err().contains("from 1 to 100"),
                "{bad:?}"
            );
        }
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1m 30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert!(parse_duration_ms("30").unwrap_err().contains("e.g. 30s"));
        assert!(parse_duration_ms("10us").unwrap_err().contains("1ms"));
    }

    #[test]
    fn latency_bounds() {
        let lb = |q, ms| Ok(LatencyBound { quantile: q, ms });
        assert_eq!(parse_latency_bound("p99=200ms"), lb(0.99, 200));
        assert_eq!(parse_latency_bound("p50=20ms"), lb(0.5, 20));
        assert_eq!(parse_latency_bound("p99.9=1s"), lb(0.999, 1000));
        assert_eq!(parse_latency_bound("p5=1s"), lb(0.05, 1000));
        assert_eq!(parse_latency_bound("P90=1m"), lb(0.9, 60_000));
        let err = |s: &str| parse_latency_bound(s).unwrap_err();
        assert_eq!(
            err("abc"),
            "invalid latency bound \"abc\": expected pNN=DURATION; use e.g. p99=200ms"
        );
        assert!(err("99=200ms").contains("starts with p"));
        assert!(err("p100=1s").contains("between p0 and p100"));
        assert!(err("p0=1s").contains("between p0 and p100"));
        assert!(err("pxx=1s").contains("between p0 and p100"));
        assert!(err("p99=200").contains("bad duration"));
        assert!(err("p99=0ms").contains("whole number of milliseconds"));
        assert!(err("p99=1500us").contains("whole number of milliseconds"));
    }

    #[test]
    fn headers_and_urls() {
        assert_eq!(parse_header_name("X-User"), Ok("x-user".into()));
        assert!(parse_header_name("bad header").is_err());
        assert!(parse_url("http://127.0.0.1:9999/hook").is_ok());
        assert!(parse_url("https://example.com").is_ok());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn all_at_once_sends_no_rollout() {
        let b = body(&["-e", "production"]);
        assert_eq!(
            b,
            json!({"version": 2, "environment": "production", "reason": null})
        );
        let b = body(&["--plan"]);
        assert_eq!(b["dry_run"], true);
        assert!(b.get("rollout").is_none());
        let b = body(&["--allow-new-permissions"]);
        assert_eq!(b["allow_new_permissions"], true);
        assert!(b.get("rollout").is_none());
        let b = body(&["--allow-breaking-contract"]);
        assert_eq!(b["allow_breaking_contract"], true);
        assert!(b.get("allow_new_permissions").is_none());
        let b = body(&["--allow-missing-evidence"]);
        assert_eq!(b["allow_missing_evidence"], true);
        assert!(b.get("allow_breaking_contract").is_none());
    }

    #[test]
    fn rollout_flags_build_the_contract_body() {
        let b = body(&[
            "--strategy",
            "canary",
            "--steps",
            "10,50,100",
            "--interval",
            "30s",
            "--max-error-rate",
            "1%",
            "--max-latency",
            "p99=200ms",
            "--max-error-rate-increase",
            "0.5%",
            "--max-latency-increase",
            "20%",
            "--min-requests",
            "50",
            "--on-inconclusive",
            "fail",
            "--progress-deadline",
            "10m",
            "--approve-before-promote",
            "--sticky-header",
            "x-user",
            "--notify",
            "http://127.0.0.1:9999/hook",
        ]);
        assert_eq!(
            b["rollout"],
            json!({
                "strategy": "canary",
                "steps": [10, 50, 100],
                "interval_ms": 30000,
                "gates": {
                    "max_error_rate": 0.01,
                    "max_latency": {"quantile": 0.99, "ms": 200.0},
                    "max_error_rate_increase": 0.005,
                    "max_latency_increase": 0.2,
                    "min_requests": 50
                },
                "on_inconclusive": "fail",
                "progress_deadline_ms": 600000,
                "approve_before_promote": true,
                "sticky_header": "x-user",
                "notify": "http://127.0.0.1:9999/hook"
            })
        );
        assert!(b.get("dry_run").is_none());
        let b = body(&["--strategy", "linear", "--increment", "20"]);
        assert_eq!(b["rollout"], json!({"strategy": "linear", "increment": 20}));
        let b = body(&[
            "--strategy",
            "blue-green",
            "--interval",
            "1m",
            "--scale-down-delay",
            "30s",
        ]);
        assert_eq!(
            b["rollout"],
            json!({"strategy": "blue-green", "interval_ms": 60000, "scale_down_delay_ms": 30000})
        );
        // A gate without a strategy is sent as all-at-once; the server refuses it.
        let b = body(&["--max-error-rate", "1%"]);
        assert_eq!(b["rollout"]["strategy"], "all-at-once");
        let b = body(&["--strategy", "canary"]);
        assert_eq!(b["rollout"], json!({"strategy": "canary"}));
    }

    #[test]
    fn bad_flags_are_refused() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["deploy", "hello", "2"];
            full.extend_from_slice(argv);
            T::try_parse_from(full)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(
            parse(&["--max-error-rate", "abc"])
                .unwrap_err()
                .contains("invalid percentage \"abc\": use e.g. 1% or 0.5%")
        );
        assert!(parse(&["--steps", "10,0"]).is_err());
        assert!(parse(&["--strategy", "big-bang"]).is_err());
        assert!(parse(&["--plan", "--wait"]).is_err());
        assert!(parse(&["--on-inconclusive", "maybe"]).is_err());
    }

    #[test]
    fn hooks_from_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        write(
            "b-post.json",
            r#"{"phase": "post-traffic", "request": {"method": "GET", "path": "/"}}"#,
        );
        write(
            "a-root.json",
            r#"{"name": "get-root", "phase": "pre-traffic", "request": {"method": "GET", "path": "/", "headers": {"k": "v"}}, "expect": {"status": 200, "body_contains": "hello"}}"#,
        );
        write("notes.txt", "not a hook");
        let hooks = load_hooks(dir.path()).expect("hooks");
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "get-root");
        assert_eq!(hooks[0].expect.body_contains.as_deref(), Some("hello"));
        assert_eq!(hooks[0].request.headers["k"], "v");
        assert_eq!(hooks[1].name, "b-post");
        assert_eq!(hooks[1].phase, wire::HookPhase::PostTraffic);

        let dir_str = dir.path().to_str().expect("utf-8");
        let b = body(&["--strategy", "canary", "--hooks", dir_str]);
        assert_eq!(
            b["rollout"]["hooks"],
            serde_json::to_value(&hooks).expect("json")
        );
        assert_eq!(b["rollout"]["hooks"][0]["name"], "get-root");
        assert_eq!(b["rollout"]["hooks"][1]["phase"], "post-traffic");

        write("c-broken.json", "{not json");
        let err = format!("{:#}", load_hooks(dir.path()).unwrap_err());
        assert!(err.contains("c-broken.json is not valid JSON"), "{err}");
        std::fs::remove_file(dir.path().join("c-broken.json")).expect("rm");

        write("d-norequest.json", r#"{"phase": "pre-traffic"}"#);
        let err = format!("{:#}", load_hooks(dir.path()).unwrap_err());
        assert!(err.contains("d-norequest.json has no \"request\""), "{err}");

        let empty = tempfile::tempdir().expect("tempdir");
        let err = format!("{:#}", load_hooks(empty.path()).unwrap_err());
        assert!(err.contains("no *.json hook files"), "{err}");
        let err = format!(
            "{:#}",
            load_hooks(&empty.path().join("missing")).unwrap_err()
        );
        assert!(err.contains("cannot read directory"), "{err}");
    }
}
