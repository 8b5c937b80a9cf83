//! `seal token …` and `seal whoami`: API tokens and roles.

use crate::client::Client;
use crate::output::{OutputFormat, emit, table, time_ms, time_opt};
use seal_api_types::access::{CreateToken, TokenAnswer, TokenCreated, TokenList, WhoAmI};
use serde_json::json;

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    Create {
        /// publisher: enqueue events on the --queue(s) named, nothing else;
        /// viewer: read everything; deployer: also publish, deploy, roll
        /// back, set config and secrets; admin: also tokens, policies,
        /// environments, budgets.
        #[arg(long, value_parser = ["publisher", "viewer", "deployer", "admin"])]
        role: String,
        /// A queue a publisher may enqueue on (repeat for more; publisher only).
        #[arg(long = "queue", value_name = "QUEUE")]
        queues: Vec<String>,
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
            queues,
            name,
        } => {
            let body = CreateToken {
                role,
                environments: (!environments.is_empty()).then_some(environments),
                queues: (!queues.is_empty()).then_some(queues),
                name,
            };
            let v: TokenCreated = client.post_as("/v1/tokens", &body).await?;
            emit(out, &v, |v| {
                let r = &v.record;
                eprintln!(
                    "created token {} ({}, role {}, {}); it is shown only now:",
                    r.id,
                    r.name,
                    r.role,
                    scope(r.environments.as_deref())
                );
                println!("{}", v.token);
            });
        }
        TokenCommand::List => {
            let v: TokenList = client.get_as("/v1/tokens").await?;
            emit(out, &v, |v| {
                table(
                    &["ID", "NAME", "ROLE", "MAY CHANGE", "CREATED", "STATE"],
                    token_rows(v),
                );
            });
        }
        TokenCommand::Revoke { id } => {
            let v: TokenAnswer = client
                .post_as(&format!("/v1/tokens/{id}/revoke"), &json!({}))
                .await?;
            emit(out, &v, |v| {
                let r = &v.record;
                println!(
                    "revoked token {} ({}) at {}",
                    r.id,
                    r.name,
                    time_opt(r.revoked_at)
                );
            });
        }
    }
    Ok(())
}

/// The rows of `seal token list`.
fn token_rows(v: &TokenList) -> Vec<Vec<String>> {
    v.tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.clone(),
                scope(t.environments.as_deref()),
                time_ms(t.created_at),
                match t.revoked_at {
                    None => "active".into(),
                    Some(at) => format!("revoked {}", time_ms(at)),
                },
            ]
        })
        .collect()
}

pub async fn whoami(client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let v: WhoAmI = client.get_as("/v1/whoami").await?;
    emit(out, &v, |v| {
        println!(
            "{} ({}), role {}, {}",
            v.name,
            v.id,
            v.role,
            scope(v.environments.as_deref())
        );
    });
    Ok(())
}

/// `staging,qa`, or `all environments` for a token without a limit.
fn scope(envs: Option<&[String]>) -> String {
    match envs {
        Some(e) => e.join(","),
        None => "all environments".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rows_read_the_typed_answer() {
        let v: TokenList = serde_json::from_value(json!({"tokens": [
            {"id": "tk_a", "name": "ci", "role": "deployer", "environments": ["staging", "qa"],
             "created_at": 1732270000000i64, "created_by": "admin",
             "revoked_at": 1732270060000i64, "revoked_by": "admin"},
            {"id": "tk_b", "name": "admin", "role": "admin", "environments": null,
             "created_at": 1732270000000i64, "created_by": "seal",
             "revoked_at": null, "revoked_by": null}
        ]}))
        .unwrap();
        assert_eq!(
            token_rows(&v),
            [
                vec![
                    "tk_a",
                    "ci",
                    "deployer",
                    "staging,qa",
                    "2024-11-22T10:06:40.000Z",
                    "revoked 2024-11-22T10:07:40.000Z"
                ],
                vec![
                    "tk_b",
                    "admin",
                    "admin",
                    "all environments",
                    "2024-11-22T10:06:40.000Z",
                    "active"
                ],
            ]
        );
        // The token's hash never crosses the wire, either way.
        let back = serde_json::to_value(&v).unwrap();
        assert!(back["tokens"][0].get("hash").is_none(), "{back}");
    }
}
