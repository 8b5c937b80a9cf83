//! Answers about tokens and settings: `seal whoami`, `seal token`,
//! `seal config`, `seal secrets`.

use crate::records::{SettingRevision, TokenRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/whoami`: the token the request came with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Environments the token may change; `None` = all.
    pub environments: Option<Vec<String>>,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenRecord>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `publisher`, `viewer`, `deployer` or `admin`.
    pub role: String,
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    /// The queues a `publisher` may enqueue on (required for it, refused
    /// for the other roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer to [`CreateToken`]: the token itself, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub record: TokenRecord,
}

/// `POST /v1/tokens/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenAnswer {
    pub record: TokenRecord,
}

/// `GET /v1/functions/{fn}/config`: config values in clear, secrets by
/// name only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsView {
    pub function: String,
    pub environment: String,
    /// The latest revision (0: nothing was ever set).
    pub revision: i64,
    pub config: BTreeMap<String, String>,
    pub secrets: Vec<SecretName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretName {
    pub key: String,
    /// The revision that last set it.
    pub revision: i64,
}

/// `GET /v1/functions/{fn}/config/revisions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRevisions {
    pub revisions: Vec<SettingRevision>,
}
