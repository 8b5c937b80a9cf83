//! `seal flags …`: feature flags per environment in flagd's JSON format.

use crate::client::Client;
use crate::commands::events::default_environment;
use crate::output::{OutputFormat, emit, table, time_ms};
use anyhow::Context;
use seal_api_types::flags::{FlagDefinition, FlagHistory, FlagList, FlagsChanged};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum FlagsCommand {
    /// Add the flags of a flagd file (`{"flags": {...}}`) to an
    /// environment, replacing those of the same key; one audited revision.
    ///
    /// Each flag: `state` (ENABLED or DISABLED), `variants` (one type),
    /// `defaultVariant` (one of them), `targeting` (JSONLogic, with
    /// flagd's `fractional` and `sem_ver`; `$ref` to `$evaluators`). A file
    /// that is not valid is refused naming the flag and field, and
    /// nothing changes.
    Apply {
        file: PathBuf,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// List an environment's flags.
    List {
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// Print one flag's definition (flagd JSON).
    Get {
        key: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// The revisions of an environment's flags, newest first (those that
    /// changed KEY, when given).
    History {
        key: Option<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Delete one flag; one audited revision.
    Delete {
        key: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

fn print_changed(c: &FlagsChanged) {
    println!(
        "flags of {} at revision {}: {}",
        c.environment,
        c.revision,
        c.changed.join(", ")
    );
}

pub async fn flags(cmd: FlagsCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let env_of = |env: Option<String>| async move {
        match env {
            Some(e) => {
                super::deploy::check_names("x", Some(&e))?;
                Ok::<_, anyhow::Error>(e)
            }
            None => default_environment(client).await,
        }
    };
    match cmd {
        FlagsCommand::Apply { file, env } => {
            let env = env_of(env).await?;
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let path = format!("/v1/flags/{env}");
            let c: FlagsChanged = client
                .send_as(
                    client
                        .request(reqwest::Method::POST, &path)
                        .header("content-type", "application/json")
                        .body(body),
                    "POST",
                    &path,
                )
                .await?;
            emit(out, &c, print_changed);
        }
        FlagsCommand::List { env } => {
            let env = env_of(env).await?;
            let v: FlagList = client.get_as(&format!("/v1/flags/{env}")).await?;
            emit(out, &v, |v| {
                if v.flags.is_empty() {
                    println!(
                        "no flags in {} (`seal flags apply flags.json --env {}`)",
                        v.environment, v.environment
                    );
                    return;
                }
                println!("flags of {} at revision {}", v.environment, v.revision);
                let rows = v
                    .flags
                    .iter()
                    .map(|f| {
                        vec![
                            f.key.clone(),
                            f.state.clone(),
                            f.default_variant.clone(),
                            f.variants.join(", "),
                            if f.targeting { "yes" } else { "no" }.to_owned(),
                        ]
                    })
                    .collect();
                table(&["KEY", "STATE", "DEFAULT", "VARIANTS", "TARGETING"], rows);
            });
        }
        FlagsCommand::Get { key, env } => {
            let env = env_of(env).await?;
            let v: FlagDefinition = client.get_as(&format!("/v1/flags/{env}/{key}")).await?;
            emit(out, &v, |v| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v.definition).unwrap_or_default()
                )
            });
        }
        FlagsCommand::History { key, env, limit } => {
            let env = env_of(env).await?;
            let mut path = format!("/v1/flags/{env}/history?limit={limit}");
            if let Some(k) = &key {
                path.push_str(&format!("&key={k}"));
            }
            let v: FlagHistory = client.get_as(&path).await?;
            emit(out, &v, |v| {
                let rows = v
                    .revisions
                    .iter()
                    .map(|r| {
                        vec![
                            r.revision.to_string(),
                            time_ms(r.at),
                            r.actor.clone(),
                            r.action.clone(),
                            r.changed.join(", "),
                        ]
                    })
                    .collect();
                table(&["REVISION", "AT", "BY", "ACTION", "FLAGS"], rows);
            });
        }
        FlagsCommand::Delete { key, env } => {
            let env = env_of(env).await?;
            let path = format!("/v1/flags/{env}/{key}");
            let c: FlagsChanged = client
                .send_as(
                    client.request(reqwest::Method::DELETE, &path),
                    "DELETE",
                    &path,
                )
                .await?;
            emit(out, &c, print_changed);
        }
    }
    Ok(())
}
