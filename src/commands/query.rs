//! Read-only commands: functions, versions, status, deployments, inspect, audit.

use crate::client::Client;
use crate::output::{
    OutputFormat, emit, opt, s, table, time, time_ms, weights, weights_of, weights_opt,
};
use anyhow::bail;
use clap::{Args, Subcommand};
use seal_api_types::catalog::{
    AuditEntries, CreateEnvironment, DeploymentDetail, DeploymentList, EnvironmentCreated,
    EnvironmentView, Environments, FunctionList, FunctionStatus, Inspection, SetProtection,
    VersionList,
};
use seal_api_types::promotion::SetPipeline;
use seal_api_types::records::{AuditVerification, DeploymentEvent};
use seal_api_types::rollout::Strategy;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct FunctionArg {
    /// Function name.
    function: String,
}

/// `seal deployments FUNCTION [-e ENV]` lists; `seal deployments show ID`
/// shows one.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DeploymentsArgs {
    #[command(subcommand)]
    command: Option<DeploymentsCommand>,
    /// Function name (a function named "show" is listed with `seal deployments -- show`).
    #[arg(required = true)]
    function: Option<String>,
    /// Only this environment.
    #[arg(long, short = 'e')]
    env: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DeploymentsCommand {
    /// Show one deployment: every transition, hook and gate evaluation with its numbers.
    Show(DeploymentArg),
}

#[derive(Args, Debug)]
pub struct DeploymentArg {
    /// Deployment id (see `seal deployments FUNCTION`).
    id: u64,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// FUNCTION@VERSION, e.g. hello@2.
    target: String,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many entries to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,

    #[command(subcommand)]
    command: Option<AuditCommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain from the first entry and report the first
    /// broken link (an edited, removed or reordered entry). Exits non-zero
    /// when the chain is broken. Keep the printed head hash somewhere else
    /// to detect later that the end of the log was cut off.
    Verify,
}

pub async fn functions(client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let v: FunctionList = client.get_as("/v1/functions").await?;
    emit(out, &v, |v| {
        table(&["FUNCTION", "LATEST", "ROUTES"], function_rows(v));
    });
    Ok(())
}

/// The rows of `seal functions`.
fn function_rows(v: &FunctionList) -> Vec<Vec<String>> {
    v.functions
        .iter()
        .map(|f| {
            let routes = f
                .routes
                .iter()
                .map(|r| format!("{}: {}", r.environment, weights_of(&r.weights)))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                f.function.clone(),
                opt(f.latest),
                if routes.is_empty() {
                    "-".into()
                } else {
                    routes
                },
            ]
        })
        .collect()
}

pub async fn versions(args: FunctionArg, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, None)?;
    let v: VersionList = client
        .get_as(&format!("/v1/functions/{}/versions", args.function))
        .await?;
    emit(out, &v, |v| {
        let rows = v
            .versions
            .iter()
            .map(|x| {
                vec![
                    x.version.to_string(),
                    x.digest.clone(),
                    x.component_size.to_string(),
                    time_ms(x.created_at),
                    x.created_by.clone(),
                ]
            })
            .collect();
        table(&["VERSION", "DIGEST", "SIZE", "CREATED", "BY"], rows);
    });
    Ok(())
}

pub async fn status(args: FunctionArg, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, None)?;
    let v: FunctionStatus = client
        .get_as(&format!("/v1/functions/{}", args.function))
        .await?;
    emit(out, &v, |v| {
        println!(
            "function {}  (latest version {})",
            v.function,
            opt(v.latest_version)
        );
        let rows = status_rows(v);
        if rows.is_empty() {
            println!(
                "not deployed anywhere; deploy with `seal deploy {} N`",
                v.function
            );
        } else {
            table(
                &[
                    "ENV",
                    "VERSION",
                    "WEIGHT",
                    "DIGEST",
                    "SERVING",
                    "REQUESTS",
                    "ERRORS",
                    "DEPLOYMENT",
                ],
                rows,
            );
        }
        for d in &v.drift {
            let show = |x: &Option<String>| x.clone().unwrap_or_else(|| "(absent)".into());
            println!(
                "drift in {}: {} is {}, the release file says {}{}",
                d.environment,
                d.field,
                show(&d.actual),
                show(&d.desired),
                d.why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            );
        }
    });
    Ok(())
}

/// The rows of `seal status`: one per version of each route.
fn status_rows(v: &FunctionStatus) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for r in &v.routes {
        for x in &r.versions {
            rows.push(vec![
                r.environment.clone(),
                x.version.to_string(),
                format!("{}%", x.weight),
                opt(x.digest.as_deref()),
                if x.serving { "yes".into() } else { "NO".into() },
                opt(x.requests),
                opt(x.errors),
                r.deployment_id.to_string(),
            ]);
        }
    }
    rows
}

pub async fn deployments(
    args: DeploymentsArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let function = match (args.command, args.function) {
        (Some(DeploymentsCommand::Show(arg)), _) => return deployment(arg, client, out).await,
        (None, Some(function)) => function,
        (None, None) => {
            bail!("which function? `seal deployments FUNCTION` or `seal deployments show ID`")
        }
    };
    super::deploy::check_names(&function, args.env.as_deref())?;
    let mut path = format!("/v1/functions/{function}/deployments");
    if let Some(env) = &args.env {
        path.push_str(&format!("?environment={env}"));
    }
    let v: DeploymentList = client.get_as(&path).await?;
    emit(out, &v, |v| {
        table(
            &[
                "ID", "ENV", "KIND", "STRATEGY", "STATE", "FROM", "TO", "BY", "AT",
            ],
            deployment_rows(v),
        );
    });
    Ok(())
}

/// The rows of `seal deployments FUNCTION`.
fn deployment_rows(v: &DeploymentList) -> Vec<Vec<String>> {
    v.deployments
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                d.environment.clone(),
                d.kind.as_str().to_owned(),
                d.strategy.as_str().to_owned(),
                d.state.as_str().to_owned(),
                weights_opt(d.from_weights.as_deref()),
                weights_of(&d.to_weights),
                d.actor.clone(),
                time_ms(d.created_at),
            ]
        })
        .collect()
}

pub async fn deployment(
    args: DeploymentArg,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let v: DeploymentDetail = client
        .get_as(&format!("/v1/deployments/{}", args.id))
        .await?;
    emit(out, &v, print_deployment);
    Ok(())
}

/// Prints a `GET /v1/deployments/{id}` answer: the deployment, then every
/// event with its numbers.
pub fn print_deployment(v: &DeploymentDetail) {
    for line in deployment_lines(v) {
        println!("{line}");
    }
}

/// The lines [`print_deployment`] prints.
pub fn deployment_lines(v: &DeploymentDetail) -> Vec<String> {
    let d = &v.deployment;
    let mut lines = vec![format!(
        "deployment {} of {} in {}: {} {} → {} ({}, by {}, {})",
        d.id,
        d.function,
        d.environment,
        d.kind.as_str(),
        weights_opt(d.from_weights.as_deref()),
        weights_of(&d.to_weights),
        d.state.as_str(),
        d.actor,
        time_ms(d.created_at),
    )];
    if d.strategy != Strategy::AllAtOnce {
        let steps = d
            .plan
            .as_ref()
            .and_then(|p| p["steps"].as_array())
            .map(Vec::len);
        let step = match steps {
            Some(n) => format!(", step {}/{n}", d.step),
            None => format!(", step {}", d.step),
        };
        lines.push(format!(
            "strategy: {}, baseline {}, candidate {}{step}",
            d.strategy.as_str(),
            opt(d.baseline),
            opt(d.candidate),
        ));
    }
    if let Some(reason) = &d.reason {
        lines.push(format!("reason: {reason}"));
    }
    if let Some(finished) = d.finished_at {
        lines.push(format!("finished: {}", time_ms(finished)));
    }
    if let Some(token) = &v.preview_token {
        lines.push(format!(
            "preview token: {token} (send as seal-preview-token with seal-version: {} or on the preview host; such requests count in the gates)",
            opt(d.candidate)
        ));
    }
    for e in &v.events {
        lines.extend(deployment_event_lines(e));
    }
    lines
}

/// One deployment event as a line, plus one line per gate result for
/// `gate` and `rolled_back` events.
pub fn print_event(e: &Value) {
    for line in event_lines(e) {
        println!("{line}");
    }
}

/// [`print_event`]'s lines of an event as JSON.
pub fn event_lines(e: &Value) -> Vec<String> {
    lines_of_event(
        &time(&e["at"]),
        e["kind"].as_str().unwrap_or("?"),
        &e["detail"],
    )
}

/// [`print_event`]'s lines of a typed event.
pub fn deployment_event_lines(e: &DeploymentEvent) -> Vec<String> {
    lines_of_event(&time_ms(e.at), &e.kind, &e.detail)
}

/// An event's lines from its time (already formatted), kind and detail.
fn lines_of_event(at: &str, kind: &str, d: &Value) -> Vec<String> {
    let mut extra = Vec::new();
    let summary = match kind {
        "started" => {
            let mut parts = Vec::new();
            if let Some(st) = d["strategy"].as_str() {
                parts.push(st.to_string());
            }
            let to = if d["to"].is_null() {
                &d["weights"]
            } else {
                &d["to"]
            };
            if !d["from"].is_null() || !to.is_null() {
                parts.push(format!("{} → {}", weights(&d["from"]), weights(to)));
            }
            if !d["baseline"].is_null() || !d["candidate"].is_null() {
                parts.push(format!(
                    "(baseline {}, candidate {})",
                    s(&d["baseline"]),
                    s(&d["candidate"])
                ));
            }
            if parts.is_empty() {
                other_detail(d)
            } else {
                parts.join(" ")
            }
        }
        "hook" => {
            let passed = match d["passed"].as_bool() {
                Some(true) => "passed",
                Some(false) => "FAILED",
                None => "?",
            };
            let mut line = format!("{} ({}): {passed}", s(&d["name"]), s(&d["phase"]));
            let inner = &d["detail"];
            let status = if d["status"].is_null() {
                &inner["status"]
            } else {
                &d["status"]
            };
            if !status.is_null() {
                line.push_str(&format!(", status {}", s(status)));
            }
            let why = match inner {
                Value::String(x) => x.clone(),
                Value::Object(_) => {
                    let mut why: Vec<String> = inner["problems"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    if let Some(err) = inner["error"].as_str() {
                        why.push(err.to_owned());
                    }
                    why.join("; ")
                }
                _ => String::new(),
            };
            if !why.is_empty() {
                line.push_str(&format!(" ({why})"));
            }
            line
        }
        "step" => format!(
            "step {} → {}%: {}",
            s(&d["step"]),
            s(&d["weight"]),
            weights(&d["weights"])
        ),
        "gate" => {
            for r in d["results"].as_array().into_iter().flatten() {
                extra.push(format!("      {}", gate_result(r)));
            }
            format!("step {}: {}", s(&d["step"]), s(&d["verdict"]))
        }
        "rolled_back" | "aborted" if !d["reason"].is_null() => {
            // The failed gate is in the reason and in the `gate` event before.
            let mut line = match d["reason"].as_str() {
                Some(r) => format!("reason: {r}"),
                None => "reason: -".to_string(),
            };
            if !d["weights"].is_null() {
                line.push_str(&format!("; now {}", weights(&d["weights"])));
            }
            line
        }
        "route_switched" => weights(&d["weights"]),
        _ => other_detail(d),
    };
    let mut lines = vec![
        format!("  {at}  {kind:<14} {summary}")
            .trim_end()
            .to_string(),
    ];
    lines.extend(extra);
    lines
}

/// `error_rate ≤ 1%: measured 100% (12/12) → fail (p=0.0000 …)`.
pub fn gate_result(r: &Value) -> String {
    let mut line = format!(
        "{} {}: measured {} → {}",
        s(&r["gate"]),
        s(&r["threshold"]),
        s(&r["measured"]),
        s(&r["verdict"])
    );
    if let Some(detail) = r["detail"].as_str().filter(|x| !x.is_empty()) {
        line.push_str(&format!(" ({detail})"));
    }
    line
}

/// A detail object as its reason, then `key=value` pairs (weights
/// readable); `{}` as nothing.
fn other_detail(d: &Value) -> String {
    match d {
        Value::Object(m) => d["reason"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .chain(m.iter().filter(|(k, _)| *k != "reason").map(|(k, v)| {
                let text = if k.contains("weights") {
                    weights(v)
                } else {
                    match v {
                        Value::String(x) => x.clone(),
                        other => other.to_string(),
                    }
                };
                format!("{k}={text}")
            }))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

pub async fn inspect(args: InspectArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let Some((function, version)) = args.target.split_once('@') else {
        bail!(
            "expected FUNCTION@VERSION, e.g. hello@2; got {:?}",
            args.target
        );
    };
    let v: Inspection = client
        .get_as(&format!("/v1/functions/{function}/versions/{version}"))
        .await?;
    emit(out, &v, |v| {
        for line in inspect_lines(v) {
            println!("{line}");
        }
    });
    Ok(())
}

/// The lines of `seal inspect FUNCTION@VERSION`.
fn inspect_lines(v: &Inspection) -> Vec<String> {
    let x = &v.version;
    // The Seal manifest stays JSON: its fields are the artifact's, not the API's.
    let m = &x.manifest;
    let routes: Vec<String> = v
        .routes
        .iter()
        .map(|r| format!("{} ({})", r.environment, weights_of(&r.weights)))
        .collect();
    vec![
        format!("{}@{}", x.function, x.version),
        format!("  digest       {}", x.digest),
        format!("  verified     {}", v.verified),
        format!(
            "  component    {} ({} bytes)",
            opt(v.oci_manifest.layers.first().map(|l| &l.digest)),
            x.component_size
        ),
        format!("  config       {}", v.oci_manifest.config.digest),
        format!("  description  {}", s(&m["description"])),
        format!(
            "  limits       memory {} MiB, timeout {} ms{}",
            m["limits"]["memory_mb"],
            m["limits"]["timeout_ms"],
            m["limits"]["max_concurrency"]
                .as_u64()
                .map(|n| format!(", at most {n} requests at once"))
                .unwrap_or_default()
        ),
        format!(
            "  instances    {}",
            m["limits"]["instance_reuse"]
                .as_u64()
                .map(|n| format!("reused, {n} invocations each at most"))
                .unwrap_or_else(|| "a fresh one per request".into())
        ),
        format!("  provenance   {}", m["provenance"]),
        format!(
            "  created      {} by {}",
            time_ms(x.created_at),
            x.created_by
        ),
        format!(
            "  serving in   {}",
            if routes.is_empty() {
                "-".into()
            } else {
                routes.join(", ")
            }
        ),
    ]
}

#[derive(clap::Subcommand, Debug)]
pub enum EnvCommand {
    /// List environments.
    List,
    /// Create an environment (deployments to unknown environments are refused).
    ///
    /// With --after it follows another environment: a version deployed
    /// here must first have served there, with the evidence asked for.
    Create {
        /// Name: lowercase letters, digits and '-'.
        name: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Change an environment's pipeline (admin); a flag left out keeps its value.
    ///
    /// `seal env update production --soak 10m`; `--standalone` removes
    /// the pipeline.
    Update {
        /// Environment, e.g. production.
        name: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Follow no environment any more.
        #[arg(long, conflicts_with_all = ["after", "soak", "require_verification"])]
        standalone: bool,
    },
    /// Show an environment: whether it is the default, protected, and its pipeline.
    Show {
        /// Environment, e.g. staging.
        name: String,
    },
    /// Protect an environment (admin): a deploy that widens a function's
    /// permissions there needs an admin's approval, and a request pinned
    /// to a version (`seal-version`, the preview host) needs the
    /// deployment's preview token. The server's default environment and
    /// `production` are protected unless an admin says otherwise.
    Protect {
        /// Environment, e.g. staging.
        name: String,
        /// Follow the server's rule again instead of a setting of its own.
        #[arg(long)]
        rule: bool,
    },
    /// Unprotect an environment (admin): widenings and pinned requests
    /// there need nothing more than a deployer.
    Unprotect {
        /// Environment, e.g. preview-42.
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// The environment a version must have served in first (e.g. staging).
    #[arg(long, value_name = "ENV")]
    after: Option<String>,
    /// How long it must have served there, taking all of its traffic, with
    /// traffic and no rollback (`30m`, `2h`; `0`: no soak).
    #[arg(long, value_name = "DUR", value_parser = super::deploy::parse_duration_ms)]
    soak: Option<u64>,
    /// A passed verification there (`seal verify-release`) is needed too
    /// (`--require-verification=false` to stop asking).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    require_verification: Option<bool>,
}

async fn set_protection(
    client: &Client,
    out: OutputFormat,
    name: &str,
    protected: Option<bool>,
) -> anyhow::Result<()> {
    super::deploy::check_names("x", Some(name))?;
    let v: EnvironmentView = client
        .put_as(
            &format!("/v1/environments/{name}/protection"),
            &SetProtection { protected },
        )
        .await?;
    emit(out, &v, print_environment);
    Ok(())
}

fn print_environment(v: &EnvironmentView) {
    let default = if v.default { " (default)" } else { "" };
    let why = if v.protection == "set" {
        "set by an admin"
    } else {
        "the server's rule: its default environment and production"
    };
    let state = if v.protected {
        "protected"
    } else {
        "not protected"
    };
    println!("{}{default}: {state} ({why})", v.name);
    match &v.pipeline {
        Some(p) => {
            let mut needs = vec![format!("to have served in {}", p.pipeline.after)];
            if let Some(ms) = p.pipeline.soak_ms {
                needs.push(format!(
                    "for at least {} (all of its traffic, with traffic, no rollback)",
                    humantime::format_duration(std::time::Duration::from_secs(ms / 1000))
                ));
            }
            if p.pipeline.require_verification {
                needs.push("a passed verification there".into());
            }
            println!(
                "pipeline: after {}; a version needs {} (set by {} at {})",
                p.pipeline.after,
                needs.join(", "),
                p.updated_by,
                time_ms(p.updated_at)
            );
        }
        None => println!("pipeline: none (follows no environment)"),
    }
    if !v.followed_by.is_empty() {
        println!("followed by: {}", v.followed_by.join(", "));
    }
}

pub async fn env(cmd: EnvCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        EnvCommand::List => {
            let v: Environments = client.get_as("/v1/environments").await?;
            emit(out, &v, |v| {
                for name in &v.environments {
                    let mut marks = Vec::new();
                    if *name == v.default {
                        marks.push("default");
                    }
                    if v.protected.contains(name) {
                        marks.push("protected");
                    }
                    if marks.is_empty() {
                        println!("{name}");
                    } else {
                        println!("{name}  ({})", marks.join(", "));
                    }
                }
            });
        }
        EnvCommand::Show { name } => {
            super::deploy::check_names("x", Some(&name))?;
            let v: EnvironmentView = client.get_as(&format!("/v1/environments/{name}")).await?;
            emit(out, &v, print_environment);
        }
        EnvCommand::Protect { name, rule } => {
            set_protection(client, out, &name, (!rule).then_some(true)).await?;
        }
        EnvCommand::Unprotect { name } => {
            set_protection(client, out, &name, Some(false)).await?;
        }
        EnvCommand::Create { name, pipeline } => {
            super::deploy::check_names("x", Some(&name))?;
            if let Some(after) = &pipeline.after {
                super::deploy::check_names("x", Some(after))?;
            }
            let with_pipeline = pipeline.after.is_some();
            let shown = name.clone();
            let v: EnvironmentCreated = client
                .post_as(
                    "/v1/environments",
                    &CreateEnvironment {
                        name,
                        after: pipeline.after,
                        soak_ms: pipeline.soak,
                        require_verification: pipeline.require_verification.unwrap_or(false),
                    },
                )
                .await?;
            emit(out, &v, |v| {
                if v.created {
                    println!("created environment {}", v.name);
                } else if with_pipeline {
                    println!(
                        "environment {} already exists; its pipeline is set:",
                        v.name
                    );
                } else {
                    println!("environment {} already exists", v.name);
                }
            });
            // What it now asks of a version, as `seal env show` says it.
            if with_pipeline && matches!(out, OutputFormat::Text) {
                let v: EnvironmentView =
                    client.get_as(&format!("/v1/environments/{shown}")).await?;
                print_environment(&v);
            }
        }
        EnvCommand::Update {
            name,
            pipeline,
            standalone,
        } => {
            super::deploy::check_names("x", Some(&name))?;
            if !standalone
                && pipeline.after.is_none()
                && pipeline.soak.is_none()
                && pipeline.require_verification.is_none()
            {
                anyhow::bail!(
                    "nothing to change: give --after, --soak, --require-verification or --standalone"
                );
            }
            let v: EnvironmentView = client
                .put_as(
                    &format!("/v1/environments/{name}/pipeline"),
                    &SetPipeline {
                        after: pipeline.after,
                        soak_ms: pipeline.soak,
                        require_verification: pipeline.require_verification,
                        standalone,
                    },
                )
                .await?;
            emit(out, &v, print_environment);
        }
    }
    Ok(())
}

pub async fn audit(args: AuditArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    if let Some(AuditCommand::Verify) = args.command {
        let v: AuditVerification = client.get_as("/v1/audit/verify").await?;
        emit(out, &v, |v| {
            if v.ok {
                println!(
                    "audit log intact: {} entries, head {}",
                    v.entries,
                    v.head.as_deref().unwrap_or("-")
                );
            }
        });
        if !v.ok {
            anyhow::bail!(
                "audit log broken at entry {}: {} ({} entries before it verified)",
                // As the answer read as JSON printed a missing link.
                v.first_broken
                    .as_ref()
                    .map_or_else(|| "null".to_owned(), |b| b.id.to_string()),
                v.first_broken
                    .as_ref()
                    .map_or("unknown", |b| b.reason.as_str()),
                v.entries
            );
        }
        return Ok(());
    }
    let v: AuditEntries = client
        .get_as(&format!("/v1/audit?limit={}", args.limit))
        .await?;
    emit(out, &v, |v| {
        table(
            &["ID", "AT", "ACTOR", "ACTION", "OBJECT", "OUTCOME", "DIGEST"],
            audit_rows(v),
        );
    });
    Ok(())
}

/// The rows of `seal audit`.
fn audit_rows(v: &AuditEntries) -> Vec<Vec<String>> {
    v.entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                time_ms(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                e.outcome.clone(),
                e.digest
                    .as_deref()
                    .map(|d| d.chars().take(19).collect())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gate_events_show_every_result_with_its_numbers() {
        let e = json!({"seq": 3, "at": 0, "kind": "gate", "detail": {"step": 1, "verdict": "fail", "results": [
            {"gate": "error_rate", "threshold": "≤ 1%", "verdict": "fail", "measured": "100% (12/12)", "detail": "p=0.0000"},
            {"gate": "latency_p99", "threshold": "≤ 200 ms", "verdict": "pass", "measured": "12 ms", "detail": ""}
        ]}});
        let lines = event_lines(&e);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains("gate") && lines[0].ends_with("step 1: fail"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1].trim(),
            "error_rate ≤ 1%: measured 100% (12/12) → fail (p=0.0000)"
        );
        assert_eq!(
            lines[2].trim(),
            "latency_p99 ≤ 200 ms: measured 12 ms → pass"
        );
    }

    #[test]
    fn transitions_read_as_sentences() {
        let line = |kind: &str, detail: Value| {
            event_lines(&json!({"seq": 1, "at": 0, "kind": kind, "detail": detail})).join("\n")
        };
        let rb = line(
            "rolled_back",
            json!({"reason": "gate error_rate failed", "gate": null, "weights": [{"version": 1, "weight": 100}]}),
        );
        assert!(
            rb.ends_with("reason: gate error_rate failed; now 1=100%"),
            "{rb}"
        );
        let step = line(
            "step",
            json!({"step": 2, "weight": 50, "weights": [{"version": 2, "weight": 50}, {"version": 1, "weight": 50}]}),
        );
        assert!(step.ends_with("step 2 → 50%: 2=50% 1=50%"), "{step}");
        let hook = line(
            "hook",
            json!({"name": "get-root", "phase": "pre-traffic", "passed": false,
                   "detail": {"status": 500, "problems": ["status 500, expected 200"]}}),
        );
        assert!(
            hook.ends_with("get-root (pre-traffic): FAILED, status 500 (status 500, expected 200)"),
            "{hook}"
        );
        let paused = line("paused", json!({"reason": "waiting for approval"}));
        assert!(
            paused.ends_with("paused         waiting for approval"),
            "{paused}"
        );
        let switched = line(
            "route_switched",
            json!({"weights": [{"version": 2, "weight": 100}]}),
        );
        assert!(switched.ends_with("2=100%"), "{switched}");
    }

    /// A deployment as the server writes it.
    fn deployment_json() -> Value {
        json!({
            "id": 7, "function": "hello", "environment": "production",
            "kind": "deploy", "strategy": "canary", "state": "rolled_back",
            "from_weights": [{"version": 1, "weight": 100}],
            "to_weights": [{"version": 1, "weight": 100}],
            "actor": "admin", "reason": "ship v2",
            "created_at": 1732270000000i64, "finished_at": 1732270060000i64,
            "plan": {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 100}]},
            "baseline": 1, "candidate": 2, "step": 1, "step_started_at": 1732270000000i64
        })
    }

    #[test]
    fn function_and_status_rows_read_the_typed_answers() {
        let list: FunctionList = serde_json::from_value(json!({"functions": [
            {"function": "hello", "versions": 2, "latest": 2, "routes": [
                {"environment": "production", "function": "hello",
                 "weights": [{"version": 2, "weight": 90}, {"version": 1, "weight": 10}],
                 "deployment_id": 3, "updated_at": 1732270000000i64,
                 "sticky_header": null, "preview": null},
                {"environment": "staging", "function": "hello", "weights": [],
                 "deployment_id": 4, "updated_at": 1732270000000i64,
                 "sticky_header": null, "preview": null}
            ]},
            {"function": "empty", "versions": 0, "latest": null, "routes": []}
        ]}))
        .unwrap();
        assert_eq!(
            function_rows(&list),
            [
                vec!["hello", "2", "production: 2=90% 1=10%, staging: -"],
                vec!["empty", "-", "-"],
            ]
        );

        let status: FunctionStatus = serde_json::from_value(json!({
        "function": "hello", "latest_version": 2, "routes": [
            {"environment": "production", "deployment_id": 3, "updated_at": 1732270000000i64,
             "versions": [
                {"version": 2, "weight": 90, "digest": "sha256:ab", "serving": true,
                 "requests": 12, "errors": 0},
                {"version": 1, "weight": 10, "digest": null, "serving": false,
                 "requests": null, "errors": null}
             ]}
        ]}))
        .unwrap();
        assert_eq!(
            status_rows(&status),
            [
                vec!["production", "2", "90%", "sha256:ab", "yes", "12", "0", "3"],
                vec!["production", "1", "10%", "-", "NO", "-", "-", "3"],
            ]
        );
    }

    #[test]
    fn deployments_list_and_show_read_the_typed_answers() {
        let mut first = deployment_json();
        first["from_weights"] = Value::Null;
        first["strategy"] = json!("all-at-once");
        first["state"] = json!("succeeded");
        let list: DeploymentList = serde_json::from_value(json!({
            "function": "hello", "deployments": [first, deployment_json()]
        }))
        .unwrap();
        let rows = deployment_rows(&list);
        assert_eq!(
            rows[0],
            [
                "7",
                "production",
                "deploy",
                "all-at-once",
                "succeeded",
                "-",
                "1=100%",
                "admin",
                "2024-11-22T10:06:40.000Z"
            ]
        );
        assert_eq!(rows[1][3..6], ["canary", "rolled_back", "1=100%"]);

        let detail: DeploymentDetail = serde_json::from_value(json!({
            "deployment": deployment_json(),
            "events": [
                {"seq": 1, "at": 1732270000000i64, "kind": "started",
                 "detail": {"strategy": "canary", "from": [{"version": 1, "weight": 100}],
                            "to": [{"version": 2, "weight": 100}], "baseline": 1, "candidate": 2}},
                {"seq": 2, "at": 1732270060000i64, "kind": "rolled_back",
                 "detail": {"reason": "gate error_rate failed",
                            "weights": [{"version": 1, "weight": 100}]}}
            ]
        }))
        .unwrap();
        let lines = deployment_lines(&detail);
        assert_eq!(
            lines,
            [
                "deployment 7 of hello in production: deploy 1=100% → 1=100% (rolled_back, by admin, 2024-11-22T10:06:40.000Z)",
                "strategy: canary, baseline 1, candidate 2, step 1/3",
                "reason: ship v2",
                "finished: 2024-11-22T10:07:40.000Z",
                "  2024-11-22T10:06:40.000Z  started        canary 1=100% → 2=100% (baseline 1, candidate 2)",
                "  2024-11-22T10:07:40.000Z  rolled_back    reason: gate error_rate failed; now 1=100%",
            ]
        );
        // The typed event prints as the event read as JSON does (`seal deploy --follow`).
        let raw = serde_json::to_value(&detail.events[1]).unwrap();
        assert_eq!(event_lines(&raw), deployment_event_lines(&detail.events[1]));
    }

    #[test]
    fn inspect_and_audit_read_the_typed_answers() {
        let v: Inspection = serde_json::from_value(json!({
            "version": {"function": "hello", "version": 2, "digest": "sha256:aa",
                "manifest": {"description": "says hello", "limits": {"memory_mb": 64, "timeout_ms": 5000},
                             "provenance": null},
                "component_size": 1234, "created_at": 1732270000000i64, "created_by": "admin"},
            "oci_manifest": {"schemaVersion": 2, "config": {"mediaType": "application/vnd.seal.manifest.v1+json",
                "digest": "sha256:cc", "size": 10},
                "layers": [{"mediaType": "application/wasm", "digest": "sha256:bb", "size": 1234}]},
            "verified": true,
            "routes": [{"environment": "production", "weights": [{"version": 2, "weight": 100}]}]
        }))
        .unwrap();
        assert_eq!(
            inspect_lines(&v),
            [
                "hello@2",
                "  digest       sha256:aa",
                "  verified     true",
                "  component    sha256:bb (1234 bytes)",
                "  config       sha256:cc",
                "  description  says hello",
                "  limits       memory 64 MiB, timeout 5000 ms",
                "  instances    a fresh one per request",
                "  provenance   null",
                "  created      2024-11-22T10:06:40.000Z by admin",
                "  serving in   production (2=100%)",
            ]
        );

        let entries: AuditEntries = serde_json::from_value(json!({"entries": [
            {"id": 2, "at": 1732270000000i64, "actor": "admin", "action": "deploy",
             "object": "hello@2", "digest": "sha256:0123456789abcdef0123", "outcome": "ok",
             "detail": {}, "prev_hash": null, "hash": null},
            {"id": 1, "at": 1732270000000i64, "actor": "admin", "action": "env.create",
             "object": "qa", "digest": null, "outcome": "ok", "detail": null,
             "prev_hash": null, "hash": null}
        ]}))
        .unwrap();
        assert_eq!(
            audit_rows(&entries),
            [
                vec![
                    "2",
                    "2024-11-22T10:06:40.000Z",
                    "admin",
                    "deploy",
                    "hello@2",
                    "ok",
                    "sha256:0123456789ab"
                ],
                vec![
                    "1",
                    "2024-11-22T10:06:40.000Z",
                    "admin",
                    "env.create",
                    "qa",
                    "ok",
                    "-"
                ],
            ]
        );
    }
}
