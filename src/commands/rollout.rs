//! Progressive delivery: `seal rollout status`, `seal approve`,
//! `seal promote`, `seal abort`.

use crate::client::Client;
use crate::output::{OutputFormat, emit, json_line, ms_opt, now_ms, pct_f64, table, weights_of};
use clap::{Args, Subcommand};
use seal_api_types::catalog::DeploymentAnswer;
use seal_api_types::rollout::{GateResult, RolloutStatus, Verdict, VersionRole, VersionWindow};
use serde_json::json;
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
        let v: RolloutStatus = client.get_as(&path).await?;
        emit(out, &v, print_status);
        return Ok(());
    }
    let watch = async {
        loop {
            let v: RolloutStatus = client.get_as(&path).await?;
            match out {
                OutputFormat::Json => println!("{}", json_line(&v)?),
                OutputFormat::Text => {
                    print!("\x1b[2J\x1b[H");
                    print_status(&v);
                }
            }
            if !v.active {
                if out == OutputFormat::Text {
                    match &v.deployment {
                        Some(d) => println!(
                            "\ndeployment {} is no longer active: {}",
                            d.id,
                            d.state.as_str().replace('_', " ")
                        ),
                        None => println!("\nno deployment to watch"),
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
pub fn print_status(v: &RolloutStatus) {
    let Some(header) = header(v, now_ms()) else {
        println!("no deployment of {} in {} yet", v.function, v.environment);
        return;
    };
    println!("{header}");
    println!("serving: {}", weights_of(&v.weights));

    if !v.versions.is_empty() {
        let window = v
            .versions
            .iter()
            .map(|x| x.window_s)
            .fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))));
        if let Some(w) = window {
            println!("traffic over the last {w:.0}s:");
        }
        table(
            &[
                "VERSION", "ROLE", "WEIGHT", "REQ/S", "ERRORS", "ERR%", "P50", "P99",
            ],
            version_rows(&v.versions),
        );
    }

    if let Some(gates) = &v.gates {
        println!("gates: {}", verdict(gates.verdict));
        let rows = gate_rows(&gates.results);
        if !rows.is_empty() {
            table(&["GATE", "THRESHOLD", "MEASURED", "VERDICT"], rows);
        }
    }
}

/// The first line of [`print_status`] (`now` in ms, for the time to the
/// next step), or `None` when the route never had a deployment.
fn header(v: &RolloutStatus, now: i64) -> Option<String> {
    let d = v.deployment.as_ref()?;
    let state = d.state.as_str();
    let what = match d.candidate {
        Some(c) => format!("{}@{c}", d.function),
        None => d.function.clone(),
    };
    let mut header = format!(
        "deployment {}: {} of {what} in {}, {}",
        d.id,
        d.strategy.as_str(),
        d.environment,
        state.replace('_', " ")
    );
    if let Some(step) = &v.step {
        header.push_str(&format!(
            ", step {}/{} at weight {}%",
            step.index, step.of, step.weight
        ));
        if !step.phase.is_empty() {
            header.push_str(&format!(" ({})", step.phase));
        }
        if let Some(next) = step.next_at {
            let secs = ((next - now).max(0) as u64).div_ceil(1000);
            header.push_str(&format!(", next step in {secs}s"));
        } else if state == "paused" {
            header.push_str(&format!("; go on with: seal approve {}", d.id));
        }
    }
    if !v.active {
        header.push_str(" (not active)");
    }
    Some(header)
}

/// One row per version of the route, with its live numbers.
fn version_rows(versions: &[VersionWindow]) -> Vec<Vec<String>> {
    versions
        .iter()
        .map(|x| {
            vec![
                x.version.to_string(),
                role(x.role).to_owned(),
                format!("{}%", x.weight),
                format!("{:.1}", x.rps),
                x.errors.to_string(),
                pct_f64(x.error_rate),
                ms_opt(x.p50_ms),
                ms_opt(x.p99_ms),
            ]
        })
        .collect()
}

/// One row per gate of the latest evaluation.
fn gate_rows(results: &[GateResult]) -> Vec<Vec<String>> {
    results
        .iter()
        .map(|r| {
            vec![
                r.gate.clone(),
                r.threshold.clone(),
                r.measured.clone(),
                verdict(r.verdict).to_owned(),
            ]
        })
        .collect()
}

/// A role as the API spells it.
fn role(r: VersionRole) -> &'static str {
    match r {
        VersionRole::Candidate => "candidate",
        VersionRole::Baseline => "baseline",
        VersionRole::Stable => "stable",
    }
}

/// A verdict as the API spells it.
fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Inconclusive => "inconclusive",
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
    let v: DeploymentAnswer = client
        .post_as(&format!("/v1/deployments/{}/{verb}", args.id), &json!({}))
        .await?;
    emit(out, &v, |v| {
        let d = &v.deployment;
        println!(
            "deployment {}: {done}; state {} ({})",
            args.id,
            d.state.as_str(),
            weights_of(&d.to_weights)
        );
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_json() -> serde_json::Value {
        json!({
            "function": "hello", "environment": "production", "active": true,
            "deployment": {
                "id": 9, "function": "hello", "environment": "production",
                "kind": "deploy", "strategy": "canary", "state": "paused",
                "from_weights": [{"version": 1, "weight": 100}],
                "to_weights": [{"version": 2, "weight": 100}],
                "actor": "admin", "reason": null, "created_at": 1732270000000i64,
                "finished_at": null, "plan": {"steps": [{"weight": 10}, {"weight": 100}]},
                "baseline": 1, "candidate": 2, "step": 1, "step_started_at": 1732270000000i64
            },
            "step": {"index": 1, "of": 2, "weight": 10, "started_at": 1732270000000i64,
                     "next_at": null, "phase": "awaiting approval"},
            "weights": [{"version": 2, "weight": 10}, {"version": 1, "weight": 90}],
            "versions": [
                {"version": 2, "digest": "sha256:bb", "weight": 10, "role": "candidate",
                 "window_s": 10.0, "requests": 20, "rps": 2.0, "errors": 1, "error_rate": 0.05,
                 "p50_ms": 3.25, "p99_ms": 40.0},
                {"version": 1, "digest": "sha256:aa", "weight": 90, "role": "baseline",
                 "window_s": 8.0, "requests": 0, "rps": 0.0, "errors": 0, "error_rate": 0.0,
                 "p50_ms": null, "p99_ms": null}
            ],
            "gates": {"verdict": "inconclusive", "results": [
                {"gate": "error_rate", "threshold": "≤ 1%", "verdict": "inconclusive",
                 "measured": "5% (1/20)", "detail": "",
                 "candidate": {"requests": 20, "errors": 1, "error_rate": 0.05,
                               "p50_ms": 3.25, "p99_ms": 40.0},
                 "baseline": null}
            ]}
        })
    }

    #[test]
    fn rollout_status_reads_the_typed_answer() {
        let v: RolloutStatus = serde_json::from_value(status_json()).unwrap();
        assert_eq!(
            header(&v, 0).as_deref(),
            Some(
                "deployment 9: canary of hello@2 in production, paused, step 1/2 at weight 10% (awaiting approval); go on with: seal approve 9"
            )
        );
        assert_eq!(
            version_rows(&v.versions),
            [
                vec!["2", "candidate", "10%", "2.0", "1", "5%", "3.2 ms", "40 ms"],
                vec!["1", "baseline", "90%", "0.0", "0", "0%", "-", "-"],
            ]
        );
        let gates = v.gates.as_ref().unwrap();
        assert_eq!(verdict(gates.verdict), "inconclusive");
        assert_eq!(
            gate_rows(&gates.results),
            [vec!["error_rate", "≤ 1%", "5% (1/20)", "inconclusive"]]
        );
        // Role and verdict names are the wire's.
        for r in [
            VersionRole::Candidate,
            VersionRole::Baseline,
            VersionRole::Stable,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), role(r));
        }
        for x in [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive] {
            assert_eq!(serde_json::to_value(x).unwrap(), verdict(x));
        }

        let mut next = status_json();
        next["active"] = json!(false);
        next["step"]["next_at"] = json!(1732270004500i64);
        next["deployment"]["state"] = json!("rolled_back");
        let v: RolloutStatus = serde_json::from_value(next).unwrap();
        assert_eq!(
            header(&v, 1732270000000).as_deref(),
            Some(
                "deployment 9: canary of hello@2 in production, rolled back, step 1/2 at weight 10% (awaiting approval), next step in 5s (not active)"
            )
        );
        let none: RolloutStatus = serde_json::from_value(json!({
            "function": "hello", "environment": "qa", "active": false, "deployment": null,
            "step": null, "weights": [], "versions": [], "gates": null
        }))
        .unwrap();
        assert_eq!(header(&none, 0), None);
    }
}
