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
    /// Environment to deploy to (default: the server's default, production).
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Why: recorded with the deployment and in the audit log.
    #[arg(long)]
    reason: Option<String>,
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
}

pub async fn deploy(args: DeployArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    check_names(&args.function, args.env.as_deref())?;
    let v = client
        .post(
            &format!("/v1/functions/{}/deploy", args.function),
            &json!({"version": args.version, "environment": args.env, "reason": args.reason}),
        )
        .await?;
    emit(out, &v, |v| report(v, &args.function, "deployed"));
    Ok(())
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
            &json!({"environment": args.env, "to": args.to}),
        )
        .await?;
    emit(out, &v, |v| report(v, &args.function, "rolled back"));
    Ok(())
}

/// Checks names before they go into a URL, with the server's own rule.
pub fn check_names(function: &str, env: Option<&str>) -> anyhow::Result<()> {
    seal_artifact::validate_function_name(function)?;
    if let Some(env) = env {
        seal_artifact::validate_function_name(env).map_err(|e| match e {
            seal_artifact::ArtifactError::InvalidName { reason, .. } => {
                anyhow::anyhow!("invalid environment name {env:?}: {reason}")
            }
            other => other.into(),
        })?;
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
