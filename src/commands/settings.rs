//! `seal config …` and `seal secrets …`: per-environment settings that
//! reach the guest as environment variables.

use crate::client::Client;
use crate::output::{OutputFormat, emit, s, table, time_ms};
use anyhow::{Context, bail};
use seal_api_types::access::{SettingRevisions, SettingsView};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set config values: `seal config set hello GREETING=hi COLOR=blue -e staging`.
    Set {
        function: String,
        /// KEY=VALUE pairs.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Environment (default: the server's default, production).
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// Remove config values.
    Unset {
        function: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// Show config values and the names of secrets (never their values).
    Get {
        function: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// Who changed which keys when (config and secrets), newest first.
    History {
        function: String,
        /// Only this environment (default: all).
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set a secret; its value is read from standard input and never echoed.
    ///
    /// One trailing newline is removed, so `echo "$VALUE" | seal secrets set …`
    /// and typing the value then Ctrl-D both work.
    Set {
        function: String,
        key: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// Remove secrets.
    Unset {
        function: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// List secret names (values are never shown).
    List {
        function: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

pub async fn config(cmd: ConfigCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Set {
            function,
            pairs,
            env,
        } => {
            let mut set = BTreeMap::new();
            for p in &pairs {
                let Some((k, v)) = p.split_once('=') else {
                    bail!("expected KEY=VALUE, got {p:?}");
                };
                set.insert(k.to_owned(), v.to_owned());
            }
            let body = json!({"environment": env, "set": set, "unset": []});
            change(client, &function, "config", &body, out).await
        }
        ConfigCommand::Unset {
            function,
            keys,
            env,
        } => {
            let body = json!({"environment": env, "set": {}, "unset": keys});
            change(client, &function, "config", &body, out).await
        }
        ConfigCommand::Get { function, env } => {
            let v = get(client, &function, env.as_deref()).await?;
            emit(out, &v, |v| {
                println!(
                    "{} in {} (revision {})",
                    v.function, v.environment, v.revision
                );
                table(&["KEY", "VALUE"], settings_rows(v));
            });
            Ok(())
        }
        ConfigCommand::History { function, env } => {
            let mut path = format!("/v1/functions/{function}/config/revisions");
            if let Some(e) = &env {
                path.push_str(&format!("?environment={e}"));
            }
            let v: SettingRevisions = client.get_as(&path).await?;
            emit(out, &v, |v| {
                table(
                    &["AT", "ENV", "REV", "KIND", "SET", "UNSET", "BY"],
                    revision_rows(v),
                );
            });
            Ok(())
        }
    }
}

/// The rows of `seal config get`: config values, then secret names.
fn settings_rows(v: &SettingsView) -> Vec<Vec<String>> {
    v.config
        .iter()
        .map(|(k, val)| vec![k.clone(), val.clone()])
        .chain(
            v.secrets
                .iter()
                .map(|sec| vec![sec.key.clone(), "(secret)".into()]),
        )
        .collect()
}

/// The rows of `seal config history`.
fn revision_rows(v: &SettingRevisions) -> Vec<Vec<String>> {
    v.revisions
        .iter()
        .map(|r| {
            // What changed stays JSON: `{"kind", "set": [keys], "unset": [keys]}`.
            let c = &r.changes;
            let keys = |k: &str| {
                c[k].as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            vec![
                time_ms(r.at),
                r.environment.clone(),
                r.revision.to_string(),
                s(&c["kind"]),
                keys("set"),
                keys("unset"),
                r.actor.clone(),
            ]
        })
        .collect()
}

pub async fn secrets(
    cmd: SecretsCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Set { function, key, env } => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("value for {key} (not echoed; end with Enter then Ctrl-D):");
            }
            let value = read_secret()?;
            let body = json!({"environment": env, "set": {key: value}, "unset": []});
            change(client, &function, "secrets", &body, out).await
        }
        SecretsCommand::Unset {
            function,
            keys,
            env,
        } => {
            let body = json!({"environment": env, "set": {}, "unset": keys});
            change(client, &function, "secrets", &body, out).await
        }
        SecretsCommand::List { function, env } => {
            let v = get(client, &function, env.as_deref()).await?;
            let listed = json!({
                "function": v.function,
                "environment": v.environment,
                "revision": v.revision,
                "secrets": v.secrets,
            });
            emit(out, &listed, |v| {
                for sec in v["secrets"].as_array().into_iter().flatten() {
                    println!("{}", s(&sec["key"]));
                }
            });
            Ok(())
        }
    }
}

/// Reads a secret from stdin with terminal echo off when it is a terminal.
fn read_secret() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = std::io::IsTerminal::is_terminal(&stdin);
    // `stty -echo` rather than a terminal crate: one call, restored below.
    let echo_off = tty
        && std::process::Command::new("stty")
            .arg("-echo")
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success());
    let mut value = String::new();
    let read = stdin.lock().read_to_string(&mut value);
    if echo_off {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
    read.context("cannot read the secret from standard input")?;
    let value = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value)
        .to_owned();
    if value.is_empty() {
        bail!("the secret is empty: pipe its value to standard input");
    }
    Ok(value)
}

async fn get(client: &Client, function: &str, env: Option<&str>) -> anyhow::Result<SettingsView> {
    let mut path = format!("/v1/functions/{function}/config");
    if let Some(e) = env {
        path.push_str(&format!("?environment={e}"));
    }
    client.get_as(&path).await
}

async fn change(
    client: &Client,
    function: &str,
    kind: &str,
    body: &Value,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let v = client
        .post(&format!("/v1/functions/{function}/{kind}"), body)
        .await?;
    emit(out, &v, |v| {
        let list = |k: &str| {
            v[k].as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (set, unset) = (list("set"), list("unset"));
        let mut what = Vec::new();
        if !set.is_empty() {
            what.push(format!("set {set}"));
        }
        if !unset.is_empty() {
            what.push(format!("unset {unset}"));
        }
        println!(
            "{} of {} in {}: {} (revision {})",
            kind,
            s(&v["function"]),
            s(&v["environment"]),
            what.join("; "),
            v["revision"]
        );
        for u in v["undeclared"].as_array().into_iter().flatten() {
            let keys: Vec<String> = u["keys"].as_array().into_iter().flatten().map(s).collect();
            eprintln!(
                "warning: version {} does not declare {} in [capabilities] config_keys: it will not see {}",
                u["version"],
                keys.join(", "),
                if keys.len() == 1 { "it" } else { "them" }
            );
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_revision_rows_read_the_typed_answers() {
        let v: SettingsView = serde_json::from_value(json!({"function": "hello",
            "environment": "staging", "revision": 3,
            "config": {"GREETING": "hi", "COLOR": "blue"},
            "secrets": [{"key": "API_KEY", "revision": 2}]}))
        .unwrap();
        assert_eq!(
            settings_rows(&v),
            [
                vec!["COLOR", "blue"],
                vec!["GREETING", "hi"],
                vec!["API_KEY", "(secret)"],
            ]
        );

        let r: SettingRevisions = serde_json::from_value(json!({"revisions": [
            {"function": "hello", "environment": "staging", "revision": 3,
             "at": 1732270000000i64, "actor": "admin",
             "changes": {"kind": "config", "set": ["COLOR", "GREETING"], "unset": []}},
            {"function": "hello", "environment": "staging", "revision": 2,
             "at": 1732270000000i64, "actor": "ci",
             "changes": {"kind": "secrets", "set": [], "unset": ["OLD"]}}
        ]}))
        .unwrap();
        assert_eq!(
            revision_rows(&r),
            [
                vec![
                    "2024-11-22T10:06:40.000Z",
                    "staging",
                    "3",
                    "config",
                    "COLOR,GREETING",
                    "",
                    "admin"
                ],
                vec![
                    "2024-11-22T10:06:40.000Z",
                    "staging",
                    "2",
                    "secrets",
                    "",
                    "OLD",
                    "ci"
                ],
            ]
        );
    }
}
