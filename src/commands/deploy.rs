//! `seal deploy` and `seal rollback`.

use crate::client::Client;
use crate::output::{OutputFormat, emit, weights};
use clap::Args;
use serde_json::json;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Function name.
    function: String,
    /// Version number to deploy (see `seal versions FUNCTION`).
    version: u64,
    /// Environment to deploy to.
    #[arg(long, short = 'e', default_value = "production")]
    env: String,
    /// Why: recorded with the deployment and in the audit log.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Function name.
    function: String,
    /// Environment to roll back.
    #[arg(long, short = 'e', default_value = "production")]
    env: String,
    /// Version to return to (default: the one that served before the current deployment).
    #[arg(long)]
    to: Option<u64>,
}

pub async fn deploy(args: DeployArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let v = client
        .post(
            &format!("/v1/functions/{}/deploy", args.function),
            &json!({"version": args.version, "environment": args.env, "reason": args.reason}),
        )
        .await?;
    emit(out, &v, |v| {
        report(v, &args.function, &args.env, "deployed")
    });
    Ok(())
}

pub async fn rollback(
    args: RollbackArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let v = client
        .post(
            &format!("/v1/functions/{}/rollback", args.function),
            &json!({"environment": args.env, "to": args.to}),
        )
        .await?;
    emit(out, &v, |v| {
        report(v, &args.function, &args.env, "rolled back")
    });
    Ok(())
}

fn report(v: &serde_json::Value, function: &str, env: &str, verb: &str) {
    if v["unchanged"].as_bool() == Some(true) {
        println!(
            "{function} in {env} already serves {}; nothing changed",
            weights(&v["weights"])
        );
        return;
    }
    let d = &v["deployment"];
    println!(
        "{verb} {function} in {env}: {} → {} (deployment {})",
        weights(&d["from_weights"]),
        weights(&d["to_weights"]),
        d["id"]
    );
}
