//! Progressive delivery: `seal rollout status`, `seal approve`,
//! `seal promote`, `seal abort`.

use crate::client::Client;
use crate::output::{OutputFormat, emit, ms, now_ms, pct, s, table, weights};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show the active (else the latest) progressive deployment of a
    /// function: step, live traffic per version, gate verdicts.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Function name.
    function: String,
    /// Environment (default: the server's default, production).
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Refresh every second until the deployment is no longer active (or
    /// Ctrl-C). With --output json, one JSON line per refresh.
    #[arg(long, short = 'w')]
    watch: bool,
}

#[derive(Args, Debug)]
pub struct DeploymentId {
    /// Deployment id (see `seal rollout status FUNCTION` or `seal deployments FUNCTION`).
    id: u64,
}

/// Which transition `seal approve|promote|abort` asks for.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Approve,
    Promote,
    Abort,
}

pub async fn status(args: StatusArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, args.env.as_deref())?;
    let mut path = format!("/v1/functions/{}/rollout", args.function);
    if let Some(env) = &args.env {
        path.push_str(&format!("?environment={env}"));
    }
    if !args.watch {
        let v = client.get(&path).await?;
        emit(out, &v, print_status);
        return Ok(());
    }
    let watch = async {
        loop {
            let v = client.get(&path).await?;
            match out {
                OutputFormat::Json => println!("{v}"),
                OutputFormat::Text => {
                    print!("\x1b[2J\x1b[H");
                    print_status(&v);
                }
            }
            if v["active"].as_bool() != Some(true) {
                if out == OutputFormat::Text {
                    let d = &v["deployment"];
                    if d.is_object() {
                        println!(
                            "\ndeployment {} is no longer active: {}",
                            d["id"],
                            s(&d["state"]).replace('_', " ")
                        );
                    } else {
                        println!("\nno deployment to watch");
                    }
                }
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        r = watch => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// A `GET /v1/functions/{fn}/rollout` answer for humans.
pub fn print_status(v: &Value) {
    let d = &v["deployment"];
    if !d.is_object() {
        println!(
            "no deployment of {} in {} yet",
            s(&v["function"]),
            s(&v["environment"])
        );
        return;
    }
    let state = s(&d["state"]);
    let what = match d["candidate"].as_u64() {
        Some(c) => format!("{}@{c}", s(&d["function"])),
        None => s(&d["function"]),
    };
    let mut header = format!(
        "deployment {}: {} of {what} in {}, {}",
        d["id"],
        s(&d["strategy"]),
        s(&d["environment"]),
        state.replace('_', " ")
    );
    let step = &v["step"];
    if step.is_object() {
        header.push_str(&format!(
            ", step {}/{} at weight {}%",
            s(&step["index"]),
            s(&step["of"]),
            s(&step["weight"])
        ));
        if let Some(phase) = step["phase"].as_str().filter(|p| !p.is_empty()) {
            header.push_str(&format!(" ({phase})"));
        }
        if let Some(next) = step["next_at"].as_i64() {
            let secs = ((next - now_ms()).max(0) as u64).div_ceil(1000);
            header.push_str(&format!(", next step in {secs}s"));
        } else if state == "paused" {
            header.push_str(&format!("; go on with: seal approve {}", d["id"]));
        }
    }
    if v["active"].as_bool() != Some(true) {
        header.push_str(" (not active)");
    }
    println!("{header}");
    println!("serving: {}", weights(&v["weights"]));

    let versions: Vec<&Value> = v["versions"].as_array().into_iter().flatten().collect();
    if !versions.is_empty() {
        let window = versions
            .iter()
            .filter_map(|x| x["window_s"].as_f64())
            .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))));
        if let Some(w) = window {
            println!("traffic over the last {w:.0}s:");
        }
        let rows = versions
            .iter()
            .map(|x| {
                vec![
                    s(&x["version"]),
                    s(&x["role"]),
                    format!("{}%", s(&x["weight"])),
                    x["rps"]
                        .as_f64()
                        .map(|r| format!("{r:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    s(&x["errors"]),
                    pct(&x["error_rate"]),
                    ms(&x["p50_ms"]),
                    ms(&x["p99_ms"]),
                ]
            })
            .collect();
        table(
            &[
                "VERSION", "ROLE", "WEIGHT", "REQ/S", "ERRORS", "ERR%", "P50", "P99",
            ],
            rows,
        );
    }

    let gates = &v["gates"];
    if gates.is_object() {
        println!("gates: {}", s(&gates["verdict"]));
        let rows: Vec<Vec<String>> = gates["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                vec![
                    s(&r["gate"]),
                    s(&r["threshold"]),
                    s(&r["measured"]),
                    s(&r["verdict"]),
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(&["GATE", "THRESHOLD", "MEASURED", "VERDICT"], rows);
        }
    }
}

pub async fn act(
    action: Action,
    args: DeploymentId,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let (verb, done) = match action {
        Action::Approve => ("approve", "approved"),
        Action::Promote => ("promote", "promoted"),
        Action::Abort => ("abort", "aborted"),
    };
    let v = client
        .post(&format!("/v1/deployments/{}/{verb}", args.id), &json!({}))
        .await?;
    emit(out, &v, |v| {
        let d = &v["deployment"];
        println!(
            "deployment {}: {done}; state {} ({})",
            args.id,
            s(&d["state"]),
            weights(&d["to_weights"])
        );
    });
    Ok(())
}
