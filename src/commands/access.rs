//! `seal token …` and `seal whoami`: API tokens and roles.

use crate::client::Client;
use crate::output::{OutputFormat, emit, s, table, time};
use serde_json::json;

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        /// viewer: read everything; deployer: also publish, deploy, roll
        /// back, set config and secrets; admin: also tokens, policies,
        /// environments, budgets.
        #[arg(long, value_parser = ["viewer", "deployer", "admin"])]
        role: String,
        /// Limit what the token may change to this environment (repeat for
        /// more); reads are not limited.
        #[arg(long = "env", short = 'e', value_name = "ENV")]
        environments: Vec<String>,
        /// A name recorded as the actor of what the token does (default:
        /// role and id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token: its next request is refused with 401.
    Revoke {
        /// Token id (tk_…), as shown by `seal token list`.
        id: String,
    },
}

pub async fn token(cmd: TokenCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            role,
            environments,
            name,
        } => {
            let body = json!({
                "role": role,
                "environments": (!environments.is_empty()).then_some(environments),
                "name": name,
            });
            let v = client.post("/v1/tokens", &body).await?;
            emit(out, &v, |v| {
                let r = &v["record"];
                eprintln!(
                    "created token {} ({}, role {}, {}); it is shown only now:",
                    s(&r["id"]),
                    s(&r["name"]),
                    s(&r["role"]),
                    scope(&r["environments"])
                );
                println!("{}", s(&v["token"]));
            });
        }
        TokenCommand::List => {
            let v = client.get("/v1/tokens").await?;
            emit(out, &v, |v| {
                let rows = v["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            s(&t["id"]),
                            s(&t["name"]),
                            s(&t["role"]),
                            scope(&t["environments"]),
                            time(&t["created_at"]),
                            if t["revoked_at"].is_null() {
                                "active".into()
                            } else {
                                format!("revoked {}", time(&t["revoked_at"]))
                            },
                        ]
                    })
                    .collect();
                table(
                    &["ID", "NAME", "ROLE", "MAY CHANGE", "CREATED", "STATE"],
                    rows,
                );
            });
        }
        TokenCommand::Revoke { id } => {
            let v = client
                .post(&format!("/v1/tokens/{id}/revoke"), &json!({}))
                .await?;
            emit(out, &v, |v| {
                let r = &v["record"];
                println!(
                    "revoked token {} ({}) at {}",
                    s(&r["id"]),
                    s(&r["name"]),
                    time(&r["revoked_at"])
                );
            });
        }
    }
    Ok(())
}

pub async fn whoami(client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let v = client.get("/v1/whoami").await?;
    emit(out, &v, |v| {
        println!(
            "{} ({}), role {}, {}",
            s(&v["name"]),
            s(&v["id"]),
            s(&v["role"]),
            scope(&v["environments"])
        );
    });
    Ok(())
}

fn scope(envs: &serde_json::Value) -> String {
    match envs.as_array() {
        Some(e) => e.iter().map(s).collect::<Vec<_>>().join(","),
        None => "all environments".into(),
    }
}
