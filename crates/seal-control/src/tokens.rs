//! Tokens and who is acting: roles (viewer < deployer < admin), the
//! environment limit of a token, creating and looking up tokens (stored as
//! SHA-256 only), and the first-start admin token.
//!
//! A token is 32 random bytes shown once; a token has 256 bits of entropy,
//! so a fast hash is enough and lookup is by hash. The limit applies to
//! what a token changes (deploys, rollbacks, deployment commands, config
//! and secrets); reads are decided by role. Which role each API route
//! needs is declared with the route, in the API crate.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_state::{NewToken, TokenRecord};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// What a token may do. Ordered: each role can do what the ones below can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Enqueues events on the queues its token names; nothing else, not
    /// even reads.
    Publisher,
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "publisher" => Some(Self::Publisher),
            "viewer" => Some(Self::Viewer),
            "deployer" => Some(Self::Deployer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Admin => "admin",
        }
    }
}

/// The authenticated caller of one API request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// Environments the token may change; `None` = all.
    pub environments: Option<Vec<String>>,
    /// The queues a publisher may enqueue on.
    pub queues: Option<Vec<String>>,
}

impl Principal {
    /// The name recorded as the actor of what this caller does.
    pub fn actor(&self) -> String {
        self.name.clone()
    }

    pub fn require_role(&self, role: Role) -> ControlResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ControlError::forbidden(format!(
                "token {} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// Refuses (403) unless this caller may enqueue on `queue` in
    /// `environment`: a publisher naming that queue, or a deployer or
    /// admin, within the token's environments.
    pub fn require_publish(&self, environment: &str, queue: &str) -> ControlResult<()> {
        self.require_env(environment)?;
        match (self.role, &self.queues) {
            (Role::Publisher, Some(qs)) if qs.iter().any(|q| q == queue) => Ok(()),
            (Role::Publisher, _) => Err(ControlError::forbidden(format!(
                "token {} may publish only to {}, not {queue}",
                self.name,
                self.queues.as_deref().unwrap_or_default().join(", ")
            ))),
            _ => self.require_role(Role::Deployer),
        }
    }

    /// Refuses (403) if the token is limited to other environments.
    pub fn require_env(&self, environment: &str) -> ControlResult<()> {
        match &self.environments {
            Some(envs) if !envs.iter().any(|e| e == environment) => {
                Err(ControlError::forbidden(format!(
                    "token {} may change only {}, not {environment}",
                    self.name,
                    envs.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Control {
    /// The caller an `Authorization` header names: unauthenticated for a
    /// missing, malformed, unknown or revoked token.
    pub async fn authenticate(&self, header: Option<&str>) -> ControlResult<Principal> {
        let header = header.ok_or_else(|| {
            ControlError::unauthorized("no token: send `Authorization: Bearer <token>`")
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ControlError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let record = self
            .state
            .token_by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| ControlError::unauthorized("unknown token"))?;
        if record.revoked_at.is_some() {
            return Err(ControlError::unauthorized(format!(
                "token {} was revoked",
                record.name
            )));
        }
        let role = Role::parse(&record.role).ok_or_else(|| {
            ControlError::internal(format!("token {} has role {:?}", record.id, record.role))
        })?;
        Ok(Principal {
            token_id: record.id,
            name: record.name,
            role,
            environments: record.environments,
            queues: record.queues,
        })
    }
}

/// SHA-256 (hex) of a token: what the store keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new token id and token. The token says what it is (`seal_`) so secret
/// scanners can find a leaked one.
fn new_token() -> (String, String) {
    let id: [u8; 4] = rand::random();
    let secret: [u8; 32] = rand::random();
    (
        format!("tk_{}", hex::encode(id)),
        format!("seal_{}", hex::encode(secret)),
    )
}

/// A created token: the record and the token itself, shown once.
pub struct CreatedToken {
    pub record: TokenRecord,
    pub token: String,
}

impl Control {
    /// Creates a token. Names are unique among tokens that are not revoked,
    /// so the actor recorded in the audit log says which token acted.
    pub async fn create_token(
        &self,
        role: Role,
        environments: Option<Vec<String>>,
        queues: Option<Vec<String>>,
        name: Option<String>,
        actor: &str,
    ) -> ControlResult<CreatedToken> {
        match (role, &queues) {
            (Role::Publisher, Some(qs)) if !qs.is_empty() => {
                for q in qs {
                    crate::events::check_name("queue", q)?;
                }
            }
            (Role::Publisher, _) => {
                return Err(ControlError::bad_request(
                    "a publisher token names the queues it may enqueue on",
                ));
            }
            (_, Some(_)) => {
                return Err(ControlError::bad_request(
                    "only a publisher token names queues",
                ));
            }
            (_, None) => {}
        }
        if let Some(envs) = &environments {
            if envs.is_empty() {
                return Err(ControlError::bad_request(
                    "give at least one environment, or none for all",
                ));
            }
            for env in envs {
                self.environment_must_exist(env).await?;
            }
        }
        let (id, token) = new_token();
        let name = name.unwrap_or_else(|| format!("{}-{}", role.as_str(), &id[3..]));
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(ControlError::bad_request(format!(
                "invalid token name {name:?}: 1-64 letters, digits, '-', '_', '.', '@'"
            )));
        }
        let taken = self
            .state
            .tokens()
            .await?
            .into_iter()
            .any(|t| t.name == name && t.revoked_at.is_none());
        if taken {
            return Err(ControlError::conflict(format!(
                "a token named {name} exists; revoke it first or choose another name"
            )));
        }
        let record = self
            .state
            .create_token(NewToken {
                id: &id,
                name: &name,
                role: role.as_str(),
                environments: environments.as_deref(),
                queues: queues.as_deref(),
                hash: &hash_token(&token),
                actor,
            })
            .await?;
        Ok(CreatedToken { record, token })
    }

    /// On the first start (no token was ever created), creates an admin
    /// token and writes it to `path` with mode 0600. Returns the path when
    /// it wrote one.
    pub async fn bootstrap_admin_token(&self, path: &Path) -> anyhow::Result<Option<PathBuf>> {
        use anyhow::Context;
        if self
            .state
            .token_count()
            .await
            .map_err(anyhow::Error::from)?
            > 0
        {
            return Ok(None);
        }
        let created = self
            .create_token(Role::Admin, None, None, Some("admin".into()), "seal-server")
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the admin token: {e}"))?;
        crate::files::write_private(path, format!("{}\n", created.token).as_bytes())
            .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
        Ok(Some(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_limits_and_roles() {
        let p = Principal {
            token_id: "tk_1".into(),
            name: "ci".into(),
            role: Role::Deployer,
            queues: None,
            environments: Some(vec!["staging".into()]),
        };
        assert!(p.require_env("staging").is_ok());
        let e = p.require_env("production").unwrap_err();
        assert!(matches!(e, ControlError::Forbidden(_)), "{e:?}");
        assert!(e.to_string().contains("only staging"), "{e}");
        assert!(p.require_role(Role::Deployer).is_ok());
        assert!(matches!(
            p.require_role(Role::Admin).unwrap_err(),
            ControlError::Forbidden(_)
        ));
    }

    #[test]
    fn a_publisher_publishes_to_its_queues_only_and_reads_nothing() {
        let p = Principal {
            token_id: "tk_2".into(),
            name: "shop".into(),
            role: Role::Publisher,
            queues: Some(vec!["orders".into()]),
            environments: Some(vec!["production".into()]),
        };
        assert!(p.require_publish("production", "orders").is_ok());
        let other = p.require_publish("production", "refunds").unwrap_err();
        assert!(other.to_string().contains("only to orders"), "{other}");
        assert!(p.require_publish("staging", "orders").is_err());
        assert!(p.require_role(Role::Viewer).is_err(), "no reads");
        let viewer = Principal {
            role: Role::Viewer,
            queues: None,
            environments: None,
            ..p.clone()
        };
        assert!(viewer.require_publish("production", "orders").is_err());
        let deployer = Principal {
            role: Role::Deployer,
            ..viewer
        };
        assert!(deployer.require_publish("production", "orders").is_ok());
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (id1, t1) = new_token();
        let (id2, t2) = new_token();
        assert_ne!((id1, &t1), (id2, &t2));
        assert!(t1.starts_with("seal_") && t1.len() == 69);
        assert_eq!(hash_token(&t1).len(), 64);
        assert_ne!(hash_token(&t1), hash_token(&t2));
        assert!(!hash_token(&t1).contains(&t1[5..]));
    }
}
