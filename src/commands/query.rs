//! Read-only commands: functions, versions, status, deployments, inspect, audit.

use crate::client::Client;
use crate::output::{OutputFormat, emit, s, table, time, weights};
use anyhow::bail;
use clap::{Args, Subcommand};
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
    let v = client.get("/v1/functions").await?;
    emit(out, &v, |v| {
        let rows = v["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let routes = f["routes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| format!("{}: {}", s(&r["environment"]), weights(&r["weights"])))
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    s(&f["function"]),
                    s(&f["latest"]),
                    if routes.is_empty() {
                        "-".into()
                    } else {
                        routes
                    },
                ]
            })
            .collect();
        table(&["FUNCTION", "LATEST", "ROUTES"], rows);
    });
    Ok(())
}

pub async fn versions(args: FunctionArg, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, None)?;
    let v = client
        .get(&format!("/v1/functions/{}/versions", args.function))
        .await?;
    emit(out, &v, |v| {
        let rows = v["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                vec![
                    s(&x["version"]),
                    s(&x["digest"]),
                    format!("{}", x["component_size"]),
                    time(&x["created_at"]),
                    s(&x["created_by"]),
                ]
            })
            .collect();
        table(&["VERSION", "DIGEST", "SIZE", "CREATED", "BY"], rows);
    });
    Ok(())
}

pub async fn status(args: FunctionArg, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, None)?;
    let v = client
        .get(&format!("/v1/functions/{}", args.function))
        .await?;
    emit(out, &v, |v| {
        println!(
            "function {}  (latest version {})",
            s(&v["function"]),
            s(&v["latest_version"])
        );
        let mut rows = Vec::new();
        for r in v["routes"].as_array().into_iter().flatten() {
            for x in r["versions"].as_array().into_iter().flatten() {
                rows.push(vec![
                    s(&r["environment"]),
                    s(&x["version"]),
                    format!("{}%", x["weight"]),
                    s(&x["digest"]),
                    if x["serving"].as_bool() == Some(true) {
                        "yes".into()
                    } else {
                        "NO".into()
                    },
                    s(&x["requests"]),
                    s(&x["errors"]),
                    s(&r["deployment_id"]),
                ]);
            }
        }
        if rows.is_empty() {
            println!(
                "not deployed anywhere; deploy with `seal deploy {} N`",
                s(&v["function"])
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
    });
    Ok(())
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
    let v = client.get(&path).await?;
    emit(out, &v, |v| {
        let rows = v["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                vec![
                    s(&d["id"]),
                    s(&d["environment"]),
                    s(&d["kind"]),
                    s(&d["strategy"]),
                    s(&d["state"]),
                    weights(&d["from_weights"]),
                    weights(&d["to_weights"]),
                    s(&d["actor"]),
                    time(&d["created_at"]),
                ]
            })
            .collect();
        table(
            &[
                "ID", "ENV", "KIND", "STRATEGY", "STATE", "FROM", "TO", "BY", "AT",
            ],
            rows,
        );
    });
    Ok(())
}

pub async fn deployment(
    args: DeploymentArg,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let v = client.get(&format!("/v1/deployments/{}", args.id)).await?;
    emit(out, &v, print_deployment);
    Ok(())
}

/// Prints a `GET /v1/deployments/{id}` answer: the deployment, then every
/// event with its numbers.
pub fn print_deployment(v: &Value) {
    let d = &v["deployment"];
    println!(
        "deployment {} of {} in {}: {} {} → {} ({}, by {}, {})",
        d["id"],
        s(&d["function"]),
        s(&d["environment"]),
        s(&d["kind"]),
        weights(&d["from_weights"]),
        weights(&d["to_weights"]),
        s(&d["state"]),
        s(&d["actor"]),
        time(&d["created_at"]),
    );
    if let Some(strategy) = d["strategy"].as_str().filter(|s| *s != "all-at-once") {
        let steps = d["plan"]["steps"].as_array().map(Vec::len);
        let step = match (d["step"].as_u64(), steps) {
            (Some(i), Some(n)) => format!(", step {i}/{n}"),
            (Some(i), None) => format!(", step {i}"),
            _ => String::new(),
        };
        println!(
            "strategy: {strategy}, baseline {}, candidate {}{step}",
            s(&d["baseline"]),
            s(&d["candidate"]),
        );
    }
    if let Some(reason) = d["reason"].as_str() {
        println!("reason: {reason}");
    }
    if d["finished_at"].as_i64().is_some() {
        println!("finished: {}", time(&d["finished_at"]));
    }
    for e in v["events"].as_array().into_iter().flatten() {
        print_event(e);
    }
}

/// One deployment event as a line, plus one line per gate result for
/// `gate` and `rolled_back` events.
pub fn print_event(e: &Value) {
    for line in event_lines(e) {
        println!("{line}");
    }
}

pub fn event_lines(e: &Value) -> Vec<String> {
    let kind = e["kind"].as_str().unwrap_or("?");
    let d = &e["detail"];
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
        format!("  {}  {:<14} {summary}", time(&e["at"]), kind)
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
    let v = client
        .get(&format!("/v1/functions/{function}/versions/{version}"))
        .await?;
    emit(out, &v, |v| {
        let x = &v["version"];
        let m = &x["manifest"];
        println!("{}@{}", s(&x["function"]), x["version"]);
        println!("  digest       {}", s(&x["digest"]));
        println!("  verified     {}", v["verified"]);
        println!(
            "  component    {} ({} bytes)",
            s(&v["oci_manifest"]["layers"][0]["digest"]),
            x["component_size"]
        );
        println!(
            "  config       {}",
            s(&v["oci_manifest"]["config"]["digest"])
        );
        println!("  description  {}", s(&m["description"]));
        println!(
            "  limits       memory {} MiB, timeout {} ms",
            m["limits"]["memory_mb"], m["limits"]["timeout_ms"]
        );
        println!("  provenance   {}", m["provenance"]);
        println!(
            "  created      {} by {}",
            time(&x["created_at"]),
            s(&x["created_by"])
        );
        let routes: Vec<String> = v["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{} ({})", s(&r["environment"]), weights(&r["weights"])))
            .collect();
        println!(
            "  serving in   {}",
            if routes.is_empty() {
                "-".into()
            } else {
                routes.join(", ")
            }
        );
    });
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum EnvCommand {
    /// List environments.
    List,
    /// Create an environment (deployments to unknown environments are refused).
    Create {
        /// Name: lowercase letters, digits and '-'.
        name: String,
    },
}

pub async fn env(cmd: EnvCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        EnvCommand::List => {
            let v = client.get("/v1/environments").await?;
            emit(out, &v, |v| {
                let default = s(&v["default"]);
                for e in v["environments"].as_array().into_iter().flatten() {
                    let name = s(e);
                    let mark = if name == default { "  (default)" } else { "" };
                    println!("{name}{mark}");
                }
            });
        }
        EnvCommand::Create { name } => {
            super::deploy::check_names("x", Some(&name))?;
            let v = client
                .post("/v1/environments", &serde_json::json!({"name": name}))
                .await?;
            emit(out, &v, |v| {
                if v["created"].as_bool() == Some(true) {
                    println!("created environment {}", s(&v["name"]));
                } else {
                    println!("environment {} already exists", s(&v["name"]));
                }
            });
        }
    }
    Ok(())
}

pub async fn audit(args: AuditArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    if let Some(AuditCommand::Verify) = args.command {
        let v = client.get("/v1/audit/verify").await?;
        emit(out, &v, |v| {
            if v["ok"] == true {
                println!(
                    "audit log intact: {} entries, head {}",
                    v["entries"],
                    v["head"].as_str().unwrap_or("-")
                );
            }
        });
        if v["ok"] != true {
            anyhow::bail!(
                "audit log broken at entry {}: {} ({} entries before it verified)",
                v["first_broken"]["id"],
                v["first_broken"]["reason"].as_str().unwrap_or("unknown"),
                v["entries"]
            );
        }
        return Ok(());
    }
    let v = client
        .get(&format!("/v1/audit?limit={}", args.limit))
        .await?;
    emit(out, &v, |v| {
        let rows = v["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                vec![
                    s(&e["id"]),
                    time(&e["at"]),
                    s(&e["actor"]),
                    s(&e["action"]),
                    s(&e["object"]),
                    s(&e["outcome"]),
                    e["digest"]
                        .as_str()
                        .map(|d| d.chars().take(19).collect())
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &["ID", "AT", "ACTOR", "ACTION", "OBJECT", "OUTCOME", "DIGEST"],
            rows,
        );
    });
    Ok(())
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
}
