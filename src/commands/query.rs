//! Read-only commands: functions, versions, status, deployments, inspect, audit.

use crate::client::Client;
use crate::output::{OutputFormat, emit, s, table, time, weights};
use anyhow::bail;
use clap::Args;

#[derive(Args, Debug)]
pub struct FunctionArg {
    /// Function name.
    function: String,
}

#[derive(Args, Debug)]
pub struct DeploymentsArgs {
    /// Function name.
    function: String,
    /// Only this environment.
    #[arg(long, short = 'e')]
    env: Option<String>,
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
    let mut path = format!("/v1/functions/{}/deployments", args.function);
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
                    weights(&d["from_weights"]),
                    weights(&d["to_weights"]),
                    s(&d["state"]),
                    s(&d["actor"]),
                    time(&d["created_at"]),
                ]
            })
            .collect();
        table(
            &["ID", "ENV", "KIND", "FROM", "TO", "STATE", "BY", "AT"],
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
    emit(out, &v, |v| {
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
        if let Some(reason) = d["reason"].as_str() {
            println!("reason: {reason}");
        }
        for e in v["events"].as_array().into_iter().flatten() {
            println!(
                "  {}  {:<16} {}",
                time(&e["at"]),
                s(&e["kind"]),
                e["detail"]
            );
        }
    });
    Ok(())
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
