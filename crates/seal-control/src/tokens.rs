//! Authentication and roles for the control API.
//!
//! Every call but `/healthz` carries `Authorization: Bearer <token>`. A token
//! is 32 random bytes shown once; the store keeps its SHA-256 only (a token
//! has 256 bits of entropy, so a fast hash is enough and lookup is by hash).
//! A token has a role — viewer < deployer < admin — and may be limited to
//! environments: the limit applies to what it changes (deploys, rollbacks,
//! deployment commands, config and secrets); reads are decided by role.
//!
//! The middleware answers 401 for a missing, unknown or revoked token and
//! 403 for a role below what the route needs, before any handler runs, so
//! nothing changes on either. Handlers that act on an environment call
//! [`Principal::require_env`] before they change anything.

use crate::engine::Control;
use crate::error::{ApiError, ApiResult};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{Method, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use seal_state::{NewToken, TokenRecord};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a token may do. Ordered: each role can do what the ones below can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "deployer" => Some(Self::Deployer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
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
}

impl Principal {
    /// The name recorded as the actor of what this caller does.
    pub fn actor(&self) -> String {
        self.name.clone()
    }

    pub fn require_role(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token {} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// Refuses (403) if the token is limited to other environments.
    pub fn require_env(&self, environment: &str) -> ApiResult<()> {
        match &self.environments {
            Some(envs) if !envs.iter().any(|e| e == environment) => {
                Err(ApiError::forbidden(format!(
                    "token {} may change only {}, not {environment}",
                    self.name,
                    envs.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("authentication required"))
    }
}

/// The role a route needs, by its template (`MatchedPath`), so a value
/// in the path can never change the answer; `None` for the health check.
fn required_role(method: &Method, route: &str) -> Option<Role> {
    let read = method == Method::GET || method == Method::HEAD;
    match route {
        "/healthz" => None,
        "/v1/tokens" | "/v1/tokens/{id}/revoke" => Some(Role::Admin),
        "/v1/policies/{environment}" | "/v1/functions/{function}/budget" if !read => {
            Some(Role::Admin)
        }
        "/v1/environments" if !read => Some(Role::Admin),
        "/v1/functions/{function}/versions/{version}/verify" => Some(Role::Viewer),
        _ if read => Some(Role::Viewer),
        _ => Some(Role::Deployer),
    }
}

/// The middleware: authenticates, checks the route's role, and hands the
/// [`Principal`] to the handler.
pub async fn authenticate(
    State(control): State<Arc<Control>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let Some(needed) = required_role(req.method(), &route) else {
        return next.run(req).await;
    };
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let principal = match principal(&control, header).await {
        Ok(p) => p,
        Err(e) => return unauthorized(e),
    };
    if let Err(e) = principal.require_role(needed) {
        return e.into_response();
    }
    // What only an admin may do (tokens, policies, environments, budgets)
    // reaches beyond one environment: an environment-limited admin token
    // may not, or it could mint itself an unlimited one.
    if needed == Role::Admin && principal.environments.is_some() {
        return ApiError::forbidden(format!(
            "token {} is limited to some environments; this needs an admin token for all of them",
            principal.name
        ))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn unauthorized(e: ApiError) -> Response {
    let mut resp = e.into_response();
    if resp.status() == axum::http::StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"seal\""),
        );
    }
    resp
}

async fn principal(control: &Control, header: Option<String>) -> ApiResult<Principal> {
    let header = header.ok_or_else(|| {
        ApiError::unauthorized(
            "no token: send `Authorization: Bearer <token>` (the CLI reads SEAL_TOKEN or --token)",
        )
    })?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
    let record = control
        .state
        .token_by_hash(&hash_token(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthorized(format!(
            "token {} was revoked",
            record.name
        )));
    }
    let role = Role::parse(&record.role).ok_or_else(|| {
        ApiError::internal(format!("token {} has role {:?}", record.id, record.role))
    })?;
    Ok(Principal {
        token_id: record.id,
        name: record.name,
        role,
        environments: record.environments,
    })
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
        name: Option<String>,
        actor: &str,
    ) -> ApiResult<CreatedToken> {
        if let Some(envs) = &environments {
            if envs.is_empty() {
                return Err(ApiError::bad_request(
                    "give at least one environment, or none for all",
                ));
            }
            for env in envs {
                if !self.state.environment_exists(env).await? {
                    return Err(ApiError::not_found(format!(
                        "no environment {env} (create it with `seal env create {env}`)"
                    )));
                }
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
            return Err(ApiError::bad_request(format!(
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
            return Err(ApiError::conflict(format!(
                "a token named {name} exists; revoke it first or choose another --name"
            )));
        }
        let record = self
            .state
            .create_token(NewToken {
                id: &id,
                name: &name,
                role: role.as_str(),
                environments: environments.as_deref(),
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
            .create_token(Role::Admin, None, Some("admin".into()), "seal-server")
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the admin token: {}", e.message))?;
        write_private(path, format!("{}\n", created.token).as_bytes())
            .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
        Ok(Some(path.to_owned()))
    }
}

/// Writes a file only its owner can read (0600 from creation, then renamed
/// into place so a reader never sees it half-written).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_right_role() {
        let r = |m: Method, p: &str| required_role(&m, p);
        assert_eq!(r(Method::GET, "/healthz"), None);
        assert_eq!(r(Method::GET, "/v1/functions"), Some(Role::Viewer));
        assert_eq!(r(Method::GET, "/metrics"), Some(Role::Viewer));
        assert_eq!(r(Method::HEAD, "/v1/blobs/{digest}"), Some(Role::Viewer));
        assert_eq!(r(Method::PUT, "/v1/blobs/{digest}"), Some(Role::Deployer));
        assert_eq!(
            r(Method::POST, "/v1/functions/{function}/deploy"),
            Some(Role::Deployer)
        );
        assert_eq!(
            r(
                Method::POST,
                "/v1/functions/{function}/versions/{version}/verify"
            ),
            Some(Role::Viewer)
        );
        // A path value that looks like another route changes nothing.
        assert_eq!(
            r(Method::POST, "/v1/deployments/{id}/{command}"),
            Some(Role::Deployer)
        );
        assert_eq!(r(Method::GET, "/v1/tokens"), Some(Role::Admin));
        assert_eq!(r(Method::POST, "/v1/tokens/{id}/revoke"), Some(Role::Admin));
        assert_eq!(
            r(Method::PUT, "/v1/policies/{environment}"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Method::GET, "/v1/policies/{environment}"),
            Some(Role::Viewer)
        );
        assert_eq!(
            r(
                Method::POST,
                "/v1/functions/{function}/versions/{version}/attestations"
            ),
            Some(Role::Deployer)
        );
        assert_eq!(r(Method::POST, "/v1/environments"), Some(Role::Admin));
        assert_eq!(r(Method::GET, "/v1/environments"), Some(Role::Viewer));
        assert_eq!(
            r(Method::PUT, "/v1/functions/{function}/budget"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Method::DELETE, "/v1/functions/{function}/budget"),
            Some(Role::Admin)
        );
        assert_eq!(
            r(Method::GET, "/v1/functions/{function}/budget"),
            Some(Role::Viewer)
        );
    }

    #[test]
    fn environment_limits_and_roles() {
        let p = Principal {
            token_id: "tk_1".into(),
            name: "ci".into(),
            role: Role::Deployer,
            environments: Some(vec!["staging".into()]),
        };
        assert!(p.require_env("staging").is_ok());
        let e = p.require_env("production").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN);
        assert!(e.message.contains("only staging"), "{}", e.message);
        assert!(p.require_role(Role::Deployer).is_ok());
        assert_eq!(
            p.require_role(Role::Admin).unwrap_err().status,
            axum::http::StatusCode::FORBIDDEN
        );
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
